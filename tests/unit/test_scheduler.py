"""Scheduler: config wiring, GIE's profile-handler loop, errors, hooks, batches."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

from inference_sched import (
    ConfigError,
    CycleState,
    Endpoint,
    EndpointTable,
    InferenceSchedError,
    NoEndpointError,
    ProfileRunResult,
    Request,
    Response,
    Scheduler,
    SchedulingError,
    SchedulingProfile,
    SchedulingResult,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.registry import get
from inference_sched.params import NoParams
from tests.helpers import make_table

QUEUE_KV = """
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
"""


def build(plugin_type: str, table: EndpointTable, name: str | None = None, **params: Any) -> Any:
    from inference_sched.params import parse_params

    cls = get(plugin_type)
    return cls(name or plugin_type, parse_params(cls.Params, params, "test"), PluginHandle(table))


def test_default_config_schedules_by_queue_and_kv() -> None:
    # queue scores (max-q)/(max-min): e0 1.0, e1 0.5, e2 0.0; kv 1-u: .2, .9, 1.0
    table = make_table(3, waiting=[0, 2, 4], kv_usage_frac=[0.8, 0.1, 0.0])
    scheduler = Scheduler.from_config(None, table, seed=0)
    # totals: e0 2*1+2*.2 = 2.4; e1 2*.5+2*.9 = 2.8; e2 0+2*1 = 2.0 (prefix 0: no prompt)
    assert scheduler.schedule(Request.create("m")).endpoint.name == "e1"
    assert set(scheduler.profiles) == {"default"}
    assert scheduler.handler.type == "single-profile-handler"


def test_fallbacks_are_ranked() -> None:
    table = make_table(3, waiting=[0, 2, 4], kv_usage_frac=[0.8, 0.1, 0.0])
    result = Scheduler.from_config(QUEUE_KV, table, seed=0).schedule(Request.create("m"))
    # totals: e0 2.4, e1 2.8, e2 2.0 -> e1 then e0
    assert [e.name for e in result.target_endpoints] == ["e1", "e0"]
    np.testing.assert_allclose(result.primary.scores, [2.8, 2.4], rtol=1e-6)
    assert result.destination_header == "10.0.0.1:8000,10.0.0.0:8000"
    assert result.primary_profile_name == "default"


def test_ties_break_at_random_but_reproducibly() -> None:
    table = make_table(4)  # every endpoint equal
    picks = [
        Scheduler.from_config(QUEUE_KV, table, seed=s).schedule(Request.create("m")).endpoint.name
        for s in range(40)
    ]
    assert set(picks) == {"e0", "e1", "e2", "e3"}
    again = [
        Scheduler.from_config(QUEUE_KV, table, seed=s).schedule(Request.create("m")).endpoint.name
        for s in range(40)
    ]
    assert picks == again


def test_empty_pool_and_empty_subset_raise_no_endpoint() -> None:
    scheduler = Scheduler.from_config(QUEUE_KV, EndpointTable(), seed=0)
    with pytest.raises(NoEndpointError, match=r"the pool \(or the gateway's subset\) is empty"):
        scheduler.schedule(Request.create("m"))
    scheduler = Scheduler.from_config(QUEUE_KV, make_table(2), seed=0)
    with pytest.raises(NoEndpointError):
        scheduler.schedule(Request.create("m", subset_hint=["10.9.9.9:8000"]))
    assert scheduler.failures == 1


def test_subset_hint_restricts_candidates() -> None:
    table = make_table(3, waiting=[0, 5, 9])
    scheduler = Scheduler.from_config(QUEUE_KV, table, seed=0)
    result = scheduler.schedule(Request.create("m", subset_hint=["10.0.0.1:8000", "10.0.0.2:1"]))
    assert [e.name for e in result.target_endpoints] == ["e1", "e2"]


def test_filter_emptying_every_profile_is_a_scheduling_error() -> None:
    table = make_table(2)  # no role labels: prefill-filter drops them all
    config = QUEUE_KV.replace(
        "- type: queue-scorer", "- type: prefill-filter\n- type: queue-scorer"
    )
    config = config.replace(
        "  - {pluginRef: queue-scorer, weight: 2}",
        "  - {pluginRef: prefill-filter}\n  - {pluginRef: queue-scorer, weight: 2}",
    )
    scheduler = Scheduler.from_config(config, table, seed=0)
    with pytest.raises(
        SchedulingError,
        match=(
            "failed to run any scheduler profile: "
            "profile 'default': filter 'prefill-filter' removed every candidate"
        ),
    ) as info:
        scheduler.schedule(Request.create("m"))
    assert isinstance(info.value.profile_errors["default"], NoEndpointError)


class TwoStepHandler:
    """Runs 'decode', then 'prefill' only if decode succeeded; primary = decode."""

    type: ClassVar[str] = "two-step-handler"
    Params = NoParams

    def __init__(self, name: str = "two-step") -> None:
        self.name = name
        self.rounds = 0

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        self.rounds += 1
        if "decode" not in results:
            return {"decode": profiles["decode"]}
        if results["decode"] is not None and "prefill" not in results:
            return {"prefill": profiles["prefill"]}
        return {}

    def process_results(
        self, cycle: CycleState, request: Request, results: Mapping[str, ProfileRunResult | None]
    ) -> SchedulingResult:
        if results.get("decode") is None:
            raise SchedulingError("decode failed")
        return SchedulingResult(dict(results), "decode")


def role_table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 0.0)
    for i, role in enumerate(["prefill", "decode", "prefill", "decode"]):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, {"llm-d.ai/role": role}))
    table.update_metrics(np.arange(4), waiting=[3.0, 1.0, 0.0, 4.0])
    return table


def pd_scheduler(table: EndpointTable, handler: Any) -> Scheduler:
    queue = build("queue-scorer", table)
    picker = build("max-score-picker", table)
    profiles = {
        "decode": SchedulingProfile(
            "decode", [build("decode-filter", table)], [(queue, 1.0)], picker
        ),
        "prefill": SchedulingProfile(
            "prefill", [build("prefill-filter", table)], [(queue, 1.0)], picker
        ),
    }
    return Scheduler(table, profiles, handler, seed=0)


def test_profile_handler_loop_runs_profiles_in_rounds() -> None:
    handler = TwoStepHandler()
    scheduler = pd_scheduler(role_table(), handler)
    result = scheduler.schedule(Request.create("m"))
    assert handler.rounds == 3  # decode, prefill, stop
    assert result.endpoint.name == "e1"  # decode endpoint with the shorter queue
    assert result.picked("prefill") is not None
    assert result.picked("prefill").name == "e2"


class NeverStops(TwoStepHandler):
    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        return {"decode": profiles["decode"]}


def test_a_handler_that_never_stops_is_cut_off() -> None:
    scheduler = pd_scheduler(role_table(), NeverStops())
    with pytest.raises(SchedulingError, match="did not stop after 4 rounds"):
        scheduler.schedule(Request.create("m"))


class Broken(TwoStepHandler):
    def process_results(
        self, cycle: CycleState, request: Request, results: Mapping[str, ProfileRunResult | None]
    ) -> SchedulingResult:
        raise KeyError("bug")


def test_a_raising_handler_becomes_a_scheduling_error() -> None:
    scheduler = pd_scheduler(role_table(), Broken())
    with pytest.raises(SchedulingError, match="profile handler 'two-step' failed: KeyError"):
        scheduler.schedule(Request.create("m"))
    stats = {s.extension_point: s for s in scheduler.stats()}
    assert stats["ProcessProfilesResults"].errors == 1


class Recorder:
    type: ClassVar[str] = "recorder"

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls: list[str] = []

    def _hit(self, what: str) -> None:
        self.calls.append(what)
        if self.fail:
            raise RuntimeError(what)

    def prepare_request_data(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Any
    ) -> None:
        self._hit("prepare")
        cycle.write("recorded", request.request_id)

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        self._hit(f"pre:{cycle.read('recorded')}:{result.endpoint.name}")

    def run_deferred(self) -> None:
        self._hit("deferred")

    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        self._hit("received")

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        self._hit("streaming")

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        self._hit("complete")


def hooked_scheduler(table: EndpointTable, *recorders: Recorder) -> Scheduler:
    profile = SchedulingProfile(
        "default",
        scorers=[(build("queue-scorer", table), 1.0)],
        picker=build("max-score-picker", table),
    )
    plugins = {r.name: r for r in recorders}
    return Scheduler(
        table,
        {"default": profile},
        build("single-profile-handler", table),
        producers=list(recorders),
        plugins=plugins,
        seed=0,
    )


def test_lifecycle_hooks_run_in_order_and_a_raising_hook_is_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = make_table(2, waiting=[5, 1])
    good, bad = Recorder("good"), Recorder("bad", fail=True)
    scheduler = hooked_scheduler(table, bad, good)
    request = Request.create("m", request_id="r1")
    with caplog.at_level(logging.ERROR):
        result = scheduler.schedule(request)
        scheduler.run_deferred()
        scheduler.response_received(request, Response("r1"), result)
        scheduler.response_streaming(request, Response("r1", is_start_of_stream=True), result)
        scheduler.response_complete(request, Response("r1", is_end_of_stream=True), result)
    assert good.calls == ["prepare", "pre:r1:e1", "deferred", "received", "streaming", "complete"]
    assert len(bad.calls) == 6
    errors = {s.extension_point: s.errors for s in scheduler.stats() if s.plugin_name == "bad"}
    assert errors == {
        "PrepareData": 1,
        "PreRequest": 1,
        "Deferred": 1,
        "ResponseReceived": 1,
        "ResponseStreaming": 1,
        "ResponseComplete": 1,
    }
    assert "PreRequest plugin bad/recorder raised" in caplog.text


def test_batch_equals_sequential_without_ties() -> None:
    table = make_table(16, waiting=list(range(16)), kv_usage_frac=np.linspace(0, 0.9, 16).tolist())
    requests = [Request.create("m", request_id=f"r{i}") for i in range(50)]
    batch = Scheduler.from_config(QUEUE_KV, table, seed=3).schedule_batch(requests)
    sequential = [Scheduler.from_config(QUEUE_KV, table, seed=3).schedule(r) for r in requests]
    assert all(isinstance(r, SchedulingResult) for r in batch)
    assert [r.destination_header for r in batch] == [r.destination_header for r in sequential]  # type: ignore[union-attr]


def test_batch_breaks_ties_per_request() -> None:
    table = make_table(4)
    results = Scheduler.from_config(QUEUE_KV, table, seed=0).schedule_batch(
        [Request.create("m") for _ in range(400)]
    )
    counts = Counter(r.endpoint.name for r in results if isinstance(r, SchedulingResult))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    assert min(counts.values()) > 60  # 100 expected each


def test_batch_with_a_producer_loops_and_matches_sequential_exactly() -> None:
    table = make_table(4)  # ties everywhere: equality needs the same RNG draws
    config = QUEUE_KV.replace(
        "- type: queue-scorer", "- type: queue-scorer\n- type: token-load-scorer"
    )
    config = config + "  - {pluginRef: token-load-scorer, weight: 1}\n"
    requests = [Request.create("m", request_id=f"r{i}", prompt="x" * 40) for i in range(30)]
    batch = Scheduler.from_config(config, make_table(4), seed=5).schedule_batch(requests)
    seq_sched = Scheduler.from_config(config, table, seed=5)
    sequential = [seq_sched.schedule(r) for r in requests]
    assert [r.destination_header for r in batch] == [r.destination_header for r in sequential]  # type: ignore[union-attr]


def test_batch_returns_errors_in_place() -> None:
    scheduler = Scheduler.from_config(QUEUE_KV, EndpointTable(), seed=0)
    results = scheduler.schedule_batch([Request.create("m"), Request.create("m")])
    assert all(isinstance(r, NoEndpointError) for r in results)
    assert scheduler.failures == 2
    assert Scheduler.from_config(QUEUE_KV, make_table(1), seed=0).schedule_batch([]) == []


def test_plugin_constructor_failure_names_the_plugin() -> None:
    from inference_sched.framework import registry

    @registry.register("exploding-scorer")
    class Exploding:
        category: ClassVar[Any] = "Distribution"

        def __init__(self, name: str, params: NoParams, handle: Any) -> None:
            raise OSError("no GPU table")

        def score(
            self,
            cycle: CycleState,
            request: Request,
            table: EndpointTable,
            candidates: Any,
            out: Any,
        ) -> None:
            raise AssertionError

    try:
        with pytest.raises(
            ConfigError,
            match=(
                r"plugins\[0\]: plugin 'boom' \(exploding-scorer\) failed to start: "
                "OSError: no GPU table"
            ),
        ):
            Scheduler.from_config({"plugins": [{"type": "exploding-scorer", "name": "boom"}]})
    finally:
        registry._forget("exploding-scorer")


def test_stats_cover_every_extension_point() -> None:
    scheduler = Scheduler.from_config(QUEUE_KV, make_table(3), seed=0)
    scheduler.schedule(Request.create("m"))
    points = {(s.extension_point, s.plugin_name): s.calls for s in scheduler.stats()}
    assert points[("Scorer", "queue-scorer")] == 1
    assert points[("Picker", "max-score-picker")] == 1
    # single-profile-handler declares its static profile: the loop is skipped
    assert points[("ProfilePicker", "single-profile-handler")] == 0
    assert points[("ProcessProfilesResults", "single-profile-handler")] == 0
    assert scheduler.cycles == 1
    assert scheduler.e2e_ns > 0
    looped = pd_scheduler(role_table(), TwoStepHandler())
    looped.schedule(Request.create("m"))
    points = {(s.extension_point, s.plugin_name): s.calls for s in looped.stats()}
    assert points[("ProfilePicker", "two-step")] == 3  # decode, prefill, stop
    assert points[("ProcessProfilesResults", "two-step")] == 1


def test_static_profile_path_matches_the_handler_loop() -> None:
    table = make_table(6, waiting=[3, 1, 4, 1, 5, 9], kv_usage_frac=[0.5] * 6)
    fast = Scheduler.from_config(QUEUE_KV, table, seed=11)
    slow = Scheduler.from_config(QUEUE_KV, table, seed=11)
    slow._static_profile = None  # force GIE's loop through the handler
    for i in range(30):
        request = Request.create("m", request_id=f"r{i}")
        assert (
            fast.schedule(request).destination_header == slow.schedule(request).destination_header
        )


def test_errors_share_a_base() -> None:
    assert issubclass(NoEndpointError, InferenceSchedError)
    assert issubclass(SchedulingError, InferenceSchedError)


def test_an_unexpected_error_in_a_profile_fails_the_cycle_cleanly() -> None:
    class Exploding(SchedulingProfile):
        def run(self, *args: Any) -> Any:
            raise RuntimeError("framework bug")

    table = make_table(2)
    profile = Exploding("default", picker=build("max-score-picker", table))
    scheduler = Scheduler(table, {"default": profile}, build("single-profile-handler", table))
    with pytest.raises(SchedulingError, match="framework bug"):
        scheduler.schedule(Request.create("m"))
    scheduler._static_profile = None  # and through the handler loop
    with pytest.raises(SchedulingError, match="framework bug"):
        scheduler.schedule(Request.create("m"))
    assert scheduler.failures == 2


def test_a_producer_may_refine_a_key_it_produces() -> None:
    from inference_sched.framework.scheduler.build import _dependency_order

    class Refining:
        name = "refining"
        produces = frozenset({"K"})
        consumes = frozenset({"K"})

    class Base:
        name = "base"
        produces = frozenset({"K", "B"})
        consumes: frozenset[str] = frozenset()

    class Consumer:
        name = "consumer"
        produces: frozenset[str] = frozenset()
        consumes = frozenset({"B"})

    order = _dependency_order([Consumer(), Refining(), Base()])  # type: ignore[list-item]
    assert [p.name for p in order] == ["base", "consumer", "refining"]
    alone = _dependency_order([Refining()])  # type: ignore[list-item]
    assert [p.name for p in alone] == ["refining"]  # its own output does not gate it

    class A:
        name = "a"
        produces = frozenset({"X"})
        consumes = frozenset({"Y"})

    class B:
        name = "b"
        produces = frozenset({"Y"})
        consumes = frozenset({"X"})

    with pytest.raises(ConfigError, match="depend on each other in a cycle: a, b"):
        _dependency_order([A(), B()])  # type: ignore[list-item]


def test_every_decision_lands_in_the_e2e_histogram_batches_included() -> None:
    table = make_table(8, waiting=list(range(8)))
    scheduler = Scheduler.from_config(QUEUE_KV, table, seed=1)
    for i in range(3):
        scheduler.schedule(Request.create("m", request_id=f"s{i}"))
    scheduler.schedule_batch([Request.create("m", request_id=f"b{i}") for i in range(50)])
    assert scheduler.e2e_histogram.count == 53
    assert scheduler.e2e_histogram.sum_ns == scheduler.e2e_ns
