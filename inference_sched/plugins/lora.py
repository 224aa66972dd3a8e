"""LoRA plugins: ``lora-affinity-scorer`` (GIE, ``gateway-api-inference-extension``:
``pkg/epp/framework/plugins/scheduling/scorer/``; ``docs/plugins/lora-affinity-scorer.md``).

Prefers endpoints that already run the request's adapter, then endpoints with a free
adapter slot, then endpoints where the adapter is queued to load.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, ScorerCategory
from inference_sched.kernels import scoring
from inference_sched.params import NoParams
from inference_sched.state.table import EndpointTable

__all__ = ["LoraAffinityScorer"]


@register("lora-affinity-scorer")
class LoraAffinityScorer:
    """1.0 adapter active; 0.8 free slot; 0.6 adapter waiting; 0.0 otherwise.

    A request without an adapter (``request.lora_adapter is None``) scores 1.0 on every
    candidate, so it does not change the ranking. An adapter no endpoint ever reported
    is in no set: 0.8 where a slot is free, else 0.0.
    """

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Affinity of each candidate to ``request.lora_adapter``."""
        if request.lora_adapter is None:
            out[: len(candidates)] = 1.0
            return
        scoring.lora_affinity(
            table.active_adapters,
            table.waiting_adapters,
            table.num_adapters,
            table.max_loras,
            candidates,
            table.adapter_id(request.lora_adapter),
            out,
        )


_lora_scorer: type[Scorer] = LoraAffinityScorer
