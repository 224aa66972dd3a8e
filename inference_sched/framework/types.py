"""Value types shared by every part of the scheduler.

``Request`` is what the gateway asks about; ``Endpoint`` is a model-server address in the
pool; ``SchedulingResult`` is the answer. ``CycleState`` is the scratch space of one
scheduling cycle, shared by the plugins of that cycle and by its PreRequest hooks.
"""

from __future__ import annotations

import math
import re
import types
import uuid
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Final, Literal, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.errors import DataError
from inference_sched.framework.headers import (
    DEFAULT_FAIRNESS_ID,
    HEADER_FAIRNESS_ID,
    HEADER_MODEL_REWRITE,
    HEADER_OBJECTIVE,
    HEADER_REQUEST_ID,
    HEADER_SESSION_ID,
    HEADER_SESSION_TOKEN,
    HEADER_SLO_TPOT_MS,
    HEADER_SLO_TTFT_MS,
)
from inference_sched.state.endpoint import (
    ROLE_LABEL,
    Candidates,
    Endpoint,
    Role,
    _frozen_mapping,
)

__all__ = [
    "Candidates",
    "CycleState",
    "Endpoint",
    "ProfileRunResult",
    "Request",
    "Response",
    "Role",
    "ScorerCategory",
    "SchedulingResult",
    "Usage",
    "HEADER_SLO_TTFT_MS",
    "HEADER_SLO_TPOT_MS",
    "ROLE_LABEL",
]


ScorerCategory = Literal["Affinity", "Distribution", "Balance"]
"""GIE's scorer categories; informational, no framework logic consumes them."""


_DEC: Final = r"[0-9](?:_?[0-9])*"
_HEX: Final = r"[0-9a-fA-F](?:_?[0-9a-fA-F])*"
_GO_FLOAT: Final = re.compile(
    rf"""[+-]?(?:
        (?P<hex>0[xX](?:_?{_HEX}(?:\.(?:{_HEX})?)?|\.{_HEX})[pP][+-]?{_DEC})
      | (?:{_DEC}(?:\.(?:{_DEC})?)?|\.{_DEC})(?:[eE][+-]?{_DEC})?
      | [iI][nN][fF](?:[iI][nN][iI][tT][yY])?
    )|[nN][aA][nN]""",
    re.ASCII | re.VERBOSE,
)
"""The strings Go's ``strconv.ParseFloat`` accepts (``src/strconv/atof.go``, ``readFloat``
and ``special``; underscores as ``underscoreOK`` in ``src/strconv/atoi.go`` allows them).

ASCII only: an optional sign; decimal digits with an optional point and ``e`` exponent,
or ``0x`` hex digits with an optional point and a mandatory ``p`` exponent (decimal);
``_`` only between two digits, or between the ``0x`` prefix and a digit; ``inf`` and
``infinity`` (signed or not) and ``nan`` (unsigned), case-insensitive. No whitespace.
"""
_HTTP_OWS: Final = " \t"
_MAX_SHOWN_CHARS: Final = 40


def _go_parse_float(text: str) -> float | None:
    """``text`` parsed as Go's ``strconv.ParseFloat(text, 64)`` parses it, or ``None``
    when Go rejects its syntax (see :data:`_GO_FLOAT`).

    A value too large for a float64 is ±inf (Go: ±Inf with ``ErrRange``).
    """
    match = _GO_FLOAT.fullmatch(text)
    if match is None:
        return None
    if match["hex"] is None:  # float() reads the same decimal and special forms
        return float(text)
    try:
        return float.fromhex(text.replace("_", ""))
    except OverflowError:
        return -math.inf if text.startswith("-") else math.inf


def _positive_ms(headers: Mapping[str, str], key: str) -> float | None:
    """A millisecond SLO header read as GIE reads it (``strconv.ParseFloat``), or
    ``None`` when absent or blank; HTTP's optional whitespace around it is ignored.

    Raises:
        DataError: not Go float syntax, or not a finite number >= 0.
    """
    raw = headers.get(key)
    if raw is None:
        return None
    text = raw.strip(_HTTP_OWS)
    if not text:
        return None
    shown = repr(raw if len(raw) <= _MAX_SHOWN_CHARS else raw[:_MAX_SHOWN_CHARS] + "...")
    value = _go_parse_float(text)
    if value is None:
        raise DataError(f"expected a number of milliseconds, got {shown}", source=f"header {key}")
    if not math.isfinite(value) or value < 0:
        raise DataError(
            f"expected a finite number of milliseconds >= 0, got {shown}",
            source=f"header {key}",
        )
    return value + 0.0  # -0 -> 0


def _token_array(value: npt.ArrayLike | None) -> npt.NDArray[np.uint32] | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"token ids must be a 1-D sequence of integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint32).max):
        raise DataError("token ids must be in [0, 2**32)")
    out = arr.astype(np.uint32)
    out.setflags(write=False)
    return out


@attrs.frozen(eq=False)
class Request:
    """One inference request, as the scheduler sees it.

    Build it with :meth:`create`, which reads GIE's control headers; the constructor takes
    every field as is.

    Attributes:
        request_id: ``x-request-id`` (a UUID is generated when absent).
        target_model: model name after rewrite; scopes prefix caches and LoRA affinity.
        incoming_model: model name the client asked for.
        prompt: the bytes prefix-cache routing hashes (see the prefix plugins).
        token_ids: prompt token ids (uint32), when the gateway or a tokenizer knows them.
        headers: request headers, keys lower-case.
        priority: InferenceObjective priority; < 0 means sheddable.
        objective: InferenceObjective name from ``x-gateway-inference-objective``.
        fairness_id: flow-control tenant from ``x-gateway-inference-fairness-id``.
        slo_ttft_ms / slo_tpot_ms: SLO targets from ``x-slo-ttft-ms`` / ``x-slo-tpot-ms``.
        lora_adapter: the LoRA adapter requested: the target model when it is an adapter.
        session_key: session affinity key (``x-session-token``, else ``x-session-id``).
        subset_hint: the gateway's ``ip:port`` subset (``None`` = whole pool).
        request_size_bytes: body size, used for token estimates and flow control.
        body: the parsed request body, when there is one.
        is_streaming: the client asked for a streamed response.
    """

    request_id: str
    target_model: str
    incoming_model: str = attrs.field(
        default=attrs.Factory(lambda self: self.target_model, takes_self=True)
    )
    prompt: bytes | None = None
    token_ids: npt.NDArray[np.uint32] | None = attrs.field(default=None, converter=_token_array)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    priority: int = 0
    objective: str | None = None
    fairness_id: str = DEFAULT_FAIRNESS_ID
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    lora_adapter: str | None = None
    session_key: str | None = None
    subset_hint: tuple[str, ...] | None = None
    request_size_bytes: int = 0
    body: Mapping[str, Any] | None = None
    is_streaming: bool = False

    @classmethod
    def create(
        cls,
        model: str,
        *,
        prompt: bytes | str | None = None,
        token_ids: npt.ArrayLike | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        priority: int = 0,
        base_models: Collection[str] = (),
        subset_hint: Collection[str] | None = None,
        body: Mapping[str, Any] | None = None,
        request_size_bytes: int | None = None,
        is_streaming: bool = False,
    ) -> Request:
        """Build a request from what a gateway knows, reading GIE's control headers.

        Args:
            model: the model the client asked for (body ``model``).
            prompt: bytes to hash for prefix affinity. A ``str`` is UTF-8 encoded with
                ``errors="surrogatepass"``: a lone surrogate (which a Python str may hold
                but UTF-8 cannot) becomes its 3-byte encoding instead of an error. GIE's
                prompts are Go strings, which carry arbitrary bytes and never fail here;
                passing surrogates through (rather than replacing them with U+FFFD) keeps
                distinct prompts distinct, so they never share prefix-cache blocks. The
                model name and header values are kept as ``str`` and not encoded here.
            token_ids: prompt token ids, if known.
            headers: request headers (any case).
            request_id: overrides ``x-request-id``; a UUID4 when neither is given.
            priority: InferenceObjective priority resolved by the caller.
            base_models: base model names served by the pool; a target model outside
                this set is treated as a LoRA adapter (empty: always an adapter
                candidate, as GIE does).
            subset_hint: the gateway's endpoint subset (``ip:port`` strings).
            body: the parsed body.
            request_size_bytes: body size; defaults to the prompt's length.
            is_streaming: the client asked for ``stream: true``.

        Raises:
            DataError: an SLO header is not a finite number >= 0.
        """
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        target = hdrs.get(HEADER_MODEL_REWRITE) or model
        prompt_bytes = (
            prompt.encode("utf-8", "surrogatepass") if isinstance(prompt, str) else prompt
        )
        session = hdrs.get(HEADER_SESSION_TOKEN) or hdrs.get(HEADER_SESSION_ID)
        size = request_size_bytes
        if size is None:
            size = len(prompt_bytes) if prompt_bytes is not None else 0
        return cls(
            request_id=request_id or hdrs.get(HEADER_REQUEST_ID) or str(uuid.uuid4()),
            target_model=target,
            incoming_model=model,
            prompt=prompt_bytes,
            token_ids=_token_array(token_ids),
            headers=hdrs,
            priority=priority,
            objective=hdrs.get(HEADER_OBJECTIVE),
            fairness_id=hdrs.get(HEADER_FAIRNESS_ID) or DEFAULT_FAIRNESS_ID,
            slo_ttft_ms=_positive_ms(hdrs, HEADER_SLO_TTFT_MS),
            slo_tpot_ms=_positive_ms(hdrs, HEADER_SLO_TPOT_MS),
            lora_adapter=None if target in base_models else target,
            session_key=session,
            subset_hint=None if subset_hint is None else tuple(subset_hint),
            request_size_bytes=size,
            body=body,
            is_streaming=is_streaming,
        )

    @property
    def is_sheddable(self) -> bool:
        """GIE: a request with priority < 0 may be shed when the pool is saturated."""
        return self.priority < 0


@attrs.frozen
class Usage:
    """Token usage reported by the model server (OpenAI ``usage``).

    ``total_tokens`` defaults to ``prompt_tokens + completion_tokens``; a parser sets it
    from the server's own ``total_tokens`` when the server reported all three
    (llm-d-router's merge rule, ``docs/parsers.md``).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = attrs.field(
        default=attrs.Factory(
            lambda self: self.prompt_tokens + self.completion_tokens, takes_self=True
        )
    )


@attrs.frozen
class Response:
    """What a response hook learns about the upstream response of a request.

    Attributes:
        request_id: the request's id.
        status_code: upstream HTTP status (200 when unknown).
        headers: response headers, keys lower-case.
        is_start_of_stream: this is the first body chunk.
        is_end_of_stream: this is the last body chunk (always delivered, also on errors).
        usage: token usage when the server reported it.
        time_s: when this was observed, on the scheduler's clock.
        set_headers: headers the response hooks add to the response the client gets
            (keys lower-case; GIE's hooks write ``Response.Headers``). The hooks fill
            it; the embedder copies it onto the client response after they ran.
    """

    request_id: str
    status_code: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    is_start_of_stream: bool = False
    is_end_of_stream: bool = False
    usage: Usage | None = None
    time_s: float = 0.0
    # Mutable on purpose (the hooks write it); left out of eq and hash.
    set_headers: dict[str, str] = attrs.field(factory=dict, eq=False)
    dynamic_metadata: dict[str, dict[str, float]] = attrs.field(factory=dict, eq=False)
    """Envoy dynamic metadata the response hooks return (``{namespace: {key: value}}``,
    GIE's ``Response.DynamicMetadata``); the gateway attaches it to the response."""


class ProfileRunResult(NamedTuple):
    """The ranked endpoints one profile chose: the pick first, then fallbacks.

    Attributes:
        rows: table rows, best first.
        endpoints: the endpoints at those rows, same order.
        scores: the weighted total score of each, same order.

    Tuples, not arrays: a result holds a handful of entries, and building small NumPy
    arrays would cost more than the rest of the decision. A ``NamedTuple`` rather than a
    frozen attrs class for the same reason: it is immutable and three times cheaper to
    build, and two are built per decision.
    """

    rows: tuple[int, ...]
    endpoints: tuple[Endpoint, ...]
    scores: tuple[float, ...]

    @property
    def endpoint(self) -> Endpoint:
        """The pick."""
        return self.endpoints[0]

    @property
    def fallbacks(self) -> tuple[Endpoint, ...]:
        """Endpoints to retry on, in order."""
        return self.endpoints[1:]


class SchedulingResult(NamedTuple):
    """The answer of one scheduling cycle.

    Attributes:
        profile_results: every profile that ran, by name; ``None`` when it failed.
        primary_profile_name: the profile whose pick the gateway routes to.
        request_headers: headers the gateway sets on the upstream request (P/D: the
            prefill pick in ``x-prefiller-host-port``; data parallelism: the rank).
        dropped_request_headers: headers the gateway removes from the client's request
            first, so a client cannot supply them (set ones included).
    """

    profile_results: Mapping[str, ProfileRunResult | None]
    primary_profile_name: str
    request_headers: Mapping[str, str] = types.MappingProxyType({})
    dropped_request_headers: tuple[str, ...] = ()

    @property
    def primary(self) -> ProfileRunResult:
        """The primary profile's result."""
        result = self.profile_results[self.primary_profile_name]
        assert result is not None, "process_results must not name a failed profile primary"
        return result

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint to route to."""
        return self.primary.endpoints[0]

    @property
    def target_endpoints(self) -> tuple[Endpoint, ...]:
        """Primary profile's endpoints: the pick, then fallbacks."""
        return self.primary.endpoints

    @property
    def destination_header(self) -> str:
        """Value of ``x-gateway-destination-endpoint``: ``ip:port[,ip:port...]``."""
        return ",".join(e.hostport for e in self.primary.endpoints)

    def picked(self, profile: str) -> Endpoint | None:
        """The pick of ``profile`` if it ran and succeeded."""
        result = self.profile_results.get(profile)
        return result.endpoints[0] if result is not None and result.endpoints else None


class CycleState:
    """Scratch state of one scheduling cycle, shared by its plugins and PreRequest hooks.

    Keys are strings; by convention a plugin writes under its own type or under a data
    key it declares in ``produces``. ``rng`` is the scheduler's seeded generator: use it
    for every random choice so runs are reproducible.
    """

    __slots__ = ("_data", "now_s", "rng")

    def __init__(self, rng: np.random.Generator, now_s: float = 0.0) -> None:
        self._data: dict[str, Any] = {}
        self.rng = rng
        self.now_s = now_s

    def read(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        return self._data.get(key, default)

    def write(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` for the rest of the cycle."""
        self._data[key] = value

    def delete(self, key: str) -> None:
        """Drop ``key`` if present."""
        self._data.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)
