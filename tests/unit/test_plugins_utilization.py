"""``utilization-filter`` (llm-d-router, ``pkg/epp/framework/plugins/scheduling/filter/``;
``docs/plugins/utilization-filter.md``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.contracts import IN_FLIGHT_LOAD
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.utilization import Condition, UtilizationFilter
from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table

PATH = "plugins[0].parameters"


def _table() -> EndpointTable:
    table = make_table(
        5,
        waiting=[0, 5, 2, 10, 3],
        running=[1, 8, 4, 2, 4],
        kv_usage_frac=[0.2, 0.95, 0.5, 0.8, 0.81],
    )
    table.inflight_requests[:5] = [0, 3, 7, 1, 2]
    return table


def _filter(
    raw: dict[str, Any], candidates: list[int], table: EndpointTable | None = None
) -> list[int]:
    table = table or _table()
    plugin = UtilizationFilter(
        "u", parse_params(UtilizationFilter.Params, raw, PATH), PluginHandle(table)
    )
    rows = np.asarray(candidates, dtype=np.int32)
    kept = plugin.filter(CycleState(np.random.default_rng(0)), Request("r", "m"), table, rows)
    assert kept.dtype == np.int32
    return list(kept.tolist())


def _cond(metric: str, max_value: float) -> dict[str, Any]:
    return {"metric": metric, "maxValue": max_value}


ALL = [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("conditions", "candidates", "expected"),
    [
        pytest.param([_cond("waiting-queue", 3)], ALL, [0, 2, 4], id="waiting-le"),
        pytest.param([_cond("running-requests", 4)], ALL, [0, 2, 3, 4], id="running"),
        pytest.param([_cond("kv-cache-utilization", 0.8)], ALL, [0, 2, 3], id="kv"),
        pytest.param([_cond("active-requests", 2)], ALL, [0, 3, 4], id="active-inflight"),
        pytest.param(
            [_cond("waiting-queue", 3), _cond("kv-cache-utilization", 0.8)],
            ALL,
            [0, 2],
            id="every-condition",
        ),
        pytest.param([_cond("waiting-queue", 3)], [4, 3, 2, 0], [4, 2, 0], id="order-kept"),
        pytest.param([_cond("waiting-queue", 0)], [1, 2, 3], [], id="none-left"),
    ],
)
def test_utilization_filter(
    conditions: list[dict[str, Any]], candidates: list[int], expected: list[int]
) -> None:
    assert _filter({"conditions": conditions}, candidates) == expected


def test_fallback_on_empty_keeps_all() -> None:
    raw = {"conditions": [_cond("waiting-queue", 0)], "fallbackOnEmpty": True}
    assert _filter(raw, [3, 1, 2]) == [3, 1, 2]
    assert _filter(raw, [2, 0, 1]) == [0]  # not empty: no fallback


def test_never_scraped_endpoint_reads_zero() -> None:
    table = make_table(2)  # no metrics at all
    raw = {"conditions": [_cond("waiting-queue", 0), _cond("kv-cache-utilization", 0)]}
    assert _filter(raw, [0, 1], table) == [0, 1]


def test_metadata() -> None:
    assert UtilizationFilter.type == "utilization-filter"
    assert registry.get("utilization-filter") is UtilizationFilter
    assert UtilizationFilter.consumes == frozenset({IN_FLIGHT_LOAD})


def test_params_parsed() -> None:
    params = parse_params(
        UtilizationFilter.Params,
        {
            "conditions": [_cond("active-requests", 4), _cond("kv-cache-utilization", 1)],
            "fallbackOnEmpty": True,
            "inFlightLoadProducerName": "ifl",
        },
        PATH,
    )
    assert params.conditions == (
        Condition("active-requests", 4.0),
        Condition("kv-cache-utilization", 1.0),
    )
    assert params.fallback_on_empty is True
    assert params.in_flight_load_producer_name == "ifl"


_P = r"^plugins\[0\]\.parameters\."


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({}, _P + r"conditions: required key is missing$", id="missing"),
        pytest.param(
            {"conditions": []},
            _P
            + r"conditions: expected a non-empty list of \{metric, maxValue\}, got \[\] \(list\)$",
            id="empty",
        ),
        pytest.param(
            {"conditions": [_cond("gpu-temp", 1)]},
            _P + r"conditions\[0\]\.metric: expected one of active-requests, running-requests, "
            r"waiting-queue, kv-cache-utilization, got 'gpu-temp' \(str\)$",
            id="bad-metric",
        ),
        pytest.param(
            {"conditions": [_cond("waiting-queue", 1), {"metric": "waiting-queue"}]},
            _P + r"conditions\[1\]\.maxValue: expected a number >= 0 \(required\), got None",
            id="no-max",
        ),
        pytest.param(
            {"conditions": [_cond("waiting-queue", -1)]},
            _P + r"conditions\[0\]\.maxValue: expected a number >= 0, got -1 \(int\)$",
            id="negative",
        ),
        pytest.param(
            {"conditions": [_cond("kv-cache-utilization", 1.5)]},
            _P + r"conditions\[0\]\.maxValue: expected a number in \[0, 1\] for "
            r"kv-cache-utilization, got 1\.5 \(float\)$",
            id="kv-above-1",
        ),
        pytest.param(
            {"conditions": [_cond("waiting-queue", "3")]},
            _P + r"conditions\[0\]\.maxValue: expected a finite number, got '3' \(str\)$",
            id="max-not-number",
        ),
        pytest.param(
            {"conditions": [{"metric": "waiting-queue", "maxValue": 1, "min": 0}]},
            _P + r"conditions\[0\]: expected only the keys metric and maxValue, got 'min'",
            id="unknown-key",
        ),
        pytest.param(
            {"conditions": ["waiting-queue"]},
            _P + r"conditions\[0\]: expected a mapping with keys metric and maxValue",
            id="not-mapping",
        ),
        pytest.param(
            {"conditions": [_cond("waiting-queue", 1)], "fallbackOnEmpty": 1},
            _P + r"fallbackOnEmpty: expected bool, got 1 \(int\)$",
            id="fallback-not-bool",
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(UtilizationFilter.Params, raw, PATH)


def test_conformance() -> None:
    from inference_sched.testing import check_plugin

    check_plugin("utilization-filter", {"conditions": [_cond("waiting-queue", 3)]})
