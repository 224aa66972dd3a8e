"""``inference-sched serve``: run the EPP (ext_proc server, ``/metrics``, optional HTTP
gateway) over a pool of endpoints (``docs/epp.md``, "Run it" and "Flags")."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "options_from_args", "run"]


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {text!r}")
    return value


def _duration(text: str) -> float:
    """Seconds from ``50ms`` / ``2s`` / ``1m`` (Go's durations, as GIE's flags) or a number."""
    raw = text.strip()
    scale = 1.0
    for suffix, factor in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 50ms or 2s, got {text!r}"
        ) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration > 0, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_parser(sub: Any) -> None:
    """Register the ``serve`` subcommand on an argparse subparsers object."""
    p = sub.add_parser(
        "serve",
        help="run the EPP: Envoy ext_proc server, /metrics and an optional OpenAI gateway",
        description=(
            "Serve GIE's Endpoint Picker protocol (Envoy ext_proc) over a pool of model "
            "servers, with the data layer, health checks and GIE's metrics. Flags follow "
            "GIE's EPP (docs/epp.md, 'Flags')."
        ),
    )
    cfg = p.add_mutually_exclusive_group()
    cfg.add_argument(
        "--config",
        "--config-file",
        dest="config_file",
        metavar="FILE",
        help="EndpointPickerConfig YAML (default: GIE's default profile)",
    )
    cfg.add_argument("--config-text", metavar="YAML", help="the config inline")
    src = p.add_argument_group("endpoints (exactly one source)")
    src.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="a model server (repeatable; HOST:PORT alone names it HOST:PORT)",
    )
    src.add_argument(
        "--endpoints-file", metavar="FILE", help="YAML/JSON endpoint list, re-read when it changes"
    )
    src.add_argument(
        "--inference-pool",
        metavar="NAMESPACE/NAME",
        help="follow a Kubernetes InferencePool and its ready pods",
    )
    src.add_argument(
        "--pool-name", help="GIE's flag: the InferencePool name (with --pool-namespace)"
    )
    src.add_argument("--pool-namespace", default="default", help="default: default")
    src.add_argument(
        "--pool-group",
        choices=("inference.networking.k8s.io", "inference.networking.x-k8s.io"),
        help="InferencePool API group (default: both)",
    )
    src.add_argument(
        "--endpoint-selector",
        metavar="K=V,...",
        help="standalone mode: pods matching these labels (with --endpoint-target-ports)",
    )
    src.add_argument(
        "--endpoint-target-ports", metavar="P,...", help="1-8 ports of the selected pods"
    )
    net = p.add_argument_group("servers")
    net.add_argument("--host", default="0.0.0.0", help="interface (default 0.0.0.0, as GIE)")
    net.add_argument(
        "--grpc-port",
        "--ext-proc-port",
        dest="grpc_port",
        type=_port,
        default=9002,
        help="ext_proc gRPC port (default 9002)",
    )
    net.add_argument(
        "--grpc-health-port", type=_port, default=9003, help="gRPC health (default 9003)"
    )
    net.add_argument(
        "--metrics-port", type=_port, default=9090, help="Prometheus /metrics (default 9090)"
    )
    net.add_argument("--http-port", type=_port, help="also serve the OpenAI HTTP gateway here")
    dl = p.add_argument_group("data layer and routing")
    dl.add_argument(
        "--refresh-metrics-interval",
        type=_duration,
        default=0.05,
        help="scrape period per endpoint (default 50ms)",
    )
    dl.add_argument(
        "--metrics-staleness-threshold",
        type=_duration,
        default=2.0,
        help="pool gauges ignore older scrapes (default 2s)",
    )
    dl.add_argument(
        "--endpoint-unhealthy-after",
        type=_non_negative,
        default=3,
        help="failed scrapes in a row that take an endpoint out (default 3; 0: off)",
    )
    dl.add_argument(
        "--endpoint-unhealthy-on-refused",
        type=_bool,
        default=True,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="a refused connection takes it out at once (default true)",
    )
    dl.add_argument(
        "--num-fallbacks",
        type=_non_negative,
        default=1,
        help="endpoints after the pick for retries (default 1; 0: GIE's single pick)",
    )
    dl.add_argument(
        "--ext-proc-fallbacks",
        action="store_true",
        help="send the fallbacks over ext_proc too (ip:port,ip:port); off: the pick alone, "
        "which Envoy's ORIGINAL_DST cluster needs",
    )
    dl.add_argument(
        "--disable-endpoint-subset-filter",
        action="store_true",
        help="ignore Envoy's subset hint (metadata envoy.lb.subset_hint)",
    )
    dl.add_argument(
        "--max-body-bytes",
        type=_non_negative,
        default=16 * 1024 * 1024,
        help="request body limit, 413 beyond (default 16 MiB)",
    )
    dl.add_argument(
        "--body-mode",
        choices=("FULL_DUPLEX_STREAMED", "BUFFERED"),
        default="FULL_DUPLEX_STREAMED",
        help="body mode assumed when Envoy sends none",
    )
    dl.add_argument(
        "--drain-timeout",
        type=_duration,
        default=5.0,
        help="on SIGTERM, time in-flight requests get (default 5s)",
    )
    p.add_argument(
        "--allow-experimental-plugins",
        action="store_true",
        help="start with Alpha plugin types in the config (llm-d-router refuses them without "
        "this flag; `inference-sched plugins` lists each type's stability)",
    )
    p.add_argument("--seed", type=int, help="seed random tie-breaks (tests)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logs")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~inference_sched.epp.serve.ServeOptions` of parsed arguments."""
    from inference_sched.epp.serve import ServeOptions

    config: Any = None
    if args.config_file is not None:
        config = Path(args.config_file)
    elif args.config_text is not None:
        config = args.config_text
    pool = args.inference_pool
    if pool is None and args.pool_name:
        pool = f"{args.pool_namespace}/{args.pool_name}"
    return ServeOptions(
        config=config,
        endpoints=tuple(args.endpoint),
        endpoints_file=args.endpoints_file,
        inference_pool=pool,
        pool_group=args.pool_group,
        endpoint_selector=args.endpoint_selector,
        endpoint_target_ports=args.endpoint_target_ports,
        pool_namespace=args.pool_namespace,
        host=args.host,
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        http_port=args.http_port,
        refresh_metrics_interval_s=args.refresh_metrics_interval,
        metrics_staleness_threshold_s=args.metrics_staleness_threshold,
        endpoint_unhealthy_after=args.endpoint_unhealthy_after,
        endpoint_unhealthy_on_refused=args.endpoint_unhealthy_on_refused,
        num_fallbacks=args.num_fallbacks,
        ext_proc_fallbacks=args.ext_proc_fallbacks,
        disable_endpoint_subset_filter=args.disable_endpoint_subset_filter,
        max_body_bytes=max(1, args.max_body_bytes),
        body_mode=args.body_mode,
        drain_timeout_s=args.drain_timeout,
        pool_name=args.pool_name or (pool or "").partition("/")[2],
        seed=args.seed,
    )


def experimental_plugins(config: Any) -> list[str]:
    """The Alpha plugin instances of a loaded config, as ``name (type)`` (llm-d-router
    ``ValidatePluginStability``)."""
    from inference_sched.framework.registry import stability_of

    return [
        f"{spec.name} ({spec.type})"
        for spec in config.plugins
        if spec.cls is not None and stability_of(spec.cls) == "alpha"
    ]


def _check_stability(options: Any, allow: bool) -> str | None:
    """Refuse Alpha plugins unless allowed (None: fine). Loads the config once and leaves
    the loaded config in ``options.config``, so ``Serve`` does not load it again."""
    from inference_sched.framework.config import EndpointPickerConfig, load_config

    if not isinstance(options.config, EndpointPickerConfig):
        options.config = load_config(options.config)
    alpha = [] if allow else experimental_plugins(options.config)
    if not alpha:
        return None
    return (
        "the config uses experimental (Alpha) plugins: "
        + ", ".join(alpha)
        + "; start with --allow-experimental-plugins to run them"
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop, 2 on a bad setting."""
    from inference_sched.errors import InferenceSchedError

    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from inference_sched.epp.serve import Serve
    except ImportError as exc:
        print(
            f"serve needs the [epp] extra: pip install 'inference-sched[epp]' ({exc})",
            file=sys.stderr,
        )
        return 2
    try:
        options = options_from_args(args)
        refused = _check_stability(options, args.allow_experimental_plugins)
        if refused is not None:
            print(f"serve: {refused}", file=sys.stderr)
            return 2
        serve = Serve(options)
    except (InferenceSchedError, ValueError, ImportError, OSError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2

    def ready(line: str) -> None:
        print(line, flush=True)

    try:
        asyncio.run(serve.run_until_signal(ready))
    except (InferenceSchedError, OSError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m inference_sched.cli.serve``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="inference-sched")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
