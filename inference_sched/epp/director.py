"""The Director: one parsed HTTP request in, a routing decision (or an HTTP error) out,
and the response side of that request.

It is what GIE's and llm-d-router's Director do around the scheduler
(``llm-d-router: pkg/epp/requestcontrol/director.go``, spec ``llmd-router.md`` §4.3), cut
free of any transport so the ext_proc server (:mod:`inference_sched.epp.extproc`) and
the HTTP gateway share it: resolve the parser by path and parse, model rewrite (header,
then InferenceModelRewrite rules), priority from the InferenceObjective, fairness id,
``Request.create``, ``Scheduler.schedule``; errors become :class:`Rejection` with the
HTTP status, GIE's body ``inference error: <Code> - <msg>`` and llm-d's
``x-llm-d-request-dropped-reason`` (``docs/epp.md`` "Errors").

Design note: the scheduler's :class:`~inference_sched.framework.types.Request` reads only
GIE's header spellings (``x-gateway-*``, ``x-slo-*``). llm-d's new names win over them
(``llmd-router.md`` §3), so the Director resolves each control header once and hands the
scheduler a header map where the GIE spelling holds the resolved value.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

import attrs

from inference_sched.errors import (
    AdmissionDeniedError,
    DataError,
    NoEndpointError,
    ParseError,
    RequestShedError,
    SchedulingError,
)
from inference_sched.framework.headers import (
    DEFAULT_FAIRNESS_ID,
    HEADER_DESTINATION_ENDPOINT,
    HEADER_FAIRNESS_ID,
    HEADER_MODEL_REWRITE,
    HEADER_OBJECTIVE,
    HEADER_REQUEST_ID,
    HEADER_SLO_TPOT_MS,
    HEADER_SLO_TTFT_MS,
    HEADER_SUBSET_HINT,
    ROUTING_HEADERS,
)
from inference_sched.framework.parsing import (
    ParsedRequest,
    ParserRegistry,
    ResponseUsageParser,
    restore_response_model,
)
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Request, Response, SchedulingResult, Usage

__all__ = [
    "CONTROL_HEADERS",
    "HEADER_DROPPED_REASON",
    "HEADER_SERVED",
    "SYSTEM_HEADERS",
    "Decision",
    "Director",
    "ModelRewrite",
    "Rejection",
    "ResponseTracker",
    "RewriteTarget",
    "TerminationCause",
]

log = logging.getLogger(__name__)

HEADER_DROPPED_REASON: Final = "x-llm-d-request-dropped-reason"
"""Why the EPP dropped a request (llm-d ``rejected-saturated``, ``rejected-no-endpoints``)."""
HEADER_SERVED: Final = "x-gateway-destination-endpoint-served"
"""The ``ip:port`` that actually served (Envoy metadata ``envoy.lb``, response side)."""

# (llm-d name, GIE alias): the new name wins (llmd-router.md §3).
_OBJECTIVE: Final = ("x-llm-d-inference-objective", HEADER_OBJECTIVE)
_FAIRNESS: Final = ("x-llm-d-inference-fairness-id", HEADER_FAIRNESS_ID)
_REWRITE: Final = ("x-llm-d-model-name-rewrite", HEADER_MODEL_REWRITE)
_TTFT: Final = ("x-llm-d-slo-ttft-ms", HEADER_SLO_TTFT_MS)
_TPOT: Final = ("x-llm-d-slo-tpot-ms", HEADER_SLO_TPOT_MS)

CONTROL_HEADERS: Final = (*_OBJECTIVE, *_FAIRNESS, *_REWRITE, *_TTFT, *_TPOT, HEADER_SUBSET_HINT)
"""The client's control headers: read by the EPP, removed before forwarding."""
SYSTEM_HEADERS: Final = frozenset(
    (
        *CONTROL_HEADERS,
        HEADER_DESTINATION_ENDPOINT,
        HEADER_SERVED,
        HEADER_DROPPED_REASON,
        "content-length",
        "host",  # Envoy refuses to mutate it (and :-pseudo-headers) by default
    )
)
"""Headers never echoed from the request as set-header mutations (llm-d "System-owned")."""

# A client's own routing headers never reach the plugins (nor the sidecar).
_HIDDEN: Final = frozenset((*CONTROL_HEADERS, *ROUTING_HEADERS))
_NOT_ECHOED: Final = SYSTEM_HEADERS | frozenset(ROUTING_HEADERS)

TerminationCause = Literal["complete", "client-disconnect", "error", "evicted"]
"""Why a response ended (llm-d-router ``TerminationCause``)."""


# ------------------------------------------------------------------ rewrites
@attrs.frozen
class RewriteTarget:
    """One target of an InferenceModelRewrite rule (``targets[].{modelRewrite, weight}``)."""

    model: str
    weight: int | None = None


@attrs.frozen
class ModelRewrite:
    """One InferenceModelRewrite rule, as data (gie.md §5.4).

    Attributes:
        model: the incoming model the rule matches exactly; ``""`` matches any model
            (a rule with empty ``matches``), and loses to every exact rule.
        targets: the models to rewrite to; a weighted pick over those with a weight,
            uniform when none has one.
    """

    model: str
    targets: tuple[RewriteTarget, ...]

    def pick(self, rng: random.Random) -> str | None:
        """A target by weight (only weighted targets take part, llm-d-router §4.3)."""
        weighted = [t for t in self.targets if t.weight]
        if weighted:
            total = sum(int(t.weight or 0) for t in weighted)
            draw = rng.random() * total
            cumulative = 0
            for target in weighted:
                cumulative += int(target.weight or 0)
                if draw < cumulative:
                    return target.model
            return weighted[-1].model
        return rng.choice(self.targets).model if self.targets else None


# ------------------------------------------------------------------ outcomes
@attrs.frozen
class Rejection:
    """A request the EPP answers itself (Envoy ImmediateResponse / HTTP error).

    Attributes:
        status: the HTTP status.
        code: GIE's error code name (``BadRequest``, ``ServiceUnavailable``,
            ``ResourceExhausted``, ``Internal``).
        message: what went wrong (names the field for a parse error).
        headers: headers of the error response (``x-llm-d-request-dropped-reason``).
        error: the exception it came from, when there is one.
    """

    status: int
    code: str
    message: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    error: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def body(self) -> bytes:
        """GIE's error body: ``inference error: <Code> - <msg>``."""
        return f"inference error: {self.code} - {self.message}".encode("utf-8", "replace")


@attrs.define(eq=False)
class Decision:
    """Where one request goes and what to change on it.

    Attributes:
        request: the scheduler's request.
        result: the scheduling result.
        parsed: what the parser read.
        destination: ``x-gateway-destination-endpoint``: primary ``ip:port``, then
            fallbacks, comma-separated.
        set_headers: headers to set on the upstream request (lower-case keys): the
            result's ``request_headers``, ``x-request-id`` and every non-system client
            header (llm-d ``System-owned``). Neither the destination header nor
            ``content-length``: the transport adds them (the latter is ``len(body)``).
        remove_headers: client headers to remove (control headers, the routing headers
            only the EPP may set) that are not in ``set_headers``.
        body: the body to forward (model rewritten when a rule or header asked).
        is_streaming: the client asked for a streamed response.
        tracker: the response side of this request.
    """

    request: Request
    result: SchedulingResult
    parsed: ParsedRequest
    destination: str
    set_headers: dict[str, str]
    remove_headers: tuple[str, ...]
    body: bytes
    is_streaming: bool
    tracker: ResponseTracker

    @property
    def destinations(self) -> tuple[str, ...]:
        """The ``ip:port`` of the pick, then of each fallback."""
        return tuple(self.destination.split(","))

    @property
    def dynamic_metadata(self) -> dict[str, dict[str, str]]:
        """Envoy dynamic metadata: namespace ``envoy.lb``, same value as the header."""
        return {"envoy.lb": {HEADER_DESTINATION_ENDPOINT: self.destination}}


# ------------------------------------------------------------------ response
class ResponseTracker:
    """The response side of one scheduled request: feeds the parser's usage reader,
    rewrites the model name back, and calls the scheduler's response hooks.

    ``response_complete`` runs exactly once: at the end of the body, at the trailers, or
    from :meth:`finish` when the stream ends early (client gone, upstream error), so
    per-request plugin state (in-flight counters) is always released.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        request: Request,
        result: SchedulingResult,
        usage_parser: ResponseUsageParser | None,
        *,
        restore_model: tuple[str, str] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._clock: Callable[[], float] = scheduler.table.clock
        self.request = request
        self.result = result
        self._usage_parser = usage_parser
        self._restore = restore_model
        self.status_code = 200
        """The upstream status (from :meth:`on_headers`)."""
        self.headers: dict[str, str] = {}
        """The upstream response headers, keys lower-case."""
        self.is_streaming = False
        """The response is an SSE stream."""
        self.num_chunks = 0
        """Body chunks seen."""
        self.response_bytes = 0
        """Body bytes seen."""
        self.cause: TerminationCause | None = None
        """Why the response ended; ``None`` while it runs."""
        self.dynamic_metadata: dict[str, dict[str, float]] = {}
        """What the response hooks returned as Envoy dynamic metadata, merged (GIE
        attaches it to the last response chunk)."""

    @property
    def is_done(self) -> bool:
        """The final hooks ran."""
        return self.cause is not None

    @property
    def restores_model(self) -> bool:
        """The body's model was rewritten, so responses get the incoming name back
        (their length may change: drop ``content-length``)."""
        return self._restore is not None

    @property
    def usage(self) -> Usage | None:
        """The usage read so far."""
        return None if self._usage_parser is None else self._usage_parser.usage

    def on_headers(self, status: int, headers: Mapping[str, str]) -> Response:
        """The upstream response headers arrived: runs ResponseReceived hooks.

        Returns:
            the hooks' :class:`Response`: copy its ``set_headers`` onto the client's
            response.
        """
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        if self._usage_parser is not None:
            self._usage_parser.headers(self.headers)
            self.is_streaming = self._usage_parser.is_streaming
        else:
            self.is_streaming = "text/event-stream" in self.headers.get("content-type", "")
        response = self._response(False, False)
        if not self.is_done:
            self._scheduler.response_received(self.request, response, self.result)
        return response

    def on_body(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """One response body chunk: reads usage, runs ResponseStreaming hooks (and
        ResponseComplete at the end), returns the chunk to forward (model restored)."""
        if self.is_done:
            return self.restore(chunk)
        if self._usage_parser is not None:
            self._usage_parser.feed(chunk, end_of_stream=end_of_stream)
        start = self.num_chunks == 0
        self.num_chunks += 1
        self.response_bytes += len(chunk)
        if chunk or start:
            response = self._response(start, end_of_stream)
            self._scheduler.response_streaming(self.request, response, self.result)
            self._merge_metadata(response)
        if end_of_stream:
            self.finish("complete")
        return self.restore(chunk)

    def on_trailers(self) -> None:
        """Response trailers arrived (gRPC / HTTP/2): the response is complete."""
        self.finish("complete")

    def finish(self, cause: TerminationCause = "complete") -> bool:
        """Run the final ResponseComplete hooks once; later calls do nothing.

        Returns:
            whether this call ran them.
        """
        if self.is_done:
            return False
        self.cause = cause
        if self._usage_parser is not None and cause == "complete":
            self._usage_parser.feed(b"", end_of_stream=True)  # a trailing unfinished line
        response = self._response(self.num_chunks == 0, True)
        self._scheduler.response_complete(self.request, response, self.result)
        self._merge_metadata(response)
        return True

    def _merge_metadata(self, response: Response) -> None:
        for namespace, values in response.dynamic_metadata.items():
            self.dynamic_metadata.setdefault(namespace, {}).update(values)

    def _response(self, start: bool, end: bool) -> Response:
        return Response(
            self.request.request_id,
            status_code=self.status_code,
            headers=self.headers,
            is_start_of_stream=start,
            is_end_of_stream=end,
            usage=self.usage,
            time_s=self._clock(),
        )

    def restore(self, chunk: bytes) -> bytes:
        """``chunk`` with the incoming model name restored (what :meth:`on_body` returns
        for it), without reading it or running hooks."""
        if self._restore is None:
            return chunk
        return restore_response_model(chunk, *self._restore)


# ------------------------------------------------------------------ director
class Director:
    """Turns one HTTP request into a :class:`Decision` or a :class:`Rejection`.

    Args:
        scheduler: the pool's scheduler.
        parsers: the parser registry; by default the one of the scheduler's config
            (``requestHandler.parsers``).
        objectives: InferenceObjective priorities by name (unknown names: 0).
        model_rewrites: InferenceModelRewrite rules in precedence order (oldest object
            first, then rule order); an exact-model rule beats every generic one.
        base_models: base models the pool serves (another target is a LoRA adapter).
        disable_subset_filter: ignore the gateway's subset hint
            (``--disable-endpoint-subset-filter``).
        seed: seeds the weighted pick of model rewrites.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        parsers: ParserRegistry | None = None,
        objectives: Mapping[str, int] | None = None,
        model_rewrites: Sequence[ModelRewrite] = (),
        base_models: Sequence[str] = (),
        disable_subset_filter: bool = False,
        seed: int | None = None,
    ) -> None:
        self.scheduler = scheduler
        if parsers is None:
            refs = scheduler.config.parsers if scheduler.config is not None else ()
            parsers = ParserRegistry.from_plugins(refs, scheduler.plugins)
        self.parsers = parsers
        self.objectives = dict(objectives or {})
        self.model_rewrites = tuple(model_rewrites)
        self.base_models = tuple(base_models)
        self.disable_subset_filter = disable_subset_filter
        self._rng = random.Random(seed)

    def handle_request(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        subset_hint: Sequence[str] | None = None,
    ) -> Decision | Rejection:
        """Parse, rewrite, prioritise and schedule one request (llm-d-router §4.3).

        Args:
            headers: the client's request headers (any case; ``:path`` or
                ``x-original-path`` selects the parser).
            body: the whole request body.
            subset_hint: the gateway's ``ip:port`` subset (``None``: the whole pool;
                empty: no endpoint, 503).

        Returns:
            the decision, or the rejection to answer the client with. Never raises for
            a bad request or a scheduling failure.
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            return self._handle(lowered, body, subset_hint)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an HTTP answer
            return self.reject(exc)

    def run_deferred(self) -> None:
        """Run work the plugins postponed off the decision path (call once answered)."""
        self.scheduler.run_deferred()

    def _handle(
        self, headers: dict[str, str], body: bytes, subset_hint: Sequence[str] | None
    ) -> Decision:
        parser, parsed = self.parsers.parse(headers, body)
        target = _first(headers, _REWRITE) or parsed.model
        if parsed.rewrites_model and parsed.payload is not None:
            target = self._rewrite(parsed.model) or target
        sched_headers = {k: v for k, v in headers.items() if k not in _HIDDEN}
        if target:
            sched_headers[HEADER_MODEL_REWRITE] = target
        objective = _first(headers, _OBJECTIVE)
        if objective:
            sched_headers[HEADER_OBJECTIVE] = objective
        sched_headers[HEADER_FAIRNESS_ID] = _first(headers, _FAIRNESS) or DEFAULT_FAIRNESS_ID
        for pair in (_TTFT, _TPOT):
            value = _first(headers, pair)
            if value is not None:
                sched_headers[pair[1]] = value
        priority = self.objectives.get(objective, 0) if objective else 0
        hint = None if self.disable_subset_filter else subset_hint
        request = parsed.to_request(
            sched_headers, priority=priority, subset_hint=hint, base_models=self.base_models
        )
        result = self.scheduler.schedule(request)
        forward = parsed.forward_body(request.target_model)
        restore = None
        if forward is not parsed.raw_body and parsed.model:
            restore = (request.target_model, parsed.model)
        usage_parser = (
            None if parsed.skip_response_processing else parser.new_response_parser(parsed)
        )
        tracker = ResponseTracker(
            self.scheduler, request, result, usage_parser, restore_model=restore
        )
        set_headers = {
            k: v for k, v in headers.items() if k not in _NOT_ECHOED and not k.startswith(":")
        }
        dropped = result.dropped_request_headers
        for name in dropped:
            set_headers.pop(name.lower(), None)
        set_headers[HEADER_REQUEST_ID] = request.request_id
        for key, value in result.request_headers.items():
            set_headers[key.lower()] = value
        # headers is lower-cased: only the dropped names may need it.
        remove = tuple(
            sorted(k for k in headers if (k in _HIDDEN or k in dropped) and k not in set_headers)
        )
        return Decision(
            request=request,
            result=result,
            parsed=parsed,
            destination=result.destination_header,
            set_headers=set_headers,
            remove_headers=remove,
            body=forward,
            is_streaming=parsed.stream,
            tracker=tracker,
        )

    def _rewrite(self, incoming: str) -> str | None:
        rule = next((r for r in self.model_rewrites if r.model and r.model == incoming), None)
        if rule is None:
            rule = next((r for r in self.model_rewrites if not r.model), None)
        return None if rule is None else rule.pick(self._rng)

    @staticmethod
    def reject(error: BaseException) -> Rejection:
        """The HTTP answer to ``error`` (llm-d-router §4.4, ``docs/epp.md`` "Errors")."""
        if isinstance(error, (ParseError, DataError)):
            return Rejection(400, "BadRequest", str(error), error=error)
        if isinstance(error, RequestShedError):
            return Rejection(429, "ResourceExhausted", str(error), error=error)
        if isinstance(error, NoEndpointError):
            return _dropped(503, "ServiceUnavailable", error, "rejected-no-endpoints")
        if isinstance(error, AdmissionDeniedError):
            message = f"request cannot be admitted: {error.reason}"
            return Rejection(500, "Internal", message, error=error)
        if isinstance(error, SchedulingError):
            if any(isinstance(e, NoEndpointError) for e in error.profile_errors.values()):
                return _dropped(429, "ResourceExhausted", error, "rejected-saturated")
            return Rejection(429, "ResourceExhausted", str(error), error=error)
        log.error("request failed unexpectedly", exc_info=error)
        return Rejection(500, "Internal", f"unexpected error: {error!r}", error=error)


def _dropped(status: int, code: str, error: BaseException, reason: str) -> Rejection:
    return Rejection(status, code, str(error), {HEADER_DROPPED_REASON: reason}, error)


def _first(headers: Mapping[str, str], names: tuple[str, str]) -> str | None:
    """The first non-empty value of ``names`` (llm-d name, then GIE alias)."""
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None
