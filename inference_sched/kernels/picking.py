"""Numba picking kernels: rank candidates by score, or draw weighted-random keys.

Rankings are *positions* into the candidate array (0..n-1), not endpoint rows. The order
is total and deterministic: score descending (NaN ranks as -inf), then tie key
descending, then lower position first. Tie keys come from the caller's seeded
``numpy.random.Generator``, which is what lets a kernel and its NumPy twin in
:mod:`inference_sched.kernels._twins.picking` agree exactly; the contracts are documented
there.

Top-k selection keeps a k-sized binary heap whose root is the worst kept position, in the
caller's ``out`` row: O(n) comparisons against the root for the usual small k, O(n log k)
at worst, no allocation, and still correct when k >= n.
"""

import math

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import is_jit_enabled, kernel

__all__ = [
    "tie_keys_from_salt",
    "top_k_ranked",
    "top_k_ranked_salted",
    "top_k_ranked_shared",
    "top_k_ranked_shared_salted",
    "top_k_ranked_batch",
    "ares_keys",
]


@kernel
def top_k_ranked(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    out: npt.NDArray[np.int32],
) -> int:
    """Write the positions of the k best candidates, best first; return how many."""
    return _top_k_into(scores, tie_keys, -1, k, out)


# splitmix64 (Steele, Lea, Flood 2014): a cheap, well-mixed sequence from one seed draw.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0
_NO_TIE_KEYS = np.empty(0, dtype=np.float64)  # placeholder when keys come from a salt


@kernel  # the policy for uniformity; never compiled: only used with NUMBA_DISABLE_JIT=1
def _salted_key_python(salt: int, i: int) -> float:
    """Element ``i`` of the splitmix64 sequence seeded by ``salt``, as a uniform in [0, 1).

    The sequence's state at ``i`` is ``salt + (i + 1) * golden``, so any element can be
    computed on its own: the top-k kernels only compute the keys of tied positions. This
    Python-int body runs under ``NUMBA_DISABLE_JIT=1``, where NumPy uint64 scalars would
    warn on the intended wrap-around; the compiled body below is the same arithmetic.
    """
    mask = 0xFFFFFFFFFFFFFFFF
    z = (int(salt) + (int(i) + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z = z ^ (z >> 31)
    return float(z >> 11) * _TWO_POW_MINUS_53


@kernel
def _salted_key_compiled(salt: int, i: int) -> float:
    """Compiled :func:`_salted_key_python` (uint64 arithmetic wraps silently here)."""
    z = np.uint64(salt) + np.uint64(i + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * _TWO_POW_MINUS_53


_salted_key = _salted_key_compiled if is_jit_enabled() else _salted_key_python


@kernel
def tie_keys_from_salt(salt: int, out: npt.NDArray[np.float64]) -> None:
    """Fill ``out`` with uniforms in [0, 1): the splitmix64 sequence seeded by ``salt``."""
    for i in range(out.shape[0]):
        out[i] = _salted_key(salt, i)


@kernel
def top_k_ranked_salted(
    scores: npt.NDArray[np.float32],
    salt: int,
    k: int,
    out: npt.NDArray[np.int32],
) -> int:
    """``top_k_ranked`` with tie keys drawn from ``salt`` (one seeded draw per decision)."""
    return _top_k_into(scores, _NO_TIE_KEYS, salt, k, out)


@kernel
def top_k_ranked_shared_salted(
    scores: npt.NDArray[np.float32],
    salts: npt.NDArray[np.uint64],
    k: int,
    out: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> None:
    """``top_k_ranked_shared``; request r's tie keys come from salt ``salts[r] >> 1``."""
    for r in range(salts.shape[0]):
        salt = int(salts[r] >> np.uint64(1))
        counts[r] = _top_k_into(scores, _NO_TIE_KEYS, salt, k, out[r])


@kernel
def top_k_ranked_shared(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    out: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> None:
    """Rank one score vector for R requests, each with its own row of tie keys."""
    for r in range(tie_keys.shape[0]):
        counts[r] = _top_k_into(scores, tie_keys[r], -1, k, out[r])


@kernel
def top_k_ranked_batch(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    k: int,
    out: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> None:
    """Rank R requests, each with its own row of scores and of tie keys."""
    for r in range(scores.shape[0]):
        counts[r] = _top_k_into(scores[r], tie_keys[r], -1, k, out[r])


@kernel
def ares_keys(
    scores: npt.NDArray[np.float32],
    uniforms: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Write A-Res keys ``u ** (1 / score)`` (0 for non-positive); return #positive scores."""
    num_positive = 0
    for i in range(scores.shape[0]):
        s = float(scores[i])
        if s > 0.0 and s < math.inf:
            u = uniforms[i]
            if u == 0.0:
                u = 1e-10
            out[i] = u ** (1.0 / s)
            num_positive += 1
        else:
            out[i] = 0.0
    return num_positive


@kernel
def _rank_key(
    scores: npt.NDArray[np.float32], tie_keys: npt.NDArray[np.float64], salt: int, a: int
) -> tuple[float, float]:
    """The (score, tie key) that ranks position ``a``, with a NaN score as -inf.

    The tie key is ``tie_keys[a]``, or, when ``salt >= 0``, element ``a`` of the salted
    sequence (computed on demand).
    """
    s = float(scores[a])
    if math.isnan(s):
        s = -math.inf
    return s, float(tie_keys[a]) if salt < 0 else _salted_key(salt, a)


@kernel
def _ranks_before(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    salt: int,
    a: int,
    b: int,
) -> bool:
    """Whether position ``a`` ranks strictly before position ``b``."""
    score_a, tie_a = _rank_key(scores, tie_keys, salt, a)
    score_b, tie_b = _rank_key(scores, tie_keys, salt, b)
    if score_a != score_b:
        return score_a > score_b
    if tie_a != tie_b:
        return tie_a > tie_b
    return a < b


@kernel
def _sift_down(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    salt: int,
    heap: npt.NDArray[np.int32],
    size: int,
) -> None:
    """Restore the worst-at-root heap property of ``heap[:size]`` from the root down."""
    j = 0
    while True:
        child = 2 * j + 1
        if child >= size:
            return
        right = child + 1
        if right < size and _ranks_before(scores, tie_keys, salt, heap[child], heap[right]):
            child = right
        if not _ranks_before(scores, tie_keys, salt, heap[j], heap[child]):
            return
        heap[j], heap[child] = heap[child], heap[j]
        j = child


@kernel
def _top_1(scores: npt.NDArray[np.float32], tie_keys: npt.NDArray[np.float64], salt: int) -> int:
    """The best position (same order as the heap): a max pass, then a pass over the ties."""
    n: int = scores.shape[0]
    best = -math.inf
    for i in range(n):  # branch-free: vectorises; NaN never compares greater
        s = np.float64(scores[i])
        best = s if s > best else best
    pick = -1
    pick_tie = -math.inf
    for i in range(n):
        s = np.float64(scores[i])
        if s == best or (best == -math.inf and math.isnan(s)):  # NaN ranks as -inf
            tie = float(tie_keys[i]) if salt < 0 else _salted_key(salt, i)
            if pick < 0 or tie > pick_tie:  # strict: equal keys keep the lower position
                pick = i
                pick_tie = tie
    return pick


@kernel
def _top_k_into(
    scores: npt.NDArray[np.float32],
    tie_keys: npt.NDArray[np.float64],
    salt: int,
    k: int,
    out: npt.NDArray[np.int32],
) -> int:
    """Shared body of the top-k kernels; ``out`` is the caller's row.

    Tie keys come from ``tie_keys`` when ``salt < 0``, else from the salted sequence.
    """
    n: int = scores.shape[0]
    m = min(k, n)
    if m <= 0:
        return 0
    if m == 1:
        out[0] = _top_1(scores, tie_keys, salt)
        return 1
    # Build a heap of the first m positions, worst at the root (sift up).
    for i in range(m):
        out[i] = i
        j = i
        while j > 0:
            parent = (j - 1) >> 1
            if not _ranks_before(scores, tie_keys, salt, out[parent], out[j]):
                break
            out[parent], out[j] = out[j], out[parent]
            j = parent
    # Replace the root with any later position that beats it. Most positions are rejected
    # by comparing with the cached root key; a later position loses every full tie.
    worst_score, worst_tie = _rank_key(scores, tie_keys, salt, out[0])
    for i in range(m, n):
        s = float(scores[i])
        if math.isnan(s):
            s = -math.inf
        if s < worst_score:
            continue
        if s == worst_score:
            tie = float(tie_keys[i]) if salt < 0 else _salted_key(salt, i)
            if tie <= worst_tie:
                continue
        out[0] = i
        _sift_down(scores, tie_keys, salt, out, m)
        worst_score, worst_tie = _rank_key(scores, tie_keys, salt, out[0])
    # Heapsort in place: moving the worst to the end leaves out[:m] best first.
    for end in range(m - 1, 0, -1):
        out[0], out[end] = out[end], out[0]
        _sift_down(scores, tie_keys, salt, out, end)
    return m
