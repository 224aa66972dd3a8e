"""The online TTFT/TPOT quantile model (inference_sched.slo.predictor, docs/slo.md)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from inference_sched.slo import NUM_FEATURES, LatencyPredictor, OnlineQuantileModel, feature_matrix


def _stream(
    n: int, seed: int, noise: float = 0.25
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Feature rows and TTFTs (ms) from a known function times log-normal noise."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(100, 4000, n).astype(np.float64)
    prefix = rng.random(n)
    waiting = rng.integers(0, 10, n).astype(np.float64)
    running = rng.integers(0, 32, n).astype(np.float64)
    kv = rng.random(n)
    inflight = rng.integers(0, 8000, n).astype(np.float64)
    x = np.vstack(
        [
            feature_matrix(
                prompt[i],
                prefix[i : i + 1],
                waiting[i : i + 1],
                running[i : i + 1],
                kv[i : i + 1],
                inflight[i : i + 1],
                np.zeros(1),
            )
            for i in range(n)
        ]
    )
    uncached_k = (1.0 - prefix) * prompt / 1000.0
    centre = 20 + 40 * uncached_k + 8 * uncached_k**2 + 60 * waiting + 1.5 * running
    centre += 10 * inflight / 1000.0
    return x, centre * rng.lognormal(0.0, noise, n)


def test_feature_matrix_columns() -> None:
    x = feature_matrix(
        2000.0,
        np.array([0.25, 1.0]),
        np.array([3.0, 0.0]),
        np.array([4.0, 1.0]),
        np.array([0.5, 0.1]),
        np.array([1500.0, 0.0]),
        np.array([0.0, 1.0]),
    )
    assert x.shape == (2, NUM_FEATURES)
    np.testing.assert_allclose(x[0], [1, 1.5, 2.25, 3, 4, 0.5, 1.5, 0, 6.0])
    np.testing.assert_allclose(x[1], [1, 0, 0, 0, 1, 0.1, 0, 1, 0])


def test_feature_matrix_of_no_candidates() -> None:
    empty = np.empty(0)
    assert feature_matrix(10.0, empty, empty, empty, empty, empty, empty).shape == (0, 9)


@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.95])
def test_converges_to_the_quantile_on_a_known_function(quantile: float) -> None:
    model = OnlineQuantileModel(quantile=quantile, window=2000, min_samples=32)
    x, y = _stream(3000, seed=3)
    for row, target in zip(x, y, strict=True):
        model.add(row, float(target))
    x_test, y_test = _stream(4000, seed=4)
    coverage = float(np.mean(y_test <= model.predict(x_test)))
    assert coverage == pytest.approx(quantile, abs=0.03)


def test_learns_the_centre() -> None:
    model = OnlineQuantileModel(quantile=0.5, window=4000, min_samples=8)
    x, y = _stream(2000, seed=3, noise=0.01)
    for row, target in zip(x, y, strict=True):
        model.add(row, float(target))
    # Coefficients of the generating function: intercept 20, u 40, u^2 8, waiting 60, ...
    np.testing.assert_allclose(
        model.weights[[0, 1, 2, 3, 4, 6]], [20, 40, 8, 60, 1.5, 10], rtol=0.1
    )


def test_deterministic() -> None:
    x, y = _stream(500, seed=4)
    first, second = LatencyPredictor(), LatencyPredictor()
    for model in (first, second):
        for row, target in zip(x, y, strict=True):
            model.observe_ttft(row, float(target))
    np.testing.assert_array_equal(first.ttft.weights, second.ttft.weights)
    assert first.ttft.multiplier == second.ttft.multiplier


def test_warm_up() -> None:
    predictor = LatencyPredictor(min_samples=3)
    x, y = _stream(3, seed=5)
    readiness = []
    for i in range(3):
        readiness.append(predictor.has_prediction)
        predictor.observe_ttft(x[i], float(y[i]))
    readiness.append(predictor.has_prediction)
    assert readiness == [False, False, False, True]
    assert not predictor.has_tpot
    assert predictor.ttft.num_samples == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_bad_targets_are_ignored(bad: float) -> None:
    model = OnlineQuantileModel()
    model.add(np.ones(NUM_FEATURES), bad)
    assert model.num_samples == 0


def test_predictions_are_positive_and_vectorised() -> None:
    model = OnlineQuantileModel(min_samples=1)
    x, y = _stream(200, seed=6)
    for row, target in zip(x, y, strict=True):
        model.add(row, float(target))
    far = x[:5].copy()
    far[:, 3] = -1000.0  # extrapolates below zero: clipped at the floor
    predictions = model.predict(far)
    assert predictions.shape == (5,)
    assert (predictions > 0).all()
    assert [model.predict_one(row) for row in x[:5]] == pytest.approx(model.predict(x[:5]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"quantile": 1.0}, "quantile"), ({"window": 1}, "window"), ({"min_samples": 0}, "window")],
)
def test_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnlineQuantileModel(**kwargs)  # type: ignore[arg-type]
