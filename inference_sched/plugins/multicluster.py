"""Scorers over peer clusters: ``multicluster-queue-scorer`` and
``multicluster-kv-cache-utilization-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/scorer/queuedepth/multicluster.go`` and
``pkg/epp/framework/plugins/scheduling/scorer/kvcacheutilization/multicluster.go``;
``docs/plugins/multicluster-queue-scorer.md``,
``docs/plugins/multicluster-kv-cache-utilization-scorer.md``).

In a cluster-scoped EPP the candidate endpoints are peer clusters (gateways, each
fronting its own pool and inner EPP). A cluster has no per-pod metrics; the
``multicluster-metrics-extractor`` scrapes the inner EPP's pool averages
(``llm_d_epp_average_queue_size``, ``llm_d_epp_average_kv_cache_utilization``) into the
endpoint attributes :data:`QUEUE_SIZE_ATTRIBUTE` and :data:`KV_CACHE_UTILIZATION_ATTRIBUTE`
(empty producer name), which these scorers read from ``table.attributes``. A cluster
without the attribute (never scraped, or a value that is not a finite number) scores 0.

Candidate sets here are a handful of clusters, so each call reads the attributes with one
:meth:`~inference_sched.state.attributes.EndpointAttributes.scalars` call.
"""

from __future__ import annotations

from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    MULTICLUSTER_KV_CACHE_UTILIZATION,
    MULTICLUSTER_QUEUE_SIZE,
)
from inference_sched.framework.interfaces import Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, ScorerCategory
from inference_sched.params import NoParams
from inference_sched.state.table import EndpointTable

__all__ = [
    "KV_CACHE_UTILIZATION_ATTRIBUTE",
    "QUEUE_SIZE_ATTRIBUTE",
    "MulticlusterKvCacheUtilizationScorer",
    "MulticlusterQueueScorer",
    "kv_cache_scores",
    "queue_scores",
]

QUEUE_SIZE_ATTRIBUTE: Final = MULTICLUSTER_QUEUE_SIZE
"""A cluster's average waiting-queue length (its inner EPP's
``llm_d_epp_average_queue_size``)."""
KV_CACHE_UTILIZATION_ATTRIBUTE: Final = MULTICLUSTER_KV_CACHE_UTILIZATION
"""A cluster's average KV-cache utilization, a 0..1 fraction (its inner EPP's
``llm_d_epp_average_kv_cache_utilization``)."""


def queue_scores(queues: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``(max - q) / (max - min)`` over the clusters that have a queue (NaN = missing,
    scores 0); 1 for all of them when their queues are equal."""
    scores = np.zeros(len(queues), dtype=np.float64)
    present = ~np.isnan(queues)
    if not present.any():
        return scores
    q = queues[present]
    low, high = float(q.min()), float(q.max())
    if high == low:
        scores[present] = 1.0
    else:
        # Halved first: no finite queue can overflow the difference (halving is exact).
        scores[present] = (high * 0.5 - q * 0.5) / (high * 0.5 - low * 0.5)
    return scores


def kv_cache_scores(utilization: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``1 - util`` clamped to [0, 1] where the cluster has a utilization (NaN = missing,
    scores 0)."""
    return np.where(np.isnan(utilization), 0.0, np.clip(1.0 - utilization, 0.0, 1.0))


class _AttributeScorer:
    """Shared body: read one cluster attribute over the candidates, then a formula."""

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    category: ClassVar[ScorerCategory] = "Distribution"
    is_batch_invariant: ClassVar[bool] = True
    """Reads endpoint attributes only, never the request."""
    Params = NoParams
    attribute: ClassVar[str]
    """The attribute store key read."""

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name

    def _scores(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        raise NotImplementedError

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """The formula over the candidates' attribute (0 where a cluster has none)."""
        values = table.attributes.scalars(self.attribute, candidates)
        out[: len(candidates)] = self._scores(values)


@register("multicluster-queue-scorer")
class MulticlusterQueueScorer(_AttributeScorer):
    """Prefers the cluster with the shortest average queue: ``(max - q) / (max - min)``
    over the clusters that report one (all equal: 1); a cluster without it scores 0."""

    attribute = QUEUE_SIZE_ATTRIBUTE

    def _scores(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return queue_scores(values)


@register("multicluster-kv-cache-utilization-scorer")
class MulticlusterKvCacheUtilizationScorer(_AttributeScorer):
    """Prefers the cluster with the most free KV cache: ``1 - util``; a cluster without
    it scores 0."""

    attribute = KV_CACHE_UTILIZATION_ATTRIBUTE

    def _scores(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return kv_cache_scores(values)


_multicluster_queue_scorer: type[Scorer] = MulticlusterQueueScorer
_multicluster_kv_scorer: type[Scorer] = MulticlusterKvCacheUtilizationScorer
