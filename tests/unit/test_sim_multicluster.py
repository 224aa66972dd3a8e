"""The multicluster simulation (``inference_sched/sim/multicluster.py``;
``docs/simulator/multicluster.md``): two clusters, each a pool behind its own EPP, and an
outer EPP choosing the cluster from the pool averages the clusters report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference_sched.plugins.multicluster import (
    KV_CACHE_UTILIZATION_ATTRIBUTE,
    QUEUE_SIZE_ATTRIBUTE,
)
from inference_sched.sim import multicluster as sim_multicluster
from inference_sched.sim.multicluster import (
    ClusterSpec,
    MulticlusterFleet,
    _Multicluster,
    compare_policies,
    main,
    simulate_multicluster,
)
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.types import EngineConfig, RequestStatus
from inference_sched.sim.workloads import Workload, shared_prefix

# Cluster b's engine steps take 50 ms longer: well under a third of a's throughput.
SLOW = EngineConfig(step_overhead_s=0.05)
FLEET = MulticlusterFleet(
    clusters=(ClusterSpec("a", 2), ClusterSpec("b", 2, SLOW)),
    end_s=60.0,  # bounds the run whatever happens
)


@pytest.fixture(scope="module")
def workload() -> Workload:
    return shared_prefix(
        rate=24.0,
        duration_s=4.0,
        num_groups=4,
        system_tokens=256,
        question_tokens=64,
        output_tokens=32,
        seed=3,
    )


def test_scored_policy_sends_the_slow_cluster_less_than_random(workload: Workload) -> None:
    report = compare_policies(workload, fleet=FLEET)
    runs = {run["config"]: run for run in report["runs"]}  # type: ignore[attr-defined]
    assert list(runs) == ["multicluster", "random", "round-robin"]
    for run in runs.values():
        assert run["completed"] == run["requests"] == len(workload)
    share = {name: run["clusters"]["b"]["share"] for name, run in runs.items()}
    assert share["multicluster"] < share["random"] - 0.1
    # round-robin alternates a, b, a, ...: b gets floor(n / 2)
    assert runs["round-robin"]["clusters"]["b"]["requests"] == len(workload) // 2
    assert abs(share["round-robin"] - 0.5) <= 1 / len(workload)
    json.dumps(report)  # JSON-ready


def test_runs_are_deterministic(workload: Workload) -> None:
    one = simulate_multicluster(workload, "multicluster", fleet=FLEET)
    two = simulate_multicluster(workload, "multicluster", fleet=FLEET)
    np.testing.assert_array_equal(one.run.endpoint, two.run.endpoint)
    np.testing.assert_array_equal(one.run.first_token_s, two.run.first_token_s)
    assert one.run.endpoint_names == ("a/sim-0", "a/sim-1", "b/sim-0", "b/sim-1")
    assert one.server_cluster.tolist() == [0, 0, 1, 1]
    clusters = one.request_cluster()
    assert set(clusters.tolist()) <= {0, 1}
    assert np.all(one.run.status == RequestStatus.COMPLETED)


def test_cluster_attributes_are_the_inner_pool_averages(workload: Workload) -> None:
    state = _Multicluster(workload, None, resolve_config("load-only")[1], FLEET)
    a, b = state.clusters
    a.table.waiting[a.rows] = [2.0, 5.0]
    a.table.kv_usage_frac[a.rows] = [0.25, 0.75]
    b.table.waiting[b.rows] = [0.0, 0.0]
    b.table.kv_usage_frac[b.rows] = [0.1, 0.2]
    state.scrape_clusters(1.0)
    attributes = state.outer_table.attributes
    row_a, row_b = state.cluster_rows.tolist()
    assert attributes.get(row_a, QUEUE_SIZE_ATTRIBUTE) == 3.5
    assert attributes.get(row_a, KV_CACHE_UTILIZATION_ATTRIBUTE) == 0.5
    assert attributes.get(row_b, QUEUE_SIZE_ATTRIBUTE) == 0.0
    assert attributes.get(row_b, KV_CACHE_UTILIZATION_ATTRIBUTE) == pytest.approx(0.15)


def test_attribute_keys_match_the_scorers() -> None:
    assert sim_multicluster.QUEUE_SIZE_ATTRIBUTE == QUEUE_SIZE_ATTRIBUTE
    assert sim_multicluster.KV_CACHE_UTILIZATION_ATTRIBUTE == KV_CACHE_UTILIZATION_ATTRIBUTE


def test_fleet_rejects_duplicate_cluster_names() -> None:
    with pytest.raises(ValueError, match="cluster names must be unique"):
        MulticlusterFleet(clusters=(ClusterSpec("a"), ClusterSpec("a")))


def test_main_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    argv = ["--rate", "10", "--duration", "1", "--servers", "1", "1", "--json", str(out)]
    assert main([*argv, "--policy", "multicluster", "--policy", "round-robin"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["multicluster", "round-robin"]
    report = json.loads(out.read_text())
    assert [run["config"] for run in report["runs"]] == ["multicluster", "round-robin"]
    assert [c["name"] for c in report["clusters"]] == ["cluster-a", "cluster-b"]
