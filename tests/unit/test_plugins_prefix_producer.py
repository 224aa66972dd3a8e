"""approx-prefix-cache-producer (llm-d-router ``dataproducer/approximateprefix/plugin.go``):
params, block size, caps, hashing inputs, multi-prompt match, PreRequest, LRU capacity.

Most tests lower the request-time 64-token floor to 1 (``small_blocks``), as llm-d-router's
own tests lower ``minBlockSizeTokens``, to keep block arithmetic small; the floor has its
own tests.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    PrefixCacheMatchInfo,
    TokenizedRequest,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import parse_params
from inference_sched.plugins.prefix import (
    UNLIMITED_BLOCKS,
    ApproxPrefixCacheProducer,
    MulticlusterApproxPrefixCacheProducer,
)
from inference_sched.prefix.hashing import pack_prompt_bytes, request_seed, token_block_hashes
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

PATH = "plugins[0].parameters"
PROMPT = bytes(range(256)) * 8  # 2048 bytes = 512 packed tokens: 32 blocks of 16 tokens


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApproxPrefixCacheProducer, "min_block_size_tokens", 1)


def _producer(table: EndpointTable, **raw: Any) -> ApproxPrefixCacheProducer:
    params = parse_params(ApproxPrefixCacheProducer.Params, raw, PATH)
    return ApproxPrefixCacheProducer("approx", params, PluginHandle(table))


def _rows(*rows: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int32)


def _tokenized(*prompts: list[int]) -> TokenizedRequest:
    return TokenizedRequest(tuple(np.asarray(p, dtype=np.uint32) for p in prompts))


def _prepare(
    producer: ApproxPrefixCacheProducer,
    table: EndpointTable,
    request: Request,
    candidates: list[int] | None = None,
    tokenized: TokenizedRequest | None = None,
) -> tuple[CycleState, PrefixCacheMatchInfo]:
    cycle = CycleState(np.random.default_rng(0))
    if tokenized is not None:
        cycle.write(TOKENIZED_PROMPT, tokenized)
    rows = _rows(*(range(len(table)) if candidates is None else candidates))
    producer.prepare_request_data(cycle, request, table, rows)
    info = cycle.read(PREFIX_CACHE_MATCH_INFO)
    assert isinstance(info, PrefixCacheMatchInfo)
    assert cycle.read(f"{PREFIX_CACHE_MATCH_INFO}/approx") is info
    return cycle, info


def _result(table: EndpointTable, **picks: int) -> SchedulingResult:
    runs = {
        profile: ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))
        for profile, row in picks.items()
    }
    return SchedulingResult(runs, next(iter(picks)))


def _chain(ids: list[int] | np.ndarray, block: int, model: str = "m", salt: str = "") -> list[int]:
    chain: list[int] = token_block_hashes(ids, block, request_seed(model, salt), 1 << 40).tolist()
    return chain


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
        params.block_size,
    ) == (True, 16, 2048, 131072, 31250, "counting", 0)


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
            {"maxPrefixTokensToMatch": -1},
            r"^plugins\[0\]\.parameters\.maxPrefixTokensToMatch: expected int >= 0, "
            r"got -1 \(int\)$",
            id="negative-max-tokens",
        ),
        pytest.param(
            {"maxPrefixBlocksToMatch": -1},
            r"^plugins\[0\]\.parameters\.maxPrefixBlocksToMatch: expected int >= 0",
            id="negative-max-blocks",
        ),
        pytest.param(
            {"lruCapacityPerServer": -1},
            r"^plugins\[0\]\.parameters\.lruCapacityPerServer: expected int >= 0, got -1",
            id="negative-capacity",
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
            {"blockSize": 1 << 20},
            r"^plugins\[0\]\.parameters\.blockSize: expected int <= 65536",
            id="huge-legacy-block-size",
        ),
        pytest.param(
            {"hashBlockSize": 64},
            r"^plugins\[0\]\.parameters: unknown key 'hashBlockSize'",
            id="v1-key-removed",
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(ApproxPrefixCacheProducer.Params, raw, PATH)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"blockSize": 256}, 256, id="mapped-at-default"),
        pytest.param({"blockSize": 256, "blockSizeTokens": 16}, 256, id="explicit-16-too"),
        pytest.param({"blockSize": 256, "blockSizeTokens": 32}, 32, id="tokens-win"),
        pytest.param({"blockSize": 0}, 16, id="zero-ignored"),
        pytest.param({"blockSize": 64, "blockSizeTokens": 0}, 0, id="no-migration-error"),
        pytest.param({"blockSize": 64, "autoTune": False, "blockSizeTokens": 16}, 64, id="no-tune"),
    ],
)
def test_deprecated_block_size_is_mapped(raw: dict[str, Any], expected: int) -> None:
    """Row 6: accepted with a warning; copied (as tokens) while blockSizeTokens is 16."""
    warnings: list[str] = []
    params = parse_params(ApproxPrefixCacheProducer.Params, raw, PATH, warn=warnings.append)
    assert params.configured_block_size_tokens == expected
    if raw.get("blockSize"):
        assert any("blockSize" in w and "deprecated" in w for w in warnings)


def test_small_configured_block_size_warns_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.prefix"):
        _producer(make_table(1), blockSizeTokens=32)
        _producer(make_table(1), blockSizeTokens=64)
        _producer(make_table(1))  # the default 16 (GIE's) is raised without a warning
    assert [r.getMessage() for r in caplog.records] == [
        "approx: blockSizeTokens 32 is below the minimum; hashing with 64 tokens per block"
    ]


def test_metadata() -> None:
    assert ApproxPrefixCacheProducer.type == "approx-prefix-cache-producer"
    assert ApproxPrefixCacheProducer.stability == "beta"
    assert ApproxPrefixCacheProducer.produces == frozenset({PREFIX_CACHE_MATCH_INFO})
    assert ApproxPrefixCacheProducer.consumes == frozenset({TOKENIZED_PROMPT})
    assert MulticlusterApproxPrefixCacheProducer.type == "multicluster-approx-prefix-cache-producer"
    assert MulticlusterApproxPrefixCacheProducer.stability == "alpha"
    assert ApproxPrefixCacheProducer.min_block_size_tokens == 64


# ====================================================================== block size and caps
@pytest.mark.parametrize(
    ("raw", "scraped", "candidates", "expected"),
    [
        pytest.param({}, [0, 0, 0], [0], 64, id="default-16-floored"),
        pytest.param({}, [128, 256, 0], [0, 1], 128, id="autotune-first-candidate"),
        pytest.param({}, [128, 256, 0], [1, 0], 256, id="autotune-order-matters"),
        pytest.param({}, [16, 0, 0], [0], 64, id="autotuned-16-floored"),
        pytest.param({"blockSizeTokens": 96}, [0, 0, 0], [2], 96, id="unknown-falls-back"),
        pytest.param({"blockSizeTokens": 0}, [0, 0, 0], [2], 64, id="zero-floored"),
        pytest.param(
            {"autoTune": False, "blockSizeTokens": 80}, [256, 0, 0], [0], 80, id="no-tune"
        ),
        pytest.param({"blockSizeTokens": 100}, [0, 0, 0], [], 100, id="no-candidates"),
        pytest.param({}, [1e9, 0, 0], [0], 64, id="absurd-scraped-ignored"),
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
        pytest.param({}, 64, 2048, id="default-tokens-at-64"),
        pytest.param({}, 128, 1024, id="default-tokens-at-128"),
        pytest.param({"maxPrefixTokensToMatch": 0}, 64, 2048, id="blocks-default"),
        pytest.param(
            {"maxPrefixTokensToMatch": 0, "maxPrefixBlocksToMatch": 7}, 64, 7, id="blocks"
        ),
        pytest.param({"maxPrefixBlocksToMatch": 7}, 64, 2048, id="tokens-win"),
        pytest.param(
            {"maxPrefixTokensToMatch": 0, "maxPrefixBlocksToMatch": 0},
            64,
            UNLIMITED_BLOCKS,
            id="both-zero-unlimited",
        ),
        pytest.param({"maxPrefixTokensToMatch": 63}, 64, 0, id="tokens-below-a-block"),
    ],
)
def test_max_blocks(raw: dict[str, Any], block_tokens: int, expected: int) -> None:
    assert _producer(make_table(1), **raw).max_blocks(block_tokens) == expected


# ====================================================================== hashing inputs
def test_tokenized_request_is_hashed_per_prompt() -> None:
    """Row 2/8: the llm-d-router chain over each prompt, floor 64, partial tail included."""
    table = make_table(2)
    producer = _producer(table)
    first, second = list(range(150)), list(range(1000, 1010))
    request = Request.create("llama", prompt=b"ignored when tokenized", body={"cache_salt": "s"})
    _, info = _prepare(producer, table, request, tokenized=_tokenized(first, [], second))
    expected = _chain(first, 64, "llama", "s") + _chain(second, 64, "llama", "s")
    assert (info.total_blocks, info.block_size_tokens) == (3 + 1, 64)
    assert info.block_hashes().tolist() == expected


def test_fallback_token_ids_without_tokenized_request(small_blocks: None) -> None:
    producer = _producer(make_table(1), blockSizeTokens=4)
    cycle = CycleState(np.random.default_rng(0))
    request = Request.create("m", token_ids=[1, 2, 3, 4, 5], prompt=b"x" * 64)
    assert [h.tolist() for h in producer.hashes(cycle, request, 4)] == [_chain([1, 2, 3, 4, 5], 4)]


def test_fallback_prompt_bytes_packed_as_the_estimate_backend(small_blocks: None) -> None:
    """No TokenizedRequest, no ids: the prompt bytes packed 4 per uint32 LE, zero-padded."""
    producer = _producer(make_table(1))
    cycle = CycleState(np.random.default_rng(0))
    request = Request.create("m", prompt=b"abcdefghi")
    packed = [0x64636261, 0x68676665, 0x69]
    assert pack_prompt_bytes(b"abcdefghi").tolist() == packed
    assert [h.tolist() for h in producer.hashes(cycle, request, 2)] == [_chain(packed, 2)]


@pytest.mark.parametrize(
    ("model", "body", "salt"),
    [
        pytest.param("m", None, "", id="no-body"),
        pytest.param("m", {"x": 1}, "", id="no-key"),
        pytest.param("m", {"cache_salt": 5}, "", id="not-str"),
        pytest.param("m", {"cache_salt": ""}, "", id="empty"),
        pytest.param("m", {"cache_salt": "abc"}, "abc", id="salted"),
        pytest.param("other", None, "", id="model-scoped"),
    ],
)
def test_seed_is_target_model_and_cache_salt(
    model: str, body: dict[str, Any] | None, salt: str
) -> None:
    producer = _producer(make_table(1))
    request = Request.create(model, token_ids=list(range(100)), body=body)
    (got,) = producer.hashes(CycleState(np.random.default_rng(0)), request, 64)
    assert got.tolist() == _chain(list(range(100)), 64, model, salt)


@pytest.mark.parametrize(
    ("request_", "tokenized"),
    [
        pytest.param(Request.create("m"), None, id="no-prompt"),
        pytest.param(Request.create("m", token_ids=[]), None, id="empty-token-ids"),
        pytest.param(Request.create("m", prompt=b"x" * 99), _tokenized([]), id="empty-tokenized"),
    ],
)
def test_no_blocks_gives_total_zero(request_: Request, tokenized: TokenizedRequest | None) -> None:
    table = make_table(3)
    _, info = _prepare(_producer(table), table, request_, tokenized=tokenized)
    assert (info.total_blocks, len(info.block_hashes())) == (0, 0)
    assert not info.match_blocks.any()


def test_short_prompt_still_gets_one_block() -> None:
    """Unlike GIE, a prompt shorter than a block hashes its partial block."""
    table = make_table(1)
    _, info = _prepare(_producer(table), table, Request.create("m", prompt=b"hi"))
    assert info.total_blocks == 1


# ====================================================================== match
def _route(
    producer: ApproxPrefixCacheProducer,
    table: EndpointTable,
    row: int,
    tokenized: TokenizedRequest,
) -> None:
    request = Request.create("m")
    cycle, _ = _prepare(producer, table, request, tokenized=tokenized)
    producer.pre_request(cycle, request, _result(table, default=row))


def test_multi_prompt_match_sums_blocks_over_prompts(small_blocks: None) -> None:
    table = make_table(3)
    producer = _producer(table, blockSizeTokens=2)
    _route(producer, table, 0, _tokenized([1, 2, 3, 4], [9, 9]))  # 2 + 1 blocks on e0
    _route(producer, table, 1, _tokenized([9, 9, 5]))  # 2 blocks on e1
    _, info = _prepare(
        producer, table, Request.create("m"), tokenized=_tokenized([1, 2, 3, 4, 5], [9, 9, 7])
    )
    # prompt 1: e0 holds its first 2 blocks; prompt 2 ([9, 9] then [7]): e0 and e1 hold [9, 9]
    assert info.total_blocks == 3 + 2
    np.testing.assert_array_equal(info.match_blocks[:3], [3, 1, 0])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param("counting", [2, 1, 0], id="counting"),
        pytest.param("prefix", [2, 0, 0], id="prefix"),
    ],
)
def test_counting_and_prefix_modes_differ(
    small_blocks: None, mode: str, expected: list[float]
) -> None:
    table = make_table(3, kv_blocks_total=[100, 1, 0])
    producer = _producer(table, blockSizeTokens=2, matchMode=mode)
    _route(producer, table, 0, _tokenized([1, 2, 3, 4]))
    _route(producer, table, 1, _tokenized([1, 2, 3, 4]))  # capacity 1: keeps block 2 only
    _, info = _prepare(producer, table, Request.create("m"), tokenized=_tokenized([1, 2, 3, 4]))
    np.testing.assert_array_equal(info.match_blocks[:3], expected)
    assert info.total_blocks == 2


def test_pre_request_indexes_every_prompt_on_primary_and_prefill(small_blocks: None) -> None:
    table = make_table(4, kv_blocks_total=[0, 500, 0, 0])
    producer = _producer(table, blockSizeTokens=2)
    request = Request.create("m")
    tokenized = _tokenized([1, 2, 3], [4, 5])
    cycle, _ = _prepare(producer, table, request, tokenized=tokenized)
    producer.pre_request(cycle, request, _result(table, default=2, prefill=1))
    index = producer.index
    expected = _chain([1, 2, 3], 2) + _chain([4, 5], 2)
    assert index.lru_order(2) == expected
    assert index.lru_order(1) == expected
    assert (index.endpoint_capacity(2), index.endpoint_capacity(1)) == (31250, 500)
    assert index.endpoint_size(0) == 0


@pytest.mark.parametrize(
    ("raw", "kv_blocks", "capacity"),
    [
        pytest.param({}, 700, 700, id="autotune-known"),
        pytest.param({}, 0, 31250, id="autotune-unknown"),
        pytest.param({"autoTune": False}, 700, 31250, id="no-autotune"),
        pytest.param({"lruCapacityPerServer": 3}, 0, 3, id="configured"),
        pytest.param({"lruCapacityPerServer": 0}, 0, 31250, id="zero-means-default"),
        pytest.param({"lruCapacityPerServer": 3}, 700, 700, id="autotune-wins"),
    ],
)
def test_lru_capacity(
    small_blocks: None, raw: dict[str, Any], kv_blocks: float, capacity: int
) -> None:
    """Row 7: CacheNumBlocks (autoTune) > lruCapacityPerServer (> 0) > 31250."""
    table = make_table(1, kv_blocks_total=[kv_blocks])
    producer = _producer(table, blockSizeTokens=1, **raw)
    _route(producer, table, 0, _tokenized([1, 2, 3, 4, 5]))
    assert producer.index.endpoint_capacity(0) == capacity
    assert producer.index.endpoint_size(0) == min(5, capacity)


def test_pre_request_without_prepare_is_a_no_op() -> None:
    table = make_table(2)
    producer = _producer(table)
    producer.pre_request(
        CycleState(np.random.default_rng(0)), Request.create("m"), _result(table, default=0)
    )
    assert (producer.index_size(), producer.total_bytes) == (0, 0)


def test_removed_pick_is_not_indexed() -> None:
    table = make_table(2)
    producer = _producer(table)
    request = Request.create("m", prompt=PROMPT)
    cycle, _ = _prepare(producer, table, request)
    result = _result(table, default=1)
    table.remove("e1")
    producer.pre_request(cycle, request, result)
    assert producer.index_size() == 0


def test_deferred_update_and_next_match(small_blocks: None) -> None:
    table = make_table(2)
    producer = _producer(table, blockSizeTokens=16)
    request = Request.create("m", prompt=PROMPT[:192])  # 48 packed tokens: 3 blocks
    cycle, _ = _prepare(producer, table, request)
    producer.pre_request(cycle, request, _result(table, default=1))
    assert producer._index.size() == 0  # queued, off the decision path
    _, info = _prepare(producer, table, request)  # the next match applies it first
    np.testing.assert_array_equal(info.match_blocks[:2], [0, 3])
    assert producer._index.lru_order(1) == _chain(pack_prompt_bytes(PROMPT[:192]), 16)


def test_endpoint_removal_releases_its_entries(small_blocks: None) -> None:
    table = make_table(3)
    producer = _producer(table, blockSizeTokens=16)
    for row, prompt in ((0, PROMPT[:320]), (1, PROMPT[:192]), (2, PROMPT[64:192])):
        request = Request.create("m", prompt=prompt)
        cycle, _ = _prepare(producer, table, request)
        producer.pre_request(cycle, request, _result(table, default=row))
    assert producer.index_size() == 5 + 3 + 2
    table.remove("e1")
    assert (producer.index_size(), producer.index.endpoint_size(1)) == (7, 0)


def test_scheduler_run_deferred_applies_the_updates() -> None:
    table = make_table(2, waiting=[0, 5])
    scheduler = Scheduler.from_config(None, table, seed=1)
    producer = scheduler.plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    scheduler.schedule(Request.create("m", prompt=PROMPT[:1000]))  # 250 tokens: 4 blocks
    scheduler.run_deferred()
    assert producer._index.size() == 4


# ====================================================================== metrics
def test_metrics_hit_bytes_ratio_and_match_lengths(small_blocks: None) -> None:
    table = make_table(2)
    producer = _producer(table, blockSizeTokens=16)
    steps = [(PROMPT[:320], 0, 0), (PROMPT[:640], 0, 5), (PROMPT[:640], 1, 0), (b"", 0, 0)]
    for prompt, row, matched in steps:
        request = Request.create("m", prompt=prompt)
        cycle, _ = _prepare(producer, table, request)
        producer.pre_request(cycle, request, _result(table, default=row))
        if prompt:
            assert producer.last_match_blocks == matched
    assert (producer.hit_bytes, producer.total_bytes) == (5 * 64, 25 * 64)
    assert producer.hit_ratio() == pytest.approx(5 / 25)
    histogram = producer.match_length_histogram()
    assert (histogram[0], histogram[4], histogram[8], histogram[float("inf")]) == (2, 2, 3, 3)


# ====================================================================== end to end
def test_default_config_routes_shared_prefixes_to_the_first_server() -> None:
    table = make_table(4, waiting=[1, 1, 1, 1], kv_usage_frac=[0.5] * 4)
    scheduler = Scheduler.from_config(None, table, seed=7)
    system = b"You are a helpful assistant. " * 40  # 1160 bytes = 290 tokens: 4 full blocks
    first = scheduler.schedule(Request.create("m", prompt=system + b"question 0"))
    for i in range(1, 4):
        result = scheduler.schedule(Request.create("m", prompt=system + f"question {i}".encode()))
        assert result.endpoint == first.endpoint
        # 1170 bytes = 293 tokens = 5 blocks of 64; the 4 full system blocks are cached
        assert result.primary.scores[0] == pytest.approx(3.0 + 3 * 4 / 5)
    other = scheduler.schedule(Request.create("other-model", prompt=system + b"question 0"))
    assert other.primary.scores[0] == pytest.approx(3.0)  # caches are model scoped
