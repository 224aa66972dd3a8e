"""Poll a data source whose extractors write endpoint *attributes*, not metric columns.

llm-d-router's data layer runs one poller per (source, endpoint): the source fetches and
parses a page, then hands it to every extractor bound to it, each under its own deadline,
and an extractor's failure never stops its siblings (``llm-d/llm-d-router``:
``pkg/epp/framework/plugins/datalayer/source/http/datasource.go``, ``Dispatch``). Here one
asyncio task polls the whole pool for one source (``docs/datalayer.md``):

* every ``interval_s`` a tick starts a GET for each endpoint that has none in flight (at
  most ``max_concurrency`` at once; the lean keep-alive client of :mod:`.fetch` for
  ``http://``, one httpx client per endpoint for ``https://`` or with a ``transport``);
  a GET has ``timeout_s`` in total and a body of at most ``max_bytes``;
* each page goes to every extractor's ``extract_attributes(page, endpoint)`` (``bytes``
  as received); what they return is written with ``table.attributes.put_many`` on the
  endpoint's row, unless the row was removed or reused meanwhile;
* a failed GET writes nothing: the attributes keep their last values. A raising
  extractor writes nothing and the others still write. Failures are counted per
  endpoint (:meth:`AttributePoller.status`) and per extractor
  (:attr:`AttributePoller.extract_errors_total`); logs are written on state changes
  only (first failure, recovery).

The object has the :class:`~inference_sched.datalayer.scraper.Scraper`'s life cycle:
``run()`` / ``stop()`` / ``aclose()`` / ``scrape_once()`` / ``status(name)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import httpx

from inference_sched.datalayer.fetch import (
    DEFAULT_MAX_BYTES,
    FetchError,
    FetchTimeout,
    HttpConnection,
    is_supported,
)
from inference_sched.datalayer.scraper import EndpointStatus, ScrapeReport
from inference_sched.datalayer.ticks import run_ticks
from inference_sched.errors import DataError
from inference_sched.framework.interfaces import AttributeExtractor, DataSource
from inference_sched.framework.types import Endpoint
from inference_sched.state.table import EndpointHandle, EndpointTable

__all__ = ["AttributePoller"]

log = logging.getLogger(__name__)

_Client = httpx.AsyncClient | HttpConnection
_HTTP_OK: Final = 200


class AttributePoller:
    """Polls ``source`` for every endpoint of ``table`` and writes what ``extractors``
    read into ``table.attributes``.

    Args:
        table: the pool's endpoint table (read for endpoints, written with attributes).
        source: builds each endpoint's URL (``url_for``); an ``ssl_context()`` method, when
            present, gives the TLS settings for ``https``, else ``insecure_skip_verify``.
        extractors: one or more plugins with ``extract_attributes(page, endpoint)``.
        interval_s: tick period.
        timeout_s: total time one GET may take.
        max_concurrency: GETs in flight at once.
        max_bytes: largest body accepted (default: the source's ``max_bytes``, else 8 MiB).
        clock: time for ``last_success_s``; the table's clock by default.
        transport: an httpx transport for every GET (tests).
        polled: serve lean connections from the shared epoll set (see the scraper).
        request_families: accepted for the :class:`Scraper`'s signature; unused.
    """

    def __init__(
        self,
        table: EndpointTable,
        source: DataSource,
        extractors: Sequence[AttributeExtractor],
        *,
        interval_s: float = 0.05,
        timeout_s: float = 1.0,
        max_concurrency: int = 64,
        max_bytes: int | None = None,
        clock: Callable[[], float] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        polled: bool = True,
        request_families: bool = False,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not extractors:
            raise ValueError("an attribute poller needs at least one extractor")
        self.table = table
        self.source = source
        self.extractors = tuple(extractors)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.max_bytes = (
            max_bytes
            if max_bytes is not None
            else int(getattr(source, "max_bytes", DEFAULT_MAX_BYTES))
        )
        self.clock = clock or table.clock
        self.polled = polled
        self._transport = transport
        self._clients: dict[str, _Client] = {}
        self._tasks: dict[str, asyncio.Task[bool]] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._status: dict[str, EndpointStatus] = {}
        self._failing_extractors: set[tuple[str, str]] = set()
        self._stop = asyncio.Event()
        self.extract_errors_total: dict[str, int] = {e.name: 0 for e in self.extractors}
        """Failed extractions per extractor name (llm-d-router
        ``datalayer_extract_errors_total``)."""
        self.poll_errors_total = 0
        """Failed GETs (llm-d-router ``datalayer_poll_errors_total``)."""

    # ............................................................ lifecycle
    async def __aenter__(self) -> AttributePoller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel GETs in flight and close the HTTP clients."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    def stop(self) -> None:
        """Make :meth:`run` return after the current tick (safe from the loop's thread)."""
        self._stop.set()

    async def run(self) -> None:
        """Tick every ``interval_s`` until :meth:`stop`; then close the clients."""
        try:
            await run_ticks(self.interval_s, self._stop, self._start_polls, self._reap)
        finally:
            self._stop.clear()
            await self.aclose()

    async def scrape_once(self) -> ScrapeReport:
        """Poll every endpoint once and wait until every GET and extraction ended."""
        self._reap()
        self._start_polls()
        names = list(self._tasks)
        results = await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._reap()
        written = sum(1 for r in results if r is True)
        failed = tuple(n for n, r in zip(names, results, strict=True) if r is not True)
        return ScrapeReport(written, failed)

    # ............................................................ status
    def status(self, name: str) -> EndpointStatus:
        """The poller's view of endpoint ``name`` (a fresh status if never polled)."""
        return self._status.get(name) or EndpointStatus()

    def statuses(self) -> Mapping[str, EndpointStatus]:
        """Status of every endpoint polled at least once, by name."""
        return dict(self._status)

    # ............................................................ polling
    def _start_polls(self) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        table = self.table
        with table.lock:
            targets = [(table.handle(e.name), e) for e in table]
        for handle, endpoint in targets:
            if endpoint.name in self._tasks:
                continue
            self._tasks[endpoint.name] = asyncio.create_task(self._poll(handle, endpoint))

    def _reap(self) -> None:
        for name in [n for n, t in self._tasks.items() if t.done()]:
            del self._tasks[name]
        for name in [n for n in self._status if n not in self.table]:
            del self._status[name]
        for name in [n for n in self._clients if n not in self.table and n not in self._tasks]:
            client = self._clients.pop(name)
            task = asyncio.get_running_loop().create_task(client.aclose())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _client_for(self, name: str, url: str) -> _Client:
        client = self._clients.get(name)
        lean = self._transport is None and is_supported(url)
        if client is not None:
            same = (
                isinstance(client, HttpConnection) and client.url == url
                if lean
                else isinstance(client, httpx.AsyncClient)
            )
            if same:
                return client
            self._clients.pop(name)
            asyncio.get_running_loop().create_task(client.aclose())
        if lean:
            client = HttpConnection(
                url, timeout_s=self.timeout_s, max_bytes=self.max_bytes, polled=self.polled
            )
        else:
            make_ssl = getattr(self.source, "ssl_context", None)
            verify = (
                make_ssl()
                if callable(make_ssl)
                else httpx.create_ssl_context(verify=not self.source.insecure_skip_verify)
            )
            client = httpx.AsyncClient(
                timeout=self.timeout_s,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                verify=verify,
                transport=self._transport,
                follow_redirects=False,
            )
        self._clients[name] = client
        return client

    async def _poll(self, handle: EndpointHandle, endpoint: Endpoint) -> bool:
        """One GET and its extractions; True when something was written."""
        assert self._semaphore is not None
        name = endpoint.name
        try:
            url = self.source.url_for(endpoint)
            client = self._client_for(name, url)
            async with self._semaphore:
                if isinstance(client, HttpConnection):
                    body = await client.get()  # times itself out
                else:
                    async with asyncio.timeout(self.timeout_s):
                        body = await self._httpx_get(client, url)
        except (TimeoutError, FetchTimeout):
            return self._failed(handle, name, f"timed out after {self.timeout_s}s")
        except (httpx.HTTPError, FetchError) as exc:
            return self._failed(handle, name, f"{type(exc).__name__}: {exc}")
        except (DataError, OSError) as exc:
            return self._failed(handle, name, str(exc))
        except Exception as exc:  # noqa: BLE001 - one endpoint must never stop the loop
            return self._failed(handle, name, f"{type(exc).__name__}: {exc}", unexpected=True)
        return self._extract_and_write(bytes(body), handle, endpoint)

    async def _httpx_get(self, client: httpx.AsyncClient, url: str) -> bytes:
        async with client.stream("GET", url) as response:
            if response.status_code != _HTTP_OK:
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
    def _extract_and_write(self, page: bytes, handle: EndpointHandle, endpoint: Endpoint) -> bool:
        values: dict[str, Any] = {}
        errors: list[str] = []
        for extractor in self.extractors:
            error = ""
            try:
                found = extractor.extract_attributes(page, endpoint)
                if not isinstance(found, Mapping) or not all(isinstance(k, str) for k in found):
                    error = f"returned {type(found).__name__}, not a mapping of str keys"
                else:
                    values.update(found)
            except DataError as exc:
                error = str(exc)
            except Exception as exc:  # a plugin must never stop the loop
                error = f"{type(exc).__name__}: {exc}"
                log.debug("extractor %s raised", extractor.name, exc_info=True)
            self._extractor_outcome(extractor.name, endpoint.name, error)
            if error:
                errors.append(f"{extractor.name}: {error}")
        now = self.clock()
        table = self.table
        with table.lock:
            if not table.is_current(handle):
                return False  # removed (or replaced) while the GET ran
            if values:
                table.attributes.put_many(handle.row, values)
        if errors and not values:
            self._record_failure(endpoint.name, "; ".join(errors))
            return False
        status = self._status.setdefault(endpoint.name, EndpointStatus())
        if status.consecutive_failures:
            log.info(
                "polling %s from %s recovered after %d failed attempts",
                endpoint.name,
                getattr(self.source, "name", "?"),
                status.consecutive_failures,
            )
        status.consecutive_failures = 0
        status.last_success_s = now
        if errors:
            status.last_error = "; ".join(errors)
        return bool(values)

    def _extractor_outcome(self, extractor: str, endpoint: str, error: str) -> None:
        key = (extractor, endpoint)
        if not error:
            if key in self._failing_extractors:
                self._failing_extractors.discard(key)
                log.info("extractor %s reads %s again", extractor, endpoint)
            return
        self.extract_errors_total[extractor] = self.extract_errors_total.get(extractor, 0) + 1
        if key not in self._failing_extractors:
            self._failing_extractors.add(key)
            log.warning("extractor %s failed on %s: %s", extractor, endpoint, error)
        else:
            log.debug("extractor %s failed again on %s: %s", extractor, endpoint, error)

    def _failed(
        self, handle: EndpointHandle, name: str, error: str, *, unexpected: bool = False
    ) -> bool:
        self.poll_errors_total += 1
        if self.table.is_current(handle):
            self._record_failure(name, error, unexpected=unexpected)
        return False

    def _record_failure(self, name: str, error: str, *, unexpected: bool = False) -> None:
        status = self._status.setdefault(name, EndpointStatus())
        status.errors_total += 1
        status.consecutive_failures += 1
        status.last_error = error
        source = getattr(self.source, "name", "?")
        if status.consecutive_failures == 1:
            log.warning(
                "polling %s from %s failed: %s (keeping its last attributes; retrying)",
                name,
                source,
                error,
                exc_info=unexpected,
            )
        else:
            log.debug("polling %s from %s failed again: %s", name, source, error)
