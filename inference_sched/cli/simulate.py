"""``inference-sched simulate``: compare configurations on one request stream."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inference_sched.sim.presets import PRESETS

__all__ = ["DEFAULT_CONFIGS", "add_parser"]

DEFAULT_CONFIGS = ("round-robin", "load-only", "gie-default")
"""What ``simulate`` compares when no ``--config`` is given."""


def add_parser(sub: Any) -> None:
    """Register the ``simulate`` subcommand on an argparse subparsers object."""
    p = sub.add_parser(
        "simulate",
        help="compare configurations on a simulated pool (workload or trace); prints a table",
        description=(
            "Route the same request stream through each configuration over simulated "
            "vLLM-like servers and compare latency, throughput and prefix-cache hits."
        ),
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="PRESET|FILE",
        help=f"a preset ({', '.join(PRESETS)}) or an EndpointPickerConfig YAML; "
        f"repeat to compare (default: {', '.join(DEFAULT_CONFIGS)})",
    )
    p.add_argument(
        "--workload",
        default="shared-prefix",
        metavar="NAME|trace:PATH",
        help="a generator name or trace:PATH (Mooncake JSONL, Azure CSV, normalized .gz)",
    )
    p.add_argument("--endpoints", type=int, default=16, help="simulated servers (default 16)")
    p.add_argument(
        "--prefill-servers",
        type=int,
        default=0,
        help="P/D: label this many servers prefill and the rest decode (default 0: no roles)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="active scheduler replicas taking requests round-robin (default 1)",
    )
    p.add_argument("--rate", type=float, help="arrival rate, requests/s (generators)")
    p.add_argument("--duration", type=float, help="seconds of arrivals (generators; traces: cut)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="write plots (needs [plot])")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the comparison described by ``args``; 0 on success."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from inference_sched.sim import report
    from inference_sched.sim.fleet import FleetConfig, simulate
    from inference_sched.sim.presets import resolve_config
    from inference_sched.sim.workloads import load_workload

    console = Console(file=sys.stdout)
    configs = [resolve_config(spec) for spec in (args.config or DEFAULT_CONFIGS)]
    options: dict[str, Any] = {"seed": args.seed}
    if args.rate is not None:
        options["rate"] = args.rate
    if args.duration is not None:
        options["duration_s"] = args.duration
    workload = load_workload(args.workload, **options)
    fleet = FleetConfig(
        num_servers=args.endpoints,
        seed=args.seed,
        replicas=args.replicas,
        prefill_servers=args.prefill_servers,
    )
    replicas = f", {args.replicas} scheduler replicas" if args.replicas > 1 else ""
    console.print(
        f"workload {workload.name}: {len(workload.requests)} requests, "
        f"{args.endpoints} servers ({fleet.engine.latency_model}){replicas}, "
        f"metrics every {fleet.scrape_interval_s * 1e3:.0f} ms"
    )
    runs = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        disable=args.no_progress,
        transient=False,
    ) as bar:
        for label, config in configs:
            task = bar.add_task(label, total=len(workload.requests))

            def advance(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done)

            runs.append(simulate(workload, config, label=label, fleet=fleet, progress=advance))
    summaries = [report.summarize(r) for r in runs]
    report.print_comparison(summaries, console=console)
    workload_info = {
        "name": workload.name,
        "requests": len(workload.requests),
        "model": workload.model,
        "endpoints": args.endpoints,
        "seed": args.seed,
        **workload.params,
    }
    if args.json is not None:
        report.write_json(args.json, workload_info, runs)
        console.print(f"wrote {args.json}")
    if args.plot is not None:
        from inference_sched.sim.plots import plot_runs

        plot_runs(runs, args.plot)
        console.print(f"wrote {args.plot}")
    return 0
