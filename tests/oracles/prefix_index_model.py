"""Plain-Python prefix indexes: dicts of sets plus ``OrderedDict`` LRUs.

:class:`PrefixIndexModel` is GIE's ``indexer.go`` written the obvious way. It is the model
the stateful test checks :class:`inference_sched.prefix.index.PrefixIndex` against, and the
baseline the prefix benchmark compares it with, so it has the same methods and the same
semantics (including keeping the index and the LRUs consistent when one ``add`` overflows
the capacity; see :class:`~inference_sched.prefix.index.PrefixIndex`).
:class:`PreciseIndexModel` plays the same part for
:class:`inference_sched.prefix.precise.index.PreciseIndex`. Single-threaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.prefix.hashing import seed_hash
from inference_sched.prefix.precise import extra_key_mix

__all__ = ["PreciseIndexModel", "PrefixIndexModel"]

_GPU: Final = "gpu"
_CPU: Final = "cpu"
_OTHER: Final = "other"
_SPECULATIVE: Final = "speculative"
_ENGINE_MAP: Final = "engine_map"
_STAT_NAMES: Final = (
    "stored_events",
    "stored_blocks",
    "unknown_parent_events",
    "misaligned_parent_events",
    "invalid_events",
    "removed_events",
    "removed_blocks",
    "unknown_removals",
    "cleared_endpoints",
    "speculative_inserted",
    "speculative_expired",
)


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

    def remove(self, hashes: Iterable[int], row: int) -> int:
        """Drop ``row``'s entries for ``hashes`` (absent ones ignored); return how many."""
        lru = self._lrus.get(row)
        if lru is None:
            return 0
        num_removed = 0
        for value in hashes:
            h = int(value)
            if h not in lru:
                continue
            del lru[h]
            holders = self._rows_by_hash[h]
            holders.discard(row)
            if not holders:
                del self._rows_by_hash[h]
            num_removed += 1
        return num_removed

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


class PreciseIndexModel:
    """The precise prefix index written the obvious way: dicts, sets and OrderedDicts.

    The model :class:`~inference_sched.prefix.precise.index.PreciseIndex` is checked against by
    the stateful test and the baseline of the precise benchmark, with the same methods
    and semantics (keys, tiers, engine map, speculation, LRU bounds; see that module).
    Request keys are chained with the ``xxhash`` package block by block; tiers are kept
    by name; the engine map is an ``OrderedDict`` per endpoint from (engine hash, entry
    number) to request key. Single-threaded.
    """

    def __init__(
        self,
        *,
        block_size_tokens: int = 16,
        capacity: int = 31_250,
        speculative_capacity: int | None = None,
        engine_map_capacity: int | None = None,
        medium_weights: Mapping[str, float] | None = None,
        other_medium_weight: float = 0.8,
        speculative_weight: float = 1.0,
        speculative_ttl_s: float = 2.0,
    ) -> None:
        """Create an empty index (arguments as ``PreciseIndex``)."""
        self.block_size_tokens = block_size_tokens
        weights = {_GPU: 1.0, _CPU: 0.8}
        weights.update({name.lower(): w for name, w in (medium_weights or {}).items()})
        self._weights = {**weights, _OTHER: other_medium_weight, _SPECULATIVE: speculative_weight}
        self._defaults = dict.fromkeys(self._weights, capacity)
        self._defaults[_SPECULATIVE] = (
            capacity if speculative_capacity is None else speculative_capacity
        )
        self._defaults[_ENGINE_MAP] = (
            2 * capacity if engine_map_capacity is None else engine_map_capacity
        )
        self._ttl_ns = round(speculative_ttl_s * 1e9)
        self._capacities: dict[tuple[int, str], int] = {}
        self._lrus: dict[tuple[int, str], OrderedDict[int, int]] = {}
        self._holders: dict[int, set[tuple[int, str]]] = {}
        self._maps: dict[int, OrderedDict[tuple[int, int], int]] = {}
        self._stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)

    # ------------------------------------------------------------------ keys

    def _tier(self, medium: str | None) -> str:
        name = _GPU if medium is None else medium.lower()
        return name if name in self._weights and name != _SPECULATIVE else _OTHER

    def _chain(self, tokens: npt.ArrayLike, seed: int, mixes: Sequence[int]) -> list[int]:
        data = np.asarray(tokens, dtype="<u4").tobytes()  # each id as 4 little-endian bytes
        size = 4 * self.block_size_tokens
        keys = []
        parent = seed
        for k in range(len(data) // size):
            if k < len(mixes):
                parent ^= mixes[k]
            block = data[k * size : (k + 1) * size]
            parent = xxhash.xxh64_intdigest(block + parent.to_bytes(8, "little"))
            keys.append(parent)
        return keys

    def request_keys(
        self,
        token_ids: npt.ArrayLike,
        root_name: str,
        cache_salt: str = "",
        max_blocks: int | None = None,
        *,
        extra_keys: Sequence[Sequence[object] | None] | None = None,
    ) -> list[int]:
        """The request keys of the full blocks of ``token_ids``."""
        tokens = np.asarray(token_ids, dtype=np.uint32).reshape(-1)
        if max_blocks is not None:
            tokens = tokens[: max(0, max_blocks) * self.block_size_tokens]
        mixes = [extra_key_mix(items) for items in extra_keys or ()]
        return self._chain(tokens, seed_hash(root_name, cache_salt), mixes)

    # ------------------------------------------------------------------ LRUs

    def _row(self, row: int) -> None:
        if row not in self._maps:
            self._maps[row] = OrderedDict()
            for name in self._defaults:
                self._capacities[(row, name)] = self._defaults[name]
                if name != _ENGINE_MAP:
                    self._lrus[(row, name)] = OrderedDict()

    def _insert(self, row: int, tier: str, key: int, value: int) -> None:
        lru = self._lrus[(row, tier)]
        if key in lru:
            lru.move_to_end(key)
        elif len(lru) >= self._capacities[(row, tier)]:
            oldest, _ = lru.popitem(last=False)
            self._unhold(oldest, row, tier)
        lru[key] = value
        self._holders.setdefault(key, set()).add((row, tier))

    def _drop(self, row: int, tier: str, key: int) -> bool:
        lru = self._lrus[(row, tier)]
        if key not in lru:
            return False
        del lru[key]
        self._unhold(key, row, tier)
        return True

    def _unhold(self, key: int, row: int, tier: str) -> None:
        holders = self._holders[key]
        holders.discard((row, tier))
        if not holders:
            del self._holders[key]

    def _map_insert(self, row: int, entry: tuple[int, int], key: int) -> None:
        table = self._maps[row]
        if entry in table:
            table.move_to_end(entry)
        elif len(table) >= self._capacities[(row, _ENGINE_MAP)]:
            table.popitem(last=False)
        table[entry] = key

    def _map_entries(self, row: int, engine_hash: int) -> list[tuple[int, int]]:
        """The row's map entries of ``engine_hash`` in chain order (1, 2, ..., then 0)."""
        table = self._maps[row]
        entries = []
        j = 1
        while (engine_hash, j) in table:
            entries.append((engine_hash, j))
            j += 1
        if (engine_hash, 0) in table:
            entries.append((engine_hash, 0))
        return entries

    # ------------------------------------------------------------------ events

    def block_stored(
        self,
        row: int,
        engine_hashes: npt.ArrayLike,
        parent_engine_hash: int | None,
        token_ids: npt.ArrayLike,
        engine_block_size: int,
        *,
        root_name: str,
        medium: str | None = None,
        extra_keys: Sequence[Sequence[object] | None] | None = None,
        cache_salt: str = "",
    ) -> int:
        """Apply a BlockStored event; return the keys applied or a negative status."""
        self._row(row)
        tier = self._tier(medium)
        hashes = [int(h) for h in np.asarray(engine_hashes, dtype=np.uint64).reshape(-1)]
        tokens = np.asarray(token_ids, dtype=np.uint32).reshape(-1)
        table = self._maps[row]
        if extra_keys is not None and len(extra_keys) != len(hashes):
            raise ValueError("extra_keys: expected one entry per engine block")
        if not len(tokens):  # a tier update: keys from the map
            resolved = []
            for h in hashes:
                for entry in self._map_entries(row, h):
                    table.move_to_end(entry)
                    resolved.append(table[entry])
            for key in resolved:
                self._insert(row, tier, key, 0)
            self._stats["stored_events"] += 1
            self._stats["stored_blocks"] += len(resolved)
            return len(resolved)
        size, engine_size = self.block_size_tokens, engine_block_size
        if engine_size <= 0 or len(tokens) != len(hashes) * engine_size:
            self._stats["invalid_events"] += 1
            return -3
        num_keys = len(tokens) // size
        seed: int = seed_hash(root_name, cache_salt)
        if parent_engine_hash is not None:
            if (parent_engine_hash, 0) not in table:
                if (parent_engine_hash, 1) in table:
                    self._stats["misaligned_parent_events"] += 1
                    return -2
                self._stats["unknown_parent_events"] += 1
                return -1
            table.move_to_end((parent_engine_hash, 0))
            seed = table[(parent_engine_hash, 0)]
        mixes = []
        if extra_keys is not None:
            for k in range(num_keys):
                first = k * size // engine_size
                last = ((k + 1) * size - 1) // engine_size
                items: list[object] = []
                for j in range(first, last + 1):
                    items.extend(extra_keys[j] or ())
                mixes.append(extra_key_mix(items))
        keys = self._chain(tokens[: num_keys * size], seed, mixes)
        for key in keys:
            self._insert(row, tier, key, 0)
        for j, h in enumerate(hashes):
            end = (j + 1) * engine_size
            lo, hi = j * engine_size // size, min((end - 1) // size, num_keys - 1)
            if lo > hi:
                continue
            is_parent = end % size == 0 and end // size <= num_keys
            for k in range(lo, hi if is_parent else hi + 1):
                self._map_insert(row, (h, k - lo + 1), keys[k])
            if is_parent:
                self._map_insert(row, (h, 0), keys[hi])
        self._stats["stored_events"] += 1
        self._stats["stored_blocks"] += num_keys
        return num_keys

    def block_removed(
        self, row: int, engine_hashes: npt.ArrayLike, medium: str | None = None
    ) -> int:
        """Apply a BlockRemoved event; return the entries removed."""
        self._row(row)
        tier = self._tier(medium)
        table = self._maps[row]
        removed = 0
        for value in np.asarray(engine_hashes, dtype=np.uint64).reshape(-1):
            entries = self._map_entries(row, int(value))
            if not entries:
                self._stats["unknown_removals"] += 1
                continue
            keys = [table[entry] for entry in entries]
            removed += sum(self._drop(row, tier, key) for key in keys)
            held = any(
                (row, name) in self._holders.get(key, ())
                for key in keys
                for name in self._weights
                if name != _SPECULATIVE
            )
            if not held:
                for entry in entries:
                    del table[entry]
        self._stats["removed_events"] += 1
        self._stats["removed_blocks"] += removed
        return removed

    def clear_endpoint(self, row: int) -> int:
        """Forget every entry of ``row`` (its capacities stay); return the cache entries."""
        self._row(row)
        removed = 0
        for (r, tier), lru in self._lrus.items():
            if r == row:
                for key in list(lru):
                    self._drop(row, tier, key)
                    removed += 1
        self._maps[row].clear()
        self._stats["cleared_endpoints"] += 1
        return removed

    # ------------------------------------------------------------------ speculation

    def add_speculative(self, row: int, request_keys: npt.ArrayLike, now_s: float) -> int:
        """Insert speculative entries stamped ``now_s``; return how many keys."""
        self._row(row)
        stamp = round(now_s * 1e9)
        keys = [int(k) for k in np.asarray(request_keys, dtype=np.uint64).reshape(-1)]
        for key in keys:
            self._insert(row, _SPECULATIVE, key, stamp)
        self._stats["speculative_inserted"] += len(keys)
        return len(keys)

    def expire(self, now_s: float) -> int:
        """Drop speculative entries at least the TTL old; return how many."""
        now = round(now_s * 1e9)
        expired = 0
        for (row, tier), lru in self._lrus.items():
            if tier != _SPECULATIVE:
                continue
            while lru:
                key, stamp = next(iter(lru.items()))
                if stamp + self._ttl_ns > now:
                    break
                self._drop(row, tier, key)
                expired += 1
        self._stats["speculative_expired"] += expired
        return expired

    # ------------------------------------------------------------------ matches

    def match(self, request_keys: npt.ArrayLike, out: npt.NDArray[np.float64]) -> int:
        """Tier-weighted longest prefix per row (zeroes ``out``); return the key count."""
        out[:] = 0.0
        keys = [int(k) for k in np.asarray(request_keys, dtype=np.uint64).reshape(-1)]
        active: set[int] | None = None
        for key in keys:
            holders = self._holders.get(key)
            if not holders:
                break
            best: dict[int, float] = {}
            for row, tier in holders:
                weight = self._weights[tier]
                if weight > best.get(row, -1.0):
                    best[row] = weight
            active = set(best) if active is None else active & best.keys()
            if not active:
                break
            for row in active:
                out[row] += best[row]
        return len(keys)

    def match_tokens(
        self,
        token_ids: npt.ArrayLike,
        root_name: str,
        cache_salt: str,
        out: npt.NDArray[np.float64],
        max_blocks: int | None = None,
    ) -> list[int]:
        """:meth:`request_keys` then :meth:`match`; return the keys."""
        keys = self.request_keys(token_ids, root_name, cache_salt, max_blocks)
        self.match(keys, out)
        return keys

    # ------------------------------------------------------------------ capacities

    def set_capacity(self, row: int, tier: str, num_blocks: int) -> int:
        """Set a tier's (or ``engine_map``'s) capacity; evict beyond it; return how many."""
        self._row(row)
        tier = tier.lower()
        self._capacities[(row, tier)] = num_blocks
        evicted = 0
        if tier == _ENGINE_MAP:
            table = self._maps[row]
            while len(table) > num_blocks:
                table.popitem(last=False)
                evicted += 1
            return evicted
        lru = self._lrus[(row, tier)]
        while len(lru) > num_blocks:
            self._drop(row, tier, next(iter(lru)))
            evicted += 1
        return evicted

    def capacity(self, row: int, tier: str) -> int:
        """A tier's capacity (the default for a row not seen yet)."""
        return self._capacities.get((row, tier.lower()), self._defaults[tier.lower()])

    # ------------------------------------------------------------------ inspection

    def size(self) -> int:
        """Cache entries in all tiers."""
        return sum(len(lru) for lru in self._lrus.values())

    def num_engine_keys(self) -> int:
        """Entries of all engine maps."""
        return sum(len(table) for table in self._maps.values())

    def endpoint_size(self, row: int, tier: str | None = None) -> int:
        """Entries of ``row`` in ``tier`` (``engine_map``: its map), or in all tiers."""
        if row not in self._maps:
            return 0
        if tier is None:
            return sum(len(lru) for (r, _), lru in self._lrus.items() if r == row)
        if tier.lower() == _ENGINE_MAP:
            return len(self._maps[row])
        return len(self._lrus[(row, tier.lower())])

    def lru_order(self, row: int, tier: str) -> list[int]:
        """Keys of ``row``'s ``tier`` oldest first (``engine_map``: mapped request keys)."""
        if row not in self._maps:
            return []
        if tier.lower() == _ENGINE_MAP:
            return list(self._maps[row].values())
        return list(self._lrus[(row, tier.lower())])

    def stats(self) -> dict[str, int]:
        """Event counters, named as ``PreciseIndex.stats``."""
        return dict(self._stats)
