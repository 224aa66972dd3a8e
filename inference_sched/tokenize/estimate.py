"""llm-d-router's ``estimate`` tokenizer backend: request bytes packed into pseudo-tokens.

The default backend of llm-d-router's ``token-producer``
(``pkg/epp/framework/plugins/requestcontrol/dataproducer/tokenizer/estimate.go`` and
``mm_estimate.go``) needs no model: it turns the request's user input into bytes and packs
them four per ``uint32``, little-endian, the tail zero-padded (so one pseudo-token covers
about one real token, and block hashes over the ids are content-locality keys). The ids
never match an engine's KV blocks; they serve the approximate prefix cache, the context
length plugins and the token estimates.

============================  ===========================================================
request                       bytes (``docs/plugins/token-producer.md`` has examples)
============================  ===========================================================
chat completions              ``json.Marshal(tools)`` (when any), then per message its
                              ``role``, then its content string, or its ``text`` blocks
                              in order with each ``image_url`` / ``video_url`` block as
                              an aligned placeholder run (below)
anthropic messages            ``json.Marshal(tools)``, the ``system`` text (blocks
                              starting ``x-anthropic-billing-header`` skipped), per
                              message ``role`` + content: text, thinking, tool_use
                              ``id`` + ``name`` + ``input`` JSON, tool_result text
                              (blocks joined by ``\\n``) then its images; images as runs
completions                   the prompt; a list of several strings → one prompt each
responses / conversations /   GIE's JSON bytes (``inference_sched.prefix.prompt_bytes``)
embeddings
token ids (generate           passed through unchanged (``estimated`` False), with a
``token_ids``, sglang         generate request's multimodal features
``input_ids``, a completions
or embeddings id list,
``prompt_token_ids``)
anything else                 :class:`~inference_sched.errors.DataError`
============================  ===========================================================

A multimodal item first zero-pads the bytes to a token boundary, then adds ``count``
copies of the token ``uint32(xxh64(content))`` and reports a feature
``(modality, hex(xxh64(content)), offset, count)``: ``content`` is the image / video URL
(for an anthropic base64 image source, its raw ``data``). ``count`` for an image is
``width * height // factor`` (dimensions read from a base64 data URL's header, else the
default 640x360; factor 1024; at least 1) or a static count; for a video
``min(frames * tokensPerFrame, maxVideoTokens)`` with the frames and the per-frame tokens
of :class:`VideoEstimate` and the request's ``x-llm-d-video-*`` headers.

Go's JSON encoder is not reimplemented here: :class:`Estimator` is given it (and GIE's
byte builder) by its caller, the plugin layer (``inference_sched.plugins.tokens``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.errors import DataError
from inference_sched.tokenize.images import base64_image_size, data_url_image_size

__all__ = [
    "APIS",
    "BYTES_PER_TOKEN",
    "Estimate",
    "Estimator",
    "Feature",
    "ImageEstimate",
    "VideoEstimate",
    "VideoMeta",
    "detect_api",
    "pack_bytes",
    "token_id_array",
    "video_meta_from_headers",
    "vllm_features",
]

BYTES_PER_TOKEN: Final = 4
"""Bytes per pseudo-token (llm-d-router ``bytesPerToken``, GIE's characters per token)."""

APIS: Final = (
    "chat/completions",
    "messages",
    "completions",
    "responses",
    "conversations",
    "embeddings",
    "generate",
)
"""The request kinds :func:`detect_api` tells apart."""

_VIDEO_FPS_HEADER: Final = "x-llm-d-video-fps"
_VIDEO_DURATION_HEADER: Final = "x-llm-d-video-duration-seconds"
_VIDEO_RESOLUTION_HEADER: Final = "x-llm-d-video-resolution"
_BILLING_PREFIX: Final = "x-anthropic-billing-header"
_DEFAULT_MEDIA_TYPE: Final = "image/jpeg"
_MAX_UINT32: Final = 2**32 - 1
_FLOAT: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT: Final = re.compile(r"[+-]?\d+")
_PATH_HEADERS: Final = (":path", "x-original-path", "x-forwarded-path")
# Path suffix → request kind, as llm-d-router's parsers claim paths (longest suffix wins).
_PATH_SUFFIXES: Final = (
    ("chat/completions/render", "chat/completions"),
    ("completions/render", "completions"),
    ("inference/v1/generate", "generate"),
    ("messages/count_tokens", ""),  # raw pass-through upstream: nothing to estimate
    ("images/generations", ""),
    ("chat/completions", "chat/completions"),
    ("conversations", "conversations"),
    ("completions", "completions"),
    ("embeddings", "embeddings"),
    ("responses", "responses"),
    ("messages", "messages"),
    ("generate", "generate"),
)
_ANTHROPIC_BLOCKS: Final = frozenset(
    {"tool_use", "tool_result", "thinking", "redacted_thinking", "image"}
)


# ------------------------------------------------------------------ results
class Feature(NamedTuple):
    """One multimodal item: llm-d-router ``MultiModalFeature``."""

    modality: str
    hash: str
    offset: int
    length: int


@attrs.frozen(eq=False)
class Estimate:
    """What a backend produced: one uint32 id array per prompt, the multimodal items in
    prompt order, and whether the ids are pseudo-tokens (packed bytes)."""

    prompts: tuple[npt.NDArray[np.uint32], ...]
    features: tuple[Feature, ...] = ()
    estimated: bool = True

    def token_count(self) -> int:
        """Ids over every prompt."""
        return sum(len(p) for p in self.prompts)


def pack_bytes(raw: bytes | bytearray) -> npt.NDArray[np.uint32]:
    """``raw`` packed four bytes per uint32, little-endian, the tail zero-padded
    (llm-d-router ``packBytes``); empty input gives an empty array."""
    pad = -len(raw) % BYTES_PER_TOKEN
    if pad:
        raw = bytes(raw) + b"\0" * pad
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


# ------------------------------------------------------------------ placeholder counts
@attrs.frozen
class ImageEstimate:
    """Placeholder tokens of an image (llm-d-router ``estimate.image``); zero fields take
    the built-in defaults."""

    mode: str = "dynamic"
    """``dynamic``: ``width * height // factor``; ``static``: ``static_tokens``."""
    default_width: int = 0
    """Dynamic mode, an image whose size cannot be read (0: 640)."""
    default_height: int = 0
    """Dynamic mode, an image whose size cannot be read (0: 360)."""
    factor: int = 0
    """Pixels per placeholder token (0: 1024)."""
    static_tokens: int = 0
    """Static mode: tokens per image (0: 1)."""

    def count(self, size: tuple[int, int] | None) -> int:
        """Tokens of an image of ``size`` (``None``: unreadable), at least 1."""
        if self.mode == "static":
            return self.static_tokens if self.static_tokens > 0 else 1
        if size is None:
            width = self.default_width if self.default_width > 0 else 640
            height = self.default_height if self.default_height > 0 else 360
        else:
            width, height = size
        factor = self.factor if self.factor > 0 else 1024
        return max(width * height // factor, 1)


@attrs.frozen
class VideoMeta:
    """A request's video properties from its ``x-llm-d-video-*`` headers (0: absent)."""

    width: int = 0
    height: int = 0
    duration_s: float = 0.0
    fps: float = 0.0


@attrs.frozen
class VideoEstimate:
    """Placeholder tokens of a video (llm-d-router ``estimate.video``):
    ``min(frames * tokens_per_frame, max_video_tokens)``, at least 1; zero fields take
    the built-in defaults."""

    tokens_per_frame_mode: str = "dynamic"
    """``dynamic``: ``width * height // factor``; ``static``: ``static_tokens_per_frame``."""
    factor: int = 0
    """Pixels per placeholder token (0: 1024)."""
    static_tokens_per_frame: int = 0
    """Static mode: tokens per frame (0: 1)."""
    frames_mode: str = "sampled"
    """``sampled``: ``duration * sample_fps`` then merged by ``temporal_patch_size``;
    ``strided``: ``duration * source_fps // frame_stride``."""
    min_frames: int = 0
    """Frame floor (0: none)."""
    max_frames: int = 0
    """Frame cap (0: none)."""
    sample_fps: float = 0.0
    """Sampled mode rate (0: 2)."""
    temporal_patch_size: int = 0
    """Sampled mode: frames merged into one group (< 2: none)."""
    source_fps: float = 0.0
    """Strided mode source rate when the request has no ``x-llm-d-video-fps`` (0: 24)."""
    frame_stride: int = 0
    """Strided mode: keep every n-th frame (< 1: 1)."""
    default_width: int = 0
    """Frame width without ``x-llm-d-video-resolution`` (0: 640)."""
    default_height: int = 0
    """Frame height without ``x-llm-d-video-resolution`` (0: 360)."""
    default_duration_s: float = 0.0
    """Length without ``x-llm-d-video-duration-seconds`` (0: 10 s)."""
    max_video_tokens: int = 0
    """Cap on a video's tokens (0: none)."""

    def count(self, meta: VideoMeta) -> int:
        """Tokens of one video of the request whose headers gave ``meta``."""
        tokens = self._frames(meta) * self._tokens_per_frame(meta)
        if 0 < self.max_video_tokens < tokens:
            tokens = self.max_video_tokens
        return max(tokens, 1)

    def _frames(self, meta: VideoMeta) -> int:
        duration = meta.duration_s if meta.duration_s > 0 else self.default_duration_s
        if duration <= 0:
            duration = 10.0
        if self.frames_mode == "strided":
            fps = meta.fps if meta.fps > 0 else self.source_fps
            if fps <= 0:
                fps = 24.0
            frames = int(duration * fps) // max(self.frame_stride, 1)
            return self._clamp(frames)
        frames = self._clamp(int(duration * (self.sample_fps if self.sample_fps > 0 else 2.0)))
        return frames // self.temporal_patch_size if self.temporal_patch_size > 1 else frames

    def _clamp(self, frames: int) -> int:
        if self.min_frames > 0 and frames < self.min_frames:
            frames = self.min_frames
        if self.max_frames > 0 and frames > self.max_frames:
            frames = self.max_frames
        return frames

    def _tokens_per_frame(self, meta: VideoMeta) -> int:
        if self.tokens_per_frame_mode == "static":
            return self.static_tokens_per_frame if self.static_tokens_per_frame > 0 else 1
        width, height = self.default_width, self.default_height
        if meta.width > 0 and meta.height > 0:
            width, height = meta.width, meta.height
        width = width if width > 0 else 640
        height = height if height > 0 else 360
        factor = self.factor if self.factor > 0 else 1024
        return max(width * height // factor, 1)


def _positive_float(text: str | None) -> float:
    """Go ``strconv.ParseFloat`` of a decimal header value when finite and > 0, else 0."""
    if text is None or _FLOAT.fullmatch(text) is None:
        return 0.0
    value = float(text)
    return value if math.isfinite(value) and value > 0 else 0.0


def _positive_int(text: str) -> int:
    text = text.strip()
    if _INT.fullmatch(text) is None:
        return 0
    value = int(text)
    return value if 0 < value < 2**63 else 0


def video_meta_from_headers(headers: Mapping[str, str]) -> VideoMeta:
    """:class:`VideoMeta` from lower-cased request headers; a malformed value counts as
    absent (llm-d-router ``parseVideoMetadataHeaders``)."""
    width = height = 0
    resolution = headers.get(_VIDEO_RESOLUTION_HEADER)
    if resolution is not None:
        cut = min((i for i in (resolution.find("x"), resolution.find("X")) if i >= 0), default=-1)
        if cut > 0:
            width, height = _positive_int(resolution[:cut]), _positive_int(resolution[cut + 1 :])
            if not width or not height:
                width = height = 0
    return VideoMeta(
        width=width,
        height=height,
        duration_s=_positive_float(headers.get(_VIDEO_DURATION_HEADER)),
        fps=_positive_float(headers.get(_VIDEO_FPS_HEADER)),
    )


# ------------------------------------------------------------------ request kind
def detect_api(body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> str:
    """The request kind (one of :data:`APIS`) of ``body``.

    The request path decides when a header carries it (``:path``, ``x-original-path``,
    ``x-forwarded-path``; query removed; the longest matching suffix, as llm-d-router's
    parser registry). Without one, the body's keys do: ``token_ids`` / ``input_ids`` →
    generate; ``messages`` → messages (anthropic) when the body has ``system``, an
    ``anthropic-version`` header is present, or a content block is an anthropic kind
    (``tool_use``, ``tool_result``, ``thinking``, ``image``), else chat/completions;
    ``prompt`` → completions; ``items`` → conversations; ``input`` → embeddings when it
    is a list of strings or ids or the body has ``encoding_format`` / ``dimensions``,
    else responses.

    Raises:
        DataError: none of these fits.
    """
    headers = headers or {}
    for name in _PATH_HEADERS:
        path = headers.get(name)
        if path:
            path = path.split("?", 1)[0].rstrip("/")
            for suffix, api in _PATH_SUFFIXES:
                if path.endswith(suffix):
                    if not api:
                        raise DataError(f"{name} {path!r}: no prompt to estimate for this API")
                    return api
            break  # an unclaimed path: the body decides
    if "token_ids" in body or "input_ids" in body:
        return "generate"
    if "messages" in body:
        return "messages" if _looks_anthropic(body, headers) else "chat/completions"
    if "prompt" in body or "prompt_token_ids" in body:
        return "completions"
    if "items" in body:
        return "conversations"
    if "input" in body:
        value = body["input"]
        listed = isinstance(value, list) and bool(value) and not isinstance(value[0], Mapping)
        if listed or "encoding_format" in body or "dimensions" in body:
            return "embeddings"
        return "responses"
    raise DataError(
        "unsupported request body: expected messages, prompt, input, items, token_ids or "
        f"input_ids, got keys {sorted(map(str, body))[:8]}"
    )


def _looks_anthropic(body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    if "system" in body or "anthropic-version" in headers:
        return True
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") in _ANTHROPIC_BLOCKS:
                    return True
    return False


# ------------------------------------------------------------------ helpers
def _utf8(text: str) -> bytes:
    """A Go string's bytes: UTF-8, a lone surrogate (Go's decoder: U+FFFD) replaced."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return fixed.encode("utf-8")


def _string(value: Any, path: str) -> str:
    """A Go ``string`` field: null / absent → ``""``, another type fails the body."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}: expected a string, got {type(value).__name__}")
    return value


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def token_id_array(values: Any, path: str) -> npt.NDArray[np.uint32]:
    """A list of integral numbers in uint32 range (Go parsers accept ``1.0``)."""
    if not isinstance(values, list | tuple):
        raise DataError(f"{path}: expected a list of token ids, got {type(values).__name__}")
    try:
        array = np.asarray(values)  # int64 for ints (no float round trip), float64 if mixed
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: expected a flat list of token ids (integers)") from None
    kind = array.dtype.kind
    # JSON true is no id: numpy would read [1, true] as [1, 1], so scan the types (C speed)
    if array.ndim != 1 or kind not in "iuf" or (kind == "i" and bool in set(map(type, values))):
        raise DataError(f"{path}: expected a flat list of token ids (integers)")
    ok = (array >= 0) & (array <= _MAX_UINT32)
    if kind == "f":
        ok &= array == np.floor(array)
    if not ok.all():
        bad = int(np.argmin(ok))
        raise DataError(f"{path}[{bad}]: expected a token id in 0..2^32-1, got {values[bad]!r}")
    return array.astype(np.uint32)


def _mm_token(content: str) -> tuple[bytes, str]:
    digest = xxhash.xxh64_intdigest(_utf8(content))
    return (digest & _MAX_UINT32).to_bytes(4, "little"), format(digest, "x")


# ------------------------------------------------------------------ the estimator
class Estimator:
    """Builds a request's :class:`Estimate` (llm-d-router ``estimateBackend.produce``).

    Args:
        image: placeholder counts of images.
        video: placeholder counts of videos.
        marshal: Go's ``encoding/json.Marshal`` of a decoded JSON value (tools).
        gie_bytes: GIE's bytes of a ``responses`` / ``conversations`` / ``embeddings``
            body (``prefix.prompt_bytes.prompt_bytes(api, body)``); raises DataError on a
            malformed body.
    """

    def __init__(
        self,
        image: ImageEstimate,
        video: VideoEstimate,
        *,
        marshal: Callable[[Any], bytes],
        gie_bytes: Callable[[str, Mapping[str, Any]], bytes],
    ) -> None:
        self.image = image
        self.video = video
        self._marshal = marshal
        self._gie_bytes = gie_bytes

    def estimate(
        self,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        *,
        api: str | None = None,
    ) -> Estimate:
        """The request's prompts as pseudo-tokens (or its own ids, passed through).

        Args:
            body: the parsed JSON body.
            headers: lower-cased request headers (path, ``x-llm-d-video-*``).
            api: the request kind when the caller knows it, else :func:`detect_api`.

        Raises:
            DataError: an unsupported or malformed body, naming the field.
        """
        if not isinstance(body, Mapping):
            raise DataError(f"body: expected a JSON object, got {type(body).__name__}")
        headers = headers or {}
        kind = api or detect_api(body, headers)
        if kind == "generate":
            return self._generate(body)
        if kind == "chat/completions":
            return self._chat(body, video_meta_from_headers(headers))
        if kind == "messages":
            return self._messages(body)
        if kind == "completions":
            return self._completions(body)
        if kind == "embeddings":
            value = body.get("input")
            if isinstance(value, list) and value and not isinstance(value[0], str):
                return Estimate((token_id_array(value, "input"),), estimated=False)
        if kind in ("responses", "conversations", "embeddings"):
            return Estimate((pack_bytes(self._gie_bytes(kind, body)),))
        raise DataError(f"unsupported request kind {kind!r}; expected one of {', '.join(APIS)}")

    def estimate_prompt(self, prompt: bytes) -> Estimate:
        """A bodyless request's prompt bytes, packed (one prompt)."""
        return Estimate((pack_bytes(prompt),))

    # ........................................................ token ids
    def _generate(self, body: Mapping[str, Any]) -> Estimate:
        key = "token_ids" if "token_ids" in body else "input_ids"
        ids = token_id_array(body.get(key), key)
        if not len(ids):
            raise DataError(f"{key}: expected at least one token id")
        features = vllm_features(body.get("features"))
        return Estimate((ids,), features, estimated=False)

    def _completions(self, body: Mapping[str, Any]) -> Estimate:
        if "prompt" not in body and "prompt_token_ids" in body:
            return Estimate(
                (token_id_array(body["prompt_token_ids"], "prompt_token_ids"),), (), False
            )
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            if not prompt:
                raise DataError("prompt: expected a non-empty string, list of strings or ids")
            return Estimate((pack_bytes(_utf8(prompt)),))
        if not isinstance(prompt, list) or not prompt:
            raise DataError("prompt: expected a non-empty string, list of strings or ids")
        if isinstance(prompt[0], str):
            if not all(isinstance(p, str) for p in prompt):
                raise DataError("prompt: mixed types in array")
            return Estimate(tuple(pack_bytes(_utf8(p)) for p in prompt))
        return Estimate((token_id_array(prompt, "prompt"),), estimated=False)

    # ........................................................ chat
    def _chat(self, body: Mapping[str, Any], meta: VideoMeta) -> Estimate:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError("messages: expected at least one message")
        out = bytearray()
        features: list[Feature] = []
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise DataError(f"tools: expected a list, got {type(tools).__name__}")
            if tools:
                out += self._marshal(tools)
        for i, message in enumerate(messages):
            path = f"messages[{i}]"
            message = _object(message, path)
            out += _utf8(_string(message.get("role"), f"{path}.role"))
            content = message.get("content")
            if isinstance(content, str) and content:
                out += _utf8(content)
                continue
            if content is None or isinstance(content, str):
                continue
            if not isinstance(content, list):
                raise DataError(f"{path}.content: expected a string or a list of content blocks")
            for j, block in enumerate(content):
                self._chat_block(out, features, _object(block, f"{path}.content[{j}]"), meta)
        return Estimate((pack_bytes(out),), tuple(features))

    def _chat_block(
        self, out: bytearray, features: list[Feature], block: Mapping[str, Any], meta: VideoMeta
    ) -> None:
        kind = block.get("type")
        if kind == "text":
            out += _utf8(_string(block.get("text"), "text"))
        elif kind == "image_url":
            url = _string(_object(block.get("image_url"), "image_url").get("url"), "image_url.url")
            _append_asset(out, features, "image", url, self.image.count(data_url_image_size(url)))
        elif kind == "video_url":
            url = _string(_object(block.get("video_url"), "video_url").get("url"), "video_url.url")
            _append_asset(out, features, "video", url, self.video.count(meta))

    # ........................................................ anthropic
    def _messages(self, body: Mapping[str, Any]) -> Estimate:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError("messages: expected at least one message")
        out = bytearray()
        features: list[Feature] = []
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            out += self._marshal(tools)
        out += _utf8(_system_text(body.get("system")))
        for i, message in enumerate(messages):
            path = f"messages[{i}]"
            message = _object(message, path)
            out += _utf8(_string(message.get("role"), f"{path}.role"))
            content = message.get("content")
            if isinstance(content, str) and content:
                out += _utf8(content)
                continue
            if not isinstance(content, list):
                continue
            for j, block in enumerate(content):
                self._anthropic_block(out, features, _object(block, f"{path}.content[{j}]"))
        return Estimate((pack_bytes(out),), tuple(features))

    def _anthropic_block(
        self, out: bytearray, features: list[Feature], block: Mapping[str, Any]
    ) -> None:
        kind = block.get("type")
        if kind == "text":
            out += _utf8(_string(block.get("text"), "text"))
        elif kind == "image":
            source = _object(block.get("source"), "source")
            url = _string(source.get("url"), "source.url")
            if url:
                count = self.image.count(data_url_image_size(url))
                _append_asset(out, features, "image", url, count)
            elif data := _string(source.get("data"), "source.data"):
                count = self.image.count(base64_image_size(data))
                _append_asset(out, features, "image", data, count)
        elif kind == "thinking":
            out += _utf8(_string(block.get("thinking"), "thinking"))
        elif kind == "tool_use":
            out += _utf8(_string(block.get("id"), "id"))
            out += _utf8(_string(block.get("name"), "name"))
            if "input" in block:  # a raw JSON value upstream; compact here (see docs)
                out += _utf8(json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False))
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str) and content:
                out += _utf8(content)
            elif isinstance(content, list):
                texts: list[str] = []
                urls: list[str] = []
                for item in content:
                    item = _object(item, "tool_result.content")
                    if item.get("type") == "text":
                        texts.append(_string(item.get("text"), "text"))
                    elif item.get("type") == "image" and (
                        url := _anthropic_image_url(_object(item.get("source"), "source"))
                    ):
                        urls.append(url)
                out += _utf8("\n".join(texts))
                for url in urls:
                    count = self.image.count(data_url_image_size(url))
                    _append_asset(out, features, "image", url, count)


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        return ""
    parts = []
    for block in system:
        block = _object(block, "system")
        text = _string(block.get("text"), "system.text")
        if block.get("type") == "text" and text and not text.startswith(_BILLING_PREFIX):
            parts.append(text)
    return "".join(parts)


def _anthropic_image_url(source: Mapping[str, Any]) -> str:
    """llm-d-router ``anthropicImageToURL``: the URL, else a base64 data URL."""
    url = _string(source.get("url"), "source.url")
    if source.get("type") == "url" or url:
        return url
    data = _string(source.get("data"), "source.data")
    if not data:
        return ""
    media = _string(source.get("media_type"), "source.media_type") or _DEFAULT_MEDIA_TYPE
    return f"data:{media};base64,{data}"


def _append_asset(
    out: bytearray, features: list[Feature], modality: str, content: str, count: int
) -> None:
    """Align ``out`` to a token, append ``count`` placeholder tokens, record the item."""
    out += b"\0" * (-len(out) % BYTES_PER_TOKEN)
    token, digest = _mm_token(content)
    features.append(Feature(modality, digest, len(out) // BYTES_PER_TOKEN, count))
    out += token * count


def vllm_features(raw: Any) -> tuple[Feature, ...]:
    """A generate body's ``features`` (``mm_hashes`` / ``mm_placeholders`` by modality)
    as items sorted by offset (llm-d-router ``convertMMFeaturesToUpstream``)."""
    if raw is None:
        return ()
    features = _object(raw, "features")
    hashes = _object(features.get("mm_hashes"), "features.mm_hashes")
    places = _object(features.get("mm_placeholders"), "features.mm_placeholders")
    items: list[Feature] = []
    for modality, digests in hashes.items():
        ranges = places.get(modality)
        if not isinstance(digests, Sequence) or not isinstance(ranges, Sequence):
            continue
        for digest, span in zip(digests, ranges, strict=False):
            span = _object(span, f"features.mm_placeholders.{modality}")
            offset, length = span.get("offset", 0), span.get("length", 0)
            if not isinstance(offset, int) or not isinstance(length, int):
                raise DataError(f"features.mm_placeholders.{modality}: expected integers")
            items.append(Feature(str(modality), str(digest), offset, length))
    items.sort(key=lambda f: f.offset)
    return tuple(items)
