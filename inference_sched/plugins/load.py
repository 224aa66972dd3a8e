"""Load plugins: scorers over queue, running, KV-cache and in-flight load, and the
in-flight accounting that keeps load current between metric scrapes.

GIE scorers (``queue-scorer``, ``running-requests-size-scorer``,
``kv-cache-utilization-scorer``, ``token-load-scorer``), the ``inflight-load-producer``
that GIE and llm-d auto-create for ``InFlightLoad`` consumers, and llm-d's
``active-request-scorer`` and ``load-aware-scorer``. Formulas: ``gateway-api-inference-extension``
``pkg/epp/framework/plugins/scheduling/scorer/`` and llm-d-router's
``pkg/epp/framework/plugins/register.go``; one page per type in ``docs/plugins/``.

Each scorer reads one ``EndpointTable`` column at call time (columns are reallocated when
the table grows) and makes one kernel call over the whole candidate set.

The producer's token estimate follows llm-d-router (``inflightload/producer.go``,
``token_estimator.go``): the prompt tokens of the request's ``TokenizedRequest`` that the
endpoint has not cached, plus (``addEstimatedOutputTokens``) a capped output estimate;
``token-load-scorer`` adds that estimate to the endpoint's in-flight tokens.
:func:`estimate_tokens` (GIE's byte estimate, input + 1.5x output) stays for the joint
batch path.

With a ``redis`` parameter the producer shares its counters with the pool's other
scheduler replicas (:mod:`inference_sched.state.redis`, ``docs/redis.md``).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    IN_FLIGHT_LOAD,
    PREFILL_PROFILE,
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    UNCACHED_REQUEST_TOKENS,
    InFlightLoad,
    PrefixCacheMatchInfo,
    UncachedRequestTokens,
    estimate_tokens,
    prefix_info_key,
    read_tokenized,
    read_uncached_tokens,
    uncached_input_tokens,
    uncached_tokens_key,
)
from inference_sched.framework.interfaces import (
    DataProducer,
    Handle,
    PreRequest,
    ResponseComplete,
    ResponseStreaming,
    Scorer,
)
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    Response,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.kernels import scoring
from inference_sched.params import (
    NoParams,
    ParamCheck,
    at_least,
    boolean,
    in_range,
    param,
    string,
)
from inference_sched.state.redis import RedisInflightCounters, RedisInflightParams, Unavailable
from inference_sched.state.redis.link import names_blob
from inference_sched.state.redis.params import redis_field
from inference_sched.state.table import EndpointHandle, EndpointTable

__all__ = [
    "UNCACHED_REQUEST_TOKENS",
    "ActiveRequestScorer",
    "InflightLoadProducer",
    "KvCacheUtilizationScorer",
    "LoadAwareScorer",
    "QueueScorer",
    "RunningRequestsSizeScorer",
    "TokenLoadScorer",
    "UncachedRequestTokens",
    "client_max_output_tokens",
    "estimate_output_tokens",
    "estimate_tokens",
    "read_uncached_tokens",
    "uncached_input_tokens",
    "uncached_tokens_key",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- metric scorers
class _ColumnScorer:
    """Shared body of the parameterless scorers: one kernel over one scraped column."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Distribution"
    is_batch_invariant: ClassVar[bool] = True
    """Reads scraped metrics only: a batch can score once for all its requests."""
    Params = NoParams
    _column: ClassVar[str]
    _kernel: ClassVar[staticmethod[..., None]]

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """One kernel call over the column (read at call time: the table may have grown)."""
        self._kernel(getattr(table, self._column), candidates, out)


@register("queue-scorer")
class QueueScorer(_ColumnScorer):
    """Prefers short waiting queues: ``(max - q) / (max - min)`` over the candidates
    (all equal: 1.0)."""

    _column = "waiting"
    _kernel = staticmethod(scoring.min_max_inverted)


@register("running-requests-size-scorer")
class RunningRequestsSizeScorer(_ColumnScorer):
    """Prefers few running requests: ``(max - r) / (max - min)`` (all equal: 1.0)."""

    _column = "running"
    _kernel = staticmethod(scoring.min_max_inverted)


@register("kv-cache-utilization-scorer")
class KvCacheUtilizationScorer(_ColumnScorer):
    """Prefers free KV cache: ``1 - kv_usage_frac`` (unclamped: the profile clamps)."""

    _column = "kv_usage_frac"
    _kernel = staticmethod(scoring.one_minus)


_queue_scorer: type[Scorer] = QueueScorer
_running_scorer: type[Scorer] = RunningRequestsSizeScorer
_kv_scorer: type[Scorer] = KvCacheUtilizationScorer


@register("load-aware-scorer")
class LoadAwareScorer:
    """llm-d: ``0.5`` for an empty queue, else ``0.5 * (1 - min(q, T) / T)``."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Distribution"
    is_batch_invariant: ClassVar[bool] = True
    """Reads scraped metrics only: a batch can score once for all its requests."""

    @attrs.frozen
    class Params:
        """Parameters of ``load-aware-scorer``."""

        threshold: int = param(128, alias="threshold", check=at_least(1))
        """Waiting-queue length at which the score reaches 0."""

    def __init__(self, name: str, params: LoadAwareScorer.Params, handle: Handle) -> None:
        self.name = name
        self._threshold = float(params.threshold)

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Half-range load score over ``waiting`` (llm-d reads the waiting queue)."""
        scoring.load_aware(table.waiting, candidates, self._threshold, out)


_load_aware_scorer: type[Scorer] = LoadAwareScorer


# ---------------------------------------------------------------- token estimate
_CLIENT_MAX_OUTPUT_KEYS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _round_half_away(x: float) -> int:
    """Go's ``math.Round`` for ``x >= 0`` (Python's ``round`` rounds halves to even)."""
    floor = math.floor(x)
    return int(floor + 1 if x - floor >= 0.5 else floor)


def client_max_output_tokens(request: Request) -> int | None:
    """The output cap the client asked for: the body's ``max_completion_tokens``, else
    ``max_tokens``, else ``max_output_tokens`` (Responses API), the first that is an
    integer; ``None`` when none is, or when it is negative (llm-d-router applies the
    client cap only when it is >= 0)."""
    body = request.body
    if body is None:
        return None
    for key in _CLIENT_MAX_OUTPUT_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value if value >= 0 else None
    return None


def estimate_output_tokens(
    input_tokens: int, ratio: float, client_max: int | None, operator_max: int | None
) -> int:
    """``min(round(input * ratio), client_max, operator_max)`` (caps that are ``None`` do
    not apply; Go rounding); 0 when ``input_tokens <= 0`` (llm-d-router
    ``inflightload/token_estimator.go`` ``EstimateOutput``)."""
    if input_tokens <= 0:
        return 0
    estimate = _round_half_away(input_tokens * ratio)
    if client_max is not None:
        estimate = min(estimate, client_max)
    if operator_max is not None:
        estimate = min(estimate, operator_max)
    return estimate


# ---------------------------------------------------------------- in-flight load
@attrs.frozen
class _Hold:
    """What one profile's pick added for a request: released exactly once."""

    profile: str
    handle: EndpointHandle
    tokens: float
    name: str


def _optional_count(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParamCheck(attribute.alias or attribute.name, "int >= 0", value)


@attrs.frozen
class InflightLoadProducerParams:
    """Parameters of ``inflight-load-producer`` (llm-d-router, then ours)."""

    add_estimated_output_tokens: bool = param(
        False, alias="addEstimatedOutputTokens", check=boolean
    )
    """Also count estimated output tokens; the tokens are then held until the end of the
    response (off: every profile's tokens are released at the first chunk)."""
    output_ratio: float = param(1.5, alias="outputRatio", check=at_least(0, kind="number"))
    """Estimated output tokens = round(input tokens x outputRatio), before the caps."""
    max_estimated_output_tokens: int | None = param(
        None, alias="maxEstimatedOutputTokens", check=_optional_count
    )
    """Cap on the estimated output tokens of one request (absent: no cap)."""
    prefix_match_info_producer_name: str = param(
        "", alias="prefixMatchInfoProducerName", check=string
    )
    """The prefix producer whose match discounts the cached prompt ("": the cycle's shared
    PrefixCacheMatchInfo, whichever producer wrote it)."""
    sync_cross_replica_state: bool = param(True, alias="syncCrossReplicaState", check=boolean)
    """Share the counters with the other scheduler replicas when ``redis`` is set; false:
    keep them local to this replica (``redis`` is then not used)."""
    # redis_field returns an attrs field specifier, as param() does (RUF009 cannot tell).
    redis: RedisInflightParams | None = redis_field(RedisInflightParams)  # noqa: RUF009
    """Ours: share the counters with the pool's other scheduler replicas through Redis, an
    object {address, namespace, timeoutMs, syncIntervalMs, leaseTtlMs} (docs/redis.md);
    absent: in-process."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, data key)."""
        name = self.prefix_match_info_producer_name
        return {"prefixMatchInfoProducerName": (name, PREFIX_CACHE_MATCH_INFO)} if name else {}


@register("inflight-load-producer", default_producer_for=(IN_FLIGHT_LOAD,))
class InflightLoadProducer:
    """Counts requests and estimated tokens the scheduler sent to each endpoint.

    Design note: the counters are the table's ``inflight_requests`` / ``inflight_tokens``
    columns, so scorers read them with the other metrics in one kernel call. What each
    request added is remembered as ``(profile, row, generation, tokens)``, keyed by the
    scheduling result it was taken for (not the request id, which a client controls and
    may repeat): a release subtracts exactly that, never below 0, and only while the row
    still holds the same endpoint (a row reused after a removal carries a new generation
    and is left alone). One instance per table: two would count every request twice.

    Tokens (llm-d-router ``inflightload/producer.go``): the prompt tokens the endpoint
    must compute (``TokenizedRequest.token_count()`` minus its cached prefix, see
    :func:`uncached_input_tokens`), plus the output estimate with
    ``addEstimatedOutputTokens``. Release: at the first chunk the ``prefill`` profile's
    hold goes entirely; with ``addEstimatedOutputTokens`` off every other profile's
    tokens go too (its request count stays until the end); the rest at the end.

    With ``redis`` set (and ``syncCrossReplicaState``), every change to this replica's
    share is also published to Redis
    (:class:`~inference_sched.state.redis.RedisInflightCounters`: by a background thread,
    off the decision), and PrepareRequestData overwrites the columns with the totals
    over all replicas (one round trip per decision, or per ``syncIntervalMs``, which also
    carries this replica's unpublished changes); between reads the columns move with
    this replica's own changes, as in-process. While Redis does not answer, the columns
    fall back to this replica's own share (the in-process behaviour).
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    produces: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD, UNCACHED_REQUEST_TOKENS})
    consumes: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    Params = InflightLoadProducerParams

    def __init__(
        self, name: str, params: InflightLoadProducerParams | NoParams, handle: Handle
    ) -> None:
        self.name = name
        if not isinstance(params, InflightLoadProducerParams):
            params = InflightLoadProducerParams()
        self.params = params
        self._own_key = uncached_tokens_key(name)
        prefix = params.prefix_match_info_producer_name
        self._prefix_key = prefix_info_key(prefix) if prefix else None
        self._table = handle.table
        self._lock = threading.Lock()
        # id(result) -> (result, holds); keeping the result alive keeps its id unique.
        self._held: dict[int, tuple[SchedulingResult, list[_Hold]]] = {}
        self._table.on_remove(self._on_remove)
        self.shared: RedisInflightCounters | None = None
        """The shared counters when ``redis`` is set (inspection)."""
        self._sync_interval_s = 0.0
        self._last_sync_s = -math.inf
        self._columns_shared = False  # whether the columns hold the totals over replicas
        self._names: tuple[int, npt.NDArray[np.intp], bytes] | None = None
        if params.redis is not None and params.sync_cross_replica_state:
            self._sync_interval_s = params.redis.sync_interval_ms / 1000.0
            self.shared = RedisInflightCounters.connect(params.redis)

    def close(self) -> None:
        """Withdraw this replica's share from Redis and close the connections (no-op
        in-process)."""
        if self.shared is not None:
            self.shared.close()

    # ---------------------------------------------------------------- estimate
    def _prefix_info(self, cycle: CycleState) -> PrefixCacheMatchInfo | None:
        info = None if self._prefix_key is None else cycle.read(self._prefix_key)
        if info is None:  # unnamed, or a producer that writes only the shared key
            info = cycle.read(PREFIX_CACHE_MATCH_INFO)
        return info if isinstance(info, PrefixCacheMatchInfo) else None

    def request_tokens(self, cycle: CycleState, request: Request) -> UncachedRequestTokens:
        """This request's token estimate (what :meth:`pre_request` adds per pick)."""
        tokenized = read_tokenized(cycle)
        input_tokens = tokenized.token_count() if tokenized is not None else 0
        output_tokens = 0
        if self.params.add_estimated_output_tokens:
            output_tokens = estimate_output_tokens(
                input_tokens,
                self.params.output_ratio,
                client_max_output_tokens(request),
                self.params.max_estimated_output_tokens,
            )
        return UncachedRequestTokens(
            input_tokens, output_tokens, functools.partial(self._prefix_info, cycle)
        )

    # ---------------------------------------------------------------- cycle
    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Publish the in-flight counters under ``InFlightLoad`` and this request's tokens
        per endpoint under ``UncachedRequestTokens`` (with ``redis``, first read the
        totals over replicas into the columns, when due)."""
        if self.shared is not None:
            self._sync(table)
        cycle.write(IN_FLIGHT_LOAD, InFlightLoad(table))
        estimate = self.request_tokens(cycle, request)
        cycle.write(UNCACHED_REQUEST_TOKENS, estimate)
        cycle.write(self._own_key, estimate)

    def _sync(self, table: EndpointTable) -> None:
        assert self.shared is not None
        now = time.monotonic()
        if (
            self._columns_shared
            and now - self._last_sync_s < self._sync_interval_s
            and self.shared.link.is_healthy
        ):
            return
        rows, blob = self._table_names(table)
        try:
            totals = self.shared.sync(blob)
        except Unavailable:
            self._fall_back(table)
            return
        table.inflight_requests[rows] = totals[:, 0]
        table.inflight_tokens[rows] = totals[:, 1]
        self._columns_shared = True
        self._last_sync_s = now

    def _table_names(self, table: EndpointTable) -> tuple[npt.NDArray[np.intp], bytes]:
        """Rows and names of the table's endpoints, cached per table version."""
        cached = self._names
        if cached is None or cached[0] != table.version:
            endpoints = list(table)
            kept, blob = names_blob(e.name for e in endpoints)
            rows = np.asarray([table.row(endpoints[i].name) for i in kept], dtype=np.intp)
            cached = self._names = (table.version, rows, blob)
        return cached[1], cached[2]

    def _fall_back(self, table: EndpointTable) -> None:
        """Redis is away: the columns become this replica's own share (once per outage)."""
        assert self.shared is not None
        if not self._columns_shared:
            return
        self._columns_shared = False
        with self._lock:
            for endpoint in table:
                row = table.row(endpoint.name)
                requests, tokens = self.shared.own(endpoint.name)
                table.inflight_requests[row] = requests
                table.inflight_tokens[row] = tokens

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """+1 request and + this request's tokens on that endpoint, on the pick of every
        profile that picked."""
        estimate = read_uncached_tokens(cycle, self.name) or self.request_tokens(cycle, request)
        table = self._table
        picks: list[tuple[str, int, Endpoint]] = []
        for profile, run in result.profile_results.items():
            if run is not None and len(run.rows) > 0:
                picks.append((profile, int(run.rows[0]), run.endpoints[0]))
        if not picks:
            return
        rows = np.fromiter((p[1] for p in picks), dtype=np.int32, count=len(picks))
        tokens = estimate.tokens(rows)
        holds: list[_Hold] = []
        with self._lock:
            for (profile, row, endpoint), added in zip(picks, tokens.tolist(), strict=True):
                if table.endpoint_or_none(row) is not endpoint:
                    continue  # removed (or its row reused) between the pick and now
                table.inflight_requests[row] += 1.0
                table.inflight_tokens[row] += added
                handle = EndpointHandle(row, int(table.generation[row]))
                holds.append(_Hold(profile, handle, added, endpoint.name))
            if holds:
                self._held[id(result)] = (result, holds)
        if self.shared is not None and holds:
            self.shared.change([(h.name, 1.0, h.tokens) for h in holds])

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """On the first chunk, release the ``prefill`` profile's hold (prefill is done)
        and, without ``addEstimatedOutputTokens``, every other profile's tokens."""
        if not response.is_start_of_stream:
            return
        release_tokens = not self.params.add_estimated_output_tokens
        changes: list[tuple[str, float, float]] = []
        with self._lock:
            entry = self._held.get(id(result))
            if entry is None or entry[0] is not result:
                return
            keep: list[_Hold] = []
            for hold in entry[1]:
                if hold.profile == PREFILL_PROFILE:
                    self._release(hold)
                    changes.append((hold.name, -1.0, -hold.tokens))
                elif release_tokens and hold.tokens != 0.0:
                    self._release_tokens(hold)
                    changes.append((hold.name, 0.0, -hold.tokens))
                    keep.append(attrs.evolve(hold, tokens=0.0))
                else:
                    keep.append(hold)
            self._store(result, keep)
        if self.shared is not None and changes:
            self.shared.change(changes)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Release everything the request still holds (a second call finds nothing)."""
        with self._lock:
            entry = self._held.get(id(result))
            if entry is None or entry[0] is not result:
                return
            del self._held[id(result)]
            for hold in entry[1]:
                self._release(hold)
        if self.shared is not None and entry[1]:
            self.shared.change([(h.name, -1.0, -h.tokens) for h in entry[1]])

    def num_tracked_requests(self) -> int:
        """Requests that still hold in-flight load (for tests and metrics)."""
        return len(self._held)

    def _release(self, hold: _Hold) -> None:
        table = self._table
        if not table.is_current(hold.handle):
            return
        row = hold.handle.row
        table.inflight_requests[row] = max(0.0, table.inflight_requests[row] - 1.0)
        table.inflight_tokens[row] = max(0.0, table.inflight_tokens[row] - hold.tokens)

    def _release_tokens(self, hold: _Hold) -> None:
        if self._table.is_current(hold.handle):
            row = hold.handle.row
            tokens = self._table.inflight_tokens
            tokens[row] = max(0.0, tokens[row] - hold.tokens)

    def _store(self, result: SchedulingResult, holds: list[_Hold]) -> None:
        if holds:
            self._held[id(result)] = (result, holds)
        else:
            self._held.pop(id(result), None)

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        # The table zeroes the row's counters itself; only the bookkeeping goes here.
        # Removals are rare, so a scan of the requests in flight is fine.
        with self._lock:
            for result, holds in list(self._held.values()):
                self._store(result, [h for h in holds if h.handle.row != row])
        if self.shared is not None:
            self.shared.forget(endpoint.name)


_producer: type[DataProducer] = InflightLoadProducer
_producer_pre: type[PreRequest] = InflightLoadProducer
_producer_streaming: type[ResponseStreaming] = InflightLoadProducer
_producer_complete: type[ResponseComplete] = InflightLoadProducer


@attrs.frozen
class TokenLoadScorerParams:
    """Parameters of ``token-load-scorer``."""

    queue_threshold_tokens: int = param(4_194_304, alias="queueThresholdTokens", check=at_least(1))
    """Tokens at which the score reaches 0 (default: 128 requests x 32K)."""
    in_flight_load_producer_name: str = param("", alias="inFlightLoadProducerName", check=string)
    """The ``inflight-load-producer`` whose estimate of this request is added ("": the
    cycle's shared one). The in-flight counters themselves are the table's."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key → (plugin name, data key)."""
        name = self.in_flight_load_producer_name
        return {"inFlightLoadProducerName": (name, IN_FLIGHT_LOAD)} if name else {}


@register("token-load-scorer")
class TokenLoadScorer:
    """Prefers few tokens: ``1 - min(t, T) / T`` (1 when ``t <= 0``), ``t`` = in-flight
    tokens + this request's tokens on that endpoint (llm-d-router)."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Distribution"
    consumes: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD})
    Params = TokenLoadScorerParams

    def __init__(self, name: str, params: TokenLoadScorerParams, handle: Handle) -> None:
        self.name = name
        self._threshold = float(params.queue_threshold_tokens)
        self._producer = params.in_flight_load_producer_name

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Threshold load score over in-flight tokens plus this request's tokens."""
        estimate = read_uncached_tokens(cycle, self._producer)
        if estimate is None and self._producer:
            estimate = read_uncached_tokens(cycle)
        if estimate is None:
            scoring.threshold_load(table.inflight_tokens, candidates, self._threshold, out)
            return
        load = table.inflight_tokens[candidates] + estimate.tokens(candidates)
        positions = np.arange(len(candidates), dtype=np.int32)
        scoring.threshold_load(load, positions, self._threshold, out)


_token_load_scorer: type[Scorer] = TokenLoadScorer


@register("active-request-scorer")
class ActiveRequestScorer:
    """llm-d: idle endpoints score 1, busy ones ``(max_c - c) / max_c * maxBusyScore``."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Distribution"
    consumes: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD})

    @attrs.frozen
    class Params:
        """Parameters of ``active-request-scorer``."""

        idle_threshold: int = param(0, alias="idleThreshold", check=at_least(0))
        """Endpoints with at most this many in-flight requests count as idle (score 1)."""
        max_busy_score: float = param(1.0, alias="maxBusyScore", check=in_range(0.0, 1.0))
        """Score of the least busy non-idle endpoint; the busiest scores 0."""
        request_timeout: str = param(
            "",
            alias="requestTimeout",
            check=string,
            deprecated="deprecated and ignored: inflight-load-producer tracks request "
            "lifetimes; remove the key",
        )
        """Deprecated and ignored (llm-d): in-flight tracking ends with the response."""

    def __init__(self, name: str, params: ActiveRequestScorer.Params, handle: Handle) -> None:
        self.name = name
        self._idle_threshold = float(params.idle_threshold)
        self._max_busy_score = float(params.max_busy_score)

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Active-request score over ``inflight_requests``."""
        scoring.active_request(
            table.inflight_requests, candidates, self._idle_threshold, self._max_busy_score, out
        )


_active_request_scorer: type[Scorer] = ActiveRequestScorer
