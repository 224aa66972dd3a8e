"""Kept metrics connections served by one epoll set, not one asyncio transport each.

Why. An asyncio selector transport costs ~10-15 µs of Python per read on the CI box
(the selector's event processing, a handle per ready socket, ``_read_ready`` and its
guards), and the scraper does 5,120 reads a second for 256 endpoints at 50 ms: that
overhead alone was a tenth of a core. Here every kept connection's socket sits in one
``select.epoll`` set, whose own file descriptor is watched by the event loop
(``loop.add_reader``): the loop wakes once per batch of ready sockets and
:meth:`Poller.drain` reads them all in a tight loop, handing each read to the same
:class:`asyncio.BufferedProtocol` that an asyncio transport would drive.

:class:`PolledTransport` implements the slice of :class:`asyncio.Transport` that
:mod:`inference_sched.datalayer.fetch`'s protocol uses (``write``, ``close``,
``is_closing``, ``get_extra_info``), with asyncio's semantics: ``connection_lost`` runs
from the loop after ``close``, never inside the caller's frame.

Linux only (epoll) and only on loops that support ``add_reader`` (the default selector
loop, uvloop); :func:`poller_for` returns ``None`` elsewhere and callers keep using
asyncio transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import weakref
from typing import Any, Final

__all__ = ["PolledTransport", "Poller", "poller_for"]

COALESCE_S: Final = 0.001
"""Default pause after serving the ready sockets: answers that arrive meanwhile are
served together (a scrape's answers come in over milliseconds; their deadlines are a
second)."""

_READ: Final = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0)
_WRITE: Final = getattr(select, "EPOLLOUT", 0)

_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


def poller_for(loop: asyncio.AbstractEventLoop) -> Poller | None:
    """The loop's poller (made on first use), or ``None`` where epoll or
    ``add_reader`` is unavailable (callers then use asyncio transports)."""
    poller = _pollers.get(loop)
    if poller is None and hasattr(select, "epoll") and loop not in _unsupported:
        try:
            poller = Poller(loop)
        except (OSError, NotImplementedError):
            _unsupported.add(loop)
            return None
        _pollers[loop] = poller
    return poller


_unsupported: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


class Poller:
    """One epoll set of sockets, drained by one loop reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._by_fd: dict[int, PolledTransport] = {}
        self.coalesce_s = COALESCE_S
        """Pause after each drain (0: serve every wake-up at once)."""
        self._armed = True
        self._closed = False
        try:
            # An empty set is never ready, so the reader costs nothing while idle.
            loop.add_reader(self._epoll.fileno(), self.drain)
        except BaseException:
            self._epoll.close()
            raise
        weakref.finalize(self, self._epoll.close)

    def register(self, transport: PolledTransport, events: int = _READ) -> None:
        self._epoll.register(transport.fd, events)
        self._by_fd[transport.fd] = transport

    def modify(self, transport: PolledTransport, events: int) -> None:
        self._epoll.modify(transport.fd, events)

    def unregister(self, transport: PolledTransport) -> None:
        if self._by_fd.pop(transport.fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(transport.fd)

    def drain(self) -> None:
        """Serve every ready socket (called by the loop when the epoll set is ready)."""
        by_fd = self._by_fd
        for fd, events in self._epoll.poll(0):
            transport = by_fd.get(fd)
            if transport is not None:
                transport.ready(events)
        if self.coalesce_s > 0 and self._armed:
            # Let answers pile up for a moment: a wake-up per few answers costs more CPU
            # (epoll_wait, the loop's turn, a context switch) than the answers themselves.
            self.loop.remove_reader(self._epoll.fileno())
            self._armed = False
            self.loop.call_later(self.coalesce_s, self._rearm)

    def _rearm(self) -> None:
        if not self._armed and not self._closed:
            self.loop.add_reader(self._epoll.fileno(), self.drain)
            self._armed = True

    def __len__(self) -> int:
        return len(self._by_fd)


class PolledTransport(asyncio.Transport):
    """A connected non-blocking TCP socket in a :class:`Poller`, driving a
    :class:`asyncio.BufferedProtocol`."""

    def __init__(
        self, poller: Poller, sock: socket.socket, protocol: asyncio.BufferedProtocol
    ) -> None:
        super().__init__()
        self._poller = poller
        self._sock = sock
        self.fd = sock.fileno()
        self._protocol = protocol
        self._closing = False
        self._pending = b""  # request bytes the socket did not take yet
        poller.register(self)
        protocol.connection_made(self)

    # .................................................... asyncio.Transport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if self._pending:
            self._pending += bytes(data)
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        if sent < len(data):
            self._pending = bytes(data[sent:])
            self._poller.modify(self, _READ | _WRITE)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._shut(None)

    def is_closing(self) -> bool:
        return self._closing

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            with contextlib.suppress(OSError):
                return self._sock.getpeername()
        return default

    # .................................................... poller side
    def ready(self, events: int) -> None:
        """The socket is readable, writable or in error (from :meth:`Poller.drain`)."""
        if events & _WRITE and self._pending:
            self._flush()
        if not events & ~_WRITE or self._closing:
            return
        protocol = self._protocol
        try:
            buf = protocol.get_buffer(-1)
            nbytes = self._sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        if nbytes:
            protocol.buffer_updated(nbytes)
            return
        # EOF: the protocol may keep the transport (half-close) or not, as in asyncio.
        keep = protocol.eof_received()
        if not keep:
            self.close()
        else:
            self._poller.modify(self, _WRITE if self._pending else 0)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        self._pending = self._pending[sent:]
        if not self._pending:
            self._poller.modify(self, _READ)

    def _fail(self, exc: OSError) -> None:
        if not self._closing:
            self._closing = True
            self._shut(exc)

    def _shut(self, exc: Exception | None) -> None:
        self._poller.unregister(self)
        self._sock.close()
        # As asyncio does: the protocol learns of the loss from the loop, not re-entrantly.
        self._poller.loop.call_soon(self._protocol.connection_lost, exc)


async def connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to ``host:port`` (every address tried in
    order, as ``loop.create_connection`` does), with ``TCP_NODELAY``.

    Raises:
        OSError: no address could be connected (the last error).
    """
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert last is not None
    raise last
