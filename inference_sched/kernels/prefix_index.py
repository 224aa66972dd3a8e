"""Numba kernels of the prefix index (:class:`inference_sched.prefix.index.PrefixIndex`).

The contracts live on the wrapper class; every kernel here is private and has no NumPy
twin (``_twins/prefix_index.py`` says why; the pure-Python model is
:mod:`tests.oracles.prefix_index_model`).

Layout (all links are int32 node ids or slot ids, -1 = none):

* ``keys`` int64[cap] / ``heads`` int32[cap]: an open-addressing table, linear probing,
  ``cap`` a power of two, home slot by multiply-shift (Fibonacci hashing, so keys like
  1, 2, 3 or multiples of 2**k still spread). ``keys`` holds the uint64 block hash viewed
  as int64. ``heads[s]`` is the first node of the hash's endpoint list, or ``_EMPTY``:
  occupancy lives in ``heads``, so every 64-bit key (0 included) is storable. Deletion
  shifts the rest of the probe cluster back (no tombstones), so the load is exactly
  distinct hashes / cap and the wrapper grows the table only when it passes 0.7.
* ``nodes`` int32[n, 5]: one row per (hash, endpoint) entry, 20 bytes. Each node sits in
  two intrusive doubly linked lists: its endpoint's LRU list and its hash's endpoint
  list, so eviction, removal and move-to-MRU are O(1), and a match walks the hash's list.
  The first node of a hash's list stores ``-1 - slot`` as its ``_HASH_PREV``: that is the
  only place a node refers to its slot, so a slot moved by a deletion or a rehash
  repoints one node. Free nodes are chained through ``_LRU_NEXT``; rows at or past
  ``meta[_M_HIGH]`` were never handed out and are not initialised.
* ``eps`` int32[rows, 4]: per table row, the LRU head (oldest), tail (MRU), size, capacity
  (0 = no LRU: the endpoint was never added or was removed).
* ``meta`` int64[5]: counters, see the ``_M_*`` indices.
"""

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import is_jit_enabled, kernel
from inference_sched.kernels.hashing import chained_block_hashes

__all__: list[str] = []

# Node columns (_HASH_NEXT and _ROW, the two a match reads, are adjacent).
_LRU_PREV = 0
_LRU_NEXT = 1
_HASH_PREV = 2  # previous node, or -1 - slot for the first node of the list
_HASH_NEXT = 3
_ROW = 4
_NODE_FIELDS = 5

# Endpoint columns.
_EP_HEAD = 0
_EP_TAIL = 1
_EP_SIZE = 2
_EP_CAPACITY = 3
_EP_FIELDS = 4

# meta indices.
_M_LIVE = 0  # occupied slots (= distinct hashes with >= 1 endpoint)
_M_ENTRIES = 1  # live nodes
_M_FREE = 2  # head of the free-node list
_M_HIGH = 3  # nodes ever handed out (ids >= this are unused and not on the free list)
_M_SHIFT = 4  # 64 - log2(cap): home slot = (key * golden) >> shift
_META_FIELDS = 5

_EMPTY = -1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# Lists walked side by side by the counting match (see _match_counting).
_LANES = 4


@kernel  # the policy for uniformity; never compiled: only used with NUMBA_DISABLE_JIT=1
def _home_slot_python(key: int, shift: int) -> int:
    """Home slot of ``key`` with Python ints (NumPy uint64 scalars would warn on the wrap)."""
    return ((int(key) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> int(shift)


@kernel
def _home_slot_compiled(key: int, shift: int) -> int:
    """Compiled :func:`_home_slot_python` (uint64 arithmetic wraps silently here)."""
    return int(np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(shift)))


_home_slot = _home_slot_compiled if is_jit_enabled() else _home_slot_python


@kernel
def _find_slot(
    keys: npt.NDArray[np.int64], heads: npt.NDArray[np.int32], shift: int, key: int
) -> int:
    """The slot holding ``key``, else ``-1 - s`` with ``s`` the empty slot to insert it at."""
    mask = keys.shape[0] - 1
    s = _home_slot(key, shift)
    while True:
        if heads[s] == _EMPTY:
            return -1 - s
        if keys[s] == key:
            return s
        s = (s + 1) & mask


@kernel
def _delete_slot(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    s: int,
) -> None:
    """Empty slot ``s`` by shifting later members of its probe cluster back (Knuth's R)."""
    mask = keys.shape[0] - 1
    hole = s
    j = s
    while True:
        j = (j + 1) & mask
        head = heads[j]
        if head == _EMPTY:
            break
        home = _home_slot(keys[j], shift)
        # The entry at j may fill the hole unless its home lies cyclically in (hole, j].
        stays = hole < home <= j if hole <= j else hole < home or home <= j
        if stays:
            continue
        keys[hole] = keys[j]
        heads[hole] = head
        nodes[head, _HASH_PREV] = -1 - hole
        hole = j
    heads[hole] = _EMPTY


@kernel
def _alloc_node(nodes: npt.NDArray[np.int32], meta: npt.NDArray[np.int64]) -> int:
    """Pop a node from the free list, else take the next never-used one."""
    node: int = meta[_M_FREE]
    if node >= 0:
        meta[_M_FREE] = nodes[node, _LRU_NEXT]
    else:
        node = meta[_M_HIGH]
        meta[_M_HIGH] = node + 1
    meta[_M_ENTRIES] += 1
    return node


@kernel
def _lru_unlink(nodes: npt.NDArray[np.int32], eps: npt.NDArray[np.int32], node: int) -> None:
    """Take ``node`` out of its endpoint's LRU list (size unchanged)."""
    row = nodes[node, _ROW]
    prev = nodes[node, _LRU_PREV]
    nxt = nodes[node, _LRU_NEXT]
    if prev >= 0:
        nodes[prev, _LRU_NEXT] = nxt
    else:
        eps[row, _EP_HEAD] = nxt
    if nxt >= 0:
        nodes[nxt, _LRU_PREV] = prev
    else:
        eps[row, _EP_TAIL] = prev


@kernel
def _lru_push_mru(nodes: npt.NDArray[np.int32], eps: npt.NDArray[np.int32], node: int) -> None:
    """Append ``node`` at its endpoint's MRU end (size unchanged)."""
    row = nodes[node, _ROW]
    tail = eps[row, _EP_TAIL]
    nodes[node, _LRU_PREV] = tail
    nodes[node, _LRU_NEXT] = -1
    if tail >= 0:
        nodes[tail, _LRU_NEXT] = node
    else:
        eps[row, _EP_HEAD] = node
    eps[row, _EP_TAIL] = node


@kernel
def _hash_unlink(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    node: int,
) -> None:
    """Take ``node`` out of its hash's endpoint list; an emptied slot is deleted."""
    prev = nodes[node, _HASH_PREV]
    nxt = nodes[node, _HASH_NEXT]
    if nxt >= 0:
        nodes[nxt, _HASH_PREV] = prev  # the slot reference too, if node was first
    if prev >= 0:
        nodes[prev, _HASH_NEXT] = nxt
    elif nxt >= 0:
        heads[-1 - prev] = nxt
    else:
        _delete_slot(keys, heads, nodes, meta[_M_SHIFT], -1 - prev)
        meta[_M_LIVE] -= 1


@kernel
def _hash_push_front(
    heads: npt.NDArray[np.int32], nodes: npt.NDArray[np.int32], node: int, s: int
) -> None:
    """Put ``node`` first in the endpoint list of the occupied slot ``s``."""
    first = heads[s]
    nodes[node, _HASH_PREV] = -1 - s
    nodes[node, _HASH_NEXT] = first
    nodes[first, _HASH_PREV] = node
    heads[s] = node


@kernel
def _release(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    node: int,
) -> None:
    """Drop ``node`` from its hash's list and free it (its LRU list is the caller's job)."""
    _hash_unlink(keys, heads, nodes, meta, node)
    nodes[node, _LRU_NEXT] = meta[_M_FREE]
    nodes[node, _ROW] = -1
    meta[_M_FREE] = node
    meta[_M_ENTRIES] -= 1


@kernel
def _insert_many(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    hashes: npt.NDArray[np.int64],
    row: int,
    out_nodes: npt.NDArray[np.int32],
) -> None:
    """Make each (hash, ``row``) in turn ``row``'s MRU entry and write its node to
    ``out_nodes``; a new hash evicts the LRU entry of a full ``row`` first.

    The wrapper made room for every node. One loop over all the hashes, not a call per
    hash: Numba passes each array as an exploded struct and LLVM does not inline a body
    this size, so a per-hash call would cost about a third more.
    """
    shift = meta[_M_SHIFT]
    for i in range(hashes.shape[0]):
        key = hashes[i]
        found = _find_slot(keys, heads, shift, key)
        if found >= 0:
            # Already held? Walk the hash's list; touched nodes move to its front, so an
            # endpoint that keeps receiving a prefix finds its node at once.
            node = heads[found]
            while node >= 0 and nodes[node, _ROW] != row:
                node = nodes[node, _HASH_NEXT]
            if node >= 0:
                _lru_unlink(nodes, eps, node)
                _lru_push_mru(nodes, eps, node)
                if nodes[node, _HASH_PREV] >= 0:
                    _hash_unlink(keys, heads, nodes, meta, node)  # not first: no slot change
                    _hash_push_front(heads, nodes, node, found)
                out_nodes[i] = node
                continue
        if eps[row, _EP_SIZE] >= eps[row, _EP_CAPACITY]:
            oldest = eps[row, _EP_HEAD]
            _lru_unlink(nodes, eps, oldest)
            _release(keys, heads, nodes, meta, oldest)
            eps[row, _EP_SIZE] -= 1
            # A deleted slot shifts its cluster back, which may move ``key``'s slot or
            # its insertion point: look again.
            found = _find_slot(keys, heads, shift, key)
        node = _alloc_node(nodes, meta)
        nodes[node, _ROW] = row
        if found >= 0:
            _hash_push_front(heads, nodes, node, found)
        else:
            s = -1 - found
            meta[_M_LIVE] += 1
            keys[s] = key
            heads[s] = node
            nodes[node, _HASH_PREV] = -1 - s
            nodes[node, _HASH_NEXT] = -1
        _lru_push_mru(nodes, eps, node)
        eps[row, _EP_SIZE] += 1
        out_nodes[i] = node


@kernel
def _add(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    hashes: npt.NDArray[np.int64],
    row: int,
    capacity: int,
) -> None:
    """Insert ``hashes`` in order into ``row``'s LRU; the wrapper made room for every node."""
    if eps[row, _EP_CAPACITY] == 0:
        eps[row, _EP_HEAD] = -1
        eps[row, _EP_TAIL] = -1
        eps[row, _EP_SIZE] = 0
        eps[row, _EP_CAPACITY] = capacity
    out_nodes = np.empty(hashes.shape[0], dtype=np.int32)
    _insert_many(keys, heads, nodes, eps, meta, hashes, row, out_nodes)


@kernel
def _find_entry(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    key: int,
    row: int,
) -> int:
    """The node of (``key``, ``row``), or -1: a probe, then a walk of the hash's list."""
    s = _find_slot(keys, heads, shift, key)
    if s < 0:
        return -1
    node = heads[s]
    while node >= 0 and nodes[node, _ROW] != row:
        node = nodes[node, _HASH_NEXT]
    return int(node)


@kernel
def _drop_entry(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    node: int,
) -> None:
    """Unlink ``node`` from both its lists and free it (its LRU keeps its capacity)."""
    row = nodes[node, _ROW]
    _lru_unlink(nodes, eps, node)
    _release(keys, heads, nodes, meta, node)
    eps[row, _EP_SIZE] -= 1


@kernel
def _remove(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    hashes: npt.NDArray[np.int64],
    row: int,
) -> int:
    """Drop the (hash, ``row``) entries of ``hashes`` that exist; return how many went."""
    num_removed = 0
    shift = meta[_M_SHIFT]  # deletions never rehash
    for i in range(hashes.shape[0]):
        node = _find_entry(keys, heads, nodes, shift, hashes[i], row)
        if node >= 0:
            _drop_entry(keys, heads, nodes, eps, meta, node)
            num_removed += 1
    return num_removed


@kernel
def _clear_lru(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    row: int,
) -> int:
    """Free every node of ``row``'s LRU, keeping its capacity; return how many went."""
    num_removed = 0
    node = eps[row, _EP_HEAD]
    while node >= 0:
        nxt = nodes[node, _LRU_NEXT]
        _release(keys, heads, nodes, meta, node)
        num_removed += 1
        node = nxt
    eps[row, _EP_HEAD] = -1
    eps[row, _EP_TAIL] = -1
    eps[row, _EP_SIZE] = 0
    return num_removed


@kernel
def _remove_endpoint(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    meta: npt.NDArray[np.int64],
    row: int,
) -> int:
    """Free every node of ``row`` and forget its LRU; return how many entries went."""
    num_removed = _clear_lru(keys, heads, nodes, eps, meta, row)
    eps[row, _EP_CAPACITY] = 0
    return num_removed


@kernel
def _rehash(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    new_keys: npt.NDArray[np.int64],
    new_heads: npt.NDArray[np.int32],
    new_shift: int,
    nodes: npt.NDArray[np.int32],
) -> None:
    """Move every live slot into the empty ``new_*`` table, repointing each list's head."""
    mask = new_keys.shape[0] - 1
    for s in range(keys.shape[0]):
        head = heads[s]
        if head < 0:
            continue
        key = keys[s]
        t = _home_slot(key, new_shift)
        while new_heads[t] != _EMPTY:
            t = (t + 1) & mask
        new_keys[t] = key
        new_heads[t] = head
        nodes[head, _HASH_PREV] = -1 - t


@kernel
def _count_list(
    nodes: npt.NDArray[np.int32], node: int, out_counts: npt.NDArray[np.float64]
) -> None:
    """Add 1 to ``out_counts`` for every row on the list starting at ``node``."""
    while node >= 0:
        out_counts[nodes[node, _ROW]] += 1.0
        node = nodes[node, _HASH_NEXT]


@kernel
def _match_counting(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    hashes: npt.NDArray[np.int64],
    out_counts: npt.NDArray[np.float64],
) -> int:
    """GIE counting mode into a zeroed ``out_counts``; return the hashes walked.

    Two passes: look up the leading run of held hashes, then walk their endpoint lists
    ``_LANES`` at a time in lockstep. A list walk is a chain of dependent loads; walking
    several independent chains side by side lets the CPU overlap their cache misses
    (the counts are sums, so the visiting order does not matter).
    """
    out_counts[:] = 0.0
    num_hashes: int = hashes.shape[0]
    firsts = np.empty(num_hashes, dtype=np.int32)
    walked = num_hashes
    for i in range(num_hashes):
        s = _find_slot(keys, heads, shift, hashes[i])
        if s < 0:
            walked = i
            break
        firsts[i] = heads[s]
    i = 0
    while i + _LANES <= walked:
        a = firsts[i]
        b = firsts[i + 1]
        c = firsts[i + 2]
        d = firsts[i + 3]
        while a >= 0 and b >= 0 and c >= 0 and d >= 0:
            ra = nodes[a, _ROW]
            rb = nodes[b, _ROW]
            rc = nodes[c, _ROW]
            rd = nodes[d, _ROW]
            if ra == rb and ra == rc and ra == rd:
                # Lists of consecutive blocks usually list the same endpoints in the same
                # order: one add instead of four read-modify-writes of one counter.
                out_counts[ra] += 4.0
            else:
                out_counts[ra] += 1.0
                out_counts[rb] += 1.0
                out_counts[rc] += 1.0
                out_counts[rd] += 1.0
            a = nodes[a, _HASH_NEXT]
            b = nodes[b, _HASH_NEXT]
            c = nodes[c, _HASH_NEXT]
            d = nodes[d, _HASH_NEXT]
        _count_list(nodes, a, out_counts)
        _count_list(nodes, b, out_counts)
        _count_list(nodes, c, out_counts)
        _count_list(nodes, d, out_counts)
        i += _LANES
    while i < walked:
        _count_list(nodes, firsts[i], out_counts)
        i += 1
    return walked


@kernel
def _match_prefix(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    hashes: npt.NDArray[np.int64],
    out_counts: npt.NDArray[np.float64],
) -> int:
    """Per-endpoint longest consecutive prefix into ``out_counts``; return the longest."""
    out_counts[:] = 0.0
    num_hashes: int = hashes.shape[0]
    for i in range(num_hashes):
        s = _find_slot(keys, heads, shift, hashes[i])
        if s < 0:
            return i
        # An endpoint extends its prefix only if it matched every earlier hash; once
        # none does, no endpoint can match further.
        num_extended = 0
        node = heads[s]
        while node >= 0:
            row = nodes[node, _ROW]
            if out_counts[row] == i:
                out_counts[row] = i + 1.0
                num_extended += 1
            node = nodes[node, _HASH_NEXT]
        if num_extended == 0:
            return i
    return num_hashes


@kernel
def _lru_hashes(
    keys: npt.NDArray[np.int64],
    nodes: npt.NDArray[np.int32],
    eps: npt.NDArray[np.int32],
    row: int,
    out: npt.NDArray[np.int64],
) -> int:
    """Write ``row``'s hashes LRU to MRU into ``out``; return how many.

    A node knows its hash only through the first node of its list (which stores the
    slot), so each entry costs a walk back along its hash's list: inspection only.
    """
    n = 0
    node = eps[row, _EP_HEAD]
    while node >= 0:
        first = node
        while nodes[first, _HASH_PREV] >= 0:
            first = nodes[first, _HASH_PREV]
        out[n] = keys[-1 - nodes[first, _HASH_PREV]]
        n += 1
        node = nodes[node, _LRU_NEXT]
    return n


# Hash and match in one call: the hashes stay in cache for the lookups, and one dispatch
# and one round of argument checks replace two (9 us of a 33 us step at 1M entries, cold).
@kernel
def _hash_match(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    data: npt.NDArray[np.uint8],
    block_bytes: int,
    max_blocks: int,
    seed: np.uint64,
    strict: bool,
    out_hashes: npt.NDArray[np.uint64],
    out_counts: npt.NDArray[np.float64],
) -> int:
    """``chained_block_hashes`` into ``out_hashes``, then the counting (or, ``strict``,
    the prefix) match into ``out_counts``; return the number of hashes.

    Token ids come in as the byte view of their uint32 array (little-endian host), with
    ``block_bytes = 4 * block_tokens``: exactly ``chained_token_block_hashes``' input."""
    count = chained_block_hashes(data, block_bytes, max_blocks, seed, out_hashes)
    _match_into(keys, heads, nodes, shift, out_hashes[:count].view(np.int64), strict, out_counts)
    return count


@kernel
def _match_into(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    hashes: npt.NDArray[np.int64],
    strict: bool,
    out_counts: npt.NDArray[np.float64],
) -> None:
    if strict:
        _match_prefix(keys, heads, nodes, shift, hashes, out_counts)
    else:
        _match_counting(keys, heads, nodes, shift, hashes, out_counts)
