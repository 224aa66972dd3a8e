"""Poll every endpoint's ``/metrics`` and write the results into the table in bulk.

GIE runs one collector goroutine per endpoint (``gateway-api-inference-extension:
pkg/epp/datalayer/collector.go``); here one asyncio task does the polling for the whole
pool (``docs/datalayer.md``):

* every ``interval_s`` a *tick* starts a fetch for each endpoint that has none in
  flight (at most ``max_concurrency`` run at once, each endpoint over its own keep-alive
  connection: :class:`~inference_sched.datalayer.fetch.HttpConnection` for ``http://``
  pages, httpx for ``https://`` and when a ``transport`` is given), then writes every
  result that arrived since the previous tick in **one** ``EndpointTable.update_metrics``
  call (plus ``set_adapters`` per row with LoRA info);
* a fetch has ``timeout_s`` in total; a slow endpoint keeps its own fetch in flight and
  is skipped by later ticks until it ends, so it never delays the others;
* a failed scrape (timeout, refused, non-200, oversized or malformed page, no known
  metric on it) writes nothing: the row keeps its last good values and its
  ``last_update_s`` ages, which is what *stale* means (:func:`is_stale`). Each failure
  bumps a per-endpoint counter; logs are written on state changes only (first
  failure, recovery), as GIE does;
* unlike GIE, an endpoint that cannot be reached ``unhealthy_after`` times in a row, or
  refuses the connection, leaves the candidate set until a scrape succeeds again
  (:class:`~inference_sched.datalayer.health.EndpointHealth`, docs/datalayer.md).

Thread safety: the scraper runs on one event loop; its table writes take ``table.lock``
so discovery may change the table from another thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import mmap
import os
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import quote

import attrs
import httpx
import numpy as np
import numpy.typing as npt

from inference_sched.datalayer.fetch import (
    Body,
    FetchError,
    FetchTimeout,
    HttpConnection,
    Outcome,
    is_supported,
)
from inference_sched.datalayer.health import EndpointHealth, FailureKind, failure_kind
from inference_sched.datalayer.parse import EndpointSample, Page, Span
from inference_sched.datalayer.ticks import run_ticks
from inference_sched.errors import ConfigError, DataError, InferenceSchedError
from inference_sched.framework.config import EndpointPickerConfig, load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.interfaces import DataSource, Extractor
from inference_sched.framework.types import Endpoint
from inference_sched.state.table import EndpointHandle, EndpointTable

if TYPE_CHECKING:
    from inference_sched.framework.scheduler import Scheduler

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EndpointStatus",
    "MetricsExtractor",
    "MetricsSource",
    "ScrapeReport",
    "Scraper",
    "scrapers_for",
    "scrapers_from_config",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
"""Largest ``/metrics`` body read (a vLLM page is ~40 KB; a bigger one is an error)."""


# ------------------------------------------------------------------ contracts
MetricsSource = DataSource
"""Where an endpoint's metrics page is: the framework's data-source Protocol."""
MetricsExtractor = Extractor
"""Turns a page into an :class:`EndpointSample`: the framework's extractor Protocol."""


# ------------------------------------------------------------------ status
@attrs.define
class EndpointStatus:
    """The scraper's view of one endpoint."""

    errors_total: int = 0
    """Failed scrapes since the endpoint was first seen."""
    consecutive_failures: int = 0
    """Failed scrapes since the last success (0 = healthy)."""
    last_error: str = ""
    """Why the last failed scrape failed."""
    last_success_s: float = -math.inf
    """When values from this endpoint were last written (scraper clock)."""
    missing: tuple[str, ...] = ()
    """Selectors the last successful page lacked (their fields kept their old values)."""

    @property
    def failing(self) -> bool:
        """The last scrape failed."""
        return self.consecutive_failures > 0


@attrs.frozen
class ScrapeReport:
    """What one :meth:`Scraper.scrape_once` or tick did."""

    written: int
    """Endpoints whose values were written."""
    failed: tuple[str, ...]
    """Endpoints whose scrape failed, by name."""


class _Outcome(NamedTuple):
    handle: EndpointHandle
    name: str
    sample: EndpointSample | None
    error: str = ""
    unexpected: bool = False
    kind: FailureKind = FailureKind.ANSWERED  # a failure's kind, for the health rule


class _LeanFetch:
    """One callback-driven GET over a kept lean connection (no task, future or timer);
    kept and reused tick after tick while the endpoint and its connection stay."""

    __slots__ = ("conn", "deadline", "done", "endpoint", "handle", "url")

    def __init__(
        self,
        scraper: Scraper,
        conn: HttpConnection,
        url: str,
        handle: EndpointHandle,
        endpoint: Endpoint,
    ) -> None:
        self.conn = conn
        self.url = url
        self.handle = handle
        self.endpoint = endpoint
        self.deadline = 0.0
        # A C-level partial: the answer reaches the scraper without a Python frame here.
        self.done: Callable[[Outcome], None] = functools.partial(scraper._lean_done, self)


_SCRAPED_FIELDS: Final = (
    ("waiting", "waiting"),
    ("running", "running"),
    ("kv_usage_frac", "kv_usage_frac"),
    ("block_size", "block_size_tokens"),
    ("num_gpu_blocks", "kv_blocks_total"),
    ("max_loras", "max_loras"),
)
"""EndpointSample field → table column (the sample's first fields, in order)."""
_NUM_SCRAPED: Final = len(_SCRAPED_FIELDS)
_INITIAL_ARENA_BYTES: Final = 1 << 20
_MAX_ARENA_BYTES: Final = 64 * 1024 * 1024
"""Pages kept for one flush in the reused buffer; beyond, each gets its own bytes."""
_SCRAPED_COLUMNS: Final = tuple(column for _, column in _SCRAPED_FIELDS)
_UNREACHABLE: Final = FailureKind.UNREACHABLE
_HEALTH_OPTIONS: Final = frozenset({"unhealthy_after", "unhealthy_on_refused", "health"})
assert EndpointSample._fields[:_NUM_SCRAPED] == tuple(f for f, _ in _SCRAPED_FIELDS)


# ------------------------------------------------------------------ scraper
class Scraper:
    """Polls every endpoint of ``table`` and writes its metrics.

    Args:
        table: the pool's endpoint table (read for endpoints, written with metrics).
        source: builds each endpoint's URL (``metrics-data-source``).
        extractor: reads a page (``core-metrics-extractor``).
        interval_s: tick period (GIE ``--refresh-metrics-interval``, 50 ms).
        timeout_s: total time one fetch may take (GIE: 1 s per poll).
        max_concurrency: fetches in flight at once.
        max_bytes: largest body accepted.
        clock: time for ``last_update_s``; the table's clock by default, so staleness
            checks compare like with like.
        transport: an httpx transport shared by the per-endpoint clients (tests;
            default: real sockets). Given one, every URL goes through httpx; without,
            ``http://`` pages use the lean :class:`HttpConnection` (~20x less CPU per
            request than httpx) and ``https://`` pages httpx.
        polled: serve the lean connections from one epoll set watched by the loop
            (:mod:`~inference_sched.datalayer.poller`, Linux) instead of one asyncio
            transport each.
        request_families: ask only for the families the extractor reads, with
            prometheus-client's ``name[]`` query parameters (``?name[]=vllm:...``): a
            server whose ``/metrics`` is prometheus-client's exposition (its WSGI/ASGI
            apps and ``start_http_server`` honour them) answers ~1 KB instead of ~40 KB,
            which cuts its work and ours (see docs/datalayer.md). Needs an extractor
            with ``families_for(endpoint)``; a server that ignores the parameters
            still works (whole page), and an endpoint whose filtered page has none
            of the families is asked for the whole page from then on.
        unhealthy_after: consecutive failures that take an endpoint out of the
            candidate set (0: never), unless ``health`` is given.
        unhealthy_on_refused: a refused connection takes it out at once.
        health: an :class:`EndpointHealth` shared with others (the gateway reports to
            it too); its own thresholds apply. ``scraper.health`` is the one in use.

    Use ``async with Scraper(...) as scraper:`` (or call :meth:`aclose`) so the HTTP
    client is closed; :meth:`run` closes it itself when it ends.
    """

    def __init__(
        self,
        table: EndpointTable,
        source: MetricsSource,
        extractor: MetricsExtractor,
        *,
        interval_s: float = 0.05,
        timeout_s: float = 1.0,
        max_concurrency: int = 64,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        polled: bool = True,
        request_families: bool = False,
        unhealthy_after: int = 3,
        unhealthy_on_refused: bool = True,
        health: EndpointHealth | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.table = table
        self.source = source
        self.extractor = extractor
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.max_bytes = max_bytes
        self.clock = clock or table.clock
        self._transport = transport
        self.polled = polled
        self.health = health or EndpointHealth(
            table, unhealthy_after=unhealthy_after, unhealthy_on_refused=unhealthy_on_refused
        )
        self._clients: dict[str, httpx.AsyncClient | HttpConnection] = {}
        self._ssl: ssl.SSLContext | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._in_flight: dict[str, asyncio.Task[_Outcome]] = {}
        # The lean fast path: requests over kept connections, completed by callbacks.
        self._lean: dict[str, _LeanFetch] = {}  # sent, by start time (= deadline order)
        self._lean_queue: deque[_LeanFetch] = deque()  # waiting for a slot
        self._results: list[_Outcome] = []  # finished lean fetches since the last flush
        self._pages: list[tuple[Span | bytes, EndpointHandle, Endpoint]] = []  # unparsed
        self._sweep: asyncio.TimerHandle | None = None
        self._idle: asyncio.Future[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._status: dict[str, EndpointStatus] = {}
        self._stop = asyncio.Event()
        self._bytes_pages = bool(getattr(extractor, "accepts_bytes", False))
        self._span_pages = bool(getattr(extractor, "accepts_spans", False))
        # This cycle's received pages, back to back. An anonymous mmap: its slices are
        # bytes (what the line cache keys on) and its pages stay mapped between cycles.
        self._arena = mmap.mmap(-1, _INITIAL_ARENA_BYTES)
        self._arena_used = 0
        self.request_families = request_families
        self._unfiltered: set[str] = set()  # endpoints whose filtered page came back empty
        self._targets_version = -1
        self._target_list: list[tuple[EndpointHandle, Endpoint, str]] = []
        self._kept: dict[str, _LeanFetch] = {}  # reusable lean fetch per endpoint
        # Adapter sets last written per endpoint: a row's bitsets are rewritten only when
        # its sets change (most scrapes repeat them).
        self._written_adapters: dict[
            str, tuple[EndpointHandle, frozenset[str], frozenset[str]]
        ] = {}

    # ............................................................ lifecycle
    async def __aenter__(self) -> Scraper:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel fetches in flight and close the HTTP client."""
        for fetch in self._lean.values():
            fetch.conn.cancel()
        self._lean.clear()
        self._lean_queue.clear()
        self._results.clear()
        self._pages.clear()
        self._arena_used = 0
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._wake()
        tasks = list(self._in_flight.values())
        self._in_flight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._closing, return_exceptions=True)
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(c.aclose() for c in clients))

    def stop(self) -> None:
        """Make :meth:`run` return after the current tick (safe from the loop's thread)."""
        self._stop.set()

    async def run(self) -> None:
        """Tick every ``interval_s`` until :meth:`stop`; then close the client."""
        try:
            await run_ticks(self.interval_s, self._stop, self._start_fetches, self._flush)
        finally:
            self._stop.clear()
            await self.aclose()

    async def scrape_once(self) -> ScrapeReport:
        """Scrape every endpoint once, wait for all fetches, write the results."""
        self._start_fetches()
        loop = asyncio.get_running_loop()
        while True:
            if self._lean or self._lean_queue:
                self._idle = loop.create_future()
                await self._idle
                continue
            running = [t for t in self._in_flight.values() if not t.done()]
            if not running:
                break
            # A lean fetch whose idle connection died retries in a task: loop.
            await asyncio.wait(running)
        return self._flush()

    # ............................................................ status
    def status(self, name: str) -> EndpointStatus:
        """The scraper's view of endpoint ``name`` (a fresh status if never scraped)."""
        return self._status.get(name) or EndpointStatus()

    def statuses(self) -> Mapping[str, EndpointStatus]:
        """Status of every endpoint scraped at least once, by name."""
        return dict(self._status)

    # ............................................................ fetching
    def _client_for(self, name: str, url: str) -> httpx.AsyncClient | HttpConnection:
        client = self._clients.get(name)
        if self._transport is None and is_supported(url):
            if isinstance(client, HttpConnection) and client.url == url:
                return client
            if client is not None:  # the endpoint moved (or its scheme changed)
                self._close_later(self._clients.pop(name))
            lean = HttpConnection(
                url, timeout_s=self.timeout_s, max_bytes=self.max_bytes, polled=self.polled
            )
            self._clients[name] = lean
            return lean
        if isinstance(client, HttpConnection):
            self._close_later(self._clients.pop(name))
        # One client (one keep-alive connection) per endpoint: httpcore's pool scans
        # every connection on each request event, which made one shared pool of 64
        # connections cost ~15 ms of CPU per request, against ~1 ms for this.
        client = self._clients.get(name)
        if not isinstance(client, httpx.AsyncClient):
            if self._ssl is None:  # built once: loading CA certificates takes ms
                make_ssl = getattr(self.source, "ssl_context", None)  # CA bundle, mTLS
                self._ssl = (
                    make_ssl()
                    if callable(make_ssl)
                    else httpx.create_ssl_context(verify=not self.source.insecure_skip_verify)
                )
            client = httpx.AsyncClient(
                timeout=self.timeout_s,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                verify=self._ssl,
                transport=self._transport,
                follow_redirects=False,
            )
            self._clients[name] = client
        return client

    def _targets(self) -> list[tuple[EndpointHandle, Endpoint, str]]:
        """(handle, endpoint, URL) of every endpoint, rebuilt only when the table's
        membership changes (most ticks see the same pool)."""
        table = self.table
        if self._targets_version != table.version:
            with table.lock:
                version = table.version
                endpoints = [(table.handle(e.name), e) for e in table]
            self._target_list = [(h, e, self._url_for(e)) for h, e in endpoints]
            self._targets_version = version
        return self._target_list

    def _url_for(self, endpoint: Endpoint) -> str:
        url = self.source.url_for(endpoint)
        if not self.request_families or endpoint.name in self._unfiltered:
            return url
        families_for = getattr(self.extractor, "families_for", None)
        if families_for is None:
            return url
        try:
            families = families_for(endpoint)
        except DataError:
            return url  # e.g. an unknown engine label: the extraction will say so
        query = "&".join("name%5B%5D=" + quote(f, safe=":") for f in families)
        return url + ("&" if "?" in url else "?") + query if query else url

    def _start_fetches(self) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        lean, in_flight, queue, kept = self._lean, self._in_flight, self._lean_queue, self._kept
        queued = {f.endpoint.name for f in queue} if queue else ()
        for handle, endpoint, url in self._targets():
            name = endpoint.name
            if name in in_flight or name in lean or name in queued:
                continue
            fetch = kept.get(name)
            if (
                fetch is not None
                and fetch.handle == handle
                and fetch.url == url
                and self._clients.get(name) is fetch.conn
            ):
                client: httpx.AsyncClient | HttpConnection = fetch.conn
            else:
                client = self._client_for(name, url)
                fetch = None
            if isinstance(client, HttpConnection) and client.connected:
                # Fast path: no task, no semaphore, no timer per request, and the
                # fetch object of the last tick reused.
                if fetch is None:
                    fetch = kept[name] = _LeanFetch(self, client, url, handle, endpoint)
                queue.append(fetch)
            else:  # connecting, or httpx: a task
                in_flight[name] = asyncio.create_task(self._fetch(client, url, handle, endpoint))
        if queue:
            self._send_queued()

    # ............................................................ lean fast path
    def _send_queued(self) -> None:
        """Write queued lean requests, at most ``max_concurrency`` in flight."""
        queue, lean = self._lean_queue, self._lean
        if not queue or len(lean) >= self.max_concurrency:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while queue and len(lean) < self.max_concurrency:
            fetch = queue.popleft()
            name = fetch.endpoint.name
            fetch.deadline = deadline
            if self._clients.get(name) is not fetch.conn or not fetch.conn.send(fetch.done):
                # Closed or replaced since queued: take the slow path (it connects).
                self._in_flight[name] = asyncio.create_task(
                    self._fetch(
                        self._client_for(name, fetch.url), fetch.url, fetch.handle, fetch.endpoint
                    )
                )
                continue
            lean[name] = fetch
        if lean and self._sweep is None:
            self._sweep = loop.call_at(next(iter(lean.values())).deadline, self._expire)

    def _expire(self) -> None:
        """The deadline sweep: time out every lean fetch past its deadline."""
        self._sweep = None
        lean = self._lean
        now = asyncio.get_running_loop().time()
        expired = []
        for fetch in lean.values():  # in start order, so in deadline order
            if fetch.deadline > now:
                break
            expired.append(fetch)
        for fetch in expired:
            del lean[fetch.endpoint.name]
            fetch.conn.cancel()
            timed_out = f"timed out after {self.timeout_s}s"
            self._results.append(
                _Outcome(fetch.handle, fetch.endpoint.name, None, timed_out, kind=_UNREACHABLE)
            )
        self._send_queued()
        if lean and self._sweep is None:
            first = next(iter(lean.values()))
            self._sweep = asyncio.get_running_loop().call_at(first.deadline, self._expire)
        self._wake()

    def _lean_done(self, fetch: _LeanFetch, outcome: Outcome) -> None:
        name = fetch.endpoint.name
        if self._lean.get(name) is not fetch:
            return  # timed out or closed meanwhile
        del self._lean[name]
        if outcome is None:  # the idle connection had died: retry on a fresh one
            self._in_flight[name] = asyncio.create_task(
                self._fetch(fetch.conn, fetch.url, fetch.handle, fetch.endpoint)
            )
        elif isinstance(outcome, FetchError):
            error = f"{type(outcome).__name__}: {outcome}"
            self._results.append(_Outcome(fetch.handle, name, None, error, kind=_UNREACHABLE))
        else:
            # Parsed at the flush, all pages in one loop: interleaved with the socket
            # work, the interpreter ran with caches the kernel had just evicted (~2x).
            # Kept in one reused buffer, not a fresh bytes each (allocator page faults).
            self._pages.append((self._keep(outcome), fetch.handle, fetch.endpoint))
        if self._lean_queue:
            self._send_queued()
        if not self._lean:
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None
            self._wake()

    def _wake(self) -> None:
        if self._lean or self._lean_queue:
            return
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def _keep(self, body: Body) -> Span | bytes:
        """Copy a received page into the cycle's buffer (bytes once it is full)."""
        start = self._arena_used
        end = start + len(body)
        arena = self._arena
        if end > len(arena):
            if end > _MAX_ARENA_BYTES:
                return bytes(body)
            # A bigger buffer for the rest of the cycle; spans already handed out keep
            # the old one alive until they are read.
            arena = self._arena = mmap.mmap(-1, min(_MAX_ARENA_BYTES, max(2 * len(arena), 2 * end)))
        arena[start:end] = body
        self._arena_used = end
        return Span(arena, start, end)

    def _extract(self, body: Body | Span, handle: EndpointHandle, endpoint: Endpoint) -> _Outcome:
        """Decode and extract a page (never raises)."""
        try:
            page: Page
            if isinstance(body, Span):
                if self._span_pages:
                    page = body
                else:
                    raw = body.buffer[body.start : body.end]
                    page = bytes(raw) if self._bytes_pages else str(raw, "utf-8", "replace")
            else:
                # bytes when the extractor reads them (ours never decodes the whole page)
                page = body if self._bytes_pages else str(body, "utf-8", "replace")
            sample = self.extractor.extract(page, endpoint)  # type: ignore[arg-type]
            if sample.is_empty:
                if self.request_families and endpoint.name not in self._unfiltered:
                    # The server honoured name[] with an empty page (or mangled it):
                    # ask for the whole page from the next tick on.
                    self._unfiltered.add(endpoint.name)
                    self._targets_version = -1
                    log.info(
                        "metrics of %s: the page filtered by name[] had none of the "
                        "engine's families; fetching the whole page from now on",
                        endpoint.name,
                    )
                return _Outcome(
                    handle,
                    endpoint.name,
                    None,
                    "none of the engine's metrics is on the page (missing: "
                    + ", ".join(sample.missing)
                    + ")",
                )
            return _Outcome(handle, endpoint.name, sample)
        except (DataError, OSError) as exc:
            return _Outcome(handle, endpoint.name, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - one endpoint must never stop the loop
            return _Outcome(
                handle, endpoint.name, None, f"{type(exc).__name__}: {exc}", unexpected=True
            )

    async def _fetch(
        self,
        client: httpx.AsyncClient | HttpConnection,
        url: str,
        handle: EndpointHandle,
        endpoint: Endpoint,
    ) -> _Outcome:
        assert self._semaphore is not None
        try:
            # The timeout starts once a slot is free: waiting for one is not the
            # endpoint's fault.
            async with self._semaphore:
                if isinstance(client, HttpConnection):
                    body = await client.get()  # times itself out (timeout_s)
                else:
                    async with asyncio.timeout(self.timeout_s):
                        body = await self._get(client, url)
        except (TimeoutError, FetchTimeout):
            timed_out = f"timed out after {self.timeout_s}s"
            return _Outcome(handle, endpoint.name, None, timed_out, kind=_UNREACHABLE)
        except (httpx.HTTPError, FetchError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            return _Outcome(handle, endpoint.name, None, error, kind=failure_kind(exc))
        except (DataError, OSError) as exc:  # non-200 or oversized (httpx), socket errors
            return _Outcome(handle, endpoint.name, None, str(exc), kind=failure_kind(exc))
        except Exception as exc:  # noqa: BLE001 - one endpoint must never stop the loop
            return _Outcome(  # likely our bug, not the endpoint's: not counted for health
                handle, endpoint.name, None, f"{type(exc).__name__}: {exc}", unexpected=True
            )
        return self._extract(body, handle, endpoint)

    async def _get(self, client: httpx.AsyncClient, url: str) -> bytes:
        async with client.stream("GET", url) as response:
            if response.status_code != httpx.codes.OK:
                raise DataError(f"GET {url}: HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise DataError(f"GET {url}: body of {declared} bytes > {self.max_bytes}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise DataError(f"GET {url}: body larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    # ............................................................ writing
    def _flush(self) -> ScrapeReport:
        """Write every finished fetch in one bulk update."""
        done = [(name, t) for name, t in self._in_flight.items() if t.done()]
        for name, _ in done:
            del self._in_flight[name]
        outcomes = [t.result() for _, t in done if not t.cancelled()]
        if self._results:
            outcomes += self._results
            self._results = []
        if self._pages:
            pages, self._pages = self._pages, []
            extract = self._extract
            outcomes += [extract(body, handle, endpoint) for body, handle, endpoint in pages]
            self._arena_used = 0  # the spans are read: the buffer is free again
        now = self.clock()
        good: list[_Outcome] = []
        failed: list[str] = []
        with self.table.lock:
            for outcome in outcomes:
                if not self.table.is_current(outcome.handle):
                    continue  # removed (or replaced) while the fetch ran
                if outcome.sample is None:
                    failed.append(outcome.name)
                    self._failed(outcome)
                else:
                    good.append(outcome)
            if good:
                self._write(good, now)
                self.health.scrape_succeeded(o.name for o in good)
            self._forget_removed()
        for outcome in good:
            self._succeeded(outcome, now)
        return ScrapeReport(len(good), tuple(failed))

    def _write(self, good: list[_Outcome], now: float) -> None:
        table = self.table
        rows = np.fromiter((o.handle.row for o in good), dtype=np.intp, count=len(good))
        # One matrix of the numeric fields (None -> NaN: never a valid value, all are
        # validated finite), then one masked write per column.
        values = np.array([o.sample[:_NUM_SCRAPED] for o in good], dtype=np.float64)  # type: ignore[index]
        columns: dict[str, npt.NDArray[np.float64]] = {}
        for j, column in enumerate(_SCRAPED_COLUMNS):
            new = values[:, j]
            missing = np.isnan(new)
            if missing.all():
                continue
            if missing.any():  # a field missing from one page keeps that row's value
                new = np.where(missing, getattr(table, column)[rows], new)
            columns[column] = new
        table.update_metrics(rows, now_s=now, **columns)
        written = self._written_adapters
        for o in good:
            sample = o.sample
            assert sample is not None
            if sample.attributes:  # the engine's customMetrics
                table.attributes.put_many(o.handle.row, sample.attributes)
            running = sample.running_adapters
            if running is None:
                continue
            waiting = sample.waiting_adapters or frozenset()
            last = written.get(o.name)
            if (
                last is not None
                and last[0] == o.handle
                and last[1] == running
                and last[2] == waiting
            ):
                continue
            table.set_adapters(o.handle.row, running, waiting)
            written[o.name] = (o.handle, running, waiting)

    def _failed(self, outcome: _Outcome) -> None:
        status = self._status.setdefault(outcome.name, EndpointStatus())
        status.errors_total += 1
        status.consecutive_failures += 1
        status.last_error = outcome.error
        if status.consecutive_failures == 1:
            log.warning(
                "metrics scrape of %s failed: %s (keeping its last values; retrying)",
                outcome.name,
                outcome.error,
                exc_info=outcome.unexpected,
            )
        else:
            log.debug("metrics scrape of %s failed again: %s", outcome.name, outcome.error)
        self.health.scrape_failed(outcome.name, outcome.kind, outcome.error)

    def _succeeded(self, outcome: _Outcome, now: float) -> None:
        assert outcome.sample is not None
        status = self._status.setdefault(outcome.name, EndpointStatus())
        if status.consecutive_failures:
            log.info(
                "metrics scrape of %s recovered after %d failed attempts",
                outcome.name,
                status.consecutive_failures,
            )
        status.consecutive_failures = 0
        status.last_success_s = now
        missing = outcome.sample.missing
        if missing != status.missing and missing:
            log.warning(
                "metrics of %s lack %s; those fields keep their previous values",
                outcome.name,
                ", ".join(missing),
            )
        status.missing = missing

    def _forget_removed(self) -> None:
        for name in [n for n in self._status if n not in self.table]:
            del self._status[name]
            self._written_adapters.pop(name, None)
        for name in [n for n in self._clients if n not in self.table]:
            if name not in self._in_flight and name not in self._lean:
                self._close_later(self._clients.pop(name))
                self._kept.pop(name, None)

    def _close_later(self, client: httpx.AsyncClient | HttpConnection) -> None:
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


# ------------------------------------------------------------------ from config
def scrapers_from_config(
    config: EndpointPickerConfig | str | os.PathLike[str] | Mapping[str, Any] | None,
    table: EndpointTable,
    *,
    plugins: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[Any]:
    """The runners of ``config``'s ``dataLayer`` sources, writing into ``table``: the data
    layer of a config without a :class:`~inference_sched.framework.scheduler.Scheduler`
    (an embedder with its own scheduling, a metrics sidecar, a test).

    Per source: a :class:`Scraper` for its metrics extractor (``extract``, e.g.
    ``core-metrics-extractor``: the fast path into the metric columns), and an
    :class:`~inference_sched.datalayer.attribute_poller.AttributePoller` for its
    attribute extractors (``extract_attributes``: ``dcgm-extractor``,
    ``models-data-extractor``, ...; several may share it). A source with both gets both
    (its page is then fetched by each). Scrapers come first in the list. Plugins are
    taken from ``plugins`` when it holds them by name, else built from their entries in
    ``config`` with a :class:`~inference_sched.framework.handle.PluginHandle` over
    ``table`` (an instance used twice is built once). ``options`` go to every runner
    (``interval_s``: GIE's ``--refresh-metrics-interval``, 50 ms; ``timeout_s``,
    ``max_concurrency``, ``request_families``, ``unhealthy_after``, ...); a source's own
    ``interval`` parameter replaces ``interval_s`` for its runners. The scrapers share
    one :class:`EndpointHealth` (``health``, built from ``unhealthy_*`` when not given).
    Every runner has ``run()``, ``stop()``, ``aclose()``, ``scrape_once()`` and
    ``status(name)``. An empty list means the config collects nothing.

    Args:
        config: a loaded config, or anything :func:`~inference_sched.framework.config.
            load_config` takes (YAML text, a path, a parsed mapping; ``None`` is GIE's
            default, whose data layer scrapes vLLM's ``/metrics``).
        table: the endpoint table the runners read endpoints from and write to.
        plugins: instances already built, by name (a scheduler's ``plugins``).

    Raises:
        ConfigError: the config is invalid; a source has no extractor or two metrics
            extractors; a plugin is not a source / extractor; an extractor reads
            another page format than its source serves; a constructor failed (the error
            names its path).
    """
    from inference_sched.datalayer.attribute_poller import AttributePoller

    if not isinstance(config, EndpointPickerConfig):
        config = load_config(config)
    section = config.data_layer
    if not section:
        return []
    handle = PluginHandle(table, plugins)
    spec_config = config
    options = dict(options)
    if options.get("health") is None:  # one health for the pool, whatever the sources
        keys = ("unhealthy_after", "unhealthy_on_refused")
        kwargs = {k: options.pop(k) for k in keys if k in options}
        options["health"] = EndpointHealth(table, **kwargs)

    def instance(ref: str, path: str) -> Any:
        known = handle.plugins()
        if ref in known:
            return known[ref]
        try:
            spec = spec_config.plugin(ref)
        except KeyError:
            raise ConfigError(f"no plugin named {ref!r}", path=path, value=ref) from None
        try:
            built = spec.cls(spec.name, spec.params, handle)
        except InferenceSchedError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"plugin {spec.name!r} ({spec.type}) failed to start: {type(exc).__name__}: {exc}",
                path=spec.path,
            ) from exc
        handle.add_plugin(ref, built)
        return built

    scrapers: list[Any] = []
    pollers: list[Any] = []
    for i, entry in enumerate(section.get("sources") or ()):
        path = f"dataLayer.sources[{i}]"
        refs = [e["pluginRef"] for e in entry.get("extractors") or ()]
        if not refs:
            raise ConfigError(
                "expected at least one extractor per source, got 0", path=f"{path}.extractors"
            )
        source = instance(entry["pluginRef"], f"{path}.pluginRef")
        if callable(getattr(source, "attach", None)) and not isinstance(source, MetricsSource):
            continue  # a notification source: attach_notification_sources runs it
        if not isinstance(source, MetricsSource):
            raise ConfigError(
                f"plugin {entry['pluginRef']!r} is not a data source "
                "(it needs url_for and insecure_skip_verify)",
                path=f"{path}.pluginRef",
            )
        fmt = getattr(source, "page_format", "prometheus")
        metrics: list[Any] = []
        attributes: list[Any] = []
        for k, ref in enumerate(refs):
            where = f"{path}.extractors[{k}].pluginRef"
            extractor = instance(ref, where)
            wants = getattr(extractor, "page_format", "prometheus")
            if wants != fmt:
                raise ConfigError(
                    f"extractor {ref!r} reads {wants} pages but source "
                    f"{entry['pluginRef']!r} serves {fmt} pages",
                    path=where,
                )
            if callable(getattr(extractor, "extract_attributes", None)):
                attributes.append(extractor)
            elif isinstance(extractor, MetricsExtractor):
                metrics.append(extractor)
            else:
                raise ConfigError(f"plugin {ref!r} is not an extractor (no extract)", path=where)
        if len(metrics) > 1:
            raise ConfigError(
                f"expected at most one metrics extractor per source, got {len(metrics)}",
                path=f"{path}.extractors",
            )
        own = dict(options)
        interval_s = getattr(source, "interval_s", None)
        if interval_s:
            own["interval_s"] = interval_s
        if metrics:
            scrapers.append(Scraper(table, source, metrics[0], **own))
        if attributes:  # health is the scraper's alone: one place decides it
            own = {k: v for k, v in own.items() if k not in _HEALTH_OPTIONS}
            pollers.append(AttributePoller(table, source, attributes, **own))
    return scrapers + pollers


def scrapers_for(scheduler: Scheduler, **options: Any) -> list[Any]:
    """The runners of the ``dataLayer`` sources of the scheduler's config.

    :func:`scrapers_from_config` with the config the scheduler was built from
    (``scheduler.config``), its table and the instances it built. An empty list means
    the config collects no metrics, or the scheduler was built by hand (no config).

    Raises:
        ConfigError: see :func:`scrapers_from_config`.
    """
    config = scheduler.config
    if config is None:
        return []
    return scrapers_from_config(config, scheduler.table, plugins=scheduler.plugins, **options)
