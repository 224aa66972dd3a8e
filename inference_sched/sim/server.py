"""``inference-sched sim-server``: one simulated vLLM-like model server on one HTTP port.

What tests, demos and users' trials run against instead of a GPU (like llm-d's
inference simulator): the OpenAI API (``/v1/completions``, ``/v1/chat/completions``,
streamed as SSE or not, with ``usage``), ``/v1/models``, vLLM's ``/metrics`` on the same
port (:func:`~inference_sched.sim.exposition.render_vllm`) and vLLM's KV events over ZMQ
(:mod:`.server_kv`). Timing is the fleet simulator's engine
(:class:`~inference_sched.sim.engine.Server`: continuous batching, chunked prefill, paged
KV cache with prefix caching, preemption) and its step-time tables, run in wall-clock
time: one simulated second lasts ``1 / time_scale`` wall seconds. Page:
``docs/sim-server.md``.

Programmatic use (tests of other parts start servers this way)::

    async with SimServer(model="m", time_scale=10.0) as srv:  # on the caller's loop
        srv.url          # http://127.0.0.1:<port 0>  (OpenAI base: srv.url + "/v1")
        srv.metrics_url  # srv.url + "/metrics"

    srv = SimServer(model="m", kv_events_port=0)  # on a daemon thread, for sync tests
    url = srv.start_in_thread()
    srv.kv_events_address  # tcp://127.0.0.1:<port>, dial it with a KVEventSubscriber
    srv.stop()             # closes the port, cuts open requests (a killed server)

How a request runs. Its body is turned into token ids by llm-d-router's ``estimate``
scheme (request bytes packed four per uint32: :mod:`inference_sched.tokenize.estimate`,
the ids our ``token-producer`` computes by default, so KV events line up with a precise
prefix index fed by that producer); the ids' 16-token blocks get prefix-consistent ids
(chained xxh64, :func:`~inference_sched.prefix.hashing.token_block_hashes`), which key
the engine's prefix cache. The request is submitted at "now" and the engine is advanced
as wall time passes: every step the engine commits emits one token for each request it
decoded (an SSE chunk when streaming). ``usage.prompt_tokens`` is the id count,
``completion_tokens`` is ``max_tokens`` (or the default): the engine stops at exactly
that many, as with ``ignore_eos``. The text is deterministic filler. A client that
disconnects aborts its request, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
from aiohttp import web

from inference_sched.errors import DataError
from inference_sched.prefix.hashing import request_seed, token_block_hashes
from inference_sched.prefix.prompt_bytes import go_json_marshal, prompt_bytes
from inference_sched.sim import latency
from inference_sched.sim.engine import Server
from inference_sched.sim.exposition import CONTENT_TYPE, render_vllm
from inference_sched.sim.prompts import ID_MASK
from inference_sched.sim.types import (
    SIM_BLOCK_TOKENS,
    EngineConfig,
    EngineEvent,
    EventKind,
    SimRequest,
    StepTimeModel,
)
from inference_sched.tokenize.estimate import Estimator, ImageEstimate, VideoEstimate

__all__ = ["DEFAULT_MAX_TOKENS", "SimServer", "filler_text"]

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS: Final = 16
"""Output length of a request without ``max_tokens`` (OpenAI's completions default)."""

_FILLER: Final = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog.")
_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
_CONTROL_TIMEOUT_S: Final = 10.0
_PATH: Final = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")
_ENGINE: Final = EngineConfig()  # the engine's defaults (vLLM's on an H100)


def filler_text(start: int, count: int) -> str:
    """The generated text of tokens ``[start, start + count)``: one filler word each."""
    return "".join(_FILLER[i % len(_FILLER)] for i in range(start, start + count))


# =========================================================================== engine
class _LiveEngine(Server):
    """The simulator's engine with the two things a live server needs: a callback per
    committed step (which requests got a token) and aborting a request.

    Both read the engine's per-request state, so they live next to it in the ``sim``
    package; every decode step is simulated alone (``fast_forward`` off) so each one is
    a token boundary a stream can see.
    """

    fast_forward = False

    def __init__(
        self,
        name: str,
        config: EngineConfig,
        step_time: StepTimeModel,
        *,
        on_step: Callable[[float, list[int]], None],
        kv_events: Callable[[str, object], None] | None,
        token_ids_of: Callable[[int], Sequence[int]],
    ) -> None:
        super().__init__(name, config, step_time, kv_events=kv_events, token_ids_of=token_ids_of)
        self._on_step = on_step

    def _commit_step(self) -> None:
        end = self._next_end
        # Tokens of this step: every decode, and every prefill it completes (a first
        # token, or the next token of a request re-prefilled after a preemption).
        produced = [r.id for r in self._dec.values()]
        produced.extend(r.id for r, n, _ in self._pre if r.computed + n >= r.prompt + r.generated)
        super()._commit_step()
        self._on_step(end, produced)

    def abort(self, request_id: int) -> bool:
        """Drop ``request_id`` wherever it is and free its KV blocks (they stay cached);
        False when the engine does not hold it. Call after ``advance(now)``: a step is
        then planned whenever a request runs."""
        for r in self._waiting:
            if r.id == request_id:
                self._waiting.remove(r)  # waiting requests hold no blocks
                if r.lora is not None:
                    left = self._lora_waiting[r.lora] - 1
                    if left:
                        self._lora_waiting[r.lora] = left
                    else:
                        del self._lora_waiting[r.lora]
                return True
        for r in self._dec.values():
            if r.id == request_id:
                self._dec_remove(r)
                # The planned step already took a block for this request's next token
                # when that token starts one: free it too.
                r.nblocks = -(-(r.computed + 1) // self._bs)
                self._release(r)
                return True
        for i, (r, _, _) in enumerate(self._pre):
            if r.id == request_id:
                del self._pre[i]  # its chunk's blocks were taken and registered at planning
                self._release(r)
                return True
        tail = self._tail
        if tail is not None and tail.id == request_id:
            self._tail = None
            self._release(tail)
            return True
        return False

    def reset_prefix_cache(self) -> bool:
        """vLLM's ``reset_prefix_cache`` (``AllBlocksCleared``); False while blocks are used."""
        return self._kv.reset()


# =========================================================================== requests
class _BadRequest(Exception):
    """A request the server refuses: HTTP ``status``, the field, a message naming it."""

    def __init__(self, message: str, param: str | None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class _Spec(NamedTuple):
    """A parsed request."""

    chat: bool
    model: str
    lora: str | None
    token_ids: npt.NDArray[np.uint32]
    max_tokens: int
    stream: bool
    include_usage: bool
    cache_salt: str


class _Live:
    """A request in flight: tokens produced so far and how it ended."""

    __slots__ = ("blocks", "cached_tokens", "changed", "generated", "id", "output", "state")

    def __init__(self, request_id: int, output: int, blocks: list[int]) -> None:
        self.id = request_id
        self.output = output
        self.blocks = blocks
        """Ids of its full 16-token blocks (for the token map)."""
        self.generated = 0
        self.cached_tokens = 0
        self.state = "running"
        """running, finished, rejected, aborted or failed."""
        self.changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.state != "running"


def _expect(ok: bool, field: str, expectation: str, value: Any) -> None:
    """Refuse the request unless ``ok``: ``field: expected ..., got value (type)``."""
    if not ok:
        got = f"{value!r}"[:80]
        raise _BadRequest(
            f"{field}: expected {expectation}, got {got} ({type(value).__name__})", field
        )


def _optional_int(body: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    ok = value is None or (type(value) is int and value >= minimum)  # a bool is no count
    _expect(ok, key, f"an integer >= {minimum}", value)
    return value


def _optional_bool(body: Mapping[str, Any], key: str, path: str = "") -> bool:
    value = body.get(key)
    _expect(value is None or isinstance(value, bool), path or key, "a boolean", value)
    return bool(value)


# =========================================================================== server
class SimServer:
    """One simulated model server: OpenAI API, ``/metrics`` and KV events.

    Args:
        model: the served model name (``/v1/models``, ``model_name`` label, KV topic).
        host: interface to listen on (and to bind the KV-event port on).
        port: HTTP port; 0 lets the OS choose (:attr:`port` after start).
        name: the server's name in logs and the ``x-sim-server`` response header
            (default ``host:port``).
        loras: LoRA adapters served besides ``model`` (requests name them as ``model``).
        max_num_seqs: most running requests (vLLM ``--max-num-seqs``).
        max_num_batched_tokens: token budget per step.
        kv_blocks: KV cache capacity in blocks (vLLM ``num_gpu_blocks``).
        block_size: KV block size, a multiple of 16.
        max_loras: resident adapters.
        max_model_len: longest prompt + output accepted (default ``kv_blocks * block_size``).
        latency_model: step-time model (:data:`inference_sched.sim.latency.MODELS`);
            default :func:`~inference_sched.sim.latency.for_model` of ``model``.
        time_scale: simulated seconds per wall second (10: every step 10x shorter).
        default_max_tokens: output length of a request without ``max_tokens``.
        force_include_usage: send ``usage`` in every stream (vLLM
            ``--enable-force-include-usage``), not only when ``stream_options`` asks.
        kv_events_port: bind the KV-event PUB socket on ``host`` at this port (0: any
            free port); None with ``kv_events_endpoint`` None: no KV events.
        kv_events_endpoint: vLLM's ``endpoint`` instead: bound if it holds ``*``, ``::``,
            ``ipc://`` or ``inproc://``, else connected (a scheduler's ``zmqEndpoint``).
        kv_replay_port: also bind vLLM's replay ROUTER socket on ``host`` (0: any port).
        kv_topic: topic of every message (default llm-d's ``kv@<host>:<port>@<model>``).
        max_body_bytes: larger request bodies are answered 413.
    """

    def __init__(
        self,
        *,
        model: str = "sim-model",
        host: str = "127.0.0.1",
        port: int = 0,
        name: str | None = None,
        loras: Sequence[str] = (),
        max_num_seqs: int = _ENGINE.max_num_seqs,
        max_num_batched_tokens: int = _ENGINE.max_num_batched_tokens,
        kv_blocks: int = _ENGINE.num_gpu_blocks,
        block_size: int = _ENGINE.block_size,
        max_loras: int = _ENGINE.max_loras,
        max_model_len: int | None = None,
        latency_model: str | None = None,
        time_scale: float = 1.0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        force_include_usage: bool = False,
        kv_events_port: int | None = None,
        kv_events_endpoint: str | None = None,
        kv_replay_port: int | None = None,
        kv_topic: str | None = None,
        max_body_bytes: int = _MAX_BODY_BYTES,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale: expected a finite number > 0, got {time_scale!r}")
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens: expected >= 1, got {default_max_tokens}")
        if kv_events_port is not None and kv_events_endpoint is not None:
            raise ValueError("give kv_events_port or kv_events_endpoint, not both")
        if kv_blocks < 1:
            raise ValueError(f"kv_blocks: expected >= 1, got {kv_blocks}")
        if block_size < SIM_BLOCK_TOKENS or block_size % SIM_BLOCK_TOKENS:
            raise ValueError(f"block_size: expected a multiple of 16, got {block_size}")
        if not 1 <= max_num_seqs <= max_num_batched_tokens:
            # vLLM refuses this too: every running request needs its token each step.
            raise ValueError(
                "max_num_seqs: expected 1 <= max_num_seqs <= max_num_batched_tokens, got "
                f"{max_num_seqs} and {max_num_batched_tokens}"
            )
        self.model = model
        self.host = host
        self.loras = tuple(loras)
        self.time_scale = float(time_scale)
        self.default_max_tokens = default_max_tokens
        self.force_include_usage = force_include_usage
        self.max_body_bytes = max_body_bytes
        self.config = EngineConfig(
            latency_model=latency_model or latency.for_model(model),
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            block_size=block_size,
            num_gpu_blocks=kv_blocks,
            max_loras=max_loras,
        )
        self.max_model_len = max_model_len if max_model_len is not None else kv_blocks * block_size
        self._step_time = latency.load(self.config.latency_model)
        self._port_wanted = port
        self._name_wanted = name
        self._kv_wanted = (kv_events_port, kv_events_endpoint, kv_replay_port, kv_topic)
        self.stats: collections.Counter[str] = collections.Counter()
        """Requests by outcome: ``completed``, ``aborted``, ``rejected``, ``bad_request``;
        and ``preemptions``, ``kv_batches``."""
        self.port = 0
        self.name = name or ""
        self.kv_events_address: str | None = None
        """Where the KV-event socket is bound (dial it) or connected; None: no events."""
        self.kv_replay_address: str | None = None
        self.kv_topic = ""
        # token-producer's default estimate backend (plugins/tokens.py make_estimator(None)).
        self._estimator = Estimator(
            ImageEstimate(), VideoEstimate(), marshal=go_json_marshal, gie_bytes=prompt_bytes
        )
        self._engine: _LiveEngine | None = None
        self._live: dict[int, _Live] = {}
        self._next_id = 0
        self._tokens_of: dict[int, tuple[list[int], int]] = {}
        self._kv_pending: list[object] = []
        self._publisher: Any = None
        self._runner: web.AppRunner | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._t0 = 0.0
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._transports: set[asyncio.Transport] = set()
        self._grace_s = 0.0

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """``http://host:port`` (the OpenAI base URL is this plus ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    async def start(self, *, grace_s: float = 0.0) -> None:
        """Listen, start the engine clock and the KV publisher on the running loop.

        Args:
            grace_s: on :meth:`aclose`, how long open requests may finish before they
                are cut (0: at once, like a killed process).
        """
        self._grace_s = max(0.0, grace_s)
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/completions", functools.partial(self._generate, chat=False))
        app.router.add_post("/v1/chat/completions", functools.partial(self._generate, chat=True))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        # handler_cancellation: a client that goes away cancels its handler, which aborts
        # the request in the engine (the point of a disconnect).
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=grace_s
        )
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.host, self._port_wanted)
            await site.start()
            self.port = int(runner.addresses[0][1])  # the port the OS chose for port 0
            self.name = self._name_wanted or f"{self.host}:{self.port}"
            self._open_kv_publisher()
            self._wake = asyncio.Event()
            self._engine = _LiveEngine(
                self.name,
                self.config,
                self._step_time,
                on_step=self._on_step,
                kv_events=self._on_kv_event if self._publisher is not None else None,
                token_ids_of=self._token_ids,
            )
            # Load the hashing kernel now, not in the first request's latency.
            token_block_hashes(np.zeros(SIM_BLOCK_TOKENS, np.uint32), SIM_BLOCK_TOKENS, 0, 1)
            self._t0 = time.monotonic()
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        except BaseException:
            await self.aclose()
            raise
        log.info("sim-server %s: %s serving %r", self.name, self.url, self.model)

    def _open_kv_publisher(self) -> None:
        port, endpoint, replay_port, topic = self._kv_wanted
        if port is None and endpoint is None:
            return
        from inference_sched.sim.server_kv import SimKvPublisher

        self.kv_topic = topic or f"kv@{self.host}:{self.port}@{self.model}"
        host = "*" if self.host in ("0.0.0.0", "") else self.host
        address = endpoint if endpoint is not None else f"tcp://{host}:{port or '*'}"
        replay = None if replay_port is None else f"tcp://{host}:{replay_port or '*'}"
        self._publisher = publisher = SimKvPublisher(
            address, self.kv_topic, bind=True if endpoint is None else None, replay_address=replay
        )
        publisher.start()
        self.kv_events_address = publisher.address
        self.kv_replay_address = publisher.replay_address

    async def aclose(self) -> None:
        """Stop serving: close the port, give open requests ``grace_s`` to finish, cut
        the rest (their clients see the connection drop), close every socket."""
        runner, self._runner = self._runner, None
        if runner is not None:
            for site in list(runner.sites):
                await site.stop()  # no new connections from here on
            deadline = time.monotonic() + self._grace_s
            while self._live and self._driver is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # aiohttp's shutdown leaves a waiting handler's connection open: cut them here.
            for transport in list(self._transports):
                transport.abort()
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
        if runner is not None:
            await runner.cleanup()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.aclose()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start_in_thread(self, timeout_s: float = _CONTROL_TIMEOUT_S) -> str:
        """Serve from a new event loop on a daemon thread; returns :attr:`url` once it
        listens. :meth:`stop` ends it.

        Raises:
            RuntimeError: already started, or not listening within ``timeout_s``.
            Exception: whatever :meth:`start` raised on the thread.
        """
        if self._thread is not None:
            raise RuntimeError(f"sim-server {self.name}: already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._thread_stop.wait()
            finally:
                await self.aclose()

        self._thread = threading.Thread(
            target=asyncio.run, args=(main(),), name="sim-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError(f"sim-server: not listening after {timeout_s} s")
        if failure:
            self._thread.join(timeout_s)
            self._thread = None
            raise failure[0]
        return self.url

    def stop(self, timeout_s: float = _CONTROL_TIMEOUT_S) -> None:
        """End :meth:`start_in_thread`'s server: close the port and open connections,
        then join the thread (idempotent)."""
        thread, loop, stop = self._thread, self._thread_loop, self._thread_stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"sim-server {self.name}: thread did not stop in {timeout_s} s")
        self._thread = None

    # ------------------------------------------------------------------ the clock
    def _now(self) -> float:
        """Simulated time: wall seconds since start times ``time_scale``."""
        return (time.monotonic() - self._t0) * self.time_scale

    def _sync(self) -> float:
        """Advance the engine to now and deliver what happened; returns now."""
        engine = self._engine
        assert engine is not None, "sim-server not started"
        now = self._now()
        self._dispatch(engine.advance(now))
        self._flush_kv()
        return now

    async def _drive(self) -> None:
        """Commit engine steps as their end times pass in wall time."""
        engine, wake = self._engine, self._wake
        assert engine is not None
        assert wake is not None
        try:
            while True:
                self._sync()
                wake.clear()
                due = engine.next_event_s()
                if due == math.inf:
                    await wake.wait()
                    continue
                delay = (due - self._now()) / self.time_scale
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            # An engine bug must not leave clients waiting for ever.
            log.exception("sim-server %s: engine failed; failing open requests", self.name)
            for live in list(self._live.values()):
                self._end(live, "failed")
            raise

    def _on_step(self, end_s: float, produced: list[int]) -> None:
        live_of = self._live
        for request_id in produced:
            live = live_of.get(request_id)
            if live is not None and live.generated < live.output:
                live.generated += 1
                live.changed.set()
        self._flush_kv()  # one batch per step, as vLLM publishes

    def _dispatch(self, events: list[EngineEvent]) -> None:
        for event in events:
            live = self._live.get(event.request_id)
            if event.kind == EventKind.PREEMPTED:
                self.stats["preemptions"] += 1
            elif live is None:
                continue
            elif event.kind == EventKind.FINISHED:
                assert event.finished is not None
                live.cached_tokens = event.finished.cached_tokens
                live.generated = live.output
                self._end(live, "finished")
            elif event.kind == EventKind.REJECTED:
                self._end(live, "rejected")

    def _end(self, live: _Live, state: str) -> None:
        live.state = state
        live.changed.set()
        self._live.pop(live.id, None)
        tokens_of = self._tokens_of
        for block_id in live.blocks:
            ids, count = tokens_of[block_id]
            if count > 1:
                tokens_of[block_id] = (ids, count - 1)
            else:
                del tokens_of[block_id]

    # ------------------------------------------------------------------ KV events
    def _token_ids(self, block_id: int) -> Sequence[int]:
        return self._tokens_of[block_id][0]

    def _on_kv_event(self, _server: str, event: object) -> None:
        self._kv_pending.append(event)

    def _flush_kv(self) -> None:
        if self._kv_pending and self._publisher is not None:
            events, self._kv_pending = self._kv_pending, []
            self._publisher.publish(events, time.time())
            self.stats["kv_batches"] += 1

    # ------------------------------------------------------------------ requests
    def _submit(self, spec: _Spec) -> _Live:
        """Hand a parsed request to the engine at now."""
        engine, wake = self._engine, self._wake
        assert engine is not None
        assert wake is not None
        ids = spec.token_ids
        root = spec.lora or self.model
        # Prefix-consistent block ids: chained hashes, masked to the sim's 63 bits.
        hashes = token_block_hashes(
            ids, SIM_BLOCK_TOKENS, request_seed(root, spec.cache_salt), 1 << 40
        )
        blocks = (hashes & np.uint64(ID_MASK)).astype(np.int64)
        num_full = ids.shape[0] // SIM_BLOCK_TOKENS
        full_ids: list[int] = blocks[:num_full].tolist()
        rows = ids[: num_full * SIM_BLOCK_TOKENS].reshape(num_full, SIM_BLOCK_TOKENS).tolist()
        tokens_of = self._tokens_of
        for block_id, row in zip(full_ids, rows, strict=True):
            held = tokens_of.get(block_id)
            tokens_of[block_id] = (row, 1) if held is None else (held[0], held[1] + 1)
        request_id = self._next_id
        self._next_id += 1
        live = _Live(request_id, spec.max_tokens, full_ids)
        self._live[request_id] = live
        now = self._sync()
        engine.submit(
            SimRequest(request_id, now, int(ids.shape[0]), spec.max_tokens, blocks, spec.lora),
            now,
        )
        self._sync()  # a rejection is reported at once
        wake.set()
        return live

    def _abort(self, live: _Live) -> None:
        if live.done:
            return
        self._sync()
        if live.id not in self._live:  # it ended while the engine caught up
            return
        engine, wake = self._engine, self._wake
        assert engine is not None
        assert wake is not None
        engine.abort(live.id)
        self._end(live, "aborted")
        self.stats["aborted"] += 1
        self._flush_kv()
        wake.set()

    def _parse(self, body: Any, *, chat: bool) -> _Spec:
        if not isinstance(body, dict):
            raise _BadRequest(f"body: expected a JSON object, got {type(body).__name__}", None)
        model = body.get("model", self.model)
        _expect(isinstance(model, str), "model", "a string", model)
        if model != self.model and model not in self.loras:
            raise _BadRequest(f"The model `{model}` does not exist.", "model", 404)
        stream = _optional_bool(body, "stream")
        options = body.get("stream_options")
        _expect(
            options is None or isinstance(options, dict), "stream_options", "an object", options
        )
        if options is not None and not stream:
            raise _BadRequest("stream_options: only allowed when stream is true", "stream_options")
        include_usage = _optional_bool(
            options or {}, "include_usage", "stream_options.include_usage"
        )
        n = _optional_int(body, "n", 1)
        if n not in (None, 1):
            raise _BadRequest(f"n: only 1 choice is simulated, got {n}", "n")
        limit_key = (
            "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        )
        max_tokens = _optional_int(body, limit_key, 1)
        salt = body.get("cache_salt", "")
        _expect(isinstance(salt, str), "cache_salt", "a string", salt)
        messages = body.get("messages") if chat else None
        for i, message in enumerate(messages if isinstance(messages, list) else ()):
            # vLLM requires a role; the estimate scheme alone would read none as "".
            if isinstance(message, dict):
                role = message.get("role")
                _expect(isinstance(role, str), f"messages[{i}].role", "a string", role)
        prompt = None if chat else body.get("prompt")
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
            raise _BadRequest(
                f"prompt: one prompt per request is simulated, got {len(prompt)}", "prompt"
            )
        try:
            estimate = self._estimator.estimate(
                body, {}, api="chat/completions" if chat else "completions"
            )
        except DataError as exc:
            text = str(exc)
            match = _PATH.match(text)
            raise _BadRequest(text, match.group(1) if match else None) from None
        token_ids = np.concatenate(estimate.prompts) if estimate.prompts else np.zeros(0, np.uint32)
        num_prompt = int(token_ids.shape[0])
        if num_prompt == 0:
            raise _BadRequest(
                "messages: the prompt is empty" if chat else "prompt: the prompt is empty",
                "messages" if chat else "prompt",
            )
        output = max_tokens if max_tokens is not None else self.default_max_tokens
        if num_prompt + output > self.max_model_len:
            raise _BadRequest(
                f"{limit_key}: this model's maximum context length is {self.max_model_len} "
                f"tokens, but {num_prompt + output} were requested ({num_prompt} in the "
                f"prompt, {output} to generate); shorten the prompt or lower {limit_key}",
                limit_key,
            )
        return _Spec(
            chat,
            model,
            model if model != self.model else None,
            token_ids,
            output,
            stream,
            include_usage or (stream and self.force_include_usage),
            salt,
        )

    # ------------------------------------------------------------------ HTTP
    def _error(self, message: str, param: str | None, status: int) -> web.Response:
        kind = {404: "NotFoundError", 413: "RequestEntityTooLarge"}.get(status, "BadRequestError")
        if status >= 500:
            kind = "InternalServerError"
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return web.json_response(body, status=status, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        return {"x-sim-server": self.name}

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.stats["bad_request"] += 1
            return self._error(f"body: larger than {self.max_body_bytes} bytes", None, 413)
        try:
            spec = self._parse(json.loads(raw), chat=chat)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.stats["bad_request"] += 1
            return self._error(f"body: invalid JSON: {exc}", None, 400)
        except _BadRequest as exc:
            self.stats["bad_request"] += 1
            return self._error(str(exc), exc.param, exc.status)
        live = self._submit(spec)
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        try:
            if live.state == "rejected":
                self.stats["rejected"] += 1
                return self._error(
                    f"max_tokens: the request ({spec.token_ids.shape[0]} prompt + "
                    f"{spec.max_tokens} output tokens) can never fit this server's KV cache",
                    "max_tokens",
                    400,
                )
            if spec.stream:
                try:
                    return await self._stream(request, spec, live)
                except ConnectionResetError:  # the client left mid-stream
                    return web.Response(status=499)
            while not live.done:
                live.changed.clear()
                if not live.done:
                    await live.changed.wait()
            if live.state != "finished":
                return self._error(f"request {live.state}", None, 500)
            self.stats["completed"] += 1
            return web.json_response(self._full_body(spec, live), headers=self._headers())
        finally:
            # Cancelled (client gone) or failed: free the engine's blocks now.
            self._transports.discard(transport)
            self._abort(live)

    def _usage(self, spec: _Spec, live: _Live) -> dict[str, Any]:
        prompt = int(spec.token_ids.shape[0])
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + spec.max_tokens,
            "completion_tokens": spec.max_tokens,
            "prompt_tokens_details": {"cached_tokens": live.cached_tokens},
        }

    def _full_body(self, spec: _Spec, live: _Live) -> dict[str, Any]:
        text = filler_text(0, spec.max_tokens)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if spec.chat
            else {"index": 0, "text": text}
        )
        choice.update(logprobs=None, finish_reason="length", stop_reason=None)
        return {
            "id": f"{'chatcmpl' if spec.chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if spec.chat else "text_completion",
            "created": int(time.time()),
            "model": spec.model,
            "choices": [choice],
            "usage": self._usage(spec, live),
        }

    async def _stream(self, request: web.Request, spec: _Spec, live: _Live) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **self._headers(),
            }
        )
        await response.prepare(request)
        head: dict[str, Any] = {
            "id": f"{'chatcmpl' if spec.chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if spec.chat else "text_completion",
            "created": int(time.time()),
            "model": spec.model,
        }
        usage_null: dict[str, Any] = {"usage": None} if spec.include_usage else {}

        def chunk(choice: dict[str, Any]) -> bytes:
            return _sse({**head, "choices": [choice], **usage_null})

        write: Callable[[bytes], Awaitable[None]] = response.write
        if spec.chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            await write(chunk({**first, "logprobs": None, "finish_reason": None}))
        sent = 0
        while True:
            live.changed.clear()
            ready = live.generated
            if ready > sent:
                out = bytearray()
                for i in range(sent, ready):
                    finish = "length" if i + 1 == spec.max_tokens else None
                    text = filler_text(i, 1)
                    piece = {"delta": {"content": text}} if spec.chat else {"text": text}
                    out += chunk({"index": 0, **piece, "logprobs": None, "finish_reason": finish})
                sent = ready
                await write(bytes(out))
            if live.done and sent >= live.generated:
                break
            if not live.changed.is_set():
                await live.changed.wait()
        if live.state != "finished":
            # Headers are gone: cut the stream so the client sees it failed.
            assert request.transport is not None
            request.transport.close()
            return response
        self.stats["completed"] += 1
        if spec.include_usage:
            await write(_sse({**head, "choices": [], "usage": self._usage(spec, live)}))
        await write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.StreamResponse:
        created = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "inference-sched",
                "root": self.model,
                "parent": None if name == self.model else self.model,
                "max_model_len": self.max_model_len,
            }
            for name in (self.model, *self.loras)
        ]
        return web.json_response({"object": "list", "data": data}, headers=self._headers())

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        engine = self._engine
        assert engine is not None
        now = self._sync()
        text = render_vllm(engine.metrics(now), model=self.model, now_s=time.time())
        return web.Response(
            body=text.encode(), headers={"Content-Type": CONTENT_TYPE, **self._headers()}
        )

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, headers=self._headers())

    async def _reset_prefix_cache(self, request: web.Request) -> web.StreamResponse:
        engine = self._engine
        assert engine is not None
        self._sync()
        if not engine.reset_prefix_cache():
            return self._error("KV blocks are in use: the prefix cache cannot be reset", None, 409)
        self._flush_kv()
        return web.json_response({"reset": True}, headers=self._headers())


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
