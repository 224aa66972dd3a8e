"""Prometheus metrics of a scheduler, under GIE's names, computed at scrape time.

Design note. The scheduling path keeps plain counters (``Scheduler.cycles``,
``failures``, ``e2e_ns``, one :class:`~inference_sched.framework.profile.PluginStats` per plugin
and extension point, the prefix producer's byte counters and match histogram) and never
touches a Prometheus object. :class:`SchedulerCollector` is a custom collector: every
scrape reads those counters and the endpoint table and builds fresh metric families, so
a decision pays nothing for metrics and an unscraped scheduler pays nothing at all.

GIE exports the scheduler e2e and plugin durations as histograms. The scheduler records
every decision in a :class:`~inference_sched.framework.stats.DurationHistogram` (GIE's bounds,
~0.2 us per decision), exported with real buckets; plugins keep totals only, so their
histograms carry just the ``+Inf`` bucket plus exact ``_sum`` and ``_count``, unless
``Scheduler.record_plugin_histograms()`` gave each ``PluginStats`` a histogram.

Names we add where GIE has none follow its style (``inference_extension_*`` for the
scheduler and plugins, ``inference_pool_*`` for the pool); docs/metrics.md lists them all.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from inference_sched._version import __version__
from inference_sched.framework.profile import PluginStats
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.stats import DEFAULT_DURATION_BUCKETS_S, DurationHistogram, le_label

__all__ = [
    "DEFAULT_DURATION_BUCKETS_S",
    "DEFAULT_STALENESS_THRESHOLD_S",
    "DurationHistogram",
    "HealthCollector",
    "SchedulerCollector",
    "ScraperCollector",
    "expose",
    "registry_for",
]

log = logging.getLogger(__name__)

DEFAULT_STALENESS_THRESHOLD_S: Final = 2.0
"""GIE's ``--metrics-staleness-threshold``: endpoints scraped longer ago than this are left
out of the pool averages and ``ready_pods``."""

# Metric names. GIE's (pkg/epp/metrics/metrics.go) unless marked "ours".
E2E_DURATION: Final = "inference_extension_scheduler_e2e_duration_seconds"
ATTEMPTS: Final = "inference_extension_scheduler_attempts"  # exposed with _total
SHED: Final = "inference_extension_shed_requests"  # ours; _total
DENIED: Final = "inference_extension_denied_requests"  # ours; _total
PLUGIN_DURATION: Final = "inference_extension_plugin_duration_seconds"
PLUGIN_ERRORS: Final = "inference_extension_plugin_errors"  # ours; _total
PLUGIN_INVALID_SCORES: Final = "inference_extension_plugin_invalid_scores"  # ours; _total
PREFIX_SIZE: Final = "inference_extension_prefix_indexer_size"
PREFIX_HIT_RATIO: Final = "inference_extension_prefix_indexer_hit_ratio"
PREFIX_HIT_BYTES: Final = "inference_extension_prefix_indexer_hit_bytes"
PREFIX_LOOKUP_BYTES: Final = "inference_extension_prefix_indexer_lookup_bytes"  # ours; _total
PREFIX_MATCH_BLOCKS: Final = "inference_extension_prefix_indexer_match_blocks"  # ours
POOL_AVG_KV: Final = "inference_pool_average_kv_cache_utilization"
POOL_AVG_QUEUE: Final = "inference_pool_average_queue_size"
POOL_AVG_RUNNING: Final = "inference_pool_average_running_requests"
POOL_READY: Final = "inference_pool_ready_pods"
POOL_HEALTHY: Final = "inference_pool_healthy_endpoints"  # ours
POOL_ENDPOINT_AGE: Final = "inference_pool_endpoint_metrics_age_seconds"  # ours
POOL_UNHEALTHY: Final = "inference_pool_unhealthy_endpoints"  # ours
HEALTH_TRANSITIONS: Final = "inference_pool_endpoint_health_transitions"  # ours; _total
INFO: Final = "inference_extension"  # exposed as inference_extension_info

_PLUGIN_LABELS: Final = ("extension_point", "plugin_type", "plugin_name")


class _PluginTotals:
    """One label set's PluginStats summed (a plugin shared by two profiles is one series)."""

    __slots__ = ("calls", "clamped", "errors", "histogram", "nonfinite", "total_ns")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.total_ns = 0
        self.nonfinite = 0
        self.clamped = 0
        self.histogram: DurationHistogram | None = None

    def add(self, stats: PluginStats, first: bool) -> None:
        self.calls += stats.calls
        self.errors += stats.errors
        self.total_ns += stats.total_ns
        self.nonfinite += stats.nonfinite_scores
        self.clamped += stats.clamped_scores
        recorded = getattr(stats, "histogram", None)
        if not isinstance(recorded, DurationHistogram):
            self.histogram = None  # one label set without buckets: +Inf only for all
        elif first:
            self.histogram = DurationHistogram(recorded.bounds_s)
            self.histogram.merge(recorded)
        elif self.histogram is not None and self.histogram.bounds_s == recorded.bounds_s:
            self.histogram.merge(recorded)
        else:
            self.histogram = None


class SchedulerCollector(Collector):
    """A Prometheus collector reading one scheduler's counters and endpoint table.

    Register it in a ``CollectorRegistry`` (or use :func:`registry_for`). Each
    ``collect()`` computes every family from the current state; nothing is cached except a
    floor that keeps the success counter monotonic (see ``_attempts``).

    Args:
        scheduler: the scheduler to export.
        pool_name: value of the ``name`` label of the ``inference_pool_*`` metrics (GIE
            labels them with the InferencePool's name).
        staleness_threshold_s: endpoints whose metrics are older than this are left out
            of the pool averages and ``ready_pods`` (GIE's 2 s default).
        clock: the time base of ``table.last_update_s``; the table's clock by default.

    Raises:
        ValueError: ``staleness_threshold_s`` is not a positive number.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        pool_name: str = "",
        staleness_threshold_s: float = DEFAULT_STALENESS_THRESHOLD_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not staleness_threshold_s > 0:  # also rejects NaN
            raise ValueError(f"staleness_threshold_s must be > 0, got {staleness_threshold_s!r}")
        self.scheduler = scheduler
        self.pool_name = pool_name
        self.staleness_threshold_s = float(staleness_threshold_s)
        self.clock: Callable[[], float] = scheduler.table.clock if clock is None else clock
        self._lock = threading.Lock()
        self._success_floor = 0
        self._warned: set[tuple[str, str]] = set()

    # ----------------------------------------------------------------- protocol
    def describe(self) -> Iterable[Metric]:
        """The families ``collect`` yields, so a registry can refuse duplicate names
        (two schedulers in one registry would export clashing series)."""
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        """Every metric family, computed now."""
        yield from self._attempts()
        yield from self._plugins()
        yield from self._prefix()
        yield from self._pool()
        yield InfoMetricFamily(
            INFO, "Build information of inference-sched.", value={"version": __version__}
        )

    # ----------------------------------------------------------------- families
    def _attempts(self) -> Iterator[Metric]:
        scheduler = self.scheduler
        # failures before cycles: a cycle counts in ``cycles`` from its start, in
        # ``failures`` only at its end, so cycles - failures may include cycles still
        # running that will fail. The floor keeps the success counter from going back
        # down then (Prometheus would read that as a reset).
        failures = scheduler.failures
        cycles = scheduler.cycles
        e2e_ns = scheduler.e2e_ns
        with self._lock:
            self._success_floor = max(self._success_floor, cycles - failures)
            success = self._success_floor
        attempts = CounterMetricFamily(
            ATTEMPTS, "Scheduling cycles by outcome (status: success, failure).", labels=["status"]
        )
        attempts.add_metric(["success"], success)
        attempts.add_metric(["failure"], failures)
        yield attempts
        shed = CounterMetricFamily(
            SHED,
            "Sheddable requests (priority < 0) rejected at admission because the pool was "
            "saturated (HTTP 429).",
            labels=[],
        )
        shed.add_metric([], getattr(scheduler, "shed", 0))
        yield shed
        denied = CounterMetricFamily(
            DENIED,
            "Requests an admitter plugin denied before scheduling (latency-slo-admitter: "
            "HTTP 500).",
            labels=[],
        )
        denied.add_metric([], getattr(scheduler, "denied", 0))
        yield denied
        e2e = HistogramMetricFamily(
            E2E_DURATION, "End-to-end scheduling latency distribution in seconds.", labels=[]
        )
        recorded = getattr(scheduler, "e2e_histogram", None)
        if isinstance(recorded, DurationHistogram):
            e2e.add_metric([], recorded.buckets(), recorded.sum_ns / 1e9)
        else:
            e2e.add_metric([], [("+Inf", float(cycles))], e2e_ns / 1e9)
        yield e2e

    def _plugins(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str, str], _PluginTotals] = {}
        for stats in self.scheduler.stats():
            key = (stats.extension_point, stats.plugin_type, stats.plugin_name)
            entry = totals.get(key)
            first = entry is None
            if entry is None:
                entry = totals[key] = _PluginTotals()
            entry.add(stats, first)
        duration = HistogramMetricFamily(
            PLUGIN_DURATION,
            "Plugin processing latency distribution in seconds for each extension point, "
            "plugin type and plugin name.",
            labels=_PLUGIN_LABELS,
        )
        errors = CounterMetricFamily(
            PLUGIN_ERRORS,
            "Plugin calls that raised (the scheduler isolated them), by extension point, "
            "plugin type and plugin name.",
            labels=_PLUGIN_LABELS,
        )
        invalid = CounterMetricFamily(
            PLUGIN_INVALID_SCORES,
            "Scores a scorer returned outside [0, 1] (reason=clamped) or not finite "
            "(reason=nonfinite, scored 0).",
            labels=["plugin_type", "plugin_name", "reason"],
        )
        for key, entry in totals.items():
            labels = list(key)
            if entry.histogram is not None:
                duration.add_metric(labels, entry.histogram.buckets(), entry.histogram.sum_ns / 1e9)
            else:
                duration.add_metric(labels, [("+Inf", float(entry.calls))], entry.total_ns / 1e9)
            errors.add_metric(labels, entry.errors)
            if key[0] == "Scorer":
                invalid.add_metric([key[1], key[2], "clamped"], entry.clamped)
                invalid.add_metric([key[1], key[2], "nonfinite"], entry.nonfinite)
        yield duration
        yield errors
        yield invalid

    def _prefix(self) -> Iterator[Metric]:
        producers = [
            (name, plugin)
            for name, plugin in self.scheduler.plugins.items()
            if callable(getattr(plugin, "index_size", None))
            or callable(getattr(plugin, "hit_ratio", None))
        ]
        if not producers:
            return
        # GIE has one unlabelled indexer; label by plugin only when there are several.
        label_names = ["plugin_name"] if len(producers) > 1 else []
        size = GaugeMetricFamily(
            PREFIX_SIZE, "(hash, endpoint) entries in the prefix indexer.", labels=label_names
        )
        ratio = GaugeMetricFamily(
            PREFIX_HIT_RATIO,
            "Cumulative bytes of prompt found cached on the primary pick / bytes hashed "
            "(GIE: a histogram of per-lookup ratios).",
            labels=label_names,
        )
        hit_bytes = HistogramMetricFamily(
            PREFIX_HIT_BYTES,
            "Length of the prefix match in bytes on the primary pick, per lookup with at "
            "least one block (+Inf bucket only).",
            labels=label_names,
        )
        lookup_bytes = CounterMetricFamily(
            PREFIX_LOOKUP_BYTES,
            "Bytes of prompt hashed for the prefix lookup (denominator of the hit ratio).",
            labels=label_names,
        )
        match_blocks = HistogramMetricFamily(
            PREFIX_MATCH_BLOCKS,
            "Blocks of the prompt found cached on the primary pick, per lookup with at "
            "least one block (buckets only).",
            labels=label_names,
        )
        for name, plugin in producers:
            labels = [name] if label_names else []
            value = self._number(name, plugin, "index_size")
            if value is not None:
                size.add_metric(labels, value)
            value = self._number(name, plugin, "hit_ratio")
            if value is not None:
                ratio.add_metric(labels, value)
            cumulative = self._match_histogram(name, plugin)
            if cumulative:
                match_blocks.add_metric(labels, [(le_label(le), c) for le, c in cumulative], None)
                hit = self._number(name, plugin, "hit_bytes")
                if hit is not None:
                    hit_bytes.add_metric(labels, [("+Inf", cumulative[-1][1])], hit)
            value = self._number(name, plugin, "total_bytes")
            if value is not None:
                lookup_bytes.add_metric(labels, value)
        yield from (size, ratio, hit_bytes, lookup_bytes, match_blocks)

    def _pool(self) -> Iterator[Metric]:
        table = self.scheduler.table
        now = float(self.clock())
        with table.lock:  # rows and names consistent with each other (no add/remove)
            rows = np.flatnonzero(table.is_alive)
            healthy = table.is_healthy[rows]
            updated = table.last_update_s[rows]
            kv = table.kv_usage_frac[rows]
            waiting = table.waiting[rows]
            running = table.running[rows]
            names = [table.endpoint_at(row).name for row in rows.tolist()]
        # Never scraped (-inf) -> +inf; a stamp ahead of the clock reads as just scraped.
        age = np.maximum(now - updated, 0.0)
        fresh = healthy & (age <= self.staleness_threshold_s)
        ready = int(np.count_nonzero(fresh))
        pool = [self.pool_name]
        averages = (
            (POOL_AVG_KV, "The average kv cache utilization (0..1) of the pool.", kv),
            (POOL_AVG_QUEUE, "The average number of requests waiting per model server.", waiting),
            (POOL_AVG_RUNNING, "The average number of running requests per model server.", running),
        )
        for name, doc, column in averages:
            family = GaugeMetricFamily(
                name, doc + " Healthy endpoints with fresh metrics only.", labels=["name"]
            )
            if ready:  # no fresh endpoint: no sample rather than a made-up 0
                family.add_metric(pool, float(column[fresh].mean()))
            yield family
        ready_pods = GaugeMetricFamily(
            POOL_READY,
            "Healthy endpoints whose metrics are fresher than the staleness threshold.",
            labels=["name"],
        )
        ready_pods.add_metric(pool, ready)
        yield ready_pods
        healthy_endpoints = GaugeMetricFamily(
            POOL_HEALTHY,
            "Healthy endpoints (scheduling candidates), fresh or not.",
            labels=["name"],
        )
        healthy_endpoints.add_metric(pool, int(np.count_nonzero(healthy)))
        yield healthy_endpoints
        ages = GaugeMetricFamily(
            POOL_ENDPOINT_AGE,
            "Seconds since the endpoint's metrics were last updated (+Inf: never).",
            labels=["name", "endpoint"],
        )
        for endpoint, value in zip(names, age.tolist(), strict=True):
            ages.add_metric([self.pool_name, endpoint], value)
        yield ages

    # ------------------------------------------------------------------ helpers
    def _read(self, name: str, plugin: object, attr: str) -> Any:
        """``plugin.attr`` (called when a method); ``None`` when absent or raising.

        Plugins are third-party code: a scrape must not fail because of one.
        """
        value = getattr(plugin, attr, None)
        if not callable(value):
            return value
        try:
            return value()
        except Exception as exc:  # noqa: BLE001 - see docstring
            self._warn_once(name, attr, exc)
            return None

    def _number(self, name: str, plugin: object, attr: str) -> float | None:
        value = self._read(name, plugin, attr)
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            self._warn_once(name, attr, exc)
            return None

    def _match_histogram(self, name: str, plugin: object) -> list[tuple[float, float]]:
        """``match_length_histogram()`` as sorted ``(le, cumulative)`` ending at +Inf, or
        ``[]`` when absent or malformed."""
        raw = self._read(name, plugin, "match_length_histogram")
        if raw is None:
            return []
        try:
            pairs = sorted((float(le), float(c)) for le, c in dict(raw).items())
        except (TypeError, ValueError) as exc:
            self._warn_once(name, "match_length_histogram", exc)
            return []
        return pairs if pairs and pairs[-1][0] == math.inf else []

    def _warn_once(self, name: str, attr: str, exc: BaseException) -> None:
        if (name, attr) not in self._warned:
            self._warned.add((name, attr))
            log.warning(
                "metrics: plugin %s: reading %s failed; the metric is left out (logged once): %r",
                name,
                attr,
                exc,
                exc_info=exc,
            )


class ScraperCollector(Collector):
    """The data layer's scrape health, per endpoint, from a scraper's ``statuses()``
    (:class:`inference_sched.datalayer.scraper.Scraper`); read at collect time.

    Exports ``inference_pool_endpoint_scrape_errors_total{name,endpoint}`` (failed
    scrapes since first seen) and ``inference_pool_endpoint_scrape_failing{name,endpoint}``
    (1 while the last scrape failed). GIE has no names for these; they follow its style.
    """

    def __init__(self, scraper: Any, *, pool_name: str = "") -> None:
        self._scraper = scraper
        self._pool = pool_name

    def describe(self) -> Iterable[Metric]:
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._scraper.statuses())

    def _families(self, statuses: Any) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "inference_pool_endpoint_scrape_errors",
            "Failed metrics scrapes of the endpoint since it was first seen.",
            labels=("name", "endpoint"),
        )
        failing = GaugeMetricFamily(
            "inference_pool_endpoint_scrape_failing",
            "1 while the endpoint's last metrics scrape failed (its values are stale).",
            labels=("name", "endpoint"),
        )
        for endpoint in sorted(statuses):
            status = statuses[endpoint]
            errors.add_metric((self._pool, endpoint), float(status.errors_total))
            failing.add_metric((self._pool, endpoint), 1.0 if status.failing else 0.0)
        yield errors
        yield failing


class HealthCollector(Collector):
    """Endpoints taken out of the candidate set by health checks, from an
    :class:`~inference_sched.datalayer.health.EndpointHealth`; read at collect time.

    Exports ``inference_pool_unhealthy_endpoints{name}`` (taken out now) and
    ``inference_pool_endpoint_health_transitions_total{name,to}`` (``to`` =
    ``unhealthy`` | ``healthy``). GIE has no health checks, so no names for these;
    they follow its style (docs/metrics.md).
    """

    def __init__(self, health: Any, *, pool_name: str = "") -> None:
        # Duck-typed (table, num_taken_out, ...): observability may not import the
        # data layer (both are layer 5, docs/architecture.md).
        self._health = health
        self._pool = pool_name

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        health = self._health
        with health.table.lock:  # the three numbers from one moment
            taken_out = health.num_taken_out
            out_total = health.num_taken_out_total
            back_total = health.num_put_back_total
        unhealthy = GaugeMetricFamily(
            POOL_UNHEALTHY,
            "Endpoints taken out of the candidate set because they could not be reached; "
            "each comes back at its first successful scrape.",
            labels=["name"],
        )
        unhealthy.add_metric([self._pool], taken_out)
        yield unhealthy
        transitions = CounterMetricFamily(
            HEALTH_TRANSITIONS,
            "Endpoints taken out of (to=unhealthy) or put back into (to=healthy) the "
            "candidate set by health checks.",
            labels=["name", "to"],
        )
        transitions.add_metric([self._pool, "unhealthy"], out_total)
        transitions.add_metric([self._pool, "healthy"], back_total)
        yield transitions


def registry_for(
    scheduler: Scheduler,
    *,
    pool_name: str = "",
    staleness_threshold_s: float = DEFAULT_STALENESS_THRESHOLD_S,
    clock: Callable[[], float] | None = None,
    registry: CollectorRegistry | None = None,
    scraper: Any = None,
    health: Any = None,
) -> CollectorRegistry:
    """A registry exporting ``scheduler`` (a new one unless ``registry`` is given), the
    scrape health of ``scraper`` when one is given (:class:`ScraperCollector`), and the
    endpoints taken out by ``health`` (:class:`HealthCollector`; by default the
    scraper's own ``scraper.health``, when it has one).

    Mount it with ``prometheus_client.make_asgi_app(registry)`` /
    ``make_wsgi_app(registry)`` / ``start_http_server(port, registry=registry)``, or
    serialise it with :func:`expose`. Pass ``registry=prometheus_client.REGISTRY`` to add
    the scheduler to the process-wide default registry (process and GC metrics).

    Raises:
        ValueError: the registry already exports one of these names (e.g. another
            scheduler: use one registry per scheduler).
    """
    registry = CollectorRegistry() if registry is None else registry
    registry.register(
        SchedulerCollector(
            scheduler, pool_name=pool_name, staleness_threshold_s=staleness_threshold_s, clock=clock
        )
    )
    if scraper is not None:
        registry.register(ScraperCollector(scraper, pool_name=pool_name))
    if health is None:
        health = getattr(scraper, "health", None)
    if health is not None and hasattr(health, "num_taken_out"):
        registry.register(HealthCollector(health, pool_name=pool_name))
    return registry


def expose(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format 0.0.4 (content type
    ``prometheus_client.CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)
