"""The data layer: what the scheduler knows about the pool, read from the pool itself.

Endpoint discovery (:mod:`.discovery`: a static list, a watched file; :mod:`.k8s`:
Kubernetes pods), metrics scraping (:mod:`.scraper`) and parsing (:mod:`.parse`, with
engine mappings for vLLM, SGLang and TensorRT-LLM as configuration, :mod:`.engines`),
written into the :class:`~inference_sched.state.table.EndpointTable` in bulk, as GIE's
data layer does (``gateway-api-inference-extension: pkg/epp/datalayer``;
``docs/datalayer.md``, ``docs/discovery.md``).

Without a scheduler, :func:`scrapers_from_config` builds the scrapers a config's
``dataLayer`` section asks for over any table. The names below load on first use:
importing this package imports neither httpx nor prometheus-client nor kubernetes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_sched.datalayer.discovery import (
        Discovery,
        FileDiscovery,
        StaticDiscovery,
        SyncResult,
        run_discovery,
    )
    from inference_sched.datalayer.k8s import PodDiscovery
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
        ("Discovery", "FileDiscovery", "StaticDiscovery", "SyncResult", "run_discovery"),
        "inference_sched.datalayer.discovery",
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
    "FileDiscovery",
    "PodDiscovery",
    "StaticDiscovery",
    "SyncResult",
    "run_discovery",
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
