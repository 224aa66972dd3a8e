"""A plain-Python prefix index: dict of sets plus an ``OrderedDict`` LRU per endpoint.

This is GIE's ``indexer.go`` written the obvious way. It is the model the stateful test
checks :class:`inference_sched.prefix_index.PrefixIndex` against, and the baseline the
prefix benchmark compares it with, so it has the same methods and the same semantics
(including keeping the index and the LRUs consistent when one ``add`` overflows the
capacity; see :class:`~inference_sched.prefix_index.PrefixIndex`). Single-threaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["PrefixIndexModel"]


class PrefixIndexModel:
    """Block hash -> set of endpoint rows, with an ``OrderedDict`` LRU per endpoint."""

    def __init__(self) -> None:
        """Create an empty index."""
        self._rows_by_hash: dict[int, set[int]] = {}
        self._lrus: dict[int, OrderedDict[int, None]] = {}
        self._capacities: dict[int, int] = {}

    def add(self, hashes: Iterable[int], row: int, capacity: int) -> None:
        """Insert ``hashes`` in order into ``row``'s LRU (created with ``capacity``)."""
        lru = self._lrus.get(row)
        if lru is None:
            lru = self._lrus[row] = OrderedDict()
            self._capacities[row] = capacity
        limit = self._capacities[row]
        for value in hashes:
            h = int(value)
            if h in lru:
                lru.move_to_end(h)
                continue
            if len(lru) >= limit:
                oldest, _ = lru.popitem(last=False)
                holders = self._rows_by_hash[oldest]
                holders.discard(row)
                if not holders:
                    del self._rows_by_hash[oldest]
            lru[h] = None
            self._rows_by_hash.setdefault(h, set()).add(row)

    def remove_endpoint(self, row: int) -> int:
        """Drop ``row``'s LRU and its entries; return how many entries went."""
        lru = self._lrus.pop(row, None)
        self._capacities.pop(row, None)
        if lru is None:
            return 0
        for h in lru:
            holders = self._rows_by_hash[h]
            holders.discard(row)
            if not holders:
                del self._rows_by_hash[h]
        return len(lru)

    def match_counting(self, hashes: Iterable[int], out_counts: npt.NDArray[np.float64]) -> int:
        """GIE counting mode (zeroes ``out_counts`` first); return the hashes walked."""
        out_counts[:] = 0.0
        walked = 0
        for value in hashes:
            holders = self._rows_by_hash.get(int(value))
            if not holders:
                break
            for row in holders:
                out_counts[row] += 1.0
            walked += 1
        return walked

    def match_prefix(self, hashes: Iterable[int], out_counts: npt.NDArray[np.float64]) -> int:
        """Per-row longest consecutive prefix (zeroes ``out_counts``); return the longest."""
        out_counts[:] = 0.0
        keys = [int(value) for value in hashes]
        longest = 0
        for row, lru in self._lrus.items():
            m = 0
            for h in keys:
                if h not in lru:
                    break
                m += 1
            out_counts[row] = m
            longest = max(longest, m)
        return longest

    def size(self) -> int:
        """Total (hash, endpoint) entries."""
        return sum(len(lru) for lru in self._lrus.values())

    def num_hashes(self) -> int:
        """Distinct hashes held by at least one endpoint."""
        return len(self._rows_by_hash)

    def endpoint_size(self, row: int) -> int:
        """Number of hashes in ``row``'s LRU (0 if it has none)."""
        lru = self._lrus.get(row)
        return 0 if lru is None else len(lru)

    def endpoint_capacity(self, row: int) -> int:
        """Capacity of ``row``'s LRU (0 if it has none)."""
        return self._capacities.get(row, 0)

    def lru_order(self, row: int) -> list[int]:
        """``row``'s hashes from least to most recently used."""
        return list(self._lrus.get(row, ()))
