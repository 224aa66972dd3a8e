"""``disaggregatedset-rollout-screener`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/screener/disaggregatedsetrollout/``;
``docs/plugins/disaggregatedset-rollout-screener.md``).

During a DisaggregatedSet rollout, prefill and decode endpoints of different revisions
must never serve one request. The screener runs once per request, before the data
producers and every profile (llm-d-router Director step 7), so no later filter, scorer
or picker can undo it:

1. *Revision gating* (``revisionGating.mode`` ``sum`` or ``max-role``): the Ready pods
   in scope (``scope.labelSelector``) are counted per (revision, role); a revision is
   *covered* when every required role has at least one. Candidates of uncovered
   revisions (and candidates without a revision label) are dropped. Without a strict
   selector header, one covered revision among the candidates' is drawn with the
   weights below from the cycle's seeded generator, and only its candidates are kept.
2. *Strict header selectors*: each ``strict`` selector whose header the request carries
   keeps the candidates whose ``labelKey`` label equals the header value; none left is
   an empty answer (503).

Weights: ``sum`` = the revision's pods over all required roles; ``max-role`` = the
revision's pods of the *dominant* role, the required role with the most pods over all
covered revisions (ties: the first listed). A response hook then copies each selector's
``labelKey`` label of the serving endpoint into its ``headerName`` response header.

Pods are the table's endpoints: alive and healthy = Ready; one pod per endpoint name
without GIE's ``-rank-<n>`` suffix (data-parallel ranks of a pod count once). The counts
are rebuilt when the table's structure or health changes (``table.version``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Handle, ResponseReceived, Screener
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Request,
    Response,
    SchedulingResult,
)
from inference_sched.params import ParamCheck, param
from inference_sched.state.labels import LabelSelector, check_label_key, parse_selector
from inference_sched.state.table import EndpointTable

__all__ = [
    "DEFAULT_REVISION_LABEL",
    "DEFAULT_ROLE_LABEL",
    "DisaggregatedSetRolloutScreener",
    "HeaderSelector",
    "RevisionGating",
    "RolloutScope",
    "RolloutScreenerParams",
    "revision_weights",
]

DEFAULT_REVISION_LABEL: Final = "disaggregatedset.x-k8s.io/revision"
"""Label naming a pod's rollout revision (llm-d-router ``DefaultRevisionLabel``)."""
DEFAULT_ROLE_LABEL: Final = "disaggregatedset.x-k8s.io/role"
"""Label naming a pod's role (llm-d-router ``DefaultRoleLabel``)."""

GatingMode = Literal["sum", "max-role", "disabled"]
SelectorMode = Literal["strict", "prefer"]
_GATING_MODES: Final = ("sum", "max-role", "disabled")
_SELECTOR_MODES: Final = ("strict", "prefer")
_RANK_SUFFIX: Final = re.compile(r"-rank-\d+$")
_HEADER_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token


# ====================================================================== parameters
def _mapping(raw: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """``raw`` is a mapping with every ``required`` key and no key outside both lists."""
    keys = (*required, *optional)
    if not isinstance(raw, Mapping):
        raise ParamCheck(where, "a mapping with keys " + ", ".join(keys), raw)
    for key in raw:
        if key not in keys:
            raise ParamCheck(f"{where}.{key}", "one of the keys " + ", ".join(keys), key)
    for key in required:
        if key not in raw:
            raise ParamCheck(f"{where}.{key}", "a value (required)", None)


def _non_empty_str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ParamCheck(where, "a non-empty str", value)
    return value


@attrs.frozen
class RolloutScope:
    """``scope``: which pods count towards revision coverage."""

    label_selector: LabelSelector
    """The parsed ``scope.labelSelector`` (apimachinery string syntax)."""
    text: str
    """The selector as written."""


def _parse_scope(raw: Any) -> RolloutScope:
    if isinstance(raw, RolloutScope):
        return raw
    _mapping(raw, "scope", ("labelSelector",), ())
    text = raw["labelSelector"]
    if not isinstance(text, str) or not text.strip():
        raise ParamCheck("scope.labelSelector", "a non-empty label selector string", text)
    return RolloutScope(parse_selector(text, "scope.labelSelector"), text)


@attrs.frozen
class HeaderSelector:
    """One ``headerSelectors`` entry: a request/response header mapped to a pod label."""

    name: str
    """Stable selector id (the ``selector`` label of the no-match counter)."""
    header_name: str
    """Request and response header carrying the label value (lower-cased)."""
    label_key: str
    """Pod label compared with the request header and copied into the response header."""
    mode: SelectorMode
    """``strict``: screen candidates; ``prefer``: only stamp the response header."""


def _parse_selector_entry(i: int, raw: Any) -> HeaderSelector:
    where = f"headerSelectors[{i}]"
    _mapping(raw, where, ("name", "headerName", "labelKey", "mode"), ())
    name = _non_empty_str(f"{where}.name", raw["name"])
    header = _non_empty_str(f"{where}.headerName", raw["headerName"])
    if not _HEADER_RE.match(header):
        raise ParamCheck(f"{where}.headerName", "an HTTP header name", header)
    label_key = check_label_key(f"{where}.labelKey", raw["labelKey"])
    mode = raw["mode"]
    if mode not in _SELECTOR_MODES:
        raise ParamCheck(f"{where}.mode", "one of 'strict', 'prefer'", mode)
    return HeaderSelector(name, header.lower(), label_key, mode)


def _parse_selectors(raw: Any) -> tuple[HeaderSelector, ...]:
    if isinstance(raw, tuple) and all(isinstance(s, HeaderSelector) for s in raw):
        return raw
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ParamCheck("headerSelectors", "a list of {name, headerName, labelKey, mode}", raw)
    selectors = tuple(_parse_selector_entry(i, item) for i, item in enumerate(raw))
    names: set[str] = set()
    headers: set[str] = set()
    for i, selector in enumerate(selectors):
        if selector.name in names:
            raise ParamCheck(f"headerSelectors[{i}].name", "a name not used before", selector.name)
        if selector.header_name in headers:
            raise ParamCheck(
                f"headerSelectors[{i}].headerName",
                "a header not used before (case-insensitive)",
                selector.header_name,
            )
        names.add(selector.name)
        headers.add(selector.header_name)
    return selectors


@attrs.frozen
class RevisionGating:
    """``revisionGating``: how revisions are checked and weighted."""

    mode: GatingMode
    """``sum``, ``max-role`` or ``disabled`` (no coverage check, no draw)."""
    required_roles: tuple[str, ...] = ()
    """``requireRoles.values``: roles each needing a Ready pod (empty when disabled)."""
    revision_label_key: str = DEFAULT_REVISION_LABEL
    """Label naming a pod's revision."""
    role_label_key: str = DEFAULT_ROLE_LABEL
    """Label naming a pod's role."""

    @property
    def is_active(self) -> bool:
        """Whether coverage gating and the weighted draw run."""
        return self.mode != "disabled"


def _parse_roles(raw: Any) -> tuple[str, ...]:
    _mapping(raw, "revisionGating.requireRoles", ("values",), ())
    values = raw["values"]
    where = "revisionGating.requireRoles.values"
    if not isinstance(values, list | tuple) or not values:
        raise ParamCheck(where, "a non-empty list of role names", values)
    seen: set[str] = set()
    for j, role in enumerate(values):
        _non_empty_str(f"{where}[{j}]", role)
        if role in seen:
            raise ParamCheck(f"{where}[{j}]", "a role not listed before", role)
        seen.add(role)
    return tuple(values)


def _parse_gating(raw: Any) -> RevisionGating:
    if isinstance(raw, RevisionGating):
        return raw
    _mapping(raw, "revisionGating", ("mode",), ("requireRoles", "revisionLabelKey", "roleLabelKey"))
    mode = raw["mode"]
    if mode not in _GATING_MODES:
        raise ParamCheck("revisionGating.mode", "one of 'sum', 'max-role', 'disabled'", mode)
    roles: tuple[str, ...] = ()
    if mode != "disabled":
        if raw.get("requireRoles") is None:
            raise ParamCheck(
                "revisionGating.requireRoles", f"{{values: [...]}} (required for mode {mode})", None
            )
        roles = _parse_roles(raw["requireRoles"])
    elif raw.get("requireRoles") is not None:
        _parse_roles(raw["requireRoles"])  # still checked; unused
    revision_key = raw.get("revisionLabelKey") or DEFAULT_REVISION_LABEL
    role_key = raw.get("roleLabelKey") or DEFAULT_ROLE_LABEL
    check_label_key("revisionGating.revisionLabelKey", revision_key)
    check_label_key("revisionGating.roleLabelKey", role_key)
    return RevisionGating(mode, roles, revision_key, role_key)


def _instance_of(cls: type[Any], what: str) -> Any:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ParamCheck(attribute.alias or attribute.name, what, value)

    return check


_IS_SCOPE: Final = _instance_of(RolloutScope, "{labelSelector: '<selector>'}")
_IS_GATING: Final = _instance_of(RevisionGating, "{mode, requireRoles: {values}, ...}")


def _is_selectors(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(s, HeaderSelector) for s in value):
        raise ParamCheck("headerSelectors", "a tuple of HeaderSelector", value)


@attrs.frozen
class RolloutScreenerParams:
    """Parameters of ``disaggregatedset-rollout-screener`` (llm-d-router)."""

    scope: RolloutScope = param(  # noqa: RUF009 - an attrs field
        alias="scope",
        parse=_parse_scope,
        check=_IS_SCOPE,
    )
    """``{labelSelector}`` (required): the pods counted for revision coverage, an
    apimachinery selector string such as ``disaggregatedset.x-k8s.io/name=my-set``."""
    revision_gating: RevisionGating = param(  # noqa: RUF009 - an attrs field
        alias="revisionGating",
        parse=_parse_gating,
        check=_IS_GATING,
    )
    """``{mode: sum|max-role|disabled, requireRoles: {values}, revisionLabelKey,
    roleLabelKey}`` (required; ``requireRoles.values`` required unless disabled)."""
    header_selectors: tuple[HeaderSelector, ...] = param(
        (), alias="headerSelectors", parse=_parse_selectors, check=_is_selectors
    )
    """``[{name, headerName, labelKey, mode: strict|prefer}]``: header-to-label mappings
    for strict screening and response-header stamping (names and headers unique)."""


# ====================================================================== weights
def revision_weights(
    counts: Mapping[str, Mapping[str, int]], required_roles: tuple[str, ...], mode: str
) -> dict[str, int]:
    """Weight of every covered revision (every required role has >= 1 pod).

    ``sum``: the revision's pods over the required roles. ``max-role``: its pods of the
    dominant role, the required role with the most pods over all covered revisions
    (ties: the first listed). ``disabled`` or no required roles: no revision.
    """
    if mode == "disabled" or not required_roles:
        return {}
    covered = {
        rev: per_role
        for rev, per_role in counts.items()
        if all(per_role.get(role, 0) > 0 for role in required_roles)
    }
    if mode == "max-role":
        dominant, best = required_roles[0], -1
        for role in required_roles:
            total = sum(per_role.get(role, 0) for per_role in covered.values())
            if total > best:  # strictly greater: the first listed wins a tie
                dominant, best = role, total
        return {rev: per_role.get(dominant, 0) for rev, per_role in covered.items()}
    return {
        rev: sum(per_role.get(role, 0) for role in required_roles)
        for rev, per_role in covered.items()
    }


@attrs.frozen(eq=False)
class _Snapshot:
    """What the screener derives from one table version."""

    version: int
    revisions: tuple[str, ...]  # every revision label value on any endpoint, sorted
    row_revision: npt.NDArray[np.int32]  # per row: index into revisions, -1 = none
    shares: npt.NDArray[np.float64]  # per revision index: weight / total (0: uncovered)
    role_counts: Mapping[str, Mapping[str, int]]  # in-scope Ready pods, by revision, role
    selector_values: tuple[npt.NDArray[np.object_], ...]  # per strict selector, per row


# ====================================================================== plugin
@register("disaggregatedset-rollout-screener")
class DisaggregatedSetRolloutScreener:
    """Keeps one covered revision per request and applies strict header selectors;
    stamps the served endpoint's selector labels on the response.

    Metrics (the lead exports them with ``plugin_type`` / ``plugin_name`` labels):
    :attr:`strict_header_no_match_total` and :attr:`revision_gating_share`.
    """

    stability: ClassVar[str] = "alpha"
    type: ClassVar[str]
    Params = RolloutScreenerParams

    def __init__(self, name: str, params: RolloutScreenerParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        gating = params.revision_gating
        self.mode: str = gating.mode
        """The gating mode (the ``mode`` label of the share gauge)."""
        self._gating = gating
        self._scope = params.scope.label_selector
        self._strict = tuple(s for s in params.header_selectors if s.mode == "strict")
        self._lock = threading.Lock()
        self._cache: tuple[EndpointTable, _Snapshot] | None = None
        self.strict_header_no_match_total: dict[str, int] = {s.name: 0 for s in self._strict}
        """``disaggregatedset_strict_header_no_match_total`` by selector name: strict
        selections that matched no endpoint (the request failed closed)."""
        self.revision_gating_share: dict[str, float] = {}
        """``disaggregatedset_revision_gating_share`` by revision: the current weighted
        share in [0, 1] of every revision observed in scope (uncovered ones 0); a
        revision that disappears is dropped. Refreshed when the table changes."""

    # ------------------------------------------------------------------ state
    def _snapshot(self, table: EndpointTable) -> _Snapshot:
        cache = self._cache
        if cache is not None and cache[0] is table and cache[1].version == table.version:
            return cache[1]
        with self._lock, table.lock:
            snapshot = self._build(table)
            self._cache = (table, snapshot)
            self.revision_gating_share = {
                rev: float(snapshot.shares[snapshot.revisions.index(rev)])
                for rev in snapshot.role_counts
            }
        return snapshot

    def _build(self, table: EndpointTable) -> _Snapshot:
        gating = self._gating
        revision_key, role_key = gating.revision_label_key, gating.role_label_key
        endpoints = list(table)
        rows = [table.row(e.name) for e in endpoints]
        revisions = tuple(sorted({e.labels.get(revision_key, "") for e in endpoints} - {""}))
        index = {rev: i for i, rev in enumerate(revisions)}
        row_revision = np.full(table.capacity, -1, dtype=np.int32)
        selector_values = tuple(
            np.full(table.capacity, "", dtype=object) for _ in range(len(self._strict))
        )
        pods: dict[str, dict[str, set[str]]] = {}
        for endpoint, row in zip(endpoints, rows, strict=True):
            labels = endpoint.labels
            revision = labels.get(revision_key, "")
            if revision:
                row_revision[row] = index[revision]
            for values, selector in zip(selector_values, self._strict, strict=True):
                values[row] = labels.get(selector.label_key, "")
            role = labels.get(role_key, "")
            if (
                gating.is_active
                and revision
                and role
                and bool(table.is_healthy[row])
                and self._scope.matches(labels)
            ):
                pod = _RANK_SUFFIX.sub("", endpoint.name)
                pods.setdefault(revision, {}).setdefault(role, set()).add(pod)
        counts = {
            rev: {role: len(names) for role, names in per_role.items()}
            for rev, per_role in pods.items()
        }
        weights = revision_weights(counts, gating.required_roles, gating.mode)
        total = sum(weights.values())
        shares = np.zeros(len(revisions), dtype=np.float64)
        if total > 0:
            for rev, weight in weights.items():
                shares[index[rev]] = weight / total
        return _Snapshot(table.version, revisions, row_revision, shares, counts, selector_values)

    def role_counts(self, table: EndpointTable) -> Mapping[str, Mapping[str, int]]:
        """Ready in-scope pods by revision and role (empty when gating is disabled)."""
        return self._snapshot(table).role_counts

    # ------------------------------------------------------------------ screen
    def screen(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Candidates of one covered revision (the weighted draw, or every covered one
        when a strict header is present), then those matching each present strict
        header; an empty array when nothing is left (the cycle answers 503)."""
        snapshot = self._snapshot(table)
        kept = np.asarray(candidates, dtype=np.int32)
        headers = request.headers
        if self._gating.is_active:
            revision_of = snapshot.row_revision[kept]
            covered = np.zeros(len(kept), dtype=np.bool_)
            has_revision = revision_of >= 0
            covered[has_revision] = snapshot.shares[revision_of[has_revision]] > 0.0
            kept, revision_of = kept[covered], revision_of[covered]
            if len(kept) and not any(headers.get(s.header_name) for s in self._strict):
                seen = np.unique(revision_of)  # sorted: revision indices follow names
                chosen = int(seen[0])
                if len(seen) > 1:
                    weights = snapshot.shares[seen]
                    x = cycle.rng.random() * float(weights.sum())
                    at = int(np.searchsorted(np.cumsum(weights), x, side="right"))
                    chosen = int(seen[min(at, len(seen) - 1)])
                kept = kept[revision_of == chosen]
        for selector, values in zip(self._strict, snapshot.selector_values, strict=True):
            if len(kept) == 0:
                break
            wanted = headers.get(selector.header_name)
            if not wanted:
                continue
            kept = kept[values[kept] == wanted]
            if len(kept) == 0:
                with self._lock:
                    self.strict_header_no_match_total[selector.name] += 1
        return kept

    # ------------------------------------------------------------------ response
    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Copy each selector's ``labelKey`` label of the served endpoint (the primary
        pick) into its ``headerName`` response header (non-empty values only)."""
        endpoint = result.picked(result.primary_profile_name)
        if endpoint is None:
            return
        for selector in self.params.header_selectors:
            value = endpoint.labels.get(selector.label_key, "")
            if value:
                response.set_headers[selector.header_name] = value


_screener: type[Screener] = DisaggregatedSetRolloutScreener
_response_received: type[ResponseReceived] = DisaggregatedSetRolloutScreener
