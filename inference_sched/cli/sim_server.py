"""``inference-sched sim-server``: run one simulated vLLM-like model server
(``docs/sim-server.md``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

__all__ = ["add_parser"]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {text!r}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_parser(sub: Any) -> None:
    """Register the ``sim-server`` subcommand on an argparse subparsers object."""
    p = sub.add_parser(
        "sim-server",
        help="run a simulated vLLM-like model server (OpenAI API, /metrics, KV events)",
        description=(
            "Serve the OpenAI completions and chat API, vLLM's /metrics and (optionally) "
            "vLLM's KV events from the fleet simulator's engine, in wall-clock time."
        ),
    )
    p.add_argument("--model", default="sim-model", help="served model name (default sim-model)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="HTTP port (default 8000; 0: any)")
    p.add_argument("--name", help="server name in logs and x-sim-server (default host:port)")
    p.add_argument(
        "--lora", action="append", default=[], metavar="NAME", help="serve a LoRA adapter too"
    )
    p.add_argument("--max-num-seqs", type=_at_least_one, default=1024, help="default 1024")
    p.add_argument(
        "--max-num-batched-tokens", type=_at_least_one, default=8192, help="default 8192"
    )
    p.add_argument(
        "--kv-blocks", type=_at_least_one, default=7296, help="KV cache blocks (default 7296)"
    )
    p.add_argument("--block-size", type=_at_least_one, default=16, help="a multiple of 16")
    p.add_argument("--max-loras", type=int, default=1, help="resident adapters (default 1)")
    p.add_argument("--max-model-len", type=_at_least_one, help="default kv-blocks x block-size")
    p.add_argument(
        "--latency-model",
        help="step-time model: h100-llama2-7b, h200-llama2-7b, h200-llama3-8b "
        "(default: chosen from --model)",
    )
    p.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        help="simulated seconds per wall second: 10 makes every step 10x shorter",
    )
    p.add_argument(
        "--default-max-tokens", type=_at_least_one, default=16, help="output without max_tokens"
    )
    p.add_argument(
        "--enable-force-include-usage",
        action="store_true",
        help="send usage in every stream, as vLLM's flag of that name",
    )
    p.add_argument(
        "--kv-events-port", type=_port, help="bind vLLM's KV-event PUB socket here (0: any)"
    )
    p.add_argument(
        "--kv-events-endpoint",
        metavar="ADDR",
        help="vLLM's endpoint instead: bound if it holds *, else connected "
        "(e.g. a scheduler's tcp://host:5557)",
    )
    p.add_argument("--kv-replay-port", type=_port, help="bind vLLM's replay socket (0: any)")
    p.add_argument("--kv-topic", help="KV-event topic (default kv@<host>:<port>@<model>)")
    p.add_argument("--grace", type=float, default=5.0, help="seconds open requests get on SIGTERM")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop, 2 on a bad setting."""
    from inference_sched.errors import ConfigError

    try:
        from inference_sched.sim.server import SimServer
    except ImportError as exc:  # aiohttp comes with the [epp] extra
        print(
            f"sim-server needs the [epp] extra: pip install 'inference-sched[epp]' ({exc})",
            file=sys.stderr,
        )
        return 2

    try:
        server = SimServer(
            model=args.model,
            host=args.host,
            port=args.port,
            name=args.name,
            loras=args.lora,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_blocks=args.kv_blocks,
            block_size=args.block_size,
            max_loras=args.max_loras,
            max_model_len=args.max_model_len,
            latency_model=args.latency_model,
            time_scale=args.time_scale,
            default_max_tokens=args.default_max_tokens,
            force_include_usage=args.enable_force_include_usage,
            kv_events_port=args.kv_events_port,
            kv_events_endpoint=args.kv_events_endpoint,
            kv_replay_port=args.kv_replay_port,
            kv_topic=args.kv_topic,
        )
    except (ValueError, ConfigError) as exc:
        print(f"sim-server: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(server, max(0.0, args.grace)))


async def _serve(server: Any, grace_s: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    try:
        await server.start(grace_s=grace_s)
    except (OSError, ValueError) as exc:
        print(f"sim-server: {exc}", file=sys.stderr)
        return 2
    kv = f", KV events {server.kv_events_address}" if server.kv_events_address else ""
    replay = f" (replay {server.kv_replay_address})" if server.kv_replay_address else ""
    print(f"sim-server {server.name}: serving {server.model!r} on {server.url}{kv}{replay}")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.aclose()
    return 0
