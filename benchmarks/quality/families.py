"""Where each issue-7 plugin family helps and where it hurts (simulated time).

Each row of the matrix runs configurations on one request stream over 16 simulated H100
Llama-2-7B servers (seed 0) and reports what ``inference-sched simulate`` prints for
the same arguments (the command is listed with each table):

* burst-proof cost routing: ``gie-default`` vs Dynamo's cost model alone
  (``configs/kv-cost-credit4.yaml``) vs ``ours-best`` on bursty, hot-prefix and
  shared-prefix traffic;
* session affinity: ``gie-default`` with and without ``session-affinity-filter`` on
  multi-turn chat;
* P/D: the same 16 servers colocated (``gie-default``) or split 4 prefill + 12 decode
  (``configs/pd-prefix-based.yaml``, ``configs/pd-always.yaml``) on shared-prefix and,
  when the shared data is found, the Mooncake conversation trace.

    python benchmarks/quality/families.py [--quick] [--out DIR]

Writes ``families.json`` and ``families.md`` in DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from inference_sched.framework.config import load_config_file
from inference_sched.sim import report
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.workloads import load_workload

HERE = Path(__file__).parent
SESSION = HERE / "configs" / "session-affinity.yaml"

# (family, workload spec, generator options, configs, prefill servers)
MATRIX: list[tuple[str, str, dict[str, Any], list[str], int]] = [
    ("cost", "bursty", {}, ["gie-default", "configs/kv-cost-credit4.yaml", "ours-best"], 0),
    ("cost", "hot-prefix", {}, ["gie-default", "configs/kv-cost-credit4.yaml", "ours-best"], 0),
    ("cost", "shared-prefix", {}, ["gie-default", "configs/kv-cost-credit4.yaml", "ours-best"], 0),
    ("session", "multi-turn", {}, ["gie-default", "configs/session-affinity.yaml"], 0),
    (
        "pd",
        "shared-prefix",
        {},
        ["gie-default", "configs/pd-prefix-based.yaml", "configs/pd-always.yaml"],
        4,
    ),
    (
        "pd",
        "trace:{data}/traces/mooncake_fast25_conversation_trace.first40min.jsonl",
        {},
        ["gie-default", "configs/pd-prefix-based.yaml", "configs/pd-always.yaml"],
        4,
    ),
]

COLUMNS = (
    ("TTFT p50/p90/p99 (ms)", ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s"), 1e3),
    ("TPOT p99 (ms)", ("tpot_p99_s",), 1e3),
    ("E2E p90 (s)", ("e2e_p90_s",), 1.0),
    ("req/s", ("throughput_req_s",), 1.0),
    ("prefix hits", ("prefix_hit_rate",), 100.0),
)


def config_for(spec: str) -> tuple[str, Any]:
    if spec.startswith("configs/"):
        return Path(spec).stem, load_config_file(HERE / spec)
    return resolve_config(spec)


def command(spec: str, configs: list[str], prefill: int) -> str:
    parts = ["inference-sched simulate", f"--workload {spec}"]
    parts += [
        f"--config {c if not c.startswith('configs/') else 'benchmarks/quality/' + c}"
        for c in configs
    ]
    if prefill:
        parts.append(f"--prefill-servers {prefill}")
    return " ".join(parts)


def cell(summary: dict[str, Any], keys: tuple[str, ...], scale: float) -> str:
    values = [summary.get(k) for k in keys]
    if any(v is None for v in values):
        return "-"
    if len(values) > 1:
        return " / ".join(f"{float(v) * scale:,.0f}" for v in values)  # type: ignore[arg-type]
    value = float(values[0]) * scale  # type: ignore[arg-type]
    return (
        f"{value:.1f}%" if scale == 100.0 else f"{value:,.2f}" if scale == 1.0 else f"{value:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="generators only, 10 s each")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/quality"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = shared_data_dir()
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for family, spec, options, configs, prefill in MATRIX:
        if "{data}" in spec:
            if args.quick or data is None:
                print(f"skipped {spec} (no shared data or --quick)", file=sys.stderr)
                continue
            spec = spec.format(data=data)
        extra = {"duration_s": 10.0} if args.quick and not spec.startswith("trace:") else {}
        workload = load_workload(spec, seed=0, **options, **extra)
        fleet = FleetConfig(num_servers=16, prefill_servers=prefill)
        header = "| config | " + " | ".join(name for name, _, _ in COLUMNS) + " |"
        name = workload.name if not spec.startswith("trace:") else Path(spec[6:]).name
        lines += [f"**{family}: {name}** ({len(workload.requests)} requests)", "", header]
        lines.append("| --- |" + " ---: |" * len(COLUMNS))
        for config_spec in configs:
            label, config = config_for(config_spec)
            t0 = time.perf_counter()
            run = simulate(workload, config, label=label, fleet=fleet)
            summary = report.summarize(run)
            wall = time.perf_counter() - t0
            print(f"{family} {name} {label}: {wall:.1f} s", file=sys.stderr)
            rows.append({"family": family, "workload": name, "config": label, **summary})
            cells = " | ".join(cell(summary, keys, scale) for _, keys, scale in COLUMNS)
            lines.append(f"| {label} | {cells} |")
        shown = spec if not spec.startswith("trace:") else "trace:" + str(Path(spec[6:]))
        lines += ["", f"`{command(shown, configs, prefill)}`", ""]
    (args.out / "families.json").write_text(json.dumps(rows, indent=2, default=float))
    (args.out / "families.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
