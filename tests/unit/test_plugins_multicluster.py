"""``multicluster-queue-scorer`` and ``multicluster-kv-cache-utilization-scorer``
(llm-d-router, ``pkg/epp/framework/plugins/scheduling/scorer/queuedepth/multicluster.go``,
``pkg/epp/framework/plugins/scheduling/scorer/kvcacheutilization/multicluster.go``;
``docs/plugins/multicluster-queue-scorer.md``,
``docs/plugins/multicluster-kv-cache-utilization-scorer.md``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.config import load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Endpoint, Request
from inference_sched.params import NoParams, parse_params
from inference_sched.plugins.multicluster import (
    KV_CACHE_UTILIZATION_ATTRIBUTE,
    QUEUE_SIZE_ATTRIBUTE,
    MulticlusterKvCacheUtilizationScorer,
    MulticlusterQueueScorer,
    kv_cache_scores,
    queue_scores,
)
from inference_sched.state.table import EndpointTable
from inference_sched.testing import check_plugin, make_table

ALL = [0, 1, 2, 3, 4]


def _table(key: str, values: dict[int, Any], n: int = 5) -> EndpointTable:
    table = make_table(n)
    for row, value in values.items():
        table.attributes.put(row, key, value)
    return table


def _score(
    cls: type[MulticlusterQueueScorer | MulticlusterKvCacheUtilizationScorer],
    table: EndpointTable,
    candidates: list[int],
) -> list[float]:
    plugin = cls("s", NoParams(), PluginHandle(table))
    out = np.full(len(candidates), -1.0, dtype=np.float32)
    cycle = CycleState(np.random.default_rng(0))
    plugin.score(cycle, Request("r", "m"), table, np.asarray(candidates, np.int32), out)
    return [round(float(v), 6) for v in out]


def test_attribute_keys() -> None:
    assert QUEUE_SIZE_ATTRIBUTE == "llm-d.ai/multicluster-queue-size"
    assert KV_CACHE_UTILIZATION_ATTRIBUTE == "llm-d.ai/multicluster-kv-cache-utilization"


# queue sizes over ALL: 4, 12, absent, 8, not a number
_QUEUES: dict[int, Any] = {0: 4.0, 1: 12, 3: 8.0, 4: "busy"}


@pytest.mark.parametrize(
    ("values", "candidates", "expected"),
    [
        pytest.param(_QUEUES, ALL, [1.0, 0.0, 0.0, 0.5, 0.0], id="min-max"),
        pytest.param(_QUEUES, [3, 1], [1.0, 0.0], id="over-candidates-only"),
        pytest.param(_QUEUES, [3, 2], [1.0, 0.0], id="one-reported-neutral"),
        pytest.param({0: 5, 1: 5, 2: 5}, [0, 1, 2, 3], [1.0, 1.0, 1.0, 0.0], id="equal"),
        pytest.param({0: 0.0}, [0], [1.0], id="single"),
        pytest.param({}, [0, 1], [0.0, 0.0], id="none-reported"),
        pytest.param({0: 0.5, 1: 2.5, 2: 1.0}, [0, 1, 2], [1.0, 0.0, 0.75], id="fractional"),
        pytest.param({0: math.nan, 1: math.inf, 2: 3}, [0, 1, 2], [0.0, 0.0, 1.0], id="non-finite"),
    ],
)
def test_queue_scorer(values: dict[int, Any], candidates: list[int], expected: list[float]) -> None:
    table = _table(QUEUE_SIZE_ATTRIBUTE, values)
    assert _score(MulticlusterQueueScorer, table, candidates) == expected


@pytest.mark.parametrize(
    ("values", "candidates", "expected"),
    [
        pytest.param(
            {0: 0.0, 1: 0.25, 2: 1.0, 3: 0.9}, ALL, [1.0, 0.75, 0.0, 0.1, 0.0], id="one-minus"
        ),
        pytest.param({0: 1.5, 1: -0.5}, [0, 1], [0.0, 1.0], id="clamped"),
        pytest.param({0: "full", 1: math.nan}, [0, 1, 2], [0.0, 0.0, 0.0], id="missing"),
        pytest.param({2: 0.4}, [2], [0.6], id="single"),
    ],
)
def test_kv_cache_scorer(
    values: dict[int, Any], candidates: list[int], expected: list[float]
) -> None:
    table = _table(KV_CACHE_UTILIZATION_ATTRIBUTE, values)
    assert _score(MulticlusterKvCacheUtilizationScorer, table, candidates) == expected


def test_scorers_read_only_their_own_attribute() -> None:
    table = _table("llm-d.ai/multicluster-queue-size/core-metrics-extractor", {0: 1, 1: 2})
    assert _score(MulticlusterQueueScorer, table, [0, 1]) == [0.0, 0.0]
    table.attributes.put(0, QUEUE_SIZE_ATTRIBUTE, 3)
    table.attributes.put(0, KV_CACHE_UTILIZATION_ATTRIBUTE, 0.5)
    table.waiting[:2] = [0, 100]  # per-pod columns are not read
    assert _score(MulticlusterQueueScorer, table, [0, 1]) == [1.0, 0.0]
    assert _score(MulticlusterKvCacheUtilizationScorer, table, [0, 1]) == [0.5, 0.0]


_MAYBE = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.just(math.nan))


@given(st.lists(_MAYBE, min_size=1, max_size=12))
def test_queue_scores_in_unit_interval_and_monotone(values: list[float]) -> None:
    q = np.asarray(values, dtype=np.float64)
    scores = queue_scores(q)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(scores[np.isnan(q)] == 0.0)
    present = np.flatnonzero(~np.isnan(q))
    ranked = scores[present[np.argsort(q[present], kind="stable")]]
    assert np.all(np.diff(ranked) <= 0.0)  # a longer queue never scores higher
    if present.size:
        assert scores[present].max() == 1.0  # the shortest queue scores 1


@given(st.lists(_MAYBE, min_size=1, max_size=12))
def test_kv_scores_in_unit_interval_and_monotone(values: list[float]) -> None:
    u = np.asarray(values, dtype=np.float64)
    scores = kv_cache_scores(u)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(scores[np.isnan(u)] == 0.0)
    present = np.flatnonzero(~np.isnan(u))
    ranked = scores[present[np.argsort(u[present], kind="stable")]]
    assert np.all(np.diff(ranked) <= 0.0)


def test_in_a_scheduler_picks_the_least_loaded_cluster() -> None:
    config = load_config(
        """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
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
"""
    )
    table = EndpointTable(clock=lambda: 0.0)
    rows = [table.add(Endpoint(f"cluster-{c}", f"gw-{c}.example", 443)).row for c in "abc"]
    scheduler = Scheduler.from_config(config, table, seed=0)
    # a: queue 9, kv 0.2 -> 0 + 0.8; b: queue 1, kv 0.9 -> 1 + 0.1; c: queue 5, kv 0.5 -> .5+.5
    for row, queue, kv in zip(rows, (9, 1, 5), (0.2, 0.9, 0.5), strict=True):
        table.attributes.put(row, QUEUE_SIZE_ATTRIBUTE, queue)
        table.attributes.put(row, KV_CACHE_UTILIZATION_ATTRIBUTE, kv)
    assert scheduler.schedule(Request.create("m", prompt=b"hi")).primary.endpoints[0].name == (
        "cluster-b"
    )
    # b's cache fills, a's queue grows: a 0 + 0.8, b 1 + 0, c (10 - 5) / 9 + 0.5 = 1.056
    table.attributes.put(rows[1], KV_CACHE_UTILIZATION_ATTRIBUTE, 1.0)
    table.attributes.put(rows[0], QUEUE_SIZE_ATTRIBUTE, 10)
    picked = scheduler.schedule(Request.create("m", prompt=b"hi")).primary.endpoints[0].name
    assert picked == "cluster-c"


def test_metadata() -> None:
    for cls, kind in (
        (MulticlusterQueueScorer, "multicluster-queue-scorer"),
        (MulticlusterKvCacheUtilizationScorer, "multicluster-kv-cache-utilization-scorer"),
    ):
        assert cls.type == kind
        assert registry.get(kind) is cls
        assert cls.stability == "alpha"
        assert cls.category == "Distribution"
        assert cls.is_batch_invariant is True


@pytest.mark.parametrize(
    "kind", ["multicluster-queue-scorer", "multicluster-kv-cache-utilization-scorer"]
)
def test_params_rejected(kind: str) -> None:
    with pytest.raises(ParameterError, match=r"unknown key 'weight'"):
        parse_params(registry.get(kind).Params, {"weight": 1}, "plugins[0].parameters")


@pytest.mark.parametrize(
    "kind", ["multicluster-queue-scorer", "multicluster-kv-cache-utilization-scorer"]
)
def test_conformance(kind: str) -> None:
    table = make_table(4)
    for row, (q, kv) in enumerate([(1, 0.1), (3, 0.5), (2, 0.9), (0, 0.0)]):
        table.attributes.put(row, QUEUE_SIZE_ATTRIBUTE, q)
        table.attributes.put(row, KV_CACHE_UTILIZATION_ATTRIBUTE, kv)
    check_plugin(kind, table=table)
