"""Prefix-cache affinity (llm-d-router ``dataproducer/approximateprefix/plugin.go``,
``scorer/prefix/plugin.go``, ``filter/prefixcacheaffinity/plugin.go``; docs/plugins/).

* ``approx-prefix-cache-producer`` hashes the tokenized prompts into chained blocks,
  matches them against its :class:`~inference_sched.prefix.index.PrefixIndex` and writes
  :class:`PrefixCacheMatchInfo`; PreRequest queues the blocks as cached on the primary
  (and ``prefill``) pick, ``run_deferred`` applies them.
* ``prefix-cache-scorer`` scores the match; ``prefix-cache-affinity-filter`` keeps the
  candidates whose match clears a threshold; ``no-hit-lru-scorer`` (llm-d) spreads cold
  requests over the least recently used endpoints. ``multicluster-*`` are aliases.

They meet through the cycle key ``PrefixCacheMatchInfo`` (and ``…/<producer>``); config
loading creates a missing producer (producer keys on the scorer go to it). ``redis``
shares the index (docs/redis.md)."""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import logging
import math
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    IN_FLIGHT_LOAD,
    LATENCY_PREDICTION_INFO,
    NO_HASHES,
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    LatencyPredictionInfo,
    PrefixCacheMatchInfo,
    cache_salt,
    first_picks,
    prefix_info_key,
    read_prefix_info,
    read_tokenized,
    request_token_ids,
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
from inference_sched.prefix.hashing import (
    BYTES_PER_TOKEN,
    pack_prompt_bytes,
    request_seed,
    token_block_hashes,
)
from inference_sched.prefix.index import PrefixIndex
from inference_sched.state.redis import RedisPrefixIndex, RedisPrefixParams, Unavailable
from inference_sched.state.redis.params import redis_field, redis_forwarded
from inference_sched.state.table import EndpointTable

__all__ = [
    "MATCH_LENGTH_BUCKETS",
    "ApproxPrefixCacheProducer",
    "MulticlusterApproxPrefixCacheProducer",
    "MulticlusterPrefixCacheScorer",
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
MIN_BLOCK_SIZE_TOKENS: Final = 64
"""llm-d-router's request-time floor on the block size (``minBlockSizeTokens``)."""
MAX_BLOCK_SIZE_TOKENS: Final = 65536
"""Largest block size accepted, configured or scraped (vLLM's are 16 to 256 tokens)."""
DEFAULT_LRU_CAPACITY: Final = 31250
"""Blocks remembered per endpoint when neither autoTune nor lruCapacityPerServer says."""
UNLIMITED_BLOCKS: Final = 2**62
"""The block cap when maxPrefixTokensToMatch and maxPrefixBlocksToMatch are both 0."""

_LEGACY_BLOCK_SIZE: Final = (
    "deprecated: use blockSizeTokens; while blockSizeTokens is at its default (16) this "
    "value becomes blockSizeTokens (taken as tokens)"
)


@attrs.frozen
class ApproxPrefixCacheProducerParams:
    """Parameters of ``approx-prefix-cache-producer`` (llm-d-router's keys and defaults)."""

    auto_tune: bool = param(True, alias="autoTune", check=boolean)
    """Take the block size and LRU capacity from the endpoints' cache metrics when known."""
    block_size_tokens: int = param(
        DEFAULT_BLOCK_SIZE_TOKENS, alias="blockSizeTokens", check=integer
    )
    """Tokens per hashed block when not auto-tuned, and while no endpoint reports its
    block size; raised to 64 at request time (a startup warning says so when < 64)."""
    max_prefix_blocks_to_match: int = param(
        2048,
        alias="maxPrefixBlocksToMatch",
        check=at_least(0),
        deprecated="deprecated: use maxPrefixTokensToMatch, which wins when > 0",
    )
    """Deprecated: longest prefix hashed, in blocks, used only when maxPrefixTokensToMatch
    is 0; both 0: unlimited."""
    max_prefix_tokens_to_match: int = param(
        131072, alias="maxPrefixTokensToMatch", check=at_least(0)
    )
    """When > 0, the longest prefix hashed: this many tokens // block size blocks."""
    lru_capacity_per_server: int = param(
        DEFAULT_LRU_CAPACITY, alias="lruCapacityPerServer", check=at_least(0)
    )
    """Blocks remembered per endpoint when autoTune is off or its num_gpu_blocks is
    unknown; 0: 31250."""
    match_mode: str = param("counting", alias="matchMode", check=one_of("counting", "prefix"))
    """Ours: 'counting' (GIE) or 'prefix' (each endpoint's own consecutive leading run)."""
    block_size: int = param(0, alias="blockSize", check=integer, deprecated=_LEGACY_BLOCK_SIZE)
    """Deprecated: when > 0 and blockSizeTokens is 16, becomes blockSizeTokens."""
    # redis_field returns an attrs field specifier, as param() does (RUF009 cannot tell).
    redis: RedisPrefixParams | None = redis_field(RedisPrefixParams)  # noqa: RUF009
    """Ours: share the index with the pool's other scheduler replicas through Redis, an
    object {address, namespace, timeoutMs, endpointTtlMs} (docs/redis.md); absent: in-process."""

    @property
    def configured_block_size_tokens(self) -> int:
        """blockSizeTokens after llm-d-router's mapping of the deprecated blockSize."""
        if self.block_size > 0 and self.block_size_tokens == DEFAULT_BLOCK_SIZE_TOKENS:
            return self.block_size
        return self.block_size_tokens

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.block_size_tokens <= MAX_BLOCK_SIZE_TOKENS:
            raise ParamCheck(
                "blockSizeTokens", f"int in [0, {MAX_BLOCK_SIZE_TOKENS}]", self.block_size_tokens
            )
        if self.block_size > MAX_BLOCK_SIZE_TOKENS:
            raise ParamCheck("blockSize", f"int <= {MAX_BLOCK_SIZE_TOKENS}", self.block_size)
        if not self.auto_tune and self.configured_block_size_tokens <= 0:
            raise ParamCheck(
                "blockSizeTokens", "int >= 1 when autoTune is false", self.block_size_tokens
            )


class _PrefixState(NamedTuple):
    """What PrepareRequestData leaves in the cycle for PreRequest."""

    per_prompt: tuple[npt.NDArray[np.uint64], ...]
    info: PrefixCacheMatchInfo


@register(PRODUCER_TYPE, default_producer_for=(PREFIX_CACHE_MATCH_INFO,))
class ApproxPrefixCacheProducer:
    """Approximate prefix cache: llm-d-router's chained token-block hashes matched
    against an index of what the scheduler routed where.

    Input: each prompt of the cycle's ``TokenizedRequest``; without one, the request's
    token ids, else its ``prompt`` bytes packed four per uint32 as the estimate backend
    packs them. Each prompt's chain starts at the seed; matched and total blocks are
    summed over prompts.

    Design note: the index is *optimistic*, as GIE's: PreRequest assumes every routed
    prompt becomes cached on the pick. Every index call holds ``self._lock`` (one writer,
    no concurrent reader); hashing runs outside it. PreRequest only queues the update,
    :meth:`run_deferred` applies it once the answer is out, and the next match, an
    endpoint removal and :attr:`index` apply whatever is still queued first, so every
    decision sees every earlier pick. With ``redis`` the local index is a write-through
    copy of the shared one (keyed by endpoint name) that answers when Redis does not.
    """

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    consumes: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    Params = ApproxPrefixCacheProducerParams
    min_block_size_tokens: ClassVar[int] = MIN_BLOCK_SIZE_TOKENS
    """The request-time floor (llm-d-router keeps it a package variable tests lower)."""

    def __init__(self, name: str, params: ApproxPrefixCacheProducerParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._table = handle.table
        self._state_key = f"{self.type}/{name}"
        self._info_key = prefix_info_key(name)
        self._counting = params.match_mode == "counting"
        self._block_size_tokens = params.configured_block_size_tokens
        small = 0 < self._block_size_tokens < MIN_BLOCK_SIZE_TOKENS
        if small and self._block_size_tokens != DEFAULT_BLOCK_SIZE_TOKENS:  # default: silent
            msg = "%s: blockSizeTokens %d is below the minimum; hashing with %d tokens per block"
            log.warning(msg, name, self._block_size_tokens, MIN_BLOCK_SIZE_TOKENS)
        self._lock = threading.Lock()
        self._index = PrefixIndex()
        # PreRequest's index updates, applied by run_deferred or before the next match:
        # (hashes, row, LRU capacity) in pick order, one entry per prompt.
        self._pending: list[tuple[npt.NDArray[np.uint64], int, int]] = []
        self.hit_bytes = 0  # estimated prompt bytes found cached on primary picks
        self.total_bytes = 0  # estimated prompt bytes hashed (requests with a primary pick)
        self.last_match_blocks = 0  # blocks of the last request found on its primary pick
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
        and known (> 0), else ``blockSizeTokens``; at least :attr:`min_block_size_tokens`."""
        block = self._block_size_tokens
        if self.params.auto_tune and len(candidates) > 0:
            scraped = float(table.block_size_tokens[candidates[0]])
            if 0 < scraped <= MAX_BLOCK_SIZE_TOKENS:
                block = int(scraped)
        return max(block, self.min_block_size_tokens)

    def max_blocks(self, block_size_tokens: int) -> int:
        """``maxPrefixTokensToMatch // block size`` when set, else
        ``maxPrefixBlocksToMatch``; both 0: :data:`UNLIMITED_BLOCKS`."""
        tokens = self.params.max_prefix_tokens_to_match
        if tokens > 0 and block_size_tokens > 0:
            return tokens // block_size_tokens
        blocks = self.params.max_prefix_blocks_to_match
        return blocks if blocks > 0 else UNLIMITED_BLOCKS

    def prompts(self, cycle: CycleState, request: Request) -> tuple[npt.NDArray[np.uint32], ...]:
        """The token ids hashed, one array per non-empty prompt (see the class docs)."""
        tokenized = read_tokenized(cycle)
        if tokenized is not None:
            return tuple(p for p in tokenized.prompts if len(p) > 0)
        ids = request_token_ids(request, cycle)
        if ids is not None and len(ids) > 0:
            return (ids,)
        if request.prompt:
            return (pack_prompt_bytes(request.prompt),)
        return ()

    def hashes(
        self, cycle: CycleState, request: Request, block_size_tokens: int
    ) -> list[npt.NDArray[np.uint64]]:
        """Each prompt's chained block hashes (prompts that yield none are dropped)."""
        prompts = self.prompts(cycle, request)
        if not prompts:
            return []
        max_blocks = self.max_blocks(block_size_tokens)
        seed = request_seed(request.target_model, cache_salt(request))
        per_prompt = [token_block_hashes(p, block_size_tokens, seed, max_blocks) for p in prompts]
        return [h for h in per_prompt if len(h) > 0]

    def _match(
        self, per_prompt: list[npt.NDArray[np.uint64]], counts: npt.NDArray[np.float64]
    ) -> None:
        """Matched blocks per row into ``counts``, summed over prompts."""
        if self.shared is not None:
            self._shared_match(per_prompt, counts)
            return
        if not per_prompt:
            return
        with self._lock:
            if self._pending:
                self._apply_pending()
            self._match_local(per_prompt, counts)

    def _match_local(
        self, per_prompt: list[npt.NDArray[np.uint64]], counts: npt.NDArray[np.float64]
    ) -> None:
        """The local index's match; the caller holds the lock."""
        match = self._index.match_counting if self._counting else self._index.match_prefix
        match(per_prompt[0], counts)
        if len(per_prompt) > 1:
            scratch = np.empty_like(counts)
            for hashes in per_prompt[1:]:
                match(hashes, scratch)
                counts += scratch

    def _shared_match(
        self, per_prompt: list[npt.NDArray[np.uint64]], counts: npt.NDArray[np.float64]
    ) -> None:
        """Match in Redis (queued updates first, same round trip); the local copy
        answers when Redis does not."""
        assert self.shared is not None
        strict = not self._counting
        with self._lock:
            if self._pending:
                self._apply_pending()
            remote, self._remote_pending = self._remote_pending, []
            if not per_prompt and not remote:
                return
            try:
                answers = [
                    self.shared.add_and_match(remote if i == 0 else [], hashes, strict=strict)
                    for i, hashes in enumerate(per_prompt or [NO_HASHES])
                ]
            except Unavailable:
                if per_prompt:
                    self._match_local(per_prompt, counts)
                return
        table = self._table
        for matched in answers:
            for name, count in matched.items():
                if name in table:  # names other replicas know and this one does not: skip
                    counts[table.row(name)] += count

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Hash the prompts, match them, write ``PrefixCacheMatchInfo`` (counts by row)."""
        block_tokens = self.block_size_tokens(table, candidates)
        per_prompt = self.hashes(cycle, request, block_tokens)
        counts = np.zeros(max(table.capacity, 1))  # float64
        self._match(per_prompt, counts)
        hashes = per_prompt[0] if len(per_prompt) == 1 else NO_HASHES
        if len(per_prompt) > 1:
            hashes = np.concatenate(per_prompt)
        info = PrefixCacheMatchInfo(counts, len(hashes), block_tokens, hashes)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
        cycle.write(self._info_key, info)
        cycle.write(self._state_key, _PrefixState(tuple(per_prompt), info))

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Queue every prompt's blocks as cached on the primary (and ``prefill``) pick
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
            if state.per_prompt:
                for row, endpoint in picks:
                    if table.endpoint_or_none(row) is not endpoint:
                        continue  # removed (or its row reused) since the pick
                    capacity = self._capacity(row)
                    for hashes in state.per_prompt:
                        self._pending.append((hashes, row, capacity))
                        if self.shared is not None:
                            self._remote_pending.append((hashes, endpoint.name, capacity))
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
        """llm-d-router's ``makeserver``: num_gpu_blocks (autoTune, known), else
        lruCapacityPerServer (> 0), else 31250."""
        if self.params.auto_tune:
            blocks = float(self._table.kv_blocks_total[row])
            if blocks >= 1:
                return min(int(blocks), _MAX_LRU_CAPACITY)
        if self.params.lru_capacity_per_server > 0:
            return min(self.params.lru_capacity_per_server, _MAX_LRU_CAPACITY)
        return DEFAULT_LRU_CAPACITY

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
    """For the auto-created producer: the deprecated blockSize."""
    redis: Mapping[str, Any] | None = redis_forwarded(RedisPrefixParams)
    """For the auto-created producer: redis (ours; docs/redis.md)."""
    prefix_match_info_producer_name: str | None = _forwarded("prefixMatchInfoProducerName", string)
    """The scorer's own (llm-d-router): the producer plugin whose ``PrefixCacheMatchInfo``
    it reads (None or "": the cycle's shared one, whichever producer wrote it)."""
    match_length_weight: float | None = _forwarded("matchLengthWeight", in_range(0, 1))
    """The scorer's own (llm-d-router): weight ``w`` of the match-length term, in [0, 1];
    absent or 0 scores the matched fraction alone."""
    match_length_scale_tokens: int | None = _forwarded("matchLengthScaleTokens", integer)
    """The scorer's own (llm-d-router): matched tokens at which the match-length term
    saturates at 1 (absent: 8192); must be > 0 when matchLengthWeight > 0."""

    def __attrs_post_init__(self) -> None:
        if (self.match_length_weight or 0) > 0 and self.scale_tokens <= 0:
            raise ParamCheck(
                "matchLengthScaleTokens", "int >= 1 when matchLengthWeight > 0", self.scale_tokens
            )

    @property
    def scale_tokens(self) -> int:
        """matchLengthScaleTokens, 8192 when absent."""
        return 8192 if self.match_length_scale_tokens is None else self.match_length_scale_tokens

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


_SCORER_OWN: Final = frozenset(
    {"prefix_match_info_producer_name", "match_length_weight", "match_length_scale_tokens"}
)


@register("prefix-cache-scorer")
class PrefixCacheScorer:
    """Scores the prefix match from the cycle's ``PrefixCacheMatchInfo`` (llm-d-router
    ``scorer/prefix/plugin.go``): with ``m`` matched and ``t`` total blocks,
    ``w * min(1, m * blockSizeTokens / matchLengthScaleTokens)**2 + (1 - w) * m / t``
    (``w = matchLengthWeight``; the default 0 scores ``m / t``).

    With ``prefixMatchInfoProducerName``, the match that producer wrote under its own key
    (``PrefixCacheMatchInfo/<name>``; config loading checks it names a producer of
    ``PrefixCacheMatchInfo``); a producer that writes only the shared key is read
    there. 0 for every candidate when the request has no blocks, and when no producer
    wrote the data (logged at most once a minute).
    """

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    Params = PrefixCacheScorerParams

    def __init__(self, name: str, params: PrefixCacheScorerParams, handle: Handle) -> None:
        self.name = name
        self.producer_name = params.prefix_match_info_producer_name or ""
        """The producer read (``prefixMatchInfoProducerName``; "": the shared key)."""
        self._key = prefix_info_key(self.producer_name) if self.producer_name else None
        self._weight = float(params.match_length_weight or 0.0)
        self._scale_tokens = float(params.scale_tokens)
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
        """The weighted match score per candidate (see the class docs)."""
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
        if self._weight <= 0.0:
            scoring.divided(info.match_blocks, candidates, float(info.total_blocks), out)
            return
        matched = info.match_blocks[candidates]
        ratio = matched / float(info.total_blocks)
        length = np.zeros(n)
        if info.block_size_tokens > 0 and self._scale_tokens > 0:
            length = np.minimum(1.0, matched * info.block_size_tokens / self._scale_tokens) ** 2
        out[:n] = self._weight * length + (1.0 - self._weight) * ratio

    def _warn_missing(self, info: object) -> None:
        now = self._clock()
        if now - self._last_warning_s < _WARN_INTERVAL_S:
            return
        self._last_warning_s = now
        key = PREFIX_CACHE_MATCH_INFO
        what = f"no {key} in the cycle (is a prefix producer configured?)" if info is None else ""
        what = what or f"{key} holds {type(info).__name__}, not PrefixCacheMatchInfo"
        log.warning("%s: %s; scoring 0", self.name, what)


_prefix_cache_scorer: type[Scorer] = PrefixCacheScorer


# ====================================================================== filter
TTFT_SOURCES: Final = ("prefillThroughput", "latencyPredictor")


@attrs.frozen
class PrefixCacheAffinityFilterParams:
    """Parameters of ``prefix-cache-affinity-filter`` (llm-d-router's keys and defaults)."""

    affinity_threshold: float = param(0.80, alias="affinityThreshold", check=in_range(0, 1))
    """Prefix score (matched / total blocks) an endpoint needs to be sticky; 0 disables."""
    exploration_probability: float = param(
        0.0, alias="explorationProbability", check=in_range(0, 1)
    )
    """Probability of skipping the filter for a request (explore non-sticky endpoints)."""
    max_ttft_penalty_ms: float = param(
        18000.0, alias="maxTTFTPenaltyMs", check=at_least(0, kind="number")
    )
    """Keep all candidates when the best sticky TTFT exceeds the best other TTFT by more
    than this (ms); 0 always sticks."""
    ttft_source: str = param("prefillThroughput", alias="ttftSource", check=one_of(*TTFT_SOURCES))
    """Per-endpoint TTFT: 'prefillThroughput' (in-flight tokens / peakPrefillThroughput)
    or 'latencyPredictor' (predicted-latency-producer; no prediction: +inf)."""
    peak_prefill_throughput: float = param(
        15928.0, alias="peakPrefillThroughput", check=at_least(0, kind="number")
    )
    """Prompt tokens per second one endpoint prefills (ttftSource prefillThroughput); must
    be > 0 there while maxTTFTPenaltyMs > 0."""
    prefix_match_info_producer_name: str = param(
        "", alias="prefixMatchInfoProducerName", check=string
    )
    """The producer whose PrefixCacheMatchInfo is read ("": the cycle's shared one)."""
    latency_prediction_info_producer_name: str = param(
        "", alias="latencyPredictionInfoProducerName", check=string
    )
    """The producer whose LatencyPredictionInfo is read ("": the cycle's shared one)."""
    in_flight_load_producer_name: str = param("", alias="inFlightLoadProducerName", check=string)
    """Checked to name an in-flight producer; the counters live in the endpoint table,
    one set per table."""

    def __attrs_post_init__(self) -> None:
        if (
            self.ttft_source == "prefillThroughput"
            and self.max_ttft_penalty_ms > 0
            and self.peak_prefill_throughput <= 0
        ):
            raise ParamCheck(
                "peakPrefillThroughput",
                "number > 0 when ttftSource is prefillThroughput and maxTTFTPenaltyMs > 0",
                self.peak_prefill_throughput,
            )

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, data key)."""
        pairs = (
            ("prefixMatchInfoProducerName", PREFIX_CACHE_MATCH_INFO),
            ("latencyPredictionInfoProducerName", LATENCY_PREDICTION_INFO),
            ("inFlightLoadProducerName", IN_FLIGHT_LOAD),
        )
        names = (
            self.prefix_match_info_producer_name,
            self.latency_prediction_info_producer_name,
            self.in_flight_load_producer_name,
        )
        return {key: (n, k) for (key, k), n in zip(pairs, names, strict=True) if n}


@register("prefix-cache-affinity-filter")
class PrefixCacheAffinityFilter:
    """Keeps the candidates holding at least ``affinityThreshold`` of the prefix
    (none do: all); skipped with probability ``explorationProbability``
    (llm-d-router ``filter/prefixcacheaffinity/plugin.go``).

    TTFT gate: when ``maxTTFTPenaltyMs > 0`` and some candidates are not sticky, all are
    kept if ``min TTFT(sticky) - min TTFT(others) > maxTTFTPenaltyMs``. TTFT is
    ``inFlightTokens / peakPrefillThroughput * 1000`` ms (``prefillThroughput``, the
    table's in-flight token counters) or the predicted TTFT (``latencyPredictor``; no
    prediction reads +inf, and inf - inf never breaks stickiness)."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO, IN_FLIGHT_LOAD})
    Params = PrefixCacheAffinityFilterParams

    def __init__(self, name: str, params: PrefixCacheAffinityFilterParams, handle: Handle) -> None:
        self.name = name
        self._threshold = float(params.affinity_threshold)
        self._explore = float(params.exploration_probability)
        self._max_penalty_ms = float(params.max_ttft_penalty_ms)
        self._use_predictor = params.ttft_source == "latencyPredictor"
        self._peak_tokens_per_s = float(params.peak_prefill_throughput)
        prefix_name = params.prefix_match_info_producer_name
        self._prefix_key = prefix_info_key(prefix_name) if prefix_name else None
        named = params.latency_prediction_info_producer_name
        own = (f"{LATENCY_PREDICTION_INFO}/{named}",) if named else ()
        self._latency_keys = (*own, LATENCY_PREDICTION_INFO)

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
        info = None if self._prefix_key is None else cycle.read(self._prefix_key)
        if not isinstance(info, PrefixCacheMatchInfo):
            info = read_prefix_info(cycle)
        if info is None or info.total_blocks <= 0:
            return candidates  # every score is 0: nobody is sticky
        sticky = info.match_blocks[candidates] / info.total_blocks >= self._threshold
        if not sticky.any():
            return candidates
        if self._max_penalty_ms > 0 and not sticky.all():
            ttft = self._ttft_ms(cycle, table, candidates)
            penalty = float(ttft[sticky].min()) - float(ttft[~sticky].min())
            if penalty > self._max_penalty_ms:  # NaN (inf - inf) never breaks it
                return candidates
        return candidates[sticky]

    def _ttft_ms(
        self, cycle: CycleState, table: EndpointTable, candidates: Candidates
    ) -> npt.NDArray[np.float64]:
        """Each candidate's TTFT (ms) from the configured source."""
        if not self._use_predictor:
            tokens = table.inflight_tokens[candidates]
            return np.asarray(tokens / self._peak_tokens_per_s * 1000.0, dtype=np.float64)
        for key in self._latency_keys:
            latency = cycle.read(key)
            if isinstance(latency, LatencyPredictionInfo):
                break
        else:
            return np.full(len(candidates), math.inf)
        if not latency.has_prediction:
            return np.full(len(candidates), math.inf)
        ttft = np.asarray(latency.ttft_ms[candidates], dtype=np.float64)
        return np.where(np.isnan(ttft), math.inf, ttft)


_affinity_filter: type[Filter] = PrefixCacheAffinityFilter


# ====================================================================== multicluster
@register("multicluster-approx-prefix-cache-producer")
class MulticlusterApproxPrefixCacheProducer(ApproxPrefixCacheProducer):
    """``approx-prefix-cache-producer`` under its multicluster name (keys: cluster endpoints)."""

    stability: ClassVar[str] = "alpha"


@register("multicluster-prefix-cache-scorer")
class MulticlusterPrefixCacheScorer(PrefixCacheScorer):
    """``prefix-cache-scorer`` under llm-d-router's multicluster type name."""

    stability: ClassVar[str] = "alpha"


# ====================================================================== no-hit LRU
@register("no-hit-lru-scorer")
class NoHitLruScorer:
    """llm-d: spreads cold requests (no candidate holds a block) over the least recently
    used endpoints; a warm request scores 0.5 everywhere."""

    stability: ClassVar[str] = "beta"

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
