"""``header-label-affinity-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/scorer/``;
``docs/plugins/header-label-affinity-scorer.md``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, Request
from inference_sched.params import parse_params
from inference_sched.plugins.affinity import HeaderLabelAffinityScorer
from inference_sched.state.table import EndpointTable

PATH = "plugins[0].parameters"
RAW = {"headerName": "X-Tenant", "labelKey": "example.com/tenant"}

# row -> labels
_LABELS: list[dict[str, str]] = [
    {"example.com/tenant": "acme"},  # 0
    {"example.com/tenant": "globex"},  # 1
    {},  # 2: no label
    {"example.com/tenant": ""},  # 3: empty label
    {"example.com/tenant": "ACME"},  # 4: case differs
]


def _table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, labels in enumerate(_LABELS):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    return table


def _score(
    headers: dict[str, str], candidates: list[int], table: EndpointTable | None = None
) -> np.ndarray:
    table = table or _table()
    scorer = HeaderLabelAffinityScorer(
        "h", parse_params(HeaderLabelAffinityScorer.Params, RAW, PATH), PluginHandle(table)
    )
    out = np.full(len(candidates), -1.0, dtype=np.float32)
    request = Request.create("m", headers=headers)
    rows = np.asarray(candidates, dtype=np.int32)
    scorer.score(CycleState(np.random.default_rng(0)), request, table, rows, out)
    return out


ALL = [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("headers", "candidates", "expected"),
    [
        pytest.param({"x-tenant": "acme"}, ALL, [1, 0, 0, 0, 0], id="match"),
        pytest.param({"X-TENANT": "globex"}, ALL, [0, 1, 0, 0, 0], id="header-any-case"),
        pytest.param({"x-tenant": "acme"}, [4, 1, 0], [0, 0, 1], id="subset-order"),
        pytest.param({"x-tenant": "ACME"}, ALL, [0, 0, 0, 0, 1], id="value-case-sensitive"),
        pytest.param({"x-tenant": ""}, ALL, [0, 0, 0, 0, 0], id="empty-header"),
        pytest.param({}, ALL, [0, 0, 0, 0, 0], id="no-header"),
        pytest.param({"x-tenant": "initech"}, ALL, [0, 0, 0, 0, 0], id="no-label-matches"),
    ],
)
def test_score(headers: dict[str, str], candidates: list[int], expected: list[float]) -> None:
    np.testing.assert_array_equal(_score(headers, candidates), np.float32(expected))


def test_follows_relabeling() -> None:
    table = _table()
    np.testing.assert_array_equal(_score({"x-tenant": "acme"}, [0], table), np.float32([1]))
    table.remove("e0")
    table.add(Endpoint("e9", "10.0.0.9", 8000, labels={"example.com/tenant": "other"}))
    np.testing.assert_array_equal(_score({"x-tenant": "acme"}, [0], table), np.float32([0]))


def test_metadata() -> None:
    assert HeaderLabelAffinityScorer.type == "header-label-affinity-scorer"
    assert HeaderLabelAffinityScorer.category == "Affinity"
    assert registry.get("header-label-affinity-scorer") is HeaderLabelAffinityScorer


_P = r"^plugins\[0\]\.parameters"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"labelKey": "k"}, _P + r"\.headerName: required key is missing$", id="no-header"
        ),
        pytest.param(
            {"headerName": "h"}, _P + r"\.labelKey: required key is missing$", id="no-label"
        ),
        pytest.param(
            {"headerName": "", "labelKey": "k"},
            _P + r"\.headerName: expected a non-empty str, got '' \(str\)$",
            id="empty-header",
        ),
        pytest.param(
            {"headerName": "h", "labelKey": 3},
            _P + r"\.labelKey: expected a non-empty str, got 3 \(int\)$",
            id="label-not-str",
        ),
        pytest.param(
            {"headerName": "h", "labelKey": "k", "header": "x"},
            _P + r": unknown key 'header'",
            id="unknown-key",
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(HeaderLabelAffinityScorer.Params, raw, PATH)


def test_params_none_is_rejected() -> None:
    with pytest.raises(ParameterError, match="headerName: required key is missing"):
        parse_params(HeaderLabelAffinityScorer.Params, None, PATH)


def test_conformance() -> None:
    from inference_sched.testing import check_plugin

    check_plugin("header-label-affinity-scorer", {"headerName": "x-gpu", "labelKey": "gpu"})
