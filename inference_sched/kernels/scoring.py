"""Numba scoring kernels: one call scores a whole candidate set.

Each kernel gathers ``values[candidates[i]]`` from an endpoint-table column (float64,
longer than the candidate set) and writes the score of candidate ``i`` to ``out[i]``
(float32, caller-owned, ``len(out) >= len(candidates)``; entries past ``n`` are left
alone). Scores are not clamped here: a NaN score marks bad input so the profile can count
it, and :func:`weighted_sum` clamps and counts when it combines scorers.

The contracts (formulas, NaN and inf handling, dtypes) are documented on the NumPy twins
of the same names in :mod:`inference_sched.kernels._twins.scoring`; the property tests
hold the two implementations equal.
"""

import math

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import kernel

__all__ = [
    "min_max_inverted",
    "one_minus",
    "divided",
    "threshold_load",
    "load_aware",
    "active_request",
    "lora_affinity",
    "weighted_sum",
    "weighted_sum_batch",
]


@kernel
def min_max_inverted(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """Min-max normalise the gathered values, inverted (lowest value scores 1)."""
    n = candidates.shape[0]
    # Gather once into a contiguous buffer: both passes then vectorise (2x at 4096).
    gathered = np.empty(n, dtype=np.float64)
    for i in range(n):
        gathered[i] = values[candidates[i]]
    lo = math.inf
    hi = -math.inf
    for i in range(n):
        # float() is free when compiled; without JIT it keeps the arithmetic in Python
        # floats, which overflow to inf without a RuntimeWarning.
        v = float(gathered[i])
        if abs(v) < math.inf:  # finite: NaN fails the comparison
            lo = min(lo, v)
            hi = max(hi, v)
    if lo > hi:  # no finite value at all
        for i in range(n):
            out[i] = math.nan
        return
    # Halve both ends when the range overflows float64 so that finite input never turns
    # into inf/inf = NaN. Multiplying by 1.0 is exact, so the usual case is unchanged.
    scale = 1.0 if math.isfinite(hi - lo) else 0.5
    hi_s = hi * scale
    span = hi_s - lo * scale
    if hi == lo:
        for i in range(n):
            out[i] = 1.0 if abs(gathered[i]) < math.inf else math.nan
        return
    for i in range(n):
        v = float(gathered[i])
        score = (hi_s - v * scale) / span
        out[i] = score if abs(v) < math.inf else math.nan


@kernel
def one_minus(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``1 - v`` per candidate (unclamped; NaN stays NaN)."""
    for i in range(candidates.shape[0]):
        out[i] = 1.0 - values[candidates[i]]


@kernel
def divided(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    divisor: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``v / divisor`` per candidate (unclamped; ``divisor`` must not be 0)."""
    for i in range(candidates.shape[0]):
        # float(): free when compiled; without JIT, Python floats overflow to inf quietly.
        out[i] = float(values[candidates[i]]) / divisor


@kernel
def threshold_load(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    threshold: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``1 - min(v, T) / T``, 1 for ``v <= 0``, NaN for NaN."""
    for i in range(candidates.shape[0]):
        v = values[candidates[i]]
        if math.isnan(v):
            out[i] = math.nan
        elif v <= 0.0:
            out[i] = 1.0
        else:
            out[i] = 1.0 - min(v, threshold) / threshold


@kernel
def load_aware(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    threshold: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``0.5 * (1 - min(v, T) / T)``, 0.5 for ``v <= 0``, NaN for NaN."""
    for i in range(candidates.shape[0]):
        v = values[candidates[i]]
        if math.isnan(v):
            out[i] = math.nan
        elif v <= 0.0:
            out[i] = 0.5
        else:
            out[i] = 0.5 * (1.0 - min(v, threshold) / threshold)


@kernel
def active_request(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    idle_threshold: float,
    max_busy_score: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score 1 when idle, else ``(max - v) / max * max_busy_score``; non-finite gives NaN."""
    n = candidates.shape[0]
    max_count = -math.inf
    for i in range(n):
        v = values[candidates[i]]
        if math.isfinite(v):
            max_count = max(max_count, v)
    for i in range(n):
        v = values[candidates[i]]
        if not math.isfinite(v):
            out[i] = math.nan
        elif v <= idle_threshold:
            out[i] = 1.0
        else:
            out[i] = (max_count - v) / max_count * max_busy_score


@kernel
def lora_affinity(
    active_bits: npt.NDArray[np.uint8],
    waiting_bits: npt.NDArray[np.uint8],
    num_adapters: npt.NDArray[np.float64],
    max_loras: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    adapter_id: int,
    out: npt.NDArray[np.float32],
) -> None:
    """Score 1.0 active / 0.8 has a free slot / 0.6 waiting / 0.0 otherwise."""
    byte = adapter_id >> 3
    mask = 1 << (adapter_id & 7)
    in_active_range = 0 <= adapter_id < 8 * active_bits.shape[1]
    in_waiting_range = 0 <= adapter_id < 8 * waiting_bits.shape[1]
    for i in range(candidates.shape[0]):
        row = candidates[i]
        if in_active_range and active_bits[row, byte] & mask:
            out[i] = 1.0
        elif num_adapters[row] < max_loras[row]:
            out[i] = 0.8
        elif in_waiting_range and waiting_bits[row, byte] & mask:
            out[i] = 0.6
        else:
            out[i] = 0.0


@kernel
def weighted_sum(
    score_matrix: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
    nonfinite_counts: npt.NDArray[np.int64],
    clamped_counts: npt.NDArray[np.int64],
) -> None:
    """Combine per-scorer scores: clamp to [0, 1], zero non-finite, weight and sum."""
    _weighted_sum_into(score_matrix, weights, out, nonfinite_counts, clamped_counts)


@kernel
def weighted_sum_batch(
    score_tensor: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
    nonfinite_counts: npt.NDArray[np.int64],
    clamped_counts: npt.NDArray[np.int64],
) -> None:
    """Apply :func:`weighted_sum` to every request of a (scorers, requests, n) tensor."""
    for r in range(score_tensor.shape[1]):
        _weighted_sum_into(score_tensor[:, r, :], weights, out[r], nonfinite_counts, clamped_counts)


@kernel
def _weighted_sum_into(
    score_matrix: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
    nonfinite_counts: npt.NDArray[np.int64],
    clamped_counts: npt.NDArray[np.int64],
) -> None:
    """Shared body of the weighted sums; ``score_matrix`` may be a strided view."""
    num_scorers, n = score_matrix.shape
    acc = np.zeros(n, dtype=np.float64)
    for i in range(num_scorers):
        w = weights[i]
        row = score_matrix[i]
        num_bad = 0
        # Branch-free over the common case (a select, not a jump) so LLVM vectorises it;
        # a NaN fails both comparisons and lands in the rare second pass.
        for j in range(n):
            s = np.float64(row[j])
            ok = (s >= 0.0) & (s <= 1.0)
            acc[j] += w * s if ok else 0.0
            num_bad += 0 if ok else 1
        if num_bad:
            for j in range(n):
                s = np.float64(row[j])
                if not (s >= 0.0 and s <= 1.0):
                    if math.isfinite(s):
                        clamped_counts[i] += 1
                        if s > 1.0:
                            acc[j] += w
                    else:
                        nonfinite_counts[i] += 1
    for j in range(n):
        out[j] = acc[j]
