"""``burst-prefix-cache-producer`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/dataproducer/burstprefix/``;
``docs/plugins/burst-prefix-cache-producer.md``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    PrefixCacheMatchInfo,
    TokenizedRequest,
    prefix_info_key,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.burst_prefix import (
    BurstBatchFullError,
    BurstEntry,
    BurstPrefixCacheProducer,
    BurstPrefixParams,
    BurstProduceTimeoutError,
    Replica,
    _Batch,
    assign,
)
from inference_sched.prefix.hashing import request_seed, token_block_hashes
from inference_sched.state.table import EndpointTable
from inference_sched.testing import check_plugin, make_table

pytestmark = pytest.mark.unit

PATH = "plugins[0].parameters"
ABC = (Replica("a"), Replica("b"), Replica("c"))
AB = (Replica("a"), Replica("b"))


def _entries(*keys: tuple[int, ...], replicas: tuple[Replica, ...] = ABC) -> list[BurstEntry]:
    return [BurstEntry(k, replicas) for k in keys]


# ====================================================================== params
def test_defaults() -> None:
    p = parse_params(BurstPrefixParams, None, PATH)
    assert (p.window_duration_ms, p.max_per_replica, p.block_size_tokens) == (100, -1, 64)
    assert (p.max_prefix_tokens_to_match, p.min_colocate_blocks, p.max_batch_size) == (0, 0, 1000)
    assert p.balance_by == "requests"
    assert p.max_blocks == 2048
    assert parse_params(BurstPrefixParams, {"maxPrefixTokensToMatch": 640}, PATH).max_blocks == 10


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"windowDurationMs": 0}, "windowDurationMs"),
        ({"windowDurationMs": 10001}, "windowDurationMs"),
        ({"windowDurationMs": True}, "windowDurationMs"),
        ({"maxPerReplica": 0}, "maxPerReplica"),
        ({"maxPerReplica": -2}, "maxPerReplica"),
        ({"blockSizeTokens": 0}, "blockSizeTokens"),
        ({"maxPrefixTokensToMatch": -1}, "maxPrefixTokensToMatch"),
        ({"maxPrefixTokensToMatch": 63}, "maxPrefixTokensToMatch"),
        ({"minColocateBlocks": -1}, "minColocateBlocks"),
        ({"maxBatchSize": 0}, "maxBatchSize"),
        ({"balanceBy": "token"}, "balanceBy"),
        ({"windowMs": 5}, ""),
    ],
    ids=lambda v: str(v),
)
def test_bad_parameters_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(BurstPrefixParams, raw, PATH)
    assert info.value.path == (f"{PATH}.{key}" if key else PATH)
    if not key:
        assert "did you mean 'windowDurationMs'" in str(info.value)


def test_edge_values_accepted() -> None:
    p = parse_params(
        BurstPrefixParams,
        {"windowDurationMs": 10000, "maxPerReplica": 1, "maxBatchSize": -1},
        PATH,
    )
    assert (p.window_duration_ms, p.max_per_replica, p.max_batch_size) == (10000, 1, -1)
    assert parse_params(BurstPrefixParams, {"maxPrefixTokensToMatch": 64}, PATH).max_blocks == 1


# ====================================================================== assignment
X, Y, Z = (1, 2), (3,), (4, 5, 6)


@pytest.mark.parametrize(
    ("keys", "replicas", "kwargs", "expected"),
    [
        # X (2 blocks) before Y (1 block); least loaded, ties by name; Z alone: none.
        ((X, X, Y, Y, Y, Z), ABC, {}, ["a", "a", "b", "b", "b", None]),
        # ties on load go to fewer running requests
        (
            (X, X, Y, Y),
            (Replica("a", 5), Replica("b", 1), Replica("c", 1)),
            {},
            ["b", "b", "c", "c"],
        ),
        # no hashes: never grouped
        (((), (), X), ABC, {}, [None, None, None]),
        # maxPerReplica spill to the next least loaded
        ((X,) * 5, ABC, {"max_per_replica": 2}, ["a", "a", "b", "b", "c"]),
        # more members than k x replicas: overflow one at a time, least loaded
        ((X,) * 7, ABC, {"max_per_replica": 2}, ["a", "a", "b", "b", "c", "c", "a"]),
        # unlimited: a whole group on one replica
        ((X,) * 7, ABC, {}, ["a"] * 7),
    ],
    ids=["groups", "running-ties", "no-hashes", "spill", "overflow", "unlimited"],
)
def test_assign_groups(
    keys: tuple[tuple[int, ...], ...],
    replicas: tuple[Replica, ...],
    kwargs: dict[str, Any],
    expected: list[str | None],
) -> None:
    assert assign(_entries(*keys, replicas=replicas), **kwargs) == expected


def test_singletons_need_min_colocate_blocks() -> None:
    p, q, r, s = (1, 2, 3), (1, 2, 4), (1, 9), (7, 8)
    # minColocateBlocks 0: singletons get no affinity
    assert assign(_entries(p, q, r, s)) == [None] * 4
    # 2: p and q share 2 leading blocks; r shares 1, s none. maxShare = ceil(2/3) = 1
    # stops q from joining p on "a": q goes to the least loaded replica.
    assert assign(_entries(p, q, r, s), min_colocate_blocks=2) == ["a", "b", None, None]


def test_prefix_preference_bounded_by_fair_share() -> None:
    g, p, q = (5,), (1, 2, 3), (1, 2, 4)
    # 2 replicas, 4 requests: maxShare 2. The group takes "a" (load 2 = its share);
    # p goes to "b"; q shares 2 blocks with p on "b" (load 1 < 2) and joins it.
    got = assign(_entries(g, g, p, q, replicas=AB), min_colocate_blocks=2)
    assert got == ["a", "a", "b", "b"]
    # the same with a longer shared prefix than the threshold
    assert assign(_entries(g, g, p, q, replicas=AB), min_colocate_blocks=1) == [
        "a",
        "a",
        "b",
        "b",
    ]


def test_groups_placed_before_singletons_longest_first() -> None:
    long_single, short_group = (1, 2, 3, 4), (9,)
    other = (1, 2, 3, 5)
    # min 3: long_single and other share 3 blocks (singleton units); the group (1 block)
    # is placed first anyway: a. Then the singletons, longest first: long_single to
    # the least loaded b (maxShare = ceil(4/3) = 2), other prefers b (match 3, load 1).
    got = assign(_entries(long_single, short_group, short_group, other), min_colocate_blocks=3)
    assert got == ["b", "a", "a", "b"]


def test_balance_by_tokens_counts_blocks() -> None:
    big, small1, small2 = tuple(range(10, 20)), (30,), (31,)
    keys = (big, big, small1, small1, small2, small2)
    # requests: loads a 2, b 2 -> small2 on a (name tie-break)
    assert assign(_entries(*keys, replicas=AB)) == ["a", "a", "b", "b", "a", "a"]
    # tokens: big costs 10 blocks on a, small1 1 on b -> small2 on b too
    assert assign(_entries(*keys, replicas=AB), balance_by="tokens") == [
        "a",
        "a",
        "b",
        "b",
        "b",
        "b",
    ]


def test_balance_by_tokens_discounts_blocks_already_placed() -> None:
    g1, g2 = (1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 7)
    g3, g4, g5, g6 = (20, 21, 22, 23, 24), (40,), (41,), (42,)
    keys = tuple(k for k in (g1, g2, g3, g4, g5, g6) for _ in range(2))
    # total 20 blocks, maxShare 10. g1 -> a (6); g2 prefers a (shares 5 blocks): a pays
    # 6 - 5 = 1 (7); g3 -> b (5); g4 -> b (6); g5 -> b (7); g6: a 7 = b 7 -> a. Without
    # the discount a would be at 12 and g6 would go to b.
    got = assign(_entries(*keys, replicas=AB), min_colocate_blocks=2, balance_by="tokens")
    assert got == ["a"] * 4 + ["b"] * 6 + ["a"] * 2


def test_first_hashed_entry_gives_the_replicas() -> None:
    entries = [
        BurstEntry((), (Replica("z"),)),
        BurstEntry(X, AB),
        BurstEntry(X, ABC),
    ]
    assert assign(entries) == [None, "a", "a"]


_keys = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(_keys, min_size=1, max_size=25),
    num_replicas=st.integers(1, 4),
    k=st.sampled_from([-1, 1, 2, 3]),
    min_blocks=st.integers(0, 3),
    balance_by=st.sampled_from(["requests", "tokens"]),
)
def test_assignment_invariants(
    keys: list[tuple[int, ...]], num_replicas: int, k: int, min_blocks: int, balance_by: str
) -> None:
    replicas = tuple(Replica(f"r{i}", float(i % 2)) for i in range(num_replicas))
    got = assign(
        _entries(*keys, replicas=replicas),
        max_per_replica=k,
        min_colocate_blocks=min_blocks,
        balance_by=balance_by,
    )
    assert len(got) == len(keys)
    names = {r.name for r in replicas}
    counts: dict[tuple[int, ...], int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    for key, name in zip(keys, got, strict=True):
        if not key:
            assert name is None  # no hashes: no affinity
        elif counts[key] >= 2:
            assert name in names  # every member of a group is assigned
        elif min_blocks == 0:
            assert name is None  # a singleton needs minColocateBlocks
        else:
            assert name is None or name in names
    for key, count in counts.items():
        if not key or count < 2:
            continue
        placed = [name for kk, name in zip(keys, got, strict=True) if kk == key]
        per: dict[str | None, int] = {}
        for name in placed:
            per[name] = per.get(name, 0) + 1
        if k == -1:
            assert len(per) == 1  # a whole group on one replica
        elif count <= k * num_replicas:
            assert max(per.values()) <= k  # the per-replica cap holds unless overflowing
        else:  # every replica filled to the cap before any overflow
            assert len(per) == num_replicas
            assert min(per.values()) >= k


# ====================================================================== producer
def _producer(
    table: EndpointTable | None = None, **raw: Any
) -> tuple[BurstPrefixCacheProducer, EndpointTable]:
    table = table if table is not None else make_table(3)
    params = parse_params(BurstPrefixParams, raw, PATH)
    return BurstPrefixCacheProducer("burst", params, PluginHandle(table)), table


def _cycle(ids: list[int] | None = None, *, tokenized: bool = True) -> CycleState:
    cycle = CycleState(np.random.default_rng(0))
    if ids is not None and tokenized:
        cycle.write(TOKENIZED_PROMPT, TokenizedRequest((np.asarray(ids, dtype=np.uint32),)))
    return cycle


def _request(rid: str, ids: list[int] | None = None) -> Request:
    return Request.create("m", request_id=rid, token_ids=ids)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_produce_timeout_is_window_plus_300ms() -> None:
    producer, _ = _producer(windowDurationMs=250)
    assert producer.produce_timeout() == pytest.approx(0.55)
    assert producer.stability == "alpha"


def test_lone_request_waits_out_its_window_and_gets_no_affinity() -> None:
    producer, table = _producer(windowDurationMs=1)
    ids = list(range(130))
    cycle = _cycle(ids)
    producer.prepare_request_data(cycle, _request("r0"), table, table.candidates())
    info = cycle.read(prefix_info_key("burst"))
    assert isinstance(info, PrefixCacheMatchInfo)
    assert cycle.read(PREFIX_CACHE_MATCH_INFO) is info  # nobody else wrote the shared key
    assert info.total_blocks == 3  # 130 ids in 64-token blocks, the partial one included
    assert info.block_size_tokens == 64
    expected = token_block_hashes(np.arange(130), 64, request_seed("m", ""), 2048)
    assert info.hashes.tolist() == expected.tolist()
    assert info.match_blocks.tolist()[:3] == [0.0, 0.0, 0.0]
    assert (producer.num_batches, producer.num_assigned, producer.last_batch_size) == (1, 0, 1)


def test_request_token_ids_hashed_without_a_tokenized_prompt() -> None:
    producer, table = _producer(windowDurationMs=1, blockSizeTokens=4)
    cycle = _cycle()
    producer.prepare_request_data(cycle, _request("r0", [1, 2, 3, 4, 5]), table, table.candidates())
    info = cycle.read(prefix_info_key("burst"))
    expected = token_block_hashes([1, 2, 3, 4, 5], 4, request_seed("m", ""), 2048)
    assert info.hashes.tolist() == expected.tolist()
    assert info.total_blocks == 2


def test_every_prompt_hashed_on_its_own() -> None:
    producer, table = _producer(windowDurationMs=1, blockSizeTokens=2, maxPrefixTokensToMatch=2)
    cycle = CycleState(np.random.default_rng(0))
    prompts = (np.array([1, 2, 3], np.uint32), np.array([4, 5], np.uint32))
    cycle.write(TOKENIZED_PROMPT, TokenizedRequest(prompts))
    producer.prepare_request_data(cycle, _request("r0"), table, table.candidates())
    seed = request_seed("m", "")
    # maxPrefixTokensToMatch 2 // blockSizeTokens 2 = one block per prompt
    expected = [int(token_block_hashes(p, 2, seed, 1)[0]) for p in prompts]
    assert cycle.read(prefix_info_key("burst")).hashes.tolist() == expected


def test_shared_key_left_to_another_producer() -> None:
    producer, table = _producer(windowDurationMs=1)
    cycle = _cycle([1, 2, 3])
    other = PrefixCacheMatchInfo(np.ones(3), 1, 16)
    cycle.write(PREFIX_CACHE_MATCH_INFO, other)
    producer.prepare_request_data(cycle, _request("r0"), table, table.candidates())
    assert cycle.read(PREFIX_CACHE_MATCH_INFO) is other
    assert cycle.read(prefix_info_key("burst")) is not other


def _pending_is(producer: BurstPrefixCacheProducer, n: int) -> Callable[[], bool]:
    return lambda: producer.pending_requests() == n


def _run_threads(
    producer: BurstPrefixCacheProducer,
    table: EndpointTable,
    prompts: list[list[int]],
    candidates: list[np.ndarray[Any, Any]] | None = None,
) -> tuple[list[CycleState], list[BaseException]]:
    cycles = [_cycle(ids) for ids in prompts]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        rows = table.candidates() if candidates is None else candidates[i]
        try:
            producer.prepare_request_data(cycles[i], _request(f"r{i}"), table, rows)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for i, thread in enumerate(threads):
        thread.start()
        _wait_for(_pending_is(producer, i + 1), f"{i + 1} requests")  # arrival order fixed
    assert producer.seal() == len(prompts)
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    return cycles, errors


def test_concurrent_burst_colocates_identical_prompts() -> None:
    table = make_table(3, running=[2, 0, 1])
    producer, _ = _producer(table, windowDurationMs=10000, blockSizeTokens=2)
    shared, lone = [7, 8, 9], [1, 2]
    cycles, errors = _run_threads(producer, table, [shared, lone, shared, shared])
    assert errors == []
    infos = [c.read(prefix_info_key("burst")) for c in cycles]
    # the group (3 members) goes to the replica with the fewest running requests: e1
    for i in (0, 2, 3):
        assert infos[i].match_blocks.tolist()[:3] == [0.0, 2.0, 0.0]
        assert infos[i].total_blocks == 2
    assert infos[1].match_blocks.tolist()[:3] == [0.0, 0.0, 0.0]
    assert (producer.num_batches, producer.num_assigned, producer.last_batch_size) == (1, 3, 4)
    assert producer.pending_requests() == 0


def test_assigned_replica_not_a_candidate_gives_no_affinity() -> None:
    table = make_table(3)
    producer, _ = _producer(table, windowDurationMs=10000)
    rows = [table.candidates(), table.candidates(), np.array([2], np.int32)]
    cycles, errors = _run_threads(producer, table, [[1], [1], [1]], rows)
    assert errors == []
    assert cycles[0].read(prefix_info_key("burst")).match_blocks.tolist()[:3] == [1.0, 0, 0]
    assert cycles[2].read(prefix_info_key("burst")).match_blocks.tolist()[:3] == [0.0, 0, 0]


def test_full_batch_is_an_error_for_the_arrival() -> None:
    producer, table = _producer(windowDurationMs=10000, maxBatchSize=1)
    done = threading.Event()

    def first() -> None:
        producer.prepare_request_data(_cycle([1]), _request("r0"), table, table.candidates())
        done.set()

    thread = threading.Thread(target=first)
    thread.start()
    _wait_for(_pending_is(producer, 1), "the first request")
    with pytest.raises(BurstBatchFullError, match="maxBatchSize 1 reached") as info:
        producer.prepare_request_data(_cycle([1]), _request("r1"), table, table.candidates())
    assert (info.value.plugin_type, info.value.plugin_name) == (
        "burst-prefix-cache-producer",
        "burst",
    )
    assert producer.num_batch_full == 1
    producer.seal()
    thread.join(timeout=30)
    assert done.is_set()


def test_never_waits_past_the_produce_timeout() -> None:
    producer, table = _producer(windowDurationMs=100)
    ticks = iter([0.0, 0.5])  # joined at 0; next look at the clock is past 0.1 + 0.3
    producer._clock = lambda: next(ticks)
    with pytest.raises(BurstProduceTimeoutError):
        producer.prepare_request_data(_cycle([1]), _request("r0"), table, table.candidates())
    assert producer.num_timeouts == 1


def test_an_expired_open_batch_is_sealed_by_the_next_arrival() -> None:
    producer, table = _producer(windowDurationMs=100)
    ticks = iter([0.0, 0.2, 0.2])
    producer._clock = lambda: next(ticks)
    # a stale open batch (its waiter never woke): the arrival seals it, opens its own
    stale = producer._batch = _Batch(-1.0)
    producer.prepare_request_data(_cycle([1]), _request("r0"), table, table.candidates())
    assert stale.is_sealed
    assert producer.num_batches == 2


def test_conformance_and_isolation() -> None:
    report = check_plugin("burst-prefix-cache-producer", {"windowDurationMs": 1})
    assert any(c.startswith("isolation") for c in report.checked)
