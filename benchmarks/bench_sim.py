"""Simulator speed (issue 4): simulated requests per wall-clock second.

Cases, in one process (kernels compiled and the scheduler warmed on a small run first):

* ``sim/shared-prefix/<preset>``: the default ``shared-prefix`` workload on 16 servers
  with each preset (``round-robin``, ``load-only``, ``gie-default``), 3 repeats each,
  alternating. Target: >= 20,000 simulated requests per wall second with
  ``gie-default``.
* ``sim/mooncake-40min/gie-default``: the shared 40-minute Mooncake conversation trace
  (7,851 requests) on 16 servers. Target: under 60 s. Skipped when the shared data is
  not found (``INFERENCE_SCHED_DATA`` or ``../shared/data``).

``p50_us`` / ``p99_us`` are the median and 99th percentile of the wall time per simulated
request over the repeats (wall time of a run / its requests); ``ratio_vs_baseline`` is
the round-robin run's wall time per request over the case's (< 1: the case's scheduler
costs more than a random pick). Extra keys: ``requests``, ``wall_s`` (median),
``requests_per_wall_s``, ``decision_us_p50``, ``sim_duration_s``.

    python benchmarks/bench_sim.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, write_report

from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.workloads import Workload, load_workload

PRESETS = ("round-robin", "load-only", "gie-default")
MOONCAKE = "traces/mooncake_fast25_conversation_trace.first40min.jsonl"


def run(workload: Workload, preset: str, fleet: FleetConfig) -> Any:
    label, config = resolve_config(preset)
    return simulate(workload, config, label=label, fleet=fleet)


def case(name: str, workload: Workload, runs: list[Any], baseline_per_req: float) -> dict:
    n = len(workload.requests)
    per_req_us = np.array([r.wall_s / n * 1e6 for r in runs])
    wall = float(np.median([r.wall_s for r in runs]))
    return {
        "case": name,
        "endpoints": len(runs[0].endpoint_names),
        "p50_us": float(np.percentile(per_req_us, 50)),
        "p99_us": float(np.percentile(per_req_us, 99)),
        "ratio_vs_baseline": baseline_per_req / float(np.median(per_req_us)),
        "requests": n,
        "repeats": len(runs),
        "wall_s": wall,
        "requests_per_wall_s": n / wall,
        "decision_us_p50": float(np.median([r.decision_us_p50 for r in runs])),
        "sim_duration_s": float(runs[0].duration_s),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    fleet = FleetConfig(num_servers=16)
    # Warm-up: compile the kernels and fill the caches of every code path.
    warm = load_workload("shared-prefix", duration_s=2.0, seed=99)
    for preset in PRESETS:
        run(warm, preset, fleet)
    gc.collect()
    gc.freeze()

    workload = load_workload("shared-prefix", seed=1)
    repeats = 1 if args.quick else 3
    runs: dict[str, list[Any]] = {p: [] for p in PRESETS}
    for k in range(repeats):
        for preset in PRESETS:
            t0 = time.perf_counter()
            runs[preset].append(run(workload, preset, fleet))
            print(
                f"shared-prefix {preset} repeat {k + 1}/{repeats}: "
                f"{len(workload.requests)} requests in {time.perf_counter() - t0:.2f} s",
                file=sys.stderr,
            )
    n = len(workload.requests)
    baseline = float(np.median([r.wall_s / n * 1e6 for r in runs["round-robin"]]))
    results = [case(f"sim/shared-prefix/{p}", workload, runs[p], baseline) for p in PRESETS]

    data = shared_data_dir()
    trace = data / MOONCAKE if data is not None else None
    if trace is not None and trace.exists() and not args.quick:
        mooncake = load_workload(f"trace:{trace}")
        t0 = time.perf_counter()
        mc = run(mooncake, "gie-default", fleet)
        print(
            f"mooncake-40min gie-default: {len(mooncake.requests)} requests in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        results.append(case("sim/mooncake-40min/gie-default", mooncake, [mc], baseline))
    else:
        print("sim/mooncake-40min: skipped (no shared data, or --quick)", file=sys.stderr)
    write_report("sim", results, args.json)


if __name__ == "__main__":
    main()
