"""Multimodal encoder-cache affinity: ``mm-embeddings-cache-producer`` and
``mm-embeddings-cache-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/dataproducer/multimodal/`` and its scorer;
``docs/plugins/mm-embeddings-cache-producer.md``, ``docs/plugins/mm-embeddings-cache-scorer.md``).

A vision or audio model caches each item's encoder output (its embeddings) by content
hash; a request whose images an endpoint has encoded recently skips the encoder there.
The producer remembers, per endpoint, an LRU of the item hashes it routed there (the
primary profile's targets), matches each request's items against every candidate's LRU
and writes an :class:`~inference_sched.framework.contracts.EncoderCacheMatchInfo`; the
scorer turns it into ``matched items / request items``.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from inference_sched.framework.contracts import (
    MM_ENCODER_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    EncoderCacheMatchInfo,
    read_encoder_cache_info,
    read_tokenized,
)
from inference_sched.framework.interfaces import DataProducer, Handle, PreRequest, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.params import integer, param, string
from inference_sched.state.table import EndpointTable

__all__ = [
    "BYTES_PER_ITEM",
    "DEFAULT_CACHE_SIZE_MB",
    "MmEmbeddingsCacheProducer",
    "MmEmbeddingsCacheProducerParams",
    "MmEmbeddingsCacheScorer",
    "MmEmbeddingsCacheScorerParams",
    "lru_capacity",
    "request_items",
]

PRODUCER_TYPE: Final = "mm-embeddings-cache-producer"
DEFAULT_CACHE_SIZE_MB: Final = 4096
BYTES_PER_ITEM: Final = 2 * 1024 * 1024
"""Memory assumed per cached item (llm-d-router ``bytesPerImage``)."""
STALE_CLEANUP_INTERVAL_S: Final = 120.0
"""How often caches of endpoints no longer in the table are dropped (llm-d-router: 2 min)."""


def lru_capacity(cache_size_mb: int) -> int:
    """Items per endpoint: ``MB * 2**20 // 2 MiB`` (``MB <= 0``: 4096), at least 1."""
    mb = cache_size_mb if cache_size_mb > 0 else DEFAULT_CACHE_SIZE_MB
    return max(mb * 1024 * 1024 // BYTES_PER_ITEM, 1)


def request_items(cycle: CycleState) -> dict[str, str]:
    """The request's multimodal items: unique non-empty content hashes of the cycle's
    ``TokenizedRequest`` features, in prompt order, mapped to their modality (each item
    has size 1, as upstream)."""
    tokenized = read_tokenized(cycle)
    if tokenized is None:
        return {}
    items: dict[str, str] = {}
    for feature in tokenized.mm_features:
        if feature.hash:
            items[feature.hash] = feature.modality
    return items


@attrs.frozen
class MmEmbeddingsCacheProducerParams:
    """Parameters of ``mm-embeddings-cache-producer`` (llm-d-router)."""

    cache_size_in_mb_per_server: int = param(
        DEFAULT_CACHE_SIZE_MB, alias="cacheSizeInMBPerServer", check=integer
    )
    """Per-endpoint encoder-cache budget in MiB, 2 MiB per item (<= 0: 4096)."""


@register(PRODUCER_TYPE, default_producer_for=(MM_ENCODER_CACHE_MATCH_INFO,))
class MmEmbeddingsCacheProducer:
    """Tracks which endpoints likely hold each multimodal item's encoder output.

    One LRU of item hashes per endpoint (by endpoint name), capacity
    :func:`lru_capacity`. The data-producer phase matches the request's items against
    each candidate's LRU without touching recency; PreRequest adds them to the LRU of
    every target of the primary profile (the pick and its fallbacks; llm-d-router does
    it asynchronously, here inline: a few dict operations). An endpoint's LRU is dropped
    when the table removes it, and every two minutes (scheduler clock) LRUs of endpoints
    the table no longer has are dropped.

    Counters for the metrics (llm-d-router ``encoder_cache_*``): :attr:`queries` by
    modality, :attr:`hits` by (endpoint, modality), and the per-endpoint hit ratios'
    :attr:`hit_ratio_sum` / :attr:`hit_ratio_count`.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    produces: ClassVar[frozenset[str]] = frozenset({MM_ENCODER_CACHE_MATCH_INFO})
    consumes: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    Params = MmEmbeddingsCacheProducerParams

    def __init__(self, name: str, params: MmEmbeddingsCacheProducerParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self.capacity = lru_capacity(params.cache_size_in_mb_per_server)
        """Items remembered per endpoint."""
        self.key = f"{MM_ENCODER_CACHE_MATCH_INFO}/{name}"
        """Where this instance's match goes: ``MultiModalEncoderCacheMatchInfo/<name>``."""
        self._state_key = f"{PRODUCER_TYPE}/{name}"
        self._table = handle.table
        self._clock = handle.clock
        self._lock = threading.Lock()
        self._caches: dict[str, LRUCache[str, None]] = {}
        self._last_cleanup_s = self._clock()
        self.queries: Counter[str] = Counter()
        """Item lookups by modality (``encoder_cache_queries_total``)."""
        self.hits: Counter[tuple[str, str]] = Counter()
        """Lookups found, by (endpoint name, modality), over every tracked endpoint
        (``encoder_cache_hits_total``)."""
        self.hit_ratio_sum = 0.0
        """Sum of the per-candidate matched / request items observed
        (``encoder_cache_hit_ratio``)."""
        self.hit_ratio_count = 0
        """Observations in :attr:`hit_ratio_sum`."""
        self._table.on_remove(self._on_remove)

    # ------------------------------------------------------------------ inspection
    def cached_items(self, endpoint: str) -> list[str]:
        """The item hashes remembered for ``endpoint``, sorted."""
        with self._lock:
            cache = self._caches.get(endpoint)
            return [] if cache is None else sorted(cache)

    def tracked_endpoints(self) -> list[str]:
        """Endpoints with an LRU, sorted."""
        with self._lock:
            return sorted(self._caches)

    # ------------------------------------------------------------------ cycle
    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Write ``EncoderCacheMatchInfo`` (matched items per candidate row; all 0 with
        ``request_items = 0`` when the request has no multimodal item) under
        ``MultiModalEncoderCacheMatchInfo`` and ``…/<name>``."""
        self._cleanup_if_due()
        items = request_items(cycle)
        matched: npt.NDArray[np.float64] = np.zeros(max(table.capacity, 1))
        if items:
            self._match(items, table, candidates, matched)
            cycle.write(self._state_key, tuple(items))
        info = EncoderCacheMatchInfo(matched, len(items))
        cycle.write(MM_ENCODER_CACHE_MATCH_INFO, info)
        cycle.write(self.key, info)

    def _match(
        self,
        items: dict[str, str],
        table: EndpointTable,
        candidates: Candidates,
        matched: npt.NDArray[np.float64],
    ) -> None:
        with self._lock:
            for item, modality in items.items():
                self.queries[modality] += 1
                for endpoint, cache in self._caches.items():
                    if item in cache:  # `in` leaves recency alone
                        self.hits[(endpoint, modality)] += 1
            total = len(items)
            for row in candidates.tolist():
                held = self._caches.get(table.endpoint_at(row).name)
                found = 0 if held is None else sum(item in held for item in items)
                matched[row] = found
                self.hit_ratio_sum += found / total
                self.hit_ratio_count += 1

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Add the request's items to the LRU of every primary target still in the table."""
        items = cycle.read(self._state_key)
        if not isinstance(items, tuple) or not items:
            return
        cycle.delete(self._state_key)
        run = result.profile_results.get(result.primary_profile_name)
        if run is None or not run.endpoints:
            return
        table = self._table
        with self._lock:
            for row, endpoint in zip(run.rows, run.endpoints, strict=True):
                if table.endpoint_or_none(int(row)) is not endpoint:
                    continue  # removed (or its row reused) since the pick
                cache = self._caches.get(endpoint.name)
                if cache is None:
                    cache = self._caches[endpoint.name] = LRUCache(self.capacity)
                for item in items:
                    cache[item] = None  # insert, or move to most recent

    # ------------------------------------------------------------------ lifecycle
    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        with self._lock:
            self._caches.pop(endpoint.name, None)

    def _cleanup_if_due(self) -> None:
        now = self._clock()
        if now - self._last_cleanup_s < STALE_CLEANUP_INTERVAL_S:
            return
        self._last_cleanup_s = now
        self.remove_stale()

    def remove_stale(self) -> int:
        """Drop the LRUs of endpoints the table no longer has (llm-d-router's periodic
        stale-pod cleanup; an empty table removes nothing, as upstream); returns how many."""
        table = self._table
        with table.lock:
            names = {endpoint.name for endpoint in table}
        if not names:
            return 0
        with self._lock:
            stale = [name for name in self._caches if name not in names]
            for name in stale:
                del self._caches[name]
        return len(stale)


_producer: type[DataProducer] = MmEmbeddingsCacheProducer
_producer_pre: type[PreRequest] = MmEmbeddingsCacheProducer


# ====================================================================== scorer
@attrs.frozen
class MmEmbeddingsCacheScorerParams:
    """Parameters of ``mm-embeddings-cache-scorer`` (llm-d-router)."""

    producer_name: str = param("", alias="producerName", check=string)
    """The ``mm-embeddings-cache-producer`` whose match is read ("": the cycle's shared one)."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, the data key that
        plugin must produce)."""
        name = self.producer_name
        return {"producerName": (name, MM_ENCODER_CACHE_MATCH_INFO)} if name else {}


@register("mm-embeddings-cache-scorer")
class MmEmbeddingsCacheScorer:
    """``matched items / request items`` per candidate, from the encoder-cache match.

    0 for every candidate when no match is in the cycle or the request has no
    multimodal item. With ``producerName``, that producer's own key is read first.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Affinity"
    consumes: ClassVar[frozenset[str]] = frozenset({MM_ENCODER_CACHE_MATCH_INFO})
    Params = MmEmbeddingsCacheScorerParams

    def __init__(self, name: str, params: MmEmbeddingsCacheScorerParams, handle: Handle) -> None:
        self.name = name
        self.producer_name = params.producer_name

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Fill ``out`` with ``matched[row] / request_items`` (0 without a match)."""
        info = read_encoder_cache_info(cycle, self.producer_name) if self.producer_name else None
        if info is None:
            info = read_encoder_cache_info(cycle)
        n = len(candidates)
        if info is None or info.request_items <= 0:
            out[:n] = 0.0
            return
        matched = info.matched
        inside = candidates < len(matched)
        values = np.zeros(n)
        values[inside] = matched[candidates[inside]]
        ratio = values / float(info.request_items)
        out[:n] = np.where(np.isfinite(ratio), np.clip(ratio, 0.0, 1.0), 0.0)


_scorer: type[Scorer] = MmEmbeddingsCacheScorer
