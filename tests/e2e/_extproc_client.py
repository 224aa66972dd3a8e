"""A gRPC client that plays Envoy's part of the ext_proc protocol (gie.md §5.1, §13),
built on the real Envoy protos: request headers, the body in chunks, then the response
phases, each answer read with a deadline."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format, struct_pb2

STREAMED = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
TIMEOUT_S = 10.0


@attrs.define
class RequestAnswer:
    """What the EPP answered to the request phases."""

    immediate: pb.ImmediateResponse | None = None
    set_headers: dict[str, str] = attrs.field(factory=dict)
    remove_headers: list[str] = attrs.field(factory=list)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    body: bytes = b""
    clear_route_cache: bool = False

    @property
    def destination(self) -> str:
        return self.set_headers.get("x-gateway-destination-endpoint", "")


def _header_map(headers: Mapping[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )


def _mutation_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {
        h.header.key: (h.header.raw_value.decode() if h.header.raw_value else h.header.value)
        for h in mutation.set_headers
    }


class Stream:
    """One ext_proc stream (one HTTP request)."""

    def __init__(self, stub: pb_grpc.ExternalProcessorStub) -> None:
        self._out: queue.Queue[pb.ProcessingRequest | None] = queue.Queue()
        self._in: queue.Queue[pb.ProcessingResponse | BaseException | None] = queue.Queue()
        self._call = stub.Process(iter(self._out.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._first = True

    def _read(self) -> None:
        try:
            for response in self._call:
                self._in.put(response)
            self._in.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._in.put(exc)

    def send(self, **fields: Any) -> None:
        if self._first:
            fields.setdefault(
                "protocol_config",
                pb.ProtocolConfiguration(request_body_mode=STREAMED, response_body_mode=STREAMED),
            )
            self._first = False
        self._out.put(pb.ProcessingRequest(**fields))

    def recv(self, timeout_s: float = TIMEOUT_S) -> pb.ProcessingResponse | None:
        item = self._in.get(timeout=timeout_s)
        if isinstance(item, BaseException):
            raise item
        return item

    def request(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        chunk: int = 1000,
        subset: list[str] | None = None,
    ) -> RequestAnswer:
        """Send the request phases and read the EPP's answer up to the body's end."""
        metadata = None
        if subset is not None:
            value = struct_pb2.Struct()
            value.update({"x-gateway-destination-endpoint-subset": subset})
            metadata = base_pb2.Metadata(filter_metadata={"envoy.lb.subset_hint": value})
        all_headers = {":method": "POST", ":scheme": "http", ":authority": "epp", **headers}
        self.send(
            request_headers=pb.HttpHeaders(
                headers=_header_map(all_headers), end_of_stream=not body
            ),
            metadata_context=metadata,
        )
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        for i, piece in enumerate(pieces):
            self.send(request_body=pb.HttpBody(body=piece, end_of_stream=i == len(pieces) - 1))
        answer = RequestAnswer()
        while True:
            response = self.recv()
            assert response is not None, "stream ended before the request was answered"
            if response.HasField("dynamic_metadata"):
                answer.metadata.update(json_format.MessageToDict(response.dynamic_metadata))
            phase = response.WhichOneof("response")
            if phase == "immediate_response":
                answer.immediate = response.immediate_response
                return answer
            common = getattr(response, phase).response
            answer.set_headers.update(_mutation_headers(common.header_mutation))
            answer.remove_headers += list(common.header_mutation.remove_headers)
            answer.clear_route_cache |= common.clear_route_cache
            if phase == "request_headers" and not body:
                return answer
            if phase == "request_body":
                streamed = common.body_mutation.streamed_response
                answer.body += streamed.body
                if streamed.end_of_stream:
                    return answer

    def response(
        self, status: int, headers: Mapping[str, str], chunks: list[bytes]
    ) -> tuple[dict[str, str], bytes]:
        """Send the response phases; returns (header mutations, body as forwarded)."""
        self.send(
            response_headers=pb.HttpHeaders(
                headers=_header_map({":status": str(status), **headers}), end_of_stream=not chunks
            )
        )
        first = self.recv()
        assert first is not None
        assert first.WhichOneof("response") == "response_headers", first
        set_headers = _mutation_headers(first.response_headers.response.header_mutation)
        out = b""
        for i, chunk in enumerate(chunks):
            self.send(response_body=pb.HttpBody(body=chunk, end_of_stream=i == len(chunks) - 1))
        done = not chunks
        while not done:
            response = self.recv()
            assert response is not None
            assert response.WhichOneof("response") == "response_body", response
            streamed = response.response_body.response.body_mutation.streamed_response
            out += streamed.body
            done = streamed.end_of_stream
        return set_headers, out

    def close(self) -> None:
        """Half-close (Envoy ends the stream); wait for the server's end."""
        self._out.put(None)
        self._reader.join(TIMEOUT_S)

    def cancel(self) -> None:
        """Reset the stream (Envoy's client went away)."""
        self._call.cancel()
        self._out.put(None)
        self._reader.join(TIMEOUT_S)


class Client:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)

    def stream(self) -> Stream:
        return Stream(self.stub)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sse_chunks(body: bytes) -> Iterator[bytes]:
    """An SSE body split at event boundaries, as an upstream would flush it."""
    for event in body.split(b"\n\n"):
        if event:
            yield event + b"\n\n"
