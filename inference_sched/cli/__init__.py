"""``inference-sched`` command line: demo, validate, plugins, simulate, scrape."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference_sched.cli import scrape as datalayer_cli
from inference_sched.cli import serve as serve_cli
from inference_sched.cli import sim_server as sim_server_cli
from inference_sched.cli import simulate as sim_cli
from inference_sched.errors import ConfigError, InferenceSchedError
from inference_sched.framework import registry
from inference_sched.framework.config import load_config, load_config_file
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Endpoint, Request, Response
from inference_sched.state.table import EndpointTable

__all__ = ["main"]


def _cmd_plugins(args: argparse.Namespace) -> int:
    infos = list(registry.available())
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "type": i.type,
                        "kinds": list(i.kinds),
                        "stability": i.stability,
                        "deprecated": i.replaced_by is not None,
                        "replaced_by": i.replaced_by,
                        "source": i.source,
                        "error": i.error,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    width = max((len(i.type) for i in infos), default=4)
    kinds_width = max((len(",".join(i.kinds)) for i in infos), default=5)
    print(f"{'TYPE':<{width}}  {'KINDS':<{kinds_width}}  {'STABILITY':<9}  SOURCE")
    for info in infos:
        kinds = ",".join(info.kinds) if info.kinds else "(failed to load)"
        stability = info.stability + (
            " (deprecated: " + info.replaced_by + ")" if info.replaced_by else ""
        )
        print(f"{info.type:<{width}}  {kinds:<{kinds_width}}  {stability:<9}  {info.source}")
        if info.error:
            print(f"{'':<{width}}  error: {info.error}")
    return 0


def _cmd_simulate_multicluster(args: argparse.Namespace) -> int:
    from inference_sched.sim import multicluster  # the simulator loads only when asked

    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return multicluster.main(rest)


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(sys.stdin.read()) if args.file == "-" else load_config_file(args.file)
    except ConfigError as exc:
        print(
            f"{args.file}: invalid EndpointPickerConfig ({len(exc.errors)} errors)", file=sys.stderr
        )
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for spec in config.plugins:
        if registry.stability_of(spec.cls) == "alpha":
            print(
                f"note: plugin {spec.name!r} ({spec.type}) is Alpha in llm-d-router, which "
                "starts it only with --allow-experimental-plugins",
                file=sys.stderr,
            )
    print(config.to_yaml(), end="")
    return 0


def _demo_table(num_endpoints: int, rng: np.random.Generator) -> EndpointTable:
    table = EndpointTable()
    for i in range(num_endpoints):
        table.add(Endpoint(f"vllm-{i}-rank-0", f"10.0.{i // 250}.{i % 250 + 1}", 8000))
    rows = table.candidates()
    table.update_metrics(
        rows,
        waiting=rng.integers(0, 8, len(rows)).astype(np.float64),
        running=rng.integers(0, 32, len(rows)).astype(np.float64),
        kv_usage_frac=rng.uniform(0.05, 0.95, len(rows)),
    )
    return table


def _cmd_demo(args: argparse.Namespace) -> int:
    """Schedule a synthetic request stream over a synthetic pool; report picks and latency."""
    rng = np.random.default_rng(args.seed)
    table = _demo_table(args.endpoints, rng)
    config = load_config_file(args.config) if args.config else load_config(None)
    # Compile the kernels on a throwaway pool first, so the figures exclude JIT time.
    warm = Scheduler.from_config(config, _demo_table(args.endpoints, rng), seed=args.seed)
    for i in range(20):
        warm.schedule(Request.create("warm-up", prompt=b"x" * 64, request_id=f"warm-{i}"))
    scheduler = Scheduler.from_config(config, table, seed=args.seed)
    gc.collect()
    gc.freeze()  # startup objects out of the collector's reach (docs/architecture.md)
    print(f"config: {args.config or 'GIE default (queue 2, kv-cache 2, prefix 3)'}")
    for profile in scheduler.profiles.values():
        print(f"  {profile!r}")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    prompts = [f"system prompt {g} " * 40 for g in range(8)]
    rows = table.candidates()
    picks: Counter[str] = Counter()
    latencies = np.empty(args.requests, dtype=np.float64)
    step = max(1, args.requests // 10)
    for i in range(args.requests):
        if i % 50 == 0:  # a scrape: metrics move between decisions
            table.update_metrics(
                rows,
                waiting=np.maximum(0, table.waiting[rows] + rng.integers(-2, 3, len(rows))),
                kv_usage_frac=np.clip(
                    table.kv_usage_frac[rows] + rng.normal(0, 0.05, len(rows)), 0, 1
                ),
            )
        request = Request.create(
            "meta-llama/Llama-3.1-8B-Instruct",
            prompt=prompts[i % len(prompts)] + f"question {i}",
            request_id=f"demo-{i}",
        )
        t0 = time.perf_counter_ns()
        result = scheduler.schedule(request)
        latencies[i] = (time.perf_counter_ns() - t0) / 1e3
        scheduler.run_deferred()  # the answer is out: e.g. the prefix index update
        picks[result.endpoint.name] += 1
        # The response ends at once here: release what PreRequest hooks took.
        done = Response(request.request_id, is_start_of_stream=True, is_end_of_stream=True)
        scheduler.response_streaming(request, done, result)
        scheduler.response_complete(request, done, result)
        if (i + 1) % step == 0:
            print(f"  scheduled {i + 1}/{args.requests}", file=sys.stderr)
    print(
        f"\n{args.requests} decisions over {args.endpoints} endpoints: "
        f"p50 {np.percentile(latencies, 50):.1f} us, p99 {np.percentile(latencies, 99):.1f} us"
        " (schedule() only; deferred work is listed below)"
    )
    print("\npicks per endpoint (top 10):")
    for name, count in picks.most_common(10):
        row = table.row(name)
        print(
            f"  {name:<16} {count:>6}  waiting={table.waiting[row]:.0f} "
            f"kv={table.kv_usage_frac[row]:.2f}"
        )
    print("\nplugin time per call:")
    for stats in scheduler.stats():
        if stats.calls:
            print(
                f"  {stats.extension_point:<22} {stats.plugin_name:<30} {stats.mean_us:7.2f} us"
                f"  errors={stats.errors}"
            )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-sched",
        description="Endpoint picking for LLM inference (GIE EndpointPickerConfig compatible).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="schedule a synthetic request stream with a config and report picks/latency"
    )
    demo.add_argument("--config", type=Path, help="EndpointPickerConfig YAML (default: GIE's)")
    demo.add_argument("--endpoints", type=int, default=16)
    demo.add_argument("--requests", type=int, default=5000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    validate = sub.add_parser(
        "validate", help="check an EndpointPickerConfig; print the effective config or every error"
    )
    validate.add_argument("file", help="YAML file, or - for standard input")
    validate.set_defaults(func=_cmd_validate)

    sim_cli.add_parser(sub)
    sim_server_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    multicluster = sub.add_parser(
        "simulate-multicluster",
        help="two clusters behind a cluster-level EPP: multicluster scorers vs random and "
        "round-robin (options: simulate-multicluster --help)",
        add_help=False,
    )
    multicluster.add_argument("args", nargs=argparse.REMAINDER)
    multicluster.set_defaults(func=_cmd_simulate_multicluster)
    datalayer_cli.add_parser(sub)

    plugins = sub.add_parser("plugins", help="list every plugin type, its kinds and its source")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inference-sched`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate-multicluster"]:  # its own parser takes the options
        argv = ["simulate-multicluster", "--", *argv[1:]]
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except InferenceSchedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
