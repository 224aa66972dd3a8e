"""KVCache: prefix hits, reference counts, LRU eviction, keys, events; agrees with a model.

The reference model below tracks physical blocks one by one (a free list holding keyed and
key-less blocks in free order), the way vLLM's block pool does, with the documented
simplification that a key-less free block is taken before a cached one is evicted.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_sched.sim.kvcache import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVCache,
    KVEvent,
    block_keys,
    lora_int_id,
)


def _cache(n: int = 8) -> tuple[KVCache, list[KVEvent]]:
    events: list[KVEvent] = []
    return KVCache(n, 16, on_event=events.append), events


def _admit(cache: KVCache, keys: list[int], blocks: int) -> tuple[list[int], int]:
    """Admit a request of ``blocks`` blocks whose full blocks have ``keys``: hit, take,
    register the rest. Returns (held keys, key-less blocks)."""
    hits, _ = cache.lookup(keys, blocks)
    cache.acquire(keys[:hits])
    cache.allocate(blocks - hits)
    held = keys[:hits] + cache.register(keys[hits:], keys[hits - 1] if hits else None)
    return held, blocks - len(held)


def test_hits_are_leading_resident_blocks_only() -> None:
    cache, _ = _cache()
    held, plain = _admit(cache, [1, 2, 3], 4)
    assert (held, plain) == ([1, 2, 3], 1)
    assert cache.num_used == 4
    assert cache.lookup([1, 2, 9, 3], 4) == (2, 0)
    assert cache.lookup([1, 2, 3], 2) == (2, 0)  # capped by the caller
    cache.free(held, plain)
    assert cache.num_used == 0
    assert cache.num_free == 8
    assert cache.lookup([1, 2, 3], 3) == (3, 3)  # all three in the free queue
    assert cache.free_queue() == [3, 2, 1]  # reverse block order: the tail goes first


def test_refcounts_and_revival() -> None:
    cache, _ = _cache()
    a, pa = _admit(cache, [1, 2], 2)
    b, pb = _admit(cache, [1, 2, 5], 3)
    assert cache.refcount(1) == 2
    assert cache.refcount(5) == 1
    cache.free(a, pa)
    assert cache.refcount(1) == 1
    assert cache.free_queue() == []
    cache.free(b, pb)
    assert cache.free_queue() == [5, 2, 1]
    c, _ = _admit(cache, [1, 2], 2)
    assert c == [1, 2]
    assert cache.free_queue() == [5]
    assert cache.num_used == 2


def test_eviction_lru_after_plain_blocks() -> None:
    cache, events = _cache(4)
    a, pa = _admit(cache, [1, 2], 2)
    cache.free(a, pa)
    b, pb = _admit(cache, [3, 4], 2)
    cache.free(b, pb)
    assert cache.free_queue() == [2, 1, 4, 3]
    assert cache.num_free_plain == 0
    events.clear()
    cache.allocate(3)
    assert events == [BlockRemoved([2, 1, 4], "GPU")]
    assert cache.free_queue() == [3]
    with pytest.raises(RuntimeError):
        cache.allocate(2)
    assert cache.num_free == 1  # a failed allocation changes nothing


def test_duplicate_block_stays_anonymous() -> None:
    cache, _ = _cache()
    cache.allocate(2)
    assert cache.register([7, 8], None) == [7, 8]
    cache.allocate(1)
    assert cache.register([8], 7) == []  # computed twice: one key, one block
    assert cache.num_used == 3
    assert cache.num_cached == 2


def test_stored_events_split_at_duplicates() -> None:
    cache, events = _cache()
    cache.allocate(1)
    cache.register([2], 1)
    events.clear()
    cache.allocate(3)
    cache.register([1, 2, 3], None, lora_id=5, token_ids=[[10], [20], [30]])
    assert events == [
        BlockStored([1], None, [10], 16, 5, "GPU"),
        BlockStored([3], 2, [30], 16, 5, "GPU"),
    ]


def test_reset_only_when_nothing_is_used() -> None:
    cache, events = _cache()
    held, plain = _admit(cache, [1], 1)
    assert not cache.reset()
    cache.free(held, plain)
    assert cache.reset()
    assert events[-1] == AllBlocksCleared()
    assert cache.num_cached == 0


def test_prefix_caching_off() -> None:
    cache = KVCache(4, 16, enable_prefix_caching=False)
    cache.allocate(2)
    assert cache.register([1, 2], None) == []
    cache.free([], 2)
    assert cache.lookup([1, 2], 2) == (0, 0)
    cache.count_query(32, 0)
    assert cache.queries_tokens == 0


def test_block_keys() -> None:
    ids = np.arange(100, 108, dtype=np.int64)
    assert block_keys(ids, 120, 16, None) == [100, 101, 102, 103, 104, 105, 106]  # 7 full
    assert block_keys(ids, 128, 32, None) == [101, 103, 105, 107]  # last 16-id of each
    lora_a = block_keys(ids, 128, 16, "a")
    assert lora_a == block_keys(ids, 128, 16, "a")
    assert not set(lora_a) & set(block_keys(ids, 128, 16, "b"))
    assert not set(lora_a) & set(ids.tolist())
    assert lora_a[:3] == block_keys(ids[:3], 48, 16, "a")  # prefix-consistent
    # Stable across processes: pinned values (xxhash, not the salted hash()).
    assert lora_int_id("a") == lora_int_id("a") > 0
    assert block_keys(np.array([1], dtype=np.int64), 16, 16, "x") == [
        block_keys(np.array([1], dtype=np.int64), 16, 16, "x")[0]
    ]


# --------------------------------------------------------------- model check


class _RefCache:
    """Physical blocks, one free list in free order (keyed and key-less)."""

    def __init__(self, n: int) -> None:
        self.key: list[int | None] = [None] * n
        self.ref = [0] * n
        self.free = list(range(n))
        self.evicted: list[int] = []

    def find(self, key: int) -> int | None:
        for b, k in enumerate(self.key):
            if k == key:
                return b
        return None

    def lookup(self, keys: list[int], max_blocks: int) -> int:
        hits = 0
        for key in keys[:max_blocks]:
            if self.find(key) is None:
                break
            hits += 1
        return hits

    def take(self) -> int:
        plain = [b for b in self.free if self.key[b] is None]
        b = plain[0] if plain else self.free[0]
        self.free.remove(b)
        if self.key[b] is not None:
            self.evicted.append(self.key[b])  # type: ignore[arg-type]
            self.key[b] = None
        self.ref[b] = 1
        return b

    def admit(self, keys: list[int], blocks: int) -> list[int]:
        hits = self.lookup(keys, blocks)
        table = []
        for key in keys[:hits]:
            b = self.find(key)
            assert b is not None
            if self.ref[b] == 0:
                self.free.remove(b)
            self.ref[b] += 1
            table.append(b)
        for i in range(hits, blocks):
            b = self.take()
            if i < len(keys) and self.find(keys[i]) is None:
                self.key[b] = keys[i]
            table.append(b)
        return table

    def release(self, table: list[int]) -> None:
        for b in reversed(table):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free.append(b)

    def used(self) -> int:
        return len(self.key) - len(self.free)

    def free_queue(self) -> list[int]:
        return [self.key[b] for b in self.free if self.key[b] is not None]  # type: ignore[misc]


_op = st.one_of(
    st.tuples(
        st.just("admit"),
        st.integers(0, 3),  # prefix family
        st.integers(1, 5),  # full blocks
        st.integers(0, 1),  # extra key-less block (partial / decode)
    ),
    st.tuples(st.just("free"), st.integers(0, 20), st.just(0), st.just(0)),
)


@settings(max_examples=150)
@given(st.integers(3, 12), st.lists(_op, max_size=40))
def test_matches_reference_model(num_blocks: int, ops: list[tuple[str, int, int, int]]) -> None:
    evicted: list[int] = []

    def on_event(event: KVEvent) -> None:
        if isinstance(event, BlockRemoved):
            evicted.extend(event.block_hashes)

    cache = KVCache(num_blocks, 16, on_event=on_event)
    ref = _RefCache(num_blocks)
    live: list[tuple[list[int], int, list[int]]] = []
    for kind, a, b, c in ops:
        if kind == "admit":
            keys = [1000 * a + i for i in range(b)]  # families share nothing; lengths vary
            blocks = b + c
            hits, hits_free = cache.lookup(keys, blocks)
            assert hits == ref.lookup(keys, blocks)
            if blocks - hits + hits_free > cache.num_free:
                continue  # would not fit: the engine waits or preempts
            held, plain = _admit(cache, keys, blocks)
            live.append((held, plain, ref.admit(keys, blocks)))
        elif live:
            held, plain, table = live.pop(a % len(live))
            cache.free(held, plain)
            ref.release(table)
        assert cache.num_used == ref.used() <= num_blocks
        assert cache.free_queue() == ref.free_queue()
        assert evicted == ref.evicted
        for b_, key in enumerate(ref.key):
            if key is not None:
                assert key in cache
                assert cache.refcount(key) == ref.ref[b_]
        assert cache.num_cached == sum(k is not None for k in ref.key)
