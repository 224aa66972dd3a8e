"""gRPC health service of the EPP (``grpc.health.v1.Health``), as GIE's EPP serves it.

Services ``""``, ``liveness``, ``readiness`` and ``envoy.service.ext_proc.v3.ExternalProcessor``
(gie.md §3.3, §5.1). ``liveness`` answers SERVING while the server runs; the others are
SERVING once the server started and the pool has at least one endpoint (GIE: "pool
synced"), and NOT_SERVING from the moment a drain begins, so a load balancer stops
sending new streams before the server refuses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

__all__ = ["EXT_PROC_SERVICE", "HEALTH_SERVICES", "HealthService"]

EXT_PROC_SERVICE: Final = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICES: Final = ("", "liveness", "readiness", EXT_PROC_SERVICE)
_WATCH_INTERVAL_S: Final = 0.2
_Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Computes each service's status on demand from the server's state.

    Args:
        is_ready: whether the pool can be served (e.g. ``len(table) > 0``).
    """

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready
        self.is_started = False
        """Set by the server once it listens."""
        self.is_draining = False
        """Set by the server when a drain begins: every service NOT_SERVING."""

    def status(self, service: str) -> int | None:
        """The status of ``service``, or ``None`` when it is not one of ours."""
        if service not in HEALTH_SERVICES:
            return None
        if not self.is_started or self.is_draining:
            return int(_Status.NOT_SERVING)
        if service == "liveness":
            return int(_Status.SERVING)
        try:
            ready = bool(self._is_ready())
        except Exception:  # noqa: BLE001 - a failing probe means "not ready", not a crash
            ready = False
        return int(_Status.SERVING if ready else _Status.NOT_SERVING)

    async def Check(  # gRPC's method name
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        """Unary health check; an unknown service is NOT_FOUND (grpc health spec)."""
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # gRPC's method name
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """Streams the status now and on every change (SERVICE_UNKNOWN for others)."""
        last: int | None = -1
        while True:
            status = self.status(request.service)
            current = _Status.SERVICE_UNKNOWN if status is None else status
            if current != last:
                last = current
                yield health_pb2.HealthCheckResponse(status=current)
            if self.is_draining:
                return  # said NOT_SERVING: end the stream so a drain need not wait for it
            await asyncio.sleep(_WATCH_INTERVAL_S)  # polling: the table has no change hook
