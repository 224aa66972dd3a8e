"""Request parsers: what a parser returns, its per-request response state, the registry.

llm-d-router resolves one parser per request from the configured
``requestHandler.parsers`` (``llm-d-router: pkg/epp/handlers/parsers.go``, spec
``llmd-router.md`` §4.2); the parser turns the body into what the Director needs
(:class:`ParsedRequest`), and, per response, reads token usage from the JSON body or the
SSE stream (:class:`ResponseUsageParser`). ``docs/parsers.md`` describes resolution,
model rewrite and the usage merge; the parser types live in
:mod:`inference_sched.plugins.parsers`.

Design note: upstream parses each response chunk on its own, so an SSE ``data:`` line
that straddles two chunks is lost. Here the response state keeps the unfinished line
and parses complete lines only, so any split of the same bytes gives the same usage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from inference_sched.errors import ParseError
from inference_sched.framework.headers import HEADER_MODEL_REWRITE
from inference_sched.framework.types import Request, Usage

if TYPE_CHECKING:
    from inference_sched.framework.interfaces import Parser

__all__ = [
    "DEFAULT_PATH",
    "MAX_BUFFERED_RESPONSE_BYTES",
    "ParsedRequest",
    "ParserRegistry",
    "ResponseUsageParser",
    "UsagePart",
    "is_event_stream",
    "rewrite_request_model",
    "restore_response_model",
    "request_path",
    "to_token_count",
]

DEFAULT_PATH: Final = "/v1/completions"
"""The path when no header carries one (llm-d-router's default, for old clients)."""
_PATH_HEADERS: Final = (":path", "x-original-path", "x-forwarded-path")
MAX_BUFFERED_RESPONSE_BYTES: Final = 16 * 1024 * 1024
"""A non-streamed response body (or one unfinished SSE line) longer than this is not
parsed for usage: the bytes still flow to the client, only the usage is given up."""
_MAX_TOKENS: Final = 2**63 - 1


def request_path(headers: Mapping[str, str]) -> str:
    """The request path a parser is resolved by: ``:path``, else ``x-original-path``, else
    ``x-forwarded-path``, else :data:`DEFAULT_PATH`; the query string removed.

    Args:
        headers: request headers (any case).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    for key in _PATH_HEADERS:
        value = lowered.get(key)
        if value:
            return value.partition("?")[0]
    return DEFAULT_PATH


def is_event_stream(headers: Mapping[str, str]) -> bool:
    """Whether a response's ``content-type`` contains ``text/event-stream`` (any case)."""
    return any(
        k.lower() == "content-type" and "text/event-stream" in v.lower() for k, v in headers.items()
    )


def to_token_count(value: Any) -> int | None:
    """A usage number as llm-d-router's ``toInt`` reads it: a JSON number or a numeric
    string, truncated toward zero; ``None`` for anything else.

    Negative and non-finite values read as 0 and huge ones are capped at 2**63-1, so a
    hostile server cannot make a counter go negative or overflow.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number: float | int = value
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return 0
    return max(0, min(int(number), _MAX_TOKENS))


# ------------------------------------------------------------------- requests
@attrs.frozen(eq=False)
class ParsedRequest:
    """What a parser read from one request body (llm-d-router ``InferenceRequestBody``).

    Attributes:
        parser: name of the parser instance that read it.
        api: the API the body was read as (``chat/completions``, ``messages``,
            ``inference/v1/generate``, ``generate``, ...; ``""`` for passthrough).
        raw_body: the body bytes as received.
        payload: the body as a JSON object, or ``None`` when the parser keeps it raw
            (then it is forwarded unchanged and the model is never rewritten).
        model: the incoming model name (body ``model``), ``""`` when the parser reads none.
        stream: the client asked for a streamed response (``stream: true``).
        max_output_tokens: the output-token cap the body asks for, when valid.
        prompt: the bytes prefix affinity hashes, when the API has them.
        token_ids: prompt token ids the body carries (vLLM / SGLang generate).
        cache_salt: the body's cache salt (``cache_salt``; SGLang ``extra_key``).
        mm_hashes: multimodal feature hashes by modality (vLLM generate ``features``).
        mm_placeholders: ``(offset, length)`` of each multimodal item by modality.
        mm_modalities: the modality of each multimodal content part, in order
            (``image``, ``audio``, ``video``; chat content blocks, Anthropic images).
        skip_response_processing: forward and stop: no response phase for this request.
        rewrites_model: the parser rewrites ``model`` (llm-d-router ``ModelNameRewriter``);
            only then may the body's model be replaced and restored in responses.
    """

    parser: str
    api: str
    raw_body: bytes
    payload: Mapping[str, Any] | None = None
    model: str = ""
    stream: bool = False
    max_output_tokens: int | None = None
    prompt: bytes | None = None
    token_ids: tuple[int, ...] | None = None
    cache_salt: str = ""
    mm_hashes: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    mm_placeholders: Mapping[str, tuple[tuple[int, int], ...]] = attrs.field(factory=dict)
    mm_modalities: tuple[str, ...] = ()
    skip_response_processing: bool = False
    rewrites_model: bool = False

    def target_model(self, headers: Mapping[str, str]) -> str:
        """The model to send upstream: the rewrite header, else the incoming model.

        Raises:
            ParseError: a model-rewriting parser's map payload names no model and no
                rewrite header does (llm-d-router: 400 "model not found in request body").
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        target = lowered.get(HEADER_MODEL_REWRITE) or self.model
        if not target and self.rewrites_model and self.payload is not None:
            raise ParseError("model", "not found in request body", parser=self.parser)
        return target

    def scheduling_body(self) -> Mapping[str, Any] | None:
        """The body the scheduler's producers read (``Request.body``): the payload, or,
        for a raw payload, ``{"cache_salt": salt}`` so the prefix producers still seed
        their hashes with the salt (``None`` without one)."""
        if self.payload is not None:
            return self.payload
        return {"cache_salt": self.cache_salt} if self.cache_salt else None

    def to_request(
        self,
        headers: Mapping[str, str],
        *,
        request_id: str | None = None,
        priority: int = 0,
        subset_hint: Sequence[str] | None = None,
        base_models: Iterable[str] = (),
    ) -> Request:
        """The scheduler's :class:`~inference_sched.framework.types.Request` for this body.

        Args:
            headers: the client's request headers (GIE's control headers are read).
            request_id: overrides ``x-request-id``.
            priority: the InferenceObjective priority the caller resolved.
            subset_hint: the gateway's endpoint subset (``ip:port`` strings).
            base_models: base models of the pool (a target outside them is a LoRA).

        Raises:
            ParseError: no model for a model-rewriting parser (see :meth:`target_model`).
            DataError: an SLO header is malformed (``Request.create``).
        """
        self.target_model(headers)  # the 400 comes before scheduling
        return Request.create(
            self.model,
            prompt=self.prompt,
            token_ids=self.token_ids,
            headers=headers,
            request_id=request_id,
            priority=priority,
            base_models=tuple(base_models),
            subset_hint=subset_hint,
            body=self.scheduling_body(),
            request_size_bytes=len(self.raw_body),
            is_streaming=self.stream,
        )

    def forward_body(self, target_model: str) -> bytes:
        """The body to send upstream: the raw bytes, or, when a model-rewriting parser's
        target differs from the incoming model, the payload with ``model`` replaced."""
        if not self.rewrites_model or self.payload is None or target_model == self.model:
            return self.raw_body
        return rewrite_request_model(self.payload, target_model)


def rewrite_request_model(payload: Mapping[str, Any], target_model: str) -> bytes:
    """``payload`` as compact JSON with ``model`` set to ``target_model`` (gie.md §5.4)."""
    body = dict(payload)
    body["model"] = target_model
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )


def restore_response_model(chunk: bytes, target_model: str, incoming_model: str) -> bytes:
    """``chunk`` with ``"model":"<target>"`` and ``"model": "<target>"`` replaced by the
    incoming name, as GIE byte-replaces responses (gie.md §5.4).

    Names are written as JSON strings, so a name with a quote or backslash is matched
    the way the server encoded it. Like upstream this works per chunk: a ``model`` field
    split across two chunks is not restored.
    """
    if target_model == incoming_model or not chunk:
        return chunk
    target = json.dumps(target_model, ensure_ascii=False).encode("utf-8", "surrogatepass")
    incoming = json.dumps(incoming_model, ensure_ascii=False).encode("utf-8", "surrogatepass")
    for sep in (b":", b": "):
        chunk = chunk.replace(b'"model"' + sep + target, b'"model"' + sep + incoming)
    return chunk


# ------------------------------------------------------------------ responses
@attrs.frozen
class UsagePart:
    """The usage one response event (or one whole JSON body) reported; ``None`` where
    the event did not carry the number."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None


JsonUsage = Callable[[Any], UsagePart | None]
"""Reads the usage of one decoded JSON document (a whole body or one SSE event)."""


class ResponseUsageParser:
    """Per-request response state: feed the response headers, then body chunks; read
    :attr:`usage` (merged) and :attr:`streamed_events`.

    Merge (llm-d-router ``handlers/response.go``): a non-zero prompt or completion count
    overwrites, a reported cached count overwrites, and the total is the event's own
    ``total_tokens`` only when the event had prompt, completion and total, else prompt
    plus completion. Never raises on malformed bytes: they carry no usage.

    Args:
        from_json: reads one decoded JSON body (``None``: no usage there).
        from_event: reads one decoded SSE event (default: ``from_json``).
        sse_data_prefix: the prefix of a data line (``"data: "``).
        count_events: count ``data:`` lines (except ``[DONE]``) in
            :attr:`streamed_events` (the openai-parser does).
        strip_lines: trim blanks around SSE lines and data (the sglang parser does).
        stop_after_first: the first event with usage is the only one read (sglang reads
            the first event whose ``finish_reason`` is set).
    """

    __slots__ = (
        "_buffer",
        "_count_events",
        "_done",
        "_from_event",
        "_from_json",
        "_overflow",
        "_prefix",
        "_stop_after_first",
        "_strip",
        "is_streaming",
        "streamed_events",
        "usage",
    )

    def __init__(
        self,
        from_json: JsonUsage,
        *,
        from_event: JsonUsage | None = None,
        sse_data_prefix: str = "data: ",
        count_events: bool = False,
        strip_lines: bool = False,
        stop_after_first: bool = False,
    ) -> None:
        self._from_json = from_json
        self._from_event = from_event or from_json
        self._prefix = sse_data_prefix.encode()
        self._count_events = count_events
        self._strip = strip_lines
        self._stop_after_first = stop_after_first
        self._buffer = bytearray()
        self._overflow = False
        self._done = False
        self.is_streaming = False
        """The response is an SSE stream (``content-type: text/event-stream``)."""
        self.usage: Usage | None = None
        """The merged usage so far (``None`` until some event reported usage)."""
        self.streamed_events = 0
        """SSE ``data:`` events seen so far, ``[DONE]`` excluded."""

    def headers(self, headers: Mapping[str, str]) -> None:
        """Record the response headers (they decide between JSON and SSE)."""
        self.is_streaming = is_event_stream(headers)

    def feed(self, chunk: bytes, *, end_of_stream: bool = False) -> Usage | None:
        """Read one body chunk; returns the merged usage so far.

        A JSON body is buffered (up to :data:`MAX_BUFFERED_RESPONSE_BYTES`) and read at
        end of stream; an SSE body is read line by line as lines complete.
        """
        if self.is_streaming:
            self._feed_sse(chunk, end_of_stream)
        elif not self._overflow:
            if len(self._buffer) + len(chunk) > MAX_BUFFERED_RESPONSE_BYTES:
                self._overflow = True
                self._buffer.clear()
            else:
                self._buffer += chunk
                if end_of_stream and self._buffer:
                    self._merge(self._from_json, _decode(bytes(self._buffer)))
                    self._buffer.clear()
        return self.usage

    def _feed_sse(self, chunk: bytes, end_of_stream: bool) -> None:
        self._buffer += chunk
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_BUFFERED_RESPONSE_BYTES:  # a line with no end: drop it
            self._buffer.clear()
        if end_of_stream and self._buffer:
            self._line(bytes(self._buffer))
            self._buffer.clear()

    def _line(self, line: bytes) -> None:
        line = line.strip() if self._strip else line.removesuffix(b"\r")
        if not line.startswith(self._prefix):
            return
        data = line[len(self._prefix) :]
        if self._strip:
            data = data.strip()
        if data == b"[DONE]":
            return
        if self._count_events:
            self.streamed_events += 1
        if self._done:
            return
        document = _decode(data)
        merged = document is not None and self._merge(self._from_event, document)
        if merged and self._stop_after_first:
            self._done = True

    def _merge(self, read: JsonUsage, document: Any) -> bool:
        try:
            part = read(document)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            return False  # a shape the extractor did not expect carries no usage
        if part is None:
            return False
        old = self.usage or Usage()
        prompt = part.prompt_tokens or old.prompt_tokens
        completion = part.completion_tokens or old.completion_tokens
        cached = old.cached_tokens if part.cached_tokens is None else part.cached_tokens
        has_all = bool(part.prompt_tokens and part.completion_tokens and part.total_tokens)
        total = part.total_tokens if has_all and part.total_tokens else prompt + completion
        self.usage = Usage(prompt, completion, cached, total)
        return True


def _decode(data: bytes) -> Any:
    """One JSON document, or ``None`` when it is not valid JSON (never raises)."""
    try:
        return json.loads(data.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Go's decoder refuses NaN and Infinity


# ------------------------------------------------------------------- registry
def _normalise_claim(claim: str) -> str:
    return claim.strip(" /")


class ParserRegistry:
    """Resolves the parser of a request path from the configured parsers, in order.

    Building (llm-d-router §4.2): each parser's claimed path suffixes are normalised
    (blanks and ``/`` trimmed, empty ones dropped); a second parser of an already-seen
    type is ignored; the first parser that claims nothing is the fallback and every
    later parser is ignored. Resolving: the longest claimed suffix the path (trailing
    ``/`` trimmed) ends with wins, a plain string suffix (``/v1/xcompletions`` ends with
    ``completions``); else the fallback; else :class:`~inference_sched.errors.ParseError`.

    Args:
        parsers: parser instances in ``requestHandler.parsers`` order.
    """

    def __init__(self, parsers: Iterable[Parser]) -> None:
        self.parsers: tuple[Parser, ...] = ()
        """The parsers that take part, in order (ignored duplicates left out)."""
        self.fallback: Parser | None = None
        """The parser of paths nobody claims (``passthrough-parser`` by default)."""
        claims: dict[str, Parser] = {}
        seen: set[str] = set()
        kept: list[Parser] = []
        for parser in parsers:
            plugin_type = str(getattr(parser, "type", type(parser).__name__))
            if plugin_type in seen:
                continue
            seen.add(plugin_type)
            suffixes = [s for s in map(_normalise_claim, parser.claims()) if s]
            kept.append(parser)
            if not suffixes:
                self.fallback = parser
                break
            for suffix in suffixes:
                claims.setdefault(suffix, parser)  # an earlier parser keeps its claim
        self.parsers = tuple(kept)
        # Longest first, so the first match is the longest claimed suffix.
        self._claims = sorted(claims.items(), key=lambda item: -len(item[0]))

    @classmethod
    def from_plugins(cls, refs: Sequence[str], plugins: Mapping[str, Any]) -> ParserRegistry:
        """The registry of a built config: ``refs`` (``config.parsers``) looked up in
        ``plugins`` (``Scheduler.plugins``); references to no instance are skipped (the
        config loader already reported them, or their type is not available)."""
        return cls(plugins[ref] for ref in refs if ref in plugins)

    @property
    def claims(self) -> dict[str, str]:
        """Every claimed suffix and the name of the parser that serves it."""
        return {suffix: str(getattr(p, "name", "")) for suffix, p in self._claims}

    def resolve(self, path: str) -> Parser:
        """The parser of ``path`` (query string already removed).

        Raises:
            ParseError: no parser claims the path and there is no fallback.
        """
        trimmed = path.rstrip("/")
        for suffix, parser in self._claims:
            if trimmed.endswith(suffix):
                return parser
        if self.fallback is not None:
            return self.fallback
        shown = path if len(path) <= 80 else path[:77] + "..."
        raise ParseError("path", f"no parser serves {shown!r}")

    def parse(self, headers: Mapping[str, str], body: bytes) -> tuple[Parser, ParsedRequest]:
        """Resolve the parser from the request's path headers and parse ``body``.

        Raises:
            ParseError: no parser serves the path, or the parser refused the body.
        """
        path = request_path(headers)
        parser = self.resolve(path)
        lowered = {k.lower(): v for k, v in headers.items()}
        return parser, parser.parse_request(path, lowered, body)
