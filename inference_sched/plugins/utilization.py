"""Utilization filter: ``utilization-filter`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/filter/``; ``docs/plugins/utilization-filter.md``).

Keeps the candidates whose every configured load metric is at or below its ceiling:
in-flight requests (the ``InFlightLoad`` counters), running requests, waiting-queue
length and KV-cache utilization, read from the :class:`EndpointTable` columns in one
gather per condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import IN_FLIGHT_LOAD
from inference_sched.framework.interfaces import Filter, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import ParamCheck, boolean, param, string
from inference_sched.state.table import EndpointTable

__all__ = ["METRIC_COLUMN", "Condition", "UtilizationFilter", "UtilizationFilterParams"]

METRIC_COLUMN: Final = {
    "active-requests": "inflight_requests",
    "running-requests": "running",
    "waiting-queue": "waiting",
    "kv-cache-utilization": "kv_usage_frac",
}
"""llm-d-router metric name → the :class:`EndpointTable` column it reads."""
_KV: Final = "kv-cache-utilization"


@attrs.frozen
class Condition:
    """One ``conditions`` entry: keep an endpoint only if ``metric <= max_value``."""

    metric: str
    max_value: float


def _parse_condition(i: int, raw: Any) -> Condition:
    where = f"conditions[{i}]"
    if not isinstance(raw, Mapping):
        raise ParamCheck(where, "a mapping with keys metric and maxValue", raw)
    unknown = sorted(set(raw) - {"metric", "maxValue"}, key=str)
    if unknown:
        raise ParamCheck(where, "only the keys metric and maxValue", unknown[0])
    metric = raw.get("metric")
    if metric not in METRIC_COLUMN:
        raise ParamCheck(f"{where}.metric", "one of " + ", ".join(METRIC_COLUMN), metric)
    if "maxValue" not in raw:
        raise ParamCheck(f"{where}.maxValue", "a number >= 0 (required)", None)
    value = raw["maxValue"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ParamCheck(f"{where}.maxValue", "a finite number", value)
    if value < 0:
        raise ParamCheck(f"{where}.maxValue", "a number >= 0", value)
    if metric == _KV and value > 1:
        raise ParamCheck(f"{where}.maxValue", "a number in [0, 1] for kv-cache-utilization", value)
    return Condition(metric, float(value))


def _parse_conditions(raw: Any) -> tuple[Condition, ...]:
    if isinstance(raw, tuple) and all(isinstance(c, Condition) for c in raw):
        return raw
    if not isinstance(raw, list | tuple) or not raw:
        raise ParamCheck("conditions", "a non-empty list of {metric, maxValue}", raw)
    return tuple(_parse_condition(i, item) for i, item in enumerate(raw))


def _is_conditions(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _parse_conditions(value)


@attrs.frozen
class UtilizationFilterParams:
    """Parameters of ``utilization-filter`` (llm-d-router)."""

    conditions: tuple[Condition, ...] = param(parse=_parse_conditions, check=_is_conditions)
    """Required, at least one: ``{metric, maxValue}``; ``metric`` one of
    ``active-requests``, ``running-requests``, ``waiting-queue``, ``kv-cache-utilization``;
    ``maxValue`` a number >= 0 (at most 1 for ``kv-cache-utilization``)."""
    fallback_on_empty: bool = param(False, alias="fallbackOnEmpty", check=boolean)
    """When no candidate passes, keep them all instead of none."""
    in_flight_load_producer_name: str = param("", alias="inFlightLoadProducerName", check=string)
    """Accepted for llm-d-router compatibility and ignored: the in-flight counters live
    in the endpoint table, one producer per table."""


@register("utilization-filter")
class UtilizationFilter:
    """Keeps endpoints whose every condition's metric is ``<= maxValue`` (llm-d-router).

    ``active-requests`` is the scheduler's in-flight request count (``InFlightLoad``),
    the others are scraped metrics; an endpoint never scraped reads 0 and passes.
    """

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    Params = UtilizationFilterParams
    consumes: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD})

    def __init__(self, name: str, params: UtilizationFilterParams, handle: Handle) -> None:
        self.name = name
        self._conditions = tuple((METRIC_COLUMN[c.metric], c.max_value) for c in params.conditions)
        self._fallback = params.fallback_on_empty

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """The candidates within every ceiling, in order (all of them when none is and
        ``fallbackOnEmpty``)."""
        keep: npt.NDArray[np.bool_] = np.ones(len(candidates), dtype=np.bool_)
        for column, ceiling in self._conditions:
            keep &= getattr(table, column)[candidates] <= ceiling
        kept = candidates[keep]
        if len(kept) == 0 and self._fallback:
            return candidates
        return kept


_utilization_filter: type[Filter] = UtilizationFilter
