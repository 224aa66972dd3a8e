"""The precise index's kernels equal their twins; PreciseIndex equals its model.

* ``_chain_block_keys`` / ``_match_tiers`` / ``_hash_match_tiers`` (Numba) against their
  NumPy twins in ``reference.py``, on generated tokens, mixes and stores; the chain
  without mixes is the prefix-hashing token chain over full blocks, and continuing a
  chain from a key equals hashing in one go.
* A stateful test drives :class:`~inference_sched.prefix.precise.index.PreciseIndex` (tiny pools,
  so every growth path runs) and
  :class:`~tests.oracles.prefix_index_model.PreciseIndexModel` with the same stored /
  removed / cleared events (single and batched), speculation, expiry, capacity changes
  and matches, and compares results, sizes, every LRU's order and the counters.

Everything here also runs under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from numba.core.dispatcher import Dispatcher

from inference_sched.kernels import precise_index as kernels
from inference_sched.kernels._jit import is_jit_enabled
from inference_sched.kernels._twins import precise_index as reference
from inference_sched.kernels.prefix_index import _M_SHIFT
from inference_sched.prefix.hashing import chain_seed, gie_token_block_hashes, readonly
from inference_sched.prefix.precise import EventBatchBuilder, PreciseIndex
from tests.oracles.prefix_index_model import PreciseIndexModel

pytestmark = pytest.mark.property

TWINNED = ("_chain_block_keys", "_match_tiers", "_hash_match_tiers")
SENTINEL = np.uint64(0xDEAD_BEEF_DEAD_BEEF)

tokens_st = st.lists(st.integers(0, 2**32 - 1), max_size=120).map(
    lambda t: readonly(np.array(t, dtype=np.uint32))
)
mixes_st = st.lists(st.one_of(st.just(0), st.integers(1, 2**64 - 1)), max_size=40).map(
    lambda m: np.array(m, dtype=np.uint64)
)
seeds = st.integers(0, 2**64 - 1).map(np.uint64)


# --------------------------------------------------------------------------- chains


@given(
    tokens=tokens_st,
    block_tokens=st.integers(1, 9),
    max_blocks=st.integers(-1, 60),
    seed=seeds,
    mixes=mixes_st,
    out_len=st.integers(0, 70),
)
def test_chain_block_keys_matches_reference(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    out_len: int,
) -> None:
    got = np.full(out_len + 2, SENTINEL, dtype=np.uint64)
    expected = got.copy()
    count = kernels._chain_block_keys(tokens, block_tokens, max_blocks, seed, mixes, got[:out_len])
    assert count == reference._chain_block_keys(
        tokens, block_tokens, max_blocks, seed, mixes, expected[:out_len]
    )
    assert got.tolist() == expected.tolist()


@given(tokens=tokens_st, block_tokens=st.integers(1, 9), model=st.sampled_from(["m", "lora"]))
def test_without_mixes_the_chain_is_the_token_chain_over_full_blocks(
    tokens: npt.NDArray[np.uint32], block_tokens: int, model: str
) -> None:
    num_full = len(tokens) // block_tokens
    out = np.empty(num_full, dtype=np.uint64)
    no_mixes = np.zeros(0, dtype=np.uint64)
    count = kernels._chain_block_keys(tokens, block_tokens, 10**6, chain_seed(model), no_mixes, out)
    expected = gie_token_block_hashes(
        tokens[: num_full * block_tokens], model, "", block_tokens, 10**6
    )
    assert count == num_full
    assert out.tolist() == expected.tolist()


@given(tokens=tokens_st, block_tokens=st.integers(1, 9), seed=seeds, data=st.data())
def test_a_chain_continued_from_a_key_equals_the_whole_chain(
    tokens: npt.NDArray[np.uint32], block_tokens: int, seed: np.uint64, data: st.DataObject
) -> None:
    num_full = len(tokens) // block_tokens
    mixes = data.draw(mixes_st)
    whole = np.empty(num_full, dtype=np.uint64)
    kernels._chain_block_keys(tokens, block_tokens, num_full, seed, mixes, whole)
    k = data.draw(st.integers(0, num_full))
    head = np.empty(k, dtype=np.uint64)
    kernels._chain_block_keys(tokens, block_tokens, k, seed, mixes, head)
    tail = np.empty(num_full - k, dtype=np.uint64)
    parent = np.uint64(whole[k - 1]) if k else seed
    kernels._chain_block_keys(
        tokens[k * block_tokens :], block_tokens, 10**6, parent, mixes[k:], tail
    )
    assert head.tolist() + tail.tolist() == whole.tolist()


# --------------------------------------------------------------------------- matches

B = 2
DOC = np.arange(1, 41, dtype=np.uint32)  # 20 index blocks every endpoint draws from
MEDIA = [None, "GPU", "cpu", "disk", "nvme"]
ROWS = 4


def _filled(data: st.DataObject, num_rows: int) -> tuple[PreciseIndex, PreciseIndexModel]:
    """Both indexes after the same random root-level and child stored events."""
    index = PreciseIndex(block_size_tokens=B, capacity=12, initial_entries=1, initial_rows=1)
    model = PreciseIndexModel(block_size_tokens=B, capacity=12)
    for _ in range(data.draw(st.integers(0, 10))):
        row = data.draw(st.integers(0, num_rows - 1))
        first = data.draw(st.integers(0, 19))
        last = data.draw(st.integers(first, 20))
        hashes = np.arange(1000 * row + first, 1000 * row + last, dtype=np.uint64)
        parent = None if first == 0 else 1000 * row + first - 1
        args = (row, hashes, parent, DOC[first * B : last * B], B)
        kwargs: dict[str, Any] = {"root_name": "m", "medium": data.draw(st.sampled_from(MEDIA))}
        assert index.block_stored(*args, **kwargs) == model.block_stored(*args, **kwargs)
    for row in data.draw(st.lists(st.integers(0, num_rows - 1), max_size=3)):
        keys = index.request_keys(DOC[: 2 * data.draw(st.integers(0, 20))], "m")
        index.add_speculative(row, keys, 0.0)
        model.add_speculative(row, keys, 0.0)
    return index, model


@given(data=st.data(), num_keys=st.integers(0, 20), num_rows=st.integers(1, ROWS))
def test_match_tiers_matches_reference_and_model(
    data: st.DataObject, num_keys: int, num_rows: int
) -> None:
    index, model = _filled(data, num_rows)
    keys = index.request_keys(DOC[: num_keys * B], "m").view(np.int64)
    store = index._store
    shift = int(store._meta[_M_SHIFT])
    weights = index._tiers.weights
    got, expected, modelled = np.full(num_rows, -1.0), np.full(num_rows, -1.0), np.zeros(num_rows)
    assert (
        kernels._match_tiers(store._keys, store._heads, store._nodes, shift, keys, weights, got)
        == num_keys
    )
    assert (
        reference._match_tiers(
            store._keys, store._heads, store._nodes, shift, keys, weights, expected
        )
        == num_keys
    )
    model.match(keys.view(np.uint64), modelled)
    assert got.tolist() == expected.tolist() == modelled.tolist()


@given(
    data=st.data(),
    num_tokens=st.integers(0, 180),
    max_blocks=st.integers(0, 90),
    all_keys=st.booleans(),
)
def test_hash_match_tiers_matches_reference(
    data: st.DataObject, num_tokens: int, max_blocks: int, all_keys: bool
) -> None:
    index, _ = _filled(data, ROWS)
    tokens = readonly(np.concatenate([DOC, DOC, DOC, DOC, DOC])[:num_tokens])
    mixes = data.draw(mixes_st)
    store = index._store
    shift = int(store._meta[_M_SHIFT])
    seed, weights = chain_seed("m"), index._tiers.weights
    got_keys = np.full(max_blocks, SENTINEL, dtype=np.uint64)
    expected_keys = got_keys.copy()
    got, expected = np.full(ROWS, -1.0), np.full(ROWS, -1.0)
    count = kernels._hash_match_tiers(
        store._keys, store._heads, store._nodes, shift,
        tokens, B, max_blocks, seed, mixes, weights, all_keys, got_keys, got,
    )  # fmt: skip
    assert count == reference._hash_match_tiers(
        store._keys, store._heads, store._nodes, shift,
        tokens, B, max_blocks, seed, mixes, weights, all_keys, expected_keys, expected,
    )  # fmt: skip
    assert got_keys.tolist() == expected_keys.tolist()
    assert got.tolist() == expected.tolist()


# --------------------------------------------------------------------------- stateful

ENGINE_POOL = [0, 1, 2, 3, 2**63, 2**64 - 1] + [
    (i * 0x9E3779B97F4A7C15) % 2**64 for i in range(1, 9)
]
TIERS = ["gpu", "cpu", "disk", "other", "speculative", "engine_map"]

rows = st.integers(0, ROWS - 1)
media = st.sampled_from(MEDIA)


def _new_pair() -> tuple[PreciseIndex, PreciseIndexModel]:
    kwargs: dict[str, Any] = {
        "block_size_tokens": B,
        "capacity": 5,
        "speculative_capacity": 4,
        "engine_map_capacity": 7,
        "medium_weights": {"disk": 0.5},
        "other_medium_weight": 0.3,
        "speculative_ttl_s": 2.0,
    }
    index = PreciseIndex(**kwargs, initial_entries=1, initial_rows=1)
    return index, PreciseIndexModel(**kwargs)


class PreciseIndexMachine(RuleBasedStateMachine):
    """Drive the Numba index and the model with the same calls; compare after each."""

    def __init__(self) -> None:
        super().__init__()
        self.index, self.model = _new_pair()
        self.now_s = 0.0
        self.known: dict[int, list[int]] = {row: [] for row in range(ROWS)}
        self.media_used: dict[int, list[str | None]] = {row: [] for row in range(ROWS)}

    def _stored_args(self, data: st.DataObject, row: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        engine_block = data.draw(st.sampled_from([1, 2, 4]), label="engine block size")
        num_engine = data.draw(st.integers(0, 4))
        first = data.draw(st.integers(0, 8))
        num_tokens = num_engine * engine_block
        if data.draw(st.integers(0, 9)) == 0:  # now and then, an inconsistent count
            num_tokens += data.draw(st.sampled_from([-1, 1]))
        tokens = DOC[first * B : first * B + max(num_tokens, 0)]
        known = self.known[row]
        parent = data.draw(
            st.one_of(
                st.none(),
                st.sampled_from(ENGINE_POOL),
                *([st.sampled_from(known)] if known else []),
            )
        )
        hashes = data.draw(
            st.lists(st.sampled_from(ENGINE_POOL), min_size=num_engine, max_size=num_engine)
        )
        extras = None
        if data.draw(st.booleans()):
            extras = [data.draw(st.sampled_from([None, ("img", 1), ("img", 2)])) for _ in hashes]
        kwargs = {
            "root_name": data.draw(st.sampled_from(["m", "lora"])),
            "medium": data.draw(media),
            "extra_keys": extras,
            "cache_salt": data.draw(st.sampled_from(["", "s"])),
        }
        return (row, np.array(hashes, dtype=np.uint64), parent, tokens, engine_block), kwargs

    @rule(data=st.data(), row=rows)
    def stored(self, data: st.DataObject, row: int) -> None:
        args, kwargs = self._stored_args(data, row)
        status = self.index.block_stored(*args, **kwargs)
        assert status == self.model.block_stored(*args, **kwargs)
        self._record(row, args[1], kwargs["medium"])

    def _record(self, row: int, hashes: npt.NDArray[np.uint64], medium: str | None) -> None:
        self.known[row].extend(int(h) for h in hashes)
        self.media_used[row].append(medium)

    @rule(data=st.data(), row=rows, medium=media)
    def tier_update(self, data: st.DataObject, row: int, medium: str | None) -> None:
        hashes = self._known_hashes(data, row)
        no_tokens = np.zeros(0, dtype=np.uint32)
        args = (row, hashes, None, no_tokens, B)
        kwargs: dict[str, Any] = {"root_name": "m", "medium": medium}
        assert self.index.block_stored(*args, **kwargs) == self.model.block_stored(*args, **kwargs)

    @rule(data=st.data(), row=rows)
    def removed(self, data: st.DataObject, row: int) -> None:
        hashes = self._known_hashes(data, row)
        medium = self._medium_used(data, row)
        assert self.index.block_removed(row, hashes, medium) == self.model.block_removed(
            row, hashes, medium
        )

    def _medium_used(self, data: st.DataObject, row: int) -> str | None:
        """Mostly a medium the row stored blocks in, so removals hit."""
        used = self.media_used[row]
        if len(used) > 0 and data.draw(st.booleans()):
            return data.draw(st.sampled_from(used))
        return data.draw(media)

    def _known_hashes(self, data: st.DataObject, row: int) -> npt.NDArray[np.uint64]:
        known = self.known[row]
        picked = data.draw(st.lists(st.sampled_from(known), max_size=4)) if known else []
        strays = data.draw(st.lists(st.sampled_from(ENGINE_POOL), max_size=1))
        return np.array(picked + strays, dtype=np.uint64)

    @rule(row=rows, dice=st.integers(0, 3))
    def cleared(self, row: int, dice: int) -> None:
        if dice == 0:  # a quarter of the draws: clearing often leaves little to check
            assert self.index.clear_endpoint(row) == self.model.clear_endpoint(row)

    @rule(data=st.data())
    def batch(self, data: st.DataObject) -> None:
        """Several events in one ``apply_events`` call; the model gets them one by one."""
        builder = EventBatchBuilder(self.index)
        expected = []
        for _ in range(data.draw(st.integers(1, 4))):
            row = data.draw(rows)
            kind = data.draw(st.sampled_from(["stored"] * 4 + ["removed"] * 3 + ["cleared"]))
            if kind == "stored":
                args, kwargs = self._stored_args(data, row)
                builder.stored(*args, **kwargs)
                expected.append(self.model.block_stored(*args, **kwargs))
                self._record(row, args[1], kwargs["medium"])
            elif kind == "removed":
                hashes, medium = self._known_hashes(data, row), self._medium_used(data, row)
                builder.removed(row, hashes, medium)
                expected.append(self.model.block_removed(row, hashes, medium))
            else:
                builder.cleared(row)
                expected.append(self.model.clear_endpoint(row))
        assert self.index.apply_events(builder.build()).tolist() == expected

    @rule(data=st.data(), row=rows)
    def speculate(self, data: st.DataObject, row: int) -> None:
        num_blocks = data.draw(st.integers(0, 6))
        keys = self.index.request_keys(
            DOC[: num_blocks * B], data.draw(st.sampled_from(["m", "lora"]))
        )
        assert self.index.add_speculative(row, keys, self.now_s) == (
            self.model.add_speculative(row, keys, self.now_s)
        )

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))
    def tick_and_expire(self, dt: float) -> None:
        self.now_s += dt
        assert self.index.expire(self.now_s) == self.model.expire(self.now_s)

    @rule(row=rows, tier=st.sampled_from(TIERS), num_blocks=st.integers(1, 6))
    def set_capacity(self, row: int, tier: str, num_blocks: int) -> None:
        assert self.index.set_capacity(row, tier, num_blocks) == (
            self.model.set_capacity(row, tier, num_blocks)
        )
        assert self.index.capacity(row, tier) == self.model.capacity(row, tier)

    @precondition(lambda self: self.index.num_rows > 0)
    @rule(data=st.data())
    def match(self, data: st.DataObject) -> None:
        """Match a chain both implementations may hold: a DOC prefix, or a row's own keys."""
        row = data.draw(rows)
        tier = data.draw(st.sampled_from(TIERS[:5]))
        if data.draw(st.booleans()):
            keys = np.array(self.model.lru_order(row, tier), dtype=np.uint64)
        else:
            num_blocks = data.draw(st.integers(0, 12))
            keys = self.index.request_keys(
                DOC[: num_blocks * B], data.draw(st.sampled_from(["m", "lora"]))
            )
        got, expected = np.full(ROWS, -1.0), np.full(ROWS, -1.0)
        assert self.index.match(keys, got) == self.model.match(keys, expected)
        assert got.tolist() == expected.tolist()

    @invariant()
    def contents_agree(self) -> None:
        assert self.index.size() == self.model.size()
        assert self.index.num_engine_keys() == self.model.num_engine_keys()
        for row in range(ROWS):
            assert self.index.endpoint_size(row) == self.model.endpoint_size(row)
            for tier in TIERS:
                assert self.index.lru_order(row, tier) == self.model.lru_order(row, tier)
                assert self.index.endpoint_size(row, tier) <= self.index.capacity(row, tier)
        assert self.index.stats() == self.model.stats()


PreciseIndexMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
test_precise_index_matches_model = PreciseIndexMachine.TestCase


# --------------------------------------------------------------------------- signatures


# Runs last in this module, after every test above has called the kernels through the
# wrapper and directly: a call with a stray dtype or layout would have compiled a second.
@pytest.mark.skipif(not is_jit_enabled(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
@pytest.mark.parametrize("name", TWINNED)
def test_one_compiled_signature_per_kernel(name: str) -> None:
    dispatcher = getattr(kernels, name)
    assert isinstance(dispatcher, Dispatcher)
    assert len(dispatcher.signatures) == 1, dispatcher.signatures
