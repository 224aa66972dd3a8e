"""Saturation detectors (GIE §4.7): exact saturation values, filters, parameters, config
wiring, and shedding of sheddable requests at admission (§5.2: 429)."""

# ruff: noqa: E501  (the tables keep one case per line: parameters, inputs, expected)

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import inference_sched.plugins.saturation  # noqa: F401 - registers the detectors
from inference_sched.errors import (
    ConfigError,
    NoEndpointError,
    ParameterError,
    RequestShedError,
    SchedulingError,
)
from inference_sched.framework import registry
from inference_sched.framework.config import AUTO_PATH, load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Endpoint, Request, Response
from inference_sched.observability.prometheus import registry_for
from inference_sched.params import parse_params
from inference_sched.plugins.filters import DecodeFilter
from inference_sched.plugins.load import InflightLoadProducer
from inference_sched.plugins.saturation import (
    ConcurrencyDetector,
    ConcurrencyDetectorParams,
    UtilizationDetector,
    UtilizationDetectorParams,
)
from inference_sched.state.table import EndpointTable
from tests.helpers import hide_builtin, make_table

PATH = "plugins[0].parameters"
NOW = 100.0  # make_table's clock: every metrics write is stamped at t = 100
NAN = math.nan


def _utilization(raw: dict[str, Any] | None = None) -> UtilizationDetector:
    params = parse_params(UtilizationDetectorParams, raw, PATH)
    return UtilizationDetector("u", params, PluginHandle(EndpointTable()))


def _concurrency(raw: dict[str, Any] | None = None) -> ConcurrencyDetector:
    params = parse_params(ConcurrencyDetectorParams, raw, PATH)
    return ConcurrencyDetector("c", params, PluginHandle(EndpointTable()))


def _rows(rows: list[int]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int32)


def _filter(plugin: Any, table: EndpointTable, rows: list[int], now_s: float = NOW) -> list[int]:
    cycle = CycleState(np.random.default_rng(0), now_s)
    kept = plugin.filter(cycle, Request("r", "m"), table, _rows(rows))
    assert kept.dtype == np.int32
    return [int(r) for r in kept]


def _with_inflight(requests: list[float], tokens: list[float] | None = None) -> EndpointTable:
    table = make_table(len(requests))  # never scraped: the concurrency detector ignores that
    table.inflight_requests[: len(requests)] = requests
    if tokens is not None:
        table.inflight_tokens[: len(tokens)] = tokens
    return table


# ---------------------------------------------------------------- metadata
def test_metadata() -> None:
    assert registry.kinds_of(UtilizationDetector) == ("filter", "saturation-detector")
    assert registry.kinds_of(ConcurrencyDetector) == ("filter", "saturation-detector")
    assert registry.get("utilization-detector") is UtilizationDetector
    assert registry.get("concurrency-detector") is ConcurrencyDetector
    assert ConcurrencyDetector.consumes == frozenset({"InFlightLoad"})
    assert UtilizationDetector.is_batch_invariant
    assert not getattr(ConcurrencyDetector, "is_batch_invariant", False)


def test_defaults() -> None:
    u = parse_params(UtilizationDetectorParams, None, PATH)
    assert (u.queue_depth_threshold, u.kv_cache_util_threshold) == (5, 0.8)
    assert (u.metrics_staleness_threshold_s, u.headroom) == (0.2, 0.0)
    c = parse_params(ConcurrencyDetectorParams, None, PATH)
    assert (c.concurrency_mode, c.max_concurrency) == ("requests", 100)
    assert (c.max_token_concurrency, c.headroom) == (1_000_000, 0.0)
    assert c.in_flight_load_producer_name == ""
    assert c.producer_references() == {}


def test_stability() -> None:
    assert UtilizationDetector.stability == "beta"
    assert ConcurrencyDetector.stability == "beta"


def test_in_flight_load_producer_name_must_name_a_producer() -> None:
    table = make_table(2)
    ok = (
        "plugins:\n"
        "- {name: load, type: inflight-load-producer}\n"
        "- {type: concurrency-detector, parameters: {inFlightLoadProducerName: load}}\n"
        "saturationDetector: {pluginRef: concurrency-detector}\n"
    )
    scheduler = Scheduler.from_config(ok, table, seed=0)
    assert isinstance(scheduler.saturation_detector, ConcurrencyDetector)
    bad = (
        "plugins:\n"
        "- {type: concurrency-detector, parameters: {inFlightLoadProducerName: nope}}\n"
        "saturationDetector: {pluginRef: concurrency-detector}\n"
    )
    with pytest.raises(ConfigError, match=r"inFlightLoadProducerName.*undefined plugin 'nope'"):
        Scheduler.from_config(bad, table, seed=0)


# ---------------------------------------------------------------- utilization: saturation
def _metrics_table(waiting: list[float], kv: list[float], stamps: list[float]) -> EndpointTable:
    table = make_table(len(waiting))
    for row, (w, k, t) in enumerate(zip(waiting, kv, stamps, strict=True)):
        table.update_metrics(row, now_s=t, waiting=w, kv_usage_frac=k)
    return table


UTILIZATION_CASES = [
    # per endpoint max(q/5, kv/0.8): 0.5, 1.0, 2.0 -> mean 3.5/3
    pytest.param({}, [0, 5, 10], [0.4, 0.2, 0.8], [NOW] * 3, [0, 1, 2], 3.5 / 3, id="fresh"),
    pytest.param({}, [2, 1], [0.1, 0.6], [NOW] * 2, [0, 1], (0.4 + 0.75) / 2, id="max-of-two"),
    # e1 is 0.3 s old (> 200 ms): 1.0 whatever its metrics say
    pytest.param({}, [0, 0], [0.4, 0.0], [NOW, 99.7], [0, 1], (0.5 + 1.0) / 2, id="stale"),
    # exactly at the threshold (0.25 s, exact in binary) is still fresh: stale is strict >
    pytest.param(
        {"metricsStalenessThreshold": "250ms"}, [0], [0.4], [99.75], [0], 0.5, id="age-equal"
    ),
    pytest.param(
        {"metricsStalenessThreshold": "250ms"}, [0], [0.4], [99.5], [0], 1.0, id="age-over"
    ),
    pytest.param(
        {"queueDepthThreshold": 2, "kvCacheUtilThreshold": 0.5},
        [1, 4],
        [0.75, 0.25],
        [NOW] * 2,
        [0, 1],
        (1.5 + 2.0) / 2,
        id="custom-thresholds",
    ),
    pytest.param({}, [0, 10, 0], [0.4, 0.4, 0.0], [NOW] * 3, [2, 0], 0.25, id="subset"),
    pytest.param({"headroom": 0.5}, [5], [0.4], [NOW], [0], 1.0, id="headroom-ignored"),
    pytest.param({}, [0, 0], [NAN, 0.4], [NOW] * 2, [0, 1], 0.75, id="nan-is-saturated"),
    pytest.param({}, [0], [0.4], [NOW], [], 1.0, id="empty"),
]


@pytest.mark.parametrize(("raw", "waiting", "kv", "stamps", "rows", "expected"), UTILIZATION_CASES)
def test_utilization_saturation(
    raw: dict[str, Any],
    waiting: list[float],
    kv: list[float],
    stamps: list[float],
    rows: list[int],
    expected: float,
) -> None:
    table = _metrics_table(waiting, kv, stamps)
    got = _utilization(raw).saturation(table, _rows(rows), NOW)
    assert got == pytest.approx(expected, rel=1e-15, abs=0.0)


def test_utilization_never_scraped_is_saturated() -> None:
    table = make_table(1, waiting=[0.0], kv_usage_frac=[0.0])
    table.add(Endpoint("new", "10.0.0.9", 8000))  # no metrics yet: last_update_s = -inf
    assert _utilization().saturation(table, _rows([0, 1]), NOW) == 0.5


# ---------------------------------------------------------------- utilization: filter
FILTER_CASES = [
    # e1: queue 5 is not < 5; e3: kv 0.8 is not < 0.8 (both strict)
    pytest.param({}, [0, 5, 4, 1], [0.1, 0.1, 0.79, 0.8], [NOW] * 4, [0, 1, 2, 3], [0, 2], id="strict"),
    # headroom 0.2: limits 6 and 0.96
    pytest.param({"headroom": 0.2}, [5, 6, 0], [0.9, 0.5, 0.97], [NOW] * 3, [0, 1, 2], [0], id="headroom"),
    pytest.param({}, [0, 0], [0.1, 0.1], [NOW, 99.0], [0, 1], [0], id="stale-dropped"),
    pytest.param({}, [0, 9, 1], [0.1, 0.1, 0.1], [NOW] * 3, [2, 1, 0], [2, 0], id="order-kept"),
    # nothing qualifies: GIE fails open and returns the candidates unchanged
    pytest.param({}, [9, 0], [0.1, 0.9], [NOW] * 2, [1, 0], [1, 0], id="fail-open"),
    pytest.param({}, [0, 0], [0.1, 0.1], [90.0, 90.0], [0, 1], [0, 1], id="all-stale-fail-open"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "waiting", "kv", "stamps", "rows", "expected"), FILTER_CASES)
def test_utilization_filter(
    raw: dict[str, Any],
    waiting: list[float],
    kv: list[float],
    stamps: list[float],
    rows: list[int],
    expected: list[int],
) -> None:
    table = _metrics_table(waiting, kv, stamps)
    assert _filter(_utilization(raw), table, rows) == expected


def test_utilization_filter_uses_the_cycle_clock() -> None:
    table = _metrics_table([0], [0.1], [NOW])
    detector = _utilization()
    assert _filter(detector, table, [0], now_s=NOW + 0.2) == [0]
    other = _metrics_table([0, 0], [0.1, 0.1], [NOW, NOW + 1.0])
    assert _filter(detector, other, [0, 1], now_s=NOW + 1.0) == [1]


# ---------------------------------------------------------------- concurrency
CONCURRENCY_CASES = [
    pytest.param({}, [10, 30, 0], None, [0, 1, 2], 40 / 300, id="requests"),
    pytest.param({"maxConcurrency": 4}, [4, 2], None, [0, 1], 0.75, id="max-concurrency"),
    pytest.param({"maxConcurrency": 4}, [4, 8, 100], None, [0, 1], 1.5, id="overload-subset"),
    pytest.param(
        {"concurrencyMode": "tokens"},
        [99, 99],
        [500_000, 1_500_000],
        [0, 1],
        1.0,
        id="tokens",
    ),
    pytest.param(
        {"concurrencyMode": "tokens", "maxTokenConcurrency": 1000},
        [0, 0],
        [250, 0],
        [0, 1],
        0.125,
        id="tokens-custom",
    ),
    pytest.param({"headroom": 1.0}, [100], None, [0], 1.0, id="headroom-ignored"),
    pytest.param({}, [5], None, [], 1.0, id="empty-capacity-0"),
    # hybrid: mean over endpoints of max(requests / 100, tokens / 1000)
    # e0: max(0.5, 0.1) = 0.5; e1: max(0.1, 0.9) = 0.9; e2: max(0, 0) = 0
    pytest.param(
        {"concurrencyMode": "hybrid", "maxTokenConcurrency": 1000},
        [50, 10, 0],
        [100, 900, 0],
        [0, 1, 2],
        (0.5 + 0.9 + 0.0) / 3,
        id="hybrid-max-per-endpoint",
    ),
    # not Σ/Σ: Σ requests / 200 = 0.3, Σ tokens / 2000 = 0.5, but the mean of maxima is 0.7
    pytest.param(
        {"concurrencyMode": "hybrid", "maxTokenConcurrency": 1000},
        [50, 10],
        [100, 900],
        [0, 1],
        0.7,
        id="hybrid-is-mean-of-maxima",
    ),
    pytest.param(
        {"concurrencyMode": "hybrid", "maxConcurrency": 4, "maxTokenConcurrency": 8},
        [6, 0],
        [0, 0],
        [0],
        1.5,
        id="hybrid-over-capacity",
    ),
    pytest.param({"concurrencyMode": "hybrid"}, [5], [5], [], 1.0, id="hybrid-empty"),
]


@pytest.mark.parametrize(("raw", "requests", "tokens", "rows", "expected"), CONCURRENCY_CASES)
def test_concurrency_saturation(
    raw: dict[str, Any],
    requests: list[float],
    tokens: list[float] | None,
    rows: list[int],
    expected: float,
) -> None:
    table = _with_inflight(requests, tokens)
    got = _concurrency(raw).saturation(table, _rows(rows), NOW)
    assert got == pytest.approx(expected, rel=1e-15, abs=0.0)


CONCURRENCY_FILTER_CASES = [
    # limit int(4 * 1.5) = 6
    pytest.param({"maxConcurrency": 4, "headroom": 0.5}, [5, 6, 7], None, [0, 1, 2], [0], id="headroom"),
    # limit int(3 * 1.5) = int(4.5) = 4: Go truncates, so 4 is rejected
    pytest.param({"maxConcurrency": 3, "headroom": 0.5}, [3, 4], None, [0, 1], [0], id="truncated"),
    pytest.param({}, [99, 100, 0], None, [2, 1, 0], [2, 0], id="order-kept"),
    # no fail-open: everything over the limit leaves nothing
    pytest.param({"maxConcurrency": 1}, [1, 2], None, [0, 1], [], id="may-be-empty"),
    pytest.param(
        {"concurrencyMode": "tokens", "maxTokenConcurrency": 1000},
        [0, 0, 0],
        [999, 1000, 0],
        [0, 1, 2],
        [0, 2],
        id="tokens",
    ),
    # hybrid: requests < int(10 * 1.25) = 12 and tokens < int(100 * 1.25) = 125
    pytest.param(
        {"concurrencyMode": "hybrid", "maxConcurrency": 10, "maxTokenConcurrency": 100, "headroom": 0.25},
        [11, 12, 0, 0, 11],
        [124, 0, 125, 0, 124],
        [4, 3, 2, 1, 0],
        [4, 3, 0],
        id="hybrid-both-limits",
    ),
    # int(3 * 1.5) = 4 and int(5 * 1.5) = int(7.5) = 7: truncated like Go
    pytest.param(
        {"concurrencyMode": "hybrid", "maxConcurrency": 3, "maxTokenConcurrency": 5, "headroom": 0.5},
        [3, 4, 3],
        [6, 6, 7],
        [0, 1, 2],
        [0],
        id="hybrid-truncated",
    ),
    pytest.param(
        {"concurrencyMode": "hybrid", "maxConcurrency": 1, "maxTokenConcurrency": 1},
        [0, 1],
        [1, 0],
        [0, 1],
        [],
        id="hybrid-may-be-empty",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "requests", "tokens", "rows", "expected"), CONCURRENCY_FILTER_CASES
)
def test_concurrency_filter(
    raw: dict[str, Any],
    requests: list[float],
    tokens: list[float] | None,
    rows: list[int],
    expected: list[int],
) -> None:
    assert _filter(_concurrency(raw), _with_inflight(requests, tokens), rows) == expected


def test_concurrency_reads_the_columns_the_producer_fills() -> None:
    table = make_table(2)
    scheduler = Scheduler.from_config(
        "plugins: [{type: concurrency-detector, parameters: {maxConcurrency: 2}}]\n"
        "saturationDetector: {pluginRef: concurrency-detector}\n",
        table,
        seed=0,
    )
    # the detector consumes InFlightLoad: config loading adds the producer that fills it
    assert isinstance(scheduler.plugins["inflight-load-producer"], InflightLoadProducer)
    detector = scheduler.saturation_detector
    assert isinstance(detector, ConcurrencyDetector)
    results = [scheduler.schedule(Request.create("m")) for _ in range(3)]
    assert detector.saturation(table, table.candidates(), NOW) == 3 / 4
    # the implicit profile holds the detector as a filter: limit 2 per endpoint
    assert sorted(table.inflight_requests[:2].tolist()) == [1.0, 2.0]
    for result in results:
        scheduler.response_complete(Request.create("m"), Response("r"), result)
    assert detector.saturation(table, table.candidates(), NOW) == 0.0


# ---------------------------------------------------------------- parameters
PARAM_ERRORS = [
    pytest.param(UtilizationDetectorParams, {"queueDepthThreshold": 0}, r"^plugins\[0\]\.parameters\.queueDepthThreshold: expected int >= 1, got 0 \(int\)$", id="queue-zero"),
    pytest.param(UtilizationDetectorParams, {"queueDepthThreshold": True}, r"^plugins\[0\]\.parameters\.queueDepthThreshold: expected int, got True \(bool\)$", id="queue-bool"),
    pytest.param(UtilizationDetectorParams, {"queueDepthThreshold": 2.5}, r"\.queueDepthThreshold: expected int, got 2\.5 \(float\)$", id="queue-float"),
    pytest.param(UtilizationDetectorParams, {"kvCacheUtilThreshold": 0}, r"^plugins\[0\]\.parameters\.kvCacheUtilThreshold: expected a number in \(0\.0, 1\.0\], got 0 \(int\)$", id="kv-zero"),
    pytest.param(UtilizationDetectorParams, {"kvCacheUtilThreshold": 1.5}, r"\.kvCacheUtilThreshold: expected a number in \(0\.0, 1\.0\], got 1\.5 \(float\)$", id="kv-over-1"),
    pytest.param(UtilizationDetectorParams, {"metricsStalenessThreshold": "0s"}, r"^plugins\[0\]\.parameters\.metricsStalenessThreshold: expected a positive duration such as '200ms', got '0s' \(str\)$", id="staleness-zero"),
    pytest.param(UtilizationDetectorParams, {"metricsStalenessThreshold": "-1s"}, r"\.metricsStalenessThreshold: expected a positive duration such as '200ms', got '-1s' \(str\)$", id="staleness-negative"),
    pytest.param(UtilizationDetectorParams, {"metricsStalenessThreshold": 200}, r"\.metricsStalenessThreshold: expected a positive duration such as '200ms', got 200 \(int\)$", id="staleness-number"),
    pytest.param(UtilizationDetectorParams, {"metricsStalenessThreshold": "2 seconds"}, r"\.metricsStalenessThreshold: expected a positive duration such as '200ms', got '2 seconds' \(str\)$", id="staleness-text"),
    pytest.param(UtilizationDetectorParams, {"headroom": -0.1}, r"^plugins\[0\]\.parameters\.headroom: expected number >= 0\.0, got -0\.1 \(float\)$", id="u-headroom-negative"),
    pytest.param(UtilizationDetectorParams, {"queueDepthTreshold": 5}, r"^plugins\[0\]\.parameters: unknown key 'queueDepthTreshold' \(did you mean 'queueDepthThreshold'\?\)", id="u-typo"),
    pytest.param(ConcurrencyDetectorParams, {"concurrencyMode": "token"}, r"^plugins\[0\]\.parameters\.concurrencyMode: expected one of 'requests', 'tokens', 'hybrid' \(did you mean 'tokens'\?\), got 'token' \(str\)$", id="mode-typo"),
    pytest.param(ConcurrencyDetectorParams, {"concurrencyMode": "both"}, r"\.concurrencyMode: expected one of 'requests', 'tokens', 'hybrid', got 'both' \(str\)$", id="mode-unknown"),
    pytest.param(ConcurrencyDetectorParams, {"inFlightLoadProducerName": 3}, r"^plugins\[0\]\.parameters\.inFlightLoadProducerName: expected str, got 3 \(int\)$", id="producer-name-int"),
    pytest.param(ConcurrencyDetectorParams, {"maxConcurrency": 0}, r"^plugins\[0\]\.parameters\.maxConcurrency: expected int >= 1, got 0 \(int\)$", id="max-zero"),
    pytest.param(ConcurrencyDetectorParams, {"maxTokenConcurrency": -5}, r"^plugins\[0\]\.parameters\.maxTokenConcurrency: expected int >= 1, got -5 \(int\)$", id="max-tokens-negative"),
    pytest.param(ConcurrencyDetectorParams, {"maxConcurrency": "100"}, r"\.maxConcurrency: expected int, got '100' \(str\)$", id="max-str"),
    pytest.param(ConcurrencyDetectorParams, {"headroom": -1}, r"^plugins\[0\]\.parameters\.headroom: expected number >= 0\.0, got -1 \(int\)$", id="c-headroom-negative"),
    pytest.param(ConcurrencyDetectorParams, {"headroom": True}, r"\.headroom: expected a finite number, got True \(bool\)$", id="c-headroom-bool"),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "raw", "message"), PARAM_ERRORS)
def test_params_rejected(cls: Any, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(cls, raw, PATH)


def test_every_bad_parameter_is_reported() -> None:
    raw = {"queueDepthThreshold": 0, "kvCacheUtilThreshold": 2, "metricsStalenessThreshold": "0s"}
    with pytest.raises(ParameterError) as info:
        parse_params(UtilizationDetectorParams, raw, PATH)
    assert [e.path for e in info.value.errors] == [
        "plugins[0].parameters.metricsStalenessThreshold",
        "plugins[0].parameters.queueDepthThreshold",
        "plugins[0].parameters.kvCacheUtilThreshold",
    ]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("150ms", 0.15), ("2s", 2.0), ("1m", 60.0), ("1.5s", 1.5)],
)
def test_staleness_durations(raw: str, seconds: float) -> None:
    params = parse_params(UtilizationDetectorParams, {"metricsStalenessThreshold": raw}, PATH)
    assert params.metrics_staleness_threshold_s == seconds


def test_boundaries_accepted() -> None:
    params = parse_params(
        UtilizationDetectorParams,
        {"queueDepthThreshold": 1, "kvCacheUtilThreshold": 1.0, "headroom": 0},
        PATH,
    )
    assert (params.queue_depth_threshold, params.kv_cache_util_threshold) == (1, 1.0)


def test_config_error_names_the_plugin_path() -> None:
    with pytest.raises(ConfigError, match=r"^plugins\[1\]\.parameters\.maxConcurrency: expected int >= 1, got 0 \(int\)$"):  # fmt: skip
        load_config(
            "plugins: [{type: queue-scorer}, "
            "{type: concurrency-detector, parameters: {maxConcurrency: 0}}]\n"
        )


# ---------------------------------------------------------------- config wiring
def test_default_config_builds_the_default_detector() -> None:
    cfg = load_config(None)
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    spec = cfg.plugin("utilization-detector")
    assert (spec.is_auto, spec.path) == (True, AUTO_PATH)
    assert not any(w.startswith("saturationDetector") for w in cfg.warnings)
    scheduler = Scheduler.from_config(cfg, make_table(1))
    detector = scheduler.saturation_detector
    assert isinstance(detector, UtilizationDetector)
    assert detector is scheduler.plugins["utilization-detector"]
    assert detector.params == parse_params(UtilizationDetectorParams, None, PATH)
    # the auto-added detector is no profile member (GIE builds the implicit profile first)
    assert all(not p.filters for p in scheduler.profiles.values())


def test_declared_detector_is_the_default_section_ref() -> None:
    cfg = load_config(
        "plugins:\n"
        "- {type: utilization-detector, parameters: {queueDepthThreshold: 2}}\n"
        "- {type: queue-scorer}\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    assert not cfg.plugin("utilization-detector").is_auto
    scheduler = Scheduler.from_config(cfg, make_table(1))
    assert isinstance(scheduler.saturation_detector, UtilizationDetector)
    assert scheduler.saturation_detector.params.queue_depth_threshold == 2


def test_named_detector_instance_and_profile_filter() -> None:
    """GIE §15 (b) without flow control: the detector is also a filter of the profile."""
    text = (
        "plugins:\n"
        "- type: utilization-detector\n"
        "  name: sat\n"
        "  parameters: {queueDepthThreshold: 2, kvCacheUtilThreshold: 0.85, "
        "metricsStalenessThreshold: 150ms, headroom: 0.2}\n"
        "- type: queue-scorer\n"
        "saturationDetector: {pluginRef: sat}\n"
        "schedulingProfiles:\n"
        "- name: default\n"
        "  plugins: [{pluginRef: queue-scorer}, {pluginRef: sat}]\n"
    )
    cfg = load_config(text)
    assert "utilization-detector" not in [p.name for p in cfg.plugins]
    again = load_config(cfg.to_yaml())
    assert again.saturation_detector == {"pluginRef": "sat"}
    assert again.plugin("sat").params == cfg.plugin("sat").params
    table = make_table(3, waiting=[0, 3, 1], kv_usage_frac=[0.1, 0.1, 0.1])
    scheduler = Scheduler.from_config(cfg, table, seed=0)
    detector = scheduler.saturation_detector
    assert detector is scheduler.plugins["sat"]
    assert list(scheduler.profiles["default"].filters) == [detector]
    # limit 2 * 1.2 = 2.4: e1 (queue 3) is filtered out; queue-scorer then prefers e0
    result = scheduler.schedule(Request.create("m"))
    assert result.endpoint is not None
    assert result.endpoint.name == "e0"


def test_from_config_rejects_a_hand_made_non_detector_ref() -> None:
    cfg = attrs.evolve(load_config(None), saturation_detector={"pluginRef": "queue-scorer"})
    with pytest.raises(ConfigError, match=r"^saturationDetector\.pluginRef: plugin 'queue-scorer' \(queue-scorer\) is not a saturation-detector$"):  # fmt: skip
        Scheduler.from_config(cfg, make_table(1))


def test_section_without_detector_sheds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_builtin(monkeypatch, "utilization-detector")
    table = make_table(1)  # never scraped: any detector would say saturated
    scheduler = Scheduler.from_config(None, table, seed=0)
    assert scheduler.saturation_detector is None
    assert scheduler.schedule(Request.create("m", priority=-1)).endpoint is not None


# ---------------------------------------------------------------- shedding
QUEUE_ONLY = "plugins: [{type: queue-scorer}]\n"


def _shedding(waiting: list[float], kv: list[float] | None = None) -> Scheduler:
    kv = kv if kv is not None else [0.0] * len(waiting)
    table = make_table(len(waiting), waiting=waiting, kv_usage_frac=kv)
    return Scheduler.from_config(QUEUE_ONLY, table, seed=0)


def test_sheddable_request_at_saturation_is_rejected_with_429() -> None:
    scheduler = _shedding([5, 10])  # 1.0 and 2.0: saturation 1.5
    with pytest.raises(RequestShedError) as info:
        scheduler.schedule(Request.create("m", priority=-1))
    error = info.value
    assert (error.http_status, error.priority, error.detector) == (429, -1, "utilization-detector")
    assert error.saturation == 1.5
    assert str(error) == (
        "system saturated, sheddable request dropped: priority -1 < 0 and saturation 1.5 >= 1 "
        "(detector 'utilization-detector')"
    )
    assert (scheduler.shed, scheduler.cycles, scheduler.failures) == (1, 0, 0)


def test_saturation_exactly_one_sheds() -> None:
    scheduler = _shedding([5, 0], [0.0, 0.8])  # 1.0 and 1.0
    with pytest.raises(RequestShedError):
        scheduler.schedule(Request.create("m", priority=-3))


@pytest.mark.parametrize("priority", [0, 1, 100])
def test_non_sheddable_requests_are_never_shed(priority: int) -> None:
    scheduler = _shedding([50, 50])
    result = scheduler.schedule(Request.create("m", priority=priority))
    assert result.endpoint is not None
    assert (scheduler.shed, scheduler.cycles) == (0, 1)


def test_sheddable_request_below_saturation_passes() -> None:
    scheduler = _shedding([0, 4], [0.4, 0.0])  # 0.5 and 0.8: saturation 0.65
    assert scheduler.schedule(Request.create("m", priority=-1)).endpoint is not None
    assert scheduler.shed == 0


def test_never_scraped_pool_is_saturated() -> None:
    scheduler = Scheduler.from_config(QUEUE_ONLY, make_table(2), seed=0)
    with pytest.raises(RequestShedError) as info:
        scheduler.schedule(Request.create("m", priority=-1))
    assert info.value.saturation == 1.0


def test_saturation_is_over_the_gateway_subset() -> None:
    scheduler = _shedding([0, 50])  # e0 idle, e1 far over
    hint = ["10.0.0.0:8000"]
    result = scheduler.schedule(Request.create("m", priority=-1, subset_hint=hint))
    assert result.endpoint is not None
    assert result.endpoint.name == "e0"
    with pytest.raises(RequestShedError):
        scheduler.schedule(Request.create("m", priority=-1, subset_hint=["10.0.0.1:8000"]))


def test_no_candidates_is_503_not_429() -> None:
    scheduler = _shedding([50])
    with pytest.raises(NoEndpointError):
        scheduler.schedule(Request.create("m", priority=-1, subset_hint=["10.9.9.9:8000"]))
    assert scheduler.shed == 0


def test_shed_error_is_not_a_scheduling_error() -> None:
    assert not issubclass(RequestShedError, SchedulingError | NoEndpointError)


def test_batch_sheds_per_request() -> None:
    scheduler = _shedding([5, 10])
    requests = [Request.create("m", priority=p) for p in (-1, 0, -2, 3)]
    out = scheduler.schedule_batch(requests)
    assert [type(r).__name__ for r in out] == [
        "RequestShedError",
        "SchedulingResult",
        "RequestShedError",
        "SchedulingResult",
    ]
    assert (scheduler.shed, scheduler.cycles) == (2, 2)


class _BrokenDetector:
    type: ClassVar[str] = "broken-detector"

    def __init__(self) -> None:
        self.name = "broken"

    def saturation(self, table: EndpointTable, candidates: Any, now_s: float) -> float:
        raise RuntimeError("boom")


def test_a_raising_detector_admits() -> None:
    scheduler = _shedding([50])
    scheduler.saturation_detector = _BrokenDetector()
    assert scheduler.schedule(Request.create("m", priority=-1)).endpoint is not None
    assert (scheduler.admission_errors, scheduler.shed) == (1, 0)


def test_scheduler_without_detector_sheds_nothing() -> None:
    scheduler = _shedding([50])
    scheduler.saturation_detector = None
    assert scheduler.schedule(Request.create("m", priority=-1)).endpoint is not None


def test_shed_counter_is_exported() -> None:
    scheduler = _shedding([5, 10])
    for _ in range(2):
        with pytest.raises(RequestShedError):
            scheduler.schedule(Request.create("m", priority=-1))
    scheduler.schedule(Request.create("m"))
    text = generate_latest(registry_for(scheduler)).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("inference_extension_shed_requests_total", ())] == 2.0
    attempts = "inference_extension_scheduler_attempts_total"
    assert values[(attempts, (("status", "success"),))] == 1.0
    assert values[(attempts, (("status", "failure"),))] == 0.0


def test_decode_filter_is_not_a_detector() -> None:
    assert "saturation-detector" not in registry.kinds_of(DecodeFilter)
