"""(a) An ext_proc client playing Envoy against ``serve`` over 3 sim-servers, and
(d) ``serve``'s ``/metrics`` under GIE's names."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e._extproc_client import Client, _header_map, sse_chunks
from tests.e2e._helpers import ServeProc, Sim, wait_until

COMPLETIONS = {":path": "/v1/completions", "content-type": "application/json"}
CHAT = {":path": "/v1/chat/completions", "content-type": "application/json"}


def _inflight(serve: ServeProc) -> float:
    text = serve.metrics()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("inference_pool_endpoint_inflight_requests{"):
            total += float(line.rpartition(" ")[2])
    return total


def _forward(destination: str, path: str, body: bytes, **kwargs: object) -> httpx.Response:
    primary = destination.split(",")[0]
    return httpx.post(
        f"http://{primary}{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(shared_pool: tuple[list[Sim], ServeProc]) -> Client:
    with Client(shared_pool[1].grpc_target) as c:
        yield c


def test_destination_metadata_fallbacks_and_response_hooks(
    shared_pool: tuple[list[Sim], ServeProc], client: Client
) -> None:
    sims, serve = shared_pool
    body = json.dumps({"model": "sim-model", "prompt": "hello " * 40, "max_tokens": 4}).encode()
    stream = client.stream()
    answer = stream.request({**COMPLETIONS, "x-request-id": "r-1"}, body, chunk=37)
    assert answer.immediate is None
    destinations = answer.destination.split(",")
    # --ext-proc-fallbacks, num_fallbacks 1: the pick and one fallback, two sim-servers.
    assert len(destinations) == 2
    assert len(set(destinations)) == 2
    assert set(destinations) <= {s.hostport for s in sims}
    assert answer.metadata == {"envoy.lb": {"x-gateway-destination-endpoint": answer.destination}}
    assert answer.clear_route_cache is True
    assert answer.set_headers["content-length"] == str(len(body))
    assert answer.set_headers["x-request-id"] == "r-1"
    assert answer.body == body
    # While the response is open the request holds in-flight load.
    assert wait_until(lambda: _inflight(serve) == 1.0, 5, "in-flight 1")
    upstream = _forward(answer.destination, "/v1/completions", answer.body)
    assert upstream.status_code == 200
    _, forwarded = stream.response(
        200, {"content-type": "application/json"}, [upstream.content[:20], upstream.content[20:]]
    )
    assert forwarded == upstream.content
    stream.close()
    assert wait_until(lambda: _inflight(serve) == 0.0, 5, "in-flight back to 0")


def test_streamed_response_is_echoed_chunk_by_chunk(
    shared_pool: tuple[list[Sim], ServeProc], client: Client
) -> None:
    _, serve = shared_pool
    request = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "stream me"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = json.dumps(request).encode()
    stream = client.stream()
    answer = stream.request(CHAT, body)
    upstream = _forward(answer.destination, "/v1/chat/completions", answer.body)
    assert upstream.headers["content-type"].startswith("text/event-stream")
    chunks = list(sse_chunks(upstream.content))
    assert len(chunks) >= 3
    _, forwarded = stream.response(200, {"content-type": "text/event-stream"}, chunks)
    assert forwarded == upstream.content
    assert forwarded.rstrip().endswith(b"data: [DONE]")
    stream.close()
    assert wait_until(lambda: _inflight(serve) == 0.0, 5, "in-flight back to 0")


def test_client_reset_mid_response_releases_in_flight(
    shared_pool: tuple[list[Sim], ServeProc], client: Client
) -> None:
    _, serve = shared_pool
    body = json.dumps({"model": "sim-model", "prompt": "reset", "stream": True}).encode()
    stream = client.stream()
    answer = stream.request(COMPLETIONS, body)
    assert answer.immediate is None
    stream.send(response_headers=pb.HttpHeaders(headers=_header_map({":status": "200"})))
    assert stream.recv() is not None
    stream.cancel()
    assert wait_until(lambda: _inflight(serve) == 0.0, 5, "in-flight released on reset")


@pytest.mark.parametrize(
    ("headers", "body", "status", "code", "field"),
    [
        (COMPLETIONS, b"{not json", 400, "BadRequest", ""),
        (COMPLETIONS, b'{"prompt": "no model"}', 400, "BadRequest", "model"),
        (CHAT, b'{"model": "m", "messages": 3}', 400, "BadRequest", "messages"),
        (
            COMPLETIONS,
            b'{"model": "m", "prompt": "' + b"x" * 70_000 + b'"}',
            413,
            "PayloadTooLarge",
            "limit",
        ),
    ],
)
def test_errors_are_immediate_responses_with_gie_codes(
    client: Client, headers: dict[str, str], body: bytes, status: int, code: str, field: str
) -> None:
    stream = client.stream()
    answer = stream.request(headers, body, chunk=8192)
    assert answer.immediate is not None
    assert answer.immediate.status.code == status
    text = answer.immediate.body.decode()
    assert text.startswith(f"inference error: {code} - "), text
    assert field in text
    stream.close()


def test_subset_hint_matching_nothing_is_503(client: Client) -> None:
    stream = client.stream()
    body = b'{"model": "sim-model", "prompt": "hi"}'
    answer = stream.request(COMPLETIONS, body, subset=["10.9.9.9:8000"])
    assert answer.immediate is not None
    assert answer.immediate.status.code == 503
    assert answer.immediate.body.decode().startswith("inference error: ServiceUnavailable - ")
    stream.close()


def test_subset_hint_restricts_the_pick(
    shared_pool: tuple[list[Sim], ServeProc], client: Client
) -> None:
    sims, _ = shared_pool
    # Matching is by IP (gie.md §5.1): every sim is on 127.0.0.1, so all stay candidates.
    stream = client.stream()
    answer = stream.request(
        COMPLETIONS, b'{"model": "sim-model", "prompt": "hi"}', subset=[sims[0].hostport]
    )
    assert answer.immediate is None
    assert answer.destination.split(",")[0] in {s.hostport for s in sims}
    stream.cancel()


def test_grpc_health_is_serving(shared_pool: tuple[list[Sim], ServeProc]) -> None:
    _, serve = shared_pool
    with grpc.insecure_channel(f"127.0.0.1:{serve.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


GIE_NAMES = (
    "inference_extension_scheduler_e2e_duration_seconds",
    "inference_extension_scheduler_attempts",
    "inference_extension_plugin_duration_seconds",
    "inference_extension_prefix_indexer_size",
    "inference_extension_prefix_indexer_hit_ratio",
    "inference_extension_prefix_indexer_hit_bytes",
    "inference_extension_info",
    "inference_pool_average_kv_cache_utilization",
    "inference_pool_average_queue_size",
    "inference_pool_average_running_requests",
    "inference_pool_ready_pods",
    "inference_pool_unhealthy_endpoints",
    "inference_pool_endpoint_inflight_requests",
)


def test_metrics_expose_gie_names(shared_pool: tuple[list[Sim], ServeProc]) -> None:
    _, serve = shared_pool
    # ready_pods counts endpoints with a fresh scrape: wait for the first scrapes.
    assert wait_until(lambda: serve.metric("inference_pool_ready_pods") == 3.0, 10, "3 ready pods")
    text = serve.metrics()
    samples = {
        line.partition("{")[0].partition(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    missing = [n for n in GIE_NAMES if not any(n + suffix in samples for suffix in suffixes)]
    assert missing == []
    assert serve.metric("inference_pool_unhealthy_endpoints") == 0.0
