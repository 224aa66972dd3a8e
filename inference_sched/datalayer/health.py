"""Endpoint health: take an endpoint that cannot be reached out of the candidate set.

GIE keeps an endpoint a candidate as long as its pod is Ready: a failed poll only logs
and keeps the last snapshot (``gateway-api-inference-extension:
pkg/epp/datalayer/collector.go``), so a gateway keeps sending a dead server its share of
traffic. :class:`EndpointHealth` adds the rule docs/datalayer.md ("Endpoint health")
describes:

* an endpoint that could not be reached ``unhealthy_after`` times in a row (timeout,
  reset, non-200 answer, ...; :data:`FailureKind.UNREACHABLE`) is marked unhealthy
  (``EndpointTable.set_healthy(name, False)``: no longer a candidate);
* a *refused* connection (:data:`FailureKind.REFUSED`) takes it out at once when
  ``unhealthy_on_refused`` is set (the default): nothing listens on the port, which a
  slow or overloaded server never causes, so waiting for more failures would only send
  it more requests;
* the first successful scrape puts it back. A request that went through does not: the
  scrape is the one probe every endpoint gets, whether it takes traffic or not;
* a page the server answered with but the extractor could not read
  (:data:`FailureKind.ANSWERED`) neither counts nor recovers: the server is up, the
  metrics configuration is wrong, and taking every endpoint out for that would turn a
  config mistake into an outage.

Both the scraper and the gateway (an upstream connection refused while forwarding:
:meth:`EndpointHealth.report_connect_failure`) report to one object, with one counter
per endpoint. Only endpoints this object took out are put back: one that someone else
marked unhealthy (an embedder, a future readiness check) is left alone, and discovery
removes pods that are not Ready rather than marking them (``k8s.py``), so they never
reach here. An endpoint's state is dropped when it leaves the table (an endpoint added
again under the same name starts afresh, healthy).

Thread safety: every method holds ``table.lock`` (re-entrant), the lock the table's own
health changes take, so the counters and the table's health column change together and
a scraper on one event loop and a gateway on another thread cannot apply a take-out and
a put-back in the wrong order. The usual table contract applies to scheduling: run it on
the thread that reports, or hold ``table.lock`` around ``schedule``
(docs/architecture.md, "Concurrency contract").
"""

from __future__ import annotations

import enum
import errno
import logging
from collections.abc import Iterable
from typing import Final

from inference_sched.framework.types import Endpoint
from inference_sched.state.table import EndpointTable

__all__ = [
    "DEFAULT_UNHEALTHY_AFTER",
    "EndpointHealth",
    "FailureKind",
    "failure_kind",
]

log = logging.getLogger(__name__)

DEFAULT_UNHEALTHY_AFTER: Final = 3
"""Consecutive failures that take an endpoint out (with 50 ms scrapes and a 1 s timeout:
at most ~3 s of a hung server, 150 ms of one answering 503)."""
_MAX_CHAIN: Final = 8
"""Links of an exception chain searched for the refusal (httpx wraps it three deep)."""


class FailureKind(enum.IntEnum):
    """How a scrape or an upstream connection failed, for the health rule."""

    ANSWERED = 0
    """The server answered; the page was unusable (neither counts nor recovers)."""
    UNREACHABLE = 1
    """No usable answer: timeout, reset, non-200, malformed HTTP, body too large."""
    REFUSED = 2
    """The connection was refused: nothing listens on the port."""


def failure_kind(exc: BaseException) -> FailureKind:
    """:data:`FailureKind.REFUSED` when ``exc`` or an exception it was raised from (its
    ``__cause__`` or ``__context__``, as httpx and our lean client chain them) is a
    refused connection, else :data:`FailureKind.UNREACHABLE`."""
    seen: BaseException | None = exc
    for _ in range(_MAX_CHAIN):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or (
            isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED
        ):
            return FailureKind.REFUSED
        if isinstance(seen, BaseExceptionGroup):  # anyio: one error per address tried
            kinds = [failure_kind(e) for e in seen.exceptions]
            if kinds and all(k is FailureKind.REFUSED for k in kinds):
                return FailureKind.REFUSED
        seen = seen.__cause__ or seen.__context__
    return FailureKind.UNREACHABLE


class _Entry:
    __slots__ = ("failures", "last_error", "taken_out")

    def __init__(self) -> None:
        self.failures = 0
        self.last_error = ""
        self.taken_out = False


class EndpointHealth:
    """Takes endpoints that cannot be reached out of ``table``'s candidate set, and puts
    them back at their first successful scrape (module docstring).

    Args:
        table: the pool's endpoint table.
        unhealthy_after: consecutive failures that take an endpoint out; 0 turns health
            handling off (nothing is ever taken out, refusals included).
        unhealthy_on_refused: a refused connection takes the endpoint out at once.

    Raises:
        ValueError: ``unhealthy_after`` is not an int >= 0.
    """

    def __init__(
        self,
        table: EndpointTable,
        *,
        unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER,
        unhealthy_on_refused: bool = True,
    ) -> None:
        if isinstance(unhealthy_after, bool) or not isinstance(unhealthy_after, int):
            raise ValueError(
                f"unhealthy_after: expected int >= 0, got {unhealthy_after!r} "
                f"({type(unhealthy_after).__name__})"
            )
        if unhealthy_after < 0:
            raise ValueError(f"unhealthy_after: expected int >= 0, got {unhealthy_after}")
        self.table = table
        self.unhealthy_after = unhealthy_after
        self.unhealthy_on_refused = bool(unhealthy_on_refused)
        self.num_taken_out_total = 0
        """Endpoints taken out since start (transitions to unhealthy)."""
        self.num_put_back_total = 0
        """Endpoints put back since start (transitions to healthy)."""
        self._entries: dict[str, _Entry] = {}
        table.on_remove(self._forget)

    @property
    def enabled(self) -> bool:
        """Whether endpoints are ever taken out (``unhealthy_after`` > 0)."""
        return self.unhealthy_after > 0

    # ............................................................ reports
    def report_connect_failure(self, name: str, reason: str = "", *, refused: bool = True) -> bool:
        """The gateway could not connect to endpoint ``name`` (passive health signal).

        Call it from any thread when opening an upstream connection fails: refused
        (``refused=True``, the default) or timed out (``refused=False``, counted like a
        failed scrape). Not for answers (a 5xx is the server's answer, not a reason to
        take it out). Unknown names are ignored (the endpoint left meanwhile).

        Returns:
            Whether this report took the endpoint out.
        """
        kind = FailureKind.REFUSED if refused else FailureKind.UNREACHABLE
        with self.table.lock:
            if name not in self.table:
                return False
            return self.scrape_failed(name, kind, reason or kind.name.lower())

    def scrape_failed(self, name: str, kind: FailureKind, reason: str) -> bool:
        """A scrape of ``name`` failed (the scraper calls it; the endpoint is in the table).

        Returns:
            Whether this failure took the endpoint out.
        """
        if not self.enabled:
            return False
        with self.table.lock:
            entry = self._entries.get(name)
            if kind is FailureKind.ANSWERED:  # reachable: the run of failures is broken
                if entry is not None:
                    entry.failures = 0
                    if not entry.taken_out:
                        del self._entries[name]
                return False
            if entry is None:
                entry = self._entries[name] = _Entry()
            entry.failures += 1
            entry.last_error = reason
            if entry.taken_out:
                return False
            refused = kind is FailureKind.REFUSED and self.unhealthy_on_refused
            if not refused and entry.failures < self.unhealthy_after:
                return False
            if not self.table.is_healthy[self.table.row(name)]:
                return False  # someone else's decision: theirs to undo
            self.table.set_healthy(name, False)
            entry.taken_out = True
            self.num_taken_out_total += 1
        log.warning(
            "endpoint %s taken out of the candidate set after %d consecutive failure(s) "
            "(%s); it comes back at its first successful scrape",
            name,
            entry.failures,
            reason,
        )
        return True

    def scrape_succeeded(self, names: Iterable[str]) -> int:
        """Scrapes of ``names`` succeeded: reset their counts, put back those taken out.

        Returns:
            How many endpoints were put back.
        """
        if not self._entries:  # the common case: nobody failing, nothing to do
            return 0
        back: list[tuple[str, int, str]] = []
        with self.table.lock:
            entries = self._entries
            for name in names:
                entry = entries.pop(name, None)
                if entry is None or not entry.taken_out:
                    continue
                if name in self.table:
                    self.table.set_healthy(name, True)
                self.num_put_back_total += 1
                back.append((name, entry.failures, entry.last_error))
        for name, failures, last_error in back:
            log.info(
                "endpoint %s back in the candidate set: scrape succeeded after %d failure(s) "
                "(last: %s)",
                name,
                failures,
                last_error,
            )
        return len(back)

    # ............................................................ reading
    def is_taken_out(self, name: str) -> bool:
        """Whether this object took ``name`` out (and has not put it back yet)."""
        entry = self._entries.get(name)
        return entry is not None and entry.taken_out

    def taken_out(self) -> tuple[str, ...]:
        """Names of the endpoints taken out now, sorted."""
        with self.table.lock:
            return tuple(sorted(n for n, e in self._entries.items() if e.taken_out))

    @property
    def num_taken_out(self) -> int:
        """Endpoints taken out now."""
        with self.table.lock:
            return sum(1 for e in self._entries.values() if e.taken_out)

    def consecutive_failures(self, name: str) -> int:
        """Failures of ``name`` counted since its last success (0 when none)."""
        entry = self._entries.get(name)
        return 0 if entry is None else entry.failures

    def _forget(self, row: int, endpoint: Endpoint) -> None:
        # Called under table.lock by EndpointTable.remove: a new endpoint with the name
        # starts healthy, so it must start with no count either.
        self._entries.pop(endpoint.name, None)
