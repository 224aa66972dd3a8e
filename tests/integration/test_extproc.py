"""The ext_proc server on loopback, with a real grpc.aio client built on Envoy's protos
playing Envoy's part: request headers, the body in chunks, the response phases.

The pool is a static table (no backends needed: the EPP never talks to them). Every wait
is a read or a poll under a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2")
pytest.importorskip("grpc_health.v1.health_pb2")

from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]  # noqa: E402
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2  # type: ignore[import-untyped]  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # type: ignore[import-untyped]  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc  # noqa: E402
from google.protobuf import json_format, struct_pb2  # type: ignore[import-untyped]  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # noqa: E402

from inference_sched import Scheduler  # noqa: E402
from inference_sched.epp import Director, ExtProcServer  # noqa: E402
from inference_sched.state.table import EndpointTable  # noqa: E402
from inference_sched.testing import make_table  # noqa: E402
from tests.helpers import EPP_CONFIG, EPP_PD_CONFIG  # noqa: E402

DEADLINE_S = 10.0
CONFIG = EPP_CONFIG
PD_CONFIG = EPP_PD_CONFIG
CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()
_STATUS = health_pb2.HealthCheckResponse


def run(coro: Awaitable[Any]) -> Any:
    """Run one test's coroutine under a deadline."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 25.0)

    return asyncio.run(bounded())


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _table(waiting: Sequence[float] = (4, 0, 2)) -> EndpointTable:
    return make_table(3, waiting=list(waiting), kv_usage_frac=0.1)


def _director(table: EndpointTable | None = None, config: str = CONFIG, **kw: Any) -> Director:
    return Director(
        Scheduler.from_config(config, _table() if table is None else table, seed=1), **kw
    )


@asynccontextmanager
async def started(server: ExtProcServer) -> AsyncIterator[int]:
    """The server started; always stopped at the end, whatever the test did."""
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@asynccontextmanager
async def serving(director: Director, **kw: Any) -> AsyncIterator[tuple[ExtProcServer, Any]]:
    server = ExtProcServer(director, **kw)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, pb_grpc.ExternalProcessorStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


# ------------------------------------------------------------- message helpers
def _header_map(headers: Mapping[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )


def request_headers(
    headers: Mapping[str, str],
    *,
    eos: bool = False,
    subset: Any = None,
    mode: int | None = None,
) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=_header_map({":method": "POST", ":path": CHAT, **headers}), end_of_stream=eos
        )
    )
    if subset is not None:
        struct = struct_pb2.Struct()
        struct.update({"x-gateway-destination-endpoint-subset": subset})
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(struct)
    if mode is not None:
        msg.protocol_config.request_body_mode = mode
        msg.protocol_config.response_body_mode = mode
    return msg


def request_body(body: bytes, eos: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=eos))


def response_headers(headers: Mapping[str, str], eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=_header_map(headers), end_of_stream=eos)
    )


def response_body(body: bytes, eos: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos))


def set_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


async def read(call: Any) -> pb.ProcessingResponse:
    msg = await asyncio.wait_for(call.read(), DEADLINE_S)
    assert msg is not grpc.aio.EOF, "stream ended"
    return msg


async def read_body(call: Any, phase: str) -> tuple[bytes, list[int]]:
    """Streamed body chunks until end_of_stream: the bytes and each chunk's size."""
    data, sizes = b"", []
    while True:
        msg = await read(call)
        assert msg.WhichOneof("response") == phase, msg
        streamed = getattr(msg, phase).response.body_mutation.streamed_response
        data += streamed.body
        sizes.append(len(streamed.body))
        if streamed.end_of_stream:
            return data, sizes


async def send_request(
    call: Any, headers: Mapping[str, str], chunks: Sequence[bytes], **kw: Any
) -> None:
    await call.write(request_headers(headers, **kw))
    for i, chunk in enumerate(chunks):
        await call.write(request_body(chunk, i == len(chunks) - 1))


async def immediate(
    director: Director, headers: Mapping[str, str], chunks: Sequence[bytes], **kw: Any
) -> pb.ImmediateResponse:
    server_kw = {k: kw.pop(k) for k in ("max_body_bytes",) if k in kw}
    async with serving(director, **server_kw) as (_, stub):
        call = stub.Process()
        await send_request(call, headers, chunks, **kw)
        msg = await read(call)
        assert msg.WhichOneof("response") == "immediate_response", msg
        assert await asyncio.wait_for(call.read(), DEADLINE_S) is grpc.aio.EOF  # stream ended
        return msg.immediate_response


# ------------------------------------------------------------------- tests
def test_request_phase_full_duplex_and_json_response() -> None:
    async def main() -> None:
        director = _director()
        table = director.scheduler.table
        async with serving(director) as (_, stub):
            call = stub.Process()
            big = json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "x" * 130_000}]}
            ).encode()
            thirds = [big[:50_000], big[50_000:100_000], big[100_000:]]
            await send_request(
                call,
                {"x-request-id": "r1", "x-prefiller-host-port": "6.6.6.6:1"},
                thirds,
                mode=processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED,
            )
            first = await read(call)
            assert first.WhichOneof("response") == "request_headers"
            common = first.request_headers.response
            assert common.clear_route_cache is True
            assert set_headers(common.header_mutation) == {
                "x-request-id": "r1",
                "x-gateway-destination-endpoint": "10.0.0.1:8000,10.0.0.2:8000",
                "content-length": str(len(big)),
            }
            assert list(common.header_mutation.remove_headers) == ["x-prefiller-host-port"]
            assert json_format.MessageToDict(first.dynamic_metadata) == {
                "envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000,10.0.0.2:8000"}
            }
            echoed, sizes = await read_body(call, "request_body")
            assert echoed == big
            assert sizes == [62_000, 62_000, len(big) - 124_000]
            assert table.inflight_requests.tolist() == [0.0, 1.0, 0.0]

            await call.write(
                response_headers({":status": "200", "content-type": "application/json"})
            )
            msg = await read(call)
            assert msg.WhichOneof("response") == "response_headers"
            answer = b'{"model":"m","usage":{"prompt_tokens":5,"completion_tokens":3}}'
            await call.write(response_body(answer[:20], False))
            await call.write(response_body(answer[20:], True))
            data, _ = await read_body(call, "response_body")
            assert data == answer  # non-streamed: buffered, then sent once
            assert table.inflight_requests.tolist() == [0.0, 0.0, 0.0]
            await call.done_writing()
            assert await asyncio.wait_for(call.read(), DEADLINE_S) is grpc.aio.EOF

    run(main())


def test_sse_response_usage_and_hooks() -> None:
    async def main() -> None:
        director = _director()
        table = director.scheduler.table
        seen: list[Any] = []
        original = director.scheduler.response_complete

        def spy(request: Any, response: Any, result: Any) -> None:
            seen.append(response)
            original(request, response, result)

        director.scheduler.response_complete = spy  # type: ignore[method-assign]
        async with serving(director) as (_, stub):
            call = stub.Process()
            body = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
            await send_request(call, {":path": "/v1/completions"}, [body])
            await read(call)
            await read_body(call, "request_body")
            await call.write(
                response_headers({":status": "200", "content-type": "text/event-stream"})
            )
            await read(call)
            events = [
                b'data: {"choices":[{"text":"a"}]}\n\n',
                b'data: {"choices":[],"usage":{"prompt_tokens":2,',
                b'"completion_tokens":9}}\n\ndata: [DONE]\n\n',
            ]
            for i, event in enumerate(events):
                await call.write(response_body(event, i == len(events) - 1))
                data, _ = await read_body(call, "response_body") if i == 2 else (None, None)
                if i < 2:  # streamed: each chunk forwarded as it comes
                    msg = await read(call)
                    assert msg.response_body.response.body_mutation.streamed_response.body == event
            assert data == events[2]
            assert table.inflight_requests.tolist() == [0.0, 0.0, 0.0]
            assert len(seen) == 1
            assert (seen[0].usage.prompt_tokens, seen[0].usage.completion_tokens) == (2, 9)
            assert seen[0].is_end_of_stream

    run(main())


def test_cancel_mid_response_releases_inflight() -> None:
    async def main() -> None:
        director = _director()
        table = director.scheduler.table
        async with serving(director) as (server, stub):
            call = stub.Process()
            await send_request(call, {}, [BODY])
            await read(call)
            await read_body(call, "request_body")
            await call.write(
                response_headers({":status": "200", "content-type": "text/event-stream"})
            )
            await read(call)
            await call.write(response_body(b'data: {"choices":[]}\n\n', False))
            await read(call)
            assert table.inflight_requests.tolist() == [0.0, 1.0, 0.0]
            call.cancel()
            await wait_for(lambda: table.inflight_requests.tolist() == [0.0, 0.0, 0.0], "release")
            await wait_for(lambda: server.num_active_streams == 0, "stream end")

    run(main())


def test_envoy_closing_before_the_response_releases_inflight() -> None:
    async def main() -> None:
        director = _director()
        table = director.scheduler.table
        async with serving(director) as (_, stub):
            call = stub.Process()
            await send_request(call, {}, [BODY])
            await read(call)
            await read_body(call, "request_body")
            await call.done_writing()  # upstream failed: Envoy ends the stream
            assert await asyncio.wait_for(call.read(), DEADLINE_S) is grpc.aio.EOF
            await wait_for(lambda: table.inflight_requests.tolist() == [0.0] * 3, "release")

    run(main())


def test_pd_headers() -> None:
    async def main() -> None:
        table = make_table(
            4, roles=["prefill", "prefill", "decode", "decode"], waiting=[3, 0, 2, 0]
        )
        async with serving(_director(table, PD_CONFIG)) as (_, stub):
            call = stub.Process()
            await send_request(call, {"x-prefiller-host-port": "6.6.6.6:1"}, [BODY])
            msg = await read(call)
            headers = set_headers(msg.request_headers.response.header_mutation)
            assert headers["x-gateway-destination-endpoint"] == "10.0.0.3:8000"
            assert headers["x-prefiller-host-port"] == "10.0.0.1:8000"
            assert list(msg.request_headers.response.header_mutation.remove_headers) == []

    run(main())


@pytest.mark.parametrize(
    ("subset", "destination"),
    [
        pytest.param(["10.0.0.2:9999"], "10.0.0.2:8000", id="ip-match"),
        pytest.param(["10.0.0.0:1", "10.0.0.2:1"], "10.0.0.2:8000,10.0.0.0:8000", id="two"),
        pytest.param("10.0.0.0:1", "10.0.0.0:8000", id="string"),
    ],
)
def test_subset_hint(subset: Any, destination: str) -> None:
    async def main() -> None:
        async with serving(_director()) as (_, stub):
            call = stub.Process()
            await send_request(call, {}, [BODY], subset=subset)
            msg = await read(call)
            headers = set_headers(msg.request_headers.response.header_mutation)
            assert headers["x-gateway-destination-endpoint"] == destination

    run(main())


def test_empty_subset_is_503() -> None:
    reply = run(immediate(_director(), {}, [BODY], subset=[]))
    assert reply.status.code == 503
    assert reply.body == (
        b"inference error: ServiceUnavailable - no candidate endpoints: the pool (or the "
        b"gateway's subset) is empty"
    )
    assert set_headers(reply.headers)["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"


def test_malformed_subset_hint_is_400() -> None:
    reply = run(immediate(_director(), {}, [BODY], subset=[1, 2]))
    assert reply.status.code == 400
    assert reply.body == (
        b"inference error: BadRequest - metadata envoy.lb.subset_hint."
        b"x-gateway-destination-endpoint-subset: expected a list of 'ip:port' strings"
    )


def test_parse_error_is_400() -> None:
    reply = run(immediate(_director(), {}, [b'{"model": "m", "mess', b'ages": []}']))
    assert reply.status.code == 400
    assert (
        reply.body
        == b"inference error: BadRequest - messages: expected at least one message, got none"
    )


def test_sheddable_and_saturated_is_429() -> None:
    director = _director(_table((10, 10, 10)), objectives={"batch": -1})
    reply = run(immediate(director, {"x-llm-d-inference-objective": "batch"}, [BODY]))
    assert reply.status.code == 429
    assert reply.body.startswith(b"inference error: ResourceExhausted - system saturated")


def test_body_over_the_limit_is_413_at_once() -> None:
    async def main() -> None:
        director = _director()
        async with serving(director, max_body_bytes=1000) as (_, stub):
            call = stub.Process()
            await call.write(request_headers({}))
            await call.write(request_body(b"x" * 600, False))
            await call.write(request_body(b"x" * 600, False))  # no end of stream yet
            msg = await read(call)
            reply = msg.immediate_response
            assert reply.status.code == 413
            assert reply.body == (
                b"inference error: PayloadTooLarge - request body exceeds the limit of 1000 bytes"
            )
        assert director.scheduler.cycles == 0

    run(main())


def test_model_rewrite_both_ways() -> None:
    async def main() -> None:
        async with serving(_director()) as (_, stub):
            call = stub.Process()
            await send_request(call, {"x-llm-d-model-name-rewrite": "big-model"}, [BODY])
            msg = await read(call)
            forwarded, _ = await read_body(call, "request_body")
            assert json.loads(forwarded)["model"] == "big-model"
            headers = set_headers(msg.request_headers.response.header_mutation)
            assert headers["content-length"] == str(len(forwarded))
            assert list(msg.request_headers.response.header_mutation.remove_headers) == [
                "x-llm-d-model-name-rewrite"
            ]
            await call.write(
                response_headers(
                    {":status": "200", "content-type": "application/json", "content-length": "30"}
                )
            )
            msg = await read(call)
            assert list(msg.response_headers.response.header_mutation.remove_headers) == [
                "content-length"
            ]
            await call.write(response_body(b'{"id":"x","model":"big-model"}', True))
            data, _ = await read_body(call, "response_body")
            assert data == b'{"id":"x","model":"m"}'

    run(main())


def test_buffered_mode() -> None:
    async def main() -> None:
        director = _director()
        async with serving(director, body_mode="BUFFERED") as (_, stub):
            call = stub.Process()
            await call.write(request_headers({}))
            msg = await read(call)  # answered at once: Envoy waits for it
            assert msg.WhichOneof("response") == "request_headers"
            assert set_headers(msg.request_headers.response.header_mutation) == {}
            await call.write(request_body(BODY, True))
            msg = await read(call)
            common = msg.request_body.response
            assert set_headers(common.header_mutation)["x-gateway-destination-endpoint"] == (
                "10.0.0.1:8000,10.0.0.2:8000"
            )
            assert common.body_mutation.body == BODY
            assert common.clear_route_cache
            await call.write(response_headers({":status": "200"}))
            await read(call)
            await call.write(response_body(b'{"usage":{"prompt_tokens":1}}', True))
            msg = await read(call)
            assert msg.response_body.response.body_mutation.body == b'{"usage":{"prompt_tokens":1}}'
            assert director.scheduler.table.inflight_requests.tolist() == [0.0] * 3

    run(main())


def test_bodyless_request_goes_to_a_pool_endpoint() -> None:
    async def main() -> None:
        async with serving(_director()) as (_, stub):
            call = stub.Process()
            await call.write(request_headers({":method": "GET", ":path": "/v1/models"}, eos=True))
            msg = await read(call)
            headers = set_headers(msg.request_headers.response.header_mutation)
            assert headers["x-gateway-destination-endpoint"] in {
                "10.0.0.0:8000",
                "10.0.0.1:8000",
                "10.0.0.2:8000",
            }

    run(main())


def test_out_of_order_messages_are_400() -> None:
    async def main() -> None:
        async with serving(_director()) as (_, stub):
            call = stub.Process()
            await call.write(request_body(BODY, True))
            msg = await read(call)
            assert msg.immediate_response.status.code == 400
            assert msg.immediate_response.body == (
                b"inference error: BadRequest - request_body: arrived before request_headers"
            )

    run(main())


def test_health_service() -> None:
    async def main() -> None:
        table = EndpointTable(clock=lambda: 100.0)
        server = ExtProcServer(_director(table), health_port=0)
        async with started(server):
            assert server.health_port not in (None, 0, server.port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def status(service: str) -> int:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S
                    )
                    return int(reply.status)

                assert await status("liveness") == _STATUS.SERVING
                for service in ("", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
                    assert await status(service) == _STATUS.NOT_SERVING  # empty pool
                full = _table()
                for endpoint in full:
                    table.add(endpoint)
                for service in (
                    "",
                    "liveness",
                    "readiness",
                    "envoy.service.ext_proc.v3.ExternalProcessor",
                ):
                    assert await status(service) == _STATUS.SERVING
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await status("nope")
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
                watch = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"))
                first = await asyncio.wait_for(watch.read(), DEADLINE_S)
                assert first.status == _STATUS.SERVING
                server.health.is_draining = True
                second = await asyncio.wait_for(watch.read(), DEADLINE_S)
                assert second.status == _STATUS.NOT_SERVING
                assert await asyncio.wait_for(watch.read(), DEADLINE_S) is grpc.aio.EOF

    run(main())


def test_drain_finishes_inflight_and_refuses_new_streams() -> None:
    async def main() -> None:
        director = _director()
        table = director.scheduler.table
        server = ExtProcServer(director)
        async with (
            started(server) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = pb_grpc.ExternalProcessorStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            call = stub.Process()
            await send_request(call, {}, [BODY])
            await read(call)
            await read_body(call, "request_body")
            stopping = asyncio.ensure_future(server.stop(DEADLINE_S))
            await wait_for(lambda: server.health.is_draining, "drain start")
            for service in ("", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
                assert server.health.status(service) == _STATUS.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:  # the server refuses new RPCs
                await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            late = stub.Process(request_headers({}) for _ in range(1))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(late.read(), DEADLINE_S)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # the stream in flight still completes
            await call.write(response_headers({":status": "200"}))
            await read(call)
            await call.write(response_body(b"{}", True))
            await read_body(call, "response_body")
            await call.done_writing()
            await asyncio.wait_for(stopping, DEADLINE_S)
            assert table.inflight_requests.tolist() == [0.0] * 3
            assert server.num_active_streams == 0

    run(main())


def test_response_hook_metadata_rides_on_the_last_chunk() -> None:
    async def main() -> None:
        director = _director()
        original = director.scheduler.response_complete

        def hook(request: Any, response: Any, result: Any) -> None:
            response.dynamic_metadata["envoy.lb"] = {"tokens": 3.0}
            original(request, response, result)

        director.scheduler.response_complete = hook  # type: ignore[method-assign]
        async with serving(director) as (_, stub):
            call = stub.Process()
            await send_request(call, {}, [BODY])
            await read(call)
            await read_body(call, "request_body")
            await call.write(
                response_headers({":status": "200", "content-type": "text/event-stream"})
            )
            await read(call)
            await call.write(response_body(b"data: [DONE]\n\n", True))
            msg = await read(call)
            assert msg.response_body.response.body_mutation.streamed_response.end_of_stream
            assert json_format.MessageToDict(msg.dynamic_metadata) == {"envoy.lb": {"tokens": 3.0}}

    run(main())


def test_skip_response_processing_closes_the_stream() -> None:
    async def main() -> None:
        director = _director()
        async with serving(director) as (server, stub):
            call = stub.Process()
            body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
            await send_request(call, {":path": "/v1/messages/count_tokens"}, [body])
            msg = await read(call)
            headers = set_headers(msg.request_headers.response.header_mutation)
            assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000,10.0.0.2:8000"
            echoed, _ = await read_body(call, "request_body")
            assert echoed == body
            assert await asyncio.wait_for(call.read(), DEADLINE_S) is grpc.aio.EOF
            assert director.scheduler.table.inflight_requests.tolist() == [0.0] * 3
            await wait_for(lambda: server.num_active_streams == 0, "stream end")

    run(main())


def test_a_bug_answers_500_and_the_server_lives_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        director = _director()
        async with serving(director) as (_, stub):

            def broken(*args: Any, **kwargs: Any) -> Any:
                raise KeyError("bug")

            with monkeypatch.context() as patch:
                patch.setattr(director, "handle_request", broken)
                call = stub.Process()
                await send_request(call, {}, [BODY])
                msg = await read(call)
                assert msg.immediate_response.status.code == 500
                assert msg.immediate_response.body == (
                    b"inference error: Internal - unexpected error: KeyError('bug')"
                )
            call = stub.Process()
            await send_request(call, {}, [BODY])
            msg = await read(call)
            assert msg.WhichOneof("response") == "request_headers"

    run(main())
