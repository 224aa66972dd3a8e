"""In-flight counters shared through Redis, with a lease per replica.

Design note. Redis keeps, per endpoint name, the totals over replicas
(``inflight``: ``<endpoint>:req`` / ``<endpoint>:tok``) and, per replica, its own share
(``holds:<replica>``). A replica never sends increments: it sends its *absolute* share
for the endpoints a change touched, stamped with a sequence number, and the script moves
the total by the difference. That makes every failure converge instead of drift:

* a call lost while Redis is unreachable is made good by the next call for that
  endpoint, or by the heartbeat, which republishes the whole share (also what rebuilds
  the totals after Redis restarts with no data);
* calls reordered between threads apply only if newer than what was applied;
* a replica whose lease expired (crashed, frozen, partitioned) is *reaped* by any
  replica's janitor: its share is subtracted and deleted. If it was alive after all,
  its next heartbeat puts its share back.

Changes are published off the decision path: a change marks the endpoint dirty; the
next decision's read (one round trip, which it makes anyway) carries every dirty share
with it, and the link's maintenance thread sends what is still dirty
:data:`PUBLISH_DELAY_S` after a change (a replica that stops deciding). Under load the
reads carry everything and the thread has nothing left to send; another replica sees
a pick at this replica's next decision or after the delay, whichever comes first. The
heartbeat (lease renewal + republish + janitor, one round trip) runs every
``leaseTtlMs / 3`` on the same thread. A replica closing cleanly withdraws its share at
once (:meth:`RedisInflightCounters.close`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference_sched.state.redis.link import Call, RedisLink, Unavailable
from inference_sched.state.redis.params import RedisInflightParams

__all__ = ["RedisInflightCounters"]

_MAX_REAPED_PER_TICK: Final = 64
PUBLISH_DELAY_S: Final = 0.002
"""How long a change may wait for a decision's read to carry it before the maintenance
thread publishes it on its own."""


class RedisInflightCounters:
    """This replica's in-flight share, published to Redis, and the totals read back.

    Args:
        link: the connection (circuit breaker, scripts, maintenance thread).
        lease_ttl_ms: this replica's lease; the heartbeat renews it every third of it.
    """

    def __init__(self, link: RedisLink, *, lease_ttl_ms: int = 10_000) -> None:
        self.link = link
        self._lease_ms = int(lease_ttl_ms)
        self._lock = threading.Lock()
        # name -> [requests, tokens, sequence number of its last change]
        self._own: dict[str, list[float]] = {}
        self._seq = 0
        # Changed and not yet acknowledged by Redis: name -> sequence number of the change.
        self._dirty: dict[str, int] = {}
        self._dirty_since_s = math.inf  # when the oldest unacknowledged change was made
        self.num_reaped = 0
        """Dead replicas whose share this replica's janitor subtracted."""
        link.on_wake(self._publish_late)
        link.add_task(self._lease_ms / 3000.0, self._heartbeat)
        link.on_recovery(self._heartbeat)
        link.start()

    @classmethod
    def connect(cls, params: RedisInflightParams) -> RedisInflightCounters:
        """Counters on a new link (``role`` ``inflight``).

        Raises:
            ConfigError: the ``[redis]`` extra is missing.
        """
        return cls(RedisLink(params, role="inflight"), lease_ttl_ms=params.lease_ttl_ms)

    @property
    def replica_id(self) -> str:
        """This replica's id in Redis."""
        return self.link.replica_id

    # ------------------------------------------------------------------ own share
    def change(self, deltas: Sequence[tuple[str, float, float]]) -> None:
        """Add ``(endpoint, requests, tokens)`` deltas to this replica's share (never below
        0). No network here: the maintenance thread publishes it, and so does the next
        :meth:`sync` if it comes first."""
        if not deltas:
            return
        with self._lock:
            self._seq += 1
            for name, requests, tokens in deltas:
                own = self._own.setdefault(name, [0.0, 0.0, 0])
                own[0] = max(0.0, own[0] + requests)
                own[1] = max(0.0, own[1] + tokens)
                own[2] = self._dirty[name] = self._seq
            wake = self._dirty_since_s == math.inf
            if wake:
                self._dirty_since_s = time.monotonic()
        if wake:
            self.link.wake()

    def forget(self, name: str) -> None:
        """Zero this replica's share for ``name`` (its table dropped the endpoint)."""
        with self._lock:
            if name not in self._own:
                return
            self._seq += 1
            self._own[name] = [0.0, 0.0, self._seq]
            self._dirty[name] = self._seq
            self._dirty_since_s = min(self._dirty_since_s, time.monotonic())
        self.link.wake()

    def own(self, name: str) -> tuple[float, float]:
        """This replica's (requests, tokens) on ``name``."""
        with self._lock:
            own = self._own.get(name)
        return (0.0, 0.0) if own is None else (own[0], own[1])

    def flush(self) -> bool:
        """Publish the pending changes now, on the caller's thread; whether Redis took them."""
        try:
            self._publish(self.link.calls)
        except Unavailable:
            return False
        return True

    def _pending(self) -> tuple[int, list[str | float]]:
        """(sequence number, triples) of the unacknowledged changes; caller holds the lock."""
        rows = [(n, self._own[n][0], self._own[n][1]) for n in self._dirty]
        return self._seq, _triples(rows)

    def _acknowledged(self, triples: Sequence[str | float], seq: int) -> None:
        """Redis applied the share as of ``seq`` for the names in ``triples``."""
        with self._lock:
            for name in triples[::3]:
                assert isinstance(name, str)
                if self._dirty.get(name, seq + 1) <= seq:
                    del self._dirty[name]
            if not self._dirty:
                self._dirty_since_s = math.inf

    def _publish(self, send: Callable[[Sequence[Call]], list[Any]]) -> None:
        with self._lock:
            if not self._dirty:
                return
            seq, triples = self._pending()
        send([("publish", (self.replica_id, self._lease_ms, seq, *triples))])
        self._acknowledged(triples, seq)

    def _publish_late(self) -> float | None:
        """Maintenance thread: publish what no decision carried within the delay."""
        wait = self._dirty_since_s + PUBLISH_DELAY_S - time.monotonic()
        if wait > 0:
            return wait if wait != math.inf else None
        self._publish(self.link.maintenance)
        return None

    # ------------------------------------------------------------------ totals
    def sync(self, blob: bytes) -> npt.NDArray[np.float64]:
        """Publish the pending changes and read the totals over replicas for the names in
        ``blob`` (:func:`~inference_sched.state.redis.link.names_blob`): one row
        ``(requests, tokens)`` per name, one round trip. The totals include every change
        this replica made before the call.

        Raises:
            Unavailable: Redis did not answer in time (or the circuit is open).
        """
        with self._lock:
            seq, triples = self._pending() if self._dirty else (0, [])
        if triples:
            reply = self.link.call("sync", blob, self.replica_id, self._lease_ms, seq, *triples)
            self._acknowledged(triples, seq)
        else:
            reply = self.link.call("sync", blob)
        return np.array(reply.split(), dtype=np.float64).reshape(-1, 2)

    # ------------------------------------------------------------------ maintenance
    def _heartbeat(self) -> None:
        with self._lock:
            seq = self._seq
            snapshot = _triples((n, v[0], v[1]) for n, v in self._own.items())
        replies = self.link.maintenance(
            [
                ("publish", (self.replica_id, self._lease_ms, seq, *snapshot)),
                ("reap", (_MAX_REAPED_PER_TICK,)),
            ]
        )
        self._acknowledged(snapshot, seq)
        self.num_reaped += len(replies[1])
        with self._lock:  # shares that were zero as of the snapshot are in Redis: drop them
            self._own = {n: v for n, v in self._own.items() if v[0] > 0 or v[1] > 0 or v[2] > seq}

    def heartbeat_now(self) -> None:
        """Renew the lease, republish the share and reap now, on the caller's thread.

        Raises:
            Unavailable: Redis did not answer.
        """
        self._heartbeat()

    def close(self) -> None:
        """Withdraw this replica's share and lease, then close the link. Idempotent."""
        self.link.stop_thread()
        if self.link.is_healthy:
            # On failure the lease expires and a janitor reaps the share instead.
            with contextlib.suppress(Unavailable):
                self.link.maintenance([("retire", (self.replica_id,))])
        self.link.close()


def _triples(rows: Iterable[tuple[str, float, float]]) -> list[str | float]:
    out: list[str | float] = []
    for name, requests, tokens in rows:
        out += [name, requests, tokens]
    return out
