"""One scheduling decision (queue 2 + kv-cache 2 + max-score) at 16 / 256 / 4096 endpoints.

Numba path and NumPy-reference path run in the same process on the same pool; the ratio
is reference p50 / Numba p50 (the speed-up). ``schedule_batch`` of 1,000 requests over 256
endpoints is compared with 1,000 ``schedule`` calls. Compile time is excluded (warm-up).

    python benchmarks/bench_schedule.py [--quick] [--json PATH]

Targets (issue 2): p50 <= 15 us per decision at 256 endpoints; Numba >= 3x reference at
4096; schedule_batch <= 5 us per request.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, reference_kernels, write_report

from inference_sched import Endpoint, EndpointTable, Request, Scheduler

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: max-score-picker}
"""


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


def time_decisions(scheduler: Scheduler, requests: list[Request], warmup: int) -> np.ndarray:
    schedule = scheduler.schedule
    for request in requests[:warmup]:
        schedule(request)
    samples = np.empty(len(requests), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, request in enumerate(requests):
        t0 = clock()
        schedule(request)
        samples[i] = clock() - t0
    return samples


def time_batches(scheduler: Scheduler, batch: list[Request], rounds: int) -> np.ndarray:
    scheduler.schedule_batch(batch)  # warm-up
    per_request = np.empty(rounds, dtype=np.float64)
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        scheduler.schedule_batch(batch)
        per_request[i] = (time.perf_counter_ns() - t0) / len(batch)
    return per_request


def main() -> None:
    args = parse_args(__doc__ or "")
    decisions = 500 if args.quick else 5000
    batch_rounds = 5 if args.quick else 30
    requests = [Request.create("llama", request_id=f"r{i}") for i in range(decisions)]
    results = []
    for n in (16, 256, 4096):
        scheduler = make_scheduler(n)
        print(f"endpoints={n}: numba ...", file=sys.stderr)
        numba_p50, numba_p99 = percentiles_us(time_decisions(scheduler, requests, 200))
        print(f"endpoints={n}: numpy reference ...", file=sys.stderr)
        with reference_kernels():
            ref_p50, ref_p99 = percentiles_us(time_decisions(scheduler, requests, 200))
        results.append(
            {
                "case": "schedule/numpy-reference",
                "endpoints": n,
                "p50_us": ref_p50,
                "p99_us": ref_p99,
                "ratio_vs_baseline": 1.0,
                "path": "reference",
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
            }
        )
    n = 256
    scheduler = make_scheduler(n)
    batch = requests[:1000]
    print("schedule_batch(1000) over 256 ...", file=sys.stderr)
    per_request_ns = time_batches(scheduler, batch, batch_rounds)
    loop_ns = time_decisions(scheduler, batch, 200)
    loop_p50, _ = percentiles_us(loop_ns)
    b50, b99 = percentiles_us(per_request_ns)
    results.append(
        {
            "case": "schedule_batch-1000/per-request",
            "endpoints": n,
            "p50_us": b50,
            "p99_us": b99,
            "ratio_vs_baseline": loop_p50 / b50,
            "baseline": "schedule/numba loop",
            "batch_size": len(batch),
            "rounds": batch_rounds,
        }
    )
    write_report("schedule", results, args.json)


if __name__ == "__main__":
    main()
