"""``precise-prefix-cache-producer``: prefix matches from what the engines report caching.

llm-d's precise prefix routing (``specs/peers.md`` A.4, B): every vLLM server publishes
its KV-cache events (BlockStored / BlockRemoved / AllBlocksCleared) over ZMQ; the
scheduler keeps a :class:`~inference_sched.prefix.precise.index.PreciseIndex` of them and
matches each request's token blocks against it. The match goes to the cycle as GIE's
``PrefixCacheMatchInfo`` (weighted matched blocks by row, the request's block count), so
the ordinary ``prefix-cache-scorer`` scores ``matched / total``: absolute, never min-max
(llm-d since PR #1107).

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

Single writer: events, invalidations and speculative entries are queued and applied on
the scheduling thread, before each match and in :meth:`run_deferred`, so the index is
never written while a decision reads it.

Token ids: the match needs the prompt's token ids: ``Request.token_ids`` (the gateway's),
the body's ``prompt_token_ids``, or ``TokenizedPrompt`` from a ``token-producer``. A
request without them gets no prefix information (scores 0), as in llm-d without a token
producer.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    PrefixCacheMatchInfo,
    cache_salt,
    first_picks,
    request_token_ids,
)
from inference_sched.framework.interfaces import Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    SchedulingResult,
)
from inference_sched.params import (
    ParamCheck,
    at_least,
    boolean,
    duration_s,
    in_range,
    integer,
    nested,
    param,
    string,
)
from inference_sched.prefix.precise.index import (
    EventBatchBuilder,
    PreciseIndex,
    split_vllm_extra_keys,
)
from inference_sched.state.table import EndpointTable

__all__ = ["PRECISE_PRODUCER_TYPE", "PrecisePrefixCacheProducer", "PrecisePrefixParams"]

log = logging.getLogger(__name__)

PRECISE_PRODUCER_TYPE: Final = "precise-prefix-cache-producer"
_NO_KEYS: Final = np.empty(0, dtype=np.uint64)
_MAX_QUEUE: Final = 4096
"""Queued events applied at once when no decision or deferred run drains the queue."""


# ====================================================================== parameters
@attrs.frozen
class TokenProcessorConfig:
    """``tokenProcessorConfig`` (llm-d): how token blocks become keys."""

    block_size_tokens: int = param(16, alias="blockSizeTokens", check=at_least(1))
    """Tokens per index block (any engine block size that is a multiple of it works)."""
    block_size: int = param(0, alias="blockSize", check=at_least(0))
    """llm-d's old name of blockSizeTokens; used when set and blockSizeTokens is not."""
    hash_seed: str = param("", alias="hashSeed", check=string)
    """Folded into every chain root: replicas must agree on it, engines need not."""


@attrs.frozen
class PodDiscoveryConfig:
    """``kvEventsConfig.podDiscoveryConfig`` (llm-d)."""

    socket_port: int = param(5557, alias="socketPort", check=in_range(1, 65535))
    """The port of every engine's KV-event publisher (vLLM ``tcp://*:5557``)."""
    replay_port: int = param(0, alias="replayPort", check=in_range(0, 65535))
    """Ours: the port of each engine's replay socket (vLLM ``replay_endpoint``); 0: no
    replay, a sequence gap drops the endpoint's entries instead."""


@attrs.frozen
class KVEventsConfig:
    """``kvEventsConfig`` (llm-d): where the events come from."""

    topic_filter: str = param("kv@", alias="topicFilter", check=string)
    """ZMQ subscription prefix."""
    concurrency: int = param(4, alias="concurrency", check=at_least(1))
    """llm-d's event workers. Accepted for llm-d configs; here events are applied in
    order on the scheduling thread (the index has one writer), so it changes nothing."""
    discover_pods: bool = param(True, alias="discoverPods", check=boolean)
    """Connect to every endpoint's publisher (engines bind), following the table."""
    pod_discovery_config: PodDiscoveryConfig = param(  # noqa: RUF009 - an attrs field
        factory=PodDiscoveryConfig,
        alias="podDiscoveryConfig",
        parse=nested(PodDiscoveryConfig, "podDiscoveryConfig"),
    )
    zmq_endpoint: str = param("", alias="zmqEndpoint", check=string)
    """Bind one SUB socket here (``tcp://*:5557``) for engines that connect; wins over
    discoverPods."""


def _backends(raw: Any) -> tuple[tuple[str, float], ...]:
    key = "kvCacheBackendConfigs"
    expected = "a list of {name: str, weight: number >= 0}"
    if not isinstance(raw, list | tuple):
        raise ParamCheck(key, expected, raw)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or set(item) - {"name", "weight"} or "name" not in item:
            raise ParamCheck(f"{key}[{i}]", "a mapping with keys name, weight", item)
        name, weight = item["name"], item.get("weight", 1.0)
        if not isinstance(name, str) or not name.strip():
            raise ParamCheck(f"{key}[{i}].name", "a non-empty str", name)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise ParamCheck(f"{key}[{i}].weight", "a number >= 0", weight)
        out.append((name.strip().lower(), float(weight)))
    return tuple(out)


@attrs.frozen
class IndexerConfig:
    """``indexerConfig`` (llm-d's kv-cache config): the tiers' weights."""

    kv_cache_backend_configs: tuple[tuple[str, float], ...] = param(
        (("gpu", 1.0), ("cpu", 0.8)), alias="kvCacheBackendConfigs", parse=_backends
    )
    """Weight of a block held in each medium (max over media per block)."""


@attrs.frozen
class PrecisePrefixParams:
    """Parameters of ``precise-prefix-cache-producer`` (llm-d's keys and defaults)."""

    token_processor_config: TokenProcessorConfig = param(  # noqa: RUF009 - an attrs field
        factory=TokenProcessorConfig,
        alias="tokenProcessorConfig",
        parse=nested(TokenProcessorConfig, "tokenProcessorConfig"),
    )
    indexer_config: IndexerConfig = param(  # noqa: RUF009 - an attrs field
        factory=IndexerConfig, alias="indexerConfig", parse=nested(IndexerConfig, "indexerConfig")
    )
    kv_events_config: KVEventsConfig = param(  # noqa: RUF009 - an attrs field
        factory=KVEventsConfig,
        alias="kvEventsConfig",
        parse=nested(KVEventsConfig, "kvEventsConfig"),
    )
    speculative_indexing: bool = param(False, alias="speculativeIndexing", check=boolean)
    """After each pick, index the request's blocks on the picked endpoint(s) at once, for
    ``speculativeTTL``: the next request with the same prefix finds them before the
    engine's BlockStored arrives (llm-d's answer to bursts of one prefix scattering)."""
    speculative_ttl_s: float = param(
        2.0,
        alias="speculativeTTL",
        parse=duration_s("speculativeTTL"),
        check=at_least(1e-3, kind="number"),
    )
    """How long a speculative entry lives (``"2s"``)."""
    max_prefix_blocks_to_match: int = param(0, alias="maxPrefixBlocksToMatch", check=integer)
    """Ours: match at most this many leading blocks (0: all of them, as llm-d)."""

    @property
    def block_size_tokens(self) -> int:
        config = self.token_processor_config
        if config.block_size and config.block_size_tokens == 16:
            return config.block_size  # only the old key was given
        return config.block_size_tokens


# ====================================================================== plugin
class _Match(NamedTuple):
    keys: npt.NDArray[np.uint64]
    info: PrefixCacheMatchInfo


class _Queued(NamedTuple):
    pod: str
    model: str
    event: object  # an event object, or None: drop the endpoint's entries (reason below)
    reason: str


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
        self._table = handle.table
        self._clock = handle.clock
        self._state_key = f"{PRECISE_PRODUCER_TYPE}/{name}"
        self.index = PreciseIndex(
            block_size_tokens=params.block_size_tokens,
            medium_weights=dict(params.indexer_config.kv_cache_backend_configs),
            speculative_ttl_s=params.speculative_ttl_s,
        )
        self._seed = params.token_processor_config.hash_seed
        self._queue: collections.deque[_Queued] = collections.deque()
        self._speculative: list[tuple[int, Endpoint, npt.NDArray[np.uint64], float]] = []
        self._lock = threading.Lock()  # serialises the appliers (scheduler, removals)
        self._pods: dict[str, int] = {}
        self._pods_version = -1
        self._capacity: dict[int, int] = {}
        self._in_process = False
        self._subscriber: Any = None
        self._subscribed: dict[str, str] = {}
        self._start_failed = False
        self.stats: collections.Counter[str] = collections.Counter()
        """Events applied by kind, events for unknown endpoints, invalidations, requests
        without token ids, index statuses (unknown parents, ...)."""
        self._table.on_remove(self._on_remove)

    # ------------------------------------------------------------------ events in
    def events_in_process(self) -> None:
        """The embedder delivers every event through :meth:`kv_event`: open no socket."""
        self._in_process = True

    def kv_event(self, pod: str, event: object, model: str = "") -> None:
        """Queue one engine event of endpoint ``pod`` (its ``ip:port``, or its name).

        ``event`` is a ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` in
        vLLM's shape (the wire decoder's or the simulator's); ``model`` is the served
        model (the chain root of blocks without a LoRA name). Thread-safe; applied on
        the scheduling thread.
        """
        self._queue.append(_Queued(pod, model, event, ""))
        if len(self._queue) > _MAX_QUEUE:
            self.run_deferred()

    def invalidate(self, pod: str, reason: str) -> None:
        """Drop everything known of ``pod`` (lost events); thread-safe, applied later."""
        self._queue.append(_Queued(pod, "", None, reason))

    def _on_batch(self, endpoint: str, model: str, seq: int, batch: Any) -> None:
        for event in batch.events:
            self._queue.append(_Queued(endpoint, model, event, ""))

    # ------------------------------------------------------------------ applying
    def _row_of(self, pod: str) -> int | None:
        table = self._table
        if self._pods_version != table.version:
            pods: dict[str, int] = {}
            for endpoint in table:
                row = table.row(endpoint.name)
                pods[endpoint.hostport] = row
                pods[endpoint.name] = row
            self._pods, self._pods_version = pods, table.version
        return self._pods.get(pod)

    def _apply_queue(self) -> None:
        """Apply every queued event in order, then queued speculative inserts (the
        caller holds the lock)."""
        if self._speculative:
            self._apply_events()
            pending, self._speculative = self._speculative, []
            table = self._table
            for row, endpoint, keys, now in pending:
                if table.endpoint_or_none(row) is endpoint:  # not removed since the pick
                    self.index.add_speculative(row, keys, now)
            return
        self._apply_events()

    def _apply_events(self) -> None:
        queue = self._queue
        if not queue:
            return
        index, stats = self.index, self.stats
        builder = EventBatchBuilder(index)
        kinds: list[str] = []
        while queue:
            item = queue.popleft()
            row = self._row_of(item.pod)
            if row is None:
                stats["events_unknown_endpoint"] += 1
                continue
            event = item.event
            if event is None:
                builder.cleared(row)
                kinds.append("invalidated")
                log.info("precise prefix index: dropped %s's entries (%s)", item.pod, item.reason)
                continue
            kind = type(event).__name__
            if kind == "BlockStored":
                stored: Any = event
                self._tune(row, int(stored.block_size))
                lora = getattr(stored, "lora_name", None)
                extra = getattr(stored, "extra_keys", None)
                # vLLM's per-block extra keys carry the LoRA name and block 0's cache
                # salt: both are the chain's root here; what is left is content (MM).
                content, salt = split_vllm_extra_keys(extra, lora) if extra else (None, "")
                builder.stored(
                    row,
                    stored.block_hashes,
                    stored.parent_block_hash,
                    stored.token_ids,
                    int(stored.block_size),
                    root_name=self._seed + (lora or item.model),
                    medium=getattr(stored, "medium", None),
                    extra_keys=content,
                    cache_salt=salt,
                )
            elif kind == "BlockRemoved":
                builder.removed(row, event.block_hashes, getattr(event, "medium", None))  # type: ignore[attr-defined]
            elif kind == "AllBlocksCleared":
                builder.cleared(row)
            else:
                stats["events_unknown_kind"] += 1
                continue
            kinds.append(kind)
        if not kinds:
            return
        try:
            results = index.apply_events(builder.build())
        except ValueError as exc:  # a malformed event (a hash outside uint64, ...)
            stats["events_rejected_batches"] += 1
            log.warning("precise prefix index: a batch of %d events rejected: %s", len(kinds), exc)
            return
        for kind, result in zip(kinds, results.tolist(), strict=True):
            stats[kind] += 1
            if result < 0:
                stats[f"{kind}_status_{result}"] += 1

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
        """Apply queued events and speculative inserts, expire old speculative entries
        (between decisions)."""
        if self._queue or self._speculative or self.params.speculative_indexing:
            with self._lock:
                self._apply_queue()
                if self.params.speculative_indexing:
                    self.index.expire(self._clock())

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        with self._lock:
            self._apply_queue()  # queued events name the row: apply, then drop it all
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
        elif self._subscriber is not None and self._pods_version != table.version:
            self._follow_table()
        block_tokens = self.index.block_size_tokens
        counts = np.zeros(max(table.capacity, 1))
        tokens = request_token_ids(request, cycle)
        keys = _NO_KEYS
        total = 0
        with self._lock:
            self._apply_queue()
            if tokens is not None and len(tokens) >= block_tokens:
                cap = self.params.max_prefix_blocks_to_match
                limit = cap if cap > 0 else None
                keys = self.index.match_tokens(
                    tokens,
                    self._seed + request.target_model,
                    cache_salt(request),
                    counts,
                    limit,
                    all_keys=True,  # every key: the joint batch path groups by them
                )
                total = self.index.num_request_keys(len(tokens), limit)
        if tokens is None:
            self.stats["requests_without_token_ids"] += 1
        info = PrefixCacheMatchInfo(counts, total, block_tokens, keys)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
        if self.params.speculative_indexing and len(keys):
            cycle.write(self._state_key, _Match(keys, info))

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
        self._subscriber.start()
        if not config.zmq_endpoint:
            self._follow_table()
        return True

    def _follow_table(self) -> None:
        """Dial mode: one connection per endpoint of the table, as it changes."""
        config = self.params.kv_events_config
        if config.zmq_endpoint or self._subscriber is None:
            return
        table = self._table
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
        """Stop the subscriber thread (if any)."""
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.stop(timeout_s)
        self._subscribed.clear()

    # ------------------------------------------------------------------ metrics
    def index_size(self) -> int:
        """Entries in the index (every tier), queued events applied."""
        with self._lock:
            self._apply_queue()
            return self.index.size()
