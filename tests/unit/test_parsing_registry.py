"""Parser resolution (llmd-router.md §4.2), the request path, and what a parsed request
gives the Director: the scheduler's Request, the forwarded body, the model restored in
responses (gie.md §5.4)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched import EndpointTable, Scheduler
from inference_sched.errors import ParseError
from inference_sched.framework.interfaces import Parser
from inference_sched.framework.parsing import (
    DEFAULT_PATH,
    ParsedRequest,
    ParserRegistry,
    ResponseUsageParser,
    request_path,
    restore_response_model,
    rewrite_request_model,
)
from inference_sched.params import NoParams
from inference_sched.plugins.parsers import (
    AnthropicParser,
    OpenAIParser,
    PassthroughParser,
    SGLangHTTPParser,
    VllmHTTPParser,
)

NO = NoParams()

pytestmark = pytest.mark.unit


class _StubParser:
    """A parser that claims what it is told to (to test the registry alone)."""

    type: ClassVar[str] = "stub"
    Params = NoParams

    def __init__(self, name: str, claims: tuple[str, ...]) -> None:
        self.name = name
        self._claims = claims

    def claims(self) -> tuple[str, ...]:
        return self._claims

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        return ParsedRequest(parser=self.name, api=path, raw_body=body)

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        return ResponseUsageParser(lambda document: None)


def _Stub(name: str, plugin_type: str, claims: tuple[str, ...]) -> Parser:
    cls = type(f"Stub_{plugin_type}", (_StubParser,), {"type": plugin_type})
    parser: Parser = cls(name, claims)
    return parser


def _defaults() -> ParserRegistry:
    return ParserRegistry(
        [
            OpenAIParser("openai-parser", NO, None),
            AnthropicParser("anthropic-parser", NO, None),
            VllmHTTPParser("vllmhttp-parser", NO, None),
            PassthroughParser("passthrough-parser", NO, None),
        ]
    )


# ====================================================================== path
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({":path": "/v1/chat/completions"}, "/v1/chat/completions"),
        ({":path": "/v1/chat/completions?api-version=2"}, "/v1/chat/completions"),
        ({":PATH": "/v1/embeddings"}, "/v1/embeddings"),  # any case
        ({"x-original-path": "/v1/responses"}, "/v1/responses"),
        ({"x-forwarded-path": "/v1/messages"}, "/v1/messages"),
        ({":path": "/a", "x-original-path": "/b", "x-forwarded-path": "/c"}, "/a"),
        ({"x-original-path": "/b", "x-forwarded-path": "/c"}, "/b"),
        ({":path": "", "x-forwarded-path": "/c"}, "/c"),  # empty is absent
        ({}, DEFAULT_PATH),
        ({":path": "?only=query"}, ""),
    ],
    ids=["path", "query", "case", "original", "forwarded", "order", "order2", "empty", "none", "q"],
)
def test_request_path(headers: dict[str, str], expected: str) -> None:
    assert request_path(headers) == expected


# ====================================================================== resolution
@pytest.mark.parametrize(
    ("path", "parser"),
    [
        ("/v1/chat/completions", "openai-parser"),
        ("/v1/chat/completions/", "openai-parser"),  # trailing / trimmed
        ("/v1/completions", "openai-parser"),
        ("/v1/chat/completions/render", "openai-parser"),
        ("/v1/messages", "anthropic-parser"),
        ("/v1/messages/count_tokens", "anthropic-parser"),
        ("/inference/v1/generate", "vllmhttp-parser"),
        ("/generate", "passthrough-parser"),  # sglanghttp-parser is not a default
        ("/v1/models", "passthrough-parser"),
        ("/v1/xcompletions", "openai-parser"),  # a plain string suffix
        ("/projects/p/locations/l/chat/completions", "openai-parser"),
        ("", "passthrough-parser"),
    ],
)
def test_default_parsers_resolve(path: str, parser: str) -> None:
    assert _defaults().resolve(path).name == parser


def test_longest_claimed_suffix_wins_in_any_order() -> None:
    short = _Stub("short", "a", ("completions",))
    long = _Stub("long", "b", ("chat/completions",))
    for parsers in ([short, long], [long, short]):
        registry = ParserRegistry(parsers)
        assert registry.resolve("/v1/chat/completions").name == "long"
        assert registry.resolve("/v1/completions").name == "short"


def test_claims_are_normalised() -> None:
    registry = ParserRegistry([_Stub("s", "a", (" /chat/completions/ ", "", " / "))])
    assert registry.claims == {"chat/completions": "s"}
    assert registry.resolve("/v1/chat/completions").name == "s"


def test_a_second_parser_of_a_seen_type_is_ignored() -> None:
    registry = ParserRegistry([_Stub("first", "a", ("x",)), _Stub("second", "a", ("longer/x",))])
    assert [p.name for p in registry.parsers] == ["first"]
    assert registry.resolve("/longer/x").name == "first"


def test_the_first_claimless_parser_is_the_fallback_and_ends_the_list() -> None:
    registry = ParserRegistry(
        [_Stub("a", "a", ("x",)), _Stub("fb", "fb", ()), _Stub("late", "late", ("y",))]
    )
    assert [p.name for p in registry.parsers] == ["a", "fb"]
    assert registry.fallback is not None
    assert registry.fallback.name == "fb"
    assert registry.resolve("/y").name == "fb"  # the later claim was ignored


def test_an_earlier_parser_keeps_a_shared_claim() -> None:
    registry = ParserRegistry([_Stub("a", "a", ("x",)), _Stub("b", "b", ("x",))])
    assert registry.resolve("/x").name == "a"


def test_no_parser_and_no_fallback_is_a_400() -> None:
    registry = ParserRegistry([_Stub("a", "a", ("chat/completions",))])
    with pytest.raises(ParseError, match=r"^path: no parser serves '/v1/models'$") as info:
        registry.resolve("/v1/models")
    assert info.value.http_status == 400
    assert info.value.field == "path"


def test_parse_resolves_from_headers_and_strips_the_query() -> None:
    registry = ParserRegistry([_Stub("a", "a", ("chat/completions",)), _Stub("fb", "fb", ())])
    parser, parsed = registry.parse({":Path": "/v1/chat/completions?x=1"}, b"{}")
    assert (parser.name, parsed.api, parsed.raw_body) == ("a", "/v1/chat/completions", b"{}")
    parser, parsed = registry.parse({}, b"")  # no path header: /v1/completions, unclaimed
    assert (parser.name, parsed.api) == ("fb", DEFAULT_PATH)


def test_the_registry_of_a_built_config() -> None:
    scheduler = Scheduler.from_config(None, EndpointTable())
    assert scheduler.config is not None
    registry = ParserRegistry.from_plugins(scheduler.config.parsers, scheduler.plugins)
    assert [p.name for p in registry.parsers] == [
        "openai-parser",
        "anthropic-parser",
        "vllmhttp-parser",
        "passthrough-parser",
    ]
    config = (
        "plugins: [{type: queue-scorer}, {type: sglanghttp-parser, name: sg}]\n"
        "requestHandler: {parsers: [{pluginRef: sg}, {pluginRef: openai-parser}]}\n"
    )
    scheduler = Scheduler.from_config(config, EndpointTable())
    assert scheduler.config is not None
    registry = ParserRegistry.from_plugins(scheduler.config.parsers, scheduler.plugins)
    assert [p.name for p in registry.parsers] == ["sg", "openai-parser"]
    assert registry.fallback is None
    assert registry.resolve("/generate").name == "sg"
    with pytest.raises(ParseError):
        registry.resolve("/v1/messages")


@given(st.text(max_size=60))
def test_resolution_never_raises_anything_but_parse_error(path: str) -> None:
    registry = ParserRegistry([_Stub("a", "a", ("chat/completions", "completions"))])
    claimed = path.rstrip("/").endswith("completions")
    if claimed:
        assert registry.resolve(path).name == "a"
    else:
        with pytest.raises(ParseError):
            registry.resolve(path)


# ====================================================================== Director
_CHAT = b'{"model":"llama","messages":[{"role":"user","content":"Hi"}],"stream":true}'


def _chat() -> ParsedRequest:
    return OpenAIParser("openai-parser", NO, None).parse_request("/v1/chat/completions", {}, _CHAT)


def test_to_request_carries_what_the_scheduler_reads() -> None:
    request = _chat().to_request(
        {"x-request-id": "r1", "x-gateway-model-name-rewrite": "llama-lora"},
        priority=2,
        subset_hint=["10.0.0.1:8000"],
        base_models=["llama"],
    )
    assert request.request_id == "r1"
    assert (request.incoming_model, request.target_model) == ("llama", "llama-lora")
    assert request.lora_adapter == "llama-lora"
    assert request.prompt == b'[{"role":"user","content":"Hi"}]'
    assert request.body == json.loads(_CHAT)
    assert request.is_streaming is True
    assert request.request_size_bytes == len(_CHAT)
    assert request.priority == 2
    assert request.subset_hint == ("10.0.0.1:8000",)


def test_a_rewriting_parser_without_a_model_is_a_400() -> None:
    parsed = OpenAIParser("openai-parser", NO, None).parse_request(
        "/v1/completions", {}, b'{"prompt":"x"}'
    )
    with pytest.raises(ParseError, match=r"^model: not found in request body$"):
        parsed.to_request({})
    # the rewrite header names the target: accepted
    assert parsed.target_model({"X-Gateway-Model-Name-Rewrite": "m"}) == "m"


def test_a_raw_payload_keeps_its_salt_for_the_scheduler() -> None:
    parsed = SGLangHTTPParser("sg", NO, None).parse_request(
        "/generate", {}, b'{"input_ids":[1,2],"extra_key":"tenant"}'
    )
    request = parsed.to_request({})
    assert request.target_model == ""  # a non-rewriting parser reads no model
    assert request.body == {"cache_salt": "tenant"}
    assert request.token_ids is not None
    assert request.token_ids.tolist() == [1, 2]
    assert parsed.forward_body("anything") == b'{"input_ids":[1,2],"extra_key":"tenant"}'


def test_forward_body_rewrites_only_a_changed_model() -> None:
    parsed = _chat()
    assert parsed.forward_body("llama") is parsed.raw_body
    assert json.loads(parsed.forward_body("llama-lora")) == {
        **json.loads(_CHAT),
        "model": "llama-lora",
    }


def test_rewrite_request_model_is_compact_and_keeps_unicode() -> None:
    assert rewrite_request_model({"model": "a", "x": "é"}, "b") == '{"model":"b","x":"é"}'.encode()


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (b'{"model":"t","x":1}', b'{"model":"in","x":1}'),
        (b'{"model": "t"}', b'{"model": "in"}'),
        (
            b'data: {"model":"t"}\n\ndata: {"model":"t"}\n\n',
            b'data: {"model":"in"}\n\ndata: {"model":"in"}\n\n',
        ),
        (b'{"model":"t2"}', b'{"model":"t2"}'),  # another model is left alone
        (b'{"model" : "t"}', b'{"model" : "t"}'),  # upstream matches two spellings only
        (b"", b""),
    ],
)
def test_restore_response_model(chunk: bytes, expected: bytes) -> None:
    assert restore_response_model(chunk, "t", "in") == expected


def test_restore_is_a_no_op_without_a_rewrite() -> None:
    chunk = b'{"model":"t"}'
    assert restore_response_model(chunk, "t", "t") is chunk
