"""``probabilistic-admitter`` (llm-d-router:
``pkg/epp/framework/plugins/requestcontrol/admitter/probabilistic/``).

Sheds sheddable requests (priority < 0) with a probability that rises steeply with the
pool's saturation; requests with priority >= 0 are always admitted. Saturation is GIE's
utilization formula averaged over the request's candidates::

    sat = mean over candidates of max(waiting / queueDepthThreshold,
                                      kv_usage / kvCacheUtilThreshold)

(an endpoint never scraped counts 1), and the request is denied when a uniform draw from
the cycle's seeded generator is below ``p = min(sat ** power * k, 1)``. A denial is an
:class:`~inference_sched.errors.AdmissionDeniedError`, which llm-d answers with HTTP 500.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from inference_sched.errors import AdmissionDeniedError
from inference_sched.framework.interfaces import Admitter, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import ParamCheck, number, param
from inference_sched.state.table import EndpointTable

__all__ = ["ProbabilisticAdmitter", "ProbabilisticAdmitterParams"]


def _positive(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    number(inst, attribute, value)
    if not (value > 0 and math.isfinite(value)):
        raise ParamCheck(attribute.alias or attribute.name, "a finite number > 0", value)


@attrs.frozen
class ProbabilisticAdmitterParams:
    """Parameters of ``probabilistic-admitter`` (llm-d-router)."""

    queue_depth_threshold: float = param(5, alias="queueDepthThreshold", check=_positive)
    """Waiting requests at which an endpoint's saturation reaches 1."""
    kv_cache_util_threshold: float = param(0.8, alias="kvCacheUtilThreshold", check=_positive)
    """KV-cache usage fraction at which an endpoint's saturation reaches 1."""
    power: float = param(5.0, alias="power", check=_positive)
    """Exponent of the shedding curve."""
    k: float = param(300.0, alias="k", check=_positive)
    """Scale of the shedding curve (defaults: all shed from saturation ~0.32)."""


@register("probabilistic-admitter")
class ProbabilisticAdmitter:
    """Denies sheddable requests with probability ``min(sat ** power * k, 1)``."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = ProbabilisticAdmitterParams

    def __init__(self, name: str, params: ProbabilisticAdmitterParams, handle: Handle) -> None:
        self.name = name
        self.params = params

    def pool_saturation(self, table: EndpointTable, candidates: Candidates) -> float:
        """Mean over ``candidates`` of ``max(waiting / qThr, kv / kvThr)``; 1 for an
        endpoint never scraped. Empty candidates: 0."""
        if len(candidates) == 0:
            return 0.0
        p = self.params
        queue = table.waiting[candidates] / float(p.queue_depth_threshold)
        kv = table.kv_usage_frac[candidates] / float(p.kv_cache_util_threshold)
        per = np.maximum(queue, kv)
        per = np.where(np.isneginf(table.last_update_s[candidates]), 1.0, per)
        return float(np.mean(per))

    def shed_probability(self, saturation: float) -> float:
        """``min(saturation ** power * k, 1)``."""
        p = self.params
        return min(float(saturation ** float(p.power)) * float(p.k), 1.0)

    def admit_request(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Admit priority >= 0 and requests without candidates; deny a sheddable one when
        ``cycle.rng.random() < min(sat ** power * k, 1)``.

        Raises:
            AdmissionDeniedError: the draw fell under the shedding probability.
        """
        if request.priority >= 0 or len(candidates) == 0:
            return
        saturation = self.pool_saturation(table, candidates)
        probability = self.shed_probability(saturation)
        if cycle.rng.random() < probability:
            raise AdmissionDeniedError(
                priority=request.priority,
                admitter=self.name,
                reason=f"saturation {saturation:.3f}: shed with probability {probability:.3f}",
            )


_probabilistic_admitter: type[Admitter] = ProbabilisticAdmitter
