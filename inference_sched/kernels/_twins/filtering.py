"""NumPy twins of :mod:`inference_sched.kernels.filtering`, and their contracts.

Each function has the name, parameters and ``out`` contract of the filtering kernel it
mirrors; ``tests/property/test_kernels.py`` holds the two equal. The conventions shared
by every kernel are in :mod:`inference_sched.kernels._twins`.
"""

import numpy as np
import numpy.typing as npt

__all__ = [
    "is_subsequence",
    "filter_by_mask",
    "filter_by_code",
    "filter_below",
]


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
