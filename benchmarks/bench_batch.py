"""Joint ``schedule_batch`` of a 32-request burst vs 32 sequential ``schedule`` calls.

GIE's default profile (prefix 3, queue 2, kv-cache 2, max-score; the approximate prefix
producer is created for the prefix scorer) over 64 and 256 endpoints. A burst is 8
prompt groups x 4 identical prompts (~2 KB each, 32 prefix blocks), interleaved. The
baseline is the same burst scheduled one ``schedule`` call at a time (the default
``schedule_batch`` path loops the same way with this profile); the figure is the mean
time per request of each burst, p50/p99 over bursts; ratio = baseline p50 / joint p50.
Compile time is excluded (warm-up); the startup heap is frozen (``gc.freeze()``).

    python benchmarks/bench_batch.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, write_report

from inference_sched import Endpoint, EndpointTable, Request, Scheduler

BURST = 32
GROUPS = 8


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
    return Scheduler.from_config(None, table, seed=seed)


def make_burst(tag: int) -> list[Request]:
    return [
        Request.create("llama", request_id=f"b{tag}-{k}-{g}", prompt=f"group {g} " * 256)
        for k in range(BURST // GROUPS)
        for g in range(GROUPS)
    ]


def time_sequential(scheduler: Scheduler, bursts: list[list[Request]]) -> np.ndarray:
    out = np.empty(len(bursts), dtype=np.float64)
    schedule = scheduler.schedule
    for i, burst in enumerate(bursts):
        t0 = time.perf_counter_ns()
        for request in burst:
            schedule(request)
        out[i] = (time.perf_counter_ns() - t0) / len(burst)
    return out


def time_joint(scheduler: Scheduler, bursts: list[list[Request]]) -> np.ndarray:
    out = np.empty(len(bursts), dtype=np.float64)
    for i, burst in enumerate(bursts):
        t0 = time.perf_counter_ns()
        scheduler.schedule_batch(burst, joint=True)
        out[i] = (time.perf_counter_ns() - t0) / len(burst)
    return out


def interleaved(repeats: int, runs: dict[str, Callable[[], np.ndarray]]) -> dict[str, np.ndarray]:
    """Alternate the cases ``repeats`` times so machine-load drifts hit both alike."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def main() -> None:
    args = parse_args(__doc__ or "")
    warm = make_scheduler(16)
    time_sequential(warm, [make_burst(0)])
    time_joint(warm, [make_burst(0)])
    gc.collect()
    gc.freeze()
    num_bursts = 20 if args.quick else 100
    repeats = 2 if args.quick else 7
    bursts = [make_burst(i) for i in range(num_bursts)]
    results = []
    for n in (64, 256):
        print(
            f"endpoints={n}: {repeats} x {num_bursts} bursts of {BURST} per path ...",
            file=sys.stderr,
        )
        sequential, joint = make_scheduler(n), make_scheduler(n)
        time_sequential(sequential, bursts[:5])
        time_joint(joint, bursts[:5])

        def sequential_run(s: Scheduler = sequential) -> np.ndarray:
            return time_sequential(s, bursts)

        def joint_run(s: Scheduler = joint) -> np.ndarray:
            return time_joint(s, bursts)

        samples = interleaved(repeats, {"sequential": sequential_run, "joint": joint_run})
        seq_p50, seq_p99 = percentiles_us(samples["sequential"])
        joint_p50, joint_p99 = percentiles_us(samples["joint"])
        results.append(
            {
                "case": "schedule-loop-32/per-request",
                "endpoints": n,
                "p50_us": seq_p50,
                "p99_us": seq_p99,
                "ratio_vs_baseline": 1.0,
                "bursts": int(samples["sequential"].size),
                "note": "p50/p99 over bursts of the mean time per request",
            }
        )
        results.append(
            {
                "case": "schedule_batch-joint-32/per-request",
                "endpoints": n,
                "p50_us": joint_p50,
                "p99_us": joint_p99,
                "ratio_vs_baseline": seq_p50 / joint_p50,
                "baseline": "schedule-loop-32/per-request",
                "bursts": int(samples["joint"].size),
                "note": "p50/p99 over bursts of the mean time per request",
            }
        )
    write_report("batch", results, args.json)


if __name__ == "__main__":
    main()
