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

With a ``redis`` parameter the producer shares its counters with the pool's other
scheduler replicas (:mod:`inference_sched.state.redis`, ``docs/redis.md``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import ClassVar

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    IN_FLIGHT_LOAD,
    PREFILL_PROFILE,
    InFlightLoad,
    estimate_tokens,
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
from inference_sched.params import NoParams, at_least, in_range, param, string
from inference_sched.state.redis import RedisInflightCounters, RedisInflightParams, Unavailable
from inference_sched.state.redis.link import names_blob
from inference_sched.state.redis.params import redis_field
from inference_sched.state.table import EndpointHandle, EndpointTable

__all__ = [
    "ActiveRequestScorer",
    "InflightLoadProducer",
    "KvCacheUtilizationScorer",
    "LoadAwareScorer",
    "QueueScorer",
    "RunningRequestsSizeScorer",
    "TokenLoadScorer",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- metric scorers
class _ColumnScorer:
    """Shared body of the parameterless scorers: one kernel over one scraped column."""

    type: ClassVar[str]
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


# ---------------------------------------------------------------- in-flight load
@attrs.frozen
class _Hold:
    """What one profile's pick added for a request: released exactly once."""

    profile: str
    handle: EndpointHandle
    tokens: float
    name: str


@attrs.frozen
class InflightLoadProducerParams:
    """Parameters of ``inflight-load-producer`` (GIE has none)."""

    # redis_field returns an attrs field specifier, as param() does (RUF009 cannot tell).
    redis: RedisInflightParams | None = redis_field(RedisInflightParams)  # noqa: RUF009
    """Ours: share the counters with the pool's other scheduler replicas through Redis, an
    object {address, namespace, timeoutMs, syncIntervalMs, leaseTtlMs} (docs/redis.md);
    absent: in-process."""


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

    With ``redis`` set, every change to this replica's share is also published to Redis
    (:class:`~inference_sched.state.redis.RedisInflightCounters`: by a background thread,
    off the decision), and PrepareRequestData overwrites the columns with the totals
    over all replicas (one round trip per decision, or per ``syncIntervalMs``, which also
    carries this replica's unpublished changes); between reads the columns move with
    this replica's own changes, as in-process. While Redis does not answer, the columns
    fall back to this replica's own share (the in-process behaviour).
    """

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD})
    consumes: ClassVar[frozenset[str]] = frozenset()
    Params = InflightLoadProducerParams

    def __init__(
        self, name: str, params: InflightLoadProducerParams | NoParams, handle: Handle
    ) -> None:
        self.name = name
        self._table = handle.table
        self._lock = threading.Lock()
        # id(result) -> (result, holds); keeping the result alive keeps its id unique.
        self._held: dict[int, tuple[SchedulingResult, list[_Hold]]] = {}
        self._table.on_remove(self._on_remove)
        self.shared: RedisInflightCounters | None = None
        """The shared counters when ``redis`` is set (inspection)."""
        redis = params.redis if isinstance(params, InflightLoadProducerParams) else None
        self._sync_interval_s = 0.0
        self._last_sync_s = -math.inf
        self._columns_shared = False  # whether the columns hold the totals over replicas
        self._names: tuple[int, npt.NDArray[np.intp], bytes] | None = None
        if redis is not None:
            self._sync_interval_s = redis.sync_interval_ms / 1000.0
            self.shared = RedisInflightCounters.connect(redis)

    def close(self) -> None:
        """Withdraw this replica's share from Redis and close the connections (no-op
        in-process)."""
        if self.shared is not None:
            self.shared.close()

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Publish the in-flight counters under ``InFlightLoad`` (with ``redis``, first
        read the totals over replicas into the columns, when due)."""
        if self.shared is not None:
            self._sync(table)
        cycle.write(IN_FLIGHT_LOAD, InFlightLoad(table))

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
        """+1 request and +estimate tokens on the pick of every profile that picked."""
        tokens = float(estimate_tokens(request))
        table = self._table
        holds: list[_Hold] = []
        with self._lock:
            for profile, run in result.profile_results.items():
                if run is None or len(run.rows) == 0:
                    continue
                row = int(run.rows[0])
                endpoint = run.endpoints[0]
                if table.endpoint_or_none(row) is not endpoint:
                    continue  # removed (or its row reused) between the pick and now
                table.inflight_requests[row] += 1.0
                table.inflight_tokens[row] += tokens
                handle = EndpointHandle(row, int(table.generation[row]))
                holds.append(_Hold(profile, handle, tokens, endpoint.name))
            if holds:
                self._held[id(result)] = (result, holds)
        if self.shared is not None and holds:
            self.shared.change([(h.name, 1.0, h.tokens) for h in holds])

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """On the first chunk, release the ``prefill`` profile's share (prefill is done)."""
        if not response.is_start_of_stream:
            return
        with self._lock:
            entry = self._held.get(id(result))
            if entry is None or entry[0] is not result:
                return
            holds = entry[1]
            keep = [h for h in holds if h.profile != PREFILL_PROFILE]
            released = [h for h in holds if h.profile == PREFILL_PROFILE]
            for hold in released:
                self._release(hold)
            self._store(result, keep)
        self._publish_release(released)

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
        self._publish_release(entry[1])

    def _publish_release(self, holds: list[_Hold]) -> None:
        if self.shared is not None and holds:
            self.shared.change([(h.name, -1.0, -h.tokens) for h in holds])

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


@register("token-load-scorer")
class TokenLoadScorer:
    """Prefers few in-flight tokens: ``1 - min(t, T) / T``, 1 when ``t <= 0``."""

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Distribution"
    consumes: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD})

    @attrs.frozen
    class Params:
        """Parameters of ``token-load-scorer``."""

        queue_threshold_tokens: int = param(
            4_194_304, alias="queueThresholdTokens", check=at_least(1)
        )
        """In-flight tokens at which the score reaches 0 (default: 128 requests x 32K)."""

    def __init__(self, name: str, params: TokenLoadScorer.Params, handle: Handle) -> None:
        self.name = name
        self._threshold = float(params.queue_threshold_tokens)

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Threshold load score over ``inflight_tokens``."""
        scoring.threshold_load(table.inflight_tokens, candidates, self._threshold, out)


_token_load_scorer: type[Scorer] = TokenLoadScorer


@register("active-request-scorer")
class ActiveRequestScorer:
    """llm-d: idle endpoints score 1, busy ones ``(max_c - c) / max_c * maxBusyScore``."""

    type: ClassVar[str]
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
