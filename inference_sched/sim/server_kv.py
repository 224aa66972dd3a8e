"""The sim-server's KV-event publisher: vLLM's ``ZmqEventPublisher`` on one engine.

Messages are vLLM's three frames ``[topic, 8-byte big-endian sequence number, msgpack
batch]`` (``vllm``: ``vllm/distributed/kv_events.py``), the batch written by
:func:`~inference_sched.prefix.precise.wire.encode_batch`, so our
:class:`~inference_sched.prefix.precise.subscriber.KVEventSubscriber` (and llm-d's) reads
them unchanged. As in vLLM, an address holding ``*``, ``::``, ``ipc://`` or ``inproc://``
is **bound**, any other is **connected** (a scheduler bound with
``kvEventsConfig.zmqEndpoint``). An optional ROUTER replay socket serves the last
``buffer_steps`` batches again, exactly as vLLM's ``_service_replay`` does, so a
subscriber can repair a gap. ``docs/kv-events.md`` describes the wire and the subscriber;
``docs/sim-server.md`` this server.

Needs ``pyzmq`` and ``msgpack`` (the ``[kvevents]`` extra), imported when a publisher is
built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Literal

from inference_sched.prefix.precise.wire import END_SEQ, encode_batch

__all__ = ["SimKvPublisher", "binds"]

log = logging.getLogger(__name__)

_HWM: Final = 100_000  # vLLM's default PUB high-water mark
_BUFFER_STEPS: Final = 10_000  # vLLM's default replay buffer


def binds(address: str) -> bool:
    """Whether vLLM would bind ``address`` (else it connects)."""
    return "*" in address or "::" in address or address.startswith(("ipc://", "inproc://"))


def _import_zmq() -> Any:
    try:
        import zmq
        import zmq.asyncio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sim-server KV events need the [kvevents] extra: "
            "pip install 'inference-sched[kvevents]'"
        ) from exc
    return zmq


class SimKvPublisher:
    """A PUB socket (plus an optional ROUTER replay socket) for one simulated engine.

    Built on the event loop that will call :meth:`publish`; :meth:`start` begins serving
    replays, :meth:`aclose` closes every socket.

    Args:
        address: where to publish, vLLM's ``endpoint`` (``tcp://127.0.0.1:*`` binds a
            free port: see :attr:`address`).
        topic: every message's topic, llm-d's ``kv@<host:port>@<model>``.
        bind: bind (True) or connect (False) ``address``; None: vLLM's rule
            (:func:`binds`).
        replay_address: vLLM's ``replay_endpoint`` (always bound), or None.
        buffer_steps: batches kept for replay.
        encoding: vLLM's batch shape (``array``: up to v0.25, ``mixed``, ``map``).
    """

    def __init__(
        self,
        address: str,
        topic: str,
        *,
        bind: bool | None = None,
        replay_address: str | None = None,
        buffer_steps: int = _BUFFER_STEPS,
        encoding: Literal["array", "map", "mixed"] = "array",
    ) -> None:
        zmq = _import_zmq()
        self._zmq = zmq
        self.topic = topic.encode()
        self.encoding: Literal["array", "map", "mixed"] = encoding
        self.sent = 0
        """Batches published."""
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, buffer_steps))
        # A plain context for the PUB socket (sends never block, so an asyncio socket
        # would only add futures) and an asyncio one for the ROUTER the replay task awaits.
        self._ctx = zmq.Context()
        self._actx = zmq.asyncio.Context()
        self._pub: Any = None
        self._replay: Any = None
        self._task: asyncio.Task[None] | None = None
        try:
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.setsockopt(zmq.SNDHWM, _HWM)
            if binds(address) if bind is None else bind:
                self._pub.bind(address)
                self.address: str = self._pub.getsockopt(zmq.LAST_ENDPOINT).decode()
                """The address subscribers dial (the bound port resolved), or the one
                connected to."""
            else:
                self._pub.connect(address)
                self.address = address
            self.replay_address: str | None = None
            """The replay socket's bound address, or None."""
            if replay_address is not None:
                self._replay = self._actx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_address)
                self.replay_address = self._replay.getsockopt(zmq.LAST_ENDPOINT).decode()
        except BaseException:
            self._close_sockets()
            raise

    def start(self) -> None:
        """Serve replay requests on the running loop (no-op without a replay socket)."""
        if self._replay is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: Sequence[object], ts: float) -> int:
        """Send ``events`` as one batch (never blocks: above the high-water mark ZeroMQ
        drops it, as vLLM's does, and subscribers see a gap); returns its sequence
        number."""
        seq = self._seq
        self._seq += 1
        payload = encode_batch(list(events), ts=ts, encoding=self.encoding)
        self._buffer.append((seq, payload))
        frames = [self.topic, seq.to_bytes(8, "big"), payload]
        with contextlib.suppress(self._zmq.Again):
            self._pub.send_multipart(frames, flags=self._zmq.NOBLOCK)
        self.sent += 1
        return seq

    async def _serve_replay(self) -> None:
        # vLLM ZmqEventPublisher._service_replay: [client, b"", start] in, every buffered
        # batch with seq >= start out, then END_SEQ.
        sock = self._replay
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("sim-server: malformed KV replay request (%d frames)", len(frames))
                continue
            client, start = frames[0], int.from_bytes(frames[2], "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await sock.send_multipart([client, b"", seq.to_bytes(8, "big"), payload])
            await sock.send_multipart([client, b"", END_SEQ, b""])

    async def aclose(self) -> None:
        """Stop the replay task and close the sockets (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._pub, self._replay):
            if sock is not None:
                sock.close(linger=0)
        self._pub = self._replay = None
        self._ctx.destroy(linger=0)
        self._actx.destroy(linger=0)
