"""Simulated servers publishing their KV events the way vLLM does, over real ZMQ sockets.

``simulate(..., kv_events=publisher.sink)`` sends every event of every server as vLLM's
``ZmqEventPublisher`` would: one PUB socket per server, multipart ``[topic, 8-byte
big-endian sequence number, msgpack batch]`` with llm-d's topic ``kv@<ip:port>@<model>``.
For tests and demos of the socket path (the simulator feeds its own schedulers in process,
which is faster and deterministic). Needs the ``[kvevents]`` extra.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Literal

from inference_sched.framework.types import Endpoint
from inference_sched.prefix.precise.wire import encode_batch

__all__ = ["ZmqKvPublisher"]


class ZmqKvPublisher:
    """One PUB socket per simulated server.

    Args:
        endpoints: server name -> the endpoint it is in the scheduler's table (its
            ``ip:port`` goes in the topic).
        model: the served model (the topic's last part).
        connect: connect every socket to this address (a scheduler bound with
            ``kvEventsConfig.zmqEndpoint``); without it each socket binds a free port on
            ``bind_host`` (:attr:`addresses`), as engines do for dialling schedulers.
        encoding: vLLM's batch encoding: ``array`` (``array_like``, up to v0.25),
            ``mixed`` (v0.26-0.28) or ``map``.
    """

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        model: str,
        *,
        connect: str | None = None,
        bind_host: str = "127.0.0.1",
        encoding: Literal["array", "map", "mixed"] = "array",
    ) -> None:
        import zmq

        self._zmq = zmq
        self._sockets: dict[str, Any] = {}
        self._topics: dict[str, bytes] = {}
        self._seq: dict[str, int] = {}
        self.addresses: dict[str, str] = {}
        """Server name -> the address its socket bound (bind mode)."""
        self.encoding: Literal["array", "map", "mixed"] = encoding
        self.sent = 0
        """Messages sent."""
        self._context = zmq.Context()
        # Closes the sockets, then the context, once: by close() or, for a publisher
        # dropped open, when it is collected (never pyzmq's own finalizer, which can
        # block for ever in zmq_ctx_term while a socket is not closed yet).
        self._close = weakref.finalize(self, _close, self._context, self._sockets)
        try:
            for server, endpoint in endpoints.items():
                sock = self._context.socket(zmq.PUB)
                self._sockets[server] = sock
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 100_000)  # vLLM's default high-water mark
                if connect is not None:
                    sock.connect(connect)
                    self.addresses[server] = connect
                else:
                    port = sock.bind_to_random_port(f"tcp://{bind_host}")
                    self.addresses[server] = f"tcp://{bind_host}:{port}"
                self._topics[server] = f"kv@{endpoint.hostport}@{model}".encode()
                self._seq[server] = 0
        except BaseException:
            self.close()
            raise

    def sink(self, server: str, event: object, *_: object) -> None:
        """Publish one event of ``server`` as its own batch (``simulate``'s sink)."""
        self.publish(server, [event])

    def publish(self, server: str, events: list[object], ts: float = 0.0) -> int:
        """Send ``events`` as one batch; returns its sequence number."""
        seq = self._seq[server]
        self._seq[server] = seq + 1
        payload = encode_batch(events, ts=ts, encoding=self.encoding)
        self._sockets[server].send_multipart(
            [self._topics[server], seq.to_bytes(8, "big"), payload]
        )
        self.sent += 1
        return seq

    def close(self) -> None:
        """Close every socket (linger 0) and terminate the context (idempotent)."""
        self._close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the context is terminated)."""
        return not self._close.alive

    def __enter__(self) -> ZmqKvPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(context: Any, sockets: dict[str, Any]) -> None:
    """Close ``sockets`` (linger 0), then terminate ``context``, even if a close raises."""
    try:
        for sock in sockets.values():
            sock.close(linger=0)
    finally:
        sockets.clear()
        context.destroy(linger=0)  # also closes any socket a failed __init__ left behind
