"""A client for a vLLM server's render endpoints: a request's real token ids over HTTP.

llm-d-router's ``vllm`` tokenizer backend
(``pkg/epp/framework/plugins/requestcontrol/dataproducer/tokenizer/vllm_http.go``) posts
the request body, its ``model`` set to the configured model, to

* ``/v1/completions/render`` (completions: a list with one ``{"token_ids": [...]}`` per
  prompt),
* ``/v1/chat/completions/render`` (chat: one ``{"token_ids": [...], "features":
  {"mm_hashes": ..., "mm_placeholders": ...}}``),
* ``/v1/messages/render`` (anthropic messages, vLLM's native render),

which vLLM serves with ``vllm launch render <model>`` (no GPU) or ``vllm serve`` with
``VLLM_ENABLE_SCALE_OUT_ENDPOINTS=1``. Token ids in the body (generate ``token_ids``,
completions / embeddings id lists) are passed through without a call.

Every call has a deadline (``timeout_s``, or ``mm_timeout_s`` for a chat whose messages
have content blocks), reads at most ``max_response_bytes``, never follows redirects and
raises :class:`RenderError` naming the URL for any failure: connection, timeout, non-2xx
status (with the first KiB of the answer), oversized or malformed answer.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any, Final

import attrs
import httpx
import numpy as np
import numpy.typing as npt

from inference_sched.errors import DataError, InferenceSchedError
from inference_sched.tokenize.estimate import (
    Estimate,
    Feature,
    detect_api,
    token_id_array,
    vllm_features,
)

__all__ = [
    "CHAT_RENDER_PATH",
    "COMPLETIONS_RENDER_PATH",
    "MESSAGES_RENDER_PATH",
    "RenderClient",
    "RenderConfig",
    "RenderError",
    "client_for",
]

COMPLETIONS_RENDER_PATH: Final = "/v1/completions/render"
CHAT_RENDER_PATH: Final = "/v1/chat/completions/render"
MESSAGES_RENDER_PATH: Final = "/v1/messages/render"
_MAX_ERROR_SNIPPET_BYTES: Final = 1024


class RenderError(InferenceSchedError, RuntimeError):
    """A render call failed.

    Attributes:
        endpoint: the URL called.
        status_code: the HTTP status of a non-2xx answer, else 0.
    """

    def __init__(self, endpoint: str, message: str, *, status_code: int = 0) -> None:
        self.endpoint = endpoint
        self.status_code = status_code
        super().__init__(f"{endpoint}: {message}")


@attrs.frozen
class RenderConfig:
    """Where and how to call the render endpoints (llm-d-router ``vllm`` keys)."""

    url: str = "http://localhost:8000"
    """Base URL of the vLLM server (``http://`` or ``https://``, no path)."""
    timeout_s: float = 5.0
    """Deadline of a completions call and of a text-only chat call."""
    mm_timeout_s: float = 30.0
    """Deadline of a chat / messages call whose messages have content blocks."""
    ca_cert_path: str = ""
    """PEM CA bundle that signs an ``https://`` server's certificate (else the system's)."""
    client_cert_path: str = ""
    """Client certificate for mTLS (with ``client_key_path``)."""
    client_key_path: str = ""
    """Client key for mTLS (with ``client_cert_path``)."""
    insecure_skip_verify: bool = False
    """Do not verify an ``https://`` server's certificate."""
    prefill_only: bool = False
    """Render with a one-token output budget (``max_tokens: 1``) so a long requested
    output does not fail the render; the prompt is unchanged."""
    max_response_bytes: int = 64 << 20
    """Largest answer read (64 MiB: ~5M token ids)."""


class RenderClient:
    """Calls one vLLM server's render endpoints (thread-safe; keeps up to 16 idle
    connections for 90 s).

    Args:
        config: the endpoint and its limits.
        model_name: written to the body's ``model`` ("" keeps the request's).
    """

    def __init__(self, config: RenderConfig, model_name: str = "") -> None:
        self.config = config
        self.model_name = model_name
        self.base_url = config.url.rstrip("/")
        cert: tuple[str, str] | None = None
        if config.client_cert_path:
            cert = (config.client_cert_path, config.client_key_path)
        verify: ssl.SSLContext | bool = True
        if config.insecure_skip_verify:
            verify = False
        elif config.ca_cert_path or cert:
            verify = ssl.create_default_context(cafile=config.ca_cert_path or None)
        if cert is not None and isinstance(verify, ssl.SSLContext):
            verify.load_cert_chain(*cert)
            cert = None
        self._client = httpx.Client(
            verify=verify,
            cert=cert,
            http2=False,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=90.0),
        )

    def close(self) -> None:
        """Close the idle connections."""
        self._client.close()

    # ------------------------------------------------------------------ requests
    def render(
        self,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        *,
        api: str | None = None,
    ) -> Estimate:
        """The request's real token ids (``estimated`` False).

        Args:
            body: the parsed request body.
            headers: lower-cased request headers: the path decides the API
                (:func:`~inference_sched.tokenize.estimate.detect_api`) and an
                ``authorization`` header is forwarded.
            api: the request kind when the caller knows it.

        Raises:
            RenderError: the call failed.
            DataError: the body is of an API without a render endpoint, or malformed.
        """
        headers = headers or {}
        kind = api or detect_api(body, headers)
        auth = headers.get("authorization")
        if kind == "generate":
            key = "token_ids" if "token_ids" in body else "input_ids"
            ids = token_id_array(body.get(key), key)
            return Estimate((ids,), vllm_features(body.get("features")), estimated=False)
        if kind == "completions":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
                return Estimate((token_id_array(prompt, "prompt"),), estimated=False)
            answer = self._post(
                COMPLETIONS_RENDER_PATH, self._payload(body), self.config.timeout_s, auth
            )
            items = answer if isinstance(answer, list) else [answer]
            if not items:
                raise RenderError(self._url(COMPLETIONS_RENDER_PATH), "empty render answer")
            prompts = tuple(self._ids(item, COMPLETIONS_RENDER_PATH) for item in items)
            return Estimate(prompts, estimated=False)
        if kind in ("chat/completions", "messages"):
            path = CHAT_RENDER_PATH if kind == "chat/completions" else MESSAGES_RENDER_PATH
            timeout = self.config.mm_timeout_s if _has_blocks(body) else self.config.timeout_s
            answer = self._post(path, self._payload(body), timeout, auth)
            ids = self._ids(answer, path)
            features: tuple[Feature, ...] = ()
            if isinstance(answer, Mapping):
                try:
                    features = vllm_features(answer.get("features"))
                except ValueError as exc:
                    raise RenderError(self._url(path), f"bad features: {exc}") from None
            return Estimate((ids,), features, estimated=False)
        if kind == "embeddings":
            value = body.get("input")
            if isinstance(value, list) and value and not isinstance(value[0], str):
                return Estimate((token_id_array(value, "input"),), estimated=False)
        raise DataError(f"no render endpoint for {kind!r} requests (completions, chat, messages)")

    def _payload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        payload = dict(body)
        if self.model_name:
            payload["model"] = self.model_name
        if self.config.prefill_only and payload.get("truncate_prompt_tokens") is None:
            payload["max_tokens"] = 1
            if "max_completion_tokens" in payload:
                payload["max_completion_tokens"] = 1
            if "min_tokens" in payload:
                payload["min_tokens"] = 0
        return payload

    def _ids(self, item: Any, path: str) -> npt.NDArray[np.uint32]:
        if not isinstance(item, Mapping) or "token_ids" not in item:
            raise RenderError(self._url(path), "answer has no token_ids")
        try:
            return token_id_array(item["token_ids"], "token_ids")
        except ValueError as exc:
            raise RenderError(self._url(path), f"bad token_ids: {exc}") from None

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _post(self, path: str, payload: Any, timeout_s: float, auth: str | None) -> Any:
        url = self._url(path)
        try:
            content = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise RenderError(url, f"body is not JSON: {exc}") from None
        headers = {"content-type": "application/json"}
        if auth:
            headers["authorization"] = auth
        limit = self.config.max_response_bytes
        try:
            with self._client.stream(
                "POST", url, content=content, headers=headers, timeout=timeout_s
            ) as response:
                if not 200 <= response.status_code < 300:
                    snippet = _read_at_most(response, _MAX_ERROR_SNIPPET_BYTES)
                    text = snippet.decode("utf-8", "replace")
                    raise RenderError(
                        url,
                        f"status {response.status_code}: {text}",
                        status_code=response.status_code,
                    )
                raw = _read_at_most(response, limit + 1)
        except httpx.TimeoutException:
            raise RenderError(url, f"no answer within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise RenderError(url, f"{type(exc).__name__}: {exc}") from None
        if len(raw) > limit:
            raise RenderError(url, f"answer larger than {limit} bytes")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RenderError(url, f"answer is not JSON: {exc}") from None


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _has_blocks(body: Mapping[str, Any]) -> bool:
    """A message with content blocks (llm-d-router picks ``mmTimeout`` for it)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    return any(isinstance(m, Mapping) and isinstance(m.get("content"), list) for m in messages)


def client_for(endpoint: Any, model_name: str = "") -> RenderClient | None:
    """A client for ``endpoint``, a parameter object with ``url``, ``timeout_s`` and
    ``mm_timeout_s`` (the precise producer's ``tokenizersPoolConfig.vllm``); ``None``
    gives ``None``."""
    if endpoint is None:
        return None
    config = RenderConfig(
        url=endpoint.url, timeout_s=endpoint.timeout_s, mm_timeout_s=endpoint.mm_timeout_s
    )
    return RenderClient(config, model_name)
