"""``token-producer``: the request's prompt as token ids, for every plugin that counts or
matches tokens (``docs/plugins/token-producer.md``).

llm-d-router's ``token-producer``
(``pkg/epp/framework/plugins/requestcontrol/dataproducer/tokenizer/tokenizer.go``) writes
a ``TokenizedRequest`` (one id array per prompt and the multimodal items) under
``TokenizedPrompt``. Its backend is chosen by the parameters:

* ``estimate`` (the default, and what the loader auto-creates when a plugin consumes
  ``TokenizedPrompt`` and none produces it): the request bytes packed four per uint32
  (:mod:`inference_sched.tokenize.estimate`); no model, no network;
* ``vllm`` (or ``modelName`` alone): a vLLM server's render endpoints
  (:mod:`inference_sched.tokenize.render`), the model's real ids;
* ``tokenizerFile`` (ours): a local Hugging Face ``tokenizer.json`` (``[tokenizer]``
  extra) for completions prompts;
* ``udsTokenizerConfig.socketFile`` (llm-d's deprecated gRPC-over-UDS sidecar): accepted,
  but the sidecar's protocol is not spoken here: the estimate backend runs instead, with
  a warning when the plugin is built.

Ids a request already carries (``Request.token_ids``, the body's ``prompt_token_ids``, a
generate ``token_ids``, a completions / embeddings id list) pass through unchanged. A body
the backend cannot read raises :class:`~inference_sched.errors.DataError` (a failed render
:class:`~inference_sched.tokenize.render.RenderError`): the scheduler counts and logs it
for this plugin and the cycle goes on without ``TokenizedPrompt``.

``tokenizer`` is the deprecated alias of ``token-producer`` (llm-d-router registers the
same factory under both names): same parameters and behaviour; building one logs a
deprecation warning.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.contracts import (
    TOKENIZED_PROMPT,
    MultiModalFeature,
    TokenizedRequest,
    read_tokenized,
)
from inference_sched.framework.interfaces import DataProducer, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import (
    ParamCheck,
    at_least,
    boolean,
    duration_s,
    nested,
    one_of,
    param,
    string,
)
from inference_sched.prefix.prompt_bytes import go_json_marshal, prompt_bytes
from inference_sched.state.table import EndpointTable
from inference_sched.tokenize.estimate import (
    Estimate,
    Estimator,
    ImageEstimate,
    VideoEstimate,
    detect_api,
    token_id_array,
)
from inference_sched.tokenize.render import RenderClient, RenderConfig, RenderError

__all__ = [
    "EstimateParams",
    "TokenProducer",
    "TokenProducerParams",
    "TokenizerProducer",
    "VllmParams",
    "make_estimator",
]

log = logging.getLogger(__name__)

P = TypeVar("P")
_BACKENDS: Final = ("estimate", "vllm", "tokenizerFile")


def _optional(cls: type[P], key: str) -> Callable[[Any], P | None]:
    """``nested(cls, key)``, with ``null`` meaning "not set" (Go's nil pointer)."""
    parse = nested(cls, key)
    return lambda raw: None if raw is None else parse(raw)


def _existing_path(key: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        string(inst, attribute, value)
        if value and not Path(value).is_file():
            raise ParamCheck(key, "the path of an existing file", value)

    return check


# ------------------------------------------------------------------ estimate parameters
@attrs.frozen
class Resolution:
    """``{width, height}`` in pixels."""

    width: int = param(0, alias="width", check=at_least(0))
    """Pixels across (0: the built-in default)."""
    height: int = param(0, alias="height", check=at_least(0))
    """Pixels down (0: the built-in default)."""


@attrs.frozen
class StaticImage:
    """``estimate.image.static``."""

    static_token: int = param(0, alias="staticToken", check=at_least(0))
    """Placeholder tokens per image (0: 1)."""


@attrs.frozen
class DynamicMode:
    """``estimate.image.dynamic`` / ``estimate.video.tokensPerFrame.dynamic``."""

    factor: int = param(0, alias="factor", check=at_least(0))
    """Pixels per placeholder token (0: 1024)."""


@attrs.frozen
class ImageParams:
    """``estimate.image``: placeholder tokens of an image."""

    mode: str = param("", alias="mode", check=one_of("", "dynamic", "static"))
    """``dynamic`` (width x height / factor, the default) or ``static``."""
    default_resolution: Resolution | None = param(  # noqa: RUF009 - an attrs field
        None, alias="defaultResolution", parse=_optional(Resolution, "defaultResolution")
    )
    """Size of an image whose header cannot be read (640x360)."""
    static: StaticImage | None = param(None, alias="static", parse=_optional(StaticImage, "static"))  # noqa: RUF009 - an attrs field
    """Static mode's count."""
    dynamic: DynamicMode | None = param(  # noqa: RUF009 - an attrs field
        None, alias="dynamic", parse=_optional(DynamicMode, "dynamic")
    )
    """Dynamic mode's factor."""


@attrs.frozen
class TokensPerFrameStatic:
    """``estimate.video.tokensPerFrame.static``."""

    num_tokens_per_frame: int = param(0, alias="numTokensPerFrame", check=at_least(0))
    """Placeholder tokens per frame (0: 1)."""


@attrs.frozen
class TokensPerFrame:
    """``estimate.video.tokensPerFrame``."""

    mode: str = param("", alias="mode", check=one_of("", "dynamic", "static"))
    """``dynamic`` (width x height / factor, the default) or ``static``."""
    static: TokensPerFrameStatic | None = param(  # noqa: RUF009 - an attrs field
        None, alias="static", parse=_optional(TokensPerFrameStatic, "static")
    )
    """Static mode's count."""
    dynamic: DynamicMode | None = param(  # noqa: RUF009 - an attrs field
        None, alias="dynamic", parse=_optional(DynamicMode, "dynamic")
    )
    """Dynamic mode's factor."""


@attrs.frozen
class FramesSampled:
    """``estimate.video.frames.sampled``."""

    sample_fps: float = param(0.0, alias="sampleFPS", check=at_least(0, kind="number"))
    """Frames sampled per second (0: 2)."""
    temporal_patch_size: int = param(0, alias="temporalPatchSize", check=at_least(0))
    """Sampled frames merged into one group (qwen3-vl: 2; < 2: none)."""


@attrs.frozen
class FramesStrided:
    """``estimate.video.frames.strided``."""

    default_source_fps: float = param(
        0.0, alias="defaultSourceFPS", check=at_least(0, kind="number")
    )
    """Source frame rate without an ``x-llm-d-video-fps`` header (0: 24)."""
    frame_stride: int = param(0, alias="frameStride", check=at_least(0))
    """Keep every n-th source frame (0: 1)."""


@attrs.frozen
class Frames:
    """``estimate.video.frames``."""

    mode: str = param("", alias="mode", check=one_of("", "sampled", "strided"))
    """``sampled`` (the default) or ``strided``."""
    min_frames: int = param(0, alias="minFrames", check=at_least(0))
    """Frame floor (0: none)."""
    max_frames: int = param(0, alias="maxFrames", check=at_least(0))
    """Frame cap (0: none)."""
    sampled: FramesSampled | None = param(  # noqa: RUF009 - an attrs field
        None, alias="sampled", parse=_optional(FramesSampled, "sampled")
    )
    """Sampled mode."""
    strided: FramesStrided | None = param(  # noqa: RUF009 - an attrs field
        None, alias="strided", parse=_optional(FramesStrided, "strided")
    )
    """Strided mode."""


@attrs.frozen
class VideoParams:
    """``estimate.video``: ``min(frames x tokensPerFrame, maxVideoTokens)``."""

    default_resolution: Resolution | None = param(  # noqa: RUF009 - an attrs field
        None, alias="defaultResolution", parse=_optional(Resolution, "defaultResolution")
    )
    """Frame size without an ``x-llm-d-video-resolution`` header (640x360)."""
    default_duration: float = param(0.0, alias="defaultDuration", check=at_least(0, kind="number"))
    """Seconds without an ``x-llm-d-video-duration-seconds`` header (0: 10)."""
    tokens_per_frame: TokensPerFrame | None = param(  # noqa: RUF009 - an attrs field
        None, alias="tokensPerFrame", parse=_optional(TokensPerFrame, "tokensPerFrame")
    )
    """Placeholder tokens per frame."""
    frames: Frames | None = param(None, alias="frames", parse=_optional(Frames, "frames"))  # noqa: RUF009 - an attrs field
    """How many frames count."""
    max_video_tokens: int = param(0, alias="maxVideoTokens", check=at_least(0))
    """Cap on one video's tokens (0: none)."""


@attrs.frozen
class EstimateParams:
    """``estimate``: selects the estimate backend and tunes its multimodal counts."""

    image: ImageParams | None = param(None, alias="image", parse=_optional(ImageParams, "image"))  # noqa: RUF009 - an attrs field
    """Images."""
    video: VideoParams | None = param(None, alias="video", parse=_optional(VideoParams, "video"))  # noqa: RUF009 - an attrs field
    """Videos."""


# ------------------------------------------------------------------ vllm parameters
@attrs.frozen
class VllmParams:
    """``vllm``: a vLLM server's render endpoints (llm-d-router ``vllmConfig``)."""

    url: str = param("", alias="url", check=string)
    """Base URL of the server (``""``: ``http://localhost:8000``)."""
    http: str = param(
        "", alias="http", check=string, deprecated="llm-d's old name of vllm.url; use url"
    )
    """Deprecated name of ``url`` (older llm-d releases)."""
    timeout_s: float = param(
        5.0, alias="timeout", parse=duration_s("timeout"), check=at_least(1e-3, kind="number")
    )
    """Deadline of a completions or text-only chat render (``"5s"``)."""
    mm_timeout_s: float = param(
        30.0,
        alias="mmTimeout",
        parse=duration_s("mmTimeout"),
        check=at_least(1e-3, kind="number"),
    )
    """Deadline of a chat / messages render with content blocks (``"30s"``)."""
    ca_cert_path: str = param("", alias="caCertPath", check=_existing_path("caCertPath"))
    """PEM CA bundle for an ``https://`` server (else the system's)."""
    client_cert_path: str = param(
        "", alias="clientCertPath", check=_existing_path("clientCertPath")
    )
    """mTLS client certificate (needs ``clientKeyPath``)."""
    client_key_path: str = param("", alias="clientKeyPath", check=_existing_path("clientKeyPath"))
    """mTLS client key (needs ``clientCertPath``)."""
    insecure_skip_verify: bool = param(False, alias="insecureSkipVerify", check=boolean)
    """Do not verify an ``https://`` server's certificate."""
    prefill_only: bool = param(False, alias="prefillOnly", check=boolean)
    """Render with a one-token output budget (the forwarded request is unchanged)."""
    messages_render_mode: str = param(
        "", alias="messagesRenderMode", check=one_of("", "auto", "native")
    )
    """How anthropic messages render: ``native`` (``/v1/messages/render``; ``auto`` and
    ``""`` too: no probing here). llm-d's deprecated ``legacy`` is not available."""

    def __attrs_post_init__(self) -> None:
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ParamCheck(
                "vllm.clientKeyPath" if self.client_cert_path else "vllm.clientCertPath",
                "clientCertPath and clientKeyPath set together",
                self.client_key_path or self.client_cert_path,
            )
        if self.url and self.http:
            raise ParamCheck("vllm.http", "only one of url and http (its old name)", self.http)

    def render_config(self) -> RenderConfig:
        """The client configuration these keys describe."""
        return RenderConfig(
            url=self.url or self.http or "http://localhost:8000",
            timeout_s=self.timeout_s,
            mm_timeout_s=self.mm_timeout_s,
            ca_cert_path=self.ca_cert_path,
            client_cert_path=self.client_cert_path,
            client_key_path=self.client_key_path,
            insecure_skip_verify=self.insecure_skip_verify,
            prefill_only=self.prefill_only,
        )


def _non_empty_path(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty path string", value)


def _str_map(raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ParamCheck("modelTokenizerMap", "a mapping of model name to path", raw)
    for model, path in raw.items():
        if not isinstance(model, str) or not model:
            raise ParamCheck("modelTokenizerMap", "non-empty str model names", model)
        if not isinstance(path, str) or not path:
            raise ParamCheck(f"modelTokenizerMap.{model}", "a non-empty path string", path)
    return tuple(sorted(raw.items()))


@attrs.frozen
class UdsTokenizerParams:
    """``udsTokenizerConfig`` (llm-d-kv-cache ``tokenization.UdsTokenizerConfig``, llm-d's
    deprecated gRPC tokenizer sidecar). Accepted; the sidecar is not spoken here: the
    estimate backend runs instead, with a warning when the plugin is built."""

    socket_file: str | None = param(None, alias="socketFile", check=_non_empty_path)
    """The sidecar's Unix socket; set, it selects this backend (llm-d's ``IsEnabled``)."""
    use_tcp: bool = param(False, alias="useTCP", check=boolean)
    """llm-d: dial ``socketFile`` as host:port (tests only)."""
    model_tokenizer_map: tuple[tuple[str, str], ...] = param(
        (), alias="modelTokenizerMap", parse=_str_map
    )
    """llm-d: model name -> tokenizer directory or ``tokenizer.json`` for the sidecar."""
    hugging_face_token: str = param("", alias="huggingFaceToken", check=string, secret=True)
    """An older llm-d-kv-cache key (the sidecar's Hugging Face token)."""
    tokenizers_cache_dir: str = param("", alias="tokenizersCacheDir", check=string)
    """An older llm-d-kv-cache key (the sidecar's download directory)."""

    @property
    def enabled(self) -> bool:
        """A socket is named: llm-d would use the sidecar."""
        return self.socket_file is not None


# ------------------------------------------------------------------ plugin parameters
@attrs.frozen
class TokenProducerParams:
    """Parameters of ``token-producer`` (llm-d-router's keys; ``tokenizerFile`` and
    ``addSpecialTokens`` are ours). No parameters: the estimate backend."""

    model_name: str = param("", alias="modelName", check=string)
    """The model (``vllm``: written to the render body; alone, it selects ``vllm``)."""
    vllm: VllmParams | None = param(None, alias="vllm", parse=_optional(VllmParams, "vllm"))  # noqa: RUF009 - an attrs field
    """Selects the vLLM render backend."""
    estimate: EstimateParams | None = param(  # noqa: RUF009 - an attrs field
        None, alias="estimate", parse=_optional(EstimateParams, "estimate")
    )
    """Selects the estimate backend (the default) and tunes it."""
    uds_tokenizer_config: UdsTokenizerParams | None = param(  # noqa: RUF009 - an attrs field
        None,
        alias="udsTokenizerConfig",
        parse=_optional(UdsTokenizerParams, "udsTokenizerConfig"),
    )
    """llm-d's deprecated gRPC-over-UDS backend: accepted; the estimate backend runs in
    its place (a warning when the plugin is built)."""
    tokenizer_file: str = param("", alias="tokenizerFile", check=_existing_path("tokenizerFile"))
    """Ours: a local Hugging Face ``tokenizer.json`` (completions prompts only)."""
    add_special_tokens: bool = param(True, alias="addSpecialTokens", check=boolean)
    """Ours, with ``tokenizerFile``: add BOS and the other special tokens."""

    def __attrs_post_init__(self) -> None:
        uds = self.uds_enabled
        if uds and (self.vllm is not None or self.estimate is not None or self.tokenizer_file):
            raise ParamCheck(
                "udsTokenizerConfig",
                "only one of estimate, vllm, udsTokenizerConfig or tokenizerFile",
                "udsTokenizerConfig",
            )
        if uds and not self.model_name:
            raise ParamCheck(
                "modelName", "a model name when udsTokenizerConfig is set", self.model_name
            )
        if self.tokenizer_file and (self.vllm is not None or self.estimate is not None):
            raise ParamCheck(
                "tokenizerFile", "only one of estimate, vllm or tokenizerFile", self.tokenizer_file
            )
        is_vllm = self.vllm is not None or (
            bool(self.model_name) and not self.tokenizer_file and not uds
        )
        if self.estimate is not None and is_vllm:
            key = "vllm" if self.vllm is not None else "modelName"
            raise ParamCheck(key, "only one of estimate, vllm (or modelName) or tokenizerFile", key)
        if self.vllm is not None and not self.model_name:
            raise ParamCheck("modelName", "a model name when vllm is set", self.model_name)

    @property
    def uds_enabled(self) -> bool:
        """``udsTokenizerConfig.socketFile`` is set (llm-d would use the sidecar)."""
        return self.uds_tokenizer_config is not None and self.uds_tokenizer_config.enabled

    @property
    def backend(self) -> str:
        """``estimate``, ``vllm`` or ``tokenizerFile``: the backend that runs. llm-d's
        order: ``estimate``, then ``udsTokenizerConfig`` (estimate here), then ``vllm``
        (or ``modelName``); ``tokenizerFile`` is ours."""
        if self.tokenizer_file:
            return "tokenizerFile"
        if self.estimate is not None or self.uds_enabled:
            return "estimate"
        if self.vllm is not None or self.model_name:
            return "vllm"
        return "estimate"


def _resolution(res: Resolution | None) -> tuple[int, int]:
    return (res.width, res.height) if res is not None else (0, 0)


def make_estimator(params: EstimateParams | None) -> Estimator:
    """The estimate backend ``params`` describe, wired to Go's JSON encoder and GIE's
    request bytes (:mod:`inference_sched.prefix.prompt_bytes`)."""
    image, video = ImageEstimate(), VideoEstimate()
    if params is not None and params.image is not None:
        img = params.image
        width, height = _resolution(img.default_resolution)
        image = ImageEstimate(
            mode=img.mode or "dynamic",
            default_width=width,
            default_height=height,
            factor=img.dynamic.factor if img.dynamic else 0,
            static_tokens=img.static.static_token if img.static else 0,
        )
    if params is not None and params.video is not None:
        vid = params.video
        width, height = _resolution(vid.default_resolution)
        tpf, frames = vid.tokens_per_frame, vid.frames
        video = VideoEstimate(
            tokens_per_frame_mode=(tpf.mode if tpf else "") or "dynamic",
            factor=tpf.dynamic.factor if tpf and tpf.dynamic else 0,
            static_tokens_per_frame=tpf.static.num_tokens_per_frame if tpf and tpf.static else 0,
            frames_mode=(frames.mode if frames else "") or "sampled",
            min_frames=frames.min_frames if frames else 0,
            max_frames=frames.max_frames if frames else 0,
            sample_fps=frames.sampled.sample_fps if frames and frames.sampled else 0.0,
            temporal_patch_size=(
                frames.sampled.temporal_patch_size if frames and frames.sampled else 0
            ),
            source_fps=frames.strided.default_source_fps if frames and frames.strided else 0.0,
            frame_stride=frames.strided.frame_stride if frames and frames.strided else 0,
            default_width=width,
            default_height=height,
            default_duration_s=vid.default_duration,
            max_video_tokens=vid.max_video_tokens,
        )
    return Estimator(image, video, marshal=go_json_marshal, gie_bytes=prompt_bytes)


def _to_contract(result: Estimate) -> TokenizedRequest:
    features = tuple(
        MultiModalFeature(f.modality, f.hash, f.offset, f.length) for f in result.features
    )
    return TokenizedRequest(
        prompts=result.prompts, mm_features=features, estimated=result.estimated
    )


# ------------------------------------------------------------------ the plugin
@register("token-producer", default_producer_for=(TOKENIZED_PROMPT,))
class TokenProducer:
    """The request's token ids: estimated (default), rendered by vLLM, or tokenized from
    a local ``tokenizer.json``."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    produces: ClassVar[frozenset[str]] = frozenset({TOKENIZED_PROMPT})
    consumes: ClassVar[frozenset[str]] = frozenset()
    Params = TokenProducerParams

    def __init__(self, name: str, params: TokenProducerParams | None, handle: Handle) -> None:
        self.name = name
        self.params = params = params if params is not None else TokenProducerParams()
        self.backend = params.backend
        if params.uds_enabled:
            uds = params.uds_tokenizer_config
            log.warning(
                "plugin %r: udsTokenizerConfig (socketFile %r): the gRPC-over-UDS tokenizer "
                "sidecar is not supported here; using the estimate backend instead (its ids "
                "never match engine KV blocks: set vllm: {url: ...} for the model's real ids)",
                name,
                uds.socket_file if uds is not None else "",
            )
        self.stats: collections.Counter[str] = collections.Counter()
        """Requests produced by backend, passed through, already present, empty, failed."""
        self._estimator = make_estimator(params.estimate)
        self._render: RenderClient | None = None
        self._tokenizer: Any = None
        if self.backend == "vllm":
            vllm = params.vllm if params.vllm is not None else VllmParams()
            self._render = RenderClient(vllm.render_config(), params.model_name)
        elif self.backend == "tokenizerFile":
            self._tokenizer = _load_tokenizer(params.tokenizer_file)

    def tokenize(self, text: str) -> npt.NDArray[np.uint32]:
        """Token ids of ``text`` with the local ``tokenizer.json`` (``tokenizerFile``)."""
        if self._tokenizer is None:
            raise ConfigError(f"plugin {self.name!r}: tokenize() needs tokenizerFile")
        ids = self._tokenizer.encode(text, add_special_tokens=self.params.add_special_tokens).ids
        return np.asarray(ids, dtype=np.uint32)

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Write ``TokenizedPrompt`` (a :class:`TokenizedRequest`) for this request.

        Raises:
            DataError: the body cannot be read (counted in ``stats['failed']``).
            RenderError: the vLLM render call failed (likewise).
        """
        if read_tokenized(cycle) is not None:
            self.stats["already_present"] += 1
            return
        try:
            result = self._produce(request)
        except (DataError, RenderError):
            self.stats["failed"] += 1
            raise
        if result is None or result.token_count() == 0:
            self.stats["empty"] += 1
            return
        cycle.write(TOKENIZED_PROMPT, _to_contract(result))
        self.stats["passed_through" if self._own_ids(request) else self.backend] += 1

    @staticmethod
    def _own_ids(request: Request) -> bool:
        body = request.body
        return request.token_ids is not None or (body is not None and "prompt_token_ids" in body)

    def _produce(self, request: Request) -> Estimate | None:
        if request.token_ids is not None:
            return Estimate((request.token_ids,), estimated=False)
        body = request.body
        if body is not None and "prompt_token_ids" in body:
            return Estimate(
                (token_id_array(body["prompt_token_ids"], "prompt_token_ids"),), (), False
            )
        if body is None:
            if not request.prompt:
                return None
            return self._bare_prompt(request.prompt)
        if self._render is not None:
            return self._render.render(body, request.headers)
        if self._tokenizer is not None:
            return self._local(body, request.headers)
        return self._estimator.estimate(body, request.headers)

    def _bare_prompt(self, prompt: bytes) -> Estimate:
        if self._render is not None:
            text = prompt.decode("utf-8", "replace")
            return self._render.render({"prompt": text}, api="completions")
        if self._tokenizer is not None:
            return Estimate((self.tokenize(prompt.decode("utf-8", "replace")),), estimated=False)
        return self._estimator.estimate_prompt(prompt)

    def _local(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Estimate | None:
        api = detect_api(body, headers)
        prompt = body.get("prompt")
        if api == "completions" and isinstance(prompt, str) and prompt:
            return Estimate((self.tokenize(prompt),), estimated=False)
        if (
            api == "completions"
            and isinstance(prompt, list)
            and prompt
            and all(isinstance(p, str) for p in prompt)
        ):
            return Estimate(tuple(self.tokenize(p) for p in prompt), estimated=False)
        if api in ("generate", "completions", "embeddings"):
            result = self._estimator.estimate(body, headers, api=api)
            if not result.estimated:  # ids the body carries
                return result
        # Chat and the other APIs: the engine's ids depend on its chat template, which
        # only the engine (or a render call) applies; wrong ids would never match.
        self.stats["skipped_" + api.replace("/", "_")] += 1
        return None


def _load_tokenizer(path: str) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(
            "token-producer tokenizerFile needs the [tokenizer] extra: pip install "
            "'inference-sched[tokenizer]'"
        ) from None
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 - the library raises its own (Rust) type
        raise ConfigError(f"{path}: not a tokenizer.json ({exc})") from None


@register("tokenizer")
class TokenizerProducer(TokenProducer):
    """Deprecated alias of ``token-producer`` (llm-d-router); logs a warning when built."""

    def __init__(self, name: str, params: TokenProducerParams | None, handle: Handle) -> None:
        log.warning(
            "plugin %r: type 'tokenizer' is deprecated; use 'token-producer' (same parameters)",
            name,
        )
        super().__init__(name, params, handle)


_: type[DataProducer] = TokenProducer
