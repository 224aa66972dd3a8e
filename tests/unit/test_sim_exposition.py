"""vLLM exposition of simulated servers: exact text, round trip through the real parser,
and the loopback HTTP server (thread and caller's-loop modes)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.datalayer.parse import extract
from inference_sched.sim import latency
from inference_sched.sim.engine import Server
from inference_sched.sim.exposition import (
    CONTENT_TYPE,
    MetricsHTTPServer,
    render_vllm,
    server_pages,
)
from inference_sched.sim.types import EngineConfig, ServerMetrics, SimRequest

TIMEOUT_S = 1.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: a proxy from the environment must not see these requests.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def sim_request(rid: int, prompt_tokens: int, output_tokens: int) -> SimRequest:
    """A request at t=0 with its own (unshared) prompt blocks."""
    base = 1_000_000 * (rid + 1)
    blocks = np.arange(base, base + -(-prompt_tokens // 16), dtype=np.int64)
    return SimRequest(rid, 0.0, prompt_tokens, output_tokens, blocks)


SMALL = ServerMetrics(
    waiting=2,
    running=3,
    kv_usage_frac=0.125,
    num_gpu_blocks=7296,
    block_size=16,
    max_loras=2,
    running_adapters=frozenset({"sql", "chat"}),
    waiting_adapters=frozenset(),
    prefix_queries_tokens=1000,
    prefix_hits_tokens=250,
    preemptions=1,
)

SMALL_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.125
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 1.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="chat,sql",waiting_lora_adapters=""} \
1.7000000005e+09
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="7296"} 1.0
"""


# ---------------------------------------------------------------- rendering
def test_render_exact_text() -> None:
    assert render_vllm(SMALL, model="m", now_s=1.7e9 + 0.5) == SMALL_PAGE


def test_render_escapes_label_values() -> None:
    metrics = SMALL._replace(running_adapters=frozenset({'a"b\\c'}))
    page = render_vllm(metrics, model='x"\ny', now_s=0.0)
    assert 'model_name="x\\"\\ny"' in page
    assert 'running_lora_adapters="a\\"b\\\\c"' in page
    sample = extract(page, "vllm", endpoint="esc", full=True)
    assert sample.running_adapters == frozenset({'a"b\\c'})


@pytest.mark.parametrize("name", ["", "a,b", " a", "b\t"])
def test_render_rejects_adapters_a_comma_list_cannot_carry(name: str) -> None:
    with pytest.raises(ValueError, match="comma list"):
        render_vllm(SMALL._replace(waiting_adapters=frozenset({name})), model="m", now_s=0.0)


def test_render_is_parsed_by_prometheus_client() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(SMALL_PAGE)}
    assert families["vllm:prefix_cache_queries"].type == "counter"
    assert families["vllm:prefix_cache_queries"].samples[0].value == 1000.0
    assert families["vllm:num_requests_waiting"].type == "gauge"


_ADAPTER = (
    st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), max_size=12)
    .map(str.strip)
    .filter(bool)
)
_METRICS = st.builds(
    ServerMetrics,
    waiting=st.integers(0, 10**7),
    running=st.integers(0, 10**7),
    kv_usage_frac=st.floats(0.0, 1.0),
    num_gpu_blocks=st.integers(0, 10**9),
    block_size=st.integers(1, 4096),
    max_loras=st.integers(0, 1024),
    running_adapters=st.frozensets(_ADAPTER, max_size=6),
    waiting_adapters=st.frozensets(_ADAPTER, max_size=6),
    prefix_queries_tokens=st.integers(0, 10**15),
    prefix_hits_tokens=st.integers(0, 10**15),
    preemptions=st.integers(0, 10**9),
)


@given(
    metrics=_METRICS,
    model=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    now_s=st.floats(0.0, 4e9),
    full=st.booleans(),
)
def test_round_trip_through_the_real_parser(
    metrics: ServerMetrics, model: str, now_s: float, full: bool
) -> None:
    page = render_vllm(metrics, model=model, now_s=now_s)
    sample = extract(page, "vllm", endpoint="round-trip", full=full)
    assert sample.missing == ()
    assert sample.waiting == metrics.waiting
    assert sample.running == metrics.running
    assert sample.kv_usage_frac == metrics.kv_usage_frac
    assert sample.block_size == metrics.block_size
    assert sample.num_gpu_blocks == metrics.num_gpu_blocks
    assert sample.max_loras == metrics.max_loras
    assert sample.running_adapters == metrics.running_adapters
    assert sample.waiting_adapters == metrics.waiting_adapters


def test_server_pages_render_a_simulated_server() -> None:
    server = Server("s", EngineConfig(max_num_seqs=1), latency.load())
    for i in range(3):
        server.submit(sim_request(i, prompt_tokens=64, output_tokens=50), 0.0)
    now = [0.0]
    page_for = server_pages([server], lambda: now[0], model="m", epoch_unix_s=1000.0)
    now[0] = 0.01
    sample = extract(page_for(0), "vllm", endpoint="s")
    assert (sample.running, sample.waiting) == (1.0, 2.0)
    assert sample.block_size == 16
    assert sample.num_gpu_blocks == 7296
    assert 'waiting_lora_adapters=""} 1000.01\n' in page_for(0)


# ---------------------------------------------------------------- HTTP: thread mode
def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_http_thread_mode_serves_each_server_its_page() -> None:
    calls: list[int] = []

    def page_for(index: int) -> str:
        calls.append(index)
        return f"page {index} call {len(calls)}\n"

    with MetricsHTTPServer(page_for, 3) as http:
        assert http.host == "127.0.0.1"
        assert len(set(http.ports)) == 3
        assert _get(http.url(2)) == (200, CONTENT_TYPE, "page 2 call 1\n")
        assert _get(http.url(0)) == (200, CONTENT_TYPE, "page 0 call 2\n")
        assert _get(http.url(2))[2] == "page 2 call 3\n"  # rendered per request
        assert http.requests == [1, 0, 2]
        endpoint = http.endpoint(1, "sim-1-rank-0", role="decode")
        assert endpoint.address == "127.0.0.1"
        assert endpoint.port == endpoint.metrics_port == http.ports[1]
        assert endpoint.labels == {"role": "decode"}
        assert http.url(1) == f"http://{endpoint.metrics_hostport}/metrics"
    with pytest.raises(RuntimeError, match="not running"):
        _ = http.ports
    http.close()  # idempotent


def test_http_errors_and_failure_injection() -> None:
    def page_for(index: int) -> str:
        if index == 1:
            raise RuntimeError("boom")
        return "ok\n"

    with MetricsHTTPServer(page_for, 3, path="/m") as http:
        base = f"http://127.0.0.1:{http.ports[0]}"
        assert _get(base + "/m")[::2] == (200, "ok\n")
        assert _get(base + "/metrics")[0] == 404
        assert _get(base + "/m?x=1")[0] == 200
        post = urllib.request.Request(base + "/m", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(post, timeout=TIMEOUT_S)
        info.value.close()
        assert info.value.code == 405
        assert _get(http.url(1))[0] == 500  # a crashing page_for (logged)

        http.set_status(0, 503)
        assert _get(http.url(0))[::2] == (503, "HTTP 503 (injected)\n")
        http.set_status(0, None)
        assert _get(http.url(0))[0] == 200

        http.stop_server(2)
        http.stop_server(2)  # idempotent
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(http.url(2), timeout=TIMEOUT_S)
        assert _get(http.url(0))[0] == 200  # the others keep serving
        with pytest.raises(IndexError):
            http.set_status(3, 500)


def test_http_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_servers"):
        MetricsHTTPServer(lambda i: "", 0)
    with pytest.raises(ValueError, match="path"):
        MetricsHTTPServer(lambda i: "", 1, path="metrics")
    http = MetricsHTTPServer(lambda i: "", 1)
    with pytest.raises(RuntimeError, match="not running"):
        http.stop_server(0)
    with http, pytest.raises(RuntimeError, match="already running"):
        http.start()


# ---------------------------------------------------------------- HTTP: caller's loop
def test_http_async_mode_keep_alive_and_stop() -> None:
    version = [0]

    async def go() -> None:
        async with (
            MetricsHTTPServer(lambda i: f"{i}:{version[0]}\n", 2) as http,
            httpx.AsyncClient(timeout=TIMEOUT_S) as client,
        ):
            first = await client.get(http.url(1))
            version[0] = 7  # the next request sees the change
            second = await client.get(http.url(1))
            head = await client.head(http.url(0))
            assert (first.text, second.text) == ("1:0\n", "1:7\n")
            assert second.headers["connection"] == "keep-alive"
            assert head.status_code == 200
            assert head.headers["content-length"] == "4"
            assert http.requests == [1, 2]

            http.stop_server(1)  # drops the open keep-alive connection too
            with pytest.raises(httpx.TransportError):
                await client.get(http.url(1))
            assert (await client.get(http.url(0))).text == "0:7\n"
        with pytest.raises(RuntimeError, match="not running"):
            _ = http.ports

    asyncio.run(asyncio.wait_for(go(), 5.0))
