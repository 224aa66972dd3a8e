"""Topology affinity to the disaggregation peer: ``topology-affinity-filter`` and
``topology-affinity-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/{filter,scorer}/topologyaffinity/``;
``docs/plugins/topology-affinity-filter.md``, ``docs/plugins/topology-affinity-scorer.md``).

In a disaggregated request the second stage (prefill after decode) should run close to
the first: the same host, else the same rack, zone, region. The *level* of a candidate
is the first of host < rack < zone < region at which its topology and the peer's carry
the same non-empty value, else none.

Topology is read, per endpoint, from the attribute ``Topology/<producer>`` that
``topology-extractor`` writes to ``table.attributes`` (llm-d-router reads only the
attribute; ``docs/plugins/topology-extractor.md``); ``<producer>`` is
``topologyProducerName``, by default ``topology-extractor``. An endpoint without the
attribute falls back to its labels (``kubernetes.io/hostname``,
``topology.kubernetes.io/rack``, ``.../zone``, ``.../region``), so configs without the
extractor keep working. The attribute value is read duck-typed (its ``hostname``,
``rack``, ``zone`` and ``region`` fields): plugins do not import the data layer. Both are
gathered once per endpoint whenever the table's structure changes (``table.version``) or
a value under the key changes (``table.attributes.key_version``).

The peer is the other stage's first endpoint, read from the cycle under
:data:`PEER_ENDPOINT` (llm-d-router's request attribute
``peer-endpoint/disagg-profile-handler``): an :class:`Endpoint`, or a
:class:`ProfileRunResult` whose first endpoint is taken. Its topology is read the same
way, from its row when an endpoint of that name is in the table, else from its own
labels. Without a peer the filter keeps every candidate and the scorer scores 0.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    DEFAULT_TOPOLOGY_PRODUCER as CONTRACT_DEFAULT_TOPOLOGY_PRODUCER,
)
from inference_sched.framework.contracts import PEER_ENDPOINT
from inference_sched.framework.contracts import TOPOLOGY_DATA_TYPE as CONTRACT_TOPOLOGY_DATA_TYPE
from inference_sched.framework.interfaces import Filter, Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    ScorerCategory,
)
from inference_sched.params import one_of, param, string
from inference_sched.state.attributes import attribute_key
from inference_sched.state.table import EndpointTable

__all__ = [
    "DEFAULT_TOPOLOGY_PRODUCER",
    "LEVELS",
    "LEVEL_SCORES",
    "PEER_ENDPOINT",
    "TOPOLOGY_DATA_TYPE",
    "TOPOLOGY_FIELDS",
    "TOPOLOGY_LABELS",
    "TopologyAffinityFilter",
    "TopologyAffinityFilterParams",
    "TopologyAffinityScorer",
    "TopologyAffinityScorerParams",
    "peer_endpoint",
    "topology_key",
]

LEVELS: Final = ("host", "rack", "zone", "region")
"""Affinity levels, closest first; their index is the level code (4 = none)."""
NONE_LEVEL: Final = len(LEVELS)
TOPOLOGY_LABELS: Final = (
    "kubernetes.io/hostname",
    "topology.kubernetes.io/rack",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
)
"""The endpoint label of each level, in :data:`LEVELS` order."""
LEVEL_SCORES: Final = (1.0, 0.20, 0.05, 0.02, 0.0)
"""Score per level code: host, rack, zone, region, none."""


TOPOLOGY_DATA_TYPE: Final = CONTRACT_TOPOLOGY_DATA_TYPE
"""Data type of the topology attribute (llm-d-router ``attribute/topology``)."""
DEFAULT_TOPOLOGY_PRODUCER: Final = CONTRACT_DEFAULT_TOPOLOGY_PRODUCER
"""Producer read when ``topologyProducerName`` is empty (the extractor's default name)."""
TOPOLOGY_FIELDS: Final = ("hostname", "rack", "zone", "region")
"""The attribute value's field of each level, in :data:`LEVELS` order."""


def topology_key(producer: str = "") -> str:
    """The attribute key read: ``Topology/<producer or "topology-extractor">``."""
    return attribute_key(TOPOLOGY_DATA_TYPE, producer or DEFAULT_TOPOLOGY_PRODUCER)


def _from_labels(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(key, "") for key in TOPOLOGY_LABELS)


def _from_attribute(value: Any) -> tuple[str, ...] | None:
    """The level values of a topology attribute (anything with ``hostname``, ``rack``,
    ``zone`` and ``region``; a non-str field reads as ``""``), or None when ``value`` is
    absent or not topology-shaped."""
    if value is None:
        return None
    fields = tuple(getattr(value, field, None) for field in TOPOLOGY_FIELDS)
    if any(f is None for f in fields):
        return None
    return tuple(f if isinstance(f, str) else "" for f in fields)


def _row_topology(table: EndpointTable, key: str, row: int, endpoint: Endpoint) -> tuple[str, ...]:
    """The topology of ``endpoint`` at ``row``: its attribute, else its labels."""
    found = _from_attribute(table.attributes.get(row, key))
    return _from_labels(endpoint.labels) if found is None else found


def peer_endpoint(cycle: CycleState) -> Endpoint | None:
    """The peer of this stage (see the module docstring), or None."""
    peer = cycle.read(PEER_ENDPOINT)
    if isinstance(peer, Endpoint):
        return peer
    if isinstance(peer, ProfileRunResult) and peer.endpoints:
        return peer.endpoints[0]
    return None


@attrs.frozen(eq=False)
class _Topology:
    table: EndpointTable
    version: int
    key_version: int
    values: tuple[npt.NDArray[np.object_], ...]
    """Per level: the topology value of each row ("" when absent)."""


class _TopologyLevels:
    """Per-row topology cache and the level computation shared by filter and scorer."""

    def _init_cache(self, producer: str) -> None:
        self.key = topology_key(producer)
        """The attribute read: ``Topology/<producer>``."""
        self._lock = threading.Lock()
        self._cache: _Topology | None = None

    def peer_topology(self, table: EndpointTable, peer: Endpoint) -> tuple[str, ...]:
        """The peer's topology: from its row when an endpoint of its name is in the table
        (attribute, else that endpoint's labels), else from ``peer.labels``."""
        try:
            row = table.row(peer.name)
        except KeyError:
            return _from_labels(peer.labels)
        current = table.endpoint_or_none(row)
        if current is None or current.name != peer.name:  # removed meanwhile
            return _from_labels(peer.labels)
        return _row_topology(table, self.key, row, current)

    def levels(
        self, cycle: CycleState, table: EndpointTable, candidates: Candidates
    ) -> npt.NDArray[np.int8] | None:
        """The level code of each candidate; None without a peer or when the peer has no
        topology. A candidate without topology matches no level (none)."""
        peer = peer_endpoint(cycle)
        if peer is None:
            return None
        wanted = self.peer_topology(table, peer)
        if not any(wanted):
            return None
        topo = self._topology(table)
        level = np.full(len(candidates), NONE_LEVEL, dtype=np.int8)
        for code in range(NONE_LEVEL - 1, -1, -1):  # the closest level wins
            if wanted[code]:
                level[np.equal(topo.values[code][candidates], wanted[code])] = code
        return level

    def _topology(self, table: EndpointTable) -> _Topology:
        cache = self._cache
        store = table.attributes
        if (
            cache is not None
            and cache.table is table
            and cache.version == table.version
            and cache.key_version == store.key_version(self.key)
        ):
            return cache
        with self._lock, table.lock:
            # Read the versions first: a change while building leaves a stale stamp, so
            # the next call rebuilds (never a fresh stamp on stale values).
            version = table.version
            key_version = store.key_version(self.key)
            values = tuple(np.full(table.capacity, "", dtype=np.object_) for _ in LEVELS)
            for endpoint in table:
                row = table.row(endpoint.name)
                for code, value in enumerate(_row_topology(table, self.key, row, endpoint)):
                    values[code][row] = value
            cache = _Topology(table, version, key_version, values)
            self._cache = cache
        return cache


@attrs.frozen
class TopologyAffinityFilterParams:
    """Parameters of ``topology-affinity-filter`` (llm-d-router)."""

    min_affinity: str = param("host", alias="minAffinity", check=one_of(*LEVELS))
    """The farthest level kept: ``host``, ``rack``, ``zone`` or ``region``."""
    topology_producer_name: str = param("", alias="topologyProducerName", check=string)
    """Name of the ``topology-extractor`` whose attribute ``Topology/<name>`` is read
    (empty: ``topology-extractor``); endpoints without it fall back to their labels."""


@register("topology-affinity-filter")
class TopologyAffinityFilter(_TopologyLevels):
    """Keeps the candidates at ``minAffinity`` or closer to the peer (llm-d-router).

    Without a peer, or when the peer has no topology, keeps every candidate; a candidate
    without topology is dropped; when none is kept, keeps them all.
    """

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    Params = TopologyAffinityFilterParams

    def __init__(self, name: str, params: TopologyAffinityFilterParams, handle: Handle) -> None:
        self.name = name
        self._max_level = LEVELS.index(params.min_affinity)
        self._init_cache(params.topology_producer_name)

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Candidates close enough to the peer, in order."""
        level = self.levels(cycle, table, candidates)
        if level is None:
            return candidates
        kept = candidates[level <= self._max_level]
        return kept if len(kept) else candidates


@attrs.frozen
class TopologyAffinityScorerParams:
    """Parameters of ``topology-affinity-scorer`` (llm-d-router)."""

    topology_producer_name: str = param("", alias="topologyProducerName", check=string)
    """Name of the ``topology-extractor`` whose attribute ``Topology/<name>`` is read
    (empty: ``topology-extractor``); endpoints without it fall back to their labels."""


@register("topology-affinity-scorer")
class TopologyAffinityScorer(_TopologyLevels):
    """host 1.0, rack 0.20, zone 0.05, region 0.02, none 0 (llm-d-router); 0 everywhere
    without a peer; 0 for a candidate without topology."""

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    Params = TopologyAffinityScorerParams

    def __init__(self, name: str, params: TopologyAffinityScorerParams, handle: Handle) -> None:
        self.name = name
        self._scores = np.asarray(LEVEL_SCORES, dtype=np.float32)
        self._init_cache(params.topology_producer_name)

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """The level score of each candidate against the peer."""
        level = self.levels(cycle, table, candidates)
        if level is None:
            out[: len(candidates)] = 0.0
            return
        out[: len(candidates)] = self._scores[level]


_topology_filter: type[Filter] = TopologyAffinityFilter
_topology_scorer: type[Scorer] = TopologyAffinityScorer
