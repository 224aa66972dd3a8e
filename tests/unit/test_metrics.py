"""Scheduler metrics: exact values of every family, parsed back from the text exposition."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families

from inference_sched import Endpoint, NoEndpointError, Request, Scheduler
from inference_sched._version import __version__
from inference_sched.framework.profile import PluginStats
from inference_sched.observability.prometheus import (
    DEFAULT_DURATION_BUCKETS_S,
    DurationHistogram,
    SchedulerCollector,
    expose,
    registry_for,
)
from inference_sched.plugins.prefix import MATCH_LENGTH_BUCKETS
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

# 160 bytes = 3 blocks of 16 tokens x 4 bytes (the last one partial): 192 bytes hashed.
PROMPT = b"abcd" * 192  # 192 estimated tokens: three 64-token blocks (llm-d-router)
BLOCK_BYTES = 256
NOW = 101.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> tuple[dict[str, str], Samples]:
    """Family types by name, and every sample by (name, labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return types, samples


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def lab(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def pool_table() -> EndpointTable:
    """e0, e1 fresh and healthy; e2 unhealthy; e3 stale (4 s old); e4 never scraped."""
    table = make_table(
        4,
        waiting=[1, 3, 50, 70],
        running=[2, 4, 60, 80],
        kv_usage_frac=[0.25, 0.5, 0.9, 0.9],
    )  # stamped at t = 100 by the table clock
    table.set_endpoint_metrics("e3", now_s=97.0)
    table.add(Endpoint("e4", "10.0.0.4", 8000))
    table.set_healthy("e2", False)
    return table


@pytest.fixture
def scheduled() -> Scheduler:
    """GIE's default config over pool_table: 3 scheduled requests, 1 failure, deferred run."""
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    for _ in range(3):
        scheduler.schedule(Request.create("m", prompt=PROMPT))
    with pytest.raises(NoEndpointError):
        scheduler.schedule(Request.create("m", prompt=PROMPT, subset_hint=["10.9.9.9:8000"]))
    scheduler.run_deferred()
    return scheduler


def test_scheduler_attempts_and_e2e(scheduled: Scheduler) -> None:
    types, samples = scrape(registry_for(scheduled, pool_name="p", clock=lambda: NOW))
    assert types["inference_extension_scheduler_attempts"] == "counter"
    assert series(samples, "inference_extension_scheduler_attempts_total") == {
        lab(status="success"): 3.0,
        lab(status="failure"): 1.0,
    }
    assert types["inference_extension_scheduler_e2e_duration_seconds"] == "histogram"
    name = "inference_extension_scheduler_e2e_duration_seconds"
    # the scheduler records every decision in GIE's buckets: the export is its histogram
    assert scheduled.e2e_histogram.count == 4
    assert series(samples, name + "_bucket") == {
        lab(le=le): count for le, count in scheduled.e2e_histogram.buckets()
    }
    assert series(samples, name + "_bucket")[lab(le="+Inf")] == 4.0
    assert len(series(samples, name + "_bucket")) == len(DEFAULT_DURATION_BUCKETS_S) + 1
    assert series(samples, name + "_count") == {lab(): 4.0}
    assert series(samples, name + "_sum") == {lab(): scheduled.e2e_ns / 1e9}
    assert scheduled.e2e_ns > 0


def test_plugin_durations_and_errors(scheduled: Scheduler) -> None:
    types, samples = scrape(registry_for(scheduled, clock=lambda: NOW))
    assert types["inference_extension_plugin_duration_seconds"] == "histogram"
    counts = series(samples, "inference_extension_plugin_duration_seconds_count")
    producer = "approx-prefix-cache-producer"
    handler = "single-profile-handler"

    def key(point: str, name: str) -> frozenset[tuple[str, str]]:
        return lab(extension_point=point, plugin_type=name, plugin_name=name)

    # The failed cycle ended before the producers ran; the handler's static profile
    # skips ProfilePicker / ProcessProfilesResults; run_deferred ran once.
    assert counts == {
        key("ProfilePicker", handler): 0.0,
        key("ProcessProfilesResults", handler): 0.0,
        key("PrepareData", producer): 3.0,
        key("PrepareData", "token-producer"): 3.0,  # auto-created for TokenizedPrompt
        key("Scorer", "queue-scorer"): 3.0,
        key("Scorer", "kv-cache-utilization-scorer"): 3.0,
        key("Scorer", "prefix-cache-scorer"): 3.0,
        key("Picker", "max-score-picker"): 3.0,
        key("PreRequest", producer): 3.0,
        key("Deferred", producer): 1.0,
    }
    buckets = series(samples, "inference_extension_plugin_duration_seconds_bucket")
    assert buckets == {labels | {("le", "+Inf")}: value for labels, value in counts.items()}
    sums = series(samples, "inference_extension_plugin_duration_seconds_sum")
    by_key = {key(s.extension_point, s.plugin_name): s.total_ns / 1e9 for s in scheduled.stats()}
    assert sums == by_key
    errors = series(samples, "inference_extension_plugin_errors_total")
    assert errors == dict.fromkeys(counts, 0.0)
    invalid = series(samples, "inference_extension_plugin_invalid_scores_total")
    assert invalid == {
        lab(plugin_type=s, plugin_name=s, reason=r): 0.0
        for s in ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer")
        for r in ("clamped", "nonfinite")
    }


def test_plugin_errors_are_counted() -> None:
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)

    def boom(*args: Any) -> None:
        raise RuntimeError("boom")

    scheduler.plugins["queue-scorer"].score = boom
    for _ in range(2):
        scheduler.schedule(Request.create("m"))
    _, samples = scrape(registry_for(scheduler, clock=lambda: NOW))
    errors = series(samples, "inference_extension_plugin_errors_total")
    scorer = lab(extension_point="Scorer", plugin_type="queue-scorer", plugin_name="queue-scorer")
    assert errors[scorer] == 2.0
    assert sum(errors.values()) == 2.0
    calls = series(samples, "inference_extension_plugin_duration_seconds_count")
    assert calls[scorer] == 2.0


def test_prefix_indexer(scheduled: Scheduler) -> None:
    types, samples = scrape(registry_for(scheduled, clock=lambda: NOW))
    # Request 1 found nothing and was indexed on its pick (3 blocks); 2 and 3 found all
    # three blocks on the same endpoint and refreshed the same entries.
    assert types["inference_extension_prefix_indexer_size"] == "gauge"
    assert series(samples, "inference_extension_prefix_indexer_size") == {lab(): 3.0}
    assert series(samples, "inference_extension_prefix_indexer_hit_ratio") == {lab(): 2 / 3}
    name = "inference_extension_prefix_indexer_hit_bytes"
    assert types[name] == "histogram"
    assert series(samples, name + "_bucket") == {lab(le="+Inf"): 3.0}
    assert series(samples, name + "_count") == {lab(): 3.0}
    assert series(samples, name + "_sum") == {lab(): 2 * 3 * BLOCK_BYTES}
    assert series(samples, "inference_extension_prefix_indexer_lookup_bytes_total") == {
        lab(): 3 * 3 * BLOCK_BYTES
    }
    blocks = series(samples, "inference_extension_prefix_indexer_match_blocks_bucket")
    assert blocks == {
        lab(le="+Inf" if bound == math.inf else str(float(bound))): (1.0 if bound < 4 else 3.0)
        for bound in MATCH_LENGTH_BUCKETS  # 0, 1, 2, 4, ..., 2048, inf
    }


def test_prefix_size_counts_queued_updates_too() -> None:
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    scheduler.schedule(Request.create("m", prompt=PROMPT))  # no run_deferred
    _, samples = scrape(registry_for(scheduler, clock=lambda: NOW))
    assert series(samples, "inference_extension_prefix_indexer_size") == {lab(): 3.0}


def test_pool_gauges_skip_stale_and_unhealthy(scheduled: Scheduler) -> None:
    types, samples = scrape(registry_for(scheduled, pool_name="p", clock=lambda: NOW))
    pool = lab(name="p")
    # Only e0 and e1 count: e2 is unhealthy, e3 is 4 s old (> 2 s), e4 never scraped.
    assert series(samples, "inference_pool_average_kv_cache_utilization") == {pool: 0.375}
    assert series(samples, "inference_pool_average_queue_size") == {pool: 2.0}
    assert series(samples, "inference_pool_average_running_requests") == {pool: 3.0}
    assert series(samples, "inference_pool_ready_pods") == {pool: 2.0}
    assert series(samples, "inference_pool_healthy_endpoints") == {pool: 4.0}
    assert types["inference_pool_endpoint_metrics_age_seconds"] == "gauge"
    assert series(samples, "inference_pool_endpoint_metrics_age_seconds") == {
        lab(name="p", endpoint="e0"): 1.0,
        lab(name="p", endpoint="e1"): 1.0,
        lab(name="p", endpoint="e2"): 1.0,
        lab(name="p", endpoint="e3"): 4.0,
        lab(name="p", endpoint="e4"): math.inf,
    }


def test_staleness_threshold_and_default_clock() -> None:
    table = pool_table()
    scheduler = Scheduler.from_config(None, table, seed=0)
    # The table clock reads 100: e3 is 3 s old, inside a 5 s threshold.
    registry = registry_for(scheduler, pool_name="p", staleness_threshold_s=5.0)
    _, samples = scrape(registry)
    assert series(samples, "inference_pool_ready_pods") == {lab(name="p"): 3.0}
    assert series(samples, "inference_pool_average_queue_size") == {lab(name="p"): (1 + 3 + 70) / 3}
    ages = series(samples, "inference_pool_endpoint_metrics_age_seconds")
    assert ages[lab(name="p", endpoint="e0")] == 0.0
    assert ages[lab(name="p", endpoint="e3")] == 3.0


def test_no_fresh_endpoint_leaves_averages_empty() -> None:
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    _, samples = scrape(registry_for(scheduler, pool_name="p", clock=lambda: 1000.0))
    assert series(samples, "inference_pool_ready_pods") == {lab(name="p"): 0.0}
    for name in (
        "inference_pool_average_kv_cache_utilization",
        "inference_pool_average_queue_size",
        "inference_pool_average_running_requests",
    ):
        assert series(samples, name) == {}


def test_empty_pool() -> None:
    scheduler = Scheduler.from_config(None, EndpointTable(clock=lambda: 0.0), seed=0)
    _, samples = scrape(registry_for(scheduler))
    assert series(samples, "inference_pool_ready_pods") == {lab(name=""): 0.0}
    assert series(samples, "inference_pool_endpoint_metrics_age_seconds") == {}


def test_info(scheduled: Scheduler) -> None:
    types, samples = scrape(registry_for(scheduled))
    assert types["inference_extension_info"] == "gauge"
    assert series(samples, "inference_extension_info") == {lab(version=__version__): 1.0}


QUEUE_ONLY = """
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
"""


def test_no_prefix_producer_no_prefix_metrics() -> None:
    scheduler = Scheduler.from_config(QUEUE_ONLY, pool_table(), seed=0)
    scheduler.schedule(Request.create("m", prompt=PROMPT))
    types, _ = scrape(registry_for(scheduler))
    assert not [name for name in types if "prefix_indexer" in name]


class OnlySize:
    def index_size(self) -> int:
        return 7


class RaisingRatio:
    hit_bytes = 5

    def hit_ratio(self) -> float:
        raise RuntimeError("broken plugin")

    def match_length_histogram(self) -> dict[float, int]:
        return {1.0: 1}  # no +Inf bucket: ignored


class BadValues:
    total_bytes = "many"

    def index_size(self) -> object:
        return object()

    def hit_ratio(self) -> float:
        return 0.5

    def match_length_histogram(self) -> object:
        return ["not", "a", "mapping"]


def test_plugins_lacking_or_breaking_optional_methods(
    scheduled: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    scheduled.plugins.update(
        {"only-size": OnlySize(), "raising": RaisingRatio(), "bad": BadValues()}
    )
    registry = registry_for(scheduled, clock=lambda: NOW)
    _, samples = scrape(registry)
    _, again = scrape(registry)  # logged once, not per scrape
    assert again == samples
    producer = "approx-prefix-cache-producer"
    assert series(samples, "inference_extension_prefix_indexer_size") == {
        lab(plugin_name=producer): 3.0,
        lab(plugin_name="only-size"): 7.0,
    }
    assert series(samples, "inference_extension_prefix_indexer_hit_ratio") == {
        lab(plugin_name=producer): 2 / 3,
        lab(plugin_name="bad"): 0.5,
    }
    assert series(samples, "inference_extension_prefix_indexer_hit_bytes_count") == {
        lab(plugin_name=producer): 3.0
    }
    assert series(samples, "inference_extension_prefix_indexer_lookup_bytes_total") == {
        lab(plugin_name=producer): 3 * 3 * BLOCK_BYTES
    }
    warned = sorted(tuple(map(str, cast(tuple[object, ...], r.args)[:2])) for r in caplog.records)
    assert warned == [
        ("bad", "index_size"),
        ("bad", "match_length_histogram"),
        ("bad", "total_bytes"),
        ("raising", "hit_ratio"),
    ]


def test_two_registries_are_independent() -> None:
    first = Scheduler.from_config(None, pool_table(), seed=0)
    second = Scheduler.from_config(None, pool_table(), seed=0)
    reg_a = registry_for(first, pool_name="a", clock=lambda: NOW)
    reg_b = registry_for(second, pool_name="b", clock=lambda: NOW)
    first.schedule(Request.create("m"))
    first.schedule(Request.create("m"))
    _, a = scrape(reg_a)
    _, b = scrape(reg_b)
    attempts = "inference_extension_scheduler_attempts_total"
    assert series(a, attempts)[lab(status="success")] == 2.0
    assert series(b, attempts)[lab(status="success")] == 0.0
    assert set(series(a, "inference_pool_ready_pods")) == {lab(name="a")}
    assert set(series(b, "inference_pool_ready_pods")) == {lab(name="b")}
    # The same scheduler may be exported twice; one registry refuses a second one.
    reg_c = registry_for(first, pool_name="c", clock=lambda: NOW)
    assert series(scrape(reg_c)[1], attempts)[lab(status="success")] == 2.0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry_for(second, registry=reg_a)


def test_expose_is_the_text_format(scheduled: Scheduler) -> None:
    registry = registry_for(scheduled, clock=lambda: NOW)
    text = expose(registry)
    assert isinstance(text, bytes)
    assert b'inference_extension_scheduler_attempts_total{status="success"} 3.0' in text


def test_success_counter_never_decreases() -> None:
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    registry = registry_for(scheduler, clock=lambda: NOW)
    attempts = "inference_extension_scheduler_attempts_total"
    scheduler.cycles = 5  # one cycle still running when scraped ...
    assert series(scrape(registry)[1], attempts)[lab(status="success")] == 5.0
    scheduler.failures = 1  # ... then failed
    assert series(scrape(registry)[1], attempts) == {
        lab(status="success"): 5.0,
        lab(status="failure"): 1.0,
    }
    scheduler.cycles = 7
    assert series(scrape(registry)[1], attempts)[lab(status="success")] == 6.0


def test_bucketed_recorders_are_used_when_present(scheduled: Scheduler) -> None:
    recorder = DurationHistogram()
    for ns in (50_000, 100_000, 100_001, 3_000_000, 2_000_000_000):
        recorder.observe_ns(ns)
    scheduled.e2e_histogram = recorder
    _, samples = scrape(registry_for(scheduled, clock=lambda: NOW))
    name = "inference_extension_scheduler_e2e_duration_seconds"
    assert series(samples, name + "_bucket") == {
        lab(le="0.0001"): 2.0,
        lab(le="0.0002"): 3.0,
        lab(le="0.0005"): 3.0,
        lab(le="0.001"): 3.0,
        lab(le="0.002"): 3.0,
        lab(le="0.005"): 4.0,
        lab(le="0.01"): 4.0,
        lab(le="0.02"): 4.0,
        lab(le="0.05"): 4.0,
        lab(le="0.1"): 4.0,
        lab(le="+Inf"): 5.0,
    }
    assert series(samples, name + "_count") == {lab(): 5.0}
    assert series(samples, name + "_sum") == {lab(): 2_003_250_001 / 1e9}


def test_duration_histogram() -> None:
    histogram = DurationHistogram([0.001, 0.01])
    histogram.observe_ns(1_000_000)  # on the bound: le is inclusive
    histogram.observe_batch_ns(30_000_000, 3)  # 3 x 10 ms
    histogram.observe_batch_ns(5, 0)  # nothing
    assert histogram.counts == [1, 3, 0]
    assert histogram.count == 4
    assert histogram.sum_ns == 31_000_000
    assert histogram.buckets() == [("0.001", 1.0), ("0.01", 4.0), ("+Inf", 4.0)]
    other = DurationHistogram([0.001, 0.01])
    other.observe_ns(10**9)
    histogram.merge(other)
    assert histogram.counts == [1, 3, 1]
    assert histogram.sum_ns == 1_031_000_000
    with pytest.raises(ValueError, match="different bounds"):
        histogram.merge(DurationHistogram())
    assert DurationHistogram().bounds_s == DEFAULT_DURATION_BUCKETS_S
    for bad in ([0.2, 0.1], [0.1, 0.1], [-1.0], [math.inf], [math.nan]):
        with pytest.raises(ValueError, match="bucket bounds"):
            DurationHistogram(bad)


class RecordedStats(PluginStats):
    """PluginStats with the proposed ``histogram`` slot."""

    __slots__ = ("histogram",)
    histogram: DurationHistogram


def recorded(ns: int | None) -> PluginStats:
    if ns is None:
        return PluginStats("Scorer", "s", "s")
    stats = RecordedStats("Scorer", "s", "s")
    stats.histogram = DurationHistogram()
    stats.histogram.observe_ns(ns)
    stats.calls, stats.total_ns = 1, ns
    return stats


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([150_000, 400_000], {"0.0001": 0.0, "0.0002": 1.0, "0.0005": 2.0, "+Inf": 2.0}),
        ([150_000, None], {"+Inf": 1.0}),  # one copy without buckets: +Inf only
        ([None, 150_000], {"+Inf": 1.0}),
    ],
)
def test_plugin_histograms_merge_per_label_set(
    parts: list[int | None], expected: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same plugin in two profiles is two PluginStats with one label set: one series.
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    monkeypatch.setattr(scheduler, "stats", lambda: [recorded(ns) for ns in parts])
    _, samples = scrape(registry_for(scheduler, clock=lambda: NOW))
    buckets = series(samples, "inference_extension_plugin_duration_seconds_bucket")
    got = {dict(labels)["le"]: value for labels, value in buckets.items()}
    assert {le: got[le] for le in expected} == expected
    assert len(got) == (11 if len(expected) > 1 else 1)
    counts = series(samples, "inference_extension_plugin_duration_seconds_count")
    calls = float(sum(ns is not None for ns in parts))
    assert counts == {lab(extension_point="Scorer", plugin_type="s", plugin_name="s"): calls}


@pytest.mark.parametrize("threshold", [0.0, -1.0, math.nan])
def test_rejects_bad_staleness_threshold(threshold: float) -> None:
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    with pytest.raises(ValueError, match="staleness_threshold_s"):
        SchedulerCollector(scheduler, staleness_threshold_s=threshold)


def test_docs_example_runs_as_written() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    example = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(doc), "exec"), {})  # our own docs, not input
    assert out.getvalue().strip() == "3.0"


def test_registry_mounts_as_a_wsgi_app(scheduled: Scheduler) -> None:
    app = make_wsgi_app(registry_for(scheduled, clock=lambda: NOW))
    started: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    body = b"".join(app(environ, lambda status, headers: started.append(status)))
    assert started == ["200 OK"]
    assert b'inference_extension_scheduler_attempts_total{status="failure"} 1.0' in body


def test_scraper_collector_exports_scrape_errors_and_failing_per_endpoint() -> None:
    from inference_sched.datalayer.scraper import EndpointStatus
    from inference_sched.observability.prometheus import ScraperCollector

    class FakeScraper:
        def statuses(self) -> dict[str, EndpointStatus]:
            return {
                "b": EndpointStatus(errors_total=3, consecutive_failures=2),
                "a": EndpointStatus(errors_total=1, consecutive_failures=0),
            }

    registry = CollectorRegistry()
    registry.register(ScraperCollector(FakeScraper(), pool_name="pool"))
    families = {f.name: f for f in text_string_to_metric_families(expose(registry).decode())}
    errors = families["inference_pool_endpoint_scrape_errors"].samples
    failing = families["inference_pool_endpoint_scrape_failing"].samples
    assert [(s.labels["endpoint"], s.value) for s in errors if s.name.endswith("_total")] == [
        ("a", 1.0),
        ("b", 3.0),
    ]
    assert [(s.labels["endpoint"], s.value) for s in failing] == [("a", 0.0), ("b", 1.0)]
    assert {s.labels["name"] for s in failing} == {"pool"}


def test_recorded_plugin_histograms_reach_the_exposition() -> None:
    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    scheduler.record_plugin_histograms()
    for _ in range(3):
        scheduler.schedule(Request.create("m", prompt=PROMPT))
    scheduler.run_deferred()
    _, samples = scrape(registry_for(scheduler, clock=lambda: NOW))
    buckets = series(samples, "inference_extension_plugin_duration_seconds_bucket")
    counts = series(samples, "inference_extension_plugin_duration_seconds_count")
    picker = lab(
        extension_point="Picker", plugin_type="max-score-picker", plugin_name="max-score-picker"
    )
    assert counts[picker] == 3.0
    per_le = {dict(k)["le"]: v for k, v in buckets.items() if k - {("le", dict(k)["le"])} == picker}
    assert len(per_le) == len(DEFAULT_DURATION_BUCKETS_S) + 1
    assert per_le["+Inf"] == 3.0
    assert list(per_le.values()) == sorted(per_le.values())  # cumulative
    for stats in scheduler.stats():  # every plugin recorded each call it made
        assert stats.histogram is not None
        assert sum(stats.histogram.counts) == stats.calls
    scheduler.record_plugin_histograms(enabled=False)
    assert all(s.histogram is None for s in scheduler.stats())


def test_health_collector_exports_taken_out_endpoints_and_transitions() -> None:
    from inference_sched.datalayer.health import EndpointHealth, FailureKind
    from inference_sched.observability.prometheus import HealthCollector

    scheduler = Scheduler.from_config(None, pool_table(), seed=0)
    table = scheduler.table
    health = EndpointHealth(table, unhealthy_after=2)

    class FakeScraper:
        def __init__(self) -> None:
            self.health = health

        def statuses(self) -> dict[str, Any]:
            return {}

    registry = registry_for(scheduler, pool_name="p", clock=lambda: NOW, scraper=FakeScraper())
    gauge = "inference_pool_unhealthy_endpoints"
    counter = "inference_pool_endpoint_health_transitions_total"

    def read() -> tuple[float, dict[str, float], float]:
        types, samples = scrape(registry)
        assert types[gauge] == "gauge"
        assert types[counter.removesuffix("_total")] == "counter"
        transitions = {dict(k)["to"]: v for k, v in series(samples, counter).items()}
        healthy = samples[("inference_pool_healthy_endpoints", lab(name="p"))]
        return samples[(gauge, lab(name="p"))], transitions, healthy

    assert read() == (0.0, {"unhealthy": 0.0, "healthy": 0.0}, 4.0)
    health.report_connect_failure("e0")  # refused: out at once
    health.scrape_failed("e1", FailureKind.UNREACHABLE, "timed out")
    health.scrape_failed("e1", FailureKind.UNREACHABLE, "timed out")
    health.scrape_failed("e2", FailureKind.REFUSED, "refused")  # already unhealthy: not ours
    assert read() == (2.0, {"unhealthy": 2.0, "healthy": 0.0}, 2.0)
    health.scrape_succeeded(["e0", "e2"])
    assert read() == (1.0, {"unhealthy": 2.0, "healthy": 1.0}, 3.0)
    table.remove("e1")  # discovery dropped it: no longer counted as taken out
    assert read() == (0.0, {"unhealthy": 2.0, "healthy": 1.0}, 3.0)

    # Given directly (no scraper), and never twice for one registry.
    direct = CollectorRegistry()
    direct.register(HealthCollector(health, pool_name="q"))
    _, samples = scrape(direct)
    assert samples[(counter, lab(name="q", to="unhealthy"))] == 2.0
    assert "inference_pool_unhealthy_endpoints" not in scrape(registry_for(scheduler))[0]
    with_health = registry_for(scheduler, health=health)
    assert scrape(with_health)[1][(gauge, lab(name=""))] == 0.0
