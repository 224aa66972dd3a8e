"""The approximate prefix index: block hash -> endpoints holding it, with an LRU per endpoint.

This is GIE's approximate prefix indexer (gateway-api-inference-extension:
``pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix/indexer.go``) in
numpy arrays driven by the Numba kernels of :mod:`inference_sched.kernels.prefix_index`.
Endpoints are :class:`~inference_sched.state.table.EndpointTable` rows; the caller removes
a row's entries (:meth:`PrefixIndex.remove_endpoint`) when the table frees or reuses the
row, so a new generation never inherits the old one's cache.

Design note: every (hash, endpoint) entry is one 20-byte node in two intrusive doubly
linked lists, the endpoint's LRU list and the hash's endpoint list. An LRU eviction or an
endpoint removal then costs O(1) per entry (unlink from both lists), and a match walks only
the endpoints that hold each hash, as GIE's ``map[hash]set`` does. A hash maps to its list
through an open-addressing table (linear probing, deletion by backward shift, so no
tombstones; grown by doubling when more than 7/10 full). Memory: 20 bytes per entry plus
12 bytes per table slot, i.e. about 20 + 12 / load (37-54) bytes per distinct hash. The
node pool grows by half its size, and untouched pool headroom is never written, so it
costs address space but no resident memory; :meth:`PrefixIndex.reserve` (or the
``initial_entries`` option) pre-sizes both the pool and the table for a known total, e.g.
the sum of the endpoints' LRU capacities (see :attr:`PrefixIndex.nbytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from inference_sched.kernels import prefix_index as _k
from inference_sched.prefix._checks import as_uint64s, check_int, check_out, check_row
from inference_sched.prefix.hashing import (
    BYTES_PER_TOKEN,
    as_token_ids,
    chain_seed,
    num_block_hashes,
    readonly,
)

__all__ = ["PrefixIndex"]

_MAX_ROW: Final = 2**31 - 2
_MAX_CAPACITY: Final = 2**31 - 1
_UINT8: Final = np.dtype(np.uint8)
_UINT64: Final = np.dtype(np.uint64)
_INT64: Final = np.dtype(np.int64)

_Lists: TypeAlias = tuple[
    npt.NDArray[np.int64],  # keys
    npt.NDArray[np.int32],  # heads
    npt.NDArray[np.int32],  # nodes
    npt.NDArray[np.int32],  # endpoints
    npt.NDArray[np.int64],  # meta
]
"""What the writing kernels take first."""
_Table: TypeAlias = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32], Any]
"""What the matching kernels take first: keys, heads, nodes and the table's shift."""


def _as_keys(hashes: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The hashes as a contiguous 1-D uint64 array, viewed as int64 (the kernels' keys)."""
    return as_uint64s("hashes", hashes).view(_INT64)


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def _slots_for(num_hashes: int) -> int:
    """The smallest table (a power of two >= 2) holding ``num_hashes`` at load <= 7/10."""
    return _pow2_at_least(max(-(-10 * num_hashes // 7), 2))


class PrefixIndex:
    """Block hash -> set of endpoint rows, with a bounded LRU of hashes per endpoint.

    Semantics follow GIE's approximate prefix indexer: :meth:`add` creates an endpoint's
    LRU on first sight with the given capacity (fixed from then on, as in GIE), inserts
    the hashes in order (a held hash moves to the MRU end) and, when the LRU is full,
    evicts its least recently used hash, removing the endpoint from that hash's set; a
    hash with no endpoint left disappears. One deliberate difference: when a single
    ``add`` carries more distinct hashes than the capacity, GIE still lists the endpoint
    under the hashes its own LRU already evicted (they then never leave); here the index
    and the LRUs always agree.

    Concurrency contract: **one writer, and no reader while it writes.** Nothing is
    locked: callers must serialise :meth:`add` / :meth:`remove` / :meth:`remove_endpoint`
    with every other call, for example by running them all on the scheduler's thread
    (GIE's asynchronous PreRequest update becomes a call made between decisions) or by
    holding one lock around all of them. Concurrent matches with no writer running are
    safe: they only read.

    Any uint64 value, 0 included, is a valid hash.
    """

    def __init__(
        self, *, initial_slots: int = 1024, initial_entries: int = 1024, initial_rows: int = 16
    ) -> None:
        """Create an empty index; the ``initial_*`` sizes only pre-size the pools.

        Args:
            initial_slots: hash-table slots to start with (rounded up to a power of two).
            initial_entries: (hash, endpoint) entries to make room for: the node pool, and
                the table for that many distinct hashes. A producer that knows the sum
                of its endpoints' LRU capacities can pass it (or call :meth:`reserve`)
                so the index never reallocates while it fills.
            initial_rows: endpoint rows to start with.
        """
        num_slots = max(_pow2_at_least(max(initial_slots, 2)), _slots_for(initial_entries))
        self._keys = np.zeros(num_slots, dtype=np.int64)
        self._heads = np.full(num_slots, _k._EMPTY, dtype=np.int32)
        # Never initialised: a node is written in full when first handed out.
        self._nodes = np.empty((max(initial_entries, 1), _k._NODE_FIELDS), dtype=np.int32)
        self._eps = self._new_endpoints(max(initial_rows, 1))
        self._meta = np.zeros(_k._META_FIELDS, dtype=np.int64)
        self._meta[_k._M_FREE] = -1
        self._meta[_k._M_SHIFT] = 64 - (num_slots.bit_length() - 1)
        self._num_rows = 0  # 1 + the largest row ever added

    def reserve(self, num_entries: int) -> None:
        """Make room for ``num_entries`` entries in total without reallocating.

        Grows the node pool to ``num_entries`` nodes and the table to hold as many
        distinct hashes at load <= 7/10; never shrinks. The sum of the endpoints' LRU
        capacities bounds :meth:`size`, so it is the natural argument.
        """
        num_entries = check_int("num_entries", num_entries, 0)
        if num_entries > self._nodes.shape[0]:
            self._resize_nodes(num_entries)
        if _slots_for(num_entries) > self._keys.shape[0]:
            self._rehash(_slots_for(num_entries))

    # ------------------------------------------------------------------ writes

    def add(self, hashes: npt.ArrayLike, row: int, capacity: int) -> None:
        """Record that endpoint ``row`` now holds ``hashes`` (in prompt order).

        Args:
            hashes: the request's block hashes (uint64), first block first; the last one
                ends up most recently used.
            row: the endpoint's table row.
            capacity: the LRU capacity, used only when the endpoint has no LRU yet.

        Raises:
            ValueError: a negative or too large ``row``, or ``capacity < 1``.
        """
        keys = _as_keys(hashes)
        row = check_row(row, _MAX_ROW)
        capacity = check_int("capacity", capacity, 1, _MAX_CAPACITY)
        n = keys.shape[0]
        if row >= self._eps.shape[0]:
            self._grow_endpoints(row + 1)
        self._num_rows = max(self._num_rows, row + 1)
        if n == 0:
            if self._eps[row, _k._EP_CAPACITY] == 0:
                self._eps[row, _k._EP_CAPACITY] = capacity
            return
        meta = self._meta
        # The kernel evicts before it allocates, so the row's LRU bounds the growth: a full
        # index at steady state (every insert evicts) needs no room at all. Every live
        # hash has a node, so the entries bound the distinct hashes too.
        entries, live = int(meta[_k._M_ENTRIES]), int(meta[_k._M_LIVE])
        lru_capacity = int(self._eps[row, _k._EP_CAPACITY]) or capacity
        room = max(0, min(n, lru_capacity - int(self._eps[row, _k._EP_SIZE])))
        self._ensure_capacity(entries + room, min(live + n, entries + room))
        _k._add(*self._lists(), keys, row, capacity)

    def remove(self, hashes: npt.ArrayLike, row: int) -> int:
        """Drop endpoint ``row``'s entries for ``hashes``; return how many were held.

        Hashes the endpoint does not hold are ignored, and so is a repeated hash after its
        first removal. Each removal is one table probe plus a walk of that hash's
        endpoint list (as in :meth:`add`); the LRU keeps its capacity even when it
        empties (unlike :meth:`remove_endpoint`). A hash no endpoint holds any more
        disappears.

        Raises:
            ValueError: a negative or too large ``row``, or ``hashes`` not 1-D.
        """
        keys = _as_keys(hashes)
        row = check_row(row, _MAX_ROW)
        if row >= self._eps.shape[0] or keys.shape[0] == 0:
            return 0
        return int(_k._remove(*self._lists(), keys, row))

    def remove_endpoint(self, row: int) -> int:
        """Drop every hash of endpoint ``row`` and its LRU; return how many entries went.

        A later :meth:`add` for the row starts a new LRU with the capacity it passes.
        Unknown rows are a no-op (0).
        """
        row = check_row(row, _MAX_ROW)
        if row >= self._eps.shape[0]:
            return 0
        return int(_k._remove_endpoint(*self._lists(), row))

    # ------------------------------------------------------------------ matches

    def match_counting(self, hashes: npt.ArrayLike, out_counts: npt.NDArray[np.float64]) -> int:
        """GIE's counting match (``PrepareRequestData``).

        Walks ``hashes`` in order and stops at the first hash no endpoint holds; for each
        hash before it, adds 1 to ``out_counts[row]`` of every endpoint holding it. So an
        endpoint's count is how many hashes of that leading run it holds, not necessarily
        consecutive ones (compare :meth:`match_prefix`).

        Args:
            hashes: the request's block hashes (uint64), first block first.
            out_counts: float64, indexed by table row, at least as long as the largest row
                ever added + 1. It is zeroed here first; rows without entries stay 0.

        Returns:
            The number of leading hashes held by at least one endpoint.
        """
        return self._match(_k._match_counting, hashes, out_counts)

    def match_prefix(self, hashes: npt.ArrayLike, out_counts: npt.NDArray[np.float64]) -> int:
        """Strict match: each endpoint's longest run of consecutive leading ``hashes``.

        ``out_counts[row]`` becomes the largest ``m`` such that the endpoint holds
        ``hashes[:m]`` (zeroed here first, as in :meth:`match_counting`).

        Returns:
            The longest prefix any endpoint holds (the maximum of ``out_counts``).
        """
        return self._match(_k._match_prefix, hashes, out_counts)

    def _match(
        self,
        kernel: Callable[..., int],
        hashes: npt.ArrayLike,
        out_counts: npt.NDArray[np.float64],
    ) -> int:
        keys = _as_keys(hashes)
        check_out("out_counts", out_counts, self._num_rows)
        return int(kernel(*self._table(), keys, out_counts))

    def match_prompt(
        self,
        prompt: bytes,
        model: str,
        cache_salt: str,
        block_size_tokens: int,
        max_blocks: int,
        out_counts: npt.NDArray[np.float64],
        *,
        strict: bool = False,
    ) -> npt.NDArray[np.uint64]:
        """:func:`~inference_sched.prefix.hashing.block_hashes` of ``prompt``, then
        :meth:`match_counting` (or :meth:`match_prefix` when ``strict``), in one kernel.

        Same results as the two calls; faster, because the hashes are matched while they
        are still in cache and the Python work is done once.

        Returns:
            The prompt's block hashes (uint64), as ``block_hashes`` returns them.
        """
        # Read-only: the layout the kernel is pinned to (a no-op over ``bytes``).
        data = readonly(np.frombuffer(prompt, _UINT8))
        return self._hash_match(
            data, block_size_tokens, model, cache_salt, max_blocks, out_counts, strict
        )

    def match_tokens(
        self,
        tokens: npt.ArrayLike,
        model: str,
        cache_salt: str,
        block_size_tokens: int,
        max_blocks: int,
        out_counts: npt.NDArray[np.float64],
        *,
        strict: bool = False,
    ) -> npt.NDArray[np.uint64]:
        """:meth:`match_prompt` over token ids (as
        :func:`~inference_sched.prefix.hashing.gie_token_block_hashes` hashes them)."""
        data = as_token_ids(tokens).view(_UINT8)  # each id as 4 little-endian bytes
        return self._hash_match(
            data, block_size_tokens, model, cache_salt, max_blocks, out_counts, strict
        )

    def _hash_match(
        self,
        data: npt.NDArray[np.uint8],
        block_size_tokens: int,
        model: str,
        cache_salt: str,
        max_blocks: int,
        out_counts: npt.NDArray[np.float64],
        strict: bool,
    ) -> npt.NDArray[np.uint64]:
        check_out("out_counts", out_counts, self._num_rows)
        block_bytes = BYTES_PER_TOKEN * int(block_size_tokens)
        out = np.empty(num_block_hashes(len(data), block_bytes, int(max_blocks)), _UINT64)
        if out.shape[0] == 0:
            out_counts[:] = 0.0
            return out
        count = _k._hash_match(
            *self._table(),
            data,
            block_bytes,
            int(max_blocks),
            chain_seed(model, cache_salt),
            bool(strict),
            out,
            out_counts,
        )
        return out[:count]

    # ------------------------------------------------------------------ inspection

    def size(self) -> int:
        """Total (hash, endpoint) entries (GIE's ``prefix_indexer_size``)."""
        return int(self._meta[_k._M_ENTRIES])

    def num_hashes(self) -> int:
        """Distinct hashes held by at least one endpoint."""
        return int(self._meta[_k._M_LIVE])

    def endpoint_size(self, row: int) -> int:
        """Number of hashes in endpoint ``row``'s LRU (0 if it has none)."""
        row = check_row(row, _MAX_ROW)
        return int(self._eps[row, _k._EP_SIZE]) if row < self._eps.shape[0] else 0

    def endpoint_capacity(self, row: int) -> int:
        """Capacity of endpoint ``row``'s LRU (0 if it has none)."""
        row = check_row(row, _MAX_ROW)
        return int(self._eps[row, _k._EP_CAPACITY]) if row < self._eps.shape[0] else 0

    def lru_order(self, row: int) -> list[int]:
        """Endpoint ``row``'s hashes from least to most recently used.

        For tests and inspection: each entry costs a walk along its hash's endpoint list.
        """
        n = self.endpoint_size(row)
        out = np.empty(n, dtype=np.int64)
        if n:
            _k._lru_hashes(self._keys, self._nodes, self._eps, row, out)
        return [int(h) for h in out.view(np.uint64)]

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (allocated, including pool headroom).

        The node pool's headroom past the most nodes ever live is allocated but never
        written, so the resident size can be lower.
        """
        arrays = (self._keys, self._heads, self._nodes, self._eps, self._meta)
        return sum(a.nbytes for a in arrays)

    def __repr__(self) -> str:
        return (
            f"PrefixIndex(size={self.size()}, num_hashes={self.num_hashes()}, "
            f"slots={self._keys.shape[0]}, nbytes={self.nbytes})"
        )

    # ------------------------------------------------------------------ internals

    def _lists(self) -> _Lists:
        """The table, nodes, endpoints and meta: the arrays the writing kernels take first."""
        return self._keys, self._heads, self._nodes, self._eps, self._meta

    def _table(self) -> _Table:
        """The table, nodes and table shift: what the matching kernels take first."""
        return self._keys, self._heads, self._nodes, self._meta[_k._M_SHIFT]

    @staticmethod
    def _new_endpoints(num_rows: int) -> npt.NDArray[np.int32]:
        eps = np.zeros((num_rows, _k._EP_FIELDS), dtype=np.int32)
        eps[:, _k._EP_HEAD] = -1
        eps[:, _k._EP_TAIL] = -1
        return eps

    def _grow_endpoints(self, num_rows: int) -> None:
        eps = self._new_endpoints(max(num_rows, 2 * self._eps.shape[0]))
        eps[: self._eps.shape[0]] = self._eps
        self._eps = eps

    def _ensure_capacity(self, num_entries: int, num_hashes: int) -> None:
        """Grow the node pool to ``num_entries`` nodes (by half its size at least) and the
        table to hold ``num_hashes`` distinct hashes at load <= 7/10; never shrinks."""
        if num_entries > self._nodes.shape[0]:
            self._resize_nodes(max(num_entries, 3 * self._nodes.shape[0] // 2))
        if 10 * num_hashes > 7 * self._keys.shape[0]:
            self._rehash(_slots_for(num_hashes))

    def _resize_nodes(self, num_nodes: int) -> None:
        nodes = np.empty((num_nodes, _k._NODE_FIELDS), dtype=np.int32)
        high = int(self._meta[_k._M_HIGH])
        nodes[:high] = self._nodes[:high]
        self._nodes = nodes

    def _rehash(self, num_slots: int) -> None:
        """Rebuild the table with ``num_slots`` slots (a power of two above the live load)."""
        keys = np.zeros(num_slots, dtype=np.int64)
        heads = np.full(num_slots, _k._EMPTY, dtype=np.int32)
        shift = 64 - (num_slots.bit_length() - 1)
        _k._rehash(self._keys, self._heads, keys, heads, shift, self._nodes)
        self._keys, self._heads = keys, heads
        self._meta[_k._M_SHIFT] = shift
