"""PrefixIndex: exact LRU order, both match modes, removal, growth; the model agrees.

Every example runs against the Numba index and the pure-Python model
(:class:`~tests.oracles.prefix_index_model.PrefixIndexModel`) with the same expected
values, so the model the stateful test trusts is pinned too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from inference_sched.prefix.index import PrefixIndex
from tests.oracles.prefix_index_model import PrefixIndexModel

Index = PrefixIndex | PrefixIndexModel

MAX_U64 = 2**64 - 1

IMPLS: dict[str, Callable[[], Index]] = {
    "numba": PrefixIndex,
    "tiny-pools": lambda: PrefixIndex(initial_slots=2, initial_entries=1, initial_rows=1),
    "model": PrefixIndexModel,
}


@pytest.fixture(params=list(IMPLS), ids=list(IMPLS))
def index(request: pytest.FixtureRequest) -> Index:
    """A fresh index of each implementation."""
    return IMPLS[request.param]()


def u64(values: Sequence[int]) -> npt.NDArray[np.uint64]:
    return np.array(values, dtype=np.uint64)


def counting(index: Index, hashes: Sequence[int], num_rows: int) -> tuple[int, list[float]]:
    out = np.full(num_rows, 99.0)  # the match zeroes it
    walked = index.match_counting(u64(hashes), out)
    return walked, out.tolist()


def strict(index: Index, hashes: Sequence[int], num_rows: int) -> tuple[int, list[float]]:
    out = np.full(num_rows, 99.0)
    longest = index.match_prefix(u64(hashes), out)
    return longest, out.tolist()


def test_lru_eviction_order(index: Index) -> None:
    index.add(u64([1, 2, 3]), 0, 3)
    assert index.lru_order(0) == [1, 2, 3]
    index.add(u64([2]), 0, 3)
    assert index.lru_order(0) == [1, 3, 2]
    index.add(u64([4]), 0, 3)  # full: evicts 1, the least recently used
    assert index.lru_order(0) == [3, 2, 4]
    assert (index.size(), index.num_hashes(), index.endpoint_size(0)) == (3, 3, 3)
    assert counting(index, [1, 2], 1) == (0, [0.0])  # 1 is gone from the index too
    assert counting(index, [3, 2, 4], 1) == (3, [3.0])


def test_add_moves_held_hashes_to_mru_in_request_order(index: Index) -> None:
    index.add(u64([1, 2, 3, 4]), 0, 4)
    index.add(u64([3, 1, 5]), 0, 4)  # 3 and 1 move up; 5 evicts 2 (then oldest)
    assert index.lru_order(0) == [4, 3, 1, 5]
    index.add(u64([6, 6, 7]), 0, 4)  # a repeated hash within one add is one entry
    assert index.lru_order(0) == [1, 5, 6, 7]


def test_one_add_longer_than_the_capacity_keeps_index_and_lru_consistent(index: Index) -> None:
    index.add(u64([1, 2, 3, 4, 5]), 0, 2)
    assert index.lru_order(0) == [4, 5]
    assert (index.size(), index.num_hashes()) == (2, 2)
    assert counting(index, [1], 1) == (0, [0.0])


def test_capacity_is_fixed_at_creation(index: Index) -> None:
    index.add(u64([1, 2]), 0, 2)
    index.add(u64([3]), 0, 100)  # ignored, as in GIE
    assert index.lru_order(0) == [2, 3]
    assert index.endpoint_capacity(0) == 2


def test_eviction_only_removes_the_evicting_endpoint(index: Index) -> None:
    index.add(u64([1, 2]), 0, 2)
    index.add(u64([1, 2]), 1, 5)
    index.add(u64([3]), 0, 2)  # row 0 evicts 1; row 1 still holds it
    assert counting(index, [1, 2, 3], 2) == (3, [2.0, 2.0])
    assert strict(index, [1, 2, 3], 2) == (2, [0.0, 2.0])
    assert index.num_hashes() == 3


# Counting mode vs strict mode (GIE's PrepareRequestData): rows 0 and 1 hold
# different parts of the prompt [10, 11, 12, 13, 14]; 13 is held by nobody.
#   row 0: 10, 12        row 1: 10, 11, 12, 14
# Counting walks 10, 11, 12 (each held by someone) and stops at 13: row 0 counts 2 (10, 12),
# row 1 counts 3. Strict: row 0 holds only [10] consecutively, row 1 [10, 11, 12].
PROMPT = [10, 11, 12, 13, 14]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param(counting, (3, [2.0, 3.0, 0.0]), id="counting"),
        pytest.param(strict, (3, [1.0, 3.0, 0.0]), id="strict"),
    ],
)
def test_match_modes_differ(
    index: Index,
    mode: Callable[[Index, Sequence[int], int], tuple[int, list[float]]],
    expected: tuple[int, list[float]],
) -> None:
    index.add(u64([10, 12]), 0, 100)
    index.add(u64([10, 11, 12, 14]), 1, 100)
    assert mode(index, PROMPT, 3) == expected


@pytest.mark.parametrize(
    ("prompt", "expected_counting", "expected_strict"),
    [
        pytest.param([], (0, [0.0, 0.0]), (0, [0.0, 0.0]), id="empty"),
        pytest.param([99, 1], (0, [0.0, 0.0]), (0, [0.0, 0.0]), id="first-miss"),
        pytest.param([1, 2, 3], (3, [3.0, 2.0]), (3, [3.0, 2.0]), id="nested"),
        pytest.param([3, 1], (2, [2.0, 1.0]), (2, [2.0, 0.0]), id="one-lacks-first"),
        pytest.param([1, 3, 2], (3, [3.0, 2.0]), (3, [3.0, 1.0]), id="gap-for-one"),
    ],
)
def test_match_examples(
    index: Index,
    prompt: list[int],
    expected_counting: tuple[int, list[float]],
    expected_strict: tuple[int, list[float]],
) -> None:
    index.add(u64([1, 2, 3]), 0, 10)
    index.add(u64([1, 2]), 1, 10)
    index.add(u64([7]), 1, 10)
    assert counting(index, prompt, 2) == expected_counting
    assert strict(index, prompt, 2) == expected_strict


def test_remove_endpoint(index: Index) -> None:
    index.add(u64([1, 2, 3]), 0, 5)
    index.add(u64([2, 3, 4]), 1, 5)
    assert index.remove_endpoint(0) == 3
    assert index.lru_order(0) == []
    assert (index.endpoint_size(0), index.endpoint_capacity(0)) == (0, 0)
    assert (index.size(), index.num_hashes()) == (3, 3)  # 1 is gone; 2, 3, 4 stay for row 1
    assert counting(index, [1], 2) == (0, [0.0, 0.0])
    assert counting(index, [2, 3, 4], 2) == (3, [0.0, 3.0])
    assert index.remove_endpoint(0) == 0
    assert index.remove_endpoint(7) == 0


def test_remove_by_hash(index: Index) -> None:
    index.add(u64([1, 2, 3, 4]), 0, 4)
    index.add(u64([2, 3]), 1, 4)
    # 9 is held by nobody, 2 is repeated: both ignored after the first removal.
    assert index.remove(u64([2, 9, 2, 4]), 0) == 2
    assert index.lru_order(0) == [1, 3]
    assert index.lru_order(1) == [2, 3]  # the other endpoint keeps its entries
    assert (index.size(), index.num_hashes()) == (4, 3)  # 4 is gone, 2 stays for row 1
    assert strict(index, [1, 2, 3], 2) == (1, [1.0, 0.0])
    assert index.remove(u64([2, 3]), 1) == 2
    assert (index.endpoint_size(1), index.endpoint_capacity(1)) == (0, 4)  # LRU kept
    assert index.num_hashes() == 2
    assert index.remove(u64([1]), 5) == 0  # a row without an LRU
    assert index.remove(u64([]), 0) == 0


def test_remove_frees_room_in_the_lru(index: Index) -> None:
    index.add(u64([1, 2, 3]), 0, 3)
    index.remove(u64([2]), 0)
    index.add(u64([4]), 0, 3)  # fits without evicting 1
    assert index.lru_order(0) == [1, 3, 4]
    index.add(u64([5]), 0, 3)  # full again: evicts 1
    assert index.lru_order(0) == [3, 4, 5]


def test_readd_after_removal_starts_a_new_lru(index: Index) -> None:
    index.add(u64([1, 2, 3]), 0, 3)
    index.remove_endpoint(0)
    index.add(u64([3, 4]), 0, 1)  # the new capacity applies
    assert index.lru_order(0) == [4]
    assert (index.size(), index.num_hashes()) == (1, 1)
    assert counting(index, [4], 1) == (1, [1.0])


def test_extreme_hash_values_are_stored(index: Index) -> None:
    values = [0, 1, 2**63 - 1, 2**63, MAX_U64]
    index.add(u64(values), 0, 10)
    assert index.lru_order(0) == values
    assert counting(index, values, 1) == (5, [5.0])
    assert counting(index, [MAX_U64 - 1], 1) == (0, [0.0])
    index.add(u64([0]), 0, 10)
    assert index.lru_order(0)[-1] == 0


def test_many_endpoints_on_one_hash(index: Index) -> None:
    num_rows = 3000
    for row in range(num_rows):
        index.add(u64([0, row + 1]), row, 2)
    assert (index.size(), index.num_hashes()) == (2 * num_rows, num_rows + 1)
    walked, out = counting(index, [0, 1], num_rows)
    assert walked == 2
    assert out == [2.0] + [1.0] * (num_rows - 1)
    for row in range(0, num_rows, 2):
        index.remove_endpoint(row)
    walked, out = counting(index, [0], num_rows)
    assert out == [0.0, 1.0] * (num_rows // 2)
    index.add(u64([5]), 1, 2)  # row 1 evicts 0 (its oldest): others keep it
    assert index.lru_order(1) == [2, 5]
    assert counting(index, [0], num_rows)[1][:4] == [0.0, 0.0, 0.0, 1.0]


def test_growth_keeps_all_data(index: Index) -> None:
    # Several rehashes (1024 initial slots, tiny pools in one variant) and pool growths,
    # with evictions leaving tombstones along the way.
    rng = np.random.default_rng(7)
    hashes = rng.integers(0, 2**64, size=6000, dtype=np.uint64)
    for chunk in range(6):
        index.add(hashes[chunk * 1000 : (chunk + 1) * 1000], chunk % 3, 1500)
    assert [index.endpoint_size(r) for r in range(3)] == [1500, 1500, 1500]
    assert index.lru_order(0) == [int(h) for h in hashes[500:1000]] + [
        int(h) for h in hashes[3000:4000]
    ]
    assert (index.size(), index.num_hashes()) == (4500, 4500)
    walked, out = counting(index, [int(h) for h in hashes[5000:6000]], 3)
    assert (walked, out) == (1000, [0.0, 0.0, 1000.0])
    assert counting(index, [int(hashes[0])], 3) == (0, [0.0, 0.0, 0.0])


def test_endpoint_rows_grow(index: Index) -> None:
    index.add(u64([1]), 900, 4)
    index.add(u64([1]), 3, 4)
    walked, out = counting(index, [1], 901)
    assert walked == 1
    assert [row for row, c in enumerate(out) if c] == [3, 900]


def test_input_checks() -> None:
    index = PrefixIndex()
    with pytest.raises(ValueError, match="capacity"):
        index.add(u64([1]), 0, 0)
    with pytest.raises(ValueError, match="row"):
        index.add(u64([1]), -1, 3)
    with pytest.raises(ValueError, match="row"):
        index.endpoint_size(True)
    with pytest.raises(ValueError, match="1-D"):
        index.add(np.zeros((2, 2), dtype=np.uint64), 0, 3)
    index.add(u64([1]), 4, 3)
    with pytest.raises(ValueError, match=r"out_counts: expected .* length >= 5"):
        index.match_counting(u64([1]), np.zeros(4))
    with pytest.raises(ValueError, match=r"out_counts: expected .*float64"):
        index.match_prefix(u64([1]), np.zeros(5, dtype=np.float32))


def test_nbytes_per_entry() -> None:
    index = PrefixIndex(initial_slots=1 << 12, initial_entries=2000)
    index.add(np.arange(2000, dtype=np.uint64), 0, 2000)
    # 20-byte nodes, 12-byte slots at load 2000 / 4096.
    assert index.nbytes == 2000 * 20 + 4096 * 12 + 16 * 16 + 5 * 8
    assert "size=2000" in repr(index)


def _keys_homed_at(homes: Sequence[int], num_slots: int, per_home: int) -> list[int]:
    """Hashes whose home slot (multiply-shift by the golden ratio) is one of ``homes``."""
    golden = 0x9E3779B97F4A7C15
    inverse = pow(golden, -1, 2**64)
    shift = 64 - (num_slots.bit_length() - 1)
    return [((home << shift) + 1 + j) * inverse % 2**64 for home in homes for j in range(per_home)]


def test_deletions_inside_probe_clusters_keep_every_hash_findable() -> None:
    # One 64-slot table (no growth: at most 40 live hashes), every hash homed at slots 62,
    # 63, 0 or 1, so they form one cluster that wraps around the table's end; evictions and
    # removals then delete slots inside it and shift the rest back.
    num_slots = 64
    hashes = _keys_homed_at([62, 63, 0, 1], num_slots, 10)
    rng = np.random.default_rng(3)
    index = PrefixIndex(initial_slots=num_slots, initial_entries=40)
    model = PrefixIndexModel()
    for step in range(400):
        row = int(rng.integers(0, 4))
        if step % 37 == 36:
            assert index.remove_endpoint(row) == model.remove_endpoint(row)
        else:
            batch = [hashes[i] for i in rng.integers(0, len(hashes), size=int(rng.integers(1, 6)))]
            index.add(u64(batch), row, 10)
            model.add(batch, row, 10)
        assert index._keys.shape[0] == num_slots
        assert (index.size(), index.num_hashes()) == (model.size(), model.num_hashes())
        for r in range(4):
            assert index.lru_order(r) == model.lru_order(r)
        for h in hashes:
            assert counting(index, [h], 4) == counting(model, [h], 4)


def test_reserve_presizes_without_changing_contents() -> None:
    index = PrefixIndex()
    index.add(u64([1, 2, 3]), 0, 10)
    index.reserve(100_000)
    assert index._nodes.shape[0] == 100_000
    assert index._keys.shape[0] == 1 << 18  # 100_000 / 0.7 -> the next power of two
    assert index.lru_order(0) == [1, 2, 3]
    assert counting(index, [1, 2, 3], 1) == (3, [3.0])
    nbytes = index.nbytes
    index.add(np.arange(10, 100_007, dtype=np.uint64), 1, 100_000)  # 100_000 in all
    assert index.nbytes == nbytes  # no reallocation
    with pytest.raises(ValueError, match="num_entries"):
        index.reserve(-1)


def test_a_full_index_at_steady_state_does_not_grow() -> None:
    # Every insert into a full LRU evicts first, so the pools need no headroom.
    index = PrefixIndex(initial_slots=2, initial_entries=1000)
    index.add(np.arange(1000, dtype=np.uint64), 0, 1000)
    nbytes = index.nbytes
    for start in range(1000, 5000, 256):
        index.add(np.arange(start, start + 256, dtype=np.uint64), 0, 1000)
    assert index.nbytes == nbytes
    assert index.lru_order(0) == list(range(5096 - 1000, 5096))  # the last add ends at 5096
