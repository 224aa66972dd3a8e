"""KV events into the precise index: BlockStored, BlockRemoved, AllBlocksCleared.

vLLM publishes these events per engine (vllm: ``vllm/distributed/kv_events.py``);
:mod:`inference_sched.prefix.precise.wire` decodes them into plain arrays and this module
applies them to a :class:`~inference_sched.prefix.precise.index.PreciseIndex`, one event
at a time (:class:`EventMethods`, the index's event methods) or as an
:class:`EventBatch` built by :class:`EventBatchBuilder` and applied in one kernel call.
llm-d-kv-cache processes the same events in ``pkg/kvcache/kvevents/pool.go``.

A BlockStored chains request keys from its parent's key (the parent engine hash looked
up in the endpoint's engine-key map, :mod:`inference_sched.prefix.precise.keys`) or, for a
root-level event, from the root's seed; inserts them in the medium's tier; and maps each
engine hash to the index blocks its tokens overlap. A BlockRemoved drops the medium's
entries of the keys its engine hashes map to; AllBlocksCleared forgets the endpoint.
Events that cannot be placed change nothing: they return a negative status
(:data:`STATUS_UNKNOWN_PARENT`, :data:`STATUS_MISALIGNED_PARENT`, :data:`STATUS_INVALID`)
and are counted in :meth:`PreciseIndex.stats`. ``docs/precise-index.md`` ("Block sizes")
covers engine block sizes that differ from the index's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.kernels import precise_index as _k
from inference_sched.prefix._checks import check_int
from inference_sched.prefix.hashing import as_token_ids, chain_seed, readonly
from inference_sched.prefix.precise.keys import (
    MAX_ROW,
    as_engine_hashes,
    check_parent_hash,
    checked_row,
    event_mixes,
)

if TYPE_CHECKING:
    from inference_sched.prefix.precise.index import PreciseIndex, _Store, _Tiers

__all__ = [
    "STATUS_INVALID",
    "STATUS_MISALIGNED_PARENT",
    "STATUS_UNKNOWN_PARENT",
    "EventBatch",
    "EventBatchBuilder",
    "EventMethods",
]

STATUS_UNKNOWN_PARENT: Final = _k._STATUS_UNKNOWN_PARENT
"""BlockStored status: the parent engine block is not in the endpoint's map (dropped)."""
STATUS_MISALIGNED_PARENT: Final = _k._STATUS_MISALIGNED_PARENT
"""BlockStored status: the parent engine block is known but ends inside an index block,
so the chain cannot continue from it (engine block size not a multiple of ours)."""
STATUS_INVALID: Final = _k._STATUS_INVALID
"""BlockStored status: ``len(token_ids)`` is neither 0 nor hashes x engine block size
(vLLM's sliding-window and Mamba groups name fewer hashes than blocks: not indexed)."""

_UINT32: Final = np.dtype(np.uint32)
_UINT64: Final = np.dtype(np.uint64)
_NO_MIXES: Final = np.zeros(0, dtype=np.uint64)
_NO_TOKENS: Final = np.zeros(0, dtype=np.uint32)
_NO_HASHES: Final = np.zeros(0, dtype=np.uint64)
_MAX_BLOCK_SIZE: Final = 2**31 - 1  # EventBatch.engine_block_sizes is int32


# --------------------------------------------------------------------------- applying


class EventMethods:
    """The event methods of :class:`~inference_sched.prefix.precise.index.PreciseIndex`
    (its base class): one event at a time, or a batch in one kernel call."""

    # Provided by PreciseIndex.
    block_size_tokens: int
    _store: _Store
    _tiers: _Tiers

    def _start_rows(self, row: int) -> None:
        """Start the LRUs of rows up to ``row`` (a checked row) if they are new."""
        raise NotImplementedError  # PreciseIndex implements it

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
            ValueError: a bad row, a parent hash outside uint64, an engine block size
                outside ``[0, 2**31 - 1]``, or ``extra_keys`` not one per engine block.
            TypeError: a bad extra key or medium.
            OverflowError: an engine hash or token id given as a Python int outside
                uint64 or uint32.
        """
        row = checked_row(row)
        event = _stored(
            self.block_size_tokens,
            engine_hashes,
            parent_engine_hash,
            token_ids,
            engine_block_size,
            extra_keys,
        )
        self._start_rows(row)
        while True:
            status = _k._apply_stored(
                *self._store.state(),
                row,
                self._tiers.of_medium(medium),
                chain_seed(root_name, cache_salt),
                event.parent is not None,
                np.uint64(event.parent or 0),
                event.hashes,
                event.tokens,
                event.block_size,
                self.block_size_tokens,
                event.mixes,
            )
            if status != _k._STATUS_NEED_ROOM:
                return int(status)
            self._store.grow()

    def block_removed(
        self, row: int, engine_hashes: npt.ArrayLike, medium: str | None = None
    ) -> int:
        """Apply a BlockRemoved event: drop the row's ``medium`` entries of the keys each
        engine hash maps to; return how many entries went.

        An engine hash the row's map does not know counts as an unknown removal. Its
        map entries go once the row holds none of their keys in any reported tier.
        """
        row = checked_row(row)
        hashes = as_engine_hashes(engine_hashes)
        self._start_rows(row)
        tier = self._tiers.of_medium(medium)
        return int(_k._apply_removed(*self._store.state(), row, tier, hashes))

    def clear_endpoint(self, row: int) -> int:
        """Forget everything of endpoint ``row``: every tier, speculative entries and its
        engine map (AllBlocksCleared, a sequence gap, or the endpoint leaving). Its
        capacities stay. Returns the cache entries removed (the map's not counted)."""
        row = checked_row(row)
        self._start_rows(row)
        store = self._store
        return int(_k._clear_endpoint(*store._lists(), store.counters, row))

    def apply_events(self, batch: EventBatch) -> npt.NDArray[np.int64]:
        """Apply a batch of events in order, in one kernel call.

        Returns:
            int64 (len(batch),): each event's result, as :meth:`block_stored`,
            :meth:`block_removed` and :meth:`clear_endpoint` return it.

        Raises:
            ValueError: arrays of the wrong dtype or length, offsets that do not cut
                their arrays, a bad kind, row or tier.
        """
        _check_batch(batch, self._tiers.cache_codes)
        n = len(batch)
        statuses = np.zeros(n, dtype=np.int64)
        if n == 0:
            return statuses
        self._start_rows(int(batch.rows.max()))
        tokens = readonly(batch.token_ids)
        start = 0
        while True:
            start = _k._apply_events(
                *self._store.state(),
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
            self._store.grow()


def _check_batch(batch: EventBatch, cache_codes: Sequence[int]) -> None:
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
    if batch.rows.min() < 0 or batch.rows.max() > MAX_ROW:
        raise ValueError(f"rows: expected ints in [0, {MAX_ROW}]")
    events = batch.kinds != _k._KIND_CLEARED
    if not np.isin(batch.tiers[events], cache_codes).all():
        raise ValueError(f"tiers: expected codes from tier_of(), i.e. in {list(cache_codes)}")


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


# --------------------------------------------------------------------------- batches


@attrs.frozen(eq=False)
class EventBatch:
    """KV events of one or more endpoints as flat arrays, applied in order by
    :meth:`PreciseIndex.apply_events` (one kernel call for the whole batch).

    Event ``i`` is ``kinds[i]`` (0 stored, 1 removed, 2 cleared) for endpoint
    ``rows[i]``; its engine hashes are ``engine_hashes[engine_offsets[i]:engine_offsets[i
    + 1]]`` and likewise its token ids and its per-index-block extra-key mixes. ``tiers``
    come from :meth:`PreciseIndex.tier_of`, ``seeds`` (root-level stored events) from
    :meth:`PreciseIndex.root_seed`; the mixes from
    :func:`~inference_sched.prefix.precise.keys.extra_key_mix`, realigned to index
    blocks. :class:`EventBatchBuilder` fills all of it from per-event calls.
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
        """Add a BlockStored event (arguments as :meth:`PreciseIndex.block_stored`).

        Raises what :meth:`PreciseIndex.block_stored` raises, here, so that one bad event
        is left out alone and never makes :meth:`build` fail.
        """
        index = self._index
        event = _stored(
            index.block_size_tokens,
            engine_hashes,
            parent_engine_hash,
            token_ids,
            engine_block_size,
            extra_keys,
        )
        seed = int(index.root_seed(root_name, cache_salt))
        tier = index.tier_of(medium)
        self._append(
            _k._KIND_STORED,
            row,
            tier,
            event.hashes,
            seed,
            event.parent,
            event.tokens,
            event.block_size,
            event.mixes,
        )

    def removed(self, row: int, engine_hashes: npt.ArrayLike, medium: str | None = None) -> None:
        """Add a BlockRemoved event."""
        hashes = as_engine_hashes(engine_hashes)
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
        self._rows.append(checked_row(row))
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


class _Stored(NamedTuple):
    """A BlockStored's arguments, checked and converted for the kernels."""

    hashes: npt.NDArray[np.uint64]
    parent: int | None
    tokens: npt.NDArray[np.uint32]
    block_size: int
    mixes: npt.NDArray[np.uint64]


def _stored(
    block_size_tokens: int,
    engine_hashes: npt.ArrayLike,
    parent_engine_hash: int | None,
    token_ids: npt.ArrayLike,
    engine_block_size: int,
    extra_keys: Sequence[Sequence[object] | None] | None,
) -> _Stored:
    hashes = as_engine_hashes(engine_hashes)
    tokens = as_token_ids(token_ids)
    parent = check_parent_hash(parent_engine_hash)
    block_size = check_int("engine_block_size", engine_block_size, 0, _MAX_BLOCK_SIZE)
    mixes = event_mixes(extra_keys, hashes.shape[0], block_size, tokens.shape[0], block_size_tokens)
    return _Stored(hashes, parent, tokens, block_size, mixes)


def _offsets(parts: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([p.shape[0] for p in parts], out=offsets[1:])
    return offsets


def _concat(parts: Sequence[npt.NDArray[Any]], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
