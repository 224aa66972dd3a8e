"""Prefix-cache affinity (GIE ``gateway-api-inference-extension``:
``pkg/epp/framework/plugins/scheduling/scorer/prefix/plugin.go``; llm-d-router).

* ``approx-prefix-cache-producer`` hashes the request's prompt into chained blocks,
  matches them against its :class:`~inference_sched.prefix.index.PrefixIndex` and writes
  :class:`PrefixCacheMatchInfo` to the cycle; PreRequest queues the blocks as cached on
  the primary pick (and on the ``prefill`` profile's pick), ``run_deferred`` applies them.
* ``prefix-cache-scorer`` turns the match into ``matched / total`` blocks per candidate.
* ``prefix-cache-affinity-filter`` keeps the candidates whose match clears a threshold.
* ``no-hit-lru-scorer`` (llm-d) spreads cold requests (no candidate holds any block)
  over the least recently used endpoints.

All four meet through the cycle key ``PrefixCacheMatchInfo``; config loading creates the
producer when a profile consumes the key and nobody produces it, with the parameters
placed on ``prefix-cache-scorer`` (GIE's documentation puts them there).

With a ``redis`` parameter the producer shares its index with the pool's other scheduler
replicas (:mod:`inference_sched.state.redis`, ``docs/redis.md``).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    NO_HASHES,
    PREFIX_CACHE_MATCH_INFO,
    PrefixCacheMatchInfo,
    cache_salt,
    first_picks,
    prefix_info_key,
    read_latency_info,
    read_prefix_info,
)
from inference_sched.framework.interfaces import (
    DataProducer,
    DeferredWork,
    Filter,
    Handle,
    PreRequest,
    Scorer,
)
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.kernels import scoring
from inference_sched.params import (
    ParamCheck,
    at_least,
    boolean,
    in_range,
    integer,
    one_of,
    param,
    string,
)
from inference_sched.prefix.hashing import BYTES_PER_TOKEN, block_hashes, token_block_hashes
from inference_sched.prefix.index import PrefixIndex
from inference_sched.state.redis import RedisPrefixIndex, RedisPrefixParams, Unavailable
from inference_sched.state.redis.params import redis_field, redis_forwarded
from inference_sched.state.table import EndpointTable

__all__ = [
    "MATCH_LENGTH_BUCKETS",
    "ApproxPrefixCacheProducer",
    "NoHitLruScorer",
    "PrefixCacheAffinityFilter",
    "PrefixCacheScorer",
]

log = logging.getLogger(__name__)

PRODUCER_TYPE: Final = "approx-prefix-cache-producer"

MATCH_LENGTH_BUCKETS: Final = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, math.inf)
"""Upper bounds (inclusive, in blocks) of the producer's per-request match histogram."""

_WARN_INTERVAL_S: Final = 60.0
_MAX_PENDING: Final = 64
"""Queued index updates past which PreRequest applies them itself."""
_MAX_LRU_CAPACITY: Final = 2**31 - 1


# ====================================================================== producer
DEFAULT_BLOCK_SIZE_TOKENS: Final = 16
MAX_BLOCK_SIZE_TOKENS: Final = 65536
"""Largest block size accepted, configured or scraped (vLLM's are 16 to 256 tokens)."""

_LEGACY_BLOCK_SIZE: Final = (
    "deprecated: characters per block, ignored; blockSizeTokens (tokens, 4 characters "
    "each) sets the block size"
)


@attrs.frozen
class ApproxPrefixCacheProducerParams:
    """Parameters of ``approx-prefix-cache-producer`` (GIE's keys and defaults)."""

    auto_tune: bool = param(True, alias="autoTune", check=boolean)
    """Take the block size and LRU capacity from the endpoints' cache metrics when known."""
    block_size_tokens: int = param(
        DEFAULT_BLOCK_SIZE_TOKENS,
        alias="blockSizeTokens",
        check=integer,
    )
    """Tokens per hashed block (4 bytes each) when not auto-tuned, and while no endpoint
    reports its block size; 0 (GIE: only with autoTune) means "the endpoints' block size",
    with 16 until one reports it."""
    max_prefix_blocks_to_match: int = param(256, alias="maxPrefixBlocksToMatch", check=at_least(0))
    """Longest prefix hashed and matched, in blocks."""
    max_prefix_tokens_to_match: int = param(0, alias="maxPrefixTokensToMatch", check=at_least(0))
    """When > 0, overrides maxPrefixBlocksToMatch: this many tokens // block size."""
    lru_capacity_per_server: int = param(31250, alias="lruCapacityPerServer", check=at_least(1))
    """Blocks remembered per endpoint when its num_gpu_blocks is unknown or autoTune is off."""
    match_mode: str = param("counting", alias="matchMode", check=one_of("counting", "prefix"))
    """Ours: 'counting' (GIE) or 'prefix' (each endpoint's own consecutive leading run)."""
    block_size: int = param(0, alias="blockSize", check=integer, deprecated=_LEGACY_BLOCK_SIZE)
    """Deprecated (GIE): characters per block; ignored."""
    hash_block_size: int = param(
        0, alias="hashBlockSize", check=integer, deprecated=_LEGACY_BLOCK_SIZE
    )
    """Deprecated (GIE v1.0 scorer key): characters per block; ignored."""
    # redis_field returns an attrs field specifier, as param() does (RUF009 cannot tell).
    redis: RedisPrefixParams | None = redis_field(RedisPrefixParams)  # noqa: RUF009
    """Ours: share the index with the pool's other scheduler replicas through Redis, an
    object {address, namespace, timeoutMs, endpointTtlMs} (docs/redis.md); absent: in-process."""

    def __attrs_post_init__(self) -> None:
        # GIE's validation (scorer/prefix/plugin.go): the migration guard first, then autoTune.
        if (self.block_size > 0 or self.hash_block_size > 0) and self.block_size_tokens <= 0:
            raise ParamCheck(
                "blockSizeTokens",
                "int >= 1 when the deprecated blockSize/hashBlockSize (characters) is set; "
                "give the block size in tokens",
                self.block_size_tokens,
            )
        if not self.auto_tune and self.block_size_tokens <= 0:
            raise ParamCheck(
                "blockSizeTokens", "int >= 1 when autoTune is false", self.block_size_tokens
            )
        if not 0 <= self.block_size_tokens <= MAX_BLOCK_SIZE_TOKENS:
            raise ParamCheck(
                "blockSizeTokens", f"int in [0, {MAX_BLOCK_SIZE_TOKENS}]", self.block_size_tokens
            )


class _PrefixState(NamedTuple):
    """What PrepareRequestData leaves in the cycle for PreRequest (a tuple: built on
    every decision)."""

    hashes: npt.NDArray[np.uint64]
    info: PrefixCacheMatchInfo


@register(PRODUCER_TYPE, default_producer_for=(PREFIX_CACHE_MATCH_INFO,))
class ApproxPrefixCacheProducer:
    """Approximate prefix cache: chained block hashes matched against an index of what
    the scheduler routed where.

    Design note: the index is *optimistic*, as GIE's: PreRequest assumes every routed
    prompt becomes cached on the pick, and nothing corrects it from the model server.
    Per-endpoint LRUs are bounded (capacity: the endpoint's ``num_gpu_blocks`` when
    auto-tuned and known, else ``lruCapacityPerServer``). The index is only safe with one
    writer and no concurrent reader, so every index call holds ``self._lock`` (a few
    hundred nanoseconds against tens of microseconds of hashing and matching).

    PreRequest does not touch the index: like GIE, which adds the blocks in a goroutine,
    it queues the update, and :meth:`run_deferred` (``Scheduler.run_deferred``) applies
    it once the answer is out. Unlike GIE it never races: the next match, an endpoint
    removal and :attr:`index` apply whatever is still queued first, so every decision
    sees every earlier pick, whether or not the embedder calls ``run_deferred``. An
    update costs more than the rest of the decision with a large index (cache misses
    on evictions and LRU moves), so this is what keeps it off the gateway's wait.

    With ``redis`` set, the index is shared (:class:`~inference_sched.state.redis.
    RedisPrefixIndex`, keyed by endpoint name) and the local index becomes a
    write-through copy: every update goes to both, a match asks Redis (the queued
    updates travel in the same round trip) and falls back to the local copy when Redis
    does not answer within ``timeoutMs`` (this replica's own picks only: the in-process
    behaviour). A table removal drops the local entries only; the shared ones expire
    once no replica has the endpoint (``endpointTtlMs``).
    """

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    consumes: ClassVar[frozenset[str]] = frozenset()
    Params = ApproxPrefixCacheProducerParams

    def __init__(self, name: str, params: ApproxPrefixCacheProducerParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._table = handle.table
        self._state_key = f"{PRODUCER_TYPE}/{name}"
        self._info_key = prefix_info_key(name)
        self._counting = params.match_mode == "counting"
        self._untuned_warned_s = -math.inf
        self._lock = threading.Lock()
        self._index = PrefixIndex()
        # PreRequest's index updates, applied by run_deferred or before the next match:
        # (hashes, row, LRU capacity) in pick order.
        self._pending: list[tuple[npt.NDArray[np.uint64], int, int]] = []
        self.hit_bytes = 0
        """Cumulative estimated bytes of prompt found cached on the primary pick."""
        self.total_bytes = 0
        """Cumulative estimated bytes of prompt hashed (requests that got a primary pick)."""
        self.last_match_blocks = 0
        """Blocks of the last request found on its primary pick."""
        self._histogram = [0] * len(MATCH_LENGTH_BUCKETS)
        self._table.on_remove(self._on_remove)
        # The shared index's queued updates, by endpoint name (a table removal does not
        # cancel them: the pick happened, and other replicas may still route there).
        self._remote_pending: list[tuple[npt.NDArray[np.uint64], str, int]] = []
        self.shared: RedisPrefixIndex | None = None
        """The shared index when ``redis`` is set (inspection, ``forget_endpoint``)."""
        if params.redis is not None:
            self.shared = RedisPrefixIndex.connect(params.redis, self._table_names)

    def _table_names(self) -> list[str]:
        with self._table.lock:
            return [endpoint.name for endpoint in self._table]

    def close(self) -> None:
        """Stop the shared index's maintenance thread and close its connections (no-op
        in-process). The shared entries stay for the other replicas."""
        if self.shared is not None:
            self.shared.close()

    # ------------------------------------------------------------------ cycle
    def block_size_tokens(self, table: EndpointTable, candidates: Candidates) -> int:
        """Effective block size: the first candidate's cache block size when auto-tuned
        and known (> 0), else ``blockSizeTokens``."""
        if self.params.auto_tune and len(candidates) > 0:
            scraped = float(table.block_size_tokens[candidates[0]])
            if 0 < scraped <= MAX_BLOCK_SIZE_TOKENS:
                return int(scraped)
        if self.params.block_size_tokens > 0:
            return self.params.block_size_tokens
        self._warn_untuned()
        return DEFAULT_BLOCK_SIZE_TOKENS

    def _warn_untuned(self) -> None:
        now = time.monotonic()
        if now - self._untuned_warned_s >= _WARN_INTERVAL_S:
            self._untuned_warned_s = now
            log.warning(
                "%s: blockSizeTokens is 0 (auto-tune) but the candidates report no cache "
                "block size; hashing with %d tokens per block until they do",
                self.name,
                DEFAULT_BLOCK_SIZE_TOKENS,
            )

    def max_blocks(self, block_size_tokens: int) -> int:
        """``maxPrefixTokensToMatch // block size`` when set, else ``maxPrefixBlocksToMatch``."""
        tokens = self.params.max_prefix_tokens_to_match
        if tokens > 0:
            return tokens // block_size_tokens if block_size_tokens > 0 else 0
        return self.params.max_prefix_blocks_to_match

    def hashes(self, request: Request, block_size_tokens: int) -> npt.NDArray[np.uint64]:
        """The request's chained block hashes: over its token ids when it has some, else
        over its prompt bytes; none without either (what the match hashes)."""
        max_blocks = self.max_blocks(block_size_tokens)
        if block_size_tokens <= 0 or max_blocks <= 0:
            return NO_HASHES
        salt = cache_salt(request)
        model = request.target_model
        if request.token_ids is not None and len(request.token_ids) > 0:
            return token_block_hashes(request.token_ids, model, salt, block_size_tokens, max_blocks)
        if request.prompt:
            return block_hashes(request.prompt, model, salt, block_size_tokens, max_blocks)
        return NO_HASHES

    def _hash_and_match(
        self, request: Request, block_size_tokens: int, counts: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.uint64]:
        """:meth:`hashes` and the match into ``counts``, fused (one kernel call)."""
        max_blocks = self.max_blocks(block_size_tokens)
        if block_size_tokens <= 0 or max_blocks <= 0:
            return NO_HASHES
        if self.shared is not None:
            return self._shared_match(request, block_size_tokens, counts)
        salt = cache_salt(request)
        model = request.target_model
        strict = not self._counting
        tokens = request.token_ids
        prompt = request.prompt
        with self._lock:
            if self._pending:
                self._apply_pending()
            if tokens is not None and len(tokens) > 0:
                return self._index.match_tokens(
                    tokens, model, salt, block_size_tokens, max_blocks, counts, strict=strict
                )
            if prompt:
                return self._index.match_prompt(
                    prompt, model, salt, block_size_tokens, max_blocks, counts, strict=strict
                )
        return NO_HASHES

    def _shared_match(
        self, request: Request, block_size_tokens: int, counts: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.uint64]:
        """Hash locally, match in Redis (queued updates first, same round trip); the
        local copy answers when Redis does not."""
        assert self.shared is not None
        hashes = self.hashes(request, block_size_tokens)
        strict = not self._counting
        with self._lock:
            if self._pending:
                self._apply_pending()
            remote, self._remote_pending = self._remote_pending, []
            if len(hashes) == 0 and not remote:
                return hashes
            try:
                matched = self.shared.add_and_match(remote, hashes, strict=strict)
            except Unavailable:
                if len(hashes) > 0:
                    if strict:
                        self._index.match_prefix(hashes, counts)
                    else:
                        self._index.match_counting(hashes, counts)
                return hashes
        table = self._table
        for name, count in matched.items():
            if name in table:  # names other replicas know and this one does not: skip
                counts[table.row(name)] = count
        return hashes

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Hash the prompt, match it, write ``PrefixCacheMatchInfo`` (counts by row)."""
        block_tokens = self.block_size_tokens(table, candidates)
        counts = np.zeros(max(table.capacity, 1))  # float64
        hashes = self._hash_and_match(request, block_tokens, counts)
        info = PrefixCacheMatchInfo(counts, len(hashes), block_tokens, hashes)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
        cycle.write(self._info_key, info)
        cycle.write(self._state_key, _PrefixState(hashes, info))

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Queue the request's blocks as cached on the primary (and ``prefill``) pick
        (applied by :meth:`run_deferred`), and record the primary pick's hit."""
        state = cycle.read(self._state_key)
        if not isinstance(state, _PrefixState):
            return
        cycle.delete(self._state_key)
        picks = first_picks(result)
        if not picks:
            return
        table = self._table
        info = state.info
        primary_row = picks[0][0]
        matched = int(info.match_blocks[primary_row]) if primary_row < len(info.match_blocks) else 0
        with self._lock:
            if len(state.hashes) > 0:
                for row, endpoint in picks:
                    if table.endpoint_or_none(row) is not endpoint:
                        continue  # removed (or its row reused) since the pick
                    capacity = self._capacity(row)
                    self._pending.append((state.hashes, row, capacity))
                    if self.shared is not None:
                        self._remote_pending.append((state.hashes, endpoint.name, capacity))
                if len(self._pending) >= _MAX_PENDING:
                    self._apply_pending()  # nobody runs the deferred work: bound the queue
                    self._flush_remote()
            if info.total_blocks > 0:
                block_bytes = info.block_size_tokens * BYTES_PER_TOKEN
                self.hit_bytes += matched * block_bytes
                self.total_bytes += info.total_blocks * block_bytes
                self.last_match_blocks = matched
                self._histogram[bisect.bisect_left(MATCH_LENGTH_BUCKETS, matched)] += 1

    def _capacity(self, row: int) -> int:
        if self.params.auto_tune:
            blocks = float(self._table.kv_blocks_total[row])
            if blocks >= 1:
                return min(int(blocks), _MAX_LRU_CAPACITY)
        return min(self.params.lru_capacity_per_server, _MAX_LRU_CAPACITY)

    def run_deferred(self) -> None:
        """Apply the queued index updates (GIE's asynchronous ``indexer.Add``); with
        ``redis``, to the shared index too, in one round trip."""
        if self._pending or self._remote_pending:
            with self._lock:
                self._apply_pending()
                self._flush_remote()

    def _apply_pending(self) -> None:
        """Apply the queue in pick order; the caller holds the lock."""
        pending, self._pending = self._pending, []
        for hashes, row, capacity in pending:
            self._index.add(hashes, row, capacity)

    def _flush_remote(self) -> None:
        """Send the shared index's queue (lost if Redis does not answer: the local copy
        has it); the caller holds the lock."""
        if self.shared is None or not self._remote_pending:
            return
        remote, self._remote_pending = self._remote_pending, []
        with contextlib.suppress(Unavailable):  # counted by the link; the local copy has it
            self.shared.add_many(remote)

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        with self._lock:
            self._apply_pending()  # queued updates name the row: apply, then drop it all
            self._index.remove_endpoint(row)

    @property
    def index(self) -> PrefixIndex:
        """The block index, every queued update applied (tests, metrics, inspection);
        with ``redis``, this replica's local copy (:attr:`shared` is the shared one).

        Read it when no decision is running: the index itself is not locked.
        """
        self.run_deferred()
        return self._index

    # ------------------------------------------------------------------ metrics
    def index_size(self) -> int:
        """(hash, endpoint) entries in the index (GIE ``prefix_indexer_size``), every
        queued update applied."""
        with self._lock:
            self._apply_pending()
            return self._index.size()

    def hit_ratio(self) -> float:
        """Cumulative hit bytes / hashed bytes on primary picks (GIE
        ``prefix_indexer_hit_ratio``); 0 before any request with blocks."""
        return self.hit_bytes / self.total_bytes if self.total_bytes else 0.0

    def match_length_histogram(self) -> dict[float, int]:
        """Cumulative count of requests (with >= 1 block) per matched-block upper bound,
        Prometheus style: ``{le: requests with match <= le}``."""
        cumulative = itertools.accumulate(self._histogram)
        return dict(zip(MATCH_LENGTH_BUCKETS, cumulative, strict=True))


_producer: type[DataProducer] = ApproxPrefixCacheProducer
_producer_pre: type[PreRequest] = ApproxPrefixCacheProducer
_producer_deferred: type[DeferredWork] = ApproxPrefixCacheProducer


# ====================================================================== scorer
def _optional(check: Any) -> Any:
    def run(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(inst, attribute, value)

    return run


def _forwarded(key: str, check: Any) -> Any:
    return param(None, alias=key, check=_optional(check))


@attrs.frozen
class PrefixCacheScorerParams:
    """Producer parameters placed on the scorer, as GIE's documentation places them.

    None is used by the scorer itself. When config loading creates the default
    ``approx-prefix-cache-producer`` for this scorer, it builds it with the keys given
    here (see :meth:`producer_parameters`); when a producer is declared, they are ignored
    with a warning.
    """

    auto_tune: bool | None = _forwarded("autoTune", boolean)
    """For the auto-created producer: autoTune."""
    block_size_tokens: int | None = _forwarded("blockSizeTokens", integer)
    """For the auto-created producer: blockSizeTokens."""
    max_prefix_blocks_to_match: int | None = _forwarded("maxPrefixBlocksToMatch", integer)
    """For the auto-created producer: maxPrefixBlocksToMatch."""
    max_prefix_tokens_to_match: int | None = _forwarded("maxPrefixTokensToMatch", integer)
    """For the auto-created producer: maxPrefixTokensToMatch."""
    lru_capacity_per_server: int | None = _forwarded("lruCapacityPerServer", integer)
    """For the auto-created producer: lruCapacityPerServer."""
    match_mode: str | None = _forwarded("matchMode", string)
    """For the auto-created producer: matchMode."""
    block_size: int | None = _forwarded("blockSize", integer)
    """For the auto-created producer: the deprecated blockSize (characters)."""
    hash_block_size: int | None = _forwarded("hashBlockSize", integer)
    """For the auto-created producer: the deprecated v1.0 hashBlockSize (characters)."""
    redis: Mapping[str, Any] | None = redis_forwarded(RedisPrefixParams)
    """For the auto-created producer: redis (ours; docs/redis.md)."""
    prefix_match_info_producer_name: str | None = _forwarded("prefixMatchInfoProducerName", string)
    """The scorer's own (llm-d-router): the producer plugin whose ``PrefixCacheMatchInfo``
    it reads (None or "": the cycle's shared one, whichever producer wrote it)."""

    def producer_parameters(self) -> dict[str, Any]:
        """The keys given here, by GIE key, as ``approx-prefix-cache-producer`` takes them."""
        return {
            a.alias or a.name: getattr(self, a.name)
            for a in attrs.fields(type(self))
            if a.name not in _SCORER_OWN and getattr(self, a.name) is not None
        }

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, the data key that
        plugin must produce)."""
        name = self.prefix_match_info_producer_name
        return {"prefixMatchInfoProducerName": (name, PREFIX_CACHE_MATCH_INFO)} if name else {}


_SCORER_OWN: Final = frozenset({"prefix_match_info_producer_name"})


@register("prefix-cache-scorer")
class PrefixCacheScorer:
    """Scores ``match_blocks / total_blocks`` from the cycle's ``PrefixCacheMatchInfo``.

    With ``prefixMatchInfoProducerName``, the match that producer wrote under its own key
    (``PrefixCacheMatchInfo/<name>``; config loading checks it names a producer of
    ``PrefixCacheMatchInfo``); a producer that writes only the shared key is read
    there. 0 for every candidate when the request has no blocks, and when no producer
    wrote the data (logged at most once a minute).
    """

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    Params = PrefixCacheScorerParams

    def __init__(self, name: str, params: PrefixCacheScorerParams, handle: Handle) -> None:
        self.name = name
        self.producer_name = params.prefix_match_info_producer_name or ""
        """The producer read (``prefixMatchInfoProducerName``; "": the shared key)."""
        self._key = prefix_info_key(self.producer_name) if self.producer_name else None
        self._clock = handle.clock
        self._last_warning_s = -math.inf

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Matched fraction of the request's prefix blocks per candidate."""
        info = None if self._key is None else cycle.read(self._key)
        if info is None:  # unnamed, or a producer that writes only the shared key
            info = cycle.read(PREFIX_CACHE_MATCH_INFO)
        n = len(candidates)
        if not isinstance(info, PrefixCacheMatchInfo):
            self._warn_missing(info)
            out[:n] = 0.0
            return
        if info.total_blocks <= 0:
            out[:n] = 0.0
            return
        scoring.divided(info.match_blocks, candidates, float(info.total_blocks), out)

    def _warn_missing(self, info: object) -> None:
        now = self._clock()
        if now - self._last_warning_s < _WARN_INTERVAL_S:
            return
        self._last_warning_s = now
        if info is None:
            log.warning(
                "%s: no %s in the cycle (is a prefix producer configured?); scoring 0",
                self.name,
                PREFIX_CACHE_MATCH_INFO,
            )
        else:
            log.warning(
                "%s: %s holds %s, not PrefixCacheMatchInfo; scoring 0",
                self.name,
                PREFIX_CACHE_MATCH_INFO,
                type(info).__name__,
            )


_prefix_cache_scorer: type[Scorer] = PrefixCacheScorer


# ====================================================================== filter
@register("prefix-cache-affinity-filter")
class PrefixCacheAffinityFilter:
    """Keeps the candidates holding at least ``affinityThreshold`` of the prefix
    (none do: all); skipped with probability ``explorationProbability``.

    TTFT gate (GIE): when ``maxTTFTPenaltyMs > 0``, a ``LatencyPredictionInfo`` with
    predictions is in the cycle (``predicted-latency-producer``) and some candidates are
    not sticky, all candidates are kept if the best predicted TTFT among the sticky ones
    exceeds the best among the others by more than ``maxTTFTPenaltyMs``. The filter does
    not declare the prediction in ``consumes``: without a producer it works as before."""

    type: ClassVar[str]
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})

    @attrs.frozen
    class Params:
        """Parameters of ``prefix-cache-affinity-filter``."""

        affinity_threshold: float = param(0.80, alias="affinityThreshold", check=in_range(0, 1))
        """Prefix score (matched / total blocks) an endpoint needs to be sticky; 0 disables."""
        exploration_probability: float = param(
            0.01, alias="explorationProbability", check=in_range(0, 1)
        )
        """Probability of skipping the filter for a request (explore non-sticky endpoints)."""
        max_ttft_penalty_ms: float = param(
            5000.0, alias="maxTTFTPenaltyMs", check=at_least(0, kind="number")
        )
        """Keep all candidates when sticking costs more than this predicted TTFT (ms);
        0 disables the gate, which also needs predicted-latency-producer."""

    def __init__(self, name: str, params: PrefixCacheAffinityFilter.Params, handle: Handle) -> None:
        self.name = name
        self._threshold = float(params.affinity_threshold)
        self._explore = float(params.exploration_probability)
        self._max_penalty_ms = float(params.max_ttft_penalty_ms)

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Sticky candidates (score >= threshold), or all of them."""
        if len(candidates) <= 1 or self._threshold <= 0:
            return candidates
        if self._explore > 0 and cycle.rng.random() < self._explore:
            return candidates
        info = read_prefix_info(cycle)
        if info is None or info.total_blocks <= 0:
            return candidates  # every score is 0: nobody is sticky
        sticky = info.match_blocks[candidates] / info.total_blocks >= self._threshold
        if not sticky.any():
            return candidates
        if (
            self._max_penalty_ms > 0
            and not sticky.all()
            and self._ttft_penalty_too_high(cycle, candidates, sticky)
        ):
            return candidates
        return candidates[sticky]

    def _ttft_penalty_too_high(
        self, cycle: CycleState, candidates: Candidates, sticky: npt.NDArray[np.bool_]
    ) -> bool:
        """``bestTTFT(sticky) - bestTTFT(others) > maxTTFTPenaltyMs`` (no prediction: no)."""
        latency = read_latency_info(cycle)
        if latency is None or not latency.has_prediction:
            return False
        ttft = latency.ttft_ms[candidates]
        best_sticky = float(ttft[sticky].min())
        best_other = float(ttft[~sticky].min())
        return best_sticky - best_other > self._max_penalty_ms


_affinity_filter: type[Filter] = PrefixCacheAffinityFilter


# ====================================================================== no-hit LRU
@register("no-hit-lru-scorer")
class NoHitLruScorer:
    """llm-d: spreads cold requests (no candidate holds a block) over the least recently
    used endpoints; a warm request scores 0.5 everywhere."""

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Distribution"
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})

    @attrs.frozen
    class Params:
        """Parameters of ``no-hit-lru-scorer``."""

        prefix_plugin_type: str = param(
            "prefix-cache-scorer", alias="prefixPluginType", check=string
        )
        """llm-d: the prefix plugin whose state says cold/warm; here informational (the
        match is read from the cycle's PrefixCacheMatchInfo)."""
        prefix_plugin_name: str = param(
            "prefix-cache-scorer", alias="prefixPluginName", check=string
        )
        """llm-d: the prefix plugin's instance name; informational, as prefixPluginType."""
        lru_size: int = param(1024, alias="lruSize", check=at_least(1))
        """Endpoints remembered as used; beyond it the least recently used is forgotten."""

    def __init__(self, name: str, params: NoHitLruScorer.Params, handle: Handle) -> None:
        self.name = name
        self._table = handle.table
        self._size = params.lru_size
        self._cold_key = f"no-hit-lru-scorer/{name}"
        self._lock = threading.Lock()
        # row -> use stamp (increasing), least recently used first; the stamp gives a
        # candidate's LRU position without walking the list. Rows, not names: the table's
        # removal listener drops a row before it can be reused.
        self._lru: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._stamp = 0
        self._table.on_remove(self._on_remove)

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """0.5 each for a warm request; else ``1 - rank / (N - 1)`` with never-used
        endpoints first (input order), then used ones from least to most recent."""
        n = len(candidates)
        info = read_prefix_info(cycle)
        if (
            info is not None
            and info.total_blocks > 0
            and bool((info.match_blocks[candidates] > 0).any())
        ):
            out[:n] = 0.5
            return
        cycle.write(self._cold_key, True)
        if n == 1:
            out[0] = 1.0
            return
        rows = candidates.tolist()
        with self._lock:
            stamps = [self._lru.get(row) for row in rows]
        unused = [i for i, stamp in enumerate(stamps) if stamp is None]
        used = sorted(
            (i for i, stamp in enumerate(stamps) if stamp is not None),
            key=lambda i: stamps[i] or 0,
        )
        for rank, i in enumerate(unused + used):
            out[i] = 1.0 - rank / (n - 1)

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """For a cold request, move the primary (and ``prefill``) pick to most recent."""
        if cycle.read(self._cold_key) is not True:
            return
        with self._lock:
            for row, endpoint in first_picks(result):
                if self._table.endpoint_or_none(row) is not endpoint:
                    continue
                self._stamp += 1
                self._lru[row] = self._stamp
                self._lru.move_to_end(row)
                while len(self._lru) > self._size:
                    self._lru.popitem(last=False)

    def lru_rows(self) -> list[int]:
        """Remembered rows, least recently used first (for tests and debugging)."""
        with self._lock:
            return list(self._lru)

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        with self._lock:
            self._lru.pop(row, None)


_no_hit_scorer: type[Scorer] = NoHitLruScorer
_no_hit_pre: type[PreRequest] = NoHitLruScorer
