"""label-preference-scorer: prefer endpoints whose pod label has one of some values."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched import (
    CycleState,
    EndpointTable,
    Handle,
    Request,
    Scorer,
    ScorerCategory,
    register,
)
from inference_sched.params import in_range, param, string, string_list

__all__ = ["LabelPreferenceScorer"]


@attrs.frozen
class LabelPreferenceParams:
    """Parameters of ``label-preference-scorer``."""

    label: str = param(check=string)
    """Pod label to read (required)."""
    preferred_values: tuple[str, ...] = param((), alias="preferredValues", check=string_list)
    """Label values that score 1.0."""
    other_score: float = param(0.0, alias="otherScore", check=in_range(0.0, 1.0))
    """Score of every other endpoint, including those without the label."""


@register("label-preference-scorer")
class LabelPreferenceScorer:
    """Scores 1.0 where ``labels[label]`` is a preferred value, else ``otherScore``."""

    Params = LabelPreferenceParams
    category: ClassVar[ScorerCategory] = "Affinity"
    is_batch_invariant: ClassVar[bool] = True

    def __init__(self, name: str, params: LabelPreferenceParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._preferred = frozenset(params.preferred_values)
        self._row_scores = np.zeros(0, dtype=np.float32)
        self._table_version = -1

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: npt.NDArray[np.int32],
        out: npt.NDArray[np.float32],
    ) -> None:
        """Look the per-row score up; it is rebuilt only when the table changes."""
        if self._table_version != table.version or len(self._row_scores) < table.capacity:
            self._row_scores = self._scores_by_row(table)
            self._table_version = table.version
        out[:] = self._row_scores[candidates]

    def _scores_by_row(self, table: EndpointTable) -> npt.NDArray[np.float32]:
        scores = np.full(table.capacity, self.params.other_score, dtype=np.float32)
        for row in table.candidates().tolist():
            if table.endpoint_at(row).labels.get(self.params.label) in self._preferred:
                scores[row] = 1.0
        return scores


_: type[Scorer] = LabelPreferenceScorer
