"""``context-length-aware`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/scorer/contextlength/``;
``docs/plugins/context-length-aware.md``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.contracts import TOKENIZED_PROMPT
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, Request
from inference_sched.params import parse_params
from inference_sched.plugins.context_length import ContextLengthAware, parse_range
from inference_sched.state.table import EndpointTable

PATH = "plugins[0].parameters"
LABEL = "llm-d.ai/context-length-range"

# row -> label value (None: unlabeled)
_RANGES: list[str | None] = [
    "0-2048",  # 0
    "0-100000",  # 1
    "1000-1000",  # 2: width 0
    "2048-8192",  # 3
    None,  # 4: unlabeled
    "abc",  # 5: unparsable
    "5-1",  # 6: min > max: unparsable
]


def _table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, value in enumerate(_RANGES):
        labels = {} if value is None else {LABEL: value}
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    return table


def _plugin(table: EndpointTable, raw: dict[str, Any] | None = None) -> ContextLengthAware:
    params = parse_params(ContextLengthAware.Params, raw, PATH)
    return ContextLengthAware("ctx", params, PluginHandle(table))


def _request(tokens: int) -> Request:
    return Request("r", "m", token_ids=np.arange(tokens, dtype=np.uint32))


def _score(tokens: int, candidates: list[int]) -> np.ndarray:
    table = _table()
    out = np.full(len(candidates), -1.0, dtype=np.float32)
    cycle = CycleState(np.random.default_rng(0))
    rows = np.asarray(candidates, dtype=np.int32)
    _plugin(table).score(cycle, _request(tokens), table, rows, out)
    return out


def _filter(tokens: int, candidates: list[int], enable: bool = True) -> list[int]:
    table = _table()
    rows = np.asarray(candidates, dtype=np.int32)
    plugin = _plugin(table, {"enableFiltering": enable})
    kept = plugin.filter(CycleState(np.random.default_rng(0)), _request(tokens), table, rows)
    assert kept.dtype == np.int32
    return list(kept.tolist())


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        pytest.param(
            1000,
            # 0-2048: 0.3 + 0.7 * (0.7 / 1.2048 + 0.3 * 1048 / 2048)
            # 0-100000: 0.3 + 0.7 * (0.7 / 11 + 0.3 * 99000 / 100000)
            # 1000-1000: width 0 -> 1; 2048-8192: d = 1048 -> 0.3 / 2.048
            [0.8141674448041167, 0.5524454545454545, 1.0, 0.146484375, 0.5, 0.0, 0.0],
            id="1000-tokens",
        ),
        pytest.param(
            3000,
            # 0-2048: d = 952 -> 0.3 / 1.952; 1000-1000: d = 2000 -> 0.1
            # 2048-8192: 0.3 + 0.7 * (0.7 / 1.6144 + 0.3 * 5192 / 6144)
            [
                0.15368852459016394,
                0.3 + 0.7 * (0.7 / 11 + 0.3 * 97000 / 100000),
                0.1,
                0.3 + 0.7 * (0.7 / 1.6144 + 0.3 * 5192 / 6144),
                0.5,
                0.0,
                0.0,
            ],
            id="3000-tokens",
        ),
        pytest.param(
            0,
            # no tokens: L = 0; 0-2048 -> 0.3 + 0.7 * (0.7 / 1.2048 + 0.3)
            [0.9167065073041167, 0.3 + 0.7 * (0.7 / 11 + 0.3), 0.3 / 2, 0.3 / 3.048, 0.5, 0, 0],
            id="0-tokens",
        ),
        pytest.param(
            2048,
            [
                0.7067065073041168,
                0.3 + 0.7 * (0.7 / 11 + 0.3 * 97952 / 100000),
                0.3 / 2.048,
                0.3 + 0.7 * (0.7 / 1.6144 + 0.3),
                0.5,
                0.0,
                0.0,
            ],
            id="on-both-bounds",
        ),
    ],
)
def test_score(tokens: int, expected: list[float]) -> None:
    np.testing.assert_allclose(
        _score(tokens, list(range(len(_RANGES)))), np.float32(expected), rtol=1e-6
    )


def test_score_subset_in_order() -> None:
    np.testing.assert_allclose(_score(1000, [4, 2, 0]), np.float32([0.5, 1.0, 0.8141674448041167]))


def test_token_count_from_the_cycle() -> None:
    table = _table()
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(TOKENIZED_PROMPT, np.arange(3000, dtype=np.uint32))
    out = np.zeros(1, dtype=np.float32)
    _plugin(table).score(cycle, Request("r", "m"), table, np.int32([2]), out)
    np.testing.assert_allclose(out, np.float32([0.1]))  # L = 3000, d = 2000
    assert (
        ContextLengthAware.token_count(CycleState(np.random.default_rng(0)), Request("r", "m")) == 0
    )


@pytest.mark.parametrize(
    ("tokens", "candidates", "expected"),
    [
        pytest.param(1000, list(range(7)), [0, 1, 2, 4], id="1000"),
        pytest.param(3000, list(range(7)), [1, 3, 4], id="3000"),
        pytest.param(2048, [4, 3, 0], [4, 3, 0], id="bounds-inclusive-order-kept"),
        pytest.param(200000, [0, 1, 5, 6], [], id="none-left"),
    ],
)
def test_filter(tokens: int, candidates: list[int], expected: list[int]) -> None:
    assert _filter(tokens, candidates) == expected


def test_filter_off_by_default() -> None:
    assert _filter(200000, [0, 1, 5, 6], enable=False) == [0, 1, 5, 6]


def test_custom_label_and_relabel() -> None:
    table = EndpointTable(clock=lambda: 100.0)
    table.add(Endpoint("e0", "10.0.0.0", 8000, labels={"ctx": "0-10", LABEL: "0-99999"}))
    plugin = _plugin(table, {"label": "ctx", "enableFiltering": True})
    cycle = CycleState(np.random.default_rng(0))
    assert plugin.filter(cycle, _request(20), table, np.int32([0])).tolist() == []
    table.remove("e0")
    table.add(Endpoint("e1", "10.0.0.1", 8000, labels={"ctx": "0-100"}))
    assert plugin.filter(cycle, _request(20), table, np.int32([0])).tolist() == [0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-2048", (0, 2048)),
        (" 10 - 20 ", (10, 20)),
        ("7-7", (7, 7)),
        ("5-1", None),
        ("-5-1", None),
        ("1-2-3", None),
        ("1", None),
        ("a-b", None),
        ("1.5-3", None),
        ("", None),
    ],
)
def test_parse_range(value: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(value) == expected


def test_metadata() -> None:
    assert ContextLengthAware.type == "context-length-aware"
    assert ContextLengthAware.category == "Affinity"
    assert ContextLengthAware.consumes == frozenset({TOKENIZED_PROMPT})
    assert registry.get("context-length-aware") is ContextLengthAware
    assert registry.kinds_of(ContextLengthAware) == ("filter", "scorer")


def test_params_defaults() -> None:
    params = parse_params(ContextLengthAware.Params, None, PATH)
    assert (params.label, params.enable_filtering) == (LABEL, False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"label": ""},
            r"^plugins\[0\]\.parameters\.label: expected a non-empty str, got '' \(str\)$",
            id="empty-label",
        ),
        pytest.param(
            {"enableFiltering": "true"},
            r"^plugins\[0\]\.parameters\.enableFiltering: expected bool, got 'true' \(str\)$",
            id="filtering-not-bool",
        ),
        pytest.param(
            {"mode": "filter"},
            r"^plugins\[0\]\.parameters: unknown key 'mode'",
            id="unknown-key",
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(ContextLengthAware.Params, raw, PATH)


def test_conformance() -> None:
    from inference_sched.testing import check_plugin

    check_plugin("context-length-aware", {"enableFiltering": True})
