"""A simulated vLLM-like model server: the V1 scheduler's step loop in simulated time.

Every step schedules the running requests first (one token per decode, the next chunk of
a prefill in progress), then waiting requests in FIFO order, all within
``max_num_batched_tokens`` and ``max_num_seqs``; KV blocks come from a paged cache with
prefix caching (:mod:`inference_sched.sim.kvcache`); when blocks run out the most
recently admitted running request is preempted (recompute). A step lasts
``latency.step_s(...) + step_overhead_s``; its tokens appear at its end.
docs/simulator/engine.md states the model and where it differs from vLLM.

Cost. The engine must run in O(events), not O(decode steps):

- Decoding requests are not touched per step. They form a set advancing one token per
  step together, so each keeps only where it joined (step counter ``s0``, computed
  tokens ``c0``, generated ``g0``); the set keeps the sum of contexts, a histogram of
  block phases (a request needs a new block every ``block_size`` steps) and a heap of
  finishing steps.
- A decode-only step whose successors would be identical (nothing admissible waiting,
  enough free blocks) is planned as a *chunk* of ``k`` steps (up to the first finish, the
  KV limit, an adapter load completing, or a cap), timed by one vectorised
  ``latency.decode_steps_s`` call. :meth:`Server.advance` commits only the steps that
  ended; :meth:`Server.submit` cuts the chunk after the step in progress, so the new
  request joins at the next step boundary, exactly as step-by-step simulation would.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from inference_sched.sim.kvcache import KVCache, KVEvent, block_keys, lora_int_id
from inference_sched.sim.prompts import block_token_ids, prompt_token_ids
from inference_sched.sim.types import (
    SIM_BLOCK_TOKENS,
    EngineConfig,
    EngineEvent,
    EventKind,
    Finished,
    ServerMetrics,
    SimRequest,
    StepTimeModel,
)

__all__ = ["Server"]

_IDLE: Final = 0
_STEP: Final = 1
_CHUNK: Final = 2
_WAIT: Final = 3
"""Plan modes: nothing planned, one step, a chunk of decode steps, a wait for an adapter."""

_FIRST_TOKEN: Final = EventKind.FIRST_TOKEN
_FINISHED: Final = EventKind.FINISHED
_PREEMPTED: Final = EventKind.PREEMPTED
_REJECTED: Final = EventKind.REJECTED

_MIN_CHUNK: Final = 16


class _Req:
    """A request's life inside one server (mutable; ``SimRequest`` is frozen)."""

    __slots__ = (
        "c0",
        "cached_tokens",
        "computed",
        "finish_at",
        "first_token_s",
        "g0",
        "generated",
        "heap_token",
        "held",
        "id",
        "keys",
        "lora",
        "nblocks",
        "output",
        "preemptions",
        "prompt",
        "s0",
        "scheduled_s",
        "seq",
        "sim",
    )

    def __init__(self, sim: SimRequest) -> None:
        self.sim = sim
        self.id = sim.id
        self.prompt = sim.prompt_tokens
        self.output = sim.output_tokens
        self.lora = sim.lora
        self.keys: list[int] | None = None
        """Keys of the full prompt blocks (computed at first admission)."""
        self.held: list[int] = []
        """Cached keys this request holds a reference on, in block order."""
        self.nblocks = 0
        """Blocks held (cached and key-less), while not in the decode set."""
        self.computed = 0
        """Tokens with KV in the cache, while not in the decode set."""
        self.generated = 0
        self.s0 = self.c0 = self.g0 = 0
        self.finish_at = 0
        self.heap_token = -1
        self.seq = -1
        self.scheduled_s = math.nan
        self.first_token_s = math.nan
        self.cached_tokens = 0
        self.preemptions = 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Server:
    """One simulated model server (a vLLM V1 engine on one GPU).

    Time only moves through :meth:`advance`; the caller interleaves it with
    :meth:`submit` in non-decreasing time order (``advance(t)`` before ``submit(r, t)``).

    Args:
        name: the server's name (passed to ``kv_events``).
        config: engine parameters (vLLM defaults).
        latency: step-time model.
        kv_events: called as ``kv_events(name, event)`` with each
            :data:`~inference_sched.sim.kvcache.KVEvent` when it happens (a block is
            cached at scheduling time, evicted when a new block needs it).
        token_ids_of: token ids of one 16-token workload block, for ``BlockStored``
            events (default: empty lists).

    Attributes:
        fast_forward: plan runs of identical decode steps as one chunk (True); False
            simulates every step alone (same results, for tests and checks; with the
            ``h200-*`` models chunk times may differ in the last bits).
        max_chunk_steps: longest chunk.
    """

    fast_forward: bool = True
    max_chunk_steps: int = 4096

    def __init__(
        self,
        name: str,
        config: EngineConfig,
        latency: StepTimeModel,
        *,
        kv_events: Callable[[str, object], None] | None = None,
        token_ids_of: Callable[[int], Sequence[int]] | None = None,
    ) -> None:
        if config.block_size < SIM_BLOCK_TOKENS or config.block_size % SIM_BLOCK_TOKENS:
            raise ValueError(
                f"block_size must be a multiple of {SIM_BLOCK_TOKENS}, got {config.block_size}"
            )
        if config.max_num_seqs < 1 or config.max_num_batched_tokens < config.max_num_seqs:
            # vLLM refuses this too: every running request must get its token each step.
            raise ValueError(
                "need 1 <= max_num_seqs <= max_num_batched_tokens, got "
                f"{config.max_num_seqs} and {config.max_num_batched_tokens}"
            )
        self.name = name
        self.config = config
        self.latency = latency
        self._bs = config.block_size
        self._budget = config.max_num_batched_tokens
        self._max_seqs = config.max_num_seqs
        self._overhead = config.step_overhead_s
        self._caching = config.enable_prefix_caching
        self._events_on = kv_events is not None
        self._token_ids_of = token_ids_of
        on_event: Callable[[KVEvent], None] | None = None
        if kv_events is not None:
            sink = kv_events

            def on_event(event: KVEvent) -> None:
                sink(name, event)

        self._kv = KVCache(
            config.num_gpu_blocks,
            config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            on_event=on_event,
        )
        self._waiting: deque[_Req] = deque()
        # The decode set, in admission order (key: admission sequence number).
        self._dec: dict[int, _Req] = {}
        self._S = 0
        """Steps executed so far (the decode set's clock)."""
        self._acc = 0
        """Sum of ``c0 - s0`` over the decode set: context sum = acc + n * (S + 1)."""
        self._hist = [0] * self._bs
        """Decode-set requests by block phase: ``hist[p]`` need a block at steps S % bs == p."""
        self._heap: list[tuple[int, int, _Req]] = []
        self._heap_seq = 0
        self._seq = 0
        self._tail: _Req | None = None
        """The running request whose prefill is unfinished, between steps (at most one)."""
        self._pre: list[tuple[_Req, int, int]] = []
        """Prefill chunks of the planned step: (request, new tokens, context)."""
        self._mode = _IDLE
        self._cursor = 0.0
        """End of the last committed step (start of the next one)."""
        self._next_end = math.inf
        self._events: list[EngineEvent] = []
        self._preemptions = 0
        # Chunk plan.
        self._ends: list[float] = []
        self._k = 0
        self._done = 0
        self._applied = 0
        self._chunk_n = 0
        self._chunk_prefix: list[int] = []
        self._hint = 64
        # LoRA slots: adapter -> time its load completes, least recently used first.
        self._resident: OrderedDict[str, float] = OrderedDict()
        self._lora_running: dict[str, int] = {}
        self._lora_waiting: dict[str, int] = {}

    # ------------------------------------------------------------------ API
    @property
    def idle(self) -> bool:
        """Nothing running, waiting or planned."""
        return self._mode == _IDLE and not self._has_work()

    def next_event_s(self) -> float:
        """When :meth:`advance` next has something to do (``math.inf`` when idle): the end
        of the next step, or of the whole decode chunk in progress, since no event can
        happen inside a chunk (:meth:`metrics` and :meth:`advance` at any time inside it
        are still exact, step by step). Events not yet returned (a rejection) count as
        due at their time."""
        if self._mode == _IDLE and self._has_work():
            self._plan(self._cursor)
        due = self._ends[self._k - 1] if self._mode == _CHUNK else self._next_end
        if self._events:
            return min(due, min(e.time_s for e in self._events))
        return due

    def submit(self, request: SimRequest, now_s: float) -> None:
        """``request`` arrives at ``now_s`` (after ``advance(now_s)``); it is admitted at
        the first step boundary at or after ``now_s``."""
        bs = self._bs
        r = _Req(request)
        blocks = _ceil_div(request.prompt_tokens + request.output_tokens - 1, bs)
        if blocks > self._kv.num_blocks or (request.lora is not None and self.config.max_loras < 1):
            # vLLM answers 400 at once (prompt + max_tokens over max_model_len, or LoRA off).
            self._events.append(EngineEvent(now_s, _REJECTED, request.id))
            return
        mode = self._mode
        if mode == _IDLE:
            if self._has_work() and self._cursor < now_s:
                self._plan(self._cursor)  # that step started before this arrival
                mode = self._mode
            elif now_s > self._cursor:
                self._cursor = now_s
        if mode == _CHUNK:
            # The step in progress completes; the request joins at its end.
            if self._k > self._done + 1:
                self._k = self._done + 1
                self._hint = max(_MIN_CHUNK, 2 * self._k)
        elif mode == _WAIT:
            # Only waiting for an adapter: a new request may be admissible right now.
            self._mode = _IDLE
            self._next_end = math.inf
            self._cursor = max(self._cursor, now_s)
        self._waiting.append(r)
        if r.lora is not None:
            self._lora_waiting[r.lora] = self._lora_waiting.get(r.lora, 0) + 1

    def receive_kv(self, request: SimRequest) -> int:
        """The prompt's KV blocks arrive from a prefill engine (P/D): they land in the
        prefix cache, so ``request`` submitted next hits them and only decodes. Returns
        the prompt blocks now resident (fewer when the cache is full of blocks in use)."""
        r = _Req(request)
        keys = self._keys(r)
        full = keys[: request.prompt_tokens // self._bs]
        token_ids: list[list[int]] | None = None
        if self._events_on and self._token_ids_of is not None:
            token_ids = self._block_tokens(request.blocks, 0, len(full))
        lora = request.lora
        return self._kv.preload(
            full,
            lora_id=lora_int_id(lora) if lora is not None else None,
            lora_name=lora,
            token_ids=token_ids,
        )

    def _block_tokens(self, blocks: npt.NDArray[np.int64], lo: int, hi: int) -> list[list[int]]:
        """The token ids of engine blocks ``[lo, hi)`` of a prompt, one list per block."""
        m = self._bs // SIM_BLOCK_TOKENS
        ids = blocks[lo * m : hi * m]
        if self._token_ids_of is block_token_ids:  # the fleet's: one vectorised call
            rows: list[list[int]] = (
                prompt_token_ids(ids, ids.shape[0] * SIM_BLOCK_TOKENS)
                .reshape(hi - lo, self._bs)
                .tolist()
            )
            return rows
        of = self._token_ids_of
        assert of is not None
        listed = ids.tolist()
        return [
            [t for block_id in listed[b * m : (b + 1) * m] for t in of(block_id)]
            for b in range(hi - lo)
        ]

    def advance(self, until_s: float) -> list[EngineEvent]:
        """Commit every step ending at or before ``until_s``; the events, in time order."""
        self._run(until_s)
        events = self._events
        if not events:
            return []
        self._events = []
        if len(events) > 1:
            events.sort(key=_event_time)
        return events

    def metrics(self, now_s: float) -> ServerMetrics:
        """What a metrics scrape at ``now_s`` returns (after ``advance(now_s)``)."""
        self._run(now_s)
        kv = self._kv
        return ServerMetrics(
            waiting=len(self._waiting),
            running=self._num_running(),
            kv_usage_frac=kv.num_used / kv.num_blocks,
            num_gpu_blocks=kv.num_blocks,
            block_size=self._bs,
            max_loras=self.config.max_loras,
            running_adapters=frozenset(self._lora_running),
            waiting_adapters=frozenset(self._lora_waiting),
            prefix_queries_tokens=kv.queries_tokens,
            prefix_hits_tokens=kv.hits_tokens,
            preemptions=self._preemptions,
        )

    # ------------------------------------------------------------- internals
    def _has_work(self) -> bool:
        return bool(self._dec or self._waiting or self._tail is not None or self._pre)

    def _num_running(self) -> int:
        return len(self._dec) + len(self._pre) + (self._tail is not None)

    def _run(self, until: float) -> None:
        while True:
            mode = self._mode
            if mode == _IDLE:
                if not self._has_work():
                    return
                self._plan(self._cursor)
                mode = self._mode
                if mode == _IDLE:
                    return
            if self._next_end > until:
                return
            if mode == _STEP:
                self._commit_step()
            elif mode == _CHUNK:
                self._commit_chunk(until)
            else:  # _WAIT
                self._cursor = self._next_end
                self._next_end = math.inf
                self._mode = _IDLE

    def _plan(self, start: float) -> None:
        if not (self.fast_forward and self._plan_chunk(start)):
            self._plan_step(start)

    # ---------------------------------------------------------- decode set
    def _dec_add(self, r: _Req) -> None:
        s = self._S
        r.s0, r.c0, r.g0 = s, r.computed, r.generated
        self._acc += r.c0 - s
        self._hist[(s - r.c0) % self._bs] += 1
        r.seq = self._seq
        self._seq += 1
        self._dec[r.seq] = r
        r.finish_at = s + r.output - r.generated
        self._heap_seq += 1
        r.heap_token = self._heap_seq
        heapq.heappush(self._heap, (r.finish_at, self._heap_seq, r))

    def _dec_remove(self, r: _Req) -> None:
        d = self._S - r.s0
        r.computed = r.c0 + d
        r.generated = r.g0 + d
        r.nblocks = _ceil_div(r.computed, self._bs)
        self._acc -= r.c0 - r.s0
        self._hist[(r.s0 - r.c0) % self._bs] -= 1
        del self._dec[r.seq]
        r.heap_token = -1

    def _finish_decodes(self, end: float) -> None:
        heap, s = self._heap, self._S
        while heap and heap[0][0] <= s:
            _, token, r = heapq.heappop(heap)
            if r.heap_token != token:
                continue  # preempted since
            self._dec_remove(r)
            self._finish(r, end)

    def _clean_heap(self) -> None:
        heap = self._heap
        while heap and heap[0][2].heap_token != heap[0][1]:
            heapq.heappop(heap)

    # ------------------------------------------------------------ requests
    def _finish(self, r: _Req, end: float) -> None:
        self._release(r)
        self._events.append(
            EngineEvent(
                end,
                _FINISHED,
                r.id,
                Finished(r.scheduled_s, r.first_token_s, end, r.cached_tokens, r.preemptions),
            )
        )

    def _release(self, r: _Req) -> None:
        self._kv.free(r.held, r.nblocks - len(r.held))
        r.held = []
        r.nblocks = 0
        lora = r.lora
        if lora is not None:
            left = self._lora_running[lora] - 1
            if left:
                self._lora_running[lora] = left
            else:
                del self._lora_running[lora]

    def _preempt(self, r: _Req, now: float) -> None:
        if r is self._tail:
            self._tail = None
        else:
            self._dec_remove(r)
        self._release(r)
        r.computed = 0
        r.preemptions += 1
        self._preemptions += 1
        self._waiting.appendleft(r)
        if r.lora is not None:
            self._lora_waiting[r.lora] = self._lora_waiting.get(r.lora, 0) + 1
        self._events.append(EngineEvent(now, _PREEMPTED, r.id))

    def _register(self, r: _Req, start: int, end: int) -> None:
        """Cache the full prompt blocks that tokens [start, end) complete."""
        keys = r.keys
        assert keys is not None
        bs = self._bs
        lo = start // bs
        hi = min(end // bs, len(keys))
        if hi <= lo:
            return
        parent = keys[lo - 1] if lo else None
        if not self._events_on:
            r.held.extend(self._kv.register(keys[lo:hi], parent))
            return
        token_ids: list[list[int]] | None = None
        if self._token_ids_of is not None:
            token_ids = self._block_tokens(r.sim.blocks, lo, hi)
        lora_id = lora_int_id(r.lora) if r.lora is not None else None
        r.held.extend(
            self._kv.register(
                keys[lo:hi], parent, lora_id=lora_id, lora_name=r.lora, token_ids=token_ids
            )
        )

    def _keys(self, r: _Req) -> list[int]:
        keys = r.keys
        if keys is None:
            sim = r.sim
            keys = (
                block_keys(sim.blocks, sim.prompt_tokens, self._bs, sim.lora)
                if self._caching
                else []
            )
            r.keys = keys
        return keys

    # ---------------------------------------------------------------- LoRA
    def _lora_admissible(self, lora: str, now: float) -> bool:
        """Whether a request for ``lora`` may be admitted at ``now``; starts a load into a
        free slot (or in place of an idle adapter) when it is not resident."""
        resident = self._resident
        ready = resident.get(lora)
        if ready is not None:
            return ready <= now
        if len(resident) >= self.config.max_loras:
            victim = self._idle_adapter(now)
            if victim is None:
                return False
            del resident[victim]
        ready = now + self.config.lora_load_s
        resident[lora] = ready
        return ready <= now

    def _idle_adapter(self, now: float) -> str | None:
        running = self._lora_running
        for name, ready in self._resident.items():
            if ready <= now and name not in running:
                return name
        return None

    def _lora_wake(self, now: float) -> float:
        """When the next adapter load completes (inf if none is loading)."""
        if not self._resident:
            return math.inf
        return min((t for t in self._resident.values() if t > now), default=math.inf)

    # ------------------------------------------------------------- planning
    def _plan_step(self, s: float) -> None:
        """Schedule one step at ``s`` the way vLLM V1's scheduler does."""
        kv, bs, dec = self._kv, self._bs, self._dec
        S = self._S
        preempted = False
        tail = self._tail
        dec_need = self._hist[S % bs] if dec else 0
        tail_n = tail_need = 0
        if tail is not None:
            tail_n = min(tail.prompt + tail.generated - tail.computed, self._budget - len(dec))
            tail_need = _ceil_div(tail.computed + tail_n, bs) - tail.nblocks
        if dec_need + tail_need > kv.num_free:
            self._preempt_for_blocks(s, tail_need)
            preempted = True
            tail = self._tail
            dec_need = self._hist[S % bs] if dec else 0
            if tail is None:
                tail_need = 0
        kv.allocate(dec_need + tail_need)
        budget = self._budget - len(dec)
        pre = self._pre
        if tail is not None:
            pre.append((tail, tail_n, tail.computed))
            self._register(tail, tail.computed, tail.computed + tail_n)
            tail.nblocks += tail_need
            budget -= tail_n
            self._tail = None
        if not preempted and self._waiting:
            self._admit(s, budget)
        n_dec = len(dec)
        if not pre and not n_dec:
            wake = self._lora_wake(s)
            if wake == math.inf:
                if self._waiting:
                    raise RuntimeError(f"{self.name}: requests waiting but nothing can run")
                return
            self._mode = _WAIT
            self._next_end = wake
            return
        if pre:
            dur = self.latency.step_s(
                [n for _, n, _ in pre],
                [c for _, _, c in pre],
                n_dec,
                self._acc + n_dec * (S + 1) if n_dec else 0,
            )
        else:
            dur = self.latency.step_s((), (), n_dec, self._acc + n_dec * (S + 1))
        self._mode = _STEP
        self._next_end = s + (dur + self._overhead)

    def _preempt_for_blocks(self, s: float, tail_need: int) -> None:
        """vLLM's running loop when blocks run out: each running request in admission
        order takes its blocks; while they do not fit, the newest running request is
        preempted (possibly the one asking)."""
        kv, bs, S = self._kv, self._bs, self._S
        order = list(self._dec.values())
        tail = self._tail
        if tail is not None:
            order.append(tail)
        pending = 0
        i = 0
        while i < len(order):
            r = order[i]
            # A decode needs a block when its next token starts one.
            need = tail_need if r is tail else int((r.c0 + S - r.s0) % bs == 0)
            while pending + need > kv.num_free:
                victim = order.pop()
                self._preempt(victim, s)
                if victim is r:
                    return
            pending += need
            i += 1

    def _admit(self, s: float, budget: int) -> None:
        """The waiting loop: FIFO within the token budget, ``max_num_seqs`` and the KV
        cache; a request whose adapter cannot run yet is passed over."""
        kv, bs, waiting = self._kv, self._bs, self._waiting
        running = self._num_running()
        skipped: list[_Req] = []
        pre = self._pre
        while waiting and budget > 0:
            if running >= self._max_seqs:
                break
            r = waiting[0]
            lora = r.lora
            if lora is not None and not self._lora_admissible(lora, s):
                skipped.append(waiting.popleft())
                continue
            keys = self._keys(r)
            total = r.prompt + r.generated
            hits, hits_free = kv.lookup(keys, (total - 1) // bs)
            hit_tokens = hits * bs
            n = min(total - hit_tokens, budget)
            need = _ceil_div(hit_tokens + n, bs) - hits
            if need + hits_free > kv.num_free:
                break
            waiting.popleft()
            if hits:
                held = keys[:hits]
                kv.acquire(held)
                r.held = held
            kv.allocate(need)
            kv.count_query(total, hit_tokens)
            r.computed = hit_tokens
            r.nblocks = hits + need
            r.cached_tokens = hit_tokens
            if r.scheduled_s != r.scheduled_s:  # NaN: first admission
                r.scheduled_s = s
            self._register(r, hit_tokens, hit_tokens + n)
            if lora is not None:
                left = self._lora_waiting[lora] - 1
                if left:
                    self._lora_waiting[lora] = left
                else:
                    del self._lora_waiting[lora]
                self._lora_running[lora] = self._lora_running.get(lora, 0) + 1
                self._resident.move_to_end(lora)
            pre.append((r, n, hit_tokens))
            budget -= n
            running += 1
        if skipped:
            waiting.extendleft(reversed(skipped))

    def _waiting_blocked(self, s: float, free: int, budget: int, running: int) -> tuple[bool, bool]:
        """Whether no waiting request could be admitted in a decode-only step at ``s``
        with ``free`` blocks left after the decodes, nor in any later step of a chunk
        while running requests, adapters and free blocks only decrease. Second value:
        the proof holds only while no cached block is evicted."""
        if running >= self._max_seqs or budget <= 0:
            return True, False
        kv, bs = self._kv, self._bs
        resident = self._resident
        for r in self._waiting:
            lora = r.lora
            if lora is not None:
                ready = resident.get(lora)
                if ready is None:
                    if len(resident) < self.config.max_loras or self._idle_adapter(s) is not None:
                        return False, False  # a load would start
                    continue
                if ready > s:
                    continue
            total = r.prompt + r.generated
            if _ceil_div(total, bs) <= free:
                return False, False  # fits whatever it hits (no lookup needed)
            keys = self._keys(r)
            hits, hits_free = kv.lookup(keys, (total - 1) // bs)
            n = min(total - hits * bs, budget)
            if _ceil_div(hits * bs + n, bs) - hits + hits_free <= free:
                return False, False
            # Evictions can only shorten its hit, which needs at least ceil(n / bs) blocks.
            return True, _ceil_div(n, bs) <= free
        return True, False

    def _plan_chunk(self, s: float) -> bool:
        """Plan a chunk of decode-only steps from ``s`` if the next step is one and its
        successors would be identical; False to plan one general step instead."""
        dec = self._dec
        if self._tail is not None or not dec:
            return False
        kv, bs, S = self._kv, self._bs, self._S
        n = len(dec)
        hist = self._hist
        free = kv.num_free
        phase = S % bs
        alloc0 = hist[phase]
        if alloc0 > free:
            return False  # this step preempts
        no_evict = False
        if self._waiting:
            blocked, no_evict = self._waiting_blocked(s, free - alloc0, self._budget - n, n)
            if not blocked:
                return False
        self._clean_heap()
        k = min(self._heap[0][0] - S, self._hint, self.max_chunk_steps)
        # Blocks taken by the first j steps: (j // bs) * n + prefix[j % bs - 1].
        prefix = list(itertools.accumulate(hist[phase:] + hist[:phase]))
        k = min(k, (free // n) * bs + bisect.bisect_right(prefix, free % n))
        if no_evict:
            plain = kv.num_free_plain
            k = min(k, (plain // n) * bs + bisect.bisect_right(prefix, plain % n))
            if k < 1:
                return False
        durations = self.latency.decode_steps_s(n, self._acc + n * (S + 1), k)
        if self._overhead:
            durations = durations + self._overhead
        # Sequential float sums, exactly as step-by-step simulation adds them up.
        ends = list(itertools.accumulate(durations.tolist(), initial=s))
        del ends[0]
        wake = self._lora_wake(s)
        if wake < math.inf:
            # Re-plan at the first boundary at or after the load completes.
            k = min(k, 1 + bisect.bisect_left(ends, wake, 0, k - 1))
        self._mode = _CHUNK
        self._ends = ends
        self._k = k
        self._done = 0
        self._chunk_n = n
        self._chunk_prefix = prefix
        self._next_end = ends[0]
        kv.allocate(alloc0)
        self._applied = 1
        return True

    # ------------------------------------------------------------- commits
    def _commit_step(self) -> None:
        end = self._next_end
        self._S += 1
        self._cursor = end
        self._mode = _IDLE
        self._next_end = math.inf
        if self._heap and self._heap[0][0] <= self._S:
            self._finish_decodes(end)
        pre = self._pre
        self._pre = []
        events = self._events
        for r, n, _ in pre:
            r.computed += n
            if r.computed < r.prompt + r.generated:
                self._tail = r
                continue
            r.generated += 1
            if r.generated == 1:
                r.first_token_s = end
                events.append(EngineEvent(end, _FIRST_TOKEN, r.id))
            if r.generated >= r.output:
                self._finish(r, end)
            else:
                self._dec_add(r)

    def _commit_chunk(self, until: float) -> None:
        k = self._k
        ends = self._ends
        done = bisect.bisect_right(ends, until, self._done + 1, k)
        self._S += done - self._done
        self._done = done
        # Blocks are taken when a step starts: the committed ones and the one in progress.
        started = done + 1 if done < k else k
        applied = self._applied
        if started > applied:
            bs, n, prefix = self._bs, self._chunk_n, self._chunk_prefix
            q1, j1 = divmod(started, bs)
            q0, j0 = divmod(applied, bs)
            blocks = (q1 - q0) * n
            if j1:
                blocks += prefix[j1 - 1]
            if j0:
                blocks -= prefix[j0 - 1]
            if blocks:
                self._kv.allocate(blocks)
            self._applied = started
        end = ends[done - 1]
        self._cursor = end
        if done < k:
            self._next_end = ends[done]
            return
        self._mode = _IDLE
        self._next_end = math.inf
        if k >= self._hint:
            self._hint = min(2 * self._hint, self.max_chunk_steps)
        if self._heap and self._heap[0][0] <= self._S:
            self._finish_decodes(end)


def _event_time(event: EngineEvent) -> float:
    return event.time_s
