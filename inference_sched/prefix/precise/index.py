"""The precise prefix index: what each endpoint's KV cache holds, from the engines' events.

llm-d's precise prefix routing indexes the blocks the engines *report* (BlockStored /
BlockRemoved / AllBlocksCleared) instead of guessing from past picks (llm-d-kv-cache:
``pkg/kvcache/kvblock/index.go`` and ``in_memory.go``; ``docs/precise-index.md``). This is
that index in numpy arrays driven by the Numba kernels of
:mod:`inference_sched.kernels.precise_index`. Endpoints are
:class:`~inference_sched.state.table.EndpointTable` rows; the caller clears a row
(:meth:`PreciseIndex.clear_endpoint`) when the table frees or reuses it.

The index is split in three modules: :mod:`~inference_sched.prefix.precise.keys` (request
keys, engine keys, extra keys), :mod:`~inference_sched.prefix.precise.events` (applying
KV events, one by one or in batches) and this one (the store, tiers, speculation,
matching, capacities).

**Tiers (design note).** One store holds every (request key, endpoint, tier) entry; the
tier is part of the LRU id (``row * 8 + tier``), so each (endpoint, tier) has its own
bounded LRU while all tiers of all endpoints sit on the key's single list. Tiers: ``gpu``
(weight 1.0), ``cpu`` (0.8), up to three more media with weights of their own, ``other``
(any other medium, 0.8 by default) and ``speculative`` (1.0: entries inserted for the
pick, expiring after a TTL). The engine-key map is one more LRU per endpoint in the same
store. Why not one store per tier: a match would then probe one table per tier for every
key (three cache misses instead of one, on the hot path), rows would have to be kept in
step across stores, and each store would carry its own growth; one store reads every tier
with one probe and is a :class:`~inference_sched.prefix.index.PrefixIndex` (its table,
lists, growth and kernels) whose "rows" are the (endpoint, tier) LRUs.
Why not one node per (key, endpoint) with a tier mask: a node can sit in one LRU list
only, and per-tier capacities and per-tier removal (BlockRemoved names a medium) need an
LRU per tier.

**Matching** (llm-d-kv-cache's LongestPrefix scorer, ``pkg/kvcache/kvblock_scorer.go``):
for each row, walking the keys in order, a row stays active while it holds every key so
far in some tier and accumulates, per key, the largest weight among its tiers there; its
first missing key drops it for good. ``out[row]`` is that sum (the number of matched
blocks when all are on GPU); a scorer divides by the number of keys (absolute
normalisation, as llm-d since PR #1107).

**Memory.** Each entry is a 20-byte node plus an 8-byte payload (the request key of a map
entry, the stamp of a speculative one) plus 12 bytes per table slot at load 0.35-0.7:
about 45-62 bytes per (key, endpoint, tier) entry, and one more entry per engine block
in the map (when the engine block size equals ours). Every LRU is bounded: per endpoint
and tier by its capacity (:meth:`PreciseIndex.set_capacity`; the default is GIE's 31,250
blocks of the index's size, and the plugin should set the GPU tier from the endpoint's
``num_gpu_blocks``), and the map by its own (default: twice the tier default).

Concurrency contract: **one writer, and no reader while it writes**, as for
:class:`~inference_sched.prefix.index.PrefixIndex`: every method that changes the index
(events, speculation, expiry, capacities) must be serialised with every other call;
concurrent :meth:`PreciseIndex.match` / :meth:`PreciseIndex.match_tokens` calls with no
writer running are safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from inference_sched.kernels import precise_index as _k
from inference_sched.kernels import prefix_index as _pk
from inference_sched.prefix._checks import check_int, check_out
from inference_sched.prefix.hashing import as_token_ids, chain_seed
from inference_sched.prefix.index import PrefixIndex, _as_keys
from inference_sched.prefix.precise import keys as _keys
from inference_sched.prefix.precise.events import (
    STATUS_INVALID,
    STATUS_MISALIGNED_PARENT,
    STATUS_UNKNOWN_PARENT,
    EventBatch,
    EventBatchBuilder,
    EventMethods,
)
from inference_sched.prefix.precise.keys import (
    checked_row,
    extra_key_mix,
    split_vllm_extra_keys,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "PreciseIndex",
    # Defined in events.py and keys.py; importable from here too, as before the split.
    "STATUS_INVALID",
    "STATUS_MISALIGNED_PARENT",
    "STATUS_UNKNOWN_PARENT",
    "EventBatch",
    "EventBatchBuilder",
    "extra_key_mix",
    "split_vllm_extra_keys",
]

_GPU: Final = "gpu"
_CPU: Final = "cpu"
_SPECULATIVE: Final = "speculative"
_OTHER: Final = "other"
_ENGINE_MAP: Final = "engine_map"

DEFAULT_CAPACITY: Final = 31_250
"""Blocks per endpoint and tier when nothing better is known (GIE's lruCapacityPerServer)."""

_MAX_CAPACITY: Final = 2**31 - 1
_NUM_NAMED: Final = _k._TIER_OTHER - _k._FIRST_NAMED_TIER
_COUNTER_NAMES: Final = (
    ("stored_events", _k._C_STORED_EVENTS),
    ("stored_blocks", _k._C_STORED_BLOCKS),
    ("unknown_parent_events", _k._C_UNKNOWN_PARENT),
    ("misaligned_parent_events", _k._C_MISALIGNED_PARENT),
    ("invalid_events", _k._C_INVALID),
    ("removed_events", _k._C_REMOVED_EVENTS),
    ("removed_blocks", _k._C_REMOVED_BLOCKS),
    ("unknown_removals", _k._C_UNKNOWN_REMOVALS),
    ("cleared_endpoints", _k._C_CLEARED),
    ("speculative_inserted", _k._C_SPECULATIVE_INSERTED),
    ("speculative_expired", _k._C_SPECULATIVE_EXPIRED),
)


# --------------------------------------------------------------------------- tiers


class _Tiers:
    """Tier codes and weights: gpu, cpu, speculative, named media, other."""

    def __init__(
        self,
        medium_weights: Mapping[str, float] | None,
        other_medium_weight: float,
        speculative_weight: float,
    ) -> None:
        weights = {_GPU: 1.0, _CPU: 0.8}
        for name, weight in (medium_weights or {}).items():
            weights[str(name).lower()] = weight
        named = [name for name in weights if name not in (_GPU, _CPU)]
        if len(named) > _NUM_NAMED:
            raise ValueError(
                f"medium_weights: at most {_NUM_NAMED} media besides gpu and cpu, got "
                f"{named!r}; others share the 'other' tier (other_medium_weight)"
            )
        for name in named:
            if name in (_SPECULATIVE, _OTHER, _ENGINE_MAP):
                raise ValueError(f"medium_weights: {name!r} is a reserved tier name")
        self.names = [_GPU, _CPU, _SPECULATIVE, _ENGINE_MAP] + [""] * _NUM_NAMED + [_OTHER]
        self.weights = np.full(_k._NUM_TIERS, -1.0)  # < 0: never matched (unused, the map)
        self.weights[_k._TIER_GPU] = weights[_GPU]
        self.weights[_k._TIER_CPU] = weights[_CPU]
        self.weights[_k._TIER_SPECULATIVE] = speculative_weight
        self.weights[_k._TIER_OTHER] = other_medium_weight
        self.codes = {_GPU: _k._TIER_GPU, _CPU: _k._TIER_CPU}
        for i, name in enumerate(named):
            code = _k._FIRST_NAMED_TIER + i
            self.names[code] = name
            self.weights[code] = weights[name]
            self.codes[name] = code
        for tier, weight in zip(self.names, self.weights.tolist(), strict=True):
            if tier and tier != _ENGINE_MAP and not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of tier {tier!r}: expected a finite float >= 0")
        self._by_medium: dict[str | None, int] = {None: _k._TIER_GPU}
        # The codes a medium can map to (the tiers of BlockStored / BlockRemoved).
        self.cache_codes = [*sorted(self.codes.values()), _k._TIER_OTHER]

    def of_medium(self, medium: str | None) -> int:
        """The tier of an event's ``medium``: None is gpu; case-insensitive."""
        code = self._by_medium.get(medium)
        if code is None:
            if not isinstance(medium, str):
                raise TypeError(f"medium: expected str or None, got {type(medium).__name__}")
            code = self.codes.get(medium.lower(), _k._TIER_OTHER)
            if len(self._by_medium) < 256:  # engines report a handful of media
                self._by_medium[medium] = code
        return code

    def of_name(self, tier: str) -> int:
        """The code of a tier name (``gpu``, ``cpu``, a named medium, ``other``,
        ``speculative``, or ``engine_map`` for the engine-key map)."""
        name = tier.lower() if isinstance(tier, str) else tier
        if name in self.names and name:
            return self.names.index(name)
        valid = [n for n in self.names if n]
        raise ValueError(f"tier: expected one of {valid}, got {tier!r}")


def _to_ns(seconds: float) -> int:
    """Seconds (a monotonic clock) as integer nanoseconds, the stamps' unit."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"now_s: expected a finite time >= 0, got {seconds!r}")
    return round(seconds * 1e9)


# --------------------------------------------------------------------------- the index


class _Store(PrefixIndex):
    """A :class:`PrefixIndex` whose nodes carry a uint64 payload (kept in step with the
    node pool), plus the event counters; its rows are the precise index's LRU ids."""

    def __init__(self, *, initial_slots: int, initial_entries: int, initial_rows: int) -> None:
        super().__init__(
            initial_slots=initial_slots, initial_entries=initial_entries, initial_rows=initial_rows
        )
        self._payload = np.empty(self._nodes.shape[0], dtype=np.uint64)
        self.counters = np.zeros(_k._NUM_COUNTERS, dtype=np.int64)

    def state(
        self,
    ) -> tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.int32],
        npt.NDArray[np.int32],
        npt.NDArray[np.int32],
        npt.NDArray[np.int64],
        npt.NDArray[np.uint64],
        npt.NDArray[np.int64],
    ]:
        """The arrays the event and speculation kernels take first (read them again
        after :meth:`grow`: it replaces some)."""
        return (*self._lists(), self._payload, self.counters)

    def grow(self) -> None:
        """Grow the pools to what the last kernel call reported it needs."""
        counters = self.counters
        self._ensure_capacity(int(counters[_k._C_NEED_NODES]), int(counters[_k._C_NEED_HASHES]))

    def _resize_nodes(self, num_nodes: int) -> None:
        super()._resize_nodes(num_nodes)
        payload = np.empty(num_nodes, dtype=np.uint64)
        high = int(self._meta[_pk._M_HIGH])
        payload[:high] = self._payload[:high]
        self._payload = payload

    @property
    def nbytes(self) -> int:
        return super().nbytes + self._payload.nbytes + self.counters.nbytes


class PreciseIndex(EventMethods):
    """Request key -> (endpoint row, tier) entries from KV events, plus speculation.

    Ingestion (plain arrays in; ``row`` is an EndpointTable row): :meth:`block_stored`,
    :meth:`block_removed`, :meth:`clear_endpoint`, or :meth:`apply_events` for a batch
    (inherited from :class:`~inference_sched.prefix.precise.events.EventMethods`);
    speculation: :meth:`add_speculative` after a pick and :meth:`expire`; matching:
    :meth:`match` over request keys or the fused :meth:`match_tokens`. See the module
    docstring for the tiers, memory and the concurrency contract (single writer), and
    :mod:`~inference_sched.prefix.precise.keys` for the keys. Any uint64 value, 0
    included, is a valid engine hash.
    """

    def __init__(
        self,
        *,
        block_size_tokens: int = 16,
        capacity: int = DEFAULT_CAPACITY,
        speculative_capacity: int | None = None,
        engine_map_capacity: int | None = None,
        medium_weights: Mapping[str, float] | None = None,
        other_medium_weight: float = 0.8,
        speculative_weight: float = 1.0,
        speculative_ttl_s: float = 2.0,
        initial_entries: int = 1024,
        initial_rows: int = 16,
    ) -> None:
        """Create an empty index.

        Args:
            block_size_tokens: tokens per index block (request key); the engines' block
                size should be a multiple of it (see :meth:`block_stored`).
            capacity: default LRU capacity, in index blocks, of every cache tier of an
                endpoint (change one with :meth:`set_capacity`).
            speculative_capacity: default capacity of the speculative tier (``capacity``).
            engine_map_capacity: default capacity of an endpoint's engine-key map
                (``2 * capacity``: a GPU and a CPU copy of each block).
            medium_weights: weights of media (lower-cased) on top of ``gpu`` 1.0 and
                ``cpu`` 0.8; at most three media besides those two get their own tier.
            other_medium_weight: weight of every medium not in ``medium_weights``.
            speculative_weight: weight of a speculative entry (llm-d: like a real one).
            speculative_ttl_s: how long a speculative entry lives.
            initial_entries: entries to make room for up front (the pools grow anyway).
            initial_rows: endpoint rows to make room for up front.

        Raises:
            ValueError: a size or capacity < 1, a weight that is not finite and >= 0, a
                TTL <= 0, or more than three extra media.
        """
        self.block_size_tokens = check_int("block_size_tokens", block_size_tokens, 1)
        tier_capacity = check_int("capacity", capacity, 1, _MAX_CAPACITY)
        speculative = check_int(
            "speculative_capacity",
            tier_capacity if speculative_capacity is None else speculative_capacity,
            1,
            _MAX_CAPACITY,
        )
        engine_map = check_int(
            "engine_map_capacity",
            min(2 * tier_capacity, _MAX_CAPACITY)
            if engine_map_capacity is None
            else engine_map_capacity,
            1,
            _MAX_CAPACITY,
        )
        if not (math.isfinite(speculative_ttl_s) and speculative_ttl_s > 0):
            raise ValueError(f"speculative_ttl_s: expected > 0, got {speculative_ttl_s!r}")
        self._tiers = _Tiers(medium_weights, other_medium_weight, speculative_weight)
        self._default_capacities = np.full(_k._NUM_TIERS, tier_capacity, dtype=np.int32)
        self._default_capacities[_k._TIER_SPECULATIVE] = speculative
        self._default_capacities[_k._TIER_ENGINE_MAP] = engine_map
        self._ttl_ns = np.uint64(_to_ns(speculative_ttl_s))
        self._store = _Store(
            initial_slots=1024,
            initial_entries=max(int(initial_entries), 1),
            initial_rows=_k._NUM_TIERS * max(int(initial_rows), 1),
        )
        self._next_due = np.full(1, _k._NEVER, dtype=np.uint64)
        self._num_rows = 0  # 1 + the largest row seen

    # ------------------------------------------------------------------ keys

    @property
    def tier_weights(self) -> dict[str, float]:
        """The weight of each tier, by name."""
        return {
            name: float(weight)
            for name, weight in zip(self._tiers.names, self._tiers.weights.tolist(), strict=True)
            if name and name != _ENGINE_MAP
        }

    def tier_of(self, medium: str | None) -> int:
        """The tier code of an event's ``medium`` (for :class:`EventBatch`)."""
        return self._tiers.of_medium(medium)

    @staticmethod
    def root_seed(root_name: str, cache_salt: str = "") -> np.uint64:
        """The chain seed of a root: ``chain_seed(root_name, cache_salt)``."""
        return chain_seed(root_name, cache_salt)

    def request_keys(
        self,
        token_ids: npt.ArrayLike,
        root_name: str,
        cache_salt: str = "",
        max_blocks: int | None = None,
        *,
        extra_keys: Sequence[Sequence[object] | None] | None = None,
    ) -> npt.NDArray[np.uint64]:
        """The request keys of the full blocks of ``token_ids`` (at most ``max_blocks``).

        Args:
            token_ids: the prompt's token ids (uint32).
            root_name: the LoRA adapter's name when the request uses one, else the model.
            cache_salt: the request's ``cache_salt`` ("" for none).
            max_blocks: most keys to compute (None: every full block).
            extra_keys: per index block, its extra keys (None or a sequence; see
                :func:`~inference_sched.prefix.precise.keys.extra_key_mix`); blocks past
                the end have none.
        """
        return _keys.request_keys(
            token_ids, self.block_size_tokens, root_name, cache_salt, max_blocks, extra_keys
        )

    # ------------------------------------------------------------------ speculation

    def add_speculative(self, row: int, request_keys: npt.ArrayLike, now_s: float) -> int:
        """Insert ``request_keys`` as speculative entries of ``row`` (llm-d's speculative
        indexing: the pick's prefix is visible before the engine's BlockStored arrives).

        They weigh ``speculative_weight`` and expire ``speculative_ttl_s`` after
        ``now_s`` (a key inserted again is restamped); a BlockStored for the same key
        adds the real entry beside it. ``now_s`` must come from a monotonic clock.
        Returns the number of keys inserted.
        """
        keys = _as_keys(request_keys)
        row = checked_row(row)
        now_ns = _to_ns(now_s)
        self._start_rows(row)
        stamp = np.uint64(now_ns)
        while True:
            n = _k._add_speculative(*self._store.state(), row, keys, stamp)
            if n != _k._STATUS_NEED_ROOM:
                break
            self._store.grow()
        if n:
            self._next_due[0] = min(int(self._next_due[0]), now_ns + int(self._ttl_ns))
        return int(n)

    def expire(self, now_s: float) -> int:
        """Drop speculative entries at least ``speculative_ttl_s`` old; return how many.

        Cheap to call before every match: it returns at once until the earliest entry
        is due.
        """
        now_ns = _to_ns(now_s)
        if now_ns < int(self._next_due[0]):
            return 0
        return int(
            _k._expire(
                *self._store.state(),
                self._num_rows,
                np.uint64(now_ns),
                self._ttl_ns,
                self._next_due,
            )
        )

    # ------------------------------------------------------------------ matches

    def match(self, request_keys: npt.ArrayLike, out: npt.NDArray[np.float64]) -> int:
        """Tier-weighted longest prefix per row (llm-d's LongestPrefix scorer).

        ``out[row]`` becomes the sum, over the leading keys the row holds consecutively
        (in any tier), of the largest weight among its tiers at each key; 0 for rows
        that miss the first key or have no entries.

        Args:
            request_keys: the request's keys (uint64), first block first.
            out: float64, indexed by row, at least as long as the largest row seen + 1;
                zeroed first.

        Returns:
            The number of request keys (the scorer's denominator).
        """
        keys = _as_keys(request_keys)
        check_out("out", out, self._num_rows)
        return int(_k._match_tiers(*self._store._table(), keys, self._tiers.weights, out))

    def match_tokens(
        self,
        token_ids: npt.ArrayLike,
        root_name: str,
        cache_salt: str,
        out: npt.NDArray[np.float64],
        max_blocks: int | None = None,
        *,
        extra_keys: Sequence[Sequence[object] | None] | None = None,
        all_keys: bool = True,
    ) -> npt.NDArray[np.uint64]:
        """:meth:`request_keys` then :meth:`match`, in one kernel call (the hot path).

        Args:
            token_ids, root_name, cache_salt, max_blocks, extra_keys: as
                :meth:`request_keys`.
            out: as :meth:`match`.
            all_keys: False stops hashing soon after the match is decided (the first
                block no endpoint can continue on, rounded up to a step of 32 blocks),
                which saves most of the hashing when the match is short; the keys
                returned are then a prefix of the request's, and the scorer's
                denominator is :meth:`num_request_keys` instead of their count.

        Returns:
            The request keys (uint64), all of them by default: their count is then the
            scorer's denominator, and the plugin passes them to :meth:`add_speculative`
            after the pick.
        """
        tokens = as_token_ids(token_ids)
        check_out("out", out, self._num_rows)
        keys = np.empty(self.num_request_keys(tokens.shape[0], max_blocks), dtype=np.uint64)
        count = _k._hash_match_tiers(
            *self._store._table(),
            tokens,
            self.block_size_tokens,
            keys.shape[0],
            chain_seed(root_name, cache_salt),
            _keys.request_mixes(extra_keys),
            self._tiers.weights,
            bool(all_keys),
            keys,
            out,
        )
        return keys[:count]

    def num_request_keys(self, num_tokens: int, max_blocks: int | None = None) -> int:
        """How many request keys a prompt of ``num_tokens`` tokens has (full blocks, at
        most ``max_blocks``): the scorer's denominator."""
        return _keys.num_request_keys(num_tokens, self.block_size_tokens, max_blocks)

    # ------------------------------------------------------------------ capacities

    def set_capacity(self, row: int, tier: str, num_blocks: int) -> int:
        """Set the LRU capacity of ``row``'s ``tier`` (``gpu``, ``cpu``, a named medium,
        ``other``, ``speculative``, or ``engine_map``); return the entries evicted.

        Takes effect at once: a smaller capacity evicts the oldest entries. The plugin
        sets ``gpu`` from the endpoint's ``num_gpu_blocks`` (engine blocks) times the
        engine block size over ours.
        """
        row = checked_row(row)
        code = self._tiers.of_name(tier)
        capacity = check_int("num_blocks", num_blocks, 1, _MAX_CAPACITY)
        self._start_rows(row)
        lru = row * _k._NUM_TIERS + code
        return int(_k._set_capacity(*self._store._lists(), lru, capacity))

    def capacity(self, row: int, tier: str) -> int:
        """The LRU capacity of ``row``'s ``tier`` (the default for a row not seen yet)."""
        row = checked_row(row)
        code = self._tiers.of_name(tier)
        if row >= self._num_rows:
            return int(self._default_capacities[code])
        return int(self._store._eps[row * _k._NUM_TIERS + code, _pk._EP_CAPACITY])

    def reserve(self, num_entries: int) -> None:
        """Make room for ``num_entries`` entries (cache and map) without reallocating."""
        self._store.reserve(num_entries)

    # ------------------------------------------------------------------ inspection

    def size(self) -> int:
        """Cache entries (key, row, tier) in all tiers, speculative included."""
        return int(self._store._meta[_pk._M_ENTRIES]) - self.num_engine_keys()

    def num_engine_keys(self) -> int:
        """Entries of all endpoints' engine-key maps."""
        sizes = self._store._eps[_k._TIER_ENGINE_MAP :: _k._NUM_TIERS, _pk._EP_SIZE]
        return int(sizes[: self._num_rows].sum())

    def endpoint_size(self, row: int, tier: str | None = None) -> int:
        """Entries of ``row`` in ``tier`` (``engine_map`` for its map), or in all its
        cache tiers when ``tier`` is None."""
        row = checked_row(row)
        if row >= self._num_rows:
            return 0
        sizes = self._store._eps[row * _k._NUM_TIERS : (row + 1) * _k._NUM_TIERS, _pk._EP_SIZE]
        if tier is None:
            return int(sizes.sum()) - int(sizes[_k._TIER_ENGINE_MAP])
        return int(sizes[self._tiers.of_name(tier)])

    def lru_order(self, row: int, tier: str) -> list[int]:
        """``row``'s keys in ``tier`` from least to most recently used (for tests); for
        ``engine_map``, the request keys its entries map to."""
        n = self.endpoint_size(row, tier)
        if n == 0:
            return []
        lru = row * _k._NUM_TIERS + self._tiers.of_name(tier)
        store = self._store
        if lru % _k._NUM_TIERS == _k._TIER_ENGINE_MAP:
            payloads = np.empty(n, dtype=np.uint64)
            _k._lru_payloads(store._nodes, store._eps, store._payload, lru, payloads)
            return [int(h) for h in payloads]
        out = np.empty(n, dtype=np.int64)
        _pk._lru_hashes(store._keys, store._nodes, store._eps, lru, out)
        return [int(h) for h in out.view(np.uint64)]

    def stats(self) -> dict[str, int]:
        """Event counters since creation (llm-d drops what it cannot place; we count)."""
        counters = self._store.counters.tolist()
        return {name: int(counters[i]) for name, i in _COUNTER_NAMES}

    @property
    def num_rows(self) -> int:
        """1 + the largest row seen: the length ``out`` must have."""
        return self._num_rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (allocated, including pool headroom)."""
        return self._store.nbytes + self._next_due.nbytes

    def __repr__(self) -> str:
        return (
            f"PreciseIndex(size={self.size()}, engine_keys={self.num_engine_keys()}, "
            f"rows={self._num_rows}, nbytes={self.nbytes})"
        )

    # ------------------------------------------------------------------ internals

    def _start_rows(self, row: int) -> None:
        """Start rows up to ``row`` (checked) with the default capacities, if new."""
        if row < self._num_rows:
            return
        store = self._store
        num_lrus = (row + 1) * _k._NUM_TIERS
        if num_lrus > store._eps.shape[0]:
            store._grow_endpoints(num_lrus)
        first = self._num_rows * _k._NUM_TIERS
        store._eps[first:num_lrus, _pk._EP_CAPACITY] = np.tile(
            self._default_capacities, row + 1 - self._num_rows
        )
        self._num_rows = row + 1
