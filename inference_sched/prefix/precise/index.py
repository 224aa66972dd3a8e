"""The precise prefix index: what each endpoint's KV cache holds, from the engines' events.

llm-d's precise prefix routing (``specs/peers.md`` A.4, B.2-B.5, H.2) indexes the blocks the
engines *report* (BlockStored / BlockRemoved / AllBlocksCleared) instead of guessing from
past picks. This is that index in numpy arrays driven by the Numba kernels of
:mod:`inference_sched.kernels.precise_index`. Endpoints are
:class:`~inference_sched.state.table.EndpointTable` rows; the caller clears a row
(:meth:`PreciseIndex.clear_endpoint`) when the table frees or reuses it.

**Dual keys.** *Request keys* are our own chained xxh64 hashes of full token blocks,
exactly the token mode of :mod:`inference_sched.prefix.hashing`: block ``i`` hashes to
``xxh64(tokens_i as uint32 LE ‖ uint64_le(parent_i))`` where ``parent_0 = chain_seed(root,
cache_salt)`` (``root`` = the LoRA name when there is one, else the model name) and
``parent_i = key_{i-1}``; a trailing partial block gets no key. A block with extra keys
(multimodal ids) xors :func:`extra_key_mix` of them into its parent before hashing, on
the request side and the event side alike; blocks without extras are the plain chain. So
continuing a chain from a known key = hashing with that key as the seed. *Engine keys*
are the engine's own block hashes (uint64); a bounded per-endpoint map engine key ->
request keys, filled by BlockStored, resolves BlockRemoved and BlockStored's
``parent_block_hash``. No dependence on the engine's hash algorithm, seed or block size.

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

**Matching** (B.5 LongestPrefix): for each row, walking the keys in order, a row stays
active while it holds every key so far in some tier and accumulates, per key, the largest
weight among its tiers there; its first missing key drops it for good. ``out[row]`` is
that sum (the number of matched blocks when all are on GPU); a scorer divides by the
number of keys (absolute normalisation, as llm-d since PR #1107).

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
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.kernels import precise_index as _k
from inference_sched.kernels import prefix_index as _pk
from inference_sched.prefix.hashing import chain_seed, readonly
from inference_sched.prefix.index import PrefixIndex, _as_keys

__all__ = [
    "DEFAULT_CAPACITY",
    "STATUS_INVALID",
    "STATUS_MISALIGNED_PARENT",
    "STATUS_UNKNOWN_PARENT",
    "EventBatch",
    "EventBatchBuilder",
    "PreciseIndex",
    "extra_key_mix",
    "split_vllm_extra_keys",
]

STATUS_UNKNOWN_PARENT: Final = _k._STATUS_UNKNOWN_PARENT
"""BlockStored status: the parent engine block is not in the endpoint's map (dropped)."""
STATUS_MISALIGNED_PARENT: Final = _k._STATUS_MISALIGNED_PARENT
"""BlockStored status: the parent engine block is known but ends inside an index block,
so the chain cannot continue from it (engine block size not a multiple of ours)."""
STATUS_INVALID: Final = _k._STATUS_INVALID
"""BlockStored status: ``len(token_ids)`` is neither 0 nor hashes x engine block size
(vLLM's sliding-window and Mamba groups name fewer hashes than blocks: not indexed)."""

_GPU: Final = "gpu"
_CPU: Final = "cpu"
_SPECULATIVE: Final = "speculative"
_OTHER: Final = "other"
_ENGINE_MAP: Final = "engine_map"

DEFAULT_CAPACITY: Final = 31_250
"""Blocks per endpoint and tier when nothing better is known (GIE's lruCapacityPerServer)."""

_MAX_ROW: Final = (2**31 - 1) // _k._NUM_TIERS - 1  # the largest LRU id fits int32
_MAX_CAPACITY: Final = 2**31 - 1
_NUM_NAMED: Final = _k._TIER_OTHER - _k._FIRST_NAMED_TIER
_UINT32: Final = np.dtype(np.uint32)
_UINT64: Final = np.dtype(np.uint64)
_NO_MIXES: Final = np.zeros(0, dtype=np.uint64)
_NO_TOKENS: Final = np.zeros(0, dtype=np.uint32)
_NO_HASHES: Final = np.zeros(0, dtype=np.uint64)
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


# --------------------------------------------------------------------------- extra keys


def _encode(item: object, out: list[bytes]) -> None:
    """Append a self-delimiting encoding of ``item`` (type tag, length, bytes)."""
    if item is None:
        out.append(b"N")
    elif isinstance(item, bool | np.bool_):
        out.append(b"T" if item else b"F")
    elif isinstance(item, numbers.Integral):
        _tagged(b"I", str(int(item)).encode("ascii"), out)
    elif isinstance(item, numbers.Real):
        _tagged(b"D", float(item).hex().encode("ascii"), out)
    elif isinstance(item, str):
        _tagged(b"S", item.encode("utf-8"), out)
    elif isinstance(item, bytes | bytearray | memoryview):
        _tagged(b"B", bytes(item), out)
    elif isinstance(item, list | tuple):
        out.append(b"L" + len(item).to_bytes(8, "little"))
        for child in item:
            _encode(child, out)
    else:
        raise TypeError(
            "extra keys: expected str, bytes, int, float, bool, None or a list/tuple of "
            f"them, got {type(item).__name__}"
        )


def _tagged(tag: bytes, data: bytes, out: list[bytes]) -> None:
    out.append(tag + len(data).to_bytes(8, "little"))
    out.append(data)


def extra_key_mix(items: Sequence[object] | None) -> int:
    """The value a block's extra keys xor into its parent key; 0 for none.

    ``items`` are the block's extra keys (multimodal ids, prompt-embedding hashes, ...):
    strings, bytes, ints, floats, bools, None, or lists/tuples of them (lists and tuples
    are the same, so msgpack-decoded keys match Python ones). Duplicates are dropped
    (first occurrence kept), then the items' self-delimiting encodings (type tag, 8-byte
    length, bytes; ints in decimal) are concatenated and hashed with xxh64; a digest of 0
    becomes 1, so only "no extra keys" mixes 0.

    Raises:
        TypeError: an item of another type.
    """
    if not items:
        return 0
    encoded: dict[bytes, None] = {}
    for item in items:
        parts: list[bytes] = []
        _encode(item, parts)
        encoded[b"".join(parts)] = None
    digest: int = xxhash.xxh64_intdigest(b"".join(encoded))
    return digest or 1


def split_vllm_extra_keys(
    extra_keys: Sequence[Sequence[object] | None] | None, lora_name: str | None = None
) -> tuple[list[tuple[object, ...] | None] | None, str]:
    """Split a vLLM BlockStored's ``extra_keys`` into content keys and the cache salt.

    vLLM gives each block ``lora names + multimodal keys + cache_salt (block 0 only) +
    prompt-embedding hashes (bytes)`` (``kv_cache_utils.generate_block_hash_extra_keys``).
    Here the LoRA name is the chain's root and the salt its seed's salt, so both come
    out: a leading item equal to ``lora_name`` is dropped from every block, and in block
    0 the string right before the trailing bytes items (if any) is taken as the salt.
    What is left (multimodal ``(identifier, offset)`` pairs, embedding hashes) is what
    :meth:`PreciseIndex.block_stored` mixes in; the request side must produce the same
    items per index block (offsets relative to the block: use the engine's block size).

    Returns:
        ``(content_keys, cache_salt)``: one entry per block (None when nothing is left;
        the whole list None when no block has any), and the salt ("" for none).
    """
    if extra_keys is None:
        return None, ""
    content: list[tuple[object, ...] | None] = []
    salt = ""
    for k, entry in enumerate(extra_keys):
        items = list(entry or ())
        if lora_name is not None and items and items[0] == lora_name:
            items.pop(0)
        if k == 0:
            tail = len(items)
            while tail > 0 and isinstance(items[tail - 1], bytes | bytearray):
                tail -= 1
            if tail > 0 and isinstance(items[tail - 1], str):
                salt = str(items.pop(tail - 1))
        content.append(tuple(items) or None)
    return (content if any(content) else None), salt


def _request_mixes(extra_keys: Sequence[Sequence[object] | None] | None) -> npt.NDArray[np.uint64]:
    """Mixes of request blocks ``0..len(extra_keys)`` (later blocks mix nothing)."""
    if not extra_keys:
        return _NO_MIXES
    mixes = np.fromiter((extra_key_mix(items) for items in extra_keys), _UINT64, len(extra_keys))
    return mixes if mixes.any() else _NO_MIXES


def _event_mixes(
    extra_keys: Sequence[Sequence[object] | None] | None,
    num_engine_blocks: int,
    engine_block_size: int,
    num_tokens: int,
    block_size: int,
) -> npt.NDArray[np.uint64]:
    """Per index block, the mix of the extra keys of the engine blocks it overlaps (in
    order); with equal block sizes, each engine block's own. llm-d realigns the same way:
    replicated when an engine block spans several index blocks, merged otherwise."""
    if extra_keys is None:
        return _NO_MIXES
    if len(extra_keys) != num_engine_blocks:
        raise ValueError(
            f"extra_keys: expected one entry per engine block ({num_engine_blocks}), "
            f"got {len(extra_keys)}"
        )
    if not any(extra_keys) or num_tokens != num_engine_blocks * engine_block_size:
        return _NO_MIXES  # nothing to mix, or an invalid event the kernel rejects
    num_keys = num_tokens // block_size
    mixes = np.zeros(num_keys, dtype=np.uint64)
    for k in range(num_keys):
        first = k * block_size // engine_block_size
        last = ((k + 1) * block_size - 1) // engine_block_size
        items: list[object] = []
        for j in range(first, last + 1):
            items.extend(extra_keys[j] or ())
        mixes[k] = extra_key_mix(items)
    return mixes if mixes.any() else _NO_MIXES


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


# --------------------------------------------------------------------------- batches


@attrs.frozen(eq=False)
class EventBatch:
    """KV events of one or more endpoints as flat arrays, applied in order by
    :meth:`PreciseIndex.apply_events` (one kernel call for the whole batch).

    Event ``i`` is ``kinds[i]`` (0 stored, 1 removed, 2 cleared) for endpoint
    ``rows[i]``; its engine hashes are ``engine_hashes[engine_offsets[i]:engine_offsets[i
    + 1]]`` and likewise its token ids and its per-index-block extra-key mixes. ``tiers``
    come from :meth:`PreciseIndex.tier_of`, ``seeds`` (root-level stored events) from
    :meth:`PreciseIndex.root_seed`; the mixes from :func:`extra_key_mix`, realigned to
    index blocks. :class:`EventBatchBuilder` fills all of it from per-event calls.
    """

    kinds: npt.NDArray[np.int8]
    rows: npt.NDArray[np.int32]
    tiers: npt.NDArray[np.int8]
    seeds: npt.NDArray[np.uint64]
    has_parent: npt.NDArray[np.bool_]
    parents: npt.NDArray[np.uint64]
    engine_offsets: npt.NDArray[np.int64]
    engine_hashes: npt.NDArray[np.uint64]
    token_offsets: npt.NDArray[np.int64]
    token_ids: npt.NDArray[np.uint32]
    engine_block_sizes: npt.NDArray[np.int32]
    mix_offsets: npt.NDArray[np.int64]
    mixes: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.kinds.shape[0])


class EventBatchBuilder:
    """Collect events with the arguments of the per-event methods; :meth:`build` them."""

    def __init__(self, index: PreciseIndex) -> None:
        """Start an empty batch for ``index`` (its tiers, block size and seeds)."""
        self._index = index
        self._kinds: list[int] = []
        self._rows: list[int] = []
        self._tiers: list[int] = []
        self._seeds: list[int] = []
        self._parents: list[int | None] = []
        self._engine: list[npt.NDArray[np.uint64]] = []
        self._tokens: list[npt.NDArray[np.uint32]] = []
        self._block_sizes: list[int] = []
        self._mixes: list[npt.NDArray[np.uint64]] = []

    def stored(
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
    ) -> None:
        """Add a BlockStored event (arguments as :meth:`PreciseIndex.block_stored`)."""
        index = self._index
        hashes = np.ascontiguousarray(engine_hashes, dtype=np.uint64).reshape(-1)
        tokens = np.ascontiguousarray(token_ids, dtype=np.uint32).reshape(-1)
        block_size = int(engine_block_size)
        mixes = _event_mixes(
            extra_keys, hashes.shape[0], block_size, tokens.shape[0], index.block_size_tokens
        )
        seed = int(index.root_seed(root_name, cache_salt))
        parent = _check_hash(parent_engine_hash)
        tier = index.tier_of(medium)
        self._append(_k._KIND_STORED, row, tier, hashes, seed, parent, tokens, block_size, mixes)

    def removed(self, row: int, engine_hashes: npt.ArrayLike, medium: str | None = None) -> None:
        """Add a BlockRemoved event."""
        hashes = np.ascontiguousarray(engine_hashes, dtype=np.uint64).reshape(-1)
        self._append(_k._KIND_REMOVED, row, self._index.tier_of(medium), hashes)

    def cleared(self, row: int) -> None:
        """Add an AllBlocksCleared event (or any reason to forget the endpoint)."""
        self._append(_k._KIND_CLEARED, row, _k._TIER_GPU, _NO_HASHES)

    def _append(
        self,
        kind: int,
        row: int,
        tier: int,
        hashes: npt.NDArray[np.uint64],
        seed: int = 0,
        parent: int | None = None,
        tokens: npt.NDArray[np.uint32] = _NO_TOKENS,
        block_size: int = 0,
        mixes: npt.NDArray[np.uint64] = _NO_MIXES,
    ) -> None:
        self._kinds.append(kind)
        self._rows.append(PreciseIndex._check_row(row))
        self._tiers.append(tier)
        self._seeds.append(seed)
        self._parents.append(parent)
        self._engine.append(hashes)
        self._tokens.append(tokens)
        self._block_sizes.append(block_size)
        self._mixes.append(mixes)

    def __len__(self) -> int:
        return len(self._kinds)

    def build(self) -> EventBatch:
        """The events added so far as an :class:`EventBatch` (the builder is unchanged)."""
        return EventBatch(
            kinds=np.array(self._kinds, dtype=np.int8),
            rows=np.array(self._rows, dtype=np.int32),
            tiers=np.array(self._tiers, dtype=np.int8),
            seeds=np.array(self._seeds, dtype=np.uint64),
            has_parent=np.array([p is not None for p in self._parents], dtype=np.bool_),
            parents=np.array([p or 0 for p in self._parents], dtype=np.uint64),
            engine_offsets=_offsets(self._engine),
            engine_hashes=_concat(self._engine, _UINT64),
            token_offsets=_offsets(self._tokens),
            token_ids=_concat(self._tokens, _UINT32),
            engine_block_sizes=np.array(self._block_sizes, dtype=np.int32),
            mix_offsets=_offsets(self._mixes),
            mixes=_concat(self._mixes, _UINT64),
        )


def _offsets(parts: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([p.shape[0] for p in parts], out=offsets[1:])
    return offsets


def _concat(parts: Sequence[npt.NDArray[Any]], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _check_hash(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"parent_engine_hash: expected int or None, got {type(value).__name__}")
    if not 0 <= int(value) < 2**64:
        raise ValueError(f"parent_engine_hash: expected an int in [0, 2**64), got {value!r}")
    return int(value)


def _to_ns(seconds: float) -> int:
    """Seconds (a monotonic clock) as integer nanoseconds, the stamps' unit."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"now_s: expected a finite time >= 0, got {seconds!r}")
    return round(seconds * 1e9)


# --------------------------------------------------------------------------- the index


class _Store(PrefixIndex):
    """A :class:`PrefixIndex` whose nodes carry a uint64 payload (kept in step with the
    node pool); its rows are the precise index's LRU ids."""

    def __init__(self, *, initial_slots: int, initial_entries: int, initial_rows: int) -> None:
        super().__init__(
            initial_slots=initial_slots, initial_entries=initial_entries, initial_rows=initial_rows
        )
        self._payload = np.empty(self._nodes.shape[0], dtype=np.uint64)

    def _resize_nodes(self, num_nodes: int) -> None:
        super()._resize_nodes(num_nodes)
        payload = np.empty(num_nodes, dtype=np.uint64)
        high = int(self._meta[_pk._M_HIGH])
        payload[:high] = self._payload[:high]
        self._payload = payload

    @property
    def nbytes(self) -> int:
        return super().nbytes + self._payload.nbytes


class PreciseIndex:
    """Request key -> (endpoint row, tier) entries from KV events, plus speculation.

    Ingestion (plain arrays in; ``row`` is an EndpointTable row): :meth:`block_stored`,
    :meth:`block_removed`, :meth:`clear_endpoint`, or :meth:`apply_events` for a batch;
    speculation: :meth:`add_speculative` after a pick and :meth:`expire`; matching:
    :meth:`match` over request keys or the fused :meth:`match_tokens`. See the module
    docstring for the keys, tiers, memory and the concurrency contract (single writer).
    Any uint64 value, 0 included, is a valid engine hash.
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
        self.block_size_tokens = _positive("block_size_tokens", block_size_tokens)
        tier_capacity = _capacity("capacity", capacity)
        speculative = _capacity(
            "speculative_capacity",
            tier_capacity if speculative_capacity is None else speculative_capacity,
        )
        engine_map = _capacity(
            "engine_map_capacity",
            min(2 * tier_capacity, _MAX_CAPACITY)
            if engine_map_capacity is None
            else engine_map_capacity,
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
        self._counters = np.zeros(_k._NUM_COUNTERS, dtype=np.int64)
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
                :func:`extra_key_mix`); blocks past the end have none.
        """
        tokens = _tokens(token_ids)
        out = np.empty(self.num_request_keys(tokens.shape[0], max_blocks), dtype=np.uint64)
        count = _k._chain_block_keys(
            tokens,
            self.block_size_tokens,
            out.shape[0],
            chain_seed(root_name, cache_salt),
            _request_mixes(extra_keys),
            out,
        )
        return out[:count]

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
        """Apply a BlockStored event of endpoint ``row``.

        The request keys of the full index blocks of ``token_ids`` are chained from the
        parent's key (``parent_engine_hash`` looked up in the row's engine map) or, for
        a root-level event, from ``root_seed(root_name, cache_salt)``; they are inserted
        in the medium's tier (MRU last), and each engine hash maps to the index blocks
        its tokens overlap. An engine block size ``E`` that is a multiple of ours maps
        each engine block to ``E / B`` keys; a smaller one maps several engine blocks to
        one key, and only those ending on an index block boundary can parent later
        events (others give :data:`STATUS_MISALIGNED_PARENT`); tokens past the last full
        index block get no key (as llm-d). With no ``token_ids`` (a tier update, e.g. a
        CPU offload), the keys come from the map and ``parent_engine_hash`` is ignored.

        Args:
            row: the endpoint's table row.
            engine_hashes: the engine's block hashes (uint64), one per engine block.
            parent_engine_hash: the engine hash of the block before the first, or None.
            token_ids: every token of the blocks (``len(engine_hashes) *
                engine_block_size`` of them), or none.
            engine_block_size: tokens per engine block.
            root_name: the event's LoRA name when set, else the model name.
            medium: the event's medium (None: gpu).
            extra_keys: one entry per engine block (None or its extra keys), the LoRA
                name and block 0's ``cache_salt`` left out (they are the root).
            cache_salt: block 0's cache salt ("" for none).

        Returns:
            The request keys applied (>= 0), or :data:`STATUS_UNKNOWN_PARENT`,
            :data:`STATUS_MISALIGNED_PARENT` or :data:`STATUS_INVALID` (nothing changed;
            counted in :meth:`stats`).

        Raises:
            ValueError: a bad row, a parent hash outside uint64, or ``extra_keys`` not
                one per engine block.
        """
        row = self._check_row(row)
        hashes = _engine_hashes(engine_hashes)
        tokens = _tokens(token_ids)
        parent = _check_hash(parent_engine_hash)
        block_size = int(engine_block_size)
        mixes = _event_mixes(
            extra_keys, hashes.shape[0], block_size, tokens.shape[0], self.block_size_tokens
        )
        if row >= self._num_rows:
            self._add_rows(row)
        store = self._store
        while True:
            status = _k._apply_stored(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                store._payload,
                self._counters,
                row,
                self._tiers.of_medium(medium),
                chain_seed(root_name, cache_salt),
                parent is not None,
                np.uint64(parent or 0),
                hashes,
                tokens,
                block_size,
                self.block_size_tokens,
                mixes,
            )
            if status != _k._STATUS_NEED_ROOM:
                return int(status)
            self._grow()

    def block_removed(
        self, row: int, engine_hashes: npt.ArrayLike, medium: str | None = None
    ) -> int:
        """Apply a BlockRemoved event: drop the row's ``medium`` entries of the keys each
        engine hash maps to; return how many entries went.

        An engine hash the row's map does not know counts as an unknown removal. Its
        map entries go once the row holds none of their keys in any reported tier.
        """
        row = self._check_row(row)
        hashes = _engine_hashes(engine_hashes)
        if row >= self._num_rows:
            self._add_rows(row)
        store = self._store
        return int(
            _k._apply_removed(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                store._payload,
                self._counters,
                row,
                self._tiers.of_medium(medium),
                hashes,
            )
        )

    def clear_endpoint(self, row: int) -> int:
        """Forget everything of endpoint ``row``: every tier, speculative entries and its
        engine map (AllBlocksCleared, a sequence gap, or the endpoint leaving). Its
        capacities stay. Returns the cache entries removed (the map's not counted)."""
        row = self._check_row(row)
        if row >= self._num_rows:
            self._add_rows(row)
        store = self._store
        return int(
            _k._clear_endpoint(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                self._counters,
                row,
            )
        )

    def apply_events(self, batch: EventBatch) -> npt.NDArray[np.int64]:
        """Apply a batch of events in order, in one kernel call.

        Returns:
            int64 (len(batch),): each event's result, as :meth:`block_stored`,
            :meth:`block_removed` and :meth:`clear_endpoint` return it.

        Raises:
            ValueError: arrays of the wrong dtype or length, offsets that do not cut
                their arrays, a bad kind, row or tier.
        """
        self._check_batch(batch)
        n = len(batch)
        statuses = np.zeros(n, dtype=np.int64)
        if n == 0:
            return statuses
        max_row = int(batch.rows.max())
        if max_row >= self._num_rows:
            self._add_rows(max_row)
        tokens = readonly(batch.token_ids)
        start = 0
        while True:
            store = self._store
            start = _k._apply_events(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                store._payload,
                self._counters,
                batch.kinds,
                batch.rows,
                batch.tiers,
                batch.seeds,
                batch.has_parent,
                batch.parents,
                batch.engine_offsets,
                batch.engine_hashes,
                batch.token_offsets,
                tokens,
                batch.engine_block_sizes,
                batch.mix_offsets,
                batch.mixes,
                self.block_size_tokens,
                start,
                statuses,
            )
            if start == n:
                return statuses
            self._grow()

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
        row = self._check_row(row)
        now_ns = _to_ns(now_s)
        if row >= self._num_rows:
            self._add_rows(row)
        stamp = np.uint64(now_ns)
        while True:
            store = self._store
            n = _k._add_speculative(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                store._payload,
                self._counters,
                row,
                keys,
                stamp,
            )
            if n != _k._STATUS_NEED_ROOM:
                break
            self._grow()
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
        store = self._store
        return int(
            _k._expire(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                store._payload,
                self._counters,
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
        self._check_out(out)
        store = self._store
        return int(
            _k._match_tiers(
                store._keys,
                store._heads,
                store._nodes,
                store._meta[_pk._M_SHIFT],
                keys,
                self._tiers.weights,
                out,
            )
        )

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
        tokens = _tokens(token_ids)
        self._check_out(out)
        keys = np.empty(self.num_request_keys(tokens.shape[0], max_blocks), dtype=np.uint64)
        store = self._store
        count = _k._hash_match_tiers(
            store._keys,
            store._heads,
            store._nodes,
            store._meta[_pk._M_SHIFT],
            tokens,
            self.block_size_tokens,
            keys.shape[0],
            chain_seed(root_name, cache_salt),
            _request_mixes(extra_keys),
            self._tiers.weights,
            bool(all_keys),
            keys,
            out,
        )
        return keys[:count]

    def num_request_keys(self, num_tokens: int, max_blocks: int | None = None) -> int:
        """How many request keys a prompt of ``num_tokens`` tokens has (full blocks, at
        most ``max_blocks``): the scorer's denominator."""
        count = int(num_tokens) // self.block_size_tokens
        return count if max_blocks is None else max(0, min(count, int(max_blocks)))

    # ------------------------------------------------------------------ capacities

    def set_capacity(self, row: int, tier: str, num_blocks: int) -> int:
        """Set the LRU capacity of ``row``'s ``tier`` (``gpu``, ``cpu``, a named medium,
        ``other``, ``speculative``, or ``engine_map``); return the entries evicted.

        Takes effect at once: a smaller capacity evicts the oldest entries. The plugin
        sets ``gpu`` from the endpoint's ``num_gpu_blocks`` (engine blocks) times the
        engine block size over ours.
        """
        row = self._check_row(row)
        code = self._tiers.of_name(tier)
        capacity = _capacity("num_blocks", num_blocks)
        if row >= self._num_rows:
            self._add_rows(row)
        store = self._store
        return int(
            _k._set_capacity(
                store._keys,
                store._heads,
                store._nodes,
                store._eps,
                store._meta,
                row * _k._NUM_TIERS + code,
                capacity,
            )
        )

    def capacity(self, row: int, tier: str) -> int:
        """The LRU capacity of ``row``'s ``tier`` (the default for a row not seen yet)."""
        row = self._check_row(row)
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
        row = self._check_row(row)
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
        counters = self._counters.tolist()
        return {name: int(counters[i]) for name, i in _COUNTER_NAMES}

    @property
    def num_rows(self) -> int:
        """1 + the largest row seen: the length ``out`` must have."""
        return self._num_rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (allocated, including pool headroom)."""
        return self._store.nbytes + self._counters.nbytes + self._next_due.nbytes

    def __repr__(self) -> str:
        return (
            f"PreciseIndex(size={self.size()}, engine_keys={self.num_engine_keys()}, "
            f"rows={self._num_rows}, nbytes={self.nbytes})"
        )

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_row(row: Any) -> int:
        if isinstance(row, bool) or not isinstance(row, numbers.Integral):
            raise ValueError(f"row: expected an int in [0, {_MAX_ROW}], got {row!r}")
        if not 0 <= int(row) <= _MAX_ROW:
            raise ValueError(f"row: expected an int in [0, {_MAX_ROW}], got {row!r}")
        return int(row)

    def _check_out(self, out: npt.NDArray[np.float64]) -> None:
        if (
            not isinstance(out, np.ndarray)
            or out.dtype != np.float64
            or out.ndim != 1
            or out.shape[0] < self._num_rows
        ):
            got = (
                f"{out.dtype}{list(out.shape)}"
                if isinstance(out, np.ndarray)
                else type(out).__name__
            )
            raise ValueError(
                f"out: expected a 1-D float64 array of length >= {self._num_rows} "
                f"(largest row seen + 1), got {got}"
            )

    def _add_rows(self, row: int) -> None:
        """Start rows up to ``row`` with the default capacities."""
        store = self._store
        num_lrus = (row + 1) * _k._NUM_TIERS
        if num_lrus > store._eps.shape[0]:
            store._grow_endpoints(num_lrus)
        first = self._num_rows * _k._NUM_TIERS
        store._eps[first:num_lrus, _pk._EP_CAPACITY] = np.tile(
            self._default_capacities, row + 1 - self._num_rows
        )
        self._num_rows = row + 1

    def _grow(self) -> None:
        """Grow the pools to what the last kernel call reported it needs."""
        self._store._ensure_capacity(
            int(self._counters[_k._C_NEED_NODES]), int(self._counters[_k._C_NEED_HASHES])
        )

    def _check_batch(self, batch: EventBatch) -> None:
        n = len(batch)
        per_event = {
            "rows": (batch.rows, np.int32),
            "tiers": (batch.tiers, np.int8),
            "seeds": (batch.seeds, np.uint64),
            "has_parent": (batch.has_parent, np.bool_),
            "parents": (batch.parents, np.uint64),
            "engine_block_sizes": (batch.engine_block_sizes, np.int32),
        }
        _check_array("kinds", batch.kinds, np.int8, None)
        for name, (array, dtype) in per_event.items():
            _check_array(name, array, dtype, n)
        cuts = (
            ("engine_offsets", batch.engine_offsets, "engine_hashes", batch.engine_hashes),
            ("token_offsets", batch.token_offsets, "token_ids", batch.token_ids),
            ("mix_offsets", batch.mix_offsets, "mixes", batch.mixes),
        )
        for offsets_name, offsets, values_name, values in cuts:
            _check_array(offsets_name, offsets, np.int64, n + 1)
            _check_array(
                values_name, values, np.uint32 if values_name == "token_ids" else np.uint64, None
            )
            if offsets[0] != 0 or offsets[-1] != values.shape[0] or (np.diff(offsets) < 0).any():
                raise ValueError(
                    f"{offsets_name}: expected non-decreasing offsets from 0 to "
                    f"{values.shape[0]} (the length of {values_name})"
                )
        if n == 0:
            return
        if not np.isin(batch.kinds, (_k._KIND_STORED, _k._KIND_REMOVED, _k._KIND_CLEARED)).all():
            raise ValueError("kinds: expected 0 (stored), 1 (removed) or 2 (cleared)")
        if batch.rows.min() < 0 or batch.rows.max() > _MAX_ROW:
            raise ValueError(f"rows: expected ints in [0, {_MAX_ROW}]")
        events = batch.kinds != _k._KIND_CLEARED
        if not np.isin(batch.tiers[events], self._tiers.cache_codes).all():
            raise ValueError(
                f"tiers: expected codes from tier_of(), i.e. in {self._tiers.cache_codes}"
            )


def _check_array(name: str, array: Any, dtype: type, length: int | None) -> None:
    if (
        not isinstance(array, np.ndarray)
        or array.dtype != dtype
        or array.ndim != 1
        or not array.flags.c_contiguous
        or (length is not None and array.shape[0] != length)
    ):
        want = f"{np.dtype(dtype)} of length {length}" if length is not None else np.dtype(dtype)
        raise ValueError(f"{name}: expected a contiguous 1-D array of {want}")


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


def _capacity(name: str, value: object) -> int:
    value = _positive(name, value)
    if value > _MAX_CAPACITY:
        raise ValueError(f"{name}: expected an int <= 2**31 - 1, got {value!r}")
    return value


def _engine_hashes(hashes: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Engine hashes as the writable, contiguous 1-D uint64 array the kernels take."""
    if (
        isinstance(hashes, np.ndarray)
        and hashes.dtype == _UINT64
        and hashes.ndim == 1
        and hashes.flags.c_contiguous
        and hashes.flags.writeable
    ):
        return hashes
    arr = np.array(hashes, dtype=np.uint64)  # a copy: writable whatever came in
    if arr.ndim != 1:
        raise ValueError(f"engine_hashes: expected a 1-D array, got shape {arr.shape}")
    return arr


def _tokens(token_ids: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """Token ids as the read-only contiguous 1-D uint32 view the kernels are pinned to."""
    assert sys.byteorder == "little", "token hashing reads uint32 ids as little-endian bytes"
    ids = np.ascontiguousarray(token_ids, dtype=np.uint32)
    if ids.ndim != 1:
        ids = ids.reshape(-1)
    return readonly(ids)
