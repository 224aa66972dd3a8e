"""SLO plugins (GIE, docs/slo.md): predicted-latency-producer, latency-scorer,
slo-headroom-tier-filter, latency-slo-admitter, and the TTFT gate of
prefix-cache-affinity-filter."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

import inference_sched.plugins.slo  # noqa: F401 - registers the SLO plugin types
from inference_sched.errors import AdmissionDeniedError, ParameterError
from inference_sched.framework.contracts import (
    LATENCY_PREDICTION_INFO,
    MM_ENCODER_CACHE_MATCH_INFO,
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    EncoderCacheMatchInfo,
    LatencyPredictionInfo,
    PrefixCacheMatchInfo,
    TokenizedRequest,
    read_latency_info,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.profile import PluginStats
from inference_sched.framework.registry import kinds_of
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
    Usage,
)
from inference_sched.observability.prometheus import registry_for
from inference_sched.params import NoParams, parse_params
from inference_sched.plugins.prefix import PrefixCacheAffinityFilter
from inference_sched.plugins.slo import (
    LatencyScorer,
    LatencySloAdmitter,
    PredictedLatencyProducer,
    SloHeadroomTierFilter,
    bucket_scores,
    input_tokens,
    prompt_tokens,
    slo_ms,
)
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

PATH = "plugins[0].parameters"
REQUEST = Request("r", "m")


def _rows(*rows: int) -> npt.NDArray[np.int32]:
    return np.asarray(rows, dtype=np.int32)


def _info(
    ttft_h: list[float],
    tpot_h: list[float],
    dispatched: list[float] | None = None,
    *,
    has_prediction: bool = True,
    ttft: list[float] | None = None,
) -> LatencyPredictionInfo:
    n = len(ttft_h)
    ttft_arr = np.asarray(ttft if ttft is not None else [100.0] * n, dtype=np.float64)
    th = np.asarray(ttft_h, dtype=np.float64)
    ph = np.asarray(tpot_h, dtype=np.float64)
    return LatencyPredictionInfo(
        has_prediction=has_prediction,
        ttft_ms=ttft_arr,
        tpot_ms=np.full(n, 10.0),
        ttft_headroom_ms=th,
        tpot_headroom_ms=ph,
        ttft_valid=th >= 0,
        tpot_valid=ph >= 0,
        dispatched=np.asarray(dispatched if dispatched is not None else [1.0] * n),
    )


def _cycle(info: LatencyPredictionInfo | None = None, seed: int = 0) -> CycleState:
    cycle = CycleState(np.random.default_rng(seed))
    if info is not None:
        cycle.write(LATENCY_PREDICTION_INFO, info)
    return cycle


# ====================================================================== registration
@pytest.mark.parametrize(
    ("cls", "kinds"),
    [
        (
            PredictedLatencyProducer,
            ("data-producer", "pre-request", "response-streaming", "response-complete"),
        ),
        (LatencyScorer, ("scorer",)),
        (SloHeadroomTierFilter, ("filter",)),
        (LatencySloAdmitter, ("admitter",)),
    ],
    ids=lambda v: getattr(v, "type", None) or "kinds",
)
def test_kinds(cls: type[Any], kinds: tuple[str, ...]) -> None:
    assert kinds_of(cls) == kinds


def test_type_strings() -> None:
    assert PredictedLatencyProducer.type == "predicted-latency-producer"
    assert LatencyScorer.type == "latency-scorer"
    assert SloHeadroomTierFilter.type == "slo-headroom-tier-filter"
    assert LatencySloAdmitter.type == "latency-slo-admitter"


def test_producer_defaults_are_gies() -> None:
    p = parse_params(PredictedLatencyProducer.Params, None, PATH)
    assert (p.sampling_mean, p.max_decode_token_samples_for_prediction) == (1000.0, 0)
    assert (p.slo_buffer_factor, p.context_ttl_s, p.streaming_mode) == (1.0, 300.0, False)
    assert (p.endpoint_role_label, p.predict_in_produce) == ("", True)
    assert p.predict_in_prepare_data is None
    names = (p.prefix_match_info_producer_name, p.in_flight_load_producer_name)
    assert names == ("", "")
    assert (p.use_encoder_cache_features, p.encoder_cache_match_info_producer_name) == (False, "")
    assert p.producer_references() == {}
    assert (p.quantile, p.min_training_samples, p.training_window) == (0.9, 32, 2000)


def test_scorer_and_filter_defaults() -> None:
    s = parse_params(LatencyScorer.Params, None, PATH)
    assert (s.ttft_weight, s.tpot_weight, s.headroom_selection_strategy) == (0.8, 0.2, "least")
    assert (s.composite_kv_weight, s.composite_queue_weight, s.composite_prefix_weight) == (
        1.0,
        1.0,
        1.0,
    )
    assert parse_params(SloHeadroomTierFilter.Params, None, PATH).epsilon_explore_neg == 0.01


@pytest.mark.parametrize(
    ("cls", "raw", "error"),
    [
        (PredictedLatencyProducer.Params, {"contextTTL": "soon"}, r"contextTTL: expected a pos"),
        (PredictedLatencyProducer.Params, {"contextTTL": "0s"}, r"contextTTL: expected a pos"),
        (PredictedLatencyProducer.Params, {"quantile": 1.0}, r"quantile: expected a number"),
        (
            PredictedLatencyProducer.Params,
            {"streamingMode": "yes"},
            r"streamingMode: expected bool",
        ),
        (LatencyScorer.Params, {"headroomSelectionStrategy": "lest"}, r"did you mean 'least'"),
        (LatencyScorer.Params, {"ttftWeight": -1}, r"ttftWeight: expected number >= 0"),
        (SloHeadroomTierFilter.Params, {"epsilonExploreNeg": 2}, r"epsilonExploreNeg: expected"),
    ],
)
def test_parameter_errors(cls: type[Any], raw: dict[str, Any], error: str) -> None:
    with pytest.raises(ParameterError, match=error):
        parse_params(cls, raw, PATH)


# ====================================================================== headers
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (0.0, False)),
        ({"x-slo-ttft-ms": "250"}, (250.0, False)),
        ({"x-slo-ttft-ms": "12.5"}, (12.5, False)),
        ({"x-slo-ttft-ms": " "}, (0.0, False)),
        ({"x-slo-ttft-ms": "fast"}, (0.0, True)),
        ({"x-slo-ttft-ms": "-3"}, (0.0, True)),
        ({"x-slo-ttft-ms": "inf"}, (0.0, True)),
    ],
)
def test_slo_header_parsing(headers: dict[str, str], expected: tuple[float, bool]) -> None:
    assert slo_ms(Request("r", "m", headers=headers), "x-slo-ttft-ms") == expected


def test_slo_falls_back_to_the_parsed_field() -> None:
    assert slo_ms(Request("r", "m", slo_tpot_ms=40.0), "x-slo-tpot-ms") == (40.0, False)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (Request("r", "m", token_ids=np.arange(7)), 7.0),
        (Request("r", "m", prompt=b"x" * 42), 10.0),
        (Request("r", "m", request_size_bytes=400), 100.0),
        (Request("r", "m"), 0.0),
    ],
    ids=["token-ids", "prompt", "size", "nothing"],
)
def test_prompt_tokens(request_: Request, expected: float) -> None:
    assert prompt_tokens(request_) == expected


# ====================================================================== scorer
def _scorer(**raw: Any) -> LatencyScorer:
    params = parse_params(LatencyScorer.Params, raw, PATH)
    return LatencyScorer("latency-scorer", params, PluginHandle(make_table(1)))


def _score(
    scorer: LatencyScorer, cycle: CycleState, table: EndpointTable, rows: npt.NDArray[np.int32]
) -> list[float]:
    out = np.zeros(len(rows), dtype=np.float32)
    scorer.score(cycle, REQUEST, table, rows, out)
    return [round(float(v), 6) for v in out]


BUCKET_CASES = [
    # positives 0, 1, 3 (2 negative): |hT| 10/30/50 -> n 0/.5/1; |hP| 5/5/15 -> 0/0/1;
    # c = .8 nT + .2 nP = 0 / .4 / 1
    ("positives-least", [10, 30, -5, 50], [5, 5, 5, 15], [1, 1, 1, 1], "least", [1, 0.61, 0, 0.01]),
    ("positives-most", [10, 30, -5, 50], [5, 5, 5, 15], [1, 1, 1, 1], "most", [0.01, 0.41, 0, 1]),
    # all negative, rows 1 and 2 idle: TPOT range 0 -> all weight on TTFT; forced least
    ("idle", [-10, -20, -30], [0, 0, 0], [1, 0, 0], "most", [0, 1, 0.01]),
    # all negative, busy: TPOT-only-negative bucket (row 1) first; one entry: c = .5
    ("tpot-only", [-10, 5, -20, -30], [-1, -2, 3, -4], [1, 1, 1, 1], "least", [0, 0.51, 0, 0]),
    # no TPOT-only-negative: TTFT-only-negative bucket (rows 0, 1)
    ("ttft-only", [-10, -20, -30], [1, 2, -1], [1, 1, 1], "least", [1, 0.01, 0]),
    # only both-negative
    ("both", [-10, -40], [-1, -1], [2, 3], "most", [1, 0.01]),
]


@pytest.mark.parametrize(
    ("ttft_h", "tpot_h", "dispatched", "strategy", "expected"),
    [c[1:] for c in BUCKET_CASES],
    ids=[c[0] for c in BUCKET_CASES],
)
def test_headroom_scores(
    ttft_h: list[float],
    tpot_h: list[float],
    dispatched: list[float],
    strategy: str,
    expected: list[float],
) -> None:
    n = len(ttft_h)
    table = make_table(n)
    cycle = _cycle(_info(ttft_h, tpot_h, dispatched))
    scorer = _scorer(headroomSelectionStrategy=strategy)
    assert _score(scorer, cycle, table, _rows(*range(n))) == pytest.approx(expected)


def test_bucket_scores_weights_are_normalised() -> None:
    # ttftWeight 4, tpotWeight 1 is 0.8 / 0.2
    got = bucket_scores(np.array([10.0, 30, 50]), np.array([5.0, 5, 15]), 4.0, 1.0, "least")
    np.testing.assert_allclose(got, [1.0, 0.61, 0.01])


COMPOSITE_CASES = [
    # (1 - kv) / 3 + relQueue / 3 + prefix / 3, relQueue = (10 - q) / 10, rounded to 0.01
    ("equal-weights", {}, None, [0.6, 0.33, 0.03]),
    ("with-prefix", {}, [4, 2, 0], [0.93, 0.5, 0.03]),
    (
        "kv-and-prefix",
        {"compositeKVWeight": 2, "compositeQueueWeight": 0, "compositePrefixWeight": 2},
        [4, 2, 0],
        [0.9, 0.5, 0.05],
    ),
]


@pytest.mark.parametrize(
    ("raw", "match", "expected"),
    [c[1:] for c in COMPOSITE_CASES],
    ids=[c[0] for c in COMPOSITE_CASES],
)
def test_composite_fallback(
    raw: dict[str, Any], match: list[float] | None, expected: list[float]
) -> None:
    table = make_table(3, waiting=[0, 5, 10], kv_usage_frac=[0.2, 0.5, 0.9])
    cycle = _cycle(_info([1, 1, 1], [1, 1, 1], has_prediction=False))
    if match is not None:
        info = PrefixCacheMatchInfo(np.asarray(match, dtype=np.float64), 4, 16)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
    assert _score(_scorer(**raw), cycle, table, _rows(0, 1, 2)) == pytest.approx(expected)


def test_composite_with_empty_queues_and_no_info() -> None:
    table = make_table(2, waiting=[0, 0], kv_usage_frac=[0.0, 0.5])
    # (1 + 1 + 0) / 3 = 0.67; (0.5 + 1) / 3 = 0.5
    assert _score(_scorer(), _cycle(), table, _rows(0, 1)) == pytest.approx([0.67, 0.5])


# ====================================================================== tier filter
def _tier(epsilon: float = 0.01) -> SloHeadroomTierFilter:
    params = parse_params(SloHeadroomTierFilter.Params, {"epsilonExploreNeg": epsilon}, PATH)
    return SloHeadroomTierFilter("tier", params, PluginHandle(make_table(1)))


MIXED = ([10.0, -5.0, 3.0], [0.0, 0.0, -1.0])  # row 0 positive; 1, 2 negative


@pytest.mark.parametrize(
    ("epsilon", "expected"), [(0.0, [0]), (1.0, [1, 2])], ids=["never-explore", "always"]
)
def test_tier_filter_picks_a_tier(epsilon: float, expected: list[int]) -> None:
    cycle = _cycle(_info(*MIXED))
    assert _tier(epsilon).filter(cycle, REQUEST, make_table(3), _rows(0, 1, 2)).tolist() == expected


@pytest.mark.parametrize("seed", range(6))
def test_tier_filter_draws_from_the_cycle_rng(seed: int) -> None:
    explores = np.random.default_rng(seed).random() < 0.4
    cycle = _cycle(_info(*MIXED), seed=seed)
    got = _tier(0.4).filter(cycle, REQUEST, make_table(3), _rows(0, 1, 2)).tolist()
    assert got == ([1, 2] if explores else [0])


def test_tier_filter_explores_at_epsilon() -> None:
    tier, table, rows = _tier(0.01), make_table(3), _rows(0, 1, 2)
    rng = np.random.default_rng(7)
    negatives = 0
    for _ in range(20_000):
        cycle = CycleState(rng)
        cycle.write(LATENCY_PREDICTION_INFO, _info(*MIXED))
        negatives += tier.filter(cycle, REQUEST, table, rows).tolist() == [1, 2]
    assert negatives / 20_000 == pytest.approx(0.01, abs=0.003)


@pytest.mark.parametrize(
    "info",
    [
        None,
        _info([10, 1, 0], [0, 0, 0]),  # all positive
        _info([-1, -2, -3], [0, 0, 0]),  # all negative
        _info(*MIXED, has_prediction=False),
    ],
    ids=["no-info", "all-positive", "all-negative", "warming-up"],
)
def test_tier_filter_keeps_all(info: LatencyPredictionInfo | None) -> None:
    rows = _rows(0, 1, 2)
    assert _tier(1.0).filter(_cycle(info), REQUEST, make_table(3), rows) is rows


def test_tier_filter_nan_headroom_is_negative() -> None:
    info = _info([5.0, float("nan")], [0.0, 0.0])
    assert _tier(0.0).filter(_cycle(info), REQUEST, make_table(2), _rows(0, 1)).tolist() == [0]


# ====================================================================== admitter
def _admitter() -> LatencySloAdmitter:
    return LatencySloAdmitter(
        "latency-slo-admitter",
        NoParams(),
        PluginHandle(make_table(1)),
    )


SLO = {"x-slo-ttft-ms": "100"}
ADMIT_CASES = [
    # (priority, SLO headers, ttft headroom, tpot headroom, running, kv, admitted)
    ("priority-0", 0, SLO, [-1, -1], [-1, -1], [1, 1], [0.5, 0.5], True),
    ("no-slo", -1, {}, [-1, -1], [-1, -1], [1, 1], [0.5, 0.5], True),
    ("zero-slo", -1, {"x-slo-ttft-ms": "0"}, [-1, -1], [-1, -1], [1, 1], [0.5, 0.5], True),
    ("tpot-slo-only", -1, {"x-slo-tpot-ms": "5"}, [-1, -1], [-1, -1], [1, 1], [0.5, 0.5], False),
    ("valid", -1, SLO, [-1, 5], [-1, 0], [1, 1], [0.5, 0.5], True),
    ("idle", -1, SLO, [-1, -1], [-1, -1], [1, 0], [0.5, 0.5], True),
    ("cold", -1, SLO, [-1, -1], [-1, -1], [1, 1], [0.5, 0.019], True),
    ("kv-at-0.02-is-warm", -1, SLO, [-1, -1], [-1, -1], [1, 1], [0.5, 0.02], False),
    ("tpot-invalid", -1, SLO, [5, 5], [-1, -1], [1, 1], [0.5, 0.5], False),
    ("nothing", -1, SLO, [-1, -1], [-1, -1], [1, 2], [0.5, 0.9], False),
]


@pytest.mark.parametrize(
    ("priority", "headers", "ttft_h", "tpot_h", "running", "kv", "admitted"),
    [c[1:] for c in ADMIT_CASES],
    ids=[c[0] for c in ADMIT_CASES],
)
def test_admitter(
    priority: int,
    headers: dict[str, str],
    ttft_h: list[float],
    tpot_h: list[float],
    running: list[float],
    kv: list[float],
    admitted: bool,
) -> None:
    table = make_table(2, kv_usage_frac=kv, running=running)
    # dispatched counts no longer matter (llm-d-router: idle = no running requests)
    cycle = _cycle(_info(ttft_h, tpot_h, [0.0, 0.0]))
    request = Request("r", "m", priority=priority, headers=headers)
    if admitted:
        _admitter().admit_request(cycle, request, table, _rows(0, 1))
        return
    with pytest.raises(AdmissionDeniedError) as info:
        _admitter().admit_request(cycle, request, table, _rows(0, 1))
    assert (info.value.http_status, info.value.priority) == (500, -1)
    assert info.value.admitter == "latency-slo-admitter"


@pytest.mark.parametrize("info", [None, _info([-1], [-1], has_prediction=False)])
def test_admitter_admits_without_predictions(info: LatencyPredictionInfo | None) -> None:
    table = make_table(1, kv_usage_frac=[0.9], running=[3])
    request = Request("r", "m", priority=-1, headers=SLO)
    _admitter().admit_request(_cycle(info), request, table, _rows(0))


# ====================================================================== TTFT gate
def _affinity(penalty: float) -> PrefixCacheAffinityFilter:
    raw: dict[str, Any] = {"affinityThreshold": 0.8, "explorationProbability": 0.0}
    raw["maxTTFTPenaltyMs"] = penalty
    raw["ttftSource"] = "latencyPredictor"  # llm-d-router's default is prefillThroughput
    params = parse_params(PrefixCacheAffinityFilter.Params, raw, PATH)
    return PrefixCacheAffinityFilter("pfx", params, PluginHandle(make_table(1)))


GATE_CASES = [
    # rows 0, 1 sticky (match 10/10, 9/10); row 2 not; predicted TTFT per row
    ("penalty-small", 5000, [900, 800, 100], [0, 1]),  # 800 - 100 = 700 <= 5000
    ("penalty-too-high", 500, [900, 800, 100], [0, 1, 2]),  # 700 > 500
    ("penalty-equal", 700, [900, 800, 100], [0, 1]),  # strict >
    ("gate-off", 0, [9000, 8000, 100], [0, 1]),
]


@pytest.mark.parametrize(
    ("penalty", "ttft", "expected"), [c[1:] for c in GATE_CASES], ids=[c[0] for c in GATE_CASES]
)
def test_ttft_penalty_gate(penalty: float, ttft: list[float], expected: list[int]) -> None:
    cycle = _cycle(_info([1, 1, 1], [1, 1, 1], ttft=ttft))
    cycle.write(PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo(np.array([10.0, 9, 0]), 10, 16))
    got = _affinity(penalty).filter(cycle, REQUEST, make_table(3), _rows(0, 1, 2))
    assert got.tolist() == expected


def test_ttft_gate_is_open_without_predictions() -> None:
    cycle = _cycle(_info([1, 1, 1], [1, 1, 1], ttft=[9000, 9000, 1], has_prediction=False))
    cycle.write(PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo(np.array([10.0, 9, 0]), 10, 16))
    got = _affinity(500).filter(cycle, REQUEST, make_table(3), _rows(0, 1, 2))
    assert got.tolist() == [0, 1]


# ====================================================================== producer
def _producer(table: EndpointTable, now: list[float], **raw: Any) -> PredictedLatencyProducer:
    params = parse_params(PredictedLatencyProducer.Params, raw, PATH)
    handle = PluginHandle(table, clock=lambda: now[0])
    return PredictedLatencyProducer("plp", params, handle)


def _result(table: EndpointTable, row: int) -> SchedulingResult:
    run = ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))
    return SchedulingResult({"default": run}, "default")


def test_producer_warm_up_and_training_cycle() -> None:
    table = make_table(2, waiting=[1, 2], running=[3, 4], kv_usage_frac=[0.1, 0.2])
    now = [0.0]
    producer = _producer(table, now, minTrainingSamples=2)
    request = Request("r1", "m", token_ids=np.arange(1000))
    rows = _rows(0, 1)
    cycle = _cycle()
    producer.prepare_request_data(cycle, request, table, rows)
    info = cycle.read(LATENCY_PREDICTION_INFO)
    assert isinstance(info, LatencyPredictionInfo)
    assert not info.has_prediction
    assert np.isnan(info.ttft_ms[rows]).all()
    assert not info.ttft_valid[rows].any()
    result = _result(table, 1)
    producer.pre_request(cycle, request, result)
    assert (producer.dispatched(1), producer.inflight_prefill_tokens(1)) == (1.0, 1000.0)
    now[0] = 0.25
    first = Response("r1", is_start_of_stream=True, time_s=0.25)
    producer.response_streaming(request, first, result)
    assert producer.inflight_prefill_tokens(1) == 0.0
    assert producer.predictor.ttft.num_samples == 1
    end = Response("r1", is_end_of_stream=True, time_s=1.25, usage=Usage(1000, 11))
    producer.response_complete(request, end, result)
    assert producer.dispatched(1) == 0.0
    assert producer.num_tracked_requests() == 0
    assert producer.predictor.tpot.num_samples == 1
    # the model learned 250 ms TTFT and (1.25 - 0.25) / 10 = 100 ms TPOT
    assert producer.predictor.ttft._mean_y == pytest.approx(250.0)
    assert producer.predictor.tpot._mean_y == pytest.approx(100.0)


def test_non_streamed_response_learns_ttft_as_e2e() -> None:
    table = make_table(1)
    now = [0.0]
    producer = _producer(table, now)
    request, cycle = Request("r", "m", prompt=b"x" * 400), _cycle()
    producer.prepare_request_data(cycle, request, table, _rows(0))
    result = _result(table, 0)
    producer.pre_request(cycle, request, result)
    producer.response_complete(request, Response("r", is_end_of_stream=True, time_s=2.0), result)
    assert producer.predictor.ttft._mean_y == pytest.approx(2000.0)
    assert producer.predictor.tpot.num_samples == 0
    assert producer.inflight_prefill_tokens(0) == 0.0


def test_errors_release_but_do_not_train() -> None:
    table = make_table(1)
    producer = _producer(table, [0.0])
    request, cycle = Request("r", "m", prompt=b"x" * 400), _cycle()
    producer.prepare_request_data(cycle, request, table, _rows(0))
    result = _result(table, 0)
    producer.pre_request(cycle, request, result)
    end = Response("r", status_code=500, is_end_of_stream=True, time_s=1.0)
    producer.response_complete(request, end, result)
    producer.response_complete(request, end, result)  # a second call finds nothing
    assert producer.predictor.ttft.num_samples == 0
    assert (producer.dispatched(0), producer.num_tracked_requests()) == (0.0, 0)


class _FixedPredictor:
    """Stands in for the model: fixed predictions per candidate position."""

    def __init__(self, ttft: list[float], tpot: list[float]) -> None:
        self._ttft = np.asarray(ttft, dtype=np.float64)
        self._tpot = np.asarray(tpot, dtype=np.float64)
        self.has_prediction = True
        self.has_tpot = True

    def predict(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return self._ttft[: len(x)].copy(), self._tpot[: len(x)].copy()


JUDGE_CASES = [
    # headers, params, (ttft headroom, ttft valid, tpot headroom, tpot valid) per row
    (
        "ttft-only",
        {"x-slo-ttft-ms": "150"},
        {},
        ([50, -50, 0], [True, False, False], [0, 0, 0], [True, True, True]),
    ),
    (
        "no-slo",
        {},
        {"streamingMode": True},
        ([-100, -200, -150], [True] * 3, [-10, -30, -20], [True] * 3),
    ),
    (
        "streaming",
        {"x-slo-ttft-ms": "150", "x-slo-tpot-ms": "20"},
        {"streamingMode": True},
        ([50, -50, 0], [True, False, False], [10, -10, 0], [True, False, False]),
    ),
    (
        "buffer-factor",
        {"x-slo-ttft-ms": "150", "x-slo-tpot-ms": "20"},
        {"streamingMode": True, "sloBufferFactor": 1.5},
        ([50, -50, 0], [True, False, False], [20, 0, 10], [True, False, True]),
    ),
]


@pytest.mark.parametrize(
    ("headers", "raw", "expected"), [c[1:] for c in JUDGE_CASES], ids=[c[0] for c in JUDGE_CASES]
)
def test_validity_and_headroom(
    headers: dict[str, str],
    raw: dict[str, Any],
    expected: tuple[list[float], list[bool], list[float], list[bool]],
) -> None:
    table = make_table(3)
    producer = _producer(table, [0.0], **raw)
    producer.predictor = _FixedPredictor([100, 200, 150], [10, 30, 20])  # type: ignore[assignment]
    cycle = _cycle()
    producer.prepare_request_data(cycle, Request("r", "m", headers=headers), table, _rows(0, 1, 2))
    info = cycle.read(LATENCY_PREDICTION_INFO)
    rows = _rows(0, 1, 2)
    assert info.has_prediction
    assert info.ttft_ms[rows].tolist() == [100, 200, 150]
    assert info.ttft_headroom_ms[rows].tolist() == expected[0]
    assert info.ttft_valid[rows].tolist() == expected[1]
    assert info.tpot_headroom_ms[rows].tolist() == expected[2]
    assert info.tpot_valid[rows].tolist() == expected[3]


def test_prefill_endpoints_are_tpot_neutral_and_pod_min_slo_applies() -> None:
    table = EndpointTable(clock=lambda: 0.0)
    table.add(Endpoint("p", "10.0.0.1", 8000, labels={"llm-d.ai/role": "prefill"}))
    table.add(Endpoint("d", "10.0.0.2", 8000, labels={"llm-d.ai/role": "decode"}))
    producer = _producer(table, [0.0], streamingMode=True)
    producer.predictor = _FixedPredictor([10, 10], [15, 15])  # type: ignore[assignment]
    rows = _rows(0, 1)
    # a running request on "d" with a 12 ms TPOT SLO tightens the budget there
    running = Request("a", "m", headers={"x-slo-tpot-ms": "12"})
    cycle = _cycle()
    producer.prepare_request_data(cycle, running, table, rows)
    producer.pre_request(cycle, running, _result(table, 1))
    cycle = _cycle()
    producer.prepare_request_data(
        cycle, Request("b", "m", headers={"x-slo-tpot-ms": "20"}), table, rows
    )
    info = cycle.read(LATENCY_PREDICTION_INFO)
    assert info.tpot_headroom_ms[rows].tolist() == [0.0, -3.0]  # min(20, 12) - 15
    assert info.tpot_valid[rows].tolist() == [True, False]
    assert info.dispatched[rows].tolist() == [0.0, 1.0]


def test_role_label_parameter() -> None:
    table = EndpointTable(clock=lambda: 0.0)
    table.add(Endpoint("p", "10.0.0.1", 8000, labels={"tier": "prefill"}))
    table.add(Endpoint("d", "10.0.0.2", 8000))
    producer = _producer(table, [0.0], streamingMode=True, endpointRoleLabel="tier")
    producer.predictor = _FixedPredictor([10, 10], [15, 15])  # type: ignore[assignment]
    cycle = _cycle()
    rows = _rows(0, 1)
    producer.prepare_request_data(
        cycle, Request("b", "m", headers={"x-slo-tpot-ms": "10"}), table, rows
    )
    assert cycle.read(LATENCY_PREDICTION_INFO).tpot_headroom_ms[rows].tolist() == [0.0, -5.0]


def test_malformed_header_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    table = make_table(1)
    producer = _producer(table, [0.0])
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.slo"):
        producer.prepare_request_data(
            _cycle(), Request("r", "m", headers={"x-slo-ttft-ms": "soon"}), table, _rows(0)
        )
    assert "x-slo-ttft-ms='soon'" in caplog.text


def test_removed_endpoint_drops_its_requests() -> None:
    table = make_table(2)
    producer = _producer(table, [0.0])
    request, cycle = Request("r", "m", prompt=b"x" * 400), _cycle()
    producer.prepare_request_data(cycle, request, table, _rows(0, 1))
    producer.pre_request(cycle, request, _result(table, 1))
    table.remove("e1")
    assert producer.num_tracked_requests() == 0
    assert producer.dispatched(1) == 0.0


def test_context_ttl_sweeps_lost_requests() -> None:
    table = make_table(1)
    now = [0.0]
    producer = _producer(table, now, contextTTL="1s")
    for i in range(256):
        now[0] = 0.0 if i == 0 else 5.0
        request, cycle = Request(f"r{i}", "m", prompt=b"x" * 40), _cycle()
        producer.prepare_request_data(cycle, request, table, _rows(0))
        producer.pre_request(cycle, request, _result(table, 0))
    assert producer.num_tracked_requests() == 255  # the first one, 5 s old, is gone
    assert producer.dispatched(0) == 255.0


# ====================================================================== full scheduler
GIE_PIPELINE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-producer
  parameters: {minTrainingSamples: 8, streamingMode: true}
- name: prefix-strict
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.99}
- type: slo-headroom-tier-filter
- name: prefix-loose
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.80}
- type: latency-scorer
- type: weighted-random-picker
- type: latency-slo-admitter
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-strict
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: prefix-loose
  - pluginRef: latency-scorer
  - pluginRef: weighted-random-picker
"""


def _serve(
    scheduler: Scheduler, clock: list[float], request: Request, row_ttft_s: list[float]
) -> SchedulingResult:
    result = scheduler.schedule(request)
    row = result.primary.rows[0]
    start = clock[0]
    first = Response(request.request_id, is_start_of_stream=True, time_s=start + row_ttft_s[row])
    scheduler.response_streaming(request, first, result)
    end = Response(
        request.request_id,
        is_end_of_stream=True,
        time_s=start + row_ttft_s[row] + 0.9,
        usage=Usage(100, 10),
    )
    scheduler.response_complete(request, end, result)
    return result


def test_gie_pipeline_from_yaml() -> None:
    clock = [0.0]
    table = make_table(3, waiting=[0, 4, 9], running=[1, 5, 9], kv_usage_frac=[0.1, 0.5, 0.9])
    table.clock = lambda: clock[0]
    scheduler = Scheduler.from_config(GIE_PIPELINE, table, seed=3, clock=lambda: clock[0])
    assert "approx-prefix-cache-producer" in scheduler.plugins  # auto-created, consumed
    producer = scheduler.plugins["predicted-latency-producer"]
    row_ttft_s = [0.05, 0.2, 0.6]  # the truth the model must learn: row 0 is fastest
    headers = {"x-slo-ttft-ms": "100", "x-slo-tpot-ms": "200"}
    picks = []
    for i in range(60):
        clock[0] = float(i)
        request = Request.create("m", prompt=f"prompt {i} " * 40, headers=headers)
        picks.append(_serve(scheduler, clock, request, row_ttft_s).primary.rows[0])
    assert producer.predictor.has_prediction
    assert producer.predictor.has_tpot
    # once warm, only row 0 meets the 100 ms TTFT SLO: the tier filter keeps it (p 0.99)
    assert picks[-20:].count(0) >= 18
    assert producer.num_tracked_requests() == 0
    assert all(s.errors == 0 for s in scheduler.stats())


def test_admitter_in_the_scheduler_denies_sheddable_requests() -> None:
    clock = [0.0]
    table = make_table(2, waiting=[4, 4], running=[5, 5], kv_usage_frac=[0.5, 0.6])
    scheduler = Scheduler.from_config(GIE_PIPELINE, table, seed=0, clock=lambda: clock[0])
    producer = scheduler.plugins["predicted-latency-producer"]
    for i in range(10):  # warm up on 300 ms TTFTs
        clock[0] = float(i)
        _serve(scheduler, clock, Request.create("m", prompt=f"p{i} " * 40), [0.3, 0.3])
    assert producer.predictor.has_prediction
    # both endpoints busy (a request in flight each), warm, and far over a 1 ms TTFT SLO
    held = [scheduler.schedule(Request.create("m", prompt=f"h{i} " * 40)) for i in range(8)]
    assert {r.primary.rows[0] for r in held} == {0, 1}
    cycles = scheduler.cycles
    tight = {"x-slo-ttft-ms": "1"}
    with pytest.raises(AdmissionDeniedError):
        scheduler.schedule(Request.create("m", prompt="x " * 40, headers=tight, priority=-1))
    assert (scheduler.denied, scheduler.cycles, scheduler.failures) == (1, cycles, 0)
    exposed = generate_latest(registry_for(scheduler)).decode()
    assert "inference_extension_denied_requests_total 1.0" in exposed
    # priority >= 0 is always admitted
    assert scheduler.schedule(Request.create("m", prompt="y " * 40, headers=tight)).endpoint


class _BrokenAdmitter:
    type = "broken-admitter"

    def __init__(self) -> None:
        self.name = "broken"

    def admit_request(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Any
    ) -> None:
        raise RuntimeError("boom")


def test_a_raising_admitter_admits() -> None:
    scheduler = Scheduler.from_config("plugins: [{type: queue-scorer}]\n", make_table(1), seed=0)
    scheduler.saturation_detector = None
    broken = _BrokenAdmitter()
    scheduler._admitters = [(broken, PluginStats("Admitter", broken.type, broken.name))]
    assert scheduler.schedule(Request.create("m", priority=-1)).endpoint.name == "e0"
    assert (scheduler.admission_errors, scheduler.denied) == (1, 0)


# ====================================================================== properties
headroom = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False), st.sampled_from([0.0, -0.0, 1e-12, -1e-12])
)


@st.composite
def rows_and_info(draw: st.DrawFn) -> tuple[int, LatencyPredictionInfo]:
    n = draw(st.integers(1, 12))
    th = np.asarray(draw(st.lists(headroom, min_size=n, max_size=n)))
    ph = np.asarray(draw(st.lists(headroom, min_size=n, max_size=n)))
    dispatched = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), float)
    info = LatencyPredictionInfo(
        has_prediction=True,
        ttft_ms=np.full(n, 50.0),
        tpot_ms=np.full(n, 5.0),
        ttft_headroom_ms=th,
        tpot_headroom_ms=ph,
        ttft_valid=th >= 0,
        tpot_valid=ph >= 0,
        dispatched=dispatched,
    )
    return n, info


def _plain_table(n: int) -> EndpointTable:
    table = EndpointTable(clock=lambda: 0.0)
    for i in range(n):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000))
    return table


@given(rows_and_info(), st.sampled_from(["least", "most"]))
def test_scorer_scores_one_partition(
    case: tuple[int, LatencyPredictionInfo], strategy: str
) -> None:
    n, info = case
    table = _plain_table(n)
    params = parse_params(LatencyScorer.Params, {"headroomSelectionStrategy": strategy}, "p")
    scorer = LatencyScorer("s", params, PluginHandle(table))
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(LATENCY_PREDICTION_INFO, info)
    out = np.zeros(n, dtype=np.float32)
    rows = np.arange(n, dtype=np.int32)
    scorer.score(cycle, Request("r", "m"), table, rows, out)
    assert ((out >= 0) & (out <= 1)).all()
    scored = out > 0
    assert scored.any()  # some partition is always non-empty and scores >= 0.01
    positive = (info.ttft_headroom_ms >= 0) & (info.tpot_headroom_ms >= 0)
    if positive.any():
        assert (scored == positive).all()
    else:
        idle = info.dispatched == 0
        if idle.any():
            assert (scored == idle).all()


@given(rows_and_info(), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_tier_filter_returns_an_ordered_subset(
    case: tuple[int, LatencyPredictionInfo], epsilon: float, seed: int
) -> None:
    n, info = case
    table = _plain_table(n)
    params = parse_params(SloHeadroomTierFilter.Params, {"epsilonExploreNeg": epsilon}, "p")
    tier = SloHeadroomTierFilter("t", params, PluginHandle(table))
    cycle = CycleState(np.random.default_rng(seed))
    cycle.write(LATENCY_PREDICTION_INFO, info)
    rows = np.arange(n, dtype=np.int32)
    kept = tier.filter(cycle, Request("r", "m"), table, rows)
    assert len(kept) > 0
    assert (np.diff(kept) > 0).all()
    positive = (info.ttft_headroom_ms >= 0) & (info.tpot_headroom_ms >= 0)
    assert positive[kept].all() or not positive[kept].any()


# ====================================================================== llm-d-router drift
def test_predict_in_prepare_data_is_rejected_naming_the_new_key() -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(PredictedLatencyProducer.Params, {"predictInPrepareData": True}, PATH)
    assert str(info.value) == (
        "plugins[0].parameters.predictInPrepareData: expected no 'predictInPrepareData' key: "
        "it was renamed 'predictInProduce' (llm-d-router), got True (bool)"
    )
    params = parse_params(
        PredictedLatencyProducer.Params,
        {"predictInProduce": False, "samplingMean": 5.0, "maxDecodeTokenSamplesForPrediction": 3},
        PATH,
    )
    assert params.predict_in_produce is False


@pytest.mark.parametrize(
    ("cls", "raw", "error"),
    [
        (
            PredictedLatencyProducer.Params,
            {"predictInProduce": "no"},
            r"predictInProduce: expected bool",
        ),
        (
            PredictedLatencyProducer.Params,
            {"useEncoderCacheFeatures": 1},
            r"useEncoderCacheFeatures: expected bool",
        ),
        (
            PredictedLatencyProducer.Params,
            {"inFlightLoadProducerName": 2},
            r"inFlightLoadProducerName: expected str",
        ),
        (
            LatencyScorer.Params,
            {"latencyPredictionInfoProducerName": 1},
            r"latencyPredictionInfoProducerName: expected str",
        ),
        (
            LatencyScorer.Params,
            {"prefixMatchInfoProducerName": []},
            r"prefixMatchInfoProducerName: expected str",
        ),
        (
            SloHeadroomTierFilter.Params,
            {"latencyPredictionInfoProducerName": 1.5},
            r"latencyPredictionInfoProducerName: expected str",
        ),
        (
            LatencySloAdmitter.Params,
            {"latencyPredictionInfoProducerName": None},
            r"latencyPredictionInfoProducerName: expected str",
        ),
        (LatencySloAdmitter.Params, {"threshold": 1}, r"unknown key 'threshold'"),
    ],
)
def test_llmd_parameter_errors(cls: type[Any], raw: dict[str, Any], error: str) -> None:
    with pytest.raises(ParameterError, match=error):
        parse_params(cls, raw, PATH)


def test_producer_references() -> None:
    raw = {
        "prefixMatchInfoProducerName": "precise",
        "inFlightLoadProducerName": "load",
        "encoderCacheMatchInfoProducerName": "mm",
    }
    p = parse_params(PredictedLatencyProducer.Params, raw, PATH)
    assert p.producer_references() == {
        "prefixMatchInfoProducerName": ("precise", PREFIX_CACHE_MATCH_INFO),
        "inFlightLoadProducerName": ("load", "InFlightLoad"),
    }  # the encoder producer only matters with useEncoderCacheFeatures
    p = parse_params(
        PredictedLatencyProducer.Params, {**raw, "useEncoderCacheFeatures": True}, PATH
    )
    assert p.producer_references()["encoderCacheMatchInfoProducerName"] == (
        "mm",
        MM_ENCODER_CACHE_MATCH_INFO,
    )
    named = {"latencyPredictionInfoProducerName": "plp"}
    classes: tuple[Any, ...] = (LatencyScorer.Params, SloHeadroomTierFilter.Params)
    for cls in (*classes, LatencySloAdmitter.Params):
        assert parse_params(cls, None, PATH).producer_references() == {}
        assert parse_params(cls, named, PATH).producer_references() == {
            "latencyPredictionInfoProducerName": ("plp", LATENCY_PREDICTION_INFO)
        }
    scorer = parse_params(LatencyScorer.Params, {"prefixMatchInfoProducerName": "x"}, PATH)
    assert scorer.producer_references() == {
        "prefixMatchInfoProducerName": ("x", PREFIX_CACHE_MATCH_INFO)
    }


def test_stability_is_beta() -> None:
    classes = (PredictedLatencyProducer, LatencyScorer, SloHeadroomTierFilter, LatencySloAdmitter)
    assert {c.stability for c in classes} == {"beta"}  # llm-d-router runner.go


def test_input_length_is_the_token_count() -> None:
    cycle = _cycle()
    request = Request("r", "m", prompt=b"x" * 400)  # 100 by the byte estimate
    assert input_tokens(cycle, request) == 100.0
    cycle.write(TOKENIZED_PROMPT, TokenizedRequest((np.arange(30, dtype=np.uint32),) * 2))
    assert input_tokens(cycle, request) == 60.0
    table = make_table(2)
    producer = _producer(table, [0.0])
    producer.prepare_request_data(cycle, request, table, _rows(0, 1))
    producer.pre_request(cycle, request, _result(table, 1))
    assert producer.inflight_prefill_tokens(1) == pytest.approx(60.0)


def _warm(producer: PredictedLatencyProducer, table: EndpointTable) -> None:
    producer.predictor = _FixedPredictor([100.0, 300.0], [10.0, 10.0])  # type: ignore[assignment]


def test_training_only_mode_publishes_no_prediction() -> None:
    table = make_table(2)
    producer = _producer(table, [0.0], predictInProduce=False)
    _warm(producer, table)
    cycle = _cycle()
    producer.prepare_request_data(cycle, Request("r", "m", headers=SLO), table, _rows(0, 1))
    info = read_latency_info(cycle)
    assert info is not None
    assert not info.has_prediction
    assert np.isnan(info.ttft_ms[:2]).all()
    producer.pre_request(cycle, Request("r", "m"), _result(table, 0))  # still tracks, trains
    assert producer.dispatched(0) == 1.0


def test_prediction_is_written_under_the_producers_own_key() -> None:
    table = make_table(2)
    producer = _producer(table, [0.0])
    _warm(producer, table)
    cycle = _cycle()
    producer.prepare_request_data(cycle, Request("r", "m", headers=SLO), table, _rows(0, 1))
    shared = cycle.read(LATENCY_PREDICTION_INFO)
    assert cycle.read("LatencyPredictionInfo/plp") is shared
    assert read_latency_info(cycle, "plp") is shared
    assert read_latency_info(cycle, "other") is shared  # falls back to the shared key
    assert isinstance(shared, LatencyPredictionInfo)
    np.testing.assert_array_equal(shared.ttft_headroom_ms[:2], [0.0, -200.0])


def _two_infos() -> CycleState:
    cycle = _cycle(_info([5, 5], [5, 5]))  # shared: both positive
    cycle.write("LatencyPredictionInfo/mine", _info([5, -5], [5, 5]))
    return cycle


def test_consumers_read_the_named_producer() -> None:
    table = make_table(2)
    named = {"latencyPredictionInfoProducerName": "mine"}
    tier = SloHeadroomTierFilter(
        "t",
        parse_params(SloHeadroomTierFilter.Params, {**named, "epsilonExploreNeg": 0.0}, PATH),
        PluginHandle(table),
    )
    assert tier.filter(_two_infos(), REQUEST, table, _rows(0, 1)).tolist() == [0]
    assert _tier(0.0).filter(_two_infos(), REQUEST, table, _rows(0, 1)).tolist() == [0, 1]
    scorer = LatencyScorer(
        "s", parse_params(LatencyScorer.Params, named, PATH), PluginHandle(table)
    )
    out = np.zeros(2, dtype=np.float32)
    scorer.score(_two_infos(), REQUEST, table, _rows(0, 1), out)
    assert out.tolist() == [0.5099999904632568, 0.0]  # only row 0 is positive: 0.5 -> 51/100
    admitter = LatencySloAdmitter(
        "a", parse_params(LatencySloAdmitter.Params, named, PATH), PluginHandle(table)
    )
    busy = make_table(2, running=[1, 1], kv_usage_frac=[0.5, 0.5])
    cycle = _cycle(_info([5, 5], [5, 5]))
    cycle.write("LatencyPredictionInfo/mine", _info([-5, -5], [5, 5]))
    sheddable = Request("r", "m", priority=-1, headers=SLO)
    _admitter().admit_request(cycle, sheddable, busy, _rows(0, 1))  # shared: valid
    with pytest.raises(AdmissionDeniedError):
        admitter.admit_request(cycle, sheddable, busy, _rows(0, 1))


def test_scorer_composite_reads_the_named_prefix_producer() -> None:
    table = make_table(2, waiting=[0, 0], kv_usage_frac=[0.0, 0.0])
    raw = {"prefixMatchInfoProducerName": "precise", "compositeKVWeight": 0.0}
    raw["compositeQueueWeight"] = 0.0
    scorer = LatencyScorer("s", parse_params(LatencyScorer.Params, raw, PATH), PluginHandle(table))
    cycle = _cycle()
    cycle.write(PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo(np.array([4.0, 4.0]), 4, 16))
    cycle.write("PrefixCacheMatchInfo/precise", PrefixCacheMatchInfo(np.array([1.0, 3.0]), 4, 16))
    out = np.zeros(2, dtype=np.float32)
    scorer.score(cycle, REQUEST, table, _rows(0, 1), out)
    np.testing.assert_array_equal(out, np.asarray([0.25, 0.75], dtype=np.float32))


def test_encoder_cache_features() -> None:
    table = make_table(3)
    plain = _producer(table, [0.0])
    assert "MultiModalEncoderCacheMatchInfo" not in plain.consumes
    producer = _producer(table, [0.0], useEncoderCacheFeatures=True)
    assert MM_ENCODER_CACHE_MATCH_INFO in producer.consumes  # ordering after that producer
    assert MM_ENCODER_CACHE_MATCH_INFO not in PredictedLatencyProducer.consumes
    cycle = _cycle()
    cycle.write(MM_ENCODER_CACHE_MATCH_INFO, EncoderCacheMatchInfo(np.array([0.0, 2.0, 3.0]), 3))
    producer.prepare_request_data(cycle, REQUEST, table, _rows(2, 0))
    _, x = cycle.read("predicted-latency-producer/plp")
    assert x.shape == (2, 11)
    np.testing.assert_array_equal(x[:, 9:], [[3.0, 3.0], [3.0, 0.0]])
    text_only = _cycle()  # no encoder match: both features 0
    producer.prepare_request_data(text_only, REQUEST, table, _rows(1))
    np.testing.assert_array_equal(
        text_only.read("predicted-latency-producer/plp")[1][:, 9:], [[0, 0]]
    )
    # the wider model trains and predicts on these rows
    result = _result(table, 2)
    producer.pre_request(cycle, REQUEST, result)
    end = Response("r", is_end_of_stream=True, time_s=0.5)
    producer.response_complete(REQUEST, end, result)
    assert producer.predictor.ttft.num_samples == 1


def test_encoder_cache_features_bring_their_default_producer() -> None:
    # useEncoderCacheFeatures makes this instance consume the encoder-cache match, so
    # config loading creates mm-embeddings-cache-producer (and only then).
    from inference_sched.framework.config import load_config

    base = "plugins:\n- type: predicted-latency-producer\n{params}- type: latency-scorer\n"
    on = load_config(base.format(params="  parameters: {useEncoderCacheFeatures: true}\n"))
    off = load_config(base.format(params=""))
    assert on.plugin("mm-embeddings-cache-producer").is_auto
    assert "mm-embeddings-cache-producer" not in [p.name for p in off.plugins]
