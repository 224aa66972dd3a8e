"""Paged KV block manager with prefix caching, after vLLM V1's ``BlockPool``.

The cache holds ``num_blocks`` blocks of ``block_size`` tokens. A full prompt block has a
*key* (:func:`block_keys`): the request's prefix-consistent block id, salted with its LoRA
adapter, so two requests share a block exactly when they share the prefix up to it and
the adapter. Blocks are reference-counted while requests use them; a freed cached block
goes to the tail of an LRU free queue and keeps its key until a new block is needed and
it is evicted (least recently freed first), as in vLLM.

Physical block identity does not matter to the simulator, so the manager keeps only
counts and keys: ``_ref`` (cached blocks in use, key -> reference count), ``_lru`` (cached
free blocks, oldest first) and a count of free blocks without a key. Two simplifications
against vLLM, both in favour of the cache and documented in docs/simulator/engine.md:

- a new block is taken from the key-less free blocks first and evicts a cached one only
  when none is left (vLLM pops the head of one queue holding both kinds);
- a block computed twice (two requests prefilling the same prefix in parallel, or the
  recomputed last block of a fully cached prompt) stays anonymous: one key maps to one
  block.

The engine (:mod:`inference_sched.sim.engine`) registers only full *prompt* blocks; blocks
filled by decoding are allocated but never become reusable prefix.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.sim.prompts import mix_array
from inference_sched.sim.types import SIM_BLOCK_TOKENS

__all__ = [
    "GPU_MEDIUM",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "KVCache",
    "KVEvent",
    "block_keys",
    "lora_int_id",
]

GPU_MEDIUM: Final = "GPU"
"""``medium`` of every event: the simulated cache has one tier."""


class BlockStored(NamedTuple):
    """Blocks became cached (vLLM ``BlockStored``); ``parent_block_hash`` is the key of the
    block before the first one, None at the start of the prompt."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None = None
    """The adapter's name (vLLM since #27577): the chain root of a precise index."""


class BlockRemoved(NamedTuple):
    """Cached blocks were evicted (vLLM ``BlockRemoved``)."""

    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(NamedTuple):
    """The whole prefix cache was dropped (vLLM ``AllBlocksCleared``)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def lora_int_id(name: str) -> int:
    """A stable positive 31-bit id for an adapter name (vLLM's ``lora_int_id`` role).

    Derived with xxhash, not ``hash()``: Python salts string hashes per process, and the
    ids must agree between processes and runs."""
    return xxhash.xxh64_intdigest(name.encode()) % 0x7FFF_FFFF + 1


def _salt(lora: str) -> int:
    return xxhash.xxh64_intdigest(b"lora:" + lora.encode())


def block_keys(
    blocks: npt.NDArray[np.int64], prompt_tokens: int, block_size: int, lora: str | None
) -> list[int]:
    """Keys of the full engine blocks of a prompt, in order.

    Engine block ``k`` of a ``block_size = m * 16`` cache is keyed by the id of its last
    16-token block, ``blocks[(k + 1) * m - 1]``: ids are prefix-consistent, so that one id
    names the whole prefix. The base model keeps the ids themselves; an adapter's keys are
    the ids chained onto the adapter's salt (:func:`~inference_sched.sim.prompts.mix_array`),
    so adapters never share.
    """
    m = block_size // SIM_BLOCK_TOKENS
    ids = blocks[m - 1 :: m][: prompt_tokens // block_size]
    if lora is None:
        keys: list[int] = ids.tolist()
        return keys
    mixed: list[int] = mix_array(_salt(lora), ids).tolist()
    return mixed


class KVCache:
    """Block accounting and the prefix cache of one engine.

    Args:
        num_blocks: capacity in blocks.
        block_size: tokens per block (only reported in events here).
        enable_prefix_caching: when False nothing is ever registered or hit.
        on_event: called with each :data:`KVEvent` as it happens.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        on_event: Callable[[KVEvent], None] | None = None,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.on_event = on_event
        self._ref: dict[int, int] = {}
        # Cached free blocks in free order (a plain dict keeps insertion order; a key is
        # always deleted before it is inserted again, so the order is the LRU order).
        self._lru: dict[int, None] = {}
        self._free_plain = num_blocks
        self.queries_tokens = 0
        """Cumulative prompt tokens looked up (``vllm:prefix_cache_queries_total``)."""
        self.hits_tokens = 0
        """Cumulative tokens found (``vllm:prefix_cache_hits_total``)."""

    # ------------------------------------------------------------------ state
    @property
    def num_free(self) -> int:
        """Blocks a request may take: key-less free blocks plus evictable cached ones."""
        return self._free_plain + len(self._lru)

    @property
    def num_free_plain(self) -> int:
        """Free blocks without a key (taken before any cached block is evicted)."""
        return self._free_plain

    @property
    def num_used(self) -> int:
        """Blocks held by requests (what ``kv_cache_usage_perc`` counts)."""
        return self.num_blocks - self._free_plain - len(self._lru)

    @property
    def num_cached(self) -> int:
        """Blocks holding a key, in use or free."""
        return len(self._ref) + len(self._lru)

    def refcount(self, key: int) -> int:
        """Requests using the cached block ``key`` (0 if free or absent)."""
        return self._ref.get(key, 0)

    def free_queue(self) -> list[int]:
        """Keys of the cached free blocks, next to be evicted first."""
        return list(self._lru)

    def __contains__(self, key: int) -> bool:
        return key in self._ref or key in self._lru

    # -------------------------------------------------------------- requests
    def lookup(self, keys: Sequence[int], max_blocks: int) -> tuple[int, int]:
        """The cached prefix of ``keys``: ``(blocks, of which in the free queue)``.

        Only the leading run of resident keys counts, at most ``max_blocks`` of them (the
        caller caps it so at least the last prompt token is recomputed). No side effect.
        """
        if not self.enable_prefix_caching:
            return 0, 0
        ref, lru = self._ref, self._lru
        hits = free = 0
        for key in keys[:max_blocks]:
            if key in ref:
                hits += 1
            elif key in lru:
                hits += 1
                free += 1
            else:
                break
        return hits, free

    def count_query(self, query_tokens: int, hit_tokens: int) -> None:
        """Count one admission's lookup in the prefix-cache counters."""
        if self.enable_prefix_caching:
            self.queries_tokens += query_tokens
            self.hits_tokens += hit_tokens

    def acquire(self, keys: Sequence[int]) -> None:
        """Take a reference on cached blocks (a prefix hit), reviving free ones."""
        ref, lru = self._ref, self._lru
        counts = list(map(ref.get, keys))
        if None in counts:
            revived = [k for k, c in zip(keys, counts, strict=True) if c is None]
            for key in revived:
                del lru[key]
            ref.update(dict.fromkeys(revived, 1))
            ref.update((k, c + 1) for k, c in zip(keys, counts, strict=True) if c is not None)
        else:
            ref.update(zip(keys, [c + 1 for c in counts], strict=True))  # type: ignore[operator]

    def allocate(self, n: int) -> None:
        """Take ``n`` new (key-less) blocks, evicting least recently freed cached blocks
        once no key-less block is left.

        Raises:
            RuntimeError: fewer than ``n`` free blocks (callers check :attr:`num_free`).
        """
        if n <= 0:
            return
        plain = min(n, self._free_plain)
        self._free_plain -= plain
        n -= plain
        if n == 0:
            return
        if n > len(self._lru):
            self._free_plain += plain
            raise RuntimeError(f"KV cache out of blocks: {n + plain} wanted, {self.num_free} free")
        lru = self._lru
        evicted = list(itertools.islice(lru, n))
        for key in evicted:
            del lru[key]
        if self.on_event is not None:
            self.on_event(BlockRemoved(evicted, GPU_MEDIUM))

    def register(
        self,
        keys: Sequence[int],
        parent: int | None,
        *,
        lora_id: int | None = None,
        lora_name: str | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[int]:
        """Give keys to freshly computed full blocks (already allocated, in use by one
        request); returns the keys registered, which the request then holds.

        A key already resident (computed twice) is skipped: that block stays anonymous.
        ``parent`` is the key of the block before ``keys[0]`` (for events); ``token_ids``
        the token ids of each block (events only; default: empty).
        """
        if not self.enable_prefix_caching or not keys:
            return []
        ref, lru = self._ref, self._lru
        if ref.keys().isdisjoint(keys) and lru.keys().isdisjoint(keys):
            ref.update(dict.fromkeys(keys, 1))
            done = list(keys)
        else:
            done = []
            for key in keys:
                if key not in ref and key not in lru:
                    ref[key] = 1
                    done.append(key)
        if self.on_event is not None and done:
            self._emit_stored(keys, done, parent, lora_id, lora_name, token_ids)
        return done

    def _emit_stored(
        self,
        keys: Sequence[int],
        done: list[int],
        parent: int | None,
        lora_id: int | None,
        lora_name: str | None,
        token_ids: Sequence[Sequence[int]] | None,
    ) -> None:
        # One event per run of consecutive registered blocks (a skipped duplicate breaks
        # the chain: the next run's parent is that duplicate's key).
        assert self.on_event is not None
        stored = set(done)
        run: list[int] = []
        tokens: list[int] = []
        run_parent = parent
        for i, key in enumerate(keys):
            if key in stored:
                run.append(key)
                if token_ids is not None:
                    tokens.extend(token_ids[i])
                continue
            if run:
                self.on_event(
                    BlockStored(
                        run, run_parent, tokens, self.block_size, lora_id, GPU_MEDIUM, lora_name
                    )
                )
                run, tokens = [], []
            run_parent = key
        if run:
            self.on_event(
                BlockStored(
                    run, run_parent, tokens, self.block_size, lora_id, GPU_MEDIUM, lora_name
                )
            )

    def preload(
        self,
        keys: Sequence[int],
        *,
        lora_id: int | None = None,
        lora_name: str | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> int:
        """Blocks that arrived from another engine (a P/D KV transfer) become cached free
        blocks, as if computed here and released: the request that asked for them hits
        them at admission. Loads the leading ``keys`` that fit in the free blocks; returns
        how many of ``keys`` are resident afterwards (a prefix).
        """
        if not self.enable_prefix_caching or not keys:
            return 0
        resident = [k for k in keys if k in self]
        self.acquire(resident)  # not evicted by the allocation below
        # The transfer fills whole blocks in order; a block that does not fit ends it.
        fit = min(len(keys), self.num_free)
        batch = list(keys[:fit])
        self.allocate(len(batch))
        done = self.register(batch, None, lora_id=lora_id, lora_name=lora_name, token_ids=token_ids)
        registered = set(done)
        held = set(resident)
        self.free([k for k in batch if k in registered or k in held], len(batch) - len(done))
        leftover = [k for k in resident if k not in set(batch)]
        if leftover:
            self.free(leftover, 0)
        loaded = 0
        for key in keys:
            if key not in self:
                break
            loaded += 1
        return loaded

    def free(self, keys: Sequence[int], num_plain: int) -> None:
        """Release a request's blocks: its cached ``keys`` (in block order) and
        ``num_plain`` key-less blocks.

        Cached blocks whose count drops to zero join the tail of the free queue in
        reverse block order, so a prompt's last blocks are evicted before its first ones
        (vLLM frees in the same order: shared prefixes live longest).
        """
        if keys:
            ref, lru = self._ref, self._lru
            counts = list(map(ref.pop, keys))
            n = len(counts)
            ones = counts.count(1)
            first = counts.index(1) if ones else n
            if ones == n - first:
                # The usual shape: a shared prefix (count > 1), then blocks only this
                # request held, which go to the free queue in bulk.
                if first:
                    ref.update(zip(keys[:first], [c - 1 for c in counts[:first]], strict=True))
                if ones:
                    lru.update(dict.fromkeys(keys[: first - 1 : -1] if first else keys[::-1]))
            else:
                ref.update((k, c - 1) for k, c in zip(keys, counts, strict=True) if c > 1)
                lru.update(
                    dict.fromkeys(
                        k for k, c in zip(keys[::-1], counts[::-1], strict=True) if c == 1
                    )
                )
        self._free_plain += num_plain

    def reset(self) -> bool:
        """Drop every cached free block (vLLM ``reset_prefix_cache``); only possible
        while no block is in use. Returns whether it happened."""
        if self.num_used:
            return False
        self._free_plain = self.num_blocks
        self._lru.clear()
        if self.on_event is not None:
            self.on_event(AllBlocksCleared())
        return True
