"""approx-prefix-cache-producer (GIE): params, hashing inputs, match, PreRequest."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import parse_params
from inference_sched.plugins.prefix import (
    PREFIX_CACHE_MATCH_INFO,
    ApproxPrefixCacheProducer,
    PrefixCacheMatchInfo,
)
from inference_sched.prefix.hashing import block_hashes, token_block_hashes
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

PATH = "plugins[0].parameters"
PROMPT = bytes(range(256)) * 8  # 2048 bytes: 32 blocks of 64 bytes


def _producer(table: EndpointTable, **raw: Any) -> ApproxPrefixCacheProducer:
    params = parse_params(ApproxPrefixCacheProducer.Params, raw, PATH)
    return ApproxPrefixCacheProducer("approx", params, PluginHandle(table))


def _rows(*rows: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int32)


def _prepare(
    producer: ApproxPrefixCacheProducer,
    table: EndpointTable,
    request: Request,
    candidates: list[int] | None = None,
) -> tuple[CycleState, PrefixCacheMatchInfo]:
    cycle = CycleState(np.random.default_rng(0))
    rows = _rows(*(range(len(table)) if candidates is None else candidates))
    producer.prepare_request_data(cycle, request, table, rows)
    info = cycle.read(PREFIX_CACHE_MATCH_INFO)
    assert isinstance(info, PrefixCacheMatchInfo)
    return cycle, info


def _result(table: EndpointTable, **picks: int) -> SchedulingResult:
    runs = {
        profile: ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))
        for profile, row in picks.items()
    }
    return SchedulingResult(runs, next(iter(picks)))


# ====================================================================== parameters
def test_defaults() -> None:
    params = parse_params(ApproxPrefixCacheProducer.Params, None, PATH)
    assert (
        params.auto_tune,
        params.block_size_tokens,
        params.max_prefix_blocks_to_match,
        params.max_prefix_tokens_to_match,
        params.lru_capacity_per_server,
        params.match_mode,
    ) == (True, 16, 256, 0, 31250, "counting")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"autoTune": False, "blockSizeTokens": 0},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int >= 1 when autoTune is "
            r"false, got 0 \(int\)$",
            id="no-autotune-no-block-size",
        ),
        pytest.param(
            {"blockSize": 64, "blockSizeTokens": 0},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int >= 1 when the "
            r"deprecated blockSize/hashBlockSize \(characters\) is set",
            id="migration-guard",
        ),
        pytest.param(
            {"hashBlockSize": 64, "blockSizeTokens": -1},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int >= 1 when the deprecated",
            id="migration-guard-v1",
        ),
        pytest.param(
            {"maxPrefixTokensToMatch": -1},
            r"^plugins\[0\]\.parameters\.maxPrefixTokensToMatch: expected int >= 0, "
            r"got -1 \(int\)$",
            id="negative-max-tokens",
        ),
        pytest.param(
            {"lruCapacityPerServer": 0},
            r"^plugins\[0\]\.parameters\.lruCapacityPerServer: expected int >= 1, got 0",
            id="zero-capacity",
        ),
        pytest.param(
            {"matchMode": "prefx"},
            r"^plugins\[0\]\.parameters\.matchMode: expected one of 'counting', 'prefix' "
            r"\(did you mean 'prefix'\?\), got 'prefx' \(str\)$",
            id="match-mode-typo",
        ),
        pytest.param(
            {"autoTune": "yes"},
            r"^plugins\[0\]\.parameters\.autoTune: expected bool, got 'yes' \(str\)$",
            id="bad-bool",
        ),
        pytest.param(
            {"blockSizeTokens": -16},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int in \[0, 65536\], "
            r"got -16 \(int\)$",
            id="negative-block-size",
        ),
        pytest.param(
            {"blockSizeTokens": 10**22},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int in \[0, 65536\], "
            r"got 10000000000000000000000 \(int\)$",
            id="huge-block-size",
        ),
        pytest.param(
            {"blockSizeTokens": 16.5},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int, got 16\.5 \(float\)$",
            id="fractional-block-size",
        ),
        pytest.param(
            {"blockSizeTokens": True},
            r"^plugins\[0\]\.parameters\.blockSizeTokens: expected int, got True \(bool\)$",
            id="bool-as-int",
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(ApproxPrefixCacheProducer.Params, raw, PATH)


def test_autotune_with_zero_block_size_is_accepted_as_in_gie() -> None:
    params = parse_params(ApproxPrefixCacheProducer.Params, {"blockSizeTokens": 0}, PATH)
    assert params.block_size_tokens == 0


def test_deprecated_block_sizes_warn() -> None:
    warnings: list[str] = []
    raw = {"blockSize": 64, "hashBlockSize": 64}
    parse_params(ApproxPrefixCacheProducer.Params, raw, PATH, warn=warnings.append)
    message = (
        ": deprecated: characters per block, ignored; blockSizeTokens (tokens, 4 characters "
        "each) sets the block size"
    )
    assert warnings == [f"{PATH}.blockSize{message}", f"{PATH}.hashBlockSize{message}"]


def test_metadata() -> None:
    assert ApproxPrefixCacheProducer.type == "approx-prefix-cache-producer"
    assert ApproxPrefixCacheProducer.produces == frozenset({"PrefixCacheMatchInfo"})
    assert ApproxPrefixCacheProducer.consumes == frozenset()


# ====================================================================== block size
@pytest.mark.parametrize(
    ("raw", "scraped", "candidates", "expected"),
    [
        pytest.param({}, [32, 8, 0], [0, 1, 2], 32, id="autotune-first-candidate"),
        pytest.param({}, [32, 8, 0], [1, 0], 8, id="autotune-order-matters"),
        pytest.param({}, [32, 8, 0], [2, 0], 16, id="autotune-unknown-falls-back"),
        pytest.param({"blockSizeTokens": 4}, [0, 0, 0], [0], 4, id="autotune-unknown-param"),
        pytest.param({"autoTune": False}, [32, 8, 0], [0], 16, id="no-autotune"),
        pytest.param({}, [32, 8, 0], [], 16, id="no-candidates"),
    ],
)
def test_effective_block_size(
    raw: dict[str, Any], scraped: list[float], candidates: list[int], expected: int
) -> None:
    table = make_table(3, block_size_tokens=scraped)
    assert _producer(table, **raw).block_size_tokens(table, _rows(*candidates)) == expected


@pytest.mark.parametrize(
    ("raw", "block_tokens", "expected"),
    [
        pytest.param({}, 16, 256, id="default-blocks"),
        pytest.param({"maxPrefixBlocksToMatch": 3}, 16, 3, id="blocks"),
        pytest.param({"maxPrefixTokensToMatch": 100}, 16, 6, id="tokens-16"),
        pytest.param({"maxPrefixTokensToMatch": 100}, 32, 3, id="tokens-autotuned-32"),
        pytest.param(
            {"maxPrefixTokensToMatch": 10, "maxPrefixBlocksToMatch": 9},
            16,
            0,
            id="tokens-below-one-block",
        ),
        pytest.param({"maxPrefixTokensToMatch": 100}, 0, 0, id="no-block-size"),
    ],
)
def test_max_blocks(raw: dict[str, Any], block_tokens: int, expected: int) -> None:
    assert _producer(make_table(1), **raw).max_blocks(block_tokens) == expected


@pytest.mark.parametrize(
    ("raw", "scraped", "total"),
    [
        pytest.param({}, 0, 32, id="16-tokens-2048-bytes"),
        pytest.param({}, 32, 16, id="autotuned-32-tokens"),
        pytest.param({"maxPrefixTokensToMatch": 100}, 0, 6, id="max-tokens-16"),
        pytest.param({"maxPrefixTokensToMatch": 100}, 32, 3, id="max-tokens-autotuned"),
        pytest.param({"maxPrefixBlocksToMatch": 5}, 0, 5, id="max-blocks"),
        pytest.param({"blockSizeTokens": 0}, 0, 32, id="zero-block-size-hashes-with-16"),
        pytest.param({"blockSizeTokens": 0}, 1e22, 32, id="absurd-scraped-size-ignored"),
    ],
)
def test_total_blocks_follow_block_size_and_limits(
    raw: dict[str, Any], scraped: float, total: int
) -> None:
    table = make_table(2, block_size_tokens=[scraped, 0])
    producer = _producer(table, **raw)
    _, info = _prepare(producer, table, Request.create("m", prompt=PROMPT))
    assert info.total_blocks == total
    expected = scraped if 0 < scraped <= 65536 else (raw.get("blockSizeTokens", 16) or 16)
    assert info.block_size_tokens == expected


def test_auto_tune_with_nothing_to_tune_from_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    table = make_table(2)  # no endpoint reports a block size
    producer = _producer(table, blockSizeTokens=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            _, info = _prepare(producer, table, Request.create("m", prompt=PROMPT))
    assert info.block_size_tokens == 16
    assert info.total_blocks == 32
    assert [r.getMessage() for r in caplog.records] == [
        "approx: blockSizeTokens is 0 (auto-tune) but the candidates "
        "report no cache block size; hashing with 16 tokens per block until they do"
    ]


# ====================================================================== hashing inputs
def test_prompt_hashes_use_target_model_and_cache_salt() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create(
        "client-model",
        prompt=PROMPT,
        headers={"x-gateway-model-name-rewrite": "served"},
        body={"cache_salt": "tenant-a"},
    )
    expected = block_hashes(PROMPT, "served", "tenant-a", 16, 256)
    np.testing.assert_array_equal(producer.hashes(request, 16), expected)
    assert len(expected) == 32
    unsalted = block_hashes(PROMPT, "served", "", 16, 256)
    assert not np.array_equal(expected, unsalted)


@pytest.mark.parametrize(
    "body",
    [None, {}, {"cache_salt": 7}, {"cache_salt": None}, {"cache_salt": ""}],
    ids=["no-body", "no-key", "not-str", "null", "empty"],
)
def test_no_usable_salt_means_unsalted(body: dict[str, Any] | None) -> None:
    producer = _producer(make_table(1))
    request = Request.create("m", prompt=PROMPT, body=body)
    np.testing.assert_array_equal(
        producer.hashes(request, 16), block_hashes(PROMPT, "m", "", 16, 256)
    )


def test_token_ids_take_precedence_over_the_prompt() -> None:
    producer = _producer(make_table(1))
    tokens = np.arange(100, dtype=np.uint32)
    request = Request.create("m", prompt=PROMPT, token_ids=tokens)
    hashes = producer.hashes(request, 16)
    np.testing.assert_array_equal(hashes, token_block_hashes(tokens, "m", "", 16, 256))
    assert len(hashes) == 7  # 100 tokens: 6 full blocks of 16 and a partial one


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(Request.create("m"), id="no-prompt"),
        pytest.param(Request.create("m", prompt=b"x" * 63), id="shorter-than-a-block"),
        pytest.param(Request.create("m", token_ids=[]), id="empty-token-ids"),
    ],
)
def test_no_blocks_gives_total_zero(request_: Request) -> None:
    table = make_table(3)
    producer = _producer(table)
    _, info = _prepare(producer, table, request_)
    assert info.total_blocks == 0
    assert info.block_size_tokens == 16
    np.testing.assert_array_equal(info.match_blocks, np.zeros(table.capacity))


# ====================================================================== matching
def test_match_counts_are_indexed_by_row_and_cover_the_table() -> None:
    table = make_table(5)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT)
    hashes = producer.hashes(request, 16)
    producer.index.add(hashes[:10], 3, 1000)
    producer.index.add(hashes[:4], 1, 1000)
    _, info = _prepare(producer, table, request, candidates=[1, 3])
    assert info.total_blocks == 32
    assert len(info.match_blocks) == table.capacity
    assert info.match_blocks.dtype == np.float64
    np.testing.assert_array_equal(info.match_blocks[:5], [0, 4, 0, 10, 0])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # row 0 holds blocks 0 and 2, row 1 blocks 0 and 1: every block has a holder, so
        # GIE's counting mode counts 2 for each; the strict prefix gives row 0 only 1.
        pytest.param("counting", [2, 2, 0], id="counting"),
        pytest.param("prefix", [1, 2, 0], id="prefix"),
    ],
)
def test_counting_and_prefix_modes_differ(mode: str, expected: list[float]) -> None:
    table = make_table(3)
    producer = _producer(table, matchMode=mode)
    request = Request.create("m", prompt=PROMPT[:192])  # 3 blocks
    hashes = producer.hashes(request, 16)
    assert len(hashes) == 3
    producer.index.add(hashes[[0, 2]], 0, 100)
    producer.index.add(hashes[[0, 1]], 1, 100)
    _, info = _prepare(producer, table, request)
    np.testing.assert_array_equal(info.match_blocks[:3], expected)


def test_counting_stops_at_the_first_unheld_block() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:256])  # 4 blocks
    hashes = producer.hashes(request, 16)
    producer.index.add(hashes[[0, 1, 3]], 0, 100)
    _, info = _prepare(producer, table, request)
    np.testing.assert_array_equal(info.match_blocks[:2], [2, 0])


# ====================================================================== PreRequest
def test_pre_request_indexes_primary_and_prefill_picks() -> None:
    table = make_table(4, kv_blocks_total=[0, 500, 0, 0])
    producer = _producer(table, lruCapacityPerServer=40)
    request = Request.create("m", prompt=PROMPT[:320])  # 5 blocks
    cycle, _ = _prepare(producer, table, request)
    hashes = [int(h) for h in producer.hashes(request, 16)]
    producer.pre_request(cycle, request, _result(table, decode=2, prefill=1))
    assert producer.index.lru_order(2) == hashes
    assert producer.index.lru_order(1) == hashes
    assert producer.index.lru_order(0) == []
    assert producer.index_size() == 10
    # capacity: num_gpu_blocks when known (row 1), else lruCapacityPerServer (row 2)
    assert (producer.index.endpoint_capacity(1), producer.index.endpoint_capacity(2)) == (500, 40)
    assert PREFIX_CACHE_MATCH_INFO in cycle
    assert "approx-prefix-cache-producer/approx" not in cycle  # per-request state released


def test_non_prefill_secondary_profiles_are_not_indexed() -> None:
    table = make_table(3)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:128])
    cycle, _ = _prepare(producer, table, request)
    producer.pre_request(cycle, request, _result(table, default=0, other=2))
    assert (producer.index.endpoint_size(0), producer.index.endpoint_size(2)) == (2, 0)


@pytest.mark.parametrize(
    ("raw", "kv_blocks", "capacity"),
    [
        pytest.param({}, 700, 700, id="autotune-known"),
        pytest.param({}, 0, 31250, id="autotune-unknown"),
        pytest.param({"autoTune": False}, 700, 31250, id="no-autotune"),
        pytest.param({"lruCapacityPerServer": 3}, 0, 3, id="configured"),
    ],
)
def test_lru_capacity(raw: dict[str, Any], kv_blocks: float, capacity: int) -> None:
    table = make_table(1, kv_blocks_total=[kv_blocks])
    producer = _producer(table, **raw)
    request = Request.create("m", prompt=PROMPT[:320])
    cycle, _ = _prepare(producer, table, request)
    producer.pre_request(cycle, request, _result(table, default=0))
    assert producer.index.endpoint_capacity(0) == capacity
    assert producer.index.endpoint_size(0) == min(5, capacity)


def test_pre_request_without_prepare_is_a_no_op() -> None:
    table = make_table(2)
    producer = _producer(table)
    producer.pre_request(
        CycleState(np.random.default_rng(0)), Request.create("m"), _result(table, default=0)
    )
    assert producer.index_size() == 0
    assert producer.total_bytes == 0


def test_removed_pick_is_not_indexed() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:128])
    cycle, _ = _prepare(producer, table, request)
    result = _result(table, default=1)
    table.remove("e1")
    producer.pre_request(cycle, request, result)
    assert producer.index_size() == 0


def test_endpoint_removal_releases_its_entries() -> None:
    table = make_table(3)
    producer = _producer(table)
    for row, prompt in ((0, PROMPT[:320]), (1, PROMPT[:192]), (2, PROMPT[64:192])):
        request = Request.create("m", prompt=prompt)
        cycle, _ = _prepare(producer, table, request)
        producer.pre_request(cycle, request, _result(table, default=row))
    assert producer.index_size() == 5 + 3 + 2
    table.remove("e1")
    assert producer.index_size() == 7
    assert producer.index.endpoint_size(1) == 0
    # a new endpoint reusing row 1 starts empty
    request = Request.create("m", prompt=PROMPT[:192])
    _, info = _prepare(producer, table, request, candidates=[0, 2])
    np.testing.assert_array_equal(info.match_blocks[:3], [3, 0, 0])


# ====================================================================== deferred updates
def test_pre_request_queues_the_update_and_run_deferred_applies_it() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:192])  # 3 blocks
    cycle, _ = _prepare(producer, table, request)
    producer.pre_request(cycle, request, _result(table, default=1))
    assert producer._index.size() == 0  # off the decision path: nothing applied yet
    assert producer.last_match_blocks == 0  # the metrics are not deferred
    producer.run_deferred()
    assert producer._index.size() == 3
    assert producer._index.lru_order(1) == [int(h) for h in producer.hashes(request, 16)]
    producer.run_deferred()  # nothing left: a no-op
    assert producer._index.size() == 3


def test_the_next_match_sees_a_queued_update_without_run_deferred() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:192])
    cycle, _ = _prepare(producer, table, request)
    producer.pre_request(cycle, request, _result(table, default=1))
    _, info = _prepare(producer, table, request)
    np.testing.assert_array_equal(info.match_blocks[:2], [0, 3])


def test_a_removed_endpoint_does_not_get_its_queued_update_back() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:192])
    cycle, _ = _prepare(producer, table, request)
    producer.pre_request(cycle, request, _result(table, default=1))
    table.remove("e1")
    producer.run_deferred()
    assert producer.index_size() == 0
    assert producer._index.endpoint_capacity(1) == 0


def test_the_queue_is_bounded_when_nothing_reads_the_index() -> None:
    table = make_table(1)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT[:64])
    cycle, _ = _prepare(producer, table, request)
    state = cycle.read("approx-prefix-cache-producer/approx")
    for _ in range(70):  # PreRequests with no match (nor run_deferred) in between
        cycle.write("approx-prefix-cache-producer/approx", state)
        producer.pre_request(cycle, request, _result(table, default=0))
    assert len(producer._pending) == 70 - 64
    assert producer._index.size() == 1


def test_scheduler_run_deferred_applies_the_updates_and_counts_the_calls() -> None:
    table = make_table(2, waiting=[0, 5])
    scheduler = Scheduler.from_config(None, table, seed=1)
    producer = scheduler.plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    scheduler.schedule(Request.create("m", prompt=PROMPT[:192]))
    assert producer._index.size() == 0
    scheduler.run_deferred()
    assert producer._index.size() == 3
    (stats,) = [s for s in scheduler.stats() if s.extension_point == "Deferred"]
    assert (stats.plugin_name, stats.calls, stats.errors) == ("approx-prefix-cache-producer", 1, 0)


# ====================================================================== metrics
def test_metrics_hit_bytes_ratio_and_match_lengths() -> None:
    table = make_table(2)
    producer = _producer(table)
    assert (producer.hit_ratio(), producer.index_size(), producer.last_match_blocks) == (0.0, 0, 0)
    steps = [
        (PROMPT[:320], 0, 0),  # 5 blocks, cold
        (PROMPT[:640], 0, 5),  # 10 blocks, 5 cached on e0
        (PROMPT[:640], 1, 0),  # 10 blocks, e1 holds nothing
        (b"", 0, 0),  # no blocks: not counted
    ]
    for prompt, row, matched in steps:
        request = Request.create("m", prompt=prompt)
        cycle, _ = _prepare(producer, table, request)
        producer.pre_request(cycle, request, _result(table, default=row))
        if prompt:
            assert producer.last_match_blocks == matched
    assert producer.hit_bytes == 5 * 64
    assert producer.total_bytes == (5 + 10 + 10) * 64
    assert producer.hit_ratio() == pytest.approx(5 / 25)
    assert producer.index_size() == 10 + 10
    histogram = producer.match_length_histogram()
    assert (histogram[0], histogram[4], histogram[8], histogram[float("inf")]) == (2, 2, 3, 3)


# ====================================================================== end to end
def test_default_config_routes_shared_prefixes_to_the_first_server() -> None:
    table = make_table(4, waiting=[1, 1, 1, 1], kv_usage_frac=[0.5] * 4)
    scheduler = Scheduler.from_config(None, table, seed=7)
    producer = scheduler.plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    system = b"You are a helpful assistant. " * 40  # 1160 bytes: 18 full blocks of 64
    first = scheduler.schedule(Request.create("m", prompt=system + b"question 0"))
    assert first.primary.scores[0] == pytest.approx(2 * 1.0 + 2 * 0.5)  # cold: a tie
    for i in range(1, 6):
        result = scheduler.schedule(Request.create("m", prompt=system + f"question {i}".encode()))
        assert result.endpoint == first.endpoint
        # 1170 bytes = 19 blocks; the 18 full system-prompt blocks are cached
        assert result.primary.scores[0] == pytest.approx(3.0 + 3 * 18 / 19)
    other = scheduler.schedule(Request.create("other-model", prompt=system + b"question 0"))
    assert other.primary.scores[0] == pytest.approx(3.0)  # caches are model scoped
    assert (producer.hit_bytes, producer.total_bytes) == (5 * 18 * 64, 7 * 19 * 64)


def test_default_config_no_longer_warns_that_prefix_scores_zero() -> None:
    from inference_sched.framework.config import default_config

    cfg = default_config()
    assert not any("PrefixCacheMatchInfo" in w for w in cfg.warnings)
    auto = cfg.plugin("approx-prefix-cache-producer")
    assert auto.is_auto
    assert auto.parameters is None
