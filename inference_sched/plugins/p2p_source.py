"""KV-cache pull source: ``p2p-source-producer`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/dataproducer/p2psource/producer.go``;
``docs/plugins/p2p-source-producer.md``).

When the pod that will compute a request's prefix holds less of it than a peer does,
the routing sidecar can pull the peer's KV blocks over the P2P connector instead of
recomputing them. This producer picks the peer: during the data-producer phase, among
the candidates within one block of the most cached prefix tokens, one drawn with weight
``1 / (1 + waiting queue)`` at a point fixed by the request id (so a request always gets
the same source, and requests spread over equally good ones); in PreRequest it writes
that peer's ``ip:port`` in ``x-kv-cache-source-host-port`` when it out-caches the
computing pod (the ``prefill`` pick under P/D, else the primary pick) by at least
``minCachedTokenDelta`` tokens.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import MutableMapping
from typing import ClassVar, Final

import attrs
import numpy as np

from inference_sched.framework.contracts import (
    PREFILL_PROFILE,
    PREFIX_CACHE_MATCH_INFO,
    PrefixCacheMatchInfo,
    prefix_info_key,
)
from inference_sched.framework.headers import HEADER_KV_CACHE_SOURCE
from inference_sched.framework.interfaces import DataProducer, Handle, PreRequest
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, SchedulingResult
from inference_sched.params import at_least, param, string
from inference_sched.state.table import EndpointTable

__all__ = [
    "KV_CACHE_SOURCE",
    "KVCacheSource",
    "P2PSourceParams",
    "P2PSourceProducer",
    "fnv32a",
    "spread_fraction",
]

log = logging.getLogger(__name__)

PLUGIN_TYPE: Final = "p2p-source-producer"
KV_CACHE_SOURCE: Final = "KVCacheSource"
"""Cycle key of the chosen source (llm-d-router keeps it in a request attribute named
``p2p-source-producer/<name>/best-match``); also written as ``KVCacheSource/<name>``."""
_WARN_INTERVAL_S: Final = 60.0
_FNV32_OFFSET: Final = 0x811C9DC5
_FNV32_PRIME: Final = 0x01000193


def fnv32a(data: bytes) -> int:
    """32-bit FNV-1a of ``data`` (Go ``hash/fnv.New32a``)."""
    h = _FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def spread_fraction(request_id: str) -> float:
    """``fnv32a(request_id) / 2**32``: a point in [0, 1) fixed per request."""
    return fnv32a(request_id.encode("utf-8", "surrogatepass")) / float(1 << 32)


@attrs.frozen
class P2PSourceParams:
    """Parameters of ``p2p-source-producer`` (llm-d-router's keys and defaults)."""

    prefix_match_info_producer_name: str = param(
        "", alias="prefixMatchInfoProducerName", check=string
    )
    """The producer whose ``PrefixCacheMatchInfo`` is read ("": the cycle's shared one)."""
    min_cached_token_delta: int = param(1, alias="minCachedTokenDelta", check=at_least(1))
    """Cached prompt tokens the source must hold beyond the computing pod for the header
    to be set."""
    prefill_profile_name: str = param(PREFILL_PROFILE, alias="prefillProfileName", check=string)
    """The P/D prefill profile: its pick computes the prefix when it ran ("": ``prefill``)."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, the data key that
        plugin must produce)."""
        name = self.prefix_match_info_producer_name
        return {"prefixMatchInfoProducerName": (name, PREFIX_CACHE_MATCH_INFO)} if name else {}


@attrs.frozen
class KVCacheSource:
    """What the data-producer phase chose for one request.

    Attributes:
        host_port: the source's ``ip:port`` (None: no candidate holds a cached block).
        cached_tokens: the source's cached prompt tokens.
        info: the prefix match the choice was made from (PreRequest reads the computing
            pod's cached tokens from it).
    """

    host_port: str | None
    cached_tokens: int = 0
    info: PrefixCacheMatchInfo | None = None


@register(PLUGIN_TYPE)
class P2PSourceProducer:
    """Chooses a KV-cache pull source per request and sets ``x-kv-cache-source-host-port``.

    Cached tokens per endpoint are ``matched blocks * block size`` from the prefix
    match. llm-d-router prefers the CPU-tier block count when the producer reports blocks
    per storage tier (``CachedBlocksByTier``, filled from vLLM KV events' medium); no
    producer of this library reports tiers, so the total matched count is used.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    produces: ClassVar[frozenset[str]] = frozenset({KV_CACHE_SOURCE})
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    Params = P2PSourceParams

    def __init__(self, name: str, params: P2PSourceParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self.prefill_profile = params.prefill_profile_name or PREFILL_PROFILE
        producer = params.prefix_match_info_producer_name
        self._info_key = prefix_info_key(producer) if producer else None
        self.key = f"{KV_CACHE_SOURCE}/{name}"
        """Where this instance's choice goes: ``KVCacheSource/<name>``."""
        self._last_warning_s = -math.inf
        self.num_headers_set = 0
        """Requests whose header this plugin set."""

    def _match_info(self, cycle: CycleState) -> PrefixCacheMatchInfo | None:
        info = None if self._info_key is None else cycle.read(self._info_key)
        if info is None:  # unnamed, or a producer that writes only the shared key
            info = cycle.read(PREFIX_CACHE_MATCH_INFO)
        return info if isinstance(info, PrefixCacheMatchInfo) else None

    def choose_source(
        self,
        info: PrefixCacheMatchInfo | None,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> KVCacheSource:
        """The pull source for ``request``: among the candidates holding a cached block,
        those with ``cached + blockSize >= max cached``; one of them drawn with weight
        ``1 / (1 + waiting)`` at ``spread_fraction(request_id) * sum(weights)`` (walking
        the candidates in order, subtracting weights)."""
        if info is None or info.total_blocks <= 0 or len(candidates) == 0:
            return KVCacheSource(None, 0, info)
        block = int(info.block_size_tokens)
        rows = candidates[candidates < len(info.match_blocks)]
        cached = info.match_blocks[rows] * block
        holding = cached > 0
        if not holding.any():
            return KVCacheSource(None, 0, info)
        rows, cached = rows[holding], cached[holding]
        band = cached + block >= cached.max()
        rows, cached = rows[band], cached[band]
        waiting = table.waiting[rows]
        waiting = np.where(np.isfinite(waiting) & (waiting > 0), waiting, 0.0)
        weights = (1.0 / (1.0 + waiting)).tolist()
        total = 0.0
        for w in weights:  # Go's order (sum() compensates since Python 3.12)
            total += w
        target = spread_fraction(request.request_id) * total
        chosen = len(weights) - 1
        for i, w in enumerate(weights):
            if target < w:
                chosen = i
                break
            target -= w
        endpoint = table.endpoint_at(int(rows[chosen]))
        return KVCacheSource(endpoint.hostport, int(cached[chosen]), info)

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Choose the source (:meth:`choose_source`) and write it under ``KVCacheSource``
        and ``KVCacheSource/<name>`` (a source of None when no candidate holds a block)."""
        source = self.choose_source(self._match_info(cycle), request, table, candidates)
        cycle.write(self.key, source)
        cycle.write(KV_CACHE_SOURCE, source)

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Remove ``x-kv-cache-source-host-port`` from the answer's request headers, then
        set it to the chosen source when that is not the computing pod and
        ``source cached - computing cached >= minCachedTokenDelta`` (the computing pod's
        cached tokens from the same match).

        The header goes in the answer's ``request_headers`` when that is a mutable
        mapping (``disagg-profile-handler``, ``pd-profile-handler``); otherwise nothing
        is set and a warning is logged at most once a minute.
        """
        headers = result.request_headers
        source = cycle.read(self.key)
        if not isinstance(headers, MutableMapping):
            if isinstance(source, KVCacheSource) and source.host_port is not None:
                self._warn_read_only()
            return
        headers.pop(HEADER_KV_CACHE_SOURCE, None)
        if not isinstance(source, KVCacheSource) or source.host_port is None:
            return
        computing = result.profile_results.get(self.prefill_profile)
        if computing is None or not computing.endpoints:
            computing = result.profile_results.get(result.primary_profile_name)
        if computing is None or not computing.endpoints:
            return
        endpoint, row = computing.endpoints[0], int(computing.rows[0])
        if source.host_port == endpoint.hostport:
            return  # never point a pod at itself
        info = source.info
        computing_cached = 0
        if info is not None and row < len(info.match_blocks):
            computing_cached = int(info.match_blocks[row]) * int(info.block_size_tokens)
        if source.cached_tokens - computing_cached < self.params.min_cached_token_delta:
            return
        headers[HEADER_KV_CACHE_SOURCE] = source.host_port
        self.num_headers_set += 1

    def _warn_read_only(self) -> None:
        now = time.monotonic()
        if now - self._last_warning_s >= _WARN_INTERVAL_S:
            self._last_warning_s = now
            log.warning(
                "%s: the profile handler's answer has read-only request headers, so %s "
                "cannot be set; use disagg-profile-handler or pd-profile-handler",
                self.name,
                HEADER_KV_CACHE_SOURCE,
            )


_producer: type[DataProducer] = P2PSourceProducer
_pre_request: type[PreRequest] = P2PSourceProducer
