"""Header-to-label affinity: ``header-label-affinity-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/scorer/``;
``docs/plugins/header-label-affinity-scorer.md``).

Scores 1 the endpoints whose label ``labelKey`` equals the value of the request header
``headerName``, 0 the others. The label values are gathered once per endpoint whenever
the table's structure changes (``table.version``) into a per-row object array; each
request costs one vectorised comparison over the candidates.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, ScorerCategory
from inference_sched.params import ParamCheck, param
from inference_sched.state.table import EndpointTable

__all__ = ["HeaderLabelAffinityParams", "HeaderLabelAffinityScorer"]


def _non_empty(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty str", value)


@attrs.frozen
class HeaderLabelAffinityParams:
    """Parameters of ``header-label-affinity-scorer`` (llm-d-router); both required."""

    header_name: str = param(alias="headerName", check=_non_empty)
    """The request header to read (matched case-insensitively)."""
    label_key: str = param(alias="labelKey", check=_non_empty)
    """The endpoint label its value must equal."""


@register("header-label-affinity-scorer")
class HeaderLabelAffinityScorer:
    """1 where the endpoint's ``labelKey`` label equals the non-empty ``headerName``
    header of the request, else 0 (no header, empty header, label absent or different).
    """

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    Params = HeaderLabelAffinityParams

    def __init__(self, name: str, params: HeaderLabelAffinityParams, handle: Handle) -> None:
        self.name = name
        self._header = params.header_name.lower()
        self._label = params.label_key
        self._lock = threading.Lock()
        self._cache: tuple[EndpointTable, int, npt.NDArray[np.object_]] | None = None

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """1.0 on label match with the header value, else 0.0."""
        value = request.headers.get(self._header)
        if not value:
            out[: len(candidates)] = 0.0
            return
        labels = self._labels(table)[candidates]
        out[: len(candidates)] = np.equal(labels, value)

    def _labels(self, table: EndpointTable) -> npt.NDArray[np.object_]:
        cache = self._cache
        if cache is not None and cache[0] is table and cache[1] == table.version:
            return cache[2]
        with self._lock, table.lock:
            version = table.version
            labels = np.full(table.capacity, None, dtype=np.object_)
            for endpoint in table:
                labels[table.row(endpoint.name)] = endpoint.labels.get(self._label)
            self._cache = (table, version, labels)
        return labels


_header_label_affinity: type[Scorer] = HeaderLabelAffinityScorer
