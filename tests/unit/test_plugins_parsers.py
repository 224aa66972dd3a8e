"""The request parsers (llmd-router.md §4.2): every API, every validation error, usage
from JSON bodies and SSE streams, the merge rules; arbitrary input never raises
anything but ParseError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParseError
from inference_sched.framework import registry
from inference_sched.framework.interfaces import Parser
from inference_sched.framework.parsing import ParsedRequest, ResponseUsageParser
from inference_sched.framework.types import Usage
from inference_sched.params import NoParams
from inference_sched.plugins.parsers import (
    AnthropicParser,
    OpenAIParser,
    PassthroughParser,
    SGLangHTTPParser,
    VllmHTTPParser,
)

pytestmark = pytest.mark.unit

NO = NoParams()
OPENAI = OpenAIParser("openai-parser", NO, None)
ANTHROPIC = AnthropicParser("anthropic-parser", NO, None)
VLLM = VllmHTTPParser("vllmhttp-parser", NO, None)
SGLANG = SGLangHTTPParser("sglanghttp-parser", NO, None)
PASS = PassthroughParser("passthrough-parser", NO, None)
PARSERS: dict[str, Parser] = {p.name: p for p in (OPENAI, ANTHROPIC, VLLM, SGLANG, PASS)}
SSE = {"content-type": "text/event-stream; charset=utf-8"}
JSON_HEADERS = {"Content-Type": "application/json"}


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def _parse(parser: Parser, path: str, value: Any) -> ParsedRequest:
    return parser.parse_request(path, {}, value if isinstance(value, bytes) else _body(value))


def _usage(parser: Parser, headers: dict[str, str], *chunks: bytes) -> ResponseUsageParser:
    state = parser.new_response_parser(ParsedRequest(parser=parser.name, api="", raw_body=b""))
    state.headers(headers)
    for i, chunk in enumerate(chunks):
        state.feed(chunk, end_of_stream=i == len(chunks) - 1)
    return state


# ====================================================================== registration
@pytest.mark.parametrize("plugin_type", sorted(PARSERS))
def test_registered_as_a_beta_parser(plugin_type: str) -> None:
    cls = registry.get(plugin_type)
    assert registry.kinds_of(cls) == ("parser",)
    assert registry.stability_of(cls) == "beta"


def test_claims() -> None:
    assert OPENAI.claims() == (
        "conversations",
        "responses",
        "chat/completions/render",
        "chat/completions",
        "completions/render",
        "completions",
        "embeddings",
        "images/generations",
    )
    assert ANTHROPIC.claims() == ("messages", "messages/count_tokens")
    assert VLLM.claims() == ("inference/v1/generate",)
    assert SGLANG.claims() == ("generate",)
    assert PASS.claims() == ()


# ====================================================================== openai requests
MSG = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("path", "body", "api", "prompt", "max_tokens"),
    [
        (
            "/v1/chat/completions",
            {"messages": MSG, "max_completion_tokens": 7, "max_tokens": 9},
            "chat/completions",
            b'[{"role":"user","content":"Hi"}]',
            7,
        ),
        (
            "/v1/chat/completions",
            {"messages": MSG, "max_completion_tokens": -1, "max_tokens": 9},
            "chat/completions",
            b'[{"role":"user","content":"Hi"}]',
            9,
        ),
        (
            "/v1/chat/completions/render",
            {"messages": MSG, "max_tokens": 3.0},
            "chat/completions/render",
            b'[{"role":"user","content":"Hi"}]',
            3,
        ),
        ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 5}, "completions", b"a b", 5),
        ("/v1/completions", {"prompt": [1, 2], "max_tokens": 2.5}, "completions", b"", None),
        (
            "/v1/completions/render",
            {"prompt": "x", "max_tokens": True},
            "completions/render",
            b"x",
            None,
        ),
        (
            "/v1/responses",
            {"input": "hey", "max_output_tokens": 4},
            "responses",
            b'[{"input":"hey"}]',
            4,
        ),
        (
            "/v1/conversations",
            {"items": [{"type": "message"}]},
            "conversations",
            b'[{"type":"message"}]',
            None,
        ),
        (
            "/v1/embeddings",
            {"input": "e", "max_tokens": 3},
            "embeddings",
            b'{"Raw":"e","Strings":null,"TokenIDs":null}',
            None,
        ),
        (
            "/v1/images/generations",
            {"prompt": "cat", "n": 2, "size": "1x1"},
            "images/generations",
            None,
            None,
        ),
        ("/v1/models", {"prompt": "x"}, "completions", b"x", None),  # unknown suffix
        (
            "/v1/chat/completions/",
            {"messages": MSG},
            "chat/completions",
            b'[{"role":"user","content":"Hi"}]',
            None,
        ),
    ],
)
def test_openai_apis(
    path: str, body: dict[str, Any], api: str, prompt: bytes | None, max_tokens: int | None
) -> None:
    parsed = _parse(OPENAI, path, {"model": "m", **body})
    assert parsed.api == api
    assert parsed.model == "m"
    assert parsed.prompt == prompt
    assert parsed.max_output_tokens == max_tokens
    assert parsed.payload == {"model": "m", **body}
    assert parsed.rewrites_model is True
    assert parsed.skip_response_processing is False
    assert parsed.parser == "openai-parser"


@pytest.mark.parametrize(
    ("value", "stream"), [(True, True), (False, False), ("true", False), (1, False)]
)
def test_openai_stream_is_json_true_only(value: Any, stream: bool) -> None:
    assert _parse(OPENAI, "/v1/completions", {"prompt": "x", "stream": value}).stream is stream


def test_openai_cache_salt_and_multimodal_parts() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "u"}},
        {"type": "input_audio", "input_audio": {"data": "d", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "v"}},
    ]
    parsed = _parse(
        OPENAI,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": content}], "cache_salt": "s1"},
    )
    assert parsed.cache_salt == "s1"
    assert parsed.mm_modalities == ("image", "audio", "video")
    assert parsed.model == ""


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", b"", r"^body: not valid JSON: Expecting value"),
        ("/v1/chat/completions", b"[1]", r"^body: expected a JSON object, got \[1\] \(list\)$"),
        ("/v1/chat/completions", b'{"a":NaN}', r"^body: not valid JSON: NaN is not JSON$"),
        (
            "/v1/chat/completions",
            b'{"a":1e999}',
            r"^body: not valid JSON: number 1e999 out of range$",
        ),
        ("/v1/chat/completions", b"[" * 5000, r"^body: nested too deeply$"),
        (
            "/v1/chat/completions",
            {"messages": []},
            r"^messages: expected at least one message, got none$",
        ),
        ("/v1/chat/completions", {}, r"^messages: expected at least one message, got none$"),
        (
            "/v1/chat/completions",
            {"messages": [{"content": 3}]},
            r"^messages\[0\]\.content: expected a string or a list of content blocks, "
            r"got 3 \(int\)$",
        ),
        (
            "/v1/chat/completions",
            {"messages": MSG, "model": 3},
            r"^model: expected a string, got 3 \(int\)$",
        ),
        (
            "/v1/chat/completions",
            {"messages": MSG, "cache_salt": 1},
            r"^cache_salt: expected a string, got 1 \(int\)$",
        ),
        ("/v1/completions", {}, r"^prompt: required, got none$"),
        ("/v1/embeddings", {"input": None}, r"^input: required, got none$"),
        ("/v1/completions", {"prompt": ""}, r"^prompt: expected a non-empty string"),
        (
            "/v1/completions",
            {"prompt": [1, "a"]},
            r"^prompt\[1\]: expected a token id like the first element, got 'a' \(str\)$",
        ),
        (
            "/v1/completions",
            {"prompt": [1.5]},
            r"^prompt\[0\]: expected an integer token id, got 1\.5 \(float\)$",
        ),
        (
            "/v1/completions",
            {"prompt": [2**32]},
            r"^prompt\[0\]: expected a token id in \[0, 4294967295\]",
        ),
        (
            "/v1/completions/render",
            {"prompt": ["a", 1]},
            r"^prompt\[1\]: expected a string like prompt\[0\], got 1 \(int\)$",
        ),
        ("/v1/responses", {}, r"^input: required for the responses API, got none$"),
        (
            "/v1/conversations",
            {"items": []},
            r"^items: expected at least one conversation item, got none$",
        ),
        (
            "/v1/embeddings",
            {"input": []},
            r"^input: expected a non-empty string, list of strings or token ids$",
        ),
        (
            "/v1/images/generations",
            {"prompt": ""},
            r"^prompt: expected a non-empty string, got '' \(str\)$",
        ),
        (
            "/v1/images/generations",
            {"prompt": "c", "n": 1.5},
            r"^n: expected an integer, got 1\.5 \(float\)$",
        ),
        (
            "/v1/images/generations",
            {"prompt": "c", "size": 2},
            r"^size: expected a string, got 2 \(int\)$",
        ),
        (
            "/v1/images/generations",
            {"prompt": "c", "num_inference_steps": True},
            r"^num_inference_steps: expected an integer, got True \(bool\)$",
        ),
    ],
)
def test_openai_validation_errors(path: str, body: Any, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        _parse(OPENAI, path, body)
    assert info.value.http_status == 400
    assert info.value.parser == "openai-parser"
    assert str(info.value).startswith(info.value.field + ": ")


def test_invalid_utf8_is_replaced_as_go_does() -> None:
    parsed = _parse(OPENAI, "/v1/completions", b'{"prompt":"a\xffb"}')
    assert parsed.prompt == "a\ufffdb".encode()


# ====================================================================== openai usage
@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (
            {
                "object": "chat.completion",
                "usage": {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17},
            },
            Usage(7, 10, 0, 17),
        ),
        (
            {"usage": {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 99}},
            Usage(7, 10, 0, 99),
        ),
        ({"usage": {"prompt_tokens": 7, "completion_tokens": 10}}, Usage(7, 10, 0, 17)),
        (
            {
                "usage": {
                    "input_tokens": 5,
                    "output_tokens": 3,
                    "input_tokens_details": {"cached_tokens": 2},
                }
            },
            Usage(5, 3, 2, 8),
        ),
        (
            {
                "usage": {
                    "prompt_tokens": "6",
                    "completion_tokens": 2.9,
                    "prompt_tokens_details": {"cached_tokens": "4"},
                }
            },
            Usage(6, 2, 4, 8),
        ),
        (
            {"usage": {"prompt_tokens": None, "input_tokens": 3, "completion_tokens": "x"}},
            Usage(3, 0, 0, 3),
        ),
        (
            {"usage": {"prompt_tokens": -5, "completion_tokens": 1e300}},
            Usage(0, 2**63 - 1, 0, 2**63 - 1),
        ),
        (
            {
                "usage": {
                    "prompt_tokens": 1,
                    "prompt_tokens_details": {"cached_tokens": 1},
                    "input_tokens_details": {"cached_tokens": 0},
                }
            },
            Usage(1, 0, 0, 1),
        ),
        ({"usage": {}}, Usage(0, 0, 0, 0)),
        ({"usage": None}, None),
        ({"choices": []}, None),
        ([1, 2], None),
    ],
)
def test_openai_json_usage(body: Any, usage: Usage | None) -> None:
    state = _usage(OPENAI, JSON_HEADERS, _body(body)[:5], _body(body)[5:])
    assert state.usage == usage
    assert state.streamed_events == 0
    assert state.is_streaming is False


def test_openai_json_usage_waits_for_the_end_of_stream() -> None:
    state = _usage(OPENAI, JSON_HEADERS)
    body = _body({"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    assert state.feed(body) is None
    assert state.feed(b"", end_of_stream=True) == Usage(1, 1, 0, 2)


def test_openai_malformed_json_body_has_no_usage() -> None:
    assert _usage(OPENAI, JSON_HEADERS, b'{"usage": {"prompt_tokens": 1}').usage is None


CHAT_STREAM = (
    b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"}}]}\n\n'
    b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"b"}}]}\n\n'
    b'data: {"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,'
    b'"total_tokens":17,"completion_tokens":10}}\n\n'
    b"data: [DONE]\n\n"
)
RESPONSES_STREAM = (
    b"event: response.created\n"
    b'data: {"type":"response.created","response":{"usage":null}}\n\n'
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n'
    b"event: response.completed\n"
    b'data: {"type":"response.completed","response":{"object":"response","usage":'
    b'{"input_tokens":31,"output_tokens":4,"total_tokens":35,'
    b'"input_tokens_details":{"cached_tokens":16}}}}\n\n'
)


@pytest.mark.parametrize(
    ("stream", "usage", "events"),
    [
        (CHAT_STREAM, Usage(7, 10, 0, 17), 3),
        (CHAT_STREAM.replace(b"\n", b"\r\n"), Usage(7, 10, 0, 17), 3),
        (RESPONSES_STREAM, Usage(31, 4, 16, 35), 3),
        (
            b'data: {"usage":{"prompt_tokens":3,"completion_tokens":1}}\n'
            b'data: {"usage":{"prompt_tokens":3,"completion_tokens":2}}\n',
            Usage(3, 2, 0, 5),
            2,
        ),
        (b"data: [DONE]\n", None, 0),
        (b"data: not json\n", None, 1),
        (b'data:{"usage":{"prompt_tokens":3}}\n', None, 0),  # upstream needs "data: "
        (
            b'data: {"type":"response.in_progress","response":{"usage":{"input_tokens":1}}}\n',
            None,
            1,
        ),
        (
            b'data: {"usage":{"prompt_tokens":3,"completion_tokens":1}}',
            Usage(3, 1, 0, 4),
            1,
        ),  # no final newline
    ],
    ids=["chat", "crlf", "responses", "merged", "done", "junk", "no-space", "in-progress", "eof"],
)
def test_openai_sse_usage(stream: bytes, usage: Usage | None, events: int) -> None:
    state = _usage(OPENAI, SSE, stream)
    assert state.is_streaming is True
    assert state.usage == usage
    assert state.streamed_events == events


@pytest.mark.parametrize(
    ("events", "usage"),
    [
        # a zero count does not overwrite; a reported cached count does (even 0)
        (
            [
                {
                    "prompt_tokens": 5,
                    "completion_tokens": 1,
                    "prompt_tokens_details": {"cached_tokens": 3},
                },
                {"completion_tokens": 4, "prompt_tokens": 0},
            ],
            Usage(5, 4, 3, 9),
        ),
        (
            [
                {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}},
                {"completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 0}},
            ],
            Usage(5, 4, 0, 9),
        ),
        # the total is the event's own only when it had prompt, completion and total
        (
            [{"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 100}],
            Usage(5, 4, 0, 100),
        ),
        (
            [
                {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 100},
                {"completion_tokens": 6, "total_tokens": 50},
            ],
            Usage(5, 6, 0, 11),
        ),
        ([{"prompt_tokens": 5, "total_tokens": 100}], Usage(5, 0, 0, 5)),
    ],
)
def test_merge_rules(events: list[dict[str, Any]], usage: Usage) -> None:
    stream = b"".join(b"data: " + _body({"usage": e}) + b"\n\n" for e in events)
    assert _usage(OPENAI, SSE, stream).usage == usage


# ====================================================================== anthropic
def test_anthropic_messages() -> None:
    body = {
        "model": "claude",
        "max_tokens": 64,
        "stream": True,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {}}, {"type": "text", "text": "?"}],
            },
            {"role": "assistant", "content": "ok"},
        ],
        "tools": [],
        "cache_salt": "s",
    }
    parsed = _parse(ANTHROPIC, "/v1/messages", body)
    assert (parsed.api, parsed.model, parsed.stream) == ("messages", "claude", True)
    assert parsed.max_output_tokens == 64
    assert parsed.cache_salt == "s"
    assert parsed.mm_modalities == ("image",)
    assert parsed.payload == body
    assert parsed.rewrites_model is True
    assert parsed.prompt is not None
    assert parsed.prompt.startswith(b'[{"system":[{"text":"Be brief.","type":"text"}]},')


def test_anthropic_count_tokens_is_forwarded_unread() -> None:
    parsed = ANTHROPIC.parse_request("/v1/messages/count_tokens", {}, b"not even json")
    assert parsed.skip_response_processing is True
    assert parsed.payload is None
    assert parsed.model == ""
    assert parsed.rewrites_model is False
    assert parsed.forward_body("x") == b"not even json"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/complete", {"messages": MSG}, r"^path: unsupported API endpoint '/v1/complete'$"),
        ("/v1/messages", b"[]", r"^body: expected a JSON object, got \[\] \(list\)$"),
        ("/v1/messages", {}, r"^messages: expected at least one message, got none$"),
        ("/v1/messages", {"messages": []}, r"^messages: expected at least one message, got none$"),
        ("/v1/messages", {"messages": {}}, r"^messages: expected a list, got \{\} \(object\)$"),
        (
            "/v1/messages",
            {"messages": ["x"]},
            r"^messages\[0\]: expected an object, got 'x' \(str\)$",
        ),
        (
            "/v1/messages",
            {"messages": [{"role": 1}]},
            r"^messages\[0\]\.role: expected a string, got 1 \(int\)$",
        ),
        (
            "/v1/messages",
            {"messages": [{"content": 1}]},
            r"^messages\[0\]\.content: expected a string or a list of content blocks, "
            r"got 1 \(int\)$",
        ),
        (
            "/v1/messages",
            {"messages": [{"content": [1]}]},
            r"^messages\[0\]\.content\[0\]: expected a content block object, got 1 \(int\)$",
        ),
        (
            "/v1/messages",
            {"messages": [{"content": [{"type": 1}]}]},
            r"^messages\[0\]\.content\[0\]\.type: expected a string, got 1 \(int\)$",
        ),
        (
            "/v1/messages",
            {"messages": MSG, "system": 3},
            r"^system: expected a string or a list of content blocks, got 3 \(int\)$",
        ),
        (
            "/v1/messages",
            {"messages": MSG, "tools": {}},
            r"^tools: expected a list, got \{\} \(object\)$",
        ),
        (
            "/v1/messages",
            {"messages": MSG, "cache_salt": []},
            r"^cache_salt: expected a string, got \[\] \(list\)$",
        ),
        (
            "/v1/messages",
            {"messages": MSG, "model": {}},
            r"^model: expected a string, got \{\} \(object\)$",
        ),
    ],
)
def test_anthropic_validation_errors(path: str, body: Any, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        _parse(ANTHROPIC, path, body)


def test_anthropic_json_usage() -> None:
    body = {"usage": {"input_tokens": 25, "output_tokens": 15, "cache_read_input_tokens": 10}}
    assert _usage(ANTHROPIC, JSON_HEADERS, _body(body)).usage == Usage(25, 15, 10, 40)
    strings = {"usage": {"input_tokens": "25", "output_tokens": 15}}  # numbers only
    assert _usage(ANTHROPIC, JSON_HEADERS, _body(strings)).usage == Usage(0, 15, 0, 15)


ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":25,'
    b'"cache_read_input_tokens":5,"output_tokens":1}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":15}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)


def test_anthropic_sse_usage() -> None:
    state = _usage(ANTHROPIC, SSE, ANTHROPIC_STREAM)
    assert state.usage == Usage(25, 15, 5, 40)


# ====================================================================== vllmhttp
def test_vllm_generate() -> None:
    body = {
        "model": "m",
        "token_ids": [1, 2.0, 4294967295],
        "sampling_params": {"max_tokens": 16},
        "stream": True,
        "cache_salt": "s",
        "features": {
            "mm_hashes": {"image": ["h1", "h2"]},
            "mm_placeholders": {
                "image": [{"offset": 3, "length": 10}, {"offset": 20, "length": 5}]
            },
        },
    }
    parsed = _parse(VLLM, "/inference/v1/generate", body)
    assert parsed.api == "inference/v1/generate"
    assert parsed.token_ids == (1, 2, 4294967295)
    assert (parsed.model, parsed.stream, parsed.max_output_tokens) == ("m", True, 16)
    assert parsed.cache_salt == "s"
    assert parsed.mm_hashes == {"image": ("h1", "h2")}
    assert parsed.mm_placeholders == {"image": ((3, 10), (20, 5))}
    assert parsed.mm_modalities == ("image", "image")
    assert parsed.rewrites_model is True
    assert parsed.to_request({}).token_ids is not None


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/generate", {"token_ids": [1]}, r"^path: unsupported API endpoint '/v1/generate'$"),
        ("/inference/v1/generate", {}, r"^token_ids: required, got none$"),
        (
            "/inference/v1/generate",
            {"token_ids": []},
            r"^token_ids: expected at least one token id, got none$",
        ),
        (
            "/inference/v1/generate",
            {"token_ids": "12"},
            r"^token_ids: expected a list of token ids, got '12' \(str\)$",
        ),
        (
            "/inference/v1/generate",
            {"token_ids": [1, -1]},
            r"^token_ids\[1\]: expected a token id in \[0, 4294967295\], got -1 \(int\)$",
        ),
        ("/inference/v1/generate", {"token_ids": [1.5]}, r"^token_ids\[0\]: expected a token id"),
        ("/inference/v1/generate", {"token_ids": [True]}, r"^token_ids\[0\]: expected a token id"),
        (
            "/inference/v1/generate",
            {"token_ids": [1], "features": []},
            r"^features: expected an object, got \[\] \(list\)$",
        ),
        (
            "/inference/v1/generate",
            {"token_ids": [1], "features": {"mm_hashes": {"image": [1]}}},
            r"^features\.mm_hashes\.image: expected a list of strings",
        ),
        (
            "/inference/v1/generate",
            {"token_ids": [1], "features": {"mm_placeholders": {"image": [{"offset": -1}]}}},
            r"^features\.mm_placeholders\.image\[0\]\.offset: "
            r"expected an integer >= 0, got -1 \(int\)$",
        ),
        (
            "/inference/v1/generate",
            {"token_ids": [1], "cache_salt": 5},
            r"^cache_salt: expected a string, got 5 \(int\)$",
        ),
    ],
)
def test_vllm_validation_errors(path: str, body: Any, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        _parse(VLLM, path, body)


def test_vllm_usage_is_openai_usage() -> None:
    assert _usage(VLLM, SSE, CHAT_STREAM).usage == Usage(7, 10, 0, 17)


# ====================================================================== sglanghttp
@pytest.mark.parametrize("path", ["/generate", "generate", "/generate/", " /generate "])
def test_sglang_generate(path: str) -> None:
    raw = (
        b'{"input_ids":[1,2,3],"extra_key":"k","sampling_params":{"max_new_tokens":8},'
        b'"stream":true,"model":"m"}'
    )
    parsed = SGLANG.parse_request(path, {}, raw)
    assert parsed.api == "generate"
    assert parsed.token_ids == (1, 2, 3)
    assert (parsed.cache_salt, parsed.max_output_tokens, parsed.stream) == ("k", 8, True)
    assert parsed.payload is None  # kept raw
    assert parsed.model == ""  # not read
    assert parsed.rewrites_model is False
    assert parsed.forward_body("other") == raw


@pytest.mark.parametrize(
    ("sampling", "max_new"),
    [
        ({"max_new_tokens": 0}, 0),
        ({"max_new_tokens": -1}, None),
        ({"max_new_tokens": 5.0}, None),
        ([{"max_new_tokens": 5}], None),
        (None, None),
    ],
)
def test_sglang_max_new_tokens(sampling: Any, max_new: int | None) -> None:
    parsed = _parse(SGLANG, "/generate", {"input_ids": [1], "sampling_params": sampling})
    assert parsed.max_output_tokens == max_new


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/generate", {"input_ids": [1]}, r"^path: unsupported path '/v1/generate'$"),
        ("/generate", {}, r"^input_ids: required, got none$"),
        ("/generate", {"input_ids": None}, r"^input_ids: required, got none$"),
        ("/generate", {"input_ids": []}, r"^input_ids: expected at least one token id, got none$"),
        ("/generate", {"input_ids": [[1, 2]]}, r"^input_ids\[0\]: expected a token id"),
        ("/generate", {"input_ids": [1.0]}, r"^input_ids\[0\]: expected a token id"),  # uint32 only
        (
            "/generate",
            {"input_ids": [1], "extra_key": 3},
            r"^extra_key: expected a string, got 3 \(int\)$",
        ),
        (
            "/generate",
            {"input_ids": [1], "stream": "yes"},
            r"^stream: expected a boolean, got 'yes' \(str\)$",
        ),
        ("/generate", b"null", r"^body: expected a JSON object, got null$"),
    ],
)
def test_sglang_validation_errors(path: str, body: Any, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        _parse(SGLANG, path, body)


def test_sglang_json_usage() -> None:
    meta = {"prompt_tokens": 9, "completion_tokens": 3, "cached_tokens": 4}
    body = {"text": "x", "meta_info": meta}
    assert _usage(SGLANG, JSON_HEADERS, _body(body)).usage == Usage(9, 3, 4, 12)
    assert _usage(SGLANG, JSON_HEADERS, _body({"meta_info": {"cached_tokens": 4}})).usage is None
    floats = {"meta_info": {"prompt_tokens": 9.0, "completion_tokens": 3}}  # Go's *int refuses
    assert _usage(SGLANG, JSON_HEADERS, _body(floats)).usage is None


def test_sglang_sse_usage_is_the_first_finished_event() -> None:
    stream = (
        b'data: {"text":"a","meta_info":{"finish_reason":null,'
        b'"prompt_tokens":9,"completion_tokens":1}}\n\n'
        b'  data: {"text":"ab","meta_info":{"finish_reason":{"type":"stop"},'
        b'"prompt_tokens":9,"completion_tokens":2}}  \n\n'
        b'data: {"text":"ab","meta_info":{"finish_reason":{"type":"stop"},'
        b'"prompt_tokens":9,"completion_tokens":5}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert _usage(SGLANG, SSE, stream).usage == Usage(9, 2, 0, 11)


# ====================================================================== passthrough
def test_passthrough_keeps_the_body_raw_and_reads_no_usage() -> None:
    parsed = PASS.parse_request("/anything", {}, b"\x00\xff")
    assert parsed == parsed  # identity: eq is by object
    assert (parsed.api, parsed.payload, parsed.model, parsed.prompt) == ("", None, "", None)
    assert parsed.forward_body("m") == b"\x00\xff"
    assert parsed.to_request({}).target_model == ""
    assert _usage(PASS, JSON_HEADERS, _body({"usage": {"prompt_tokens": 1}})).usage is None


# ====================================================================== properties
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "input",
        "items",
        "stream",
        "max_tokens",
        "cache_salt",
        "token_ids",
        "input_ids",
        "features",
        "sampling_params",
        "extra_key",
        "system",
        "tools",
        "n",
        "size",
        "max_completion_tokens",
        "max_output_tokens",
    ]
)
_PATHS = st.sampled_from(
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/conversations",
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/chat/completions/render",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/inference/v1/generate",
        "/generate",
        "/x",
    ]
)


def _parse_or_400(parser: Parser, path: str, body: bytes) -> None:
    # the property: a ParseError naming a field, or a request the Director can use
    try:
        parsed = parser.parse_request(path, {}, body)
    except ParseError as exc:
        error = exc
    else:
        assert parsed.raw_body == body
        parsed.forward_body("other-model")
        with contextlib.suppress(ParseError):  # no model for a rewriting parser
            parsed.to_request({})
        return
    assert error.http_status == 400
    assert error.field


@given(st.sampled_from(sorted(PARSERS)), _PATHS, st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_parse_error(name: str, path: str, body: bytes) -> None:
    _parse_or_400(PARSERS[name], path, body)


@given(st.sampled_from(sorted(PARSERS)), _PATHS, st.dictionaries(_KEYS, _JSON, max_size=5))
def test_arbitrary_json_raises_only_parse_error(name: str, path: str, body: dict[str, Any]) -> None:
    _parse_or_400(PARSERS[name], path, json.dumps(body).encode())


@given(
    st.sampled_from(["openai-parser", "anthropic-parser", "sglanghttp-parser"]),
    st.booleans(),
    st.lists(
        st.binary(max_size=40) | _JSON.map(lambda v: b"data: " + _body(v) + b"\n"), max_size=6
    ),
)
def test_arbitrary_response_bytes_never_raise(name: str, sse: bool, chunks: list[bytes]) -> None:
    state = _usage(PARSERS[name], SSE if sse else JSON_HEADERS, *chunks)
    assert state.usage is None or state.usage.total_tokens >= 0


_STREAMS = {"openai-parser": CHAT_STREAM + RESPONSES_STREAM, "anthropic-parser": ANTHROPIC_STREAM}


@given(st.sampled_from(sorted(_STREAMS)), st.lists(st.integers(0, 2000), max_size=12))
def test_sse_split_anywhere_gives_the_same_usage(name: str, cuts: list[int]) -> None:
    stream = _STREAMS[name]
    whole = _usage(PARSERS[name], SSE, stream)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    split = _usage(PARSERS[name], SSE, *chunks)
    assert (split.usage, split.streamed_events) == (whole.usage, whole.streamed_events)
    assert whole.usage is not None
