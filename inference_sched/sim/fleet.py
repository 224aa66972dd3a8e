"""The fleet run: a workload, N simulated servers, and a real scheduler in between.

The scheduler sees only what a gateway's endpoint picker sees. Every
``scrape_interval_s`` (GIE's ``refreshMetricsInterval``, 50 ms) each server's metrics are
copied into the :class:`~inference_sched.state.table.EndpointTable`, so decisions work on
state up to one interval old; between scrapes the scheduler knows only its own
decisions (PreRequest) and the response hooks it is called with: first token
(``response_streaming``) and end of stream (``response_complete``).

Event order. Requests arrive in workload order. Before a decision at time ``t`` every
server is advanced to ``t`` and the hooks of everything that happened up to ``t`` are
delivered in time order; before a scrape at ``t`` likewise. Engine events between two
decisions cannot influence each other (only decisions touch the servers), so delivering
them in one batch before the next decision is exact. After the last arrival the servers
run until idle (or until ``end_s``), still scraped, so load samples cover the tail.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import InferenceSchedError
from inference_sched.framework.config import EndpointPickerConfig
from inference_sched.framework.contracts import PREFILL_PROFILE
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    ROLE_LABEL,
    Endpoint,
    Request,
    Response,
    SchedulingResult,
    Usage,
)
from inference_sched.sim import latency as latency_models
from inference_sched.sim.engine import Server
from inference_sched.sim.prompts import block_token_ids, prompt_bytes, prompt_token_ids
from inference_sched.sim.types import (
    EngineConfig,
    EngineEvent,
    EventKind,
    RequestStatus,
    RunResult,
    SimRequest,
)
from inference_sched.sim.workloads import Workload
from inference_sched.state.table import EndpointTable

__all__ = ["FleetConfig", "KvEventSink", "Progress", "simulate"]

Progress = Callable[[int, int], None]
"""Called as ``progress(requests_decided, total)`` every few hundred decisions."""

KvEventSink = Callable[[str, object], None]
"""Receives ``(server_name, event)`` for every KV-cache event (see :func:`simulate`)."""

_PROGRESS_EVERY = 256


@attrs.frozen
class FleetConfig:
    """The simulated pool.

    Attributes:
        num_servers: model servers in the pool.
        engine: every server's engine parameters.
        scrape_interval_s: metrics refresh interval (GIE ``refreshMetricsInterval``).
        end_s: cut the run at this simulated time (unfinished requests are reported as
            such); None runs until every request has ended.
        seed: seeds the scheduler's random tie-breaks and pickers (replica ``k`` uses
            ``seed + k``).
        replicas: scheduler replicas (below).
    """

    num_servers: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    engine: EngineConfig = attrs.field(factory=EngineConfig)
    scrape_interval_s: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    end_s: float | None = None
    seed: int = 0
    prefill_servers: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """P/D: the first this many servers are labelled ``llm-d.ai/role: prefill``, the rest
    ``decode`` (0: no roles, every server does both). A request whose result has a
    ``prefill`` pick runs its prompt there (``max_tokens`` 1, as llm-d's sidecar does),
    its KV blocks travel to the decode pick (:attr:`kv_transfer_base_s` +
    :attr:`kv_transfer_s_per_token` per prompt token), and the decode server then
    serves it from its prefix cache."""
    kv_transfer_base_s: float = attrs.field(default=0.001, validator=attrs.validators.ge(0))
    """Fixed cost of one P/D KV transfer (connection, metadata, scheduling)."""
    kv_transfer_s_per_token: float = attrs.field(default=2e-5, validator=attrs.validators.ge(0))
    """Transfer time per prompt token: Llama-2-7B's 512 KiB of fp16 KV per token over
    ~25 GB/s (NIXL over RDMA) is about 20 µs."""
    replicas: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    """Scheduler replicas, each with its own table, plugins and state, as several active
    EPPs behind one gateway: requests reach them round-robin, each replica sees only
    its own decisions and responses, and every replica scrapes every server (and gets
    every server's KV events)."""


class _Fleet:
    """One run's mutable state (a class so the hot loop reads attributes, not closures)."""

    def __init__(
        self,
        workload: Workload,
        config: EndpointPickerConfig,
        fleet: FleetConfig,
        kv_events: KvEventSink | None,
    ) -> None:
        self.now = 0.0
        self.last_event_s = 0.0  # arrivals and engine events, not scrapes
        self.names = tuple(f"sim-{i}" for i in range(fleet.num_servers))
        pd = fleet.prefill_servers
        if pd >= fleet.num_servers:
            raise ValueError(
                f"prefill_servers ({pd}) must leave at least one of the "
                f"{fleet.num_servers} servers to decode"
            )
        self.endpoints = tuple(
            Endpoint(
                f"{name}-rank-0",
                f"10.0.{i // 256}.{i % 256}",
                8000,
                labels={ROLE_LABEL: "prefill" if i < pd else "decode"} if pd else {},
            )
            for i, name in enumerate(self.names)
        )
        self.fleet = fleet
        # P/D: prefill jobs in flight (job id -> request) and KV transfers under way.
        self.prefill_jobs: dict[int, SimRequest] = {}
        self.transfers: list[tuple[float, int]] = []  # (lands at, request id), a heap
        self.prefill_endpoint = np.full(len(workload.requests), -1, dtype=np.int32)
        # One table and scheduler per replica; every table lists the servers in order.
        self.tables: list[EndpointTable] = []
        self.schedulers: list[Scheduler] = []
        self.rows = np.empty(fleet.num_servers, dtype=np.int32)
        for k in range(fleet.replicas):
            table = EndpointTable(clock=lambda: self.now)
            for i, endpoint in enumerate(self.endpoints):
                self.rows[i] = table.add(endpoint).row
            self.tables.append(table)
            self.schedulers.append(Scheduler.from_config(config, table, seed=fleet.seed + k))
        self.table, self.scheduler = self.tables[0], self.schedulers[0]
        # Plugins that read engine KV events (the precise prefix producer) get every
        # server's events in process, by the endpoint's ip:port (llm-d's pod id).
        plugins = [p for scheduler in self.schedulers for p in scheduler.plugins.values()]
        consumers = [p.kv_event for p in plugins if callable(getattr(p, "kv_event", None))]
        for plugin in plugins:
            if callable(getattr(plugin, "events_in_process", None)):
                plugin.events_in_process()  # no sockets: the servers are in this process
        self.token_ids = any(getattr(p, "wants_token_ids", False) for p in plugins)
        sink = _fan_out(
            kv_events,
            consumers,
            dict(zip(self.names, self.endpoints, strict=True)),
            workload.model,
        )
        step_model = latency_models.load(fleet.engine.latency_model)
        self.kv_sink_attached = sink is not None
        token_ids_of = block_token_ids if sink is not None else None
        self.servers = [
            Server(name, fleet.engine, step_model, kv_events=sink, token_ids_of=token_ids_of)
            for name in self.names
        ]
        self.next_replica = 0
        self.model = workload.model
        n = len(workload.requests)
        self.requests = workload.requests
        self.scheduled_s = np.full(n, math.nan)
        self.first_token_s = np.full(n, math.nan)
        self.finish_s = np.full(n, math.nan)
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.endpoint = np.full(n, -1, dtype=np.int32)
        self.status = np.full(n, RequestStatus.UNFINISHED, dtype=np.int8)
        self.in_flight: dict[int, tuple[Scheduler, Request, SchedulingResult]] = {}
        self.row_to_server = {int(row): i for i, row in enumerate(self.rows)}
        self.samples: list[tuple[float, list[float], list[float], list[float]]] = []
        self.decision_ns: list[int] = []

    # ------------------------------------------------------------------ time
    def advance_all(self, t: float) -> None:
        """Run every server up to ``t`` and deliver what happened, in time order; P/D KV
        transfers land on their decode server at their own times on the way."""
        transfers = self.transfers
        while transfers and transfers[0][0] <= t:
            lands, rid = heapq.heappop(transfers)
            self._advance(lands)
            self._land(lands, rid)
        self._advance(t)

    def _land(self, t: float, rid: int) -> None:
        """The prompt's KV reached the decode server: the request joins it there."""
        sim = self.requests[rid]
        server = self.servers[int(self.endpoint[rid])]
        stranded = server.advance(t)  # nothing left after _advance
        assert not stranded, "engine events past the transfer"
        server.receive_kv(sim)
        server.submit(sim, t)

    def _advance(self, t: float) -> None:
        events: list[tuple[float, int, EngineEvent]] = []
        every = self.kv_sink_attached  # mid-chunk steps emit KV events when committed
        for i, server in enumerate(self.servers):
            if every or server.next_event_s() <= t:
                events.extend((e.time_s, i, e) for e in server.advance(t))
        if not events:
            return
        if len(events) > 1:
            events.sort(key=lambda item: (item[0], item[1]))
        for _, _, event in events:
            self.deliver(event)

    def deliver(self, event: EngineEvent) -> None:
        rid = event.request_id
        self.now = self.last_event_s = event.time_s
        kind = event.kind
        if rid < 0:  # a P/D prefill job: its end starts the KV transfer
            self._prefill_event(event)
            return
        if kind == EventKind.FIRST_TOKEN:
            scheduler, request, result = self.in_flight[rid]
            scheduler.response_streaming(
                request, self._response(request, is_start_of_stream=True), result
            )
        elif kind == EventKind.FINISHED:
            scheduler, request, result = self.in_flight.pop(rid)
            finished = event.finished
            assert finished is not None
            self.scheduled_s[rid] = finished.scheduled_s
            self.first_token_s[rid] = finished.first_token_s
            self.finish_s[rid] = finished.finish_s
            if self.prefill_endpoint[rid] < 0:  # P/D: the prefill server's hits count
                self.cached_tokens[rid] = finished.cached_tokens
            self.preemptions[rid] = finished.preemptions
            self.status[rid] = RequestStatus.COMPLETED
            sim = self.requests[rid]
            # The usage the final chunk reports (OpenAI ``usage``): what a gateway passes.
            usage = Usage(sim.prompt_tokens, sim.output_tokens, int(self.cached_tokens[rid]))
            scheduler.response_complete(
                request, self._response(request, is_end_of_stream=True, usage=usage), result
            )
        elif kind == EventKind.REJECTED:
            scheduler, request, result = self.in_flight.pop(rid)
            self.status[rid] = RequestStatus.REJECTED
            scheduler.response_complete(
                request, self._response(request, status_code=400, is_end_of_stream=True), result
            )
        # PREEMPTED: the engine counts it in Finished; the scheduler is not told (a real
        # gateway is not either).

    def _prefill_event(self, event: EngineEvent) -> None:
        kind = event.kind
        if kind == EventKind.FINISHED:
            sim = self.prefill_jobs.pop(event.request_id)
            finished = event.finished
            assert finished is not None
            # The prompt's cache hits are the prefill server's: the blocks that reach the
            # decode server are a transfer, not a hit.
            self.cached_tokens[sim.id] = finished.cached_tokens
            fleet = self.fleet
            lands = (
                event.time_s
                + fleet.kv_transfer_base_s
                + fleet.kv_transfer_s_per_token * sim.prompt_tokens
            )
            heapq.heappush(self.transfers, (lands, sim.id))
        elif kind == EventKind.REJECTED:  # the prefill server can never hold the prompt
            sim = self.prefill_jobs.pop(event.request_id)
            scheduler, request, result = self.in_flight.pop(sim.id)
            self.status[sim.id] = RequestStatus.REJECTED
            scheduler.response_complete(
                request, self._response(request, status_code=400, is_end_of_stream=True), result
            )
        # FIRST_TOKEN of a prefill job: the one token is dropped (llm-d's sidecar).

    def _response(self, request: Request, **fields: Any) -> Response:
        """What the gateway would report to the response hooks now."""
        return Response(request.request_id, time_s=self.now, **fields)

    def scrape(self, t: float) -> None:
        """Copy every server's metrics into the table, as a metrics refresh would."""
        self.now = t
        metrics = [server.metrics(t) for server in self.servers]
        waiting = [float(m.waiting) for m in metrics]
        running = [float(m.running) for m in metrics]
        kv = [m.kv_usage_frac for m in metrics]
        blocks = [float(m.num_gpu_blocks) for m in metrics]
        block_size = [float(m.block_size) for m in metrics]
        max_loras = [float(m.max_loras) for m in metrics]
        for table in self.tables:
            table.update_metrics(
                self.rows,
                now_s=t,
                waiting=waiting,
                running=running,
                kv_usage_frac=kv,
                kv_blocks_total=blocks,
                block_size_tokens=block_size,
                max_loras=max_loras,
            )
            for row, m in zip(self.rows.tolist(), metrics, strict=True):
                if m.running_adapters or m.waiting_adapters or table.num_adapters[row]:
                    # sorted: the table interns adapters in the order it sees them
                    table.set_adapters(row, sorted(m.running_adapters), sorted(m.waiting_adapters))
        self.samples.append((t, running, waiting, kv))

    # -------------------------------------------------------------- decisions
    def decide(self, sim: SimRequest) -> None:
        self.now = self.last_event_s = sim.arrival_s
        model = sim.lora or self.model
        request = Request.create(
            model,
            prompt=prompt_bytes(sim.blocks, sim.prompt_tokens),
            # As a gateway with a tokenizer would, for plugins that match token blocks.
            token_ids=prompt_token_ids(sim.blocks, sim.prompt_tokens) if self.token_ids else None,
            request_id=str(sim.id),
            base_models=(self.model,),
            headers=_headers(sim),
            priority=sim.priority,
        )
        scheduler = self.schedulers[self.next_replica]  # the gateway's round-robin
        self.next_replica = (self.next_replica + 1) % len(self.schedulers)
        t0 = time.perf_counter_ns()
        try:
            result = scheduler.schedule(request)
        except InferenceSchedError:
            self.decision_ns.append(time.perf_counter_ns() - t0)
            self.status[sim.id] = RequestStatus.FAILED_SCHEDULING
            return
        self.decision_ns.append(time.perf_counter_ns() - t0)
        scheduler.run_deferred()  # the answer is out: e.g. the prefix index update
        server = self.row_to_server[result.primary.rows[0]]
        self.endpoint[sim.id] = server
        self.in_flight[sim.id] = (scheduler, request, result)
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.rows and result.primary_profile_name != PREFILL_PROFILE:
            prefill_server = self.row_to_server[prefill.rows[0]]
            if prefill_server != server:  # disaggregated: prefill there, then transfer
                self.prefill_endpoint[sim.id] = prefill_server
                job = attrs.evolve(sim, id=-(sim.id + 1), output_tokens=1)
                self.prefill_jobs[job.id] = sim
                target = self.servers[prefill_server]
                stranded = target.advance(sim.arrival_s)
                assert not stranded, "engine events past advance_all"
                target.submit(job, sim.arrival_s)
                return
        target = self.servers[server]
        stranded = target.advance(sim.arrival_s)  # nothing left after advance_all
        assert not stranded, "engine events past advance_all"
        target.submit(sim, sim.arrival_s)

    def result(self, label: str, wall_s: float) -> RunResult:
        """The run's :class:`RunResult`."""
        prefill = self.prefill_endpoint if self.fleet.prefill_servers else None
        return run_result(self, label, wall_s, prefill_endpoint=prefill)


def _headers(sim: SimRequest) -> dict[str, str] | None:
    """What the gateway passes on: the session and the SLO objectives."""
    headers = {}
    if sim.session:
        headers["x-session-id"] = sim.session
    if sim.slo_ttft_ms > 0:
        headers["x-slo-ttft-ms"] = f"{sim.slo_ttft_ms:g}"
    if sim.slo_tpot_ms > 0:
        headers["x-slo-tpot-ms"] = f"{sim.slo_tpot_ms:g}"
    return headers or None


def _fan_out(
    external: KvEventSink | None,
    consumers: list[Callable[[str, object, str], None]],
    endpoints: dict[str, Endpoint],
    model: str,
) -> KvEventSink | None:
    """One sink for the servers: the caller's (by server name) and every consumer's (by
    the endpoint's ``ip:port``, the pod id of llm-d's ``kv@<pod>@<model>`` topics)."""
    if not consumers:
        return external
    pods = {name: endpoint.hostport for name, endpoint in endpoints.items()}

    def sink(server: str, event: object) -> None:
        if external is not None:
            external(server, event)
        pod = pods[server]
        for consume in consumers:
            consume(pod, event, model)

    return sink


def simulate(
    workload: Workload,
    config: EndpointPickerConfig,
    *,
    label: str,
    fleet: FleetConfig | None = None,
    progress: Progress | None = None,
    kv_events: KvEventSink | None = None,
) -> RunResult:
    """Route ``workload`` over a simulated pool with the scheduler built from ``config``.

    Deterministic for a given workload, config and ``fleet.seed``: the same inputs give
    the same :class:`RunResult` apart from ``wall_s`` and ``decision_us_p50``.

    Args:
        kv_events: called as ``kv_events(server_name, event)`` with every KV-cache event
            of every server, in vLLM's shapes (``BlockStored`` with the blocks' token ids,
            ``BlockRemoved``, ``AllBlocksCleared``; :mod:`inference_sched.sim.kvcache`),
            for a precise prefix index to consume.
    """
    fleet = fleet or FleetConfig()
    state = _Fleet(workload, config, fleet, kv_events)
    interval = fleet.scrape_interval_s
    end_s = math.inf if fleet.end_s is None else fleet.end_s
    total = len(workload.requests)
    t0 = time.perf_counter()
    state.scrape(0.0)
    scrapes = 1
    next_scrape = interval
    for k, sim in enumerate(workload.requests):
        t = sim.arrival_s
        if t > end_s:
            break
        while next_scrape <= t:
            state.advance_all(next_scrape)
            state.scrape(next_scrape)
            scrapes += 1
            next_scrape = scrapes * interval  # no drift from repeated addition
        state.advance_all(t)
        state.decide(sim)
        if progress is not None and k % _PROGRESS_EVERY == 0:
            progress(k, total)
    # The tail: keep scraping while any server has work or a KV transfer is under way.
    while next_scrape <= end_s and (
        state.transfers or min(s.next_event_s() for s in state.servers) < math.inf
    ):
        state.advance_all(next_scrape)
        state.scrape(next_scrape)
        scrapes += 1
        next_scrape = scrapes * interval
    state.advance_all(end_s)
    if progress is not None:
        progress(total, total)
    return state.result(label, time.perf_counter() - t0)


def run_result(
    run: Any, label: str, wall_s: float, *, prefill_endpoint: npt.NDArray[np.int32] | None = None
) -> RunResult:
    """The :class:`RunResult` of a finished simulation ``run`` (a fleet or a multicluster
    run: its requests, per-request times, decisions and samples)."""
    if run.samples:
        sample_s = np.array([s[0] for s in run.samples])
        running = np.array([s[1] for s in run.samples])
        waiting = np.array([s[2] for s in run.samples])
        kv = np.array([s[3] for s in run.samples])
    else:
        sample_s = np.empty(0)
        running = waiting = kv = np.empty((0, len(run.servers)))
    decisions = np.array(run.decision_ns, dtype=np.float64)
    return RunResult(
        config=label,
        endpoint_names=run.names,
        arrival_s=np.array([r.arrival_s for r in run.requests], dtype=np.float64),
        scheduled_s=run.scheduled_s,
        first_token_s=run.first_token_s,
        finish_s=run.finish_s,
        prompt_tokens=np.array([r.prompt_tokens for r in run.requests], dtype=np.int64),
        output_tokens=np.array([r.output_tokens for r in run.requests], dtype=np.int64),
        cached_tokens=run.cached_tokens,
        preemptions=run.preemptions,
        endpoint=run.endpoint,
        status=run.status,
        sample_s=sample_s,
        sample_running=running,
        sample_waiting=waiting,
        sample_kv_usage=kv,
        duration_s=run.last_event_s,
        wall_s=wall_s,
        decision_us_p50=float(np.percentile(decisions, 50)) / 1e3 if decisions.size else math.nan,
        prefill_endpoint=prefill_endpoint,
    )
