"""``topology-affinity-filter`` and ``topology-affinity-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/{filter,scorer}/topologyaffinity/``;
``docs/plugins/topology-affinity-filter.md``, ``docs/plugins/topology-affinity-scorer.md``)."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.datalayer.notifications import (
    EndpointNotificationSource,
    NotificationEvent,
    Topology,
    TopologyExtractor,
    TopologyExtractorParams,
)
from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, ProfileRunResult, Request
from inference_sched.params import NoParams, parse_params
from inference_sched.plugins.topology import (
    PEER_ENDPOINT,
    TopologyAffinityFilter,
    TopologyAffinityScorer,
    peer_endpoint,
    topology_key,
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


# ------------------------------------------------------------------ the Topology attribute
KEY = "Topology/topology-extractor"


@attrs.frozen
class _DuckTopology:
    """Not the data layer's type: the plugins read the attribute by its fields."""

    hostname: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""


def _scorer(table: EndpointTable, producer: str | None = None) -> TopologyAffinityScorer:
    raw = {} if producer is None else {"topologyProducerName": producer}
    params = parse_params(TopologyAffinityScorer.Params, raw, PATH)
    return TopologyAffinityScorer("ts", params, PluginHandle(table))


def _scores(plugin: TopologyAffinityScorer, table: EndpointTable, peer: Any = PEER) -> list[float]:
    rows = table.candidates()
    out = np.full(len(rows), -1.0, dtype=np.float32)
    plugin.score(_cycle(peer), Request("r", "m"), table, rows, out)
    return [round(float(v), 6) for v in out]


def test_topology_key() -> None:
    assert topology_key() == KEY
    assert topology_key("") == KEY
    assert topology_key("topo-a") == "Topology/topo-a"
    assert _scorer(EndpointTable()).key == KEY
    assert _scorer(EndpointTable(), "topo-a").key == "Topology/topo-a"


@pytest.mark.parametrize("value_type", [Topology, _DuckTopology], ids=["Topology", "duck"])
def test_attribute_wins_over_labels(value_type: Any) -> None:
    table = _table()
    # e4's labels say (n5, r4, z3, us): none; its attribute puts it in the peer's rack.
    table.attributes.put(4, KEY, value_type("n9", "r1", "z9", "eu"))
    # e0's labels say host; its attribute says only the peer's region.
    table.attributes.put(0, KEY, value_type(region="eu"))
    # e5 has no labels; its attribute names the peer's host.
    table.attributes.put(5, KEY, value_type("n1"))
    assert _scores(_scorer(table), table) == [0.02, 0.2, 0.05, 0.02, 0.2, 1.0, 0.05, 1.0]
    assert _filter_rows(table, "rack") == [1, 4, 5, 7]


def _filter_rows(table: EndpointTable, min_affinity: str, producer: str = "") -> list[int]:
    raw = {"minAffinity": min_affinity, "topologyProducerName": producer}
    params = parse_params(TopologyAffinityFilter.Params, raw, PATH)
    plugin = TopologyAffinityFilter("tf", params, PluginHandle(table))
    kept = plugin.filter(_cycle(), Request("r", "m"), table, table.candidates())
    return list(kept.tolist())


def test_labels_without_the_attribute_and_other_producers_ignored() -> None:
    table = _table()
    table.attributes.put(4, "Topology/other", Topology("n1", "r1", "z1", "eu"))
    expected = [1.0, 0.2, 0.05, 0.02, 0.0, 0.0, 0.05, 1.0]
    assert _scores(_scorer(table), table) == expected  # the labels, as before
    other = _scorer(table, "other")
    assert _scores(other, table) == [1.0, 0.2, 0.05, 0.02, 1.0, 0.0, 0.05, 1.0]
    assert _filter_rows(table, "host", "other") == [0, 4, 7]


@pytest.mark.parametrize(
    ("value", "expected_e4"),
    [
        pytest.param(0.5, 0.0, id="scalar-falls-back-to-labels"),
        pytest.param({"hostname": "n1"}, 0.0, id="mapping-falls-back-to-labels"),
        pytest.param(_DuckTopology(hostname=1, rack="r1"), 0.2, id="non-str-field-is-empty"),  # type: ignore[arg-type]
    ],
)
def test_attribute_that_is_not_a_topology(value: Any, expected_e4: float) -> None:
    table = _table()
    table.attributes.put(4, KEY, value)
    assert _scores(_scorer(table), table)[4] == expected_e4


def test_cache_follows_the_attribute() -> None:
    table = _table()
    plugin = _scorer(table)
    assert _scores(plugin, table)[4] == 0.0
    table.attributes.put(4, KEY, Topology(zone="z1"))
    assert _scores(plugin, table)[4] == 0.05
    table.attributes.put(4, KEY, Topology("n1"))
    assert _scores(plugin, table)[4] == 1.0
    table.attributes.put(4, "Topology/other", Topology())  # another key: no rebuild needed
    assert _scores(plugin, table)[4] == 1.0
    table.attributes.delete(4, KEY)  # back to e4's labels: none
    assert _scores(plugin, table)[4] == 0.0


def test_cache_is_reused_while_nothing_changes() -> None:
    table = _table()
    plugin = _scorer(table)
    _scores(plugin, table)
    cache = plugin._cache
    table.attributes.put(0, "Topology/other", Topology("x"))
    _scores(plugin, table)
    assert plugin._cache is cache
    table.attributes.put(0, KEY, Topology("x"))
    _scores(plugin, table)
    assert plugin._cache is not cache


def test_removed_row_drops_its_attribute() -> None:
    table = EndpointTable(clock=lambda: 100.0)
    table.add(Endpoint("e0", "10.0.0.0", 8000))
    table.attributes.put(0, KEY, Topology("n1"))
    plugin = _scorer(table)
    assert _scores(plugin, table) == [1.0]
    table.remove("e0")
    table.add(Endpoint("e1", "10.0.0.1", 8000, labels=_topo(zone="z1")))  # reuses row 0
    assert _scores(plugin, table) == [0.05]


def test_peer_read_by_its_row() -> None:
    table = _table()
    # The cycle's peer object is stale: the table's e3 carries the attribute (n1, r1).
    stale = Endpoint("e3", "10.0.0.3", 8000, labels=_topo("n4", "r3", "z2", "eu"))
    table.attributes.put(3, KEY, Topology("n1", "r1"))
    assert _scores(_scorer(table), table, stale) == [1.0, 0.2, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    # Without the attribute the table's e3 labels (n4, r3, z2, eu) are used.
    table.attributes.delete(3, KEY)
    assert _scores(_scorer(table), table, stale) == [0.02, 0.02, 0.02, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_peer_outside_the_table_read_from_its_labels() -> None:
    table = _table()
    table.attributes.put(0, KEY, Topology(rack="r9"))
    outside = Endpoint("elsewhere", "10.9.0.1", 8000, labels=_topo(rack="r9"))
    assert _scores(_scorer(table), table, outside) == [0.2, 0, 0, 0, 0, 0, 0, 0]


def test_peer_with_an_empty_attribute_has_no_topology() -> None:
    table = _table()
    table.attributes.put(1, KEY, Topology())
    peer = table.endpoint_at(1)  # labels (n2, r1, z1, eu), attribute empty
    assert _filter_rows(table, "host") == [0, 7]  # PEER: unaffected
    plugin = _scorer(table)
    assert _scores(plugin, table, peer) == [0.0] * 8


def test_with_the_topology_extractor() -> None:
    """End to end: the extractor (custom hostname label, pod ``spec.hostname``) writes the
    attribute on table events; the scorer reads it."""
    table = EndpointTable(clock=lambda: 100.0)
    params = parse_params(TopologyExtractorParams, {"hostname": "example.com/node"}, PATH)
    extractor = TopologyExtractor("topology-extractor", params, PluginHandle(table))
    source = EndpointNotificationSource("ens", NoParams(), PluginHandle(table))
    source.attach(table, [extractor])
    table.add(Endpoint("e0", "10.0.0.0", 8000, labels={"example.com/node": "n1"}))
    table.add(Endpoint("e1", "10.0.0.1", 8000, labels={HOST: "n1", ZONE: "z1"}))
    table.add(Endpoint("pod-2-rank-0", "10.0.0.2", 8000, labels={ZONE: "z9"}))
    plugin = _scorer(table)
    # e1's kubernetes.io/hostname is not the extractor's hostname label: zone only.
    assert _scores(plugin, table) == [1.0, 0.05, 0.0]
    pod = {
        "metadata": {"name": "pod-2"},
        "spec": {"hostname": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    extractor.extract_notification(NotificationEvent("add-or-update", pod))
    assert table.attributes.get(2, KEY) == Topology("n1", zone="z9")
    assert _scores(plugin, table) == [1.0, 0.05, 1.0]


_value = st.sampled_from(["", "a", "b"])
_topologies = st.lists(st.tuples(_value, _value, _value, _value), min_size=1, max_size=8)


@given(rows=_topologies, peer=st.tuples(_value, _value, _value, _value))
def test_attribute_and_labels_agree(
    rows: list[tuple[str, str, str, str]], peer: tuple[str, str, str, str]
) -> None:
    """The same topology as labels or as the attribute gives the same scores and kept set."""
    by_labels, by_attribute = EndpointTable(), EndpointTable()
    for i, topo in enumerate(rows):
        by_labels.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=_topo(*topo)))
        by_attribute.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000))
        by_attribute.attributes.put(i, KEY, Topology(*topo))
    peer_endpoint = Endpoint("peer", "10.1.0.1", 8000, labels=_topo(*peer))
    assert _scores(_scorer(by_labels), by_labels, peer_endpoint) == _scores(
        _scorer(by_attribute), by_attribute, peer_endpoint
    )


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
