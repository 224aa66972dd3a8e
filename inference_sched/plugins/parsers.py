"""Request parsers (llm-d-router:
``pkg/epp/framework/plugins/requesthandling/parsers/{openai,anthropic,vllmhttp,sglanghttp,
passthrough}``; spec ``llmd-router.md`` §4.2).

Each parser claims path suffixes, reads a request body into a
:class:`~inference_sched.framework.parsing.ParsedRequest` (a body that does not fit is
a :class:`~inference_sched.errors.ParseError`, HTTP 400, naming the field) and reads the
response's token usage. ``vllmgrpc-parser`` and ``vertexai-parser`` are not here: they
decode vLLM's and Vertex AI's protobuf messages, which this package does not ship.
``docs/parsers.md`` and ``docs/plugins/<type>.md`` describe each one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from inference_sched.errors import DataError, ParseError
from inference_sched.framework.interfaces import Handle, Parser
from inference_sched.framework.parsing import (
    ParsedRequest,
    ResponseUsageParser,
    UsagePart,
    to_token_count,
)
from inference_sched.framework.registry import register
from inference_sched.params import NoParams
from inference_sched.prefix.prompt_bytes import cache_salt, go_json_marshal, prompt_bytes

__all__ = [
    "AnthropicParser",
    "OpenAIParser",
    "PassthroughParser",
    "SGLangHTTPParser",
    "VllmHTTPParser",
]

_MAX_UINT32: Final = 2**32 - 1
_MAX_INT64: Final = 2**63 - 1
_MAX_SHOWN: Final = 40


# ------------------------------------------------------------------- helpers
def _describe(value: object) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    kind = {dict: "object", list: "list", str: "str", bool: "bool", int: "int", float: "float"}
    return f"{text} ({kind.get(type(value), type(value).__name__)})"


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # Go's decoder refuses numbers beyond float64
        raise ValueError(f"number {text[:_MAX_SHOWN]} out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(body: bytes, parser: str) -> Any:
    """Decode a request body as Go's ``json.Unmarshal`` would accept it."""
    try:
        return json.loads(
            body.decode("utf-8", "replace"),  # Go replaces invalid UTF-8 by U+FFFD
            parse_float=_finite_float,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        raise ParseError("body", "nested too deeply", parser=parser) from None
    except ValueError as exc:
        raise ParseError("body", f"not valid JSON: {exc}", parser=parser) from None


def _load_object(body: bytes, parser: str) -> dict[str, Any]:
    document = _load_json(body, parser)
    if not isinstance(document, dict):
        raise ParseError(
            "body", f"expected a JSON object, got {_describe(document)}", parser=parser
        )
    return document


def _from_data_error(exc: DataError, parser: str) -> ParseError:
    field, sep, problem = str(exc).partition(": ")
    return ParseError(field if sep else "body", problem if sep else str(exc), parser=parser)


def _model(payload: Mapping[str, Any], parser: str) -> str:
    value = payload.get("model")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError("model", f"expected a string, got {_describe(value)}", parser=parser)
    return value


def _optional_str(payload: Mapping[str, Any], key: str, parser: str) -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError(key, f"expected a string, got {_describe(value)}", parser=parser)
    return value


def _max_tokens(value: Any) -> int | None:
    """A non-negative integral JSON number, else ``None`` (llm-d-router ignores it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if 0 <= value <= _MAX_INT64 else None


def _first_max_tokens(payload: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = _max_tokens(payload.get(key))
        if value is not None:
            return value
    return None


def _token_ids(value: Any, field: str, parser: str, *, integral_floats: bool) -> tuple[int, ...]:
    if value is None:
        raise ParseError(field, "required, got none", parser=parser)
    if not isinstance(value, list):
        raise ParseError(
            field, f"expected a list of token ids, got {_describe(value)}", parser=parser
        )
    if not value:
        raise ParseError(field, "expected at least one token id, got none", parser=parser)
    out: list[int] = []
    for i, item in enumerate(value):
        ok = isinstance(item, int) and not isinstance(item, bool)
        if integral_floats and isinstance(item, float) and item.is_integer():
            ok = True
        if not ok or not 0 <= item <= _MAX_UINT32:
            raise ParseError(
                f"{field}[{i}]",
                f"expected a token id in [0, {_MAX_UINT32}], got {_describe(item)}",
                parser=parser,
            )
        out.append(int(item))
    return tuple(out)


def _json_number(value: Any) -> int | None:
    """A JSON number only (Go ``.(float64)``), truncated; ``None`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return to_token_count(value)


def _strict_int(value: Any) -> int | None:
    """A JSON integer only (Go ``*int``: ``3.0`` fails the decode); raises on others."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > _MAX_INT64:
        raise ValueError(f"expected an integer, got {value!r}")
    return max(0, value)


def _path_tail(path: str) -> str:
    return path.rstrip("/")


# ==================================================================== openai
_OPENAI_APIS: Final = (
    # (path suffix, API whose body shape it has, keys that cap output tokens)
    ("conversations", "conversations", ()),
    ("responses", "responses", ("max_output_tokens",)),
    ("chat/completions/render", "chat/completions", ("max_completion_tokens", "max_tokens")),
    ("chat/completions", "chat/completions", ("max_completion_tokens", "max_tokens")),
    ("completions/render", "completions", ("max_tokens",)),
    ("completions", "completions", ("max_tokens",)),
    ("embeddings", "embeddings", ()),
    ("images/generations", "images/generations", ()),
)
_REQUIRED: Final = {"completions": "prompt", "embeddings": "input"}
_CHAT_MODALITIES: Final = {"image_url": "image", "input_audio": "audio", "video_url": "video"}


def _openai_api(path: str) -> tuple[str, str, tuple[str, ...]]:
    tail = _path_tail(path)
    for suffix, shape, keys in _OPENAI_APIS:
        if tail.endswith("/" + suffix):
            return suffix, shape, keys
    return "completions", "completions", ("max_tokens",)  # upstream's default


def _openai_usage_fields(usage: Mapping[str, Any]) -> UsagePart:
    prompt = completion = total = cached = None
    for key in ("prompt_tokens", "input_tokens"):
        if usage.get(key) is not None:
            prompt = to_token_count(usage[key]) or 0
            break
    for key in ("completion_tokens", "output_tokens"):
        if usage.get(key) is not None:
            completion = to_token_count(usage[key]) or 0
            break
    for key in ("prompt_tokens_details", "input_tokens_details"):  # the later one wins
        details = usage.get(key)
        if isinstance(details, dict) and "cached_tokens" in details:
            cached = to_token_count(details["cached_tokens"]) or 0
    if usage.get("total_tokens") is not None:
        total = to_token_count(usage["total_tokens"]) or 0
    return UsagePart(prompt, completion, total, cached)


def openai_usage(document: Any) -> UsagePart | None:
    """The usage of an OpenAI body or SSE event: top-level ``usage``, or a Responses
    API ``response.completed`` event's ``response.usage``."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if isinstance(usage, dict):
        return _openai_usage_fields(usage)
    if document.get("type") == "response.completed":
        response = document.get("response")
        if isinstance(response, dict) and isinstance(response.get("usage"), dict):
            return _openai_usage_fields(response["usage"])
    return None


def _new_openai_response_parser() -> ResponseUsageParser:
    return ResponseUsageParser(openai_usage, count_events=True)


def _chat_modalities(payload: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") in _CHAT_MODALITIES:
                    found.append(_CHAT_MODALITIES[block["type"]])
    return tuple(found)


def _check_images(payload: Mapping[str, Any], parser: str) -> None:
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ParseError(
            "prompt", f"expected a non-empty string, got {_describe(prompt)}", parser=parser
        )
    for key, kind in (("n", int), ("size", str), ("num_inference_steps", int)):
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            expected = "an integer" if kind is int else "a string"
            raise ParseError(key, f"expected {expected}, got {_describe(value)}", parser=parser)


class _ParserBase:
    """What every built-in parser shares: no parameters, Beta (llm-d-router
    ``cmd/epp/runner/runner.go``)."""

    stability: ClassVar[str] = "beta"
    type: ClassVar[str]
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle | None) -> None:
        self.name = name
        self.params = params


@register("openai-parser")
class OpenAIParser(_ParserBase):
    """OpenAI's HTTP APIs: completions, chat/completions, responses, conversations,
    embeddings, images/generations and vLLM's ``/render`` variants."""

    def claims(self) -> tuple[str, ...]:
        """The OpenAI path suffixes (llm-d-router's ``Claims().Paths``)."""
        return tuple(suffix for suffix, _, _ in _OPENAI_APIS)

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        """Read an OpenAI body: the API from the path suffix, checked as llm-d-router's
        typed decode checks it (``docs/plugins/openai-parser.md``)."""
        payload = _load_object(body, self.name)
        api, shape, max_keys = _openai_api(path)
        prompt: bytes | None = None
        salt = ""
        try:
            if shape == "images/generations":
                _check_images(payload, self.name)
                salt = cache_salt(payload)
            else:
                required = _REQUIRED.get(shape)
                if required is not None and payload.get(required) is None:
                    raise ParseError(required, "required, got none", parser=self.name)
                prompt = prompt_bytes(shape, payload)
                salt = cache_salt(payload)
        except DataError as exc:
            raise _from_data_error(exc, self.name) from None
        return ParsedRequest(
            parser=self.name,
            api=api,
            raw_body=body,
            payload=payload,
            model=_model(payload, self.name),
            stream=payload.get("stream") is True,
            max_output_tokens=_first_max_tokens(payload, max_keys),
            prompt=prompt,
            cache_salt=salt,
            mm_modalities=_chat_modalities(payload) if shape == "chat/completions" else (),
            rewrites_model=True,
        )

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        """Usage from ``usage`` (JSON) or the first ``data:`` events carrying it (SSE)."""
        return _new_openai_response_parser()


# ================================================================= anthropic
_MESSAGES: Final = "messages"
_COUNT_TOKENS: Final = "messages/count_tokens"


def _check_blocks(value: Any, field: str, parser: str, modalities: list[str]) -> None:
    """Content that is a string, or a list of typed blocks (``text``, ``image``, ...)."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise ParseError(
            field,
            f"expected a string or a list of content blocks, got {_describe(value)}",
            parser=parser,
        )
    for i, block in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(block, dict):
            raise ParseError(
                where, f"expected a content block object, got {_describe(block)}", parser=parser
            )
        for key in ("type", "text"):
            item = block.get(key)
            if item is not None and not isinstance(item, str):
                raise ParseError(
                    f"{where}.{key}", f"expected a string, got {_describe(item)}", parser=parser
                )
        if block.get("type") == "image":
            modalities.append("image")


def _check_messages(payload: Mapping[str, Any], parser: str) -> tuple[str, ...]:
    messages = payload.get("messages")
    if messages is None:
        raise ParseError("messages", "expected at least one message, got none", parser=parser)
    if not isinstance(messages, list):
        raise ParseError("messages", f"expected a list, got {_describe(messages)}", parser=parser)
    if not messages:
        raise ParseError("messages", "expected at least one message, got none", parser=parser)
    modalities: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ParseError(
                f"messages[{i}]", f"expected an object, got {_describe(message)}", parser=parser
            )
        role = message.get("role")
        if role is not None and not isinstance(role, str):
            raise ParseError(
                f"messages[{i}].role", f"expected a string, got {_describe(role)}", parser=parser
            )
        _check_blocks(message.get("content"), f"messages[{i}].content", parser, modalities)
    _check_blocks(payload.get("system"), "system", parser, [])
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ParseError("tools", f"expected a list, got {_describe(tools)}", parser=parser)
    return tuple(modalities)


def anthropic_usage(document: Any) -> UsagePart | None:
    """The usage of an Anthropic body: ``usage.input_tokens`` / ``output_tokens`` /
    ``cache_read_input_tokens`` (JSON numbers only), total = their sum."""
    if not isinstance(document, dict) or not isinstance(document.get("usage"), dict):
        return None
    usage = document["usage"]
    prompt = _json_number(usage.get("input_tokens")) or 0
    completion = _json_number(usage.get("output_tokens")) or 0
    cached = _json_number(usage.get("cache_read_input_tokens"))
    return UsagePart(prompt, completion, prompt + completion, cached)


def anthropic_event_usage(document: Any) -> UsagePart | None:
    """The usage of one Anthropic SSE event: ``message_start`` carries the input
    tokens (and cache reads), ``message_delta`` the output tokens."""
    if not isinstance(document, dict):
        return None
    kind = document.get("type")
    if kind == "message_start":
        message = document.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if not isinstance(usage, dict):
            return None
        prompt = _json_number(usage.get("input_tokens")) or 0
        return UsagePart(prompt, 0, prompt, _json_number(usage.get("cache_read_input_tokens")))
    if kind == "message_delta" and isinstance(document.get("usage"), dict):
        completion = _json_number(document["usage"].get("output_tokens")) or 0
        return UsagePart(0, completion, completion, None)
    return None


@register("anthropic-parser")
class AnthropicParser(_ParserBase):
    """Anthropic's Messages API (``/v1/messages``; ``/v1/messages/count_tokens`` is
    forwarded unread)."""

    def claims(self) -> tuple[str, ...]:
        """``messages`` and ``messages/count_tokens``."""
        return (_MESSAGES, _COUNT_TOKENS)

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        """Read a Messages body (``docs/plugins/anthropic-parser.md``)."""
        tail = _path_tail(path)
        if tail.endswith("/" + _COUNT_TOKENS):
            return ParsedRequest(
                parser=self.name, api=_COUNT_TOKENS, raw_body=body, skip_response_processing=True
            )
        if not tail.endswith("/" + _MESSAGES):
            raise ParseError("path", f"unsupported API endpoint {path[:80]!r}", parser=self.name)
        payload = _load_object(body, self.name)
        modalities = _check_messages(payload, self.name)
        salt = _optional_str(payload, "cache_salt", self.name)
        system = payload.get("system")
        try:
            hashed: list[Any] = [{"system": system}] if system else []
            prompt = go_json_marshal([*hashed, *payload["messages"]])
        except DataError as exc:
            raise _from_data_error(exc, self.name) from None
        return ParsedRequest(
            parser=self.name,
            api=_MESSAGES,
            raw_body=body,
            payload=payload,
            model=_model(payload, self.name),
            stream=payload.get("stream") is True,
            max_output_tokens=_max_tokens(payload.get("max_tokens")),
            prompt=prompt,
            cache_salt=salt,
            mm_modalities=modalities,
            rewrites_model=True,
        )

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        """Usage from ``usage`` (JSON) or ``message_start`` + ``message_delta`` (SSE)."""
        return ResponseUsageParser(anthropic_usage, from_event=anthropic_event_usage)


# ================================================================== vllmhttp
_VLLM_GENERATE: Final = "inference/v1/generate"


def _features(
    payload: Mapping[str, Any], parser: str
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[tuple[int, int], ...]]]:
    features = payload.get("features")
    if features is None:
        return {}, {}
    if not isinstance(features, dict):
        raise ParseError(
            "features", f"expected an object, got {_describe(features)}", parser=parser
        )
    hashes: dict[str, tuple[str, ...]] = {}
    for modality, items in _modality_map(features, "mm_hashes", parser).items():
        where = f"features.mm_hashes.{modality}"
        if not isinstance(items, list) or not all(isinstance(h, str) for h in items):
            raise ParseError(
                where, f"expected a list of strings, got {_describe(items)}", parser=parser
            )
        hashes[modality] = tuple(items)
    places: dict[str, tuple[tuple[int, int], ...]] = {}
    for modality, items in _modality_map(features, "mm_placeholders", parser).items():
        where = f"features.mm_placeholders.{modality}"
        if not isinstance(items, list):
            raise ParseError(where, f"expected a list, got {_describe(items)}", parser=parser)
        ranges: list[tuple[int, int]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ParseError(
                    f"{where}[{i}]",
                    f"expected {{offset, length}}, got {_describe(item)}",
                    parser=parser,
                )
            pair = []
            for key in ("offset", "length"):
                value = item.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ParseError(
                        f"{where}[{i}].{key}",
                        f"expected an integer >= 0, got {_describe(value)}",
                        parser=parser,
                    )
                pair.append(value)
            ranges.append((pair[0], pair[1]))
        places[modality] = tuple(ranges)
    return hashes, places


def _modality_map(features: Mapping[str, Any], key: str, parser: str) -> dict[str, Any]:
    value = features.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParseError(
            f"features.{key}", f"expected an object, got {_describe(value)}", parser=parser
        )
    return value


@register("vllmhttp-parser")
class VllmHTTPParser(_ParserBase):
    """vLLM's token-in generate API (``/inference/v1/generate``, the P/D API)."""

    def claims(self) -> tuple[str, ...]:
        """``inference/v1/generate``."""
        return (_VLLM_GENERATE,)

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        """Read a generate body: ``token_ids`` required (``docs/plugins/vllmhttp-parser.md``)."""
        if not _path_tail(path).endswith("/" + _VLLM_GENERATE):
            raise ParseError("path", f"unsupported API endpoint {path[:80]!r}", parser=self.name)
        payload = _load_object(body, self.name)
        token_ids = _token_ids(
            payload.get("token_ids"), "token_ids", self.name, integral_floats=True
        )
        hashes, places = _features(payload, self.name)
        sampling = payload.get("sampling_params")
        max_tokens = _max_tokens(sampling.get("max_tokens")) if isinstance(sampling, dict) else None
        return ParsedRequest(
            parser=self.name,
            api=_VLLM_GENERATE,
            raw_body=body,
            payload=payload,
            model=_model(payload, self.name),
            stream=payload.get("stream") is True,
            max_output_tokens=max_tokens,
            token_ids=token_ids,
            cache_salt=_optional_str(payload, "cache_salt", self.name),
            mm_hashes=hashes,
            mm_placeholders=places,
            mm_modalities=tuple(m for m, items in hashes.items() for _ in items),
            rewrites_model=True,
        )

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        """As the openai-parser (generate responses carry OpenAI's ``usage``)."""
        return _new_openai_response_parser()


# ================================================================ sglanghttp
_SGLANG_GENERATE: Final = "generate"


def sglang_usage(document: Any) -> UsagePart | None:
    """The usage in SGLang's ``meta_info`` (``prompt_tokens``, ``completion_tokens``,
    ``cached_tokens``; JSON integers), total = prompt + completion."""
    if not isinstance(document, dict):
        return None
    meta = document.get("meta_info")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ValueError("meta_info is not an object")  # Go's typed decode fails
    prompt = _strict_int(meta.get("prompt_tokens"))
    completion = _strict_int(meta.get("completion_tokens"))
    cached = _strict_int(meta.get("cached_tokens"))
    if prompt is None and completion is None:
        return None
    p, c = prompt or 0, completion or 0
    return UsagePart(p, c, p + c, cached)


def _sglang_final_usage(document: Any) -> UsagePart | None:
    """Streamed: only the event whose ``meta_info.finish_reason`` is set counts."""
    meta = document.get("meta_info") if isinstance(document, dict) else None
    if not isinstance(meta, dict) or meta.get("finish_reason") is None:
        return None
    return sglang_usage(document)


@register("sglanghttp-parser")
class SGLangHTTPParser(_ParserBase):
    """SGLang's native ``/generate`` with pre-tokenized ``input_ids``."""

    def claims(self) -> tuple[str, ...]:
        """``generate``."""
        return (_SGLANG_GENERATE,)

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        """Read a ``/generate`` body; the payload is forwarded raw and ``model`` is not
        read (``docs/plugins/sglanghttp-parser.md``)."""
        tail = path.strip().removesuffix("/")
        if tail not in (_SGLANG_GENERATE, "/" + _SGLANG_GENERATE):
            raise ParseError("path", f"unsupported path {path[:80]!r}", parser=self.name)
        payload = _load_object(body, self.name)
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise ParseError(
                "stream", f"expected a boolean, got {_describe(stream)}", parser=self.name
            )
        token_ids = _token_ids(
            payload.get("input_ids"), "input_ids", self.name, integral_floats=False
        )
        salt = _optional_str(payload, "extra_key", self.name)
        sampling = payload.get("sampling_params")
        max_new: int | None = None
        if isinstance(sampling, dict):
            value = sampling.get("max_new_tokens")
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT64:
                max_new = value
        return ParsedRequest(
            parser=self.name,
            api=_SGLANG_GENERATE,
            raw_body=body,
            stream=bool(stream),
            max_output_tokens=max_new,
            token_ids=token_ids,
            cache_salt=salt,
        )

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        """Usage from ``meta_info`` (JSON), or the first finished SSE event."""
        return ResponseUsageParser(
            sglang_usage, from_event=_sglang_final_usage, strip_lines=True, stop_after_first=True
        )


# =============================================================== passthrough
def _no_usage(document: Any) -> UsagePart | None:
    return None


@register("passthrough-parser")
class PassthroughParser(_ParserBase):
    """Claims nothing, so it serves every unclaimed path: the body is forwarded as is."""

    def claims(self) -> tuple[str, ...]:
        """Nothing: the fallback parser."""
        return ()

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        """Keep the body raw: no model, no prompt, no stream flag."""
        return ParsedRequest(parser=self.name, api="", raw_body=body)

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        """A state that reads no usage."""
        return ResponseUsageParser(_no_usage)


_: type[Parser] = OpenAIParser
_ = AnthropicParser
_ = VllmHTTPParser
_ = SGLangHTTPParser
_ = PassthroughParser
