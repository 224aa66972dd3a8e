"""Every scoring, picking and filtering kernel equals its NumPy twin in
``inference_sched.kernels._twins`` (``_twins/scoring.py`` for ``scoring.py``, ...).

Property tests draw inputs with NaN, +-inf, ties, empty candidate sets, k >= n and
out-of-range adapter ids, run both implementations on identical copies and compare:
index and count outputs exactly, float32 outputs to a few ulp with NaN in the same
places. ``out`` arrays are longer than needed and pre-filled with a sentinel, so writing
past ``n`` shows up as a mismatch with the twin and with the sentinel. Table-driven
examples pin exact values for both implementations. Everything here also runs under
``NUMBA_DISABLE_JIT=1``.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.dispatcher import Dispatcher

from inference_sched.kernels import filtering, is_jit_enabled, picking, scoring
from inference_sched.kernels._twins import filtering as filtering_twins
from inference_sched.kernels._twins import picking as picking_twins
from inference_sched.kernels._twins import scoring as scoring_twins
from tests.strategies import (
    MAX_ROWS,
    bitset_matrices,
    candidate_sets,
    column_with_candidates,
    columns,
    score_matrices,
    score_vectors,
    thresholds,
    tie_key_vectors,
    weight_vectors,
)

pytestmark = pytest.mark.property

Impl = Mapping[str, Callable[..., Any]]

# Each kernel module with its twin module, the pairing the kernel-policy test enforces.
MODULES = ((scoring, scoring_twins), (picking, picking_twins), (filtering, filtering_twins))
KERNELS: Impl = {name: getattr(module, name) for module, _ in MODULES for name in module.__all__}
TWINS: Impl = {name: getattr(twins, name) for module, twins in MODULES for name in module.__all__}

NAN = math.nan
INF = math.inf
SENTINEL_SCORE = -7.0
SENTINEL_INDEX = -1


def _copies(*arrays: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], ...]:
    """Fresh C-contiguous copies, so the two implementations cannot share state."""
    return tuple(np.array(a, copy=True, order="C") for a in arrays)


def _score_out(n: int) -> npt.NDArray[np.float32]:
    return np.full(n + 2, SENTINEL_SCORE, dtype=np.float32)


def _index_out(n: int) -> npt.NDArray[np.int32]:
    return np.full(n + 2, SENTINEL_INDEX, dtype=np.int32)


def _assert_scores_equal(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> None:
    """float32 comparison: same NaN and inf positions, finite values to a few ulp."""
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)


def _fresh(args: tuple[Any, ...]) -> list[Any]:
    """Copy the array arguments, so the two implementations cannot share state."""
    return [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]


def _candidates_index(args: tuple[Any, ...]) -> int:
    """Position of the candidates argument: the only int32 array among ``args``."""
    (index,) = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype == np.int32]
    return index


def _run_scorer(name: str, *args: Any) -> None:
    """Run scorer ``name`` both ways on ``args + (out,)`` and compare the outs."""
    n = args[_candidates_index(args)].shape[0]
    outs = []
    for impl in (KERNELS, TWINS):
        out = _score_out(n)
        assert impl[name](*_fresh(args), out) is None
        outs.append(out)
    _assert_scores_equal(outs[0], outs[1])
    assert (outs[0][n:] == SENTINEL_SCORE).all()


# --------------------------------------------------------------------------- scoring


@settings(deadline=None)
@given(column_with_candidates())
def test_min_max_inverted_matches_reference(
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]],
) -> None:
    values, candidates = data
    _run_scorer("min_max_inverted", values, candidates)


# Without JIT the kernel's float32 stores go through NumPy, which warns on overflow to inf.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(deadline=None)
@given(column_with_candidates())
def test_one_minus_matches_reference(
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]],
) -> None:
    values, candidates = data
    _run_scorer("one_minus", values, candidates)


# Without JIT the kernel's float32 stores go through NumPy, which warns on overflow to inf.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(deadline=None)
@given(
    column_with_candidates(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda d: d != 0),
)
def test_divided_matches_reference(
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]], divisor: float
) -> None:
    values, candidates = data
    _run_scorer("divided", values, candidates, divisor)


@settings(deadline=None)
@given(column_with_candidates(), thresholds(), st.sampled_from(["threshold_load", "load_aware"]))
def test_threshold_scorers_match_reference(
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]], threshold: float, name: str
) -> None:
    values, candidates = data
    _run_scorer(name, values, candidates, threshold)


@settings(deadline=None)
@given(
    column_with_candidates(),
    st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 20.0)),
    st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
)
def test_active_request_matches_reference(
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]],
    idle_threshold: float,
    max_busy_score: float,
) -> None:
    values, candidates = data
    _run_scorer("active_request", values, candidates, idle_threshold, max_busy_score)


@st.composite
def _lora_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    num_rows = draw(st.integers(0, MAX_ROWS))
    active_bits = draw(bitset_matrices(num_rows))
    waiting_bits = draw(bitset_matrices(num_rows))
    slots = st.one_of(st.integers(0, 4).map(float), st.just(NAN))
    num_adapters = draw(columns(num_rows, slots))
    max_loras = draw(columns(num_rows, slots))
    candidates = draw(candidate_sets(num_rows))
    width = 8 * max(active_bits.shape[1], waiting_bits.shape[1])
    adapter_id = draw(st.integers(-3, width + 9))
    return active_bits, waiting_bits, num_adapters, max_loras, candidates, adapter_id


@settings(deadline=None)
@given(_lora_inputs())
def test_lora_affinity_matches_reference(inputs: tuple[Any, ...]) -> None:
    _run_scorer("lora_affinity", *inputs)


@st.composite
def _weighted_sum_inputs(draw: st.DrawFn, batch: bool) -> tuple[Any, ...]:
    num_scorers = draw(st.integers(0, 4))
    shape = (num_scorers, draw(st.integers(0, 3)), draw(st.integers(0, MAX_ROWS)))
    scores = draw(score_matrices(shape if batch else (shape[0], shape[2])))
    weights = draw(weight_vectors(num_scorers))
    counts = st.lists(st.integers(0, 1000), min_size=num_scorers, max_size=num_scorers)
    nonfinite_counts = np.array(draw(counts), dtype=np.int64)
    clamped_counts = np.array(draw(counts), dtype=np.int64)
    return scores, weights, nonfinite_counts, clamped_counts


def _run_weighted_sum(name: str, inputs: tuple[Any, ...]) -> None:
    scores, weights, nonfinite_counts, clamped_counts = inputs
    out_shape = tuple(d + 1 for d in scores.shape[1:])
    results = []
    for impl in (KERNELS, TWINS):
        out = np.full(out_shape, SENTINEL_SCORE, dtype=np.float32)
        counters = _copies(nonfinite_counts, clamped_counts)
        impl[name](*_copies(scores, weights), out, *counters)
        results.append((out, *counters))
    (out_k, nonfinite_k, clamped_k), (out_r, nonfinite_r, clamped_r) = results
    _assert_scores_equal(out_k, out_r)
    np.testing.assert_array_equal(nonfinite_k, nonfinite_r)
    np.testing.assert_array_equal(clamped_k, clamped_r)
    # Untouched margin (last column, and last row of a batch); never NaN.
    assert (out_k[..., -1] == SENTINEL_SCORE).all()
    if out_k.ndim == 2:
        assert (out_k[-1] == SENTINEL_SCORE).all()
    assert not np.isnan(out_k).any()


@settings(deadline=None)
@given(_weighted_sum_inputs(batch=False))
def test_weighted_sum_matches_reference(inputs: tuple[Any, ...]) -> None:
    _run_weighted_sum("weighted_sum", inputs)


@settings(deadline=None)
@given(_weighted_sum_inputs(batch=True))
def test_weighted_sum_batch_matches_reference(inputs: tuple[Any, ...]) -> None:
    _run_weighted_sum("weighted_sum_batch", inputs)


# --------------------------------------------------------------------------- picking


@st.composite
def _ranking_inputs(
    draw: st.DrawFn,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], int]:
    n = draw(st.integers(0, MAX_ROWS))
    k = draw(st.one_of(st.integers(1, 4), st.integers(-1, n + 3)))
    return draw(score_vectors(n)), draw(tie_key_vectors(n)), k


@settings(deadline=None)
@given(_ranking_inputs())
def test_top_k_ranked_matches_reference(
    inputs: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], int],
) -> None:
    scores, tie_keys, k = inputs
    n = scores.shape[0]
    outs, counts = [], []
    for impl in (KERNELS, TWINS):
        out = _index_out(n)
        counts.append(impl["top_k_ranked"](*_copies(scores, tie_keys), k, out))
        outs.append(out)
    expected_count = max(0, min(k, n))
    assert counts == [expected_count, expected_count]
    np.testing.assert_array_equal(outs[0], outs[1])
    ranked = outs[0][:expected_count]
    assert len(set(ranked.tolist())) == expected_count
    assert ((ranked >= 0) & (ranked < n)).all()
    assert (outs[0][expected_count:] == SENTINEL_INDEX).all()


@st.composite
def _batch_ranking_inputs(draw: st.DrawFn, is_shared: bool) -> tuple[Any, ...]:
    num_requests = draw(st.integers(0, 3))
    n = draw(st.integers(0, MAX_ROWS))
    scores = draw(score_vectors(n) if is_shared else score_matrices((num_requests, n)))
    tie_keys = draw(tie_key_vectors((num_requests, n)))
    k = draw(st.one_of(st.integers(1, 4), st.integers(-1, n + 3)))
    return scores, tie_keys, k


@pytest.mark.parametrize("name", ["top_k_ranked_shared", "top_k_ranked_batch"])
@settings(deadline=None)
@given(data=st.data())
def test_batch_rankings_match_reference_and_single(name: str, data: st.DataObject) -> None:
    scores, tie_keys, k = data.draw(_batch_ranking_inputs(name == "top_k_ranked_shared"))
    num_requests, n = tie_keys.shape
    expected_count = max(0, min(k, n))
    results = []
    for impl in (KERNELS, TWINS):
        out = np.full((num_requests + 1, expected_count + 2), SENTINEL_INDEX, dtype=np.int32)
        counts = np.full(num_requests + 1, SENTINEL_INDEX, dtype=np.int32)
        impl[name](*_copies(scores, tie_keys), k, out, counts)
        results.append((out, counts))
    (out_k, counts_k), (out_r, counts_r) = results
    np.testing.assert_array_equal(out_k, out_r)
    np.testing.assert_array_equal(counts_k, counts_r)
    assert (counts_k[:num_requests] == expected_count).all()
    assert counts_k[num_requests] == SENTINEL_INDEX
    # Each row equals the single-request ranking.
    for r in range(num_requests):
        row_scores = scores if name == "top_k_ranked_shared" else scores[r]
        single = _index_out(n)
        row_scores, row_tie_keys = _copies(row_scores, tie_keys[r])
        picking.top_k_ranked(row_scores, row_tie_keys, k, single)
        np.testing.assert_array_equal(out_k[r, :expected_count], single[:expected_count])


@settings(deadline=None)
@given(st.integers(0, MAX_ROWS).flatmap(lambda n: st.tuples(score_vectors(n), tie_key_vectors(n))))
def test_ares_keys_match_reference(
    inputs: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]],
) -> None:
    scores, uniforms = inputs
    n = scores.shape[0]
    results = []
    for impl in (KERNELS, TWINS):
        out = np.full(n + 2, SENTINEL_SCORE, dtype=np.float64)
        results.append((impl["ares_keys"](*_copies(scores, uniforms), out), out))
    (count_k, keys_k), (count_r, keys_r) = results
    assert count_k == count_r == int(np.count_nonzero(np.isfinite(scores) & (scores > 0)))
    np.testing.assert_allclose(keys_k, keys_r, rtol=1e-12, atol=0.0)
    assert ((keys_k[:n] >= 0.0) & (keys_k[:n] <= 1.0)).all()
    assert (keys_k[n:] == SENTINEL_SCORE).all()


# --------------------------------------------------------------------------- filtering


def _run_filter(name: str, *args: Any) -> None:
    """Run filter ``name`` both ways, out of place and in place, and compare all four."""
    index = _candidates_index(args)
    candidates = args[index]
    n = candidates.shape[0]
    results = []
    for impl in (KERNELS, TWINS):
        out = _index_out(n)
        count = impl[name](*_fresh(args), out)
        results.append((count, out[:count].copy()))
        assert (out[count:] == SENTINEL_INDEX).all()
        # In place: ``out`` is the candidates array itself.
        in_place_args = _fresh(args)
        count = impl[name](*in_place_args, in_place_args[index])
        results.append((count, in_place_args[index][:count].copy()))
    first_count, first_rows = results[0]
    for count, rows in results[1:]:
        assert count == first_count
        np.testing.assert_array_equal(rows, first_rows)
    # Kept rows are an order-preserving subsequence of the candidates.
    remaining = iter(candidates.tolist())
    assert all(row in remaining for row in first_rows.tolist())


@st.composite
def _mask_inputs(draw: st.DrawFn) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int32]]:
    num_rows = draw(st.integers(0, MAX_ROWS))
    mask = np.array(draw(st.lists(st.booleans(), min_size=num_rows, max_size=num_rows)))
    return mask.astype(np.bool_), draw(candidate_sets(num_rows))


@settings(deadline=None)
@given(_mask_inputs())
def test_filter_by_mask_matches_reference(
    inputs: tuple[npt.NDArray[np.bool_], npt.NDArray[np.int32]],
) -> None:
    _run_filter("filter_by_mask", *inputs)


@st.composite
def _code_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    num_rows = draw(st.integers(0, MAX_ROWS))
    code = st.one_of(st.integers(-1, 5), st.integers(-128, 127))
    codes = np.array(draw(st.lists(code, min_size=num_rows, max_size=num_rows)), dtype=np.int8)
    allowed = np.array(draw(st.lists(st.booleans(), max_size=6)), dtype=np.bool_)
    return codes, allowed, draw(candidate_sets(num_rows))


@settings(deadline=None)
@given(_code_inputs())
def test_filter_by_code_matches_reference(inputs: tuple[Any, ...]) -> None:
    _run_filter("filter_by_code", *inputs)


@settings(deadline=None)
@given(
    column_with_candidates(),
    st.one_of(st.integers(-2, 12).map(float), st.sampled_from([NAN, INF, -INF, 0.5])),
)
def test_filter_below_matches_reference(
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]], limit: float
) -> None:
    values, candidates = data
    _run_filter("filter_below", values, candidates, limit)


# --------------------------------------------------------------------------- exact values


@pytest.fixture(params=["numba", "numpy"])
def impl(request: pytest.FixtureRequest) -> Impl:
    """Both implementations, so every exact example checks the kernel and its twin."""
    return KERNELS if request.param == "numba" else TWINS


def _f8(*values: float) -> npt.NDArray[np.float64]:
    return np.array(values, dtype=np.float64)


def _f4(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _i4(*values: int) -> npt.NDArray[np.int32]:
    return np.array(values, dtype=np.int32)


def _all_rows(values: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
    return np.arange(values.shape[0], dtype=np.int32)


def _score(impl: Impl, name: str, values: npt.NDArray[np.float64], *params: float) -> list[float]:
    """Score every row of ``values`` and return the scores as a list."""
    out = np.zeros(values.shape[0], dtype=np.float32)
    impl[name](values, _all_rows(values), *params, out)
    return [float(x) for x in out]


def _same(actual: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(np.array(actual), np.array(expected), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(_f8(2, 4, 6), [1.0, 0.5, 0.0], id="spread"),
        pytest.param(_f8(3), [1.0], id="single"),
        pytest.param(_f8(5, 5, 5), [1.0, 1.0, 1.0], id="all-equal"),
        pytest.param(_f8(NAN, 2, 4), [NAN, 1.0, 0.0], id="nan-excluded"),
        pytest.param(_f8(INF, 1, -INF, 3), [NAN, 1.0, NAN, 0.0], id="inf-as-nan"),
        pytest.param(_f8(NAN, INF), [NAN, NAN], id="none-finite"),
        pytest.param(_f8(NAN, 7), [NAN, 1.0], id="one-finite"),
        pytest.param(_f8(-1e308, 1e308, 0), [1.0, 0.0, 0.5], id="range-overflows"),
        pytest.param(_f8(), [], id="empty"),
    ],
)
def test_min_max_inverted_values(
    impl: Impl, values: npt.NDArray[np.float64], expected: list[float]
) -> None:
    _same(_score(impl, "min_max_inverted", values), expected)


def test_min_max_inverted_gathers_candidates(impl: Impl) -> None:
    out = np.full(3, SENTINEL_SCORE, dtype=np.float32)
    impl["min_max_inverted"](_f8(2, 4, 6, 100), _i4(2, 0), out)
    assert out.tolist() == [0.0, 1.0, SENTINEL_SCORE]


def test_one_minus_values(impl: Impl) -> None:
    _same(_score(impl, "one_minus", _f8(0.25, 1.5, -0.5, NAN)), [0.75, -0.5, 1.5, NAN])


def test_divided_values(impl: Impl) -> None:
    out = np.full(5, SENTINEL_SCORE, dtype=np.float32)
    impl["divided"](_f8(3, 0, 8, NAN), _i4(2, 1, 0, 3), 8.0, out)
    _same(out[:4].tolist(), [1.0, 0.0, 0.375, NAN])
    assert out[4] == SENTINEL_SCORE


def test_divided_by_zero_raises(impl: Impl) -> None:
    with pytest.raises(ZeroDivisionError):
        impl["divided"](_f8(1), _i4(0), 0.0, _f4(0))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("threshold_load", [1.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.0, NAN], id="token-load"),
        pytest.param("load_aware", [0.5, 0.5, 0.25, 0.0, 0.0, 0.5, 0.0, NAN], id="load-aware"),
    ],
)
def test_threshold_scorer_values(impl: Impl, name: str, expected: list[float]) -> None:
    values = _f8(-1, 0, 5, 10, 20, -INF, INF, NAN)
    _same(_score(impl, name, values, 10.0), expected)


@pytest.mark.parametrize(
    ("values", "idle_threshold", "max_busy_score", "expected"),
    [
        pytest.param(_f8(0, 2, 4, NAN), 0.0, 1.0, [1.0, 0.5, 0.0, NAN], id="idle-0"),
        pytest.param(_f8(1, 3, 4), 2.0, 0.5, [1.0, 0.125, 0.0], id="idle-2-half"),
        pytest.param(_f8(0, 1, 2), 5.0, 1.0, [1.0, 1.0, 1.0], id="all-idle"),
        pytest.param(_f8(INF, 2, 8), 0.0, 1.0, [NAN, 0.75, 0.0], id="inf-excluded"),
    ],
)
def test_active_request_values(
    impl: Impl,
    values: npt.NDArray[np.float64],
    idle_threshold: float,
    max_busy_score: float,
    expected: list[float],
) -> None:
    _same(_score(impl, "active_request", values, idle_threshold, max_busy_score), expected)


# Rows: 0 has adapter 3 and 9 active (full), 1 has a free slot, 2 has 3 and 9 waiting
# (full), 3 has nothing (full). Adapter 9 is bit 1 of byte 1.
_ACTIVE_BITS = np.array([[0x08, 0x02], [0, 0], [0, 0], [0, 0]], dtype=np.uint8)
_WAITING_BITS = np.array([[0, 0], [0, 0], [0x08, 0x02], [0, 0]], dtype=np.uint8)
_NUM_ADAPTERS = _f8(4, 1, 4, 4)
_MAX_LORAS = _f8(4, 4, 4, 4)


@pytest.mark.parametrize(
    ("adapter_id", "expected"),
    [
        pytest.param(3, [1.0, 0.8, 0.6, 0.0], id="bit-3"),
        pytest.param(9, [1.0, 0.8, 0.6, 0.0], id="byte-1-bit-1"),
        pytest.param(8, [0.0, 0.8, 0.0, 0.0], id="neighbour-bit"),
        pytest.param(-1, [0.0, 0.8, 0.0, 0.0], id="unknown"),
        pytest.param(16, [0.0, 0.8, 0.0, 0.0], id="beyond-width"),
    ],
)
def test_lora_affinity_values(impl: Impl, adapter_id: int, expected: list[float]) -> None:
    out = np.zeros(4, dtype=np.float32)
    impl["lora_affinity"](
        _ACTIVE_BITS, _WAITING_BITS, _NUM_ADAPTERS, _MAX_LORAS, _i4(0, 1, 2, 3), adapter_id, out
    )
    _same(out.tolist(), expected)


def test_weighted_sum_values(impl: Impl) -> None:
    score_matrix = np.array([[0.5, 1.5, NAN], [-0.5, 0.25, INF]], dtype=np.float32)
    out = np.full(3, SENTINEL_SCORE, dtype=np.float32)
    nonfinite_counts = np.array([10, 20], dtype=np.int64)
    clamped_counts = np.array([1, 2], dtype=np.int64)
    impl["weighted_sum"](score_matrix, _f8(2, 4), out, nonfinite_counts, clamped_counts)
    assert out.tolist() == [1.0, 3.0, 0.0]
    assert nonfinite_counts.tolist() == [11, 21]
    assert clamped_counts.tolist() == [2, 3]


def test_weighted_sum_without_scorers_is_zero(impl: Impl) -> None:
    out = np.full(3, SENTINEL_SCORE, dtype=np.float32)
    counts = np.zeros(0, dtype=np.int64)
    impl["weighted_sum"](np.zeros((0, 3), dtype=np.float32), _f8(), out, counts, counts.copy())
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_weighted_sum_batch_values(impl: Impl) -> None:
    score_tensor = np.array([[[0.5, NAN]], [[2.0, 0.25]]], dtype=np.float32)  # (2, 1, 2)
    out = np.zeros((1, 2), dtype=np.float32)
    nonfinite_counts = np.zeros(2, dtype=np.int64)
    clamped_counts = np.zeros(2, dtype=np.int64)
    impl["weighted_sum_batch"](score_tensor, _f8(1, 2), out, nonfinite_counts, clamped_counts)
    assert out.tolist() == [[2.5, 0.5]]
    assert nonfinite_counts.tolist() == [1, 0]
    assert clamped_counts.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("scores", "tie_keys", "k", "expected"),
    [
        pytest.param(
            _f4(0.5, 0.9, 0.9, NAN, 0.1), _f8(0.1, 0.2, 0.7, 0.9, 0.0), 3, [2, 1, 0], id="top-3"
        ),
        pytest.param(
            _f4(0.5, 0.9, 0.9, NAN, 0.1),
            _f8(0.1, 0.2, 0.7, 0.9, 0.0),
            10,
            [2, 1, 0, 4, 3],
            id="k-above-n",
        ),
        pytest.param(_f4(1, 1, 1), _f8(0.5, 0.5, 0.5), 3, [0, 1, 2], id="full-tie-by-position"),
        pytest.param(_f4(-INF, NAN), _f8(0.1, 0.5), 2, [1, 0], id="nan-level-with-minus-inf"),
        pytest.param(_f4(0.2, 0.3), _f8(0.0, 0.0), 1, [1], id="k-1"),
        pytest.param(_f4(0.2, 0.3), _f8(0.0, 0.0), 0, [], id="k-0"),
        pytest.param(_f4(), _f8(), 2, [], id="empty"),
    ],
)
def test_top_k_ranked_values(
    impl: Impl,
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    expected: list[int],
) -> None:
    out = np.full(max(k, 1), SENTINEL_INDEX, dtype=np.int32)
    count = impl["top_k_ranked"](scores, tie_keys, k, out)
    assert count == len(expected)
    assert out[:count].tolist() == expected


def test_top_k_ranked_shared_values(impl: Impl) -> None:
    scores = _f4(0.5, 0.9, 0.9)
    tie_keys = np.array([[0.0, 0.1, 0.2], [0.0, 0.2, 0.1]], dtype=np.float64)
    out = np.full((2, 2), SENTINEL_INDEX, dtype=np.int32)
    counts = np.zeros(2, dtype=np.int32)
    impl["top_k_ranked_shared"](scores, tie_keys, 2, out, counts)
    assert out.tolist() == [[2, 1], [1, 2]]
    assert counts.tolist() == [2, 2]


def test_top_k_ranked_batch_values(impl: Impl) -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.7, NAN, 0.2]], dtype=np.float32)
    tie_keys = np.zeros((2, 3), dtype=np.float64)
    out = np.full((2, 3), SENTINEL_INDEX, dtype=np.int32)
    counts = np.zeros(2, dtype=np.int32)
    impl["top_k_ranked_batch"](scores, tie_keys, 5, out, counts)
    assert out.tolist() == [[1, 2, 0], [0, 2, 1]]
    assert counts.tolist() == [3, 3]


def test_ares_keys_values(impl: Impl) -> None:
    scores = _f4(2.0, 0.0, -1.0, NAN, INF, 4.0)
    uniforms = _f8(0.25, 0.5, 0.5, 0.5, 0.5, 0.0)
    out = np.full(6, SENTINEL_SCORE, dtype=np.float64)
    assert impl["ares_keys"](scores, uniforms, out) == 2
    np.testing.assert_allclose(out, [0.5, 0.0, 0.0, 0.0, 0.0, 1e-10**0.25], rtol=1e-15)


def test_ares_keys_without_positive_scores(impl: Impl) -> None:
    out = np.full(2, SENTINEL_SCORE, dtype=np.float64)
    assert impl["ares_keys"](_f4(0.0, NAN), _f8(0.3, 0.6), out) == 0
    assert out.tolist() == [0.0, 0.0]


def test_filter_by_mask_values(impl: Impl) -> None:
    mask = np.array([True, False, True, True], dtype=np.bool_)
    out = np.full(4, SENTINEL_INDEX, dtype=np.int32)
    assert impl["filter_by_mask"](mask, _i4(3, 1, 0, 3), out) == 3
    assert out.tolist() == [3, 0, 3, SENTINEL_INDEX]


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        pytest.param([True, False], [0, 3], id="code-0"),
        pytest.param([False, True, True], [1, 4], id="codes-1-2"),
        pytest.param([], [], id="nothing-allowed"),
    ],
)
def test_filter_by_code_values(impl: Impl, allowed: list[bool], expected: list[int]) -> None:
    codes = np.array([0, 1, -1, 0, 2, 7], dtype=np.int8)
    out = np.full(6, SENTINEL_INDEX, dtype=np.int32)
    count = impl["filter_by_code"](
        codes, np.array(allowed, dtype=np.bool_), _i4(0, 1, 2, 3, 4, 5), out
    )
    assert out[:count].tolist() == expected


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        pytest.param(3.0, [0, 1, 4], id="strict"),
        pytest.param(INF, [0, 1, 2, 4], id="inf-limit"),
        pytest.param(NAN, [], id="nan-limit"),
    ],
)
def test_filter_below_values(impl: Impl, limit: float, expected: list[int]) -> None:
    values = _f8(1, 2, 3, NAN, -INF)
    out = np.full(5, SENTINEL_INDEX, dtype=np.int32)
    count = impl["filter_below"](values, _i4(0, 1, 2, 3, 4), limit, out)
    assert out[:count].tolist() == expected


# --------------------------------------------------------------------------- subsequence


@settings(deadline=None)
@given(
    candidates=st.lists(st.integers(0, 20), max_size=30),
    kept=st.lists(st.integers(0, 20), max_size=30),
)
def test_is_subsequence_matches_reference(candidates: list[int], kept: list[int]) -> None:
    c, k = np.array(candidates, dtype=np.int32), np.array(kept, dtype=np.int32)
    assert KERNELS["is_subsequence"](c, k) == TWINS["is_subsequence"](c, k)


@settings(deadline=None)
@given(candidates=st.lists(st.integers(0, 20), max_size=30), data=st.data())
def test_every_ordered_selection_is_a_subsequence(
    candidates: list[int], data: st.DataObject
) -> None:
    mask = data.draw(st.lists(st.booleans(), min_size=len(candidates), max_size=len(candidates)))
    c = np.array(candidates, dtype=np.int32)
    k = c[np.array(mask, dtype=bool)] if candidates else c
    assert KERNELS["is_subsequence"](c, k.astype(np.int32))


@pytest.mark.parametrize(
    ("candidates", "kept", "expected"),
    [
        ([1, 3, 5], [1, 5], True),
        ([1, 3, 5], [], True),
        ([1, 3, 5], [5, 1], False),  # order changed
        ([1, 3, 5], [7], False),  # not a candidate
        ([1, 3, 5], [3, 3], False),  # duplicated
        ([], [], True),
    ],
)
def test_is_subsequence_values(
    impl: Impl, candidates: list[int], kept: list[int], expected: bool
) -> None:
    c, k = np.array(candidates, dtype=np.int32), np.array(kept, dtype=np.int32)
    assert impl["is_subsequence"](c, k) is expected or impl["is_subsequence"](c, k) == expected


# --------------------------------------------------------------------------- salted ties


def test_tie_keys_from_salt_is_splitmix64(impl: Impl) -> None:
    # Reference outputs of splitmix64 seeded with 0 (Vigna's splitmix64.c).
    out = np.empty(2, dtype=np.float64)
    impl["tie_keys_from_salt"](0, out)
    expected = [0xE220A8397B1DCDAF >> 11, 0x6E789E6AA1B965F4 >> 11]
    assert [int(v * 2.0**53) for v in out] == expected


@settings(deadline=None)
@given(
    salt=st.integers(0, 2**63 - 1),
    n=st.integers(0, 300),
    k=st.integers(0, 6),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_salted_rankings_match_reference(salt: int, n: int, k: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, n).astype(np.float32)  # few levels: many ties
    keys_numba, keys_numpy = np.empty(n), np.empty(n)
    KERNELS["tie_keys_from_salt"](salt, keys_numba)
    TWINS["tie_keys_from_salt"](salt, keys_numpy)
    np.testing.assert_array_equal(keys_numba, keys_numpy)
    assert ((keys_numba >= 0) & (keys_numba < 1)).all()
    outs = []
    for impl in (KERNELS, TWINS):
        out = np.full(max(k, 1), -1, dtype=np.int32)
        count = impl["top_k_ranked_salted"](scores, salt, k, out)
        outs.append(out[:count].tolist())
    assert outs[0] == outs[1]
    # same as the unsalted kernel fed the salted keys
    plain = np.full(max(k, 1), -1, dtype=np.int32)
    count = KERNELS["top_k_ranked"](scores, keys_numba, k, plain)
    assert plain[:count].tolist() == outs[0]


@settings(deadline=None)
@given(n=st.integers(0, 50), k=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_salted_shared_ranking_matches_reference_and_single(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, n).astype(np.float32)
    salts = rng.integers(0, 2**64 - 1, 5, dtype=np.uint64, endpoint=True)
    results = []
    for impl in (KERNELS, TWINS):
        out = np.full((5, k), -1, dtype=np.int32)
        counts = np.zeros(5, dtype=np.int32)
        impl["top_k_ranked_shared_salted"](scores, salts, k, out, counts)
        results.append([out[r, : counts[r]].tolist() for r in range(5)])
    assert results[0] == results[1]
    for r in range(5):
        single = np.full(k, -1, dtype=np.int32)
        count = KERNELS["top_k_ranked_salted"](scores, int(salts[r]) >> 1, k, single)
        assert single[:count].tolist() == results[0][r]


def test_salted_ties_reach_every_tied_position() -> None:
    scores = np.zeros(4, dtype=np.float32)
    out = np.empty(1, dtype=np.int32)
    picked = set()
    for salt in range(64):
        KERNELS["top_k_ranked_salted"](scores, salt, 1, out)
        picked.add(int(out[0]))
    assert picked == {0, 1, 2, 3}


# --------------------------------------------------------------------------- signatures


def _canonical_args(name: str) -> tuple[Any, ...]:
    """One call's arguments in the pinned dtypes (the only ones the tests ever pass)."""
    values, candidates = _f8(1, 2, NAN), _i4(0, 2)
    scores, tie_keys = _f4(0.5, 0.25), _f8(0.1, 0.2)
    bits = np.zeros((3, 1), dtype=np.uint8)
    counts = np.zeros(1, dtype=np.int64)
    table: dict[str, tuple[Any, ...]] = {
        "min_max_inverted": (values, candidates, _f4(0, 0)),
        "one_minus": (values, candidates, _f4(0, 0)),
        "divided": (values, candidates, 4.0, _f4(0, 0)),
        "threshold_load": (values, candidates, 4.0, _f4(0, 0)),
        "load_aware": (values, candidates, 4.0, _f4(0, 0)),
        "active_request": (values, candidates, 0.0, 1.0, _f4(0, 0)),
        "lora_affinity": (bits, bits, values, values, candidates, 1, _f4(0, 0)),
        "weighted_sum": (np.zeros((1, 2), np.float32), _f8(1), _f4(0, 0), counts, counts),
        "weighted_sum_batch": (
            np.zeros((1, 1, 2), np.float32),
            _f8(1),
            np.zeros((1, 2), np.float32),
            counts,
            counts,
        ),
        "top_k_ranked": (scores, tie_keys, 1, _i4(0)),
        "tie_keys_from_salt": (7, _f8(0, 0)),
        "top_k_ranked_salted": (scores, 7, 1, _i4(0)),
        "top_k_ranked_shared_salted": (
            scores,
            np.array([1, 2], dtype=np.uint64),
            1,
            np.zeros((2, 1), np.int32),
            _i4(0, 0),
        ),
        "top_k_ranked_shared": (
            scores,
            tie_keys.reshape(1, -1),
            1,
            np.zeros((1, 1), np.int32),
            _i4(0),
        ),
        "top_k_ranked_batch": (
            scores.reshape(1, -1),
            tie_keys.reshape(1, -1),
            1,
            np.zeros((1, 1), np.int32),
            _i4(0),
        ),
        "ares_keys": (scores, tie_keys, _f8(0, 0)),
        "filter_by_mask": (np.ones(3, np.bool_), candidates, _i4(0, 0)),
        "filter_by_code": (np.zeros(3, np.int8), np.ones(1, np.bool_), candidates, _i4(0, 0)),
        "filter_below": (values, candidates, 2.0, _i4(0, 0)),
        "is_subsequence": (candidates, _i4(2)),
    }
    return table[name]


def test_canonical_args_cover_every_kernel() -> None:
    for name in KERNELS:
        assert _canonical_args(name)


# Runs last in this module, after every property and table test has called the kernels:
# any call with a stray dtype, layout or scalar type would have compiled a second one.
@pytest.mark.skipif(not is_jit_enabled(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_one_compiled_signature_per_kernel(name: str) -> None:
    dispatcher = KERNELS[name]
    assert isinstance(dispatcher, Dispatcher)
    dispatcher(*_canonical_args(name))
    assert len(dispatcher.signatures) == 1, dispatcher.signatures
