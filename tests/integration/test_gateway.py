"""The OpenAI-compatible HTTP gateway on loopback, with the real ``openai`` client.

Upstreams are small scripted aiohttp model servers (:class:`FakeUpstream`: they answer
OpenAI JSON or SSE with ``usage``, or a scripted failure: a 503, a cut mid-stream, a
hang), plus one test against the real simulated model server. The gateway and the
upstreams share one event loop on a daemon thread; the clients run on the test thread.
Endpoint metrics are set by hand (``waiting``), so with ``queue-scorer`` the pick is
``u0`` and the fallbacks ``u1`` then ``u2``: every attempt count below is exact. Every
wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")

from aiohttp import web  # noqa: E402

from inference_sched.datalayer.health import EndpointHealth  # noqa: E402
from inference_sched.epp.director import Director  # noqa: E402
from inference_sched.epp.gateway import HttpGateway, openai_error  # noqa: E402
from inference_sched.framework.scheduler import Scheduler  # noqa: E402
from inference_sched.framework.types import (  # noqa: E402
    Endpoint,
    Request,
    Response,
    SchedulingResult,
    Usage,
)
from inference_sched.state.table import EndpointTable  # noqa: E402

T = TypeVar("T")
MODEL = "m"
DEADLINE_S = 10.0
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

QUEUE_CONFIG = """
plugins:
- type: inflight-load-producer
- type: queue-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 3}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""

PREFIX_CONFIG = """
plugins:
- type: inflight-load-producer
- type: prefix-cache-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 3}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
"""


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


# ============================================================ the event loop thread
class LoopThread:
    """One asyncio loop on a daemon thread: the gateway and the upstreams run there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = DEADLINE_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE_S)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


# ============================================================ fake model server
def _client_connections_open(port: int) -> bool:
    """Whether a TCP connection to ``port`` is still open on the client side
    (ESTABLISHED or CLOSE_WAIT in /proc/net/tcp): the gateway's pool still holds it."""
    text = Path("/proc/net/tcp").read_text()
    for line in text.splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] in ("01", "08"):
            return True
    return False


class FakeUpstream:
    """A scripted OpenAI model server: ``script`` holds the mode of the next requests
    (``ok``, ``503``, ``cut`` = close the connection after the first SSE chunk,
    ``hold`` = pause after it until :attr:`release` is set, ``hang`` = pause after it
    until cancelled); ``ok`` once empty."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.script: collections.deque[str] = collections.deque()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hanging = threading.Event()
        self.cancelled = threading.Event()
        self.release = asyncio.Event()  # "hold" requests finish once it is set (on the loop)
        self._runner: web.AppRunner | None = None

    @property
    def hits(self) -> int:
        return len(self.bodies)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/completions", self._answer)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def kill(self) -> None:
        """Close the port and every connection (a killed server)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": self.name}],
            }
        )

    async def _other(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append({"path": request.path, "size": len(await request.read())})
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"ok": True})

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        mode = self.script.popleft() if self.script else "ok"
        if mode == "503":
            return web.json_response({"error": {"message": f"{self.name} overloaded"}}, status=503)
        chat = request.path.endswith("chat/completions")
        model = body["model"]
        if not body.get("stream"):
            return web.json_response(_full(chat, model), headers={"x-upstream": self.name})
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "x-upstream": self.name}
        )
        await response.prepare(request)
        for i, word in enumerate(("Hello", " there", "!")):
            await response.write(_sse(_chunk(chat, model, word)))
            if i == 0 and mode == "cut":
                assert request.transport is not None
                request.transport.abort()
                return response
            if i == 0 and mode == "hold":
                await self.release.wait()
            if i == 0 and mode == "hang":
                self.hanging.set()
                try:
                    await asyncio.sleep(3 * DEADLINE_S)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
        await response.write(_sse({**_chunk(chat, model, ""), "choices": [], "usage": USAGE}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _full(chat: bool, model: str) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!"},
            "finish_reason": "stop",
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": "Hello there!", "finish_reason": "stop"}
        kind = "text_completion"
    return {
        "id": "c1",
        "object": kind,
        "created": 1,
        "model": model,
        "choices": [choice],
        "usage": USAGE,
    }


def _chunk(chat: bool, model: str, text: str) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": None}
        kind = "text_completion"
    return {"id": "c1", "object": kind, "created": 1, "model": model, "choices": [choice]}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


# ============================================================ the rig
class Rig:
    """Three fake upstreams, a scheduler over them, a Director and the gateway."""

    def __init__(
        self,
        loop: LoopThread,
        upstreams: Sequence[FakeUpstream],
        gateway: HttpGateway,
        scheduler: Scheduler,
        health: EndpointHealth | None,
    ) -> None:
        self.loop = loop
        self.up = list(upstreams)
        self.gateway = gateway
        self.scheduler = scheduler
        self.table: EndpointTable = scheduler.table
        self.health = health
        self.completed: list[tuple[str, Usage | None, int]] = []
        # Observe the final response hook: the request id, its usage and status.
        original = scheduler.response_complete

        def recorded(request: Request, response: Response, result: SchedulingResult) -> None:
            self.completed.append((request.request_id, response.usage, response.status_code))
            original(request, response, result)

        scheduler.response_complete = recorded  # type: ignore[method-assign]

    @property
    def base_url(self) -> str:
        return self.gateway.url + "/v1"

    def client(self) -> Any:
        return openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0, timeout=DEADLINE_S)

    def inflight(self) -> list[float]:
        return [float(self.table.inflight_requests[self.table.row(u.name)]) for u in self.up]

    def wait_idle(self, num_completed: int) -> None:
        wait_for(lambda: len(self.completed) == num_completed, f"{num_completed} completions")
        wait_for(lambda: self.inflight() == [0.0] * len(self.up), "in-flight counters at 0")
        wait_for(lambda: self.gateway.num_active == 0, "no active request")

    def kill(self, i: int) -> None:
        self.loop.run(self.up[i].kill())
        port = self.up[i].port
        wait_for(lambda: not _client_connections_open(port), f"the pool to drop {self.up[i].name}")


@pytest.fixture
def make_rig(loop: LoopThread) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(
        config: str = QUEUE_CONFIG,
        *,
        waiting: Sequence[float] = (0, 5, 10),
        with_health: bool = False,
        **options: Any,
    ) -> Rig:
        async def build() -> Rig:
            upstreams = [FakeUpstream(f"u{i}") for i in range(len(waiting))]
            table = EndpointTable()
            for up in upstreams:
                table.add(Endpoint(up.name, "127.0.0.1", await up.start()))
            table.update_metrics(list(range(len(waiting))), waiting=list(waiting))
            scheduler = Scheduler.from_config(config, table, seed=0)
            health = EndpointHealth(table) if with_health else None
            gateway = HttpGateway(Director(scheduler), health=health, **options)
            await gateway.start()
            return Rig(loop, upstreams, gateway, scheduler, health)

        rig = loop.run(build())
        rigs.append(rig)
        return rig

    yield make

    async def teardown(rig: Rig) -> None:
        await rig.gateway.stop(0.0)
        for up in rig.up:
            await up.kill()

    for rig in rigs:
        loop.run(teardown(rig))


# ============================================================ (b) the openai client
def test_chat_and_completions_streaming_and_not_with_the_openai_client(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    oa = rig.client()
    chat = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "Hello there!"
    assert chat.usage is not None
    assert chat.usage.total_tokens == 8
    completion = oa.completions.create(model=MODEL, prompt="hi", max_tokens=3)
    assert completion.choices[0].text == "Hello there!"
    stream = oa.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    text = "".join(
        c.choices[0].text
        for c in oa.completions.create(model=MODEL, prompt="hi", stream=True)
        if c.choices
    )
    assert text == "Hello there!"

    rig.wait_idle(4)
    assert [u.hits for u in rig.up] == [4, 0, 0]  # u0 has the shortest queue
    assert [usage for _, usage, _ in rig.completed] == [Usage(5, 3, 0, 8)] * 4
    assert [status for _, _, status in rig.completed] == [200] * 4
    stats = rig.gateway.stats
    assert (stats.num_requests, stats.num_attempts, stats.num_retries) == (4, 4, 0)


def test_async_client_streams_concurrently(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()

    async def one(client: Any, i: int) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=rig.base_url, api_key="x", max_retries=0, timeout=DEADLINE_S
        ) as client:
            return list(await asyncio.gather(*(one(client, i) for i in range(6))))

    assert asyncio.run(main()) == ["Hello there!"] * 6
    rig.wait_idle(6)
    assert sum(u.hits for u in rig.up) == 6
    assert all(usage == Usage(5, 3, 0, 8) for _, usage, _ in rig.completed)


def test_headers_forwarded_and_model_rewritten_both_ways(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    response = httpx.post(
        rig.gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={
            "x-custom": "kept",
            "x-gateway-model-name-rewrite": "base",
            "x-prefiller-host-port": "10.9.9.9:1",  # only the EPP may set it
            "x-request-id": "req-1",
        },
        timeout=DEADLINE_S,
    )
    assert response.status_code == 200
    assert response.json()["model"] == MODEL  # restored for the client
    assert response.headers["x-upstream"] == "u0"
    assert rig.up[0].bodies[0]["model"] == "base"
    seen = rig.up[0].headers[0]
    assert seen["x-custom"] == "kept"
    assert seen["x-request-id"] == "req-1"
    assert seen["host"] == f"127.0.0.1:{rig.up[0].port}"
    assert "x-gateway-model-name-rewrite" not in seen
    assert "x-prefiller-host-port" not in seen
    assert int(seen["content-length"]) == len(
        json.dumps(rig.up[0].bodies[0], separators=(",", ":"))
    )
    rig.wait_idle(1)


def test_shared_prefix_requests_land_on_the_same_upstream(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(PREFIX_CONFIG, waiting=(0, 0, 0))
    oa = rig.client()
    groups = {g: f"group {g}: " + "lorem ipsum dolor sit amet " * 40 for g in range(4)}
    for round_ in range(3):
        for _g, prefix in groups.items():
            oa.completions.create(model=MODEL, prompt=f"{prefix} question {round_}", max_tokens=3)
    rig.wait_idle(12)
    served_by: dict[int, set[str]] = collections.defaultdict(set)
    for up in rig.up:
        for body in up.bodies:
            group = int(body["prompt"].split(":")[0].removeprefix("group "))
            served_by[group].add(up.name)
    assert all(len(names) == 1 for names in served_by.values()), served_by
    assert sorted(served_by) == [0, 1, 2, 3]


# ============================================================ (c) retries and failures
@pytest.mark.parametrize("with_health", [True, False], ids=["health", "no-health"])
def test_killed_upstream_loses_no_request(make_rig: Callable[..., Rig], with_health: bool) -> None:
    rig = make_rig(with_health=with_health)
    oa = rig.client()
    for i in range(3):
        oa.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3)
    rig.kill(0)
    for i in range(3, 8):
        result = oa.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3)
        assert result.choices[0].text == "Hello there!"
    rig.wait_idle(8)
    stats = rig.gateway.stats
    assert [u.hits for u in rig.up] == [3, 5, 0]
    if with_health:
        # The first refusal takes u0 out: one retry, then u1 is the pick.
        assert rig.health is not None
        assert rig.health.taken_out() == ("u0",)
        assert (stats.num_attempts, stats.num_retries, stats.num_connect_failures) == (9, 1, 1)
        assert dict(stats.attempts_by_endpoint) == {"u0": 4, "u1": 5}
    else:
        assert (stats.num_attempts, stats.num_retries, stats.num_connect_failures) == (13, 5, 5)
        assert dict(stats.attempts_by_endpoint) == {"u0": 8, "u1": 5}
    assert stats.num_bad_gateway == 0


def test_5xx_before_the_first_byte_is_retried_on_the_next_fallback(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.up[0].script.extend(["503"])
    rig.up[1].script.extend(["503"])
    result = rig.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert result.choices[0].message.content == "Hello there!"
    rig.wait_idle(1)
    assert [u.hits for u in rig.up] == [1, 1, 1]
    stats = rig.gateway.stats
    assert (stats.num_attempts, stats.num_upstream_5xx_retried) == (3, 2)
    assert rig.completed[0][2] == 200  # the hooks see the answer the client got


def test_5xx_of_the_last_attempt_is_passed_through(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_attempts=2)
    rig.up[0].script.append("503")
    rig.up[1].script.append("503")
    with pytest.raises(openai.InternalServerError) as info:
        rig.client().completions.create(model=MODEL, prompt="hi")
    assert info.value.status_code == 503
    assert info.value.body == {"message": "u1 overloaded"}
    rig.wait_idle(1)
    assert [u.hits for u in rig.up] == [1, 1, 0]
    assert rig.completed[0][2] == 503


def test_no_retry_after_the_first_byte(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.up[0].script.append("cut")
    stream = rig.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []

    def read() -> None:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises((openai.APIError, httpx.HTTPError)):
        read()
    assert received == ["Hello"]  # the first chunk, and no second answer after it
    rig.wait_idle(1)
    assert [u.hits for u in rig.up] == [1, 0, 0]
    stats = rig.gateway.stats
    assert (stats.num_attempts, stats.num_upstream_errors) == (1, 1)


def test_every_fallback_refused_is_a_502(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    for i in range(3):
        rig.kill(i)
    with pytest.raises(openai.InternalServerError) as info:
        rig.client().completions.create(model=MODEL, prompt="hi")
    assert info.value.status_code == 502
    body: Any = info.value.body
    assert body["type"] == "BadGatewayError"
    assert body["message"].startswith("no upstream answered after 3 attempt(s): u0 (127.0.0.1:")
    rig.wait_idle(1)
    assert rig.gateway.stats.num_connect_failures == 3
    assert rig.completed[0][2] == 200  # no upstream status was ever seen


def test_client_disconnect_cancels_the_upstream(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.up[0].script.append("hang")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with (
        httpx.Client(timeout=DEADLINE_S) as client,
        client.stream("POST", rig.gateway.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
        assert rig.up[0].hanging.wait(DEADLINE_S)
    wait_for(rig.up[0].cancelled.is_set, "the upstream request to be cancelled")
    rig.wait_idle(1)
    assert rig.gateway.stats.num_client_disconnects == 1


# ============================================================ rejections and limits
def test_rejections_use_the_openai_error_shape(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_body_bytes=1000)
    url = rig.gateway.url + "/v1/chat/completions"
    bad = httpx.post(url, content=b'{"model": "m"}', timeout=DEADLINE_S)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["code"] == 400
    assert error["message"].startswith("inference error: BadRequest - ")
    assert "messages" in error["message"]

    big = httpx.post(url, content=b"x" * 1001, timeout=DEADLINE_S)
    assert big.status_code == 413
    assert big.json()["error"]["message"] == (
        "inference error: BadRequest - request body: larger than max_body_bytes (1000 bytes)"
    )
    for up in rig.up:
        rig.table.set_healthy(up.name, False)
    none = httpx.post(
        url,
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        timeout=DEADLINE_S,
    )
    assert none.status_code == 503
    assert none.headers["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"
    assert none.json()["error"]["message"].startswith("inference error: ServiceUnavailable - ")
    ready = httpx.get(rig.gateway.url + "/readyz", timeout=DEADLINE_S)
    assert ready.status_code == 503
    assert sum(u.hits for u in rig.up) == 0
    assert rig.gateway.stats.num_rejected == 3


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda doc: json.dumps(doc).encode()),
    ),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/x/y"]),
)
def test_any_body_gets_an_answer(gateway_rig: Rig, body: bytes, path: str) -> None:
    hits = gateway_rig.up[0].hits
    response = httpx.post(gateway_rig.gateway.url + path, content=body, timeout=DEADLINE_S)
    if response.status_code == 400:  # the gateway's answer, naming the problem
        assert response.json()["error"]["message"].startswith("inference error: BadRequest - ")
        assert gateway_rig.up[0].hits == hits
    else:  # forwarded once (any path the passthrough parser takes, too)
        assert response.status_code == 200
        assert gateway_rig.up[0].hits == hits + 1


@pytest.fixture(scope="module")
def gateway_rig(loop: LoopThread) -> Iterator[Rig]:
    """One rig for the whole Hypothesis run (a function fixture would be shared anyway)."""

    async def build() -> Rig:
        up = FakeUpstream("u0")
        table = EndpointTable()
        table.add(Endpoint("u0", "127.0.0.1", await up.start()))
        scheduler = Scheduler.from_config(QUEUE_CONFIG, table, seed=0)
        gateway = HttpGateway(Director(scheduler))
        await gateway.start()
        return Rig(loop, [up], gateway, scheduler, None)

    rig = loop.run(build())
    yield rig
    loop.run(rig.gateway.stop(0.0))
    loop.run(rig.up[0].kill())


# ============================================================ routes and lifecycle
def test_models_health_and_drain(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(models=("fallback-model",))
    models = rig.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(rig.gateway.url + "/healthz", timeout=DEADLINE_S).text == "ok"
    assert httpx.get(rig.gateway.url + "/readyz", timeout=DEADLINE_S).status_code == 200
    for i in range(3):
        rig.kill(i)
    assert [m.id for m in rig.client().models.list().data] == ["fallback-model"]


def test_stop_drains_requests_in_flight(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.up[0].script.extend(["hold", "hang"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    url = rig.gateway.url + "/v1/chat/completions"
    with (
        httpx.Client(timeout=DEADLINE_S) as held,
        httpx.Client(timeout=DEADLINE_S) as hung,
        held.stream("POST", url, json=body) as finishing,
    ):
        held_chunks = finishing.iter_raw()
        assert next(held_chunks).startswith(b"data: ")
        with hung.stream("POST", url, json=body) as cut:
            cut_chunks = cut.iter_raw()
            assert next(cut_chunks).startswith(b"data: ")
            stopping = rig.loop.submit(rig.gateway.stop(grace_s=3.0))
            # Draining: the port is closed to new connections at once...
            wait_for(lambda: _refused(rig.gateway.url + "/healthz"), "the port to close")
            # ...a request that ends within the grace period ends normally...
            rig.loop.loop.call_soon_threadsafe(rig.up[0].release.set)
            rest = b"".join(held_chunks)
            assert rest.endswith(b"data: [DONE]\n\n")
            # ...and the one still running after it is cut, its hooks run.
            stopping.result(DEADLINE_S)
            with pytest.raises(httpx.HTTPError):
                b"".join(cut_chunks)
    rig.wait_idle(2)
    assert sorted(status for _, _, status in rig.completed) == [200, 200]
    assert (rig.gateway.stats.num_cut_at_stop, rig.gateway.stats.num_client_disconnects) == (1, 0)


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=DEADLINE_S)
    except httpx.ConnectError:
        return True
    return False


def test_openai_error_body() -> None:
    assert json.loads(openai_error(429, "slow down")) == {
        "error": {"message": "slow down", "type": "RateLimitError", "param": None, "code": 429}
    }
    assert json.loads(openai_error(599, "x"))["error"]["type"] == "ServerError"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_attempts", 0, "max_attempts: expected int >= 1, got 0"),
        ("max_body_bytes", -1, "max_body_bytes: expected int >= 0, got -1"),
        ("connect_timeout_s", 0.0, "connect_timeout_s: expected a number > 0, got 0.0"),
    ],
)
def test_bad_options_are_named(option: str, value: Any, message: str) -> None:
    table = EndpointTable()
    director = Director(Scheduler.from_config(QUEUE_CONFIG, table, seed=0))
    with pytest.raises(ValueError, match=message):
        HttpGateway(director, **{option: value})


# ============================================================ the real simulated server
def test_through_the_simulated_model_server(loop: LoopThread) -> None:
    server_mod = pytest.importorskip("inference_sched.sim.server")

    async def build() -> tuple[list[Any], HttpGateway, Scheduler]:
        servers = [
            server_mod.SimServer(model=MODEL, time_scale=200.0, name=f"s{i}") for i in range(2)
        ]
        table = EndpointTable()
        for i, srv in enumerate(servers):
            await srv.start()
            table.add(Endpoint(f"s{i}", "127.0.0.1", srv.port))
        table.update_metrics([0, 1], waiting=[0, 5])
        scheduler = Scheduler.from_config(QUEUE_CONFIG, table, seed=0)
        gateway = HttpGateway(Director(scheduler))
        await gateway.start()
        return servers, gateway, scheduler

    servers, gateway, scheduler = loop.run(build())
    try:
        oa = openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=DEADLINE_S
        )
        raw = oa.completions.with_raw_response.create(
            model=MODEL, prompt="hello " * 20, max_tokens=5
        )
        assert raw.headers["x-sim-server"] == "s0"
        completion = raw.parse()
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 5
        stream = oa.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 4
        table = scheduler.table
        wait_for(lambda: float(table.inflight_requests[:2].sum()) == 0.0, "in-flight counters at 0")
    finally:

        async def teardown() -> None:
            await gateway.stop(0.0)
            for srv in servers:
                await srv.aclose()

        loop.run(teardown())
