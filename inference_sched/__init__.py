"""inference-sched: endpoint picking for LLM inference, GIE-compatible, in Python.

Build a :class:`Scheduler` from a GIE ``EndpointPickerConfig``, keep its
:class:`EndpointTable` up to date with endpoint metrics, and call
:meth:`Scheduler.schedule` for each request.

This module is the gateway implementer's surface (``docs/api.md``). Its names load on
first use: ``import inference_sched`` imports no plugin family and none of the optional
clients (httpx, redis, zmq, kubernetes, rich, matplotlib, grpc, tokenizers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inference_sched import _compat
from inference_sched.errors import (
    AdmissionDeniedError,
    ConfigError,
    DataError,
    InferenceSchedError,
    NoEndpointError,
    ParameterError,
    ParseError,
    PluginError,
    PluginLoadError,
    PluginRegistrationError,
    RequestShedError,
    SchedulingError,
    UnknownPluginTypeError,
)

if TYPE_CHECKING:
    from inference_sched.framework.config import (
        EndpointPickerConfig,
        load_config,
        load_config_file,
    )
    from inference_sched.framework.handle import PluginHandle
    from inference_sched.framework.headers import (
        HEADER_DESTINATION_ENDPOINT,
        HEADER_FAIRNESS_ID,
        HEADER_OBJECTIVE,
        HEADER_REQUEST_ID,
        HEADER_SLO_TPOT_MS,
        HEADER_SLO_TTFT_MS,
    )
    from inference_sched.framework.interfaces import (
        Admitter,
        DataProducer,
        DataSource,
        Decider,
        DeferredWork,
        Extractor,
        Filter,
        Handle,
        Picker,
        Plugin,
        PreRequest,
        ProfileHandler,
        ResponseComplete,
        ResponseReceived,
        ResponseStreaming,
        SaturationDetector,
        Scorer,
    )
    from inference_sched.framework.profile import SchedulingProfile
    from inference_sched.framework.registry import register
    from inference_sched.framework.scheduler import Scheduler
    from inference_sched.framework.types import (
        CycleState,
        ProfileRunResult,
        Request,
        Response,
        SchedulingResult,
        ScorerCategory,
        Usage,
    )
    from inference_sched.prefix.prompt_bytes import prompt_bytes
    from inference_sched.state.endpoint import Candidates, Endpoint, Role
    from inference_sched.state.table import EndpointHandle, EndpointTable

    __version__: str

_LAZY: dict[str, str] = {
    "EndpointPickerConfig": "inference_sched.framework.config",
    "load_config": "inference_sched.framework.config",
    "load_config_file": "inference_sched.framework.config",
    "PluginHandle": "inference_sched.framework.handle",
    "HEADER_DESTINATION_ENDPOINT": "inference_sched.framework.headers",
    "HEADER_FAIRNESS_ID": "inference_sched.framework.headers",
    "HEADER_OBJECTIVE": "inference_sched.framework.headers",
    "HEADER_REQUEST_ID": "inference_sched.framework.headers",
    "HEADER_SLO_TPOT_MS": "inference_sched.framework.headers",
    "HEADER_SLO_TTFT_MS": "inference_sched.framework.headers",
    **dict.fromkeys(
        (
            "Admitter",
            "DataProducer",
            "DataSource",
            "Decider",
            "DeferredWork",
            "Extractor",
            "Filter",
            "Handle",
            "Picker",
            "Plugin",
            "PreRequest",
            "ProfileHandler",
            "ResponseComplete",
            "ResponseReceived",
            "ResponseStreaming",
            "SaturationDetector",
            "Scorer",
        ),
        "inference_sched.framework.interfaces",
    ),
    "SchedulingProfile": "inference_sched.framework.profile",
    "register": "inference_sched.framework.registry",
    "Scheduler": "inference_sched.framework.scheduler",
    **dict.fromkeys(
        (
            "CycleState",
            "ProfileRunResult",
            "Request",
            "Response",
            "SchedulingResult",
            "ScorerCategory",
            "Usage",
        ),
        "inference_sched.framework.types",
    ),
    "prompt_bytes": "inference_sched.prefix.prompt_bytes",
    "Candidates": "inference_sched.state.endpoint",
    "Endpoint": "inference_sched.state.endpoint",
    "Role": "inference_sched.state.endpoint",
    "EndpointHandle": "inference_sched.state.table",
    "EndpointTable": "inference_sched.state.table",
}

__all__ = [
    # errors
    "AdmissionDeniedError",
    "ConfigError",
    "DataError",
    "InferenceSchedError",
    "NoEndpointError",
    "ParameterError",
    "ParseError",
    "PluginError",
    "PluginLoadError",
    "PluginRegistrationError",
    "RequestShedError",
    "SchedulingError",
    "UnknownPluginTypeError",
    # scheduling
    "Scheduler",
    "SchedulingProfile",
    "PluginHandle",
    "EndpointPickerConfig",
    "load_config",
    "load_config_file",
    "register",
    # values
    "Candidates",
    "CycleState",
    "Endpoint",
    "EndpointHandle",
    "EndpointTable",
    "ProfileRunResult",
    "Request",
    "Response",
    "Role",
    "SchedulingResult",
    "ScorerCategory",
    "Usage",
    # plugin Protocols (all of them, from inference_sched.framework.interfaces)
    "Admitter",
    "DataProducer",
    "DataSource",
    "Decider",
    "DeferredWork",
    "Extractor",
    "Filter",
    "Handle",
    "Picker",
    "Plugin",
    "PreRequest",
    "ProfileHandler",
    "ResponseComplete",
    "ResponseReceived",
    "ResponseStreaming",
    "SaturationDetector",
    "Scorer",
    # the request adapter and header names
    "prompt_bytes",
    "HEADER_DESTINATION_ENDPOINT",
    "HEADER_FAIRNESS_ID",
    "HEADER_OBJECTIVE",
    "HEADER_REQUEST_ID",
    "HEADER_SLO_TPOT_MS",
    "HEADER_SLO_TTFT_MS",
]

_compat.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("inference-sched")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from inference_sched._version import __version__

            return __version__
    old = _compat.resolve_attribute(name)
    if old is not None:
        return old
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
