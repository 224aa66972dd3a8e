"""The KV-event subscriber against real ZeroMQ sockets on loopback: a fake vLLM publisher
(PUB plus the ROUTER replay socket, served as ``ZmqEventPublisher`` does) in bind and dial
modes, gaps, duplicates, malformed messages, replays and a publisher restart.

Every wait is bounded by a deadline and asserts on outcomes, never on timing: ZeroMQ's
slow joiner drops messages until the subscription reaches the publisher, so each stream
is primed by repeating seq 0 until it arrives (the repeats count as duplicates).
"""

from __future__ import annotations

import contextlib
import queue
import socket as socket_module
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
pytest.importorskip("msgpack")

from inference_sched.prefix.precise.subscriber import (  # noqa: E402
    END_SEQ,
    KVEventSubscriber,
)
from inference_sched.prefix.precise.wire import (  # noqa: E402
    BlockRemoved,
    BlockStored,
    EventBatch,
    encode_batch,
)

DEADLINE_S = 3.0
LOOPBACK = "tcp://127.0.0.1"
POD, MODEL = "10.0.0.7:8000", "meta-llama/Llama-3.1-8B"
TOPIC = f"kv@{POD}@{MODEL}".encode()


def payload(seq: int, base: int = 1000) -> bytes:
    """A batch whose content names its sequence number (hash ``base + seq``)."""
    stored = BlockStored(
        np.array([base + seq], np.uint64), None, np.arange(16, dtype=np.uint32), 16, None, "GPU"
    )
    return encode_batch([stored], ts=float(seq), encoding="mixed", data_parallel_rank=0)


def hash_of(batch: EventBatch) -> int:
    event = batch.events[0]
    assert isinstance(event, BlockStored | BlockRemoved)
    return int(event.block_hashes[0])


class FakeVllm:
    """vLLM's ``ZmqEventPublisher`` reduced to its wire behaviour: a PUB socket, a replay
    buffer of the last ``buffer_steps`` (seq, payload) pairs and a ROUTER answering
    ``[start seq]`` with ``(seq, payload)`` pairs and ``END_SEQ``, from its own thread."""

    def __init__(
        self,
        ctx: Any,
        *,
        connect: str | None = None,
        bind_port: int | None = None,
        replay_port: int | None = None,
        with_replay: bool = False,
        topic_frame: bool = False,
        buffer_steps: int = 1000,
        topic: bytes = TOPIC,
    ) -> None:
        self.topic = topic
        self.topic_frame = topic_frame
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.replay_address: str | None = None
        self.thread: threading.Thread | None = None
        self.router: Any = None
        self.pub = ctx.socket(zmq.PUB)
        try:
            self.pub.setsockopt(zmq.LINGER, 0)
            if connect is not None:
                self.pub.connect(connect)
                self.address = connect
            else:
                port = _bind(self.pub, bind_port)
                self.address = f"{LOOPBACK}:{port}"
            if with_replay or replay_port is not None:
                self.router = ctx.socket(zmq.ROUTER)
                self.router.setsockopt(zmq.LINGER, 0)
                self.replay_address = f"{LOOPBACK}:{_bind(self.router, replay_port)}"
                self.thread = threading.Thread(target=self._serve, daemon=True)
                self.thread.start()
        except BaseException:
            self.close()
            raise

    @property
    def replay_port(self) -> int:
        assert self.replay_address is not None
        return int(self.replay_address.rsplit(":", 1)[1])

    def send(self, seq: int, data: bytes | None = None, *, publish: bool = True) -> None:
        """Buffer batch ``seq``; publish it unless ``publish=False`` (a lost message)."""
        data = payload(seq) if data is None else data
        if publish:
            self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), data])
        with self.lock:
            self.buffer.append((seq, data))

    def _serve(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.router.poll(20):
                    continue
                client, _, start = self.router.recv_multipart()
                start_seq = int.from_bytes(start, "big")
                with self.lock:
                    pairs = [(seq, data) for seq, data in self.buffer if seq >= start_seq]
                head = [client, b""] + ([self.topic] if self.topic_frame else [])
                for seq, data in pairs:
                    self.router.send_multipart([*head, seq.to_bytes(8, "big"), data])
                end_head = [client, b""] + ([b""] if self.topic_frame else [])
                self.router.send_multipart([*end_head, END_SEQ, b""])
        except zmq.ContextTerminated:
            pass
        finally:
            self.router.close(linger=0)  # by the thread that uses it (not thread-safe)

    def close(self) -> None:
        """Idempotent; the replay thread closes its ROUTER itself."""
        self.stop.set()
        try:
            if self.thread is not None:
                self.thread.join(DEADLINE_S)
                assert not self.thread.is_alive(), "the fake replay server did not stop"
            elif self.router is not None:
                self.router.close(linger=0)  # its thread never started
        finally:
            self.pub.close(linger=0)


def _bind(socket: Any, port: int | None) -> int:
    """Bind to ``port`` (retrying while a just-closed socket still holds it) or a free one."""
    if port is None:
        bound: int = socket.bind_to_random_port(LOOPBACK)
        return bound
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            socket.bind(f"{LOOPBACK}:{port}")
            return port
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _Closing:
    """A bare socket in the ``publishers`` list, closed at teardown like the publishers."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket

    def close(self) -> None:
        self.socket.close(linger=0)


class Recorder:
    """The callbacks: every batch and every invalidation, in order."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, str, int, EventBatch]] = []
        self.invalidations: list[tuple[str, str]] = []
        self.threads: set[str] = set()

    def on_batch(self, endpoint: str, model: str, seq: int, batch: EventBatch) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append((endpoint, model, seq, batch))

    def on_invalidate(self, endpoint: str, reason: str) -> None:
        self.invalidations.append((endpoint, reason))

    def seqs(self, endpoint: str | None = None) -> list[int]:
        return [seq for e, _, seq, _ in self.batches if endpoint is None or e == endpoint]


def _close_all(closers: list[Callable[[], object]]) -> None:
    """Call every closer, even when one raises (the first error is raised after)."""
    with contextlib.ExitStack() as stack:
        for close in closers:
            stack.callback(close)


@pytest.fixture
def ctx() -> Iterator[Any]:
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)  # closes whatever a failed test left open, then terminates


@pytest.fixture
def make_subscriber(ctx: Any) -> Iterator[Callable[..., tuple[KVEventSubscriber, Recorder]]]:
    made: list[KVEventSubscriber] = []

    def make(**kwargs: Any) -> tuple[KVEventSubscriber, Recorder]:
        recorder = Recorder()
        kwargs.setdefault("context", ctx)
        subscriber = KVEventSubscriber(recorder.on_batch, recorder.on_invalidate, **kwargs)
        made.append(subscriber)
        return subscriber, recorder

    try:
        yield make
    finally:
        stopped = [subscriber.stop() for subscriber in made]  # every one, then check
    assert all(stopped), "a subscriber thread did not stop"


@pytest.fixture
def publishers() -> Iterator[list[FakeVllm | _Closing]]:
    made: list[FakeVllm | _Closing] = []
    try:
        yield made
    finally:
        _close_all([publisher.close for publisher in reversed(made)])


def pump(subscriber: KVEventSubscriber, done: Callable[[], bool]) -> None:
    """Poll until ``done()``; fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the subscriber"
        subscriber.poll_once(20)


def prime(publisher: FakeVllm, subscriber: KVEventSubscriber, recorder: Recorder) -> None:
    """Repeat seq 0 until it is delivered (the subscription has reached the publisher)."""
    deadline = time.monotonic() + DEADLINE_S
    while 0 not in recorder.seqs():
        assert time.monotonic() < deadline, "the subscription never reached the publisher"
        publisher.send(0)
        subscriber.poll_once(20)


def drain(subscriber: KVEventSubscriber, seq: int, recorder: Recorder) -> None:
    """Poll until batch ``seq`` is delivered, then take whatever else is queued."""
    pump(subscriber, lambda: seq in recorder.seqs())
    while subscriber.poll_once(20):
        pass


# ====================================================================== modes
def test_bind_mode_identity_from_topic(make_subscriber: Any, ctx: Any, publishers: Any) -> None:
    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
    assert subscriber.bound_address is not None
    publisher = FakeVllm(ctx, connect=subscriber.bound_address)
    publishers.append(publisher)
    prime(publisher, subscriber, recorder)
    for seq in range(1, 5):
        publisher.send(seq)
    drain(subscriber, 4, recorder)
    assert recorder.seqs() == [0, 1, 2, 3, 4]
    assert {(e, m) for e, m, _, _ in recorder.batches} == {(POD, MODEL)}
    assert [hash_of(b) for *_, b in recorder.batches] == [1000, 1001, 1002, 1003, 1004]
    assert recorder.invalidations == []
    stats = subscriber.stats
    assert (stats.batches, stats.events_stored, stats.blocks_stored) == (5, 5, 5)
    assert stats.messages == stats.batches + stats.duplicates


def test_dial_mode_with_vllms_default_topic(
    make_subscriber: Any, ctx: Any, publishers: Any
) -> None:
    # Two engines, each counting from 0 with the empty topic: identity is the socket.
    subscriber, recorder = make_subscriber(topic_filter="")
    engines = [FakeVllm(ctx, topic=b""), FakeVllm(ctx, topic=b"")]
    publishers.extend(engines)
    subscriber.add_endpoint("pod-a", engines[0].address, model="model-a")
    subscriber.add_endpoint("pod-b", engines[1].address, model="model-b")
    assert subscriber.endpoints == {"pod-a", "pod-b"}
    prime(engines[0], subscriber, recorder)
    deadline = time.monotonic() + DEADLINE_S
    while 0 not in recorder.seqs("pod-b"):
        assert time.monotonic() < deadline
        engines[1].send(0, payload(0, base=2000))
        subscriber.poll_once(20)
    engines[0].send(1)
    engines[1].send(1, payload(1, base=2000))
    pump(subscriber, lambda: 1 in recorder.seqs("pod-a") and 1 in recorder.seqs("pod-b"))
    by_endpoint = {
        e: [(m, s, hash_of(b)) for e2, m, s, b in recorder.batches if e2 == e]
        for e in ("pod-a", "pod-b")
    }
    assert by_endpoint == {
        "pod-a": [("model-a", 0, 1000), ("model-a", 1, 1001)],
        "pod-b": [("model-b", 0, 2000), ("model-b", 1, 2001)],
    }
    assert recorder.invalidations == []


# ====================================================================== sequence problems
def test_gap_without_replay_invalidates(make_subscriber: Any, ctx: Any, publishers: Any) -> None:
    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
    publisher = FakeVllm(ctx, connect=subscriber.bound_address)
    publishers.append(publisher)
    prime(publisher, subscriber, recorder)
    publisher.send(1)
    publisher.send(2, publish=False)
    publisher.send(3)
    drain(subscriber, 3, recorder)
    assert recorder.seqs() == [0, 1, 3]
    assert recorder.invalidations == [(POD, "missed seq 2..2 (no replay address)")]
    assert (subscriber.stats.gaps, subscriber.stats.invalidations) == (1, 1)
    assert subscriber.tracker.counts(POD)["gap"] == 1


def test_duplicates_malformed_payloads_and_bad_frames(
    make_subscriber: Any, ctx: Any, publishers: Any
) -> None:
    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
    publisher = FakeVllm(ctx, connect=subscriber.bound_address)
    publishers.append(publisher)
    prime(publisher, subscriber, recorder)
    before = subscriber.stats.as_dict()
    publisher.send(1)
    publisher.send(1)  # duplicate
    publisher.send(2, b"\xc1")  # not msgpack
    publisher.send(3)
    publisher.pub.send_multipart([TOPIC, (4).to_bytes(8, "big")])  # 2 frames
    publisher.pub.send_multipart([TOPIC, (4).to_bytes(8, "big"), payload(4), b"x"])  # 4
    publisher.pub.send_multipart([TOPIC, (4).to_bytes(4, "big"), payload(4)])  # short seq
    publisher.pub.send_multipart([b"kv@no-model", (4).to_bytes(8, "big"), payload(4)])
    publisher.pub.send_multipart([b"kv@\xff@m", (4).to_bytes(8, "big"), payload(4)])
    publisher.send(4)
    drain(subscriber, 4, recorder)
    assert recorder.seqs() == [0, 1, 3, 4]
    assert len(recorder.invalidations) == 1
    endpoint, reason = recorder.invalidations[0]
    assert endpoint == POD
    assert reason.startswith(
        f"malformed payload: {POD} seq 2: payload: expected a msgpack document"
    )
    after = subscriber.stats.as_dict()
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    # Late repeats of the priming seq 0 may still arrive: one more message and duplicate each.
    late = delta["duplicates"] - 1
    assert late >= 0
    assert delta == {
        "messages": 10 + late,
        "batches": 3,
        "events_stored": 3,
        "blocks_stored": 3,
        "duplicates": 1 + late,
        "decode_errors": 1,
        "invalidations": 1,
        "bad_frames": 3,
        "bad_topics": 2,
    }


# ====================================================================== replay
@pytest.mark.parametrize("topic_frame", [False, True], ids=["vllm-3-frames", "vllm-4-frames"])
def test_replay_serves_missed_batches(
    make_subscriber: Any, ctx: Any, publishers: Any, topic_frame: bool
) -> None:
    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
    publisher = FakeVllm(
        ctx, connect=subscriber.bound_address, with_replay=True, topic_frame=topic_frame
    )
    publishers.append(publisher)
    subscriber.set_replay_address(POD, publisher.replay_address)
    prime(publisher, subscriber, recorder)
    publisher.send(1)
    publisher.send(2, publish=False)
    publisher.send(3, publish=False)
    publisher.send(4)
    publisher.send(5)
    drain(subscriber, 5, recorder)
    assert recorder.seqs() == [0, 1, 2, 3, 4, 5]
    assert [hash_of(b) for *_, b in recorder.batches] == [1000, 1001, 1002, 1003, 1004, 1005]
    assert recorder.invalidations == []
    stats = subscriber.stats
    assert (stats.gaps, stats.replays, stats.replayed_batches, stats.replay_failures) == (
        1,
        1,
        2,
        0,
    )


def test_replay_that_cannot_cover_the_gap_invalidates_and_keeps_the_tail(
    make_subscriber: Any, ctx: Any, publishers: Any
) -> None:
    subscriber, recorder = make_subscriber(topic_filter="kv@")
    publisher = FakeVllm(ctx, with_replay=True, buffer_steps=2)
    publishers.append(publisher)
    subscriber.add_endpoint("pod", publisher.address, replay_address=publisher.replay_address)
    prime(publisher, subscriber, recorder)
    publisher.send(1)
    for seq in (2, 3, 4, 5):
        publisher.send(seq, publish=False)  # the buffer keeps only the last two
    publisher.send(6)
    drain(subscriber, 6, recorder)
    assert recorder.seqs() == [0, 1, 5, 6]
    assert recorder.invalidations == [("pod", "missed seq 2..5 (replay covered 5..5 only)")]
    assert (subscriber.stats.replays, subscriber.stats.replay_failures) == (1, 1)


def test_replay_timeout_invalidates(make_subscriber: Any, ctx: Any, publishers: Any) -> None:
    silent = ctx.socket(zmq.ROUTER)  # accepts the request, never answers
    silent_port = silent.bind_to_random_port(LOOPBACK)
    replay_address = f"{LOOPBACK}:{silent_port}"
    publishers.append(_Closing(silent))
    subscriber, recorder = make_subscriber(
        bind=f"{LOOPBACK}:*", replay_addresses={POD: replay_address}, replay_timeout_s=0.2
    )
    publisher = FakeVllm(ctx, connect=subscriber.bound_address)
    publishers.append(publisher)
    prime(publisher, subscriber, recorder)
    publisher.send(1, publish=False)
    publisher.send(2)
    drain(subscriber, 2, recorder)
    assert recorder.seqs() == [0, 2]
    assert recorder.invalidations == [
        (POD, f"missed seq 1..1 (replay from {replay_address} timed out)")
    ]
    assert subscriber.stats.replay_failures == 1


# ====================================================================== restart
@pytest.mark.parametrize("mode", ["bind", "dial"])
def test_publisher_goes_away_and_comes_back(
    make_subscriber: Any, ctx: Any, publishers: Any, mode: str
) -> None:
    if mode == "bind":
        subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
        first = FakeVllm(ctx, connect=subscriber.bound_address, with_replay=True)
        publishers.append(first)
        subscriber.set_replay_address(POD, first.replay_address)
        endpoint = POD
    else:
        subscriber, recorder = make_subscriber()
        first = FakeVllm(ctx, with_replay=True)
        publishers.append(first)
        subscriber.add_endpoint("engine", first.address, replay_address=first.replay_address)
        endpoint = "engine"
    prime(first, subscriber, recorder)
    for seq in range(1, 6):
        first.send(seq)
    drain(subscriber, 5, recorder)
    first.close()
    subscriber.poll_once(20)  # the subscriber keeps running without its publisher

    # The engine restarts on the same addresses and counts from 0 again; its first two
    # batches are lost (slow joiner), the replay socket still has them.
    if mode == "bind":
        second = FakeVllm(ctx, connect=subscriber.bound_address, replay_port=first.replay_port)
    else:
        port = int(first.address.rsplit(":", 1)[1])
        second = FakeVllm(ctx, bind_port=port, replay_port=first.replay_port)
    publishers.append(second)
    second.send(0, payload(0, base=5000), publish=False)
    second.send(1, payload(1, base=5000), publish=False)
    deadline = time.monotonic() + DEADLINE_S
    while not recorder.invalidations:
        assert time.monotonic() < deadline, "the restarted publisher was never heard"
        second.send(2, payload(2, base=5000))  # repeated until it gets through
        subscriber.poll_once(20)
    # The replay runs alongside the receive loop: wait for the restarted stream's seq 2.
    pump(subscriber, lambda: len(recorder.batches) >= 6 + 3)
    while subscriber.poll_once(20):
        pass
    assert recorder.invalidations == [(endpoint, "publisher restarted: seq went back from 5 to 2")]
    restarted = [(s, hash_of(b)) for _, _, s, b in recorder.batches[6:]]
    assert restarted == [(0, 5000), (1, 5001), (2, 5002)]
    stats = subscriber.stats
    assert (stats.restarts, stats.replays, stats.replayed_batches) == (1, 1, 2)


# ====================================================================== thread, callbacks
def test_thread_mode_and_runtime_endpoint_changes(publishers: Any) -> None:
    received: queue.Queue[tuple[str, int, str]] = queue.Queue()
    invalidated: queue.Queue[tuple[str, str]] = queue.Queue()
    context = zmq.Context()
    try:
        publisher = FakeVllm(context)
        publishers.append(publisher)
        with KVEventSubscriber(
            lambda e, m, s, b: received.put((e, s, threading.current_thread().name)),
            lambda e, r: invalidated.put((e, r)),
            poll_interval_ms=20,
        ) as subscriber:
            with pytest.raises(RuntimeError, match="poll_once"):
                subscriber.poll_once()
            subscriber.add_endpoint("pod", publisher.address)  # applied by the thread
            deadline = time.monotonic() + DEADLINE_S
            first = None
            while first is None:
                assert time.monotonic() < deadline
                publisher.send(0)
                with contextlib.suppress(queue.Empty):
                    first = received.get(timeout=0.02)
            assert first == ("pod", 0, "kv-event-subscriber")
            publisher.send(1)
            while (got := received.get(timeout=DEADLINE_S))[1] == 0:
                pass  # repeats of seq 0 in flight are dropped as duplicates
            assert got == ("pod", 1, "kv-event-subscriber")
            subscriber.remove_endpoint("pod")
            assert invalidated.get(timeout=DEADLINE_S) == ("pod", "endpoint removed")
            assert subscriber.endpoints == frozenset()
        assert subscriber.stop() is True  # already stopped by the context manager
    finally:
        context.destroy(linger=0)


def test_callback_errors_do_not_stop_the_stream(ctx: Any, publishers: Any) -> None:
    delivered: list[int] = []
    invalidations: list[tuple[str, str]] = []

    def on_batch(endpoint: str, model: str, seq: int, batch: EventBatch) -> None:
        if seq == 1:
            raise RuntimeError("index full")
        delivered.append(seq)

    def on_invalidate(endpoint: str, reason: str) -> None:
        invalidations.append((endpoint, reason))
        raise RuntimeError("also broken")

    subscriber = KVEventSubscriber(on_batch, on_invalidate, bind=f"{LOOPBACK}:*", context=ctx)
    try:
        publisher = FakeVllm(ctx, connect=subscriber.bound_address)
        publishers.append(publisher)
        deadline = time.monotonic() + DEADLINE_S
        while 0 not in delivered:
            assert time.monotonic() < deadline
            publisher.send(0)
            subscriber.poll_once(20)
        publisher.send(1)
        publisher.send(2)
        pump(subscriber, lambda: 2 in delivered)
        assert invalidations == [(POD, "on_batch raised at seq 1: RuntimeError('index full')")]
        assert subscriber.stats.callback_errors == 2
        assert subscriber.stats.internal_errors == 0
    finally:
        subscriber.stop()


# ====================================================================== configuration
def test_configuration_errors(make_subscriber: Any) -> None:
    subscriber, _ = make_subscriber()
    subscriber.add_endpoint("a", f"{LOOPBACK}:1")
    with pytest.raises(ValueError, match="endpoint 'a' is already subscribed"):
        subscriber.add_endpoint("a", f"{LOOPBACK}:2")
    with pytest.raises(ValueError, match="endpoint name must not be empty"):
        subscriber.add_endpoint("", f"{LOOPBACK}:2")
    with pytest.raises(KeyError, match="endpoint 'b' is not subscribed"):
        subscriber.remove_endpoint("b")
    with pytest.raises(ValueError, match="replay_timeout_s must be > 0"):
        make_subscriber(replay_timeout_s=0)
    with pytest.raises(ValueError, match="poll_interval_ms must be an int >= 1"):
        make_subscriber(poll_interval_ms=0)


def test_stop_without_start_and_lifecycle_errors(make_subscriber: Any) -> None:
    subscriber, _ = make_subscriber(bind=f"{LOOPBACK}:*")
    assert subscriber.poll_once(0) == 0
    assert subscriber.stop() is True
    assert subscriber.stop() is True
    with pytest.raises(RuntimeError, match="poll_once"):
        subscriber.poll_once()
    with pytest.raises(RuntimeError, match="can be started once"):
        subscriber.start()


def test_bind_failure_raises_and_cleans_up(ctx: Any) -> None:
    taken = ctx.socket(zmq.SUB)
    try:
        port = taken.bind_to_random_port(LOOPBACK)
        with pytest.raises(zmq.ZMQError):
            KVEventSubscriber(lambda *a: None, bind=f"{LOOPBACK}:{port}")
    finally:
        taken.close(linger=0)


# ====================================================================== leaks (stress hang)
def _dead_address() -> str:
    """A loopback address nobody listens on: a DEALER connected there queues its request
    and keeps retrying (the case where a default linger blocks zmq_ctx_term for ever)."""
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"{LOOPBACK}:{sock.getsockname()[1]}"


def test_stop_terminates_the_private_context_with_a_replay_pending(
    ctx: Any, publishers: Any
) -> None:
    # Regression: a context left to the garbage collector hung pytest in zmq_ctx_term.
    recorder = Recorder()
    subscriber = KVEventSubscriber(
        recorder.on_batch,
        recorder.on_invalidate,
        bind=f"{LOOPBACK}:*",
        replay_addresses={POD: _dead_address()},
        replay_timeout_s=60.0,  # still pending when stop() comes
        poll_interval_ms=20,
    )
    private = subscriber._ctx  # no context given: the subscriber's own
    try:
        publisher = FakeVllm(ctx, connect=subscriber.bound_address)
        publishers.append(publisher)
        subscriber.start()
        deadline = time.monotonic() + DEADLINE_S
        while 0 not in recorder.seqs():
            assert time.monotonic() < deadline, "the subscription never reached the publisher"
            publisher.send(0)
            time.sleep(0.02)
        publisher.send(1, publish=False)
        publisher.send(2)  # the gap: a DEALER asks the dead replay address
        while subscriber.stats.replays == 0:
            assert time.monotonic() < deadline, "no replay was started"
            time.sleep(0.01)
        open_before_stop = not private.closed
    finally:
        stopped = subscriber.stop()
    assert stopped
    assert open_before_stop
    assert private.closed  # terminated by stop(), not left to a finalizer
    assert subscriber.stop() is True  # idempotent
    assert recorder.seqs() == [0]  # the replay never finished: seq 2 was still held


_EXIT_SCRIPT = """
import gc, time, zmq
from inference_sched.prefix.precise.subscriber import KVEventSubscriber
from inference_sched.prefix.precise.wire import encode_batch

TOPIC, DEAD = {topic!r}, {dead!r}
seen = []
subscriber = KVEventSubscriber(
    lambda e, m, s, b: seen.append(s), bind="tcp://127.0.0.1:*",
    replay_addresses={{{pod!r}: DEAD}}, replay_timeout_s=60.0, poll_interval_ms=20,
)
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.LINGER, 0)
pub.connect(subscriber.bound_address)
subscriber.start()
empty = encode_batch([], ts=0.0)
deadline = time.monotonic() + 10
while 0 not in seen or subscriber.stats.replays == 0:
    assert time.monotonic() < deadline, (seen, subscriber.stats)
    seq = 0 if 0 not in seen else 2  # then a gap: a replay to DEAD, left pending
    pub.send_multipart([TOPIC, seq.to_bytes(8, "big"), empty])
    time.sleep(0.02)
assert subscriber.stop()
pub.close(linger=0)
ctx.term()
subscriber.cycle = subscriber  # leaked: only the collector frees it
idle = KVEventSubscriber(lambda *a: None, bind="tcp://127.0.0.1:*")
idle.cycle = idle  # leaked without stop() (nor start()): its socket is still open
del subscriber, idle
gc.collect()
print("exited cleanly")
"""


def test_a_process_with_leaked_subscribers_exits_promptly() -> None:
    script = _EXIT_SCRIPT.format(topic=TOPIC, dead=_dead_address(), pod=POD)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as exc:  # run() killed it
        raise AssertionError(f"the process hung at exit: {exc.stderr!r}") from None
    assert done.returncode == 0, done.stderr
    assert "exited cleanly" in done.stdout


# ====================================================================== issue 13
class Ordered:
    """Callbacks recording one ordered log of deliveries and invalidations, with a
    condition to wait on (no sleeps)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int | str]] = []
        self.cond = threading.Condition()

    def on_batch(self, endpoint: str, model: str, seq: int, batch: EventBatch) -> None:
        with self.cond:
            self.log.append((endpoint, seq))
            self.cond.notify_all()

    def on_invalidate(self, endpoint: str, reason: str) -> None:
        with self.cond:
            self.log.append((endpoint, f"invalidated: {reason}"))
            self.cond.notify_all()

    def wait(self, done: Callable[[list[tuple[str, int | str]]], bool], timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: done(self.log), timeout_s)

    def of(self, endpoint: str) -> list[int | str]:
        with self.cond:
            return [what for e, what in self.log if e == endpoint]


def test_a_dead_replay_socket_does_not_hold_up_other_engines(ctx: Any, publishers: Any) -> None:
    replay_timeout_s = 6.0  # long: B must not wait for it
    silent = ctx.socket(zmq.ROUTER)  # engine A's replay socket: takes requests, never answers
    silent_address = f"{LOOPBACK}:{silent.bind_to_random_port(LOOPBACK)}"
    publishers.append(_Closing(silent))
    engine_a, engine_b = FakeVllm(ctx), FakeVllm(ctx)
    publishers.extend([engine_a, engine_b])
    calls = Ordered()
    subscriber = KVEventSubscriber(
        calls.on_batch,
        calls.on_invalidate,
        replay_timeout_s=replay_timeout_s,
        poll_interval_ms=20,
        context=ctx,
    )
    with subscriber:  # the receive loop in its own thread, as in production
        subscriber.add_endpoint("a", engine_a.address, replay_address=silent_address)
        subscriber.add_endpoint("b", engine_b.address)
        deadline = time.monotonic() + DEADLINE_S
        while not calls.wait(lambda log: ("a", 0) in log and ("b", 0) in log, 0.02):
            assert time.monotonic() < deadline, "the subscriptions never reached the engines"
            engine_a.send(0)
            engine_b.send(0)
        # A loses seq 1: seq 2 reveals the gap and the subscriber asks A's replay socket.
        engine_a.send(1, publish=False)
        engine_a.send(2)
        assert silent.poll(int(DEADLINE_S * 1e3)), "no replay request reached engine A"
        request = silent.recv_multipart()
        assert request[1:] == [b"", (1).to_bytes(8, "big")]
        engine_a.send(3)  # A's next batch must wait behind its replay, in order
        for seq in range(1, 6):
            engine_b.send(seq)
        # Generous bound: before the fix B's batches came only after A's replay timed out.
        assert calls.wait(lambda log: ("b", 5) in log, replay_timeout_s + DEADLINE_S)
        with calls.cond:
            at_b5 = calls.log[: calls.log.index(("b", 5)) + 1]
        # B's five batches were delivered while A's replay was still pending: nothing of
        # A after seq 0 (no timeout, no invalidation, no seq 2) came before them.
        assert [what for e, what in at_b5 if e == "a"] == [0]
        assert [what for e, what in at_b5 if e == "b"] == [0, 1, 2, 3, 4, 5]
        # Then A's replay times out: the gap is unrecoverable, A is invalidated, and its
        # held batches follow in order.
        assert calls.wait(lambda log: ("a", 3) in log, replay_timeout_s + DEADLINE_S)
        assert calls.of("a") == [
            0,
            f"invalidated: missed seq 1..1 (replay from {silent_address} timed out)",
            2,
            3,
        ]
        stats = subscriber.stats
        assert (stats.gaps, stats.replays, stats.replay_failures) == (1, 1, 1)
        assert stats.internal_errors == 0
    assert subscriber.stop()


def _flood_topics(subscriber: KVEventSubscriber, ctx: Any, publishers: Any, n: int) -> list[str]:
    """Publish seq 0 on ``n`` distinct topics (after the primed POD stream); returns the
    pods, once every message was received."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)  # keep every message: the subscriber must see them all
    assert subscriber.bound_address is not None
    pub.connect(subscriber.bound_address)
    publishers.append(_Closing(pub))
    deadline = time.monotonic() + DEADLINE_S
    seen = subscriber.stats.messages
    while subscriber.stats.messages == seen:  # slow joiner: the connection is up once one arrives
        assert time.monotonic() < deadline
        pub.send_multipart([b"kv@probe:1@m", (0).to_bytes(8, "big"), encode_batch([], ts=0.0)])
        subscriber.poll_once(20)
    empty = encode_batch([], ts=0.0)
    pods = [f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}:8000" for i in range(n)]  # not POD
    target = subscriber.stats.messages + n
    for pod in pods:
        pub.send_multipart([f"kv@{pod}@m".encode(), (0).to_bytes(8, "big"), empty])
    deadline = time.monotonic() + 60.0
    while subscriber.stats.messages < target:
        assert time.monotonic() < deadline, "the flood did not arrive"
        subscriber.poll_once(20)
    return pods


def test_bind_mode_keeps_sequence_state_for_a_bounded_set_of_topics(
    make_subscriber: Any, ctx: Any, publishers: Any
) -> None:
    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
    pods = _flood_topics(subscriber, ctx, publishers, 20_000)
    tracked = sum(subscriber.tracker.last(pod) is not None for pod in pods)
    assert tracked <= 1024  # the default LRU of unknown topics
    assert len(subscriber.tracker) <= 1024
    # What was evicted was invalidated (its next message starts a fresh stream).
    evicted = subscriber.stats.evictions
    assert evicted == 20_000 + 1 - 1024  # the flood and the probe topic
    reasons = [r for _, r in recorder.invalidations]
    assert len(reasons) == evicted
    assert reasons[0] == "sequence state evicted (more than 1024 unknown endpoints)"
    assert subscriber.stats.internal_errors == 0


def test_known_endpoints_keep_their_sequence_state_through_a_flood(
    make_subscriber: Any, ctx: Any, publishers: Any
) -> None:
    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*", max_unknown_endpoints=16)
    subscriber.set_known_endpoints([POD])
    publisher = FakeVllm(ctx, connect=subscriber.bound_address)
    publishers.append(publisher)
    prime(publisher, subscriber, recorder)
    pods = _flood_topics(subscriber, ctx, publishers, 2_000)
    assert sum(subscriber.tracker.last(pod) is not None for pod in pods) <= 16
    assert len(subscriber.tracker) <= 16 + 1
    assert subscriber.tracker.last(POD) == 0  # kept: a gap of POD is still detected
    publisher.send(1, publish=False)
    publisher.send(2)
    drain(subscriber, 2, recorder)
    assert (POD, "missed seq 1..1 (no replay address)") in recorder.invalidations
    assert not [r for e, r in recorder.invalidations if e == POD and "evicted" in r]


def test_payloads_no_index_could_take_are_counted_data_errors(
    make_subscriber: Any, ctx: Any, publishers: Any
) -> None:
    import msgpack

    subscriber, recorder = make_subscriber(bind=f"{LOOPBACK}:*")
    publisher = FakeVllm(ctx, connect=subscriber.bound_address)
    publishers.append(publisher)
    prime(publisher, subscriber, recorder)
    ok = ["BlockStored", [1], None, [], 16]
    huge = ["BlockStored", [1], None, [], 2**31]
    with_map = ["BlockStored", [1], None, [], 16, None, None, None, [["mm", {"a": 1}]]]
    publisher.send(1, msgpack.packb([1.0, [ok, huge]]))
    publisher.send(2, msgpack.packb([1.0, [ok, ok, with_map]]))
    publisher.send(3)
    drain(subscriber, 3, recorder)
    assert recorder.seqs() == [0, 3]
    assert recorder.invalidations == [
        (
            POD,
            f"malformed payload: {POD} seq 1: events[1].block_size: expected int in "
            "[0, 2**31), got 2147483648 (int)",
        ),
        (
            POD,
            f"malformed payload: {POD} seq 2: events[2].extra_keys[0][1]: expected str, "
            "bytes, int, float, bool, nil or an array, got {'a': 1} (dict)",
        ),
    ]
    assert subscriber.stats.decode_errors == 2
    assert subscriber.stats.internal_errors == 0
