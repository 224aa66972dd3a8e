"""``precise-prefix-cache-producer``: prefix matches from what the engines report caching.

llm-d's precise prefix routing (``llm-d-kv-cache``: ``pkg/kvcache/``,
``docs/precise-index.md``): every vLLM server publishes its KV-cache events (BlockStored /
BlockRemoved / AllBlocksCleared) over ZMQ; the scheduler keeps a
:class:`~inference_sched.prefix.precise.index.PreciseIndex` of them and matches each
request's token blocks against it. The match goes to the cycle as GIE's
``PrefixCacheMatchInfo`` (weighted matched blocks by row, the request's block count), so the
ordinary ``prefix-cache-scorer`` scores ``matched / total``: absolute, never min-max (llm-d
since PR #1107).

Where events come from:

* **ZMQ** (the default): ``kvEventsConfig.zmqEndpoint`` set → one SUB socket bound there
  (engines connect; the endpoint is the topic's ``kv@<ip:port>@<model>``); else, with
  ``discoverPods`` (default), one connection to ``tcp://<ip>:<socketPort>`` per endpoint
  of the table, kept in step with the table. The subscriber
  (:class:`~inference_sched.prefix.precise.subscriber.KVEventSubscriber`, ``[kvevents]``
  extra) runs in its own thread, started by the first scheduling cycle; it detects
  sequence gaps, duplicates and restarts, and asks for an endpoint's entries to be
  dropped when it cannot replay what it missed.
* **in process**: an embedder (the simulator) calls :meth:`events_in_process` once and
  then :meth:`kv_event` with each event.

Queue and writers: events and invalidations are queued per endpoint and applied in
order per endpoint, under one lock, so the index is never written while a decision reads
it. They are applied off the decision path, in chunks of at most ``maxEventsPerApply``:
by the thread that delivers them (the subscriber's, or the embedder's for
:meth:`kv_event`) once a few hundred are waiting and the index is free, and by
:meth:`run_deferred`; a decision applies at most one chunk before its match, so it never
waits for more than about two chunks whatever piled up. The queue is bounded
(``maxQueuedEventsPerEndpoint``, ``maxQueuedEvents``): on overflow the endpoint's waiting
events are dropped and the endpoint is invalidated (its entries cleared before its next
events apply), since the dropped ones may have held a BlockRemoved.

One bad event is rejected alone (``events_rejected``): a BlockStored the index cannot
take only leaves its blocks out; a BlockRemoved it cannot take clears the endpoint's
entries (they may now be phantoms). The other events of the chunk, of every endpoint,
apply as if it had not been there.

``precise-prefix-cache-scorer`` (deprecated, llm-d-router) is this producer and a
``prefix-cache-scorer`` in one plugin, or only the scorer of the one declared producer
(:class:`PrecisePrefixCacheScorer`).

Token ids: the match needs the prompt's token ids: ``Request.token_ids`` (the gateway's),
the body's ``prompt_token_ids``, or ``TokenizedPrompt`` from a ``token-producer`` (the
default one estimates: ids that never match engine blocks; with only those and
``indexerConfig.tokenizersPoolConfig.vllm``, that server renders the request). None: 0.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from inference_sched.errors import DataError, SchedulingError
from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    PrefixCacheMatchInfo,
    cache_salt,
    first_picks,
    prefix_info_key,
    read_tokenized,
    request_token_ids,
)
from inference_sched.framework.interfaces import DataProducer, Handle, Scorer
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.kernels import scoring
from inference_sched.prefix.precise.index import (
    EventBatchBuilder,
    PreciseIndex,
    split_vllm_extra_keys,
)
from inference_sched.prefix.precise.params import (
    PrecisePrefixParams,
    unsupported_settings,
)
from inference_sched.state.table import EndpointTable
from inference_sched.tokenize.render import RenderError, client_for

__all__ = [
    "PRECISE_PRODUCER_TYPE",
    "PRECISE_SCORER_TYPE",
    "PrecisePrefixCacheProducer",
    "PrecisePrefixCacheScorer",
    "PrecisePrefixParams",
]

log = logging.getLogger(__name__)

PRECISE_PRODUCER_TYPE: Final = "precise-prefix-cache-producer"
_NO_KEYS: Final = np.empty(0, dtype=np.uint64)
_APPLY_AT: Final = 256
"""Queued events at which the delivering thread applies a chunk (if the index is free):
batching amortises the per-chunk cost, decisions apply what is left below it."""
_MAX_BLOCK_SIZE: Final = 2**31 - 1
_KINDS: Final = ("BlockStored", "BlockRemoved", "AllBlocksCleared")


# ====================================================================== plugin
class _Match(NamedTuple):
    keys: npt.NDArray[np.uint64]
    info: PrefixCacheMatchInfo


class _Queued(NamedTuple):
    pod: str
    model: str
    event: object  # an event object, or None: drop the endpoint's entries (reason below)
    reason: str


class _PodQueue:
    """One endpoint's waiting events; ``reset``: clear its entries before them (why)."""

    __slots__ = ("events", "reset")

    def __init__(self) -> None:
        self.events: collections.deque[_Queued] = collections.deque()
        self.reset: str | None = None


class _Rejected(Exception):
    """An event the index cannot take (the message says why)."""


@register(PRECISE_PRODUCER_TYPE)
class PrecisePrefixCacheProducer:
    """Precise prefix cache: the engines' own KV events, matched on token blocks."""

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})
    consumes: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    """Optional: the ids of a ``token-producer`` when the request has none of its own."""
    wants_token_ids: ClassVar[bool] = True
    """The match reads ``Request.token_ids`` (simulators and gateways: supply them)."""
    Params = PrecisePrefixParams

    def __init__(self, name: str, params: PrecisePrefixParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        for message in unsupported_settings(params):
            log.warning("plugin %r: %s", name, message)
        self._table = handle.table
        self._clock = handle.clock
        self._state_key = f"{PRECISE_PRODUCER_TYPE}/{name}"
        self._info_key = prefix_info_key(name)
        self.index = PreciseIndex(
            block_size_tokens=params.block_size_tokens,
            capacity=params.indexer_config.kv_block_index_config.capacity,
            medium_weights=dict(params.indexer_config.kv_cache_backend_configs),
            speculative_ttl_s=params.speculative_ttl_s,
        )
        self._seed = params.token_processor_config.hash_seed
        pool = params.indexer_config.tokenizers_pool_config
        self._render = None if pool is None else client_for(pool.vllm, pool.model_name)
        # Waiting events by endpoint (pod), oldest endpoint first; guarded by _qlock,
        # taken briefly by every producer and applier. _queued counts the events.
        self._pending: dict[str, _PodQueue] = {}
        self._queued = 0
        self._resets: dict[str, None] = {}  # pods whose queue has a reset (ordered set)
        self._qlock = threading.Lock()
        self._speculative: list[tuple[int, Endpoint, npt.NDArray[np.uint64], float]] = []
        # Serialises the appliers (scheduler, run_deferred, receiving thread, removals)
        # and the index's readers. Lock order: table.lock, then _lock, then _qlock.
        self._lock = threading.Lock()
        self._pods: dict[str, int] = {}
        self._pods_version = -1
        self._followed_version = -1
        self._capacity: dict[int, int] = {}
        self._warned: dict[str, float] = {}
        self._in_process = False
        self._subscriber: Any = None
        self._subscribed: dict[str, str] = {}
        self._start_failed = False
        self.stats: collections.Counter[str] = collections.Counter()
        """Events applied by kind, events rejected, for unknown endpoints, dropped by a
        queue overflow (and the overflows), invalidations, requests without token ids,
        index statuses (unknown parents, ...). Written under ``_qlock``."""
        self._table.on_remove(self._on_remove)

    # ------------------------------------------------------------------ events in
    def events_in_process(self) -> None:
        """The embedder delivers every event through :meth:`kv_event`: open no socket."""
        self._in_process = True

    def kv_event(self, pod: str, event: object, model: str = "") -> None:
        """Queue one engine event of endpoint ``pod`` (its ``ip:port``, or its name).

        ``event`` is a ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` in
        vLLM's shape (the wire decoder's or the simulator's); ``model`` is the served
        model (the chain root of blocks without a LoRA name). Thread-safe; once a few
        hundred events wait, the calling thread applies a chunk (if the index is free).
        """
        self._enqueue(pod, model, (event,))

    def invalidate(self, pod: str, reason: str) -> None:
        """Drop everything known of ``pod`` (lost events); thread-safe, applied later,
        before the endpoint's next events (the ones waiting are dropped: superseded)."""
        if self._unknown_pod(pod, count=False):
            return
        with self._qlock:
            queue = self._pod_queue(pod)
            self._drop(queue, "events_superseded")
            self._set_reset(pod, queue, reason)
            self.stats["invalidated"] += 1
        self._apply_if_free()

    def pending_events(self) -> int:
        """Events waiting to be applied (all endpoints)."""
        return self._queued

    def _on_batch(self, endpoint: str, model: str, seq: int, batch: Any) -> None:
        self._enqueue(endpoint, model, batch.events)

    def _unknown_pod(self, pod: str, *, count: bool = True) -> bool:
        """``pod`` is known to name no endpoint of the table (the pod map is current);
        counted as an event for an unknown endpoint. A stale map says False: the applier
        decides. Keeps a flood of unknown topics out of the queue."""
        version, pods = self._pods_version, self._pods  # version first: written last
        if pod in pods or version != self._table.version:
            return False
        if count:
            with self._qlock:
                self.stats["events_unknown_endpoint"] += 1
        return True

    def _pod_queue(self, pod: str) -> _PodQueue:
        queue = self._pending.get(pod)
        if queue is None:
            queue = self._pending[pod] = _PodQueue()
        return queue

    def _set_reset(self, pod: str, queue: _PodQueue, reason: str) -> None:
        queue.reset = reason
        self._resets[pod] = None

    def _drop(self, queue: _PodQueue, counter: str) -> int:
        """Drop the endpoint's waiting events (the caller sets its reset); holds _qlock."""
        dropped = len(queue.events)
        if dropped:
            queue.events.clear()
            self._queued -= dropped
            self.stats[counter] += dropped
        return dropped

    def _overflow(self, pod: str, queue: _PodQueue, bound: str) -> None:
        dropped = self._drop(queue, "events_dropped")
        reason = f"event queue overflow ({bound}): dropped {dropped} events"
        self._set_reset(pod, queue, reason)
        self.stats["queue_overflows"] += 1
        self.stats["invalidated"] += 1
        self._warn("overflow", "precise prefix index: invalidating %s: %s", pod, reason)

    def _warn(self, key: str, message: str, *args: object) -> None:
        """Log at most once a minute per kind of problem (the stats count them all)."""
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= 60.0:
            self._warned[key] = now
            log.warning(message + " (logged at most once a minute; see stats)", *args)

    def _enqueue(self, pod: str, model: str, events: Iterable[object]) -> None:
        if self._unknown_pod(pod):
            return
        params = self.params
        per_pod, total = params.max_queued_events_per_endpoint, params.max_queued_events
        with self._qlock:
            queue = self._pod_queue(pod)
            waiting = queue.events
            for event in events:
                if len(waiting) >= per_pod:
                    self._overflow(pod, queue, f"maxQueuedEventsPerEndpoint={per_pod}")
                if self._queued >= total:
                    largest = max(self._pending, key=lambda p: len(self._pending[p].events))
                    bound = f"maxQueuedEvents={total}"
                    self._overflow(largest, self._pending[largest], bound)
                waiting.append(_Queued(pod, model, event, ""))
                self._queued += 1
        if self._resets or self._queued >= min(_APPLY_AT, params.max_events_per_apply):
            self._apply_if_free()

    # ------------------------------------------------------------------ applying
    def _apply_if_free(self) -> None:
        """Apply one chunk on this (receiving) thread, unless the table or the index is
        busy: then a decision or a deferred run will (nothing here ever waits)."""
        table_lock = self._table.lock
        if not table_lock.acquire(blocking=False):
            return
        try:
            if not self._lock.acquire(blocking=False):
                return
            try:
                self._apply_events(self.params.max_events_per_apply)
            finally:
                self._lock.release()
        finally:
            table_lock.release()

    def _row_of(self, pod: str) -> int | None:
        table = self._table
        if self._pods_version != table.version:
            version = table.version
            pods: dict[str, int] = {}
            for endpoint in table:
                row = table.row(endpoint.name)
                pods[endpoint.hostport] = row
                pods[endpoint.name] = row
            self._pods, self._pods_version = pods, version
        return self._pods.get(pod)

    def _apply_queue(self, limit: int) -> int:
        """Apply at most ``limit`` queued events (per endpoint in order), then queued
        speculative inserts (the caller holds the lock). Returns the events taken."""
        taken = self._apply_events(limit)
        if self._speculative:
            pending, self._speculative = self._speculative, []
            table = self._table
            for row, endpoint, keys, now in pending:
                if table.endpoint_or_none(row) is endpoint:  # not removed since the pick
                    self.index.add_speculative(row, keys, now)
        return taken

    def _take(self, limit: int) -> list[_Queued]:
        """Up to ``limit`` queued items: the endpoints' resets first (they only need to
        come before the same endpoint's events, and until applied the endpoint may have
        phantom entries), then events, endpoint after endpoint; an endpoint with some
        left goes to the back."""
        items: list[_Queued] = []
        with self._qlock:
            pending, resets = self._pending, self._resets
            while resets and len(items) < limit:
                pod = next(iter(resets))
                del resets[pod]
                queue = pending.get(pod)
                if queue is not None and queue.reset is not None:
                    items.append(_Queued(pod, "", None, queue.reset))
                    queue.reset = None
                    if not queue.events:
                        del pending[pod]
            while pending and len(items) < limit:
                pod = next(iter(pending))
                queue = pending.pop(pod)
                if queue.reset is not None:  # only when the limit cut the resets short
                    items.append(_Queued(pod, "", None, queue.reset))
                    queue.reset = None
                    resets.pop(pod, None)
                waiting = queue.events
                n = min(len(waiting), limit - len(items))
                items.extend(waiting.popleft() for _ in range(n))
                self._queued -= n
                if waiting or queue.reset is not None:
                    pending[pod] = queue
        return items

    def _apply_events(self, limit: int) -> int:
        """Apply at most ``limit`` queued events in one index call; an event the index
        cannot take is rejected alone (the caller holds the lock). Returns the taken."""
        items = self._take(limit)
        if not items:
            return 0
        counts: collections.Counter[str] = collections.Counter()
        steps: list[tuple[str, int, Callable[[EventBatchBuilder], None]]] = []
        builder = EventBatchBuilder(self.index)
        for item in items:
            row = self._row_of(item.pod)
            if row is None:
                counts["events_unknown_endpoint"] += 1
                continue
            kind = "reset" if item.event is None else type(item.event).__name__
            try:
                add = self._step(row, item)
            except Exception as exc:  # noqa: BLE001 - _Rejected, or a malformed object
                why = str(exc) if isinstance(exc, _Rejected) else f"{type(exc).__name__}: {exc}"
                self._reject(item.pod, kind, row, why, counts, steps, builder)
                continue
            if add is None:
                counts["events_unknown_kind"] += 1
                continue
            try:
                add(builder)
            except Exception as exc:  # noqa: BLE001 - any reason is the event's alone
                builder = self._rebuilt(steps)  # in case it stopped half way
                why = f"{type(exc).__name__}: {exc}"
                self._reject(item.pod, kind, row, why, counts, steps, builder)
                continue
            steps.append((kind, row, add))
        if steps:
            self._apply_steps(steps, builder, counts)
        with self._qlock:
            self.stats.update(counts)
        return len(items)

    def _step(self, row: int, item: _Queued) -> Callable[[EventBatchBuilder], None] | None:
        """How to add the event to a builder (None: an unknown kind); raises _Rejected
        for what the index could not take."""
        event: Any = item.event
        if event is None:
            pod, reason = item.pod, item.reason

            def clear(builder: EventBatchBuilder) -> None:
                builder.cleared(row)
                log.info("precise prefix index: dropped %s's entries (%s)", pod, reason)

            return clear
        kind = type(event).__name__
        if kind == "BlockStored":
            try:
                block_size = int(event.block_size)
            except (TypeError, ValueError, OverflowError) as exc:
                raise _Rejected(f"block_size: {exc}") from None
            if not 0 <= block_size <= _MAX_BLOCK_SIZE:
                raise _Rejected(f"block_size: expected an int in [0, 2**31), got {block_size}")
            lora = getattr(event, "lora_name", None)
            root = self._seed + (lora or item.model)
            medium = getattr(event, "medium", None)
            extra = getattr(event, "extra_keys", None)

            def stored(builder: EventBatchBuilder) -> None:
                # vLLM's per-block extra keys carry the LoRA name and block 0's cache
                # salt: both are the chain's root here; what is left is content (MM).
                content, salt = split_vllm_extra_keys(extra, lora) if extra else (None, "")
                builder.stored(
                    row,
                    event.block_hashes,
                    event.parent_block_hash,
                    event.token_ids,
                    block_size,
                    root_name=root,
                    medium=medium,
                    extra_keys=content,
                    cache_salt=salt,
                )
                self._tune(row, block_size)  # idempotent: a rebuilt chunk may call it again

            return stored
        if kind == "BlockRemoved":
            medium = getattr(event, "medium", None)

            def removed(builder: EventBatchBuilder) -> None:
                builder.removed(row, event.block_hashes, medium)

            return removed
        if kind == "AllBlocksCleared":

            def cleared(builder: EventBatchBuilder) -> None:
                builder.cleared(row)

            return cleared
        return None

    def _rebuilt(
        self, steps: list[tuple[str, int, Callable[[EventBatchBuilder], None]]]
    ) -> EventBatchBuilder:
        builder = EventBatchBuilder(self.index)
        for _, _, add in steps:
            add(builder)
        return builder

    def _reject(
        self,
        pod: str,
        kind: str,
        row: int,
        why: str,
        counts: collections.Counter[str],
        steps: list[tuple[str, int, Callable[[EventBatchBuilder], None]]],
        builder: EventBatchBuilder,
    ) -> None:
        """Count a rejected event. A BlockStored left out only misses entries; anything
        else (a removal) may leave phantom entries: clear the endpoint's, in order (a
        clear added to ``builder`` and ``steps``)."""
        counts["events_rejected"] += 1
        if kind == "BlockStored":
            self._warn("rejected", "precise prefix index: rejected a %s of %s: %s", kind, pod, why)
            return
        reason = f"rejected a {kind}: {why}"
        self._warn("rejected", "precise prefix index: invalidating %s: %s", pod, reason)
        counts["invalidated"] += 1
        add = self._step(row, _Queued(pod, "", None, reason))
        assert add is not None
        add(builder)
        steps.append(("reset", row, add))

    def _apply_steps(
        self,
        steps: list[tuple[str, int, Callable[[EventBatchBuilder], None]]],
        builder: EventBatchBuilder,
        counts: collections.Counter[str],
    ) -> None:
        """Apply the chunk in one call; if that fails, event by event, so that whatever
        failed is rejected alone."""
        try:
            results = self.index.apply_events(builder.build())
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            self._warn("chunk", "precise prefix index: a chunk failed (%r); one by one", exc)
            for kind, row, add in steps:
                one = EventBatchBuilder(self.index)
                try:
                    add(one)
                    result = int(self.index.apply_events(one.build())[0])
                except Exception as exc_one:  # noqa: BLE001
                    reset = EventBatchBuilder(self.index)
                    self._reject(f"row {row}", kind, row, repr(exc_one), counts, [], reset)
                    if len(reset):
                        self.index.apply_events(reset.build())
                    continue
                self._count(kind, result, counts)
            return
        for (kind, _, _), result in zip(steps, results.tolist(), strict=True):
            self._count(kind, result, counts)

    @staticmethod
    def _count(kind: str, result: int, counts: collections.Counter[str]) -> None:
        if kind == "reset":
            return  # counted when requested
        counts[kind] += 1
        if result < 0:
            counts[f"{kind}_status_{result}"] += 1

    def _tune(self, row: int, engine_block_size: int) -> None:
        """GPU tier capacity = the endpoint's cache size in index blocks, when scraped
        (num_gpu_blocks x the scraped block size, else the event's)."""
        table = self._table
        blocks = float(table.kv_blocks_total[row])
        block_tokens = float(table.block_size_tokens[row]) or engine_block_size
        if blocks < 1 or block_tokens < 1:
            return
        capacity = int(blocks * block_tokens // self.index.block_size_tokens)
        if capacity >= 1 and self._capacity.get(row) != capacity:
            self.index.set_capacity(row, "gpu", min(capacity, 2**31 - 1))
            self._capacity[row] = capacity

    def run_deferred(self) -> None:
        """Apply a chunk of queued events (``maxEventsPerApply``) and the speculative
        inserts, expire old speculative entries (between decisions)."""
        if self._pending or self._speculative or self.params.speculative_indexing:
            with self._lock:
                self._apply_queue(self.params.max_events_per_apply)
                if self.params.speculative_indexing:
                    self.index.expire(self._clock())

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        with self._lock:
            # Its waiting events would only be cleared with the row: drop them.
            with self._qlock:
                for pod in {endpoint.hostport, endpoint.name}:
                    queue = self._pending.pop(pod, None)
                    self._resets.pop(pod, None)
                    if queue is not None:
                        self._drop(queue, "events_of_removed_endpoints")
            self.index.clear_endpoint(row)
            self._capacity.pop(row, None)
            self._pods_version = -1

    # ------------------------------------------------------------------ cycle
    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Match the request's token blocks; write ``PrefixCacheMatchInfo``."""
        if not self._in_process and self._subscriber is None and not self._start_failed:
            self.start()
        elif self._subscriber is not None and self._followed_version != table.version:
            self._follow_table()
        block_tokens = self.index.block_size_tokens
        counts = np.zeros(max(table.capacity, 1))
        tokens = self._token_ids(request, cycle)
        keys = _NO_KEYS
        total = 0
        with self._lock:
            self._apply_queue(self.params.max_events_per_apply)  # at most one chunk
            if tokens is not None and len(tokens) >= block_tokens:
                cap = self.params.max_prefix_blocks_to_match
                limit = cap if cap > 0 else None
                keys = self.index.match_tokens(
                    tokens,
                    self._seed + request.target_model,
                    cache_salt(request),
                    counts,
                    limit,
                    # without speculation, stop hashing once the match is decided;
                    # the joint batch path asks for the rest (rehash) when it needs it
                    all_keys=self.params.speculative_indexing,
                )
                total = self.index.num_request_keys(len(tokens), limit)
        if tokens is None:
            with self._qlock:
                self.stats["requests_without_token_ids"] += 1
        rehash = None
        if tokens is not None and len(keys) < total:
            index, root, salt = self.index, self._seed + request.target_model, cache_salt(request)
            rehash = functools.partial(index.request_keys, tokens, root, salt, limit)
        info = PrefixCacheMatchInfo(counts, total, block_tokens, keys, rehash)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
        cycle.write(self._info_key, info)
        if self.params.speculative_indexing and len(keys):
            cycle.write(self._state_key, _Match(keys, info))

    def _token_ids(self, request: Request, cycle: CycleState) -> npt.NDArray[np.uint32] | None:
        """The request's ids; rendered by ``tokenizersPoolConfig.vllm`` when all there is
        are estimated ids (a failed render falls back to them, counted)."""
        produced, body = read_tokenized(cycle), request.body or {}
        skip = self._render is None or not body or request.token_ids is not None
        if skip or "prompt_token_ids" in body or not getattr(produced, "estimated", True):
            return request_token_ids(request, cycle)
        try:
            rendered = self._render.render(body, request.headers)  # type: ignore[union-attr]
        except (RenderError, DataError) as exc:
            with self._qlock:
                self.stats["render_failures"] += 1
            self._warn("render", "precise prefix: render failed (%s); using estimated ids", exc)
            return request_token_ids(request, cycle)
        return np.concatenate(rendered.prompts) if rendered.prompts else None

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Speculative indexing: queue the request's blocks for the pick(s), inserted by
        :meth:`run_deferred` or before the next match (an insert of 512 keys costs
        ~0.1 ms: kept off the answer's path, as the approximate producer's update)."""
        state = cycle.read(self._state_key)
        if not isinstance(state, _Match):
            return
        cycle.delete(self._state_key)
        now = self._clock()  # the clock expire() reads
        for row, endpoint in first_picks(result):
            self._speculative.append((row, endpoint, state.keys, now))

    # ------------------------------------------------------------------ sockets
    def start(self) -> bool:
        """Open the event subscriber as configured (done by the first cycle); False when
        it cannot run (no ``[kvevents]`` extra, nothing to subscribe to)."""
        config = self.params.kv_events_config
        if self._subscriber is not None:
            return True
        if not config.zmq_endpoint and not config.discover_pods:
            self._start_failed = True
            log.warning("%s: kvEventsConfig names no event source; no events", self.name)
            return False
        try:
            from inference_sched.prefix.precise.subscriber import KVEventSubscriber
        except ImportError as exc:
            self._start_failed = True
            log.error(
                "%s: KV events need the [kvevents] extra (pip install "
                "'inference-sched[kvevents]'): %s; scoring without prefix information",
                self.name,
                exc,
            )
            return False
        self._subscriber = KVEventSubscriber(
            self._on_batch,
            self.invalidate,
            bind=config.zmq_endpoint or None,
            topic_filter=config.topic_filter,
        )
        try:
            self._subscriber.start()
        except BaseException:
            self.close()  # its bind socket and private context
            raise
        self._follow_table()
        return True

    def _follow_table(self) -> None:
        """Dial mode: one connection per endpoint of the table, as it changes. Bind
        mode: the table's endpoints are the subscriber's known ones (their sequence
        state is kept; other topics share a small LRU)."""
        config = self.params.kv_events_config
        if self._subscriber is None:
            return
        table = self._table
        self._followed_version = table.version
        if config.zmq_endpoint:
            self._subscriber.set_known_endpoints(e.hostport for e in table)
            self._row_of("")  # refresh the pod -> row map at the same version
            return
        wanted: dict[str, str] = {}
        for endpoint in table:
            host = endpoint.address if ":" not in endpoint.address else f"[{endpoint.address}]"
            wanted[endpoint.hostport] = host
        port = config.pod_discovery_config.socket_port
        replay = config.pod_discovery_config.replay_port
        for pod in [p for p in self._subscribed if p not in wanted]:
            self._subscriber.remove_endpoint(pod)
            del self._subscribed[pod]
        for pod, host in wanted.items():
            if pod not in self._subscribed:
                self._subscriber.add_endpoint(
                    pod,
                    f"tcp://{host}:{port}",
                    replay_address=f"tcp://{host}:{replay}" if replay else None,
                )
                self._subscribed[pod] = host
        self._row_of("")  # refresh the pod -> row map at the same version

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the subscriber thread (if any), which closes its sockets and terminates its
        context; idempotent. A later cycle opens a new subscriber."""
        subscriber, self._subscriber = self._subscriber, None
        self._subscribed.clear()
        if subscriber is not None:
            subscriber.stop(timeout_s)

    # ------------------------------------------------------------------ metrics
    def index_size(self) -> int:
        """Entries in the index (every tier), the events queued when called applied
        first, chunk by chunk (the index is free for decisions between chunks)."""
        budget = self.params.max_events_per_apply
        remaining = self._queued + len(self._pending)  # events and resets, at most
        while remaining > 0:
            with self._table.lock, self._lock:
                taken = self._apply_queue(budget)
            if not taken:
                break
            remaining -= taken
        with self._table.lock, self._lock:
            self._apply_queue(0)  # the speculative inserts
            return self.index.size()


# ====================================================================== legacy bundle
PRECISE_SCORER_TYPE: Final = "precise-prefix-cache-scorer"


@register(PRECISE_SCORER_TYPE)
class PrecisePrefixCacheScorer(PrecisePrefixCacheProducer):
    """llm-d-router's deprecated ``precise-prefix-cache-scorer``: a precise producer and a
    ``prefix-cache-scorer`` bound to it, in one plugin (same parameters as
    ``precise-prefix-cache-producer``).

    * No ``precise-prefix-cache-producer`` in the config: this plugin is that producer
      (named after the scorer: its match is ``PrefixCacheMatchInfo/<name>``) and scores
      ``matched / total`` from its own match.
    * Exactly one: a plain ``prefix-cache-scorer`` reading that producer's match; this
      plugin's own index, events and parameters are unused.
    * More than one: an error (startup, when they are declared before this plugin; the
      first cycle otherwise).
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    category: ClassVar[ScorerCategory] = "Affinity"

    def __init__(self, name: str, params: PrecisePrefixParams, handle: Handle) -> None:
        log.warning(
            "plugin %r: type %r is deprecated; declare a %r and a 'prefix-cache-scorer' "
            "with prefixMatchInfoProducerName",
            name,
            PRECISE_SCORER_TYPE,
            PRECISE_PRODUCER_TYPE,
        )
        super().__init__(name, params, handle)
        self._handle = handle
        self._resolved = False
        self._delegate: PrecisePrefixCacheProducer | None = None
        self._score_key = prefix_info_key(name)
        self._last_warning_s = -math.inf
        found = self._declared_producers(at_startup=True)
        if found:  # declared before this plugin: decided now
            self._bind(found[0])

    # ------------------------------------------------------------------ binding
    def _declared_producers(self, *, at_startup: bool = False) -> list[PrecisePrefixCacheProducer]:
        found = [
            p
            for p in self._handle.plugins().values()
            if getattr(p, "type", None) == PRECISE_PRODUCER_TYPE
            and isinstance(p, PrecisePrefixCacheProducer)
        ]
        if len(found) > 1:
            names = ", ".join(repr(p.name) for p in found)
            message = (
                f"{PRECISE_SCORER_TYPE} {self.name!r}: {len(found)} {PRECISE_PRODUCER_TYPE} "
                f"plugins ({names}); it can bind to one only: use a 'prefix-cache-scorer' "
                "with prefixMatchInfoProducerName instead"
            )
            raise ValueError(message) if at_startup else SchedulingError(message)
        return found

    def _resolve(self) -> PrecisePrefixCacheProducer | None:
        """The declared producer this plugin reads, or None: it is the producer."""
        if not self._resolved:
            found = self._declared_producers()
            self._bind(found[0] if found else None)
        return self._delegate

    def _bind(self, producer: PrecisePrefixCacheProducer | None) -> None:
        self._delegate = producer
        self._resolved = True
        if producer is not None:
            self._score_key = prefix_info_key(producer.name)
            log.info(
                "plugin %r: reading the match of %r (this plugin's own parameters are unused)",
                self.name,
                producer.name,
            )

    @property
    def producer_name(self) -> str:
        """The producer whose match is scored (this plugin's name when it is the one)."""
        delegate = self._resolve()
        return self.name if delegate is None else delegate.name

    # ------------------------------------------------------------------ producer
    def events_in_process(self) -> None:
        """As the producer's (nothing when reading a declared producer)."""
        if self._resolve() is None:
            super().events_in_process()

    def kv_event(self, pod: str, event: object, model: str = "") -> None:
        """As the producer's (dropped when reading a declared producer)."""
        if self._resolve() is None:
            super().kv_event(pod, event, model)

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """As the producer's (nothing when reading a declared producer)."""
        if self._resolve() is None:
            super().prepare_request_data(cycle, request, table, candidates)

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """As the producer's (nothing when reading a declared producer)."""
        if self._resolve() is None:
            super().pre_request(cycle, request, result)

    def run_deferred(self) -> None:
        """As the producer's (nothing when reading a declared producer)."""
        if self._resolved and self._delegate is None:
            super().run_deferred()

    # ------------------------------------------------------------------ scorer
    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """``matched / total`` blocks per candidate, as ``prefix-cache-scorer`` (0 when
        the request has no blocks or no match was written)."""
        self._resolve()
        info = cycle.read(self._score_key)
        if info is None:
            info = cycle.read(PREFIX_CACHE_MATCH_INFO)
        n = len(candidates)
        if not isinstance(info, PrefixCacheMatchInfo) or info.total_blocks <= 0:
            if not isinstance(info, PrefixCacheMatchInfo):
                self._warn_missing()
            out[:n] = 0.0
            return
        scoring.divided(info.match_blocks, candidates, float(info.total_blocks), out)

    def _warn_missing(self) -> None:
        now = self._clock()
        if now - self._last_warning_s < 60.0:
            return
        self._last_warning_s = now
        log.warning("%s: no %s in the cycle; scoring 0", self.name, PREFIX_CACHE_MATCH_INFO)


_precise_scorer: type[Scorer] = PrecisePrefixCacheScorer
_precise_scorer_producer: type[DataProducer] = PrecisePrefixCacheScorer
