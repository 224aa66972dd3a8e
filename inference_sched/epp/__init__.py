"""The runnable EPP: the Director shared by the transports, the Envoy ext_proc server
and the OpenAI-compatible HTTP gateway (``docs/epp.md``). May import every layer but
``sim`` and ``cli``; grpcio and the Envoy protos are imported only by the ext_proc
modules, aiohttp by the gateway. The names below load on first use: importing this package
imports neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_sched.epp.director import (
        Decision,
        Director,
        ModelRewrite,
        Rejection,
        ResponseTracker,
        RewriteTarget,
    )
    from inference_sched.epp.extproc import ExtProcServer
    from inference_sched.epp.gateway import GatewayStats, HttpGateway

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "Decision",
            "Director",
            "ModelRewrite",
            "Rejection",
            "ResponseTracker",
            "RewriteTarget",
        ),
        "inference_sched.epp.director",
    ),
    "ExtProcServer": "inference_sched.epp.extproc",
    "GatewayStats": "inference_sched.epp.gateway",
    "HttpGateway": "inference_sched.epp.gateway",
}

__all__ = [
    "Decision",
    "Director",
    "ExtProcServer",
    "GatewayStats",
    "HttpGateway",
    "ModelRewrite",
    "Rejection",
    "ResponseTracker",
    "RewriteTarget",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
