"""Polled attribute sources and extractors (models, DCGM, multicluster), the attribute
poller against loopback HTTP servers, and the llm-d-router drift of
``metrics-data-source`` / ``core-metrics-extractor``."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import certifi
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.datalayer.attribute_poller import AttributePoller
from inference_sched.datalayer.engines import LEGACY_ENGINE_LABEL_KEY, parse_engine_configs
from inference_sched.datalayer.parse import EndpointSample, extract, read_series
from inference_sched.datalayer.plugins import CoreMetricsExtractor, MetricsDataSource
from inference_sched.datalayer.scraper import Scraper, scrapers_from_config
from inference_sched.datalayer.sources import (
    GPU_UTILIZATION_KEY,
    MODELS_KEY,
    MULTICLUSTER_KV_CACHE_UTILIZATION_KEY,
    MULTICLUSTER_QUEUE_SIZE_KEY,
    DcgmDataSource,
    DcgmExtractor,
    ModelsDataExtractor,
    ModelsDataSource,
    MultiClusterMetricsDataSource,
    MultiClusterMetricsExtractor,
    gpu_utilization,
    parse_models,
    pod_name_of,
)
from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.config import load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.registry import stability_of
from inference_sched.framework.types import Endpoint
from inference_sched.params import NoParams
from inference_sched.state.table import EndpointTable

TIMEOUT_S = 0.5
DEADLINE_S = 10.0

MODELS = json.dumps(
    {
        "object": "list",
        "data": [
            {"id": "meta-llama/Llama-3.1-8B", "object": "model", "owned_by": "vllm"},
            {"id": "sql-lora", "object": "model", "parent": "meta-llama/Llama-3.1-8B"},
        ],
    }
)
DCGM = (
    "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n"
    "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",pod="p1"} 35\n'
    'DCGM_FI_DEV_GPU_UTIL{gpu="1",pod="p1"} 80\n'
    'DCGM_FI_DEV_GPU_UTIL{gpu="2",pod="p2"} 99\n'
    'DCGM_FI_DEV_GPU_UTIL{gpu="3"} 12\n'
    'DCGM_FI_DEV_MEM_COPY_UTIL{gpu="0",pod="p1"} 5\n'
)
PEER = (
    'llm_d_epp_average_kv_cache_utilization{name="pool"} 0.25 1000\n'
    'llm_d_epp_average_kv_cache_utilization{name="other"} 0.75 2000\n'
    'llm_d_epp_average_queue_size{name="pool"} 3\n'
)


# ====================================================================== helpers
class Server:
    """A threaded loopback HTTP server answering ``self.body`` / ``self.status`` at any path."""

    def __init__(self, body: str, status: int = 200) -> None:
        self.body = body
        self.status = status
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                server.paths.append(self.path)
                data = server.body.encode()
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(body: str, status: int = 200) -> Server:
        started.append(Server(body, status))
        return started[-1]

    yield start
    for s in started:
        s.close()


def params(cls: Any, **kwargs: Any) -> Any:
    """``cls.Params`` by config keys (attrs aliases, which mypy does not see)."""
    return cls.Params(**kwargs)


def handle() -> PluginHandle:
    return PluginHandle(EndpointTable())


def ep(name: str = "p1", address: str = "10.0.0.1", port: int = 8000, **kw: Any) -> Endpoint:
    return Endpoint(name, address, port, **kw)


def _outcome(call: Callable[[], Any]) -> Any:
    """The result, or the DataError raised (any other exception fails the test)."""
    try:
        return call()
    except DataError as exc:
        return exc


def once(runner: Any) -> Any:
    async def go() -> Any:
        async with runner:
            return await runner.scrape_once()

    return asyncio.run(go())


# ====================================================================== stability
@pytest.mark.parametrize(
    ("cls", "stability"),
    [
        (ModelsDataSource, "beta"),
        (ModelsDataExtractor, "beta"),
        (DcgmDataSource, "alpha"),
        (DcgmExtractor, "alpha"),
        (MultiClusterMetricsDataSource, "alpha"),
        (MultiClusterMetricsExtractor, "alpha"),
        (MetricsDataSource, "stable"),
        (CoreMetricsExtractor, "stable"),
    ],
)
def test_stability(cls: type[Any], stability: str) -> None:
    assert stability_of(cls) == stability


# ====================================================================== models
def test_models_json_gives_id_and_parent_in_page_order() -> None:
    models = parse_models(MODELS.encode(), endpoint="e")
    assert [dict(m) for m in models] == [
        {"id": "meta-llama/Llama-3.1-8B", "parent": ""},
        {"id": "sql-lora", "parent": "meta-llama/Llama-3.1-8B"},
    ]
    extractor = ModelsDataExtractor("models-data-extractor", NoParams(), handle())
    assert extractor.extract_attributes(MODELS, ep()) == {MODELS_KEY: models}
    assert MODELS_KEY == "/v1/models/models-data-extractor"
    assert parse_models('{"object": "list"}', endpoint="e") == ()
    assert parse_models('{"data": null}', endpoint="e") == ()


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("nope", "e: /v1/models: line 1: not JSON: Expecting value"),
        ("[1]", "e: /v1/models: expected a JSON object, got list"),
        ('{"data": {}}', "e: /v1/models: data: expected a list, got dict"),
        ('{"data": [1]}', "e: /v1/models: data[0]: expected an object, got 1"),
        (
            '{"data": [{"id": "a"}, {}]}',
            "e: /v1/models: data[1].id: expected a non-empty string, got None",
        ),
        (
            '{"data": [{"id": ""}]}',
            "e: /v1/models: data[0].id: expected a non-empty string, got ''",
        ),
        (
            '{"data": [{"id": "a", "parent": 3}]}',
            "e: /v1/models: data[0].parent: expected a string, got 3",
        ),
        ("[" * 100 + "]" * 100, "e: /v1/models: line 1: nested more than 64 levels deep"),
    ],
    ids=["not-json", "list", "data-object", "entry-int", "no-id", "empty-id", "parent-int", "deep"],
)
def test_models_json_errors_name_the_field(page: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        parse_models(page, endpoint="e")
    assert str(info.value) == message


@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["id", "parent", "data", "x"]), inner, max_size=3)
            ),
            max_leaves=20,
        ).map(lambda doc: json.dumps({"data": doc} if not isinstance(doc, dict) else doc)),
    )
)
def test_models_parser_never_crashes(page: Any) -> None:
    outcome = _outcome(lambda: parse_models(page, endpoint="e"))
    if isinstance(outcome, DataError):
        assert str(outcome).startswith("e: /v1/models: ")
    else:
        assert all(isinstance(m["id"], str) and m["id"] for m in outcome)
        assert all(isinstance(m["parent"], str) for m in outcome)


# ====================================================================== DCGM
@pytest.mark.parametrize(
    ("pod", "expected"),
    [("p1", 0.80), ("p2", 0.99), ("p3", 0.12), ("", 0.99)],
    ids=["own-gpus-and-unlabelled", "other-pod", "only-unlabelled", "no-pod-name"],
)
def test_gpu_utilization_is_the_max_of_the_pods_gpus_over_100(pod: str, expected: float) -> None:
    assert gpu_utilization(DCGM, endpoint="e", pod=pod) == pytest.approx(expected)


def test_dcgm_extractor_uses_the_pod_of_the_endpoint() -> None:
    extractor = DcgmExtractor("dcgm-extractor", NoParams(), handle())
    assert extractor.extract_attributes(DCGM.encode(), ep("p2-rank-0")) == {
        GPU_UTILIZATION_KEY: pytest.approx(0.99)
    }
    assert GPU_UTILIZATION_KEY == "GPUUtilization/dcgm-extractor"
    assert pod_name_of(ep("p1-rank-12")) == "p1"
    assert pod_name_of(ep("static")) == "static"
    negative = 'DCGM_FI_DEV_GPU_UTIL{pod="p1"} -3\nDCGM_FI_DEV_GPU_UTIL{pod="p1"} NaN\n'
    assert (
        gpu_utilization(negative.replace("} NaN", ',gpu="1"} NaN'), endpoint="e", pod="p1") == 0.0
    )


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("other 1\n", "e: metric 'DCGM_FI_DEV_GPU_UTIL' not found in the DCGM page"),
        (
            'DCGM_FI_DEV_GPU_UTIL{pod="p2"} 5\n',
            "e: metric 'DCGM_FI_DEV_GPU_UTIL' has no finite sample for pod 'p1'",
        ),
        (
            "x 1\nDCGM_FI_DEV_GPU_UTIL{pod=p1} 5\n",
            "e:2: malformed sample 'DCGM_FI_DEV_GPU_UTIL{pod=p1}'",
        ),
        (
            "x 1\nDCGM_FI_DEV_GPU_UTIL 5\nDCGM_FI_DEV_GPU_UTIL 6\n",
            "e:3: duplicate series (first on line 2)",
        ),
    ],
    ids=["missing", "no-sample-for-pod", "malformed", "duplicate"],
)
def test_gpu_utilization_errors_name_the_line(page: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        gpu_utilization(page, endpoint="e", pod="p1")
    assert str(info.value).startswith(message)


_PROM_LINE = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda labels, value: f"DCGM_FI_DEV_GPU_UTIL{labels} {value}",
        st.sampled_from(["", '{pod="p1"}', '{gpu="0"}', "{pod=", '{pod="p1",gpu="1"}', "{}"]),
        st.one_of(st.floats(), st.text(max_size=6)),
    ),
)


@given(st.lists(_PROM_LINE, max_size=8).map("\n".join))
def test_dcgm_parser_never_crashes(page: str) -> None:
    outcome = _outcome(lambda: gpu_utilization(page, endpoint="e", pod="p1"))
    if isinstance(outcome, DataError):
        assert str(outcome).startswith("e")
    else:
        assert outcome >= 0.0


def test_read_series_gives_values_timestamps_and_lines() -> None:
    series = read_series(PEER, "llm_d_epp_average_kv_cache_utilization", endpoint="e")
    assert [(dict(s.labels), s.value, s.timestamp, s.line) for s in series] == [
        ({"name": "pool"}, 0.25, 1.0, 1),  # exposition timestamps are ms
        ({"name": "other"}, 0.75, 2.0, 2),
    ]


# ====================================================================== sources
def test_source_defaults_and_urls() -> None:
    dcgm = DcgmDataSource("d", DcgmDataSource.Params(), handle())
    assert dcgm.url_for(ep()) == "http://10.0.0.1:9400/metrics"
    assert dcgm.url_for(ep(address="fd00::1")) == "http://[fd00::1]:9400/metrics"
    assert dcgm.insecure_skip_verify is True
    assert dcgm.interval_s is None
    node = DcgmDataSource("d", params(DcgmDataSource, useNodeAddress=True), handle())
    assert node.url_for(ep()) == "http://10.0.0.1:9400/metrics"  # no node address: its own

    class OnNode:
        name, address, port, metrics_hostport, node_address = "p", "10.0.0.1", 8000, "", "10.9.9.9"

    assert node.url_for(OnNode()) == "http://10.9.9.9:9400/metrics"  # type: ignore[arg-type]

    models = ModelsDataSource("m", ModelsDataSource.Params(), handle())
    assert models.url_for(ep(metrics_port=9090)) == "http://10.0.0.1:9090/v1/models"
    assert models.page_format == "models"

    peer = MultiClusterMetricsDataSource("p", MultiClusterMetricsDataSource.Params(), handle())
    assert peer.url_for(ep(port=443)) == "https://10.0.0.1:443/metrics"
    assert peer.insecure_skip_verify is False
    assert peer.max_bytes == 8 * 1024 * 1024
    assert peer.ssl_context().verify_mode.name == "CERT_REQUIRED"

    metrics = MetricsDataSource("s", params(MetricsDataSource, port=9100, interval=2.0), handle())
    assert metrics.url_for(ep(metrics_port=9090)) == "http://10.0.0.1:9100/metrics"
    assert metrics.interval_s == 2.0


def test_tls_parameters_build_the_context() -> None:
    tls = params(
        MetricsDataSource, scheme="https", insecureSkipVerify=False, caCertPath=certifi.where()
    )
    source = MetricsDataSource("s", tls, handle())
    assert source.ssl_context().verify_mode.name == "CERT_REQUIRED"
    insecure = MetricsDataSource("s", params(MetricsDataSource, scheme="https"), handle())
    assert insecure.ssl_context().verify_mode.name == "CERT_NONE"


@pytest.mark.parametrize(
    ("plugin", "parameters", "message"),
    [
        (
            "metrics-data-source",
            "{port: 70000}",
            "parameters.port: expected an int in [0, 65535], got 70000 (int)",
        ),
        (
            "metrics-data-source",
            "{port: true}",
            "parameters.port: expected an int in [0, 65535], got True (bool)",
        ),
        (
            "metrics-data-source",
            "{interval: 5}",
            "parameters.interval: expected a duration string such as '1s', got 5 (int)",
        ),
        (
            "metrics-data-source",
            "{interval: '-1s'}",
            "parameters.interval: expected a positive duration such as '1s', got -1.0 (float)",
        ),
        (
            "metrics-data-source",
            "{caCertPath: /nonexistent/ca.pem}",
            "parameters.caCertPath: expected a readable file, got '/nonexistent/ca.pem' (str)",
        ),
        (
            "metrics-data-source",
            f"{{clientCertPath: {certifi.where()}}}",
            "parameters.clientKeyPath: expected a file path, since clientCertPath is set "
            "(mTLS needs both)",
        ),
        (
            "dcgm-data-source",
            "{useNodeAddress: true, port: 0}",
            "parameters.port: expected a port in [1, 65535], since useNodeAddress is true, "
            "got 0 (int)",
        ),
        (
            "models-data-source",
            "{path: v1/models}",
            "parameters.path: expected a URL path starting with '/'",
        ),
        (
            "multicluster-metrics-data-source",
            "{scheme: ftp}",
            "parameters.scheme: expected one of 'http', 'https'",
        ),
        (
            "multicluster-metrics-extractor",
            "{queueSizeMetric: ''}",
            "parameters.queueSizeMetric: expected a non-empty metric selector, got '' (str)",
        ),
        (
            "multicluster-metrics-extractor",
            "{kvCacheUtilizationMetric: 'a{'}",
            "parameters.kvCacheUtilizationMetric: expected a metric selector "
            "(bad metric selector 'a{'",
        ),
        ("dcgm-extractor", "{x: 1}", "parameters: unknown key 'x'"),
    ],
)
def test_parameter_errors_name_the_key(plugin: str, parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(f"plugins:\n- type: {plugin}\n  parameters: {parameters}\n")
    assert f"plugins[0].{message}" in str(info.value)


def test_unreadable_client_key_fails_at_startup(tmp_path: Any) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    tls = params(
        MetricsDataSource, scheme="https", clientCertPath=certifi.where(), clientKeyPath=str(bad)
    )
    with pytest.raises(ssl.SSLError, match="PEM"):  # the builder adds the plugin's path
        MetricsDataSource("s", tls, handle())


# ====================================================================== multicluster
def test_multicluster_extractor_takes_the_newest_sample() -> None:
    extractor = MultiClusterMetricsExtractor("m", MultiClusterMetricsExtractor.Params(), handle())
    assert extractor.extract_attributes(PEER.encode(), ep()) == {
        MULTICLUSTER_KV_CACHE_UTILIZATION_KEY: 0.75,
        MULTICLUSTER_QUEUE_SIZE_KEY: 3.0,
    }
    assert MULTICLUSTER_QUEUE_SIZE_KEY == "llm-d.ai/multicluster-queue-size"
    picky = MultiClusterMetricsExtractor(
        "m",
        params(
            MultiClusterMetricsExtractor,
            kvCacheUtilizationMetric='llm_d_epp_average_kv_cache_utilization{name="pool"}',
            queueSizeMetric="absent_metric",
        ),
        handle(),
    )
    assert picky.extract_attributes(PEER, ep()) == {MULTICLUSTER_KV_CACHE_UTILIZATION_KEY: 0.25}
    with pytest.raises(DataError, match=r"^p1: none of the pool metrics is on the page"):
        extractor.extract_attributes("x 1\n", ep())


# ====================================================================== core-metrics drift
def test_engine_label_new_key_then_legacy_then_default() -> None:
    extractor = CoreMetricsExtractor("c", CoreMetricsExtractor.Params(), handle())
    assert extractor.params.engine_label_key == "llm-d.ai/engine-type"
    both = {"llm-d.ai/engine-type": "sglang", LEGACY_ENGINE_LABEL_KEY: "triton"}
    assert extractor.engine_for(ep(labels=both)).name == "sglang"
    assert extractor.engine_for(ep(labels={LEGACY_ENGINE_LABEL_KEY: "triton"})).name == "triton"
    assert extractor.engine_for(ep(labels={"llm-d.ai/engine-type": "default"})).name == "vllm"
    assert extractor.engine_for(ep()).name == "vllm"
    triton = "nv_inference_pending_request_count 4\nnv_inference_exec_count 9\n"
    sample = extractor.extract(triton, ep(labels={"llm-d.ai/engine-type": "triton"}))
    assert (sample.waiting, sample.running, sample.kv_usage_frac) == (4.0, 9.0, None)


def test_custom_metrics_become_attributes_on_both_paths() -> None:
    (spec,) = parse_engine_configs(
        [
            {
                "name": "vllm",
                "queuedRequestsSpec": "vllm:num_requests_waiting",
                "cacheInfoSpec": "vllm:cache_config_info",
                "cacheBlockSizeLabelName": "bs",
                "cacheNumBlocksLabelName": "nb",
                "customMetrics": [
                    {"attributeKey": "Prefill", "metricSpec": 'vllm:prefill{kind="x"}'},
                    {"attributeKey": "Absent", "metricSpec": "vllm:absent"},
                ],
            }
        ]
    )
    page = (
        "vllm:num_requests_waiting 2\n"
        'vllm:cache_config_info{bs="32",nb="100"} 1\n'
        'vllm:prefill{kind="y"} 1\nvllm:prefill{kind="x"} 7.5\n'
    )
    expected = EndpointSample(
        waiting=2.0,
        block_size=32,
        num_gpu_blocks=100,
        missing=("vllm:absent",),
        attributes={"Prefill/core-metrics-extractor": 7.5},
    )
    assert extract(page, spec, endpoint="e") == expected  # fast path
    assert extract(page, spec, endpoint="e", full=True) == expected  # careful path
    assert spec.to_config()["customMetrics"][0] == {
        "attributeKey": "Prefill",
        "metricSpec": 'vllm:prefill{kind="x"}',
    }
    only_custom = extract('vllm:prefill{kind="x"} 1\n', spec, endpoint="e2")
    assert not only_custom.is_empty


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"customMetrics": "x"}, "engineConfigs[0].customMetrics: customMetrics must be a list"),
        (
            {"customMetrics": [{"metricSpec": "m"}]},
            "engineConfigs[0].customMetrics[0].attributeKey: attributeKey must be a non-empty "
            "string, got None",
        ),
        (
            {"customMetrics": [{"attributeKey": "a", "metricSpec": ""}]},
            "engineConfigs[0].customMetrics[0].metricSpec: metricSpec must not be empty",
        ),
        (
            {
                "customMetrics": [
                    {"attributeKey": "a", "metricSpec": "m"},
                    {"attributeKey": "a", "metricSpec": "n"},
                ]
            },
            "engineConfigs[0].customMetrics[1].attributeKey: attributeKey 'a' is given twice",
        ),
        (
            {"customMetrics": [{"attributeKey": "a", "metricspec": "m"}]},
            "engineConfigs[0].customMetrics[0]: unknown key 'metricspec' "
            "(did you mean 'metricSpec'?)",
        ),
        (
            {"blockSizeSpec": "a", "cacheBlockSizeSpec": "b"},
            "engineConfigs[0].cacheBlockSizeSpec: cacheBlockSizeSpec and blockSizeSpec set "
            "the same field",
        ),
    ],
    ids=["not-list", "no-key", "empty-spec", "duplicate-key", "typo", "alias-twice"],
)
def test_custom_metric_and_alias_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_engine_configs([{"name": "e", **entry}])
    assert str(info.value).startswith(message)


def test_scraper_writes_custom_metrics_into_the_attribute_store(
    serve: Callable[..., Server],
) -> None:
    server = serve('my_queue 3\nmy_gauge{a="b"} 0.5\n')
    table = EndpointTable()
    table.add(Endpoint("e", "127.0.0.1", server.port))
    core = params(
        CoreMetricsExtractor,
        defaultEngine="mine",
        engineConfigs=parse_engine_configs(
            [
                {
                    "name": "mine",
                    "queuedRequestsSpec": "my_queue",
                    "customMetrics": [{"attributeKey": "G", "metricSpec": 'my_gauge{a="b"}'}],
                }
            ]
        ),
    )
    extractor = CoreMetricsExtractor("core-metrics-extractor", core, handle())
    source = MetricsDataSource("metrics-data-source", MetricsDataSource.Params(), handle())
    report = once(Scraper(table, source, extractor, timeout_s=TIMEOUT_S))
    assert report.written == 1
    assert table.metrics_of("e")["waiting"] == 3.0
    assert table.attributes.get(table.row("e"), "G/core-metrics-extractor") == 0.5


# ====================================================================== the poller
def _config(port_models: int, port_dcgm: int) -> str:
    return f"""
plugins:
- type: queue-scorer
- type: models-data-source
- type: models-data-extractor
- type: dcgm-data-source
  parameters: {{port: {port_dcgm}, interval: 1s}}
- type: dcgm-extractor
- type: multicluster-metrics-extractor
dataLayer:
  injectDefaults: false
  sources:
  - pluginRef: models-data-source
    extractors: [{{pluginRef: models-data-extractor}}]
  - pluginRef: dcgm-data-source
    extractors: [{{pluginRef: dcgm-extractor}}, {{pluginRef: multicluster-metrics-extractor}}]
"""


def test_config_builds_pollers_that_fill_the_attributes(serve: Callable[..., Server]) -> None:
    models = serve(MODELS)
    dcgm = serve(DCGM + PEER)
    table = EndpointTable()
    table.add(Endpoint("p1-rank-0", "127.0.0.1", models.port))
    runners = scrapers_from_config(_config(models.port, dcgm.port), table, timeout_s=TIMEOUT_S)
    assert [type(r) for r in runners] == [AttributePoller, AttributePoller]
    assert runners[0].interval_s == 0.05
    assert runners[1].interval_s == 1.0  # the source's own interval
    assert [e.name for e in runners[1].extractors] == [
        "dcgm-extractor",
        "multicluster-metrics-extractor",
    ]
    for runner in runners:
        assert once(runner).written == 1
    row = table.row("p1-rank-0")
    assert table.attributes.of(row) == {
        MODELS_KEY: parse_models(MODELS, endpoint="x"),
        GPU_UTILIZATION_KEY: pytest.approx(0.80),
        MULTICLUSTER_KV_CACHE_UTILIZATION_KEY: 0.75,
        MULTICLUSTER_QUEUE_SIZE_KEY: 3.0,
    }
    assert models.paths == ["/v1/models"]
    assert dcgm.paths == ["/metrics"]


def test_source_and_extractor_formats_must_match() -> None:
    cfg = """
plugins:
- type: queue-scorer
- type: models-data-source
- type: dcgm-extractor
dataLayer:
  injectDefaults: false
  sources: [{pluginRef: models-data-source, extractors: [{pluginRef: dcgm-extractor}]}]
"""
    with pytest.raises(ConfigError) as info:
        scrapers_from_config(cfg, EndpointTable())
    assert str(info.value) == (
        "dataLayer.sources[0].extractors[0].pluginRef: extractor 'dcgm-extractor' reads "
        "prometheus pages but source 'models-data-source' serves models pages"
    )


def test_metrics_source_with_attribute_extractors_gets_both_runners() -> None:
    cfg = """
plugins:
- type: queue-scorer
- type: metrics-data-source
- type: core-metrics-extractor
- type: dcgm-extractor
- type: models-data-source
- type: models-data-extractor
dataLayer:
  sources:
  - {pluginRef: models-data-source, extractors: [{pluginRef: models-data-extractor}]}
  - pluginRef: metrics-data-source
    extractors: [{pluginRef: core-metrics-extractor}, {pluginRef: dcgm-extractor}]
"""
    runners = scrapers_from_config(cfg, EndpointTable())
    assert [type(r) for r in runners] == [Scraper, AttributePoller, AttributePoller]


class _Boom:
    type: ClassVar[str] = "boom"
    name = "boom"

    def extract_attributes(self, page: Any, endpoint: Endpoint) -> Any:
        raise RuntimeError("kaput")


def test_failures_keep_values_and_one_extractor_never_stops_another(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(DCGM)
    table = EndpointTable()
    table.add(Endpoint("p1", "127.0.0.1", 1))
    source = DcgmDataSource("dcgm", params(DcgmDataSource, port=server.port), handle())
    dcgm = DcgmExtractor("dcgm-extractor", NoParams(), handle())
    poller = AttributePoller(table, source, [_Boom(), dcgm], timeout_s=TIMEOUT_S)
    caplog.set_level(logging.DEBUG, logger="inference_sched.datalayer.attribute_poller")

    async def go() -> None:
        async with poller:
            report = await poller.scrape_once()
            assert (report.written, report.failed) == (1, ())
            assert table.attributes.get(table.row("p1"), GPU_UTILIZATION_KEY) == 0.8
            assert poller.extract_errors_total == {"boom": 1, "dcgm-extractor": 0}
            assert poller.status("p1").last_error == "boom: RuntimeError: kaput"
            server.status = 503
            for _ in range(2):
                report = await poller.scrape_once()
                assert (report.written, report.failed) == (0, ("p1",))
            status = poller.status("p1")
            assert (status.errors_total, status.consecutive_failures) == (2, 2)
            assert status.last_error.endswith("HTTP 503")
            assert table.attributes.get(table.row("p1"), GPU_UTILIZATION_KEY) == 0.8  # kept
            server.status = 200
            await poller.scrape_once()
            assert not poller.status("p1").failing

    asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if w.startswith("polling p1 from dcgm failed")]) == 1
    assert len([w for w in warnings if w.startswith("extractor boom failed on p1")]) == 1
    assert any("recovered after 2 failed attempts" in r.getMessage() for r in caplog.records)


def test_refused_and_removed_endpoints(serve: Callable[..., Server]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    server = serve(MODELS)
    table = EndpointTable()
    table.add(Endpoint("gone", "127.0.0.1", closed))
    source = ModelsDataSource("m", ModelsDataSource.Params(), handle())
    poller = AttributePoller(
        table, source, [ModelsDataExtractor("x", NoParams(), handle())], timeout_s=TIMEOUT_S
    )
    report = once(poller)
    assert report.failed == ("gone",)
    assert poller.status("gone").last_error.startswith("ConnectError")
    table.remove("gone")
    table.add(Endpoint("new", "127.0.0.1", server.port))
    assert once(poller).written == 1
    assert "gone" not in poller.statuses()


def test_run_loop_polls_until_stopped(serve: Callable[..., Server]) -> None:
    server = serve(PEER)
    table = EndpointTable()
    table.add(Endpoint("peer", "127.0.0.1", server.port))
    source = MultiClusterMetricsDataSource(
        "mc", params(MultiClusterMetricsDataSource, scheme="http"), handle()
    )
    extractor = MultiClusterMetricsExtractor("mce", MultiClusterMetricsExtractor.Params(), handle())
    poller = AttributePoller(table, source, [extractor], interval_s=0.02, timeout_s=TIMEOUT_S)

    async def go() -> None:
        task = asyncio.create_task(poller.run())
        deadline = time.monotonic() + DEADLINE_S
        while len(server.paths) < 3:  # a condition with a deadline, never a fixed sleep
            assert time.monotonic() < deadline, "the poller did not poll three times"
            await asyncio.sleep(0.01)
        poller.stop()
        await asyncio.wait_for(task, DEADLINE_S)

    asyncio.run(go())
    assert table.attributes.get(table.row("peer"), MULTICLUSTER_QUEUE_SIZE_KEY) == 3.0


def test_poller_rejects_bad_arguments() -> None:
    source = ModelsDataSource("m", ModelsDataSource.Params(), handle())
    extractor = ModelsDataExtractor("x", NoParams(), handle())
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        AttributePoller(EndpointTable(), source, [extractor], interval_s=0)
    with pytest.raises(ValueError, match="at least one extractor"):
        AttributePoller(EndpointTable(), source, [])
