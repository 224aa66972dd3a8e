"""Filter and score on one numeric endpoint attribute: ``endpoint-attribute-filter`` and
``endpoint-attribute-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/filter/endpointattribute/filter.go`` and
``pkg/epp/framework/plugins/scheduling/scorer/endpointattribute/endpointattribute.go``;
``docs/plugins/endpoint-attribute-filter.md``, ``docs/plugins/endpoint-attribute-scorer.md``).

The attribute is a scalar a data-layer extractor stores per endpoint in
``table.attributes`` (:mod:`inference_sched.state.attributes`) under the key
``"<attribute>/<producer>"``: with ``producer`` omitted, a custom metric of the
``core-metrics-extractor``; with ``producer: ""``, the bare attribute name (what the
multicluster extractor writes). An attribute name containing ``/`` without a
``producer`` is rejected (llm-d-router ``attrmetrics.ResolveConfiguredKey``): it is
almost always the old combined ``"Attribute/Producer"`` spelling, whose key matches
nothing, so the filter would pass everything and the scorer score 0 without a word.

A value that is absent, not a number, NaN or infinite counts as missing.

Reading a key over the candidates goes through one per-row float64 column built from the
attribute store and cached until the key changes (``key_version``), so a cycle is one
gather and a vectorised comparison.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Filter, Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request, ScorerCategory
from inference_sched.params import ParamCheck, boolean, one_of, param
from inference_sched.state.attributes import attribute_key
from inference_sched.state.table import EndpointTable

__all__ = [
    "DEFAULT_PRODUCER",
    "OPERATORS",
    "EndpointAttributeFilter",
    "EndpointAttributeFilterParams",
    "EndpointAttributeScorer",
    "EndpointAttributeScorerParams",
    "FixedRange",
    "LinearAlgorithm",
    "Threshold",
    "linear_scores",
    "resolve_key",
]

DEFAULT_PRODUCER: Final = "core-metrics-extractor"
"""The producer of an attribute configured without ``producer``."""

OPERATORS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "LessThan": operator.lt,
    "LessThanOrEqual": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanOrEqual": operator.ge,
    "Equal": operator.eq,
    "NotEqual": operator.ne,
}
"""``threshold.operator`` → the comparison ``value OP threshold.value``."""

_ON_MISSING: Final = ("Pass", "Fail")
_ALGORITHMS_FILTER: Final = ("threshold",)
_LOWER: Final = "linear_lower_is_better"
_HIGHER: Final = "linear_higher_is_better"


def resolve_key(attribute: str, producer: str | None) -> str:
    """The attribute store key of ``attribute`` from ``producer`` (llm-d-router
    ``ResolveConfiguredKey``): ``None`` selects ``core-metrics-extractor``, ``""`` the bare
    attribute.

    Raises:
        ParamCheck: ``attribute`` contains ``/`` and ``producer`` is None.
    """
    if producer is not None:
        return attribute_key(attribute, producer)
    if "/" in attribute:
        head, _, tail = attribute.rpartition("/")
        raise ParamCheck(
            "attribute",
            "no '/' without a producer: attribute and producer are separate parameters "
            f"(write attribute: {head!r} and producer: {tail!r}; if the name itself "
            "contains '/', set producer explicitly, '' for a producer-agnostic attribute)",
            attribute,
        )
    return attribute_key(attribute, DEFAULT_PRODUCER)


# ------------------------------------------------------------------ parameter parsing
def _mapping(key: str, raw: Any, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """``raw`` as a mapping holding only ``keys`` (errors name ``key``)."""
    if not isinstance(raw, Mapping):
        raise ParamCheck(key, "a mapping with keys " + ", ".join(keys), raw)
    for name in raw:
        if name not in keys:
            raise ParamCheck(f"{key}.{name}", "one of the keys " + ", ".join(keys), name)
    return raw


def _finite(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ParamCheck(key, "a finite number", value)
    return float(value)


def _non_empty(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty str", value)


def _optional_str(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ParamCheck(attribute.alias or attribute.name, "str", value)


@attrs.frozen
class Threshold:
    """The ``threshold`` algorithm: keep an endpoint when ``value OP self.value``."""

    operator: str
    value: float


def _parse_threshold_algorithm(raw: Any) -> Threshold:
    if isinstance(raw, Threshold):
        return raw
    algo = _mapping("algorithm", raw, ("type", "threshold"))
    kind = algo.get("type")
    if kind not in _ALGORITHMS_FILTER:
        raise ParamCheck("algorithm.type", "'threshold' (required)", kind)
    if "threshold" not in algo:
        raise ParamCheck(
            "algorithm.threshold", "a mapping {operator, value} when type is 'threshold'", None
        )
    spec = _mapping("algorithm.threshold", algo["threshold"], ("operator", "value"))
    op = spec.get("operator")
    if op not in OPERATORS:
        raise ParamCheck(
            "algorithm.threshold.operator", "one of " + ", ".join(OPERATORS) + " (required)", op
        )
    if "value" not in spec:
        raise ParamCheck("algorithm.threshold.value", "a finite number (required)", None)
    return Threshold(str(op), _finite("algorithm.threshold.value", spec["value"]))


def _is_threshold(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Threshold) or value.operator not in OPERATORS:
        raise ParamCheck("algorithm", "{type: threshold, threshold: {operator, value}}", value)


@attrs.frozen
class FixedRange:
    """``normalization.fixedRange``: normalise against ``[min, max]`` (``min < max``)."""

    min: float
    max: float


@attrs.frozen
class LinearAlgorithm:
    """The scorer's ``algorithm``: the direction and the normalization (``fixed_range``
    None: adaptive)."""

    lower_is_better: bool
    fixed_range: FixedRange | None


def _parse_linear_algorithm(raw: Any) -> LinearAlgorithm:
    if isinstance(raw, LinearAlgorithm):
        return raw
    algo = _mapping("algorithm", raw, ("type", "normalization"))
    kind = algo.get("type")
    if kind not in (_LOWER, _HIGHER):
        raise ParamCheck("algorithm.type", f"{_LOWER!r} or {_HIGHER!r} (required)", kind)
    norm = _mapping(
        "algorithm.normalization", algo.get("normalization", {}), ("fixedRange", "adaptiveRange")
    )
    if "fixedRange" in norm and "adaptiveRange" in norm:
        raise ParamCheck(
            "algorithm.normalization",
            "at most one of fixedRange and adaptiveRange",
            dict(norm),
        )
    if "adaptiveRange" in norm:
        _mapping("algorithm.normalization.adaptiveRange", norm["adaptiveRange"], ())
    fixed: FixedRange | None = None
    if "fixedRange" in norm:
        where = "algorithm.normalization.fixedRange"
        spec = _mapping(where, norm["fixedRange"], ("min", "max"))
        low = _finite(f"{where}.min", spec.get("min", 0.0))
        high = _finite(f"{where}.max", spec.get("max", 0.0))
        if low >= high:
            raise ParamCheck(where, "min < max", {"min": low, "max": high})
        fixed = FixedRange(low, high)
    return LinearAlgorithm(kind == _LOWER, fixed)


def _is_linear(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, LinearAlgorithm):
        raise ParamCheck(
            "algorithm", f"{{type: {_LOWER} | {_HIGHER}, normalization: {{...}}}}", value
        )


@attrs.frozen
class EndpointAttributeFilterParams:
    """Parameters of ``endpoint-attribute-filter`` (llm-d-router)."""

    attribute: str = param(check=_non_empty)
    """Required: the attribute to read, e.g. ``num_requests_running``; no ``/`` unless
    ``producer`` is set."""
    # param() returns an attrs field specifier (RUF009 cannot tell).
    algorithm: Threshold = param(parse=_parse_threshold_algorithm, check=_is_threshold)  # noqa: RUF009
    """Required: ``{type: threshold, threshold: {operator, value}}``; ``operator`` one of
    LessThan, LessThanOrEqual, GreaterThan, GreaterThanOrEqual, Equal, NotEqual; ``value``
    a finite number."""
    producer: str | None = param(None, check=_optional_str)
    """The plugin that publishes the attribute; omitted: ``core-metrics-extractor``;
    ``""``: the bare attribute name (a producer-agnostic attribute)."""
    on_missing: str = param("Pass", alias="onMissing", check=one_of(*_ON_MISSING))
    """An endpoint without the attribute: ``Pass`` keeps it, ``Fail`` drops it."""
    fallback_on_empty: bool = param(False, alias="fallbackOnEmpty", check=boolean)
    """When no candidate is kept, keep them all instead of none."""

    def __attrs_post_init__(self) -> None:
        resolve_key(self.attribute, self.producer)


@attrs.frozen
class EndpointAttributeScorerParams:
    """Parameters of ``endpoint-attribute-scorer`` (llm-d-router)."""

    attribute_key: str = param(alias="attributeKey", check=_non_empty)
    """Required: the attribute to read; no ``/`` unless ``producer`` is set."""
    # param() returns an attrs field specifier (RUF009 cannot tell).
    algorithm: LinearAlgorithm = param(parse=_parse_linear_algorithm, check=_is_linear)  # noqa: RUF009
    """Required: ``{type, normalization}``; ``type`` ``linear_lower_is_better`` or
    ``linear_higher_is_better``; ``normalization`` at most one of ``fixedRange: {min,
    max}`` (``min < max``; an absent bound is 0) and ``adaptiveRange: {}`` (the
    default)."""
    producer: str | None = param(None, check=_optional_str)
    """The plugin that publishes the attribute; omitted: ``core-metrics-extractor``;
    ``""``: the bare attribute name (a producer-agnostic attribute)."""

    def __attrs_post_init__(self) -> None:
        try:
            resolve_key(self.attribute_key, self.producer)
        except ParamCheck as exc:
            raise ParamCheck("attributeKey", exc.expectation, exc.value) from None


# ------------------------------------------------------------------ the cached column
@attrs.frozen(eq=False)
class _Column:
    table: EndpointTable
    key_version: int
    values: npt.NDArray[np.float64]
    """The attribute of every row (NaN where missing), at least ``capacity`` long."""


class _AttributeReader:
    """The scalar attribute ``key`` over candidate rows, from a per-row column rebuilt
    only when the key's values change or the table grew."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._column: _Column | None = None

    def values(self, table: EndpointTable, candidates: Candidates) -> npt.NDArray[np.float64]:
        """float64 per candidate, NaN where the attribute is missing."""
        store = table.attributes
        column = self._column
        needed = int(candidates.max()) + 1 if len(candidates) else 0
        if (
            column is None
            or column.table is not table
            or column.key_version != store.key_version(self.key)
            or len(column.values) < needed
        ):
            with self._lock:
                # Read the version first: a write during the build bumps it again, so the
                # next call rebuilds rather than keeping a half-updated column.
                version = store.key_version(self.key)
                size = max(table.capacity, needed)
                values = store.scalars(self.key, np.arange(size, dtype=np.int64))
                column = _Column(table, version, values)
                self._column = column
        return column.values[candidates]


def _scaled(v: npt.NDArray[np.float64], low: float, high: float) -> npt.NDArray[np.float64]:
    """``(v - low) / (high - low)`` for ``high > low``, halved first so that no finite
    input overflows (halving is exact)."""
    return (v * 0.5 - low * 0.5) / (high * 0.5 - low * 0.5)


def linear_scores(
    values: npt.NDArray[np.float64], lower_is_better: bool, fixed: FixedRange | None
) -> npt.NDArray[np.float64]:
    """The scorer's formula over ``values`` (NaN = missing, scores 0)."""
    scores = np.zeros(len(values), dtype=np.float64)
    present = ~np.isnan(values)
    if not present.any():
        return scores
    v = values[present]
    if fixed is not None:
        norm = np.clip(_scaled(v, fixed.min, fixed.max), 0.0, 1.0)
    else:
        low, high = float(v.min()), float(v.max())
        if high == low:  # every candidate with a value gets the neutral 1, both directions
            scores[present] = 1.0
            return scores
        norm = _scaled(v, low, high)
    scores[present] = 1.0 - norm if lower_is_better else norm
    return scores


# ------------------------------------------------------------------ plugins
@register("endpoint-attribute-filter")
class EndpointAttributeFilter:
    """Keeps the candidates whose attribute satisfies ``value OP threshold`` (llm-d-router).

    A candidate without the attribute is kept with ``onMissing: Pass`` (the default) and
    dropped with ``Fail``; when none is kept and ``fallbackOnEmpty``, keeps them all.
    Order is kept.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    is_batch_invariant: ClassVar[bool] = True
    """Reads endpoint attributes only, never the request."""
    Params = EndpointAttributeFilterParams

    def __init__(self, name: str, params: EndpointAttributeFilterParams, handle: Handle) -> None:
        self.name = name
        self.key = resolve_key(params.attribute, params.producer)
        """The attribute store key read."""
        self._reader = _AttributeReader(self.key)
        self._compare = OPERATORS[params.algorithm.operator]
        self._threshold = params.algorithm.value
        self._pass_missing = params.on_missing == "Pass"
        self._fallback = params.fallback_on_empty

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """The candidates that satisfy the threshold, in order."""
        values = self._reader.values(table, candidates)
        missing = np.isnan(values)
        with np.errstate(invalid="ignore"):
            keep = np.asarray(self._compare(values, self._threshold), dtype=np.bool_)
        keep = np.where(missing, self._pass_missing, keep)
        kept = candidates[keep]
        if len(kept) == 0 and self._fallback:
            return candidates
        return kept


@register("endpoint-attribute-scorer")
class EndpointAttributeScorer:
    """Linear score of one attribute (llm-d-router): ``n = (v - min) / (max - min)``,
    ``1 - n`` when lower is better; a candidate without the attribute scores 0.

    ``fixedRange`` uses the configured bounds and clamps ``n`` to [0, 1];
    ``adaptiveRange`` (the default) the min and max over the candidates that have the
    attribute, and 1 for all of them when those are equal.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    category: ClassVar[ScorerCategory] = "Distribution"
    is_batch_invariant: ClassVar[bool] = True
    """Reads endpoint attributes only, never the request."""
    Params = EndpointAttributeScorerParams

    def __init__(self, name: str, params: EndpointAttributeScorerParams, handle: Handle) -> None:
        self.name = name
        self.key = resolve_key(params.attribute_key, params.producer)
        """The attribute store key read."""
        self._reader = _AttributeReader(self.key)
        self._lower = params.algorithm.lower_is_better
        self._fixed = params.algorithm.fixed_range

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """The normalised attribute of each candidate (0 where missing)."""
        values = self._reader.values(table, candidates)
        out[: len(candidates)] = linear_scores(values, self._lower, self._fixed)


_endpoint_attribute_filter: type[Filter] = EndpointAttributeFilter
_endpoint_attribute_scorer: type[Scorer] = EndpointAttributeScorer
