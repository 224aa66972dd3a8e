"""The vLLM render client (tokenize/render.py) against a real HTTP server on loopback:
the paths and bodies it posts, what it reads back, and every failure naming the URL."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from inference_sched.errors import DataError
from inference_sched.tokenize.estimate import Feature
from inference_sched.tokenize.render import RenderClient, RenderConfig, RenderError, client_for

pytestmark = pytest.mark.unit

Reply = tuple[int, bytes]


class FakeVllm:
    """A render server: records each POST (path, JSON body, headers) and answers with
    ``replies[path](body)``; ``hold`` blocks answers until released (timeouts)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.replies: dict[str, Callable[[Any], Reply]] = {}
        self.hold = threading.Event()
        self.hold.set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                fake.calls.append(
                    (self.path, body, {k.lower(): v for k, v in self.headers.items()})
                )
                fake.hold.wait(timeout=30)
                reply = fake.replies.get(self.path)
                status, payload = reply(body) if reply else (404, b"no such route")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vllm() -> Iterator[FakeVllm]:
    server = FakeVllm()
    yield server
    server.close()


def ok(payload: Any) -> Callable[[Any], Reply]:
    return lambda body: (200, json.dumps(payload).encode())


def client(server: FakeVllm, **config: Any) -> RenderClient:
    return RenderClient(RenderConfig(url=server.url + "/", **config), model_name="served")


def test_completions_render_one_prompt_per_answer_item(vllm: FakeVllm) -> None:
    vllm.replies["/v1/completions/render"] = ok([{"token_ids": [1, 2]}, {"token_ids": [3]}])
    result = client(vllm).render({"model": "alias", "prompt": ["a", "b"], "max_tokens": 9})
    assert [p.tolist() for p in result.prompts] == [[1, 2], [3]]
    assert not result.estimated
    path, body, headers = vllm.calls[0]
    assert path == "/v1/completions/render"
    assert body == {"model": "served", "prompt": ["a", "b"], "max_tokens": 9}
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


def test_chat_render_reads_ids_and_features_and_forwards_auth(vllm: FakeVllm) -> None:
    vllm.replies["/v1/chat/completions/render"] = ok(
        {
            "token_ids": [5, 6, 7, 8],
            "features": {
                "mm_hashes": {"image": ["h1"]},
                "mm_placeholders": {"image": [{"offset": 1, "length": 2}]},
            },
        }
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "min_tokens": 5}
    render = client(vllm, prefill_only=True)
    result = render.render(body, {"authorization": "Bearer k"})
    assert result.prompts[0].tolist() == [5, 6, 7, 8]
    assert result.features == (Feature("image", "h1", 1, 2),)
    path, sent, headers = vllm.calls[0]
    assert path == "/v1/chat/completions/render"
    assert sent["max_tokens"] == 1
    assert sent["min_tokens"] == 0
    assert body["max_tokens"] == 100  # the request itself is untouched
    assert headers["authorization"] == "Bearer k"


def test_messages_render_path(vllm: FakeVllm) -> None:
    vllm.replies["/v1/messages/render"] = ok({"token_ids": [4]})
    body = {"system": "s", "messages": [{"role": "user", "content": "x"}]}
    assert client(vllm).render(body).prompts[0].tolist() == [4]
    assert vllm.calls[0][0] == "/v1/messages/render"


def test_ids_in_the_body_need_no_call(vllm: FakeVllm) -> None:
    render = client(vllm)
    assert render.render({"prompt": [1, 2]}).prompts[0].tolist() == [1, 2]
    assert render.render({"token_ids": [3]}).prompts[0].tolist() == [3]
    assert render.render({"input": [4]}).prompts[0].tolist() == [4]
    assert vllm.calls == []
    with pytest.raises(DataError, match="no render endpoint for 'responses'"):
        render.render({"input": "x"})


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ((500, b"boom" * 1000), r"/v1/completions/render: status 500: (boom){256}$"),
        ((200, b"not json"), "answer is not JSON"),
        ((200, b"[]"), "empty render answer"),
        ((200, b'[{"ids": [1]}]'), "answer has no token_ids"),
        ((200, b'[{"token_ids": [-1]}]'), r"bad token_ids: token_ids\[0\]"),
        ((200, b'[{"token_ids": [1]}]' + b" " * 200), "answer larger than 100 bytes"),
    ],
    ids=["status", "not-json", "empty", "no-ids", "bad-ids", "too-large"],
)
def test_bad_answers_raise_render_errors_naming_the_url(
    vllm: FakeVllm, reply: Reply, match: str
) -> None:
    vllm.replies["/v1/completions/render"] = lambda body: reply
    with pytest.raises(RenderError, match=match) as info:
        client(vllm, max_response_bytes=100).render({"prompt": "x"})
    assert info.value.endpoint == vllm.url + "/v1/completions/render"
    assert info.value.status_code == (500 if reply[0] == 500 else 0)


def test_a_server_that_does_not_answer_times_out(vllm: FakeVllm) -> None:
    vllm.hold.clear()  # the handler waits until the test ends: no reply can come in time
    vllm.replies["/v1/completions/render"] = ok([{"token_ids": [1]}])
    with pytest.raises(RenderError, match=r"/v1/completions/render: no answer within 0\.2 s"):
        client(vllm, timeout_s=0.2).render({"prompt": "x"})


def test_chat_with_blocks_uses_the_multimodal_timeout(vllm: FakeVllm) -> None:
    vllm.hold.clear()
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    with pytest.raises(RenderError, match=r"no answer within 0\.3 s"):
        client(vllm, timeout_s=0.2, mm_timeout_s=0.3).render(chat)


def test_connection_refused_names_the_url() -> None:
    server = FakeVllm()
    url = server.url
    server.close()
    with pytest.raises(RenderError, match=rf"^{url}/v1/completions/render: ConnectError"):
        RenderClient(RenderConfig(url=url)).render({"prompt": "x"})


def test_client_for_a_parameter_object() -> None:
    class Endpoint:
        url, timeout_s, mm_timeout_s = "http://h:1", 1.0, 2.0

    made = client_for(Endpoint(), "m")
    assert made is not None
    assert (made.base_url, made.model_name, made.config.mm_timeout_s) == ("http://h:1", "m", 2.0)
    assert client_for(None) is None
