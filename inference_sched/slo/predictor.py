"""Online TTFT/TPOT quantile model: forgetting ridge regression plus a residual quantile.

Design note (why this model). GIE's sidecar retrains an XGBoost quantile regressor every
30 minutes on bucketed samples. In process we need a model that (a) learns from each
response as it ends, with no training pauses; (b) predicts for every candidate of every
request in one vectorised call, microseconds in total; (c) is deterministic and has no
learning rate to tune, because latencies span three orders of magnitude between
deployments. Pinball-loss SGD fails (c): its step must match the target's scale and its
convergence depends on feature scaling. Per-bucket sketches (5 queue x 20 KV x 4 prefix
buckets) need hundreds of samples before every bucket is populated.

So each target (TTFT, TPOT) is two pieces:

* **the centre**: a linear model on a small feature map (below), fitted by exact
  exponentially-forgetting least squares. The sufficient statistics ``A = sum x x^T`` and
  ``b = sum x y`` decay by ``1 - 1/window`` per sample (old load regimes fade), and
  ``w = (A + ridge * diag(A))^-1 b`` is re-solved (a 9x9 solve) after each warm-up
  sample, then every 8 samples. No
  learning rate; converges in tens of samples; deterministic.
* **the quantile**: latency noise is roughly multiplicative (a slow step slows every
  token), so the model keeps the ratios ``actual / centre`` of the last ``window`` samples,
  each measured against the fit *before* that sample was learned (honest, out-of-sample;
  none during the warm-up, whose fits are still poor),
  and predicts ``max(centre, floor) * quantile(ratios, q)``. On a stationary stream the
  fraction of actuals at or below the prediction converges to ``q`` (p90 by default)
  whatever the noise shape.

Prediction is ``X @ w`` followed by a clip and a multiply: vectorised over candidates,
tens of microseconds for 16 to 256 candidates in NumPy, mostly fixed call overhead:
under the 5 us per candidate target without a Numba kernel (``benchmarks/bench_slo.py``
measures it; a fused kernel is the follow-up if the fixed cost matters).

Feature map (``feature_matrix``), from GIE's features (``docs/slo.md``), token
counts in thousands so the ridge sees comparable scales:

====  =====================================================  =========================
col   feature                                                why
====  =====================================================  =========================
0     1                                                      intercept
1     ``u`` = uncached prompt ktokens = (1 - prefix) x prompt prefill work
2     ``u^2``                                                attention is quadratic
3     waiting requests                                       queueing delay
4     running requests                                       batch size (decode speed)
5     KV-cache usage fraction                                memory pressure
6     in-flight prefill ktokens (scheduler-tracked)          prefill queued ahead
7     is the endpoint a prefill-role endpoint (0/1)          P/D role
8     running x ``u``                                        chunked prefill shares steps
====  =====================================================  =========================

The prompt length itself enters TPOT through ``u`` only when uncached; that is a
deliberate simplification (TPOT depends weakly on the prompt at these batch sizes).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["NUM_FEATURES", "LatencyPredictor", "OnlineQuantileModel", "feature_matrix"]

NUM_FEATURES: Final = 9
"""Columns of :func:`feature_matrix`."""

_KTOKENS: Final = 1e-3
_RIDGE: Final = 1e-4
"""Ridge strength relative to each feature's own energy (Jacobi-scaled)."""
_RIDGE_FLOOR: Final = 1e-9
_REFIT_EVERY: Final = 8
"""Past the warm-up, the solve and the quantile run every this many samples (each costs
tens of microseconds; the statistics themselves are updated on every sample)."""
_FLOOR_FRACTION: Final = 0.01
"""The centre is clipped at this fraction of the targets' running mean (never <= 0)."""


def feature_matrix(
    prompt_tokens: float,
    prefix_frac: npt.NDArray[np.float64],
    waiting: npt.NDArray[np.float64],
    running: npt.NDArray[np.float64],
    kv_usage_frac: npt.NDArray[np.float64],
    inflight_prefill_tokens: npt.NDArray[np.float64],
    is_prefill: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """The ``(n, NUM_FEATURES)`` feature rows of ``n`` candidates (module docstring).

    Args:
        prompt_tokens: the request's prompt length, tokens.
        prefix_frac: per candidate, the fraction of the prompt cached there (0..1).
        waiting / running / kv_usage_frac: per candidate, scraped metrics.
        inflight_prefill_tokens: per candidate, uncached prompt tokens the scheduler
            routed there whose first token has not come back.
        is_prefill: per candidate, 1.0 for a prefill-role endpoint, else 0.0.
    """
    n = len(prefix_frac)
    x = np.empty((n, NUM_FEATURES), dtype=np.float64)
    uncached = x[:, 1]
    np.subtract(1.0, prefix_frac, out=uncached)
    uncached *= prompt_tokens * _KTOKENS
    np.maximum(uncached, 0.0, out=uncached)
    x[:, 0] = 1.0
    np.multiply(uncached, uncached, out=x[:, 2])
    x[:, 3] = waiting
    x[:, 4] = running
    x[:, 5] = kv_usage_frac
    np.multiply(inflight_prefill_tokens, _KTOKENS, out=x[:, 6])
    x[:, 7] = is_prefill
    np.multiply(running, uncached, out=x[:, 8])
    return x


class OnlineQuantileModel:
    """One target's online model: forgetting ridge centre times a residual-ratio quantile.

    Args:
        quantile: the quantile predicted, in (0, 1).
        window: samples of memory: the statistics decay by ``1 - 1/window`` per sample
            and the last ``window`` residual ratios set the quantile.
        min_samples: samples before :attr:`is_ready` (the warm-up).
        num_features: width of the feature rows.
    """

    def __init__(
        self,
        quantile: float = 0.9,
        window: int = 2000,
        min_samples: int = 32,
        num_features: int = NUM_FEATURES,
    ) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if window < 2 or min_samples < 1:
            raise ValueError("window must be >= 2 and min_samples >= 1")
        self.quantile = quantile
        self.window = window
        self.min_samples = min_samples
        self._decay = 1.0 - 1.0 / window
        self._a = np.zeros((num_features, num_features), dtype=np.float64)
        self._b = np.zeros(num_features, dtype=np.float64)
        self.weights = np.zeros(num_features, dtype=np.float64)
        """The centre's coefficients (read-only use)."""
        self._ratios = np.empty(window, dtype=np.float64)
        self._num_ratios = 0
        self._next_ratio = 0
        self.multiplier = 1.0
        """The residual-ratio quantile the centre is multiplied by."""
        self.floor = 0.0
        """Lowest centre used (a fraction of the targets' running mean)."""
        self._mean_y = 0.0
        self.num_samples = 0
        """Samples learned."""

    @property
    def is_ready(self) -> bool:
        """Past the warm-up: at least ``min_samples`` samples learned."""
        return self.num_samples >= self.min_samples

    def add(self, x: npt.NDArray[np.float64], y: float) -> None:
        """Learn one sample: feature row ``x`` and the observed latency ``y`` (> 0).

        Non-finite or negative targets are ignored.
        """
        if not (y >= 0.0 and np.isfinite(y)) or not np.all(np.isfinite(x)):
            return
        if self.num_samples >= self.min_samples:  # against the fit that did not see y
            centre = max(float(x @ self.weights), self.floor)
            self._push_ratio(y / centre if centre > 0.0 else 1.0)
        decay = self._decay
        self._a *= decay
        self._a += np.outer(x, x)
        self._b *= decay
        self._b += x * y
        self.num_samples += 1
        weight = 1.0 / min(self.num_samples, self.window)
        self._mean_y += (y - self._mean_y) * weight
        self.floor = max(self._mean_y * _FLOOR_FRACTION, 1e-9)
        if self.num_samples <= self.min_samples or self.num_samples % _REFIT_EVERY == 0:
            self._refit()

    def _refit(self) -> None:
        """Re-solve the centre and recompute the ratio quantile."""
        diag = np.diag(self._a)
        regulariser = np.diag(diag * _RIDGE + _RIDGE_FLOOR)
        self.weights = np.asarray(np.linalg.solve(self._a + regulariser, self._b), dtype=np.float64)
        if self._num_ratios:
            ratios = self._ratios[: self._num_ratios]
            self.multiplier = float(np.quantile(ratios, self.quantile))

    def _push_ratio(self, ratio: float) -> None:
        self._ratios[self._next_ratio] = ratio
        self._next_ratio = (self._next_ratio + 1) % self.window
        self._num_ratios = min(self._num_ratios + 1, self.window)

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The quantile prediction for each feature row of ``x`` (``(n, d)`` -> ``(n,)``)."""
        centre = x @ self.weights
        np.maximum(centre, self.floor, out=centre)
        centre *= self.multiplier
        return centre

    def predict_one(self, x: npt.NDArray[np.float64]) -> float:
        """:meth:`predict` for one row (the per-candidate baseline of the benchmark)."""
        return max(float(x @ self.weights), self.floor) * self.multiplier


class LatencyPredictor:
    """TTFT and TPOT models side by side (milliseconds), sharing the feature map.

    Args:
        quantile: the quantile both models predict (GIE's sidecar: 0.9).
        window: samples of memory of each model.
        min_samples: warm-up: :attr:`has_prediction` turns True once the TTFT model has
            this many samples (TPOT, which needs responses with two tokens or more,
            falls back to its own readiness: :attr:`has_tpot`).
    """

    def __init__(self, quantile: float = 0.9, window: int = 2000, min_samples: int = 32) -> None:
        self.ttft = OnlineQuantileModel(quantile, window, min_samples)
        self.tpot = OnlineQuantileModel(quantile, window, min_samples)

    @property
    def has_prediction(self) -> bool:
        """The TTFT model is past its warm-up."""
        return self.ttft.is_ready

    @property
    def has_tpot(self) -> bool:
        """The TPOT model is past its warm-up."""
        return self.tpot.is_ready

    def predict(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(TTFT ms, TPOT ms) per feature row."""
        return self.ttft.predict(x), self.tpot.predict(x)

    def observe_ttft(self, x: npt.NDArray[np.float64], ttft_ms: float) -> None:
        """Learn a TTFT sample (ms) for the features the request was routed with."""
        self.ttft.add(x, ttft_ms)

    def observe_tpot(self, x: npt.NDArray[np.float64], tpot_ms: float) -> None:
        """Learn a TPOT sample (ms per output token after the first)."""
        self.tpot.add(x, tpot_ms)
