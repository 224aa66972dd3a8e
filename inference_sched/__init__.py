"""inference-sched: endpoint picking for LLM inference, GIE-compatible, in Python.

Build a :class:`Scheduler` from a GIE ``EndpointPickerConfig``, keep its
:class:`EndpointTable` up to date with endpoint metrics, and call
:meth:`Scheduler.schedule` for each request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import EndpointPickerConfig, load_config, load_config_file
from .errors import (
    AdmissionDeniedError,
    ConfigError,
    DataError,
    InferenceSchedError,
    NoEndpointError,
    ParameterError,
    PluginError,
    PluginLoadError,
    PluginRegistrationError,
    RequestShedError,
    SchedulingError,
    UnknownPluginTypeError,
)
from .handle import PluginHandle
from .interfaces import (
    DataProducer,
    Filter,
    Handle,
    Picker,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    ResponseReceived,
    ResponseStreaming,
    Scorer,
)
from .profile import SchedulingProfile
from .registry import register
from .scheduler import Scheduler
from .state import EndpointHandle, EndpointTable
from .types import (
    Candidates,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Response,
    Role,
    SchedulingResult,
    ScorerCategory,
    Usage,
)

if TYPE_CHECKING:
    __version__: str

__all__ = [
    "AdmissionDeniedError",
    "Candidates",
    "ConfigError",
    "CycleState",
    "DataError",
    "DataProducer",
    "Endpoint",
    "EndpointHandle",
    "EndpointPickerConfig",
    "EndpointTable",
    "Filter",
    "Handle",
    "InferenceSchedError",
    "NoEndpointError",
    "ParameterError",
    "Picker",
    "PluginError",
    "PluginHandle",
    "PluginLoadError",
    "PluginRegistrationError",
    "RequestShedError",
    "PreRequest",
    "ProfileHandler",
    "ProfileRunResult",
    "Request",
    "Response",
    "ResponseComplete",
    "ResponseReceived",
    "ResponseStreaming",
    "Role",
    "Scheduler",
    "SchedulingError",
    "SchedulingProfile",
    "SchedulingResult",
    "Scorer",
    "ScorerCategory",
    "UnknownPluginTypeError",
    "Usage",
    "load_config",
    "load_config_file",
    "register",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("inference-sched")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from ._version import __version__

            return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
