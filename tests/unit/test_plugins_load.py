"""Load scorers and the in-flight accounting (GIE and llm-d; docs/plugins/)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
)
from inference_sched.params import NoParams, parse_params
from inference_sched.plugins.load import (
    IN_FLIGHT_LOAD,
    ActiveRequestScorer,
    InFlightLoad,
    InflightLoadProducer,
    KvCacheUtilizationScorer,
    LoadAwareScorer,
    QueueScorer,
    RunningRequestsSizeScorer,
    TokenLoadScorer,
    estimate_tokens,
)
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

NAN = math.nan
PATH = "plugins[0].parameters"


def _make(cls: Any, table: EndpointTable, raw: dict[str, Any] | None = None) -> Any:
    return cls("p", parse_params(cls.Params, raw, PATH), PluginHandle(table))


def _score(plugin: Any, table: EndpointTable, candidates: list[int]) -> np.ndarray:
    rows = np.asarray(candidates, dtype=np.int32)
    out = np.zeros(len(rows), dtype=np.float32)
    request = Request("r", "m")
    plugin.score(CycleState(np.random.default_rng(0)), request, table, rows, out)
    return out


def _expect(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_array_equal(actual, np.asarray(expected, dtype=np.float32))


# ---------------------------------------------------------------- metric scorers
MIN_MAX_CASES = [
    pytest.param([0.0, 5.0, 10.0], [0, 1, 2], [1.0, 0.5, 0.0], id="spread"),
    pytest.param([2.0, 2.0, 8.0, 4.0], [0, 1, 2, 3], [1.0, 1.0, 0.0, 0.6666667], id="ties"),
    pytest.param([7.0], [0], [1.0], id="single"),
    pytest.param([3.0, 3.0, 3.0], [0, 1, 2], [1.0, 1.0, 1.0], id="all-equal"),
    pytest.param([100.0, 1.0, 50.0, 3.0, 0.0], [3, 1, 4], [0.0, 0.6666667, 1.0], id="subset"),
    pytest.param([NAN, 2.0, 4.0], [0, 1, 2], [NAN, 1.0, 0.0], id="nan-passes-through"),
]


@pytest.mark.parametrize(("values", "candidates", "expected"), MIN_MAX_CASES)
def test_queue_scorer(values: list[float], candidates: list[int], expected: list[float]) -> None:
    table = make_table(len(values), waiting=values)
    _expect(_score(_make(QueueScorer, table), table, candidates), expected)


@pytest.mark.parametrize(("values", "candidates", "expected"), MIN_MAX_CASES)
def test_running_requests_size_scorer(
    values: list[float], candidates: list[int], expected: list[float]
) -> None:
    table = make_table(len(values), running=values)
    _expect(_score(_make(RunningRequestsSizeScorer, table), table, candidates), expected)


def test_queue_scorer_ignores_running_and_vice_versa() -> None:
    table = make_table(2, waiting=[0.0, 4.0], running=[4.0, 0.0])
    _expect(_score(_make(QueueScorer, table), table, [0, 1]), [1.0, 0.0])
    _expect(_score(_make(RunningRequestsSizeScorer, table), table, [0, 1]), [0.0, 1.0])


@pytest.mark.parametrize(
    ("values", "candidates", "expected"),
    [
        pytest.param([0.25, 1.0, 0.0], [0, 1, 2], [0.75, 0.0, 1.0], id="fractions"),
        pytest.param([0.5, 0.5], [0, 1], [0.5, 0.5], id="ties"),
        pytest.param([0.9, 0.1, 0.3], [2, 0], [0.7, 0.1], id="subset"),
        pytest.param([1.25], [0], [-0.25], id="over-full-unclamped"),
        pytest.param([NAN, 0.5], [0, 1], [NAN, 0.5], id="nan-passes-through"),
    ],
)
def test_kv_cache_utilization_scorer(
    values: list[float], candidates: list[int], expected: list[float]
) -> None:
    table = make_table(len(values), kv_usage_frac=values)
    _expect(_score(_make(KvCacheUtilizationScorer, table), table, candidates), expected)


@pytest.mark.parametrize(
    ("raw", "tokens", "candidates", "expected"),
    [
        pytest.param(
            None,
            [0.0, 2_097_152.0, 4_194_304.0, 8_388_608.0],
            [0, 1, 2, 3],
            [1.0, 0.5, 0.0, 0.0],
            id="default-threshold",
        ),
        pytest.param(
            {"queueThresholdTokens": 100},
            [25.0, 100.0, 0.0],
            [0, 1, 2],
            [0.75, 0.0, 1.0],
            id="custom-threshold",
        ),
        pytest.param({"queueThresholdTokens": 100}, [50.0], [0], [0.5], id="single"),
        pytest.param(
            {"queueThresholdTokens": 100}, [10.0, 90.0, 40.0], [2, 0], [0.6, 0.9], id="subset"
        ),
        pytest.param({"queueThresholdTokens": 100}, [NAN, 0.0], [0, 1], [NAN, 1.0], id="nan"),
    ],
)
def test_token_load_scorer(
    raw: dict[str, Any] | None, tokens: list[float], candidates: list[int], expected: list[float]
) -> None:
    table = make_table(len(tokens))
    table.inflight_tokens[: len(tokens)] = tokens
    _expect(_score(_make(TokenLoadScorer, table, raw), table, candidates), expected)


@pytest.mark.parametrize(
    ("raw", "waiting", "candidates", "expected"),
    [
        pytest.param(
            None, [0.0, 64.0, 128.0, 256.0], [0, 1, 2, 3], [0.5, 0.25, 0.0, 0.0], id="default"
        ),
        pytest.param({"threshold": 10}, [5.0, 0.0], [0, 1], [0.25, 0.5], id="custom"),
        pytest.param(None, [32.0, 32.0], [0, 1], [0.375, 0.375], id="ties"),
        pytest.param(None, [0.0, 96.0, 64.0], [2, 1], [0.25, 0.125], id="subset"),
        pytest.param(None, [NAN, 0.0], [0, 1], [NAN, 0.5], id="nan"),
    ],
)
def test_load_aware_scorer(
    raw: dict[str, Any] | None, waiting: list[float], candidates: list[int], expected: list[float]
) -> None:
    table = make_table(len(waiting), waiting=waiting)
    _expect(_score(_make(LoadAwareScorer, table, raw), table, candidates), expected)


@pytest.mark.parametrize(
    ("raw", "requests", "candidates", "expected"),
    [
        pytest.param(None, [0.0, 2.0, 4.0], [0, 1, 2], [1.0, 0.5, 0.0], id="default"),
        pytest.param({"idleThreshold": 2}, [0.0, 2.0, 4.0], [0, 1, 2], [1.0, 1.0, 0.0], id="idle"),
        pytest.param(
            {"maxBusyScore": 0.5}, [0.0, 1.0, 4.0], [0, 1, 2], [1.0, 0.375, 0.0], id="max-busy"
        ),
        pytest.param(
            {"idleThreshold": 0, "maxBusyScore": 0.0},
            [0.0, 3.0, 1.0],
            [0, 1, 2],
            [1.0, 0.0, 0.0],
            id="binary-mode",
        ),
        pytest.param(None, [0.0, 0.0], [0, 1], [1.0, 1.0], id="all-idle"),
        pytest.param(None, [3.0], [0], [0.0], id="single-busy"),
        pytest.param(
            None, [9.0, 1.0, 3.0, 2.0], [3, 1, 2], [0.33333334, 0.6666667, 0.0], id="subset"
        ),
    ],
)
def test_active_request_scorer(
    raw: dict[str, Any] | None, requests: list[float], candidates: list[int], expected: list[float]
) -> None:
    table = make_table(len(requests))
    table.inflight_requests[: len(requests)] = requests
    _expect(_score(_make(ActiveRequestScorer, table, raw), table, candidates), expected)


def test_scorers_read_columns_after_the_table_grew() -> None:
    table = make_table(2, waiting=[1.0, 3.0])
    scorer = _make(QueueScorer, table)
    for i in range(2, 40):  # past the initial capacity: columns are reallocated
        table.add(Endpoint(f"e{i}", f"10.0.1.{i}", 8000))
    table.update_metrics([39], waiting=0.0)
    table.update_metrics(list(range(2, 39)), waiting=2.0)
    _expect(_score(scorer, table, [0, 1, 39]), [0.6666667, 0.0, 1.0])


def test_metadata() -> None:
    assert QueueScorer.type == "queue-scorer"
    assert {c.category for c in (QueueScorer, TokenLoadScorer, LoadAwareScorer)} == {"Distribution"}
    assert TokenLoadScorer.consumes == frozenset({"InFlightLoad"})
    assert ActiveRequestScorer.consumes == frozenset({"InFlightLoad"})
    assert InflightLoadProducer.produces == frozenset({"InFlightLoad"})
    assert registry.default_producer_for("InFlightLoad") == "inflight-load-producer"
    assert registry.kinds_of(InflightLoadProducer) == (
        "data-producer",
        "pre-request",
        "response-streaming",
        "response-complete",
    )


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        pytest.param(
            TokenLoadScorer,
            {"queueThresholdTokens": 0},
            r"^plugins\[0\]\.parameters\.queueThresholdTokens: expected int >= 1, got 0 \(int\)$",
            id="token-threshold-zero",
        ),
        pytest.param(
            TokenLoadScorer,
            {"queueThresholdTokens": "x"},
            r"queueThresholdTokens: expected int, got 'x' \(str\)$",
            id="token-threshold-str",
        ),
        pytest.param(
            TokenLoadScorer,
            {"queueThresholdTokens": True},
            r"queueThresholdTokens: expected int, got True \(bool\)$",
            id="token-threshold-bool",
        ),
        pytest.param(
            LoadAwareScorer,
            {"threshold": -1},
            r"^plugins\[0\]\.parameters\.threshold: expected int >= 1, got -1 \(int\)$",
            id="load-aware-negative",
        ),
        pytest.param(
            ActiveRequestScorer,
            {"idleThreshold": -1},
            r"\.idleThreshold: expected int >= 0, got -1 \(int\)$",
            id="idle-negative",
        ),
        pytest.param(
            ActiveRequestScorer,
            {"maxBusyScore": 1.5},
            r"\.maxBusyScore: expected a number in \[0\.0, 1\.0\], got 1\.5 \(float\)$",
            id="max-busy-out-of-range",
        ),
        pytest.param(
            ActiveRequestScorer,
            {"idleTreshold": 1},
            r"^plugins\[0\]\.parameters: unknown key 'idleTreshold' \(did you mean "
            r"'idleThreshold'\?\)",
            id="typo",
        ),
        pytest.param(
            QueueScorer,
            {"threshold": 1},
            r"^plugins\[0\]\.parameters: unknown key 'threshold'; known keys: none$",
            id="no-params",
        ),
    ],
)
def test_params_rejected(cls: Any, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(cls.Params, raw, PATH)


def test_active_request_timeout_is_deprecated_and_ignored() -> None:
    warnings: list[str] = []
    params = parse_params(
        ActiveRequestScorer.Params, {"requestTimeout": "2m"}, PATH, warn=warnings.append
    )
    assert warnings == [
        "plugins[0].parameters.requestTimeout: deprecated and ignored: inflight-load-producer "
        "tracks request lifetimes; remove the key"
    ]
    assert params.request_timeout == "2m"
    assert (params.idle_threshold, params.max_busy_score) == (0, 1.0)


def test_defaults() -> None:
    assert parse_params(TokenLoadScorer.Params, None, PATH).queue_threshold_tokens == 4_194_304
    assert parse_params(LoadAwareScorer.Params, None, PATH).threshold == 128


# ---------------------------------------------------------------- token estimate
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"request_size_bytes": 400}, 100 + 150, id="size"),
        pytest.param({"request_size_bytes": 3}, 1 + 2, id="size-floor-1"),
        pytest.param({"request_size_bytes": 12}, 3 + 5, id="size-go-rounds-4.5-up"),
        pytest.param({"request_size_bytes": 20}, 5 + 8, id="size-7.5"),
        pytest.param(
            {"request_size_bytes": 40, "token_ids": [1, 2, 3]}, 10 + 15, id="size-beats-ids"
        ),
        pytest.param({"token_ids": list(range(7))}, 7 + 11, id="token-ids-10.5-up"),
        pytest.param({"token_ids": []}, 0, id="empty-token-ids"),
        pytest.param({"prompt": b"x" * 10}, 3 + 5, id="prompt-2.5-up"),
        pytest.param({"prompt": b"x"}, 1 + 2, id="prompt-floor-1"),
        pytest.param({"prompt": b""}, 1 + 2, id="empty-prompt"),
        pytest.param({"prompt": b"x" * 401}, 100 + 150, id="prompt-100.25"),
        pytest.param({}, 0, id="nothing-known"),
    ],
)
def test_estimate_tokens(kwargs: dict[str, Any], expected: int) -> None:
    assert estimate_tokens(Request("r", "m", **kwargs)) == expected


# ---------------------------------------------------------------- in-flight lifecycle
def _result(table: EndpointTable, **rows: int | None) -> SchedulingResult:
    results: dict[str, ProfileRunResult | None] = {}
    for profile, row in rows.items():
        if row is None:
            results[profile] = None
        elif row < 0:
            results[profile] = ProfileRunResult((), (), ())
        else:
            results[profile] = ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))
    return SchedulingResult(results, next(iter(rows)))


class _Flow:
    """Drives one producer through request lifecycles."""

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self.table = make_table(n)
        self.producer = InflightLoadProducer(
            "inflight-load-producer", NoParams(), PluginHandle(self.table)
        )

    def start(self, request_id: str, size: int, **rows: int | None) -> tuple[Request, Any]:
        request = Request(request_id, "m", request_size_bytes=size)
        result = _result(self.table, **rows)
        self.producer.pre_request(CycleState(np.random.default_rng(0)), request, result)
        return request, result

    def chunk(self, request: Request, result: SchedulingResult, *, first: bool = False) -> None:
        response = Response(request.request_id, is_start_of_stream=first)
        self.producer.response_streaming(request, response, result)

    def complete(self, request: Request, result: SchedulingResult) -> None:
        response = Response(request.request_id, is_end_of_stream=True)
        self.producer.response_complete(request, response, result)

    def load(self) -> list[tuple[float, float]]:
        return list(
            zip(
                self.table.inflight_requests[: self.n].tolist(),
                self.table.inflight_tokens[: self.n].tolist(),
                strict=True,
            )
        )


def test_inflight_single_profile_lifecycle() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 400, default=1)  # estimate 250
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.chunk(request, result, first=True)  # not a prefill profile: still held
    flow.chunk(request, result)
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_prefill_released_on_first_chunk() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 400, decode=1, prefill=2)
    assert flow.load() == [(0, 0), (1, 250), (1, 250)]
    flow.chunk(request, result, first=True)
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.chunk(request, result, first=True)  # a repeated start flag releases nothing more
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_prefill_held_until_complete_without_chunks() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 400, decode=1, prefill=2)
    flow.complete(request, result)  # e.g. the upstream failed before any body
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_same_endpoint_in_two_profiles() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 400, decode=0, prefill=0)
    assert flow.load()[0] == (2, 500)
    flow.chunk(request, result, first=True)
    assert flow.load()[0] == (1, 250)
    flow.complete(request, result)
    assert flow.load()[0] == (0, 0)


def test_inflight_overlapping_requests_and_double_complete() -> None:
    flow = _Flow()
    r1, res1 = flow.start("r1", 400, default=0)  # 250 tokens
    r2, res2 = flow.start("r2", 40, default=0)  # 10 + 15 = 25 tokens
    assert flow.load()[0] == (2, 275)
    flow.complete(r1, res1)
    assert flow.load()[0] == (1, 25)
    flow.complete(r1, res1)  # harmless: r2's share stays
    assert flow.load()[0] == (1, 25)
    flow.complete(r2, res2)
    assert flow.load()[0] == (0, 0)
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_failed_or_empty_profiles_are_skipped() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 400, default=2, failed=None, empty=-1)
    assert flow.load() == [(0, 0), (0, 0), (1, 250)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_never_below_zero() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 400, default=0)
    flow.table.inflight_requests[0] = 0.0  # something else already lowered the counters
    flow.table.inflight_tokens[0] = 100.0
    flow.complete(request, result)
    assert flow.load()[0] == (0, 0)


def test_inflight_endpoint_removed_mid_request_and_row_reused() -> None:
    flow = _Flow()
    r1, res1 = flow.start("r1", 400, decode=1, prefill=2)
    assert flow.table.remove("e1")
    assert flow.producer.num_tracked_requests() == 1  # the prefill hold on e2 remains
    handle = flow.table.add(Endpoint("e9", "10.0.0.9", 8000))
    assert handle.row == 1  # the freed row is reused
    r2, res2 = flow.start("r2", 40, default=1)
    assert flow.load() == [(0, 0), (1, 25), (1, 250)]
    flow.complete(r1, res1)  # must not touch the new endpoint's row
    assert flow.load() == [(0, 0), (1, 25), (0, 0)]
    flow.complete(r2, res2)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_pick_removed_before_pre_request_is_skipped() -> None:
    flow = _Flow()
    result = _result(flow.table, default=1)
    flow.table.remove("e1")
    request = Request("r1", "m", request_size_bytes=400)
    flow.producer.pre_request(CycleState(np.random.default_rng(0)), request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_pick_whose_row_was_reused_before_pre_request_is_skipped() -> None:
    flow = _Flow()
    result = _result(flow.table, default=1)  # picked e1 at row 1
    flow.table.remove("e1")
    flow.table.add(Endpoint("e9", "10.0.0.9", 8000))  # reuses row 1
    request = Request("r1", "m", request_size_bytes=400)
    flow.producer.pre_request(CycleState(np.random.default_rng(0)), request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]  # e9 is not charged for e1's request


def test_inflight_requests_sharing_an_id_are_released_separately() -> None:
    flow = _Flow()
    r1, res1 = flow.start("same-id", 400, default=0)  # a client retry reuses x-request-id
    r2, res2 = flow.start("same-id", 400, default=1)
    assert flow.load() == [(1, 250), (1, 250), (0, 0)]
    flow.complete(r1, res1)
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.complete(r2, res2)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_request_without_estimate_counts_the_request() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 0, default=0)
    assert flow.load()[0] == (1, 0)
    flow.complete(request, result)
    assert flow.load()[0] == (0, 0)


def test_inflight_counts_feed_the_scorers() -> None:
    flow = _Flow()
    flow.start("r1", 400, default=0)
    flow.start("r2", 400, default=0)
    flow.start("r3", 400, default=1)
    token_scorer = _make(TokenLoadScorer, flow.table, {"queueThresholdTokens": 1000})
    _expect(_score(token_scorer, flow.table, [0, 1, 2]), [0.5, 0.75, 1.0])
    active_scorer = _make(ActiveRequestScorer, flow.table)
    _expect(_score(active_scorer, flow.table, [0, 1, 2]), [0.0, 0.5, 1.0])


def test_prepare_request_data_publishes_live_columns() -> None:
    flow = _Flow()
    cycle = CycleState(np.random.default_rng(0))
    candidates = flow.table.candidates()
    flow.producer.prepare_request_data(cycle, Request("r", "m"), flow.table, candidates)
    load = cycle.read(IN_FLIGHT_LOAD)
    assert isinstance(load, InFlightLoad)
    for i in range(3, 40):  # growth reallocates the columns; the data follows them
        flow.table.add(Endpoint(f"e{i}", "10.0.1.1", 8000))
    flow.start("r1", 400, default=39)
    assert load.requests is flow.table.inflight_requests
    assert load.tokens is flow.table.inflight_tokens
    assert (load.requests[39], load.tokens[39]) == (1.0, 250.0)
