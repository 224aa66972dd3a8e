"""Staleness of scraped metrics: the one rule every reader of the table applies."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from inference_sched.state.table import EndpointTable

__all__ = ["is_stale", "stale_mask"]


def is_stale(table: EndpointTable, row: int, now_s: float, threshold_s: float) -> bool:
    """Whether ``row``'s metrics are older than ``threshold_s`` (never written = stale).

    The rule plugins use (GIE's ``utilization-detector``: 200 ms): stale means
    ``now_s - table.last_update_s[row] > threshold_s``, on the table's clock.
    """
    return bool(now_s - table.last_update_s[row] > threshold_s)


def stale_mask(
    table: EndpointTable, rows: npt.ArrayLike, now_s: float, threshold_s: float
) -> npt.NDArray[np.bool_]:
    """:func:`is_stale` for many rows at once."""
    idx = np.asarray(rows, dtype=np.intp)
    return np.asarray(now_s - table.last_update_s[idx] > threshold_s)
