"""The cost-model kernels (``inference_sched.kernels.cost``) equal their NumPy twins.

Inputs include NaN, +-inf, negative and oversized matches, ties, empty candidate sets
and zero uniforms. ``out`` arrays are longer than needed and pre-filled with a sentinel,
so writing past ``n`` shows up. Everything here also runs under ``NUMBA_DISABLE_JIT=1``.
"""

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.dispatcher import Dispatcher

from inference_sched.kernels import cost, is_jit_enabled
from inference_sched.kernels._twins import cost as cost_twins
from tests.strategies import (
    MAX_ROWS,
    candidate_sets,
    columns,
    score_vectors,
    tie_key_vectors,
)

pytestmark = pytest.mark.property

NAN = math.nan
INF = math.inf
SENTINEL = -7.0
IMPLS = (cost, cost_twins)
IMPL_IDS = ("kernel", "twin")


@st.composite
def _cost_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    num_rows = draw(st.integers(0, MAX_ROWS))
    match_blocks = draw(columns(num_rows, st.one_of(st.integers(0, 12).map(float), st.just(NAN))))
    inflight_tokens = draw(columns(num_rows))
    candidates = draw(candidate_sets(num_rows))
    total_blocks = float(draw(st.integers(0, 10)))
    block_size = draw(st.sampled_from((1.0, 16.0, 64.0)))
    credit = draw(st.one_of(st.sampled_from((0.0, 0.5, 1.0, 2.0)), st.floats(0.0, 1e6)))
    return match_blocks, inflight_tokens, candidates, total_blocks, block_size, credit


def _run_cost(impl: Any, inputs: tuple[Any, ...]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    args = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in inputs]
    n = len(args[2])
    logits = np.full(n + 2, SENTINEL, dtype=np.float64)
    out = np.full(n + 2, SENTINEL, dtype=np.float32)
    assert impl.kv_cost_scores(*args, logits, out) is None
    return logits, out


@settings(deadline=None)
@given(_cost_inputs())
def test_kv_cost_scores_matches_reference(inputs: tuple[Any, ...]) -> None:
    (logits_k, out_k), (logits_r, out_r) = (_run_cost(impl, inputs) for impl in IMPLS)
    np.testing.assert_array_equal(np.isnan(logits_k), np.isnan(logits_r))
    np.testing.assert_allclose(logits_k, logits_r, rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(out_k), np.isnan(out_r))
    np.testing.assert_allclose(out_k, out_r, rtol=1e-6, atol=1e-7)
    n = len(inputs[2])
    assert (logits_k[n:] == SENTINEL).all()
    assert (out_k[n:] == SENTINEL).all()
    finite = out_k[:n][~np.isnan(out_k[:n])]
    assert ((finite >= 0.0) & (finite <= 1.0)).all()


@st.composite
def _softmax_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    n = draw(st.integers(0, MAX_ROWS))
    scores = draw(score_vectors(n))
    uniforms = draw(tie_key_vectors(n))
    temperature = draw(st.one_of(st.sampled_from((0.1, 0.5, 1.0, 10.0)), st.floats(1e-3, 1e3)))
    return scores, temperature, uniforms


@settings(deadline=None)
@given(_softmax_inputs())
def test_softmax_sample_keys_matches_reference(inputs: tuple[Any, ...]) -> None:
    scores, temperature, uniforms = inputs
    n = len(scores)
    results = []
    for impl in IMPLS:
        out = np.full(n + 2, SENTINEL, dtype=np.float64)
        count = impl.softmax_sample_keys(scores.copy(), temperature, uniforms.copy(), out)
        results.append((count, out))
    (count_k, keys_k), (count_r, keys_r) = results
    assert count_k == count_r == int(np.isfinite(scores).sum())
    np.testing.assert_array_equal(np.isinf(keys_k), np.isinf(keys_r))
    np.testing.assert_allclose(keys_k, keys_r, rtol=1e-12, atol=1e-12)
    assert (keys_k[n:] == SENTINEL).all()
    assert np.isfinite(keys_k[:n]).sum() == count_k  # -inf exactly for non-finite scores


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_kv_cost_scores_values(impl: Any) -> None:
    # Dynamo's documented example plus a cold endpoint, a duplicate and an oversized match.
    match = np.array([2.0, 5.0, 8.0, 0.0, 99.0])
    inflight = np.array([160.0, 80.0, 144.0, 0.0, 16.0])
    candidates = np.array([0, 1, 2, 3, 4, 1], dtype=np.int32)
    logits, out = _run_cost(impl, (match, inflight, candidates, 10.0, 16.0, 1.0))
    np.testing.assert_array_equal(logits[:6], [18.0, 10.0, 11.0, 10.0, 1.0, 10.0])
    np.testing.assert_allclose(out[:6], np.array([0, 8, 7, 8, 17, 8], np.float32) / 17)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_softmax_sample_keys_values(impl: Any) -> None:
    scores = np.array([0.0, 1.0, NAN, 0.5, 0.5], dtype=np.float32)
    uniforms = np.array([math.exp(-1.0), math.exp(-1.0), 0.3, math.exp(-1.0), 0.0])
    out = np.empty(5, dtype=np.float64)
    assert impl.softmax_sample_keys(scores, 2.0, uniforms, out) == 4
    # Gumbel of exp(-1) is 0; z = score - 1; key = z / 2 + gumbel; u = 0 -> -log(-log(1e-300)).
    gumbel_zero = -math.log(-math.log(1e-300))
    np.testing.assert_allclose(out, [-0.5, 0.0, -INF, -0.25, -0.25 + gumbel_zero], rtol=1e-12)
    same = np.full(3, 0.7, dtype=np.float32)
    keys = np.empty(3, dtype=np.float64)
    impl.softmax_sample_keys(same, 0.1, np.full(3, math.exp(-1.0)), keys)
    np.testing.assert_allclose(keys, [0.0, 0.0, 0.0], atol=1e-15)  # all equal: uniform


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_empty_candidates(impl: Any) -> None:
    empty = np.empty(0, dtype=np.int32)
    logits, out = _run_cost(impl, (np.zeros(2), np.zeros(2), empty, 3.0, 16.0, 1.0))
    assert (logits == SENTINEL).all()
    assert (out == SENTINEL).all()
    keys = np.full(1, SENTINEL)
    no_scores = np.empty(0, dtype=np.float32)
    assert impl.softmax_sample_keys(no_scores, 1.0, np.empty(0), keys) == 0
    assert keys[0] == SENTINEL


def _canonical_args(name: str) -> tuple[Any, ...]:
    f8 = np.zeros(2, dtype=np.float64)
    table: dict[str, tuple[Any, ...]] = {
        "kv_cost_scores": (
            f8,
            f8,
            np.zeros(1, np.int32),
            1.0,
            16.0,
            1.0,
            np.zeros(1),
            np.zeros(1, np.float32),
        ),
        "softmax_sample_keys": (np.zeros(2, np.float32), 1.0, f8, np.zeros(2)),
    }
    return table[name]


# Runs after the tests above: a call with a stray dtype or scalar type would have
# compiled a second signature.
@pytest.mark.skipif(not is_jit_enabled(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
@pytest.mark.parametrize("name", sorted(cost.__all__))
def test_one_compiled_signature_per_kernel(name: str) -> None:
    dispatcher = getattr(cost, name)
    assert isinstance(dispatcher, Dispatcher)
    dispatcher(*_canonical_args(name))
    assert len(dispatcher.signatures) == 1, dispatcher.signatures
