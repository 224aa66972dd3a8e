"""Shared state through Redis (issue 6, part 5b): what a decision pays for it.

Starts its own ``redis-server`` on loopback (``tests/redis_server.py``: a free port, no
persistence) and times, in one process:

* ``decision/in-process`` (the baseline) and ``decision/redis``: one
  ``Scheduler.schedule`` with GIE's default profile (queue 2, kv-cache 2, prefix 3,
  max-score) plus ``inflight-load-producer``, over 16 / 64 / 256 endpoints, on 8k-token
  (32 KB) prompts of a shared-prefix workload (groups of a common 2k-token system prompt
  + a unique 6k-token question; 256 blocks hashed). In Redis mode both producers share
  their state (``redis`` set on both): the decision makes three round trips (prefix
  match, in-flight read, in-flight publish in PreRequest). After each decision the
  script calls ``Scheduler.run_deferred()`` (the index update: one more round trip in
  Redis mode, off the decision path) and, 32 requests later, ``response_complete``
  (the release: one round trip), so about 32 requests are in flight; ``deferred/...``
  and ``release/...`` time those. The two modes alternate in 5 rounds on identical
  request streams, after a warm-up of 300 requests each; load metrics change every 50
  requests (seeded alike), so the groups spread over the endpoints. ``overhead_us`` is the
  difference of the p50s; ``ratio_vs_baseline`` is baseline p50 / case p50.
* ``match/<encoding>`` and ``add/<encoding>``: one shared-index script call for 256
  hashes, with hashes written as 8 raw bytes (``binary``, what the plugins use) or as
  decimal digits, against an index holding 64 endpoints x 2,000 blocks; the ratio is
  decimal p50 / binary p50.
* ``round-trip/ping``: a PING on the same kind of connection (the floor).

Redis-mode decisions also carry ``script_p50_us_in_redis``: each script's execution time
inside Redis (from SLOWLOG, over 100 extra requests), which separates Redis's own work
from round trips and client time (the machine's noise inflates the latter most).

    python benchmarks/bench_redis.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import hashlib
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/redis_server.py

from _common import parse_args, percentiles_us, round_p50s_us, time_calls, write_report

from inference_sched import Endpoint, EndpointTable, Request, Response, Scheduler
from inference_sched.params import parse_params
from inference_sched.prefix.hashing import block_hashes
from inference_sched.state.redis import HashEncoding, RedisLink, RedisPrefixIndex, RedisPrefixParams
from inference_sched.state.redis.scripts import SCRIPTS
from tests.redis_server import RedisServer, redis_server_binary

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ROUNDS = 5
IN_FLIGHT = 32


def printable(rng: np.random.Generator, size: int) -> bytes:
    return rng.integers(0x20, 0x7F, size, dtype=np.uint8).tobytes()


def result(
    case: str, endpoints: int, samples: np.ndarray, ratio: float, **extra: Any
) -> dict[str, Any]:
    p50, p99 = percentiles_us(samples)
    rounds = round_p50s_us(samples)
    return {
        "case": case,
        "endpoints": endpoints,
        "p50_us": p50,
        "p99_us": p99,
        "ratio_vs_baseline": ratio,
        "calls": int(samples.size),
        "best_round_p50_us": min(rounds),
        "round_p50s_us": rounds,
        **extra,
    }


# ------------------------------------------------------------------ decisions
def config(redis: dict[str, Any] | None) -> dict[str, Any]:
    """GIE's default profile plus the in-flight producer; ``redis`` on both producers."""
    shared = {} if redis is None else {"redis": redis}
    return {
        "plugins": [
            {"type": "approx-prefix-cache-producer", "parameters": shared},
            {"type": "inflight-load-producer", "parameters": shared},
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ],
            }
        ],
    }


def make_table(num_endpoints: int) -> EndpointTable:
    table = EndpointTable()
    for i in range(num_endpoints):
        table.add(Endpoint(f"e{i}-rank-0", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8000))
    return table


def refresh_metrics(table: EndpointTable, rng: np.random.Generator) -> None:
    """New random queue lengths and KV usage, as a metrics scrape would bring."""
    rows = table.candidates()
    table.update_metrics(
        rows,
        waiting=rng.integers(0, 16, len(rows)).astype(np.float64),
        kv_usage_frac=rng.uniform(0, 1, len(rows)),
    )


def workload(num_requests: int, num_groups: int, seed: int) -> list[Request]:
    """Groups of a common 2k-token system prompt + a unique 6k-token question (32 KB)."""
    rng = np.random.default_rng(seed)
    systems = [printable(rng, 8 * 1024) for _ in range(num_groups)]
    return [
        Request.create(
            MODEL,
            prompt=systems[int(rng.integers(num_groups))] + printable(rng, 24 * 1024),
            request_id=f"r{i}",
        )
        for i in range(num_requests)
    ]


class Driver:
    """Runs requests through one scheduler, keeping ``IN_FLIGHT`` of them in flight.

    Load metrics change every 50 requests (as scrapes would, seeded: both modes see the
    same sequence), so prefix groups spread over endpoints instead of all landing on
    the one that static metrics favour (bench_prefix does the same).
    """

    def __init__(self, scheduler: Scheduler, seed: int) -> None:
        self.scheduler = scheduler
        self.open: deque[tuple[Request, Any]] = deque()
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def run(self, requests: list[Request]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per request: ``schedule``, ``run_deferred`` and a ``response_complete``."""
        n = len(requests)
        decided, deferred, released = (np.empty(n, dtype=np.int64) for _ in range(3))
        clock = time.perf_counter_ns
        s = self.scheduler
        for i, request in enumerate(requests):
            if self.count % 50 == 0:
                refresh_metrics(s.table, self.rng)
            self.count += 1
            t0 = clock()
            result = s.schedule(request)
            t1 = clock()
            s.run_deferred()
            t2 = clock()
            self.open.append((request, result))
            if len(self.open) > IN_FLIGHT:
                old, old_result = self.open.popleft()
                response = Response(old.request_id, is_end_of_stream=True)
                s.response_complete(old, response, old_result)
            released[i] = clock() - t2
            decided[i] = t1 - t0
            deferred[i] = t2 - t1
        return decided, deferred, released

    def close(self) -> None:
        for plugin in self.scheduler.plugins.values():
            close = getattr(plugin, "close", None)
            if callable(close):
                close()


def bench_decisions(server: RedisServer, quick: bool) -> list[dict[str, Any]]:
    results = []
    timed = 300 if quick else 2000
    for n in (16, 64, 256):
        # A patient timeout: a call timed out on this noisy machine would degrade the
        # following decisions (faster, and not what is measured). Errors are reported.
        redis = {
            "address": server.url,
            "namespace": f"bench-{uuid.uuid4().hex}",
            "timeoutMs": 1000,
        }
        drivers = {
            "in-process": Driver(Scheduler.from_config(config(None), make_table(n), seed=n), n),
            "redis": Driver(Scheduler.from_config(config(redis), make_table(n), seed=n), n),
        }
        groups = max(8, n // 4)
        warm = workload(300, groups, seed=n)
        for driver in drivers.values():
            driver.run(warm)
        requests = workload(timed, groups, seed=n + 1)
        gc.collect()
        parts: dict[str, list[tuple[np.ndarray, ...]]] = {mode: [] for mode in drivers}
        for chunk in np.array_split(np.arange(timed), ROUNDS):
            batch = [requests[i] for i in chunk]
            for mode, driver in drivers.items():  # same requests, alternating modes
                parts[mode].append(driver.run(batch))
        samples = {
            mode: tuple(np.concatenate([p[k] for p in chunks]) for k in range(3))
            for mode, chunks in parts.items()
        }
        links = [
            p.shared.link
            for p in drivers["redis"].scheduler.plugins.values()
            if getattr(p, "shared", None) is not None
        ]
        errors = sum(link.num_errors for link in links)
        server_us = redis_side(links[0], drivers["redis"], workload(100, groups, seed=n + 2))
        base = {kind: percentiles_us(samples["in-process"][k])[0] for k, kind in enumerate("dfr")}
        for mode in drivers:
            decided, deferred, released = samples[mode]
            p50 = {kind: percentiles_us(x)[0] for kind, x in zip("dfr", samples[mode], strict=True)}
            extra: dict[str, Any] = {"mode": mode}
            if mode == "redis":
                extra["redis_errors"] = errors
                extra["baseline"] = "in-process"
                extra["script_p50_us_in_redis"] = server_us
            for case, kind, x in (
                ("decision/gie-default+inflight/8k-tokens", "d", decided),
                ("deferred/index-update/8k-tokens", "f", deferred),
                ("release/response-complete", "r", released),
            ):
                overhead = {"overhead_us": p50[kind] - base[kind]} if mode == "redis" else {}
                results.append(
                    result(f"{case}/{mode}", n, x, base[kind] / p50[kind], **extra, **overhead)
                )
        print(
            f"decision n={n}: in-process p50 {base['d']:.1f} us, redis p50 "
            f"{percentiles_us(samples['redis'][0])[0]:.1f} us, redis errors {errors}",
            file=sys.stderr,
        )
        for driver in drivers.values():
            driver.close()
        cleaner = RedisLink(parse_params(RedisPrefixParams, redis, "redis"), role="bench")
        cleaner.clear_namespace()
        cleaner.close()
    return results


def redis_side(link: RedisLink, driver: Driver, requests: list[Request]) -> dict[str, float]:
    """p50 of each script's execution time inside Redis (SLOWLOG, every command logged)
    over a few more requests: the part of the overhead that is Redis's own work, apart
    from round trips and client time."""
    names = {hashlib.sha1(src.encode()).hexdigest().encode(): k for k, src in SCRIPTS.items()}
    link.command("CONFIG", "SET", "slowlog-log-slower-than", 0)
    link.command("CONFIG", "SET", "slowlog-max-len", 100_000)
    link.command("SLOWLOG", "RESET")
    driver.run(requests)
    entries = link.command("SLOWLOG", "GET", 100_000)
    link.command("CONFIG", "SET", "slowlog-log-slower-than", 10_000)
    durations: dict[str, list[int]] = {}
    for entry in entries:  # [id, time, duration us, [command, args...], ...]
        command = entry[3]
        if command[0].upper() == b"EVALSHA" and command[1] in names:
            durations.setdefault(names[command[1]], []).append(int(entry[2]))
    return {name: float(np.percentile(d, 50)) for name, d in sorted(durations.items())}


# ------------------------------------------------------------------ script calls
def bench_scripts(server: RedisServer, quick: bool) -> list[dict[str, Any]]:
    calls = 500 if quick else 5000
    rng = np.random.default_rng(7)
    prompt = printable(rng, 32 * 1024)
    hashes = block_hashes(prompt, MODEL, "", 16, 256)
    background = rng.integers(0, 2**64, (64, 2000), dtype=np.uint64)
    results = []
    indexes: dict[str, RedisPrefixIndex] = {}
    encodings: tuple[HashEncoding, ...] = ("binary", "decimal")
    for encoding in encodings:
        namespace = f"enc-{uuid.uuid4().hex}"
        raw = {"address": server.url, "namespace": namespace, "timeoutMs": 2000}
        params = parse_params(RedisPrefixParams, raw, "redis")
        index = RedisPrefixIndex.connect(params, encoding=encoding)
        for row in range(64):
            index.add(background[row], f"e{row}", 31250)
        for row in range(4):  # 4 endpoints hold the prompt's first 80%
            index.add(hashes[: 4 * len(hashes) // 5], f"e{row}", 31250)
        assert index.match(hashes)["e0"] == 4 * len(hashes) // 5
        indexes[encoding] = index

    def match(index: RedisPrefixIndex) -> Callable[[], object]:
        return lambda: index.match(hashes)

    def add(index: RedisPrefixIndex) -> Callable[[], object]:
        return lambda: index.add(hashes, "e5", 31250)

    link = indexes["binary"].link
    runs: dict[str, Callable[[], object]] = {"round-trip/ping": lambda: link.command("PING")}
    for label, index in indexes.items():
        runs[f"match/{label}"] = match(index)
        runs[f"add/{label}"] = add(index)
    for fn in runs.values():
        time_calls(fn, 20)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, fn in runs.items():
            parts[name].append(time_calls(fn, calls // ROUNDS))
    samples = {name: np.concatenate(p) for name, p in parts.items()}
    for name, x in samples.items():
        kind, _, label = name.partition("/")
        ratio = 1.0
        if label == "decimal":
            ratio = percentiles_us(x)[0] / percentiles_us(samples[f"{kind}/binary"])[0]
        extra: dict[str, Any] = {"blocks": len(hashes), "note": "ratio: decimal p50 / binary p50"}
        results.append(result(name, 64, x, ratio, **extra))
    for index in indexes.values():
        index.link.clear_namespace()
        index.close()
    return results


def main() -> None:
    args = parse_args(__doc__ or "")
    binary = redis_server_binary()
    if binary is None:
        sys.exit("bench_redis: redis-server is not installed (apt-get install redis-server)")
    with RedisServer(binary) as server:
        # Warm the kernels, then freeze the startup heap (bench_schedule).
        block_hashes(b"x" * 4096, MODEL)
        gc.collect()
        gc.freeze()
        results = bench_scripts(server, args.quick)
        results += bench_decisions(server, args.quick)
    write_report("redis", results, args.json)
    print(f"\n{'case (p50 of 5 consecutive rounds, us)':<52} {'endpoints':>9}  rounds")
    for r in results:
        rounds = " ".join(f"{x:7.1f}" for x in r["round_p50s_us"])
        print(f"{r['case']:<52} {r['endpoints']:>9}  {rounds}")
    over = [r for r in results if "overhead_us" in r]
    print(f"\n{'Redis-mode overhead over in-process (p50, us)':<52} {'endpoints':>9}")
    for r in over:
        print(f"{r['case']:<52} {r['endpoints']:>9}  {r['overhead_us']:+8.1f}")


if __name__ == "__main__":
    main()
