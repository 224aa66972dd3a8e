"""SLO-aware plugins: GIE's latency-predictor stack (``docs/slo.md``), in process.

* ``predicted-latency-producer`` predicts each candidate's TTFT and TPOT (p90 by
  default) with the online model of :mod:`inference_sched.slo.predictor`, writes
  :class:`~inference_sched.framework.contracts.LatencyPredictionInfo` to the cycle, tracks the
  requests and uncached prompt tokens it routed, and trains on the response hooks.
* ``latency-scorer`` scores by SLO headroom (partitions, buckets, least/most), with
  GIE's composite fallback while the model warms up.
* ``slo-headroom-tier-filter`` keeps the endpoints that meet both SLOs, exploring the
  others with probability ``epsilonExploreNeg``.
* ``latency-slo-admitter`` denies a sheddable request no endpoint can serve in time.

SLOs come from the request headers ``x-slo-ttft-ms`` and ``x-slo-tpot-ms`` (float ms;
missing = 0 = no SLO; a non-number is logged and treated as no SLO). Without an SLO a
dimension is always valid and its headroom is minus the prediction, so a request with no
SLO prefers the endpoint predicted fastest. One page per type in ``docs/plugins/``; the
model in ``docs/slo.md``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import AdmissionDeniedError
from inference_sched.framework.contracts import (
    IN_FLIGHT_LOAD,
    LATENCY_PREDICTION_INFO,
    MM_ENCODER_CACHE_MATCH_INFO,
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    LatencyPredictionInfo,
    PrefixCacheMatchInfo,
    latency_info_key,
    prefix_info_key,
    read_encoder_cache_info,
    read_latency_info,
    read_tokenized,
)
from inference_sched.framework.interfaces import (
    Admitter,
    DataProducer,
    Filter,
    Handle,
    PreRequest,
    ResponseComplete,
    ResponseStreaming,
    Scorer,
)
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    HEADER_SLO_TPOT_MS,
    HEADER_SLO_TTFT_MS,
    Candidates,
    CycleState,
    Endpoint,
    Request,
    Response,
    Role,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.params import (
    NoParams,
    ParamCheck,
    at_least,
    boolean,
    in_range,
    one_of,
    param,
    parse_duration_s,
    string,
)
from inference_sched.slo.predictor import (
    NUM_FEATURES,
    LatencyPredictor,
    OnlineQuantileModel,
    feature_matrix,
)
from inference_sched.state.table import EndpointHandle, EndpointTable

__all__ = [
    "LatencyScorer",
    "LatencySloAdmitter",
    "PredictedLatencyProducer",
    "SloHeadroomTierFilter",
    "prompt_tokens",
    "slo_ms",
]

log = logging.getLogger(__name__)

_WARN_INTERVAL_S: Final = 60.0
_COLD_KV_FRAC: Final = 0.02
"""latency-slo-admitter: an endpoint below this KV usage counts as cold (GIE)."""
_RANGE_EPS: Final = 1e-9
_SWEEP_EVERY: Final = 256
_CHARS_PER_TOKEN: Final = 4.0
_NUM_ENCODER_FEATURES: Final = 2
"""``useEncoderCacheFeatures``: the request's encoder input size, the endpoint's matched size."""


# ====================================================================== helpers
def slo_ms(request: Request, header: str) -> tuple[float, bool]:
    """The SLO in ``header`` (ms) and whether the header was malformed.

    Missing or empty: the request's parsed field (``Request.create`` fills it), else 0
    (no SLO). A value that is not a finite number >= 0: 0, and ``True`` so the caller
    logs it.
    """
    raw = request.headers.get(header)
    if raw is None or raw.strip() == "":
        parsed = request.slo_ttft_ms if header == HEADER_SLO_TTFT_MS else request.slo_tpot_ms
        return (parsed or 0.0), False
    try:
        value = float(raw)
    except ValueError:
        return 0.0, True
    if not math.isfinite(value) or value < 0:
        return 0.0, True
    return value, False


def prompt_tokens(request: Request) -> float:
    """The prompt length in tokens: the token ids when known, else bytes / 4."""
    if request.token_ids is not None and len(request.token_ids) > 0:
        return float(len(request.token_ids))
    if request.prompt:
        return max(1.0, float(round(len(request.prompt) / _CHARS_PER_TOKEN)))
    if request.request_size_bytes > 0:
        return max(1.0, float(request.request_size_bytes // 4))
    return 0.0


def input_tokens(cycle: CycleState, request: Request) -> float:
    """The request's input length: the ``TokenizedRequest``'s token count (llm-d-router),
    else :func:`prompt_tokens` when no token producer wrote one."""
    tokenized = read_tokenized(cycle)
    if tokenized is not None:
        return float(tokenized.token_count())
    return prompt_tokens(request)


def _latency_references(name: str) -> dict[str, tuple[str, str]]:
    key = "latencyPredictionInfoProducerName"
    return {key: (name, LATENCY_PREDICTION_INFO)} if name else {}


def _prefix_frac(
    cycle: CycleState, candidates: Candidates, producer: str = ""
) -> npt.NDArray[np.float64]:
    info = cycle.read(prefix_info_key(producer)) if producer else None
    if info is None:
        info = cycle.read(PREFIX_CACHE_MATCH_INFO)
    if not isinstance(info, PrefixCacheMatchInfo) or info.total_blocks <= 0:
        return np.zeros(len(candidates), dtype=np.float64)
    frac: npt.NDArray[np.float64] = info.match_blocks[candidates] / float(info.total_blocks)
    return frac


def _renamed(old: str, new: str) -> Any:
    """A ``parse=`` that rejects a key llm-d-router renamed, naming the new key."""

    def parse(raw: Any) -> None:
        raise ParamCheck(old, f"no {old!r} key: it was renamed {new!r} (llm-d-router)", raw)

    return parse


def _ttl_s(raw: Any) -> float:
    if not isinstance(raw, str):
        raise ParamCheck("contextTTL", "a positive duration such as '5m'", raw)
    try:
        seconds = parse_duration_s(raw)
    except ValueError:
        raise ParamCheck("contextTTL", "a positive duration such as '5m'", raw) from None
    if seconds <= 0:
        raise ParamCheck("contextTTL", "a positive duration such as '5m'", raw)
    return seconds


# ====================================================================== producer
@attrs.frozen
class PredictedLatencyProducerParams:
    """Parameters of ``predicted-latency-producer`` (GIE's keys and defaults, then ours)."""

    sampling_mean: float = param(1000.0, alias="samplingMean", check=at_least(0, kind="number"))
    """GIE: mean of the Poisson spacing of TPOT prediction samples; accepted, unused
    (every candidate is predicted on every request)."""
    max_decode_token_samples_for_prediction: int = param(
        0, alias="maxDecodeTokenSamplesForPrediction", check=at_least(0)
    )
    """GIE: cap on TPOT prediction samples per request; accepted, unused."""
    slo_buffer_factor: float = param(1.0, alias="sloBufferFactor", check=at_least(0, kind="number"))
    """Streaming mode: the TPOT SLO is multiplied by this before the comparison."""
    context_ttl_s: float = param(300.0, alias="contextTTL", parse=_ttl_s)
    """Per-request state older than this (``"5m"``) is dropped (a lost ResponseComplete)."""
    streaming_mode: bool = param(False, alias="streamingMode", check=boolean)
    """Judge TPOT too; off: TPOT is neutral (valid, headroom 0) for every endpoint."""
    endpoint_role_label: str = param("", alias="endpointRoleLabel", check=string)
    """Pod label whose value 'prefill' marks a prefill endpoint; empty: the llm-d.ai/role
    role the table derived."""
    predict_in_produce: bool = param(True, alias="predictInProduce", check=boolean)
    """Predict every candidate (one vectorised call); false: training-only mode, the
    prediction carries no values and consumers fall back as during the warm-up."""
    predict_in_prepare_data: None = param(
        None,
        alias="predictInPrepareData",
        parse=_renamed("predictInPrepareData", "predictInProduce"),
    )
    """GIE's key, rejected: llm-d-router renamed it ``predictInProduce``."""
    prefix_match_info_producer_name: str = param(
        "", alias="prefixMatchInfoProducerName", check=string
    )
    """The prefix producer whose match gives the cached fraction ("": the cycle's shared
    PrefixCacheMatchInfo)."""
    in_flight_load_producer_name: str = param("", alias="inFlightLoadProducerName", check=string)
    """Accepted (llm-d-router) and checked to name an InFlightLoad producer: this
    producer's prefill-tokens-in-flight and dispatched counts are its own."""
    use_encoder_cache_features: bool = param(False, alias="useEncoderCacheFeatures", check=boolean)
    """Add two features, the request's multimodal items and those each endpoint's encoder
    cache holds (MultiModalEncoderCacheMatchInfo); off: the model has neither."""
    encoder_cache_match_info_producer_name: str = param(
        "", alias="encoderCacheMatchInfoProducerName", check=string
    )
    """The encoder-cache producer read with ``useEncoderCacheFeatures`` ("": the shared
    key)."""
    quantile: float = param(
        0.9, alias="quantile", check=in_range(0.0, 1.0, low_open=True, high_open=True)
    )
    """Ours: the latency quantile predicted (GIE's sidecar: 0.9)."""
    min_training_samples: int = param(32, alias="minTrainingSamples", check=at_least(2))
    """Ours: TTFT samples before predictions are used (the warm-up); TPOT likewise."""
    training_window: int = param(2000, alias="trainingWindow", check=at_least(16))
    """Ours: samples of memory of each model (older samples fade)."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, data key)."""
        refs: dict[str, tuple[str, str]] = {}
        if self.prefix_match_info_producer_name:
            refs["prefixMatchInfoProducerName"] = (
                self.prefix_match_info_producer_name,
                PREFIX_CACHE_MATCH_INFO,
            )
        if self.in_flight_load_producer_name:
            refs["inFlightLoadProducerName"] = (self.in_flight_load_producer_name, IN_FLIGHT_LOAD)
        if self.use_encoder_cache_features and self.encoder_cache_match_info_producer_name:
            refs["encoderCacheMatchInfoProducerName"] = (
                self.encoder_cache_match_info_producer_name,
                MM_ENCODER_CACHE_MATCH_INFO,
            )
        return refs

    def extra_consumes(self) -> frozenset[str]:
        """Keys these parameters make the producer consume (config loading creates their
        default producers): the encoder-cache match with ``useEncoderCacheFeatures``."""
        if self.use_encoder_cache_features:
            return frozenset({MM_ENCODER_CACHE_MATCH_INFO})
        return frozenset()


@attrs.define
class _Pending:
    """What a routed request holds until its response ends."""

    handle: EndpointHandle
    features: npt.NDArray[np.float64]
    dispatched_s: float
    uncached_tokens: float
    tpot_slo_ms: float
    first_token_s: float | None = None


@register("predicted-latency-producer", default_producer_for=(LATENCY_PREDICTION_INFO,))
class PredictedLatencyProducer:
    """Predicts TTFT/TPOT per candidate, judges them against the request's SLOs, and
    learns from every response.

    Design note: the model is one :class:`~inference_sched.slo.predictor.
    LatencyPredictor` per instance, trained on the features each request was routed with
    (the primary profile's pick) and the latencies it then saw: TTFT at the first chunk
    (at the end when no chunk came: GIE's non-streaming rule, TTFT = e2e), TPOT =
    ``(end - first) / (completion_tokens - 1)`` at the end when the usage is known.
    Requests are keyed by their scheduling result, as ``inflight-load-producer`` keys its
    holds; a row reused after a removal is left alone (generation check).
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    produces: ClassVar[frozenset[str]] = frozenset({LATENCY_PREDICTION_INFO})
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO, TOKENIZED_PROMPT})
    Params = PredictedLatencyProducerParams

    def __init__(self, name: str, params: PredictedLatencyProducerParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._table = handle.table
        self._clock = handle.clock
        self._state_key = f"predicted-latency-producer/{name}"
        self._own_key = latency_info_key(name)
        self.predictor = LatencyPredictor(
            params.quantile, params.training_window, params.min_training_samples
        )
        """The online model (inspection, tests)."""
        if params.use_encoder_cache_features:
            # Two more feature columns: the models are rebuilt with the wider rows, and
            # this instance also waits for the encoder-cache producer (the scheduler
            # orders producers by the instance's ``consumes``; the class keeps the
            # default so that configs without the feature do not create that producer).
            width = NUM_FEATURES + _NUM_ENCODER_FEATURES
            window, warmup = params.training_window, params.min_training_samples
            self.predictor.ttft = OnlineQuantileModel(params.quantile, window, warmup, width)
            self.predictor.tpot = OnlineQuantileModel(params.quantile, window, warmup, width)
            setattr(self, "consumes", self.consumes | {MM_ENCODER_CACHE_MATCH_INFO})  # noqa: B010
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[SchedulingResult, _Pending]] = {}
        size = max(self._table.capacity, 1)
        self._inflight_prefill = np.zeros(size, dtype=np.float64)
        self._dispatched = np.zeros(size, dtype=np.float64)
        self._min_tpot_slo = np.full(size, np.inf, dtype=np.float64)
        self._row_slos: dict[int, collections.Counter[float]] = {}
        self._roles: tuple[int, npt.NDArray[np.float64]] | None = None
        self._num_routed = 0
        self._last_warning_s = -math.inf
        self._table.on_remove(self._on_remove)

    # ------------------------------------------------------------------ cycle
    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Predict every candidate in one call and write ``LatencyPredictionInfo``."""
        self._ensure_capacity(table.capacity)
        ttft_slo = self._slo(request, HEADER_SLO_TTFT_MS)
        tpot_slo = self._slo(request, HEADER_SLO_TPOT_MS)
        x = feature_matrix(
            input_tokens(cycle, request),
            _prefix_frac(cycle, candidates, self.params.prefix_match_info_producer_name),
            table.waiting[candidates],
            table.running[candidates],
            table.kv_usage_frac[candidates],
            self._inflight_prefill[candidates],
            self._is_prefill(table)[candidates],
        )
        if self.params.use_encoder_cache_features:
            x = self._with_encoder_features(cycle, candidates, x)
        cycle.write(self._state_key, (candidates, x))
        size = table.capacity
        floats = np.full((4, size), np.nan)  # one allocation each: this runs per request
        flags = np.zeros((2, size), dtype=np.bool_)
        info = LatencyPredictionInfo(
            has_prediction=self.params.predict_in_produce and self.predictor.has_prediction,
            ttft_ms=floats[0],
            tpot_ms=floats[1],
            ttft_headroom_ms=floats[2],
            tpot_headroom_ms=floats[3],
            ttft_valid=flags[0],
            tpot_valid=flags[1],
            dispatched=self._dispatched[:size].copy(),
            ttft_slo_ms=ttft_slo,
            tpot_slo_ms=tpot_slo,
        )
        if info.has_prediction:
            self._judge(floats, flags, candidates, x, ttft_slo, tpot_slo, table)
        cycle.write(LATENCY_PREDICTION_INFO, info)
        cycle.write(self._own_key, info)

    def _with_encoder_features(
        self, cycle: CycleState, candidates: Candidates, x: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """``x`` plus the encoder input size and each candidate's matched size (0 for a
        text-only request or when no encoder-cache producer wrote its match)."""
        wide = np.zeros((len(candidates), x.shape[1] + _NUM_ENCODER_FEATURES))
        wide[:, : x.shape[1]] = x
        info = read_encoder_cache_info(cycle, self.params.encoder_cache_match_info_producer_name)
        if info is None and self.params.encoder_cache_match_info_producer_name:
            info = read_encoder_cache_info(cycle)
        if info is not None and info.request_items > 0:
            wide[:, -2] = float(info.request_items)
            known = candidates < len(info.matched)
            wide[known, -1] = info.matched[candidates[known]]
        return wide

    def _judge(
        self,
        floats: npt.NDArray[np.float64],
        flags: npt.NDArray[np.bool_],
        candidates: Candidates,
        x: npt.NDArray[np.float64],
        ttft_slo: float,
        tpot_slo: float,
        table: EndpointTable,
    ) -> None:
        """GIE's validity and headroom rules (``docs/slo.md``).

        ``floats`` rows: TTFT, TPOT, TTFT headroom, TPOT headroom; ``flags`` rows: TTFT
        and TPOT validity (both by table row). Computed over the candidates in one block,
        then scattered: this runs per request, and each NumPy call costs ~1 us.
        """
        ttft, tpot = self.predictor.predict(x)
        n = len(candidates)
        block = np.empty((4, n))  # ttft, tpot, ttft headroom, tpot headroom
        block[0] = ttft
        block[1] = tpot
        valid = np.ones((2, n), dtype=np.bool_)  # ttft, tpot
        if ttft_slo > 0:
            np.subtract(ttft_slo, ttft, out=block[2])
            np.greater(block[2], 0.0, out=valid[0])  # a - b > 0 exactly when b < a
        else:
            np.negative(ttft, out=block[2])
        if not self.params.streaming_mode or not self.predictor.has_tpot:
            block[3] = 0.0  # neutral: valid, headroom 0
        else:
            if tpot_slo > 0:
                buffered = np.full(n, tpot_slo * self.params.slo_buffer_factor)
                if self._row_slos:  # some endpoint runs requests with a TPOT SLO
                    pod_min = self._min_tpot_slo[candidates] * self.params.slo_buffer_factor
                    np.fmin(buffered, pod_min, out=buffered, where=np.isfinite(pod_min))
                np.subtract(buffered, tpot, out=block[3])
                np.greater(block[3], 0.0, out=valid[1])
            else:
                np.negative(tpot, out=block[3])
            prefill = self._is_prefill(table)[candidates] > 0
            if prefill.any():  # prefill endpoints: TPOT neutral
                block[3][prefill] = 0.0
                valid[1][prefill] = True
        floats[:, candidates] = block
        flags[:, candidates] = valid

    def _slo(self, request: Request, header: str) -> float:
        value, is_malformed = slo_ms(request, header)
        if is_malformed:
            now = self._clock()
            if now - self._last_warning_s >= _WARN_INTERVAL_S:
                self._last_warning_s = now
                log.warning(
                    "%s: header %s=%r is not a number of milliseconds >= 0; no SLO",
                    self.name,
                    header,
                    request.headers.get(header),
                )
        return value

    def _is_prefill(self, table: EndpointTable) -> npt.NDArray[np.float64]:
        """1.0 per row for prefill-role endpoints (cached per table version)."""
        cached = self._roles
        if cached is not None and cached[0] == table.version and len(cached[1]) >= table.capacity:
            return cached[1]
        flags = np.zeros(table.capacity, dtype=np.float64)
        label = self.params.endpoint_role_label
        if label:
            for endpoint in table:
                if endpoint.labels.get(label, "").strip().lower() == "prefill":
                    flags[table.row(endpoint.name)] = 1.0
        else:
            flags[:] = table.role[: table.capacity] == int(Role.PREFILL)
        self._roles = (table.version, flags)
        return flags

    def _ensure_capacity(self, capacity: int) -> None:
        if capacity > len(self._dispatched):  # the table grew
            with self._lock:
                self._ensure_capacity_locked(capacity)

    # ------------------------------------------------------------------ lifecycle
    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Hold the primary pick: +1 dispatched, +uncached prompt tokens in prefill."""
        state = cycle.read(self._state_key)
        run = result.profile_results.get(result.primary_profile_name)
        if state is None or run is None or not run.rows:
            return
        candidates, x = state
        row = int(run.rows[0])
        table = self._table
        if table.endpoint_or_none(row) is not run.endpoints[0]:
            return
        where = np.flatnonzero(candidates == row)
        if len(where) == 0:
            return
        features = x[int(where[0])].copy()
        uncached = float(features[1]) * 1000.0
        tpot_slo = self._slo(request, HEADER_SLO_TPOT_MS)
        now = self._clock()
        pending = _Pending(
            EndpointHandle(row, int(table.generation[row])), features, now, uncached, tpot_slo
        )
        with self._lock:
            self._ensure_capacity_locked(row + 1)
            self._dispatched[row] += 1.0
            self._inflight_prefill[row] += uncached
            if tpot_slo > 0:
                slos = self._row_slos.setdefault(row, collections.Counter())
                slos[tpot_slo] += 1
                self._min_tpot_slo[row] = min(self._min_tpot_slo[row], tpot_slo)
            self._pending[id(result)] = (result, pending)
            self._num_routed += 1
            if self._num_routed % _SWEEP_EVERY == 0:
                self._sweep(now)

    def _ensure_capacity_locked(self, capacity: int) -> None:
        n = len(self._dispatched)
        if capacity > n:
            grow = capacity - n
            self._inflight_prefill = np.concatenate([self._inflight_prefill, np.zeros(grow)])
            self._dispatched = np.concatenate([self._dispatched, np.zeros(grow)])
            self._min_tpot_slo = np.concatenate([self._min_tpot_slo, np.full(grow, np.inf)])

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """First chunk: learn TTFT and release the prefill tokens."""
        if not response.is_start_of_stream:
            return
        with self._lock:
            entry = self._pending.get(id(result))
            if entry is None or entry[0] is not result or entry[1].first_token_s is not None:
                return
            pending = entry[1]
            pending.first_token_s = response.time_s
            self._release_prefill(pending)
        if response.status_code == 200:
            ttft_ms = (response.time_s - pending.dispatched_s) * 1000.0
            self.predictor.observe_ttft(pending.features, ttft_ms)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """End: learn TTFT (if no chunk came) and TPOT, release everything."""
        with self._lock:
            entry = self._pending.pop(id(result), None)
            if entry is None or entry[0] is not result:
                return
            pending = entry[1]
            first = pending.first_token_s
            if first is None:
                self._release_prefill(pending)
            self._release_rest(pending)
        if response.status_code != 200:
            return
        if first is None:
            self.predictor.observe_ttft(
                pending.features, (response.time_s - pending.dispatched_s) * 1000.0
            )
            return
        usage = response.usage
        if usage is not None and usage.completion_tokens >= 2:
            tpot_ms = (response.time_s - first) * 1000.0 / (usage.completion_tokens - 1)
            self.predictor.observe_tpot(pending.features, tpot_ms)

    def _release_prefill(self, pending: _Pending) -> None:
        if self._table.is_current(pending.handle):
            row = pending.handle.row
            self._inflight_prefill[row] = max(
                0.0, self._inflight_prefill[row] - pending.uncached_tokens
            )

    def _release_rest(self, pending: _Pending) -> None:
        if not self._table.is_current(pending.handle):
            return
        row = pending.handle.row
        self._dispatched[row] = max(0.0, self._dispatched[row] - 1.0)
        slos = self._row_slos.get(row)
        if pending.tpot_slo_ms > 0 and slos is not None:
            slos[pending.tpot_slo_ms] -= 1
            if slos[pending.tpot_slo_ms] <= 0:
                del slos[pending.tpot_slo_ms]
            self._min_tpot_slo[row] = min(slos) if slos else np.inf

    def _sweep(self, now: float) -> None:
        """Drop requests older than ``contextTTL`` (their response never ended here)."""
        ttl = self.params.context_ttl_s
        for key, (_, pending) in list(self._pending.items()):
            if now - pending.dispatched_s > ttl:
                del self._pending[key]
                if pending.first_token_s is None:
                    self._release_prefill(pending)
                self._release_rest(pending)

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        with self._lock:
            for key, (_, pending) in list(self._pending.items()):
                if pending.handle.row == row:
                    del self._pending[key]
            if row < len(self._dispatched):
                self._dispatched[row] = 0.0
                self._inflight_prefill[row] = 0.0
                self._min_tpot_slo[row] = np.inf
            self._row_slos.pop(row, None)

    # ------------------------------------------------------------------ inspection
    def num_tracked_requests(self) -> int:
        """Requests routed and not ended (tests, metrics)."""
        return len(self._pending)

    def inflight_prefill_tokens(self, row: int) -> float:
        """Uncached prompt tokens routed to ``row`` whose first token is not back."""
        return float(self._inflight_prefill[row]) if row < len(self._inflight_prefill) else 0.0

    def dispatched(self, row: int) -> float:
        """Requests routed to ``row`` and not ended."""
        return float(self._dispatched[row]) if row < len(self._dispatched) else 0.0


_producer: type[DataProducer] = PredictedLatencyProducer
_producer_pre: type[PreRequest] = PredictedLatencyProducer
_producer_streaming: type[ResponseStreaming] = PredictedLatencyProducer
_producer_complete: type[ResponseComplete] = PredictedLatencyProducer


# ====================================================================== scorer
def bucket_scores(
    ttft_headroom: npt.NDArray[np.float64],
    tpot_headroom: npt.NDArray[np.float64],
    ttft_weight: float,
    tpot_weight: float,
    strategy: str,
) -> npt.NDArray[np.float64]:
    """GIE's bucket scoring of one partition (``docs/plugins/latency-scorer.md``).

    ``n = (|h| - min) / range`` per dimension (0.5 when the range is ~0); a dimension
    with no range gives its weight to the other; ``c = a nTTFT + b nTPOT``; least:
    ``int((1 - c) * 100) + 1``, most: ``int(c * 100) + 1``; score = that / 100, <= 1.
    """
    total = ttft_weight + tpot_weight
    alpha, beta = (ttft_weight / total, tpot_weight / total) if total > 0 else (0.5, 0.5)
    abs_t = np.abs(ttft_headroom)
    abs_p = np.abs(tpot_headroom)
    range_t = float(abs_t.max() - abs_t.min())
    range_p = float(abs_p.max() - abs_p.min())
    if range_t <= _RANGE_EPS < range_p:
        alpha, beta = 0.0, 1.0
    elif range_p <= _RANGE_EPS < range_t:
        alpha, beta = 1.0, 0.0
    n_t = (abs_t - abs_t.min()) / range_t if range_t > _RANGE_EPS else np.full(len(abs_t), 0.5)
    n_p = (abs_p - abs_p.min()) / range_p if range_p > _RANGE_EPS else np.full(len(abs_p), 0.5)
    c = alpha * n_t + beta * n_p
    raw = (1.0 - c) * 100.0 if strategy == "least" else c * 100.0
    weights = np.trunc(raw) + 1.0
    scores: npt.NDArray[np.float64] = np.minimum(weights / 100.0, 1.0)
    return scores


@register("latency-scorer")
class LatencyScorer:
    """Scores by predicted SLO headroom; composite fallback while nothing is predicted."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Balance"
    consumes: ClassVar[frozenset[str]] = frozenset({LATENCY_PREDICTION_INFO})

    @attrs.frozen
    class Params:
        """Parameters of ``latency-scorer``."""

        ttft_weight: float = param(0.8, alias="ttftWeight", check=at_least(0, kind="number"))
        """Weight of TTFT headroom in the bucket score."""
        tpot_weight: float = param(0.2, alias="tpotWeight", check=at_least(0, kind="number"))
        """Weight of TPOT headroom in the bucket score."""
        headroom_selection_strategy: str = param(
            "least", alias="headroomSelectionStrategy", check=one_of("least", "most")
        )
        """Among endpoints meeting the SLOs: 'least' headroom (pack) or 'most' (spread)."""
        composite_kv_weight: float = param(
            1.0, alias="compositeKVWeight", check=at_least(0, kind="number")
        )
        """Fallback: weight of free KV cache."""
        composite_queue_weight: float = param(
            1.0, alias="compositeQueueWeight", check=at_least(0, kind="number")
        )
        """Fallback: weight of the relative queue."""
        composite_prefix_weight: float = param(
            1.0, alias="compositePrefixWeight", check=at_least(0, kind="number")
        )
        """Fallback: weight of the prefix-cache score."""
        latency_prediction_info_producer_name: str = param(
            "", alias="latencyPredictionInfoProducerName", check=string
        )
        """The predicted-latency producer read ("": the cycle's shared prediction)."""
        prefix_match_info_producer_name: str = param(
            "", alias="prefixMatchInfoProducerName", check=string
        )
        """Fallback: the prefix producer whose match is scored ("": the shared one)."""

        def producer_references(self) -> dict[str, tuple[str, str]]:
            """Config loading checks these: parameter key → (plugin name, data key)."""
            refs = _latency_references(self.latency_prediction_info_producer_name)
            if self.prefix_match_info_producer_name:
                name = self.prefix_match_info_producer_name
                refs["prefixMatchInfoProducerName"] = (name, PREFIX_CACHE_MATCH_INFO)
            return refs

    def __init__(self, name: str, params: LatencyScorer.Params, handle: Handle) -> None:
        self.name = name
        self.params = params

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Headroom scores of one partition (others 0), or the composite fallback."""
        n = len(candidates)
        info = read_latency_info(cycle, self.params.latency_prediction_info_producer_name)
        if info is None or not info.has_prediction:
            out[:n] = self._composite(cycle, table, candidates)
            return
        p = self.params
        ttft_h = info.ttft_headroom_ms[candidates]
        tpot_h = info.tpot_headroom_ms[candidates]
        ttft_neg = ~(ttft_h >= 0)  # NaN (no prediction) counts as negative
        tpot_neg = ~(tpot_h >= 0)
        negative = ttft_neg | tpot_neg
        strategy = "least"
        if not negative.all():
            chosen = ~negative
            strategy = p.headroom_selection_strategy
        else:
            chosen = info.dispatched[candidates] == 0
            if not chosen.any():
                chosen = tpot_neg & ~ttft_neg
                if not chosen.any():
                    chosen = ttft_neg & ~tpot_neg
                if not chosen.any():
                    chosen = ttft_neg & tpot_neg
        out[:n] = 0.0
        idx = np.flatnonzero(chosen)
        h_t = np.nan_to_num(ttft_h[idx], nan=0.0)
        h_p = np.nan_to_num(tpot_h[idx], nan=0.0)
        out[idx] = bucket_scores(h_t, h_p, p.ttft_weight, p.tpot_weight, strategy)

    def _composite(
        self, cycle: CycleState, table: EndpointTable, candidates: Candidates
    ) -> npt.NDArray[np.float64]:
        """GIE's fallback: ``wkv (1 - kv) + wq relQueue + wpref prefix``, rounded to 0.01."""
        p = self.params
        total = p.composite_kv_weight + p.composite_queue_weight + p.composite_prefix_weight
        if total > 0:
            w_kv = p.composite_kv_weight / total
            w_q = p.composite_queue_weight / total
            w_pref = p.composite_prefix_weight / total
        else:
            w_kv = w_q = w_pref = 1.0 / 3.0
        queue = table.waiting[candidates]
        max_q = float(queue.max()) if len(queue) else 0.0
        rel_queue = (max_q - queue) / max_q if max_q > 0 else np.ones(len(candidates))
        composite = (
            w_kv * (1.0 - table.kv_usage_frac[candidates])
            + w_q * rel_queue
            + w_pref * _prefix_frac(cycle, candidates, p.prefix_match_info_producer_name)
        )
        rounded: npt.NDArray[np.float64] = np.floor(100.0 * composite + 0.5) / 100.0
        return rounded


_latency_scorer: type[Scorer] = LatencyScorer


# ====================================================================== tier filter
@register("slo-headroom-tier-filter")
class SloHeadroomTierFilter:
    """Keeps the endpoints meeting both SLOs (positive tier); with probability
    ``epsilonExploreNeg`` the others instead (exploration)."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    consumes: ClassVar[frozenset[str]] = frozenset({LATENCY_PREDICTION_INFO})

    @attrs.frozen
    class Params:
        """Parameters of ``slo-headroom-tier-filter``."""

        epsilon_explore_neg: float = param(
            0.01, alias="epsilonExploreNeg", check=in_range(0.0, 1.0)
        )
        """Probability of keeping the negative tier when both tiers are present."""
        latency_prediction_info_producer_name: str = param(
            "", alias="latencyPredictionInfoProducerName", check=string
        )
        """The predicted-latency producer read ("": the cycle's shared prediction)."""

        def producer_references(self) -> dict[str, tuple[str, str]]:
            """Config loading checks these: parameter key → (plugin name, data key)."""
            return _latency_references(self.latency_prediction_info_producer_name)

    def __init__(self, name: str, params: SloHeadroomTierFilter.Params, handle: Handle) -> None:
        self.name = name
        self._epsilon = float(params.epsilon_explore_neg)
        self._producer = params.latency_prediction_info_producer_name

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """One tier when both are present (positive: 1 - epsilon), else all."""
        info = read_latency_info(cycle, self._producer)
        if info is None or not info.has_prediction:
            return candidates
        positive = (info.ttft_headroom_ms[candidates] >= 0) & (
            info.tpot_headroom_ms[candidates] >= 0
        )
        num_positive = int(positive.sum())
        if num_positive == 0 or num_positive == len(candidates):
            return candidates
        if cycle.rng.random() < self._epsilon:
            return candidates[~positive]
        return candidates[positive]


_tier_filter: type[Filter] = SloHeadroomTierFilter


# ====================================================================== admitter
@register("latency-slo-admitter")
class LatencySloAdmitter:
    """Denies a sheddable request (priority < 0) with an SLO when no candidate is
    predicted to meet its SLOs, none is idle (no running requests) and none is cold
    (KV usage < 2%); everything else is admitted (llm-d-router
    ``requestcontrol/admitter/latencyslo/plugin.go``)."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    consumes: ClassVar[frozenset[str]] = frozenset({LATENCY_PREDICTION_INFO})

    @attrs.frozen
    class Params:
        """Parameters of ``latency-slo-admitter``."""

        latency_prediction_info_producer_name: str = param(
            "", alias="latencyPredictionInfoProducerName", check=string
        )
        """The predicted-latency producer read ("": the cycle's shared prediction)."""

        def producer_references(self) -> dict[str, tuple[str, str]]:
            """Config loading checks these: parameter key → (plugin name, data key)."""
            return _latency_references(self.latency_prediction_info_producer_name)

    def __init__(
        self, name: str, params: LatencySloAdmitter.Params | NoParams, handle: Handle
    ) -> None:
        self.name = name
        producer = getattr(params, "latency_prediction_info_producer_name", "")
        self._producer: str = producer if isinstance(producer, str) else ""

    def admit_request(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Return to admit; raise :class:`AdmissionDeniedError` to deny (GIE: HTTP 500)."""
        if request.priority >= 0:
            return
        if (
            slo_ms(request, HEADER_SLO_TTFT_MS)[0] <= 0
            and slo_ms(request, HEADER_SLO_TPOT_MS)[0] <= 0
        ):
            return  # no SLO: nothing to judge against
        info = read_latency_info(cycle, self._producer)
        if info is None or not info.has_prediction:
            return  # no endpoint carries a prediction: fail open
        if bool((info.ttft_valid[candidates] & info.tpot_valid[candidates]).any()):
            return
        if bool((table.running[candidates] == 0).any()):
            return
        if bool((table.kv_usage_frac[candidates] < _COLD_KV_FRAC).any()):
            return
        raise AdmissionDeniedError(
            priority=request.priority,
            admitter=self.name,
            reason="no endpoint is predicted to meet the SLOs, none is idle and none is cold",
        )


_admitter: type[Admitter] = LatencySloAdmitter
