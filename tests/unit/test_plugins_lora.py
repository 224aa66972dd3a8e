"""lora-affinity-scorer (GIE gie.md §4.4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Request
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
