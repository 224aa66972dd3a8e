"""The data layer: what the scheduler knows about the pool, read from the pool itself.

Endpoint discovery (:mod:`.discovery`: a static list, a watched file; :mod:`.k8s`:
Kubernetes pods), metrics scraping (:mod:`.scraper`) and parsing (:mod:`.parse`, with
engine mappings for vLLM, SGLang and TensorRT-LLM as configuration, :mod:`.engines`),
written into the :class:`~inference_sched.state.table.EndpointTable` in bulk, as GIE's
data layer does (``gateway-api-inference-extension: pkg/epp/datalayer``;
``docs/datalayer.md``, ``docs/discovery.md``).

Without a scheduler, :func:`scrapers_from_config` builds the runners a config's
``dataLayer`` sources ask for over any table (metrics scrapers and attribute pollers),
:func:`attach_notification_sources` its notification sources, and
:func:`discovery_from_config` its ``dataLayer.discovery`` plugin. The names below load on first use:
importing this package imports neither httpx nor prometheus-client nor kubernetes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_sched.datalayer.attribute_poller import AttributePoller
    from inference_sched.datalayer.discovery import (
        Discovery,
        DiscoveryRunner,
        FileDiscovery,
        StaticDiscovery,
        SyncResult,
        discovery_from_config,
        run_discovery,
    )
    from inference_sched.datalayer.file_discovery import (
        FileDiscoveryPlugin,
        MulticlusterFileDiscoveryPlugin,
    )
    from inference_sched.datalayer.health import EndpointHealth, FailureKind, failure_kind
    from inference_sched.datalayer.k8s import PodDiscovery
    from inference_sched.datalayer.notifications import Topology, attach_notification_sources
    from inference_sched.datalayer.parse import EndpointSample
    from inference_sched.datalayer.scraper import (
        EndpointStatus,
        MetricsExtractor,
        MetricsSource,
        Scraper,
        ScrapeReport,
        scrapers_for,
        scrapers_from_config,
    )

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "Discovery",
            "DiscoveryRunner",
            "FileDiscovery",
            "StaticDiscovery",
            "SyncResult",
            "discovery_from_config",
            "run_discovery",
        ),
        "inference_sched.datalayer.discovery",
    ),
    **dict.fromkeys(
        ("FileDiscoveryPlugin", "MulticlusterFileDiscoveryPlugin"),
        "inference_sched.datalayer.file_discovery",
    ),
    **dict.fromkeys(
        ("Topology", "attach_notification_sources"), "inference_sched.datalayer.notifications"
    ),
    "AttributePoller": "inference_sched.datalayer.attribute_poller",
    **dict.fromkeys(
        ("EndpointHealth", "FailureKind", "failure_kind"), "inference_sched.datalayer.health"
    ),
    "PodDiscovery": "inference_sched.datalayer.k8s",
    "EndpointSample": "inference_sched.datalayer.parse",
    **dict.fromkeys(
        (
            "EndpointStatus",
            "MetricsExtractor",
            "MetricsSource",
            "ScrapeReport",
            "Scraper",
            "scrapers_for",
            "scrapers_from_config",
        ),
        "inference_sched.datalayer.scraper",
    ),
}

__all__ = [
    # discovery
    "Discovery",
    "DiscoveryRunner",
    "FileDiscovery",
    "FileDiscoveryPlugin",
    "MulticlusterFileDiscoveryPlugin",
    "PodDiscovery",
    "StaticDiscovery",
    "SyncResult",
    "discovery_from_config",
    "run_discovery",
    # endpoint health
    "EndpointHealth",
    "FailureKind",
    "failure_kind",
    # endpoint notifications and attributes
    "AttributePoller",
    "Topology",
    "attach_notification_sources",
    # metrics
    "EndpointSample",
    "EndpointStatus",
    "MetricsExtractor",
    "MetricsSource",
    "ScrapeReport",
    "Scraper",
    "scrapers_for",
    "scrapers_from_config",
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
