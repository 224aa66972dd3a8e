"""``Scheduler.schedule_batch(requests, joint=True)``: a burst assigned as a whole.

Units used in the comments: a prompt of ``b`` bytes is ``b // 64`` prefix blocks (16
tokens of 4 bytes) and adds ``b / 4 * 2.5`` tokens of load (GIE's estimate: input plus
1.5x output), i.e. ``b / 409.6`` blocks; a queued request costs the batch's mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from inference_sched import (
    Endpoint,
    NoEndpointError,
    Request,
    Scheduler,
    SchedulingError,
    SchedulingResult,
)
from inference_sched.framework.scheduler.joint import JointCost
from tests.helpers import make_table

pytestmark = pytest.mark.unit

PREFIX_QUEUE = """
plugins:
- type: prefix-cache-scorer
  parameters: {blockSizeTokens: 64, autoTune: false}
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer, weight: 2}
"""

QUEUE_KV = """
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
"""

WITH_INFLIGHT = (
    PREFIX_QUEUE.replace(
        "- type: max-score-picker", "- type: token-load-scorer\n- type: max-score-picker"
    )
    + "  - {pluginRef: token-load-scorer, weight: 1}\n"
)


def burst(sizes: dict[str, int], members: int = 4) -> list[Request]:
    """``members`` identical prompts per group, arriving interleaved (A0 B0 C0 A1 ...)."""
    return [
        Request.create("m", request_id=f"{g}{k}", prompt=g * size)
        for k in range(members)
        for g, size in sizes.items()
    ]


def picks(results: Sequence[object]) -> list[str]:
    return [
        r.endpoint.name if isinstance(r, SchedulingResult) else type(r).__name__ for r in results
    ]


def joint_scheduler(
    config: str, waiting: list[float], credit: float, seed: int = 1, k: int = 1
) -> Scheduler:
    scheduler = Scheduler.from_config(config, make_table(len(waiting), waiting=waiting), seed=seed)
    scheduler.joint_cost = JointCost(overlap_score_weight=credit, max_num_of_endpoints=k)
    return scheduler


WAITING = [0.0, 1.0, 3.0, 4.0, 6.0, 8.0]


def test_sequential_default_herds_the_burst_onto_one_endpoint() -> None:
    # Every request sees the same scraped queues; the first pick's prefix then pulls the
    # rest of its group, and a new group's first request goes to the shortest queue.
    scheduler = joint_scheduler(PREFIX_QUEUE, WAITING, 6.3)
    assert picks(scheduler.schedule_batch(burst({"A": 2560, "B": 2560, "C": 2560}))) == ["e0"] * 12


def test_three_groups_each_co_locate_when_recompute_costs_more_than_queueing() -> None:
    # 10 blocks per prompt (2560 bytes: 640 tokens in 64-token blocks) at credit 6.3:
    # recompute 63 blocks; a member adds 25 blocks;
    # queues cost 25 blocks each: base loads 0, 25, 75, 100, 150, 200.
    # A: e0 at 63, then 25, 50, 75 (e1 would be 88). B: e1 88 (e0 163), then 50, 75,
    # 100 (e2 138). C: e2 138, then 100, 125, 150 (e0 and e3: 163).
    scheduler = joint_scheduler(PREFIX_QUEUE, WAITING, 6.3, k=2)
    results = scheduler.schedule_batch(burst({"A": 2560, "B": 2560, "C": 2560}), joint=True)
    assert picks(results) == ["e0", "e1", "e2"] * 4
    first = results[0]
    assert isinstance(first, SchedulingResult)
    assert [e.name for e in first.target_endpoints] == ["e0", "e1"]  # fallback: next cost
    assert first.primary.scores == (-63.0, -88.0)  # negated costs
    assert [r.primary.scores[0] for r in results[9:]] == [-75.0, -100.0, -150.0]  # type: ignore[union-attr]


def test_identical_prompts_split_once_co_location_stops_paying() -> None:
    # Credit 2.5 over C (13 blocks), B (11), A (10), placed C, B, A (size x blocks):
    # each group keeps two members together, then the load added there outweighs the
    # recompute and the next two members start a second copy elsewhere.
    scheduler = joint_scheduler(PREFIX_QUEUE, WAITING, 2.5)
    requests = burst({"A": 2560, "B": 2816, "C": 3328})
    results = scheduler.schedule_batch(requests, joint=True)
    assert picks(results) == ["e1", "e0", "e0", "e1", "e0", "e0"] + ["e3", "e2", "e1"] * 2
    by_group = Counter((r.request_id[0], p) for r, p in zip(requests, picks(results), strict=True))
    assert sorted(by_group.values()) == [2] * 6  # every group: two endpoints, two members each


def test_without_prefix_credit_the_burst_only_balances_load() -> None:
    scheduler = joint_scheduler(PREFIX_QUEUE, WAITING, 0.0)
    results = scheduler.schedule_batch(burst({"A": 2560, "B": 2560, "C": 2560}), joint=True)
    # Loads in blocks: 0, 25, 75, 100, 150, 200 plus 25 per request: 12 requests level
    # them at 200 (e0 8, e1 7, ... e5 0 would exceed 12): e0 takes 5, e1 4, e2 2, e3 1.
    counts = Counter(picks(results))
    assert counts == Counter({"e0": 5, "e1": 4, "e2": 2, "e3": 1})


def test_a_herd_the_sequential_default_sends_to_one_endpoint_spreads() -> None:
    requests = [Request.create("m", request_id=f"r{i}", prompt=f"{i:04d}" * 100) for i in range(11)]
    waiting = [0.0, 3.0, 3.0, 3.0]
    sequential = Scheduler.from_config(QUEUE_KV, make_table(4, waiting=waiting), seed=0)
    assert set(picks(sequential.schedule_batch(requests))) == {"e0"}
    joint = Scheduler.from_config(QUEUE_KV, make_table(4, waiting=waiting), seed=0)
    # Each request adds 250 tokens; queues cost 750 each: e0 takes 3 to catch up, then
    # the remaining 8 go round the four endpoints.
    counts = Counter(picks(joint.schedule_batch(requests, joint=True)))
    assert counts == Counter({"e0": 5, "e1": 2, "e2": 2, "e3": 2})


def test_in_flight_load_and_prefix_index_see_the_whole_batch_afterwards() -> None:
    scheduler = joint_scheduler(WITH_INFLIGHT, WAITING, 6.3)
    results = scheduler.schedule_batch(burst({"A": 2560, "B": 2560, "C": 2560}), joint=True)
    assert picks(results) == ["e0", "e1", "e2"] * 4
    table = scheduler.table
    # PreRequest ran once per request: in-flight +1 request and, per llm-d-router, the
    # request's uncached prompt tokens (640: nothing was cached when the batch was
    # prepared; no output estimate without addEstimatedOutputTokens) on each pick.
    assert table.inflight_requests[:6].tolist() == [4.0, 4.0, 4.0, 0.0, 0.0, 0.0]
    assert table.inflight_tokens[:6].tolist() == [2560.0, 2560.0, 2560.0, 0.0, 0.0, 0.0]
    # The prefix index recorded the picks: the next A goes back to e0 sequentially.
    nxt = scheduler.schedule(Request.create("m", prompt="A" * 2560))
    assert nxt.endpoint.name == "e0"
    # (That request was fully cached on e0: it added no uncached tokens.) A second
    # joint burst starts from max(in-flight, queue x 1600 tokens), in 64-token blocks:
    # e0 max(2560, 0) and e1 max(2560, 1600) are 40 blocks, e2 75, e3 100, e4 150, e5
    # 200. A new prompt D pays 63 (10 blocks x 6.3) + load: e0 or e1 (a tie), 103.
    second = scheduler.schedule_batch(burst({"D": 2560}, members=1), joint=True)
    assert picks(second)[0] in {"e0", "e1"}
    assert second[0].primary.scores[0] == -103.0  # type: ignore[union-attr]


def test_same_seed_same_assignment_and_seeds_break_ties() -> None:
    requests = burst({"A": 2560, "B": 2560}, members=3)
    runs = {
        seed: picks(
            joint_scheduler(PREFIX_QUEUE, [0.0] * 6, 1.0, seed).schedule_batch(requests, joint=True)
        )
        for seed in range(6)
    }
    again = joint_scheduler(PREFIX_QUEUE, [0.0] * 6, 1.0, 3).schedule_batch(requests, joint=True)
    assert picks(again) == runs[3]
    assert len({tuple(r) for r in runs.values()}) > 1  # all six endpoints tie at first
    assert all(len(set(r)) == 6 for r in runs.values())  # 6 requests, 6 idle endpoints


def test_errors_stay_with_their_request() -> None:
    scheduler = joint_scheduler(PREFIX_QUEUE, WAITING, 6.3)
    requests = burst({"A": 640, "B": 640}, members=2)
    lost = Request.create("m", request_id="lost", prompt="A" * 640, subset_hint=["10.9.9.9:8000"])
    results = scheduler.schedule_batch([requests[0], lost, *requests[1:]], joint=True)
    assert isinstance(results[1], NoEndpointError)
    assert picks(results) == ["e0", "NoEndpointError", "e1", "e0", "e1"]
    assert scheduler.failures == 1
    assert scheduler.cycles == 5


def test_a_filter_that_empties_one_request_fails_that_request_only() -> None:
    config = """
plugins:
- type: prefix-cache-scorer
  parameters: {blockSizeTokens: 64, autoTune: false}
- type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.5, explorationProbability: 0}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-affinity-filter}
  - {pluginRef: prefix-cache-scorer, weight: 1}
"""
    scheduler = Scheduler.from_config(config, make_table(3), seed=0)
    results = scheduler.schedule_batch(burst({"A": 640}, members=3), joint=True)
    assert all(isinstance(r, SchedulingResult) for r in results)

    profile = scheduler.profiles["default"]
    original = profile.filter

    def failing_for_b(cycle, request, table, candidates):  # type: ignore[no-untyped-def]
        if request.request_id.startswith("B"):
            raise NoEndpointError("default", "prefix-cache-affinity-filter")
        return original(cycle, request, table, candidates)

    profile.filter = failing_for_b  # type: ignore[method-assign]
    results = scheduler.schedule_batch(burst({"A": 640, "B": 640}, members=1), joint=True)
    assert isinstance(results[1], SchedulingError)
    assert "default" in results[1].profile_errors
    assert isinstance(results[0], SchedulingResult)


def test_default_mode_still_equals_sequential_schedule() -> None:
    requests = burst({"A": 2560, "B": 2816, "C": 3328})
    batch = joint_scheduler(PREFIX_QUEUE, WAITING, 6.3, seed=4).schedule_batch(requests)
    sequential = joint_scheduler(PREFIX_QUEUE, WAITING, 6.3, seed=4)
    assert picks(batch) == [sequential.schedule(r).endpoint.name for r in requests]


def test_an_empty_burst_and_a_single_request() -> None:
    scheduler = joint_scheduler(PREFIX_QUEUE, WAITING, 6.3)
    assert scheduler.schedule_batch([], joint=True) == []
    assert picks(scheduler.schedule_batch(burst({"A": 640}, members=1), joint=True)) == ["e0"]
    assert np.isfinite(scheduler.e2e_ns)


def test_a_handler_without_a_static_profile_falls_back_to_sequential() -> None:
    config = """
plugins:
- type: disagg-profile-handler
  parameters: {deciders: {prefill: pd-decider}}
- {type: always-disagg-pd-decider, name: pd-decider}
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: decode
  plugins:
  - {pluginRef: decode-filter}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: max-score-picker}
- name: prefill
  plugins:
  - {pluginRef: prefill-filter}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""
    requests = burst({"A": 640, "B": 640}, members=2)

    def pool() -> Scheduler:
        table = make_table(0)
        for i, role in enumerate(["prefill", "prefill", "decode", "decode"]):
            table.add(Endpoint(f"p{i}", f"10.0.1.{i}", 8000, {"llm-d.ai/role": role}))
        table.update_metrics(np.arange(4), waiting=[1.0, 0.0, 2.0, 0.0])
        return Scheduler.from_config(config, table, seed=3)

    joint = pool().schedule_batch(requests, joint=True)
    one_at_a_time = pool()
    sequential = [one_at_a_time.schedule(r) for r in requests]
    assert [r.destination_header for r in joint] == [  # type: ignore[union-attr]
        r.destination_header for r in sequential
    ]
    assert all(r.picked("prefill") is not None for r in joint)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"),
    [("overlap_score_weight", -1.0), ("max_num_of_endpoints", 0)],
    ids=["negative-credit", "no-endpoints"],
)
def test_joint_cost_rejects_bad_weights(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field.split("_")[0]):
        JointCost(**kwargs)


# ---------------------------------------------------------------- both prefix producers
APPROX = PREFIX_QUEUE
PRECISE = PREFIX_QUEUE.replace(
    "plugins:\n- type: prefix-cache-scorer",
    "plugins:\n- type: precise-prefix-cache-producer\n- type: prefix-cache-scorer",
    1,
)


def _token_burst() -> list[Request]:
    """Three groups of four: A identical, B sharing 8 of 10 blocks (different tails), C
    alone; by token ids so that both producers hash the same blocks."""
    base = np.arange(1, 161, dtype=np.uint32)  # 10 blocks of 16 tokens
    requests = []
    for k in range(4):
        a = base
        b = np.concatenate([base[:128] + 1000, np.full(32, 5000 + k, dtype=np.uint32)])
        c = base + 9000 + 200 * k
        for g, tokens in (("A", a), ("B", b), ("C", c)):
            requests.append(Request.create("m", request_id=f"{g}{k}", prompt="", token_ids=tokens))
    return requests


def _joint_picks(config: str) -> list[str]:
    scheduler = joint_scheduler(config, WAITING, 6.3, k=2)
    for plugin in scheduler.plugins.values():
        if plugin.type == "precise-prefix-cache-producer":
            plugin.events_in_process()  # no ZMQ: no engine publishes here
    return picks(scheduler.schedule_batch(_token_burst(), joint=True))


def test_joint_placement_is_the_same_with_either_prefix_producer() -> None:
    approx = _joint_picks(APPROX)
    assert _joint_picks(PRECISE) == approx
    # and the hashes mattered: B's members share their first 8 blocks and stay together
    by_group = Counter((g, p) for g, p in zip("ABC" * 4, approx, strict=True))
    assert by_group[("B", approx[1])] >= 2
