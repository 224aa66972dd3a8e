"""Where each built-in plugin type lives, so the registry imports a family only when a
config first names one of its types (``import inference_sched`` loads no family).

A unit test imports every family and checks that this catalogue equals what the
modules register, so it cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "BUILTIN_DEFAULT_PRODUCERS",
    "BUILTIN_DEPRECATED",
    "BUILTIN_FAMILIES",
    "BUILTIN_PLUGINS",
]

BUILTIN_FAMILIES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "inference_sched.plugins.load": (
            "queue-scorer",
            "running-requests-size-scorer",
            "kv-cache-utilization-scorer",
            "token-load-scorer",
            "active-request-scorer",
            "load-aware-scorer",
            "inflight-load-producer",
        ),
        "inference_sched.plugins.cost_model": ("kv-cost-scorer", "softmax-picker"),
        "inference_sched.plugins.lora": ("lora-affinity-scorer",),
        "inference_sched.plugins.prefix": (
            "approx-prefix-cache-producer",
            "prefix-cache-scorer",
            "prefix-cache-affinity-filter",
            "no-hit-lru-scorer",
            "multicluster-prefix-cache-scorer",
            "multicluster-approx-prefix-cache-producer",
        ),
        "inference_sched.plugins.precise_prefix": (
            "precise-prefix-cache-producer",
            "precise-prefix-cache-scorer",
        ),
        "inference_sched.plugins.slo": (
            "predicted-latency-producer",
            "latency-scorer",
            "slo-headroom-tier-filter",
            "latency-slo-admitter",
        ),
        "inference_sched.plugins.tokens": ("token-producer", "tokenizer"),
        "inference_sched.plugins.pd": (
            "disagg-profile-handler",
            "prefix-based-pd-decider",
            "always-disagg-pd-decider",
            "always-disagg-multimodal-decider",
            "data-parallel-profile-handler",
        ),
        "inference_sched.plugins.saturation": ("utilization-detector", "concurrency-detector"),
        "inference_sched.plugins.session": (
            "session-affinity-scorer",
            "session-affinity-filter",
            "multicluster-session-affinity-filter",
        ),
        "inference_sched.plugins.pickers": (
            "max-score-picker",
            "random-picker",
            "weighted-random-picker",
        ),
        "inference_sched.plugins.filters": (
            "decode-filter",
            "prefill-filter",
            "label-selector-filter",
            "by-label-selector",
            "encode-filter",
            "by-label",
        ),
        "inference_sched.plugins.utilization": ("utilization-filter",),
        "inference_sched.plugins.context_length": ("context-length-aware",),
        "inference_sched.plugins.affinity": ("header-label-affinity-scorer",),
        "inference_sched.plugins.topology": (
            "topology-affinity-filter",
            "topology-affinity-scorer",
        ),
        "inference_sched.plugins.profile_handlers": ("single-profile-handler",),
        "inference_sched.plugins.header_profile": ("header-profile-handler",),
        "inference_sched.plugins.pd_legacy": (
            "pd-profile-handler",
            "disagg-headers-handler",
            "prefill-header-handler",
        ),
        "inference_sched.plugins.session_id": ("session-id-producer", "agent-identity"),
        "inference_sched.plugins.admitters": ("probabilistic-admitter",),
        "inference_sched.plugins.endpoint_attribute": (
            "endpoint-attribute-filter",
            "endpoint-attribute-scorer",
        ),
        "inference_sched.plugins.multicluster": (
            "multicluster-queue-scorer",
            "multicluster-kv-cache-utilization-scorer",
        ),
        "inference_sched.plugins.burst_prefix": ("burst-prefix-cache-producer",),
        "inference_sched.plugins.p2p_source": ("p2p-source-producer",),
        "inference_sched.plugins.mm_cache": (
            "mm-embeddings-cache-producer",
            "mm-embeddings-cache-scorer",
        ),
        "inference_sched.plugins.rollout": ("disaggregatedset-rollout-screener",),
        "inference_sched.plugins.reporting": ("request-attribute-reporter",),
        "inference_sched.plugins.parsers": (
            "openai-parser",
            "anthropic-parser",
            "vllmhttp-parser",
            "sglanghttp-parser",
            "passthrough-parser",
        ),
        "inference_sched.datalayer.plugins": ("metrics-data-source", "core-metrics-extractor"),
        "inference_sched.datalayer.sources": (
            "models-data-source",
            "models-data-extractor",
            "dcgm-data-source",
            "dcgm-extractor",
            "multicluster-metrics-data-source",
            "multicluster-metrics-extractor",
        ),
        "inference_sched.datalayer.notifications": (
            "endpoint-notification-source",
            "k8s-notification-source",
            "topology-extractor",
        ),
        "inference_sched.datalayer.file_discovery": (
            "file-discovery",
            "multicluster-file-discovery",
        ),
    }
)
"""Module → the plugin types it registers."""

BUILTIN_PLUGINS: Final[Mapping[str, str]] = MappingProxyType(
    {t: module for module, types in BUILTIN_FAMILIES.items() for t in types}
)
"""Plugin type → the module that registers it."""

BUILTIN_DEFAULT_PRODUCERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "InFlightLoad": "inflight-load-producer",
        "PrefixCacheMatchInfo": "approx-prefix-cache-producer",
        "LatencyPredictionInfo": "predicted-latency-producer",
        "MultiModalEncoderCacheMatchInfo": "mm-embeddings-cache-producer",
        "TokenizedPrompt": "token-producer",
    }
)
"""Data key → the built-in plugin type GIE creates when a profile consumes the key and
no configured plugin produces it."""

BUILTIN_DEPRECATED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "by-label": "label-selector-filter",
        "by-label-selector": "label-selector-filter",
        "tokenizer": "token-producer",
        "pd-profile-handler": "disagg-profile-handler",
        "disagg-headers-handler": "disagg-profile-handler",
        "prefill-header-handler": "disagg-profile-handler",
        "precise-prefix-cache-scorer": "precise-prefix-cache-producer",
    }
)
"""Deprecated built-in type → its replacement (llm-d-router ``cmd/epp/runner/runner.go``
deprecation info); building one logs a warning naming the replacement."""
