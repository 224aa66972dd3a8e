"""Filters on endpoint metadata: llm-d's role filters and label filters.

``decode-filter``, ``prefill-filter`` and ``encode-filter`` keep endpoints by their
``llm-d.ai/role`` label value, matched exactly (llm-d-router,
``pkg/epp/framework/plugins/scheduling/filter/bylabel/roles.go``; see
``docs/plugins/decode-filter.md``, ``docs/plugins/prefill-filter.md`` and
``docs/plugins/encode-filter.md``); all are a :class:`_RoleFilter`, a label-mask filter.
``label-selector-filter`` (deprecated alias ``by-label-selector``) keeps endpoints whose
labels match a Kubernetes label selector, and the deprecated ``by-label`` (llm-d-router,
``docs/plugins/by-label.md``) those whose one label takes one of a list of values; both
evaluate their predicate once per endpoint whenever the table's structure changes
(``table.version``), cache the per-row result as a bool mask, and filter with one kernel
call per request (:class:`_LabelMaskFilter`).
"""

from __future__ import annotations

import logging
import re
import threading
import types
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Filter, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Endpoint, Request, Role
from inference_sched.kernels import filtering
from inference_sched.params import NoParams, ParamCheck, boolean, param
from inference_sched.state.endpoint import ROLE_LABEL
from inference_sched.state.table import EndpointTable

__all__ = [
    "ByLabel",
    "ByLabelParams",
    "ByLabelSelector",
    "DecodeFilter",
    "EncodeFilter",
    "LabelRequirement",
    "LabelSelectorParams",
    "LabelSelectorFilter",
    "PrefillFilter",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- label selector
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")

# Kubernetes label syntax (apimachinery validation.IsQualifiedName / IsValidLabelValue).
_NAME: Final = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE: Final = re.compile(rf"^(?:(?P<prefix>[a-z0-9.-]{{1,253}})/)?{_NAME}$")
_PREFIX_RE: Final = re.compile(
    r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
)
_VALUE_RE: Final = re.compile(rf"^(?:{_NAME})?$")


@attrs.frozen
class LabelRequirement:
    """One ``matchExpressions`` entry: ``key``, ``operator`` and ``values``."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics; ``NotIn`` also matches when the label is absent."""
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


def _check_key(where: str, key: Any) -> str:
    if not isinstance(key, str):
        raise ParamCheck(where, "a label key (str)", key)
    match = _KEY_RE.match(key)
    if match is None or (match["prefix"] is not None and not _PREFIX_RE.match(match["prefix"])):
        raise ParamCheck(
            where,
            "a label key: [DNS-subdomain prefix/]name, the name at most 63 characters of "
            "[A-Za-z0-9-_.] starting and ending alphanumeric",
            key,
        )
    return key


def _check_value(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _VALUE_RE.match(value):
        raise ParamCheck(
            where,
            "a label value: empty, or at most 63 characters of [A-Za-z0-9-_.] starting "
            "and ending alphanumeric",
            value,
        )
    return value


def _parse_match_labels(raw: Any) -> Mapping[str, str]:
    if not isinstance(raw, Mapping):
        raise ParamCheck("matchLabels", "a mapping of label key to value", raw)
    for key, value in raw.items():
        _check_key("matchLabels", key)
        _check_value(f"matchLabels.{key}", value)
    return types.MappingProxyType(dict(raw))


def _parse_requirement(i: int, raw: Any) -> LabelRequirement:
    where = f"matchExpressions[{i}]"
    if not isinstance(raw, Mapping):
        raise ParamCheck(where, "a mapping with keys key, operator and values", raw)
    unknown = sorted(set(raw) - {"key", "operator", "values"}, key=str)
    if unknown:
        raise ParamCheck(where, "only the keys key, operator and values", unknown[0])
    if "key" not in raw:
        raise ParamCheck(f"{where}.key", "a label key (required)", None)
    key = _check_key(f"{where}.key", raw["key"])
    operator = raw.get("operator")
    if operator not in _OPERATORS:
        raise ParamCheck(f"{where}.operator", "one of " + ", ".join(_OPERATORS), operator)
    values = raw.get("values")
    if values is None:
        values = []
    if not isinstance(values, list | tuple):
        raise ParamCheck(f"{where}.values", "a list of str", values)
    for j, value in enumerate(values):
        _check_value(f"{where}.values[{j}]", value)
    if operator in ("In", "NotIn") and not values:
        raise ParamCheck(f"{where}.values", f"a non-empty list for operator {operator}", values)
    if operator in ("Exists", "DoesNotExist") and values:
        raise ParamCheck(f"{where}.values", f"no values for operator {operator}", values)
    return LabelRequirement(key, operator, tuple(values))


def _parse_match_expressions(raw: Any) -> tuple[LabelRequirement, ...]:
    if not isinstance(raw, list | tuple):
        raise ParamCheck("matchExpressions", "a list of {key, operator, values}", raw)
    return tuple(_parse_requirement(i, item) for i, item in enumerate(raw))


def _is_match_labels(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _parse_match_labels(value)


def _is_requirements(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(r, LabelRequirement) for r in value):
        raise ParamCheck("matchExpressions", "a tuple of LabelRequirement", value)


def _empty_labels() -> Mapping[str, str]:
    return types.MappingProxyType({})


@attrs.frozen
class LabelSelectorParams:
    """A Kubernetes ``LabelSelector``; every requirement must hold (an empty one matches
    every endpoint)."""

    match_labels: Mapping[str, str] = param(
        alias="matchLabels",
        factory=_empty_labels,
        parse=_parse_match_labels,
        check=_is_match_labels,
    )
    """Labels an endpoint must carry with exactly these values."""
    match_expressions: tuple[LabelRequirement, ...] = param(
        (), alias="matchExpressions", parse=_parse_match_expressions, check=_is_requirements
    )
    """Requirements ``{key, operator: In|NotIn|Exists|DoesNotExist, values}``."""


class _LabelMaskFilter:
    """Keeps the candidates whose labels pass :meth:`matches`, in order.

    The predicate is evaluated once per endpoint whenever the table's structure changes
    (``table.version``) and cached as a per-row bool mask. A subclass sets ``name``,
    calls :meth:`_init_cache` and defines :meth:`matches`.
    """

    type: ClassVar[str]
    name: str
    is_batch_invariant: ClassVar[bool] = True
    """Reads endpoint metadata only: a batch can filter once for all its requests."""

    def _init_cache(self) -> None:
        self._lock = threading.Lock()
        self._cache: tuple[EndpointTable, int, npt.NDArray[np.bool_]] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an endpoint with ``labels`` passes."""
        raise NotImplementedError

    def matches_endpoint(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` passes (by default: its labels, :meth:`matches`)."""
        return self.matches(endpoint.labels)

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Matching candidates, in order."""
        out = np.empty(len(candidates), dtype=np.int32)
        count = filtering.filter_by_mask(self._mask(table), candidates, out)
        return out[:count]

    def _mask(self, table: EndpointTable) -> npt.NDArray[np.bool_]:
        cache = self._cache
        if cache is not None and cache[0] is table and cache[1] == table.version:
            return cache[2]
        with self._lock, table.lock:
            version = table.version
            mask = np.zeros(table.capacity, dtype=np.bool_)
            for endpoint in table:
                mask[table.row(endpoint.name)] = self.matches_endpoint(endpoint)
            self._cache = (table, version, mask)
        return mask


# ---------------------------------------------------------------- role filters
_DECODE_LABELS: Final = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})
_PREFILL_LABELS: Final = frozenset(
    {"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"}
)
_ENCODE_LABELS: Final = frozenset({"encode", "encode-prefill", "encode-prefill-decode"})


class _RoleFilter(_LabelMaskFilter):
    """Keeps the candidates whose ``llm-d.ai/role`` label value is one of
    :attr:`_valid_values`, in order, matched exactly as llm-d-router's ``bylabel``
    filter does (case-sensitive, no trimming: ``Decode`` or ``" decode"`` is no role).

    An endpoint without the label passes when :attr:`_allows_no_label`; one given a
    :class:`Role` explicitly (``Endpoint(role=...)``) but no label is judged by that
    role's label spelling. A subclass sets both attributes and its docstring, and
    registers itself.
    """

    Params = NoParams
    stability: ClassVar[str] = "beta"
    _valid_values: ClassVar[frozenset[str]]
    _allows_no_label: ClassVar[bool] = False

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name
        self._init_cache()

    def matches_endpoint(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint``'s role label (or given role) is one this filter keeps."""
        value = endpoint.labels.get(ROLE_LABEL)
        if value is None:
            value = endpoint.role.label  # None for Role.UNSET / Role.OTHER
            if value is None:
                return self._allows_no_label and endpoint.role == Role.UNSET
        return value in self._valid_values


@register("decode-filter")
class DecodeFilter(_RoleFilter):
    """Keeps endpoints that can decode, and endpoints without a role label.

    Kept roles: ``decode``, ``prefill-decode``, ``both``, ``encode-prefill-decode``.
    """

    _valid_values = _DECODE_LABELS
    _allows_no_label = True


_decode_filter: type[Filter] = DecodeFilter


@register("prefill-filter")
class PrefillFilter(_RoleFilter):
    """Keeps endpoints that can prefill; endpoints without a role label are dropped.

    Kept roles: ``prefill``, ``encode-prefill``, ``prefill-decode``, ``both``,
    ``encode-prefill-decode``.
    """

    _valid_values = _PREFILL_LABELS


_prefill_filter: type[Filter] = PrefillFilter


@register("encode-filter")
class EncodeFilter(_RoleFilter):
    """Keeps endpoints that can encode (llm-d-router); endpoints without a role label are
    dropped.

    Kept roles: ``encode``, ``encode-prefill``, ``encode-prefill-decode``.
    """

    _valid_values = _ENCODE_LABELS


_encode_filter: type[Filter] = EncodeFilter


@register("label-selector-filter")
class LabelSelectorFilter(_LabelMaskFilter):
    """Keeps endpoints whose labels match a Kubernetes label selector (llm-d)."""

    stability: ClassVar[str] = "beta"
    Params = LabelSelectorParams

    def __init__(self, name: str, params: LabelSelectorParams, handle: Handle) -> None:
        self.name = name
        self._requirements = (
            *(LabelRequirement(k, "In", (v,)) for k, v in params.match_labels.items()),
            *params.match_expressions,
        )
        self._init_cache()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an endpoint with ``labels`` passes the selector."""
        return all(r.matches(labels) for r in self._requirements)


_label_selector_filter: type[Filter] = LabelSelectorFilter


@register("by-label-selector")
class ByLabelSelector(LabelSelectorFilter):
    """Deprecated alias of ``label-selector-filter`` (llm-d); logs a warning when built."""

    def __init__(self, name: str, params: LabelSelectorParams, handle: Handle) -> None:
        log.warning(
            "plugin %r: type 'by-label-selector' is deprecated; use 'label-selector-filter' "
            "(same parameters)",
            name,
        )
        super().__init__(name, params, handle)


_by_label_selector: type[Filter] = ByLabelSelector


# ---------------------------------------------------------------- by-label
def _non_empty(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty str", value)


def _parse_values(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ParamCheck("validValues", "a list of str", raw)
    for i, value in enumerate(raw):
        if not isinstance(value, str):
            raise ParamCheck(f"validValues[{i}]", "str", value)
    return tuple(raw)


def _is_values(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _parse_values(value)


@attrs.frozen
class ByLabelParams:
    """Parameters of ``by-label`` (llm-d-router): one label and the values it may take."""

    label: str = param(check=_non_empty)
    """The label key to read (required)."""
    valid_values: tuple[str, ...] = param(
        (), alias="validValues", parse=_parse_values, check=_is_values
    )
    """Label values that keep an endpoint."""
    allows_no_label: bool = param(False, alias="allowsNoLabel", check=boolean)
    """Also keep endpoints that do not carry the label."""

    def __attrs_post_init__(self) -> None:
        if not self.valid_values and not self.allows_no_label:
            raise ParamCheck(
                "validValues",
                "at least one value (or allowsNoLabel: true, else no endpoint passes)",
                list(self.valid_values),
            )


@register("by-label")
class ByLabel(_LabelMaskFilter):
    """Deprecated (llm-d-router, since v0.9.0; use ``label-selector-filter``): keeps
    endpoints whose ``label`` value is in ``validValues``, or that lack the label when
    ``allowsNoLabel`` (an absent label reads as ``""``). Logs a warning when built."""

    stability: ClassVar[str] = "beta"
    Params = ByLabelParams

    def __init__(self, name: str, params: ByLabelParams, handle: Handle) -> None:
        log.warning(
            "plugin %r: type 'by-label' is deprecated; use 'label-selector-filter' "
            "(matchExpressions: [{key: %s, operator: In, values: [...]}])",
            name,
            params.label,
        )
        self.name = name
        self._label = params.label
        self._values = frozenset(params.valid_values)
        self._allows_no_label = params.allows_no_label
        self._init_cache()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """``labels[label]`` in ``validValues`` (absent: ``""``), or absent and allowed."""
        if self._label not in labels and self._allows_no_label:
            return True
        return labels.get(self._label, "") in self._values


_by_label: type[Filter] = ByLabel
