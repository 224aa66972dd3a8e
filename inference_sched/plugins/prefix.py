"""Prefix-cache affinity: the ``prefix-cache-scorer`` (GIE, ``specs/gie.md`` §4.2).

A producer (``approx-prefix-cache-producer``; a later issue) matches the request's
prefix block hashes against its index and writes :class:`PrefixCacheMatchInfo` to the
cycle; the scorer turns it into ``matched / total`` blocks per candidate.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.interfaces import Handle, Scorer
from inference_sched.params import boolean, integer, param
from inference_sched.registry import register
from inference_sched.state import EndpointTable
from inference_sched.types import Candidates, CycleState, Request, ScorerCategory

__all__ = ["PREFIX_CACHE_MATCH_INFO", "PrefixCacheMatchInfo", "PrefixCacheScorer"]

log = logging.getLogger(__name__)

PREFIX_CACHE_MATCH_INFO: Final = "PrefixCacheMatchInfo"
"""Data key of the prefix match (GIE ``PrefixCacheMatchInfoKey``)."""

_WARN_INTERVAL_S: Final = 60.0


@attrs.frozen(eq=False)
class PrefixCacheMatchInfo:
    """How much of the request's prefix each endpoint holds (GIE ``PrefixCacheMatchInfo``).

    Attributes:
        match_blocks: float64, indexed by *table row* (at least as long as the rows in
            use): the request's blocks found on that endpoint.
        total_blocks: the request's number of prefix blocks.
        block_size_tokens: block size used for the hashes, in tokens.
    """

    match_blocks: npt.NDArray[np.float64]
    total_blocks: int
    block_size_tokens: int


def _optional(check: Any) -> Any:
    def run(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(inst, attribute, value)

    return run


def _ignored(key: str, kind: str) -> Any:
    return param(
        None,
        alias=key,
        check=_optional(boolean if kind == "bool" else integer),
        deprecated="ignored by prefix-cache-scorer (as in GIE); set it on "
        "approx-prefix-cache-producer",
    )


@attrs.frozen
class PrefixCacheScorerParams:
    """Accepted for GIE compatibility and ignored, as GIE ignores them.

    GIE's documentation still puts the prefix producer's parameters on the scorer, and
    v1.0 configs did so; such a config loads, with a warning per key.
    """

    block_size: int | None = _ignored("blockSize", "int")
    """Ignored (deprecated producer key, characters per block)."""
    hash_block_size: int | None = _ignored("hashBlockSize", "int")
    """Ignored (v1.0 key, characters per block)."""
    block_size_tokens: int | None = _ignored("blockSizeTokens", "int")
    """Ignored (producer key)."""
    max_prefix_blocks_to_match: int | None = _ignored("maxPrefixBlocksToMatch", "int")
    """Ignored (producer key)."""
    max_prefix_tokens_to_match: int | None = _ignored("maxPrefixTokensToMatch", "int")
    """Ignored (producer key)."""
    lru_capacity_per_server: int | None = _ignored("lruCapacityPerServer", "int")
    """Ignored (producer key)."""
    auto_tune: bool | None = _ignored("autoTune", "bool")
    """Ignored (producer key)."""


@register("prefix-cache-scorer")
class PrefixCacheScorer:
    """Scores ``match_blocks / total_blocks`` from the cycle's ``PrefixCacheMatchInfo``.

    0 for every candidate when the request has no blocks, and when no producer wrote
    the data (logged at most once a minute).
    """

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    Params = PrefixCacheScorerParams

    def __init__(self, name: str, params: PrefixCacheScorerParams, handle: Handle) -> None:
        self.name = name
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
        info = cycle.read(PREFIX_CACHE_MATCH_INFO)
        n = len(candidates)
        if not isinstance(info, PrefixCacheMatchInfo):
            self._warn_missing(info)
            out[:n] = 0.0
            return
        if info.total_blocks <= 0:
            out[:n] = 0.0
            return
        # A gather and a divide: one vectorised NumPy expression, no kernel needed.
        np.divide(info.match_blocks[candidates], info.total_blocks, out=out[:n], casting="unsafe")

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
