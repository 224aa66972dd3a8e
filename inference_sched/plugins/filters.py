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
call per request (:class:`_LabelMaskFilter`). Selector parsing and matching live in
:mod:`inference_sched.state.labels` (re-exported here: :class:`LabelRequirement`,
:class:`LabelSelectorParams`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Filter, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Endpoint, Request, Role
from inference_sched.kernels import filtering
from inference_sched.params import NoParams, ParamCheck, boolean, param
from inference_sched.state.endpoint import ROLE_LABEL
from inference_sched.state.labels import LabelRequirement, LabelSelectorParams
from inference_sched.state.labels import Operator as Operator  # re-export (was defined here)
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
        self._selector = params.selector()
        self._init_cache()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an endpoint with ``labels`` passes the selector."""
        return self._selector.matches(labels)


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
