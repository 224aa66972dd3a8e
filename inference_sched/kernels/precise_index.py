"""Numba kernels of the precise prefix index
(:class:`inference_sched.prefix.precise.index.PreciseIndex`).

The contracts live on the wrapper class. The index is one
:mod:`~inference_sched.kernels.prefix_index` store (table, nodes, per-LRU lists) plus a
``payload`` uint64 per node, driven through that module's helpers:

* An LRU id packs an endpoint row and a tier: ``lru = row * _NUM_TIERS + tier``. Tiers
  ``_TIER_GPU``, ``_TIER_CPU``, the named media and ``_TIER_OTHER`` hold the request keys
  the engine reported; ``_TIER_SPECULATIVE`` holds the keys inserted after a pick, with
  their insertion time (ns) as payload; ``_TIER_ENGINE_MAP`` is not a cache tier but the
  endpoint's engine-key map (below). Every (request key, row, tier) entry is one node in
  the key's list, so a match reads every tier of every endpoint with one probe per key.
* Engine-key map: the request keys that an engine block covers are stored as entries of
  the ``_TIER_ENGINE_MAP`` LRU of its endpoint, under derived keys
  ``_engine_map_key(engine_hash, j)`` with the request key as payload. Entry ``j = 0``
  holds the block's *chain parent* (the request key ending exactly where the engine block
  ends) and exists only when the engine block ends on an index block boundary; entries
  ``j = 1, 2, ...`` hold the other covered keys in chain order. So with equal block sizes
  an engine block costs exactly one entry, a parent lookup is one probe, and the map is
  an LRU bounded per endpoint like the tiers. Derived keys share the table with request
  keys; nodes are told apart by their LRU id, so a shared slot never mixes them up.

Kernels that only compute (:func:`_chain_block_keys`, :func:`_match_tiers`,
:func:`_hash_match_tiers`) have NumPy twins of the same private names in ``_twins/``; the
store-changing ones are checked against ``tests/oracles/prefix_index_model.py`` by the
stateful test instead (a twin would replay the same linked-list surgery).
"""

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import is_jit_enabled, kernel
from inference_sched.kernels.hashing import chained_token_block_hashes
from inference_sched.kernels.prefix_index import (
    _EP_CAPACITY,
    _EP_HEAD,
    _EP_SIZE,
    _HASH_NEXT,
    _LRU_NEXT,
    _M_ENTRIES,
    _M_LIVE,
    _M_SHIFT,
    _ROW,
    _clear_lru,
    _drop_entry,
    _find_entry,
    _find_slot,
    _home_slot,
    _insert_many,
    _lru_push_mru,
    _lru_unlink,
)

__all__: list[str] = []

# LRU ids: lru = row * _NUM_TIERS + tier.
_NUM_TIERS = 8
_TIER_BITS = 3
_TIER_MASK = 7
_UTIER_BITS = np.uint64(_TIER_BITS)  # for unsigned indexing (see _match_chunk)
_UTIER_MASK = np.uint64(_TIER_MASK)
_TIER_GPU = 0
_TIER_CPU = 1
_TIER_SPECULATIVE = 2
_TIER_ENGINE_MAP = 3  # the endpoint's engine-key map, not a cache tier
_FIRST_NAMED_TIER = 4  # 4, 5, 6: media given a weight of their own
_TIER_OTHER = 7  # every other medium

# Event kinds of a batch.
_KIND_STORED = 0
_KIND_REMOVED = 1
_KIND_CLEARED = 2

# Statuses of a stored event (>= 0: request keys applied).
_STATUS_UNKNOWN_PARENT = -1
_STATUS_MISALIGNED_PARENT = -2
_STATUS_INVALID = -3
_STATUS_NEED_ROOM = -4  # internal: the wrapper grows the pools and calls again

# Counters (int64).
_C_STORED_EVENTS = 0
_C_STORED_BLOCKS = 1
_C_UNKNOWN_PARENT = 2
_C_MISALIGNED_PARENT = 3
_C_INVALID = 4
_C_REMOVED_EVENTS = 5
_C_REMOVED_BLOCKS = 6
_C_UNKNOWN_REMOVALS = 7
_C_CLEARED = 8
_C_SPECULATIVE_INSERTED = 9
_C_SPECULATIVE_EXPIRED = 10
_C_NEED_NODES = 11  # set with _STATUS_NEED_ROOM: entries the pool must hold
_C_NEED_HASHES = 12  # and distinct keys the table must hold
_NUM_COUNTERS = 13

_MASK = 0xFFFF_FFFF_FFFF_FFFF
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_NEVER = np.uint64(_MASK)

# A match walks _MATCH_LANES lists side by side, copying up to _LANE_NODES LRU ids of
# each (see _match_chunk); the fused match hashes _MATCH_LANES keys per step.
_MATCH_LANES = 32
_LANE_NODES = 64

# A match's state (see _new_scratch): run, base, best; homes, lanes, lane_nodes.
_Scratch: TypeAlias = tuple[
    npt.NDArray[np.int32],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    npt.NDArray[np.int32],
]


@kernel  # the policy for uniformity; never compiled: only used with NUMBA_DISABLE_JIT=1
def _engine_map_key_python(engine_hash: np.uint64, j: int) -> int:
    """Store key of entry ``j`` of an engine hash, with Python ints (see the compiled one)."""
    z = (int(engine_hash) + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    z ^= (int(j) * 0x9E3779B97F4A7C15) & _MASK
    return z - (1 << 64) if z >> 63 else z


@kernel
def _engine_map_key_compiled(engine_hash: np.uint64, j: int) -> int:
    """``splitmix64(engine_hash) ^ (j * golden)`` as int64: mixing the hash first keeps
    structured hashes (small ints, multiples of the golden ratio) from colliding across
    ``j``; uint64 arithmetic wraps silently here."""
    z = engine_hash + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    z = z ^ (np.uint64(j) * _GOLDEN)
    return int(np.int64(z))


_engine_map_key = _engine_map_key_compiled if is_jit_enabled() else _engine_map_key_python


# --------------------------------------------------------------------------- pure kernels


@kernel
def _chain_block_keys(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    out: npt.NDArray[np.uint64],
) -> int:
    """Request keys of the full blocks of ``tokens`` into ``out``; return how many.

    Each run of blocks without an extra-key mix is one ``chained_token_block_hashes``
    call; a block with a mix starts a new run whose parent is xored with it.
    """
    if block_tokens <= 0 or max_blocks <= 0:
        return 0
    count: int = min(tokens.shape[0] // block_tokens, max_blocks, out.shape[0])
    num_mixes = mixes.shape[0]
    parent = seed
    k = 0
    while k < count:
        stop = k + 1
        while stop < count and (stop >= num_mixes or mixes[stop] == 0):
            stop += 1
        if k < num_mixes:
            parent = parent ^ mixes[k]
        chained_token_block_hashes(
            tokens[k * block_tokens : stop * block_tokens],
            block_tokens,
            stop - k,
            parent,
            out[k:stop],
        )
        parent = out[stop - 1]
        k = stop
    return count


@kernel
def _new_scratch(num_rows: int) -> _Scratch:
    """A match's state: per row ``run`` (keys matched, all consecutive), ``base`` (their
    sum but the last) and ``best`` (the last one's weight); per lane ``homes`` (a home
    slot), ``lanes`` (the next node to copy and the nodes copied) and ``lane_nodes`` (the
    LRU ids copied)."""
    return (
        np.zeros(num_rows, dtype=np.int32),
        np.zeros(num_rows, dtype=np.float64),
        np.zeros(num_rows, dtype=np.float64),
        np.empty(_MATCH_LANES, dtype=np.int64),
        np.empty((_MATCH_LANES, 2), dtype=np.int32),
        np.empty((_MATCH_LANES, _LANE_NODES), dtype=np.int32),
    )


@kernel
def _match_chunk(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    request_keys: npt.NDArray[np.int64],
    first: int,
    weights: npt.NDArray[np.float64],
    scratch: _Scratch,
) -> bool:
    """Extend the match by ``request_keys`` (the request's keys ``first, first + 1, ...``);
    return whether a later key could still match (then :func:`_commit` writes the sums).

    The keys go ``_MATCH_LANES`` at a time, in passes: load the keys' home slots, probe
    them, walk their lists side by side copying up to ``_LANE_NODES`` LRU ids per list,
    then the exact pass, key by key, over the copies. A probe or a list walk is a chain
    of dependent loads that misses the cache on a cold index: independent chains walked
    side by side let the CPU overlap the misses, and the exact pass no longer waits on
    any. That pass cannot go lane-parallel: a row's sum at one key depends on its
    holding the previous one. Indices are cast to unsigned where they are known to be
    >= 0: Numba then drops its negative-index wraparound, which costs the exact pass
    almost half its time.
    """
    run, base, best, homes, lanes, lane_nodes = scratch
    num_keys = request_keys.shape[0]
    touched = 0
    for chunk in range(0, num_keys, _MATCH_LANES):
        width = min(_MATCH_LANES, num_keys - chunk)
        for k in range(width):
            homes[k] = _home_slot(request_keys[chunk + k], shift)
        for k in range(width):
            touched ^= heads[homes[k]] ^ keys[homes[k]]
        found = width
        for k in range(width):
            s = _find_slot(keys, heads, shift, request_keys[chunk + k])
            if s < 0:
                found = k  # no row holds this key: nobody matches past it
                break
            lanes[k, 0] = heads[s]  # the next node to copy
            lanes[k, 1] = 0  # nodes copied
        num_walking = found
        while num_walking > 0:
            num_walking = 0
            for k in range(found):
                node = lanes[k, 0]
                count = lanes[k, 1]
                if node >= 0 and count < _LANE_NODES:
                    u = np.uint64(node)
                    lane_nodes[k, count] = nodes[u, _ROW]
                    lanes[k, 0] = nodes[u, _HASH_NEXT]
                    lanes[k, 1] = count + 1
                    num_walking += 1
        for k in range(found):
            i = first + chunk + k
            num_extended = 0
            num_copied = lanes[k, 1]
            node = lanes[k, 0]  # past the copies, if the list is longer than _LANE_NODES
            j = 0
            while True:
                if j < num_copied:
                    lru = np.uint64(lane_nodes[k, j])
                    j += 1
                elif node >= 0:
                    lru = np.uint64(nodes[np.uint64(node), _ROW])
                    node = nodes[np.uint64(node), _HASH_NEXT]
                else:
                    break
                w = weights[lru & _UTIER_MASK]
                row = lru >> _UTIER_BITS
                r = run[row]
                if r == i:  # the row matched every earlier key: this one extends it
                    if w >= 0.0:  # < 0: an engine-map entry sharing the slot
                        base[row] += best[row]
                        best[row] = w
                        run[row] = i + 1
                        num_extended += 1
                elif r == i + 1 and w > best[row]:  # another tier of the row, heavier
                    best[row] = w
            # Once no row extends its run, none can match further.
            if num_extended == 0:
                homes[0] = touched  # keeps the home-slot loads
                return False
        if found < width:
            homes[0] = touched
            return False
    homes[0] = touched
    return True


@kernel
def _commit(scratch: _Scratch, out: npt.NDArray[np.float64]) -> None:
    """``out[row]``: the sum of the row's weights over its run (0 without one), added in
    key order (``base`` holds all but the last)."""
    run, base, best, _homes, _lanes, _lane_nodes = scratch
    for row in range(out.shape[0]):
        out[row] = base[row] + best[row] if run[row] > 0 else 0.0


@kernel
def _match_tiers(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    request_keys: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Tier-weighted longest consecutive prefix per row into ``out``; return the keys."""
    scratch = _new_scratch(out.shape[0])
    _match_chunk(keys, heads, nodes, shift, request_keys, 0, weights, scratch)
    _commit(scratch, out)
    return int(request_keys.shape[0])


@kernel
def _hash_match_tiers(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    weights: npt.NDArray[np.float64],
    all_keys: bool,
    out_keys: npt.NDArray[np.uint64],
    out: npt.NDArray[np.float64],
) -> int:
    """:func:`_chain_block_keys` into ``out_keys`` and :func:`_match_tiers` over them, in
    one pass; return the number of keys written.

    The keys are hashed ``_MATCH_LANES`` blocks at a time and matched right after: the
    hashing is a chain of dependent arithmetic and the match waits on memory, so the CPU
    overlaps the two, and the keys are matched while in cache. Once no row can match
    further, the remaining keys are hashed in one go, or, without ``all_keys``, not at
    all (the keys written then end within ``_MATCH_LANES`` past the longest match).
    """
    scratch = _new_scratch(out.shape[0])
    count = 0
    if block_tokens > 0 and max_blocks > 0:
        count = min(tokens.shape[0] // block_tokens, max_blocks, out_keys.shape[0])
    as_int64 = out_keys.view(np.int64)
    start = 0
    while start < count:
        stop = min(start + _MATCH_LANES, count)
        _chain_range(tokens, block_tokens, start, stop, seed, mixes, out_keys)
        is_matching = _match_chunk(
            keys, heads, nodes, shift, as_int64[start:stop], start, weights, scratch
        )
        start = stop
        if not is_matching:
            break
    _commit(scratch, out)
    if all_keys and start < count:
        _chain_range(tokens, block_tokens, start, count, seed, mixes, out_keys)
        start = count
    return start


@kernel
def _chain_range(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    start: int,
    stop: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    out_keys: npt.NDArray[np.uint64],
) -> None:
    """Keys ``start:stop`` of the chain into ``out_keys``, ``0:start`` being there."""
    parent = seed if start == 0 else out_keys[start - 1]
    _chain_block_keys(
        tokens[start * block_tokens :],
        block_tokens,
        stop - start,
        parent,
        mixes[start:],
        out_keys[start:stop],
    )


# --------------------------------------------------------------------------- helpers


@kernel
def _has_room(
    keys: npt.NDArray[np.int64],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    counters: npt.NDArray[np.int64],
    lru: int,
    num_inserts: int,
    map_lru: int,
    num_map_inserts: int,
) -> bool:
    """Whether the pool and the table take the inserts; if not, record what they need.

    An insert into a full LRU evicts first, so only an LRU's free capacity can need new
    nodes; every live key has a node, so the entries bound the distinct keys too.
    """
    new_nodes = 0
    if num_inserts > 0:
        new_nodes += min(num_inserts, max(eps[lru, _EP_CAPACITY] - eps[lru, _EP_SIZE], 0))
    if num_map_inserts > 0:
        free = max(eps[map_lru, _EP_CAPACITY] - eps[map_lru, _EP_SIZE], 0)
        new_nodes += min(num_map_inserts, free)
    entries = meta[_M_ENTRIES]
    live = min(meta[_M_LIVE] + num_inserts + num_map_inserts, entries + new_nodes)
    if entries + new_nodes <= nodes.shape[0] and 10 * live <= 7 * keys.shape[0]:
        return True
    counters[_C_NEED_NODES] = entries + new_nodes
    counters[_C_NEED_HASHES] = live
    return False


@kernel
def _touch(nodes: npt.NDArray[np.int32], eps: npt.NDArray[np.int32], node: int) -> None:
    """Move ``node`` to its LRU's MRU end."""
    _lru_unlink(nodes, eps, node)
    _lru_push_mru(nodes, eps, node)


@kernel
def _engine_nodes(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    map_lru: int,
    engine_hash: np.uint64,
    out: npt.NDArray[np.int32],
) -> int:
    """The map nodes of ``engine_hash`` in chain order (entries 1, 2, ... then 0) into
    ``out`` while it has room; return how many there are (may exceed ``len(out)``)."""
    n = 0
    j = 1
    while True:
        node = _find_entry(keys, heads, nodes, shift, _engine_map_key(engine_hash, j), map_lru)
        if node < 0:
            break
        if n < out.shape[0]:
            out[n] = node
        n += 1
        j += 1
    node = _find_entry(keys, heads, nodes, shift, _engine_map_key(engine_hash, 0), map_lru)
    if node >= 0:
        if n < out.shape[0]:
            out[n] = node
        n += 1
    return n


@kernel
def _row_holds(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    key: int,
    row: int,
) -> bool:
    """Whether ``row`` holds ``key`` in a tier the engine reported (not speculative)."""
    s = _find_slot(keys, heads, shift, key)
    if s < 0:
        return False
    node = heads[s]
    while node >= 0:
        lru = nodes[node, _ROW]
        if lru >> _TIER_BITS == row:
            tier = lru & _TIER_MASK
            if tier != _TIER_SPECULATIVE and tier != _TIER_ENGINE_MAP:
                return True
        node = nodes[node, _HASH_NEXT]
    return False


@kernel
def _num_map_entries(
    num_engine_blocks: int, engine_block_tokens: int, num_keys: int, block_tokens: int
) -> int:
    """How many map entries an event's engine blocks get: the request blocks each one
    overlaps (an engine block wholly in the dropped tail gets none)."""
    total = 0
    for j in range(num_engine_blocks):
        lo = j * engine_block_tokens // block_tokens
        hi = min(((j + 1) * engine_block_tokens - 1) // block_tokens, num_keys - 1)
        if lo <= hi:
            total += hi - lo + 1
    return total


@kernel
def _map_entries(
    engine_hashes: npt.NDArray[np.uint64],
    engine_block_tokens: int,
    request_keys: npt.NDArray[np.uint64],
    block_tokens: int,
    out_keys: npt.NDArray[np.int64],
    out_values: npt.NDArray[np.uint64],
) -> None:
    """The map entries of an event, in insertion order (see the module docstring)."""
    num_keys = request_keys.shape[0]
    n = 0
    for j in range(engine_hashes.shape[0]):
        end = (j + 1) * engine_block_tokens
        lo = j * engine_block_tokens // block_tokens
        hi = min((end - 1) // block_tokens, num_keys - 1)
        if lo > hi:
            continue
        is_parent = end % block_tokens == 0 and end // block_tokens <= num_keys
        last = hi - 1 if is_parent else hi
        for k in range(lo, last + 1):
            out_keys[n] = _engine_map_key(engine_hashes[j], k - lo + 1)
            out_values[n] = request_keys[k]
            n += 1
        if is_parent:  # last, so the parent is the last of the block's entries to go
            out_keys[n] = _engine_map_key(engine_hashes[j], 0)
            out_values[n] = request_keys[hi]
            n += 1


# --------------------------------------------------------------------------- events


@kernel
def _apply_stored(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    payload: npt.NDArray[np.uint64],
    counters: npt.NDArray[np.int64],
    row: int,
    tier: int,
    seed: np.uint64,
    has_parent: bool,
    parent: np.uint64,
    engine_hashes: npt.NDArray[np.uint64],
    tokens: npt.NDArray[np.uint32],
    engine_block_tokens: int,
    block_tokens: int,
    mixes: npt.NDArray[np.uint64],
) -> int:
    """Apply one BlockStored event; return its status (keys applied, or < 0)."""
    lru = row * _NUM_TIERS + tier
    map_lru = row * _NUM_TIERS + _TIER_ENGINE_MAP
    num_tokens = tokens.shape[0]
    if num_tokens == 0:
        return _apply_tier_update(
            keys, heads, nodes, eps, meta, payload, counters, lru, map_lru, engine_hashes
        )
    num_engine = engine_hashes.shape[0]
    if engine_block_tokens <= 0 or num_tokens != num_engine * engine_block_tokens:
        counters[_C_INVALID] += 1
        return _STATUS_INVALID
    num_keys = num_tokens // block_tokens
    num_entries = _num_map_entries(num_engine, engine_block_tokens, num_keys, block_tokens)
    if not _has_room(keys, nodes, eps, meta, counters, lru, num_keys, map_lru, num_entries):
        return _STATUS_NEED_ROOM
    shift = meta[_M_SHIFT]
    chain_parent = seed
    if has_parent:
        node = _find_entry(keys, heads, nodes, shift, _engine_map_key(parent, 0), map_lru)
        if node < 0:
            if _find_entry(keys, heads, nodes, shift, _engine_map_key(parent, 1), map_lru) >= 0:
                counters[_C_MISALIGNED_PARENT] += 1
                return _STATUS_MISALIGNED_PARENT
            counters[_C_UNKNOWN_PARENT] += 1
            return _STATUS_UNKNOWN_PARENT
        _touch(nodes, eps, node)  # a parent in use stays in the map
        chain_parent = payload[node]
    request_keys = np.empty(num_keys, dtype=np.uint64)
    _chain_block_keys(tokens, block_tokens, num_keys, chain_parent, mixes, request_keys)
    out_nodes = np.empty(max(num_keys, num_entries), dtype=np.int32)
    _insert_many(keys, heads, nodes, eps, meta, request_keys.view(np.int64), lru, out_nodes)
    if num_entries > 0:
        map_keys = np.empty(num_entries, dtype=np.int64)
        map_values = np.empty(num_entries, dtype=np.uint64)
        _map_entries(
            engine_hashes, engine_block_tokens, request_keys, block_tokens, map_keys, map_values
        )
        _insert_many(keys, heads, nodes, eps, meta, map_keys, map_lru, out_nodes)
        for i in range(num_entries):
            payload[out_nodes[i]] = map_values[i]
    counters[_C_STORED_EVENTS] += 1
    counters[_C_STORED_BLOCKS] += num_keys
    return int(num_keys)


@kernel
def _apply_tier_update(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    payload: npt.NDArray[np.uint64],
    counters: npt.NDArray[np.int64],
    lru: int,
    map_lru: int,
    engine_hashes: npt.NDArray[np.uint64],
) -> int:
    """A BlockStored without tokens (e.g. a CPU offload): add the tier to the keys the
    engine hashes map to; hashes the map does not know are skipped."""
    shift = meta[_M_SHIFT]
    found = np.empty(16, dtype=np.int32)
    total = 0
    for i in range(engine_hashes.shape[0]):
        total += _engine_nodes(keys, heads, nodes, shift, map_lru, engine_hashes[i], found)
    if not _has_room(keys, nodes, eps, meta, counters, lru, total, lru, 0):
        return _STATUS_NEED_ROOM
    resolved = np.empty(total, dtype=np.uint64)
    n = 0
    for i in range(engine_hashes.shape[0]):
        m = _engine_nodes(keys, heads, nodes, shift, map_lru, engine_hashes[i], found)
        if m > found.shape[0]:
            found = np.empty(m, dtype=np.int32)
            _engine_nodes(keys, heads, nodes, shift, map_lru, engine_hashes[i], found)
        for k in range(m):
            _touch(nodes, eps, found[k])
            resolved[n] = payload[found[k]]
            n += 1
    out_nodes = np.empty(total, dtype=np.int32)
    _insert_many(keys, heads, nodes, eps, meta, resolved.view(np.int64), lru, out_nodes)
    counters[_C_STORED_EVENTS] += 1
    counters[_C_STORED_BLOCKS] += total
    return total


@kernel
def _apply_removed(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    payload: npt.NDArray[np.uint64],
    counters: npt.NDArray[np.int64],
    row: int,
    tier: int,
    engine_hashes: npt.NDArray[np.uint64],
) -> int:
    """Apply one BlockRemoved event; return the (key, row, tier) entries removed.

    An engine hash's map entries go once the row holds none of their keys in any
    engine-reported tier (a CPU copy keeps them alive).
    """
    lru = row * _NUM_TIERS + tier
    map_lru = row * _NUM_TIERS + _TIER_ENGINE_MAP
    shift = meta[_M_SHIFT]  # deletions never rehash
    found = np.empty(16, dtype=np.int32)
    num_removed = 0
    for i in range(engine_hashes.shape[0]):
        engine_hash = engine_hashes[i]
        m = _engine_nodes(keys, heads, nodes, shift, map_lru, engine_hash, found)
        if m == 0:
            counters[_C_UNKNOWN_REMOVALS] += 1
            continue
        if m > found.shape[0]:
            found = np.empty(m, dtype=np.int32)
            _engine_nodes(keys, heads, nodes, shift, map_lru, engine_hash, found)
        for k in range(m):
            key = int(np.int64(payload[found[k]]))
            node = _find_entry(keys, heads, nodes, shift, key, lru)
            if node >= 0:
                _drop_entry(keys, heads, nodes, eps, meta, node)
                num_removed += 1
        is_held = False
        for k in range(m):
            if _row_holds(keys, heads, nodes, shift, int(np.int64(payload[found[k]])), row):
                is_held = True
                break
        if not is_held:
            for k in range(m):
                _drop_entry(keys, heads, nodes, eps, meta, found[k])
    counters[_C_REMOVED_EVENTS] += 1
    counters[_C_REMOVED_BLOCKS] += num_removed
    return num_removed


@kernel
def _clear_endpoint(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    counters: npt.NDArray[np.int64],
    row: int,
) -> int:
    """Empty every LRU of ``row`` (capacities kept); return the cache entries removed."""
    num_removed = 0
    for tier in range(_NUM_TIERS):
        removed = _clear_lru(keys, heads, nodes, eps, meta, row * _NUM_TIERS + tier)
        if tier != _TIER_ENGINE_MAP:
            num_removed += removed
    counters[_C_CLEARED] += 1
    return num_removed


@kernel
def _apply_events(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    payload: npt.NDArray[np.uint64],
    counters: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.int8],
    rows: npt.NDArray[np.int32],
    tiers: npt.NDArray[np.int8],
    seeds: npt.NDArray[np.uint64],
    has_parent: npt.NDArray[np.bool_],
    parents: npt.NDArray[np.uint64],
    engine_offsets: npt.NDArray[np.int64],
    engine_hashes: npt.NDArray[np.uint64],
    token_offsets: npt.NDArray[np.int64],
    tokens: npt.NDArray[np.uint32],
    engine_block_sizes: npt.NDArray[np.int32],
    mix_offsets: npt.NDArray[np.int64],
    mixes: npt.NDArray[np.uint64],
    block_tokens: int,
    start: int,
    statuses: npt.NDArray[np.int64],
) -> int:
    """Apply events ``start:`` in order, statuses into ``statuses``; return the index of
    the first event not applied (the wrapper grows the pools and resumes there), or the
    number of events."""
    for i in range(start, kinds.shape[0]):
        kind = kinds[i]
        row = int(rows[i])
        hashes = engine_hashes[engine_offsets[i] : engine_offsets[i + 1]]
        if kind == _KIND_STORED:
            status = _apply_stored(
                keys,
                heads,
                nodes,
                eps,
                meta,
                payload,
                counters,
                row,
                int(tiers[i]),
                seeds[i],
                bool(has_parent[i]),
                parents[i],
                hashes,
                tokens[token_offsets[i] : token_offsets[i + 1]],
                int(engine_block_sizes[i]),
                block_tokens,
                mixes[mix_offsets[i] : mix_offsets[i + 1]],
            )
            if status == _STATUS_NEED_ROOM:
                return i
        elif kind == _KIND_REMOVED:
            status = _apply_removed(
                keys, heads, nodes, eps, meta, payload, counters, row, int(tiers[i]), hashes
            )
        else:
            status = _clear_endpoint(keys, heads, nodes, eps, meta, counters, row)
        statuses[i] = status
    return int(kinds.shape[0])


# --------------------------------------------------------------------------- speculation


@kernel
def _add_speculative(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    payload: npt.NDArray[np.uint64],
    counters: npt.NDArray[np.int64],
    row: int,
    request_keys: npt.NDArray[np.int64],
    now_ns: np.uint64,
) -> int:
    """Insert ``request_keys`` as ``row``'s speculative entries stamped ``now_ns`` (a held
    one moves to the MRU end and is restamped); return how many, or _STATUS_NEED_ROOM."""
    lru = row * _NUM_TIERS + _TIER_SPECULATIVE
    n = request_keys.shape[0]
    if not _has_room(keys, nodes, eps, meta, counters, lru, n, lru, 0):
        return _STATUS_NEED_ROOM
    out_nodes = np.empty(n, dtype=np.int32)
    _insert_many(keys, heads, nodes, eps, meta, request_keys, lru, out_nodes)
    for i in range(n):
        payload[out_nodes[i]] = now_ns
    counters[_C_SPECULATIVE_INSERTED] += n
    return int(n)


@kernel
def _expire(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    payload: npt.NDArray[np.uint64],
    counters: npt.NDArray[np.int64],
    num_rows: int,
    now_ns: np.uint64,
    ttl_ns: np.uint64,
    next_due_ns: npt.NDArray[np.uint64],
) -> int:
    """Drop speculative entries stamped at or before ``now_ns - ttl_ns``; return how many.

    Each row's speculative LRU is in stamp order (an insert restamps and moves to the
    MRU end), so expiry pops from the LRU end and stops at the first live entry.
    ``next_due_ns[0]`` receives the earliest time another entry expires (or 2**64 - 1).
    """
    num_expired = 0
    due = _NEVER
    for row in range(num_rows):
        lru = row * _NUM_TIERS + _TIER_SPECULATIVE
        node = eps[lru, _EP_HEAD]
        while node >= 0:
            expiry = payload[node] + ttl_ns
            if expiry > now_ns:
                due = min(due, expiry)
                break
            nxt = nodes[node, _LRU_NEXT]
            _drop_entry(keys, heads, nodes, eps, meta, node)
            num_expired += 1
            node = nxt
    next_due_ns[0] = due
    counters[_C_SPECULATIVE_EXPIRED] += num_expired
    return num_expired


# --------------------------------------------------------------------------- capacity


@kernel
def _set_capacity(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    lru: int,
    capacity: int,
) -> int:
    """Set an LRU's capacity, evicting its oldest entries beyond it; return how many."""
    eps[lru, _EP_CAPACITY] = capacity
    num_evicted = 0
    while eps[lru, _EP_SIZE] > capacity:
        _drop_entry(keys, heads, nodes, eps, meta, eps[lru, _EP_HEAD])
        num_evicted += 1
    return num_evicted


@kernel
def _lru_payloads(
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    payload: npt.NDArray[np.uint64],
    lru: int,
    out: npt.NDArray[np.uint64],
) -> int:
    """Write an LRU's payloads oldest first into ``out``; return how many (inspection)."""
    n = 0
    node = eps[lru, _EP_HEAD]
    while node >= 0:
        out[n] = payload[node]
        n += 1
        node = nodes[node, _LRU_NEXT]
    return n
