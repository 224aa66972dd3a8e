"""Topology affinity to the disaggregation peer: ``topology-affinity-filter`` and
``topology-affinity-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/scheduling/{filter,scorer}/topologyaffinity/``;
``docs/plugins/topology-affinity-filter.md``, ``docs/plugins/topology-affinity-scorer.md``).

In a disaggregated request the second stage (prefill after decode) should run close to
the first: the same host, else the same rack, zone, region. The *level* of a candidate
is the first of host < rack < zone < region at which its topology and the peer's carry
the same non-empty value, else none.

Topology is read from the endpoint labels llm-d's topology extractor reads from the pod
(``kubernetes.io/hostname``, ``topology.kubernetes.io/rack``, ``.../zone``,
``.../region``), gathered once per endpoint whenever the table's structure changes
(``table.version``).

The peer is the other stage's first endpoint, read from the cycle under
:data:`PEER_ENDPOINT` (llm-d-router's request attribute
``peer-endpoint/disagg-profile-handler``): an :class:`Endpoint`, or a
:class:`ProfileRunResult` whose first endpoint is taken. Without a peer the filter keeps
every candidate and the scorer scores 0.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import PEER_ENDPOINT
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
from inference_sched.state.table import EndpointTable

__all__ = [
    "LEVELS",
    "LEVEL_SCORES",
    "PEER_ENDPOINT",
    "TOPOLOGY_LABELS",
    "TopologyAffinityFilter",
    "TopologyAffinityFilterParams",
    "TopologyAffinityScorer",
    "TopologyAffinityScorerParams",
    "peer_endpoint",
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


def _topology(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(key, "") for key in TOPOLOGY_LABELS)


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
    values: tuple[npt.NDArray[np.object_], ...]
    """Per level: the label value of each row ("" when absent)."""


class _TopologyLevels:
    """Per-row topology cache and the level computation shared by filter and scorer."""

    def _init_cache(self) -> None:
        self._lock = threading.Lock()
        self._cache: _Topology | None = None

    def levels(
        self, cycle: CycleState, table: EndpointTable, candidates: Candidates
    ) -> npt.NDArray[np.int8] | None:
        """The level code of each candidate; None without a peer or when the peer has no
        topology. A candidate without topology labels matches no level (none)."""
        peer = peer_endpoint(cycle)
        if peer is None:
            return None
        wanted = _topology(peer.labels)
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
        if cache is not None and cache.table is table and cache.version == table.version:
            return cache
        with self._lock, table.lock:
            version = table.version
            values = tuple(np.full(table.capacity, "", dtype=np.object_) for _ in LEVELS)
            for endpoint in table:
                row = table.row(endpoint.name)
                for code, value in enumerate(_topology(endpoint.labels)):
                    values[code][row] = value
            cache = _Topology(table, version, values)
            self._cache = cache
        return cache


@attrs.frozen
class TopologyAffinityFilterParams:
    """Parameters of ``topology-affinity-filter`` (llm-d-router)."""

    min_affinity: str = param("host", alias="minAffinity", check=one_of(*LEVELS))
    """The farthest level kept: ``host``, ``rack``, ``zone`` or ``region``."""
    topology_producer_name: str = param("", alias="topologyProducerName", check=string)
    """Accepted for llm-d-router compatibility and ignored: topology comes from the
    endpoint labels."""


@register("topology-affinity-filter")
class TopologyAffinityFilter(_TopologyLevels):
    """Keeps the candidates at ``minAffinity`` or closer to the peer (llm-d-router).

    Without a peer, or when the peer has no topology labels, keeps every candidate; a
    candidate without topology labels is dropped; when none is kept, keeps them all.
    """

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    Params = TopologyAffinityFilterParams

    def __init__(self, name: str, params: TopologyAffinityFilterParams, handle: Handle) -> None:
        self.name = name
        self._max_level = LEVELS.index(params.min_affinity)
        self._init_cache()

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
    """Accepted for llm-d-router compatibility and ignored: topology comes from the
    endpoint labels."""


@register("topology-affinity-scorer")
class TopologyAffinityScorer(_TopologyLevels):
    """host 1.0, rack 0.20, zone 0.05, region 0.02, none 0 (llm-d-router); 0 everywhere
    without a peer; 0 for a candidate without topology labels."""

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    Params = TopologyAffinityScorerParams

    def __init__(self, name: str, params: TopologyAffinityScorerParams, handle: Handle) -> None:
        self.name = name
        self._scores = np.asarray(LEVEL_SCORES, dtype=np.float32)
        self._init_cache()

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
