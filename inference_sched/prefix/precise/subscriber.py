"""Receive vLLM KV-cache events over ZeroMQ, in order, with gaps detected and repaired.

vLLM's ``ZmqEventPublisher`` sends each batch as three frames: the topic, an 8-byte
big-endian sequence number and the msgpack payload (``specs/peers.md`` B.7). PUB/SUB is
best effort: a slow subscriber, a reconnect or a publisher restart loses messages without
a word, and a lost ``BlockRemoved`` leaves the index pointing at blocks the engine no
longer has (E.5). llm-d parses the sequence number but ignores it (B.4); here it drives
the stream's state:

* :class:`SequenceTracker` classifies every message of an endpoint: the next one (OK), a
  repeat (DUPLICATE), an older one (STALE, dropped), a jump (GAP) or a restart of the
  publisher (RESTART, rule below);
* on a GAP the subscriber asks the publisher's replay socket (when one is configured) for
  the missing batches and delivers them before the new one; only when the replay cannot
  cover the hole does it *invalidate* the endpoint: the consumer must forget everything
  it learned from that endpoint, then continue with the batches that follow;
* a RESTART invalidates (a new engine starts with an empty cache) and replays the new
  publisher's batches the subscriber missed, if any.

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
counted and dropped: they carry no sequence we could account for. Nothing raises out of
the receive loop; problems are counted in :class:`SubscriberStats` and logged at most
once per interval per kind.

Threading: :meth:`KVEventSubscriber.start` runs the loop in a daemon thread and the
callbacks run **on that thread**, so a consumer should queue the batches and apply them
on its own thread (or make its handler thread-safe). A replay blocks the loop for at
most ``replay_timeout_s``; ZeroMQ queues incoming messages meanwhile (up to ``rcvhwm``).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, TypeAlias

import attrs

from inference_sched.errors import DataError
from inference_sched.prefix.precise.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
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

END_SEQ: Final = (-1).to_bytes(8, "big", signed=True)
"""Sequence frame of the replay socket's end-of-replay marker (vLLM ``END_SEQ``)."""

LOG_INTERVAL_S: Final = 60.0
"""At most one log line per kind of problem (and per endpoint for invalidations) per
interval; the counters in :class:`SubscriberStats` hold the totals."""

_MAX_BURST: Final = 256  # messages read from one socket before the others get a turn

BatchCallback: TypeAlias = Callable[[str, str, int, EventBatch], None]
"""``on_batch(endpoint, model, seq, batch)``, called in sequence order per endpoint."""
InvalidateCallback: TypeAlias = Callable[[str, str], None]
"""``on_invalidate(endpoint, reason)``: forget everything learned from ``endpoint``."""

_Context: TypeAlias = "zmq.Context[zmq.Socket[bytes]]"
_Socket: TypeAlias = "zmq.Socket[bytes]"


# ====================================================================== topics
def parse_topic(topic: str, *, source: str = "") -> tuple[str, str]:
    """``kv@<pod>@<model>`` → ``(pod, model)``, llm-d's topic convention.

    llm-d splits on every ``@`` and wants exactly three parts; this splits on the first
    two only, so a model name containing ``@`` (``org/model@rev``) still parses. The
    first part is not checked (the subscription filter already chose it).

    Raises:
        DataError: fewer than three parts, or an empty pod or model.
    """
    parts = topic.split("@", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise DataError(
            f"topic {topic!r}: expected 'kv@<pod>@<model>' (set vLLM's kv-events-config "
            '"topic" to it, e.g. "kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B")',
            source=source,
        )
    return parts[1], parts[2]


# ====================================================================== sequences
class Verdict(enum.Enum):
    """What a sequence number means for its endpoint's stream."""

    OK = "ok"
    """The next number, or the first seen from the endpoint: apply."""
    DUPLICATE = "duplicate"
    """Equal to the last one: drop."""
    STALE = "stale"
    """Lower than the last one and not a restart (reordered / second publisher): drop."""
    GAP = "gap"
    """Higher than last + 1: batches were lost; replay them or invalidate, then apply."""
    RESTART = "restart"
    """The publisher started again (see the module notes): invalidate, then apply."""


class SequenceTracker:
    """Last sequence number per endpoint, and a verdict for each new one.

    Args:
        restart_window: a lower number below this is a restart (0 only: ``1``).
        max_stale_run: this many lower-or-equal numbers in a row make the last a restart.
    """

    def __init__(self, *, restart_window: int = 64, max_stale_run: int = 8) -> None:
        if type(restart_window) is not int or restart_window < 0:
            raise ValueError(f"restart_window must be an int >= 0, got {restart_window!r}")
        if type(max_stale_run) is not int or max_stale_run < 1:
            raise ValueError(f"max_stale_run must be an int >= 1, got {max_stale_run!r}")
        self.restart_window = restart_window
        self.max_stale_run = max_stale_run
        self._last: dict[str, int] = {}
        self._stale_run: dict[str, int] = {}
        self._counts: dict[str, Counter[Verdict]] = {}
        self.totals: Counter[Verdict] = Counter()
        """Verdicts over all endpoints (cumulative, kept across :meth:`reset`)."""

    def last(self, endpoint: str) -> int | None:
        """The last accepted sequence number of ``endpoint`` (None: none yet)."""
        return self._last.get(endpoint)

    def counts(self, endpoint: str) -> Mapping[str, int]:
        """Verdicts of ``endpoint`` so far, by verdict value (``{"ok": 10, "gap": 1}``)."""
        counter = self._counts.get(endpoint, Counter())
        return {verdict.value: counter[verdict] for verdict in Verdict}

    def check(self, endpoint: str, seq: int) -> Verdict:
        """Classify ``seq`` and, unless it is dropped, make it the endpoint's last.

        Args:
            endpoint: the stream's identity.
            seq: the message's sequence number (>= 0).

        Returns:
            The verdict; OK, GAP and RESTART advance the stream, DUPLICATE and STALE don't.
        """
        last = self._last.get(endpoint)
        if last is None or seq == last + 1:
            verdict = Verdict.OK
        elif seq > last:
            verdict = Verdict.GAP
        else:
            run = self._stale_run.get(endpoint, 0) + 1
            if seq < last and (seq < self.restart_window or run >= self.max_stale_run):
                verdict = Verdict.RESTART
            else:
                verdict = Verdict.DUPLICATE if seq == last else Verdict.STALE
                self._stale_run[endpoint] = run
        if verdict is not Verdict.DUPLICATE and verdict is not Verdict.STALE:
            self._last[endpoint] = seq
            self._stale_run.pop(endpoint, None)
        counter = self._counts.get(endpoint)
        if counter is None:
            counter = self._counts[endpoint] = Counter()
        counter[verdict] += 1
        self.totals[verdict] += 1
        return verdict

    def reset(self, endpoint: str) -> None:
        """Forget the endpoint's position: its next number is accepted as a first one."""
        self._last.pop(endpoint, None)
        self._stale_run.pop(endpoint, None)


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
        replay_timeout_s: longest wait for a replay to finish.
        restart_window, max_stale_run: the restart rule (:class:`SequenceTracker`).
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
    ) -> None:
        if not replay_timeout_s > 0:
            raise ValueError(f"replay_timeout_s must be > 0, got {replay_timeout_s!r}")
        if type(poll_interval_ms) is not int or poll_interval_ms < 1:
            raise ValueError(f"poll_interval_ms must be an int >= 1, got {poll_interval_ms!r}")
        self._on_batch = on_batch
        self._on_invalidate = on_invalidate
        self.topic_filter = topic_filter
        self.replay_timeout_s = float(replay_timeout_s)
        self.poll_interval_ms = poll_interval_ms
        self._rcvhwm = rcvhwm
        self.tracker = SequenceTracker(restart_window=restart_window, max_stale_run=max_stale_run)
        self.stats = SubscriberStats()
        self._own_context = context is None
        self._ctx: _Context = zmq.Context() if context is None else context
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
        self._log_state: dict[str, tuple[float, int]] = {}
        self.bound_address: str | None = None
        """The bind-mode socket's actual address (port resolved), None in dial mode."""
        if bind is not None:
            socket = self._sub_socket()
            try:
                socket.bind(bind)
            except zmq.ZMQError:
                socket.close(linger=0)
                self._close_context()
                raise
            self.bound_address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
            self._register(socket, None)

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
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the loop, close the sockets (and the private context).

        Args:
            timeout_s: longest wait for the thread; default one poll interval plus one
                replay timeout plus a second.

        Returns:
            True when the thread ended (or never ran); False if it is still running
            (it is a daemon and closes its sockets when it ends).
        """
        if self._closed:
            return self._thread is None or not self._thread.is_alive()
        self._closed = True
        self._stopping.set()
        if self._thread is None:
            self._close_all()
            return True
        if self._thread is threading.current_thread():
            return True  # called from a callback: the loop ends after this message
        if timeout_s is None:
            timeout_s = self.poll_interval_ms / 1e3 + self.replay_timeout_s + 1.0
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("KV-event subscriber thread did not stop within %.1f s", timeout_s)
            return False
        return True

    def __enter__(self) -> KVEventSubscriber:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def poll_once(self, timeout_ms: int = 0) -> int:
        """Apply pending endpoint changes, then receive what arrives within ``timeout_ms``
        (the caller's thread runs the callbacks). For tests and for embedding the
        subscriber in an existing loop instead of :meth:`start`.

        Returns:
            The number of messages handled.

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
            self._close_all()

    # ------------------------------------------------------------------ sockets
    def _sub_socket(self) -> _Socket:
        socket = self._ctx.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, self._rcvhwm)
        socket.setsockopt_string(zmq.SUBSCRIBE, self.topic_filter)
        return socket

    def _register(self, socket: _Socket, dial: _Dial | None) -> None:
        self._poller.register(socket, zmq.POLLIN)
        self._by_socket[socket] = dial

    def _open_dial(self, dial: _Dial) -> None:
        socket = self._sub_socket()
        try:
            socket.connect(dial.address)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
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
        self.tracker.reset(name)
        self._invalidate(name, "endpoint removed")

    def _close_all(self) -> None:
        for socket in list(self._by_socket):
            self._poller.unregister(socket)
            socket.close(linger=0)
        self._by_socket.clear()
        self._dials.clear()
        self._close_context()

    def _close_context(self) -> None:
        if self._own_context:
            self._ctx.term()

    # ------------------------------------------------------------------ receive
    def _poll(self, timeout_ms: int) -> int:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            command()
        if not self._by_socket:
            self._stopping.wait(timeout_ms / 1e3)
            return 0
        handled = 0
        for socket, _ in self._poller.poll(timeout_ms):
            dial = self._by_socket[socket]
            for _ in range(_MAX_BURST):
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                handled += 1
                try:
                    self._handle(frames, dial)
                # One message must not take the stream down: this is the single place
                # that catches everything, counts it and logs it.
                except Exception as exc:  # noqa: BLE001
                    self.stats.internal_errors += 1
                    self._warn("internal", "error handling a KV-event message: %r", exc)
        return handled

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
        seq = int.from_bytes(seq_bytes, "big")
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
            self._recover(endpoint, model, last + 1, seq, invalidated=False)
        elif verdict is Verdict.RESTART:
            self._invalidate(endpoint, f"publisher restarted: seq went back from {last} to {seq}")
            if seq > 0:
                self._recover(endpoint, model, 0, seq, invalidated=True)
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
        self, endpoint: str, model: str, start: int, stop: int, *, invalidated: bool
    ) -> None:
        """Deliver batches ``start .. stop-1`` from the replay socket; invalidate unless
        they all come (and ``invalidated`` says it was done already)."""
        with self._lock:
            address = self._replay_addresses.get(endpoint)
        pairs: list[tuple[int, bytes]] = []
        problem = "no replay address"
        if address is not None:
            self.stats.replays += 1
            pairs, problem = self._request_replay(address, start, stop)
        run = _contiguous_tail(pairs, start, stop)
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
            if address is not None:
                self.stats.replay_failures += 1
                if not problem:
                    first = run[0][0] if run else stop
                    problem = f"replay covered {first}..{stop - 1} only"
            if not invalidated:
                self._invalidate(endpoint, f"missed seq {start}..{stop - 1} ({problem})")
        for seq, payload in run:
            try:
                batch = decode_batch(payload, source=f"{endpoint} seq {seq}")
            except DataError as exc:
                self.stats.decode_errors += 1
                self._invalidate(endpoint, f"malformed replayed payload: {exc}")
                continue
            self._deliver(endpoint, model, seq, batch)

    def _request_replay(
        self, address: str, start: int, stop: int
    ) -> tuple[list[tuple[int, bytes]], str]:
        """Ask vLLM's ROUTER for every buffered batch from ``start``; keep those below
        ``stop``. Returns (pairs, problem), problem empty when the end marker came.

        vLLM answers a ``[b"", start seq]`` request on a DEALER with ``[b"", seq,
        payload]`` per batch (newer releases: ``[b"", topic, seq, payload]``) and ends
        with ``END_SEQ`` as the seq. REQ cannot take several replies; a fresh DEALER per
        request keeps a late answer to a timed-out request from mixing in.
        """
        socket = self._ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        pairs: list[tuple[int, bytes]] = []
        try:
            socket.connect(address)
            socket.send_multipart([b"", start.to_bytes(8, "big")], zmq.NOBLOCK)
            deadline = time.monotonic() + self.replay_timeout_s
            while True:
                remaining_ms = int((deadline - time.monotonic()) * 1e3)
                if remaining_ms <= 0 or not socket.poll(remaining_ms):
                    return pairs, f"replay from {address} timed out"
                frames = socket.recv_multipart()
                if len(frames) not in (3, 4) or frames[0] != b"" or len(frames[-2]) != 8:
                    return pairs, f"replay from {address} sent {len(frames)} unexpected frames"
                seq_bytes, payload = frames[-2], frames[-1]
                if seq_bytes == END_SEQ:
                    return pairs, ""
                seq = int.from_bytes(seq_bytes, "big")
                if start <= seq < stop:
                    pairs.append((seq, payload))
        except zmq.ZMQError as exc:
            return pairs, f"replay from {address} failed: {exc}"
        finally:
            socket.close(linger=0)

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

    def _invalidate(self, endpoint: str, reason: str) -> None:
        self.stats.invalidations += 1
        self._warn(f"invalidate:{endpoint}", "invalidating %s: %s", endpoint, reason)
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
