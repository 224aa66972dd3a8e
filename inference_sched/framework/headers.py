"""HTTP header names the scheduler reads or writes, GIE's and llm-d's spellings.

A gateway implementer uses these to pass the request's headers in
(:meth:`~inference_sched.framework.types.Request.create`) and to forward the answer
(:attr:`~inference_sched.framework.types.SchedulingResult.destination_header` goes in
:data:`HEADER_DESTINATION_ENDPOINT`, plus ``SchedulingResult.request_headers``).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_FAIRNESS_ID",
    "HEADER_DATA_PARALLEL",
    "HEADER_DESTINATION_ENDPOINT",
    "HEADER_ENCODER",
    "HEADER_FAIRNESS_ID",
    "HEADER_KV_CACHE_SOURCE",
    "HEADER_MODEL_REWRITE",
    "HEADER_OBJECTIVE",
    "HEADER_PREFILLER",
    "HEADER_REQUEST_ID",
    "HEADER_SESSION_ID",
    "HEADER_SESSION_TOKEN",
    "HEADER_SLO_TPOT_MS",
    "HEADER_SLO_TTFT_MS",
    "HEADER_SUBSET_HINT",
    "ROUTING_HEADERS",
]

HEADER_DESTINATION_ENDPOINT: Final = "x-gateway-destination-endpoint"
"""Where the gateway sends the request: ``ip:port`` then fallbacks, comma-separated (GIE)."""
HEADER_SUBSET_HINT: Final = "x-gateway-destination-endpoint-subset"
"""GIE's subset hint key (metadata ``envoy.lb.subset_hint``): the endpoints the gateway
allows for this request."""
HEADER_REQUEST_ID: Final = "x-request-id"
HEADER_SLO_TTFT_MS: Final = "x-slo-ttft-ms"
"""Time-to-first-token objective in milliseconds (GIE's SLO-aware routing)."""
HEADER_SLO_TPOT_MS: Final = "x-slo-tpot-ms"
"""Time-per-output-token objective in milliseconds."""
HEADER_OBJECTIVE: Final = "x-gateway-inference-objective"
"""Name of the request's InferenceObjective (its priority)."""
HEADER_FAIRNESS_ID: Final = "x-gateway-inference-fairness-id"
"""The flow (tenant) a request belongs to, for flow control."""
HEADER_MODEL_REWRITE: Final = "x-gateway-model-name-rewrite"
HEADER_SESSION_TOKEN: Final = "x-session-token"
"""llm-d's session-affinity token (the encoded endpoint of the session's last pick)."""
HEADER_SESSION_ID: Final = "x-session-id"
HEADER_PREFILLER: Final = "x-prefiller-host-port"
"""The prefill pick's ``ip:port``, for the decode pod's sidecar (llm-d)."""
HEADER_ENCODER: Final = "x-encoder-hosts-ports"
"""The encode picks' ``ip:port,ip:port`` (llm-d E/P/D)."""
HEADER_DATA_PARALLEL: Final = "x-data-parallel-host-port"
"""The chosen data-parallel rank's ``ip:port`` (llm-d)."""
HEADER_KV_CACHE_SOURCE: Final = "x-kv-cache-source-host-port"
"""The peer to pull the prompt's KV blocks from (llm-d ``p2p-source-producer``)."""
ROUTING_HEADERS: Final = (
    HEADER_PREFILLER,
    HEADER_ENCODER,
    HEADER_DATA_PARALLEL,
    HEADER_KV_CACHE_SOURCE,
)
"""Headers the EPP sets for the model server's sidecar: a client's own values must never
reach it, so a gateway drops them from every request (whether or not a plugin sets
them in this cycle)."""
DEFAULT_FAIRNESS_ID: Final = "default-flow"
"""The flow of a request without :data:`HEADER_FAIRNESS_ID`."""
