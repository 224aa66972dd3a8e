"""lora-affinity-scorer (GIE)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, Request
from inference_sched.params import NoParams
from inference_sched.plugins.lora import LoraAffinityScorer
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

# row: (active adapters, waiting adapters, max_loras)
_ADAPTERS: list[tuple[set[str], set[str], float]] = [
    ({"a"}, set(), 2.0),  # 0: "a" active (and a free slot)
    ({"b"}, set(), 2.0),  # 1: 1 of 2 slots used: free slot
    ({"b", "c"}, {"a"}, 3.0),  # 2: full, "a" waiting
    ({"b", "c"}, set(), 2.0),  # 3: full, "a" nowhere
    (set(), {"a"}, 4.0),  # 4: "a" waiting, but a free slot ranks first
    (set(), set(), 0.0),  # 5: max_loras not reported: never a free slot
    (set(), set(), math.nan),  # 6: NaN max_loras: never a free slot
]


@pytest.fixture
def table() -> EndpointTable:
    table = make_table(len(_ADAPTERS))
    for row, (active, waiting, max_loras) in enumerate(_ADAPTERS):
        table.set_adapters(row, active, waiting, max_loras=max_loras)
    return table


def _score(table: EndpointTable, adapter: str | None, candidates: list[int]) -> np.ndarray:
    scorer = LoraAffinityScorer("lora", NoParams(), PluginHandle(table))
    rows = np.asarray(candidates, dtype=np.int32)
    out = np.zeros(len(rows), dtype=np.float32)
    request = Request("r", adapter or "base", lora_adapter=adapter)
    scorer.score(CycleState(np.random.default_rng(0)), request, table, rows, out)
    return out


@pytest.mark.parametrize(
    ("adapter", "candidates", "expected"),
    [
        pytest.param(
            "a",
            [0, 1, 2, 3, 4, 5, 6],
            [1.0, 0.8, 0.6, 0.0, 0.8, 0.0, 0.0],
            id="every-rule",
        ),
        pytest.param("a", [3, 0], [0.0, 1.0], id="subset"),
        pytest.param("a", [2], [0.6], id="single"),
        pytest.param("b", [0, 1, 2, 3], [0.8, 1.0, 1.0, 1.0], id="other-adapter"),
        pytest.param(
            "never-seen", [0, 1, 2, 3, 4], [0.8, 0.8, 0.0, 0.0, 0.8], id="unknown-adapter"
        ),
        pytest.param(None, [0, 1, 2, 3, 4, 5, 6], [1.0] * 7, id="no-adapter-all-1"),
    ],
)
def test_lora_affinity(
    table: EndpointTable, adapter: str | None, candidates: list[int], expected: list[float]
) -> None:
    np.testing.assert_array_equal(
        _score(table, adapter, candidates), np.asarray(expected, dtype=np.float32)
    )


def test_adapter_ids_past_the_first_byte() -> None:
    table = make_table(2)
    names = [f"adapter-{i}" for i in range(20)]
    for name in names:  # widens the bitsets to 3 bytes
        table.intern_adapter(name)
    table.set_adapters(0, {"adapter-17"}, set(), max_loras=1.0)
    table.set_adapters(1, {"adapter-3"}, {"adapter-17"}, max_loras=1.0)
    np.testing.assert_array_equal(
        _score(table, "adapter-17", [0, 1]), np.asarray([1.0, 0.6], dtype=np.float32)
    )


def test_metadata() -> None:
    assert LoraAffinityScorer.type == "lora-affinity-scorer"
    assert LoraAffinityScorer.category == "Affinity"


def test_reclaimed_adapter_id_is_reused_without_stale_matches() -> None:
    table = make_table(2)
    table.set_adapters(0, {"old"}, set(), max_loras=1.0)
    table.set_adapters(1, {"x"}, set(), max_loras=1.0)
    old_id = table.adapter_id("old")
    np.testing.assert_array_equal(_score(table, "old", [0, 1]), np.float32([1.0, 0.0]))
    table.set_adapters(0, {"new"}, set(), max_loras=1.0)
    assert table.adapter_id("old") == -1
    table.set_adapters(1, {"x", "later"}, set(), max_loras=2.0)
    assert table.adapter_id("later") == old_id  # the freed id went to the next new name
    np.testing.assert_array_equal(_score(table, "old", [0, 1]), np.float32([0.0, 0.0]))
    np.testing.assert_array_equal(_score(table, "new", [0, 1]), np.float32([1.0, 0.0]))
    np.testing.assert_array_equal(_score(table, "later", [0, 1]), np.float32([0.0, 1.0]))
    # An endpoint's removal frees its names; a later endpoint reusing the id and row
    # matches only its own adapter.
    table.remove("e0")
    table.add(Endpoint("e9", "10.0.0.9", 8000))
    table.set_adapters(0, set(), {"third"}, max_loras=1.0)
    assert table.adapter_id("new") == -1
    np.testing.assert_array_equal(_score(table, "new", [0, 1]), np.float32([0.0, 0.0]))
    np.testing.assert_array_equal(_score(table, "third", [0, 1]), np.float32([0.6, 0.0]))


def test_adapter_dropped_past_the_bound_scores_as_unknown() -> None:
    table = EndpointTable(max_adapters=2)
    table.add(Endpoint("e0", "10.0.0.0", 8000))
    table.add(Endpoint("e1", "10.0.0.1", 8000))
    table.set_adapters(0, {"a", "b", "c"}, set(), max_loras=3.0)  # "c" dropped
    table.set_adapters(1, set(), set(), max_loras=3.0)
    assert table.adapters_dropped == 1
    # e0's slots are all taken (3 reported), so "c" is no free slot there.
    np.testing.assert_array_equal(_score(table, "c", [0, 1]), np.float32([0.0, 0.8]))
    np.testing.assert_array_equal(_score(table, "a", [0, 1]), np.float32([1.0, 0.8]))
