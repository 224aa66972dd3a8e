"""disaggregatedset-rollout-screener (llm-d-router): pod counts per (revision, role),
the sum / max-role weights, coverage gating, the seeded revision draw, strict header
selectors, response-header stamping, the metrics attributes, parameter errors, and a
Scheduler built from YAML (candidates narrowed; 503 when the screener empties them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_sched.errors import NoEndpointError, ParameterError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    CycleState,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
)
from inference_sched.params import parse_params
from inference_sched.plugins.rollout import (
    DEFAULT_REVISION_LABEL,
    DEFAULT_ROLE_LABEL,
    DisaggregatedSetRolloutScreener,
    revision_weights,
)
from inference_sched.state.endpoint import Endpoint
from inference_sched.state.table import EndpointTable

pytestmark = pytest.mark.unit

REV, ROLE = DEFAULT_REVISION_LABEL, DEFAULT_ROLE_LABEL
SET = "disaggregatedset.x-k8s.io/name"
SLICE = "disaggregatedset.x-k8s.io/slice"


def _table(
    pods: Sequence[tuple[str, Mapping[str, str]]], unhealthy: Sequence[str] = ()
) -> EndpointTable:
    table = EndpointTable(clock=lambda: 0.0)
    for i, (name, labels) in enumerate(pods):
        table.add(Endpoint(name, f"10.0.{i // 256}.{i % 256}", 8000, labels))
    for name in unhealthy:
        table.set_healthy(name, False)
    return table


def _pod(revision: str, role: str, **extra: str) -> dict[str, str]:
    labels = {SET: "s", REV: revision, ROLE: role}
    labels.update({k.replace("_", "/"): v for k, v in extra.items()})
    return labels


def _readme_table() -> EndpointTable:
    """llm-d-router README's 2P:10D rollout step: A has 2 prefill + 9 decode, B 1 + 1."""
    pods = [(f"a-p{i}", _pod("A", "prefill")) for i in range(2)]
    pods += [(f"a-d{i}", _pod("A", "decode")) for i in range(9)]
    pods += [("b-p0", _pod("B", "prefill")), ("b-d0", _pod("B", "decode"))]
    return _table(pods)


def _params(
    mode: str = "sum",
    roles: Sequence[str] | None = ("prefill", "decode"),
    selectors: Sequence[Mapping[str, str]] = (),
    selector: str = f"{SET}=s",
) -> dict[str, Any]:
    gating: dict[str, Any] = {"mode": mode}
    if roles is not None:
        gating["requireRoles"] = {"values": list(roles)}
    return {
        "scope": {"labelSelector": selector},
        "headerSelectors": [dict(s) for s in selectors],
        "revisionGating": gating,
    }


def _screener(table: EndpointTable, **kwargs: Any) -> DisaggregatedSetRolloutScreener:
    parsed = parse_params(DisaggregatedSetRolloutScreener.Params, _params(**kwargs), "p")
    return DisaggregatedSetRolloutScreener("rs", parsed, PluginHandle(table))


def _names(table: EndpointTable, rows: np.ndarray) -> list[str]:
    return [table.endpoint_at(int(r)).name for r in rows]


STRICT_REV = {
    "name": "revision",
    "headerName": "X-Disagg-Revision",
    "labelKey": REV,
    "mode": "strict",
}
PREFER_SLICE = {
    "name": "slice",
    "headerName": "x-disagg-slice",
    "labelKey": SLICE,
    "mode": "prefer",
}


# ----------------------------------------------------------------------- weights
@pytest.mark.parametrize(
    ("counts", "roles", "mode", "expected"),
    [
        ({"A": {"p": 2, "d": 9}, "B": {"p": 1, "d": 1}}, ("p", "d"), "sum", {"A": 11, "B": 2}),
        ({"A": {"p": 2, "d": 9}, "B": {"p": 1, "d": 1}}, ("p", "d"), "max-role", {"A": 9, "B": 1}),
        # prefill dominates: 10P:2D
        ({"A": {"p": 9, "d": 2}, "B": {"p": 1, "d": 1}}, ("p", "d"), "max-role", {"A": 9, "B": 1}),
        # tie (3 = 3): the first listed role wins
        ({"A": {"p": 2, "d": 1}, "B": {"p": 1, "d": 2}}, ("d", "p"), "max-role", {"A": 1, "B": 2}),
        ({"A": {"p": 2, "d": 1}, "B": {"p": 1, "d": 2}}, ("p", "d"), "max-role", {"A": 2, "B": 1}),
        # B lacks decode: not covered, and its prefill does not count towards the dominant role
        ({"A": {"p": 1, "d": 2}, "B": {"p": 5}}, ("p", "d"), "max-role", {"A": 2}),
        ({"A": {"p": 1, "d": 2}, "B": {"p": 5}}, ("p", "d"), "sum", {"A": 3}),
        ({"A": {"p": 1, "d": 2, "x": 7}}, ("p", "d"), "sum", {"A": 3}),  # other roles ignored
        ({"A": {"p": 1, "d": 2}}, ("p", "d"), "disabled", {}),
        ({}, ("p",), "sum", {}),
    ],
)
def test_revision_weights(
    counts: dict[str, dict[str, int]], roles: tuple[str, ...], mode: str, expected: dict[str, int]
) -> None:
    assert revision_weights(counts, roles, mode) == expected


def test_readme_shares() -> None:
    table = _readme_table()
    summed = _screener(table, mode="sum")
    summed.screen(
        CycleState(np.random.default_rng(0)), Request.create("m"), table, table.candidates()
    )
    assert summed.role_counts(table) == {
        "A": {"prefill": 2, "decode": 9},
        "B": {"prefill": 1, "decode": 1},
    }
    assert summed.revision_gating_share == pytest.approx({"A": 11 / 13, "B": 2 / 13})
    max_role = _screener(table, mode="max-role")
    max_role.role_counts(table)
    assert max_role.revision_gating_share == pytest.approx({"A": 0.9, "B": 0.1})
    assert max_role.mode == "max-role"


def test_pod_counting_rules() -> None:
    pods = [
        ("p0-rank-0", _pod("A", "prefill")),  # two data-parallel ranks of one pod
        ("p0-rank-1", _pod("A", "prefill")),
        ("d0", _pod("A", "decode")),
        ("d1", _pod("A", "decode")),  # not Ready
        ("d2", {REV: "A", ROLE: "decode"}),  # out of scope
        ("d3", {SET: "s", REV: "A"}),  # no role label
        ("d4", {SET: "s", ROLE: "decode"}),  # no revision label
        ("c0", _pod("C", "decode")),  # C has no prefill: observed, share 0
    ]
    table = _table(pods, unhealthy=["d1"])
    screener = _screener(table)
    assert screener.role_counts(table) == {"A": {"prefill": 1, "decode": 1}, "C": {"decode": 1}}
    assert screener.revision_gating_share == {"A": 1.0, "C": 0.0}


def test_counts_follow_table_changes_and_gone_revisions_leave_the_gauge() -> None:
    table = _readme_table()
    screener = _screener(table)
    assert screener.revision_gating_share == {}  # nothing computed yet
    screener.role_counts(table)
    assert set(screener.revision_gating_share) == {"A", "B"}
    table.set_healthy("b-d0", False)  # B loses its only decode: uncovered, share 0
    assert screener.role_counts(table)["B"] == {"prefill": 1}
    assert screener.revision_gating_share == {"A": 1.0, "B": 0.0}
    table.remove("b-p0")
    table.remove("b-d0")
    screener.role_counts(table)
    assert screener.revision_gating_share == {"A": 1.0}


# ----------------------------------------------------------------------- screen
def _expected_choice(seed: int, shares: Sequence[tuple[str, float]]) -> str:
    x = np.random.default_rng(seed).random() * sum(s for _, s in shares)
    cumulative = 0.0
    for revision, share in shares:
        cumulative += share
        if x < cumulative:
            return revision
    return shares[-1][0]


@pytest.mark.parametrize("seed", range(12))
def test_the_draw_keeps_one_revision_chosen_with_the_cycle_rng(seed: int) -> None:
    table = _readme_table()
    screener = _screener(table, mode="sum")
    kept = screener.screen(
        CycleState(np.random.default_rng(seed)), Request.create("m"), table, table.candidates()
    )
    chosen = _expected_choice(seed, [("A", 11 / 13), ("B", 2 / 13)])
    expected = [e.name for e in table if e.labels[REV] == chosen]
    assert _names(table, kept) == expected
    assert kept.dtype == np.int32


def test_seeded_draws_are_reproducible_and_use_both_revisions() -> None:
    table = _readme_table()
    screener = _screener(table, mode="max-role")

    def run(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(60):
            kept = screener.screen(CycleState(rng), Request.create("m"), table, table.candidates())
            out.append(table.endpoint_at(int(kept[0])).labels[REV])
        return out

    assert run(3) == run(3)
    assert set(run(3)) == {"A", "B"}


def test_the_draw_only_considers_covered_revisions_among_the_candidates() -> None:
    table = _readme_table()
    screener = _screener(table)
    b_rows = np.asarray([table.row("b-p0"), table.row("b-d0")], dtype=np.int32)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    kept = screener.screen(CycleState(rng), Request.create("m"), table, b_rows)
    assert _names(table, kept) == ["b-p0", "b-d0"]
    assert rng.bit_generator.state == state  # one revision: no draw


def test_uncovered_revisions_and_unlabelled_candidates_are_dropped() -> None:
    pods = [
        ("a-p", _pod("A", "prefill")),
        ("a-d", _pod("A", "decode")),
        ("b-d", _pod("B", "decode")),  # B has no prefill
        ("plain", {SET: "s"}),  # no revision label
    ]
    table = _table(pods)
    kept = _screener(table).screen(
        CycleState(np.random.default_rng(0)), Request.create("m"), table, table.candidates()
    )
    assert _names(table, kept) == ["a-p", "a-d"]


def test_nothing_covered_is_an_empty_answer() -> None:
    table = _table([("a-p", _pod("A", "prefill"))])
    kept = _screener(table).screen(
        CycleState(np.random.default_rng(0)), Request.create("m"), table, table.candidates()
    )
    assert len(kept) == 0
    assert kept.dtype == np.int32


def test_a_strict_header_skips_the_draw_and_selects_its_revision() -> None:
    table = _readme_table()
    screener = _screener(table, selectors=[STRICT_REV])
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    request = Request.create("m", headers={"x-disagg-revision": "B"})
    kept = screener.screen(CycleState(rng), request, table, table.candidates())
    assert _names(table, kept) == ["b-p0", "b-d0"]
    assert rng.bit_generator.state == state
    assert screener.strict_header_no_match_total == {"revision": 0}


def test_a_strict_header_of_an_uncovered_revision_fails_closed_and_is_counted() -> None:
    pods = [
        ("a-p", _pod("A", "prefill")),
        ("a-d", _pod("A", "decode")),
        ("b-d", _pod("B", "decode")),
    ]
    table = _table(pods)
    screener = _screener(table, selectors=[STRICT_REV])
    for header in ("B", "nope"):
        request = Request.create("m", headers={"x-disagg-revision": header})
        kept = screener.screen(
            CycleState(np.random.default_rng(0)), request, table, table.candidates()
        )
        assert len(kept) == 0
    assert screener.strict_header_no_match_total == {"revision": 2}


def test_disabled_mode_keeps_candidates_but_applies_strict_selectors() -> None:
    pods = [
        ("a-p", _pod("A", "prefill", **{"disaggregatedset.x-k8s.io_slice": "s1"})),
        ("b-d", _pod("B", "decode", **{"disaggregatedset.x-k8s.io_slice": "s2"})),
        ("plain", {}),
    ]
    table = _table(pods)
    strict_slice = {**PREFER_SLICE, "mode": "strict"}
    screener = _screener(table, mode="disabled", roles=None, selectors=[strict_slice])
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    everyone = screener.screen(CycleState(rng), Request.create("m"), table, table.candidates())
    assert _names(table, everyone) == ["a-p", "b-d", "plain"]
    assert rng.bit_generator.state == state
    assert screener.role_counts(table) == {}
    assert screener.revision_gating_share == {}
    request = Request.create("m", headers={"x-disagg-slice": "s2"})
    assert _names(table, screener.screen(CycleState(rng), request, table, table.candidates())) == [
        "b-d"
    ]


def test_prefer_selectors_do_not_screen() -> None:
    table = _readme_table()
    screener = _screener(table, selectors=[PREFER_SLICE])
    request = Request.create("m", headers={"x-disagg-slice": "nowhere"})
    kept = screener.screen(CycleState(np.random.default_rng(0)), request, table, table.candidates())
    assert len(kept) in (2, 11)  # one whole revision
    assert screener.strict_header_no_match_total == {}


def test_strict_selectors_apply_in_order_after_the_revision() -> None:
    slice_key = "disaggregatedset.x-k8s.io_slice"
    pods = [
        ("a-p0", _pod("A", "prefill", **{slice_key: "s1"})),
        ("a-d0", _pod("A", "decode", **{slice_key: "s1"})),
        ("a-d1", _pod("A", "decode", **{slice_key: "s2"})),
        ("b-p0", _pod("B", "prefill", **{slice_key: "s1"})),
        ("b-d0", _pod("B", "decode", **{slice_key: "s1"})),
    ]
    table = _table(pods)
    strict_slice = {**PREFER_SLICE, "mode": "strict"}
    screener = _screener(table, selectors=[STRICT_REV, strict_slice])
    request = Request.create("m", headers={"x-disagg-revision": "A", "x-disagg-slice": "s1"})
    kept = screener.screen(CycleState(np.random.default_rng(0)), request, table, table.candidates())
    assert _names(table, kept) == ["a-p0", "a-d0"]
    # only the slice header: every covered revision stays in play, then the slice filters
    request = Request.create("m", headers={"x-disagg-slice": "s2"})
    kept = screener.screen(CycleState(np.random.default_rng(0)), request, table, table.candidates())
    assert _names(table, kept) == ["a-d1"]
    request = Request.create("m", headers={"x-disagg-revision": "B", "x-disagg-slice": "s2"})
    kept = screener.screen(CycleState(np.random.default_rng(0)), request, table, table.candidates())
    assert len(kept) == 0
    assert screener.strict_header_no_match_total == {"revision": 0, "slice": 1}


# ----------------------------------------------------------------------- response
def test_response_headers_are_stamped_from_the_served_endpoint() -> None:
    table = _readme_table()
    screener = _screener(table, selectors=[STRICT_REV, PREFER_SLICE])
    served = Endpoint("b-d0", "10.0.0.9", 8000, {REV: "B", SLICE: "s7"})
    result = SchedulingResult({"decode": ProfileRunResult((0,), (served,), (1.0,))}, "decode")
    response = Response("r1")
    screener.response_received(Request.create("m"), response, result)
    assert response.set_headers == {"x-disagg-revision": "B", "x-disagg-slice": "s7"}
    bare = Endpoint("x", "10.0.0.8", 8000, {REV: "B"})
    response = Response("r2")
    screener.response_received(
        Request.create("m"),
        response,
        SchedulingResult({"decode": ProfileRunResult((0,), (bare,), (1.0,))}, "decode"),
    )
    assert response.set_headers == {"x-disagg-revision": "B"}  # empty labels not written
    failed = Response("r3")
    screener.response_received(
        Request.create("m"), failed, SchedulingResult({"decode": None}, "decode")
    )
    assert failed.set_headers == {}


# ----------------------------------------------------------------------- params
def test_defaults_and_normalisation() -> None:
    params = parse_params(
        DisaggregatedSetRolloutScreener.Params, _params(selectors=[STRICT_REV]), "p"
    )
    gating = params.revision_gating
    assert (gating.revision_label_key, gating.role_label_key) == (REV, ROLE)
    assert gating.required_roles == ("prefill", "decode")
    assert params.header_selectors[0].header_name == "x-disagg-revision"  # lower-cased
    assert params.scope.text == f"{SET}=s"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"revisionGating": {"mode": "sum", "requireRoles": {"values": ["p"]}}},
            r"p\.scope: required key",
        ),
        (
            {**_params(), "scope": {"labelSelector": ""}},
            r"p\.scope\.labelSelector: expected a non-empty",
        ),
        (
            {**_params(), "scope": {"labelSelector": "a in ()"}},
            r"p\.scope\.labelSelector: expected at least one value",
        ),
        (
            {**_params(), "scope": {"matchLabels": {}}},
            r"p\.scope\.matchLabels: expected one of the keys labelSelector",
        ),
        ({"scope": {"labelSelector": "a=b"}}, r"p\.revisionGating: required key"),
        (
            {**_params(), "revisionGating": {"mode": "weighted"}},
            r"p\.revisionGating\.mode: expected one of 'sum'",
        ),
        (
            {**_params(), "revisionGating": {"requireRoles": {"values": ["p"]}}},
            r"p\.revisionGating\.mode: expected a value \(required\)",
        ),
        (
            _params(roles=None),
            r"p\.revisionGating\.requireRoles: expected \{values: \[\.\.\.\]\} "
            r"\(required for mode sum\)",
        ),
        (
            _params(mode="max-role", roles=[]),
            r"p\.revisionGating\.requireRoles\.values: expected a non-empty list",
        ),
        (
            _params(roles=["p", "p"]),
            r"p\.revisionGating\.requireRoles\.values\[1\]: expected a role not listed before",
        ),
        (
            _params(roles=["p", ""]),
            r"p\.revisionGating\.requireRoles\.values\[1\]: expected a non-empty str",
        ),
        (
            {**_params(), "revisionGating": {"mode": "disabled", "roleLabelKey": "Bad Key"}},
            r"p\.revisionGating\.roleLabelKey: expected a label key",
        ),
        (
            {**_params(), "revisionGating": {"mode": "disabled", "extra": 1}},
            r"p\.revisionGating\.extra: expected one of the keys",
        ),
        (
            _params(selectors=[{**STRICT_REV, "mode": "soft"}]),
            r"p\.headerSelectors\[0\]\.mode: expected one of 'strict', 'prefer'",
        ),
        (
            _params(selectors=[{k: v for k, v in STRICT_REV.items() if k != "labelKey"}]),
            r"p\.headerSelectors\[0\]\.labelKey: expected a value \(required\)",
        ),
        (
            _params(selectors=[STRICT_REV, {**PREFER_SLICE, "name": "revision"}]),
            r"p\.headerSelectors\[1\]\.name: expected a name not used before",
        ),
        (
            _params(selectors=[STRICT_REV, {**PREFER_SLICE, "headerName": "x-DISAGG-revision"}]),
            r"p\.headerSelectors\[1\]\.headerName: expected a header not used before",
        ),
        (
            _params(selectors=[{**STRICT_REV, "headerName": "bad header"}]),
            r"p\.headerSelectors\[0\]\.headerName: expected an HTTP header name",
        ),
        ({**_params(), "headerSelectors": {"name": "x"}}, r"p\.headerSelectors: expected a list"),
        (
            {**_params(), "revisionGatting": {}},
            r"unknown key 'revisionGatting' \(did you mean 'revisionGating'\?\)",
        ),
    ],
)
def test_parameter_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(DisaggregatedSetRolloutScreener.Params, raw, "p")


def test_no_parameters_is_an_error() -> None:
    with pytest.raises(ParameterError, match=r"p\.scope: required key is missing"):
        parse_params(DisaggregatedSetRolloutScreener.Params, None, "p")


# ----------------------------------------------------------------------- property
_revs = st.sampled_from(["A", "B", "C"])
_roles = st.sampled_from(["prefill", "decode", "encode"])


@settings(max_examples=60)
@given(
    pods=st.lists(st.tuples(_revs, _roles, st.booleans()), min_size=1, max_size=14),
    mode=st.sampled_from(["sum", "max-role"]),
    header=st.sampled_from([None, "A", "B", "C"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_screen_invariants(
    pods: list[tuple[str, str, bool]], mode: str, header: str | None, seed: int
) -> None:
    table = _table(
        [(f"e{i}", _pod(rev, role)) for i, (rev, role, _) in enumerate(pods)],
        unhealthy=[f"e{i}" for i, (_, _, ready) in enumerate(pods) if not ready],
    )
    candidates = table.candidates()
    if len(candidates) == 0:
        return
    screener = _screener(table, mode=mode, selectors=[STRICT_REV])
    headers = {"x-disagg-revision": header} if header else {}
    kept = screener.screen(
        CycleState(np.random.default_rng(seed)),
        Request.create("m", headers=headers),
        table,
        candidates,
    )
    assert kept.dtype == np.int32
    assert set(kept.tolist()) <= set(candidates.tolist())
    assert list(kept) == sorted(kept)
    counts = screener.role_counts(table)
    kept_revisions = {table.endpoint_at(int(r)).labels[REV] for r in kept}
    for revision in kept_revisions:  # only covered revisions survive
        assert all(counts.get(revision, {}).get(role, 0) > 0 for role in ("prefill", "decode"))
    if header is None:
        assert len(kept_revisions) <= 1
        covered_candidates = {table.endpoint_at(int(r)).labels[REV] for r in candidates} & {
            rev for rev, share in screener.revision_gating_share.items() if share > 0
        }
        assert bool(kept_revisions) == bool(covered_candidates)
    else:
        assert kept_revisions <= {header}


# ----------------------------------------------------------------------- scheduler
CONFIG = f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disaggregatedset-rollout-screener
  name: rollout
  parameters:
    scope:
      labelSelector: "{SET}=s"
    headerSelectors:
    - {{name: revision, headerName: x-disagg-revision, labelKey: {REV}, mode: strict}}
    revisionGating:
      mode: max-role
      requireRoles:
        values: [prefill, decode]
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
"""


def test_scheduler_from_yaml_narrows_candidates_and_answers_503_when_emptied() -> None:
    table = _readme_table()
    scheduler = Scheduler.from_config(CONFIG, table, seed=5)
    picked = [scheduler.schedule(Request.create("m")).endpoint.labels[REV] for _ in range(40)]
    assert set(picked) == {"A", "B"}  # each request sees one revision; both get traffic
    again = Scheduler.from_config(CONFIG, _readme_table(), seed=5)
    assert [again.schedule(Request.create("m")).endpoint.labels[REV] for _ in range(40)] == picked
    pinned = scheduler.schedule(Request.create("m", headers={"x-disagg-revision": "B"}))
    assert pinned.endpoint.name in ("b-p0", "b-d0")
    with pytest.raises(NoEndpointError) as info:
        scheduler.schedule(Request.create("m", headers={"x-disagg-revision": "Z"}))
    assert info.value.screened
    assert info.value.http_status == 503
    assert scheduler.plugins["rollout"].strict_header_no_match_total == {"revision": 1}


def test_a_raising_screener_does_not_break_the_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _readme_table()
    scheduler = Scheduler.from_config(CONFIG, table, seed=0)

    def boom(self: Any, table: EndpointTable) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(DisaggregatedSetRolloutScreener, "_build", boom)
    result = scheduler.schedule(Request.create("m"))
    assert result.endpoint.name in {e.name for e in table}  # answer counts as "keep all"
