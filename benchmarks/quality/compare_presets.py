"""Scheduling quality: the presets on the issue-4 workload matrix (simulated time).

Runs ``round-robin``, ``load-only`` and ``gie-default`` on the same request stream for
each workload of the matrix below, on 16 simulated H100 Llama-2-7B servers, and writes
one JSON report per workload plus a Markdown summary (TTFT p50/p90/p99, TPOT p90, E2E
p90, throughput, prefix-cache hit rate, preemptions) for docs/benchmarks.md. Each row is
exactly what ``inference-sched simulate`` prints for the same arguments (listed in the
summary). Trace workloads are skipped when the shared data is not found.

    python benchmarks/quality/compare_presets.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from inference_sched.sim import report
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.workloads import load_workload

PRESETS = ("round-robin", "load-only", "gie-default")

# (label, workload spec, generator options)
MATRIX: list[tuple[str, str, dict[str, Any]]] = [
    ("shared-prefix @30 req/s", "shared-prefix", {"rate": 30.0}),
    ("shared-prefix @60 req/s", "shared-prefix", {"rate": 60.0}),
    ("shared-prefix @90 req/s", "shared-prefix", {"rate": 90.0}),
    ("hot-prefix @60 req/s", "hot-prefix", {}),
    ("bursty (Gamma CV 3) @60 req/s", "bursty", {}),
    (
        "Mooncake conversation, 40 min",
        "trace:{data}/traces/mooncake_fast25_conversation_trace.first40min.jsonl",
        {},
    ),
    ("Azure conversation 2023, 1 h", "trace:{data}/traces/azure_llm_2023_conv.csv", {}),
]


def cli_args(spec: str, options: dict[str, Any]) -> str:
    parts = [f"--workload {spec}"]
    if "rate" in options:
        parts.append(f"--rate {options['rate']:g}")
    return "inference-sched simulate " + " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="generators only, 10 s each")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/quality"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = shared_data_dir()
    fleet = FleetConfig(num_servers=16)
    lines = [
        "| workload | config | TTFT p50 / p90 / p99 (ms) | TPOT p90 (ms) | E2E p90 (s) "
        "| req/s | prefix hits | preempt. |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    commands = []
    for label, spec, options in MATRIX:
        if spec.startswith("trace:"):
            if data is None or args.quick:
                print(f"{label}: skipped", file=sys.stderr)
                continue
            spec = spec.format(data=data)
        opts = dict(options, seed=0)
        if args.quick:
            opts["duration_s"] = 10.0
        workload = load_workload(spec, **opts)
        runs = []
        for preset in PRESETS:
            name, config = resolve_config(preset)
            t0 = time.perf_counter()
            runs.append(simulate(workload, config, label=name, fleet=fleet))
            print(
                f"{label} / {preset}: {len(workload.requests)} requests, "
                f"{time.perf_counter() - t0:.1f} s wall",
                file=sys.stderr,
            )
        info = {"name": workload.name, "requests": len(workload.requests), **workload.params}
        slug = label.split(" ")[0].replace(",", "")
        stem = f"{slug}-{int(options.get('rate', 0))}" if "rate" in options else slug
        report.write_json(args.out / f"{stem}.json", info, runs)
        commands.append(f"- {label}: `{cli_args(spec, options)}`")
        for s in (report.summarize(r) for r in runs):
            lines.append(
                f"| {label} ({len(workload.requests)} req) | {s['config']} "
                f"| {_ms(s['ttft_p50_s'])} / {_ms(s['ttft_p90_s'])} / {_ms(s['ttft_p99_s'])} "
                f"| {_ms(s['tpot_p90_s'])} | {_num(s['e2e_p90_s'], 2)} "
                f"| {_num(s['throughput_req_s'], 1)} | {_pct(s['prefix_hit_rate'])} "
                f"| {s['preemptions']} |"
            )
    summary = "\n".join(lines) + "\n\nCommands:\n\n" + "\n".join(commands) + "\n"
    (args.out / "summary.md").write_text(summary)
    print(summary)
    print(json.dumps({"out": str(args.out)}), file=sys.stderr)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1e3:,.0f}"


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
