"""Scrape + parse + table update of N endpoints every 50 ms: CPU share of one core.

One child process (not measured) runs an asyncio HTTP/1.1 server on one loopback port
that serves N simulated vLLM endpoints under distinct paths (``/e<i>/metrics``), each
answer a realistic 38 KB ``tests.fixtures.metrics_pages.vllm_page`` whose values change
from request to request. The parent runs the real ``Scraper`` (``core-metrics-extractor``, default
``max_concurrency``) for K cycles paced at 50 ms: each cycle is ``scrape_once()`` (start a
GET per endpoint, wait for all, parse, one bulk table write), then sleep to the next
50 ms boundary.

Measured in the parent: CPU time (``time.process_time``: user + system, all threads)
over the whole paced run divided by its wall time = **core_fraction** (share of one
core); per-cycle wall duration (p50/p99, the time to refresh the whole pool) and CPU per
cycle. Two paths run in the same process against the same server: the lean
``HttpConnection`` client (default for ``http://``) and httpx (one ``AsyncClient`` per
endpoint, the previous implementation; forced by making the scraper treat every URL as
unsupported by the lean client). ``ratio_vs_baseline`` = httpx CPU per cycle / lean CPU
per cycle. httpx cannot keep a 50 ms pace at 256 endpoints, so its cycles overrun and its
core_fraction saturates near 1.0: compare CPU per cycle for it.

    python benchmarks/bench_datalayer.py [--quick] [--json PATH]

Target (issue 5): 256 endpoints every 50 ms in <= 25% of one core. ``--quick``: 64
endpoints, fewer cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import multiprocessing
import resource
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import percentiles_us, write_report

INTERVAL_S = 0.05
VARIANTS = 64
"""Distinct pages per endpoint; a request gets the next one (values change every scrape)."""


# ---------------------------------------------------------------------- server (child)
def _answer(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _only(page: str, families: frozenset[str]) -> str:
    """The page as prometheus-client serves it for ``?name[]=...``: those families only."""
    kept = []
    for line in page.split("\n"):
        if line.startswith("# "):
            name = line.split(" ", 3)[2] if line.count(" ") >= 2 else ""
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in families:
            kept.append(line)
    return "\n".join(kept) + "\n"


def _pages(num_endpoints: int) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """(whole pages, pages filtered to the vLLM families) per endpoint and variant."""
    from inference_sched.datalayer.engines import BUILTIN_ENGINES
    from tests.fixtures.metrics_pages import vllm_page

    families = frozenset(BUILTIN_ENGINES["vllm"].metric_names)
    rng = np.random.default_rng(5)
    whole, filtered = [], []
    for _ in range(num_endpoints):
        variants, small = [], []
        for _ in range(VARIANTS):
            page = vllm_page(
                waiting=float(rng.integers(0, 32)),
                running=float(rng.integers(0, 64)),
                kv_usage=round(float(rng.uniform(0, 1)), 4),
                running_adapters=("sql-lora",) if rng.uniform() < 0.5 else ("a", "b"),
                lora_time=1.7e9 + float(rng.integers(0, 10_000)),
            )
            variants.append(_answer(page.encode()))
            small.append(_answer(_only(page, families).encode()))
        whole.append(variants)
        filtered.append(small)
    return whole, filtered


def _serve(num_endpoints: int, conn: Connection) -> None:
    """Child process: serve ``/e<i>/metrics`` until the parent closes ``conn``."""
    whole, filtered = _pages(num_endpoints)
    served = [0] * num_endpoints
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                head, self.buf = self.buf[:end], self.buf[end + 4 :]
                path = head.split(b" ", 2)[1]
                pages = filtered if b"?name%5B%5D=" in path else whole
                try:
                    i = int(path.split(b"/")[1][1:])
                    variant = pages[i][served[i] % VARIANTS]
                    served[i] += 1
                except (IndexError, ValueError):
                    variant = not_found
                self.transport.write(variant)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Server, "127.0.0.1", 0, backlog=1024)
        conn.send(server.sockets[0].getsockname()[1])
        await loop.run_in_executor(None, conn.recv_bytes)  # returns (EOFError) at close
        server.close()

    with contextlib.suppress(EOFError):
        asyncio.run(main())


@contextlib.contextmanager
def metrics_server(num_endpoints: int) -> Iterator[int]:
    """Start the server child; yield its port."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(num_endpoints, child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("metrics server did not start")
        yield int(parent.recv())
    finally:
        parent.close()
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


# ---------------------------------------------------------------------- scraper (parent)
class Source:
    """``metrics-data-source`` stand-in: one port, a path per endpoint."""

    insecure_skip_verify = True

    def __init__(self, port: int) -> None:
        self.port = port

    def url_for(self, endpoint: Any) -> str:
        return f"http://127.0.0.1:{self.port}/{endpoint.name}/metrics"


@contextlib.contextmanager
def httpx_only() -> Iterator[None]:
    """Make the scraper use httpx for every URL (the previous implementation)."""
    from inference_sched.datalayer import scraper

    original = scraper.is_supported
    scraper.is_supported = lambda url: False
    try:
        yield
    finally:
        scraper.is_supported = original


def run_cycles(
    port: int, num_endpoints: int, cycles: int, warmup: int, **options: Any
) -> dict[str, Any]:
    """Paced cycles with the real scraper; CPU and wall figures of the measured part."""
    from inference_sched.datalayer.scraper import Scraper
    from inference_sched.framework.handle import PluginHandle
    from inference_sched.framework.types import Endpoint
    from inference_sched.state.table import EndpointTable

    plugins = importlib.import_module("inference_sched.datalayer.plugins")
    table = EndpointTable()
    for i in range(num_endpoints):
        table.add(Endpoint(f"e{i}", "127.0.0.1", port))
    extractor = plugins.CoreMetricsExtractor(
        "core-metrics-extractor", plugins.CoreMetricsExtractor.Params(), PluginHandle(table)
    )

    async def go() -> dict[str, Any]:
        durations = np.empty(cycles, dtype=np.int64)
        cpu = np.empty(cycles, dtype=np.int64)
        failed = 0
        async with Scraper(
            table, Source(port), extractor, interval_s=INTERVAL_S, **options
        ) as scraper:
            for _ in range(warmup):  # connections, first-page layouts
                report = await scraper.scrape_once()
                if report.written != num_endpoints:
                    raise RuntimeError(f"warm-up scrape failed: {report.failed[:3]}")
            # As docs/architecture.md recommends for an EPP: keep the startup heap
            # (Numba, plugins) out of the collector's full passes.
            gc.collect()
            gc.freeze()
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            next_tick = time.monotonic()
            for k in range(cycles):
                c0, t0 = time.process_time_ns(), time.perf_counter_ns()
                report = await scraper.scrape_once()
                durations[k] = time.perf_counter_ns() - t0
                cpu[k] = time.process_time_ns() - c0
                failed += len(report.failed)
                next_tick += INTERVAL_S
                delay = next_tick - time.monotonic()
                if delay < 0:  # overran: no catch-up burst (as Scraper.run)
                    next_tick, delay = time.monotonic(), 0.0
                await asyncio.sleep(delay)
            cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "durations": durations,
            "cpu_per_cycle": cpu,
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "failed": failed,
            "user_s": usage1.ru_utime - usage0.ru_utime,
            "sys_s": usage1.ru_stime - usage0.ru_stime,
        }

    return asyncio.run(go())


CASES: dict[str, dict[str, Any]] = {
    "lean": {},
    "lean-filtered": {"request_families": True},
    "httpx": {},
}
"""Scraper options per case (httpx: forced through :func:`httpx_only`)."""


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        key: np.concatenate([r[key] for r in runs]) for key in ("durations", "cpu_per_cycle")
    }
    for key in ("cpu_s", "wall_s", "failed", "user_s", "sys_s"):
        merged[key] = sum(r[key] for r in runs)
    merged["round_cpu_per_endpoint_us"] = [
        round(float(np.median(r["cpu_per_cycle"])) / 1e3 / r["endpoints"], 1) for r in runs
    ]
    return merged


def main() -> None:
    from _common import parse_args

    args = parse_args(__doc__ or "")
    n = 64 if args.quick else 256
    rounds = 2 if args.quick else 4
    lean_cycles = 20 if args.quick else 100  # per round
    httpx_cycles = 10 if args.quick else 40
    print(f"starting the metrics server for {n} endpoints ...", file=sys.stderr)
    results = []
    with metrics_server(n) as port:
        by_case: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
        # The lean cases alternate round by round: the machine's pace drifts.
        for k in range(rounds):
            for case in ("lean", "lean-filtered"):
                print(f"round {k + 1}/{rounds}, {case}: {lean_cycles} cycles ...", file=sys.stderr)
                run = run_cycles(port, n, lean_cycles, warmup=3, **CASES[case])
                run["endpoints"] = n
                by_case[case].append(run)
        print(f"httpx: {httpx_cycles} cycles of {n} endpoints every 50 ms ...", file=sys.stderr)
        with httpx_only():
            run = run_cycles(port, n, httpx_cycles, warmup=3)
        run["endpoints"] = n
        by_case["httpx"].append(run)
    from tests.fixtures.metrics_pages import vllm_page

    page_bytes = len(vllm_page().encode())
    runs = {case: _merge(r) for case, r in by_case.items()}
    base_cpu = float(np.median(runs["httpx"]["cpu_per_cycle"]))
    for case, r in runs.items():
        p50, p99 = percentiles_us(r["durations"])
        cpu_p50, cpu_p99 = percentiles_us(r["cpu_per_cycle"])
        cycle_cpu = float(np.median(r["cpu_per_cycle"]))
        results.append(
            {
                "case": f"scrape-cycle/{case}",
                "endpoints": n,
                "p50_us": p50,
                "p99_us": p99,
                "ratio_vs_baseline": base_cpu / cycle_cpu,
                "baseline": "scrape-cycle/httpx (CPU per cycle, p50)",
                "core_fraction": r["cpu_s"] / r["wall_s"],
                "core_fraction_at_50ms": cycle_cpu / 1e9 / INTERVAL_S,
                "cpu_per_cycle_p50_us": cpu_p50,
                "cpu_per_cycle_p99_us": cpu_p99,
                "cpu_per_endpoint_us": cpu_p50 / n,
                "round_cpu_per_endpoint_us": r["round_cpu_per_endpoint_us"],
                "cycles": int(r["durations"].size),
                "interval_ms": INTERVAL_S * 1e3,
                "wall_s": r["wall_s"],
                "failed_scrapes": r["failed"],
                "user_fraction": r["user_s"] / r["wall_s"],
                "sys_fraction": r["sys_s"] / r["wall_s"],
                "page_bytes": page_bytes if case != "lean-filtered" else None,
                "note": "p50/p99: wall time of one scrape_once over all endpoints",
            }
        )
    write_report("datalayer", results, args.json)


if __name__ == "__main__":
    main()
