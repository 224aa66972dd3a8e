"""vLLM KV-event wire layer: decoding (every shape vLLM sent), errors naming the field,
the encoder's exact shapes, topics and sequence verdicts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

msgpack = pytest.importorskip("msgpack")
pytest.importorskip("zmq")

from inference_sched.errors import DataError  # noqa: E402
from inference_sched.prefix.precise.subscriber import (  # noqa: E402
    SequenceTracker,
    Verdict,
    parse_topic,
)
from inference_sched.prefix.precise.wire import (  # noqa: E402
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
    encode_batch,
    normalize_block_hash,
)
from inference_sched.sim import kvcache as sim  # noqa: E402

U64 = np.uint64
U32 = np.uint32
MAX64 = 2**64 - 1


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def hashes(*values: int) -> np.ndarray:
    return np.array(values, dtype=U64)


def tokens(n: int, start: int = 1) -> np.ndarray:
    return np.arange(start, start + n, dtype=U32)


STORED_FIELDS = [
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
    "kv_cache_spec_sliding_window",
]

# One batch of each event type, as vLLM builds it, and what it decodes to.
STORED_VALUES: list[Any] = [
    [11, 2**63 + 5],
    7,
    list(range(1, 33)),
    16,
    3,
    "GPU",
    "sql-lora",
    [["sql-lora"], None],
    0,
    "full_attention",
    None,
]
EXPECTED = EventBatch(
    ts=1700000000.25,
    events=(
        BlockStored(
            hashes(11, 2**63 + 5),
            7,
            tokens(32),
            16,
            3,
            "GPU",
            "sql-lora",
            (("sql-lora",), None),
            0,
            "full_attention",
            None,
        ),
        BlockRemoved(hashes(11), "GPU", None),
        AllBlocksCleared(),
    ),
    data_parallel_rank=2,
)


def array_form() -> list[Any]:
    return [
        1700000000.25,
        [["BlockStored", *STORED_VALUES], ["BlockRemoved", [11], "GPU"], ["AllBlocksCleared"]],
        2,
    ]


def map_events() -> list[Any]:
    stored = {"type": "BlockStored", **dict(zip(STORED_FIELDS, STORED_VALUES, strict=True))}
    del stored["kv_cache_spec_sliding_window"]  # omit_defaults
    return [
        stored,
        {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU"},
        {"type": "AllBlocksCleared"},
    ]


# ====================================================================== decoding shapes
@pytest.mark.parametrize(
    "wire",
    [
        array_form(),
        [1700000000.25, map_events(), 2],
        {"ts": 1700000000.25, "events": map_events(), "data_parallel_rank": 2},
        {"events": map_events(), "data_parallel_rank": 2, "ts": 1700000000.25},
    ],
    ids=["array", "mixed-v0.26", "map", "map-any-key-order"],
)
def test_every_wire_shape_decodes_to_the_same_batch(wire: object) -> None:
    batch = decode_batch(pack(wire), source="pod-a")
    assert batch == EXPECTED
    stored = batch.events[0]
    assert isinstance(stored, BlockStored)
    assert stored.block_hashes.dtype == U64
    assert stored.token_ids.dtype == U32
    assert stored.block_hashes.tolist() == [11, 2**63 + 5]
    assert batch.unknown_tags == ()


def test_vllm_v026_observed_batch() -> None:
    # As captured from vLLM 0.26: array batch, one map event, rank 0, int hashes.
    wire = [
        1761000000.5,
        [
            {
                "type": "BlockStored",
                "block_hashes": [MAX64],
                "parent_block_hash": None,
                "token_ids": list(range(16)),
                "block_size": 16,
                "lora_id": None,
                "medium": "GPU",
                "lora_name": None,
            }
        ],
        0,
    ]
    batch = decode_batch(pack(wire))
    assert batch == EventBatch(
        1761000000.5,
        (BlockStored(hashes(MAX64), None, tokens(16, 0), 16, None, "GPU", None),),
        0,
    )


def test_missing_trailing_fields_take_their_defaults() -> None:
    wire = [
        5,  # an int ts is a number too
        [
            ["BlockStored", [1], None, [], 16],  # base schema (#16750) minus lora_id
            ["BlockRemoved", [2]],  # before medium (#19737)
            {"type": "BlockStored", "block_hashes": [3], "token_ids": [], "block_size": 4},
        ],
    ]
    assert decode_batch(pack(wire)) == EventBatch(
        5.0,
        (
            BlockStored(hashes(1), None, tokens(0), 16),
            BlockRemoved(hashes(2)),
            BlockStored(hashes(3), None, tokens(0), 4),
        ),
        None,
    )


def test_unknown_fields_are_ignored() -> None:
    stored = ["BlockStored", [1], None, [], 16, None, "CPU", None, None, 1, "sliding_window", 128]
    wire = {
        "ts": 1.0,
        "events": [
            [*stored, "LOCAL", "tier-2", "future"],  # locality, ownership, ... appended
            {
                "type": "BlockRemoved",
                "block_hashes": [1],
                "medium": "CPU",
                "locality": "LOCAL",
                "ownership": None,
                "event_version": 1,
            },
        ],
        "data_parallel_rank": None,
        "producer": "someone",
    }
    assert decode_batch(pack(wire)) == EventBatch(
        1.0,
        (
            BlockStored(
                hashes(1), None, tokens(0), 16, None, "CPU", None, None, 1, "sliding_window", 128
            ),
            BlockRemoved(hashes(1), "CPU"),
        ),
    )
    assert decode_batch(pack([1.0, [], 0, "extra"])) == EventBatch(1.0, (), 0)


def test_unknown_event_tags_are_skipped_and_named() -> None:
    wire = [
        1.0,
        [
            ["BlockTierChanged", [1], "CPU"],
            ["AllBlocksCleared"],
            {"type": "LogicalSnapshot", "cursor": 3},
        ],
    ]
    batch = decode_batch(pack(wire))
    assert batch.events == (AllBlocksCleared(),)
    assert batch.unknown_tags == ("BlockTierChanged", "LogicalSnapshot")


# ====================================================================== hashes
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (MAX64, MAX64),
        (-1, MAX64),
        (-(2**63), 2**63),
        (-2, MAX64 - 1),
        (bytes(range(32)), 0x18191A1B1C1D1E1F),  # sha256 digest: its last 8 bytes
        (bytes(range(1, 9)), 0x0102030405060708),
        (b"\x01\x02\x03\x04", 0x01020304),  # short: left-padded
        (b"", 0),
    ],
    ids=["0", "max", "-1", "min-int64", "-2", "bytes32", "bytes8", "bytes4", "bytes0"],
)
def test_hash_normalisation(value: int | bytes, expected: int) -> None:
    assert normalize_block_hash(value) == expected
    wire = [1.0, [["BlockStored", [value, 1], value, [], 16], ["BlockRemoved", [value]]]]
    stored, removed = decode_batch(pack(wire)).events
    assert isinstance(stored, BlockStored)
    assert isinstance(removed, BlockRemoved)
    assert stored.block_hashes.tolist() == [expected, 1]
    assert stored.parent_block_hash == expected
    assert removed.block_hashes.tolist() == [expected]


def test_int64_hashes_in_bulk_and_mixed_forms() -> None:
    # All negative (a Go producer's int64), mixed signs with big unsigned, ints and bytes.
    cases = [
        ([-1, -(2**63), 5], [MAX64, 2**63, 5]),
        ([-1, 2**63 + 1], [MAX64, 2**63 + 1]),
        ([b"\x00" * 24 + b"\xff" * 8, 3], [MAX64, 3]),
    ]
    for wire_hashes, expected in cases:
        (event,) = decode_batch(pack([1.0, [["BlockRemoved", wire_hashes]]])).events
        assert isinstance(event, BlockRemoved)
        assert event.block_hashes.tolist() == expected


def test_normalize_block_hash_rejects_other_types() -> None:
    with pytest.raises(TypeError, match=r"expected int or bytes, got True \(bool\)"):
        normalize_block_hash(True)


# ====================================================================== tokens
@pytest.mark.parametrize(
    ("num_hashes", "num_tokens", "block_size"),
    [
        (2, 32, 16),  # the usual case
        (0, 0, 16),  # nothing
        (3, 0, 16),  # CPU offload / tier update: hashes only
        (1, 24, 4),  # sliding window: tokens span the range, hashes name the tail
        (0, 8, 4),  # sliding window group with every block null
    ],
)
def test_token_count_rule_accepts(num_hashes: int, num_tokens: int, block_size: int) -> None:
    wire = [
        1.0,
        [["BlockStored", list(range(num_hashes)), None, list(range(num_tokens)), block_size]],
    ]
    (event,) = decode_batch(pack(wire)).events
    assert isinstance(event, BlockStored)
    assert len(event.token_ids) == num_tokens


# ====================================================================== extra keys
def test_extra_keys_become_tuples() -> None:
    extra = [[["mm-hash-1", 0], "lora-a"], None, [b"\x01\x02"]]
    wire = [1.0, [["BlockStored", [1, 2, 3], None, [], 16, None, None, None, extra]]]
    (event,) = decode_batch(pack(wire)).events
    assert isinstance(event, BlockStored)
    assert event.extra_keys == ((("mm-hash-1", 0), "lora-a"), None, (b"\x01\x02",))
    hash(event.extra_keys)  # usable as a key


def test_extra_keys_of_any_other_msgpack_type_are_data_errors() -> None:
    # msgpack ext types (a timestamp, an application ext) decode to objects no index can
    # fold into a key: rejected at decode time, naming the element.
    for value, shown in [
        (msgpack.ExtType(5, b"x"), "ExtType"),
        (msgpack.Timestamp(1, 0), "Timestamp"),
    ]:
        wire = [1.0, [["BlockStored", [1], None, [], 16, None, None, None, [["mm", value]]]]]
        with pytest.raises(
            DataError, match=rf"^ep: events\[0\]\.extra_keys\[0\]\[1\]: .*\({shown}\)$"
        ):
            decode_batch(pack(wire), source="ep")


# ====================================================================== errors
def stored(**overrides: Any) -> list[Any]:
    """A valid positional BlockStored with some fields replaced."""
    fields = dict(
        zip(STORED_FIELDS, [[1, 2], None, list(range(32)), 16, None, "GPU", None], strict=False)
    )
    fields.update(overrides)
    return ["BlockStored", *fields.values()]


def batch(*events: object) -> list[Any]:
    return [1.0, [["AllBlocksCleared"], *events]]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (5, "batch: expected an array [ts, events, data_parallel_rank] or a map, got 5 (int)"),
        ([1.0], "batch: expected [ts, events, data_parallel_rank], got [1.0] (list)"),
        ({"events": []}, "ts: missing (expected a number (seconds))"),
        ({"ts": 1.0}, "events: missing (expected an array of events)"),
        (["1.0", []], "ts: expected a number (seconds), got '1.0' (str)"),
        ([True, []], "ts: expected a number (seconds), got True (bool)"),
        ([1.0, {}], "events: expected an array of events, got {} (dict)"),
        ([1.0, [], "0"], "data_parallel_rank: expected int or nil, got '0' (str)"),
        (batch(7), "events[1]: expected an array or a map, got 7 (int)"),
        (batch([]), "events[1]: expected [tag, fields...], got [] (list)"),
        (batch([3, [1]]), "events[1][0]: expected an event tag (str), got 3 (int)"),
        (batch({"block_hashes": [1]}), "events[1].type: missing (expected an event tag (str))"),
        (
            batch(["BlockStored"]),
            "events[1].block_hashes: missing (expected an array of int or bytes)",
        ),
        (batch(["BlockStored", [1]]), "events[1].token_ids: missing (expected an array of int)"),
        (
            batch(["BlockStored", [1], None, []]),
            "events[1].block_size: missing (expected int in [0, 2**31))",
        ),
        (
            batch({"type": "BlockStored", "block_hashes": [1], "token_ids": []}),
            "events[1].block_size: missing (expected int in [0, 2**31))",
        ),
        (
            batch(["BlockRemoved"]),
            "events[1].block_hashes: missing (expected an array of int or bytes)",
        ),
        (
            batch(stored(block_hashes="abc")),
            "events[1].block_hashes: expected an array of int or bytes, got 'abc' (str)",
        ),
        (
            batch(["AllBlocksCleared"], stored(block_hashes=[0, 1, 2, 3, 4, "x"])),
            "events[2].block_hashes[5]: expected int or bytes, got 'x' (str)",
        ),
        (
            batch(stored(block_hashes=[1, 2.5])),
            "events[1].block_hashes[1]: expected int or bytes, got 2.5 (float)",
        ),
        (
            batch(stored(block_hashes=[1, None])),
            "events[1].block_hashes[1]: expected int or bytes, got None (NoneType)",
        ),
        (
            batch(stored(parent_block_hash="p")),
            "events[1].parent_block_hash: expected int, bytes or nil, got 'p' (str)",
        ),
        (
            batch(stored(token_ids=[*range(31), "t"])),
            "events[1].token_ids[31]: expected int, got 't' (str)",
        ),
        (
            batch(stored(token_ids=[*range(31), 1.0])),
            "events[1].token_ids[31]: expected int, got 1.0 (float)",
        ),
        (
            batch(stored(token_ids=[-1, *range(31)])),
            "events[1].token_ids[0]: expected int in [0, 2**32), got -1 (int)",
        ),
        (
            batch(stored(token_ids=[*range(31), 2**32])),
            "events[1].token_ids[31]: expected int in [0, 2**32), got 4294967296 (int)",
        ),
        (
            batch(stored(token_ids={"a": 1})),
            "events[1].token_ids: expected an array of int, got {'a': 1} (dict)",
        ),
        (
            batch(stored(block_size="16")),
            "events[1].block_size: expected int in [0, 2**31), got '16' (str)",
        ),
        (
            batch(stored(block_size=-16)),
            "events[1].block_size: expected int in [0, 2**31), got -16 (int)",
        ),
        (
            batch(stored(block_size=True)),
            "events[1].block_size: expected int in [0, 2**31), got True (bool)",
        ),
        (
            batch(stored(token_ids=list(range(31)))),
            "events[1].token_ids: expected 0 tokens or a whole number of blocks of "
            "block_size=16 covering all 2 block hashes (>= 32), got 31",
        ),
        (
            batch(stored(token_ids=list(range(16)))),
            "events[1].token_ids: expected 0 tokens or a whole number of blocks of "
            "block_size=16 covering all 2 block hashes (>= 32), got 16",
        ),
        (
            batch(stored(token_ids=list(range(16)), block_size=0)),
            "events[1].token_ids: expected 0 tokens or a whole number of blocks of "
            "block_size=0 covering all 2 block hashes (>= 0), got 16",
        ),
        (batch(stored(lora_id="1")), "events[1].lora_id: expected int or nil, got '1' (str)"),
        (batch(stored(medium=1)), "events[1].medium: expected str or nil, got 1 (int)"),
        (
            batch(stored(lora_name=b"x")),
            "events[1].lora_name: expected str or nil, got b'x' (bytes)",
        ),
        (
            batch(stored(extra_keys="k")),
            "events[1].extra_keys: expected an array (one entry per block) or nil, got 'k' (str)",
        ),
        (
            batch(stored(extra_keys=[None])),
            "events[1].extra_keys: expected one entry per block hash (2), got 1",
        ),
        (
            batch(stored(extra_keys=[None, 5])),
            "events[1].extra_keys[1]: expected an array or nil, got 5 (int)",
        ),
        # Issue 13: wire-valid before, but no index can take them (a map is not a key;
        # a block size past int32 overflowed the whole drain of every endpoint).
        (
            batch(stored(extra_keys=[["mm", {"a": 1}], None])),
            "events[1].extra_keys[0][1]: expected str, bytes, int, float, bool, nil or an "
            "array, got {'a': 1} (dict)",
        ),
        (
            batch(stored(extra_keys=[None, [["mm", 0, [{}]]]])),
            "events[1].extra_keys[1][0][2][0]: expected str, bytes, int, float, bool, nil or "
            "an array, got {} (dict)",
        ),
        (
            batch(stored(token_ids=[], block_size=2**31)),
            "events[1].block_size: expected int in [0, 2**31), got 2147483648 (int)",
        ),
        (
            batch(
                {
                    "type": "BlockStored",
                    "block_hashes": [1],
                    "token_ids": [],
                    "block_size": 2**64 - 1,
                }
            ),
            "events[1].block_size: expected int in [0, 2**31), got 18446744073709551615 (int)",
        ),
        (
            batch(stored(extra_keys=None, group_idx="0")),
            "events[1].group_idx: expected int or nil, got '0' (str)",
        ),
        (
            batch(stored(extra_keys=None, group_idx=0, kv_cache_spec_kind=1)),
            "events[1].kv_cache_spec_kind: expected str or nil, got 1 (int)",
        ),
        (
            batch(
                stored(
                    extra_keys=None,
                    group_idx=0,
                    kv_cache_spec_kind="x",
                    kv_cache_spec_sliding_window=1.5,
                )
            ),
            "events[1].kv_cache_spec_sliding_window: expected int or nil, got 1.5 (float)",
        ),
        (
            batch(["BlockRemoved", [1], 7]),
            "events[1].medium: expected str or nil, got 7 (int)",
        ),
        (
            batch({"type": "BlockRemoved", "block_hashes": [1], "group_idx": "g"}),
            "events[1].group_idx: expected int or nil, got 'g' (str)",
        ),
    ],
)
def test_errors_name_the_field(wire: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        decode_batch(pack(wire), source="10.0.0.7:8000 seq 4")
    assert str(info.value) == f"10.0.0.7:8000 seq 4: {message}"
    assert info.value.source == "10.0.0.7:8000 seq 4"


def deep(levels: int = 1000) -> Any:
    """Nested arrays as deep as msgpack accepts, deeper than Python's recursion limit."""
    nested: Any = 1
    for _ in range(levels):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (
            [1.0, [["BlockStored", [1], None, [], 16, None, None, None, [deep()]]]],
            "events[0].extra_keys[0]: nested too deeply",
        ),
        (
            [1.0, [["BlockStored", [deep()], None, [], 16]]],
            "events[0].block_hashes[0]: expected int or bytes, got [[[[...]]]] (list)",
        ),
        ([deep(), []], "ts: expected a number (seconds), got [[[[...]]]] (list)"),
        ([1.0, [deep()]], "events[0][0]: expected an event tag (str), got [[[[...]]]] (list)"),
    ],
    ids=["extra-keys", "hash", "ts", "tag"],
)
def test_deeply_nested_values_are_data_errors(wire: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        decode_batch(pack(wire), source="ep")
    assert str(info.value) == f"ep: {message}"


def test_huge_values_are_not_spelled_out() -> None:
    with pytest.raises(DataError) as info:
        decode_batch(pack([list(range(10**5)), []]), source="ep")
    assert str(info.value) == "ep: ts: expected a number (seconds), got [0, 1, 2, 3, ...] (list)"


def test_long_values_are_shortened_in_errors() -> None:
    with pytest.raises(DataError, match=r"got 'aaaa.*\.\.\. \(str\)$"):
        decode_batch(pack([1.0, [["BlockStored", "a" * 500, None, [], 16]]]))


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", pack(array_form())[:-3], pack([1.0, []]) + b"\x00", b"\x81\x91\x01\x02"],
    ids=["empty", "reserved-byte", "truncated", "trailing-bytes", "list-as-map-key"],
)
def test_bytes_that_are_not_msgpack(payload: bytes) -> None:
    with pytest.raises(
        DataError, match=r"^ep: payload: expected a msgpack document, got \d+ bytes"
    ):
        decode_batch(payload, source="ep")


# ====================================================================== encoder
def test_encoder_array_form_is_vllm_array_like() -> None:
    event = BlockStored(hashes(1, MAX64), None, tokens(8), 4, None, "GPU", None, None, 2)
    wire = msgpack.unpackb(
        encode_batch([event, BlockRemoved(hashes(1)), AllBlocksCleared()], ts=2.0)
    )
    # Fields without a default are always there; trailing defaulted ones are omitted,
    # earlier ones kept as nil to hold the positions.
    assert wire == [
        2.0,
        [
            ["BlockStored", [1, MAX64], None, list(range(1, 9)), 4, None, "GPU", None, None, 2],
            ["BlockRemoved", [1], None],
            ["AllBlocksCleared"],
        ],
    ]


def test_encoder_map_forms_omit_defaults() -> None:
    events = [
        BlockStored(hashes(1), 9, tokens(4), 4, group_idx=1),
        BlockRemoved(hashes(1), "GPU", 1),
    ]
    stored_map = {
        "type": "BlockStored",
        "block_hashes": [1],
        "parent_block_hash": 9,
        "token_ids": [1, 2, 3, 4],
        "block_size": 4,
        "lora_id": None,
        "medium": None,
        "lora_name": None,
        "group_idx": 1,
    }
    removed_map = {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU", "group_idx": 1}
    as_map = msgpack.unpackb(encode_batch(events, ts=3.0, encoding="map", data_parallel_rank=1))
    assert as_map == {"ts": 3.0, "events": [stored_map, removed_map], "data_parallel_rank": 1}
    mixed = msgpack.unpackb(encode_batch(events, ts=3.0, encoding="mixed"))
    assert mixed == [3.0, [stored_map, removed_map]]


@pytest.mark.parametrize("encoding", ["array", "map", "mixed"])
def test_round_trip(encoding: Any) -> None:
    assert decode_batch(encode_batch(EXPECTED, encoding=encoding)) == EXPECTED


def test_encoder_takes_the_simulators_events() -> None:
    events = [
        sim.BlockStored([5, 2**64 - 2], 4, list(range(32)), 16, 7, sim.GPU_MEDIUM),
        sim.BlockRemoved([5], sim.GPU_MEDIUM),
        sim.AllBlocksCleared(),
    ]
    payload = encode_batch(events, ts=9.5, data_parallel_rank=0)
    assert msgpack.unpackb(payload)[1][0] == [
        "BlockStored", [5, 2**64 - 2], 4, list(range(32)), 16, 7, "GPU", None,
    ]  # fmt: skip
    assert decode_batch(payload) == EventBatch(
        9.5,
        (
            BlockStored(hashes(5, 2**64 - 2), 4, tokens(32, 0), 16, 7, "GPU", None),
            BlockRemoved(hashes(5), "GPU"),
            AllBlocksCleared(),
        ),
        0,
    )


def test_encoder_batch_defaults_and_overrides() -> None:
    again = decode_batch(encode_batch(EXPECTED, ts=4.0, data_parallel_rank=5))
    assert (again.ts, again.data_parallel_rank, again.events) == (4.0, 5, EXPECTED.events)


def test_encoder_errors() -> None:
    with pytest.raises(TypeError, match=r"not a KV event: 5 \(int\)"):
        encode_batch([5], ts=1.0)
    with pytest.raises(ValueError, match="encoding must be 'array', 'map' or 'mixed', got 'json'"):
        encode_batch([], ts=1.0, encoding="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ts must be finite, got nan"):
        encode_batch([], ts=float("nan"))


def test_event_equality_compares_arrays_by_value() -> None:
    a = BlockStored(hashes(1), None, tokens(16), 16)
    assert a == BlockStored(hashes(1), None, tokens(16), 16)
    assert a != BlockStored(hashes(2), None, tokens(16), 16)
    assert a != BlockStored(hashes(1), None, tokens(16, 2), 16)
    assert a != BlockStored(hashes(1), 3, tokens(16), 16)
    assert a != BlockRemoved(hashes(1))
    assert BlockRemoved(hashes(1), "GPU") != BlockRemoved(hashes(1), "CPU")
    assert BlockRemoved(hashes(1, 2)) != BlockRemoved(hashes(1))


# ====================================================================== topics
@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B", ("10.0.0.7:8000", "meta-llama/Llama-3.1-8B")),
        ("kv@pod-a@org/model@rev2", ("pod-a", "org/model@rev2")),  # llm-d rejects this one
        ("kv@[::1]:8000@m", ("[::1]:8000", "m")),
    ],
)
def test_parse_topic(topic: str, expected: tuple[str, str]) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize("topic", ["", "kv", "kv@pod", "kv@@model", "kv@pod@", "@@"])
def test_parse_topic_rejects(topic: str) -> None:
    with pytest.raises(DataError, match=r"^src: topic .*: expected 'kv@<pod>@<model>'"):
        parse_topic(topic, source="src")


# ====================================================================== sequences
V = Verdict


@pytest.mark.parametrize(
    ("seqs", "verdicts"),
    [
        ([0, 1, 2], [V.OK, V.OK, V.OK]),
        ([100, 101], [V.OK, V.OK]),  # the first number seen is accepted as is
        ([0, 1, 1, 2], [V.OK, V.OK, V.DUPLICATE, V.OK]),
        ([0, 3, 4], [V.OK, V.GAP, V.OK]),
        ([500, 499, 501], [V.OK, V.STALE, V.OK]),
        ([500, 0, 1], [V.OK, V.RESTART, V.OK]),
        ([500, 63, 64], [V.OK, V.RESTART, V.OK]),  # below the window: a new publisher
        ([500, 64, 65], [V.OK, V.STALE, V.STALE]),
        ([3, 2], [V.OK, V.RESTART]),  # a young stream going back is a restart too
        # A restart seen late: the 8th lower number in a row switches streams.
        (
            [500, *range(100, 108), 108],
            [V.OK, *[V.STALE] * 7, V.RESTART, V.OK],
        ),
        ([500, 100, 500, 101], [V.OK, V.STALE, V.DUPLICATE, V.STALE]),
    ],
)
def test_sequence_verdicts(seqs: list[int], verdicts: list[Verdict]) -> None:
    tracker = SequenceTracker()
    assert [tracker.check("e", s) for s in seqs] == verdicts
    counts = tracker.counts("e")
    assert counts == {v.value: verdicts.count(v) for v in Verdict}
    assert dict(tracker.totals) == {v: verdicts.count(v) for v in Verdict if v in verdicts}


def test_sequence_tracker_is_per_endpoint_and_resets() -> None:
    tracker = SequenceTracker(restart_window=1, max_stale_run=2)
    assert tracker.check("a", 5) is V.OK
    assert tracker.check("b", 9) is V.OK
    assert tracker.check("a", 6) is V.OK
    assert (tracker.last("a"), tracker.last("b"), tracker.last("c")) == (6, 9, None)
    assert tracker.check("a", 1) is V.STALE  # 1 is outside a window of 1
    assert tracker.check("a", 2) is V.RESTART  # second lower number in a row
    assert tracker.check("b", 0) is V.RESTART
    tracker.reset("a")
    assert tracker.last("a") is None
    assert tracker.check("a", 40) is V.OK
    assert tracker.counts("a")["ok"] == 3
    assert tracker.counts("never")["ok"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"restart_window": -1}, "restart_window must be an int >= 0, got -1"),
        ({"max_stale_run": 0}, "max_stale_run must be an int >= 1, got 0"),
    ],
)
def test_sequence_tracker_rejects_bad_parameters(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequenceTracker(**kwargs)
