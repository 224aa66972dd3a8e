"""Argument checks and conversions shared by the prefix indexes.

:class:`~inference_sched.prefix.index.PrefixIndex` and
:class:`~inference_sched.prefix.precise.index.PreciseIndex` take endpoint rows, sizes and
caller-owned ``out`` arrays the same way, so they check them here, with the same errors.
"""

from __future__ import annotations

import numbers
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["as_uint64s", "check_int", "check_out", "check_row"]

_UINT64: Final = np.dtype(np.uint64)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None).

    Raises:
        ValueError: a bool, anything that is not an integer, or an int out of range.
    """
    number: int | None
    if type(value) is int:  # the common case, without the ABC check (a bool is no int)
        number = value
    elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
        number = None
    else:
        number = int(value)
    if number is None or number < low or (high is not None and number > high):
        want = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return number


def check_row(row: Any, max_row: int) -> int:
    """An endpoint row (an ``EndpointTable`` row) as an int in ``[0, max_row]``.

    Raises:
        ValueError: a bool, anything that is not an integer, or an int out of range.
    """
    return check_int("row", row, 0, max_row)


def check_out(name: str, out: Any, num_rows: int) -> None:
    """Check that ``out`` is a 1-D float64 array with a slot for each of ``num_rows`` rows.

    Raises:
        ValueError: another type, dtype or shape, or fewer than ``num_rows`` slots.
    """
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float64
        or out.ndim != 1
        or out.shape[0] < num_rows
    ):
        got = f"{out.dtype}{list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(
            f"{name}: expected a 1-D float64 array of length >= {num_rows} "
            f"(largest row seen + 1), got {got}"
        )


def as_uint64s(
    name: str, values: npt.ArrayLike, *, writable: bool = False
) -> npt.NDArray[np.uint64]:
    """Hashes as a contiguous 1-D uint64 array.

    ``values`` comes back as is when it already is one (and is writable, if ``writable``
    asks for that); anything else is converted, into a fresh copy when ``writable``.

    Raises:
        ValueError: values that do not make a 1-D array.
    """
    if (
        isinstance(values, np.ndarray)
        and values.dtype == _UINT64
        and values.ndim == 1
        and values.flags.c_contiguous
        and (values.flags.writeable or not writable)
    ):
        return values  # what the hashing functions return: no conversion
    arr = (
        np.array(values, dtype=np.uint64)  # a copy: writable whatever came in
        if writable
        else np.ascontiguousarray(values, dtype=np.uint64)
    )
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr
