"""A lean asyncio HTTP/1.1 GET client for plain ``http://`` metrics pages.

httpx spends ~1-2 ms of CPU per request (request/response models, header objects,
httpcore's state machines, anyio). The scraper sends the same GET to the same endpoint
20 times a second, so almost all of that work is invariant: this client keeps one
keep-alive connection per endpoint, writes a request prebuilt once, and parses the
answer in an :class:`asyncio.BufferedProtocol` that receives into one preallocated
buffer per thread: a plain ``Protocol`` (or a ``StreamReader``) gets a fresh 256 KiB
``bytes`` per read, whose allocation cost ~40 us per 38 KB page on the CI box, more than
the parsing; an answer that arrives in one read is parsed in place.

Supported: ``Content-Length`` and ``Transfer-Encoding: chunked`` bodies, bodies ended by
the server closing the connection (HTTP/1.0), ``Connection: close``, a body size cap, a
timeout per request (connect included), and one retry on a fresh connection when a
reused idle connection turns out dead (the server closed it in between: normal for
keep-alive). Not supported, on purpose: TLS, redirects, proxies, compression (gzip is
never requested), ``Expect``/1xx interim answers; use httpx for those
(:func:`is_supported`).

Every failure raises a :class:`FetchError` subclass whose message says what happened.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias
from urllib.parse import urlsplit

from inference_sched.datalayer.poller import PolledTransport, connect, poller_for

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_HEAD_BYTES",
    "FetchError",
    "StatusError",
    "FetchTimeout",
    "ConnectError",
    "ConnectionClosed",
    "MalformedResponse",
    "BodyTooLarge",
    "HttpConnection",
    "is_supported",
    "tls_context",
]

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
"""Largest body accepted by default."""
MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest status line + headers (or chunk-size line / trailer section) accepted."""


# ------------------------------------------------------------------ errors
class FetchError(Exception):
    """A GET failed; ``reason`` is a short machine-readable tag, the message says more."""

    reason: ClassVar[str] = "error"


class StatusError(FetchError):
    """The server answered with a status other than 200."""

    reason = "status"

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"GET {url}: HTTP {status}")
        self.status = status


class FetchTimeout(FetchError):
    """No complete answer within the timeout (connect included)."""

    reason = "timeout"


class ConnectError(FetchError):
    """The connection could not be opened (refused, unreachable, DNS)."""

    reason = "connect"


class ConnectionClosed(FetchError):
    """The server closed the connection before the answer was complete."""

    reason = "closed"


class MalformedResponse(FetchError):
    """The bytes received are not a valid HTTP/1.x answer."""

    reason = "malformed"


class BodyTooLarge(FetchError):
    """The body is larger than the cap."""

    reason = "too-large"


def tls_context(
    *,
    verify: bool,
    ca_cert_path: str = "",
    client_cert_path: str = "",
    client_key_path: str = "",
) -> ssl.SSLContext:
    """The TLS settings of an ``https://`` source (llm-d-router
    ``pkg/epp/framework/plugins/datalayer/source/http/datasource.go``, ``TLSOptions``):
    verify the server against ``ca_cert_path`` (a PEM bundle) or the default CA set
    (certifi's, as httpx), or not at all (``verify=False``, which ignores the CA path);
    present ``client_cert_path`` / ``client_key_path`` for mTLS.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file holds no usable certificate or key.
    """
    import httpx  # the https path is httpx's; the plain-http scraper never needs it

    if verify and ca_cert_path:
        context = ssl.create_default_context(cafile=ca_cert_path)
    else:
        context = httpx.create_ssl_context(verify=verify)
    if client_cert_path or client_key_path:
        context.load_cert_chain(client_cert_path, client_key_path or None)
    return context


def is_supported(url: str) -> bool:
    """Whether :class:`HttpConnection` can fetch ``url`` (plain ``http://`` only)."""
    return url[:7].lower() == "http://"


# ------------------------------------------------------------------ protocol
_SCRATCH_BYTES: Final = 256 * 1024
"""Size of the receive buffer (asyncio's own read size for sockets)."""


class _Scratch(threading.local):
    """The receive buffer shared by every connection of a thread: asyncio calls
    ``get_buffer``, ``recv_into`` and ``buffer_updated`` back to back, so a read is
    consumed (parsed or copied out) before the next connection reads into it."""

    def __init__(self) -> None:
        self.buf = bytearray(_SCRATCH_BYTES)
        self.view = memoryview(self.buf)


_scratch = _Scratch()

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE = range(6)
"""Parser states."""

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_SIZE_LINE: Final = re.compile(
    rb"0*([1-9A-Fa-f][0-9A-Fa-f]{0,15}|0)(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*"
    % (_TOKEN, _TOKEN, _QUOTED)
)
"""A chunk-size line without its CRLF, RFC 9112 §7.1.1: ``chunk-size = 1*HEXDIG``, then
``chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`` with a
token name and a token or quoted-string value (RFC 9110 §5.6.2, §5.6.4). No ``0x``, no
sign, no other whitespace; leading zeros are free, at most 16 significant hex digits
(a size over 2**64 is malformed; a smaller one over the body cap is too large)."""


class _Head(NamedTuple):
    """A parsed answer head."""

    status: int
    state: int
    """Parser state for the body: _BODY, _CHUNK_SIZE or _UNTIL_CLOSE."""
    need: int
    """Body bytes (_BODY)."""
    reusable: bool
    """The connection may carry another request after this answer."""


_MAX_CACHED_HEADS: Final = 4096
_MAX_CACHED_HEAD_BYTES: Final = 1024
_heads: dict[bytes, _Head] = {}
"""Answer heads seen (status line + headers) → parsed."""


class _Retry(Exception):
    """A reused idle connection died before answering: retry once on a fresh one."""


Body: TypeAlias = bytes | memoryview
"""A body handed to a :meth:`HttpConnection.send` callback: a ``memoryview`` is only
valid during the callback (it may point into the shared receive buffer)."""
Outcome: TypeAlias = Body | FetchError | None
"""What a :meth:`HttpConnection.send` callback gets: the body of a 200 answer, the
error, or ``None`` when a reused idle connection died before answering (retry with
:meth:`HttpConnection.get`, which opens a fresh connection)."""


class _Protocol(asyncio.BufferedProtocol):
    """Parses one answer at a time into ``waiter`` (bytes or an exception)."""

    def __init__(self, url: str, max_bytes: int) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[bytes] | None = None
        # Gets Body | BaseException, or an Outcome when an HttpConnection owns the request.
        self.callback: Callable[[Any], None] | None = None
        self.owner: HttpConnection | None = None
        """The connection that sent the request (its :meth:`HttpConnection.send`)."""
        self.reusable = True
        self._reused = False
        self._buf = bytearray()
        self._state = _HEAD
        self._status = 0
        self._need = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._got_bytes = False
        self._scratch = _scratch

    # ........................................................ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if not self._pending():
            return
        if self._state == _UNTIL_CLOSE:
            self._finish(b"".join(self._parts) + bytes(self._buf))
        elif self._reused and not self._got_bytes:
            self._deliver(_Retry())
        else:
            why = f" ({exc})" if exc else ""
            self._fail(ConnectionClosed(f"GET {self.url}: connection closed mid-answer{why}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles the waiter

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch.view

    def buffer_updated(self, nbytes: int) -> None:
        if not self._pending():
            # Bytes nobody asked for: the connection is out of step; drop it.
            self.reusable = False
            self._close()
            return
        self._got_bytes = True
        try:
            if self._state == _HEAD and not self._buf and self._whole(nbytes):
                return
            self._buf += self._scratch.view[:nbytes]
            self._parse()
        except FetchError as exc:
            self._fail(exc)

    def _whole(self, nbytes: int) -> bool:
        """Fast path: the whole answer (head + Content-Length body) is in this read."""
        scratch = self._scratch
        end = scratch.buf.find(b"\r\n\r\n", 0, nbytes)
        if end < 0:
            return False
        self._head(bytes(scratch.view[:end]))
        start = end + 4
        if self._state != _BODY or nbytes - start < self._need:
            # Chunked, till-close or an incomplete body: the general parser goes on.
            self._buf += scratch.view[start:nbytes]
            self._parse()
            return True
        if nbytes - start > self._need:
            self.reusable = False  # bytes after the answer: never reuse
        body = scratch.view[start : start + self._need]
        # A callback decodes straight from the buffer; a future needs its own copy.
        self._finish(body if self.callback is not None else bytes(body))
        return True

    # ........................................................ requests
    def start(self, request: bytes) -> asyncio.Future[bytes]:
        """Send ``request``; the future gets the body (or a :class:`FetchError`)."""
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self._send(request)
        return waiter

    def start_callback(self, request: bytes, callback: Callable[[Any], None]) -> None:
        """Send ``request``; ``callback`` gets the body or the error, from the loop."""
        self.callback = callback
        self._send(request)

    def _send(self, request: bytes) -> None:
        assert self.transport is not None
        self._state, self._status, self._parts, self._size = _HEAD, 0, [], 0
        self._got_bytes = False
        self._buf.clear()
        self.transport.write(request)

    def _pending(self) -> bool:
        """An answer is awaited."""
        return self.callback is not None or (self.waiter is not None and not self.waiter.done())

    def _deliver(self, outcome: Body | BaseException) -> None:
        callback = self.callback
        if callback is not None:
            self.callback = None
            owner = self.owner
            if owner is not None and owner._callback is not None:
                # HttpConnection.send's answer, settled here (one frame less per request).
                owner._callback = None
                owner._busy = False
                if isinstance(outcome, BaseException):
                    owner.close()
                    callback(outcome if isinstance(outcome, FetchError) else None)
                    return
            callback(outcome)
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(bytes(outcome))

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _fail(self, exc: FetchError) -> None:
        self.reusable = False
        self._close()
        self._deliver(exc)

    def _finish(self, body: Body) -> None:
        self._reused = True  # the next request on this connection reuses it
        if self._status != 200:
            self._fail(StatusError(self.url, self._status))
            return
        if not self.reusable:
            self._close()
        self._deliver(body)

    # ........................................................ parsing
    def _parse(self) -> None:
        # Loops because one segment may hold the head, the body and the chunk framing.
        while True:
            state = self._state
            buf = self._buf
            if state == _BODY:
                if len(buf) < self._need:
                    return
                with memoryview(buf) as view:
                    body = bytes(view[: self._need])
                extra = len(buf) > self._need
                buf.clear()
                if extra:
                    self.reusable = False  # pipelined junk: never reuse
                self._finish(body)
                return
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise MalformedResponse(f"GET {self.url}: headers over {MAX_HEAD_BYTES}")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise MalformedResponse(f"GET {self.url}: chunk size line too long")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                match = _CHUNK_SIZE_LINE.fullmatch(line)
                if match is None:
                    raise MalformedResponse(f"GET {self.url}: bad chunk size {line[:40]!r}")
                size = int(match[1], 16)
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._grow(size)
                    self._need, self._state = size, _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) < self._need + 2:
                    return
                if buf[self._need : self._need + 2] != b"\r\n":
                    raise MalformedResponse(f"GET {self.url}: chunk not followed by CRLF")
                self._parts.append(bytes(buf[: self._need]))
                del buf[: self._need + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise MalformedResponse(f"GET {self.url}: trailers too long")
                    return
                del buf[: end + 2]
                if end == 0:  # the empty line ending the trailers
                    if buf:
                        self.reusable = False
                    buf.clear()
                    self._finish(b"".join(self._parts))
                    return
            else:  # _UNTIL_CLOSE: the body ends when the server closes
                self._grow(len(buf))
                self._parts.append(bytes(buf))
                buf.clear()
                return

    def _grow(self, n: int) -> None:
        self._size += n
        if self._size > self.max_bytes:
            raise BodyTooLarge(f"GET {self.url}: body larger than {self.max_bytes} bytes")

    def _head(self, head: bytes) -> None:
        # Heads repeat from answer to answer (a server's Date changes once a second, a
        # Content-Length when the page's size does): parse each distinct one once.
        parsed = _heads.get(head)
        if parsed is None:
            parsed = self._parse_head(head)
            if len(head) <= _MAX_CACHED_HEAD_BYTES:
                if len(_heads) >= _MAX_CACHED_HEADS:
                    _heads.clear()
                _heads[head] = parsed
        self._status = parsed.status
        if not parsed.reusable:
            self.reusable = False
        if parsed.state == _BODY and parsed.need > self.max_bytes:
            raise BodyTooLarge(f"GET {self.url}: body of {parsed.need} bytes > {self.max_bytes}")
        self._state, self._need = parsed.state, parsed.need

    def _parse_head(self, head: bytes) -> _Head:
        """Status line and headers → what the parser needs (raises on bad input)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if (
            len(parts) < 2
            or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise MalformedResponse(f"GET {self.url}: bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            raise MalformedResponse(f"GET {self.url}: unexpected interim answer {status}")
        keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:] in (b" ", b"\t"):
                raise MalformedResponse(f"GET {self.url}: bad header line {line[:80]!r}")
            name = name.lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise MalformedResponse(f"GET {self.url}: bad Content-Length {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings[-1] != b"chunked" or len(codings) != 1:
                    raise MalformedResponse(
                        f"GET {self.url}: unsupported Transfer-Encoding {value.strip()[:40]!r}"
                    )
                chunked = True
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if chunked:  # wins over Content-Length (RFC 9112 §6.3); the mix is never reused
            return _Head(status, _CHUNK_SIZE, 0, keep_alive and length is None)
        if length is not None:
            return _Head(status, _BODY, length, keep_alive)
        if status in (204, 304):
            return _Head(status, _BODY, 0, keep_alive)
        return _Head(status, _UNTIL_CLOSE, 0, False)


# ------------------------------------------------------------------ connection
class HttpConnection:
    """GETs one ``http://`` URL again and again over one keep-alive connection.

    Args:
        url: the page (``http://host[:port]/path?query``; IPv6 hosts bracketed).
        timeout_s: total time one :meth:`get` may take, connecting included.
        max_bytes: largest body accepted.
        polled: keep the socket in the event loop's epoll set (:mod:`.poller`: ~half
            the CPU per request of an asyncio transport) where the platform allows.

    Not safe for concurrent :meth:`get` calls (one request at a time, by design: the
    scraper never has two fetches of one endpoint in flight). Call :meth:`aclose` (or
    :meth:`close`) when done.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        polled: bool = True,
    ) -> None:
        if not is_supported(url):
            raise ValueError(f"only http:// URLs are supported, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in {url!r}")
        self.url = url
        self.polled = polled
        """Serve the connection from the loop's epoll set (:mod:`.poller`) where the
        platform allows; False: a plain asyncio transport."""
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
            "Connection: keep-alive\r\nAccept: text/plain\r\n"
            "User-Agent: inference-sched\r\n\r\n"
        ).encode("latin-1")
        self._proto: _Protocol | None = None
        self._busy = False
        self._callback: Callable[[Outcome], None] | None = None
        self.connects = 0
        """Connections opened so far (tests and diagnostics)."""
        self.requests = 0
        """Requests sent so far, retries included."""

    async def get(self) -> bytes:
        """GET the URL and return the body of a 200 answer.

        Raises:
            StatusError: the status is not 200 (the body was read and dropped).
            FetchTimeout: no complete answer within ``timeout_s``.
            ConnectError: the connection could not be opened.
            ConnectionClosed: the server closed the connection mid-answer.
            MalformedResponse: the answer is not valid HTTP/1.x.
            BodyTooLarge: the body exceeds ``max_bytes``.
        """
        if self._busy:
            raise RuntimeError("HttpConnection.get() is already running")
        self._busy = True
        ok = False
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._get()
            ok = True
            return body
        except TimeoutError:
            raise FetchTimeout(f"GET {self.url}: timed out after {self.timeout_s}s") from None
        finally:
            self._busy = False
            if not ok:  # timeout, cancellation or error: the connection's state is unknown
                self.close()

    def send(self, callback: Callable[[Outcome], None]) -> bool:
        """Callback-driven GET over the kept connection, without a task, future or timer.

        When a reused connection is open, write the request and return True:
        ``callback`` is then called once from the event loop with the body of a 200
        answer (a ``memoryview`` valid during the call only), a :class:`FetchError`,
        or ``None`` when the idle connection turned out dead before answering (retry
        with :meth:`get`). There is no timeout here: the caller calls :meth:`cancel`
        when its deadline passes. When no connection is open, return False and send
        nothing (use :meth:`get`, which connects).
        """
        if self._busy:
            raise RuntimeError("HttpConnection.get() is already running")
        proto = self._proto
        if proto is None or proto.closed or not proto.reusable:
            return False
        self._busy = True
        self._callback = callback
        self.requests += 1
        proto.owner = self  # _Protocol._deliver settles the answer for us
        proto.start_callback(self._request, callback)
        return True

    def cancel(self) -> None:
        """Drop the :meth:`send` in flight (its callback is never called) and close the
        connection (its state is unknown)."""
        proto = self._proto
        if proto is not None:
            proto.callback = None
        self._callback = None
        self._busy = False
        self.close()

    async def _get(self) -> bytes:
        for attempt in (0, 1):
            proto = self._proto
            if proto is None or proto.closed or not proto.reusable:
                if proto is not None:
                    proto._close()
                proto = await self._connect()
            self.requests += 1
            try:
                return await proto.start(self._request)
            except _Retry:
                self._proto = None
                if attempt:
                    break
        raise ConnectionClosed(f"GET {self.url}: connection closed before any answer, twice")

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        self._proto = None
        poller = poller_for(loop) if self.polled else None
        try:
            if poller is not None:
                sock = await connect(loop, self.host, self.port)
                proto = _Protocol(self.url, self.max_bytes)
                PolledTransport(poller, sock, proto)
            else:
                _, proto = await loop.create_connection(
                    lambda: _Protocol(self.url, self.max_bytes), self.host, self.port
                )
        except OSError as exc:
            raise ConnectError(f"GET {self.url}: cannot connect: {exc}") from None
        self.connects += 1
        self._proto = proto
        return proto

    @property
    def connected(self) -> bool:
        """An open connection is kept for the next request."""
        return self._proto is not None and not self._proto.closed and self._proto.reusable

    def close(self) -> None:
        """Close the connection (the next :meth:`get` opens a new one)."""
        proto, self._proto = self._proto, None
        if proto is not None:
            proto._close()

    async def aclose(self) -> None:
        """Close the connection and let the loop release the socket."""
        self.close()
        await asyncio.sleep(0)  # transports close on the next loop iteration
