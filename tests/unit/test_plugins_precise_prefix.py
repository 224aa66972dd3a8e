"""precise-prefix-cache-producer (llm-d A.4, H.2): params, events in, exact matches,
speculation, invalidation, removal, and the scorer's absolute ratio on top."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ConfigError, ParameterError
from inference_sched.framework.config import load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Endpoint, Request
from inference_sched.params import parse_params
from inference_sched.plugins.precise_prefix import PrecisePrefixCacheProducer
from inference_sched.plugins.prefix import PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo
from inference_sched.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

pytestmark = pytest.mark.unit

PATH = "plugins[0].parameters"
MODEL = "m"
TOKENS = np.arange(1000, 1000 + 96, dtype=np.uint32)  # 6 blocks of 16


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _producer(clock: Clock | None = None, n: int = 3, **raw: Any) -> PrecisePrefixCacheProducer:
    table = make_table(n)
    params = parse_params(PrecisePrefixCacheProducer.Params, raw, PATH)
    producer = PrecisePrefixCacheProducer("precise", params, PluginHandle(table, clock=clock))
    producer.events_in_process()
    return producer


def _stored(
    blocks: range, *, parent: int | None = None, medium: str = "GPU", lora: str | None = None
) -> BlockStored:
    """Engine blocks ``blocks`` of TOKENS (engine hashes 500 + i)."""
    tokens = TOKENS[blocks.start * 16 : blocks.stop * 16].tolist()
    hashes = [500 + i for i in blocks]
    return BlockStored(hashes, parent, tokens, 16, None, medium, lora)


def _match(
    producer: PrecisePrefixCacheProducer, tokens: Any = TOKENS, model: str = MODEL
) -> PrefixCacheMatchInfo:
    cycle = CycleState(np.random.default_rng(0), producer._clock())
    table = producer._table
    request = Request.create(model, prompt="x", token_ids=tokens)
    producer.prepare_request_data(cycle, request, table, table.candidates())
    info = cycle.read(PREFIX_CACHE_MATCH_INFO)
    assert isinstance(info, PrefixCacheMatchInfo)
    return info


def test_gpu_cpu_weights_and_chains_give_exact_counts() -> None:
    producer = _producer()
    producer.kv_event("10.0.0.0:8000", _stored(range(4)), MODEL)  # e0: blocks 0-3 on GPU
    producer.kv_event("e1", _stored(range(2)), MODEL)  # by name works too: blocks 0-1
    producer.kv_event("10.0.0.2:8000", _stored(range(3), medium="CPU"), MODEL)
    # e2 continues its chain from engine block 502 (a child event): blocks 3-4 on GPU.
    producer.kv_event("10.0.0.2:8000", _stored(range(3, 5), parent=502), MODEL)
    info = _match(producer)
    assert info.total_blocks == 6
    assert info.block_size_tokens == 16
    np.testing.assert_allclose(info.match_blocks[:3], [4.0, 2.0, 0.8 * 3 + 2.0])
    assert producer.stats["BlockStored"] == 4


def test_removed_cleared_and_invalidated_blocks_stop_matching() -> None:
    producer = _producer()
    for pod in ("10.0.0.0:8000", "10.0.0.1:8000", "10.0.0.2:8000"):
        producer.kv_event(pod, _stored(range(6)), MODEL)
    producer.kv_event("10.0.0.0:8000", BlockRemoved([502], "GPU"), MODEL)  # a gap at block 2
    producer.kv_event("10.0.0.1:8000", AllBlocksCleared(), MODEL)
    producer.invalidate("10.0.0.2:8000", "sequence gap")
    np.testing.assert_allclose(_match(producer).match_blocks[:3], [2.0, 0.0, 0.0])
    assert producer.stats["BlockRemoved"] == 1
    assert producer.stats["invalidated"] == 1


def test_lora_name_is_the_chain_root() -> None:
    producer = _producer()
    producer.kv_event("10.0.0.0:8000", _stored(range(6), lora="sql"), MODEL)
    producer.kv_event("10.0.0.1:8000", _stored(range(6)), MODEL)
    np.testing.assert_allclose(_match(producer, model="sql").match_blocks[:2], [6.0, 0.0])
    np.testing.assert_allclose(_match(producer).match_blocks[:2], [0.0, 6.0])


def test_unknown_endpoints_unknown_parents_and_requests_without_tokens_are_counted() -> None:
    producer = _producer()
    producer.kv_event("10.9.9.9:8000", _stored(range(2)), MODEL)
    producer.kv_event("10.0.0.0:8000", _stored(range(2, 4), parent=12345), MODEL)
    info = _match(producer, tokens=None)
    assert info.total_blocks == 0
    assert not info.match_blocks.any()
    assert producer.stats["events_unknown_endpoint"] == 1
    assert producer.stats["requests_without_token_ids"] == 1
    assert producer.index.stats()["unknown_parent_events"] == 1


def test_gpu_capacity_follows_the_scraped_cache_size() -> None:
    producer = _producer()
    table = producer._table
    table.update_metrics([0], kv_blocks_total=[2.0], block_size_tokens=[32.0])
    producer.kv_event("10.0.0.0:8000", _stored(range(6)), MODEL)  # 16-token engine blocks
    info = _match(producer)
    # 2 engine blocks of 32 tokens = 4 index blocks: the LRU keeps the last 4 stored.
    assert producer.index.endpoint_size(0, "gpu") == 4
    assert info.match_blocks[0] == 0.0  # blocks 0-1 evicted: no leading match


def test_speculative_entries_serve_the_next_request_until_the_ttl() -> None:
    clock = Clock()
    table = EndpointTable(clock=clock)
    for i in range(3):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000))
    scheduler = Scheduler.from_config(
        """
plugins:
- type: precise-prefix-cache-producer
  parameters: {speculativeIndexing: true, speculativeTTL: 2s}
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer}, {pluginRef: max-score-picker}]
""",
        table,
    )
    producer = scheduler.plugins["precise-prefix-cache-producer"]
    producer.events_in_process()
    result = scheduler.schedule(Request.create(MODEL, prompt="x", token_ids=TOKENS))
    picked = result.primary.rows[0]
    info = _match(producer)
    assert info.match_blocks[picked] == 6.0  # speculative: before any engine event
    assert info.match_blocks.sum() == 6.0
    clock.now += 1.0
    scheduler.run_deferred()
    assert _match(producer).match_blocks.sum() == 6.0  # within the TTL
    clock.now += 1.5
    scheduler.run_deferred()
    assert _match(producer).match_blocks.sum() == 0.0
    assert producer.index.stats()["speculative_expired"] == 6


def test_removing_an_endpoint_drops_its_entries() -> None:
    producer = _producer()
    producer.kv_event("10.0.0.1:8000", _stored(range(6)), MODEL)
    assert producer.index_size() == 6
    producer._table.remove("e1")
    assert producer.index_size() == 0


def test_the_scorer_divides_by_the_request_blocks() -> None:
    config = load_config(
        """
plugins:
- type: precise-prefix-cache-producer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer}, {pluginRef: max-score-picker}]
"""
    )
    assert "approx-prefix-cache-producer" not in {p.type for p in config.plugins}
    table = make_table(3)
    scheduler = Scheduler.from_config(config, table)
    producer = scheduler.plugins["precise-prefix-cache-producer"]
    producer.events_in_process()
    producer.kv_event("10.0.0.2:8000", _stored(range(3)), MODEL)
    result = scheduler.schedule(Request.create(MODEL, prompt="x", token_ids=TOKENS))
    assert result.primary.endpoints[0].name == "e2"
    assert result.primary.scores[0] == pytest.approx(0.5)  # 3 of 6 blocks, weight 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"kvEventsConfig": {"podDiscoveryConfig": {"socketPort": 0}}},
            f"{PATH}.kvEventsConfig.podDiscoveryConfig.socketPort: expected a number in "
            "[1, 65535], got 0 (int)",
        ),
        (
            {"tokenProcessorConfig": {"blockSizeToken": 16}},
            f"{PATH}.tokenProcessorConfig.blockSizeToken: expected one of the keys "
            "blockSizeTokens, blockSize, hashSeed (did you mean 'blockSizeTokens'?), "
            "got 'blockSizeToken' (str)",
        ),
        (
            {"indexerConfig": {"kvCacheBackendConfigs": [{"name": "gpu", "weight": -1}]}},
            f"{PATH}.indexerConfig.kvCacheBackendConfigs[0].weight: expected a number >= 0, "
            "got -1 (int)",
        ),
        (
            {"speculativeTTL": 2},
            f"{PATH}.speculativeTTL: expected a duration string such as '200ms', got 2 (int)",
        ),
    ],
)
def test_parameter_errors_name_the_nested_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(PrecisePrefixCacheProducer.Params, raw, PATH)
    assert str(info.value) == message


def test_llm_d_parameters_are_read() -> None:
    params = parse_params(
        PrecisePrefixCacheProducer.Params,
        {
            "tokenProcessorConfig": {"blockSize": 64, "hashSeed": "42"},
            "indexerConfig": {
                "kvCacheBackendConfigs": [
                    {"name": "GPU", "weight": 1},
                    {"name": "cpu", "weight": 0.5},
                ]
            },
            "kvEventsConfig": {
                "topicFilter": "kv@",
                "concurrency": 8,
                "zmqEndpoint": "tcp://*:5557",
            },
            "speculativeIndexing": True,
            "speculativeTTL": "500ms",
        },
        PATH,
    )
    assert params.block_size_tokens == 64  # the old key alone
    assert params.speculative_ttl_s == 0.5
    producer = PrecisePrefixCacheProducer("p", params, PluginHandle(make_table(1)))
    assert producer.index.tier_weights["cpu"] == 0.5
    with pytest.raises(ConfigError):
        load_config("plugins: [{type: precise-prefix-cache-producer, parameters: {bogus: 1}}]")


def test_cache_salt_in_vllm_extra_keys_is_the_chain_salt() -> None:
    from inference_sched.prefix.precise.wire import BlockStored as WireStored

    producer = _producer()
    tokens = TOKENS[:32]
    event = WireStored(
        np.array([1, 2], dtype=np.uint64), None, tokens, 16, None, "GPU", None, (("s1",), None)
    )
    producer.kv_event("10.0.0.0:8000", event, MODEL)

    def match(body: dict[str, Any] | None) -> float:
        cycle = CycleState(np.random.default_rng(0))
        table = producer._table
        request = Request.create(MODEL, prompt="x", token_ids=tokens, body=body)
        producer.prepare_request_data(cycle, request, table, table.candidates())
        return float(cycle.read(PREFIX_CACHE_MATCH_INFO).match_blocks[0])

    assert match({"cache_salt": "s1"}) == 2.0
    assert match(None) == 0.0
    assert match({"cache_salt": "other"}) == 0.0


# ====================================================================== issue 13
# Hostile inputs: one odd event, a flood with no decision. Endpoints e0..e2.
E0, E1, E2 = "10.0.0.0:8000", "10.0.0.1:8000", "10.0.0.2:8000"
APPLIED = ("BlockStored", "BlockRemoved", "AllBlocksCleared")


def _wire_stored(hashes: list[int], tokens: Any, block_size: int, **fields: Any) -> Any:
    from inference_sched.prefix.precise.wire import BlockStored as WireStored

    return WireStored(
        np.array(hashes, dtype=np.uint64),
        fields.pop("parent", None),
        np.asarray(tokens, dtype=np.uint32),
        block_size,
        None,
        fields.pop("medium", "GPU"),
        None,
        fields.pop("extra_keys", None),
    )


def _bad_stored(kind: str) -> Any:
    """A BlockStored the index cannot take; the first two were wire-valid before issue 13
    (they decoded, then overflowed / broke the whole drain)."""
    if kind == "block-size-2**31":
        return _wire_stored([77], [], 2**31)  # no tokens: the token-count rule holds
    if kind == "map-in-extra-keys":
        return _wire_stored([77, 78], TOKENS[:32], 16, extra_keys=(("mm", {"a": 1}), None))
    if kind == "hash-out-of-range":
        return BlockStored([-1], None, TOKENS[:16].tolist(), 16, None, "GPU")
    if kind == "parent-out-of-range":
        return BlockStored([77], 2**64, TOKENS[:16].tolist(), 16, None, "GPU")
    if kind == "token-out-of-range":
        return BlockStored([77], None, [2**40] * 16, 16, None, "GPU")
    if kind == "fields-missing":  # an embedder's object of the right name, half built
        return type("BlockStored", (), {"block_hashes": [77]})()
    assert kind == "medium-not-a-str"
    return BlockStored([77], None, TOKENS[:16].tolist(), 16, None, 5)  # type: ignore[arg-type]


def _applied(producer: PrecisePrefixCacheProducer) -> int:
    return sum(producer.stats[k] for k in APPLIED)


@pytest.mark.parametrize(
    "kind",
    [
        "block-size-2**31",
        "map-in-extra-keys",
        "hash-out-of-range",
        "parent-out-of-range",
        "token-out-of-range",
        "medium-not-a-str",
        "fields-missing",
    ],
)
def test_a_bad_event_is_rejected_alone(kind: str) -> None:
    producer = _producer()
    producer.kv_event(E0, _stored(range(4)), MODEL)
    producer.kv_event(E2, _stored(range(2)), MODEL)
    assert _match(producer).match_blocks[:3].tolist() == [4.0, 0.0, 2.0]
    # One drain: e0 evicts its 4 blocks, e1 sends the bad event between e0's removal and
    # e2's next blocks, then more of e1's (valid) blocks.
    producer.kv_event(E0, BlockRemoved([500, 501, 502, 503], "GPU"), MODEL)
    producer.kv_event(E1, _bad_stored(kind), MODEL)
    producer.kv_event(E2, _stored(range(2, 6), parent=501), MODEL)
    producer.kv_event(E1, _stored(range(3)), MODEL)
    info = _match(producer)  # must not raise
    # e0's removal applied (no phantom entries), e2's and e1's valid blocks too.
    assert producer.index.endpoint_size(0) == 0
    assert info.match_blocks[:3].tolist() == [0.0, 3.0, 6.0]
    assert producer.stats["events_rejected"] == 1
    assert producer.stats["BlockRemoved"] == 1
    assert producer.stats["BlockStored"] == 2 + 2
    # A rejected BlockStored only leaves entries out: e1 was not invalidated.
    assert producer.stats["invalidated"] == 0
    # The next drain is unaffected.
    producer.kv_event(E1, BlockRemoved([500], "GPU"), MODEL)
    assert _match(producer).match_blocks[1] == 0.0
    assert producer.stats["BlockRemoved"] == 2


def test_a_rejected_removal_invalidates_its_endpoint_only() -> None:
    producer = _producer()
    for pod in (E0, E1):
        producer.kv_event(pod, _stored(range(6)), MODEL)
    assert _match(producer).match_blocks[:2].tolist() == [6.0, 6.0]
    # e0's removal cannot be applied (a hash outside uint64): its blocks may be gone on
    # the engine, so e0's entries must go; e1 is untouched, e0's later events apply.
    producer.kv_event(E0, BlockRemoved([-5], "GPU"), MODEL)
    producer.kv_event(E0, _stored(range(2)), MODEL)
    assert _match(producer).match_blocks[:2].tolist() == [2.0, 6.0]
    assert producer.stats["events_rejected"] == 1
    assert producer.stats["invalidated"] == 1
    assert producer.index.endpoint_size(0) == 2


def test_a_chunk_the_index_refuses_is_applied_event_by_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever the index refuses that no check foresaw: the chunk is retried one event
    # at a time, so only the event it refuses is lost.
    producer = _producer()
    apply_events = producer.index.apply_events

    def refuse_stores_of_row_1(batch: Any) -> Any:
        if ((batch.rows == 1) & (batch.kinds == 0)).any():
            raise ValueError("refused")
        return apply_events(batch)

    monkeypatch.setattr(producer.index, "apply_events", refuse_stores_of_row_1)
    producer.kv_event(E0, _stored(range(4)), MODEL)
    producer.kv_event(E1, _stored(range(4)), MODEL)
    producer.kv_event(E2, _stored(range(4)), MODEL)
    producer.kv_event(E0, BlockRemoved([503], "GPU"), MODEL)
    assert _match(producer).match_blocks[:3].tolist() == [3.0, 0.0, 4.0]
    assert producer.stats["events_rejected"] == 1
    assert producer.stats["invalidated"] == 0


# Documented defaults (docs/plugins/precise-prefix-cache-producer.md).
PER_ENDPOINT_BOUND = 20_000
TOTAL_BOUND = 100_000
APPLY_BUDGET = 4_096


def _flood_batch(events: int) -> Any:
    from inference_sched.prefix.precise.wire import EventBatch

    filler = _wire_stored([9000], np.arange(5000, 5016), 16)  # not TOKENS' blocks
    return EventBatch(0.0, (filler,) * events)


def test_a_flood_with_no_applier_is_bounded_and_invalidates_the_endpoint() -> None:
    from inference_sched.prefix.precise.wire import EventBatch

    producer = _producer()
    producer.kv_event(E0, _stored(range(4)), MODEL)
    assert _match(producer).match_blocks[0] == 4.0
    # No decision, no deferred run, and the index busy (as during a long decision, or
    # with no scheduling thread at all): the subscriber's callback keeps delivering.
    # The first batch evicts e0's blocks; the flood that follows overflows e0's queue,
    # so that removal is dropped unapplied.
    with producer._lock:
        producer._on_batch(
            E0, MODEL, 0, EventBatch(0.0, (BlockRemoved([500, 501, 502, 503], "GPU"),))
        )
        for seq in range(1, 601):
            producer._on_batch(E0, MODEL, seq, _flood_batch(100))  # 60,000 events
    before = _applied(producer)
    _match(producer)  # the next decision applies at most its budget
    assert _applied(producer) - before <= APPLY_BUDGET
    assert producer.pending_events() <= PER_ENDPOINT_BOUND
    assert producer.stats["queue_overflows"] >= 1
    assert producer.stats["events_dropped"] >= 60_001 - PER_ENDPOINT_BOUND
    assert producer.stats["invalidated"] >= 1
    for _ in range(PER_ENDPOINT_BOUND // APPLY_BUDGET + 2):
        producer.run_deferred()
    assert producer.pending_events() == 0
    # The dropped removal cannot leave phantom entries: e0 was cleared, then the tail
    # of the flood (block 9000) applied on top.
    assert _match(producer).match_blocks[0] == 0.0
    assert producer.index.endpoint_size(0) == 1
    assert producer.params.max_queued_events_per_endpoint == PER_ENDPOINT_BOUND
    assert producer.params.max_queued_events == TOTAL_BOUND
    assert producer.params.max_events_per_apply == APPLY_BUDGET


def test_the_total_bound_drops_the_longest_queue() -> None:
    producer = _producer(maxQueuedEvents=250, maxQueuedEventsPerEndpoint=200, maxEventsPerApply=50)
    with producer._lock:
        producer._on_batch(E1, MODEL, 0, _flood_batch(60))
        producer._on_batch(E0, MODEL, 0, _flood_batch(190))
        assert producer.pending_events() == 250
        producer._on_batch(E2, MODEL, 0, _flood_batch(10))  # over 250: e0 (190) goes
        assert producer.pending_events() == 70
        assert producer.stats["events_dropped"] == 190
        producer._on_batch(E2, MODEL, 1, _flood_batch(1000))  # e2 over its own 200
        assert producer.pending_events() <= 250
    assert producer.stats["queue_overflows"] >= 2
    before = _applied(producer)
    _match(producer)
    assert _applied(producer) - before <= 50


def test_events_are_applied_as_they_arrive_without_any_decision() -> None:
    # The probe of issue 13: batches keep coming and nothing schedules. The receiving
    # thread applies them in bounded chunks: nothing piles up, nothing is lost.
    producer = _producer()
    for seq in range(600):
        producer._on_batch(E0, MODEL, seq, _flood_batch(100))
        assert producer.pending_events() < APPLY_BUDGET
    producer.kv_event(E1, _stored(range(6)), MODEL)
    assert producer.stats["queue_overflows"] == 0
    before = _applied(producer)
    assert _match(producer).match_blocks[1] == 6.0
    assert _applied(producer) - before < APPLY_BUDGET
    assert producer.pending_events() == 0
    assert producer.stats["BlockStored"] == 60_001


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"maxQueuedEvents": 0}, f"{PATH}.maxQueuedEvents: expected int >= 1, got 0 (int)"),
        (
            {"maxEventsPerApply": 0},
            f"{PATH}.maxEventsPerApply: expected int >= 1, got 0 (int)",
        ),
    ],
)
def test_queue_parameters_are_checked(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(PrecisePrefixCacheProducer.Params, raw, PATH)
    assert str(info.value) == message


# ------------------------------------------------------------ indexerConfig.kvBlockIndexConfig
def test_kv_block_index_config_in_memory_keys_are_read() -> None:
    params = parse_params(
        PrecisePrefixCacheProducer.Params,
        {
            "indexerConfig": {
                "kvBlockIndexConfig": {
                    "inMemoryConfig": {"size": 1000, "podCacheSize": 5},
                    "enableMetrics": True,
                    "metricsLoggingInterval": "1m0s",
                }
            }
        },
        PATH,
    )
    config = params.indexer_config.kv_block_index_config
    assert config.in_memory_config is not None
    assert (config.in_memory_config.size, config.in_memory_config.pod_cache_size) == (1000, 5)
    assert (config.enable_metrics, config.metrics_logging_interval_s) == (True, 60.0)
    assert config.capacity == 1000
    producer = PrecisePrefixCacheProducer("p", params, PluginHandle(make_table(1)))
    assert producer.index.capacity(0, "gpu") == 1000


def test_kv_block_index_size_caps_the_default_capacity() -> None:
    default = parse_params(PrecisePrefixCacheProducer.Params, {}, PATH)
    assert default.indexer_config.kv_block_index_config.capacity == 31_250
    llm_d_default = parse_params(
        PrecisePrefixCacheProducer.Params,
        {"indexerConfig": {"kvBlockIndexConfig": {"inMemoryConfig": {"size": 100_000_000}}}},
        PATH,
    )
    assert llm_d_default.indexer_config.kv_block_index_config.capacity == 31_250
    producer = PrecisePrefixCacheProducer("p", llm_d_default, PluginHandle(make_table(1)))
    assert producer.index.capacity(0, "gpu") == 31_250


def test_cost_aware_memory_config_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = parse_params(
        PrecisePrefixCacheProducer.Params,
        {"indexerConfig": {"kvBlockIndexConfig": {"costAwareMemoryConfig": {"size": "1GiB"}}}},
        PATH,
    )
    cost_aware = params.indexer_config.kv_block_index_config.cost_aware_memory_config
    assert cost_aware is not None
    assert cost_aware.size == "1GiB"
    with caplog.at_level("WARNING"):
        PrecisePrefixCacheProducer("p", params, PluginHandle(make_table(1)))
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'p': indexerConfig.kvBlockIndexConfig.costAwareMemoryConfig.size is not "
        "applied; the in-process index is bounded by entries per endpoint tier"
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"redisConfig": {"address": "redis://user:secret@redis:6379"}},
            f"{PATH}.indexerConfig.kvBlockIndexConfig.redisConfig: expected no external index "
            "backend: the redis/valkey KV-block index is not available here (events are "
            "indexed in process; remove it), got ['address'] (list)",
        ),
        (
            {"valkeyConfig": {"address": "valkey://v:6379", "backendType": "valkey"}},
            f"{PATH}.indexerConfig.kvBlockIndexConfig.valkeyConfig: expected no external index "
            "backend: the redis/valkey KV-block index is not available here (events are "
            "indexed in process; remove it), got ['address', 'backendType'] (list)",
        ),
        (
            {"inMemoryConfig": {"sise": 1}},
            f"{PATH}.indexerConfig.kvBlockIndexConfig.inMemoryConfig.sise: expected one of the "
            "keys size, podCacheSize (did you mean 'size'?), got 'sise' (str)",
        ),
        (
            {"inMemoryConfig": {"size": 0}},
            f"{PATH}.indexerConfig.kvBlockIndexConfig.inMemoryConfig.size: expected int >= 1, "
            "got 0 (int)",
        ),
    ],
)
def test_kv_block_index_config_errors_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(
            PrecisePrefixCacheProducer.Params, {"indexerConfig": {"kvBlockIndexConfig": raw}}, PATH
        )
    assert str(info.value) == message
    assert "secret" not in str(info.value)


def test_the_producer_writes_its_own_key_too() -> None:
    producer = _producer()
    producer.kv_event("10.0.0.0:8000", _stored(range(2)), MODEL)
    cycle = CycleState(np.random.default_rng(0), producer._clock())
    table = producer._table
    request = Request.create(MODEL, prompt="x", token_ids=TOKENS)
    producer.prepare_request_data(cycle, request, table, table.candidates())
    info = cycle.read("PrefixCacheMatchInfo/precise")
    assert info is cycle.read(PREFIX_CACHE_MATCH_INFO)
    np.testing.assert_allclose(info.match_blocks[:3], [2.0, 0.0, 0.0])
