"""Scheduling quality with several active scheduler replicas (GIE #1406's question).

A gateway spreads requests round-robin over N scheduler replicas; each replica has its
own table and plugins. Three ways to keep their state, each with the same scorers
(prefix 3, queue 2, kv-cache 2, active-request 1) on 16 simulated servers:

* ``local``: each replica's own approximate prefix index and in-flight counters (what
  GIE does today: every replica sees 1/N of the picks);
* ``precise``: llm-d's precise prefix index, fed by every server's KV events in every
  replica (each replica subscribes to all pods), in-flight counters local;
* ``redis``: the approximate index and the in-flight counters shared through one Redis
  (``redis`` parameters of the two producers, docs/redis.md); needs ``redis-server`` on
  the PATH and the ``[redis]`` extra, else skipped.

    python benchmarks/quality/replicas.py [--quick] [--out DIR] [--replicas 1,2,4]

Writes ``replicas.json`` and ``replicas.md`` (the table in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inference_sched.framework.config import load_config
from inference_sched.sim import report
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.workloads import load_workload

MODES = ("local", "precise", "redis")


def config_yaml(mode: str, redis_address: str = "", namespace: str = "") -> str:
    shared = (
        f"\n  parameters: {{redis: {{address: '{redis_address}', namespace: '{namespace}'}}}}"
        if mode == "redis"
        else ""
    )
    producer = (
        "precise-prefix-cache-producer" if mode == "precise" else "approx-prefix-cache-producer"
    )
    return f"""\
plugins:
- type: {producer}{shared if mode == "redis" else ""}
- type: inflight-load-producer{shared}
- type: prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: active-request-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: prefix-cache-scorer, weight: 3}}
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: active-request-scorer, weight: 1}}
  - {{pluginRef: max-score-picker}}
"""


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on loopback, or None when it cannot run here."""
    binary = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        redis = None  # type: ignore[assignment]
    if binary is None or redis is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(address)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield address
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 s of arrivals instead of 60")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/quality"))
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--rate", type=float, default=60.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in args.replicas.split(",")]
    duration = 10.0 if args.quick else 60.0
    workload = load_workload("shared-prefix", rate=args.rate, duration_s=duration, seed=0)
    print(
        f"shared-prefix @{args.rate:g} req/s, {duration:g} s: {len(workload.requests)} requests, "
        "16 servers",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    with redis_server() as address:
        for mode in MODES:
            if mode == "redis" and address is None:
                print("redis: skipped (no redis-server or no [redis] extra)", file=sys.stderr)
                continue
            for n in counts:
                namespace = f"replicas-{os.getpid()}-{mode}-{n}"
                config = load_config(config_yaml(mode, address or "", namespace))
                t0 = time.perf_counter()
                run = simulate(
                    workload,
                    config,
                    label=f"{mode}/{n}",
                    fleet=FleetConfig(num_servers=16, replicas=n),
                )
                summary = report.summarize(run)
                summary["mode"], summary["replicas"] = mode, n
                summary["wall_s"] = time.perf_counter() - t0
                rows.append(summary)
                ttft = [summary[f"ttft_{p}_s"] * 1e3 for p in ("p50", "p90", "p99")]
                print(
                    f"{mode:8s} x{n}: TTFT p50/p90/p99 {ttft[0]:.1f}/{ttft[1]:.1f}/{ttft[2]:.1f} "
                    f"ms, hit {summary['prefix_hit_rate']:.3f} ({summary['wall_s']:.1f} s)",
                    file=sys.stderr,
                )
    (args.out / "replicas.json").write_text(json.dumps(rows, indent=2, default=float))
    lines = [
        "| state | replicas | TTFT p50 (ms) | TTFT p90 (ms) | TTFT p99 (ms) | E2E p90 (s) "
        "| prefix hit rate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['replicas']} | {r['ttft_p50_s'] * 1e3:.1f} | "
            f"{r['ttft_p90_s'] * 1e3:.1f} | {r['ttft_p99_s'] * 1e3:.1f} | {r['e2e_p90_s']:.2f} | "
            f"{r['prefix_hit_rate']:.3f} |"
        )
    (args.out / "replicas.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
