"""Hypothesis strategies for kernel inputs, with the dtypes the kernels pin.

Endpoint-table columns have ``num_rows`` entries and candidate sets index into them, so
a candidate set can be empty, a permutation of a subset, or contain duplicates. Element
strategies lean towards the values that break kernels: ties (small integers and a few
fractions), zeros of both signs, negatives, NaN, +-inf and float64 extremes.
"""

import math

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "MAX_ROWS",
    "metric_values",
    "score_values",
    "unit_floats",
    "columns",
    "candidate_sets",
    "column_with_candidates",
    "score_vectors",
    "tie_key_vectors",
    "score_matrices",
    "weight_vectors",
    "bitset_matrices",
    "thresholds",
]

MAX_ROWS = 24
"""Longest column the strategies draw; big enough for heaps and ties, small enough to shrink."""

_SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, math.nan, math.inf, -math.inf)


def metric_values() -> st.SearchStrategy[float]:
    """Float64 metric values: tie-prone small integers, specials, and the full range."""
    return st.one_of(
        st.integers(-3, 12).map(float),
        st.sampled_from(_SPECIAL_FLOATS),
        st.floats(-1e6, 1e6),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def score_values() -> st.SearchStrategy[float]:
    """Float32-representable scores: mostly in [0, 1] with ties, plus out-of-range specials."""
    return st.one_of(
        st.integers(0, 4).map(lambda q: q / 4),
        st.floats(0.0, 1.0, width=32),
        st.sampled_from(_SPECIAL_FLOATS),
        st.floats(-2.0, 3.0, width=32),
        st.floats(width=32, allow_nan=True, allow_infinity=True),
    )


def unit_floats() -> st.SearchStrategy[float]:
    """Float64 values in [0, 1), as drawn from a ``numpy.random.Generator``, with ties."""
    return st.one_of(
        st.sampled_from((0.0, 0.25, 0.5, 0.75)),
        st.floats(0.0, 1.0, exclude_max=True),
    )


def thresholds() -> st.SearchStrategy[float]:
    """Strictly positive finite thresholds (the scorers' precondition)."""
    return st.one_of(st.sampled_from((1.0, 4.0, 10.0, 128.0)), st.floats(1e-3, 1e9))


@st.composite
def columns(
    draw: st.DrawFn,
    num_rows: int,
    elements: st.SearchStrategy[float] | None = None,
) -> npt.NDArray[np.float64]:
    """A float64 column of ``num_rows`` metric values."""
    element = metric_values() if elements is None else elements
    values = draw(st.lists(element, min_size=num_rows, max_size=num_rows))
    return np.array(values, dtype=np.float64)


@st.composite
def candidate_sets(
    draw: st.DrawFn, num_rows: int, max_size: int = MAX_ROWS
) -> npt.NDArray[np.int32]:
    """int32 rows into a column of ``num_rows``: empty, distinct, or with duplicates."""
    if num_rows == 0:
        return np.empty(0, dtype=np.int32)
    rows = st.integers(0, num_rows - 1)
    unique = draw(st.booleans())
    size = min(max_size, num_rows) if unique else max_size
    picked = draw(st.lists(rows, max_size=size, unique=unique))
    return np.array(picked, dtype=np.int32)


@st.composite
def column_with_candidates(
    draw: st.DrawFn, elements: st.SearchStrategy[float] | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
    """A float64 column and a candidate set into it."""
    num_rows = draw(st.integers(0, MAX_ROWS))
    return draw(columns(num_rows, elements)), draw(candidate_sets(num_rows))


def score_vectors(size: int) -> st.SearchStrategy[npt.NDArray[np.float32]]:
    """float32 score vectors of ``size``, with ties, NaN, +-inf and out-of-range values."""
    return hnp.arrays(np.float32, size, elements=score_values())


def tie_key_vectors(shape: int | tuple[int, ...]) -> st.SearchStrategy[npt.NDArray[np.float64]]:
    """float64 tie keys / uniforms in [0, 1), with ties and zeros."""
    return hnp.arrays(np.float64, shape, elements=unit_floats())


def score_matrices(shape: tuple[int, ...]) -> st.SearchStrategy[npt.NDArray[np.float32]]:
    """float32 per-scorer score arrays of ``shape`` (scorers first)."""
    return hnp.arrays(np.float32, shape, elements=score_values())


def weight_vectors(num_scorers: int) -> st.SearchStrategy[npt.NDArray[np.float64]]:
    """float64 scorer weights: small integers (as in configs), fractions, negatives."""
    weight = st.one_of(st.integers(0, 10).map(float), st.floats(-10.0, 10.0))
    return hnp.arrays(np.float64, num_scorers, elements=weight)


@st.composite
def bitset_matrices(draw: st.DrawFn, num_rows: int) -> npt.NDArray[np.uint8]:
    """uint8 (num_rows, 0..3) adapter bitsets, sparse or dense."""
    num_bytes = draw(st.integers(0, 3))
    byte = st.one_of(st.sampled_from((0, 0xFF, 0x01, 0x80)), st.integers(0, 0xFF))
    return draw(hnp.arrays(np.uint8, (num_rows, num_bytes), elements=byte))
