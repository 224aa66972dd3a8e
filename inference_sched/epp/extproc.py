"""Envoy ext_proc server: ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` over
grpc.aio, speaking GIE's EPP protocol (gie.md §5.1, §13; llm-d-router §4.1;
``llm-d-router: pkg/epp/handlers/{server,request,response}.go``). ``docs/epp.md`` "ext_proc
protocol" describes what goes over the wire.

One gRPC stream is one HTTP request. Request headers are stored and their answer is
deferred until the whole body arrived and the :class:`~inference_sched.epp.director.Director`
decided, because the destination header must be in it; then the header response (set /
remove headers, ``Content-Length``, ``clear_route_cache``, dynamic metadata ``envoy.lb``)
goes out followed by the body echo in chunks of at most 62,000 bytes. The response
phases run through the decision's tracker, which calls the scheduler's response hooks;
whatever ends the stream, the final hooks run once.

Body modes: ``FULL_DUPLEX_STREAMED`` (GIE's) unless the first message's
``protocol_config`` (or the server's default) says ``BUFFERED``; then the request headers
are answered at once (Envoy waits for that answer before sending the body) and the
decision's header mutations ride on the single body response.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

try:
    import grpc  # type: ignore[import-untyped]
    from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2  # type: ignore[import-untyped]
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # type: ignore[import-untyped]
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
    from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
    from google.protobuf import json_format, struct_pb2  # type: ignore[import-untyped]
    from grpc_health.v1 import health_pb2_grpc  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "inference_sched.epp needs the [epp] extra: pip install 'inference-sched[epp]'"
    ) from exc

from inference_sched.epp.director import (
    Decision,
    Director,
    Rejection,
    ResponseTracker,
    TerminationCause,
)
from inference_sched.epp.health import HealthService
from inference_sched.framework.headers import HEADER_DESTINATION_ENDPOINT, HEADER_SUBSET_HINT

__all__ = ["DEFAULT_MAX_BODY_BYTES", "MAX_CHUNK_BYTES", "SUBSET_HINT_NAMESPACE", "ExtProcServer"]

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES: Final = 62_000
"""Largest body echo chunk (GIE: Envoy's ext_proc buffer limit leaves room for framing)."""
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Default request body limit: a longer body is answered 413 as soon as it crosses it."""
SUBSET_HINT_NAMESPACE: Final = "envoy.lb.subset_hint"
_LB_NAMESPACE: Final = "envoy.lb"
_STREAMED: Final = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
_BUFFERED: Final = processing_mode_pb2.ProcessingMode.BUFFERED
_MODES: Final = {"FULL_DUPLEX_STREAMED": _STREAMED, "BUFFERED": _BUFFERED}
_OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class _RequestError(Exception):
    """A request the server answers with an ImmediateResponse before the Director."""

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection
        super().__init__(rejection.message)


class ExtProcServer:
    """The ext_proc gRPC server, with the gRPC health service.

    Args:
        director: decides each request.
        host: address to bind (loopback by default).
        port: ext_proc port (0: the OS picks one; GIE's default is 9002).
        health_port: a separate port for the health service (GIE's 9003); ``None``
            serves it on the ext_proc port.
        max_body_bytes: request body limit (413 beyond it).
        body_mode: the body mode assumed when Envoy does not send ``protocol_config``:
            ``FULL_DUPLEX_STREAMED`` or ``BUFFERED``.
    """

    def __init__(
        self,
        director: Director,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health_port: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_mode: str = "FULL_DUPLEX_STREAMED",
    ) -> None:
        if body_mode not in _MODES:
            raise ValueError(f"body_mode: expected one of {sorted(_MODES)}, got {body_mode!r}")
        if isinstance(max_body_bytes, bool) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes: expected int >= 1, got {max_body_bytes!r}")
        self.director = director
        self.host = host
        self.port = port
        self.health_port = health_port
        self.max_body_bytes = max_body_bytes
        self.body_mode = _MODES[body_mode]
        table = director.scheduler.table
        self.health = HealthService(lambda: len(table) > 0)
        self.num_active_streams = 0
        """Streams being served now."""
        self.num_streams = 0
        """Streams accepted since start."""
        self._server: Any = None
        self._health_server: Any = None
        self._rng = random.Random()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> int:
        """Listen; returns the bound ext_proc port (see also :attr:`health_port`)."""
        server = grpc.aio.server()
        pb_grpc.add_ExternalProcessorServicer_to_server(_Servicer(self), server)
        if self.health_port is None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server
        if self.health_port is not None:
            health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            self.health_port = health_server.add_insecure_port(f"{self.host}:{self.health_port}")
            await health_server.start()
            self._health_server = health_server
        self.health.is_started = True
        return self.port

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Drain: health NOT_SERVING, refuse new streams, let in-flight streams finish
        for ``grace_s`` seconds, then cancel the rest (their final hooks run)."""
        self.health.is_draining = True
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    # ------------------------------------------------------------------ streams
    async def process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """One ext_proc stream (one HTTP request); see the module docstring."""
        self.num_streams += 1
        self.num_active_streams += 1
        stream = _Stream(self)
        cause: TerminationCause = "error"
        try:
            async for message in requests:
                for response in stream.on_message(message):
                    yield response
                if stream.is_closed:
                    break
            else:
                cause = "client-disconnect"  # Envoy closed before the response ended
        except asyncio.CancelledError:
            cause = "client-disconnect"
            raise
        finally:
            self.num_active_streams -= 1
            stream.close(cause)


class _Servicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, server: ExtProcServer) -> None:
        # gRPC's method name, bound to the server's async generator itself: grpc.aio
        # streams what it yields, and a wrapping generator would cost one more resume
        # per message. (It must stay an async generator function: anything else grpc.aio
        # runs in a thread pool.)
        self.Process = server.process


class _Stream:
    """The state of one ext_proc stream (gie.md §13 ``RequestContext``)."""

    def __init__(self, server: ExtProcServer) -> None:
        self._server = server
        self._director = server.director
        self.metadata: dict[str, dict[str, Any]] = {}
        self.headers: dict[str, str] = {}
        self._body = bytearray()
        self._request_mode = server.body_mode
        self._response_mode = server.body_mode
        self._has_headers = False
        self._is_scheduled = False
        self.decision: Decision | None = None
        self.tracker: ResponseTracker | None = None
        self._response_buffer = bytearray()
        self._is_response_passthrough = False
        self.is_closed = False

    # ................................................................ dispatch
    def on_message(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        """The responses to one inbound message (possibly none yet)."""
        self._copy_metadata(message)
        if message.HasField("protocol_config"):
            config = message.protocol_config
            self._request_mode = config.request_body_mode or self._request_mode
            self._response_mode = config.response_body_mode or self._response_mode
        phase = message.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._on_request_headers(message.request_headers)
            if phase == "request_body":
                return self._on_request_body(message.request_body)
            if phase == "request_trailers":
                return self._on_request_trailers()
            if phase == "response_headers":
                return self._on_response_headers(message.response_headers)
            if phase == "response_body":
                return self._on_response_body(message.response_body)
            if phase == "response_trailers":
                return self._on_response_trailers()
        except _RequestError as exc:
            return [self._immediate(exc.rejection)]
        except Exception as exc:  # a bug answers 500, never kills the server
            log.exception("ext_proc stream failed unexpectedly")
            return [self._immediate(Rejection(500, "Internal", f"unexpected error: {exc!r}"))]
        return []  # an empty message: nothing to answer

    def close(self, cause: TerminationCause) -> None:
        """The stream ended: the final response hooks run if they have not."""
        self.is_closed = True
        if self.tracker is not None:
            self.tracker.finish(cause)

    # ................................................................ request
    def _on_request_headers(self, msg: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        if self._has_headers:
            raise _RequestError(_bad("request_headers", "sent twice"))
        self._has_headers = True
        self.headers = _headers(msg.headers)
        if msg.end_of_stream:  # no body: GIE picks a random endpoint of the pool
            return [self._bodyless()]
        if self._request_mode != _STREAMED:
            # BUFFERED: Envoy waits for this answer before sending the body.
            return [pb.ProcessingResponse(request_headers=pb.HeadersResponse())]
        return []

    def _on_request_body(self, msg: pb.HttpBody) -> list[pb.ProcessingResponse]:
        if not self._has_headers:
            raise _RequestError(_bad("request_body", "arrived before request_headers"))
        if self._is_scheduled:
            raise _RequestError(_bad("request_body", "arrived after end_of_stream"))
        if len(self._body) + len(msg.body) > self._server.max_body_bytes:
            self._body.clear()  # never hold more than the limit
            limit = self._server.max_body_bytes
            message = f"request body exceeds the limit of {limit} bytes"
            raise _RequestError(Rejection(413, "PayloadTooLarge", message))
        self._body += msg.body
        if not msg.end_of_stream:
            return []
        return self._schedule(has_trailers=False)

    def _on_request_trailers(self) -> list[pb.ProcessingResponse]:
        if self._is_scheduled:
            return [pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]
        if not self._has_headers:
            raise _RequestError(_bad("request_trailers", "arrived before request_headers"))
        return self._schedule(has_trailers=True)

    def _schedule(self, *, has_trailers: bool) -> list[pb.ProcessingResponse]:
        self._is_scheduled = True
        body = bytes(self._body)
        self._body = bytearray()
        outcome = self._director.handle_request(self.headers, body, subset_hint=self._subset_hint())
        if isinstance(outcome, Rejection):
            raise _RequestError(outcome)
        self.decision = outcome
        self.tracker = outcome.tracker
        out = self._decision_responses(outcome)
        if has_trailers:
            out.append(pb.ProcessingResponse(request_trailers=pb.TrailersResponse()))
        if outcome.parsed.skip_response_processing:
            # llm-d: forward and close the stream; Envoy makes no response-phase calls.
            self.tracker.finish("complete")
            self.is_closed = True
        self._director.run_deferred()
        return out

    def _decision_responses(self, decision: Decision) -> list[pb.ProcessingResponse]:
        set_headers = dict(decision.set_headers)
        set_headers[HEADER_DESTINATION_ENDPOINT] = decision.destination
        set_headers["content-length"] = str(len(decision.body))
        if self._request_mode != _STREAMED:
            mutation = _mutation(set_headers, decision.remove_headers)
            metadata = _struct(decision.dynamic_metadata)
            common = pb.CommonResponse(
                header_mutation=mutation,
                body_mutation=pb.BodyMutation(body=decision.body),
                clear_route_cache=True,
            )
            return [
                pb.ProcessingResponse(
                    request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
                )
            ]
        headers = pb.ProcessingResponse()
        common = headers.request_headers.response
        _mutation(set_headers, decision.remove_headers, into=common.header_mutation)
        common.clear_route_cache = True
        _struct(decision.dynamic_metadata, into=headers.dynamic_metadata)
        return [headers, *_streamed("request_body", decision.body)]

    def _bodyless(self) -> pb.ProcessingResponse:
        candidates = self._director.scheduler.table.candidates_for(self._subset_hint())
        if len(candidates) == 0:
            raise _RequestError(
                Rejection(500, "Internal", "no endpoint in the pool for a body-less request")
            )
        row = int(candidates[self._server._rng.randrange(len(candidates))])
        endpoint = self._director.scheduler.table.endpoint_at(row)
        self._is_scheduled = True
        mutation = _mutation({HEADER_DESTINATION_ENDPOINT: endpoint.hostport}, ())
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(header_mutation=mutation, clear_route_cache=True)
            ),
            dynamic_metadata=_struct(
                {_LB_NAMESPACE: {HEADER_DESTINATION_ENDPOINT: endpoint.hostport}}
            ),
        )

    def _subset_hint(self) -> list[str] | None:
        if self._director.disable_subset_filter:
            return None
        namespace = self.metadata.get(SUBSET_HINT_NAMESPACE)
        if namespace is None or HEADER_SUBSET_HINT not in namespace:
            return None
        value = namespace[HEADER_SUBSET_HINT]
        field = f"metadata {SUBSET_HINT_NAMESPACE}.{HEADER_SUBSET_HINT}"
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _RequestError(_bad(field, "expected a list of 'ip:port' strings"))
        return [v.strip() for v in value if v.strip()]

    # ............................................................... response
    def _on_response_headers(self, msg: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        headers = _headers(msg.headers)
        set_headers: dict[str, str] = {}
        remove: tuple[str, ...] = ()
        if self.tracker is not None:
            response = self.tracker.on_headers(_status(headers), headers)
            set_headers.update(response.set_headers)
            if self.tracker.restores_model and "content-length" in headers:
                # The model name is restored in the body, which may change its length.
                remove = ("content-length",)
            if msg.end_of_stream:
                self.tracker.finish("complete")
        common = pb.CommonResponse(header_mutation=_mutation(set_headers, remove))
        return [pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))]

    def _on_response_body(self, msg: pb.HttpBody) -> list[pb.ProcessingResponse]:
        tracker = self.tracker
        if self._response_mode != _STREAMED:
            body = msg.body if tracker is None else tracker.on_body(msg.body, msg.end_of_stream)
            common = pb.CommonResponse(body_mutation=pb.BodyMutation(body=body))
            return [pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))]
        if tracker is None:
            return _streamed("response_body", msg.body, msg.end_of_stream)
        out = tracker.on_body(msg.body, msg.end_of_stream)
        if tracker.is_streaming or self._is_response_passthrough:
            return self._with_metadata(_streamed("response_body", out, msg.end_of_stream))
        # Non-streamed: buffered to the end (GIE does) so the model-name restore sees
        # whole fields; bounded: past the limit the bytes flow on as they come.
        self._response_buffer += out
        if not msg.end_of_stream:
            if len(self._response_buffer) <= self._server.max_body_bytes:
                return []
            self._is_response_passthrough = True
        body = bytes(self._response_buffer)
        self._response_buffer.clear()
        return self._with_metadata(_streamed("response_body", body, msg.end_of_stream))

    def _with_metadata(self, out: list[pb.ProcessingResponse]) -> list[pb.ProcessingResponse]:
        """The response hooks' dynamic metadata rides on the last chunk (GIE)."""
        tracker = self.tracker
        if tracker is not None and tracker.is_done and tracker.dynamic_metadata and out:
            out[-1].dynamic_metadata.CopyFrom(_struct(tracker.dynamic_metadata))
        return out

    def _on_response_trailers(self) -> list[pb.ProcessingResponse]:
        out: list[pb.ProcessingResponse] = []
        if self._response_buffer:
            out += _streamed("response_body", bytes(self._response_buffer), True)
            self._response_buffer.clear()
        if self.tracker is not None:
            self.tracker.on_trailers()
        out.append(pb.ProcessingResponse(response_trailers=pb.TrailersResponse()))
        return out

    # ................................................................ helpers
    def _immediate(self, rejection: Rejection) -> pb.ProcessingResponse:
        self.is_closed = True
        headers = dict(rejection.headers)
        headers.setdefault("content-type", "text/plain; charset=utf-8")
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=rejection.status),
                headers=_mutation(headers, ()),
                body=rejection.body,
                details=f"inference error: {rejection.code}",
            )
        )

    def _copy_metadata(self, message: pb.ProcessingRequest) -> None:
        if not message.HasField("metadata_context"):
            return
        for namespace, struct in message.metadata_context.filter_metadata.items():
            self.metadata.setdefault(namespace, {}).update(json_format.MessageToDict(struct))


def _bad(field: str, problem: str) -> Rejection:
    return Rejection(400, "BadRequest", f"{field}: {problem}")


def _headers(header_map: Any) -> dict[str, str]:
    """Envoy's header map as ``{lower-case key: value}`` (``raw_value`` preferred; bytes
    that are not UTF-8 survive the round trip as surrogate escapes)."""
    out: dict[str, str] = {}
    for header in header_map.headers:
        value = (
            header.raw_value.decode("utf-8", "surrogateescape")
            if header.raw_value
            else header.value
        )
        out[header.key.lower()] = value
    return out


def _status(headers: Mapping[str, str]) -> int:
    raw = headers.get(":status") or headers.get("status") or "200"
    try:
        return int(raw)
    except ValueError:
        return 200


def _mutation(
    set_headers: Mapping[str, str], remove: Iterable[str], into: Any = None
) -> pb.HeaderMutation:
    """The header mutation, written into ``into`` (a field of a response being built)
    when given: filled in place, it costs a third of building each HeaderValueOption
    from keyword arguments and copying them (upb), on every stream."""
    mutation = pb.HeaderMutation() if into is None else into
    mutation.remove_headers.extend(remove)
    add = mutation.set_headers.add
    for key, value in set_headers.items():
        option = add(append_action=_OVERWRITE)
        option.header.key = key
        option.header.raw_value = value.encode("utf-8", "surrogateescape")
    return mutation


def _struct(value: Mapping[str, Any], into: Any = None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct() if into is None else into
    for namespace, values in value.items():
        if isinstance(values, Mapping) and all(isinstance(v, str) for v in values.values()):
            fields = struct.fields[namespace].struct_value.fields
            for key, text in values.items():  # the common case, written directly
                fields[key].string_value = text
        else:
            struct.update({namespace: values})
    return struct


def _streamed(phase: str, body: bytes, end_of_stream: bool = True) -> list[pb.ProcessingResponse]:
    """``body`` as ``StreamedBodyResponse`` messages of at most :data:`MAX_CHUNK_BYTES`;
    the last one carries ``end_of_stream``."""
    chunks = [body[i : i + MAX_CHUNK_BYTES] for i in range(0, len(body), MAX_CHUNK_BYTES)] or [b""]
    last = len(chunks) - 1
    out = []
    for i, chunk in enumerate(chunks):
        response = pb.ProcessingResponse()
        # Sub-message fields written through the path: no intermediate objects.
        streamed = getattr(response, phase).response.body_mutation.streamed_response
        streamed.SetInParent()  # present even when empty
        streamed.body = chunk
        streamed.end_of_stream = end_of_stream and i == last
        out.append(response)
    return out
