"""SLO classes in the simulator: the ``mixed-slo`` workload under several configurations.

``mixed-slo`` is shared-prefix traffic at 80 req/s in three classes (``SLO_CLASSES`` in
``inference_sched.sim.workloads``): 30% interactive (TTFT <= 200 ms, TPOT <= 50 ms,
priority 1), 50% standard (TTFT <= 1 s, priority 0), 20% batch (no SLO, priority -1,
sheddable), over 8 servers (near saturation). Every configuration runs behind GIE's
default saturation detector (``utilization-detector``), so batch requests are shed (HTTP
429) while the pool is saturated; ``gie-predicted-latency`` adds its SLO admitter.
Per class: requests, shed, TTFT p50 / p90 (ms) of the completed ones, and SLO
attainment (TTFT, and TPOT for interactive: met / completed).

    python benchmarks/quality/slo_classes.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.types import RequestStatus
from inference_sched.sim.workloads import SLO_CLASSES, load_workload

SERVERS = 8
CONFIGS = ("gie-default", "gie-predicted-latency", "ours-best")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 s of arrivals instead of 60")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/quality"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workload = load_workload("mixed-slo", duration_s=20.0 if args.quick else 60.0, seed=0)
    reqs = workload.requests
    cls = np.array([next(i for i, c in enumerate(SLO_CLASSES) if c[4] == r.priority) for r in reqs])
    rows: list[dict[str, Any]] = []
    lines = [
        f"mixed-slo: {len(reqs)} requests, {SERVERS} servers; `inference-sched simulate --workload "
        f"mixed-slo --endpoints {SERVERS} --config {' --config '.join(CONFIGS)}` runs the same",
        "",
        "| config | class | requests | shed | TTFT p50 / p90 (ms) | SLO met |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for spec in CONFIGS:
        label, config = resolve_config(spec)
        run = simulate(workload, config, label=label, fleet=FleetConfig(num_servers=SERVERS))
        print(f"{label}: {run.wall_s:.1f} s", file=sys.stderr)
        ttft = (run.first_token_s - run.arrival_s) * 1e3
        out_tokens = np.array([r.output_tokens for r in reqs])
        tpot = (run.finish_s - run.first_token_s) / np.maximum(out_tokens - 1, 1) * 1e3
        for k, (name, _, slo_ttft, slo_tpot, _) in enumerate(SLO_CLASSES):
            mine = cls == k
            done = mine & (run.status == RequestStatus.COMPLETED)
            shed = int((mine & (run.status == RequestStatus.FAILED_SCHEDULING)).sum())
            met = done.copy()
            if slo_ttft > 0:
                met &= ttft <= slo_ttft
            if slo_tpot > 0:
                met &= tpot <= slo_tpot
            n_done = int(done.sum())
            p50, p90 = np.percentile(ttft[done], [50, 90]) if n_done else (np.nan, np.nan)
            attained = float(met.sum()) / n_done if n_done and (slo_ttft or slo_tpot) else None
            rows.append(
                {
                    "config": label,
                    "class": name,
                    "requests": int(mine.sum()),
                    "shed": shed,
                    "completed": n_done,
                    "ttft_p50_ms": float(p50),
                    "ttft_p90_ms": float(p90),
                    "slo_attainment": attained,
                }
            )
            shown = "-" if attained is None else f"{attained:.1%}"
            cells = f"{int(mine.sum())} | {shed} | {p50:.0f} / {p90:.0f} | {shown}"
            lines.append(f"| {label} | {name} | {cells} |")
    (args.out / "slo_classes.json").write_text(json.dumps(rows, indent=2))
    (args.out / "slo_classes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
