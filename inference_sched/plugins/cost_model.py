"""Cost-model routing after NVIDIA Dynamo's KV router (``ai-dynamo/dynamo``:
``lib/llm/src/kv_router/``, ``docs/architecture/kv_cache_routing.md``).

* ``kv-cost-scorer`` computes Dynamo's per-endpoint cost
  ``logit = overlapScoreWeight * prefill_blocks + decode_blocks`` (lower is better) and
  turns it into a score in [0, 1] (inverted min-max over the candidates).
* ``softmax-picker`` is Dynamo's selection: ``temperature`` 0 picks the best total
  (deterministic ties: the lowest candidate position); above 0 it samples from the
  softmax of the range-normalised totals at that temperature.

Design note, the two terms and where they come from:

* ``prefill_blocks`` is the request's uncached prefix on the endpoint,
  ``total_blocks - match_blocks`` from the cycle's ``PrefixCacheMatchInfo``: Dynamo's
  ``ISL - overlap * B`` (its untracked branch). Dynamo's tracked branch also adds the
  un-prefilled prompt tokens of requests already routed there; our in-flight accounting
  keeps no separate prefill column (``inflight-load-producer`` holds each request's
  prompt + estimated output tokens until completion), so that earlier work enters once,
  through ``decode_blocks``.
* ``decode_blocks`` is ``inflight_tokens / B``: the blocks of the requests this
  scheduler routed to the endpoint and not yet seen complete (prompt plus estimated
  output: Dynamo's active blocks with its output-block tracking). It is router-local,
  as Dynamo's is, and moves with every decision, which is what keeps a burst of
  identical requests scheduled against one metrics snapshot from herding (llm-d #298,
  llm-d-router issue #298). The scraped ``kv_usage_frac * kv_blocks_total`` is not
  added: it counts the same running requests again, late (Dynamo #7753 is the bug that
  mixing the two channels caused).

``B`` is the block size of the prefix match (``PrefixCacheMatchInfo.block_size_tokens``).
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    IN_FLIGHT_LOAD,
    PREFIX_CACHE_MATCH_INFO,
    PrefixCacheMatchInfo,
)
from inference_sched.framework.interfaces import Handle, Picker, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, ScorerCategory
from inference_sched.kernels import cost, picking
from inference_sched.params import at_least, param
from inference_sched.state.table import EndpointTable

__all__ = ["DEFAULT_BLOCK_SIZE_TOKENS", "KvCostScorer", "SoftmaxPicker"]

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE_TOKENS: Final = 16
"""Block size when no prefix match is in the cycle (GIE's ``blockSizeTokens`` default)."""

_WARN_INTERVAL_S: Final = 60.0


@register("kv-cost-scorer")
class KvCostScorer:
    """Dynamo's KV-router cost, as a score: the cheapest candidate scores 1.

    ``logit = overlapScoreWeight * (total_blocks - match_blocks) + inflight_tokens / B``
    per candidate, then ``(max - logit) / (max - min)`` over the candidates (all equal:
    1.0). Without a ``PrefixCacheMatchInfo`` in the cycle the prefill term is 0 (logged at
    most once a minute) and ``B`` is 16.
    """

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Balance"
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO, IN_FLIGHT_LOAD})

    @attrs.frozen
    class Params:
        """Parameters of ``kv-cost-scorer`` (Dynamo's names, camelCase)."""

        overlap_score_weight: float = param(
            1.0, alias="overlapScoreWeight", check=at_least(0, kind="number")
        )
        """Dynamo's overlap credit: cost of one uncached prefill block relative to one
        active (decode) block; 0 ignores the prefix cache."""

    def __init__(self, name: str, params: KvCostScorer.Params, handle: Handle) -> None:
        self.name = name
        self._credit = float(params.overlap_score_weight)
        self._clock = handle.clock
        self._last_warning_s = -math.inf
        self.last_logits: npt.NDArray[np.float64] = np.empty(0)
        """The costs of the last scored candidates (inspection and tests)."""

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """One kernel call: the costs of every candidate and their scores."""
        info = cycle.read(PREFIX_CACHE_MATCH_INFO)
        if isinstance(info, PrefixCacheMatchInfo):
            match_blocks = info.match_blocks
            total_blocks = float(info.total_blocks)
            block_size = info.block_size_tokens
        else:
            self._warn_missing(info)
            match_blocks = np.zeros(max(table.capacity, 1))
            total_blocks = 0.0
            block_size = DEFAULT_BLOCK_SIZE_TOKENS
        if block_size <= 0:
            block_size = DEFAULT_BLOCK_SIZE_TOKENS
        logits = np.empty(len(candidates), dtype=np.float64)
        cost.kv_cost_scores(
            match_blocks,
            table.inflight_tokens,
            candidates,
            total_blocks,
            float(block_size),
            self._credit,
            logits,
            out,
        )
        self.last_logits = logits

    def _warn_missing(self, info: object) -> None:
        now = self._clock()
        if now - self._last_warning_s < _WARN_INTERVAL_S:
            return
        self._last_warning_s = now
        log.warning(
            "%s: no PrefixCacheMatchInfo in the cycle (got %s); prefill cost counted as 0",
            self.name,
            type(info).__name__,
        )


_kv_cost_scorer: type[Scorer] = KvCostScorer


@register("softmax-picker")
class SoftmaxPicker:
    """Dynamo's worker selection over the weighted totals (higher is better).

    ``temperature`` 0: the best total, ties to the lowest candidate position (Dynamo
    breaks them by the smallest radix tree, which we do not track), fallbacks in the
    same order. Above 0: with ``z = (total - max) / (max - min)`` (0 when all are equal),
    sample from ``softmax(z / temperature)``: with ``kv-cost-scorer`` alone this is
    exactly Dynamo's ``softmax(-logit / ((max - min) * T))``. The draw is Gumbel-max with
    one uniform per candidate from ``cycle.rng``; the fallbacks are the next keys
    (sampling without replacement).
    """

    type: ClassVar[str]

    @attrs.frozen
    class Params:
        """Parameters of ``softmax-picker``."""

        temperature: float = param(0.0, alias="temperature", check=at_least(0, kind="number"))
        """Dynamo's router temperature: 0 picks the best total, larger values spread
        picks over worse ones (1: a candidate one full range worse is e times less likely)."""
        max_num_of_endpoints: int = param(1, alias="maxNumOfEndpoints", check=at_least(1))
        """How many endpoints to return: the pick, then fallbacks."""

    def __init__(self, name: str, params: SoftmaxPicker.Params, handle: Handle) -> None:
        self.name = name
        self._temperature = float(params.temperature)
        self._k = params.max_num_of_endpoints

    def pick(
        self,
        cycle: CycleState,
        request: Request,
        candidates: Candidates,
        scores: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.int32]:
        """Top ``maxNumOfEndpoints`` by total (temperature 0) or by Gumbel key."""
        n = len(scores)
        if self._temperature == 0.0:
            out = np.empty(min(self._k, n), dtype=np.int32)
            picking.top_k_ranked(scores, np.zeros(n, dtype=np.float64), self._k, out)
            return out
        uniforms = cycle.rng.random(n)
        keys = np.empty(n, dtype=np.float64)
        cost.softmax_sample_keys(scores, self._temperature, uniforms, keys)
        order = np.argsort(-keys, kind="stable")[: self._k]
        return order.astype(np.int32)


_softmax_picker: type[Picker] = SoftmaxPicker
