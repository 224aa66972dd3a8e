"""The epoll-set transport: asyncio's Transport semantics over kept sockets."""

from __future__ import annotations

import asyncio
import select
import socket

import pytest

from inference_sched.datalayer.fetch import HttpConnection
from inference_sched.datalayer.poller import PolledTransport, Poller, connect, poller_for

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux-only"),
]


class Collect(asyncio.BufferedProtocol):
    """Keeps what it receives and how the connection ended."""

    def __init__(self) -> None:
        self.buf = bytearray(4096)
        self.data = bytearray()
        self.lost: list[Exception | None] = []
        self.eof = 0
        self.transport: asyncio.BaseTransport | None = None
        self.in_callback = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.in_callback = True
        self.data += self.buf[:nbytes]
        if self.data.endswith(b"close-now"):
            assert self.transport is not None
            self.transport.close()
            assert self.lost == []  # connection_lost comes later, from the loop
        self.in_callback = False

    def eof_received(self) -> bool | None:
        self.eof += 1
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        assert not self.in_callback
        self.lost.append(exc)


async def _settle(condition: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)


def test_reads_writes_and_eof_over_a_socketpair() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        poller = poller_for(loop)
        assert poller is not None
        assert poller_for(loop) is poller
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        proto = Collect()
        transport = PolledTransport(poller, ours, proto)
        assert len(poller) == 1
        assert proto.transport is transport
        # A write far larger than the socket buffer is queued and flushed as it drains.
        payload = bytes(range(256)) * 32768  # 8 MiB
        transport.write(payload)
        received = bytearray()
        theirs.settimeout(5)
        while len(received) < len(payload):
            received += await loop.run_in_executor(None, theirs.recv, 1 << 20)
        assert received == payload
        theirs.sendall(b"hello")
        await _settle(lambda: proto.data == b"hello")
        theirs.close()
        await _settle(lambda: proto.lost == [None])
        assert proto.eof == 1
        assert len(poller) == 0
        assert transport.is_closing()

    asyncio.run(go())


def test_close_from_inside_a_read_reports_the_loss_later() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        poller = Poller(loop)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        proto = Collect()
        transport = PolledTransport(poller, ours, proto)
        theirs.sendall(b"close-now")
        await _settle(lambda: proto.lost == [None])
        transport.close()  # idempotent
        transport.write(b"ignored after close")
        await asyncio.sleep(0.01)
        assert proto.lost == [None]
        assert len(poller) == 0
        theirs.close()

    asyncio.run(go())


def test_reset_connection_reports_the_error() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        poller = Poller(loop)
        listener = socket.create_server(("127.0.0.1", 0))
        sock = await connect(loop, "127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()
        proto = Collect()
        PolledTransport(poller, sock, proto)
        # SO_LINGER 0: the peer's close sends RST, so our read fails.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()
        listener.close()
        await _settle(lambda: len(proto.lost) == 1)
        assert proto.lost[0] is None or isinstance(proto.lost[0], ConnectionResetError)

    asyncio.run(go())


def test_connect_refused_raises_oserror() -> None:
    async def go() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            await connect(asyncio.get_running_loop(), "127.0.0.1", port)

    asyncio.run(go())


@pytest.mark.parametrize("polled", [True, False])
def test_http_connection_uses_the_poller_only_when_polled(polled: bool) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(4096)  # until the client closes
            conn.close()

        served = loop.run_in_executor(None, answer)
        conn = HttpConnection(f"http://127.0.0.1:{port}/metrics", polled=polled)
        assert await conn.get() == b"ok"
        poller = poller_for(loop)
        assert poller is not None
        assert len(poller) == (1 if polled else 0)
        await conn.aclose()
        await served
        listener.close()
        assert len(poller) == 0

    asyncio.run(go())
