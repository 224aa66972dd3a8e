"""One scheduling decision (queue 2 + kv-cache 2 + max-score) at 16 / 256 / 4096 endpoints.

Numba path and NumPy-reference path run in the same process on the same pool; the ratio
is reference p50 / Numba p50 (the speed-up). ``schedule_batch`` of 1,000 requests over 256
endpoints is compared with 1,000 ``schedule`` calls. Compile time is excluded (warm-up).

    python benchmarks/bench_schedule.py [--quick] [--json PATH]

Targets (issue 2): p50 <= 15 us per decision at 256 endpoints; Numba >= 3x reference at
4096; schedule_batch <= 5 us per request. The startup heap is frozen (``gc.freeze()``)
after warm-up, as docs/architecture.md recommends for an EPP.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, reference_kernels, write_report

from inference_sched import Endpoint, EndpointTable, Request, Scheduler
from inference_sched.sim.presets import PRESETS

CONFIG = PRESETS["load-only"]
"""GIE's load profile: queue-scorer 2, kv-cache-utilization-scorer 2, max-score-picker."""


def make_scheduler(num_endpoints: int, seed: int = 0) -> Scheduler:
    rng = np.random.default_rng(seed)
    table = EndpointTable()
    for i in range(num_endpoints):
        table.add(Endpoint(f"e{i}-rank-0", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8000))
    rows = table.candidates()
    table.update_metrics(
        rows,
        waiting=rng.integers(0, 16, len(rows)).astype(np.float64),
        kv_usage_frac=rng.uniform(0, 1, len(rows)),
    )
    return Scheduler.from_config(CONFIG, table, seed=seed)


def time_decisions(scheduler: Scheduler, requests: list[Request]) -> np.ndarray:
    schedule = scheduler.schedule
    samples = np.empty(len(requests), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, request in enumerate(requests):
        t0 = clock()
        schedule(request)
        samples[i] = clock() - t0
    return samples


def time_batches(scheduler: Scheduler, batch: list[Request], rounds: int) -> np.ndarray:
    per_request = np.empty(rounds, dtype=np.float64)
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        scheduler.schedule_batch(batch)
        per_request[i] = (time.perf_counter_ns() - t0) / len(batch)
    return per_request


def interleaved(repeats: int, runs: dict[str, Callable[[], np.ndarray]]) -> dict[str, np.ndarray]:
    """Run each case ``repeats`` times, alternating cases, so drifts in machine load hit
    every case alike; returns every case's samples concatenated."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def main() -> None:
    args = parse_args(__doc__ or "")
    # Warm every kernel first, then move the startup heap (Numba's compiler state, ~100k
    # objects) out of the collector's reach, as a production EPP should: otherwise a
    # full collection every few thousand decisions pauses for ~80 ms on this machine.
    time_decisions(make_scheduler(16), [Request.create("warm") for _ in range(50)])
    with reference_kernels():
        time_decisions(make_scheduler(16), [Request.create("warm") for _ in range(5)])
    gc.collect()
    gc.freeze()
    decisions = 300 if args.quick else 2000
    repeats = 2 if args.quick else 7
    batch_rounds = 2 if args.quick else 5
    requests = [Request.create("llama", request_id=f"r{i}") for i in range(decisions)]
    results = []
    for n in (16, 256, 4096):
        scheduler = make_scheduler(n)
        print(
            f"endpoints={n}: warm-up, then {repeats} x {decisions} decisions per path ...",
            file=sys.stderr,
        )
        time_decisions(scheduler, requests[:300])  # compile + caches, outside the figures

        def numba_run(s: Scheduler = scheduler) -> np.ndarray:
            return time_decisions(s, requests)

        def reference_run(s: Scheduler = scheduler) -> np.ndarray:
            with reference_kernels():
                return time_decisions(s, requests)

        reference_run()  # warm the reference path too
        samples = interleaved(repeats, {"numba": numba_run, "reference": reference_run})
        ref_p50, ref_p99 = percentiles_us(samples["reference"])
        numba_p50, numba_p99 = percentiles_us(samples["numba"])
        results.append(
            {
                "case": "schedule/numpy-reference",
                "endpoints": n,
                "p50_us": ref_p50,
                "p99_us": ref_p99,
                "ratio_vs_baseline": 1.0,
                "path": "reference",
                "decisions": int(samples["reference"].size),
            }
        )
        results.append(
            {
                "case": "schedule/numba",
                "endpoints": n,
                "p50_us": numba_p50,
                "p99_us": numba_p99,
                "ratio_vs_baseline": ref_p50 / numba_p50,
                "path": "numba",
                "baseline": "schedule/numpy-reference",
                "decisions": int(samples["numba"].size),
            }
        )
    n = 256
    scheduler = make_scheduler(n)
    batch = [Request.create("llama", request_id=f"b{i}") for i in range(1000)]
    print(f"schedule_batch(1000) over {n}: {repeats} x {batch_rounds} batches ...", file=sys.stderr)
    scheduler.schedule_batch(batch)
    time_decisions(scheduler, batch[:300])
    samples = interleaved(
        repeats,
        {
            "batch": lambda: time_batches(scheduler, batch, batch_rounds),
            "loop": lambda: time_decisions(scheduler, batch).astype(np.float64),
        },
    )
    b50, b99 = percentiles_us(samples["batch"])
    loop_p50, _ = percentiles_us(samples["loop"])
    results.append(
        {
            "case": "schedule_batch-1000/per-request",
            "endpoints": n,
            "p50_us": b50,
            "p99_us": b99,
            "ratio_vs_baseline": loop_p50 / b50,
            "baseline": "schedule() loop p50",
            "batch_size": len(batch),
            "batches": int(samples["batch"].size),
            "note": "p50/p99 over batches of the mean time per request in a batch",
        }
    )
    write_report("schedule", results, args.json)


if __name__ == "__main__":
    main()
