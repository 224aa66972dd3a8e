"""(b) The real ``openai`` client through ``serve --http-port``: chat and completions,
streamed and not; shared-prefix requests land on the same server."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e._helpers import ServeProc, Sim, wait_until


@pytest.fixture
def client(shared_pool: tuple[list[Sim], ServeProc]) -> Iterator[openai.OpenAI]:
    _, serve = shared_pool
    with openai.OpenAI(
        base_url=serve.http_url + "/v1", api_key="unused", max_retries=0, timeout=15
    ) as c:
        yield c


def _inflight_zero(serve: ServeProc) -> bool:
    text = serve.metrics()
    values = [
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("inference_pool_endpoint_inflight_requests{")
    ]
    return len(values) == 3 and sum(values) == 0.0


def test_chat_and_completions_non_streamed(
    shared_pool: tuple[list[Sim], ServeProc], client: openai.OpenAI
) -> None:
    chat = client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert chat.object == "chat.completion"
    assert chat.model == "sim-model"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 4
    assert chat.choices[0].message.content
    completion = client.completions.create(model="sim-model", prompt="once upon", max_tokens=3)
    assert completion.object == "text_completion"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert wait_until(lambda: _inflight_zero(shared_pool[1]), 5, "in-flight back to 0")


def test_chat_and_completions_streamed(
    shared_pool: tuple[list[Sim], ServeProc], client: openai.OpenAI
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "stream"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    pieces = list(
        client.completions.create(model="sim-model", prompt="stream", max_tokens=4, stream=True)
    )
    assert sum(1 for p in pieces if p.choices and p.choices[0].text) == 4
    assert wait_until(lambda: _inflight_zero(shared_pool[1]), 5, "in-flight back to 0")


def test_shared_prefix_requests_land_on_one_server(client: openai.OpenAI) -> None:
    system = "You are a careful assistant. " * 60  # ~1.7 kB: many prefix blocks
    served = []
    for i in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model="sim-model",
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {i}"},
            ],
            max_tokens=2,
        )
        served.append(raw.headers["x-sim-server"])
        raw.parse()
    # The first request lands anywhere; the prefix scorer sends the rest after it.
    assert len(set(served[1:])) == 1, served
    assert served[1] == served[0], served


def test_gateway_error_is_an_openai_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="sim-model", messages="not a list", max_tokens=1)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert "messages" in str(info.value)
