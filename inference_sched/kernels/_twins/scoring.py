"""NumPy twins of :mod:`inference_sched.kernels.scoring`, and their contracts.

Each function has the name, parameters and ``out`` contract of the scoring kernel it
mirrors; ``tests/property/test_kernels.py`` holds the two equal (float32 scores to a few
ulp). The conventions shared by every kernel are in :mod:`inference_sched.kernels._twins`.
"""

import math

import numpy as np
import numpy.typing as npt

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


def min_max_inverted(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """Min-max normalise the gathered values, inverted (GIE queue-scorer).

    With ``v = values[candidates]`` and ``lo``/``hi`` the min/max of its finite entries,
    ``out[i] = (hi - v[i]) / (hi - lo)``, so the lowest value scores 1 and the highest 0.
    If all finite values are equal (including a single candidate) they all score 1.
    NaN and +-inf score NaN and do not take part in ``lo``/``hi``.

    Args:
        values: float64 metric column (e.g. waiting queue size), indexed by row.
        candidates: int32 rows to score.
        out: float32, ``out[:n]`` receives the scores.
    """
    n = candidates.shape[0]
    if n == 0:
        return
    v = values[candidates]
    finite = np.isfinite(v)
    lo = float(v.min(where=finite, initial=math.inf))
    hi = float(v.max(where=finite, initial=-math.inf))
    if hi == lo or not math.isfinite(hi):  # one distinct finite value, or none at all
        out[:n] = np.where(finite, 1.0, math.nan)
        return
    # Same overflow guard and operation order as the kernel (see scoring.py).
    scale = 1.0 if math.isfinite(hi - lo) else 0.5
    hi_s = hi * scale
    span = hi_s - lo * scale
    scores = (hi_s - np.where(finite, v, hi) * scale) / span
    out[:n] = np.where(finite, scores, math.nan)


def one_minus(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``1 - v`` (GIE kv-cache-utilization-scorer).

    Not clamped (the profile clamps when it combines scores); NaN stays NaN, values whose
    result does not fit float32 become +-inf.

    Args:
        values: float64 metric column (e.g. KV-cache usage fraction), indexed by row.
        candidates: int32 rows to score.
        out: float32, ``out[:n]`` receives the scores.
    """
    n = candidates.shape[0]
    with np.errstate(over="ignore"):  # float64 -> float32 may overflow to inf, as in Numba
        out[:n] = 1.0 - values[candidates]


def divided(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    divisor: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``v / divisor`` (GIE prefix-cache-scorer: matched blocks / total blocks).

    Not clamped; NaN stays NaN, values whose result does not fit float32 become +-inf.

    Args:
        values: float64 column indexed by row (e.g. matched blocks per endpoint).
        candidates: int32 rows to score.
        divisor: float, not 0.
        out: float32, ``out[:n]`` receives the scores.

    Raises:
        ZeroDivisionError: ``divisor == 0`` (Numba's Python error model does the same).
    """
    if divisor == 0:
        raise ZeroDivisionError("division by zero")
    n = candidates.shape[0]
    with np.errstate(over="ignore"):  # float64 -> float32 may overflow to inf, as in Numba
        out[:n] = values[candidates] / divisor


def threshold_load(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    threshold: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``1 - min(v, T) / T``, and 1 for ``v <= 0`` (GIE token-load-scorer).

    Args:
        values: float64 metric column (e.g. tokens in flight), indexed by row.
        candidates: int32 rows to score.
        threshold: ``T``, the load at which the score reaches 0; must be > 0.
        out: float32, ``out[:n]`` receives the scores in [0, 1]; NaN input gives NaN.
    """
    n = candidates.shape[0]
    v = values[candidates]
    # Clipped below at 0 first: the branch np.where drops is still computed, and a huge
    # negative value would overflow there (the result is unaffected; the warning is not).
    out[:n] = np.where(v <= 0.0, 1.0, 1.0 - np.clip(v, 0.0, threshold) / threshold)


def load_aware(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    threshold: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score ``0.5 * (1 - min(v, T) / T)``, and 0.5 for ``v <= 0`` (llm-d load-aware-scorer).

    Args:
        values: float64 metric column (e.g. waiting queue size), indexed by row.
        candidates: int32 rows to score.
        threshold: ``T``, the load at which the score reaches 0; must be > 0.
        out: float32, ``out[:n]`` receives the scores in [0, 0.5]; NaN input gives NaN.
    """
    n = candidates.shape[0]
    v = values[candidates]
    out[:n] = np.where(v <= 0.0, 0.5, 0.5 * (1.0 - np.clip(v, 0.0, threshold) / threshold))


def active_request(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    idle_threshold: float,
    max_busy_score: float,
    out: npt.NDArray[np.float32],
) -> None:
    """Score idle endpoints 1, busy ones by headroom (llm-d active-request-scorer).

    With ``c = values[candidates]`` and ``max_c`` the largest finite ``c``:
    ``c <= idle_threshold`` scores 1.0, otherwise ``(max_c - c) / max_c * max_busy_score``.
    NaN and +-inf score NaN and do not take part in ``max_c``.

    Args:
        values: float64 metric column (active request count), indexed by row.
        candidates: int32 rows to score.
        idle_threshold: counts at or below this are idle; must be >= 0 (so a busy
            count implies ``max_c > 0``).
        max_busy_score: the score a busy endpoint approaches as its count falls to 0;
            it scales down linearly to 0 for the busiest candidate.
        out: float32, ``out[:n]`` receives the scores.
    """
    n = candidates.shape[0]
    c = values[candidates]
    finite = np.isfinite(c)
    max_count = float(c.max(where=finite, initial=-math.inf))
    is_busy = finite & (c > idle_threshold)
    # A busy entry implies max_count >= c > idle >= 0, so top == max_count wherever the
    # quotient is kept; the other lanes compute (top - top) / top, free of warnings.
    top = max_count if max_count > 0.0 else 1.0
    busy = np.where(is_busy, c, top)
    scores = np.where(is_busy, (top - busy) / top * max_busy_score, 1.0)
    out[:n] = np.where(finite, scores, math.nan)


def _has_adapter(
    bits: npt.NDArray[np.uint8], rows: npt.NDArray[np.int32], adapter_id: int
) -> npt.NDArray[np.bool_]:
    """Whether each row's bitset holds ``adapter_id`` (False when it is out of range)."""
    if not 0 <= adapter_id < 8 * bits.shape[1]:
        return np.zeros(rows.shape[0], dtype=np.bool_)
    has: npt.NDArray[np.bool_] = (bits[rows, adapter_id >> 3] & (1 << (adapter_id & 7))) != 0
    return has


def lora_affinity(
    active_bits: npt.NDArray[np.uint8],
    waiting_bits: npt.NDArray[np.uint8],
    num_adapters: npt.NDArray[np.float64],
    max_loras: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    adapter_id: int,
    out: npt.NDArray[np.float32],
) -> None:
    """Score LoRA adapter affinity (GIE lora-affinity-scorer).

    Per candidate, the first rule that holds: 1.0 if the adapter is active; 0.8 if
    ``num_adapters < max_loras`` (a free slot to load it); 0.6 if it is waiting; else 0.0.

    Args:
        active_bits: uint8 (rows, bytes) bitsets of active adapters; adapter ``k`` is bit
            ``k % 8`` (little-endian) of byte ``k // 8``.
        waiting_bits: uint8 (rows, bytes) bitsets of waiting adapters, same layout (the
            byte count may differ from ``active_bits``).
        num_adapters: float64 column, ``|active| + |waiting|`` per row.
        max_loras: float64 column, adapter slots per row (NaN never has a free slot).
        candidates: int32 rows to score.
        adapter_id: the request's adapter; negative (unknown everywhere) or beyond a
            bitset's width means "in no set" for that bitset.
        out: float32, ``out[:n]`` receives the scores.
    """
    n = candidates.shape[0]
    is_active = _has_adapter(active_bits, candidates, adapter_id)
    has_slot = num_adapters[candidates] < max_loras[candidates]
    is_waiting = _has_adapter(waiting_bits, candidates, adapter_id)
    out[:n] = np.where(is_active, 1.0, np.where(has_slot, 0.8, np.where(is_waiting, 0.6, 0.0)))


def weighted_sum(
    score_matrix: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
    nonfinite_counts: npt.NDArray[np.int64],
    clamped_counts: npt.NDArray[np.int64],
) -> None:
    """Combine scorers: ``out[j] = sum_i weights[i] * clamp(score_matrix[i, j], 0, 1)``.

    NaN and +-inf entries count as 0; the sum is accumulated in float64 and stored as
    float32. With no scorers every ``out[j]`` is 0.

    Args:
        score_matrix: float32 (num_scorers, n), one row per scorer.
        weights: float64 (num_scorers,) scorer weights (finite).
        out: float32, ``out[:n]`` receives the combined scores.
        nonfinite_counts: int64 (num_scorers,); ``+=`` the number of NaN/inf entries of
            each scorer (never reset, so the caller can accumulate over cycles).
        clamped_counts: int64 (num_scorers,); ``+=`` the number of finite entries outside
            [0, 1] of each scorer.
    """
    n = score_matrix.shape[1]
    finite = np.isfinite(score_matrix)
    clean = np.where(finite, score_matrix, 0.0)
    nonfinite_counts += n - np.count_nonzero(finite, axis=1)
    clamped_counts += np.count_nonzero((clean < 0.0) | (clean > 1.0), axis=1)
    np.clip(clean, 0.0, 1.0, out=clean)
    out[:n] = weights @ clean


def weighted_sum_batch(
    score_tensor: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
    nonfinite_counts: npt.NDArray[np.int64],
    clamped_counts: npt.NDArray[np.int64],
) -> None:
    """Apply :func:`weighted_sum` to a batch of requests.

    Args:
        score_tensor: float32 (num_scorers, num_requests, n).
        weights: float64 (num_scorers,).
        out: float32 (>= num_requests, >= n); ``out[:num_requests, :n]`` receives the
            combined scores, one row per request.
        nonfinite_counts: int64 (num_scorers,), ``+=`` over all requests.
        clamped_counts: int64 (num_scorers,), ``+=`` over all requests.
    """
    _, num_requests, n = score_tensor.shape
    finite = np.isfinite(score_tensor)
    clean = np.where(finite, score_tensor, 0.0)
    nonfinite_counts += num_requests * n - np.count_nonzero(finite, axis=(1, 2))
    clamped_counts += np.count_nonzero((clean < 0.0) | (clean > 1.0), axis=(1, 2))
    np.clip(clean, 0.0, 1.0, out=clean)
    out[:num_requests, :n] = np.tensordot(weights, clean, axes=1)
