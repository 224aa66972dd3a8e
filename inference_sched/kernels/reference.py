"""NumPy twins of every kernel: the contracts, and the in-process benchmark baseline.

Each function here has the same name, arguments and ``out`` contract as the Numba kernel
in :mod:`~inference_sched.kernels.scoring`, :mod:`~inference_sched.kernels.picking` or
:mod:`~inference_sched.kernels.filtering`, and the property tests hold the two equal
(index outputs exactly, float32 outputs to a few ulp). They are written as idiomatic,
vectorised NumPy, because the benchmarks report the kernels' speed-up over them.

Conventions shared by all kernels:

* ``candidates`` is an int32 array of endpoint-table *rows*; columns (``values``,
  bitsets, masks, codes) are indexed by row and are usually longer than ``candidates``.
  ``n`` below is ``len(candidates)`` (or the length of the score vector), and may be 0.
* Dtypes are pinned exactly: metric columns float64, scores and score ``out`` arrays
  float32, tie keys and uniforms float64 in [0, 1), ranks and rows int32, counters int64,
  weights float64, scalars Python ``float``/``int``. Callers convert once, so each Numba
  kernel compiles one signature.
* Results go to the first ``n`` entries of a caller-owned ``out`` (``len(out) >= n``, the
  rest is left alone) or come back as a returned count. Nothing raises for expected
  input such as NaN, inf or an empty candidate set.
* A scorer writes NaN for a candidate whose input is NaN (and for some kernels, inf) so the
  profile can count bad metrics; :func:`weighted_sum` then zeroes and counts them.

The precise prefix index's kernels are private (the wrapper class is their public
surface), so their twins at the end of this file carry the same private names; the
property tests in ``tests/property/test_precise_index_properties.py`` hold them equal.
"""

import math

import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.kernels.precise_index import _MATCH_LANES, _NUM_TIERS, _TIER_BITS
from inference_sched.kernels.prefix_index import _EMPTY, _HASH_NEXT, _ROW

__all__ = [
    # scoring
    "min_max_inverted",
    "one_minus",
    "divided",
    "threshold_load",
    "load_aware",
    "active_request",
    "lora_affinity",
    "weighted_sum",
    "weighted_sum_batch",
    # picking
    "tie_keys_from_salt",
    "top_k_ranked",
    "top_k_ranked_salted",
    "top_k_ranked_shared",
    "top_k_ranked_shared_salted",
    "top_k_ranked_batch",
    "ares_keys",
    # filtering
    "is_subsequence",
    "filter_by_mask",
    "filter_by_code",
    "filter_below",
    # hashing
    "xxh64",
    "chained_block_hashes",
    "chained_token_block_hashes",
    # cost
    "kv_cost_scores",
    "softmax_sample_keys",
    # assignment
    "assign_greedy",
]

# --------------------------------------------------------------------------- scoring


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


# --------------------------------------------------------------------------- picking


def _rank_key(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Ascending sort key for scores: negated, with NaN ranked as -inf (key +inf)."""
    return -np.where(np.isnan(scores), -np.inf, scores)


def top_k_ranked(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    out: npt.NDArray[np.int32],
) -> int:
    """Rank candidate positions best first and keep the top k (GIE max-score-picker).

    The order is total: score descending (NaN ranks as -inf, level with a real -inf),
    then tie key descending, then lower position first.

    Args:
        scores: float32 (n,) combined scores, one per candidate position.
        tie_keys: float64 (n,) finite tie breakers, uniforms from the caller's seeded
            generator.
        k: how many positions to keep; <= 0 keeps none, >= n keeps all.
        out: int32, ``out[:count]`` receives positions 0..n-1, best first.

    Returns:
        ``count = min(max(k, 0), n)``.
    """
    n: int = scores.shape[0]
    m = max(0, min(k, n))
    if m == 0:
        return 0
    key = _rank_key(scores)
    tie_key = -tie_keys[:n]
    if m < n:
        # Partition to the positions that can make the top m (everything tied with the
        # m-th score included), then order only those. lexsort is stable and ``idx`` is
        # ascending, which gives the lower-position rule.
        kth = np.partition(key, m - 1)[m - 1]
        idx = np.flatnonzero(key <= kth)
        order = idx[np.lexsort((tie_key[idx], key[idx]))]
    else:
        order = np.lexsort((tie_key, key))
    out[:m] = order[:m]
    return m


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def tie_keys_from_salt(salt: int, out: npt.NDArray[np.float64]) -> None:
    """Fill ``out`` with the splitmix64 sequence seeded by ``salt``, as uniforms in [0, 1).

    Element i is ``splitmix64(salt + (i + 1) * 0x9E3779B97F4A7C15) >> 11`` times 2**-53.
    Pickers use it to break ties from one seeded draw per decision instead of drawing
    ``n`` uniforms from the generator (which costs more than the ranking itself).

    Args:
        salt: seed in [0, 2**63) drawn from the caller's seeded generator (a Python int:
            callers pass ``random_raw() >> 1``, which Numba types as int64, cheaply).
        out: float64 (n,), filled.
    """
    steps = np.arange(1, out.shape[0] + 1, dtype=np.uint64)
    z = np.uint64(salt) + steps * _GOLDEN  # uint64 arrays wrap silently, as in the kernel
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    out[:] = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def top_k_ranked_salted(
    scores: npt.NDArray[np.float32],
    salt: int,
    k: int,
    out: npt.NDArray[np.int32],
) -> int:
    """:func:`top_k_ranked` with tie keys from :func:`tie_keys_from_salt`."""
    tie_keys = np.empty(scores.shape[0], dtype=np.float64)
    tie_keys_from_salt(salt, tie_keys)
    return top_k_ranked(scores, tie_keys, k, out)


def top_k_ranked_shared_salted(
    scores: npt.NDArray[np.float32],
    salts: npt.NDArray[np.uint64],
    k: int,
    out: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> None:
    """:func:`top_k_ranked_shared` with request r's tie keys from ``salts[r]``.

    Args:
        scores: float32 (n,) shared by every request.
        salts: uint64 (R,) one draw per request; the salt is ``salts[r] >> 1``.
        k: positions to keep per request.
        out: int32 (R, >= min(k, n)).
        counts: int32 (R,) receives how many positions each row holds.
    """
    tie_keys = np.empty((salts.shape[0], scores.shape[0]), dtype=np.float64)
    for r in range(salts.shape[0]):
        tie_keys_from_salt(int(salts[r]) >> 1, tie_keys[r])
    top_k_ranked_shared(scores, tie_keys, k, out, counts)


def top_k_ranked_shared(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    out: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> None:
    """Rank one score vector for R requests that differ only in their tie keys.

    Args:
        scores: float32 (n,), shared by all requests.
        tie_keys: float64 (R, n), row ``r`` for request ``r``.
        k: as in :func:`top_k_ranked`.
        out: int32 (>= R, >= min(k, n)); row ``r`` receives request ``r``'s ranking.
        counts: int32 (>= R,); ``counts[r]`` receives the number written to row ``r``.
    """
    num_requests, n = tie_keys.shape
    m = max(0, min(k, n))
    counts[:num_requests] = m
    if m == 0 or num_requests == 0:
        return
    key = np.broadcast_to(_rank_key(scores), tie_keys.shape)
    order = np.lexsort((-tie_keys, key), axis=-1)
    out[:num_requests, :m] = order[:, :m]


def top_k_ranked_batch(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    out: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> None:
    """Rank R requests, each with its own scores and tie keys.

    Args:
        scores: float32 (R, n), row ``r`` for request ``r``.
        tie_keys: float64 (R, n).
        k: as in :func:`top_k_ranked`.
        out: int32 (>= R, >= min(k, n)); row ``r`` receives request ``r``'s ranking.
        counts: int32 (>= R,); ``counts[r]`` receives the number written to row ``r``.
    """
    num_requests, n = scores.shape
    m = max(0, min(k, n))
    counts[:num_requests] = m
    if m == 0 or num_requests == 0:
        return
    order = np.lexsort((-tie_keys, _rank_key(scores)), axis=-1)
    out[:num_requests, :m] = order[:, :m]


def ares_keys(
    scores: npt.NDArray[np.float32],
    uniforms: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Compute A-Res keys for weighted random sampling (GIE weighted-random-picker).

    For a finite ``score > 0``: ``key = u ** (1 / score)`` in float64, with ``u == 0``
    replaced by 1e-10; for ``score <= 0``, NaN or +inf: ``key = 0``. The largest key wins,
    so the pick probability is proportional to the score.

    Args:
        scores: float32 (n,) combined scores.
        uniforms: float64 (n,) uniforms in [0, 1) from the caller's seeded generator.
        out: float64, ``out[:n]`` receives the keys.

    Returns:
        The number of finite positive scores; when 0, every key is 0 and the caller
        falls back to a uniform pick.
    """
    n = scores.shape[0]
    s = scores.astype(np.float64)
    positive = (s > 0.0) & (s < math.inf)
    u = uniforms[:n]
    u = np.where(u == 0.0, 1e-10, u)
    exponent = 1.0 / np.where(positive, s, 1.0)
    out[:n] = np.where(positive, u**exponent, 0.0)
    return int(np.count_nonzero(positive))


# --------------------------------------------------------------------------- filtering


def _keep(
    candidates: npt.NDArray[np.int32], keep: npt.NDArray[np.bool_], out: npt.NDArray[np.int32]
) -> int:
    """Write ``candidates[keep]`` to the front of ``out`` and return how many."""
    kept = candidates[keep]
    count: int = kept.shape[0]
    out[:count] = kept
    return count


def filter_by_mask(
    mask: npt.NDArray[np.bool_],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.int32],
) -> int:
    """Keep the candidates whose row is set in ``mask``.

    Args:
        mask: bool column, indexed by row.
        candidates: int32 rows.
        out: int32, ``out[:count]`` receives the kept rows in their original order; may
            be ``candidates`` itself.

    Returns:
        ``count``, the number of rows kept.
    """
    return _keep(candidates, mask[candidates], out)


def filter_by_code(
    codes: npt.NDArray[np.int8],
    allowed: npt.NDArray[np.bool_],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.int32],
) -> int:
    """Keep the candidates whose row's categorical code is allowed.

    Args:
        codes: int8 column of category codes (e.g. P/D role), indexed by row.
        allowed: bool (num_codes,); ``allowed[code]`` says whether the code passes.
            Codes < 0 or >= ``len(allowed)`` are dropped.
        candidates: int32 rows.
        out: int32, ``out[:count]`` receives the kept rows in their original order; may
            be ``candidates`` itself.

    Returns:
        ``count``, the number of rows kept.
    """
    c = codes[candidates]
    num_codes = min(allowed.shape[0], 128)  # int8 codes never reach 128
    known = (c >= 0) & (c < num_codes)
    keep = np.zeros(candidates.shape[0], dtype=np.bool_)
    keep[known] = allowed[c[known]]
    return _keep(candidates, keep, out)


def filter_below(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    limit: float,
    out: npt.NDArray[np.int32],
) -> int:
    """Keep the candidates whose value is strictly below ``limit``; NaN is dropped.

    Args:
        values: float64 metric column, indexed by row.
        candidates: int32 rows.
        limit: exclusive upper bound.
        out: int32, ``out[:count]`` receives the kept rows in their original order; may
            be ``candidates`` itself.

    Returns:
        ``count``, the number of rows kept.
    """
    return _keep(candidates, values[candidates] < limit, out)


def is_subsequence(candidates: npt.NDArray[np.int32], kept: npt.NDArray[np.int32]) -> bool:
    """Whether ``kept`` is ``candidates`` with some entries removed, order kept.

    The profile checks every filter's output with it: a filter may only drop candidates.
    Greedy matching: each kept row must appear in ``candidates`` after the previous match.

    Args:
        candidates: int32 (n,) the filter's input.
        kept: int32 (m,) the filter's output.
    """
    if len(kept) > len(candidates):
        return False
    if len(kept) == 0:
        return True
    # positions of each kept value in candidates: a subsequence iff a strictly increasing
    # choice exists; the greedy earliest match is found by searching after the previous one
    start = 0
    for value in kept.tolist():
        hits = np.flatnonzero(candidates[start:] == value)
        if hits.size == 0:
            return False
        start += int(hits[0]) + 1
    return True


# --------------------------------------------------------------------------- hashing
# The prefix hash's reference *is* the xxhash package (STYLE §5): these twins call it on
# real concatenated bytes, block by block, exactly as GIE's hashing.go does.


def xxh64(data: npt.NDArray[np.uint8], seed: np.uint64) -> int:
    """XXH64 of the bytes of ``data`` with ``seed`` (``xxhash.xxh64_intdigest``).

    Args:
        data: uint8 (n,) bytes, any length (0 included).
        seed: np.uint64 seed (a Python int would compile a second signature of the kernel).

    Returns:
        The 64-bit digest, a Python int in [0, 2**64).
    """
    digest: int = xxhash.xxh64_intdigest(data.tobytes(), int(seed))
    return digest


def chained_block_hashes(
    data: npt.NDArray[np.uint8],
    block_bytes: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """GIE's chained prefix-block hashes of ``data`` (gie.md §4.2, ``hashing.go``).

    With ``B = block_bytes``: no hashes when ``B <= 0``, ``len(data) < B`` (short prompts
    get none) or ``max_blocks <= 0``. Otherwise ``data`` is truncated to
    ``max_blocks * B`` bytes and cut into blocks of ``B`` bytes, the last one possibly
    partial (it is hashed too); with ``prev = seed_hash``, block ``i`` hashes to
    ``h_i = xxh64(block_i + uint64_le(prev), seed=0)`` and ``prev = h_i``.

    Args:
        data: uint8 (n,) the prompt bytes.
        block_bytes: block size in bytes (GIE: ``blockSizeTokens * 4``).
        max_blocks: most blocks to hash (GIE: ``maxPrefixBlocksToMatch``).
        seed_hash: np.uint64 ``xxh64(target_model + cache_salt)``, the first parent.
        out: uint64; ``out[:count]`` receives the hashes in block order. At most
            ``len(out)`` are written: a short ``out`` acts as a smaller ``max_blocks``.

    Returns:
        ``count``, the number of hashes written: ``min(ceil(n / B), max_blocks,
        len(out))``, or 0 as above.
    """
    n = data.shape[0]
    if block_bytes <= 0 or n < block_bytes or max_blocks <= 0:
        return 0
    count: int = min(-(-n // block_bytes), max_blocks, out.shape[0])
    payload = data[: count * block_bytes].tobytes()
    prev = int(seed_hash)
    for k in range(count):
        block = payload[k * block_bytes : (k + 1) * block_bytes]
        prev = xxhash.xxh64_intdigest(block + prev.to_bytes(8, "little"))
        out[k] = prev
    return count


def chained_token_block_hashes(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """:func:`chained_block_hashes` over token ids, each serialised as uint32 little-endian.

    Block ``i`` is ``block_tokens`` ids (``4 * block_tokens`` bytes), the last possibly
    partial; a prompt of fewer than ``block_tokens`` ids gets no hashes.

    Args:
        tokens: uint32 (n,) token ids.
        block_tokens: block size in tokens (GIE: ``blockSizeTokens``).
        max_blocks: most blocks to hash.
        seed_hash: np.uint64, the first parent.
        out: uint64; ``out[:count]`` receives the hashes, as in :func:`chained_block_hashes`.

    Returns:
        ``count``, the number of hashes written.
    """
    if block_tokens <= 0:
        return 0
    serialised = np.frombuffer(tokens.astype("<u4").tobytes(), dtype=np.uint8)
    return chained_block_hashes(serialised, 4 * block_tokens, max_blocks, seed_hash, out)


# --------------------------------------------------------------------------- cost


def kv_cost_scores(
    match_blocks: npt.NDArray[np.float64],
    inflight_tokens: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    total_blocks: float,
    block_size_tokens: float,
    credit: float,
    logits: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
) -> None:
    """Dynamo's KV-router cost per candidate, and its score (``kv-cost-scorer``).

    With ``r = candidates[i]``::

        prefill_blocks = max(total_blocks - match_blocks[r], 0)   # NaN stays NaN
        decode_blocks  = inflight_tokens[r] / block_size_tokens
        logits[i]      = credit * prefill_blocks + decode_blocks   # lower is better

    then ``out[:n]`` = :func:`min_max_inverted` of ``logits[:n]``: the cheapest candidate
    scores 1, the dearest 0, all equal (or a single candidate) 1, NaN/inf cost NaN.

    Args:
        match_blocks: float64, the request's blocks cached per row (``PrefixCacheMatchInfo``).
        inflight_tokens: float64, tokens in flight per row (``inflight-load-producer``).
        candidates: int32 rows to score.
        total_blocks: the request's prefix blocks.
        block_size_tokens: tokens per block (> 0).
        credit: ``overlapScoreWeight`` (Dynamo's overlap credit).
        logits: float64, ``logits[:n]`` receives the costs.
        out: float32, ``out[:n]`` receives the scores.
    """
    n = candidates.shape[0]
    uncached = total_blocks - match_blocks[candidates]
    uncached = np.where(uncached < 0.0, 0.0, uncached)
    logits[:n] = credit * uncached + inflight_tokens[candidates] / block_size_tokens
    min_max_inverted(logits, np.arange(n, dtype=np.int32), out)


def softmax_sample_keys(
    scores: npt.NDArray[np.float32],
    temperature: float,
    uniforms: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Gumbel-max keys for Dynamo's softmax sampling over totals (``softmax-picker``).

    With ``lo``/``hi`` the min/max of the finite scores, ``z_i = (s_i - hi) / (hi - lo)``
    (0 when ``hi == lo``) and ``out[i] = z_i / temperature - log(-log(max(u_i, 1e-300)))``;
    non-finite scores get key ``-inf``. The position of the largest key is a sample from
    ``softmax(z / temperature)`` and the keys in descending order a sample without
    replacement (Gumbel-top-k), which gives the fallbacks.

    Args:
        scores: float32 weighted totals, higher is better.
        temperature: > 0.
        uniforms: float64 in [0, 1), one per score (from the cycle's seeded RNG).
        out: float64, ``out[:n]`` receives the keys.

    Returns:
        The number of finite scores.
    """
    n = scores.shape[0]
    s = scores.astype(np.float64)
    finite = np.abs(s) < math.inf
    if not finite.any():
        out[:n] = -math.inf
        return 0
    hi = float(s[finite].max())
    span = hi - float(s[finite].min())
    z = (np.where(finite, s, hi) - hi) / span if span > 0.0 else np.zeros(n)
    gumbel = -np.log(-np.log(np.maximum(uniforms[:n], 1e-300)))
    out[:n] = np.where(finite, z / temperature + gumbel, -math.inf)
    return int(finite.sum())


# --------------------------------------------------------------------------- precise index
# Twins of the computing kernels of ``kernels/precise_index.py`` (the ones that change the
# store are checked against ``prefix_index_model.PreciseIndexModel`` instead).


def _chain_block_keys(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    out: npt.NDArray[np.uint64],
) -> int:
    """Request keys of the full blocks of ``tokens`` (the precise index's chain).

    With ``B = block_tokens`` and ``count = min(len(tokens) // B, max_blocks, len(out))``
    (0 when ``B <= 0`` or ``max_blocks <= 0``; a partial tail block gets no key): with
    ``prev = seed``, block ``i`` hashes to ``xxh64(tokens[iB:(i+1)B] as uint32 LE +
    uint64_le(prev ^ m_i))`` where ``m_i = mixes[i]`` (0 past the end of ``mixes``), and
    ``prev`` becomes that key. Without mixes this is ``chained_token_block_hashes`` over
    the full blocks.

    Args:
        tokens: uint32 (n,) token ids.
        block_tokens: tokens per block.
        max_blocks: most keys to compute.
        seed: np.uint64 parent of block 0 (a chain seed, or the key of the block before).
        mixes: uint64 (m,) per-block extra-key mixes, 0 for none.
        out: uint64; ``out[:count]`` receives the keys.

    Returns:
        ``count``.
    """
    if block_tokens <= 0 or max_blocks <= 0:
        return 0
    count: int = min(tokens.shape[0] // block_tokens, max_blocks, out.shape[0])
    prev = int(seed)
    for i in range(count):
        if i < mixes.shape[0]:
            prev ^= int(mixes[i])
        block = tokens[i * block_tokens : (i + 1) * block_tokens].astype("<u4").tobytes()
        prev = xxhash.xxh64_intdigest(block + prev.to_bytes(8, "little"))
        out[i] = prev
    return count


def _match_tiers(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    request_keys: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Tier-weighted longest consecutive prefix per row (llm-d's LongestPrefix).

    The store is a ``kernels/prefix_index`` table: a key's slot is the occupied one
    holding it (found here by a scan, so ``shift`` is unused), its entries a list of
    nodes, each node's LRU id ``row * 8 + tier``. With ``w[i, row]`` the largest
    ``weights[tier]`` among row's entries at key ``i`` (entries of tiers weighing < 0 are
    ignored), ``out[row]`` is the sum of ``w[i, row]`` over ``i`` below the row's first
    key without an entry, added in key order; rows without any are 0.

    Args:
        keys, heads, nodes, shift: the store (see ``kernels/prefix_index.py``).
        request_keys: int64 (n,) the request's keys viewed as int64.
        weights: float64 (8,) weight per tier code.
        out: float64, one per row; fully overwritten.

    Returns:
        ``n``.
    """
    _matched_until(keys, heads, nodes, request_keys, weights, out)
    return int(request_keys.shape[0])


def _matched_until(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    request_keys: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """:func:`_match_tiers` into ``out``; return the first key no row extends its run
    with (``n`` if every key extends one)."""
    num_keys = int(request_keys.shape[0])
    weight = np.full((num_keys, out.shape[0]), -1.0)
    occupied = heads != _EMPTY
    for i in range(num_keys):
        slots = np.flatnonzero(occupied & (keys == request_keys[i]))
        if slots.size == 0:
            break  # no row holds this key, so no row matches past it
        node = int(heads[slots[0]])
        while node >= 0:
            lru = int(nodes[node, _ROW])
            w = float(weights[lru % _NUM_TIERS])
            row = lru >> _TIER_BITS
            if w >= 0.0 and w > weight[i, row]:
                weight[i, row] = w
            node = int(nodes[node, _HASH_NEXT])
    held = weight >= 0.0
    consecutive = np.cumprod(held, axis=0).astype(bool)
    # cumsum adds in key order, as the kernel does, so the sums agree to the last bit.
    sums = np.cumsum(np.where(consecutive, weight, 0.0), axis=0)
    out[:] = sums[-1] if num_keys else 0.0
    stopped = np.flatnonzero(~consecutive.any(axis=1))
    return int(stopped[0]) if stopped.size else num_keys


def _hash_match_tiers(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    weights: npt.NDArray[np.float64],
    all_keys: bool,
    out_keys: npt.NDArray[np.uint64],
    out: npt.NDArray[np.float64],
) -> int:
    """:func:`_chain_block_keys` then :func:`_match_tiers` over the keys.

    With ``all_keys``, every key is written to ``out_keys``. Without, the keys are
    hashed in steps of ``_MATCH_LANES`` (32) and hashing stops after the step holding the
    first key no row extends its run with: the keys past that step are not written.

    Returns:
        The number of keys written.
    """
    all_out = np.empty(out_keys.shape[0], dtype=np.uint64)
    count = _chain_block_keys(tokens, block_tokens, max_blocks, seed, mixes, all_out)
    stop = _matched_until(keys, heads, nodes, all_out[:count].view(np.int64), weights, out)
    written = count if all_keys else min(count, (stop // _MATCH_LANES + 1) * _MATCH_LANES)
    out_keys[:written] = all_out[:written]
    return written


# --------------------------------------------------------------------------- assignment


def assign_greedy(
    order: npt.NDArray[np.int32],
    cand_start: npt.NDArray[np.int64],
    cand_rows: npt.NDArray[np.int32],
    match_blocks: npt.NDArray[np.float64],
    total_blocks: npt.NDArray[np.float64],
    block_size_tokens: npt.NDArray[np.float64],
    request_tokens: npt.NDArray[np.float64],
    hashes: npt.NDArray[np.uint64],
    num_hashes: npt.NDArray[np.int64],
    load_tokens: npt.NDArray[np.float64],
    credit: float,
    tie_keys: npt.NDArray[np.float64],
    ranked: npt.NDArray[np.int32],
    costs: npt.NDArray[np.float64],
) -> None:
    """Greedy joint assignment of a burst on Dynamo's cost, in ``order``.

    Request ``i`` (``n = len(order)`` requests, ``order`` a permutation of ``0..n-1``)
    has the candidate rows ``cand_rows[cand_start[i]:cand_start[i + 1]]`` (may be empty),
    with its index match ``match_blocks`` (blocks, aligned with ``cand_rows``) and tie
    keys ``tie_keys`` (same alignment), ``total_blocks[i]`` prefix blocks of
    ``block_size_tokens[i]`` (> 0) tokens, and ``request_tokens[i]`` tokens of load. Its
    block hashes are ``hashes[i, :num_hashes[i]]``, chained (equal at block ``b`` means
    equal before ``b``, so two requests share the blocks before their first difference).

    Taking requests in ``order``, the cost of candidate ``row`` is
    ``credit * max(0, total_blocks[i] - cached) + load_tokens[row] / block_size_tokens[i]``
    (``kv-cost-scorer``'s cost) with ``cached`` the larger of the index match and the
    longest prefix shared with a request already assigned to ``row`` in this call (the
    batch's own optimistic cache; a NaN match counts as no match). A NaN cost ranks as
    +inf. ``ranked[i]`` receives the ``k = ranked.shape[1]`` cheapest candidate positions
    (ties: smaller tie key, then lower position), -1 past the candidates; ``costs[i]``
    their costs (+inf past them).
    The pick's ``load_tokens[row]`` then grows by ``request_tokens[i]`` (in place).
    """
    n = order.shape[0]
    k = ranked.shape[1]
    assigned = np.full(n, -1, dtype=np.int64)
    for t in range(n):
        i = int(order[t])
        start, stop = int(cand_start[i]), int(cand_start[i + 1])
        rows = cand_rows[start:stop]
        shared = np.zeros(load_tokens.shape[0], dtype=np.float64)
        earlier = order[:t]
        for j in earlier[assigned[earlier] >= 0].tolist():
            length = int(min(num_hashes[i], num_hashes[j]))
            same = hashes[i, :length] == hashes[j, :length]
            lcp = length if same.all() else int(np.argmin(same))
            row = int(assigned[j])
            shared[row] = max(shared[row], lcp)
        cached = np.fmax(match_blocks[start:stop], shared[rows])  # NaN match: ignored
        uncached = total_blocks[i] - cached
        uncached = np.where(uncached < 0.0, 0.0, uncached)
        cost = credit * uncached + load_tokens[rows] / block_size_tokens[i]
        cost = np.where(np.isnan(cost), math.inf, cost)
        pick = np.lexsort((np.arange(rows.shape[0]), tie_keys[start:stop], cost))[:k]
        ranked[i] = -1
        costs[i] = math.inf
        ranked[i, : pick.shape[0]] = pick
        costs[i, : pick.shape[0]] = cost[pick]
        if pick.shape[0]:
            row = int(rows[pick[0]])
            assigned[i] = row
            load_tokens[row] += request_tokens[i]
