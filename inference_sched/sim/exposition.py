"""Simulated servers speak vLLM's ``/metrics``: text rendering and a loopback HTTP server.

:func:`render_vllm` writes one :class:`~inference_sched.sim.types.ServerMetrics` as the
Prometheus text exposition a vLLM V1 server publishes (names, types, label shapes and
number formatting of ``prometheus_client``, which vLLM uses), so anything that scrapes
vLLM (GIE's endpoint picker, our :class:`~inference_sched.datalayer.scraper.Scraper`,
Prometheus) can scrape a simulated server unchanged.

:class:`MetricsHTTPServer` serves one such page per simulated server on 127.0.0.1, one
port each, so an endpoint's ``address:metrics_port`` is all a scraper needs
(``metrics-data-source`` builds ``scheme://address:port/path``; its path is the same for
every endpoint, hence ports rather than paths tell servers apart). Pages are rendered per
request by a ``page_for(index)`` callable, so a test advances simulated time between two
scrapes and the next page shows it.

Page: ``docs/simulator/exposition.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Final

from inference_sched.framework.types import Endpoint
from inference_sched.sim.engine import Server
from inference_sched.sim.types import ServerMetrics

__all__ = [
    "CONTENT_TYPE",
    "MetricsHTTPServer",
    "PageFor",
    "render_vllm",
    "server_pages",
]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""``Content-Type`` of the Prometheus text format 0.0.4 (what vLLM answers)."""

PageFor = Callable[[int], str]
"""``page_for(server_index)``: the ``/metrics`` body of one server, rendered now."""

_HOST: Final = "127.0.0.1"
_MAX_HEAD_BYTES: Final = 16 * 1024  # a scraper's request head is ~200 bytes
_CONTROL_TIMEOUT_S: Final = 5.0  # starting, stopping a port, joining the thread
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# ====================================================================== rendering
def _escape(value: str) -> str:
    # The text format's three label-value escapes.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value as ``prometheus_client`` writes it (``floatToGoString``, which is
    untyped): Python's shortest repr, with Go's earlier switch to exponents."""
    v = float(value)
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(v)
    dot = text.find(".")
    if v > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _adapter_list(adapters: frozenset[str]) -> str:
    for name in adapters:
        # Readers split on commas and trim: such a name would come back as another.
        if not name or "," in name or name != name.strip():
            raise ValueError(
                f"LoRA adapter name {name!r} cannot be written in a comma list "
                "(empty, holds a comma, or has surrounding whitespace)"
            )
    return _escape(",".join(sorted(adapters)))  # sorted: the page is deterministic


def render_vllm(metrics: ServerMetrics, *, model: str, now_s: float) -> str:
    """``metrics`` as a vLLM V1 ``/metrics`` page (Prometheus text format 0.0.4).

    Families, in vLLM's names and shapes (``vllm``: ``vllm/v1/metrics/loggers.py``): the gauges
    ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
    ``vllm:kv_cache_usage_perc`` (a 0..1 fraction); the counters
    ``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total`` (tokens) and
    ``vllm:num_preemptions_total``; the info gauges
    ``vllm:lora_requests_info{max_lora,running_lora_adapters,waiting_lora_adapters}``
    (value: ``now_s``, vLLM writes the unix time of the update there) and
    ``vllm:cache_config_info{block_size,num_gpu_blocks}`` (value 1.0). Engine series carry
    ``engine="0",model_name=<model>`` as vLLM V1's do; the two info gauges carry their own
    labels only, as in vLLM. Numbers are formatted as ``prometheus_client`` formats them.
    LoRA info is always present (``max_lora="0"`` for a server without LoRA slots), so a
    reader always learns the adapter sets.

    Args:
        metrics: one scrape of a simulated server (:meth:`Server.metrics`).
        model: the served model's name (``model_name`` label).
        now_s: unix time of the scrape, written as the LoRA info's value.

    Raises:
        ValueError: an adapter name that a comma list cannot carry (empty, with a comma,
            or with surrounding whitespace).
    """
    labels = f'engine="0",model_name="{_escape(model)}"'
    running = _adapter_list(metrics.running_adapters)
    waiting = _adapter_list(metrics.waiting_adapters)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, sample: str, value: float) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{sample}}} {_number(value)}")

    # HELP texts and family order are vLLM V1's (vllm/v1/metrics/loggers.py).
    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        labels,
        metrics.running,
    )
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        labels,
        metrics.waiting,
    )
    family(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        labels,
        metrics.kv_usage_frac,
    )
    family(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        labels,
        metrics.prefix_queries_tokens,
    )
    family(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        labels,
        metrics.prefix_hits_tokens,
    )
    family(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        labels,
        metrics.preemptions,
    )
    family(
        "vllm:lora_requests_info",
        "gauge",
        "Running stats on lora requests.",
        f'max_lora="{metrics.max_loras}",running_lora_adapters="{running}",'
        f'waiting_lora_adapters="{waiting}"',
        now_s,
    )
    family(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
        f'block_size="{metrics.block_size}",engine="0",num_gpu_blocks="{metrics.num_gpu_blocks}"',
        1.0,
    )
    return "\n".join(lines) + "\n"


def server_pages(
    servers: Sequence[Server],
    clock: Callable[[], float],
    *,
    model: str,
    epoch_unix_s: float = 0.0,
) -> PageFor:
    """``page_for`` for :class:`MetricsHTTPServer` over simulated servers.

    Each call renders ``servers[i].metrics(clock())``: the server as of the simulated
    time the caller has reached (it must not be behind a time already given to that
    server). ``epoch_unix_s`` is the unix time of simulated time 0, for the LoRA info's
    timestamp.
    """

    def page_for(index: int) -> str:
        now = clock()
        return render_vllm(servers[index].metrics(now), model=model, now_s=epoch_unix_s + now)

    return page_for


# ====================================================================== HTTP server
class _Site:
    """One simulated server's listening socket and its open connections."""

    def __init__(self, server: asyncio.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.stopped = False


class MetricsHTTPServer:
    """Serves ``page_for(i)`` at ``http://127.0.0.1:<ports[i]><path>`` for each server ``i``.

    Args:
        page_for: renders server ``i``'s page; called once per request. An exception
            answers 500 (logged), as a crashing exporter would.
        num_servers: servers to serve (one port each).
        path: the page's path; other paths answer 404.

    Two ways to run it, both a context manager that closes every socket on exit:

    * ``with MetricsHTTPServer(...) as http:`` runs an event loop in a background thread
      (for blocking clients, or a real EPP pointed at the ports). ``page_for`` then runs
      on that thread: it must not race with the caller's own use of the servers (advance
      simulated time only between scrapes, or guard both with a lock).
    * ``async with MetricsHTTPServer(...) as http:`` serves from the caller's event loop,
      so ``page_for`` runs on the caller's thread (the natural choice next to an asyncio
      scraper).

    Failure injection: :meth:`set_status` makes one server answer an error code;
    :meth:`stop_server` closes its port and drops its connections (connection refused).

    Speaks enough HTTP/1.1 for scrapers: ``GET``/``HEAD``, keep-alive, ``Content-Length``.
    """

    def __init__(self, page_for: PageFor, num_servers: int, *, path: str = "/metrics") -> None:
        if num_servers < 1:
            raise ValueError(f"num_servers must be >= 1, got {num_servers}")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        self.page_for = page_for
        self.num_servers = num_servers
        self.path = path
        self.requests = [0] * num_servers
        """Requests answered per server (any status)."""
        self._status: dict[int, int] = {}
        self._sites: list[_Site] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None

    # ............................................................ addresses
    @property
    def host(self) -> str:
        """The address every server listens on (loopback only)."""
        return _HOST

    @property
    def ports(self) -> tuple[int, ...]:
        """Port of each server, by index (available once started)."""
        if not self._sites:
            raise RuntimeError("MetricsHTTPServer is not running")
        return tuple(site.port for site in self._sites)

    def url(self, index: int) -> str:
        """``http://127.0.0.1:<port><path>`` of server ``index``."""
        return f"http://{_HOST}:{self.ports[index]}{self.path}"

    def endpoint(self, index: int, name: str, **labels: str) -> Endpoint:
        """An :class:`Endpoint` whose metrics are server ``index``'s page: address
        127.0.0.1, serving port and metrics port both the page's port, so
        ``metrics-data-source`` (default path ``/metrics``) finds it."""
        port = self.ports[index]
        return Endpoint(name, _HOST, port, labels=labels, metrics_port=port)

    # ............................................................ failure injection
    def set_status(self, index: int, status: int | None) -> None:
        """Answer ``status`` (e.g. 500) with a short body instead of the page; ``None``
        serves the page again. Takes effect on the next request (thread-safe)."""
        self._check_index(index)
        if status is None:
            self._status.pop(index, None)
        else:
            self._status[index] = status

    def stop_server(self, index: int) -> None:
        """Close server ``index``'s port and its open connections (scrapes of it then
        fail with connection refused); the others keep serving. Call it from outside the
        loop in thread mode, or from the loop's thread in ``async with`` mode."""
        self._check_index(index)
        loop = self._require_loop()
        if self._thread is not None and threading.current_thread() is not self._thread:
            done = asyncio.run_coroutine_threadsafe(self._stop_site(index), loop)
            done.result(_CONTROL_TIMEOUT_S)
        else:
            # Same thread: do the synchronous part now; connections end on their own task.
            self._stop_site_now(index)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_servers:
            raise IndexError(f"server index {index} out of range 0..{self.num_servers - 1}")

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self._sites:
            raise RuntimeError("MetricsHTTPServer is not running")
        return self._loop

    # ............................................................ caller's loop
    async def __aenter__(self) -> MetricsHTTPServer:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start_async(self) -> None:
        """Open every port on the running event loop."""
        if self._sites:
            raise RuntimeError("MetricsHTTPServer is already running")
        self._loop = asyncio.get_running_loop()
        try:
            for index in range(self.num_servers):
                self._sites.append(await self._open(index))
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close every port and connection (idempotent)."""
        for index in range(len(self._sites)):
            await self._stop_site(index)
        self._sites.clear()

    # ............................................................ background thread
    def __enter__(self) -> MetricsHTTPServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Open every port, served by an event loop on a daemon thread."""
        if self._sites or self._thread is not None:
            raise RuntimeError("MetricsHTTPServer is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop_event = asyncio.Event()
            try:
                await self.start_async()
            except BaseException as exc:  # noqa: BLE001 - re-raised by start() below
                failure.append(exc)
                return
            finally:
                ready.set()
            try:
                await self._stop_event.wait()
            finally:
                await self.aclose()

        self._thread = threading.Thread(
            target=asyncio.run, args=(main(),), name="sim-metrics-http", daemon=True
        )
        self._thread.start()
        if not ready.wait(_CONTROL_TIMEOUT_S) or failure:
            self.close()
            if failure:
                raise failure[0]
            raise RuntimeError("MetricsHTTPServer did not start")

    def close(self) -> None:
        """Stop the background loop and close every socket (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        loop, stop = self._loop, self._stop_event
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        thread.join(_CONTROL_TIMEOUT_S)
        self._thread = None
        self._loop = None
        self._stop_event = None

    # ............................................................ serving
    async def _open(self, index: int) -> _Site:
        site: _Site | None = None

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert site is not None
            task = asyncio.current_task()
            assert task is not None
            site.connections[task] = writer
            try:
                await self._serve_connection(index, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                pass  # the client went away mid-request, or sent an oversized head
            finally:
                site.connections.pop(task, None)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        server = await asyncio.start_server(on_connect, _HOST, 0, limit=_MAX_HEAD_BYTES)
        port = int(server.sockets[0].getsockname()[1])
        site = _Site(server, port)
        return site

    def _stop_site_now(self, index: int) -> None:
        site = self._sites[index]
        if site.stopped:
            return
        site.stopped = True
        site.server.close()
        # Abort rather than cancel: the reader sees EOF and the task ends normally
        # (Python 3.11's stream callback logs an error for a cancelled connection task).
        for writer in site.connections.values():
            writer.transport.abort()

    async def _stop_site(self, index: int) -> None:
        self._stop_site_now(index)
        site = self._sites[index]
        tasks = list(site.connections)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await site.server.wait_closed()

    async def _serve_connection(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return  # the client closed its keep-alive connection
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            parts = request_line.decode("latin-1").split()
            length = headers.get("content-length", "0")
            if length.isascii() and length.isdigit() and int(length):
                await reader.readexactly(int(length))  # a GET has no body; drain any
            keep_alive = (
                len(parts) == 3
                and parts[2] == "HTTP/1.1"
                and headers.get("connection", "").lower() != "close"
            )
            status, body = self._answer(index, parts)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            ).encode("latin-1")
            writer.write(head if parts[:1] == ["HEAD"] else head + body)
            await writer.drain()
            if not keep_alive:
                return

    def _answer(self, index: int, parts: list[str]) -> tuple[int, bytes]:
        self.requests[index] += 1
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"bad request line\n"
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return 405, b"only GET and HEAD\n"
        if target.partition("?")[0] != self.path:
            return 404, f"not found; the page is at {self.path}\n".encode()
        forced = self._status.get(index)
        if forced is not None:
            return forced, f"HTTP {forced} (injected)\n".encode()
        try:
            page = self.page_for(index)
        except Exception:  # an exporter that crashes answers 500; keep serving
            log.exception("rendering the metrics page of simulated server %d failed", index)
            return 500, b"rendering the metrics page failed\n"
        return 200, page.encode("utf-8")
