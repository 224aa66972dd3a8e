"""Data contracts: the cycle-state keys and value types that plugin families share.

A plugin family never imports another: a producer writes one of these values to the
:class:`~inference_sched.framework.types.CycleState` under its key, and every consumer
(other families, the scheduler's batch path, the simulator) reads it from here. The keys
are GIE's and llm-d's data keys (``docs/architecture.md``, "Data contracts").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NewType

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    SchedulingResult,
)

if TYPE_CHECKING:
    from inference_sched.state.table import EndpointTable

__all__ = [
    "AGENT_IDENTITY",
    "DEFAULT_TOPOLOGY_PRODUCER",
    "IN_FLIGHT_LOAD",
    "LATENCY_PREDICTION_INFO",
    "PEER_ENDPOINT",
    "PREFILL_PROFILE",
    "PREFIX_CACHE_MATCH_INFO",
    "SESSION_ID",
    "TOKENIZED_PROMPT",
    "TOPOLOGY_DATA_TYPE",
    "MultiModalFeature",
    "TokenizedRequest",
    "Topology",
    "UNCACHED_REQUEST_TOKENS",
    "UncachedRequestTokens",
    "InFlightLoad",
    "LatencyPredictionInfo",
    "MM_ENCODER_CACHE_MATCH_INFO",
    "MULTICLUSTER_KV_CACHE_UTILIZATION",
    "MULTICLUSTER_QUEUE_SIZE",
    "EncoderCacheMatchInfo",
    "PrefixCacheMatchInfo",
    "SessionID",
    "cache_salt",
    "estimate_tokens",
    "first_picks",
    "latency_info_key",
    "prefix_info_key",
    "read_encoder_cache_info",
    "read_latency_info",
    "read_prefix_info",
    "read_session_id",
    "read_tokenized",
    "read_uncached_tokens",
    "request_token_ids",
    "session_id_key",
    "uncached_input_tokens",
    "uncached_tokens_key",
]

PREFILL_PROFILE: Final = "prefill"
"""GIE's convention: a profile literally named ``prefill`` is the prefill stage of P/D."""

PEER_ENDPOINT: Final = "peer-endpoint/disagg-profile-handler"
"""Request attribute (llm-d-router): the other disaggregation stage's first endpoint, an
:class:`~inference_sched.state.endpoint.Endpoint`, written by ``disagg-profile-handler``
before it runs the prefill / encode stage (read by the topology plugins)."""

# ------------------------------------------------------------------ prefix match
PREFIX_CACHE_MATCH_INFO: Final = "PrefixCacheMatchInfo"
"""Data key of the prefix match (GIE ``PrefixCacheMatchInfoKey``)."""


def prefix_info_key(producer: str) -> str:
    """The cycle key of producer ``producer``'s own prefix match
    (``PrefixCacheMatchInfo/<producer>``, llm-d-router's printed ``DataKey``): what a
    ``prefix-cache-scorer`` with ``prefixMatchInfoProducerName`` reads. Producers write
    it besides the shared ``PrefixCacheMatchInfo``."""
    return f"{PREFIX_CACHE_MATCH_INFO}/{producer}"


NO_HASHES: Final = np.empty(0, dtype=np.uint64)
NO_HASHES.flags.writeable = False


@attrs.frozen(eq=False)
class PrefixCacheMatchInfo:
    """How much of the request's prefix each endpoint holds (GIE ``PrefixCacheMatchInfo``).

    Written by both prefix producers (``approx-prefix-cache-producer`` and
    ``precise-prefix-cache-producer``).

    Attributes:
        match_blocks: float64, indexed by *table row* (at least as long as the rows in
            use): the request's blocks found on that endpoint.
        total_blocks: the request's number of prefix blocks.
        block_size_tokens: block size used for the hashes, in tokens.
        hashes: the request's chained block hashes (uint64, ``total_blocks`` long, shorter
            when the producer stopped early, or empty when it hashed nothing; read them
            through :meth:`block_hashes`): two requests share their first ``k``
            blocks exactly when their first ``k`` hashes are equal. The joint batch
            assignment groups requests by them.
    """

    match_blocks: npt.NDArray[np.float64]
    total_blocks: int
    block_size_tokens: int
    hashes: npt.NDArray[np.uint64] = NO_HASHES
    rehash: Callable[[], npt.NDArray[np.uint64]] | None = attrs.field(default=None, repr=False)
    """Computes all ``total_blocks`` hashes when the producer stopped hashing early
    (``hashes`` shorter): the hot path skips what only the joint batch path reads."""

    def block_hashes(self) -> npt.NDArray[np.uint64]:
        """All the request's chained block hashes (``total_blocks`` long, or empty)."""
        if len(self.hashes) == self.total_blocks or self.rehash is None:
            return self.hashes
        return self.rehash()


def read_prefix_info(cycle: CycleState) -> PrefixCacheMatchInfo | None:
    """The cycle's prefix match, or ``None`` when no producer wrote one."""
    info = cycle.read(PREFIX_CACHE_MATCH_INFO)
    return info if isinstance(info, PrefixCacheMatchInfo) else None


def cache_salt(request: Request) -> str:
    """The body's ``cache_salt`` when it is a string (GIE, vLLM), else no salt."""
    salt = request.body.get("cache_salt") if request.body is not None else None
    return salt if isinstance(salt, str) else ""


def first_picks(result: SchedulingResult) -> list[tuple[int, Endpoint]]:
    """(row, endpoint) of the primary profile's pick, then of the ``prefill`` pick (GIE):
    the endpoints that will hold the request's blocks."""
    runs = result.profile_results
    picks: list[tuple[int, Endpoint]] = []
    run = runs.get(result.primary_profile_name)
    if run is not None and run.rows:
        picks.append((int(run.rows[0]), run.endpoints[0]))
    if len(runs) > 1:  # one profile (the usual case) has no prefill pick
        run = runs.get(PREFILL_PROFILE)
        if run is not None and run.rows and all(r != run.rows[0] for r, _ in picks):
            picks.append((int(run.rows[0]), run.endpoints[0]))
    return picks


# ------------------------------------------------------------------ in-flight load
IN_FLIGHT_LOAD: Final = "InFlightLoad"
"""Data key of the scheduler's in-flight accounting (GIE ``InFlightLoadKey``)."""

_CHARS_PER_TOKEN: Final = 4.0
_OUTPUT_RATIO: Final = 1.5


@attrs.frozen(eq=False)
class InFlightLoad:
    """The scheduler's in-flight load per table row (GIE ``InFlightLoad``).

    Written to the cycle under :data:`IN_FLIGHT_LOAD` by ``inflight-load-producer``. The
    counters live in the table's ``inflight_requests`` / ``inflight_tokens`` columns;
    this object reads them on access, so it never holds an array that the table has
    since reallocated.
    """

    table: EndpointTable

    @property
    def requests(self) -> npt.NDArray[np.float64]:
        """In-flight requests per row."""
        return self.table.inflight_requests

    @property
    def tokens(self) -> npt.NDArray[np.float64]:
        """Estimated in-flight tokens (input + output) per row."""
        return self.table.inflight_tokens


def _go_round(x: float) -> int:
    """Go's ``math.Round`` for x >= 0: halves round away from zero (Python's round is
    banker's rounding)."""
    floor = math.floor(x)
    return int(floor + 1 if x - floor >= 0.5 else floor)


def estimate_tokens(request: Request) -> int:
    """GIE's ``SimpleTokenEstimator``: estimated input + output tokens of ``request``.

    Input is ``max(request_size_bytes // 4, 1)`` when the body size is known, else the
    token-id count, else ``max(1, round(len(prompt) / 4))``; output is
    ``round(input * 1.5)``; rounding is Go's (half away from zero). A request with no
    size, no token ids and no prompt estimates 0 (GIE: no body).
    """
    if request.request_size_bytes > 0:
        num_input = max(request.request_size_bytes // 4, 1)
    elif request.token_ids is not None:
        num_input = len(request.token_ids)
    elif request.prompt is not None:
        num_input = max(1, _go_round(len(request.prompt) / _CHARS_PER_TOKEN))
    else:
        return 0
    return num_input + _go_round(num_input * _OUTPUT_RATIO)


# ------------------------------------------------------------------ uncached request tokens
UNCACHED_REQUEST_TOKENS: Final = "UncachedRequestTokens"
"""Cycle key of this request's tokens per endpoint (llm-d-router
``UncachedRequestTokensDataKey``), written by ``inflight-load-producer`` under this key
and under :func:`uncached_tokens_key` of its own name."""


def uncached_tokens_key(producer: str) -> str:
    """``UncachedRequestTokens/<producer>``: one producer's own key."""
    return f"{UNCACHED_REQUEST_TOKENS}/{producer}"


def uncached_input_tokens(
    info: PrefixCacheMatchInfo | None, input_tokens: int, rows: Candidates
) -> npt.NDArray[np.float64]:
    """The prompt tokens each endpoint (table ``rows``) must compute:
    ``max(0, (t - m) * bs) + max(0, input - t * bs)`` with ``t`` the request's blocks,
    ``m`` the endpoint's matched blocks and ``bs`` the block size of ``info``; ``input``
    everywhere when there is no match info (llm-d-router ``uncachedInputTokens``). The
    second term is the tail the prefix index did not hash (``maxPrefixTokensToMatch``)."""
    n = len(rows)
    base = float(max(input_tokens, 0))
    if info is None or info.block_size_tokens <= 0:
        return np.full(n, base)
    block = float(info.block_size_tokens)
    indexed = float(info.total_blocks) * block
    matched = np.zeros(n)
    known = rows < len(info.match_blocks)
    matched[known] = info.match_blocks[rows[known]]
    uncached: npt.NDArray[np.float64] = np.maximum(indexed - matched * block, 0.0)
    uncached += max(float(input_tokens) - indexed, 0.0)
    return uncached


@attrs.frozen(eq=False)
class UncachedRequestTokens:
    """This request's tokens on each endpoint (llm-d-router ``UncachedRequestTokens``):
    what ``inflight-load-producer`` adds to an endpoint it is sent to.

    The per-endpoint part reads the cycle's prefix match when asked (after every data
    producer ran), so the value does not depend on the order of the producers.
    """

    input_tokens: int
    """The request's prompt tokens (``TokenizedRequest.token_count()``, 0 if none)."""
    output_tokens: int
    """Estimated output tokens added to every endpoint (0 unless
    ``addEstimatedOutputTokens``)."""
    prefix_info: Callable[[], PrefixCacheMatchInfo | None] = attrs.field(repr=False)
    """Reads the prefix match the producer is bound to (``prefixMatchInfoProducerName``)."""

    def tokens(self, rows: Candidates) -> npt.NDArray[np.float64]:
        """Uncached prompt tokens plus the output estimate, per table row in ``rows``."""
        out = uncached_input_tokens(self.prefix_info(), self.input_tokens, rows)
        out += self.output_tokens
        return out


def read_uncached_tokens(cycle: CycleState, producer: str = "") -> UncachedRequestTokens | None:
    """The request's tokens written by ``producer`` (``""``: by whichever producer)."""
    value = cycle.read(uncached_tokens_key(producer) if producer else UNCACHED_REQUEST_TOKENS)
    return value if isinstance(value, UncachedRequestTokens) else None


# ------------------------------------------------------------------ tokenized prompt
TOKENIZED_PROMPT: Final = "TokenizedPrompt"
"""Data key of the request's :class:`TokenizedRequest` (llm-d ``TokenizedPrompt``).
Older producers wrote a bare uint32 array; :func:`request_token_ids` reads both."""


@attrs.frozen(eq=False)
class MultiModalFeature:
    """One multimodal item of a tokenized request (llm-d-router ``TokenizedRequest``
    multimodal features): its content hash and where its placeholder tokens sit."""

    modality: str
    """``image``, ``video``, ``audio``, ..."""
    hash: str
    """Content hash (vLLM ``mm_hashes``); items with equal hashes are the same item."""
    offset: int = 0
    """First placeholder token of the item in its prompt."""
    length: int = 0
    """Placeholder tokens of the item."""


@attrs.frozen(eq=False)
class TokenizedRequest:
    """The request's prompts as token ids (llm-d-router ``TokenizedRequest``), written
    under :data:`TOKENIZED_PROMPT` by ``token-producer``.

    Attributes:
        prompts: one uint32 array per prompt (a completions request with a list of
            strings has several; everything else has one).
        mm_features: the multimodal items, in prompt order.
        estimated: the ids come from the estimate backend (prompt bytes packed four per
            uint32, little-endian, zero-padded), not from the model's tokenizer.
    """

    prompts: tuple[npt.NDArray[np.uint32], ...]
    mm_features: tuple[MultiModalFeature, ...] = ()
    estimated: bool = False

    def token_count(self) -> int:
        """Tokens over every prompt (llm-d-router ``TokenCount()``)."""
        return sum(len(p) for p in self.prompts)

    def token_ids(self) -> npt.NDArray[np.uint32]:
        """Every prompt's ids, concatenated (one prompt: that array, not a copy)."""
        if len(self.prompts) == 1:
            return self.prompts[0]
        if not self.prompts:
            return np.empty(0, dtype=np.uint32)
        return np.concatenate(self.prompts)


def read_tokenized(cycle: CycleState) -> TokenizedRequest | None:
    """The cycle's tokenized request, or ``None`` when no producer wrote one."""
    value = cycle.read(TOKENIZED_PROMPT)
    return value if isinstance(value, TokenizedRequest) else None


def request_token_ids(request: Request, cycle: CycleState) -> npt.NDArray[np.uint32] | None:
    """The request's token ids: its own, the body's ``prompt_token_ids``, or what a
    ``token-producer`` wrote to the cycle; None when nobody knows them."""
    if request.token_ids is not None:
        return request.token_ids
    body = request.body
    if body is not None:
        ids = body.get("prompt_token_ids")
        if isinstance(ids, list) and ids and all(type(i) is int and 0 <= i < 2**32 for i in ids):
            return np.asarray(ids, dtype=np.uint32)
    produced = cycle.read(TOKENIZED_PROMPT)
    if isinstance(produced, TokenizedRequest):
        return produced.token_ids()
    return produced if isinstance(produced, np.ndarray) else None


# ------------------------------------------------------------------ latency prediction
LATENCY_PREDICTION_INFO: Final = "LatencyPredictionInfo"
"""Data key of the latency prediction (GIE ``LatencyPredictionInfoKey``)."""


@attrs.frozen(eq=False)
class LatencyPredictionInfo:
    """Predicted latencies and SLO headroom per endpoint (GIE ``LatencyPredictionInfo``).

    Every array is indexed by *table row* (as :class:`PrefixCacheMatchInfo`) and filled at
    the cycle's candidate rows; other rows hold NaN (False for the validity flags).

    Attributes:
        has_prediction: the model is past its warm-up; when False the prediction arrays
            are NaN, the validity flags False, and consumers fall back (``docs/slo.md``).
        ttft_ms / tpot_ms: predicted TTFT and TPOT at the model's quantile, ms.
        ttft_headroom_ms / tpot_headroom_ms: SLO minus prediction, ms (no SLO: minus
            the prediction, so that a request without SLO ranks endpoints by speed).
        ttft_valid / tpot_valid: the prediction meets the SLO (always True without SLO,
            and for TPOT outside streaming mode or on prefill endpoints).
        dispatched: requests this producer routed to the endpoint that have not ended
            (GIE ``dispatchedRequestCount``); meaningful also during warm-up.
        ttft_slo_ms / tpot_slo_ms: the request's SLOs (0 = none).
    """

    has_prediction: bool
    ttft_ms: npt.NDArray[np.float64]
    tpot_ms: npt.NDArray[np.float64]
    ttft_headroom_ms: npt.NDArray[np.float64]
    tpot_headroom_ms: npt.NDArray[np.float64]
    ttft_valid: npt.NDArray[np.bool_]
    tpot_valid: npt.NDArray[np.bool_]
    dispatched: npt.NDArray[np.float64]
    ttft_slo_ms: float = 0.0
    tpot_slo_ms: float = 0.0


def latency_info_key(producer: str) -> str:
    """``LatencyPredictionInfo/<producer>``: one producer's own prediction key."""
    return f"{LATENCY_PREDICTION_INFO}/{producer}"


def read_latency_info(cycle: CycleState, producer: str = "") -> LatencyPredictionInfo | None:
    """The cycle's prediction, or ``None`` when no producer wrote one: ``producer``'s own
    (``latencyPredictionInfoProducerName``; else the shared key, which a producer that
    writes only that one fills), or whichever producer's (``""``)."""
    info = cycle.read(latency_info_key(producer)) if producer else None
    if info is None:
        info = cycle.read(LATENCY_PREDICTION_INFO)
    return info if isinstance(info, LatencyPredictionInfo) else None


# ------------------------------------------------------------------ multimodal encoder cache
MM_ENCODER_CACHE_MATCH_INFO: Final = "MultiModalEncoderCacheMatchInfo"
"""Data key of the encoder-cache match (llm-d-router
``MultiModalEncoderCacheMatchInfoKey``), written by ``mm-embeddings-cache-producer``."""


@attrs.frozen(eq=False)
class EncoderCacheMatchInfo:
    """How many of the request's multimodal items each endpoint's encoder cache holds
    (llm-d-router ``EncoderCacheMatchInfo``).

    Attributes:
        matched: float64 by *table row*: summed size of the request's items found in
            that endpoint's cache (every item has size 1 upstream).
        request_items: summed size of the request's items (0: no multimodal input).
    """

    matched: npt.NDArray[np.float64]
    request_items: int


def read_encoder_cache_info(cycle: CycleState, producer: str = "") -> EncoderCacheMatchInfo | None:
    """The cycle's encoder-cache match (``producer``'s own key when named), or ``None``."""
    key = f"{MM_ENCODER_CACHE_MATCH_INFO}/{producer}" if producer else MM_ENCODER_CACHE_MATCH_INFO
    info = cycle.read(key)
    return info if isinstance(info, EncoderCacheMatchInfo) else None


# ------------------------------------------------------------------ endpoint attributes
# Keys of ``table.attributes`` (:mod:`inference_sched.state.attributes`) shared by a
# data-layer extractor and the plugins that read them.
MULTICLUSTER_QUEUE_SIZE: Final = "llm-d.ai/multicluster-queue-size"
"""Endpoint attribute: a peer cluster's average queue size (written by
``multicluster-metrics-extractor``, read by ``multicluster-queue-scorer``)."""

MULTICLUSTER_KV_CACHE_UTILIZATION: Final = "llm-d.ai/multicluster-kv-cache-utilization"
"""Endpoint attribute: a peer cluster's average KV-cache utilisation, 0..1."""

TOPOLOGY_DATA_TYPE: Final = "Topology"
"""Data type of the topology endpoint attribute; key ``Topology/<extractor name>``,
written by ``topology-extractor``, read by the topology-affinity plugins."""
DEFAULT_TOPOLOGY_PRODUCER: Final = "topology-extractor"
"""Producer read when a consumer's ``topologyProducerName`` is empty."""


@attrs.frozen
class Topology:
    """Where an endpoint runs (llm-d-router ``attribute/topology.Topology``); ``""`` is
    unknown."""

    hostname: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""

    def __bool__(self) -> bool:
        return bool(self.hostname or self.rack or self.zone or self.region)


# ------------------------------------------------------------------ request attributes
# llm-d-router keeps per-request data in ``InferenceRequest.PutAttribute(DataKey, value)``
# with keys printed ``"<dataType>/<producer>"``; here the cycle state is the request's
# attribute store (one ``CycleState`` per request) and the same strings are its keys.
SESSION_ID: Final = "SessionID"
"""Data key of the request's session identifier (llm-d-router ``SessionIDDataKey``,
``pkg/epp/framework/plugins/datalayer/attribute/session``). ``session-id-producer`` writes
it under this key and under :func:`session_id_key` of its own name."""

SessionID = NewType("SessionID", str)
"""The session identifier a ``session-id-producer`` extracted (llm-d-router ``SessionID``)."""


def session_id_key(producer: str) -> str:
    """The key one producer's session identifier is stored under: ``SessionID/<name>``."""
    return f"{SESSION_ID}/{producer}"


def read_session_id(cycle: CycleState, producer: str = "") -> SessionID | None:
    """The request's session identifier: the named producer's (``""``: the last one
    written by any producer), or None when no producer found one."""
    value = cycle.read(session_id_key(producer) if producer else SESSION_ID)
    return SessionID(value) if isinstance(value, str) and value else None


AGENT_IDENTITY: Final = "agent-identity"
"""Request attribute holding the calling agent's session identity, a ``str``, written by
the ``agent-identity`` plugin (llm-d-router: ``pkg/epp/framework/plugins/requesthandling/
agentidentity``); llm-d uses it as the flow-control fairness id when the request has no
fairness header."""
