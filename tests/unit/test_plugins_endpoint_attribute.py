"""``endpoint-attribute-filter`` and ``endpoint-attribute-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/filter/endpointattribute/filter.go``,
``pkg/epp/framework/plugins/scheduling/scorer/endpointattribute/endpointattribute.go``;
``docs/plugins/endpoint-attribute-filter.md``, ``docs/plugins/endpoint-attribute-scorer.md``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, Request
from inference_sched.params import parse_params
from inference_sched.plugins.endpoint_attribute import (
    EndpointAttributeFilter,
    EndpointAttributeScorer,
    FixedRange,
    Threshold,
    linear_scores,
    resolve_key,
)
from inference_sched.state.table import EndpointTable
from inference_sched.testing import check_plugin, make_table

PATH = "plugins[0].parameters"
KEY = "num_requests_running/core-metrics-extractor"
ALL = [0, 1, 2, 3, 4]
# row -> value under KEY: 2, 10, absent, 5, not a number (reads as missing)
_VALUES: dict[int, Any] = {0: 2, 1: 10.0, 3: 5, 4: "high"}


def _table(values: dict[int, Any] | None = None, key: str = KEY, n: int = 5) -> EndpointTable:
    table = make_table(n)
    for row, value in (_VALUES if values is None else values).items():
        table.attributes.put(row, key, value)
    return table


def _cycle() -> CycleState:
    return CycleState(np.random.default_rng(0))


def _threshold(op: str, value: float) -> dict[str, Any]:
    return {"type": "threshold", "threshold": {"operator": op, "value": value}}


def _make_filter(raw: dict[str, Any], table: EndpointTable) -> EndpointAttributeFilter:
    params = parse_params(EndpointAttributeFilter.Params, raw, PATH)
    return EndpointAttributeFilter("f", params, PluginHandle(table))


def _filter(raw: dict[str, Any], candidates: list[int], table: EndpointTable) -> list[int]:
    plugin = _make_filter(raw, table)
    kept = plugin.filter(_cycle(), Request("r", "m"), table, np.asarray(candidates, np.int32))
    assert kept.dtype == np.int32
    return list(kept.tolist())


def _scores(raw: dict[str, Any], candidates: list[int], table: EndpointTable) -> list[float]:
    params = parse_params(EndpointAttributeScorer.Params, raw, PATH)
    plugin = EndpointAttributeScorer("s", params, PluginHandle(table))
    out = np.full(len(candidates), -1.0, dtype=np.float32)
    plugin.score(_cycle(), Request("r", "m"), table, np.asarray(candidates, np.int32), out)
    return [round(float(v), 6) for v in out]


# ====================================================================== filter
@pytest.mark.parametrize(
    ("op", "value", "on_missing", "candidates", "expected"),
    [
        pytest.param("LessThan", 5, "Pass", ALL, [0, 2, 4], id="lt-pass-missing"),
        pytest.param("LessThan", 5, "Fail", ALL, [0], id="lt-fail-missing"),
        pytest.param("LessThanOrEqual", 5, "Fail", ALL, [0, 3], id="le"),
        pytest.param("GreaterThan", 5, "Fail", ALL, [1], id="gt"),
        pytest.param("GreaterThanOrEqual", 5, "Fail", ALL, [1, 3], id="ge"),
        pytest.param("Equal", 10, "Fail", ALL, [1], id="eq"),
        pytest.param("NotEqual", 10, "Fail", ALL, [0, 3], id="ne"),
        pytest.param("NotEqual", 10, "Pass", ALL, [0, 2, 3, 4], id="ne-pass"),
        pytest.param("LessThanOrEqual", 5, "Fail", [3, 1, 0], [3, 0], id="order-kept"),
        pytest.param("GreaterThan", 100, "Fail", ALL, [], id="none-left"),
        pytest.param("GreaterThan", 1.5, "Fail", [1], [1], id="single"),
        pytest.param("GreaterThan", 1.5, "Fail", [], [], id="no-candidates"),
    ],
)
def test_filter_threshold(
    op: str, value: float, on_missing: str, candidates: list[int], expected: list[int]
) -> None:
    raw: dict[str, Any] = {"attribute": "num_requests_running", "onMissing": on_missing}
    raw["algorithm"] = _threshold(op, value)
    assert _filter(raw, candidates, _table()) == expected


def test_filter_defaults_pass_missing() -> None:
    raw = {"attribute": "num_requests_running", "algorithm": _threshold("LessThan", 5)}
    assert _filter(raw, ALL, _table()) == [0, 2, 4]


def test_fallback_on_empty_keeps_all() -> None:
    raw = {
        "attribute": "num_requests_running",
        "onMissing": "Fail",
        "fallbackOnEmpty": True,
        "algorithm": _threshold("GreaterThan", 100),
    }
    assert _filter(raw, [3, 1, 2], _table()) == [3, 1, 2]
    raw["algorithm"] = _threshold("GreaterThan", 3)
    assert _filter(raw, [3, 1, 2], _table()) == [3, 1]  # not empty: no fallback


@pytest.mark.parametrize(
    ("attribute", "producer", "key"),
    [
        pytest.param("num_requests_running", None, KEY, id="default-producer"),
        pytest.param(
            "GPUUtilization", "dcgm-extractor", "GPUUtilization/dcgm-extractor", id="dcgm"
        ),
        pytest.param(
            "llm-d.ai/multicluster-queue-size",
            "",
            "llm-d.ai/multicluster-queue-size",
            id="producer-agnostic",
        ),
        pytest.param("a/b", "p", "a/b/p", id="slash-with-producer"),
    ],
)
def test_key_resolution(attribute: str, producer: str | None, key: str) -> None:
    assert resolve_key(attribute, producer) == key
    table = _table({0: 1.0, 1: 9.0}, key=key, n=3)
    raw: dict[str, Any] = {"attribute": attribute, "algorithm": _threshold("LessThan", 5)}
    if producer is not None:
        raw["producer"] = producer
    raw["onMissing"] = "Fail"
    plugin = _make_filter(raw, table)
    assert plugin.key == key
    assert _filter(raw, [0, 1, 2], table) == [0]


def test_filter_sees_new_values_and_growth() -> None:
    table = _table()
    raw: dict[str, Any] = {"attribute": "num_requests_running", "onMissing": "Fail"}
    raw["algorithm"] = _threshold("LessThan", 5)
    plugin = _make_filter(raw, table)
    rows = np.asarray(ALL, np.int32)

    def kept() -> list[int]:
        return list(plugin.filter(_cycle(), Request("r", "m"), table, rows).tolist())

    assert kept() == [0]
    table.attributes.put(1, KEY, 4)  # the cached column is rebuilt on a new value
    assert kept() == [0, 1]
    table.attributes.delete(0, KEY)
    assert kept() == [1]
    for i in range(5, 40):  # grow past the table's capacity
        table.add(Endpoint(f"x{i}", f"10.1.0.{i}", 8000))
    table.attributes.put(37, KEY, 0)
    rows = np.asarray([*ALL, 37], np.int32)
    assert kept() == [1, 37]
    table.remove("e1")  # a freed row drops its attributes
    rows = np.asarray([0, 2, 3, 4, 37], np.int32)
    assert kept() == [37]


def test_nan_and_inf_read_as_missing() -> None:
    table = _table({0: math.nan, 1: math.inf, 2: True, 3: 1})
    raw: dict[str, Any] = {"attribute": "num_requests_running", "onMissing": "Fail"}
    raw["algorithm"] = _threshold("NotEqual", 7)
    assert _filter(raw, [0, 1, 2, 3], table) == [3]
    raw["onMissing"] = "Pass"
    assert _filter(raw, [0, 1, 2, 3], table) == [0, 1, 2, 3]


# ====================================================================== scorer
def _algo(kind: str = "linear_lower_is_better", **normalization: Any) -> dict[str, Any]:
    algo: dict[str, Any] = {"type": kind}
    if normalization:
        algo["normalization"] = normalization
    return algo


LOWER, HIGHER = "linear_lower_is_better", "linear_higher_is_better"
# values over ALL: 2, 10, missing, 6, missing
_SCORER_VALUES: dict[int, Any] = {0: 2, 1: 10, 3: 6, 4: "x"}


@pytest.mark.parametrize(
    ("algorithm", "candidates", "expected"),
    [
        pytest.param(_algo(LOWER), ALL, [1.0, 0.0, 0.0, 0.5, 0.0], id="adaptive-lower"),
        pytest.param(_algo(HIGHER), ALL, [0.0, 1.0, 0.0, 0.5, 0.0], id="adaptive-higher"),
        pytest.param(
            _algo(LOWER, adaptiveRange={}), ALL, [1.0, 0.0, 0.0, 0.5, 0.0], id="adaptive-explicit"
        ),
        pytest.param(_algo(LOWER), [0, 3], [1.0, 0.0], id="adaptive-over-candidates"),
        pytest.param(_algo(LOWER), [3, 2], [1.0, 0.0], id="one-value-neutral"),
        pytest.param(_algo(HIGHER), [3], [1.0], id="single"),
        pytest.param(_algo(LOWER), [2, 4], [0.0, 0.0], id="all-missing"),
        pytest.param(
            _algo(LOWER, fixedRange={"min": 0, "max": 8}),
            ALL,
            [0.75, 0.0, 0.0, 0.25, 0.0],
            id="fixed-lower-clamped",
        ),
        pytest.param(
            _algo(HIGHER, fixedRange={"min": 0, "max": 8}),
            ALL,
            [0.25, 1.0, 0.0, 0.75, 0.0],
            id="fixed-higher",
        ),
        pytest.param(
            _algo(LOWER, fixedRange={"max": 4}), [0, 3], [0.5, 0.0], id="fixed-min-defaults-0"
        ),
        pytest.param(
            _algo(LOWER, fixedRange={"min": 3, "max": 4}), [0, 3], [1.0, 0.0], id="fixed-below-min"
        ),
    ],
)
def test_scorer(algorithm: dict[str, Any], candidates: list[int], expected: list[float]) -> None:
    raw = {"attributeKey": "num_requests_running", "algorithm": algorithm}
    assert _scores(raw, candidates, _table(_SCORER_VALUES)) == expected


def test_scorer_equal_values_neutral_both_directions() -> None:
    table = _table({0: 3, 1: 3, 3: 3})
    for kind in (LOWER, HIGHER):
        raw = {"attributeKey": "num_requests_running", "algorithm": _algo(kind)}
        assert _scores(raw, [0, 1, 2, 3], table) == [1.0, 1.0, 0.0, 1.0]


def test_scorer_producer() -> None:
    table = _table({0: 0.2, 1: 0.6}, key="GPUUtilization/dcgm-extractor", n=3)
    raw = {
        "attributeKey": "GPUUtilization",
        "producer": "dcgm-extractor",
        "algorithm": _algo(LOWER, fixedRange={"min": 0, "max": 1}),
    }
    assert _scores(raw, [0, 1, 2], table) == [0.8, 0.4, 0.0]


def test_scorer_huge_values_stay_finite() -> None:
    table = _table({0: -1.7e308, 1: 1.7e308, 2: 0.0}, n=3)
    raw = {"attributeKey": "num_requests_running", "algorithm": _algo(HIGHER)}
    assert _scores(raw, [0, 1, 2], table) == [0.0, 1.0, 0.5]


_FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
_MAYBE = st.one_of(_FINITE, st.just(math.nan))


@given(
    values=st.lists(_MAYBE, min_size=1, max_size=12),
    lower=st.booleans(),
    fixed=st.one_of(
        st.none(),
        st.tuples(_FINITE, _FINITE).filter(lambda b: b[0] < b[1]).map(lambda b: FixedRange(*b)),
    ),
)
def test_linear_scores_in_unit_interval_and_monotone(
    values: list[float], lower: bool, fixed: FixedRange | None
) -> None:
    v = np.asarray(values, dtype=np.float64)
    scores = linear_scores(v, lower, fixed)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(scores[np.isnan(v)] == 0.0)
    present = np.flatnonzero(~np.isnan(v))
    order = present[np.argsort(v[present], kind="stable")]
    ranked = scores[order]  # by increasing value
    if lower:
        assert np.all(np.diff(ranked) <= 0.0)
    else:
        assert np.all(np.diff(ranked) >= 0.0)


# ====================================================================== params
_P = r"^plugins\[0\]\.parameters\."


def test_params_parsed() -> None:
    params = parse_params(
        EndpointAttributeFilter.Params,
        {
            "attribute": "q",
            "producer": "",
            "onMissing": "Fail",
            "fallbackOnEmpty": True,
            "algorithm": _threshold("Equal", 3),
        },
        PATH,
    )
    assert params.algorithm == Threshold("Equal", 3.0)
    assert (params.producer, params.on_missing, params.fallback_on_empty) == ("", "Fail", True)
    scorer = parse_params(
        EndpointAttributeScorer.Params,
        {"attributeKey": "q", "algorithm": _algo(HIGHER, fixedRange={"min": -1, "max": 1})},
        PATH,
    )
    assert scorer.algorithm.fixed_range == FixedRange(-1.0, 1.0)
    assert scorer.algorithm.lower_is_better is False
    assert scorer.producer is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"algorithm": _threshold("LessThan", 1)},
            _P + r"attribute: required key is missing$",
            id="no-attribute",
        ),
        pytest.param(
            {"attribute": "", "algorithm": _threshold("LessThan", 1)},
            _P + r"attribute: expected a non-empty str, got '' \(str\)$",
            id="empty-attribute",
        ),
        pytest.param(
            {"attribute": "GPUUtilization/dcgm-extractor", "algorithm": _threshold("LessThan", 1)},
            _P + r"attribute: expected no '/' without a producer: .*attribute: 'GPUUtilization' "
            r"and producer: 'dcgm-extractor'",
            id="slash-without-producer",
        ),
        pytest.param(
            {"attribute": "q"}, _P + r"algorithm: required key is missing$", id="no-algorithm"
        ),
        pytest.param(
            {"attribute": "q", "algorithm": {"type": "topK"}},
            _P + r"algorithm\.type: expected 'threshold' \(required\), got 'topK' \(str\)$",
            id="bad-type",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": {"type": "threshold"}},
            _P + r"algorithm\.threshold: expected a mapping \{operator, value\}",
            id="no-threshold",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": _threshold("Around", 1)},
            _P + r"algorithm\.threshold\.operator: expected one of LessThan, LessThanOrEqual, "
            r"GreaterThan, GreaterThanOrEqual, Equal, NotEqual \(required\), got 'Around'",
            id="bad-operator",
        ),
        pytest.param(
            {
                "attribute": "q",
                "algorithm": {"type": "threshold", "threshold": {"operator": "Equal"}},
            },
            _P + r"algorithm\.threshold\.value: expected a finite number \(required\), got None",
            id="no-value",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": _threshold("Equal", "3")},  # type: ignore[arg-type]
            _P + r"algorithm\.threshold\.value: expected a finite number, got '3' \(str\)$",
            id="value-not-number",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": {**_threshold("Equal", 1), "range": {}}},
            _P + r"algorithm\.range: expected one of the keys type, threshold, got 'range'",
            id="unknown-algorithm-key",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": _threshold("Equal", 1), "onMissing": "pass"},
            _P + r"onMissing: expected one of 'Pass', 'Fail' \(did you mean 'Pass'\?\)",
            id="bad-on-missing",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": _threshold("Equal", 1), "producer": 3},
            _P + r"producer: expected str, got 3 \(int\)$",
            id="producer-not-str",
        ),
        pytest.param(
            {"attribute": "q", "algorithm": _threshold("Equal", 1), "fallbackOnEmpty": "yes"},
            _P + r"fallbackOnEmpty: expected bool, got 'yes' \(str\)$",
            id="fallback-not-bool",
        ),
    ],
)
def test_filter_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(EndpointAttributeFilter.Params, raw, PATH)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"algorithm": _algo()}, _P + r"attributeKey: required key is missing$", id="no-key"
        ),
        pytest.param(
            {"attributeKey": "a/b", "algorithm": _algo()},
            _P + r"attributeKey: expected no '/' without a producer",
            id="slash-without-producer",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": {}},
            _P + r"algorithm\.type: expected 'linear_lower_is_better' or "
            r"'linear_higher_is_better' \(required\), got None \(NoneType\)$",
            id="no-type",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": "linear"},
            _P + r"algorithm: expected a mapping with keys type, normalization",
            id="algorithm-not-mapping",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": _algo(LOWER, fixedRange={"min": 1, "max": 1})},
            _P + r"algorithm\.normalization\.fixedRange: expected min < max, got",
            id="fixed-min-not-below-max",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": _algo(LOWER, fixedRange={"min": 4})},
            _P + r"algorithm\.normalization\.fixedRange: expected min < max",
            id="fixed-max-defaults-0",
        ),
        pytest.param(
            {
                "attributeKey": "q",
                "algorithm": _algo(LOWER, fixedRange={"min": 0, "max": 1}, adaptiveRange={}),
            },
            _P + r"algorithm\.normalization: expected at most one of fixedRange and adaptiveRange",
            id="both-normalizations",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": _algo(LOWER, adaptiveRange={"window": 3})},
            _P + r"algorithm\.normalization\.adaptiveRange\.window: expected one of the keys",
            id="adaptive-takes-no-keys",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": _algo(LOWER, fixedRange={"min": 0, "max": "1"})},
            _P + r"algorithm\.normalization\.fixedRange\.max: expected a finite number, got '1'",
            id="fixed-max-not-number",
        ),
        pytest.param(
            {"attributeKey": "q", "algorithm": _algo(LOWER, fixedRange={"lo": 0})},
            _P + r"algorithm\.normalization\.fixedRange\.lo: expected one of the keys min, max",
            id="fixed-unknown-key",
        ),
    ],
)
def test_scorer_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(EndpointAttributeScorer.Params, raw, PATH)


# ====================================================================== metadata
def test_metadata() -> None:
    assert EndpointAttributeFilter.type == "endpoint-attribute-filter"
    assert EndpointAttributeScorer.type == "endpoint-attribute-scorer"
    assert registry.get("endpoint-attribute-filter") is EndpointAttributeFilter
    assert registry.get("endpoint-attribute-scorer") is EndpointAttributeScorer
    assert EndpointAttributeFilter.stability == EndpointAttributeScorer.stability == "alpha"
    assert EndpointAttributeScorer.category == "Distribution"


def test_conformance() -> None:
    check_plugin(
        "endpoint-attribute-filter",
        {"attribute": "q", "algorithm": _threshold("LessThan", 3)},
    )
    check_plugin(
        "endpoint-attribute-scorer",
        {"attributeKey": "q", "algorithm": _algo(LOWER)},
        table=_table(_SCORER_VALUES),
    )
