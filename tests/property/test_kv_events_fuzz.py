"""Fuzzing the KV-event decoder (anything gives a batch or a DataError, never another
exception), encode→decode round trips in every wire shape, and the sequence tracker
against a plain model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

msgpack = pytest.importorskip("msgpack")
pytest.importorskip("zmq")

from inference_sched.errors import DataError  # noqa: E402
from inference_sched.prefix.precise.subscriber import SequenceTracker, Verdict  # noqa: E402
from inference_sched.prefix.precise.wire import (  # noqa: E402
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KVEvent,
    decode_batch,
    encode_batch,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TAGS = st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other", ""])

# Every value msgpack can carry, leaning on the shapes and field names of KV events.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    UINT64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=40),
    TAGS,
)
MSGPACK_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["type", "ts", "events", "block_hashes", "token_ids"]),
                st.text(max_size=4),
                INT64,
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=12,
)


def _outcome(payload: bytes) -> EventBatch | DataError:
    try:
        batch = decode_batch(payload, source="fuzz")
    except DataError as exc:
        error = exc
    else:
        return _check_batch(batch)
    assert error.source == "fuzz"
    assert str(error).startswith("fuzz: ")
    return error


def _check_batch(batch: EventBatch) -> EventBatch:
    assert isinstance(batch, EventBatch)
    for kv_event in batch.events:
        if isinstance(kv_event, BlockStored):
            assert kv_event.block_hashes.dtype == np.uint64
            assert kv_event.token_ids.dtype == np.uint32
        else:
            assert isinstance(kv_event, BlockRemoved | AllBlocksCleared)
    return batch


@settings(max_examples=300)
@given(payload=st.binary(max_size=200))
@example(payload=b"\x92\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x90")  # [nan, []]
@example(payload=b"\xdd\xff\xff\xff\xff")  # array32 claiming 4G elements
@example(payload=b"\xc7\x01\xff\x00")  # ext -1 (timestamp) of a wrong length
def test_arbitrary_bytes_give_a_batch_or_data_error(payload: bytes) -> None:
    _outcome(payload)


@settings(max_examples=300)
@given(value=MSGPACK_VALUES)
def test_arbitrary_msgpack_gives_a_batch_or_data_error(value: object) -> None:
    _outcome(msgpack.packb(value, use_bin_type=True))


# ---------------------------------------------------------------- almost-valid batches
JUNK = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3))


@st.composite
def almost_valid_events(draw: st.DrawFn) -> object:
    """A valid BlockStored/BlockRemoved in either form, then maybe one field swapped for
    junk and maybe cut short: the decoder must reject it with a DataError or accept it."""
    tag = draw(st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"]))
    num_blocks = draw(st.integers(0, 3))
    block_size = draw(st.sampled_from([1, 4, 16]))
    num_tokens = num_blocks * block_size
    hash_value = st.one_of(UINT64, INT64, st.binary(max_size=33))
    valid = {
        "block_hashes": st.lists(hash_value, min_size=num_blocks, max_size=num_blocks),
        "parent_block_hash": st.one_of(st.none(), hash_value),
        "token_ids": st.lists(st.integers(0, 2**32 - 1), min_size=num_tokens, max_size=num_tokens),
        "block_size": st.just(block_size),
        "lora_id": st.one_of(st.none(), INT64),
        "medium": st.sampled_from([None, "GPU", "CPU"]),
        "lora_name": st.one_of(st.none(), st.text(max_size=5)),
        "extra_keys": st.one_of(
            st.none(),
            st.lists(
                st.one_of(st.none(), st.lists(_SCALARS, max_size=2)),
                min_size=num_blocks,
                max_size=num_blocks,
            ),
        ),
        "group_idx": st.one_of(st.none(), st.integers(0, 3)),
    }
    names = list(valid) if tag != "BlockRemoved" else ["block_hashes", "medium", "group_idx"]
    values = {name: draw(valid[name]) for name in names}
    if draw(st.booleans()):
        values[draw(st.sampled_from(names))] = draw(JUNK)
    keep = draw(st.integers(0, len(names))) if draw(st.booleans()) else len(names)
    fields = list(values.items())[:keep]
    if draw(st.booleans()):
        return {"type": tag, **dict(fields)}
    return [tag, *(value for _, value in fields)]


@settings(max_examples=200)
@given(
    events=st.lists(almost_valid_events(), max_size=3),
    ts=st.one_of(st.floats(0, 2e9), st.floats(0, 2e9), JUNK),
    rank=st.one_of(st.none(), st.integers(0, 7), JUNK),
    as_map=st.booleans(),
)
def test_almost_valid_batches_give_a_batch_or_data_error(
    events: list[object], ts: object, rank: object, as_map: bool
) -> None:
    wire: object = (
        {"ts": ts, "events": events, "data_parallel_rank": rank} if as_map else [ts, events, rank]
    )
    outcome = _outcome(msgpack.packb(wire, use_bin_type=True))
    # --hypothesis-show-statistics: both outcomes must be frequent for this test to bite.
    if isinstance(outcome, DataError):
        event("rejected")
    else:
        event(f"decoded, {min(len(outcome.events), 2)}+ events")


# ---------------------------------------------------------------- round trips
@st.composite
def stored_events(draw: st.DrawFn) -> BlockStored:
    num_blocks = draw(st.integers(0, 4))
    block_size = draw(st.integers(1, 16))
    num_tokens = draw(st.sampled_from([0, num_blocks, num_blocks + 1])) * block_size
    block_hashes = np.array(
        draw(st.lists(UINT64, min_size=num_blocks, max_size=num_blocks)), np.uint64
    )
    tokens = np.array(
        draw(st.lists(st.integers(0, 2**32 - 1), min_size=num_tokens, max_size=num_tokens)),
        np.uint32,
    )
    extra = draw(
        st.one_of(
            st.none(),
            st.lists(
                st.one_of(st.none(), st.tuples(st.text(max_size=4), st.integers(0, 100))),
                min_size=num_blocks,
                max_size=num_blocks,
            ).map(tuple),
        )
    )
    optional_int = st.one_of(st.none(), st.integers(0, 2**31))
    optional_str = st.one_of(st.none(), st.text(max_size=6))
    return BlockStored(
        block_hashes,
        draw(st.one_of(st.none(), UINT64)),
        tokens,
        block_size,
        draw(optional_int),
        draw(optional_str),
        draw(optional_str),
        extra,
        draw(optional_int),
        draw(optional_str),
        draw(optional_int),
    )


@st.composite
def removed_events(draw: st.DrawFn) -> BlockRemoved:
    block_hashes = np.array(draw(st.lists(UINT64, max_size=5)), np.uint64)
    medium = draw(st.one_of(st.none(), st.sampled_from(["GPU", "CPU"])))
    return BlockRemoved(block_hashes, medium, draw(st.one_of(st.none(), st.integers(0, 3))))


EVENTS = st.one_of(stored_events(), removed_events(), st.just(AllBlocksCleared()))


@settings(max_examples=200)
@given(
    events=st.lists(EVENTS, max_size=5).map(tuple),
    ts=st.floats(0, 2e9),
    rank=st.one_of(st.none(), st.integers(0, 64)),
    encoding=st.sampled_from(["array", "map", "mixed"]),
)
def test_encode_decode_round_trip(
    events: tuple[KVEvent, ...], ts: float, rank: int | None, encoding: Any
) -> None:
    batch = EventBatch(ts, events, rank)
    payload = encode_batch(batch, encoding=encoding)
    assert decode_batch(payload) == batch


@settings(max_examples=100)
@given(events=st.lists(EVENTS, min_size=1, max_size=3).map(tuple), data=st.data())
def test_every_strict_prefix_of_a_payload_is_rejected(
    events: tuple[KVEvent, ...], data: st.DataObject
) -> None:
    payload = encode_batch(events, ts=1.0, encoding=data.draw(st.sampled_from(["array", "map"])))
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(DataError, match="payload: expected a msgpack document"):
        decode_batch(payload[:cut])


@settings(max_examples=100)
@given(signed=st.lists(INT64, min_size=1, max_size=8))
def test_signed_and_unsigned_hashes_decode_alike(signed: list[int]) -> None:
    unsigned = [h & (2**64 - 1) for h in signed]
    a = decode_batch(msgpack.packb([1.0, [["BlockRemoved", signed]]]))
    b = decode_batch(msgpack.packb([1.0, [["BlockRemoved", unsigned]]]))
    c = decode_batch(
        msgpack.packb([1.0, [["BlockRemoved", [h.to_bytes(8, "big") for h in unsigned]]]])
    )
    assert a == b == c


# ---------------------------------------------------------------- sequence tracker
class _Model:
    """The tracker's rule written out plainly, one endpoint."""

    def __init__(self, window: int, max_run: int) -> None:
        self.window, self.max_run = window, max_run
        self.last: int | None = None
        self.run = 0

    def check(self, seq: int) -> Verdict:
        if self.last is None or seq == self.last + 1:
            verdict = Verdict.OK
        elif seq > self.last:
            verdict = Verdict.GAP
        elif seq < self.last and (seq < self.window or self.run + 1 >= self.max_run):
            verdict = Verdict.RESTART
        else:
            self.run += 1
            return Verdict.DUPLICATE if seq == self.last else Verdict.STALE
        self.last, self.run = seq, 0
        return verdict


@settings(max_examples=300)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 120)),
        max_size=60,
    ),
    window=st.integers(0, 70),
    max_run=st.integers(1, 5),
    reset_at=st.integers(0, 60),
)
def test_tracker_matches_the_model(
    steps: list[tuple[str, int]], window: int, max_run: int, reset_at: int
) -> None:
    tracker = SequenceTracker(restart_window=window, max_stale_run=max_run)
    models = {"a": _Model(window, max_run), "b": _Model(window, max_run)}
    seen: dict[str, list[Verdict]] = {"a": [], "b": []}
    for i, (endpoint, seq) in enumerate(steps):
        if i == reset_at:
            tracker.reset("a")
            models["a"] = _Model(window, max_run)
        verdict = tracker.check(endpoint, seq)
        assert verdict is models[endpoint].check(seq)
        assert tracker.last(endpoint) == models[endpoint].last
        seen[endpoint].append(verdict)
    for endpoint, verdicts in seen.items():
        assert tracker.counts(endpoint) == {v.value: verdicts.count(v) for v in Verdict}
    assert sum(tracker.totals.values()) == len(steps)


@settings(max_examples=200)
@given(increments=st.lists(st.integers(1, 5), max_size=40), start=st.integers(0, 10**6))
def test_increasing_streams_only_advance(increments: list[int], start: int) -> None:
    tracker = SequenceTracker()
    seq = start
    verdicts = [tracker.check("e", seq)]
    for step in increments:
        seq += step
        verdicts.append(tracker.check("e", seq))
    assert verdicts[0] is Verdict.OK
    assert verdicts[1:] == [Verdict.OK if s == 1 else Verdict.GAP for s in increments]
    assert tracker.last("e") == seq


# ---------------------------------------------------------------- decoded → applied
# Issue 13: a wire-valid event the index could not take (block_size >= 2**31, a map in
# extra_keys) raised in the consumer and lost every endpoint's queued events. Whatever
# decodes must now be applied or rejected alone by the producer.
HOSTILE = st.one_of(
    JUNK,
    st.integers(2**31 - 2, 2**64 - 1),
    st.dictionaries(st.text(max_size=2), _SCALARS, max_size=2),
    st.lists(st.one_of(_SCALARS, st.dictionaries(st.text(max_size=2), _SCALARS)), max_size=3),
    st.just(msgpack.ExtType(3, b"e")),
)


@st.composite
def hostile_stored(draw: st.DrawFn) -> object:
    num_blocks = draw(st.integers(1, 3))
    block_size = draw(st.one_of(st.sampled_from([0, 4, 16]), st.integers(2**31 - 1, 2**64 - 1)))
    tokens = draw(st.sampled_from([0, num_blocks])) * (block_size if block_size < 64 else 0)
    extra = draw(
        st.one_of(
            st.none(),
            st.lists(
                st.one_of(st.none(), st.lists(HOSTILE, max_size=3)),
                min_size=num_blocks,
                max_size=num_blocks,
            ),
        )
    )
    return [
        "BlockStored",
        draw(st.lists(st.one_of(UINT64, INT64), min_size=num_blocks, max_size=num_blocks)),
        draw(st.one_of(st.none(), UINT64, INT64)),
        list(range(tokens)),
        block_size,
        None,
        draw(st.sampled_from([None, "GPU", "cpu", "disk"])),
        draw(st.one_of(st.none(), st.text(max_size=3))),
        extra,
    ]


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.one_of(hostile_stored(), almost_valid_events()), max_size=4))
def test_whatever_decodes_the_producer_applies_or_rejects_alone(events: list[object]) -> None:
    from inference_sched.framework.handle import PluginHandle
    from inference_sched.params import parse_params
    from inference_sched.plugins.precise_prefix import PrecisePrefixCacheProducer
    from tests.helpers import make_table

    outcome = _outcome(msgpack.packb([1.0, events], use_bin_type=True))
    if isinstance(outcome, DataError):
        event("rejected at decode")
        return
    event("decoded")
    producer = PrecisePrefixCacheProducer(
        "p", parse_params(PrecisePrefixCacheProducer.Params, {}, "p"), PluginHandle(make_table(2))
    )
    producer.events_in_process()
    sentinel = BlockStored(
        np.array([1], np.uint64), None, np.arange(16, dtype=np.uint32), 16, None, "GPU"
    )
    producer._on_batch("10.0.0.1:8000", "m", 0, EventBatch(0.0, (sentinel,)))
    producer._on_batch("10.0.0.0:8000", "m", 0, outcome)
    producer._on_batch(
        "10.0.0.1:8000", "m", 1, EventBatch(0.0, (BlockRemoved(np.array([1], np.uint64)),))
    )
    producer.index_size()  # applies everything queued; must not raise
    stats = producer.stats
    kinds = ("BlockStored", "BlockRemoved", "AllBlocksCleared", "events_rejected")
    assert sum(stats[k] for k in kinds) == len(outcome.events) + 2
    # The other endpoint's removal was applied whatever endpoint 0 sent.
    assert producer.index.endpoint_size(1) == 0
    assert stats["BlockRemoved"] >= 1
