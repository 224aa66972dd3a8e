"""One plugin's connection to Redis: scripts, a circuit breaker and a maintenance thread.

Design note. A decision must never wait on Redis for long, and must not fail because
Redis did. So:

* Decision-path calls run on connections whose socket timeouts (connect, read, write)
  are ``timeoutMs``, with redis-py's retries off. The connections are taken from a small
  stack of our own rather than redis-py's pool and client: ``Redis.execute_command``
  costs about 60 us more per call than the connection it wraps, which is most of a
  round trip on loopback.
* A failed call opens the circuit (:attr:`RedisLink.is_healthy` false): later calls
  raise :class:`Unavailable` at once, without touching the network, and the caller uses
  its local state. The error is counted and logged at most once a minute.
* A daemon thread owns every call that need not delay a decision (the in-flight
  counters' publication of each change, the prefix index's endpoint heartbeat and
  expiry, the in-flight lease and the janitor) on a connection of its own, with a more
  patient timeout. While the circuit is open it probes Redis every
  :data:`RETRY_INTERVAL_S`, reloads the scripts, runs the owner's recovery hooks (the
  in-flight counters republish this replica's holds) and closes the circuit.
* Scripts are registered once (``SCRIPT LOAD``) and called by ``EVALSHA``; a
  ``NOSCRIPT`` reply (Redis restarted or flushed) reloads them and repeats the calls
  that got it, once.

The thread holds only a weak reference to the link: a link dropped without
:meth:`RedisLink.close` still lets its thread end at the next tick.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from inference_sched.errors import ConfigError, InferenceSchedError
from inference_sched.state.redis.params import RedisParams
from inference_sched.state.redis.scripts import SCRIPTS

__all__ = [
    "EXTRA_HINT",
    "RETRY_INTERVAL_S",
    "RedisLink",
    "Unavailable",
    "import_redis",
    "names_blob",
]

log = logging.getLogger(__name__)

EXTRA_HINT: Final = (
    "inference_sched.state.redis needs the [redis] extra: pip install 'inference-sched[redis]'"
)
RETRY_INTERVAL_S: Final = 0.5
"""How often the maintenance thread probes Redis while the circuit is open."""
_WARN_INTERVAL_S: Final = 60.0
_MAINTENANCE_TIMEOUT_S: Final = 2.0
"""Socket timeout of the maintenance thread's connection (its calls are off the
decision path and some walk a few thousand entries)."""

Call = tuple[str, Sequence[bytes | str | int | float]]
"""A script name and its arguments after the key prefix."""


class Unavailable(InferenceSchedError):
    """Redis did not answer (or the circuit is open): use local state for this call.

    The one argument is the Redis address (password redacted). Raised by
    :meth:`RedisLink.call`, :meth:`RedisLink.calls` and :meth:`RedisLink.maintenance`;
    the plugins that share state through Redis catch it and fall back to their local
    copy, so it never reaches a scheduling decision.
    """


def import_redis() -> ModuleType:
    """The ``redis`` package.

    Raises:
        ConfigError: the ``[redis]`` extra is not installed.
    """
    try:
        import redis
    except ImportError as exc:
        raise ConfigError(EXTRA_HINT) from exc
    return redis


def names_blob(names: Iterable[str]) -> tuple[list[int], bytes]:
    """(positions kept, the names as the scripts take them): newline-separated, so a
    name that is empty or holds a newline is left out (it stays local-only)."""
    kept: list[int] = []
    parts: list[str] = []
    for i, name in enumerate(names):
        if name and "\n" not in name:
            kept.append(i)
            parts.append(name)
    return kept, "\n".join(parts).encode()


def _url(address: str) -> str:
    """``valkey(s)://`` as ``redis(s)://`` (the same protocol; llm-d accepts both)."""
    for alias, scheme in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if address.startswith(alias):
            return scheme + address[len(alias) :]
    return address


def _redacted(address: str) -> str:
    """The address without its password, for logs."""
    url = urlsplit(address)
    if url.password is None:
        return address
    netloc = f"{url.username or ''}:***@{url.hostname}" + (f":{url.port}" if url.port else "")
    return urlunsplit(url._replace(netloc=netloc))


class _Task:
    __slots__ = ("due_s", "fn", "interval_s")

    def __init__(self, interval_s: float, fn: Callable[[], None]) -> None:
        self.interval_s = interval_s
        self.fn = fn
        self.due_s = 0.0


class RedisLink:
    """Connections to one Redis, the scripts, the circuit breaker and the maintenance thread.

    Args:
        params: address, namespace and timeout.
        role: names the connections (``CLIENT LIST``) and the thread.

    Raises:
        ConfigError: the ``[redis]`` extra is missing.
    """

    def __init__(self, params: RedisParams, *, role: str) -> None:
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.address = _redacted(params.address)
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        """This replica's id in Redis (per link: unique even for two schedulers in one process)."""
        self.prefix = f"isched:{{{params.namespace}}}:".encode()
        self._role = role
        url = _url(params.address)
        timeout_s = params.timeout_ms / 1000.0
        slow_s = max(timeout_s, _MAINTENANCE_TIMEOUT_S)
        common: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"isched-{role}-{self.replica_id}",
            "protocol": 2,  # the replies the scripts are written for, whatever redis-py's default
        }
        self._fast = redis.ConnectionPool.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **common
        )
        self._slow = redis.ConnectionPool.from_url(
            url, socket_timeout=slow_s, socket_connect_timeout=slow_s, **common
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._errors_or_open = (*self._errors, Unavailable)
        self._no_script: type[BaseException] = redis.exceptions.NoScriptError
        self._response_error: type[BaseException] = redis.exceptions.ResponseError
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}
        # Decision-path connections: list.pop/append are atomic, so threads share it freely.
        self._idle: list[Any] = []
        self._maintenance_conn = self._slow.make_connection()
        self._inspect_lock = threading.Lock()
        self._inspect_conn = self._slow.make_connection()
        self._tasks: list[_Task] = []
        self._recovery_hooks: list[Callable[[], None]] = []
        self._wake_hooks: list[Callable[[], float | None]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning_s = -math.inf
        self.is_healthy = False
        """Whether decision-path calls go to Redis (the circuit is closed)."""
        self.num_errors = 0
        """Calls that failed (connection, timeout, error reply): each degraded a call."""
        self.num_skipped = 0
        """Decision-path calls not attempted because the circuit was open."""
        self.num_recoveries = 0
        """Times the circuit closed again after Redis came back."""
        try:
            self._connect(self._take())
            self.is_healthy = True
        except self._errors as exc:  # start degraded; the thread keeps trying
            self._fail(exc)

    # ------------------------------------------------------------------ lifecycle
    def add_task(self, interval_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` every ``interval_s`` on the maintenance thread while healthy.

        ``fn`` uses :meth:`maintenance` for its calls; an :class:`Unavailable` it raises
        opens the circuit and ends the tick.
        """
        self._tasks.append(_Task(interval_s, fn))

    def on_recovery(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the maintenance thread before the circuit closes again."""
        self._recovery_hooks.append(fn)

    def on_wake(self, fn: Callable[[], float | None]) -> None:
        """Run ``fn`` on the maintenance thread at every tick while healthy, before the
        tasks: :meth:`wake` makes a tick happen now (work handed off the decision path).
        ``fn`` returns the seconds after which it wants another tick, or ``None``."""
        self._wake_hooks.append(fn)

    def start(self) -> None:
        """Start the maintenance thread (once the owner has added its tasks)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=_maintain_forever,
            args=(weakref.ref(self), self._stop, self._wake),
            name=f"isched-redis-{self._role}",
            daemon=True,
        )
        self._thread.start()

    def stop_thread(self) -> None:
        """Stop the maintenance thread and wait for it (tests simulate a crash with it)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)

    def close(self) -> None:
        """Stop the thread and close every connection. Idempotent."""
        self.stop_thread()
        self.is_healthy = False
        for conn in (*self._idle, self._maintenance_conn, self._inspect_conn):
            conn.disconnect()
        self._idle.clear()

    def wake(self) -> None:
        """Run the maintenance tick now (tests; an owner with urgent work)."""
        self._wake.set()

    # ------------------------------------------------------------------ calls
    def call(self, name: str, *args: bytes | str | int | float) -> Any:
        """Run one script on a decision-path connection and return its reply.

        Raises:
            Unavailable: the circuit is open, or the call failed (which opens it).
        """
        return self.calls([(name, args)])[0]

    def calls(self, calls: Sequence[Call]) -> list[Any]:
        """Run scripts in one round trip (a pipeline), in order; their replies.

        Raises:
            Unavailable: the circuit is open, or a call failed (which opens it).
        """
        if not self.is_healthy:
            self.num_skipped += 1
            raise Unavailable(self.address)
        conn = self._take()
        try:
            return self._run(conn, calls)
        except self._errors as exc:
            self._fail(exc)
            raise Unavailable(self.address) from exc
        finally:
            self._idle.append(conn)

    def maintenance(self, calls: Sequence[Call]) -> list[Any]:
        """:meth:`calls` on the maintenance connection (maintenance thread and close only).

        Raises:
            Unavailable: the call failed (which opens the circuit).
        """
        try:
            self._drop_if_stale(self._maintenance_conn)
            return self._run(self._maintenance_conn, calls)
        except self._errors as exc:
            self._fail(exc)
            raise Unavailable(self.address) from exc

    def command(self, *args: bytes | str | int | float) -> Any:
        """A plain Redis command, off the decision path (inspection, tests, cleanup).

        Raises whatever redis-py raises: nothing here degrades.
        """
        with self._inspect_lock:
            conn = self._inspect_conn
            try:
                conn.send_command(*args)
                return conn.read_response()
            except BaseException:
                conn.disconnect()
                raise

    def clear_namespace(self) -> int:
        """Delete every key of the namespace, for every replica (tests, benchmarks, a
        pool taken down); the number of keys deleted."""
        pattern = (
            bytes(b for c in self.prefix for b in ((92, c) if c in b"*?[]\\" else (c,))) + b"*"
        )
        cursor, deleted = b"0", 0
        while True:
            cursor, keys = self.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if keys:
                deleted += int(self.command("UNLINK", *keys))
            if int(cursor) == 0:
                return deleted

    # ------------------------------------------------------------------ internals
    def _take(self) -> Any:
        try:
            conn = self._idle.pop()
        except IndexError:
            return self._fast.make_connection()
        self._drop_if_stale(conn)
        return conn

    def _drop_if_stale(self, conn: Any) -> None:
        """Disconnect ``conn`` when the server closed it (a restart): the call then
        reconnects instead of failing on a dead socket. One non-blocking ``recv``."""
        # redis-py's private ``_sock`` (every version since 3): ``can_read`` on a closed
        # connection would connect, and a failed connect would then be tried twice.
        if getattr(conn, "_sock", None) is None:
            return
        try:
            stale = conn.can_read(timeout=0)  # an idle connection has nothing to read
        except self._errors:
            stale = True  # EOF: the server closed it
        if stale:
            conn.disconnect()

    def _connect(self, conn: Any) -> None:
        """PING and load the scripts on ``conn`` (then back to the stack)."""
        try:
            conn.send_command("PING")
            conn.read_response()
            self._load_scripts(conn)
        finally:
            self._idle.append(conn)

    def _load_scripts(self, conn: Any) -> None:
        commands = [("SCRIPT", "LOAD", src) for src in SCRIPTS.values()]
        conn.send_packed_command(conn.pack_commands(commands))
        for _ in commands:
            conn.read_response()

    def _run(self, conn: Any, calls: Sequence[Call]) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (0, 1):
            commands = [
                ("EVALSHA", self._shas[calls[i][0]], 0, self.prefix, *calls[i][1]) for i in todo
            ]
            try:
                if len(commands) == 1:
                    conn.send_packed_command(conn.pack_command(*commands[0]))
                else:
                    conn.send_packed_command(conn.pack_commands(commands))
                missing: list[int] = []
                error: BaseException | None = None
                # Read every reply, errors included, so the connection stays in step.
                for i in todo:
                    try:
                        replies[i] = conn.read_response()
                    except self._no_script:
                        missing.append(i)
                    except self._response_error as exc:
                        error = error or exc
            except BaseException:
                conn.disconnect()  # a reply may be half read: never reuse the stream
                raise
            if error is not None:
                raise error
            if not missing:
                return replies
            if attempt == 0:
                self._load_scripts(conn)  # Redis restarted or flushed its scripts
                todo = missing
        raise self._no_script("scripts were flushed again while reloading them")

    def _fail(self, exc: BaseException) -> None:
        self.num_errors += 1
        self.is_healthy = False
        now = time.monotonic()
        if now - self._last_warning_s >= _WARN_INTERVAL_S:
            self._last_warning_s = now
            log.warning(
                "%s (replica %s): Redis at %s unavailable (%s: %s); using local state until "
                "it answers (%d errors so far, logged at most once a minute)",
                self._role,
                self.replica_id,
                self.address,
                type(exc).__name__,
                exc,
                self.num_errors,
            )
        self._wake.set()

    def _tick(self) -> float:
        """One maintenance round; returns the seconds until the next one."""
        if not self.is_healthy:
            try:
                self._connect(self._take())
                for hook in self._recovery_hooks:
                    hook()
            except self._errors_or_open:
                return RETRY_INTERVAL_S
            self.is_healthy = True
            self.num_recoveries += 1
            log.info(
                "%s (replica %s): Redis at %s is back; shared state resumed",
                self._role,
                self.replica_id,
                self.address,
            )
        wanted = [RETRY_INTERVAL_S] if not self._tasks else []
        try:
            for on_wake in self._wake_hooks:
                again = on_wake()
                if again is not None:
                    wanted.append(again)
        except Unavailable:
            return RETRY_INTERVAL_S
        now = time.monotonic()
        for task in self._tasks:
            if now >= task.due_s:
                try:
                    task.fn()
                except Unavailable:
                    return RETRY_INTERVAL_S
                task.due_s = now + task.interval_s
        now = time.monotonic()
        wanted += [t.due_s - now for t in self._tasks]
        return max(0.0005, min(wanted))


def _maintain_forever(
    ref: weakref.ref[RedisLink], stop: threading.Event, wake: threading.Event
) -> None:
    while not stop.is_set():
        link = ref()
        if link is None:
            return
        try:
            delay = link._tick()
        except Exception:  # the thread must outlive a bug in one tick
            log.exception("redis maintenance tick failed")
            delay = RETRY_INTERVAL_S
        del link
        wake.wait(delay)
        wake.clear()
