"""Fuzzing the KV-event wire decoder on arbitrary msgpack and on mutated valid batches:
a batch or a DataError naming the field (``events[2].block_hashes[5]: ...``), within the
budgets; a decoded batch fed to the precise producer never makes a decision raise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

msgpack = pytest.importorskip("msgpack")

from inference_sched.errors import DataError  # noqa: E402
from inference_sched.framework.handle import PluginHandle  # noqa: E402
from inference_sched.framework.types import CycleState, Request  # noqa: E402
from inference_sched.params import parse_params  # noqa: E402
from inference_sched.plugins.precise_prefix import PrecisePrefixCacheProducer  # noqa: E402
from inference_sched.prefix.precise.wire import (  # noqa: E402
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
    encode_batch,
)
from tests.fuzz._budget import fuzz_settings, short_repr, typed_outcome  # noqa: E402
from tests.helpers import make_table  # noqa: E402

pytestmark = pytest.mark.fuzz

SOURCE = "10.0.0.1:8000"
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
FIELDS = [
    "type",
    "ts",
    "events",
    "data_parallel_rank",
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
]
TAGS = ["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other", ""]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    UINT64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=40),
    st.sampled_from([*TAGS, "GPU", "CPU"]),
)
MSGPACK_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4) | INT64, inner, max_size=5)
    ),
    max_leaves=16,
)


def _check(error: Any) -> None:
    assert error.source == SOURCE
    assert str(error).startswith(f"{SOURCE}: ")


def _decode(payload: bytes) -> EventBatch | DataError:
    outcome = typed_outcome(
        lambda: decode_batch(payload, source=SOURCE),
        f"decode_batch({short_repr(payload)}, {len(payload)} bytes)",
        expected=DataError,
        check=_check,
    )
    if isinstance(outcome, EventBatch):
        for event in outcome.events:
            assert isinstance(event, BlockStored | BlockRemoved | AllBlocksCleared)
            if isinstance(event, BlockStored):
                assert event.block_hashes.dtype == np.uint64
                assert event.token_ids.dtype == np.uint32
    else:
        assert isinstance(outcome, DataError)
    return outcome


# ----------------------------------------------------------------- arbitrary input
@fuzz_settings()
@given(payload=st.binary(max_size=300))
@example(payload=b"\xdd\xff\xff\xff\xff")  # array32 claiming 4G elements
@example(payload=b"\xc6\xff\xff\xff\xff")  # bin32 claiming 4 GB
@example(payload=b"\xdf\xff\xff\xff\xff")  # map32 claiming 4G pairs
@example(payload=b"\x91" * 100_000)  # arrays nested 100k deep
@example(payload=b"\x92\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x91" + b"\x91" * 50_000)
def test_arbitrary_bytes_give_a_batch_or_data_error(payload: bytes) -> None:
    _decode(payload)


@fuzz_settings()
@given(value=MSGPACK_VALUES)
def test_arbitrary_msgpack_gives_a_batch_or_data_error(value: object) -> None:
    _decode(msgpack.packb(value, use_bin_type=True))


# ----------------------------------------------------------------- mutated valid batches
@st.composite
def _events(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["stored", "removed", "cleared"]))
    if kind == "cleared":
        return AllBlocksCleared()
    n = draw(st.integers(0, 4))
    hashes = np.array(draw(st.lists(UINT64, min_size=n, max_size=n)), np.uint64)
    if kind == "removed":
        return BlockRemoved(hashes, draw(st.sampled_from([None, "GPU", "CPU"])))
    block_size = draw(st.sampled_from([1, 4, 16]))
    tokens = np.arange(n * block_size, dtype=np.uint32)
    parent = draw(st.one_of(st.none(), UINT64))
    lora = draw(st.one_of(st.none(), st.text(max_size=4)))
    return BlockStored(hashes, parent, tokens, block_size, None, "GPU", lora)


_VALID = st.builds(
    lambda events, ts, encoding: encode_batch(events, ts=ts, encoding=encoding),
    st.lists(_events(), min_size=1, max_size=4),
    st.floats(0, 2e9),
    st.sampled_from(["array", "map", "mixed"]),
)


@st.composite
def _byte_mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(_VALID))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "claim"]))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 6))]
        elif kind == "truncate":
            del data[pos:]
        else:  # a container or string header claiming a huge length
            data[pos:pos] = draw(
                st.sampled_from([b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xc6\xff\xff"])
            )
    return bytes(data)


@fuzz_settings()
@given(payload=_byte_mutations())
def test_byte_mutated_batches_give_a_batch_or_data_error(payload: bytes) -> None:
    _decode(payload)


def _paths(value: object, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    return out


_JUNK = st.one_of(
    _SCALARS,
    MSGPACK_VALUES,
    st.integers(2**64, 2**200).map(lambda n: -n),  # msgpack cannot pack these: skipped
    st.integers(1, 200_000).map(lambda n: list(range(n))),
    st.integers(1, 200_000).map(lambda n: b"\xff" * n),
)


@st.composite
def _structural_mutations(draw: st.DrawFn) -> bytes:
    """A valid batch, unpacked, with some values swapped for junk, repacked."""
    wire = msgpack.unpackb(draw(_VALID), raw=False, strict_map_key=False)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(wire)))
        junk = draw(_JUNK)
        if not path:
            wire = junk
            continue
        parent = wire
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = junk
    try:
        return bytes(msgpack.packb(wire, use_bin_type=True))
    except (OverflowError, ValueError, TypeError):
        return b""


@fuzz_settings()
@given(payload=_structural_mutations())
def test_structurally_mutated_batches_give_a_batch_or_data_error(payload: bytes) -> None:
    _decode(payload)


# ----------------------------------------------------------------- decoded → producer
@pytest.fixture(scope="module")
def producer() -> PrecisePrefixCacheProducer:
    table = make_table(3)
    params = parse_params(PrecisePrefixCacheProducer.Params, {}, "plugins[0].parameters")
    plugin = PrecisePrefixCacheProducer("precise", params, PluginHandle(table))
    plugin.events_in_process()
    _warm_up(plugin)
    return plugin


def _warm_up(plugin: PrecisePrefixCacheProducer) -> None:
    """Compile the index kernels before any input is timed: a clean checkout has no Numba
    cache, and a first compile takes seconds (not the input's fault)."""
    table = plugin._table
    for block_size in (1, 4, 16):
        hashes = np.arange(1, 5, dtype=np.uint64) + 100 * block_size
        tokens = np.arange(4 * block_size, dtype=np.uint32)
        for parent in (None, 7):
            for lora in (None, "a"):
                stored = BlockStored(hashes, parent, tokens, block_size, None, "GPU", lora)
                plugin.kv_event(SOURCE, stored, "m")
    for medium in (None, "GPU", "CPU"):
        plugin.kv_event(SOURCE, BlockRemoved(np.arange(1, 3, dtype=np.uint64), medium), "m")
    plugin.kv_event(SOURCE, AllBlocksCleared(), "m")
    for n in (0, 16, 64):
        cycle = CycleState(np.random.default_rng(0))
        request = Request.create("m", prompt="x", token_ids=np.arange(n, dtype=np.uint32))
        plugin.prepare_request_data(cycle, request, table, table.candidates())
        plugin.run_deferred()


@fuzz_settings()
@given(payload=st.one_of(_VALID, _structural_mutations()), tokens=st.integers(0, 64))
def test_decoded_batches_never_make_a_decision_raise(
    producer: PrecisePrefixCacheProducer, payload: bytes, tokens: int
) -> None:
    batch = _decode(payload)
    if isinstance(batch, DataError):
        return
    table = producer._table
    token_ids = np.arange(tokens, dtype=np.uint32)

    def deliver_and_decide() -> None:
        for event in batch.events:
            producer.kv_event(SOURCE, event, "m")
        cycle = CycleState(np.random.default_rng(0))
        request = Request.create("m", prompt="x", token_ids=token_ids)
        producer.prepare_request_data(cycle, request, table, table.candidates())
        producer.run_deferred()

    outcome = typed_outcome(
        deliver_and_decide, f"events of {short_repr(payload)}", expected=DataError
    )
    assert outcome is None, f"a decision raised {outcome!r}"
