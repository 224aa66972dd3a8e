"""Cost-model routing after Dynamo's KV router (docs/plugins/kv-cost-scorer.md): ``kv-cost-scorer``
and ``softmax-picker``, and the burst they are for (llm-d-router #298)."""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
import pytest

import inference_sched.plugins.cost_model  # noqa: F401  (registers the types; see the report)
from inference_sched.errors import ConfigError, ParameterError
from inference_sched.framework import registry
from inference_sched.framework.config import load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.cost_model import KvCostScorer, SoftmaxPicker
from inference_sched.plugins.load import InflightLoadProducer
from inference_sched.plugins.prefix import PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

PATH = "plugins[0].parameters"
BLOCK = 16

# Dynamo's documented example (router docs, credit 1): W1 8 + 10 = 18, W2 5 + 5 = 10,
# W3 2 + 9 = 11; plus W4, a cold idle endpoint: 10 + 0 = 10. The request has 10 blocks.
TOTAL_BLOCKS = 10
MATCH_BLOCKS = [2.0, 5.0, 8.0, 0.0]
INFLIGHT_TOKENS = [10.0 * BLOCK, 5.0 * BLOCK, 9.0 * BLOCK, 0.0]


def _make(cls: Any, table: EndpointTable, raw: dict[str, Any] | None = None) -> Any:
    return cls("p", parse_params(cls.Params, raw, PATH), PluginHandle(table))


def _table() -> EndpointTable:
    table = make_table(4)
    table.inflight_tokens[:4] = INFLIGHT_TOKENS
    return table


def _cycle(table: EndpointTable, seed: int = 0, *, with_info: bool = True) -> CycleState:
    cycle = CycleState(np.random.default_rng(seed))
    if with_info:
        match = np.zeros(table.capacity)
        match[:4] = MATCH_BLOCKS
        cycle.write(PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo(match, TOTAL_BLOCKS, BLOCK))
    return cycle


def _score(
    scorer: KvCostScorer, table: EndpointTable, rows: list[int], cycle: CycleState | None = None
) -> np.ndarray:
    candidates = np.asarray(rows, dtype=np.int32)
    out = np.zeros(len(rows), dtype=np.float32)
    scorer.score(cycle or _cycle(table), Request("r", "m"), table, candidates, out)
    return out


# ------------------------------------------------------------------------ the scorer
@pytest.mark.parametrize(
    ("raw", "rows", "logits", "scores"),
    [
        pytest.param(
            None, [0, 1, 2, 3], [18, 10, 11, 10], [0.0, 1.0, 0.875, 1.0], id="dynamo-example"
        ),
        pytest.param(
            {"overlapScoreWeight": 2.0},
            [0, 1, 2, 3],
            [26, 15, 13, 20],
            [0.0, 11 / 13, 1.0, 6 / 13],
            id="credit-2",
        ),
        pytest.param(
            {"overlapScoreWeight": 0.0},
            [0, 1, 2, 3],
            [10, 5, 9, 0],
            [0.0, 0.5, 0.1, 1.0],
            id="credit-0-load-only",
        ),
        pytest.param(
            {"overlapScoreWeight": 0.5}, [2, 0], [10, 14], [1.0, 0.0], id="credit-half-subset"
        ),
        pytest.param(None, [1], [10], [1.0], id="single"),
        pytest.param(None, [1, 3], [10, 10], [1.0, 1.0], id="all-equal"),
    ],
)
def test_kv_cost_scorer_values(
    raw: dict[str, Any] | None, rows: list[int], logits: list[float], scores: list[float]
) -> None:
    table = _table()
    scorer = _make(KvCostScorer, table, raw)
    out = _score(scorer, table, rows)
    np.testing.assert_array_equal(scorer.last_logits, np.asarray(logits, dtype=np.float64))
    np.testing.assert_allclose(out, np.asarray(scores, dtype=np.float32), rtol=1e-7)


def test_kv_cost_scorer_counts_in_flight_work_between_scrapes() -> None:
    table = make_table(3)
    scorer = _make(KvCostScorer, table)
    cycle = CycleState(np.random.default_rng(0))
    match = np.zeros(table.capacity)
    match[0] = 4.0  # e0 holds the whole 4-block prefix
    cycle.write(PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo(match, 4, BLOCK))
    _score(scorer, table, [0, 1, 2], cycle)
    np.testing.assert_array_equal(scorer.last_logits, [0.0, 4.0, 4.0])
    table.inflight_tokens[0] = 5 * BLOCK  # five blocks routed to e0 since: now dearer
    out = _score(scorer, table, [0, 1, 2], cycle)
    np.testing.assert_array_equal(scorer.last_logits, [5.0, 4.0, 4.0])
    np.testing.assert_array_equal(out, np.asarray([0.0, 1.0, 1.0], dtype=np.float32))


def test_kv_cost_scorer_without_match_info_costs_load_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = _table()
    scorer = _make(KvCostScorer, table)
    out = _score(scorer, table, [0, 1, 2, 3], _cycle(table, with_info=False))
    np.testing.assert_array_equal(scorer.last_logits, [10.0, 5.0, 9.0, 0.0])  # B = 16
    np.testing.assert_allclose(out, np.asarray([0.0, 0.5, 0.1, 1.0], dtype=np.float32))
    assert "no PrefixCacheMatchInfo" in caplog.text


def test_kv_cost_scorer_nan_load_scores_nan() -> None:
    table = _table()
    table.inflight_tokens[1] = math.nan
    out = _score(_make(KvCostScorer, table), table, [0, 1, 2, 3])
    np.testing.assert_array_equal(np.isnan(out), [False, True, False, False])
    np.testing.assert_allclose(out[[0, 2, 3]], [0.0, 0.875, 1.0])


# ------------------------------------------------------------------------ the picker
def _pick(raw: dict[str, Any] | None, scores: list[float], seed: int = 0) -> list[int]:
    picker = _make(SoftmaxPicker, make_table(1), raw)
    totals = np.asarray(scores, dtype=np.float32)
    candidates = np.arange(len(scores), dtype=np.int32)
    ranked = picker.pick(
        CycleState(np.random.default_rng(seed)), Request("r", "m"), candidates, totals
    )
    assert ranked.dtype == np.int32
    return [int(p) for p in ranked]


@pytest.mark.parametrize(
    ("raw", "scores", "expected"),
    [
        pytest.param(None, [0.0, 1.0, 0.875, 1.0], [1], id="argmax-first-tie"),
        pytest.param({"maxNumOfEndpoints": 4}, [0.0, 1.0, 0.875, 1.0], [1, 3, 2, 0], id="ranked"),
        pytest.param({"maxNumOfEndpoints": 9}, [0.5, 0.5, 0.5], [0, 1, 2], id="all-tied"),
        pytest.param({"maxNumOfEndpoints": 2}, [0.2, math.nan, 0.9], [2, 0], id="nan-last"),
    ],
)
def test_temperature_zero_is_deterministic_argmax(
    raw: dict[str, Any] | None, scores: list[float], expected: list[int]
) -> None:
    for seed in range(5):  # no randomness at temperature 0
        assert _pick(raw, scores, seed) == expected


def test_temperature_sampling_counts_for_a_seed() -> None:
    # Totals of the Dynamo example: z = total - 1, p ~ exp(z / T).
    scores = np.asarray([0.0, 1.0, 0.875, 1.0], dtype=np.float32)
    picker = _make(SoftmaxPicker, make_table(1), {"temperature": 1.0})
    cycle = CycleState(np.random.default_rng(7))
    candidates = np.arange(4, dtype=np.int32)
    draws = 20_000
    counts = collections.Counter(
        int(picker.pick(cycle, Request("r", "m"), candidates, scores)[0]) for _ in range(draws)
    )
    assert [counts[i] for i in range(4)] == [2300, 6232, 5412, 6056]
    weights = np.exp(scores.astype(np.float64) - 1.0)
    expected = weights / weights.sum() * draws  # [2264.0, 6153.9, 5430.6, 6153.9]
    # Each count within 4 standard deviations of its binomial expectation.
    sd = np.sqrt(expected * (1 - expected / draws))
    assert (np.abs(np.array([counts[i] for i in range(4)]) - expected) < 4 * sd).all()


def test_temperature_sampling_all_equal_is_uniform() -> None:
    picker = _make(SoftmaxPicker, make_table(1), {"temperature": 0.1})
    cycle = CycleState(np.random.default_rng(3))
    scores = np.full(4, 0.7, dtype=np.float32)
    candidates = np.arange(4, dtype=np.int32)
    counts = collections.Counter(
        int(picker.pick(cycle, Request("r", "m"), candidates, scores)[0]) for _ in range(8000)
    )
    assert [counts[i] for i in range(4)] == [2014, 1996, 2001, 1989]


def test_temperature_sampling_fallbacks_are_distinct() -> None:
    ranked = _pick({"temperature": 0.5, "maxNumOfEndpoints": 4}, [0.1, 0.9, 0.4, math.nan], 11)
    assert sorted(ranked) == [0, 1, 2, 3]
    assert ranked[-1] == 3  # a NaN total is never preferred


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("cls", "raw", "match"),
    [
        pytest.param(
            KvCostScorer,
            {"overlapScoreWeight": -1.0},
            r"plugins\[0\]\.parameters\.overlapScoreWeight: expected number >= 0, got -1\.0",
            id="negative-credit",
        ),
        pytest.param(
            KvCostScorer,
            {"overlapScoreWeight": True},
            r"overlapScoreWeight: expected a finite number, got True \(bool\)",
            id="bool-credit",
        ),
        pytest.param(
            KvCostScorer,
            {"overlap_score_weight": 2.0},
            r"unknown key 'overlap_score_weight' \(did you mean 'overlapScoreWeight'\?\)",
            id="snake-case-key",
        ),
        pytest.param(
            SoftmaxPicker,
            {"temperature": -0.5},
            r"plugins\[0\]\.parameters\.temperature: expected number >= 0, got -0\.5",
            id="negative-temperature",
        ),
        pytest.param(
            SoftmaxPicker,
            {"temperature": "hot"},
            r"temperature: expected a finite number, got 'hot' \(str\)",
            id="string-temperature",
        ),
        pytest.param(
            SoftmaxPicker,
            {"temperature": math.inf},
            r"temperature: expected a finite number, got inf",
            id="infinite-temperature",
        ),
        pytest.param(
            SoftmaxPicker,
            {"maxNumOfEndpoints": 0},
            r"maxNumOfEndpoints: expected int >= 1, got 0",
            id="zero-endpoints",
        ),
    ],
)
def test_parameter_errors_name_the_field(cls: Any, raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        parse_params(cls.Params, raw, PATH)


def test_defaults_are_dynamos() -> None:
    assert parse_params(KvCostScorer.Params, None, PATH).overlap_score_weight == 1.0
    picker_params = parse_params(SoftmaxPicker.Params, None, PATH)
    assert (picker_params.temperature, picker_params.max_num_of_endpoints) == (0.0, 1)


def test_registered_types() -> None:
    assert registry.get("kv-cost-scorer") is KvCostScorer
    assert registry.get("softmax-picker") is SoftmaxPicker
    assert registry.kinds_of(KvCostScorer) == ("scorer",)
    assert registry.kinds_of(SoftmaxPicker) == ("picker",)


def test_config_path_names_the_plugin() -> None:
    text = COST_CONFIG.replace("temperature: 0", "temperature: -1")
    with pytest.raises(ConfigError, match=r"plugins\[1\]\.parameters\.temperature"):
        load_config(text)


# ------------------------------------------------------------------------ the burst
COST_CONFIG = """
plugins:
- type: kv-cost-scorer
- type: softmax-picker
  parameters:
    temperature: 0
- type: inflight-load-producer
  parameters: {addEstimatedOutputTokens: true}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: kv-cost-scorer, weight: 1}
"""

NUM_ENDPOINTS = 8
NUM_REQUESTS = 32
PROMPT_TOKENS = np.arange(64, dtype=np.uint32)  # one 64-token block, same for all


def _burst(config: str | None, seed: int) -> tuple[list[str], Scheduler]:
    """32 identical requests scheduled back to back against one metrics snapshot."""
    table = make_table(NUM_ENDPOINTS, waiting=[0.0] * NUM_ENDPOINTS)
    scheduler = Scheduler.from_config(config, table, seed=seed)
    picks = [
        scheduler.schedule(Request.create("m", token_ids=PROMPT_TOKENS)).endpoint.name
        for _ in range(NUM_REQUESTS)
    ]
    return picks, scheduler


def test_burst_spreads_round_robin_at_temperature_zero() -> None:
    picks, scheduler = _burst(COST_CONFIG, seed=0)
    # 64 prompt tokens are one 64-token block (llm-d-router's block floor). Request 1
    # ties everywhere (cost 1 uncached block) and takes e0, which then holds 64 uncached
    # + 96 estimated output tokens (2.5 blocks; addEstimatedOutputTokens: the load term
    # needs the output estimate, or a cached request would add nothing). A holder costs
    # 0 + its in-flight blocks against 1 for a cold endpoint: every endpoint gets one
    # request before any gets a second; each later (cached) request adds 96 tokens.
    assert picks == [f"e{i % NUM_ENDPOINTS}" for i in range(NUM_REQUESTS)]
    producers = [p for p in scheduler.plugins.values() if isinstance(p, InflightLoadProducer)]
    assert len(producers) == 1
    assert producers[0].num_tracked_requests() == NUM_REQUESTS
    np.testing.assert_array_equal(
        scheduler.table.inflight_tokens[:NUM_ENDPOINTS], [160.0 + 3 * 96.0] * NUM_ENDPOINTS
    )


def test_burst_spreads_with_temperature_for_a_seed() -> None:
    picks, _ = _burst(COST_CONFIG.replace("temperature: 0", "temperature: 0.5"), seed=0)
    counts = collections.Counter(picks)
    assert [counts[f"e{i}"] for i in range(NUM_ENDPOINTS)] == [4, 4, 4, 4, 5, 3, 4, 4]


def test_gie_default_herds_on_the_same_burst() -> None:
    # The contrast (llm-d #298): queue + kv-cache + prefix scorers see one snapshot, and
    # the prefix scorer pulls every request after the first onto the same endpoint.
    picks, _ = _burst(None, seed=0)
    assert collections.Counter(picks).most_common(1)[0][1] == NUM_REQUESTS
