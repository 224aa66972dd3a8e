"""The lean HTTP/1.1 client against scripted loopback servers (raw sockets, one thread)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from inference_sched.datalayer.fetch import (
    BodyTooLarge,
    ConnectError,
    ConnectionClosed,
    FetchTimeout,
    HttpConnection,
    MalformedResponse,
    StatusError,
    is_supported,
)

Reply = Callable[[int], "list[bytes] | None"]
"""Request number (0-based, whole server) -> segments to send, then keep the connection;
``None`` = close the connection without answering. A trailing ``b"CLOSE"`` segment closes
the connection after the answer; ``b"SLEEP"`` stalls until the test ends."""


def ok(body: bytes, *headers: str) -> list[bytes]:
    head = "HTTP/1.1 200 OK\r\n" + "".join(h + "\r\n" for h in headers)
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head += f"Content-Length: {len(body)}\r\n"
    return [head.encode() + b"\r\n" + body]


class ScriptedServer:
    """A loopback TCP server that answers each GET with ``reply(n)`` and counts accepts."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.accepts = 0
        self.requests = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepts += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    with self._lock:
                        n = self.requests
                        self.requests += 1
                    segments = self.reply(n)
                    if segments is None:
                        return
                    for segment in segments:
                        if segment == b"CLOSE":
                            return
                        if segment == b"SLEEP":
                            self._stop.wait(10)
                            return
                        with contextlib.suppress(OSError):
                            conn.sendall(segment)
                        time.sleep(0.002)  # separate reads on the client

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        self._sock.close()


@pytest.fixture(autouse=True, params=[True, False], ids=["polled", "asyncio-transport"])
def transport_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test runs over both transports: the loop's epoll set and asyncio's own."""
    defaults = HttpConnection.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "polled", request.param)
    return bool(request.param)


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(reply: Reply) -> ScriptedServer:
        started.append(ScriptedServer(reply))
        return started[-1]

    yield start
    for server in started:
        server.close()


def fetch_many(url: str, times: int, **kwargs: float) -> tuple[list[bytes], HttpConnection]:
    async def go() -> tuple[list[bytes], HttpConnection]:
        conn = HttpConnection(url, **kwargs)
        try:
            return [await conn.get() for _ in range(times)], conn
        finally:
            await conn.aclose()

    return asyncio.run(go())


def fetch_error(url: str, **kwargs: float) -> Exception:
    async def go() -> Exception:
        conn = HttpConnection(url, **kwargs)
        try:
            await conn.get()
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            return exc
        finally:
            await conn.aclose()
        raise AssertionError("no error")

    return asyncio.run(go())


PAGE = b"vllm:num_requests_waiting 3\n" * 2000  # 56 KB: several reads


# ====================================================================== framing
def test_content_length_body_and_keep_alive_reuse(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: ok(PAGE + str(n).encode()))
    bodies, conn = fetch_many(server.url, 20)
    assert bodies == [PAGE + str(n).encode() for n in range(20)]
    assert server.accepts == 1  # one TCP connection served every request
    assert (conn.connects, conn.requests) == (1, 20)


def test_chunked_body_split_across_reads(serve: Callable[[Reply], ScriptedServer]) -> None:
    def reply(n: int) -> list[bytes]:
        return [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\n",
            b"6\r\n world\r\n0\r\nX-Trailer: t\r\n",
            b"\r\n",
        ]

    server = serve(reply)
    bodies, _ = fetch_many(server.url, 3)
    assert bodies == [b"hello world"] * 3
    assert server.accepts == 1


def test_answer_in_one_segment_with_head_split(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 2\r\n\r\nok"])
    assert fetch_many(server.url, 2)[0] == [b"ok", b"ok"]


def test_body_until_close_http10(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: [b"HTTP/1.0 200 OK\r\n\r\n", b"part1,", b"part2", b"CLOSE"])
    bodies, conn = fetch_many(server.url, 2)
    assert bodies == [b"part1,part2"] * 2
    assert server.accepts == conn.connects == 2


def test_connection_close_header_reconnects(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: [*ok(b"x", "Connection: close"), b"CLOSE"])
    bodies, conn = fetch_many(server.url, 3)
    assert bodies == [b"x"] * 3
    assert server.accepts == conn.connects == 3
    assert conn.requests == 3  # no failed attempt: the client did not reuse it


def test_server_closing_idle_connection_is_retried(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    # The server closes silently after each answer (keep-alive expiry): the next GET
    # finds a dead reused connection and retries once on a fresh one.
    server = serve(lambda n: [*ok(b"y"), b"CLOSE"])

    async def go() -> tuple[list[bytes], HttpConnection]:
        conn = HttpConnection(server.url, timeout_s=2.0)
        try:
            bodies = []
            for _ in range(3):
                bodies.append(await conn.get())
                await asyncio.sleep(0.05)  # let the close arrive... or not: both must work
            return bodies, conn
        finally:
            await conn.aclose()

    bodies, conn = asyncio.run(go())
    assert bodies == [b"y"] * 3
    assert server.accepts == conn.connects == 3


def test_dead_connection_without_eof_is_retried_once(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    # Request 1 is dropped unanswered on the reused connection: one retry succeeds.
    server = serve(lambda n: None if n == 1 else ok(b"z"))
    bodies, conn = fetch_many(server.url, 2)
    assert bodies == [b"z", b"z"]
    assert (conn.connects, conn.requests) == (2, 3)


# ====================================================================== failures
def test_404_raises_status_error_and_keeps_the_connection(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    server = serve(
        lambda n: (
            [b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"]
            if n == 0
            else ok(b"fine")
        )
    )

    async def go() -> tuple[Exception | None, bytes]:
        conn = HttpConnection(server.url)
        try:
            error: Exception | None = None
            try:
                await conn.get()
            except StatusError as exc:
                error = exc
            return error, await conn.get()
        finally:
            await conn.aclose()

    error, body = asyncio.run(go())
    assert isinstance(error, StatusError)
    assert error.status == 404
    assert error.reason == "status"
    assert str(error) == f"GET {server.url}: HTTP 404"
    assert body == b"fine"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/2 200 OK\r\nContent-Length: 1\r\n\r\nx", "bad status line b'HTTP/2 200 OK'"),
        (b"garbage\r\n\r\n", "bad status line b'garbage'"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line b'no colon here'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length b'-1'"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "bad chunk size b'zz'",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "unsupported Transfer-Encoding b'gzip'",
        ),
    ],
)
def test_malformed_answers(
    serve: Callable[[Reply], ScriptedServer], answer: bytes, message: str
) -> None:
    server = serve(lambda n: [answer])
    error = fetch_error(server.url)
    assert isinstance(error, MalformedResponse)
    assert error.reason == "malformed"
    assert message in str(error)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"0x5", id="0x-prefix"),
        pytest.param(b"0X5", id="0X-prefix"),
        pytest.param(b"+5", id="plus-sign"),
        pytest.param(b"-5", id="minus-sign"),
        pytest.param(b" 5", id="leading-space"),
        pytest.param(b"\t5", id="leading-tab"),
        pytest.param(b"5 ", id="trailing-space-without-extension"),
        pytest.param(b"5\t", id="trailing-tab-without-extension"),
        pytest.param(b"5_0", id="underscore"),
        pytest.param(b"", id="empty"),
        pytest.param(b";ext", id="extension-without-size"),
        pytest.param(b"5;", id="empty-extension-name"),
        pytest.param(b"5;ext=", id="empty-extension-value"),
        pytest.param(b"5;e xt", id="space-in-extension-name"),
        pytest.param(b'5;ext="open', id="unterminated-quoted-value"),
        pytest.param(b"5;ext=a b", id="space-in-extension-value"),
        pytest.param(b"5 5", id="space-inside-size"),
        pytest.param(b"5\x00", id="nul"),
        pytest.param(b"5\n", id="bare-lf-inside-the-line"),
        pytest.param("\u0665".encode(), id="arabic-indic-digit"),
        pytest.param("\uff15".encode(), id="fullwidth-digit"),
        pytest.param(b"g", id="not-hex"),
        pytest.param(b"1" + b"0" * 16, id="17-significant-digits"),
        pytest.param(b"f" * 64, id="huge"),
        pytest.param(b"0x0", id="0x-last-chunk"),
    ],
)
def test_chunk_size_line_is_strict(serve: Callable[[Reply], ScriptedServer], line: bytes) -> None:
    # RFC 9112 §7.1: chunk-size = 1*HEXDIG, then only chunk-ext = *(BWS ";" BWS name
    # [BWS "=" BWS (token / quoted-string)]); the prefix and sign Python's int() accepts,
    # whitespace elsewhere and sizes past 16 hex digits are malformed.
    server = serve(lambda n: [CHUNKED_HEAD + line + b"\r\nhello\r\n0\r\n\r\n"])
    error = fetch_error(server.url)
    assert isinstance(error, MalformedResponse), repr(error)
    assert "bad chunk size" in str(error)
    assert len(str(error)) < 200


@pytest.mark.parametrize(
    ("line", "last"),
    [
        pytest.param(b"5", b"0", id="plain"),
        pytest.param(b"05", b"000", id="leading-zeros"),
        pytest.param(b"0" * 40 + b"5", b"0" * 40, id="many-leading-zeros"),
        pytest.param(b"5;ext=1", b"0;last", id="extension"),
        pytest.param(b"5 ;ext", b"0\t;x", id="bws-before-semicolon"),
        pytest.param(b"5; ext = 1", b"0", id="bws-around-name-and-value"),
        pytest.param(b'5;a="q \\" ;x";b=c;d', b"0", id="quoted-string-and-several"),
        pytest.param(b"5;!#$%&'*+-.^_`|~09AZaz=x", b"0", id="every-tchar"),
    ],
)
def test_chunk_size_line_accepts_rfc_forms(
    serve: Callable[[Reply], ScriptedServer], line: bytes, last: bytes
) -> None:
    server = serve(lambda n: [CHUNKED_HEAD + line + b"\r\nhello\r\n" + last + b"\r\n\r\n"])
    assert fetch_many(server.url, 2)[0] == [b"hello", b"hello"]


def test_chunk_size_upper_and_lower_hex(serve: Callable[[Reply], ScriptedServer]) -> None:
    body = b"x" * 0x1A
    server = serve(
        lambda n: [CHUNKED_HEAD + b"1A\r\n" + body + b"\r\n1a\r\n" + body + b"\r\n0\r\n\r\n"]
    )
    assert fetch_many(server.url, 1)[0] == [body * 2]


def test_oversized_body_declared_and_chunked(serve: Callable[[Reply], ScriptedServer]) -> None:
    declared = serve(lambda n: ok(b"x" * 5000))
    error = fetch_error(declared.url, max_bytes=4096)
    assert isinstance(error, BodyTooLarge)
    assert str(error) == f"GET {declared.url}: body of 5000 bytes > 4096"

    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    streamed = serve(
        lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunk, chunk]
    )
    error = fetch_error(streamed.url, max_bytes=6000)
    assert isinstance(error, BodyTooLarge)
    assert "body larger than 6000 bytes" in str(error)


def test_slow_server_times_out(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"SLEEP"])
    started = time.monotonic()
    error = fetch_error(server.url, timeout_s=0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    assert isinstance(error, FetchTimeout)
    assert str(error) == f"GET {server.url}: timed out after 0.2s"


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/metrics")
    assert isinstance(error, ConnectError)
    assert error.reason == "connect"
    assert "cannot connect" in str(error)


def test_close_mid_answer(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", b"CLOSE"])
    error = fetch_error(server.url)
    assert isinstance(error, ConnectionClosed)
    assert "connection closed mid-answer" in str(error)


def test_cancelled_get_closes_the_connection(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: [b"SLEEP"])

    async def go() -> bool:
        conn = HttpConnection(server.url, timeout_s=5.0)
        task = asyncio.create_task(conn.get())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await conn.aclose()
        return conn.connected

    assert asyncio.run(go()) is False


# ====================================================================== arguments
def test_urls_and_arguments() -> None:
    assert is_supported("http://h/m")
    assert is_supported("HTTP://h/m")
    assert not is_supported("https://h/m")
    with pytest.raises(ValueError, match="only http://"):
        HttpConnection("https://h/m")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        HttpConnection("http://h/m", timeout_s=0)
    conn = HttpConnection("http://[fd00::1]:9090/metrics?x=1")
    assert (conn.host, conn.port) == ("fd00::1", 9090)
    assert conn._request.startswith(b"GET /metrics?x=1 HTTP/1.1\r\nHost: [fd00::1]:9090\r\n")
    assert b"Accept-Encoding" not in conn._request  # gzip is never asked for
    assert HttpConnection("http://h").port == 80


# ====================================================================== callback path
def send_once(conn: HttpConnection) -> object:
    """One :meth:`HttpConnection.send`; the outcome (bodies copied to ``bytes``)."""

    async def go() -> object:
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def callback(outcome: object) -> None:
            done.set_result(bytes(outcome) if isinstance(outcome, memoryview) else outcome)

        assert conn.send(callback)
        return await asyncio.wait_for(done, 2.0)

    return go()


def test_send_without_a_connection_sends_nothing(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: ok(b"x"))

    async def go() -> bool:
        conn = HttpConnection(server.url)
        return conn.send(lambda outcome: None)

    assert asyncio.run(go()) is False
    assert server.requests == 0


def test_send_reuses_the_connection_and_reports_errors(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    # 0: get() connects; 1, 2: callbacks; 3: dropped (dead idle connection);
    # 4: get() reconnects; 5: a 404 through a callback.
    def reply(n: int) -> list[bytes] | None:
        if n == 3:
            return None
        if n == 5:
            return [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
        return ok(PAGE[:100] + str(n).encode())

    server = serve(reply)

    async def go() -> list[object]:
        conn = HttpConnection(server.url, timeout_s=2.0)
        try:
            outcomes: list[object] = [await conn.get()]
            outcomes += [await send_once(conn) for _ in range(3)]
            outcomes.append(conn.connected)
            outcomes.append(await conn.get())
            outcomes.append(await send_once(conn))
            outcomes.append(conn.requests)
            return outcomes
        finally:
            await conn.aclose()

    first, one, two, dead, connected, again, not_found, requests = asyncio.run(go())
    assert [first, one, two, again] == [PAGE[:100] + str(n).encode() for n in (0, 1, 2, 4)]
    assert dead is None  # the idle connection had died: retry with get()
    assert connected is False
    assert isinstance(not_found, StatusError)
    assert not_found.status == 404
    assert (server.accepts, requests) == (2, 6)


def test_cancel_drops_the_callback_and_closes(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda n: ok(b"a") if n == 0 else [b"SLEEP"])
    called: list[object] = []

    async def go() -> bool:
        conn = HttpConnection(server.url, timeout_s=2.0)
        try:
            await conn.get()
            assert conn.send(called.append)
            await asyncio.sleep(0.05)
            conn.cancel()
            await asyncio.sleep(0.05)
            return conn.connected
        finally:
            await conn.aclose()

    assert asyncio.run(go()) is False
    assert called == []
