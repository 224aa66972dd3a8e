"""PreciseIndex: request keys, events, tiers, speculation, capacities; the model agrees.

Examples that both implement run against the Numba index (normal and tiny pools, so
growth happens mid-call) and the pure-Python model
(:class:`~tests.oracles.prefix_index_model.PreciseIndexModel`) with the same expected
values, which pins the model the stateful test trusts. Index blocks are 4 tokens here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import pytest

from inference_sched.kernels._twins import precise_index as reference
from inference_sched.prefix.hashing import chain_seed, gie_token_block_hashes, seed_hash
from inference_sched.prefix.precise import (
    STATUS_INVALID,
    STATUS_MISALIGNED_PARENT,
    STATUS_UNKNOWN_PARENT,
    EventBatch,
    EventBatchBuilder,
    PreciseIndex,
    extra_key_mix,
    split_vllm_extra_keys,
)
from tests.oracles.prefix_index_model import PreciseIndexModel

Index = PreciseIndex | PreciseIndexModel

B = 4
ROOT = "m"
TOKENS = np.arange(100, 124, dtype=np.uint32)  # 6 index blocks
KEYS = [int(k) for k in gie_token_block_hashes(TOKENS, ROOT, "", B, 100)]

IMPLS: dict[str, Callable[..., Index]] = {
    "numba": lambda **kw: PreciseIndex(block_size_tokens=B, **kw),
    "tiny-pools": lambda **kw: PreciseIndex(
        block_size_tokens=B, initial_entries=1, initial_rows=1, **kw
    ),
    "model": lambda **kw: PreciseIndexModel(block_size_tokens=B, **kw),
}


@pytest.fixture(params=list(IMPLS), ids=list(IMPLS))
def make(request: pytest.FixtureRequest) -> Callable[..., Index]:
    """A factory of fresh indexes of each implementation."""
    return IMPLS[request.param]


@pytest.fixture
def index(make: Callable[..., Index]) -> Index:
    return make()


def u64(values: list[int]) -> npt.NDArray[np.uint64]:
    return np.array(values, dtype=np.uint64)


def matched(index: Index, keys: list[int], num_rows: int) -> list[float]:
    out = np.full(num_rows, 99.0)  # the match zeroes it
    assert index.match(u64(keys), out) == len(keys)
    return out.tolist()


def stored(
    index: Index,
    row: int,
    hashes: list[int],
    parent: int | None,
    first: int,
    last: int,
    **kw: Any,
) -> int:
    """BlockStored of index blocks ``first..last-1`` of TOKENS with engine block = B."""
    return index.block_stored(
        row, u64(hashes), parent, TOKENS[first * B : last * B], B, root_name=ROOT, **kw
    )


# --------------------------------------------------------------------------- keys


def test_request_keys_are_the_token_chain_over_full_blocks(index: Index) -> None:
    tokens = np.arange(1000, 1030, dtype=np.uint32)  # 7 full blocks and a 2-token tail
    expected = gie_token_block_hashes(tokens[:28], "lora-a", "salt", B, 100)
    assert list(index.request_keys(tokens, "lora-a", "salt")) == [int(k) for k in expected]
    assert list(index.request_keys(tokens, "lora-a", "salt", 3)) == [int(k) for k in expected[:3]]
    assert list(index.request_keys(tokens[:3], "lora-a")) == []


def test_a_chain_continues_from_the_key_of_its_parent() -> None:
    tokens = np.arange(40, dtype=np.uint32)  # 10 blocks
    whole = np.empty(10, dtype=np.uint64)
    reference._chain_block_keys(tokens, B, 10, chain_seed(ROOT), np.zeros(0, np.uint64), whole)
    for k in (1, 4, 9):
        tail = np.empty(10 - k, dtype=np.uint64)
        seed = np.uint64(whole[k - 1])
        reference._chain_block_keys(tokens[k * B :], B, 10, seed, np.zeros(0, np.uint64), tail)
        assert tail.tolist() == whole[k:].tolist()


def test_extra_keys_mix_into_their_block_and_everything_after(index: Index) -> None:
    plain = list(index.request_keys(TOKENS, ROOT))
    mixed = list(index.request_keys(TOKENS, ROOT, extra_keys=[None, None, ("img-1", 0)]))
    assert mixed[:2] == plain[:2]
    assert all(a != b for a, b in zip(mixed[2:], plain[2:], strict=True))
    # From the mixed block on, the plain chain seeded with its parent xor the mix.
    seed = np.uint64(plain[1] ^ extra_key_mix(("img-1", 0)))
    assert mixed[2:] == [int(k) for k in _chain_from(TOKENS[8:], seed)]


def _chain_from(tokens: npt.NDArray[np.uint32], seed: np.uint64) -> npt.NDArray[np.uint64]:
    out = np.empty(len(tokens) // B, dtype=np.uint64)
    reference._chain_block_keys(tokens, B, len(out), seed, np.zeros(0, np.uint64), out)
    return out


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param(None, [], True, id="none-is-empty"),
        pytest.param(("x", 1), ["x", 1], True, id="list-is-tuple"),
        pytest.param(("x", "x", 1), ("x", 1), True, id="duplicates-dropped"),
        pytest.param(("x", 1), (1, "x"), False, id="order-matters"),
        pytest.param((1,), ("1",), False, id="int-is-not-str"),
        pytest.param((b"x",), ("x",), False, id="bytes-are-not-str"),
        pytest.param((("a", "b"),), ("a", "b"), False, id="nesting-matters"),
        pytest.param((np.uint64(7),), (7,), True, id="numpy-ints"),
    ],
)
def test_extra_key_mix(a: tuple[object, ...] | None, b: tuple[object, ...], same: bool) -> None:
    assert (extra_key_mix(a) == extra_key_mix(b)) is same


def test_extra_key_mix_values() -> None:
    assert extra_key_mix(None) == 0
    assert extra_key_mix(()) == 0
    assert extra_key_mix(("img", 3)) != 0
    assert extra_key_mix((None, True, 1.5, b"\x00")) != 0
    with pytest.raises(TypeError, match=r"extra keys: expected .* got dict"):
        extra_key_mix(({},))


@pytest.mark.parametrize(
    ("extra_keys", "lora_name", "expected"),
    [
        pytest.param(None, None, (None, ""), id="none"),
        pytest.param([None, None], None, (None, ""), id="no-keys"),
        pytest.param([("s1",), None], None, (None, "s1"), id="salt-only"),
        pytest.param(
            [("lora-a", ("img", 0), "s1", b"e0"), ("lora-a", ("img", -16))],
            "lora-a",
            ([(("img", 0), b"e0"), (("img", -16),)], "s1"),
            id="lora-mm-salt-embeds",
        ),
        pytest.param([("lora-a",), ("lora-a",)], "lora-a", (None, ""), id="lora-only"),
        pytest.param([(("img", 0),), None], None, ([(("img", 0),), None], ""), id="mm-only"),
    ],
)
def test_split_vllm_extra_keys(
    extra_keys: list[tuple[object, ...] | None] | None,
    lora_name: str | None,
    expected: tuple[list[tuple[object, ...] | None] | None, str],
) -> None:
    assert split_vllm_extra_keys(extra_keys, lora_name) == expected


def test_a_salted_multimodal_event_matches_its_request(index: Index) -> None:
    # vLLM's extra keys of a LoRA request with an image in block 1 and a cache salt.
    raw = [("lora-a", "salt-1"), ("lora-a", ("img", 2))]
    content, salt = split_vllm_extra_keys(raw, "lora-a")
    index.block_stored(
        0, u64([1, 2]), None, TOKENS[:8], B, root_name="lora-a", extra_keys=content,
        cache_salt=salt,
    )  # fmt: skip
    keys = index.request_keys(TOKENS[:8], "lora-a", "salt-1", extra_keys=[None, [("img", 2)]])
    assert matched(index, [int(k) for k in keys], 1) == [2.0]
    assert matched(index, KEYS[:2], 1) == [0.0]


# --------------------------------------------------------------------------- the H.2 example


def test_worked_example_two_endpoints_gpu_and_cpu_with_a_gap(index: Index) -> None:
    # Endpoint 0 stores all 6 blocks on GPU, then the engine evicts block 3: a gap.
    assert stored(index, 0, [1001, 1002, 1003, 1004, 1005, 1006], None, 0, 6) == 6
    assert index.block_removed(0, u64([1004])) == 1
    # Endpoint 1 holds blocks 0-1 on GPU and has offloaded blocks 0-4 to CPU.
    assert stored(index, 1, [2001, 2002], None, 0, 2) == 2
    assert stored(index, 1, [2001, 2002, 2003, 2004, 2005], None, 0, 5, medium="CPU") == 5
    # Per block, a row adds its best tier's weight until its first missing block:
    # row 0: 1 + 1 + 1, then block 3 is missing; row 1: gpu, gpu, cpu, cpu, cpu.
    out = matched(index, KEYS, 2)
    assert out == [1.0 + 1.0 + 1.0, 1.0 + 1.0 + 0.8 + 0.8 + 0.8]
    scores = np.minimum(1.0, np.array(out) / len(KEYS))  # the scorer: absolute, never min-max
    assert scores.tolist() == [0.5, (1.0 + 1.0 + 0.8 + 0.8 + 0.8) / 6]
    # The GPU copy of block 0 goes; the CPU copy keeps the block (and its map entry).
    assert index.block_removed(1, u64([2001]), "GPU") == 1
    assert matched(index, KEYS, 2)[1] == 0.8 + 1.0 + 0.8 + 0.8 + 0.8
    assert index.block_removed(1, u64([2001]), "cpu") == 1
    assert matched(index, KEYS, 2) == [3.0, 0.0]
    assert index.block_removed(1, u64([2001]), "cpu") == 0  # the map entry is gone now
    assert index.stats()["unknown_removals"] == 1


# --------------------------------------------------------------------------- events


def test_children_chain_from_their_parent(index: Index) -> None:
    assert stored(index, 0, [11, 12], None, 0, 2) == 2
    assert stored(index, 0, [13], 12, 2, 3) == 1  # a decode block
    assert stored(index, 0, [14, 15], 13, 3, 5) == 2
    assert index.lru_order(0, "gpu") == KEYS[:5]
    assert index.lru_order(0, "engine_map") == KEYS[:5]
    assert matched(index, KEYS, 1) == [5.0]


def test_an_unknown_parent_drops_the_event(index: Index) -> None:
    assert stored(index, 0, [11], None, 0, 1) == 1
    assert stored(index, 0, [13], 12, 2, 3) == STATUS_UNKNOWN_PARENT
    assert stored(index, 1, [12], 11, 1, 2) == STATUS_UNKNOWN_PARENT  # maps are per endpoint
    assert index.size() == 1
    assert index.stats()["unknown_parent_events"] == 2


def test_root_level_keys_include_the_root_and_the_salt(index: Index) -> None:
    index.block_stored(0, u64([1]), None, TOKENS[:4], B, root_name="lora-x", cache_salt="s")
    assert index.lru_order(0, "gpu") == [
        int(gie_token_block_hashes(TOKENS[:4], "lora-x", "s", B)[0])
    ]
    assert matched(index, KEYS[:1], 1) == [0.0]


def test_engine_blocks_larger_than_ours_map_to_several_keys(index: Index) -> None:
    # Engine block = 2 index blocks: 3 engine blocks cover 6 keys.
    status = index.block_stored(0, u64([21, 22, 23]), None, TOKENS, 2 * B, root_name=ROOT)
    assert status == 6
    assert index.endpoint_size(0, "engine_map") == 6
    assert index.block_removed(0, u64([22])) == 2  # keys 2 and 3
    assert matched(index, KEYS, 1) == [2.0]
    # A child of engine block 23 continues after key 5.
    more = np.arange(124, 132, dtype=np.uint32)
    assert index.block_stored(0, u64([24]), 23, more, 2 * B, root_name=ROOT) == 2
    expected = gie_token_block_hashes(np.concatenate([TOKENS, more]), ROOT, "", B, 100)
    assert index.lru_order(0, "gpu")[-2:] == [int(k) for k in expected[6:8]]


def test_engine_blocks_smaller_than_ours_share_a_key(index: Index) -> None:
    # Engine block = half an index block: 5 engine blocks, 2 full keys, a half-block tail.
    half = B // 2
    status = index.block_stored(
        0, u64([31, 32, 33, 34, 35]), None, TOKENS[: 5 * half], half, root_name=ROOT
    )
    assert status == 2
    assert index.lru_order(0, "gpu") == KEYS[:2]
    # 32 and 34 end on an index block boundary: they can parent events; 31 cannot, and
    # 35 (all in the tail) is not mapped at all.
    assert index.endpoint_size(0, "engine_map") == 4
    child = TOKENS[8:12]
    assert index.block_stored(0, u64([41, 42]), 34, child, half, root_name=ROOT) == 1
    assert index.lru_order(0, "gpu") == KEYS[:3]
    assert index.block_stored(0, u64([43]), 31, child[:2], half, root_name=ROOT) == (
        STATUS_MISALIGNED_PARENT
    )
    assert index.block_stored(0, u64([44]), 35, child[:2], half, root_name=ROOT) == (
        STATUS_UNKNOWN_PARENT
    )
    assert index.block_removed(0, u64([33])) == 1  # half of key 1 is gone: the key goes
    assert matched(index, KEYS, 1) == [1.0]
    stats = index.stats()
    assert (stats["misaligned_parent_events"], stats["unknown_parent_events"]) == (1, 1)


@pytest.mark.parametrize(
    ("hashes", "num_tokens", "engine_block_size"),
    [
        pytest.param([1, 2], 7, B, id="short"),
        pytest.param([1], 8, B, id="long"),
        pytest.param([1], 4, 0, id="zero-block-size"),
    ],
)
def test_inconsistent_token_counts_are_invalid(
    index: Index, hashes: list[int], num_tokens: int, engine_block_size: int
) -> None:
    status = index.block_stored(
        0, u64(hashes), None, TOKENS[:num_tokens], engine_block_size, root_name=ROOT
    )
    assert status == STATUS_INVALID
    assert (index.size(), index.stats()["invalid_events"]) == (0, 1)


def test_a_tier_update_without_tokens_resolves_keys_through_the_map(index: Index) -> None:
    stored(index, 0, [11, 12, 13], None, 0, 3)
    no_tokens = np.zeros(0, dtype=np.uint32)
    status = index.block_stored(0, u64([12, 99, 13]), 7, no_tokens, B, root_name=ROOT, medium="cpu")
    assert status == 2  # 99 is unknown and skipped; the parent is not needed
    assert index.lru_order(0, "cpu") == KEYS[1:3]
    index.block_removed(0, u64([11, 12, 13]), "gpu")
    assert matched(index, KEYS, 1) == [0.0]  # key 0 is gone from every tier
    assert index.endpoint_size(0, "engine_map") == 2  # 12 and 13 live on in the CPU tier


def test_unknown_media_share_the_other_tier(make: Callable[..., Index]) -> None:
    index = make(medium_weights={"disk": 0.5}, other_medium_weight=0.3)
    stored(index, 0, [1], None, 0, 1, medium="DISK")
    stored(index, 1, [1], None, 0, 1, medium="nvme")
    stored(index, 2, [1], None, 0, 1, medium="tape")
    assert matched(index, KEYS[:1], 3) == [0.5, 0.3, 0.3]
    assert index.endpoint_size(1, "other") == 1
    assert index.block_removed(1, u64([1]), "tape") == 1  # one tier for every other medium


def test_clear_endpoint_forgets_every_tier_and_the_map(index: Index) -> None:
    stored(index, 0, [11, 12], None, 0, 2)
    stored(index, 0, [11, 12], None, 0, 2, medium="cpu")
    index.add_speculative(0, u64(KEYS[:3]), 1.0)
    stored(index, 1, [11], None, 0, 1)
    index.set_capacity(0, "gpu", 7)
    assert index.clear_endpoint(0) == 7
    assert (index.endpoint_size(0), index.endpoint_size(0, "engine_map")) == (0, 0)
    assert index.capacity(0, "gpu") == 7  # capacities stay
    assert matched(index, KEYS, 2) == [0.0, 1.0]
    assert stored(index, 0, [13], 12, 2, 3) == STATUS_UNKNOWN_PARENT
    assert index.clear_endpoint(5) == 0


# --------------------------------------------------------------------------- speculation


def test_speculative_entries_count_fully_and_expire(index: Index) -> None:
    stored(index, 0, [11, 12], None, 0, 2, medium="cpu")
    assert index.add_speculative(0, u64(KEYS[:4]), 10.0) == 4
    assert matched(index, KEYS, 1) == [4.0]  # max(speculative 1.0, cpu 0.8) per block
    assert index.expire(11.999) == 0
    index.add_speculative(0, u64(KEYS[3:4]), 11.0)  # restamped: lives to 13 s
    assert index.expire(12.0) == 3  # stamped 10 s, TTL 2 s: due at exactly 12 s
    assert index.lru_order(0, "speculative") == KEYS[3:4]
    assert matched(index, KEYS, 1) == [0.8 + 0.8]
    assert index.expire(13.0) == 1
    stats = index.stats()
    assert (stats["speculative_inserted"], stats["speculative_expired"]) == (5, 4)


def test_a_stored_block_keeps_its_real_entry_when_the_speculative_one_expires(
    index: Index,
) -> None:
    index.add_speculative(1, u64(KEYS[:2]), 0.0)
    stored(index, 1, [11], None, 0, 1)  # the engine confirms block 0
    index.expire(5.0)
    assert matched(index, KEYS, 2) == [0.0, 1.0]


# --------------------------------------------------------------------------- capacities


def test_each_tier_is_an_lru_bounded_by_its_capacity(make: Callable[..., Index]) -> None:
    index = make(capacity=3)
    stored(index, 0, [11, 12, 13, 14], None, 0, 4)  # the 4th evicts key 0
    assert index.lru_order(0, "gpu") == KEYS[1:4]
    stored(index, 0, [11], None, 0, 1, medium="cpu")  # another tier: its own LRU
    assert index.endpoint_size(0) == 4
    assert index.set_capacity(0, "gpu", 1) == 2
    assert index.lru_order(0, "gpu") == KEYS[3:4]
    assert index.capacity(0, "gpu") == 1
    assert index.capacity(9, "cpu") == 3  # a row not seen yet: the default


def test_the_engine_map_is_bounded_too(make: Callable[..., Index]) -> None:
    index = make(engine_map_capacity=2)
    stored(index, 0, [11, 12, 13], None, 0, 3)
    assert index.lru_order(0, "engine_map") == KEYS[1:3]  # 11 was evicted
    assert stored(index, 0, [99], 11, 1, 2) == STATUS_UNKNOWN_PARENT
    # Using 12 as a parent makes it the most recent: block 2 again, under engine hash 21,
    # evicts 13 rather than 12.
    assert stored(index, 0, [21], 12, 2, 3) == 1
    assert index.lru_order(0, "engine_map") == [KEYS[1], KEYS[2]]
    assert stored(index, 0, [14], 13, 3, 4) == STATUS_UNKNOWN_PARENT
    assert stored(index, 0, [14], 21, 3, 4) == 1
    assert index.lru_order(0, "engine_map") == [KEYS[2], KEYS[3]]
    assert index.lru_order(0, "gpu") == KEYS[:4]
    assert index.block_removed(0, u64([11, 12])) == 0
    assert index.stats()["unknown_removals"] == 2


# --------------------------------------------------------------------------- Numba only


def test_a_batch_equals_the_same_events_one_by_one() -> None:
    one_by_one = PreciseIndex(block_size_tokens=B, initial_entries=1, initial_rows=1)
    batched = PreciseIndex(block_size_tokens=B, initial_entries=1, initial_rows=1)
    builder = EventBatchBuilder(batched)
    events: list[tuple[str, tuple[object, ...], dict[str, object]]] = [
        ("stored", (0, u64([11, 12]), None, TOKENS[:8], B), {"root_name": ROOT}),
        ("stored", (0, u64([13]), 12, TOKENS[8:12], B), {"root_name": ROOT}),
        ("stored", (0, u64([14]), 77, TOKENS[12:16], B), {"root_name": ROOT}),
        ("stored", (3, u64([11]), None, TOKENS[:4], B), {"root_name": ROOT, "medium": "CPU"}),
        ("stored", (3, u64([11]), None, TOKENS[:3], B), {"root_name": ROOT}),
        ("removed", (0, u64([12, 50])), {"medium": None}),
        (
            "stored",
            (2, u64([5, 6]), None, TOKENS[:8], B),
            {"root_name": ROOT, "extra_keys": [None, ("img",)], "cache_salt": "s"},
        ),
        ("cleared", (3,), {}),
        (
            "stored",
            (2, u64([6]), None, np.zeros(0, np.uint32), B),
            {"root_name": ROOT, "medium": "cpu"},
        ),
    ]
    expected = []
    for kind, args, kwargs in events:
        getattr(builder, kind)(*args, **kwargs)
        method = {"stored": "block_stored", "removed": "block_removed"}.get(kind, "clear_endpoint")
        expected.append(getattr(one_by_one, method)(*args, **kwargs))
    batch = builder.build()
    assert len(batch) == len(events)
    assert batched.apply_events(batch).tolist() == expected
    assert expected == [2, 1, STATUS_UNKNOWN_PARENT, 1, STATUS_INVALID, 1, 2, 1, 1]
    for row in range(4):
        for tier in ("gpu", "cpu", "engine_map"):
            assert batched.lru_order(row, tier) == one_by_one.lru_order(row, tier)
    assert batched.stats() == one_by_one.stats()
    assert batched.apply_events(EventBatchBuilder(batched).build()).tolist() == []


def test_batch_checks() -> None:
    index = PreciseIndex(block_size_tokens=B)
    builder = EventBatchBuilder(index)
    builder.stored(0, u64([1]), None, TOKENS[:4], B, root_name=ROOT)
    batch = builder.build()
    bad_offsets = np.array([0, 2], dtype=np.int64)
    with pytest.raises(ValueError, match=r"engine_offsets: expected non-decreasing offsets"):
        index.apply_events(_replace(batch, engine_offsets=bad_offsets))
    with pytest.raises(ValueError, match=r"rows: expected a contiguous 1-D array of int32"):
        index.apply_events(_replace(batch, rows=np.zeros(1, dtype=np.int64)))
    with pytest.raises(ValueError, match=r"tiers: expected codes from tier_of"):
        index.apply_events(_replace(batch, tiers=np.array([2], dtype=np.int8)))
    with pytest.raises(ValueError, match=r"kinds: expected 0"):
        index.apply_events(_replace(batch, kinds=np.array([5], dtype=np.int8)))
    assert index.size() == 0


def _replace(batch: EventBatch, **changes: npt.NDArray[Any]) -> EventBatch:
    return attrs.evolve(batch, **changes)


def test_input_checks() -> None:
    index = PreciseIndex(block_size_tokens=B)
    stored(index, 3, [1], None, 0, 1)
    with pytest.raises(ValueError, match=r"out: expected .* length >= 4"):
        index.match(u64(KEYS), np.zeros(3))
    with pytest.raises(ValueError, match=r"out: expected .*float64"):
        index.match_tokens(TOKENS, ROOT, "", np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="row"):
        index.block_removed(-1, u64([1]))
    with pytest.raises(ValueError, match="row"):
        index.clear_endpoint(True)
    with pytest.raises(ValueError, match="extra_keys: expected one entry per engine block"):
        index.block_stored(0, u64([1]), None, TOKENS[:4], B, root_name=ROOT, extra_keys=[])
    with pytest.raises(ValueError, match=r"parent_engine_hash: expected an int in \[0, 2\*\*64\)"):
        index.block_stored(0, u64([1]), -1, TOKENS[:4], B, root_name=ROOT)
    with pytest.raises(ValueError, match="tier: expected one of"):
        index.set_capacity(0, "l3", 5)
    with pytest.raises(ValueError, match="num_blocks"):
        index.set_capacity(0, "gpu", 0)
    with pytest.raises(ValueError, match="now_s"):
        index.expire(float("nan"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"block_size_tokens": 0}, "block_size_tokens", id="block-size"),
        pytest.param({"capacity": 0}, "capacity", id="capacity"),
        pytest.param({"speculative_ttl_s": 0.0}, "speculative_ttl_s", id="ttl"),
        pytest.param({"other_medium_weight": -1.0}, "'other'", id="weight"),
        pytest.param({"medium_weights": {"a": 1, "b": 1, "c": 1, "d": 1}}, "at most 3", id="media"),
        pytest.param({"medium_weights": {"speculative": 1.0}}, "reserved", id="reserved"),
    ],
)
def test_construction_checks(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PreciseIndex(**kwargs)  # type: ignore[arg-type]


def test_tier_weights_and_codes() -> None:
    index = PreciseIndex(medium_weights={"Disk": 0.5, "gpu": 0.9})
    assert index.tier_weights == {
        "gpu": 0.9,
        "cpu": 0.8,
        "speculative": 1.0,
        "disk": 0.5,
        "other": 0.8,
    }
    assert [index.tier_of(m) for m in (None, "GPU", "cpu", "DISK", "hbm")] == [0, 0, 1, 4, 7]


def test_match_tokens_equals_request_keys_then_match() -> None:
    index = PreciseIndex(block_size_tokens=B)
    stored(index, 0, [11, 12, 13], None, 0, 3)
    index.add_speculative(1, u64(KEYS[:5]), 0.0)
    out = np.full(2, 7.0)
    keys = index.match_tokens(TOKENS, ROOT, "", out)
    assert keys.tolist() == KEYS
    assert out.tolist() == [3.0, 5.0]
    assert index.match_tokens(TOKENS, ROOT, "", out, 2).tolist() == KEYS[:2]
    assert out.tolist() == [2.0, 2.0]
    assert index.match_tokens(TOKENS[:3], ROOT, "", out).tolist() == []
    assert out.tolist() == [0.0, 0.0]


def test_match_tokens_can_stop_hashing_after_the_match() -> None:
    index = PreciseIndex(block_size_tokens=B)
    tokens = np.arange(4 * 100, dtype=np.uint32)  # 100 blocks; rows hold the first 40
    index.block_stored(0, np.arange(40, dtype=np.uint64), None, tokens[:160], B, root_name=ROOT)
    everything, out = index.match_tokens(tokens, ROOT, "", np.zeros(1)), np.zeros(1)
    keys = index.match_tokens(tokens, ROOT, "", out, all_keys=False)
    # Hashing stops with the 32-block step holding key 40, the first nobody holds.
    assert keys.tolist() == everything[:64].tolist()
    assert out.tolist() == [40.0]
    assert index.num_request_keys(len(tokens)) == 100
    assert index.num_request_keys(len(tokens), 70) == 70
    assert index.num_request_keys(3) == 0


def test_long_lists_match_like_the_model(make: Callable[..., Index]) -> None:
    # 70 rows on the same keys, most in two tiers: lists of up to 140 entries, longer
    # than the 64 a match copies per list before walking the rest.
    index = make()
    for row in range(70):
        stored(index, row, [1, 2, 3, 4, 5, 6], None, 0, 6)
        if row % 7:
            stored(index, row, [1, 2, 3], None, 0, 3, medium="cpu")
    index.block_removed(69, u64([4]))
    assert matched(index, KEYS, 70) == [6.0] * 69 + [3.0]


def test_growth_from_tiny_pools_keeps_everything() -> None:
    index = PreciseIndex(block_size_tokens=B, initial_entries=1, initial_rows=1)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 2**32, 4 * 3000, dtype=np.uint32)
    hashes = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    for row in range(20):
        assert index.block_stored(row, hashes, None, tokens, B, root_name=ROOT) == 3000
    assert index.size() == 20 * 3000
    assert index.num_engine_keys() == 20 * 3000
    out = np.zeros(20)
    keys = index.match_tokens(tokens, ROOT, "", out)
    assert len(keys) == 3000
    assert out.tolist() == [3000.0] * 20
    index.block_removed(7, hashes[1500:1501])
    index.match(keys, out)
    assert out[7] == 1500.0


def test_nbytes_per_entry() -> None:
    index = PreciseIndex(block_size_tokens=B, initial_entries=4000)
    tokens = np.arange(4 * 2000, dtype=np.uint32)
    index.block_stored(0, np.arange(2000, dtype=np.uint64), None, tokens, B, root_name=ROOT)
    assert (index.size(), index.num_engine_keys()) == (2000, 2000)
    # 28 bytes per node (20 + an 8-byte payload), 12 per slot: 4000 live keys fit 8192.
    store_bytes = 4000 * 28 + 8192 * 12 + 16 * 8 * 16 + 5 * 8
    assert index.nbytes == store_bytes + 13 * 8 + 8
    assert "size=2000" in repr(index)


def test_seed_helpers_agree() -> None:
    assert int(PreciseIndex.root_seed("m", "s")) == seed_hash("m", "s")
