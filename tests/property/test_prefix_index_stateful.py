"""PrefixIndex against the pure-Python model under random add / remove / match sequences.

Hashes come from a small pool (0 and 2**64 - 1 included) so that endpoints share hashes,
re-add held ones and evict each other's neighbours; capacities are small so evictions are
frequent; the index starts with tiny pools so slot rehashes, tombstone reuse and node and
row growth all happen within a run. After every step the sizes, every endpoint's LRU order
and capacity bound must equal the model's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from inference_sched.prefix.index import PrefixIndex
from tests.oracles.prefix_index_model import PrefixIndexModel

pytestmark = pytest.mark.property

NUM_ROWS = 12
HASH_POOL = [0, 1, 2, 3, 5, 8, 13, 2**32, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1] + [
    (i * 0x9E3779B97F4A7C15) % 2**64 for i in range(1, 21)
]

rows = st.integers(0, NUM_ROWS - 1)
hash_lists = st.lists(st.sampled_from(HASH_POOL), max_size=12)


class PrefixIndexMachine(RuleBasedStateMachine):
    """Drive the Numba index and the model with the same calls; compare after each."""

    def __init__(self) -> None:
        super().__init__()
        self.index = PrefixIndex(initial_slots=2, initial_entries=1, initial_rows=1)
        self.model = PrefixIndexModel()
        self.seen_rows: set[int] = set()

    @rule(hashes=hash_lists, row=rows, capacity=st.integers(1, 8))
    def add(self, hashes: list[int], row: int, capacity: int) -> None:
        self.index.add(np.array(hashes, dtype=np.uint64), row, capacity)
        self.model.add(hashes, row, capacity)
        self.seen_rows.add(row)

    @rule(hashes=hash_lists, row=rows)
    def remove(self, hashes: list[int], row: int) -> None:
        assert self.index.remove(np.array(hashes, dtype=np.uint64), row) == (
            self.model.remove(hashes, row)
        )

    @rule(data=st.data())
    def remove_held(self, data: st.DataObject) -> None:
        """Remove some of an endpoint's own hashes (plus strays), so removals really hit."""
        row = data.draw(rows)
        held = self.model.lru_order(row)
        picked = data.draw(st.lists(st.sampled_from(held), max_size=6)) if held else []
        self.remove(picked + data.draw(hash_lists), row)

    @rule(row=rows)
    def remove_endpoint(self, row: int) -> None:
        assert self.index.remove_endpoint(row) == self.model.remove_endpoint(row)

    @rule(hashes=hash_lists)
    def match_counting(self, hashes: list[int]) -> None:
        got, expected = np.full(NUM_ROWS, -1.0), np.full(NUM_ROWS, -1.0)
        assert self.index.match_counting(np.array(hashes, dtype=np.uint64), got) == (
            self.model.match_counting(hashes, expected)
        )
        assert got.tolist() == expected.tolist()

    @rule(hashes=hash_lists)
    def match_prefix(self, hashes: list[int]) -> None:
        got, expected = np.full(NUM_ROWS, -1.0), np.full(NUM_ROWS, -1.0)
        assert self.index.match_prefix(np.array(hashes, dtype=np.uint64), got) == (
            self.model.match_prefix(hashes, expected)
        )
        assert got.tolist() == expected.tolist()

    @rule(data=st.data())
    def match_held_prefix(self, data: st.DataObject) -> None:
        """Match a prompt built from an endpoint's own LRU, so long matches happen."""
        held = self.model.lru_order(data.draw(rows))
        hashes = held[::-1] + data.draw(hash_lists)
        self.match_counting(hashes)
        self.match_prefix(hashes)

    @invariant()
    def sizes_agree(self) -> None:
        assert self.index.size() == self.model.size()
        assert self.index.num_hashes() == self.model.num_hashes()

    @invariant()
    def lrus_agree_and_stay_bounded(self) -> None:
        for row in range(NUM_ROWS):
            size = self.index.endpoint_size(row)
            capacity = self.index.endpoint_capacity(row)
            assert size == self.model.endpoint_size(row)
            assert capacity == self.model.endpoint_capacity(row)
            assert size <= capacity
            assert self.index.lru_order(row) == self.model.lru_order(row)


PrefixIndexMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=40, deadline=None
)
test_prefix_index_matches_model = PrefixIndexMachine.TestCase
