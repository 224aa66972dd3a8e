"""NumPy twins of :mod:`inference_sched.kernels.picking`, and their contracts.

Each function has the name, parameters and ``out`` contract of the picking kernel it
mirrors; ``tests/property/test_kernels.py`` holds the two equal (rankings exactly). The
conventions shared by every kernel are in :mod:`inference_sched.kernels._twins`.
"""

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "tie_keys_from_salt",
    "top_k_ranked",
    "top_k_ranked_salted",
    "top_k_ranked_shared",
    "top_k_ranked_shared_salted",
    "top_k_ranked_batch",
    "ares_keys",
]


def _sort_key(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
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
    key = _sort_key(scores)
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
    key = np.broadcast_to(_sort_key(scores), tie_keys.shape)
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
    order = np.lexsort((-tie_keys, _sort_key(scores)), axis=-1)
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
