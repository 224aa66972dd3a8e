"""prefix-cache-affinity-filter (llm-d-router row 18) and no-hit-lru-scorer (llm-d)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework.contracts import PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import parse_params
from inference_sched.plugins.prefix import (
    NoHitLruScorer,
    PrefixCacheAffinityFilter,
)
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

PATH = "plugins[0].parameters"
REQUEST = Request("r", "m")


def _cycle(match: list[float] | None, total: int = 10, seed: int = 0) -> CycleState:
    cycle = CycleState(np.random.default_rng(seed))
    if match is not None:
        info = PrefixCacheMatchInfo(np.asarray(match, dtype=np.float64), total, 16)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
    return cycle


def _rows(*rows: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int32)


# ====================================================================== affinity filter
def _filter(**raw: Any) -> PrefixCacheAffinityFilter:
    params = parse_params(PrefixCacheAffinityFilter.Params, raw, PATH)
    return PrefixCacheAffinityFilter("affinity", params, PluginHandle(make_table(1)))


def _run(
    flt: PrefixCacheAffinityFilter,
    cycle: CycleState,
    candidates: list[int],
    table: EndpointTable | None = None,
) -> list[int]:
    table = make_table(4) if table is None else table
    kept: list[int] = flt.filter(cycle, REQUEST, table, _rows(*candidates)).tolist()
    return kept


@pytest.mark.parametrize(
    ("raw", "match", "total", "candidates", "expected"),
    [
        pytest.param({}, [8, 9, 2, 10], 10, [0, 1, 2, 3], [0, 1, 3], id="sticky-at-and-above"),
        pytest.param({}, [8, 9, 2, 10], 10, [3, 2, 1], [3, 1], id="keeps-input-order"),
        pytest.param({}, [7, 1, 0, 0], 10, [0, 1, 2, 3], [0, 1, 2, 3], id="none-sticky-all"),
        pytest.param({}, [4, 5, 0, 0], 5, [0, 1, 2], [0, 1], id="exactly-0.8-of-5"),
        pytest.param({}, [10, 0, 0, 0], 10, [1], [1], id="single-candidate"),
        pytest.param({}, [0, 0, 0, 0], 0, [0, 1], [0, 1], id="no-blocks"),
        pytest.param(
            {"affinityThreshold": 0.5}, [5, 4, 9, 0], 10, [0, 1, 2, 3], [0, 2], id="threshold-0.5"
        ),
        pytest.param(
            {"affinityThreshold": 0.0}, [10, 0, 0, 0], 10, [0, 1], [0, 1], id="threshold-0-disables"
        ),
        pytest.param(
            {"affinityThreshold": 0.99}, [10, 9.9, 0, 0], 10, [0, 1, 2], [0, 1], id="strict-0.99"
        ),
    ],
)
def test_affinity_filter(
    raw: dict[str, Any], match: list[float], total: int, candidates: list[int], expected: list[int]
) -> None:
    flt = _filter(explorationProbability=0.0, **raw)
    assert _run(flt, _cycle(match, total), candidates) == expected


def test_missing_match_info_keeps_all() -> None:
    assert _run(_filter(), _cycle(None), [0, 1, 2]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("probability", "seed", "expected"),
    [
        # rng.random() with seed 0 is 0.637 and with seed 4 is 0.943
        pytest.param(0.7, 0, [0, 1, 2], id="explores-below-p"),
        pytest.param(0.6, 0, [0], id="sticks-above-p"),
        pytest.param(1.0, 4, [0, 1, 2], id="always-explores"),
        pytest.param(0.0, 4, [0], id="never-explores"),
    ],
)
def test_exploration_uses_the_cycle_rng(probability: float, seed: int, expected: list[int]) -> None:
    assert np.random.default_rng(0).random() == pytest.approx(0.6369616873214543)
    assert np.random.default_rng(4).random() == pytest.approx(0.9430561055723676)
    flt = _filter(explorationProbability=probability)
    assert _run(flt, _cycle([10, 0, 0], 10, seed=seed), [0, 1, 2]) == expected


def test_exploration_rate_over_many_cycles() -> None:
    flt = _filter(explorationProbability=0.25)
    rng = np.random.default_rng(123)
    explored = 0
    for _ in range(4000):
        cycle = CycleState(rng)
        cycle.write(PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo(np.array([10.0, 0.0]), 10, 16))
        explored += len(flt.filter(cycle, REQUEST, make_table(2), _rows(0, 1))) == 2
    assert explored == 1001  # seeded: about a quarter of 4000


def test_affinity_defaults_and_metadata() -> None:
    params = parse_params(PrefixCacheAffinityFilter.Params, None, PATH)
    assert (
        params.affinity_threshold,
        params.exploration_probability,
        params.max_ttft_penalty_ms,
        params.ttft_source,
        params.peak_prefill_throughput,
        params.prefix_match_info_producer_name,
        params.latency_prediction_info_producer_name,
        params.in_flight_load_producer_name,
    ) == (0.8, 0.0, 18000.0, "prefillThroughput", 15928.0, "", "", "")
    assert PrefixCacheAffinityFilter.type == "prefix-cache-affinity-filter"
    assert PrefixCacheAffinityFilter.stability == "beta"
    assert PrefixCacheAffinityFilter.consumes == frozenset({"PrefixCacheMatchInfo", "InFlightLoad"})
    assert params.producer_references() == {}
    named = parse_params(
        PrefixCacheAffinityFilter.Params,
        {"prefixMatchInfoProducerName": "p", "inFlightLoadProducerName": "i"},
        PATH,
    )
    assert named.producer_references() == {
        "prefixMatchInfoProducerName": ("p", "PrefixCacheMatchInfo"),
        "inFlightLoadProducerName": ("i", "InFlightLoad"),
    }


def _inflight_table(tokens: list[float]) -> EndpointTable:
    table = make_table(len(tokens))
    table.inflight_tokens[: len(tokens)] = tokens  # the in-flight producer's counters
    return table


# rows 0, 1 sticky (10/10, 9/10), row 2 not; in-flight tokens per row; peak 1000 tok/s
THROUGHPUT_CASES = [
    ("within-penalty", 5000, [900, 800, 100], [0, 1]),  # (800 - 100) / 1000 s = 700 ms
    ("penalty-exceeded", 699, [900, 800, 100], [0, 1, 2]),  # 700 ms > 699
    ("penalty-equal", 700, [900, 800, 100], [0, 1]),  # strict >
    ("gate-off", 0, [90000, 80000, 0], [0, 1]),
    ("idle-sticky", 1, [0, 5, 0], [0, 1]),
]


@pytest.mark.parametrize(
    ("penalty", "inflight", "expected"),
    [c[1:] for c in THROUGHPUT_CASES],
    ids=[c[0] for c in THROUGHPUT_CASES],
)
def test_ttft_gate_from_prefill_throughput(
    penalty: float, inflight: list[float], expected: list[int]
) -> None:
    """TTFT = inFlightTokens / peakPrefillThroughput * 1000 ms (the default source)."""
    flt = _filter(maxTTFTPenaltyMs=penalty, peakPrefillThroughput=1000)
    table = _inflight_table(inflight)
    assert _run(flt, _cycle([10, 9, 0]), [0, 1, 2], table) == expected


def test_ttft_gate_default_peak_throughput() -> None:
    """18000 ms at 15928 tok/s: sticking costs too much past 286704 queued tokens."""
    table = _inflight_table([286705, 0])
    assert _run(_filter(), _cycle([10, 0]), [0, 1], table) == [0, 1]
    table = _inflight_table([286704, 0])
    assert _run(_filter(), _cycle([10, 0]), [0, 1], table) == [0]


def test_latency_predictor_source_without_producer_keeps_sticky() -> None:
    """No prediction reads +inf everywhere: inf - inf never breaks stickiness."""
    flt = _filter(ttftSource="latencyPredictor", maxTTFTPenaltyMs=1)
    assert _run(flt, _cycle([10, 0, 0]), [0, 1, 2]) == [0]


def test_named_prefix_producer_is_read() -> None:
    cycle = _cycle([0, 10])  # the shared key says row 1
    info = PrefixCacheMatchInfo(np.asarray([10.0, 0.0]), 10, 16)
    cycle.write(f"{PREFIX_CACHE_MATCH_INFO}/mine", info)
    flt = _filter(prefixMatchInfoProducerName="mine")
    assert _run(flt, cycle, [0, 1]) == [0]
    assert _run(_filter(), cycle, [0, 1]) == [1]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"affinityThreshold": 1.5},
            r"^plugins\[0\]\.parameters\.affinityThreshold: expected a number in \[0, 1\], "
            r"got 1\.5 \(float\)$",
            id="threshold",
        ),
        pytest.param(
            {"explorationProbability": -0.1},
            r"^plugins\[0\]\.parameters\.explorationProbability: expected a number in \[0, 1\]",
            id="exploration",
        ),
        pytest.param(
            {"maxTTFTPenaltyMs": -1},
            r"^plugins\[0\]\.parameters\.maxTTFTPenaltyMs: expected number >= 0, got -1 \(int\)$",
            id="penalty",
        ),
        pytest.param(
            {"ttftSource": "predictor"},
            r"^plugins\[0\]\.parameters\.ttftSource: expected one of 'prefillThroughput', "
            r"'latencyPredictor'",
            id="ttft-source",
        ),
        pytest.param(
            {"peakPrefillThroughput": 0},
            r"^plugins\[0\]\.parameters\.peakPrefillThroughput: expected number > 0 when "
            r"ttftSource is prefillThroughput and maxTTFTPenaltyMs > 0, got 0 \(int\)$",
            id="peak-zero",
        ),
        pytest.param(
            {"peakPrefillThroughput": -1, "maxTTFTPenaltyMs": 0},
            r"^plugins\[0\]\.parameters\.peakPrefillThroughput: expected number >= 0",
            id="peak-negative",
        ),
        pytest.param(
            {"affinityTreshold": 0.5},
            r"unknown key 'affinityTreshold' \(did you mean 'affinityThreshold'\?\)",
            id="typo",
        ),
    ],
)
def test_affinity_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(PrefixCacheAffinityFilter.Params, raw, PATH)


# ====================================================================== no-hit LRU
def _lru_scorer(table: EndpointTable, **raw: Any) -> NoHitLruScorer:
    params = parse_params(NoHitLruScorer.Params, raw, PATH)
    return NoHitLruScorer("no-hit", params, PluginHandle(table))


def _score(
    scorer: NoHitLruScorer, table: EndpointTable, cycle: CycleState, candidates: list[int]
) -> list[float]:
    out = np.full(len(candidates), 7.0, dtype=np.float32)
    scorer.score(cycle, REQUEST, table, _rows(*candidates), out)
    return out.tolist()


def _route(
    scorer: NoHitLruScorer, table: EndpointTable, row: int, prefill: int | None = None
) -> None:
    """A cold cycle that picked ``row`` (and ``prefill`` in the prefill profile)."""
    cycle = _cycle([0.0] * table.capacity)
    _score(scorer, table, cycle, [row])
    runs = {"decode": ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))}
    if prefill is not None:
        runs["prefill"] = ProfileRunResult((prefill,), (table.endpoint_at(prefill),), (1.0,))
    scorer.pre_request(cycle, REQUEST, SchedulingResult(runs, "decode"))


@pytest.mark.parametrize(
    ("used", "candidates", "expected"),
    [
        pytest.param([], [0, 1, 2, 3], [1.0, 2 / 3, 1 / 3, 0.0], id="never-used-input-order"),
        pytest.param([], [3, 1, 0], [1.0, 0.5, 0.0], id="input-order-not-row-order"),
        pytest.param([1, 0], [0, 1, 2, 3], [0.0, 1 / 3, 1.0, 2 / 3], id="unused-then-oldest"),
        pytest.param([2, 1, 0, 3], [0, 1, 2, 3], [1 / 3, 2 / 3, 1.0, 0.0], id="all-used"),
        pytest.param([0, 1, 0], [0, 1], [0.0, 1.0], id="reuse-moves-to-mru"),
        pytest.param([], [2], [1.0], id="single"),
    ],
)
def test_no_hit_lru_ranks(used: list[int], candidates: list[int], expected: list[float]) -> None:
    table = make_table(4)
    scorer = _lru_scorer(table)
    for row in used:
        _route(scorer, table, row)
    out = _score(scorer, table, _cycle([0.0] * table.capacity), candidates)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_warm_request_is_neutral_and_does_not_touch_the_lru() -> None:
    table = make_table(3)
    scorer = _lru_scorer(table)
    _route(scorer, table, 2)
    cycle = _cycle([0.0, 0.0, 3.0] + [0.0] * (table.capacity - 3))
    assert _score(scorer, table, cycle, [0, 1, 2]) == [0.5, 0.5, 0.5]
    result = SchedulingResult({"d": ProfileRunResult((0,), (table.endpoint_at(0),), (1.0,))}, "d")
    scorer.pre_request(cycle, REQUEST, result)
    assert scorer.lru_rows() == [2]


def test_hit_outside_the_candidates_is_still_cold() -> None:
    table = make_table(3)
    scorer = _lru_scorer(table)
    cycle = _cycle([0.0, 0.0, 3.0] + [0.0] * (table.capacity - 3))
    assert _score(scorer, table, cycle, [0, 1]) == [1.0, 0.0]


def test_missing_match_info_is_cold() -> None:
    table = make_table(2)
    scorer = _lru_scorer(table)
    assert _score(scorer, table, _cycle(None), [0, 1]) == [1.0, 0.0]


def test_pre_request_moves_primary_and_prefill_to_mru() -> None:
    table = make_table(4)
    scorer = _lru_scorer(table)
    _route(scorer, table, 0)
    _route(scorer, table, 2, prefill=1)
    assert scorer.lru_rows() == [0, 2, 1]


def test_lru_is_bounded() -> None:
    table = make_table(4)
    scorer = _lru_scorer(table, lruSize=2)
    for row in (0, 1, 2):
        _route(scorer, table, row)
    assert scorer.lru_rows() == [1, 2]
    # row 0 was forgotten: it counts as never used again
    assert _score(scorer, table, _cycle(None), [2, 1, 0]) == [0.0, 0.5, 1.0]


def test_endpoint_removal_drops_it() -> None:
    table = make_table(3)
    scorer = _lru_scorer(table)
    for row in (0, 1, 2):
        _route(scorer, table, row)
    table.remove("e1")
    assert scorer.lru_rows() == [0, 2]


def test_no_hit_defaults_and_errors() -> None:
    params = parse_params(NoHitLruScorer.Params, None, PATH)
    assert (params.prefix_plugin_type, params.prefix_plugin_name, params.lru_size) == (
        "prefix-cache-scorer",
        "prefix-cache-scorer",
        1024,
    )
    assert NoHitLruScorer.category == "Distribution"
    assert NoHitLruScorer.consumes == frozenset({"PrefixCacheMatchInfo"})
    with pytest.raises(
        ParameterError,
        match=r"^plugins\[0\]\.parameters\.lruSize: expected int >= 1, got 0 \(int\)$",
    ):
        parse_params(NoHitLruScorer.Params, {"lruSize": 0}, PATH)
    with pytest.raises(
        ParameterError,
        match=r"^plugins\[0\]\.parameters\.prefixPluginName: expected str, got 3 \(int\)$",
    ):
        parse_params(NoHitLruScorer.Params, {"prefixPluginName": 3}, PATH)
