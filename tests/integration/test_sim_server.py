"""``inference-sched sim-server`` on loopback with real clients: the OpenAI API (the
``openai`` client and raw HTTP), ``/metrics`` read by our own extractor while requests are
in flight, KV events read by our subscriber, client disconnects, and bad bodies.

Every wait polls a condition under a deadline. The in-flight checks run the clock at
``time_scale=1e-4`` (a simulated 10 ms step lasts 100 s of wall time), so the state they
assert cannot move under them however loaded the machine is; the others run it fast.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")
zmq = pytest.importorskip("zmq")
pytest.importorskip("msgpack")

from inference_sched.cli import sim_server as sim_server_cli  # noqa: E402
from inference_sched.datalayer.parse import extract  # noqa: E402
from inference_sched.prefix.hashing import request_seed, token_block_hashes  # noqa: E402
from inference_sched.prefix.precise.subscriber import KVEventSubscriber  # noqa: E402
from inference_sched.prefix.precise.wire import (  # noqa: E402
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
)
from inference_sched.sim.prompts import ID_MASK  # noqa: E402
from inference_sched.sim.server import SimServer, _LiveEngine, filler_text  # noqa: E402
from inference_sched.sim.types import EngineConfig, EventKind, SimRequest  # noqa: E402
from inference_sched.tokenize.estimate import pack_bytes  # noqa: E402

MODEL = "sim/llama"
DEADLINE_S = 10.0
FAST = 200.0  # time scale: a 20-token request takes a few ms of wall time
FROZEN = 1e-4  # time scale: the first step outlasts the test


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.005)


def prompt_of(tag: int, num_tokens: int = 64) -> str:
    """An ASCII prompt of exactly ``num_tokens`` estimate tokens (4 bytes each)."""
    head = f"p{tag:05d}-"
    return head + "x" * (4 * num_tokens - len(head))


def expected_blocks(prompt: str, model: str = MODEL) -> npt.NDArray[np.uint64]:
    """Engine block hashes of a prompt's full blocks: chained xxh64, masked to 63 bits."""
    ids = pack_bytes(prompt.encode())
    full = ids.shape[0] // 16
    hashes = token_block_hashes(ids, 16, request_seed(model), full)
    return hashes & np.uint64(ID_MASK)


@pytest.fixture(scope="module")
def fast_server() -> Iterator[SimServer]:
    server = SimServer(model=MODEL, time_scale=FAST, loras=("sql-lora",), kv_blocks=512)
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def client(fast_server: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fast_server.url, timeout=DEADLINE_S) as c:
        yield c


# ============================================================ OpenAI API, real client
def test_completion_with_the_openai_client(fast_server: SimServer) -> None:
    oa = openai.OpenAI(base_url=fast_server.url + "/v1", api_key="unused", max_retries=0)
    result = oa.completions.create(model=MODEL, prompt=prompt_of(1), max_tokens=7)
    assert result.object == "text_completion"
    assert result.model == MODEL
    assert result.choices[0].text == " The quick brown fox jumps over the"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (64, 7)
    assert result.usage.total_tokens == 71


def test_chat_streaming_with_usage_with_the_openai_client(fast_server: SimServer) -> None:
    oa = openai.OpenAI(base_url=fast_server.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    stream = oa.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    # role chunk, 12 token chunks, usage chunk
    assert len(chunks) == 14
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == filler_text(0, 12)
    assert [c.choices[0].finish_reason for c in chunks[1:-1]] == [None] * 11 + ["length"]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    # "systembe briefuserhello there" = 29 bytes -> 8 tokens (the tail zero-padded)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 12, 20)


def test_chat_non_streaming_and_lora_model(fast_server: SimServer) -> None:
    oa = openai.OpenAI(base_url=fast_server.url + "/v1", api_key="unused", max_retries=0)
    result = oa.chat.completions.create(
        model="sql-lora",
        messages=[{"role": "user", "content": "abcd" * 20}],
        max_completion_tokens=3,
    )
    assert result.model == "sql-lora"
    assert result.choices[0].message.content == " The quick brown"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (21, 3)


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_completion_stream_without_usage(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": prompt_of(2, 20), "max_tokens": 4, "stream": True}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["choices"][0]["text"] for c in chunks] == [" The", " quick", " brown", " fox"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "text_completion" for c in chunks)


def test_force_include_usage() -> None:
    server = SimServer(model=MODEL, time_scale=FAST, force_include_usage=True)
    server.start_in_thread()
    try:
        body = {"prompt": [1, 2, 3, 4, 5], "max_tokens": 2, "stream": True}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=DEADLINE_S)
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"] == []
        assert events[-2]["usage"]["prompt_tokens"] == 5  # token ids pass through
        assert events[-2]["usage"]["completion_tokens"] == 2
    finally:
        server.stop()


def test_default_max_tokens_and_prefix_hits(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": prompt_of(3, 48)}
    first = client.post("/v1/completions", json=body).json()
    second = client.post("/v1/completions", json=body).json()
    assert first["usage"]["completion_tokens"] == 16
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # 48 tokens seen before: the engine recomputes at least the last one (vLLM's cap),
    # so 2 of the 3 blocks hit.
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 32


def test_models(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["parent"]) for m in body["data"]] == [
        (MODEL, None),
        ("sql-lora", MODEL),
    ]
    assert body["data"][0]["max_model_len"] == 512 * 16


# ============================================================ bad input
BAD_BODIES = [
    ("completions", b"{not json", 400, None),
    ("completions", b"[1, 2]", 400, None),
    ("completions", json.dumps({"model": 3, "prompt": "a"}).encode(), 400, "model"),
    ("completions", json.dumps({"model": "nope", "prompt": "a"}).encode(), 404, "model"),
    ("completions", json.dumps({"model": MODEL}).encode(), 400, "prompt"),
    ("completions", json.dumps({"prompt": 5}).encode(), 400, "prompt"),
    ("completions", json.dumps({"prompt": ""}).encode(), 400, "prompt"),
    ("completions", json.dumps({"prompt": ["a", "b"]}).encode(), 400, "prompt"),
    ("completions", json.dumps({"prompt": [1, -2]}).encode(), 400, "prompt[1]"),
    ("completions", json.dumps({"prompt": "a", "max_tokens": 0}).encode(), 400, "max_tokens"),
    ("completions", json.dumps({"prompt": "a", "max_tokens": "5"}).encode(), 400, "max_tokens"),
    ("completions", json.dumps({"prompt": "a", "max_tokens": True}).encode(), 400, "max_tokens"),
    ("completions", json.dumps({"prompt": "a", "stream": "yes"}).encode(), 400, "stream"),
    (
        "completions",
        json.dumps({"prompt": "a", "stream_options": {"include_usage": True}}).encode(),
        400,
        "stream_options",
    ),
    (
        "completions",
        json.dumps(
            {"prompt": "a", "stream": True, "stream_options": {"include_usage": 1}}
        ).encode(),
        400,
        "stream_options.include_usage",
    ),
    ("completions", json.dumps({"prompt": "a", "n": 2}).encode(), 400, "n"),
    ("completions", json.dumps({"prompt": "a", "cache_salt": 7}).encode(), 400, "cache_salt"),
    (
        "completions",
        json.dumps({"prompt": "a", "max_tokens": 512 * 16}).encode(),
        400,
        "max_tokens",
    ),
    ("chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
    ("chat/completions", json.dumps({"messages": ["hi"]}).encode(), 400, "messages[0]"),
    (
        "chat/completions",
        json.dumps({"messages": [{"content": "hi"}]}).encode(),
        400,
        "messages[0].role",
    ),
    (
        "chat/completions",
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        400,
        "messages[0].content",
    ),
    (
        "chat/completions",
        json.dumps(
            {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}
        ).encode(),
        400,
        "max_completion_tokens",
    ),
]


@pytest.mark.parametrize(
    ("api", "raw", "status", "param"),
    BAD_BODIES,
    ids=[f"{i}-{case[3]}" for i, case in enumerate(BAD_BODIES)],
)
def test_bad_bodies_answer_json_errors_naming_the_field(
    client: httpx.Client, api: str, raw: bytes, status: int, param: str | None
) -> None:
    r = client.post(f"/v1/{api}", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == status
    assert error["param"] == param
    if status == 404:
        assert error["message"] == "The model `nope` does not exist."
    elif param is not None:
        assert error["message"].startswith(f"{param}: ")
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


def test_body_over_the_limit_is_413() -> None:
    server = SimServer(model=MODEL, time_scale=FAST, max_body_bytes=1024)
    server.start_in_thread()
    try:
        r = httpx.post(
            server.url + "/v1/completions", json={"prompt": "x" * 2000}, timeout=DEADLINE_S
        )
        assert r.status_code == 413
        assert r.json()["error"]["message"] == "body: larger than 1024 bytes"
    finally:
        server.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([MODEL, "sql-lora", "other"]) | json_values,
        "prompt": st.text(max_size=40) | st.lists(st.integers(-1, 2**33), max_size=5) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": st.sampled_from(["user", "system"]) | json_values,
                    "content": st.text(max_size=20) | json_values,
                },
            ),
            max_size=3,
        )
        | json_values,
        "max_tokens": st.integers(-1, 6) | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": json_values}) | json_values,
        "n": st.integers(0, 2),
        "cache_salt": st.text(max_size=4) | json_values,
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(api=st.sampled_from(["completions", "chat/completions"]), body=bodies)
def test_any_body_gets_an_answer_never_a_crash(
    client: httpx.Client, api: str, body: dict[str, Any]
) -> None:
    r = client.post(f"/v1/{api}", json=body)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        error = r.json()["error"]
        assert error["code"] == r.status_code
        assert isinstance(error["message"], str)
        assert error["message"]
    elif body.get("stream") is True:
        assert r.text.endswith("data: [DONE]\n\n")
    else:
        usage = r.json()["usage"]
        asked = body.get("max_tokens")
        assert usage["completion_tokens"] == (16 if asked is None else asked)


# ============================================================ /metrics while in flight
async def _post_raw(port: int, path: str, body: dict[str, Any]) -> asyncio.StreamWriter:
    """Send a request and keep the connection open; the caller closes it (a disconnect)."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    await writer.drain()
    return writer


async def _wait_async(condition: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + DEADLINE_S
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        await asyncio.sleep(0.005)


def test_metrics_in_flight_and_disconnects_free_the_requests() -> None:
    asyncio.run(_in_flight())


async def _in_flight() -> None:
    srv = SimServer(model=MODEL, time_scale=FROZEN, kv_blocks=100, max_num_seqs=2)
    async with srv, httpx.AsyncClient(base_url=srv.url, timeout=DEADLINE_S) as http:

        async def sample() -> Any:
            r = await http.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            return extract(r.text, "vllm", endpoint=srv.name, full=True)

        async def load_is(running: int, waiting: int) -> bool:
            s = await sample()
            return (s.running, s.waiting) == (running, waiting)

        first = await _post_raw(
            srv.port, "/v1/completions", {"prompt": prompt_of(10), "max_tokens": 50}
        )
        await _wait_async(lambda: load_is(1, 0), "the first request running")
        # The first step (its 64-token prefill) lasts ~100 s of wall time: the next
        # two wait for its end, whatever max_num_seqs allows.
        others = [
            await _post_raw(
                srv.port,
                "/v1/chat/completions",
                {
                    "messages": [{"role": "user", "content": prompt_of(11 + i)}],
                    "stream": stream,
                },
            )
            for i, stream in enumerate((True, False))
        ]
        await _wait_async(lambda: load_is(1, 2), "two requests waiting")
        s = await sample()
        assert s.kv_usage_frac == 4 / 100  # 64 prompt tokens = 4 blocks taken
        assert (s.block_size, s.num_gpu_blocks, s.max_loras) == (16, 100, 1)
        assert s.running_adapters == frozenset()
        # Disconnect the waiting ones, then the running one: each aborts its request.
        for writer in others:
            writer.close()
        await _wait_async(lambda: load_is(1, 0), "the waiting requests aborted")
        first.close()
        await _wait_async(lambda: load_is(0, 0), "the running request aborted")
        s = await sample()
        assert s.kv_usage_frac == 0.0  # its blocks are free (still cached)
        assert srv.stats["aborted"] == 3
        assert srv.stats["completed"] == 0


# ============================================================ engine: abort and steps
class FixedStep:
    """Every step lasts 1 s (a fake step-time model)."""

    name = "fixed"

    def step_s(
        self,
        prefill_new: Sequence[int],
        prefill_context: Sequence[int],
        num_decodes: int,
        decode_context_sum: int,
    ) -> float:
        return 1.0

    def decode_steps_s(
        self, num_decodes: int, decode_context_sum: int, num_steps: int
    ) -> npt.NDArray[np.float64]:
        return np.ones(num_steps)


def _sim_request(request_id: int, prompt_tokens: int, output: int, base: int) -> SimRequest:
    blocks = np.arange(base, base + math.ceil(prompt_tokens / 16), dtype=np.int64)
    return SimRequest(request_id, 0.0, prompt_tokens, output, blocks)


@pytest.mark.parametrize("abort_after_steps", [0, 1, 2, 16, 17, 31])
def test_engine_abort_frees_every_block(abort_after_steps: int) -> None:
    tokens: dict[int, int] = {}

    def on_step(end_s: float, produced: list[int]) -> None:
        for request_id in produced:
            tokens[request_id] = tokens.get(request_id, 0) + 1

    engine = _LiveEngine(
        "e",
        EngineConfig(num_gpu_blocks=20),
        FixedStep(),
        on_step=on_step,
        kv_events=None,
        token_ids_of=lambda block_id: [],
    )
    engine.submit(_sim_request(0, 32, 40, 100), 0.0)  # 2 blocks, then 1 per 16 tokens
    engine.submit(_sim_request(1, 33, 1, 200), 0.0)  # finishes at its first token
    engine.advance(abort_after_steps + 0.5)  # mid-step: the next step is planned
    assert tokens.get(0, 0) == abort_after_steps
    assert engine.abort(0)
    assert not engine.abort(0)
    metrics = engine.metrics(abort_after_steps + 0.5)
    if abort_after_steps == 0:  # request 1 still prefills its 3 blocks in the first step
        assert (metrics.running, metrics.waiting, metrics.kv_usage_frac) == (1, 0, 3 / 20)
    else:
        assert (metrics.running, metrics.waiting, metrics.kv_usage_frac) == (0, 0, 0.0)
    # The engine goes on: a new request runs to its end with every token seen.
    engine.submit(_sim_request(2, 20, 5, 300), abort_after_steps + 0.5)
    finished = [e for e in engine.advance(math.inf) if e.kind == EventKind.FINISHED]
    assert [e.request_id for e in finished][-1] == 2
    assert tokens[2] == 5
    assert tokens[1] == 1


def test_engine_abort_of_a_waiting_request() -> None:
    engine = _LiveEngine(
        "e",
        EngineConfig(num_gpu_blocks=20, max_num_seqs=1, max_num_batched_tokens=64),
        FixedStep(),
        on_step=lambda end_s, produced: None,
        kv_events=None,
        token_ids_of=lambda block_id: [],
    )
    engine.submit(_sim_request(0, 16, 3, 100), 0.0)
    engine.submit(_sim_request(1, 16, 3, 200), 0.0)
    engine.advance(0.5)
    assert (engine.metrics(0.5).running, engine.metrics(0.5).waiting) == (1, 1)
    assert engine.abort(1)
    assert engine.metrics(0.5).waiting == 0
    ends = [e.request_id for e in engine.advance(math.inf) if e.kind == EventKind.FINISHED]
    assert ends == [0]


# ============================================================ KV events over ZMQ
class Inbox:
    """Batches a subscriber delivered, polled on the test's thread."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, str, EventBatch]] = []
        self.invalidations: list[tuple[str, str]] = []

    def on_batch(self, endpoint: str, model: str, seq: int, batch: EventBatch) -> None:
        self.batches.append((endpoint, model, batch))

    def on_invalidate(self, endpoint: str, reason: str) -> None:
        self.invalidations.append((endpoint, reason))

    def events(self) -> list[object]:
        return [e for _, _, b in self.batches for e in b.events]


def _prime(subscriber: KVEventSubscriber, inbox: Inbox, http: httpx.Client) -> None:
    """Reset the (empty) prefix cache until its AllBlocksCleared arrives: ZeroMQ drops
    messages until the subscription reaches the publisher (the slow joiner)."""

    def cleared() -> bool:
        assert http.post("/reset_prefix_cache").status_code == 200
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            subscriber.poll_once(20)
            if any(isinstance(e, AllBlocksCleared) for e in inbox.events()):
                return True
        return False

    wait_for(cleared, "the subscription to reach the publisher")
    inbox.batches.clear()


def _stored(inbox: Inbox) -> list[BlockStored]:
    return [e for e in inbox.events() if isinstance(e, BlockStored)]


def test_kv_events_dial_mode_stored_removed_cleared() -> None:
    server = SimServer(model=MODEL, time_scale=FAST, kv_blocks=8, kv_events_port=0)
    server.start_in_thread()
    inbox = Inbox()
    subscriber = KVEventSubscriber(inbox.on_batch, inbox.on_invalidate)
    try:
        assert server.kv_events_address is not None
        assert server.kv_topic == f"kv@127.0.0.1:{server.port}@{MODEL}"
        subscriber.add_endpoint(server.name, server.kv_events_address)
        with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as http:
            _prime(subscriber, inbox, http)
            prompts = [prompt_of(20 + i) for i in range(3)]
            for prompt in prompts:  # 4 blocks each; the third evicts the first
                r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
                assert r.status_code == 200

            def removed() -> list[BlockRemoved]:
                subscriber.poll_once(20)
                return [e for e in inbox.events() if isinstance(e, BlockRemoved)]

            gone = wait_for(removed, "the first prompt's blocks evicted")
            stored = _stored(inbox)
            assert len(stored) == 3
            for event, prompt in zip(stored, prompts, strict=True):
                assert event.block_hashes.tolist() == expected_blocks(prompt).tolist()
                assert event.parent_block_hash is None
                assert event.token_ids.tolist() == pack_bytes(prompt.encode()).tolist()
                assert (event.block_size, event.medium, event.lora_id) == (16, "GPU", None)
            evicted = sorted(h for e in gone for h in e.block_hashes.tolist())
            assert evicted == sorted(expected_blocks(prompts[0]).tolist())
            assert {(endpoint, model) for endpoint, model, _ in inbox.batches} == {
                (server.name, MODEL)
            }
            assert inbox.invalidations == []
    finally:
        subscriber.stop()
        server.stop()


def test_kv_events_connect_to_a_bound_subscriber_and_replay() -> None:
    inbox = Inbox()
    subscriber = KVEventSubscriber(inbox.on_batch, inbox.on_invalidate, bind="tcp://127.0.0.1:*")
    assert subscriber.bound_address is not None
    server = SimServer(
        model=MODEL,
        time_scale=FAST,
        kv_events_endpoint=subscriber.bound_address,
        kv_replay_port=0,
    )
    server.start_in_thread()
    try:
        with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as http:
            _prime(subscriber, inbox, http)
            prompt = prompt_of(30, 40)  # 2 full blocks and a partial one
            r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
            assert r.status_code == 200

            def stored() -> list[BlockStored]:
                subscriber.poll_once(20)
                return _stored(inbox)

            (event,) = wait_for(stored, "the prompt's blocks stored")
            assert event.block_hashes.tolist() == expected_blocks(prompt).tolist()
            assert len(event.block_hashes) == 2
            assert {endpoint for endpoint, _, _ in inbox.batches} == {f"127.0.0.1:{server.port}"}
        # vLLM's replay protocol: every buffered batch from seq 0, then END_SEQ.
        assert server.kv_replay_address is not None
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        try:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(server.kv_replay_address)
            dealer.send_multipart([b"", (0).to_bytes(8, "big")])
            replies = []
            while True:
                assert dealer.poll(int(DEADLINE_S * 1000)), "no replay answer"
                frames = dealer.recv_multipart()
                if frames[1] == END_SEQ:
                    break
                replies.append(frames)
            seqs = [int.from_bytes(f[1], "big") for f in replies]
            assert seqs == list(range(len(seqs)))
            assert any(
                isinstance(e, BlockStored) for f in replies for e in decode_batch(f[2]).events
            )
        finally:
            dealer.close(linger=0)
            ctx.term()
    finally:
        server.stop()
        subscriber.stop()


# ============================================================ lifecycle and CLI
def test_stop_cuts_open_requests_like_a_killed_server() -> None:
    server = SimServer(model=MODEL, time_scale=FROZEN)
    url = server.start_in_thread()
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            r = httpx.post(url + "/v1/completions", json={"prompt": "a"}, timeout=DEADLINE_S)
            outcome.append(r.status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: _running(url) == 1, "the request in flight")
    server.stop()
    thread.join(DEADLINE_S)
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=DEADLINE_S)


def _running(url: str) -> float | None:
    page = httpx.get(url + "/metrics", timeout=DEADLINE_S).text
    return extract(page, "vllm", endpoint="x").running


def test_cli_parser_flags() -> None:
    parser = argparse.ArgumentParser()
    sim_server_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "sim-server",
            "--model",
            "m",
            "--port",
            "0",
            "--max-num-seqs",
            "8",
            "--kv-blocks",
            "64",
            "--time-scale",
            "10",
            "--kv-events-port",
            "0",
            "--lora",
            "a",
            "--lora",
            "b",
        ]
    )
    assert (args.model, args.port, args.max_num_seqs, args.kv_blocks) == ("m", 0, 8, 64)
    assert (args.time_scale, args.kv_events_port, args.lora) == (10.0, 0, ["a", "b"])
    for bad in (["--time-scale", "0"], ["--port", "70000"], ["--kv-blocks", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["sim-server", *bad])


def test_cli_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sim_server_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sim-server", "--block-size", "24"])
    assert args.func(args) == 2
    assert "block_size: expected a multiple of 16, got 24" in capsys.readouterr().err
