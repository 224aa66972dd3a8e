"""The fleet run: determinism, accounting, what the scheduler sees, presets, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference_sched.cli import main
from inference_sched.errors import ConfigError
from inference_sched.framework.config import load_config
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Request, Response, SchedulingResult
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.presets import PRESETS, resolve_config
from inference_sched.sim.types import EngineConfig, RequestStatus, RunResult, SimRequest
from inference_sched.sim.workloads import Workload, load_workload

MODEL = "meta-llama/Llama-2-7b-hf"
INFLIGHT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: inflight-load-producer
- type: active-request-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
"""


def _workload(requests: list[SimRequest]) -> Workload:
    return Workload(name="hand", requests=tuple(requests), params={}, model=MODEL)


def _request(i: int, t: float, blocks: list[int], output: int = 4) -> SimRequest:
    return SimRequest(
        id=i,
        arrival_s=t,
        prompt_tokens=16 * len(blocks),
        output_tokens=output,
        blocks=np.asarray(blocks, dtype=np.int64),
    )


def _run(workload: Workload, preset: str, **fleet: object) -> RunResult:
    label, config = resolve_config(preset)
    return simulate(workload, config, label=label, fleet=FleetConfig(**fleet))  # type: ignore[arg-type]


def _same_outcome(a: RunResult, b: RunResult) -> None:
    for field in (
        "scheduled_s",
        "first_token_s",
        "finish_s",
        "cached_tokens",
        "preemptions",
        "endpoint",
        "status",
        "sample_s",
        "sample_running",
        "sample_waiting",
        "sample_kv_usage",
    ):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.duration_s == b.duration_s


@pytest.fixture(scope="module")
def small() -> Workload:
    return load_workload("shared-prefix", duration_s=3.0, rate=20.0, seed=3)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_request_ends_exactly_once_and_runs_are_deterministic(
    small: Workload, preset: str
) -> None:
    first = _run(small, preset, num_servers=4, seed=5)
    second = _run(small, preset, num_servers=4, seed=5)
    _same_outcome(first, second)
    n = len(small.requests)
    assert (first.status == RequestStatus.COMPLETED).sum() == n
    assert (first.endpoint >= 0).all()
    done = first.status == RequestStatus.COMPLETED
    assert (first.arrival_s[done] <= first.scheduled_s[done]).all()
    assert (first.scheduled_s[done] < first.first_token_s[done]).all()
    assert (first.first_token_s[done] <= first.finish_s[done]).all()
    assert (first.cached_tokens <= first.prompt_tokens).all()


def test_metrics_are_scraped_on_the_interval_and_the_tail_is_covered(small: Workload) -> None:
    run = _run(small, "load-only", num_servers=4, scrape_interval_s=0.1)
    steps = np.diff(run.sample_s)
    np.testing.assert_allclose(steps, 0.1)
    assert run.sample_s[0] == 0.0
    assert run.sample_running.shape == (len(run.sample_s), 4)
    assert run.sample_s[-1] >= np.nanmax(run.finish_s) - 0.1  # scraped until idle
    assert run.sample_running[-1].sum() == 0


@pytest.mark.parametrize(
    ("interval", "fresh"),
    [pytest.param(0.05, False, id="50ms"), pytest.param(0.0005, True, id="0.5ms")],
)
def test_the_scheduler_sees_metrics_as_old_as_the_scrape_interval(
    monkeypatch: pytest.MonkeyPatch, interval: float, fresh: bool
) -> None:
    # Eight long requests land 1 ms apart on an idle pool of two servers.
    seen: list[tuple[float, list[float], float]] = []
    schedule = Scheduler.schedule

    def spy(self: Scheduler, request: Request) -> SchedulingResult:
        table = self.table
        rows = table.candidates()
        seen.append(
            (
                table.clock(),
                table.last_update_s[rows].tolist(),
                float(table.running[rows].sum() + table.waiting[rows].sum()),
            )
        )
        return schedule(self, request)

    monkeypatch.setattr(Scheduler, "schedule", spy)
    requests = [
        _request(i, 0.001 * (i + 1), list(range(100 * i, 100 * i + 8)), output=2000)
        for i in range(8)
    ]
    _run(_workload(requests), "load-only", num_servers=2, scrape_interval_s=interval)
    assert [now for now, _, _ in seen] == pytest.approx([0.001 * (i + 1) for i in range(8)])
    for i, (now, updated, running) in enumerate(seen):  # running: running + waiting
        if fresh:  # the last scrape is under 0.5 ms old and shows every earlier request
            assert all(now - interval <= t <= now for t in updated)
            assert running == i  # running or waiting for the step in progress to end
        else:  # within the first 50 ms the only scrape is the one at t = 0: an idle pool
            assert updated == [0.0, 0.0]
            assert running == 0


def test_response_hooks_are_delivered_once_in_order_and_release_in_flight_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str, int, float]] = []
    tables = []
    streaming, complete = Scheduler.response_streaming, Scheduler.response_complete

    def spy_streaming(
        self: Scheduler, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        calls.append(("first", request.request_id, response.status_code, response.time_s))
        tables.append(self.table)
        streaming(self, request, response, result)

    def spy_complete(
        self: Scheduler, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        calls.append(("end", request.request_id, response.status_code, response.time_s))
        complete(self, request, response, result)

    monkeypatch.setattr(Scheduler, "response_streaming", spy_streaming)
    monkeypatch.setattr(Scheduler, "response_complete", spy_complete)
    requests = [_request(i, 0.01 * i, [500 + i], output=8) for i in range(20)]
    requests.append(_request(20, 0.5, list(range(1000, 1100))))  # 100 blocks: never fits
    config = load_config(INFLIGHT)
    engine = EngineConfig(num_gpu_blocks=64)
    run = simulate(
        _workload(requests),
        config,
        label="inflight",
        fleet=FleetConfig(num_servers=3, engine=engine),
    )
    assert run.status.tolist() == [RequestStatus.COMPLETED] * 20 + [RequestStatus.REJECTED]
    for rid in range(20):
        mine = [c for c in calls if c[1] == str(rid)]
        assert [(kind, status) for kind, _, status, _ in mine] == [("first", 200), ("end", 200)]
        assert mine[0][3] == run.first_token_s[rid]
        assert mine[1][3] == run.finish_s[rid]
    assert [(kind, status) for kind, rid, status, _ in calls if rid == "20"] == [("end", 400)]
    assert [c[3] for c in calls] == sorted(c[3] for c in calls)  # in time order
    # the in-flight counters PreRequest took are all released
    assert tables[0].inflight_requests[tables[0].candidates()].tolist() == [0.0, 0.0, 0.0]
    assert set(run.endpoint[:20].tolist()) == {0, 1, 2}


def test_prefix_routing_finds_more_cache_than_random_spreading() -> None:
    workload = load_workload("shared-prefix", duration_s=10.0, seed=7)
    rr = _run(workload, "round-robin", num_servers=8, seed=1)
    gie = _run(workload, "gie-default", num_servers=8, seed=1)
    hit = [
        r.cached_tokens[r.status == 0].sum() / r.prompt_tokens[r.status == 0].sum()
        for r in (rr, gie)
    ]
    assert hit[1] > hit[0]


def test_a_prompt_no_server_can_hold_is_rejected_not_lost() -> None:
    engine = EngineConfig(num_gpu_blocks=4)
    requests = [_request(0, 0.0, [1, 2]), _request(1, 0.01, list(range(10, 20)))]
    run = _run(_workload(requests), "load-only", num_servers=2, engine=engine)
    assert run.status.tolist() == [RequestStatus.COMPLETED, RequestStatus.REJECTED]


def test_end_s_cuts_the_run() -> None:
    requests = [_request(i, 0.5 * i, [900 + i], output=2000) for i in range(6)]
    run = _run(_workload(requests), "load-only", num_servers=2, end_s=1.2)
    assert run.status.tolist().count(RequestStatus.UNFINISHED) == 6
    assert (run.endpoint[:3] >= 0).all()
    assert (run.endpoint[3:] == -1).all()


def test_presets_resolve_and_unknown_names_are_explained(tmp_path: Path) -> None:
    assert resolve_config("gie-default")[0] == "gie-default"
    with pytest.raises(ConfigError, match="unknown config 'gie-defualt': not a preset"):
        resolve_config("gie-defualt")
    path = tmp_path / "mine.yaml"
    path.write_text(PRESETS["load-only"] or "")
    label, config = resolve_config(str(path))
    assert label == "mine"
    assert [p.name for p in config.scheduling_profiles] == ["default"]


def test_simulate_command_writes_the_json_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "simulate",
            "--duration",
            "2",
            "--endpoints",
            "4",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["config"] for r in report["runs"]] == ["round-robin", "load-only", "gie-default"]
    for run in report["runs"]:
        for key in (
            "ttft_p50_s",
            "ttft_p90_s",
            "ttft_p99_s",
            "tpot_p90_s",
            "e2e_p90_s",
            "throughput_req_s",
            "throughput_out_tok_s",
            "prefix_hit_rate",
            "completed",
            "failed",
        ):
            assert key in run
        assert run["completed"] == report["workload"]["requests"]
    printed = capsys.readouterr().out
    assert "gie-default" in printed
    assert "round-robin" in printed


def test_kv_events_stream_what_the_servers_cache() -> None:
    from inference_sched.sim.kvcache import BlockRemoved, BlockStored
    from inference_sched.sim.prompts import block_token_ids

    seen: list[tuple[str, object]] = []
    requests = [_request(0, 0.0, [11, 12, 13]), _request(1, 0.01, [11, 12, 14, 15])]
    label, config = resolve_config("load-only")
    engine = EngineConfig(num_gpu_blocks=64)
    simulate(
        _workload(requests),
        config,
        label=label,
        fleet=FleetConfig(num_servers=1, engine=engine),
        kv_events=lambda server, event: seen.append((server, event)),
    )
    assert {server for server, _ in seen} == {"sim-0"}
    assert not [e for _, e in seen if isinstance(e, BlockRemoved)]  # nothing evicted
    stored = [e for _, e in seen if isinstance(e, BlockStored)]
    # the second prompt reuses 11 and 12 and stores only what it adds after them
    assert [(e.block_hashes, e.parent_block_hash) for e in stored] == [
        ([11, 12, 13], None),
        ([14, 15], 12),
    ]
    assert stored[0].token_ids == [t for b in (11, 12, 13) for t in block_token_ids(b)]
    assert stored[0].block_size == 16


def test_duration_is_the_last_event_not_the_last_scrape() -> None:
    run = _run(_workload([_request(0, 0.0, [1])]), "load-only", num_servers=1)
    assert run.status.tolist() == [RequestStatus.COMPLETED]
    assert run.duration_s == run.finish_s[0]
    assert run.sample_s[-1] > run.duration_s  # the tail is scraped past it


def test_a_cut_before_the_first_arrival_reports_every_request_unfinished() -> None:
    run = _run(_workload([_request(0, 1.0, [1])]), "load-only", num_servers=1, end_s=0.5)
    assert run.status.tolist() == [RequestStatus.UNFINISHED]
    assert np.isnan(run.decision_us_p50)


def test_replicas_take_requests_round_robin_and_keep_their_own_state(
    small: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_sched.sim import fleet as fleet_module

    built: list[object] = []
    fleet_class = fleet_module._Fleet

    class Spy(fleet_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            built.append(self)

    monkeypatch.setattr(fleet_module, "_Fleet", Spy)
    label, config = "inflight", load_config(INFLIGHT)
    run = simulate(small, config, label=label, fleet=FleetConfig(num_servers=4, replicas=3))
    n = len(small.requests)
    assert (run.status == RequestStatus.COMPLETED).sum() == n
    (state,) = built
    schedulers = state.schedulers  # type: ignore[attr-defined]
    assert len(schedulers) == 3
    assert [s.cycles for s in schedulers] == [len(range(k, n, 3)) for k in range(3)]
    for scheduler in schedulers:  # every replica got its own responses back
        producer = scheduler.plugins["inflight-load-producer"]
        assert producer.num_tracked_requests() == 0
        assert scheduler.table.inflight_requests[scheduler.table.candidates()].sum() == 0
        assert scheduler.table.last_update_s.max() == run.sample_s[-1]  # all scraped
    # Replicas see a third of the picks each, so spreading by in-flight counts is worse
    # informed than with one replica: the runs differ, each deterministic.
    one = simulate(small, config, label=label, fleet=FleetConfig(num_servers=4))
    assert not np.array_equal(one.endpoint, run.endpoint)


# ------------------------------------------------------------------------------- P/D
PD_CONFIG = """\
plugins:
- type: test-pd-handler
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""


@pytest.fixture
def pd_handler() -> Any:
    """A profile handler running ``decode`` then, for long prompts, ``prefill``."""
    from collections.abc import Mapping

    from inference_sched.framework import registry

    @registry.register("test-pd-handler")
    class Handler:
        def __init__(self, name: str, params: object, handle: object) -> None:
            self.name = name

        def pick_profiles(
            self, cycle: Any, request: Request, profiles: Mapping[str, Any], results: Any
        ) -> Mapping[str, Any]:
            if "decode" not in results:
                return {"decode": profiles["decode"]}
            if "prefill" not in results and len(request.prompt or b"") >= 4 * 512:
                return {"prefill": profiles["prefill"]}
            return {}

        def process_results(self, cycle: Any, request: Request, results: Any) -> SchedulingResult:
            return SchedulingResult(profile_results=dict(results), primary_profile_name="decode")

    yield Handler
    registry._forget("test-pd-handler")


def test_pd_prefills_on_the_prefill_pool_and_decodes_after_the_transfer(pd_handler: Any) -> None:
    long_blocks = list(range(1000, 1064))  # 1024 tokens: disaggregated
    short_blocks = list(range(2000, 2004))  # 64 tokens: decoded in place
    requests = [
        _request(0, 0.0, long_blocks, output=8),
        _request(1, 0.001, short_blocks, output=8),
    ]
    config = load_config(PD_CONFIG)
    fleet = FleetConfig(
        num_servers=4, prefill_servers=2, kv_transfer_base_s=0.25, kv_transfer_s_per_token=1e-4
    )
    run = simulate(_workload(requests), config, label="pd", fleet=fleet)
    assert list(run.status) == [RequestStatus.COMPLETED] * 2
    assert run.prefill_endpoint is not None
    assert run.prefill_endpoint[0] in (0, 1)  # a prefill server
    assert run.prefill_endpoint[1] == -1
    assert run.endpoint[0] in (2, 3)
    assert run.endpoint[1] in (2, 3)
    # Decode starts after the prefill ran and 0.25 s + 1024 x 0.1 ms of transfer.
    assert run.scheduled_s[0] >= 0.25 + 0.1024
    assert run.first_token_s[0] - run.arrival_s[0] >= 0.3524
    # A cold prefill server: no prompt token was a cache hit (the transfer is not one).
    assert run.cached_tokens[0] == 0
    # The KV arrived: the decode server computes one token, not the 1024-token prefill
    # (22 ms on these servers when colocated): first token ~6 ms after admission.
    assert run.first_token_s[0] - run.scheduled_s[0] < 0.015
    assert run.first_token_s[1] - run.arrival_s[1] < 0.25


def test_pd_needs_a_decode_server() -> None:
    label, config = resolve_config("load-only")
    with pytest.raises(ValueError, match="prefill_servers"):
        simulate(
            _workload([_request(0, 0.0, [1])]),
            config,
            label=label,
            fleet=FleetConfig(num_servers=2, prefill_servers=2),
        )
