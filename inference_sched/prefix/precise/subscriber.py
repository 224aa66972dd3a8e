"""Receive vLLM KV-cache events over ZeroMQ, in order, with gaps detected and repaired.

vLLM's ``ZmqEventPublisher`` sends each batch as three frames: the topic, an 8-byte
big-endian sequence number and the msgpack payload (``vllm``:
``vllm/distributed/kv_events.py``). PUB/SUB is best effort: a slow subscriber, a reconnect
or a publisher restart loses messages without a word, and a lost ``BlockRemoved`` leaves the
index pointing at blocks the engine no longer has. llm-d parses the sequence number
but ignores it; here it drives the stream's state:

* :class:`SequenceTracker` (defined with the codec in
  :mod:`~inference_sched.prefix.precise.wire`) classifies every message of an endpoint:
  the next one (OK), a repeat (DUPLICATE), an older one (STALE, dropped), a jump (GAP)
  or a restart of the publisher (RESTART, rule below);
* on a GAP the subscriber asks the publisher's replay socket (when one is configured) for
  the missing batches and delivers them before the new one; only when the replay cannot
  cover the hole (it fails, times out or falls short) does it *invalidate* the endpoint:
  the consumer must forget everything it learned from that endpoint, then continue with
  the batches that follow;
* a RESTART invalidates (a new engine starts with an empty cache) and replays the new
  publisher's batches the subscriber missed, if any.

Replays never block the receive loop: the request goes out on its own DEALER socket,
polled with the others until its answer ends or its deadline (``replay_timeout_s``)
passes. Meanwhile the endpoint's newer messages are held, in order (at most
``max_held_messages``; beyond that the replay is given up as failed), and every other
endpoint's messages flow as usual. A dead replay socket therefore costs its own endpoint
one timeout per gap and no one else anything.

State per endpoint is bounded: the endpoints the subscriber knows (dialled ones, those
with a replay address, those declared with :meth:`KVEventSubscriber.set_known_endpoints`)
keep their sequence state for as long as they are known; any other bind-mode topic takes
a slot in an LRU of ``max_unknown_endpoints``. When a topic falls out of it, its state is
dropped and it is invalidated (a gap could no longer be seen), so a flood of topics costs
a bounded amount of memory.

Restart rule. vLLM has no epoch in its stream: a restarted publisher simply counts from 0
again. A sequence number lower than the last one is a restart when it is below
``restart_window`` (64: a new publisher is near its start; the window absorbs the batches
ZeroMQ's slow joiner loses after a reconnect), or when ``max_stale_run`` (8) such
messages arrive in a row (a restart noticed late: a stray old message comes alone, a new
stream keeps coming). Anything else lower is STALE and dropped: over one TCP connection
PUB/SUB never reorders, so it comes from a second publisher on the same topic. A restart
whose new numbers have already passed the old ones cannot be told from a gap.

Malformed payloads are counted and invalidate the endpoint: the batch may have held a
``BlockRemoved``, so what the consumer holds may now be wrong. Malformed frames (not
three, a sequence frame not 8 bytes, a topic that does not parse in bind mode) are
counted and dropped: they carry no sequence we could account for. Every problem of the
payload is a :class:`~inference_sched.errors.DataError` naming the field and the event
index. Nothing raises out of the receive loop; problems are counted in
:class:`SubscriberStats` and logged at most once per interval per kind.

Threading: :meth:`KVEventSubscriber.start` runs the loop in a daemon thread and the
callbacks run **on that thread**, so a consumer should queue the batches and apply them
on its own thread, or apply them in bounded pieces (or make its handler thread-safe).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeAlias

import attrs
import cachetools

from inference_sched.errors import DataError
from inference_sched.prefix.precise.wire import (  # the frames' rules live with the codec
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    SequenceTracker,
    Verdict,
    decode_batch,
    parse_topic,
)

try:
    import zmq
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the KV-event subscriber needs the [kvevents] extra: "
        "pip install 'inference-sched[kvevents]'"
    ) from _exc

__all__ = [
    "DEFAULT_TOPIC_FILTER",
    "END_SEQ",
    "BatchCallback",
    "InvalidateCallback",
    "KVEventSubscriber",
    "SequenceTracker",
    "SubscriberStats",
    "Verdict",
    "parse_topic",
]

log = logging.getLogger(__name__)

DEFAULT_TOPIC_FILTER: Final = "kv@"
"""llm-d's subscription prefix: vLLM must be started with a topic ``kv@<pod>@<model>``."""


LOG_INTERVAL_S: Final = 60.0
"""At most one log line per kind of problem (and per endpoint for invalidations) per
interval; the counters in :class:`SubscriberStats` hold the totals."""

_MAX_BURST: Final = 256  # messages read from one socket before the others get a turn
_LOG_KEYS: Final = 4096  # log-throttling state kept (LRU): keys name endpoints

BatchCallback: TypeAlias = Callable[[str, str, int, EventBatch], None]
"""``on_batch(endpoint, model, seq, batch)``, called in sequence order per endpoint."""
InvalidateCallback: TypeAlias = Callable[[str, str], None]
"""``on_invalidate(endpoint, reason)``: forget everything learned from ``endpoint``."""

_Context: TypeAlias = "zmq.Context[zmq.Socket[bytes]]"
_Socket: TypeAlias = "zmq.Socket[bytes]"


# ====================================================================== stats
@attrs.define
class SubscriberStats:
    """Counters of a :class:`KVEventSubscriber` (cumulative; written by its thread)."""

    messages: int = 0
    """Messages received (any shape)."""
    batches: int = 0
    """Batches delivered to ``on_batch`` (replayed ones included)."""
    events_stored: int = 0
    events_removed: int = 0
    events_cleared: int = 0
    blocks_stored: int = 0
    """Block hashes in delivered ``BlockStored`` events."""
    blocks_removed: int = 0
    unknown_tags: int = 0
    """Events skipped because their type is unknown to this version."""
    decode_errors: int = 0
    """Payloads that raised :class:`~inference_sched.errors.DataError` (live or replayed)."""
    gaps: int = 0
    duplicates: int = 0
    reordered: int = 0
    """STALE messages dropped."""
    restarts: int = 0
    invalidations: int = 0
    replays: int = 0
    """Replay requests sent."""
    replayed_batches: int = 0
    """Batches recovered by replays that covered their hole."""
    replay_failures: int = 0
    """Replays that timed out, failed, or could not cover the hole."""
    held_messages: int = 0
    """Messages held back while their endpoint's replay was pending (delivered after)."""
    evictions: int = 0
    """Unknown endpoints (bind-mode topics) whose state fell out of the LRU."""
    bad_frames: int = 0
    """Messages not made of [topic, 8-byte seq, payload]."""
    bad_topics: int = 0
    """Bind-mode messages whose topic is not ``kv@<pod>@<model>``."""
    callback_errors: int = 0
    """Exceptions raised by ``on_batch`` / ``on_invalidate``."""
    internal_errors: int = 0
    """Bugs caught by the receive loop (should stay 0)."""

    def as_dict(self) -> dict[str, int]:
        """A snapshot of every counter."""
        return attrs.asdict(self)


@attrs.define
class _Dial:
    name: str
    address: str
    model: str
    socket: _Socket | None = None


_Then: TypeAlias = tuple[int, EventBatch]
"""(seq, batch) of the message that revealed a hole: delivered after the replay."""


@attrs.define(eq=False)
class _Replay:
    """A replay in flight: batches ``start .. stop-1`` of ``endpoint`` are asked for, then
    ``then`` (the batch that revealed the hole) is delivered."""

    endpoint: str
    model: str
    start: int
    stop: int
    address: str | None
    socket: _Socket | None
    deadline: float
    invalidated: bool
    then: _Then | None
    pairs: list[tuple[int, bytes]] = attrs.Factory(list)
    received: int = 0
    """Messages read from the replay socket (the end marker included)."""


class _EvictingLRU(cachetools.LRUCache[str, None]):
    """An LRU of names that reports each name it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[str], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, None]:
        key, value = super().popitem()
        self._on_evict(key)
        return key, value


# ====================================================================== subscriber
class KVEventSubscriber:
    """SUB side of vLLM's KV-event stream for a pool of engines.

    Two modes, as in llm-d, usable together:

    * **bind** (``bind="tcp://*:5557"``): one socket, engines connect to it (vLLM
      ``endpoint`` = ``tcp://<scheduler>:5557``); each message's endpoint and model come
      from its topic ``kv@<pod>@<model>``;
    * **dial** (:meth:`add_endpoint`): one socket per engine, connected to the address
      the engine binds (vLLM's default ``tcp://*:5557``); the endpoint is the name given
      there, so the topic may be anything the filter passes (vLLM's default topic is
      ``""``: use ``topic_filter=""``). Every scheduler replica can dial every engine.

    Args:
        on_batch: called with each batch, in sequence order per endpoint.
        on_invalidate: called when an endpoint's state must be forgotten (gap not
            covered, restart, malformed payload, ``on_batch`` raised, endpoint removed).
        bind: address to bind the bind-mode socket to (``tcp://127.0.0.1:*`` picks a
            free port; see :attr:`bound_address`).
        replay_addresses: vLLM ``replay_endpoint`` addresses by endpoint name (bind
            mode; dial mode passes them to :meth:`add_endpoint`).
        topic_filter: subscription prefix (llm-d's ``topicFilter``).
        replay_timeout_s: longest wait for a replay to finish (the endpoint's newer
            messages wait meanwhile; other endpoints' do not).
        restart_window, max_stale_run: the restart rule (:class:`SequenceTracker`).
        known_endpoints: bind-mode endpoints whose state is always kept (see
            :meth:`set_known_endpoints`); dialled endpoints and those with a replay
            address are known too.
        max_unknown_endpoints: other endpoints (bind-mode topics) kept in an LRU; one
            that falls out is forgotten and invalidated.
        max_held_messages: newer messages of an endpoint held while its replay is
            pending; one more gives the replay up as failed.
        poll_interval_ms: longest the thread waits before looking at :meth:`stop` and
            at endpoints added or removed.
        rcvhwm: ZeroMQ receive high-water mark per socket (vLLM's PUB uses 100,000).
        context: a ZeroMQ context to share (default: a private one, closed by
            :meth:`stop`).
    """

    def __init__(
        self,
        on_batch: BatchCallback,
        on_invalidate: InvalidateCallback | None = None,
        *,
        bind: str | None = None,
        replay_addresses: Mapping[str, str] | None = None,
        topic_filter: str = DEFAULT_TOPIC_FILTER,
        replay_timeout_s: float = 1.0,
        restart_window: int = 64,
        max_stale_run: int = 8,
        poll_interval_ms: int = 100,
        rcvhwm: int = 100_000,
        context: _Context | None = None,
        known_endpoints: Iterable[str] = (),
        max_unknown_endpoints: int = 1024,
        max_held_messages: int = 10_000,
    ) -> None:
        if not replay_timeout_s > 0:
            raise ValueError(f"replay_timeout_s must be > 0, got {replay_timeout_s!r}")
        if type(poll_interval_ms) is not int or poll_interval_ms < 1:
            raise ValueError(f"poll_interval_ms must be an int >= 1, got {poll_interval_ms!r}")
        for name, value in (
            ("max_unknown_endpoints", max_unknown_endpoints),
            ("max_held_messages", max_held_messages),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self._on_batch = on_batch
        self._on_invalidate = on_invalidate
        self.topic_filter = topic_filter
        self.replay_timeout_s = float(replay_timeout_s)
        self.poll_interval_ms = poll_interval_ms
        self._rcvhwm = rcvhwm
        self.tracker = SequenceTracker(restart_window=restart_window, max_stale_run=max_stale_run)
        self.stats = SubscriberStats()
        self._own_context = context is None
        self._poller = zmq.Poller()
        self._by_socket: dict[_Socket, _Dial | None] = {}
        self._dials: dict[str, _Dial] = {}
        self._lock = threading.Lock()  # guards _names and _replay_addresses
        self._names: set[str] = set()
        self._replay_addresses: dict[str, str] = dict(replay_addresses or {})
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._log_state: cachetools.LRUCache[str, tuple[float, int]] = cachetools.LRUCache(
            _LOG_KEYS
        )
        self._known: frozenset[str] = frozenset(known_endpoints)
        self.max_unknown_endpoints = max_unknown_endpoints
        self.max_held_messages = max_held_messages
        self._unknown = _EvictingLRU(max_unknown_endpoints, self._evicted)
        # Replays in flight (loop thread only): by endpoint and by socket, and the
        # endpoint's messages that arrived meanwhile (a key iff a replay is in flight).
        self._replays: dict[str, _Replay] = {}
        self._replay_sockets: dict[_Socket, _Replay] = {}
        self._held: dict[str, deque[tuple[str, int, bytes]]] = {}
        self.bound_address: str | None = None
        """The bind-mode socket's actual address (port resolved), None in dial mode."""
        self._ctx: _Context = zmq.Context() if context is None else context
        # Also if dropped unstopped: pyzmq's finalizer may hang in zmq_ctx_term (open socket).
        own = self._ctx if self._own_context else None
        self._release = weakref.finalize(self, _release, own, self._by_socket, self._replay_sockets)
        self._release.atexit = False  # a running thread still uses its sockets at exit
        if bind is not None:
            try:
                socket = self._sub_socket()
                self._register(socket, None)
                socket.bind(bind)
                self.bound_address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
            except BaseException:
                self._release()  # once (idempotent)
                raise

    # ------------------------------------------------------------------ configuration
    def add_endpoint(
        self, name: str, address: str, *, model: str = "", replay_address: str | None = None
    ) -> None:
        """Dial an engine's PUB socket (takes effect at the next poll, from any thread).

        Args:
            name: the endpoint's identity in callbacks (e.g. ``10.0.0.7:8000``; one per
                data-parallel rank, which publishes on port + rank).
            address: the engine's PUB address, ``tcp://host:port``.
            model: reported when the topic does not name one (vLLM's default topic).
            replay_address: the engine's ``replay_endpoint`` (ROUTER), if it has one.

        Raises:
            ValueError: ``name`` is empty or already subscribed.
        """
        if not name:
            raise ValueError("endpoint name must not be empty")
        with self._lock:
            if name in self._names:
                raise ValueError(f"endpoint {name!r} is already subscribed")
            self._names.add(name)
            if replay_address is not None:
                self._replay_addresses[name] = replay_address
        self._commands.put(lambda: self._open_dial(_Dial(name, address, model)))

    def remove_endpoint(self, name: str) -> None:
        """Stop dialling ``name``; its state is invalidated (``reason="endpoint removed"``).

        Raises:
            KeyError: ``name`` was not added.
        """
        with self._lock:
            if name not in self._names:
                raise KeyError(f"endpoint {name!r} is not subscribed")
            self._names.discard(name)
            self._replay_addresses.pop(name, None)
        self._commands.put(lambda: self._close_dial(name))

    def set_replay_address(self, endpoint: str, address: str | None) -> None:
        """Set (or, with None, clear) the replay address used for ``endpoint``'s gaps."""
        with self._lock:
            if address is None:
                self._replay_addresses.pop(endpoint, None)
            else:
                self._replay_addresses[endpoint] = address
        if address is None:
            self._commands.put(lambda: self._demote([endpoint]))

    def set_known_endpoints(self, names: Iterable[str]) -> None:
        """Declare the bind-mode endpoints (topics' ``<pod>``) whose sequence state is kept
        whatever else arrives (from any thread; replaces the previous set). An endpoint
        left out keeps its state in the LRU of unknown ones, like any other topic."""
        known = frozenset(names)
        with self._lock:
            dropped, self._known = self._known - known, known
        if dropped:
            self._commands.put(lambda: self._demote(dropped))

    @property
    def known_endpoints(self) -> frozenset[str]:
        """The endpoints declared with :meth:`set_known_endpoints` (or the constructor)."""
        return self._known

    @property
    def endpoints(self) -> frozenset[str]:
        """Names of the dialled endpoints."""
        with self._lock:
            return frozenset(self._names)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the receive loop in a daemon thread (callbacks run on it).

        Raises:
            RuntimeError: already started, or stopped.
        """
        if self._closed or self._thread is not None:
            raise RuntimeError("a KVEventSubscriber can be started once")
        self._thread = threading.Thread(target=self._run, name="kv-event-subscriber", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._thread = None
            raise

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the loop, close the sockets (and the private context).

        Args:
            timeout_s: longest wait for the thread; default one poll interval plus one
                replay timeout plus a second.

        Returns:
            True when the thread ended (or never ran): sockets closed, a private context
            ended; False if it still runs (a daemon, it closes its own sockets at its end).
        """
        with self._lock:
            stopped, self._closed = self._closed, True
        thread = self._thread
        if stopped:
            return thread is None or not thread.is_alive()
        self._stopping.set()
        if thread is None:
            self._release()  # once (idempotent)
            return True
        if thread is threading.current_thread():
            return True  # called from a callback: the loop ends after this message
        if timeout_s is None:
            timeout_s = self.poll_interval_ms / 1e3 + self.replay_timeout_s + 1.0
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("KV-event subscriber thread did not stop within %.1f s", timeout_s)
            return False
        return True

    def __enter__(self) -> KVEventSubscriber:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def poll_once(self, timeout_ms: int = 0) -> int:
        """Apply pending endpoint changes, then receive what arrives within ``timeout_ms``
        (the caller's thread runs the callbacks). For tests and for embedding the
        subscriber in an existing loop instead of :meth:`start`.

        Returns:
            The number of messages handled (replay answers included).

        Raises:
            RuntimeError: the subscriber's thread is running, or it was stopped.
        """
        if self._thread is not None or self._closed:
            raise RuntimeError("poll_once() is for a subscriber that was not started")
        return self._poll(timeout_ms)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._poll(self.poll_interval_ms)
        except zmq.ContextTerminated:
            pass  # someone else closed a shared context: nothing left to receive from
        finally:
            self._release()  # once (idempotent)

    # ------------------------------------------------------------------ sockets
    def _sub_socket(self) -> _Socket:
        socket = self._ctx.socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, self._rcvhwm)
            socket.setsockopt_string(zmq.SUBSCRIBE, self.topic_filter)
        except BaseException:
            socket.close(linger=0)
            raise
        return socket

    def _register(self, socket: _Socket, dial: _Dial | None) -> None:
        self._poller.register(socket, zmq.POLLIN)
        self._by_socket[socket] = dial

    def _open_dial(self, dial: _Dial) -> None:
        socket = self._sub_socket()
        try:
            socket.connect(dial.address)
        except BaseException as exc:
            socket.close(linger=0)
            if not isinstance(exc, zmq.ZMQError):
                raise
            self.stats.internal_errors += 1
            self._warn("connect", "cannot dial %s at %s: %s", dial.name, dial.address, exc)
            return
        dial.socket = socket
        self._dials[dial.name] = dial
        self._register(socket, dial)

    def _close_dial(self, name: str) -> None:
        dial = self._dials.pop(name, None)
        if dial is not None and dial.socket is not None:
            self._poller.unregister(dial.socket)
            del self._by_socket[dial.socket]
            dial.socket.close(linger=0)
        self._forget(name)
        self._invalidate(name, "endpoint removed")

    # ------------------------------------------------------------------ known endpoints
    def _is_known(self, endpoint: str) -> bool:
        # Set and dict membership are atomic: no lock needed for these reads.
        return (
            endpoint in self._known or endpoint in self._names or endpoint in self._replay_addresses
        )

    def _touch(self, endpoint: str) -> None:
        """Mark an unknown endpoint as just used (may evict the least recent one)."""
        if not self._is_known(endpoint):
            self._unknown[endpoint] = None

    def _evicted(self, endpoint: str) -> None:
        """LRU callback: forget an unknown endpoint's state, and have it invalidated."""
        if self._is_known(endpoint):
            return  # became known since: its state stays
        self.stats.evictions += 1
        had_state = self.tracker.last(endpoint) is not None or endpoint in self._replays
        self._forget(endpoint)
        if had_state:
            self._invalidate(
                endpoint,
                f"sequence state evicted (more than {self.max_unknown_endpoints} unknown "
                "endpoints)",
                log_key="evicted",  # a flood of topics: one line per interval, not per topic
            )

    def _demote(self, names: Iterable[str]) -> None:
        """Endpoints that stopped being known keep their state in the LRU."""
        for name in names:
            if not self._is_known(name) and (
                name in self._replays or self.tracker.last(name) is not None
            ):
                self._touch(name)

    def _forget(self, endpoint: str) -> None:
        """Drop the endpoint's sequence state, its replay in flight and held messages."""
        replay = self._replays.pop(endpoint, None)
        if replay is not None:
            self._close_replay_socket(replay)
        self._held.pop(endpoint, None)
        self.tracker.forget(endpoint)

    # ------------------------------------------------------------------ receive
    def _poll(self, timeout_ms: int) -> int:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            self._guarded(command)
        if not self._by_socket and not self._replays:
            self._stopping.wait(timeout_ms / 1e3)
            return 0
        if self._replays:  # wake up for the first replay deadline
            first = min(replay.deadline for replay in self._replays.values())
            wait_ms = max(0, math.ceil((first - time.monotonic()) * 1e3))
            timeout_ms = min(timeout_ms, wait_ms)
        handled = 0
        for socket, _ in self._poller.poll(timeout_ms):
            if socket in self._replay_sockets:
                replay = self._replay_sockets[socket]
                before = replay.received
                self._guarded(self._replay_readable, replay)
                handled += replay.received - before
                continue
            if socket not in self._by_socket:
                continue  # closed by an earlier step of this round (a finished replay)
            dial = self._by_socket[socket]
            for _ in range(_MAX_BURST):
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                handled += 1
                self._guarded(self._handle, frames, dial)
        if self._replays:
            now = time.monotonic()
            for replay in [r for r in self._replays.values() if r.deadline <= now]:
                self._guarded(
                    self._finish_replay, replay, f"replay from {replay.address} timed out"
                )
        return handled

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step of the loop: one message must not take the stream down. This is
        the single place that catches everything, counts it and logs it."""
        try:
            step(*args)
        except zmq.ContextTerminated:
            raise
        except Exception as exc:  # noqa: BLE001
            self.stats.internal_errors += 1
            self._warn("internal", "error handling KV events: %r", exc)
            replay = args[0] if args and isinstance(args[0], _Replay) else None
            if replay is not None and self._replays.get(replay.endpoint) is replay:
                # Never leave an endpoint's messages held behind a broken replay.
                self._guarded(self._finish_replay, replay, f"replay failed: {exc!r}")

    def _handle(self, frames: list[bytes], dial: _Dial | None) -> None:
        stats = self.stats
        stats.messages += 1
        if len(frames) != 3 or len(frames[1]) != 8:
            stats.bad_frames += 1
            self._warn(
                "frames",
                "dropped a KV-event message of %d frames %s (expected topic, 8-byte seq, payload)",
                len(frames),
                [len(f) for f in frames[:4]],
            )
            return
        topic_bytes, seq_bytes, payload = frames
        endpoint, model = self._identify(topic_bytes, dial)
        if not endpoint:
            return
        self._touch(endpoint)
        seq = int.from_bytes(seq_bytes, "big")
        held = self._held.get(endpoint)
        if held is not None:  # its replay is in flight: keep the order, others go on
            held.append((model, seq, payload))
            stats.held_messages += 1
            if len(held) > self.max_held_messages:
                replay = self._replays[endpoint]
                self._finish_replay(
                    replay,
                    f"replay from {replay.address} still pending after {len(held)} newer messages",
                )
            return
        self._process(endpoint, model, seq, payload)

    def _process(self, endpoint: str, model: str, seq: int, payload: bytes) -> None:
        """Sequence-check, decode and deliver one message (or start its replay)."""
        stats = self.stats
        last = self.tracker.last(endpoint)
        verdict = self.tracker.check(endpoint, seq)
        if verdict is Verdict.DUPLICATE:
            stats.duplicates += 1
            return
        if verdict is Verdict.STALE:
            stats.reordered += 1
            self._warn("stale", "%s: dropped seq %d, older than %s", endpoint, seq, last)
            return
        if verdict is Verdict.GAP:
            stats.gaps += 1
        elif verdict is Verdict.RESTART:
            stats.restarts += 1
        try:
            batch = decode_batch(payload, source=f"{endpoint} seq {seq}")
        except DataError as exc:
            stats.decode_errors += 1
            self._invalidate(endpoint, f"malformed payload: {exc}")
            return
        if verdict is Verdict.GAP:
            assert last is not None, "a gap needs a previous sequence number"
            self._recover(endpoint, model, last + 1, seq, (seq, batch), invalidated=False)
            return
        if verdict is Verdict.RESTART:
            self._invalidate(endpoint, f"publisher restarted: seq went back from {last} to {seq}")
            if seq > 0:
                self._recover(endpoint, model, 0, seq, (seq, batch), invalidated=True)
                return
        self._deliver(endpoint, model, seq, batch)

    def _identify(self, topic_bytes: bytes, dial: _Dial | None) -> tuple[str, str]:
        """(endpoint, model) of a message; ("", "") when a bind-mode topic is bad."""
        try:
            topic = topic_bytes.decode()
            parsed = parse_topic(topic)
        except (UnicodeDecodeError, DataError) as exc:
            if dial is not None:
                return dial.name, dial.model
            self.stats.bad_topics += 1
            self._warn("topic", "dropped a KV-event message: %s", exc)
            return "", ""
        if dial is not None:
            return dial.name, dial.model or parsed[1]
        return parsed

    # ------------------------------------------------------------------ gaps, replay
    def _recover(
        self, endpoint: str, model: str, start: int, stop: int, then: _Then, *, invalidated: bool
    ) -> None:
        """Ask for batches ``start .. stop-1`` from the replay socket, without waiting:
        :meth:`_finish_replay` delivers them, then ``then`` (seq, batch), then what was
        held meanwhile."""
        with self._lock:
            address = self._replay_addresses.get(endpoint)
        replay = _Replay(endpoint, model, start, stop, address, None, 0.0, invalidated, then)
        if address is None:
            self._complete(replay, "no replay address")
            return
        self.stats.replays += 1
        socket = self._ctx.socket(zmq.DEALER)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(address)
            # vLLM's ROUTER answers [b"", start] with [b"", seq, payload] per buffered
            # batch from start (newer: [b"", topic, seq, payload]) and then END_SEQ. A
            # fresh DEALER per request keeps a late answer to an old one from mixing in.
            socket.send_multipart([b"", start.to_bytes(8, "big")], zmq.NOBLOCK)
        except BaseException as exc:
            socket.close(linger=0)
            if not isinstance(exc, zmq.ZMQError):
                raise
            self._complete(replay, f"replay from {address} failed: {exc}")
            return
        replay.socket, replay.deadline = socket, time.monotonic() + self.replay_timeout_s
        self._replays[endpoint] = replay
        self._replay_sockets[socket] = replay
        self._held[endpoint] = deque()
        self._poller.register(socket, zmq.POLLIN)

    def _replay_readable(self, replay: _Replay) -> None:
        """Read what the replay socket has; finish the replay at its end marker."""
        socket = replay.socket
        assert socket is not None, "only replays in flight are polled"
        for _ in range(_MAX_BURST * 4):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                self._finish_replay(replay, f"replay from {replay.address} failed: {exc}")
                return
            replay.received += 1
            if len(frames) not in (3, 4) or frames[0] != b"" or len(frames[-2]) != 8:
                self._finish_replay(
                    replay, f"replay from {replay.address} sent {len(frames)} unexpected frames"
                )
                return
            seq_bytes, payload = frames[-2], frames[-1]
            if seq_bytes == END_SEQ:
                self._finish_replay(replay, "")
                return
            seq = int.from_bytes(seq_bytes, "big")
            if replay.start <= seq < replay.stop:
                replay.pairs.append((seq, payload))

    def _close_replay_socket(self, replay: _Replay) -> None:
        socket = replay.socket
        if socket is not None and self._replay_sockets.pop(socket, None) is not None:
            self._poller.unregister(socket)
            socket.close(linger=0)

    def _finish_replay(self, replay: _Replay, problem: str) -> None:
        """Deliver what the replay brought (or invalidate), then the endpoint's held
        messages, in order."""
        endpoint = replay.endpoint
        if self._replays.get(endpoint) is not replay:
            return  # already finished or forgotten
        del self._replays[endpoint]
        self._close_replay_socket(replay)
        held = self._held.pop(endpoint, deque())
        self._complete(replay, problem)
        while held:
            model, seq, payload = held.popleft()
            self._guarded(self._process, endpoint, model, seq, payload)
            pending = self._held.get(endpoint)
            if pending is not None:  # that message started a new replay: wait again
                pending.extend(held)
                return

    def _complete(self, replay: _Replay, problem: str) -> None:
        """Deliver the replayed batches that end right before ``stop`` without a hole,
        invalidating first unless they cover ``start`` (or it was done already); then
        ``then``. ``problem`` is empty when the replay's end marker came."""
        endpoint, model, start, stop = replay.endpoint, replay.model, replay.start, replay.stop
        run = _contiguous_tail(replay.pairs, start, stop)
        covered = bool(run) and run[0][0] == start
        if covered:
            self.stats.replayed_batches += len(run)
            self._warn(
                "replayed",
                "%s: recovered seq %d..%d from the replay socket",
                endpoint,
                start,
                stop - 1,
                level=logging.INFO,
            )
        else:
            if replay.address is not None:
                self.stats.replay_failures += 1
                if not problem:
                    first = run[0][0] if run else stop
                    problem = f"replay covered {first}..{stop - 1} only"
            if not replay.invalidated:
                self._invalidate(endpoint, f"missed seq {start}..{stop - 1} ({problem})")
        for seq, payload in run:
            try:
                batch = decode_batch(payload, source=f"{endpoint} seq {seq}")
            except DataError as exc:
                self.stats.decode_errors += 1
                self._invalidate(endpoint, f"malformed replayed payload: {exc}")
                continue
            self._deliver(endpoint, model, seq, batch)
        if replay.then is not None:
            self._deliver(endpoint, model, *replay.then)

    # ------------------------------------------------------------------ callbacks
    def _deliver(self, endpoint: str, model: str, seq: int, batch: EventBatch) -> None:
        stats = self.stats
        stats.batches += 1
        for event in batch.events:
            if isinstance(event, BlockStored):
                stats.events_stored += 1
                stats.blocks_stored += len(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                stats.events_removed += 1
                stats.blocks_removed += len(event.block_hashes)
            elif isinstance(event, AllBlocksCleared):
                stats.events_cleared += 1
        if batch.unknown_tags:
            stats.unknown_tags += len(batch.unknown_tags)
            self._warn(
                "unknown",
                "%s: skipped KV events of unknown type %s (newer vLLM?)",
                endpoint,
                sorted(set(batch.unknown_tags)),
            )
        try:
            self._on_batch(endpoint, model, seq, batch)
        # The consumer's bug must not stop the stream; what it applied may be partial,
        # so its state for the endpoint is invalidated.
        except Exception as exc:  # noqa: BLE001
            stats.callback_errors += 1
            self._warn("on_batch", "on_batch raised for %s seq %d: %r", endpoint, seq, exc)
            self._invalidate(endpoint, f"on_batch raised at seq {seq}: {exc!r}")

    def _invalidate(self, endpoint: str, reason: str, *, log_key: str = "") -> None:
        self.stats.invalidations += 1
        key = log_key or f"invalidate:{endpoint}"
        self._warn(key, "invalidating %s: %s", endpoint, reason)
        if self._on_invalidate is None:
            return
        try:
            self._on_invalidate(endpoint, reason)
        except Exception as exc:  # noqa: BLE001  (same reason as in _deliver)
            self.stats.callback_errors += 1
            self._warn("on_invalidate", "on_invalidate raised for %s: %r", endpoint, exc)

    def _warn(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        """Log at most once per :data:`LOG_INTERVAL_S` per ``key``, with the count of
        lines held back since the last one."""
        now = time.monotonic()
        last_s, held = self._log_state.get(key, (-LOG_INTERVAL_S, 0))
        if now - last_s < LOG_INTERVAL_S:
            self._log_state[key] = (last_s, held + 1)
            return
        self._log_state[key] = (now, 0)
        suffix = f" (+{held} similar in the last {LOG_INTERVAL_S:.0f} s)" if held else ""
        log.log(level, message + suffix, *args)


def _release(ctx: _Context | None, *sockets: dict[_Socket, Any]) -> None:
    """Close the sockets (linger 0), then end ``ctx`` (destroy(): any socket missed too)."""
    try:
        for socket in [s for by_socket in sockets for s in by_socket]:
            socket.close(linger=0)
    finally:
        if ctx is not None:
            ctx.destroy(linger=0)


def _contiguous_tail(
    pairs: list[tuple[int, bytes]], start: int, stop: int
) -> list[tuple[int, bytes]]:
    """The replayed batches ``k .. stop-1`` for the smallest ``k >= start`` such that none
    is missing: what can be applied right before batch ``stop``."""
    by_seq = dict(pairs)
    run: list[tuple[int, bytes]] = []
    seq = stop - 1
    while seq >= start and seq in by_seq:
        run.append((seq, by_seq[seq]))
        seq -= 1
    run.reverse()
    return run
