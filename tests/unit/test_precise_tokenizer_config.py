"""llm-d's precise-prefix guide config loads unchanged: token-producer's
``udsTokenizerConfig`` and the precise producer's ``indexerConfig.tokenizersPoolConfig``
are accepted, validated with path-named errors, and the backends we do not implement
are warned about when the plugins are built (docs/plugins/token-producer.md,
docs/plugins/precise-prefix-cache-producer.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ConfigError
from inference_sched.framework.config import load_config
from inference_sched.framework.contracts import read_tokenized
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.precise_prefix import PrecisePrefixCacheProducer
from inference_sched.plugins.tokens import TokenProducer, TokenProducerParams, UdsTokenizerParams
from inference_sched.prefix.precise.params import (
    HFTokenizerConfig,
    LocalTokenizerConfig,
    PrecisePrefixParams,
    TokenizersPoolConfig,
    UdsTokenizerConfig,
    VllmRenderConfig,
    unsupported_settings,
)
from tests.helpers import make_table

pytestmark = pytest.mark.unit

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "precise-prefix-cache.yaml"
SOCKET = "/tmp/tokenizer/tokenizer-uds.socket"

# The guide's two plugin entries, exactly as it has them.
GUIDE_TOKENIZER = f"""
plugins:
  - type: tokenizer
    parameters:
      modelName: Qwen/Qwen3-32B
      udsTokenizerConfig:
        socketFile: {SOCKET}
"""
GUIDE_SCORER = f"""
plugins:
  - type: precise-prefix-cache-scorer
    parameters:
      tokenProcessorConfig:
        blockSize: 64           # must match vLLM --block-size
        hashSeed: "42"          # must match vLLM PYTHONHASHSEED env var
      indexerConfig:
        tokenizersPoolConfig:
          modelName: Qwen/Qwen3-32B
          uds:
            socketFile: {SOCKET}
        kvBlockIndexConfig:
          enableMetrics: true
      kvEventsConfig:
        topicFilter: "kv@"
        concurrency: 4
        discoverPods: false
        zmqEndpoint: "tcp://*:5557"
"""
UDS_WARNING = (
    f"plugin 'tokenizer': udsTokenizerConfig (socketFile '{SOCKET}'): the gRPC-over-UDS "
    "tokenizer sidecar is not supported here; using the estimate backend instead (its ids "
    "never match engine KV blocks: set vllm: {url: ...} for the model's real ids)"
)
FALLBACK = (
    "token ids come from the request, a token-producer, or tokenizersPoolConfig.vllm "
    "(docs/plugins/precise-prefix-cache-producer.md)"
)
POOL_UDS_WARNING = (
    f"indexerConfig.tokenizersPoolConfig.uds (socketFile '{SOCKET}'): the gRPC-over-UDS "
    "tokenizer sidecar is not supported here; " + FALLBACK
)


def _token_params(**raw: object) -> TokenProducerParams:
    return parse_params(TokenProducerParams, raw, "plugins[0].parameters")


def _precise_params(**raw: object) -> PrecisePrefixParams:
    return parse_params(PrecisePrefixParams, raw, "plugins[0].parameters")


def _messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


# ------------------------------------------------------------------ the guide
def test_the_guide_loads_unchanged_with_only_the_expected_warnings() -> None:
    config = load_config(GUIDE.read_text())
    assert config.warnings == (
        "apiVersion: 'inference.networking.x-k8s.io/v1alpha1' is deprecated; "
        "write 'llm-d.ai/v1alpha1' (the same schema)",
        "schedulingProfiles[default].plugins[1]: plugin 'tokenizer' (tokenizer, plugins[0]) "
        "is a data-producer, not a filter, scorer or picker; dropped from the profile (it "
        "runs at its own extension points)",
    )


def test_the_guides_tokenizer_entry_parses_to_a_uds_config() -> None:
    params = load_config(GUIDE_TOKENIZER).plugins[0].params
    assert isinstance(params, TokenProducerParams)
    assert params.model_name == "Qwen/Qwen3-32B"
    assert params.uds_tokenizer_config == UdsTokenizerParams(SOCKET)
    assert params.uds_enabled
    assert params.backend == "estimate"


def test_the_guides_scorer_entry_parses_every_key() -> None:
    params = load_config(GUIDE_SCORER).plugins[0].params
    assert isinstance(params, PrecisePrefixParams)
    assert params.block_size_tokens == 64
    assert params.token_processor_config.hash_seed == "42"
    assert params.indexer_config.tokenizers_pool_config == TokenizersPoolConfig(
        "Qwen/Qwen3-32B", 5, 0.8, None, UdsTokenizerConfig(SOCKET)
    )
    assert params.indexer_config.kv_block_index_config.enable_metrics is True
    assert params.kv_events_config.zmq_endpoint == "tcp://*:5557"
    assert params.kv_events_config.discover_pods is False
    assert unsupported_settings(params) == [POOL_UDS_WARNING]


def test_building_the_guide_logs_the_unsupported_backends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        scheduler = Scheduler.from_config(GUIDE.read_text(), make_table(2), seed=0)
    assert _messages(caplog, "inference_sched.plugins.tokens") == [
        "plugin 'tokenizer': type 'tokenizer' is deprecated; use 'token-producer' (same "
        "parameters)",
        UDS_WARNING,
    ]
    assert _messages(caplog, "inference_sched.plugins.precise_prefix") == [
        "plugin 'precise-prefix-cache-scorer': type 'precise-prefix-cache-scorer' is "
        "deprecated; declare a 'precise-prefix-cache-producer' and a 'prefix-cache-scorer' "
        "with prefixMatchInfoProducerName",
        "plugin 'precise-prefix-cache-scorer': " + POOL_UDS_WARNING,
    ]
    tokenizer = scheduler.plugins["tokenizer"]
    assert isinstance(tokenizer, TokenProducer)
    assert tokenizer.backend == "estimate"
    precise = scheduler.plugins["precise-prefix-cache-scorer"]
    assert isinstance(precise, PrecisePrefixCacheProducer)
    assert precise._render is None  # no vllm in the pool: no render client


def test_the_guide_schedules_with_estimated_ids() -> None:
    scheduler = Scheduler.from_config(GUIDE.read_text(), make_table(2), seed=0)
    body = {"model": "Qwen/Qwen3-32B", "prompt": "abcdefgh"}
    result = scheduler.schedule(Request.create("Qwen/Qwen3-32B", body=body))
    assert result.primary.endpoints
    tokenizer = scheduler.plugins["tokenizer"]
    assert tokenizer.stats["estimate"] == 1
    # The estimate backend packs the prompt's bytes four to a token id.
    cycle = CycleState(np.random.default_rng(0))
    table = make_table(1)
    tokenizer.prepare_request_data(cycle, Request.create("m", body=body), table, table.candidates())
    produced = read_tokenized(cycle)
    assert produced is not None
    assert produced.estimated
    assert sum(len(p) for p in produced.prompts) == 2  # the GIE bytes of "abcdefgh"


# ------------------------------------------------------------------ token-producer backends
@pytest.mark.parametrize(
    ("raw", "backend", "uds"),
    [
        ({}, "estimate", False),
        ({"modelName": "m"}, "vllm", False),
        ({"modelName": "m", "vllm": {"url": "http://r:1"}}, "vllm", False),
        ({"estimate": {}}, "estimate", False),
        ({"modelName": "m", "udsTokenizerConfig": {"socketFile": "/s"}}, "estimate", True),
        # no socketFile: the UDS backend is off (llm-d's IsEnabled), modelName selects vllm
        ({"modelName": "m", "udsTokenizerConfig": {}}, "vllm", False),
        ({"udsTokenizerConfig": {"socketFile": None}}, "estimate", False),
    ],
)
def test_backend_selection_follows_llm_d(raw: dict[str, object], backend: str, uds: bool) -> None:
    params = _token_params(**raw)
    assert params.backend == backend
    assert params.uds_enabled is uds


def test_every_uds_key_is_accepted() -> None:
    params = _token_params(
        modelName="m",
        udsTokenizerConfig={
            "socketFile": "/s",
            "useTCP": True,
            "modelTokenizerMap": {"m": "/models/m", "a": "/models/a/tokenizer.json"},
            "huggingFaceToken": "t",
            "tokenizersCacheDir": "/cache",
        },
    )
    uds = params.uds_tokenizer_config
    assert uds is not None
    assert (uds.socket_file, uds.use_tcp) == ("/s", True)
    assert uds.model_tokenizer_map == (("a", "/models/a/tokenizer.json"), ("m", "/models/m"))
    assert (uds.hugging_face_token, uds.tokenizers_cache_dir) == ("t", "/cache")


def test_a_disabled_uds_block_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        producer = TokenProducer(
            "t", _token_params(udsTokenizerConfig={}), PluginHandle(make_table(1))
        )
    assert producer.backend == "estimate"
    assert _messages(caplog, "inference_sched.plugins.tokens") == []


@pytest.mark.parametrize(
    ("parameters", "match"),
    [
        (
            "{modelName: m, udsTokenizerConfig: {socketFile: ''}}",
            r"plugins\[0\]\.parameters\.udsTokenizerConfig\.socketFile: expected a non-empty "
            r"path string, got ''",
        ),
        (
            "{modelName: m, udsTokenizerConfig: {socketFile: 5}}",
            r"udsTokenizerConfig\.socketFile: expected a non-empty path string, got 5",
        ),
        (
            "{modelName: m, udsTokenizerConfig: {socketFile: /s, useTCP: maybe}}",
            r"udsTokenizerConfig\.useTCP: expected",
        ),
        (
            "{modelName: m, udsTokenizerConfig: {socketFile: /s, modelTokenizerMap: [a]}}",
            r"udsTokenizerConfig\.modelTokenizerMap: expected a mapping of model name to path",
        ),
        (
            "{modelName: m, udsTokenizerConfig: {socketFile: /s, modelTokenizerMap: {a: ''}}}",
            r"udsTokenizerConfig\.modelTokenizerMap\.a: expected a non-empty path string",
        ),
        (
            "{modelName: m, udsTokenizerConfig: {socketFil: /s}}",
            r"udsTokenizerConfig\.socketFil: expected one of the keys .*did you mean 'socketFile'",
        ),
        (
            "{udsTokenizerConfig: {socketFile: /s}}",
            r"parameters\.modelName: expected a model name when udsTokenizerConfig is set",
        ),
        (
            "{modelName: m, vllm: {}, udsTokenizerConfig: {socketFile: /s}}",
            r"parameters\.udsTokenizerConfig: expected only one of estimate, vllm, "
            r"udsTokenizerConfig or tokenizerFile",
        ),
        (
            "{modelName: m, estimate: {}, udsTokenizerConfig: {socketFile: /s}}",
            r"parameters\.udsTokenizerConfig: expected only one of",
        ),
    ],
)
def test_bad_uds_parameters_name_the_key(parameters: str, match: str) -> None:
    config = f"plugins:\n- type: token-producer\n  parameters: {parameters}\n"
    with pytest.raises(ConfigError, match=match):
        load_config(config)


BACKEND_KEYS: dict[str, dict[str, object]] = {
    "estimate": {"estimate": {}},
    "vllm": {"vllm": {"url": "http://r:1"}},
    "uds": {"udsTokenizerConfig": {"socketFile": "/s"}},
}


@given(
    chosen=st.sets(st.sampled_from(sorted(BACKEND_KEYS))),
    socket=st.text(min_size=1).filter(str.strip),
)
def test_at_most_one_backend_and_uds_always_estimates(chosen: set[str], socket: str) -> None:
    # estimate takes no modelName (ours: modelName alone selects vllm); the others need it
    raw: dict[str, object] = {} if chosen == {"estimate"} else {"modelName": "m"}
    for name in chosen:
        raw.update(BACKEND_KEYS[name])
    if "uds" in chosen:
        raw["udsTokenizerConfig"] = {"socketFile": socket}
    if len(chosen) > 1:
        with pytest.raises(ConfigError, match="expected only one of"):
            _token_params(**raw)
        return
    params = _token_params(**raw)
    expected = {"estimate": "estimate", "uds": "estimate", "vllm": "vllm"}
    assert params.backend == (expected[next(iter(chosen))] if chosen else "vllm")
    assert params.uds_enabled is ("uds" in chosen)


# ------------------------------------------------------------------ tokenizersPoolConfig
def test_pool_defaults_are_llm_d_kv_caches() -> None:
    pool = _precise_params(indexerConfig={"tokenizersPoolConfig": {}}).indexer_config
    assert pool.tokenizers_pool_config == TokenizersPoolConfig("", 5, 0.8)
    assert _precise_params().indexer_config.tokenizers_pool_config is None
    assert VllmRenderConfig() == VllmRenderConfig("http://localhost:8000", 5.0, 30.0)
    assert HFTokenizerConfig().enabled is True


def test_every_pool_key_parses() -> None:
    params = _precise_params(
        indexerConfig={
            "tokenizersPoolConfig": {
                "modelName": "Qwen/Qwen3-32B",
                "workersCount": 8,
                "minPrefixOverlapRatio": 0.5,
                "vllm": {"url": "http://render:8000", "timeout": "2s", "mmTimeout": "500ms"},
                "uds": {"socketFile": SOCKET, "useTCP": False},
                "hf": {"enabled": True, "huggingFaceToken": "t", "tokenizersCacheDir": "/c"},
                "local": {
                    "autoDiscoveryDir": "/mnt/models",
                    "autoDiscoveryTokenizerFileName": "tokenizer.json",
                    "modelTokenizerMap": {"Qwen/Qwen3-32B": "/mnt/models/q/tokenizer.json"},
                },
            }
        }
    )
    assert params.indexer_config.tokenizers_pool_config == TokenizersPoolConfig(
        "Qwen/Qwen3-32B",
        8,
        0.5,
        VllmRenderConfig("http://render:8000", 2.0, 0.5),
        UdsTokenizerConfig(SOCKET),
        HFTokenizerConfig(True, "t", "/c"),
        LocalTokenizerConfig(
            "/mnt/models",
            "tokenizer.json",
            (("Qwen/Qwen3-32B", "/mnt/models/q/tokenizer.json"),),
        ),
    )
    assert unsupported_settings(params) == [
        POOL_UDS_WARNING,
        "indexerConfig.tokenizersPoolConfig.hf: Hugging Face Hub tokenizers are not "
        "implemented here; " + FALLBACK,
        "indexerConfig.tokenizersPoolConfig.local: local tokenizer files are not "
        "implemented here (a token-producer with tokenizerFile reads one); " + FALLBACK,
    ]


@pytest.mark.parametrize(
    "pool",
    [
        {"vllm": {"url": "http://r:1"}},
        {"modelName": "m", "workersCount": 1, "minPrefixOverlapRatio": 1.0},
        {"hf": {"enabled": False}},
        {"uds": {}},
        {"local": {}},
    ],
)
def test_what_is_implemented_or_off_is_not_warned_about(pool: dict[str, object]) -> None:
    params = _precise_params(indexerConfig={"tokenizersPoolConfig": pool})
    assert unsupported_settings(params) == []


def test_the_pools_vllm_block_builds_a_render_client() -> None:
    params = _precise_params(
        indexerConfig={
            "tokenizersPoolConfig": {
                "modelName": "served",
                "vllm": {"url": "http://render:8000/", "timeout": "2s", "mmTimeout": "3s"},
            }
        }
    )
    producer = PrecisePrefixCacheProducer("p", params, PluginHandle(make_table(1)))
    render = producer._render
    assert render is not None
    assert (render.base_url, render.model_name) == ("http://render:8000", "served")
    assert (render.config.timeout_s, render.config.mm_timeout_s) == (2.0, 3.0)


@pytest.mark.parametrize(
    ("pool", "match"),
    [
        ("{workersCount: -1}", r"tokenizersPoolConfig\.workersCount: expected int >= 0"),
        ("{minPrefixOverlapRatio: 1.5}", r"tokenizersPoolConfig\.minPrefixOverlapRatio: expected"),
        ("{modelName: 3}", r"tokenizersPoolConfig\.modelName: expected str"),
        ("{uds: {socketFile: ''}}", r"tokenizersPoolConfig\.uds\.socketFile: expected a non-empty"),
        ("{uds: {socket: /s}}", r"tokenizersPoolConfig\.uds\.socket: expected one of the keys"),
        ("{vllm: {timeout: 5}}", r"tokenizersPoolConfig\.vllm\.timeout: expected a duration"),
        ("{vllm: {url: ''}}", r"tokenizersPoolConfig\.vllm\.url: expected a non-empty"),
        ("{hf: {enabled: sure}}", r"tokenizersPoolConfig\.hf\.enabled: expected"),
        (
            "{local: {modelTokenizerMap: {m: 3}}}",
            r"tokenizersPoolConfig\.local\.modelTokenizerMap\.m: expected a non-empty path",
        ),
        ("{grpc: {}}", r"tokenizersPoolConfig\.grpc: expected one of the keys"),
        ("[]", r"indexerConfig\.tokenizersPoolConfig: expected a mapping with keys modelName"),
    ],
)
def test_bad_pool_keys_name_the_path(pool: str, match: str) -> None:
    config = (
        "plugins:\n- type: precise-prefix-cache-producer\n"
        f"  parameters: {{indexerConfig: {{tokenizersPoolConfig: {pool}}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.indexerConfig\." + ".*"):
        load_config(config)
    with pytest.raises(ConfigError, match=match):
        load_config(config)


@given(ratio=st.floats(min_value=0.0, max_value=1.0), workers=st.integers(0, 1000))
def test_any_ratio_in_unit_interval_and_workers_count_load(ratio: float, workers: int) -> None:
    pool = {"minPrefixOverlapRatio": ratio, "workersCount": workers}
    config = _precise_params(indexerConfig={"tokenizersPoolConfig": pool}).indexer_config
    assert config.tokenizers_pool_config is not None
    assert config.tokenizers_pool_config.min_prefix_overlap_ratio == ratio
    assert config.tokenizers_pool_config.workers_count == workers
