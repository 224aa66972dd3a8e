"""The runnable EPP (issue 15): what ``inference-sched serve`` adds to a request.

Setup, all on loopback: one process hosts N simulated vLLM servers (``SimServer``, one
port each, ``time_scale`` 1000 so the servers are not the bottleneck); ``serve`` runs as
its own process over them with a prefix-aware config (queue 2, kv-cache 2, prefix 3,
in-flight accounting; GIE's 50 ms scrapes) and the HTTP gateway on; this process is the
client. Cases per pool size (3, 16, 64 endpoints; ``--quick``: 3 and 64, fewer requests):

* ``gateway/direct``, ``gateway/via-serve`` and ``gateway/proxy-floor``: one request at a
  time (OpenAI completions, ``max_tokens`` 1, prompts sharing a prefix) sent straight to
  a sim-server (round robin), through the gateway, or through a bare aiohttp proxy in
  its own process (round robin, no parsing or scheduling: the HTTP hop's own cost), the
  three taking turns request by request. ``ratio_vs_baseline`` = p50 / direct p50; extra
  ``added_p50_us`` / ``added_p99_us``. Target: <= 500 us added p50 at 64.
* ``ext_proc/round-trip``: one ext_proc stream per request, the way Envoy opens them on
  a shared HTTP/2 channel: request headers + body (end_of_stream), until the body echo's
  end_of_stream. Target: <= 250 us p50. ``ratio_vs_baseline`` = p50 / the bare gRPC
  stream of an echo server (``ext_proc/grpc-floor``: the same messages, no parsing or
  scheduling, in its own process; ``ext_proc/grpc-floor-throughput``: its CPU per
  stream under the throughput load below, the per-core ceiling of Python gRPC).
* ``ext_proc/throughput``: 32 concurrent streams for a few seconds; extra
  ``requests_per_s``, ``serve_cpu_us_per_request`` (serve's CPU time, from
  /proc/<pid>/stat, minus its idle scrape load, per request), ``requests_per_core_s``
  (1e6 / that). Target: >= 1,500 per core. The client shares the 2 cores, so
  ``requests_per_s`` is a floor; ``requests_per_core_s`` is serve's own cost.
* ``gateway/cpu``: serve's CPU per gateway request from the sequential run.

    python benchmarks/bench_epp.py [--quick] [--json PATH]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import REPO_ROOT, parse_args, percentiles_us, write_report

CONFIG = REPO_ROOT / "tests" / "e2e" / "data" / "epp.yaml"
TIME_SCALE = 1000.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SIMS_SCRIPT = """
import asyncio, sys
from inference_sched.sim.server import SimServer

async def main(n):
    servers = [SimServer(host="127.0.0.1", port=0, time_scale=%r, name=f"sim{i}")
               for i in range(n)]
    for s in servers:
        await s.start()
    print(" ".join(str(s.port) for s in servers), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.daemon = True
    reader.start()
    reader.join(timeout_s)
    if not box or not box[0]:
        raise RuntimeError(f"process did not start: exit {proc.poll()}")
    return box[0]


class Stack:
    """N sim-servers (one process) and ``serve`` over them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sims = subprocess.Popen(
            [sys.executable, "-c", SIMS_SCRIPT % TIME_SCALE, str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ports = [int(p) for p in wait_for_line(self.sims, 120).split()]
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        argv = [
            sys.executable,
            "-m",
            "inference_sched.cli.serve",
            "--config",
            str(CONFIG),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--grpc-health-port",
            str(free_port()),
            "--metrics-port",
            str(self.metrics_port),
            "--http-port",
            str(self.http_port),
        ]
        for i, port in enumerate(self.ports):
            argv += ["--endpoint", f"sim{i}=127.0.0.1:{port}"]
        self.serve = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        wait_for_line(self.serve, 120)
        # A bare aiohttp proxy (round robin, no parsing, no scheduling): the HTTP hop's
        # own cost, the floor of gateway/via-serve.
        self.proxy = subprocess.Popen(
            [sys.executable, "-c", PROXY_SCRIPT, *map(str, self.ports)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.proxy_port = int(wait_for_line(self.proxy, 60))

    def close(self) -> None:
        for proc in (self.proxy, self.serve, self.sims):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


PROXY_SCRIPT = """
import asyncio, itertools, sys
import aiohttp
from aiohttp import web

async def main(ports):
    upstreams = itertools.cycle(f"http://127.0.0.1:{p}" for p in ports)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
    )

    async def proxy(request):
        body = await request.read()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        url = next(upstreams) + request.rel_url.raw_path_qs
        async with session.post(url, data=body, headers=headers) as upstream:
            data = await upstream.read()
            return web.Response(status=upstream.status, body=data, headers={
                "content-type": upstream.headers.get("content-type", "application/json")})

    app = web.Application()
    app.router.add_post("/{tail:.*}", proxy)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1:]))
"""


def prompt(i: int) -> str:
    return "You are a helpful assistant answering briefly. " * 8 + f"question {i}"


def sequential_http(urls: list[str], count: int) -> np.ndarray:
    """Nanoseconds per request, one at a time over keep-alive connections."""
    import httpx

    samples = np.empty(count, dtype=np.int64)
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            body = {"model": "sim-model", "prompt": prompt(i), "max_tokens": 1}
            t0 = time.perf_counter_ns()
            response = client.post(urls[i % len(urls)] + "/v1/completions", json=body)
            samples[i] = time.perf_counter_ns() - t0
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
    return samples


def interleaved_http(url_sets: list[list[str]], count: int) -> list[np.ndarray]:
    """Nanoseconds per request for each set of base URLs, the sets taking turns request
    by request, so drift (scrapes, other load) hits them alike."""
    import httpx

    samples = [np.empty(count, dtype=np.int64) for _ in url_sets]
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            body = {"model": "sim-model", "prompt": prompt(i), "max_tokens": 1}
            for urls, out in zip(url_sets, samples, strict=True):
                t0 = time.perf_counter_ns()
                response = client.post(urls[i % len(urls)] + "/v1/completions", json=body)
                out[i] = time.perf_counter_ns() - t0
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
    return samples


def ext_proc_messages(i: int) -> list[Any]:
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    streamed = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
    headers = {":path": "/v1/completions", ":method": "POST", "content-type": "application/json"}
    body = json.dumps({"model": "sim-model", "prompt": prompt(i), "max_tokens": 1}).encode()
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    return [
        pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=header_map),
            protocol_config=pb.ProtocolConfiguration(
                request_body_mode=streamed, response_body_mode=streamed
            ),
        ),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
    ]


def _is_last(response: Any) -> bool:
    phase = response.WhichOneof("response")
    if phase == "immediate_response":
        raise RuntimeError(f"EPP answered {response.immediate_response.status.code}")
    return phase == "request_body" and bool(
        response.request_body.response.body_mutation.streamed_response.end_of_stream
    )


async def ext_proc_round_trips(target: str, count: int) -> np.ndarray:
    """Nanoseconds per stream (headers + body -> body echo end), one at a time."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    samples = np.empty(count, dtype=np.int64)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        for i in range(count):
            messages = ext_proc_messages(i)
            t0 = time.perf_counter_ns()
            call = stub.Process()
            for message in messages:
                await call.write(message)
            while not _is_last(await call.read()):
                pass
            samples[i] = time.perf_counter_ns() - t0
            await call.done_writing()
            call.cancel()
    return samples


async def ext_proc_throughput(target: str, seconds: float, concurrency: int = 32) -> int:
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(stub: Any, k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < deadline:
            call = stub.Process()
            for message in ext_proc_messages(i):
                await call.write(message)
            while not _is_last(await call.read()):
                pass
            await call.done_writing()
            call.cancel()
            done += 1
            i += concurrency

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        await asyncio.gather(*(worker(stub, k) for k in range(concurrency)))
    return done


ECHO_SCRIPT = """
import asyncio
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

class Echo(pb_grpc.ExternalProcessorServicer):
    async def Process(self, requests, context):
        async for message in requests:
            if message.HasField("request_body"):
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
                response = pb.ProcessingResponse()
                streamed = response.request_body.response.body_mutation.streamed_response
                streamed.body = message.request_body.body
                streamed.end_of_stream = True
                yield response

async def main():
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def grpc_floor(count: int, seconds: float) -> list[dict[str, Any]]:
    """The same streams against a bare echo servicer in its own process (no parsing,
    no scheduling): Python gRPC's own cost, the floor of ``ext_proc/*``."""
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        target = f"127.0.0.1:{int(wait_for_line(echo, 60))}"
        asyncio.run(ext_proc_round_trips(target, 200))  # warm
        trips = asyncio.run(ext_proc_round_trips(target, count))
        c0, t0 = cpu_seconds(echo.pid), time.perf_counter()
        done = asyncio.run(ext_proc_throughput(target, seconds))
        wall = time.perf_counter() - t0
        cpu_us = (cpu_seconds(echo.pid) - c0) / done * 1e6
    finally:
        echo.terminate()
        echo.wait(10)
    p50 = percentiles_us(trips)[0]
    per_request = np.full(1, int(wall / done * 1e9), dtype=np.int64)
    return [
        row("ext_proc/grpc-floor", 0, trips, p50),
        row(
            "ext_proc/grpc-floor-throughput",
            0,
            per_request,
            p50,
            requests_per_s=done / wall,
            serve_cpu_us_per_request=cpu_us,
            requests_per_core_s=1e6 / cpu_us if cpu_us > 0 else float("inf"),
            serve_idle_cpu_share=0.0,
        ),
    ]


def idle_cpu_rate(pid: int, seconds: float) -> float:
    """serve's CPU seconds per wall second with no traffic (scrapes, timers)."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)


def row(case: str, n: int, samples: np.ndarray, baseline_p50: float, **extra: Any) -> dict:
    p50, p99 = percentiles_us(samples)
    return {
        "case": case,
        "endpoints": n,
        "p50_us": p50,
        "p99_us": p99,
        "ratio_vs_baseline": p50 / baseline_p50 if baseline_p50 else 1.0,
        "requests": len(samples),
        **extra,
    }


def bench_pool(n: int, count: int, seconds: float, floor_p50: float) -> list[dict]:
    stack = Stack(n)
    try:
        direct_urls = [f"http://127.0.0.1:{p}" for p in stack.ports]
        via = [f"http://127.0.0.1:{stack.http_port}"]
        proxy = [f"http://127.0.0.1:{stack.proxy_port}"]
        sequential_http(direct_urls, 100)  # warm: JIT, connections, caches
        sequential_http(via, 200)
        sequential_http(proxy, 100)
        asyncio.run(ext_proc_round_trips(f"127.0.0.1:{stack.grpc_port}", 200))
        idle = idle_cpu_rate(stack.serve.pid, 2.0)
        c0, t0 = cpu_seconds(stack.serve.pid), time.perf_counter()
        direct, gateway, bare = interleaved_http([direct_urls, via, proxy], count)
        gw_cpu = cpu_seconds(stack.serve.pid) - c0 - idle * (time.perf_counter() - t0)
        d50, d99 = percentiles_us(direct)
        g50, g99 = percentiles_us(gateway)
        b50, b99 = percentiles_us(bare)
        rows = [
            row("gateway/direct", n, direct, d50),
            row(
                "gateway/via-serve", n, gateway, d50, added_p50_us=g50 - d50, added_p99_us=g99 - d99
            ),
            row(
                "gateway/proxy-floor", n, bare, d50, added_p50_us=b50 - d50, added_p99_us=b99 - d99
            ),
            row(
                "gateway/cpu",
                n,
                gateway,
                d50,
                serve_cpu_us_per_request=gw_cpu / count * 1e6,
                serve_idle_cpu_share=idle,
            ),
        ]
        target = f"127.0.0.1:{stack.grpc_port}"
        trips = asyncio.run(ext_proc_round_trips(target, count))
        rows.append(row("ext_proc/round-trip", n, trips, floor_p50))
        c0, t0 = cpu_seconds(stack.serve.pid), time.perf_counter()
        done = asyncio.run(ext_proc_throughput(target, seconds))
        wall = time.perf_counter() - t0
        busy = cpu_seconds(stack.serve.pid) - c0 - idle * wall
        cpu_us = busy / done * 1e6
        per_request = np.full(1, int(wall / done * 1e9), dtype=np.int64)
        rows.append(
            row(
                "ext_proc/throughput",
                n,
                per_request,
                floor_p50,
                requests_per_s=done / wall,
                serve_cpu_us_per_request=cpu_us,
                requests_per_core_s=1e6 / cpu_us if cpu_us > 0 else float("inf"),
                serve_idle_cpu_share=idle,
            )
        )
        return rows
    finally:
        stack.close()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = (3, 64) if args.quick else (3, 16, 64)
    count = 300 if args.quick else 2000
    seconds = 2.0 if args.quick else 5.0
    results = grpc_floor(count, seconds)
    floor_p50 = results[0]["p50_us"]
    for n in sizes:
        results += bench_pool(n, count, seconds, floor_p50)
    for r in results:
        if "requests_per_core_s" in r:
            print(
                f"{r['case']} @{r['endpoints']}: {r['requests_per_s']:.0f} req/s, "
                f"serve {r['serve_cpu_us_per_request']:.0f} CPU us/req "
                f"({r['requests_per_core_s']:.0f} req/s per core), "
                f"idle load {r['serve_idle_cpu_share']:.0%} of a core"
            )
        if "added_p50_us" in r:
            print(
                f"{r['case']} @{r['endpoints']}: adds {r['added_p50_us']:.0f} us p50, "
                f"{r['added_p99_us']:.0f} us p99 over direct"
            )
        if r["case"] == "gateway/cpu":
            print(
                f"gateway/cpu @{r['endpoints']}: serve "
                f"{r['serve_cpu_us_per_request']:.0f} CPU us/req"
            )
    write_report("epp", results, args.json)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
