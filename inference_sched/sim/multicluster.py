"""Multicluster simulation: a cluster-scoped EPP choosing among peer clusters, each a
gateway with its own pool and inner EPP (``docs/simulator/multicluster.md``).

The two levels, as llm-d-router's multicluster family runs them
(``pkg/epp/framework/plugins/README.md``, "Multi-cluster variants"):

- **inner**: each cluster is a pool of simulated model servers behind its own
  :class:`~inference_sched.framework.scheduler.Scheduler` (built from ``inner_config``),
  which scrapes its servers every ``scrape_interval_s`` exactly as
  :mod:`inference_sched.sim.fleet` does;
- **outer**: one endpoint per cluster in a table of its own. Every
  ``cluster_scrape_interval_s`` the outer table receives each cluster's pool averages,
  computed from the inner table as the inner EPP exports them
  (``llm_d_epp_average_queue_size``, ``llm_d_epp_average_kv_cache_utilization``), as the
  endpoint attributes ``llm-d.ai/multicluster-queue-size`` and
  ``llm-d.ai/multicluster-kv-cache-utilization``: what ``multicluster-metrics-extractor``
  writes. The outer scheduler (the policy being judged) picks a cluster, the cluster's
  inner scheduler picks a server.

Both schedulers get their request hooks (first token, end of stream). Round-robin has no
GIE picker, so the ``round-robin`` policy is done here (cluster ``k mod n``), without an
outer scheduler. :func:`compare_policies` runs the same workload under each policy and
returns per-cluster load share and TTFT percentiles next to the overall summary of
:func:`inference_sched.sim.report.summarize`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import InferenceSchedError
from inference_sched.framework.config import EndpointPickerConfig, load_config
from inference_sched.framework.contracts import (
    MULTICLUSTER_KV_CACHE_UTILIZATION,
    MULTICLUSTER_QUEUE_SIZE,
)
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Endpoint, Request, Response, SchedulingResult, Usage
from inference_sched.sim import latency as latency_models
from inference_sched.sim.engine import Server
from inference_sched.sim.fleet import run_result
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.prompts import prompt_bytes
from inference_sched.sim.report import PERCENTILES, summarize
from inference_sched.sim.types import (
    EngineConfig,
    EngineEvent,
    EventKind,
    RequestStatus,
    RunResult,
    SimRequest,
)
from inference_sched.sim.workloads import Workload, load_workload
from inference_sched.state.table import EndpointTable

__all__ = [
    "KV_CACHE_UTILIZATION_ATTRIBUTE",
    "POLICIES",
    "QUEUE_SIZE_ATTRIBUTE",
    "ClusterSpec",
    "MulticlusterFleet",
    "MulticlusterRun",
    "compare_policies",
    "main",
    "simulate_multicluster",
]

# What multicluster-metrics-extractor writes and the multicluster scorers read (empty
# producer). Only plugins/ may import plugins/, so the keys are spelt here too.
QUEUE_SIZE_ATTRIBUTE: Final = MULTICLUSTER_QUEUE_SIZE
KV_CACHE_UTILIZATION_ATTRIBUTE: Final = MULTICLUSTER_KV_CACHE_UTILIZATION

_HEADER: Final = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
"""

POLICIES: Final[Mapping[str, str | None]] = {
    "multicluster": _HEADER
    + """\
plugins:
- type: multicluster-queue-scorer
- type: multicluster-kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: multicluster-queue-scorer, weight: 1}
  - {pluginRef: multicluster-kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: max-score-picker}
""",
    "random": _HEADER
    + """\
plugins:
- type: random-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: random-picker
""",
    "round-robin": None,
}
"""Cluster-choice policies by name: an outer ``EndpointPickerConfig`` (YAML), or None
for the round-robin done by the simulation itself."""


@attrs.frozen
class ClusterSpec:
    """One peer cluster: a pool of identical servers behind its own gateway and EPP."""

    name: str
    num_servers: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    engine: EngineConfig = attrs.field(factory=EngineConfig)
    """Every server's engine; e.g. ``step_overhead_s`` or another ``latency_model`` for
    a slower cluster."""


def _two_clusters() -> tuple[ClusterSpec, ...]:
    return (ClusterSpec("cluster-a"), ClusterSpec("cluster-b"))


@attrs.frozen
class MulticlusterFleet:
    """The simulated clusters and the two refresh intervals."""

    clusters: tuple[ClusterSpec, ...] = attrs.field(
        factory=_two_clusters, validator=attrs.validators.min_len(1)
    )
    inner_config: str = "load-only"
    """Every cluster's inner EPP: a preset name of :mod:`inference_sched.sim.presets` or
    a config file path."""
    scrape_interval_s: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    """Inner EPPs' metrics refresh (GIE ``refreshMetricsInterval``)."""
    cluster_scrape_interval_s: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    """Outer EPP's scrape of the clusters' pool averages (the
    ``multicluster-metrics-data-source`` interval)."""
    end_s: float | None = None
    """Cut the run at this simulated time; None runs until every request has ended."""
    seed: int = 0
    """Seeds the outer scheduler (``seed``) and cluster ``k``'s inner one (``seed + 1 + k``)."""

    def __attrs_post_init__(self) -> None:
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster names must be unique, got {names}")


@attrs.frozen(eq=False)
class MulticlusterRun:
    """One policy's run: the per-server result and the cluster of each server."""

    policy: str
    run: RunResult
    """Over every server of every cluster; ``endpoint_names`` are ``<cluster>/<server>``."""
    cluster_names: tuple[str, ...]
    server_cluster: npt.NDArray[np.int32]
    """Cluster index of each server (index into ``cluster_names``)."""

    def request_cluster(self) -> npt.NDArray[np.int32]:
        """Cluster index of each request, -1 where it was never routed."""
        routed = self.run.endpoint >= 0
        out = np.full(self.run.endpoint.shape, -1, dtype=np.int32)
        out[routed] = self.server_cluster[self.run.endpoint[routed]]
        return out

    def summary(self) -> dict[str, object]:
        """:func:`~inference_sched.sim.report.summarize` plus, per cluster, the requests
        routed there, their share and their TTFT percentiles (seconds)."""
        summary = summarize(self.run)
        summary["config"] = self.policy
        clusters = self.request_cluster()
        routed = clusters >= 0
        counts = np.bincount(clusters[routed], minlength=len(self.cluster_names))
        total = int(counts.sum())
        run = self.run
        done = run.status == RequestStatus.COMPLETED
        ttft = run.first_token_s - run.arrival_s
        per_cluster: dict[str, dict[str, float | int | None]] = {}
        for k, name in enumerate(self.cluster_names):
            mine = ttft[done & (clusters == k)]
            entry: dict[str, float | int | None] = {
                "requests": int(counts[k]),
                "share": float(counts[k]) / total if total else None,
            }
            for p in PERCENTILES:
                entry[f"ttft_p{p}_s"] = float(np.percentile(mine, p)) if mine.size else None
            per_cluster[name] = entry
        summary["clusters"] = per_cluster
        return summary


# ---------------------------------------------------------------------------- the run
class _Cluster:
    """One cluster: its servers (global indices), inner table and scheduler."""

    def __init__(
        self,
        index: int,
        spec: ClusterSpec,
        config: EndpointPickerConfig,
        first_server: int,
        seed: int,
        clock: _Clock,
    ) -> None:
        self.index = index
        self.spec = spec
        self.servers = np.arange(first_server, first_server + spec.num_servers, dtype=np.int32)
        self.table = EndpointTable(clock=clock)
        self.rows = np.empty(spec.num_servers, dtype=np.int32)
        for i in range(spec.num_servers):
            n = first_server + i
            endpoint = Endpoint(f"{spec.name}-sim-{i}", f"10.{index}.{n // 256}.{n % 256}", 8000)
            self.rows[i] = self.table.add(endpoint).row
        self.row_to_server = {int(r): int(s) for r, s in zip(self.rows, self.servers, strict=True)}
        self.scheduler = Scheduler.from_config(config, self.table, seed=seed)


class _Clock:
    """The simulated time every table reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_Hooks = list[tuple[Scheduler, Request, SchedulingResult]]


def _end_streams(
    hooks: _Hooks, t: float, *, status_code: int = 200, usage: Usage | None = None
) -> None:
    """The end-of-stream hook of every scheduler that took part in a request."""
    for scheduler, request, result in hooks:
        response = Response(
            request.request_id,
            status_code=status_code,
            is_end_of_stream=True,
            usage=usage,
            time_s=t,
        )
        scheduler.response_complete(request, response, result)


class _Multicluster:
    """One run's mutable state."""

    def __init__(
        self,
        workload: Workload,
        outer: EndpointPickerConfig | None,
        inner: EndpointPickerConfig,
        fleet: MulticlusterFleet,
    ) -> None:
        self.clock = _Clock()
        self.last_event_s = 0.0
        self.fleet = fleet
        self.clusters: list[_Cluster] = []
        first = 0
        for k, spec in enumerate(fleet.clusters):
            self.clusters.append(_Cluster(k, spec, inner, first, fleet.seed + 1 + k, self.clock))
            first += spec.num_servers
        self.names = tuple(
            f"{c.spec.name}/sim-{i}" for c in self.clusters for i in range(c.spec.num_servers)
        )
        self.server_cluster = np.array(
            [c.index for c in self.clusters for _ in range(c.spec.num_servers)], dtype=np.int32
        )
        self.servers: list[Server] = []
        for c in self.clusters:
            step_model = latency_models.load(c.spec.engine.latency_model)
            self.servers.extend(
                Server(name, c.spec.engine, step_model)
                for name in self.names[c.servers[0] : c.servers[-1] + 1]
            )
        # The outer EPP: one endpoint per cluster (its gateway).
        self.outer_table = EndpointTable(clock=self.clock)
        self.cluster_rows = np.array(
            [
                self.outer_table.add(Endpoint(c.spec.name, f"gw.{c.spec.name}.example", 443)).row
                for c in self.clusters
            ],
            dtype=np.int32,
        )
        self.row_to_cluster = {int(r): k for k, r in enumerate(self.cluster_rows)}
        self.outer = (
            None
            if outer is None
            else Scheduler.from_config(outer, self.outer_table, seed=fleet.seed)
        )
        self.next_cluster = 0  # round-robin
        self.model = workload.model
        self.requests = workload.requests
        n = len(workload.requests)
        self.scheduled_s = np.full(n, math.nan)
        self.first_token_s = np.full(n, math.nan)
        self.finish_s = np.full(n, math.nan)
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.endpoint = np.full(n, -1, dtype=np.int32)
        self.status = np.full(n, RequestStatus.UNFINISHED, dtype=np.int8)
        self.in_flight: dict[int, _Hooks] = {}
        self.samples: list[tuple[float, list[float], list[float], list[float]]] = []
        self.decision_ns: list[int] = []

    # ------------------------------------------------------------------ time
    def advance_all(self, t: float) -> None:
        """Run every server up to ``t`` and deliver what happened, in time order."""
        events: list[tuple[float, int, EngineEvent]] = []
        for i, server in enumerate(self.servers):
            if server.next_event_s() <= t:
                events.extend((e.time_s, i, e) for e in server.advance(t))
        events.sort(key=lambda item: (item[0], item[1]))
        for _, _, event in events:
            self.deliver(event)

    def deliver(self, event: EngineEvent) -> None:
        rid = event.request_id
        self.clock.now = self.last_event_s = event.time_s
        if event.kind == EventKind.FIRST_TOKEN:
            for scheduler, request, result in self.in_flight[rid]:
                response = Response(
                    request.request_id, time_s=event.time_s, is_start_of_stream=True
                )
                scheduler.response_streaming(request, response, result)
        elif event.kind == EventKind.FINISHED:
            finished = event.finished
            assert finished is not None
            self.scheduled_s[rid] = finished.scheduled_s
            self.first_token_s[rid] = finished.first_token_s
            self.finish_s[rid] = finished.finish_s
            self.cached_tokens[rid] = finished.cached_tokens
            self.preemptions[rid] = finished.preemptions
            self.status[rid] = RequestStatus.COMPLETED
            sim = self.requests[rid]
            usage = Usage(sim.prompt_tokens, sim.output_tokens, finished.cached_tokens)
            self._complete(rid, event.time_s, usage=usage)
        elif event.kind == EventKind.REJECTED:
            self.status[rid] = RequestStatus.REJECTED
            self._complete(rid, event.time_s, status_code=400)

    def _complete(
        self, rid: int, t: float, *, status_code: int = 200, usage: Usage | None = None
    ) -> None:
        _end_streams(self.in_flight.pop(rid), t, status_code=status_code, usage=usage)

    def scrape_servers(self, t: float) -> None:
        """Every inner EPP's metrics refresh of its own servers."""
        self.clock.now = t
        metrics = [server.metrics(t) for server in self.servers]
        for c in self.clusters:
            mine = [metrics[int(s)] for s in c.servers]
            c.table.update_metrics(
                c.rows,
                now_s=t,
                waiting=[float(m.waiting) for m in mine],
                running=[float(m.running) for m in mine],
                kv_usage_frac=[m.kv_usage_frac for m in mine],
                kv_blocks_total=[float(m.num_gpu_blocks) for m in mine],
                block_size_tokens=[float(m.block_size) for m in mine],
                max_loras=[float(m.max_loras) for m in mine],
            )
        self.samples.append(
            (
                t,
                [float(m.running) for m in metrics],
                [float(m.waiting) for m in metrics],
                [m.kv_usage_frac for m in metrics],
            )
        )

    def scrape_clusters(self, t: float) -> None:
        """The outer EPP's scrape of each cluster's pool averages (what the inner EPP
        exports), written as the multicluster endpoint attributes."""
        self.clock.now = t
        attributes = self.outer_table.attributes
        for c, row in zip(self.clusters, self.cluster_rows.tolist(), strict=True):
            attributes.put_many(
                row,
                {
                    QUEUE_SIZE_ATTRIBUTE: float(np.mean(c.table.waiting[c.rows])),
                    KV_CACHE_UTILIZATION_ATTRIBUTE: float(np.mean(c.table.kv_usage_frac[c.rows])),
                },
            )

    # -------------------------------------------------------------- decisions
    def _request(self, sim: SimRequest) -> Request:
        return Request.create(
            sim.lora or self.model,
            prompt=prompt_bytes(sim.blocks, sim.prompt_tokens),
            request_id=str(sim.id),
            base_models=(self.model,),
            headers={"x-session-id": sim.session} if sim.session else None,
            priority=sim.priority,
        )

    def decide(self, sim: SimRequest) -> None:
        self.clock.now = self.last_event_s = sim.arrival_s
        hooks: _Hooks = []
        t0 = time.perf_counter_ns()
        try:
            if self.outer is None:
                cluster = self.clusters[self.next_cluster]
                self.next_cluster = (self.next_cluster + 1) % len(self.clusters)
            else:
                outer_request = self._request(sim)
                outer_result = self.outer.schedule(outer_request)
                self.outer.run_deferred()
                hooks.append((self.outer, outer_request, outer_result))
                cluster = self.clusters[self.row_to_cluster[outer_result.primary.rows[0]]]
            inner_request = self._request(sim)
            inner_result = cluster.scheduler.schedule(inner_request)
            cluster.scheduler.run_deferred()
            hooks.append((cluster.scheduler, inner_request, inner_result))
        except InferenceSchedError:
            self.decision_ns.append(time.perf_counter_ns() - t0)
            self.status[sim.id] = RequestStatus.FAILED_SCHEDULING
            _end_streams(hooks, sim.arrival_s, status_code=503)  # release the outer pick
            return
        self.decision_ns.append(time.perf_counter_ns() - t0)
        server = cluster.row_to_server[inner_result.primary.rows[0]]
        self.endpoint[sim.id] = server
        self.in_flight[sim.id] = hooks
        target = self.servers[server]
        stranded = target.advance(sim.arrival_s)  # nothing left after advance_all
        assert not stranded, "engine events past advance_all"
        target.submit(sim, sim.arrival_s)

    def result(self, label: str, wall_s: float) -> RunResult:
        """The run's :class:`RunResult` (the servers of both clusters, in order)."""
        return run_result(self, label, wall_s)


def _policy_config(policy: str | EndpointPickerConfig | None) -> EndpointPickerConfig | None:
    if policy is None or isinstance(policy, EndpointPickerConfig):
        return policy
    if policy in POLICIES:
        text = POLICIES[policy]
        return None if text is None else load_config(text)
    return resolve_config(policy)[1]


def simulate_multicluster(
    workload: Workload,
    policy: str | EndpointPickerConfig | None,
    *,
    fleet: MulticlusterFleet | None = None,
    label: str | None = None,
) -> MulticlusterRun:
    """Route ``workload`` over ``fleet``'s clusters with the cluster choice ``policy``.

    Args:
        policy: a name of :data:`POLICIES`, an outer ``EndpointPickerConfig`` (or a path
            to one), or None for round-robin.
        label: the run's name in reports (default: the policy name).

    Deterministic for a given workload, policy and ``fleet.seed``, apart from the wall
    times.
    """
    fleet = fleet or MulticlusterFleet()
    name = label or (policy if isinstance(policy, str) else "custom" if policy else "round-robin")
    inner = resolve_config(fleet.inner_config)[1]
    state = _Multicluster(workload, _policy_config(policy), inner, fleet)
    end_s = math.inf if fleet.end_s is None else fleet.end_s
    timers = _Timers(fleet.scrape_interval_s, fleet.cluster_scrape_interval_s)
    t0 = time.perf_counter()
    state.scrape_servers(0.0)
    state.scrape_clusters(0.0)
    for sim in workload.requests:
        if sim.arrival_s > end_s:
            break
        timers.run_until(state, sim.arrival_s)
        state.advance_all(sim.arrival_s)
        state.decide(sim)
    while timers.next_s() <= end_s and any(s.next_event_s() < math.inf for s in state.servers):
        timers.run_until(state, timers.next_s())
    state.advance_all(end_s)
    run = state.result(name, time.perf_counter() - t0)
    names = tuple(c.name for c in fleet.clusters)
    return MulticlusterRun(name, run, names, state.server_cluster)


class _Timers:
    """The two periodic scrapes, ``k * interval`` (no drift); servers before clusters
    when they coincide, so the clusters' averages include that refresh."""

    def __init__(self, servers_s: float, clusters_s: float) -> None:
        self.intervals = (servers_s, clusters_s)
        self.counts = [1, 1]

    def next_s(self) -> float:
        return min(self.counts[0] * self.intervals[0], self.counts[1] * self.intervals[1])

    def run_until(self, state: _Multicluster, t: float) -> None:
        while True:
            due = [self.counts[i] * self.intervals[i] for i in (0, 1)]
            now = min(due)
            if now > t:
                return
            state.advance_all(now)
            if due[0] == now:
                state.scrape_servers(now)
                self.counts[0] += 1
            if due[1] == now:
                state.scrape_clusters(now)
                self.counts[1] += 1


def compare_policies(
    workload: Workload,
    *,
    fleet: MulticlusterFleet | None = None,
    policies: Sequence[str] = ("multicluster", "random", "round-robin"),
) -> dict[str, object]:
    """Run ``workload`` under each cluster-choice policy; return a JSON-ready report:
    ``workload``, ``clusters`` (name, servers, engine), ``runs`` (one
    :meth:`MulticlusterRun.summary` per policy, in order)."""
    fleet = fleet or MulticlusterFleet()
    runs = [simulate_multicluster(workload, p, fleet=fleet).summary() for p in policies]
    return {
        "workload": {"name": workload.name, "requests": len(workload), **workload.params},
        "clusters": [
            {"name": c.name, "servers": c.num_servers, "engine": attrs.asdict(c.engine)}
            for c in fleet.clusters
        ],
        "inner_config": fleet.inner_config,
        "runs": runs,
    }


# ---------------------------------------------------------------------------- CLI
def _format(report: Mapping[str, object]) -> str:
    runs = report["runs"]
    assert isinstance(runs, list)
    lines = []
    for run in runs:
        clusters = run["clusters"]
        shares = "  ".join(
            f"{name} {c['share']:.1%} (ttft p50 {_ms(c['ttft_p50_s'])}, p99 {_ms(c['ttft_p99_s'])})"
            for name, c in clusters.items()
        )
        lines.append(
            f"{run['config']:<13} ttft p50 {_ms(run['ttft_p50_s'])} p90 {_ms(run['ttft_p90_s'])} "
            f"p99 {_ms(run['ttft_p99_s'])}  completed {run['completed']}/{run['requests']}  "
            f"{shares}"
        )
    return "\n".join(lines)


def _ms(value: object) -> str:
    return "-" if not isinstance(value, float) else f"{value * 1e3:.0f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference_sched.sim.multicluster``: compare the policies on two
    clusters, the second ``--slow-overhead-s`` slower per engine step."""
    parser = argparse.ArgumentParser(prog="python -m inference_sched.sim.multicluster")
    parser.add_argument("--workload", default="shared-prefix", help="a workload name or trace:PATH")
    parser.add_argument("--rate", type=float, default=None, help="requests per second")
    parser.add_argument("--duration", type=float, default=None, help="seconds of workload")
    parser.add_argument("--servers", type=int, nargs=2, default=(4, 4), metavar=("A", "B"))
    parser.add_argument("--slow-overhead-s", type=float, default=0.02)
    parser.add_argument("--inner-config", default="load-only")
    parser.add_argument("--policy", action="append", help="repeatable; default: all three")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    workload = load_workload(
        args.workload, rate=args.rate, duration_s=args.duration, seed=args.seed
    )
    fleet = MulticlusterFleet(
        clusters=(
            ClusterSpec("cluster-a", args.servers[0]),
            ClusterSpec(
                "cluster-b", args.servers[1], EngineConfig(step_overhead_s=args.slow_overhead_s)
            ),
        ),
        inner_config=args.inner_config,
        seed=args.seed,
    )
    policies = tuple(args.policy or ("multicluster", "random", "round-robin"))
    report = compare_policies(workload, fleet=fleet, policies=policies)
    print(_format(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
