"""The public surface (docs/api.md): each public module's ``__all__``, name by name; what
``import inference_sched`` loads; the old module paths; and docs/api.md's examples, run.

Changing a list here is changing the public API: update docs/api.md and CHANGELOG.md
with it.
"""

from __future__ import annotations

import importlib
import re
import runpy
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_sched.framework import registry

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"

PROTOCOLS = [
    "Admitter",
    "AttributeExtractor",
    "DataProducer",
    "DataSource",
    "Decider",
    "DeferredWork",
    "EndpointDiscovery",
    "EndpointExtractor",
    "Extractor",
    "Filter",
    "Handle",
    "NotificationSource",
    "Parser",
    "Picker",
    "Plugin",
    "PreRequest",
    "ProfileHandler",
    "ResponseComplete",
    "ResponseReceived",
    "ResponseStreaming",
    "SaturationDetector",
    "Scorer",
    "Screener",
]

PUBLIC: dict[str, list[str]] = {
    "inference_sched": [
        "AdmissionDeniedError",
        "Admitter",
        "Candidates",
        "ConfigError",
        "CycleState",
        "DataError",
        "DataProducer",
        "DataSource",
        "Decider",
        "DeferredWork",
        "Endpoint",
        "EndpointHandle",
        "EndpointPickerConfig",
        "EndpointTable",
        "Extractor",
        "Filter",
        "HEADER_DESTINATION_ENDPOINT",
        "HEADER_FAIRNESS_ID",
        "HEADER_OBJECTIVE",
        "HEADER_REQUEST_ID",
        "HEADER_SLO_TPOT_MS",
        "HEADER_SLO_TTFT_MS",
        "Handle",
        "InferenceSchedError",
        "NoEndpointError",
        "ParameterError",
        "ParseError",
        "Picker",
        "Plugin",
        "PluginError",
        "PluginHandle",
        "PluginLoadError",
        "PluginRegistrationError",
        "PreRequest",
        "ProfileHandler",
        "ProfileRunResult",
        "Request",
        "RequestShedError",
        "Response",
        "ResponseComplete",
        "ResponseReceived",
        "ResponseStreaming",
        "Role",
        "SaturationDetector",
        "Scheduler",
        "SchedulingError",
        "SchedulingProfile",
        "SchedulingResult",
        "Scorer",
        "ScorerCategory",
        "UnknownPluginTypeError",
        "Usage",
        "load_config",
        "load_config_file",
        "prompt_bytes",
        "register",
    ],
    "inference_sched.framework": sorted(
        [
            "ConfigSource",
            "EndpointPickerConfig",
            "PluginHandle",
            "PluginStats",
            "Scheduler",
            "SchedulingProfile",
            "available",
            "get",
            "load_config",
            "load_config_file",
            "register",
            *PROTOCOLS,
        ]
    ),
    "inference_sched.framework.interfaces": PROTOCOLS,
    "inference_sched.framework.contracts": [
        "AGENT_IDENTITY",
        "DEFAULT_TOPOLOGY_PRODUCER",
        "EncoderCacheMatchInfo",
        "IN_FLIGHT_LOAD",
        "InFlightLoad",
        "LATENCY_PREDICTION_INFO",
        "LatencyPredictionInfo",
        "MM_ENCODER_CACHE_MATCH_INFO",
        "MULTICLUSTER_KV_CACHE_UTILIZATION",
        "MULTICLUSTER_QUEUE_SIZE",
        "MultiModalFeature",
        "PEER_ENDPOINT",
        "PREFILL_PROFILE",
        "PREFIX_CACHE_MATCH_INFO",
        "PrefixCacheMatchInfo",
        "SESSION_ID",
        "SessionID",
        "TOKENIZED_PROMPT",
        "TOPOLOGY_DATA_TYPE",
        "TokenizedRequest",
        "Topology",
        "UNCACHED_REQUEST_TOKENS",
        "UncachedRequestTokens",
        "cache_salt",
        "estimate_tokens",
        "first_picks",
        "latency_info_key",
        "prefix_info_key",
        "read_encoder_cache_info",
        "read_latency_info",
        "read_prefix_info",
        "read_session_id",
        "read_tokenized",
        "read_uncached_tokens",
        "request_token_ids",
        "session_id_key",
        "uncached_input_tokens",
        "uncached_tokens_key",
    ],
    "inference_sched.framework.headers": [
        "DEFAULT_FAIRNESS_ID",
        "HEADER_DATA_PARALLEL",
        "HEADER_DESTINATION_ENDPOINT",
        "HEADER_ENCODER",
        "HEADER_FAIRNESS_ID",
        "HEADER_KV_CACHE_SOURCE",
        "HEADER_MODEL_REWRITE",
        "HEADER_OBJECTIVE",
        "HEADER_PREFILLER",
        "HEADER_REQUEST_ID",
        "HEADER_SESSION_ID",
        "HEADER_SESSION_TOKEN",
        "HEADER_SLO_TPOT_MS",
        "HEADER_SLO_TTFT_MS",
        "HEADER_SUBSET_HINT",
        "ROUTING_HEADERS",
    ],
    "inference_sched.errors": [
        "AdmissionDeniedError",
        "ConfigError",
        "DataError",
        "InferenceSchedError",
        "NoEndpointError",
        "ParameterError",
        "ParseError",
        "PluginError",
        "PluginLoadError",
        "PluginRegistrationError",
        "RequestShedError",
        "SchedulingError",
        "UnknownPluginTypeError",
        "redact",
    ],
    "inference_sched.params": [
        "DEPRECATED_KEY",
        "NoParams",
        "PARSE_KEY",
        "ParamCheck",
        "at_least",
        "boolean",
        "closest",
        "describe",
        "duration_s",
        "in_range",
        "integer",
        "nested",
        "number",
        "one_of",
        "param",
        "parse_duration_s",
        "parse_params",
        "string",
        "string_list",
    ],
    "inference_sched.kernels": ["is_jit_enabled", "kernel"],
    "inference_sched.testing": [
        "CheckReport",
        "DEFAULT_PROMPT",
        "FakeCycle",
        "InjectedFailure",
        "check_plugin",
        "conformance_table",
        "make_cycle",
        "make_table",
    ],
    "inference_sched.datalayer": sorted(
        [
            "AttributePoller",
            "Discovery",
            "DiscoveryRunner",
            "EndpointSample",
            "EndpointHealth",
            "EndpointStatus",
            "FailureKind",
            "FileDiscovery",
            "FileDiscoveryPlugin",
            "MetricsExtractor",
            "MetricsSource",
            "MulticlusterFileDiscoveryPlugin",
            "PodDiscovery",
            "ScrapeReport",
            "Scraper",
            "StaticDiscovery",
            "SyncResult",
            "Topology",
            "attach_notification_sources",
            "discovery_from_config",
            "failure_kind",
            "run_discovery",
            "scrapers_for",
            "scrapers_from_config",
        ]
    ),
    "inference_sched.prefix.prompt_bytes": [
        "APIS",
        "Api",
        "GoStruct",
        "api_from_path",
        "cache_salt",
        "go_json_marshal",
        "prompt_bytes",
    ],
}

HEAVY = ("httpx", "redis", "zmq", "kubernetes", "rich", "matplotlib", "grpc", "tokenizers")
"""Optional clients: ``import inference_sched`` must load none of them."""


# ====================================================================== __all__
@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_pinned(module: str) -> None:
    names = importlib.import_module(module).__all__
    assert len(set(names)) == len(names), f"{module}.__all__ repeats a name"
    assert sorted(names) == PUBLIC[module]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if getattr(mod, name, None) is None]
    assert missing == []
    assert set(mod.__all__) <= set(dir(mod))


def test_framework_reexports_are_the_originals() -> None:
    import inference_sched.framework as framework
    from inference_sched.framework import interfaces, scheduler

    for name in PROTOCOLS:
        assert getattr(framework, name) is getattr(interfaces, name)
    assert framework.Scheduler is scheduler.Scheduler
    assert framework.ConfigSource is scheduler.ConfigSource
    assert framework.get is registry.get
    assert framework.available is registry.available
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        framework.Nope  # noqa: B018 - the attribute access is the test


def test_unavailable_is_in_the_error_tree() -> None:
    from inference_sched.errors import InferenceSchedError
    from inference_sched.state.redis import Unavailable

    assert issubclass(Unavailable, InferenceSchedError)
    assert not issubclass(Unavailable, OSError)  # the link catches OSError: kept apart
    assert str(Unavailable("redis://cache:6379")) == "redis://cache:6379"


# ====================================================================== import cost
def _run(code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_import_loads_no_plugin_family_and_no_optional_client() -> None:
    _run(
        f"""
        import sys
        import inference_sched
        inference_sched.Scheduler
        import inference_sched.framework as framework
        framework.Scheduler, framework.load_config, framework.get, framework.Scorer
        import inference_sched.datalayer
        loaded = sorted(sys.modules)
        families = [m for m in loaded if m.startswith("inference_sched.plugins")]
        heavy = [m for m in loaded if m.split(".")[0] in {HEAVY!r}]
        assert families == [], families
        assert heavy == [], heavy
        """
    )


def test_old_paths_still_import_with_a_deprecation_warning() -> None:
    _run(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from inference_sched import registry
        import inference_sched.framework.registry as new
        assert registry is new, registry
        messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        assert messages, "no DeprecationWarning"
        moved = "inference_sched.registry moved to inference_sched.framework.registry"
        assert all(m.startswith(moved) for m in messages), messages
        """
    )


# ====================================================================== docs/api.md
def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)


@pytest.fixture
def forget_example_types() -> Iterator[None]:
    yield
    registry._forget("running-headroom-scorer")  # registered by the plugin authors' example


def test_api_doc_has_an_example_per_group() -> None:
    text = API_DOC.read_text()
    groups = ["## Gateway implementers", "## Custom EPP builders", "## Plugin authors"]
    starts = [text.index(g) for g in groups]
    assert starts == sorted(starts)
    blocks = [text.index("```python", start) for start in starts]
    assert all(start < block for start, block in zip(starts, blocks, strict=True))
    assert len(_examples()) == 3


@pytest.mark.parametrize("index", [0, 1, 2], ids=["gateway", "builder", "plugin-author"])
def test_api_doc_examples_run(index: int, tmp_path: Path, forget_example_types: None) -> None:
    # Each example as a module of its own: the Numba cache of its kernels goes next to it.
    path = tmp_path / f"api_example_{index}.py"
    path.write_text(_examples()[index])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runpy.run_path(str(path), run_name="__main__")
