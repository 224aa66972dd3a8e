"""Load scorers and the in-flight accounting (GIE and llm-d; docs/plugins/)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.contracts import (
    IN_FLIGHT_LOAD,
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    InFlightLoad,
    PrefixCacheMatchInfo,
    TokenizedRequest,
)
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
    ActiveRequestScorer,
    InflightLoadProducer,
    InflightLoadProducerParams,
    KvCacheUtilizationScorer,
    LoadAwareScorer,
    QueueScorer,
    RunningRequestsSizeScorer,
    TokenLoadScorer,
    UncachedRequestTokens,
    client_max_output_tokens,
    estimate_output_tokens,
    estimate_tokens,
    read_uncached_tokens,
    uncached_input_tokens,
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
    assert InflightLoadProducer.produces == frozenset({"InFlightLoad", "UncachedRequestTokens"})
    assert InflightLoadProducer.consumes == frozenset({"TokenizedPrompt"})
    classes: tuple[Any, ...] = (QueueScorer, RunningRequestsSizeScorer, KvCacheUtilizationScorer)
    classes += (LoadAwareScorer, TokenLoadScorer, ActiveRequestScorer, InflightLoadProducer)
    assert {c.stability for c in classes} == {"beta"}  # llm-d-router runner.go
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


def _tokenized(num_tokens: int) -> TokenizedRequest:
    return TokenizedRequest((np.arange(num_tokens, dtype=np.uint32),))


class _Flow:
    """Drives one producer through request lifecycles (requests of ``tokens`` tokens)."""

    def __init__(self, n: int = 3, raw: dict[str, Any] | None = None) -> None:
        self.n = n
        self.table = make_table(n)
        params: Any = (
            NoParams() if raw is None else parse_params(InflightLoadProducerParams, raw, PATH)
        )
        self.producer = InflightLoadProducer(
            "inflight-load-producer", params, PluginHandle(self.table)
        )

    def start(
        self, request_id: str, tokens: int, body: dict[str, Any] | None = None, **rows: int | None
    ) -> tuple[Request, Any]:
        request = Request(request_id, "m", body=body)
        result = _result(self.table, **rows)
        cycle = CycleState(np.random.default_rng(0))
        if tokens:
            cycle.write(TOKENIZED_PROMPT, _tokenized(tokens))
        self.producer.pre_request(cycle, request, result)
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
    request, result = flow.start("r1", 250, default=1)
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.chunk(request, result, first=True)  # prefill done: the tokens go, the request stays
    flow.chunk(request, result)
    assert flow.load() == [(0, 0), (1, 0), (0, 0)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_prefill_released_on_first_chunk() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 250, decode=1, prefill=2)
    assert flow.load() == [(0, 0), (1, 250), (1, 250)]
    flow.chunk(request, result, first=True)
    assert flow.load() == [(0, 0), (1, 0), (0, 0)]
    flow.chunk(request, result, first=True)  # a repeated start flag releases nothing more
    assert flow.load() == [(0, 0), (1, 0), (0, 0)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_prefill_held_until_complete_without_chunks() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 250, decode=1, prefill=2)
    flow.complete(request, result)  # e.g. the upstream failed before any body
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_same_endpoint_in_two_profiles() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 250, decode=0, prefill=0)
    assert flow.load()[0] == (2, 500)
    flow.chunk(request, result, first=True)
    assert flow.load()[0] == (1, 0)
    flow.complete(request, result)
    assert flow.load()[0] == (0, 0)


def test_inflight_overlapping_requests_and_double_complete() -> None:
    flow = _Flow()
    r1, res1 = flow.start("r1", 250, default=0)  # 250 tokens
    r2, res2 = flow.start("r2", 25, default=0)
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
    request, result = flow.start("r1", 250, default=2, failed=None, empty=-1)
    assert flow.load() == [(0, 0), (0, 0), (1, 250)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_never_below_zero() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 250, default=0)
    flow.table.inflight_requests[0] = 0.0  # something else already lowered the counters
    flow.table.inflight_tokens[0] = 100.0
    flow.complete(request, result)
    assert flow.load()[0] == (0, 0)


def test_inflight_endpoint_removed_mid_request_and_row_reused() -> None:
    flow = _Flow()
    r1, res1 = flow.start("r1", 250, decode=1, prefill=2)
    assert flow.table.remove("e1")
    assert flow.producer.num_tracked_requests() == 1  # the prefill hold on e2 remains
    handle = flow.table.add(Endpoint("e9", "10.0.0.9", 8000))
    assert handle.row == 1  # the freed row is reused
    r2, res2 = flow.start("r2", 25, default=1)
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
    request = Request("r1", "m")
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(TOKENIZED_PROMPT, _tokenized(250))
    flow.producer.pre_request(cycle, request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_pick_whose_row_was_reused_before_pre_request_is_skipped() -> None:
    flow = _Flow()
    result = _result(flow.table, default=1)  # picked e1 at row 1
    flow.table.remove("e1")
    flow.table.add(Endpoint("e9", "10.0.0.9", 8000))  # reuses row 1
    request = Request("r1", "m")
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(TOKENIZED_PROMPT, _tokenized(250))
    flow.producer.pre_request(cycle, request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]  # e9 is not charged for e1's request


def test_inflight_requests_sharing_an_id_are_released_separately() -> None:
    flow = _Flow()
    r1, res1 = flow.start("same-id", 250, default=0)  # a client retry reuses x-request-id
    r2, res2 = flow.start("same-id", 250, default=1)
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
    flow.start("r1", 250, default=0)
    flow.start("r2", 250, default=0)
    flow.start("r3", 250, default=1)
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
    flow.start("r1", 250, default=39)
    assert load.requests is flow.table.inflight_requests
    assert load.tokens is flow.table.inflight_tokens
    assert (load.requests[39], load.tokens[39]) == (1.0, 250.0)


# ---------------------------------------------------------------- llm-d-router token estimate
def _prefix(match: list[float], total: int, block: int = 64) -> PrefixCacheMatchInfo:
    return PrefixCacheMatchInfo(np.asarray(match, dtype=np.float64), total, block)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(None, None, id="no-body"),
        pytest.param({}, None, id="no-key"),
        pytest.param({"max_tokens": 50}, 50, id="max-tokens"),
        pytest.param({"max_completion_tokens": 20, "max_tokens": 50}, 20, id="completion-first"),
        pytest.param({"max_output_tokens": 7}, 7, id="responses-api"),
        pytest.param({"max_tokens": 0}, 0, id="zero-applies"),
        pytest.param({"max_tokens": -1}, None, id="negative-ignored"),
        pytest.param({"max_tokens": True, "max_output_tokens": 9}, 9, id="bool-skipped"),
        pytest.param({"max_tokens": "12"}, None, id="string-skipped"),
    ],
)
def test_client_max_output_tokens(body: dict[str, Any] | None, expected: int | None) -> None:
    assert client_max_output_tokens(Request("r", "m", body=body)) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param((100, 1.5, None, None), 150, id="ratio"),
        pytest.param((5, 1.5, None, None), 8, id="go-rounds-7.5-up"),
        pytest.param((3, 0.5, None, None), 2, id="go-rounds-1.5-up"),
        pytest.param((100, 1.5, 40, None), 40, id="client-cap"),
        pytest.param((100, 1.5, None, 30), 30, id="operator-cap"),
        pytest.param((100, 1.5, 40, 30), 30, id="both-caps"),
        pytest.param((100, 1.5, 0, None), 0, id="client-zero"),
        pytest.param((0, 1.5, None, None), 0, id="no-input"),
        pytest.param((100, 0.0, None, None), 0, id="ratio-zero"),
    ],
)
def test_estimate_output_tokens(args: tuple[Any, ...], expected: int) -> None:
    assert estimate_output_tokens(*args) == expected


@pytest.mark.parametrize(
    ("info", "input_tokens", "rows", "expected"),
    [
        pytest.param(None, 300, [0, 1], [300, 300], id="no-info"),
        pytest.param(None, -5, [0], [0], id="negative-input"),
        # 4 blocks of 64 = 256 hashed tokens; 300 input: tail of 44.
        pytest.param(_prefix([0, 2, 4], 4), 300, [0, 1, 2], [300, 172, 44], id="match-and-tail"),
        pytest.param(_prefix([5], 4), 200, [0], [0], id="over-match-clamps"),
        pytest.param(_prefix([1, 1], 2, block=0), 77, [1], [77], id="no-block-size"),
        pytest.param(_prefix([3], 4), 256, [0, 5], [64, 256], id="row-beyond-match-array"),
    ],
)
def test_uncached_input_tokens(
    info: PrefixCacheMatchInfo | None, input_tokens: int, rows: list[int], expected: list[float]
) -> None:
    got = uncached_input_tokens(info, input_tokens, np.asarray(rows, dtype=np.int32))
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float64))


@given(
    total=st.integers(0, 64),
    block=st.sampled_from([1, 16, 64]),
    input_tokens=st.integers(0, 5000),
    matched=st.lists(st.integers(0, 64), min_size=1, max_size=8),
)
def test_uncached_tokens_bounds(
    total: int, block: int, input_tokens: int, matched: list[int]
) -> None:
    match = np.minimum(np.asarray(matched, dtype=np.float64), total)
    rows = np.arange(len(matched), dtype=np.int32)
    got = uncached_input_tokens(_prefix(list(match), total, block), input_tokens, rows)
    hashed = total * block
    # Every endpoint computes the unmatched blocks plus the tail the index did not hash.
    np.testing.assert_array_equal(got, (total - match) * block + max(input_tokens - hashed, 0))
    assert (got >= 0).all()
    assert (got <= max(input_tokens, hashed)).all()
    assert (np.diff(got[np.argsort(match, kind="stable")]) <= 0).all()  # more match, fewer


def _prepared(
    raw: dict[str, Any] | None, tokens: int, body: dict[str, Any] | None = None, **keys: Any
) -> tuple[CycleState, InflightLoadProducer]:
    table = make_table(3)
    producer = _make(InflightLoadProducer, table, raw)
    cycle = CycleState(np.random.default_rng(0))
    if tokens:
        cycle.write(TOKENIZED_PROMPT, _tokenized(tokens))
    for key, value in keys.items():
        cycle.write(key.replace("__", "/"), value)
    producer.prepare_request_data(cycle, Request("r", "m", body=body), table, table.candidates())
    return cycle, producer


def test_producer_writes_uncached_tokens_under_both_keys() -> None:
    cycle, _ = _prepared(None, 300, PrefixCacheMatchInfo=_prefix([0, 2, 4], 4))
    shared = read_uncached_tokens(cycle)
    assert isinstance(shared, UncachedRequestTokens)
    assert (shared.input_tokens, shared.output_tokens) == (300, 0)
    rows = np.arange(3, dtype=np.int32)
    np.testing.assert_array_equal(shared.tokens(rows), [300.0, 172.0, 44.0])
    assert cycle.read("UncachedRequestTokens/p") is shared
    assert read_uncached_tokens(cycle, "p") is shared


def test_producer_without_tokenized_prompt_reads_input_zero() -> None:
    cycle, _ = _prepared(None, 0)
    estimate = read_uncached_tokens(cycle)
    assert estimate is not None
    assert estimate.input_tokens == 0
    np.testing.assert_array_equal(estimate.tokens(np.arange(3, dtype=np.int32)), [0.0, 0.0, 0.0])
    # The formula still charges the unmatched hashed blocks (llm-d-router does the same).
    cycle, _ = _prepared(None, 0, PrefixCacheMatchInfo=_prefix([0, 2, 4], 4))
    estimate = read_uncached_tokens(cycle)
    assert estimate is not None
    np.testing.assert_array_equal(estimate.tokens(np.arange(3, dtype=np.int32)), [256, 128, 0])


def test_producer_reads_the_named_prefix_producer() -> None:
    cycle, _ = _prepared(
        {"prefixMatchInfoProducerName": "precise"},
        256,
        PrefixCacheMatchInfo=_prefix([4, 4, 4], 4),
        PrefixCacheMatchInfo__precise=_prefix([0, 1, 3], 4),
    )
    estimate = read_uncached_tokens(cycle)
    assert estimate is not None
    np.testing.assert_array_equal(estimate.tokens(np.arange(3, dtype=np.int32)), [256, 192, 64])
    # A named producer that wrote only the shared key is read there.
    cycle, _ = _prepared(
        {"prefixMatchInfoProducerName": "precise"}, 256, PrefixCacheMatchInfo=_prefix([4, 0, 2], 4)
    )
    estimate = read_uncached_tokens(cycle)
    assert estimate is not None
    np.testing.assert_array_equal(estimate.tokens(np.arange(3, dtype=np.int32)), [0, 256, 128])


def test_prefix_match_written_after_the_producer_is_still_read() -> None:
    cycle, _ = _prepared(None, 300)
    cycle.write(PREFIX_CACHE_MATCH_INFO, _prefix([0, 2, 4], 4))  # a later producer
    estimate = read_uncached_tokens(cycle)
    assert estimate is not None
    np.testing.assert_array_equal(estimate.tokens(np.arange(3, dtype=np.int32)), [300, 172, 44])


@pytest.mark.parametrize(
    ("raw", "body", "expected_output"),
    [
        pytest.param({"addEstimatedOutputTokens": True}, None, 150, id="ratio-1.5"),
        pytest.param({"addEstimatedOutputTokens": True, "outputRatio": 0.25}, None, 25, id="ratio"),
        pytest.param({"addEstimatedOutputTokens": True}, {"max_tokens": 60}, 60, id="client-cap"),
        pytest.param(
            {"addEstimatedOutputTokens": True, "maxEstimatedOutputTokens": 10},
            {"max_tokens": 60},
            10,
            id="operator-cap",
        ),
        pytest.param({"outputRatio": 3.0}, None, 0, id="flag-off"),
    ],
)
def test_producer_output_estimate(
    raw: dict[str, Any], body: dict[str, Any] | None, expected_output: int
) -> None:
    cycle, _ = _prepared(raw, 100, body, PrefixCacheMatchInfo=_prefix([0, 1, 0], 1))
    estimate = read_uncached_tokens(cycle)
    assert estimate is not None
    assert estimate.output_tokens == expected_output
    # Output is estimated on the whole prompt, the prompt part per endpoint: 100 - 64 = 36.
    rows = np.arange(3, dtype=np.int32)
    np.testing.assert_array_equal(
        estimate.tokens(rows), np.asarray([100, 36, 100], dtype=np.float64) + expected_output
    )


def test_pre_request_adds_the_uncached_tokens_of_each_pick() -> None:
    flow = _Flow()
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(TOKENIZED_PROMPT, _tokenized(300))
    cycle.write(PREFIX_CACHE_MATCH_INFO, _prefix([0, 2, 4], 4))
    request = Request("r1", "m")
    flow.producer.prepare_request_data(cycle, request, flow.table, flow.table.candidates())
    result = _result(flow.table, decode=1, prefill=2)
    flow.producer.pre_request(cycle, request, result)
    assert flow.load() == [(0, 0), (1, 172), (1, 44)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]


def test_inflight_with_output_tokens_holds_them_until_the_end() -> None:
    flow = _Flow(raw={"addEstimatedOutputTokens": True})
    request, result = flow.start("r1", 100, decode=1, prefill=2)  # 100 + 150 each
    assert flow.load() == [(0, 0), (1, 250), (1, 250)]
    flow.chunk(request, result, first=True)  # only the prefill stage is done
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.chunk(request, result, first=True)
    assert flow.load() == [(0, 0), (1, 250), (0, 0)]
    flow.complete(request, result)
    assert flow.load() == [(0, 0), (0, 0), (0, 0)]
    assert flow.producer.num_tracked_requests() == 0


def test_inflight_client_cap_bounds_the_held_output() -> None:
    flow = _Flow(raw={"addEstimatedOutputTokens": True, "maxEstimatedOutputTokens": 500})
    flow.start("r1", 100, {"max_completion_tokens": 20}, default=0)
    assert flow.load()[0] == (1, 120)


def test_token_release_then_removal_and_complete() -> None:
    flow = _Flow()
    request, result = flow.start("r1", 250, default=1)
    flow.chunk(request, result, first=True)
    assert flow.load()[1] == (1, 0)
    flow.table.inflight_tokens[1] = 40.0  # another request's tokens are untouched
    flow.complete(request, result)
    assert flow.load()[1] == (0, 40)


def test_producer_params() -> None:
    params = parse_params(InflightLoadProducerParams, None, PATH)
    assert params.add_estimated_output_tokens is False
    assert params.output_ratio == 1.5
    assert params.max_estimated_output_tokens is None
    assert params.prefix_match_info_producer_name == ""
    assert params.sync_cross_replica_state is True
    assert params.redis is None
    assert params.producer_references() == {}
    named = parse_params(
        InflightLoadProducerParams,
        {"prefixMatchInfoProducerName": "precise", "syncCrossReplicaState": False},
        PATH,
    )
    assert named.producer_references() == {
        "prefixMatchInfoProducerName": ("precise", PREFIX_CACHE_MATCH_INFO)
    }
    assert parse_params(TokenLoadScorer.Params, None, PATH).producer_references() == {}
    scorer_params = parse_params(TokenLoadScorer.Params, {"inFlightLoadProducerName": "i"}, PATH)
    assert scorer_params.producer_references() == {
        "inFlightLoadProducerName": ("i", IN_FLIGHT_LOAD)
    }


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        pytest.param(
            InflightLoadProducerParams,
            {"outputRatio": -0.5},
            r"^plugins\[0\]\.parameters\.outputRatio: expected number >= 0, got -0\.5 \(float\)$",
            id="ratio-negative",
        ),
        pytest.param(
            InflightLoadProducerParams,
            {"maxEstimatedOutputTokens": -1},
            r"^plugins\[0\]\.parameters\.maxEstimatedOutputTokens: expected int >= 0, got -1",
            id="max-output-negative",
        ),
        pytest.param(
            InflightLoadProducerParams,
            {"maxEstimatedOutputTokens": True},
            r"\.maxEstimatedOutputTokens: expected int >= 0, got True \(bool\)$",
            id="max-output-bool",
        ),
        pytest.param(
            InflightLoadProducerParams,
            {"addEstimatedOutputTokens": "yes"},
            r"\.addEstimatedOutputTokens: expected bool, got 'yes' \(str\)$",
            id="flag-str",
        ),
        pytest.param(
            InflightLoadProducerParams,
            {"syncCrossReplicaState": 1},
            r"\.syncCrossReplicaState: expected bool, got 1 \(int\)$",
            id="sync-int",
        ),
        pytest.param(
            InflightLoadProducerParams,
            {"prefixMatchInfoProducerName": 3},
            r"\.prefixMatchInfoProducerName: expected str, got 3 \(int\)$",
            id="producer-name-int",
        ),
        pytest.param(
            TokenLoadScorer.Params,
            {"inFlightLoadProducerName": ["a"]},
            r"\.inFlightLoadProducerName: expected str, got \['a'\] \(list\)$",
            id="scorer-producer-name-list",
        ),
    ],
)
def test_llmd_params_rejected(cls: Any, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(cls, raw, PATH)


def _score_with(plugin: Any, table: EndpointTable, cycle: CycleState, rows: list[int]) -> Any:
    candidates = np.asarray(rows, dtype=np.int32)
    out = np.zeros(len(candidates), dtype=np.float32)
    plugin.score(cycle, Request("r", "m"), table, candidates, out)
    return out


def test_token_load_scorer_adds_this_requests_tokens() -> None:
    table = make_table(3)
    table.inflight_tokens[:3] = [100.0, 0.0, 500.0]
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(TOKENIZED_PROMPT, _tokenized(300))
    cycle.write(PREFIX_CACHE_MATCH_INFO, _prefix([0, 2, 4], 4))
    producer = _make(InflightLoadProducer, table)
    producer.prepare_request_data(cycle, Request("r", "m"), table, table.candidates())
    scorer = _make(TokenLoadScorer, table, {"queueThresholdTokens": 1000})
    # loads: 100 + 300, 0 + 172, 500 + 44
    _expect(_score_with(scorer, table, cycle, [0, 1, 2]), [0.6, 0.828, 0.456])
    _expect(_score_with(scorer, table, cycle, [2, 0]), [0.456, 0.6])


def test_token_load_scorer_reads_the_named_producer() -> None:
    table = make_table(2)
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(TOKENIZED_PROMPT, _tokenized(100))
    other = InflightLoadProducer("other", InflightLoadProducerParams(), PluginHandle(table))
    other.prepare_request_data(cycle, Request("r", "m"), table, table.candidates())
    named = InflightLoadProducer(
        "mine",
        parse_params(
            InflightLoadProducerParams,
            {"addEstimatedOutputTokens": True, "outputRatio": 2.0},
            PATH,
        ),
        PluginHandle(make_table(2)),
    )
    named.prepare_request_data(cycle, Request("r", "m"), table, table.candidates())
    scorer = _make(
        TokenLoadScorer, table, {"queueThresholdTokens": 1000, "inFlightLoadProducerName": "mine"}
    )
    _expect(_score_with(scorer, table, cycle, [0, 1]), [0.7, 0.7])  # 100 + 200
    unnamed = _make(TokenLoadScorer, table, {"queueThresholdTokens": 1000})
    _expect(_score_with(unnamed, table, cycle, [0, 1]), [0.7, 0.7])  # the last written
    missing = _make(
        TokenLoadScorer, table, {"queueThresholdTokens": 1000, "inFlightLoadProducerName": "gone"}
    )
    _expect(_score_with(missing, table, cycle, [0]), [0.7])  # falls back to the shared key


_HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
_PROFILE = "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: s\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "- {name: s, type: token-load-scorer, parameters: {inFlightLoadProducerName: x}}\n",
            r"plugins\[0\]\.parameters\.inFlightLoadProducerName: undefined plugin 'x'",
            id="scorer-undefined",
        ),
        pytest.param(
            "- {name: s, type: token-load-scorer}\n"
            "- {name: i, type: inflight-load-producer, parameters: "
            "{prefixMatchInfoProducerName: s}}\n",
            r"plugins\[1\]\.parameters\.prefixMatchInfoProducerName: plugin 's' "
            r"\(token-load-scorer, plugins\[0\]\) does not produce 'PrefixCacheMatchInfo'",
            id="producer-wrong-kind",
        ),
    ],
)
def test_config_checks_producer_names(text: str, message: str) -> None:
    from inference_sched.errors import ConfigError
    from inference_sched.framework.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(_HEAD + text + _PROFILE)


def test_config_binds_the_scorer_to_a_declared_producer() -> None:
    from inference_sched.framework.config import load_config

    config = load_config(
        _HEAD + "- {name: s, type: token-load-scorer, parameters: {inFlightLoadProducerName: i}}\n"
        "- {name: i, type: inflight-load-producer, parameters: {addEstimatedOutputTokens: true}}\n"
        + _PROFILE
    )
    assert [p.type for p in config.plugins].count("inflight-load-producer") == 1
