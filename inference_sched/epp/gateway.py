"""The OpenAI-compatible HTTP gateway: an EPP for users without Envoy (``serve --http-port``).

One aiohttp server does what Envoy and the ext_proc server do together: it reads the
request, asks the :class:`~inference_sched.epp.director.Director` for a decision (parse,
model rewrite, priority, schedule: the same code path as ext_proc), forwards the body to
the picked endpoint over a pooled keep-alive connection, and streams the answer back
through the decision's response tracker, which runs the scheduler's response hooks
(usage, in-flight counters). ``docs/epp.md ("HTTP gateway")`` is the user's page.

Design note, retries. A request is forwarded to the decision's endpoints in order (the
pick, then the picker's fallbacks), at most ``max_attempts`` of them. The next one is
tried only while nothing has reached the client: when the connection could not be made
(refused, connect timeout), when it was reset or closed before any response byte (a
pooled connection to a server that died), or when the upstream answered a 5xx status
(its body is dropped). Once the response status and headers are sent to the client the
request is committed to that endpoint: an upstream that fails mid-body cuts the client
connection (a truncated answer, never a second answer spliced after the first). A read
timeout waiting for the status is not retried either: the upstream may be working on
the request (a long prefill), and a retry would run it twice. So a request is answered
by exactly one upstream or by one gateway error, and its response hooks run exactly
once (the tracker's ``finish`` also covers client disconnects and errors).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from inference_sched.datalayer.health import FailureKind, failure_kind
from inference_sched.epp.director import (
    Decision,
    Director,
    Rejection,
    ResponseTracker,
    TerminationCause,
)
from inference_sched.framework.parsing import MAX_BUFFERED_RESPONSE_BYTES, is_event_stream

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from inference_sched.framework.types import Endpoint
    from inference_sched.state.table import EndpointTable

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_READ_TIMEOUT_S",
    "GatewayStats",
    "HttpGateway",
    "openai_error",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS: Final = 3
"""Endpoints tried per request: the pick and up to two fallbacks."""
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Largest request body accepted (413 beyond), the ext_proc server's default."""
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
"""Time to open an upstream connection before trying the next endpoint."""
DEFAULT_READ_TIMEOUT_S: Final = 600.0
"""Longest silence from an upstream (before the status, or between body chunks): a
long prefill or a slow decode step must not be cut, a hung server must be."""
_READ_CHUNK_BYTES: Final = 64 * 1024

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the HTTP layers recompute.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)
# aiohttp's client decompresses bodies (so the tracker reads usage from plain JSON).
_RESPONSE_DROPPED: Final = _HOP_BY_HOP | {"content-encoding"}

_ERROR_TYPES: Final = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    412: "PreconditionFailedError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class _Health(Protocol):
    def report_connect_failure(
        self, name: str, reason: str = "", *, refused: bool = True
    ) -> bool: ...


def openai_error(status: int, message: str, *, code: str | int | None = None) -> bytes:
    """The body of a gateway error in OpenAI's shape, which the ``openai`` client turns
    into its typed exceptions: ``{"error": {"message", "type", "param", "code"}}``.

    ``type`` is the OpenAI client's exception name for the status (``RateLimitError`` for
    429, as vLLM answers); ``code`` defaults to the status.
    """
    kind = _ERROR_TYPES.get(status, "ServerError" if status >= 500 else "BadRequestError")
    error = {
        "message": message,
        "type": kind,
        "param": None,
        "code": status if code is None else code,
    }
    return json.dumps({"error": error}).encode()


@attrs.define
class GatewayStats:
    """Counters of an :class:`HttpGateway` since start (read them in tests and metrics)."""

    num_requests: int = 0
    """Proxied requests received (``POST``)."""
    num_rejected: int = 0
    """Answered by the gateway without an upstream (parse error, no endpoint, 413, ...)."""
    num_attempts: int = 0
    """Upstream attempts (a request retried twice counts 3)."""
    num_retries: int = 0
    """Attempts after the first of their request."""
    num_connect_failures: int = 0
    """Attempts whose connection could not be opened, or was lost before any byte."""
    num_upstream_5xx_retried: int = 0
    """5xx answers dropped to try the next endpoint."""
    num_bad_gateway: int = 0
    """Requests answered 502/504 because no endpoint answered."""
    num_upstream_errors: int = 0
    """Upstreams that failed after the answer began (the client connection is cut)."""
    num_client_disconnects: int = 0
    """Clients gone before their answer ended (the upstream request is cancelled)."""
    num_cut_at_stop: int = 0
    """Requests still running when :meth:`HttpGateway.stop`'s grace period ended."""
    attempts_by_endpoint: Counter[str] = attrs.field(factory=Counter)
    """Attempts per endpoint name."""


class _Abort(Exception):
    """The answer began and cannot be completed: cut the client connection."""


class HttpGateway:
    """An OpenAI-compatible HTTP front for a :class:`~inference_sched.epp.director.Director`.

    Routes: ``POST`` on any path (the Director's parsers decide: a path none claims is a
    400), ``GET /v1/models`` (forwarded to a healthy endpoint, else synthesized from
    ``models``), ``GET /healthz`` (alive) and ``GET /readyz`` (503 while draining or with
    no endpoint).

    Args:
        director: turns a request into a decision or a rejection.
        host: address to listen on.
        port: port to listen on (0: one the OS picks; :meth:`start` returns it).
        table: the pool, for ``/v1/models`` and ``/readyz`` (default: the Director's
            scheduler's table).
        health: told about refused connections (``EndpointHealth``), so a dead endpoint
            leaves the candidate set before its next failed scrape.
        models: model names ``/v1/models`` lists when no endpoint answers it.
        max_attempts: endpoints tried per request (>= 1).
        max_body_bytes: largest request body (413 beyond).
        max_buffered_response_bytes: a non-streamed answer is buffered up to this size
            (one tracker pass, a correct ``Content-Length``), then streamed.
        connect_timeout_s: to open an upstream connection.
        read_timeout_s: longest upstream silence (before the status or between chunks).
        max_connections_per_endpoint: pooled connections per upstream (0: no limit).

    Raises:
        ValueError: a limit is out of range.
    """

    def __init__(
        self,
        director: Director,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        table: EndpointTable | None = None,
        health: _Health | None = None,
        models: Sequence[str] = (),
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_buffered_response_bytes: int = MAX_BUFFERED_RESPONSE_BYTES,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_connections_per_endpoint: int = 0,
    ) -> None:
        for name, value, low in (
            ("max_attempts", max_attempts, 1),
            ("max_body_bytes", max_body_bytes, 0),
            ("max_buffered_response_bytes", max_buffered_response_bytes, 0),
            ("max_connections_per_endpoint", max_connections_per_endpoint, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected int >= {low}, got {value!r}")
        for name, seconds in (
            ("connect_timeout_s", connect_timeout_s),
            ("read_timeout_s", read_timeout_s),
        ):
            if not seconds > 0:
                raise ValueError(f"{name}: expected a number > 0, got {seconds!r}")
        self.director = director
        self.host = host
        self.port = port
        self.table = director.scheduler.table if table is None else table
        self.health = health
        self.models = tuple(models)
        self.max_attempts = max_attempts
        self.max_body_bytes = max_body_bytes
        self.max_buffered_response_bytes = max_buffered_response_bytes
        self.connect_timeout_s = float(connect_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.stats = GatewayStats()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._draining = False
        self._cut = False
        self._active: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """``http://host:port`` once started (the OpenAI base URL is ``url + "/v1"``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def num_active(self) -> int:
        """Requests being handled now."""
        return len(self._active)

    async def start(self) -> int:
        """Open the upstream connection pool and listen; returns the bound port."""
        import aiohttp
        from aiohttp import web

        if self._runner is not None:
            raise RuntimeError("HttpGateway.start: already started")
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self.max_connections_per_endpoint, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                # sock_connect, not connect: waiting for a pooled slot is not the
                # endpoint's fault and must not count against its health.
                total=None,
                sock_connect=self.connect_timeout_s,
                sock_read=self.read_timeout_s,
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
        )
        app = web.Application(client_max_size=self.max_body_bytes + 1)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{tail:.*}", self._proxy)
        # handler_cancellation: a client that hangs up cancels its handler at once, which
        # cancels the upstream request (instead of noticing at the next write).
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self._draining = self._cut = False
        self.port = int(runner.addresses[0][1])
        log.info("HTTP gateway listening on %s", self.url)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain: stop accepting connections, let the requests in flight finish within
        ``grace_s`` seconds, then cut the rest (their trackers finish) and close the pool."""
        runner = self._runner
        if runner is None:
            return
        self._draining = True
        for site in list(runner.sites):
            await site.stop()
        if self._active:
            await asyncio.wait(set(self._active), timeout=max(grace_s, 0.0))
        # Past the grace period: cut what still runs (each handler finishes its tracker).
        self._cut = True
        cut = set(self._active)
        for task in cut:
            task.cancel()
        if cut:
            await asyncio.wait(cut)
        await runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._runner = None
        self._session = None

    async def __aenter__(self) -> HttpGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ routes
    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if self._draining:
            return web.Response(status=503, text="draining")
        if not self._healthy_endpoints():
            return web.Response(status=503, text="no endpoint")
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """``/v1/models`` from the first healthy endpoint that answers 200, else from
        ``models`` (the pool serves whatever its servers serve)."""
        import aiohttp
        from aiohttp import web

        session = self._session
        assert session is not None
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)  # stop() waits for it like for a proxied request
        try:
            for endpoint in self._healthy_endpoints()[: self.max_attempts]:
                try:
                    async with session.get(f"http://{endpoint.hostport}/v1/models") as upstream:
                        if upstream.status == 200:
                            body = await upstream.read()
                            return web.Response(body=body, content_type="application/json")
                except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                    log.debug("/v1/models from %s failed: %s", endpoint.name, exc)
        finally:
            self._active.discard(task)
        now = int(time.time())
        data = [
            {"id": m, "object": "model", "created": now, "owned_by": "inference-sched"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    def _healthy_endpoints(self) -> list[Endpoint]:
        table = self.table
        with table.lock:
            return [e for e in table if table.is_healthy[table.row(e.name)]]

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        self.stats.num_requests += 1
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            if self._draining:
                return self._error(503, "inference error: ServiceUnavailable - draining")
            body = await self._read_body(request)
            if body is None:
                return self._error(
                    413,
                    "inference error: BadRequest - request body: larger than "
                    f"max_body_bytes ({self.max_body_bytes} bytes)",
                )
            headers = _request_headers(request)
            decision = self.director.handle_request(headers, body, subset_hint=None)
            if isinstance(decision, Rejection):
                return self._reject(decision)
            # Deferred plugin work (prefix index updates) runs once this handler yields
            # to wait for the upstream: off the decision path, before the next decision.
            # Two hops: aiohttp writes the upstream body in a task scheduled when the
            # request is sent, and that write goes first.
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._run_deferred)
            return await self._forward(request, decision)
        finally:
            self._active.discard(task)

    def _run_deferred(self) -> None:
        try:
            self.director.run_deferred()
        except Exception:  # a plugin's deferred work must not kill the loop
            log.exception("deferred plugin work failed")

    # ------------------------------------------------------------------ request side
    async def _read_body(self, request: web.Request) -> bytes | None:
        """The request body, or ``None`` as soon as it crosses ``max_body_bytes``
        (never buffered past the limit)."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(_READ_CHUNK_BYTES)
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)

    def _reject(self, rejection: Rejection) -> web.Response:
        response = self._error(rejection.status, rejection.body.decode("utf-8", "replace"))
        response.headers.update(rejection.headers)
        return response

    def _error(self, status: int, message: str) -> web.Response:
        from aiohttp import web

        if status in (502, 504):
            self.stats.num_bad_gateway += 1
        else:
            self.stats.num_rejected += 1
        return web.Response(
            status=status, body=openai_error(status, message), content_type="application/json"
        )

    @staticmethod
    def _upstream_headers(decision: Decision, endpoint: Endpoint) -> dict[str, str]:
        # set_headers already holds every non-system client header (llm-d "System-owned"),
        # x-request-id and the result's routing headers; the removed ones are left out.
        out = {k: v for k, v in decision.set_headers.items() if k not in _HOP_BY_HOP}
        out["host"] = endpoint.hostport
        return out

    # ------------------------------------------------------------------ forwarding
    async def _forward(self, request: web.Request, decision: Decision) -> web.StreamResponse:
        tracker = decision.tracker
        # A relayed answer finishes the tracker with its EoS chunk ("complete"); one the
        # gateway gave itself (502, 504) ends it here as an error.
        cause: TerminationCause = "error"
        try:
            return await self._attempts(request, decision)
        except asyncio.CancelledError:
            if self._cut:
                self.stats.num_cut_at_stop += 1
            elif not tracker.is_done:
                cause = "client-disconnect"
                self.stats.num_client_disconnects += 1
            raise
        except _Abort:
            # The answer began and cannot end well: cut the client's connection so it
            # sees a truncated answer, never a complete-looking one.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None
        finally:
            tracker.finish(cause)  # a no-op once the EoS chunk went through on_body

    async def _attempts(self, request: web.Request, decision: Decision) -> web.StreamResponse:
        import aiohttp

        session = self._session
        assert session is not None
        endpoints = decision.result.target_endpoints[: self.max_attempts]
        path = request.rel_url.raw_path_qs
        failures: list[str] = []
        timed_out = False
        for i, endpoint in enumerate(endpoints):
            is_last = i == len(endpoints) - 1
            where = f"{endpoint.name} ({endpoint.hostport})"
            self.stats.num_attempts += 1
            self.stats.num_retries += i > 0
            self.stats.attempts_by_endpoint[endpoint.name] += 1
            try:
                upstream = await session.post(
                    f"http://{endpoint.hostport}{path}",
                    data=decision.body,
                    headers=self._upstream_headers(decision, endpoint),
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError as exc:
                # Includes a connect timeout: nothing was sent, another endpoint is safe.
                self.stats.num_connect_failures += 1
                self._report(endpoint, exc)
                failures.append(f"{where}: connect failed: {exc.os_error}")
                continue
            except aiohttp.ConnectionTimeoutError:
                self.stats.num_connect_failures += 1
                self._report(endpoint, None)
                failures.append(f"{where}: connect timed out after {self.connect_timeout_s:g} s")
                timed_out = True
                continue
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Lost before any response byte (a pooled connection to a server that
                # died, a reset): nothing reached the client yet.
                self.stats.num_connect_failures += 1
                failures.append(f"{where}: {_describe(exc)}")
                continue
            except (TimeoutError, aiohttp.ServerTimeoutError):
                # No status within read_timeout_s: the upstream may be running it.
                failures.append(f"{where}: no answer within {self.read_timeout_s:g} s")
                return self._error(504, "upstream timeout: " + "; ".join(failures))
            except aiohttp.ClientError as exc:  # a malformed answer: the server is broken
                failures.append(f"{where}: {_describe(exc)}")
                return self._error(502, "upstream error: " + "; ".join(failures))
            if upstream.status >= 500 and not is_last:
                self.stats.num_upstream_5xx_retried += 1
                failures.append(f"{where}: answered {upstream.status}")
                upstream.close()  # drop the answer and its connection
                continue
            try:
                return await self._relay(request, upstream, decision.tracker)
            finally:
                upstream.release()
        detail = "; ".join(failures) if failures else "no endpoint to try"
        return self._error(
            504 if timed_out and len(failures) == 1 else 502,
            f"no upstream answered after {len(endpoints)} attempt(s): {detail}",
        )

    def _report(self, endpoint: Endpoint, exc: aiohttp.ClientConnectorError | None) -> None:
        """Tell the health tracker: a refusal (``exc`` set, errno ECONNREFUSED) or a
        connect timeout (``exc`` None). Other connect errors (DNS, TLS) are not the
        endpoint's state."""
        if self.health is None:
            return
        refused = exc is None or failure_kind(exc) is FailureKind.REFUSED
        if exc is not None and not refused:
            return
        try:
            self.health.report_connect_failure(
                endpoint.name,
                "connection refused" if exc is not None else "connect timeout",
                refused=exc is not None,
            )
        except Exception:  # a health hook must never fail a request
            log.exception("health.report_connect_failure(%s) failed", endpoint.name)

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, tracker: ResponseTracker
    ) -> web.StreamResponse:
        """Send the upstream's answer to the client through the tracker: SSE chunk by
        chunk as it arrives, anything else buffered up to the limit, then streamed."""
        import aiohttp
        from aiohttp import web

        upstream_headers = {k.lower(): v for k, v in upstream.headers.items()}
        hooks = tracker.on_headers(upstream.status, upstream_headers)
        headers = {k: v for k, v in upstream_headers.items() if k not in _RESPONSE_DROPPED}
        headers.update(hooks.set_headers)
        streamed = is_event_stream(upstream_headers)
        buffered: list[bytes] = []
        size = 0
        response: web.StreamResponse | None = None
        try:
            async for data in upstream.content.iter_any():
                chunk = data
                if response is None and not streamed:
                    size += len(chunk)
                    buffered.append(chunk)
                    if size <= self.max_buffered_response_bytes:
                        continue
                    chunk = b"".join(buffered)  # too large to buffer: stream the rest
                    buffered.clear()
                if response is None:
                    response = web.StreamResponse(status=upstream.status, headers=headers)
                    await response.prepare(request)
                out = tracker.on_body(chunk, False)
                if out:
                    await response.write(out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.num_upstream_errors += 1
            log.warning("upstream failed mid-answer: %s", _describe(exc))
            if response is None:
                return self._error(502, f"upstream failed mid-answer: {_describe(exc)}")
            raise _Abort from exc
        if response is None:
            whole = b"".join(buffered)
            response = web.Response(
                status=upstream.status, headers=headers, body=tracker.restore(whole)
            )
            try:
                # The client's answer goes out first; the tracker (usage, the response
                # hooks, in-flight release) runs right after, off the answer's latency.
                # Its bytes are whole already, so the request ends "complete" even if
                # the client hangs up now, as when the tracker ran first.
                await response.prepare(request)
                await response.write_eof()
            finally:
                tracker.on_body(whole, True)
            return response
        tail = tracker.on_body(b"", True)
        if tail:
            await response.write(tail)
        await response.write_eof()
        return response


def _request_headers(request: web.Request) -> dict[str, str]:
    """The client's headers, keys lower-case (repeated ones joined by ``,``), plus the
    pseudo-headers the parsers resolve by (``:path``, ``:method``), as Envoy sends them."""
    out: dict[str, str] = {":path": request.path_qs, ":method": request.method}
    for key, value in request.headers.items():
        lowered = key.lower()
        out[lowered] = f"{out[lowered]},{value}" if lowered in out else value
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
