"""``topology-affinity-filter`` and ``topology-affinity-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/{filter,scorer}/topologyaffinity/``;
``docs/plugins/topology-affinity-filter.md``, ``docs/plugins/topology-affinity-scorer.md``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, ProfileRunResult, Request
from inference_sched.params import parse_params
from inference_sched.plugins.topology import (
    PEER_ENDPOINT,
    TopologyAffinityFilter,
    TopologyAffinityScorer,
    peer_endpoint,
)
from inference_sched.state.table import EndpointTable

PATH = "plugins[0].parameters"
HOST, RACK = "kubernetes.io/hostname", "topology.kubernetes.io/rack"
ZONE, REGION = "topology.kubernetes.io/zone", "topology.kubernetes.io/region"


def _topo(host: str = "", rack: str = "", zone: str = "", region: str = "") -> dict[str, str]:
    pairs = ((HOST, host), (RACK, rack), (ZONE, zone), (REGION, region))
    return {k: v for k, v in pairs if v}


PEER = Endpoint("peer", "10.1.0.1", 8000, labels=_topo("n1", "r1", "z1", "eu"))

# row -> labels; level against PEER in the comment
_LABELS: list[dict[str, str]] = [
    _topo("n1", "r1", "z1", "eu"),  # 0: host
    _topo("n2", "r1", "z1", "eu"),  # 1: rack
    _topo("n3", "r2", "z1", "eu"),  # 2: zone
    _topo("n4", "r3", "z2", "eu"),  # 3: region
    _topo("n5", "r4", "z3", "us"),  # 4: none
    {},  # 5: no topology
    _topo(zone="z1"),  # 6: zone (only a zone label)
    _topo("n1"),  # 7: host (only a hostname)
]


def _table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, labels in enumerate(_LABELS):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    return table


def _cycle(peer: Any = PEER) -> CycleState:
    cycle = CycleState(np.random.default_rng(0))
    if peer is not None:
        cycle.write(PEER_ENDPOINT, peer)
    return cycle


def _filter(min_affinity: str | None, candidates: list[int], peer: Any = PEER) -> list[int]:
    table = _table()
    raw = {} if min_affinity is None else {"minAffinity": min_affinity}
    plugin = TopologyAffinityFilter(
        "tf", parse_params(TopologyAffinityFilter.Params, raw, PATH), PluginHandle(table)
    )
    rows = np.asarray(candidates, dtype=np.int32)
    kept = plugin.filter(_cycle(peer), Request("r", "m"), table, rows)
    assert kept.dtype == np.int32
    return list(kept.tolist())


def _score(candidates: list[int], peer: Any = PEER) -> np.ndarray:
    table = _table()
    plugin = TopologyAffinityScorer(
        "ts", parse_params(TopologyAffinityScorer.Params, None, PATH), PluginHandle(table)
    )
    out = np.full(len(candidates), -1.0, dtype=np.float32)
    rows = np.asarray(candidates, dtype=np.int32)
    plugin.score(_cycle(peer), Request("r", "m"), table, rows, out)
    return out


ALL = list(range(len(_LABELS)))


@pytest.mark.parametrize(
    ("min_affinity", "candidates", "expected"),
    [
        pytest.param(None, ALL, [0, 7], id="default-host"),
        pytest.param("host", ALL, [0, 7], id="host"),
        pytest.param("rack", ALL, [0, 1, 7], id="rack"),
        pytest.param("zone", ALL, [0, 1, 2, 6, 7], id="zone"),
        pytest.param("region", ALL, [0, 1, 2, 3, 6, 7], id="region"),
        pytest.param("zone", [6, 2, 0], [6, 2, 0], id="order-kept"),
        pytest.param("host", [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], id="empty-keeps-all"),
        pytest.param("region", [4, 5, 3], [3], id="no-topology-dropped"),
    ],
)
def test_filter(min_affinity: str | None, candidates: list[int], expected: list[int]) -> None:
    assert _filter(min_affinity, candidates) == expected


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(None, id="no-peer"),
        pytest.param(Endpoint("p", "10.1.0.2", 8000), id="peer-without-topology"),
        pytest.param("10.1.0.1:8000", id="not-an-endpoint"),
        pytest.param(ProfileRunResult((), (), ()), id="empty-result"),
    ],
)
def test_without_a_usable_peer(peer: Any) -> None:
    assert _filter("host", ALL, peer) == ALL
    np.testing.assert_array_equal(_score(ALL, peer), np.zeros(len(ALL), dtype=np.float32))


def test_score() -> None:
    np.testing.assert_array_equal(
        _score(ALL), np.float32([1.0, 0.20, 0.05, 0.02, 0.0, 0.0, 0.05, 1.0])
    )
    np.testing.assert_array_equal(_score([3, 1]), np.float32([0.02, 0.20]))


def test_peer_from_a_profile_result() -> None:
    table = _table()
    run = ProfileRunResult((1,), (table.endpoint_at(1),), (0.5,))
    assert peer_endpoint(_cycle(run)) is table.endpoint_at(1)
    # peer e1 = (n2, r1, z1, eu): e1 host, e0 rack, e2 zone, e3 region
    np.testing.assert_array_equal(_score([1, 0, 2, 3], run), np.float32([1.0, 0.2, 0.05, 0.02]))


def test_follows_relabeling() -> None:
    table = EndpointTable(clock=lambda: 100.0)
    table.add(Endpoint("e0", "10.0.0.0", 8000, labels=_topo("n1")))
    plugin = TopologyAffinityScorer(
        "ts", parse_params(TopologyAffinityScorer.Params, None, PATH), PluginHandle(table)
    )
    out = np.zeros(1, dtype=np.float32)
    plugin.score(_cycle(), Request("r", "m"), table, np.int32([0]), out)
    assert out[0] == np.float32(1.0)
    table.remove("e0")
    table.add(Endpoint("e1", "10.0.0.1", 8000, labels=_topo(region="eu")))
    plugin.score(_cycle(), Request("r", "m"), table, np.int32([0]), out)
    assert out[0] == np.float32(0.02)


def test_metadata() -> None:
    assert TopologyAffinityFilter.type == "topology-affinity-filter"
    assert TopologyAffinityScorer.type == "topology-affinity-scorer"
    assert TopologyAffinityScorer.category == "Affinity"
    assert registry.get("topology-affinity-filter") is TopologyAffinityFilter
    assert registry.get("topology-affinity-scorer") is TopologyAffinityScorer
    assert PEER_ENDPOINT == "peer-endpoint/disagg-profile-handler"


def test_params() -> None:
    params = parse_params(
        TopologyAffinityFilter.Params, {"minAffinity": "zone", "topologyProducerName": "t"}, PATH
    )
    assert (params.min_affinity, params.topology_producer_name) == ("zone", "t")
    scorer = parse_params(TopologyAffinityScorer.Params, {"topologyProducerName": "t"}, PATH)
    assert scorer.topology_producer_name == "t"


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        pytest.param(
            TopologyAffinityFilter,
            {"minAffinity": "node"},
            r"^plugins\[0\]\.parameters\.minAffinity: expected one of 'host', 'rack', "
            r"'zone', 'region', got 'node' \(str\)$",
            id="bad-level",
        ),
        pytest.param(
            TopologyAffinityFilter,
            {"minAffinity": "zones"},
            r"minAffinity: expected one of .* \(did you mean 'zone'\?\)",
            id="did-you-mean",
        ),
        pytest.param(
            TopologyAffinityScorer,
            {"topologyProducerName": 1},
            r"^plugins\[0\]\.parameters\.topologyProducerName: expected str, got 1 \(int\)$",
            id="producer-not-str",
        ),
        pytest.param(
            TopologyAffinityScorer,
            {"minAffinity": "host"},
            r"^plugins\[0\]\.parameters: unknown key 'minAffinity'",
            id="scorer-has-no-min-affinity",
        ),
    ],
)
def test_params_rejected(cls: Any, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(cls.Params, raw, PATH)


@pytest.mark.parametrize("plugin_type", ["topology-affinity-filter", "topology-affinity-scorer"])
def test_conformance(plugin_type: str) -> None:
    from inference_sched.testing import check_plugin

    check_plugin(plugin_type)
