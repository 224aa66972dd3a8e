"""Endpoint identity: the model-server address a table row describes, and its role.

``Endpoint`` is what discovery produces and the :class:`~inference_sched.state.table.
EndpointTable` stores per row; ``Candidates`` are row indices into that table.
"""

from __future__ import annotations

import enum
import ipaddress
import types
from collections.abc import Mapping
from typing import Final, NewType

import attrs
import numpy as np
import numpy.typing as npt

__all__ = ["ROLE_LABEL", "Candidates", "Endpoint", "EndpointName", "Role", "strip_port"]

Candidates = npt.NDArray[np.int32]
"""Row indices into an :class:`~inference_sched.state.table.EndpointTable` (int32, order
matters)."""

EndpointName = NewType("EndpointName", str)

ROLE_LABEL: Final = "llm-d.ai/role"
"""Pod label that carries an endpoint's disaggregation role (llm-d's convention)."""


class Role(enum.IntEnum):
    """Disaggregation role of an endpoint, from the ``llm-d.ai/role`` label.

    The int values are the codes stored in ``EndpointTable.role``.
    """

    UNSET = 0
    PREFILL = 1
    DECODE = 2
    BOTH = 3
    PREFILL_DECODE = 4
    ENCODE = 5
    ENCODE_PREFILL = 6
    ENCODE_PREFILL_DECODE = 7
    OTHER = 8
    """A label value none of the known roles spell."""

    @classmethod
    def from_label(cls, value: str | None) -> Role:
        """Map a ``llm-d.ai/role`` label value (``None`` = no label) to a role."""
        if value is None:
            return cls.UNSET
        return _ROLE_BY_LABEL.get(value, cls.OTHER)  # exact, as llm-d-router matches it

    @property
    def label(self) -> str | None:
        """The label value that spells this role (``None`` for UNSET and OTHER)."""
        return _LABEL_BY_ROLE.get(self)


_ROLE_BY_LABEL: Final = {
    "prefill": Role.PREFILL,
    "decode": Role.DECODE,
    "both": Role.BOTH,
    "prefill-decode": Role.PREFILL_DECODE,
    "encode": Role.ENCODE,
    "encode-prefill": Role.ENCODE_PREFILL,
    "encode-prefill-decode": Role.ENCODE_PREFILL_DECODE,
}
_LABEL_BY_ROLE: Final = {role: label for label, role in _ROLE_BY_LABEL.items()}


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value or {}))


def _role_from_labels(self: Endpoint) -> Role:
    return Role.from_label(self.labels.get(ROLE_LABEL))


@attrs.frozen
class Endpoint:
    """One model-server endpoint of the pool (a pod and a target port).

    Attributes:
        name: unique id in the pool; GIE spells it ``<pod>-rank-<port index>``.
        address: IP address (or host name) the gateway forwards to.
        port: target port.
        labels: pod labels (read-only mapping).
        role: disaggregation role; derived from the ``llm-d.ai/role`` label unless given.
        metrics_port: port serving ``/metrics`` when it differs from ``port``.
        metrics_address: host serving ``/metrics`` when it differs from ``address``
            (``multicluster-file-discovery``'s ``metricsAddress`` label).
        node_address: the node's IP (pod ``status.hostIP``): where node-level exporters
            such as DCGM answer (``dcgm-data-source`` ``useNodeAddress``).
        pod_name: the pod's name when the endpoint name is not it (``<pod>-rank-<n>``).
    """

    name: str
    address: str
    port: int
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)
    role: Role = attrs.field(
        default=attrs.Factory(_role_from_labels, takes_self=True), converter=Role
    )
    metrics_port: int | None = None
    metrics_address: str | None = None
    node_address: str | None = None
    pod_name: str | None = None

    @property
    def hostport(self) -> str:
        """``ip:port`` as GIE writes it in ``x-gateway-destination-endpoint``."""
        if ":" in self.address:  # IPv6 literal
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def metrics_hostport(self) -> str:
        """``ip:port`` of the metrics server."""
        port = self.port if self.metrics_port is None else self.metrics_port
        return Endpoint(self.name, self.metrics_address or self.address, port).hostport


def strip_port(hostport: str) -> str:
    """IP part of ``ip:port`` / ``[v6]:port`` / bare IP (GIE matches subsets by IP only)."""
    if hostport.startswith("["):
        return hostport[1 : hostport.index("]")]
    try:
        ipaddress.ip_address(hostport)
    except ValueError:
        return hostport.rsplit(":", 1)[0]
    return hostport
