"""The joint-assignment kernel (``inference_sched.kernels.assignment``) equals its twin.

Generated bursts: requests with overlapping candidate sets (some empty), chained block
hashes drawn from a few shared prefixes (so requests share leading blocks), NaN and
oversized matches, NaN and inf loads, ties in cost (equal loads, credit 0) and in tie
keys. Ranks must match exactly, costs to the last bit, and the load column too.
"""

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.kernels import assignment
from inference_sched.kernels._twins import assignment as assignment_twins

pytestmark = pytest.mark.property

IMPLS = (assignment, assignment_twins)
_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def _chain(values: list[int]) -> list[int]:
    """Chained hashes: equal at block b exactly when the values up to b are equal."""
    out, h = [], 1
    for v in values:
        h = ((h ^ (v + 1)) * _MIX + 0x632BE59BD9B4E019) & _MASK
        h ^= h >> 29
        out.append(h)
    return out


@st.composite
def _bursts(draw: st.DrawFn) -> tuple[Any, ...]:
    n = draw(st.integers(0, 8))
    num_rows = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    starts, rows, match, ties = [0], [], [], []
    for _ in range(n):
        chosen = draw(st.lists(st.integers(0, num_rows - 1), max_size=num_rows, unique=True))
        rows += chosen
        match += draw(
            st.lists(
                st.sampled_from((0.0, 1.0, 3.0, 9.0, float("nan"))),
                min_size=len(chosen),
                max_size=len(chosen),
            )
        )
        ties += draw(
            st.lists(st.sampled_from((0.0, 0.25, 0.5)), min_size=len(chosen), max_size=len(chosen))
        )
        starts.append(len(rows))
    bases = [draw(st.lists(st.integers(0, 1), min_size=6, max_size=6)) for _ in range(2)]
    width = 6
    hashes = np.zeros((n, width), dtype=np.uint64)
    num_hashes = np.zeros(n, dtype=np.int64)
    total = np.zeros(n, dtype=np.float64)
    for i in range(n):
        base = bases[draw(st.integers(0, 1))]
        length = draw(st.integers(0, width))
        keep = draw(st.integers(0, length))
        values = base[:keep] + [2 + i] * (length - keep)
        hashes[i, :length] = np.array(_chain(values), dtype=np.uint64)
        num_hashes[i] = length
        total[i] = draw(st.sampled_from((float(length), float(length) + 1.0, float("nan"))))
    order = np.array(draw(st.permutations(list(range(n)))), dtype=np.int32)
    block = np.array(
        draw(st.lists(st.sampled_from((1.0, 16.0)), min_size=n, max_size=n)), dtype=np.float64
    )
    tokens = np.array(
        draw(st.lists(st.sampled_from((0.0, 1.0, 16.0, 40.0)), min_size=n, max_size=n)),
        dtype=np.float64,
    )
    load = np.array(
        draw(
            st.lists(
                st.sampled_from((0.0, 16.0, 32.0, float("nan"), float("inf"))),
                min_size=num_rows,
                max_size=num_rows,
            )
        ),
        dtype=np.float64,
    )
    credit = draw(st.sampled_from((0.0, 1.0, 2.5)))
    return (
        order,
        np.array(starts, dtype=np.int64),
        np.array(rows, dtype=np.int32),
        np.array(match, dtype=np.float64),
        total,
        block,
        tokens,
        hashes,
        num_hashes,
        load,
        credit,
        np.array(ties, dtype=np.float64),
        k,
    )


def _run(impl: Any, inputs: tuple[Any, ...]) -> tuple[npt.NDArray[Any], ...]:
    *args, k = (np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in inputs)
    n = len(args[0])
    ranked = np.full((n, k), 99, dtype=np.int32)
    costs = np.full((n, k), -7.0, dtype=np.float64)
    impl.assign_greedy(*args, ranked, costs)
    return ranked, costs, args[9]


@given(_bursts())
def test_assign_greedy_equals_reference(inputs: tuple[Any, ...]) -> None:
    got, want = (_run(impl, inputs) for impl in IMPLS)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


def test_assign_greedy_places_an_identical_pair_together_while_it_pays() -> None:
    # Two requests, 4 blocks each, identical; 2 rows idle; each adds 16 tokens = 1 block.
    hashes = np.array([_chain([0, 0, 0, 0])] * 2, dtype=np.uint64)
    for credit, second in ((1.0, 0), (0.1, 1)):  # recompute 4 vs load 1; 0.4 vs 1
        for impl in IMPLS:
            ranked = np.empty((2, 1), dtype=np.int32)
            costs = np.empty((2, 1), dtype=np.float64)
            impl.assign_greedy(
                np.array([0, 1], dtype=np.int32),
                np.array([0, 2, 4], dtype=np.int64),
                np.array([0, 1, 0, 1], dtype=np.int32),
                np.zeros(4),
                np.array([4.0, 4.0]),
                np.array([16.0, 16.0]),
                np.array([16.0, 16.0]),
                hashes,
                np.array([4, 4], dtype=np.int64),
                np.zeros(2),
                credit,
                np.array([0.0, 0.5, 0.0, 0.5]),
                ranked,
                costs,
            )
            assert ranked[:, 0].tolist() == [0, second], (impl.__name__, credit)
