"""Burst co-location: ``burst-prefix-cache-producer`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/dataproducer/burstprefix/``;
``docs/plugins/burst-prefix-cache-producer.md``).

Requests that arrive together (the ``n`` samples of one RL rollout prompt, a fan-out of
one agent step) all meet cold caches, so a cache-state scorer sees zero everywhere and
load balancing scatters them: the shared prompt is prefilled on every replica. This
producer collects the requests of a short window, assigns them jointly (identical
prompts to one replica, or a few when ``maxPerReplica`` caps it) and writes a
:class:`~inference_sched.framework.contracts.PrefixCacheMatchInfo` with a full match on
the assigned replica and zero elsewhere; a ``prefix-cache-scorer`` whose
``prefixMatchInfoProducerName`` names this producer turns that into the score.

Design note (the batch window). A scheduling cycle here is synchronous, so "join the
open batch and block until it seals" is a thread-safe batch guarded by one
:class:`threading.Condition`: the first arrival opens a batch whose deadline is
``windowDurationMs`` later (on the monotonic clock, because this really waits); every
arrival appends its entry and waits on the condition; the first waiter to wake past the
deadline seals the batch (computes :func:`assign` over it and wakes the others), and
the next arrival opens a fresh batch. No timer thread is needed, and no caller can wait
longer than ``window + 300 ms`` (:meth:`BurstPrefixCacheProducer.produce_timeout`): past
it the producer raises :class:`BurstProduceTimeoutError`. A full batch
(``maxBatchSize``) raises :class:`BurstBatchFullError` for the arrival that found it
full. Both are producer errors: the scheduler counts and logs them and the request is
scheduled without this producer's data (no affinity), never failed.

Concurrent callers (an EPP serving each request on its own thread, with ``table.lock``
*not* held across ``schedule``) get the joint assignment. A single-threaded caller
(the simulator, a loop over ``schedule``) sees every request alone in its window: it
waits the window out and gets no affinity. An embedder that knows a burst is complete
can end the window early with :meth:`BurstPrefixCacheProducer.seal`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import PluginError
from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    PrefixCacheMatchInfo,
    cache_salt,
    prefix_info_key,
    read_tokenized,
    request_token_ids,
)
from inference_sched.framework.interfaces import DataProducer, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import ParamCheck, at_least, integer, one_of, param
from inference_sched.prefix.hashing import request_seed, token_block_hashes
from inference_sched.state.table import EndpointTable

__all__ = [
    "BALANCE_REQUESTS",
    "BALANCE_TOKENS",
    "BurstBatchFullError",
    "BurstEntry",
    "BurstPrefixCacheProducer",
    "BurstPrefixParams",
    "BurstProduceTimeoutError",
    "Replica",
    "assign",
]

log = logging.getLogger(__name__)

PLUGIN_TYPE: Final = "burst-prefix-cache-producer"
UNLIMITED: Final = -1
"""The ``maxPerReplica`` / ``maxBatchSize`` value that disables the cap."""
DEFAULT_MAX_PREFIX_BLOCKS: Final = 2048
"""Blocks hashed per prompt when ``maxPrefixTokensToMatch`` is 0 (llm-d-router)."""
PRODUCE_TIMEOUT_MARGIN_S: Final = 0.3
"""Added to the window: the longest a request may wait for its batch to seal."""
MAX_WINDOW_MS: Final = 10000
BALANCE_REQUESTS: Final = "requests"
BALANCE_TOKENS: Final = "tokens"


# ====================================================================== params
def _window_ms(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    integer(inst, attribute, value)
    if not 1 <= value <= MAX_WINDOW_MS:
        raise ParamCheck("windowDurationMs", f"int in [1, {MAX_WINDOW_MS}]", value)


def _cap(key: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        integer(inst, attribute, value)
        if value != UNLIMITED and value < 1:
            raise ParamCheck(key, "-1 (unlimited) or an int >= 1", value)

    return check


@attrs.frozen
class BurstPrefixParams:
    """Parameters of ``burst-prefix-cache-producer`` (llm-d-router's keys and defaults)."""

    window_duration_ms: int = param(100, alias="windowDurationMs", check=_window_ms)
    """The batch window in milliseconds (1..10000): requests arriving within one window
    are assigned jointly."""
    max_per_replica: int = param(UNLIMITED, alias="maxPerReplica", check=_cap("maxPerReplica"))
    """Most requests of one group placed on one replica (-1: a whole group goes to one
    replica)."""
    block_size_tokens: int = param(64, alias="blockSizeTokens", check=at_least(1))
    """Token ids per hashed block (no 64-token floor here, unlike the approx producer)."""
    max_prefix_tokens_to_match: int = param(0, alias="maxPrefixTokensToMatch", check=at_least(0))
    """When > 0 (and then at least blockSizeTokens), blocks hashed per prompt =
    this // blockSizeTokens; 0: 2048 blocks."""
    min_colocate_blocks: int = param(0, alias="minColocateBlocks", check=at_least(0))
    """Leading blocks a request must share with another one to be co-located with it (a
    singleton's affinity, and the prefix preference between units); 0: only identical
    prompts are grouped, and placement is purely balanced."""
    max_batch_size: int = param(1000, alias="maxBatchSize", check=_cap("maxBatchSize"))
    """Most requests one window collects; an arrival that finds it full gets an error
    (-1: unlimited)."""
    balance_by: str = param(
        BALANCE_REQUESTS, alias="balanceBy", check=one_of(BALANCE_REQUESTS, BALANCE_TOKENS)
    )
    """What the fair share counts: ``requests`` (members placed) or ``tokens`` (blocks a
    replica must prefill: a unit's blocks minus those already placed there)."""

    def __attrs_post_init__(self) -> None:
        tokens = self.max_prefix_tokens_to_match
        if 0 < tokens < self.block_size_tokens:
            raise ParamCheck(
                "maxPrefixTokensToMatch",
                f"0 or an int >= blockSizeTokens ({self.block_size_tokens})",
                tokens,
            )

    @property
    def max_blocks(self) -> int:
        """Blocks hashed per prompt."""
        tokens = self.max_prefix_tokens_to_match
        return tokens // self.block_size_tokens if tokens > 0 else DEFAULT_MAX_PREFIX_BLOCKS


# ====================================================================== assignment
class Replica(NamedTuple):
    """A candidate endpoint as the assignment sees it (llm-d-router ranks ties by
    running requests, then name)."""

    name: str
    running: float = 0.0


class BurstEntry(NamedTuple):
    """One request of a batch: its chained block hashes (every prompt's, concatenated)
    and its candidates."""

    hashes: tuple[int, ...]
    replicas: tuple[Replica, ...]


class _Placement:
    """The mutable state of one :func:`assign` call."""

    def __init__(
        self, replicas: Sequence[Replica], k: int, min_blocks: int, max_share: int, tokens: bool
    ) -> None:
        self.replicas = replicas
        self.k = k
        self.min_blocks = min_blocks
        self.max_share = max_share
        self.tokens = tokens
        self.load: dict[str, int] = {}
        self.holders: dict[int, set[str]] = {}

    def longest_prefix(self, hashes: tuple[int, ...]) -> dict[str, int]:
        """Per replica, the leading blocks of ``hashes`` already placed there: a whole
        prefix is added at once, so holding block i means holding 0..i."""
        found: dict[str, int] = {}
        for h in hashes:
            holders = self.holders.get(h)
            if not holders:
                break
            for name in holders:
                found[name] = found.get(name, 0) + 1
        return found

    def _less(self, a: Replica, b: Replica) -> bool:
        """``a`` before ``b``: lower batch load, then fewer running requests, then name."""
        la, lb = self.load.get(a.name, 0), self.load.get(b.name, 0)
        if la != lb:
            return la < lb
        if a.running != b.running:
            return a.running < b.running
        return a.name < b.name

    def _least_loaded(self, per_replica: dict[str, int]) -> Replica:
        best: Replica | None = None
        for r in self.replicas:
            if self.k != UNLIMITED and per_replica.get(r.name, 0) >= self.k:
                continue
            if best is None or self._less(r, best):
                best = r
        if best is not None:
            return best
        for r in self.replicas:  # every replica at the cap: overflow, least loaded
            if best is None or self._less(r, best):
                best = r
        assert best is not None, "assign() never places on an empty replica list"
        return best

    def _pick(self, per_replica: dict[str, int], matches: dict[str, int], prefer: bool) -> Replica:
        if prefer:
            best: Replica | None = None
            best_match = 0
            for r in self.replicas:
                if self.k != UNLIMITED and per_replica.get(r.name, 0) >= self.k:
                    continue
                if self.load.get(r.name, 0) >= self.max_share:
                    continue  # at its fair share: co-locating here would unbalance the batch
                m = matches.get(r.name, 0)
                if m < self.min_blocks:
                    continue
                if best is None or m > best_match or (m == best_match and self._less(r, best)):
                    best, best_match = r, m
            if best is not None:
                return best
        return self._least_loaded(per_replica)

    def place(self, members: list[int], hashes: tuple[int, ...], out: list[str | None]) -> None:
        """Place one unit (an identical group, or a prefix-sharing singleton): its first
        replica with the prefix preference, the rest spilled to the least loaded."""
        prefer = self.min_blocks > 0
        matches = self.longest_prefix(hashes) if prefer or self.tokens else {}
        cost = len(hashes)
        per_replica: dict[str, int] = {}
        i = 0
        while i < len(members):
            target = self._pick(per_replica, matches, prefer).name
            run = len(members) - i
            if self.k != UNLIMITED:
                # Overflow (more members than k x replicas): one at a time, rebalancing.
                run = min(run, max(self.k - per_replica.get(target, 0), 1))
            for j in range(i, i + run):
                out[members[j]] = target
            if self.tokens:
                if target not in per_replica:  # first touch: prefill what is not there yet
                    added = max(cost - matches.get(target, 0), 0)
                    self.load[target] = self.load.get(target, 0) + added
            else:
                self.load[target] = self.load.get(target, 0) + run
            per_replica[target] = per_replica.get(target, 0) + run
            i += run
            prefer = False  # only the unit's first replica gets the prefix preference
        for name in per_replica:
            for h in hashes:
                self.holders.setdefault(h, set()).add(name)


def assign(
    entries: Sequence[BurstEntry],
    *,
    max_per_replica: int = UNLIMITED,
    min_colocate_blocks: int = 0,
    balance_by: str = BALANCE_REQUESTS,
) -> list[str | None]:
    """The joint assignment of one sealed batch (llm-d-router ``assign``): the replica
    name each entry is steered to, or None (no affinity).

    Entries with equal hash sequences form a group; a group of two or more is a unit,
    and (when ``min_colocate_blocks > 0``) so is a singleton sharing at least that many
    leading blocks with another request of the batch. Entries without hashes, and other
    singletons, get None. The replicas are the first hashed entry's candidates. Groups
    are placed first, then singletons, each tier by prefix length (longest first, ties
    in arrival order). ``max_share = ceil(total / replicas)``, total counting requests
    (``balance_by="requests"``) or each unit's blocks once (``"tokens"``). A unit's first
    replica is the one with the longest prefix already placed in this batch (at least
    ``min_colocate_blocks``) among those under ``max_per_replica`` and ``max_share``,
    else the least loaded (ties: load, running requests, name); members beyond
    ``max_per_replica`` spill to the next least loaded. Load grows by the members placed,
    or (``tokens``) by the unit's blocks minus those already placed there, once per
    replica the unit touches.
    """
    out: list[str | None] = [None] * len(entries)
    groups: dict[tuple[int, ...], list[int]] = {}
    replicas: Sequence[Replica] = ()
    for i, entry in enumerate(entries):
        if not entry.hashes:
            continue
        groups.setdefault(entry.hashes, []).append(i)
        if not replicas:
            replicas = entry.replicas
    if not replicas:
        return out
    shared: set[tuple[int, ...]] = set()
    if min_colocate_blocks > 0:
        count: dict[tuple[int, ...], int] = {}
        for key, members in groups.items():
            if len(key) >= min_colocate_blocks:
                sig = key[:min_colocate_blocks]
                count[sig] = count.get(sig, 0) + len(members)
        shared = {
            key
            for key in groups
            if len(key) >= min_colocate_blocks and count[key[:min_colocate_blocks]] >= 2
        }
    group_units = [key for key, members in groups.items() if len(members) >= 2]
    single_units = [key for key, members in groups.items() if len(members) == 1 and key in shared]
    if not group_units and not single_units:
        return out
    # Longest prefix first within each tier (stable): shorter units then match against
    # the richest set of placed blocks.
    group_units.sort(key=len, reverse=True)
    single_units.sort(key=len, reverse=True)
    tokens = balance_by == BALANCE_TOKENS
    units = group_units + single_units
    total = sum(len(key) if tokens else len(groups[key]) for key in units)
    max_share = -(-total // len(replicas))
    placement = _Placement(replicas, max_per_replica, min_colocate_blocks, max_share, tokens)
    for key in units:
        placement.place(groups[key], key, out)
    return out


# ====================================================================== producer
class BurstBatchFullError(PluginError):
    """The open batch already holds ``maxBatchSize`` requests (llm-d-router: "burst
    prefix batch full"); the request is scheduled without this producer's data."""


class BurstProduceTimeoutError(PluginError):
    """The request's batch did not seal within ``window + 300 ms`` (llm-d-router's
    ``ProduceTimeout``); the request is scheduled without this producer's data."""


class _Pending:
    """One waiting request: its entry, its candidate rows, and (once sealed) its
    assigned replica."""

    __slots__ = ("assigned", "entry", "rows")

    def __init__(self, entry: BurstEntry, rows: npt.NDArray[np.int32]) -> None:
        self.entry = entry
        self.rows = rows
        self.assigned: str | None = None


class _Batch:
    __slots__ = ("deadline_s", "entries", "is_sealed")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.entries: list[_Pending] = []
        self.is_sealed = False


@register(PLUGIN_TYPE)
class BurstPrefixCacheProducer:
    """Collects the requests of a window, assigns them jointly (:func:`assign`) and
    writes a full prefix match on each request's assigned replica, zero elsewhere.

    Writes ``PrefixCacheMatchInfo/<name>`` (point ``prefix-cache-scorer``'s
    ``prefixMatchInfoProducerName`` at it), and the shared ``PrefixCacheMatchInfo`` only
    when no other producer has written it in this cycle: next to an
    ``approx-prefix-cache-producer`` the shared key stays the index's match.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    produces: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    consumes: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    Params = BurstPrefixParams

    def __init__(self, name: str, params: BurstPrefixParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self.key = prefix_info_key(name)
        """Where this instance's match goes: ``PrefixCacheMatchInfo/<name>``."""
        self.window_s = params.window_duration_ms / 1000.0
        self._max_blocks = params.max_blocks
        self._clock: Callable[[], float] = time.monotonic  # real time: this waits
        self._cond = threading.Condition()
        self._batch: _Batch | None = None
        self.num_batches = 0
        """Batches sealed."""
        self.num_assigned = 0
        """Requests given an affinity (an assigned replica)."""
        self.num_batch_full = 0
        """Arrivals rejected because the batch held ``maxBatchSize`` requests."""
        self.num_timeouts = 0
        """Requests that gave up waiting after :meth:`produce_timeout`."""
        self.last_batch_size = 0
        """Requests in the last sealed batch."""

    def produce_timeout(self) -> float:
        """The longest a request waits for its batch, seconds: ``window + 0.3``
        (llm-d-router ``TimeoutAwareProducer.ProduceTimeout``)."""
        return self.window_s + PRODUCE_TIMEOUT_MARGIN_S

    # ------------------------------------------------------------------ hashing
    def block_hashes(self, cycle: CycleState, request: Request) -> tuple[int, ...]:
        """The request's chained block hashes (llm-d-router's token-id scheme, every
        prompt of the ``TokenizedRequest`` hashed on its own, then concatenated); the
        request's own token ids when no tokenized request is in the cycle; () without ids."""
        tokenized = read_tokenized(cycle)
        prompts: Sequence[npt.NDArray[np.uint32]]
        if tokenized is not None and tokenized.token_count() > 0:
            prompts = tokenized.prompts
        else:
            ids = request_token_ids(request, cycle)
            prompts = (ids,) if ids is not None and len(ids) > 0 else ()
        if not prompts:
            return ()
        seed = request_seed(request.target_model, cache_salt(request))
        block = self.params.block_size_tokens
        out: list[int] = []
        for ids in prompts:
            out.extend(token_block_hashes(ids, block, seed, self._max_blocks).tolist())
        return tuple(out)

    # ------------------------------------------------------------------ batch
    def pending_requests(self) -> int:
        """Requests waiting in the open batch (0 when none is open)."""
        with self._cond:
            return 0 if self._batch is None else len(self._batch.entries)

    def seal(self) -> int:
        """Seal the open batch now instead of at the end of its window (for an embedder
        that knows the burst is complete); returns the requests released."""
        with self._cond:
            batch = self._batch
            if batch is None:
                return 0
            self._seal_locked(batch)
            return len(batch.entries)

    def _seal_locked(self, batch: _Batch) -> None:
        """Assign ``batch`` and wake its waiters; the caller holds the condition."""
        if batch.is_sealed:
            return
        batch.is_sealed = True
        if self._batch is batch:
            self._batch = None
        p = self.params
        names = assign(
            [pending.entry for pending in batch.entries],
            max_per_replica=p.max_per_replica,
            min_colocate_blocks=p.min_colocate_blocks,
            balance_by=p.balance_by,
        )
        for pending, name in zip(batch.entries, names, strict=True):
            pending.assigned = name
        self.num_batches += 1
        self.num_assigned += sum(name is not None for name in names)
        self.last_batch_size = len(batch.entries)
        self._cond.notify_all()

    def _join_and_wait(self, pending: _Pending) -> None:
        """Join the open batch (opening one if needed) and block until it is sealed.

        Raises:
            BurstBatchFullError: the open batch holds ``maxBatchSize`` requests.
            BurstProduceTimeoutError: not sealed within :meth:`produce_timeout`.
        """
        with self._cond:
            now = self._clock()
            batch = self._batch
            if batch is not None and now >= batch.deadline_s:
                self._seal_locked(batch)  # its waiters have not woken yet
                batch = None
            if batch is None:
                batch = self._batch = _Batch(now + self.window_s)
            limit = self.params.max_batch_size
            if limit != UNLIMITED and len(batch.entries) >= limit:
                self.num_batch_full += 1
                raise BurstBatchFullError(
                    f"burst prefix batch full: maxBatchSize {limit} reached",
                    plugin_type=PLUGIN_TYPE,
                    plugin_name=self.name,
                )
            batch.entries.append(pending)
            give_up_s = now + self.produce_timeout()
            while not batch.is_sealed:
                now = self._clock()
                if now >= give_up_s:  # this thread stalled past its budget: never wait on
                    self.num_timeouts += 1
                    raise BurstProduceTimeoutError(
                        f"batch not sealed within {self.produce_timeout():.3f}s",
                        plugin_type=PLUGIN_TYPE,
                        plugin_name=self.name,
                    )
                if now >= batch.deadline_s:
                    self._seal_locked(batch)
                    break
                self._cond.wait(batch.deadline_s - now)

    # ------------------------------------------------------------------ cycle
    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Hash, join the window's batch, wait for it to seal, then write the match: all
        the request's blocks on its assigned replica (if a candidate), 0 elsewhere.

        Raises:
            BurstBatchFullError: the window's batch is full.
            BurstProduceTimeoutError: the batch did not seal in time.
        """
        hashes = self.block_hashes(cycle, request)
        running = table.running
        replicas = tuple(
            Replica(table.endpoint_at(int(row)).name, float(running[row])) for row in candidates
        )
        pending = _Pending(BurstEntry(hashes, replicas), candidates)
        self._join_and_wait(pending)
        match = np.zeros(max(table.capacity, 1))  # float64, by row
        if pending.assigned is not None:
            for row, replica in zip(pending.rows, replicas, strict=True):
                if replica.name == pending.assigned:
                    match[row] = len(hashes)
                    break
            else:
                log.debug(
                    "%s: assigned replica %s is not a candidate of request %s; no affinity",
                    self.name,
                    pending.assigned,
                    request.request_id,
                )
        info = PrefixCacheMatchInfo(
            match, len(hashes), self.params.block_size_tokens, np.asarray(hashes, np.uint64)
        )
        cycle.write(self.key, info)
        if PREFIX_CACHE_MATCH_INFO not in cycle:
            cycle.write(PREFIX_CACHE_MATCH_INFO, info)


_producer: type[DataProducer] = BurstPrefixCacheProducer
