"""The scheduling framework: what a custom endpoint picker is built from.

This package is the surface of those who assemble their own EPP (``docs/api.md``): the
:class:`Scheduler` and its :data:`ConfigSource`, :class:`SchedulingProfile`,
:class:`PluginHandle`, :class:`PluginStats`, the config loader, the plugin registry
(:func:`register`, :func:`available`, :func:`get`) and every extension-point Protocol of
:mod:`inference_sched.framework.interfaces`.

Its names load on first use, so ``import inference_sched.framework`` (which every
submodule import runs first) imports no submodule, no plugin family and no optional
client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_sched.framework.config import (
        EndpointPickerConfig,
        load_config,
        load_config_file,
    )
    from inference_sched.framework.handle import PluginHandle
    from inference_sched.framework.interfaces import (
        Admitter,
        AttributeExtractor,
        DataProducer,
        DataSource,
        Decider,
        DeferredWork,
        EndpointDiscovery,
        EndpointExtractor,
        Extractor,
        Filter,
        Handle,
        NotificationSource,
        Parser,
        Picker,
        Plugin,
        PreRequest,
        ProfileHandler,
        ResponseComplete,
        ResponseReceived,
        ResponseStreaming,
        SaturationDetector,
        Scorer,
        Screener,
    )
    from inference_sched.framework.profile import PluginStats, SchedulingProfile
    from inference_sched.framework.registry import available, get, register
    from inference_sched.framework.scheduler import ConfigSource, Scheduler

_PROTOCOLS = (
    "Admitter",
    "AttributeExtractor",
    "DataProducer",
    "DataSource",
    "Decider",
    "DeferredWork",
    "EndpointDiscovery",
    "EndpointExtractor",
    "Extractor",
    "Filter",
    "Handle",
    "NotificationSource",
    "Parser",
    "Picker",
    "Plugin",
    "PreRequest",
    "ProfileHandler",
    "ResponseComplete",
    "ResponseReceived",
    "ResponseStreaming",
    "SaturationDetector",
    "Scorer",
    "Screener",
)

_LAZY: dict[str, str] = {
    "Scheduler": "inference_sched.framework.scheduler",
    "ConfigSource": "inference_sched.framework.scheduler",
    "SchedulingProfile": "inference_sched.framework.profile",
    "PluginStats": "inference_sched.framework.profile",
    "PluginHandle": "inference_sched.framework.handle",
    "EndpointPickerConfig": "inference_sched.framework.config",
    "load_config": "inference_sched.framework.config",
    "load_config_file": "inference_sched.framework.config",
    "register": "inference_sched.framework.registry",
    "available": "inference_sched.framework.registry",
    "get": "inference_sched.framework.registry",
    **dict.fromkeys(_PROTOCOLS, "inference_sched.framework.interfaces"),
}

__all__ = [
    # building a scheduler
    "Scheduler",
    "ConfigSource",
    "SchedulingProfile",
    "PluginHandle",
    "PluginStats",
    "EndpointPickerConfig",
    "load_config",
    "load_config_file",
    # the plugin registry
    "register",
    "available",
    "get",
    # extension points (every Protocol of inference_sched.framework.interfaces)
    "Admitter",
    "AttributeExtractor",
    "DataProducer",
    "DataSource",
    "Decider",
    "DeferredWork",
    "EndpointDiscovery",
    "EndpointExtractor",
    "Extractor",
    "Filter",
    "Handle",
    "NotificationSource",
    "Parser",
    "Picker",
    "Plugin",
    "PreRequest",
    "ProfileHandler",
    "ResponseComplete",
    "ResponseReceived",
    "ResponseStreaming",
    "SaturationDetector",
    "Scorer",
    "Screener",
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
