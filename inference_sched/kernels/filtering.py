"""Numba filtering kernels: keep an ordered subset of the candidate rows.

Each kernel reads ``candidates`` (int32 endpoint rows), writes the kept *rows* in their
original order to ``out[:count]`` (int32, caller-owned, ``len(out) >= len(candidates)``)
and returns ``count``. ``out`` may be ``candidates`` itself: a row is written only at or
before the index it was read from. The contracts are documented on the NumPy twins of
the same names in :mod:`inference_sched.kernels._twins.filtering`.
"""

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import kernel

__all__ = [
    "is_subsequence",
    "filter_by_mask",
    "filter_by_code",
    "filter_below",
]


@kernel
def filter_by_mask(
    mask: npt.NDArray[np.bool_],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.int32],
) -> int:
    """Keep the candidates whose row is set in ``mask``."""
    count = 0
    for i in range(candidates.shape[0]):
        row = candidates[i]
        if mask[row]:
            out[count] = row
            count += 1
    return count


@kernel
def filter_by_code(
    codes: npt.NDArray[np.int8],
    allowed: npt.NDArray[np.bool_],
    candidates: npt.NDArray[np.int32],
    out: npt.NDArray[np.int32],
) -> int:
    """Keep the candidates whose row's code is allowed; unknown codes are dropped."""
    num_codes = allowed.shape[0]
    count = 0
    for i in range(candidates.shape[0]):
        row = candidates[i]
        code = codes[row]
        if 0 <= code < num_codes and allowed[code]:
            out[count] = row
            count += 1
    return count


@kernel
def filter_below(
    values: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    limit: float,
    out: npt.NDArray[np.int32],
) -> int:
    """Keep the candidates whose value is strictly below ``limit`` (NaN is dropped)."""
    count = 0
    for i in range(candidates.shape[0]):
        row = candidates[i]
        if values[row] < limit:
            out[count] = row
            count += 1
    return count


@kernel
def is_subsequence(candidates: npt.NDArray[np.int32], kept: npt.NDArray[np.int32]) -> bool:
    """Whether ``kept`` is ``candidates`` with some entries removed, order kept."""
    j = 0
    n = candidates.shape[0]
    for i in range(kept.shape[0]):
        while j < n and candidates[j] != kept[i]:
            j += 1
        if j == n:
            return False
        j += 1
    return True
