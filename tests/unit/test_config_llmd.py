"""The config schema as llm-d-router loads it: apiVersions, featureGates, requestHandler,
flowControl, dataLayer, the deprecated keys, their defaults and every error llm-d-router
raises (``llm-d-router: pkg/epp/config/loader/{configloader,defaults,validation,
flowcontrol}.go``), each with its exact message."""

# ruff: noqa: E501  (the error table keeps one case per line: YAML, message)

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_sched.errors import ConfigError, UnknownPluginTypeError
from inference_sched.framework import registry
from inference_sched.framework.config import (
    API_VERSION,
    FEATURE_GATES,
    EndpointPickerConfig,
    flow,
    load_config,
    phases,
    sections,
)
from inference_sched.framework.types import CycleState, Request, SchedulingResult
from tests.helpers import hide_builtin

DATA = Path(__file__).parent.parent / "data" / "configs"
PARSERS = ("openai-parser", "anthropic-parser", "vllmhttp-parser", "passthrough-parser")
BAND = {
    "maxBytes": 1_000_000_000,
    "maxRequests": 5000,
    "fairnessPolicyRef": "global-strict-fairness-policy",
    "orderingPolicyRef": "fcfs-ordering-policy",
}
FC = "featureGates: [flowControl]\n"
Q = "plugins: [{type: queue-scorer}]\n"


def _load(text: str) -> EndpointPickerConfig:
    return load_config(textwrap.dedent(text))


class _Stub:
    def __init__(self, name: str, params: Any, handle: Any) -> None:
        self.name = name

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        return None


@pytest.fixture
def policy_stubs() -> Iterator[None]:
    """Stand-ins for llm-d-router's flow-control policies and the openai parser."""
    added = []
    for plugin_type in (*phases.FLOW_POLICIES, "edf-ordering-policy", "openai-parser"):
        try:
            registry.get(plugin_type)
        except UnknownPluginTypeError:
            registry.register(plugin_type)(type(plugin_type.title().replace("-", ""), (_Stub,), {}))
            added.append(plugin_type)
    yield
    for plugin_type in added:
        registry._forget(plugin_type)


# ====================================================================== errors
E = pytest.param
ERRORS = [
    # ---------------------------------------------------------------- featureGates (runner.go loadFeatureConfig)
    E("featureGates: [flowcontrol]\n", r"featureGates[0]: feature gate 'flowcontrol' is unknown or unregistered (did you mean 'flowControl'?); known gates: flowControl, haPopulateNonLeaderDatastore (GIE's, deprecated: dataLayer, enableLegacyMetrics)", id="gate-unknown"),
    E("featureGates: [' flowControl']\n", r"featureGates[0]: feature gate ' flowControl' is unknown or unregistered (did you mean 'flowControl'?); known gates: flowControl, haPopulateNonLeaderDatastore (GIE's, deprecated: dataLayer, enableLegacyMetrics)", id="gate-name-not-trimmed"),
    E("featureGates: [flowControl=maybe]\n", r"featureGates[0]: 'maybe' is not a valid value for the feature gate 'flowControl' (expected one of 1, t, true, 0, f, false)", id="gate-bad-value"),
    E("featureGates: ['flowControl=']\n", r"featureGates[0]: '' is not a valid value for the feature gate 'flowControl' (expected one of 1, t, true, 0, f, false)", id="gate-empty-value"),
    E("featureGates: [{flowControl: true}]\n", r"featureGates[0]: expected a feature gate name, got {'flowControl': True} (dict)", id="gate-not-str"),
    # ---------------------------------------------------------------- requestHandler (defaults.go ensureParsers, validation.go)
    E("requestHandler: [openai-parser]\n", r"requestHandler: expected a mapping with key parsers, got ['openai-parser'] (list)", id="handler-not-mapping"),
    E("requestHandler: {parser: []}\n", r"requestHandler: unknown key 'parser' (did you mean 'parsers'?); known keys: parsers", id="handler-unknown-key"),
    E("requestHandler: {parsers: openai-parser}\n", r"requestHandler.parsers: expected a list of {pluginRef}, got 'openai-parser' (str)", id="parsers-not-list"),
    E("requestHandler: {parsers: [openai-parser]}\n", r"requestHandler.parsers[0]: expected a mapping with key pluginRef, got 'openai-parser' (str)", id="parser-entry-not-mapping"),
    E("requestHandler: {parsers: [{}]}\n", r"requestHandler.parsers[0].pluginRef: required key is missing", id="parser-ref-missing"),
    E("requestHandler: {parsers: [{pluginRef: ''}]}\n", r"requestHandler.parsers[0].pluginRef: expected a non-empty str, got '' (str)", id="parser-ref-empty"),
    E(Q + "requestHandler: {parsers: [{pluginRef: queue-scorr}]}\n", r"requestHandler.parsers[0].pluginRef: parser references undefined plugin 'queue-scorr' (did you mean 'queue-scorer'?); declare it in plugins or name a parser type", id="parser-ref-undefined"),
    E(Q + "requestHandler: {parsers: [{pluginRef: queue-scorer}]}\n", r"requestHandler.parsers[0].pluginRef: the plugin 'queue-scorer' (queue-scorer, plugins[0]) is not a parser plugin", id="parser-wrong-kind"),
    E("requestHandler: {parsers: [{pluginRef: kv-cache-utilization-scorer}]}\n", r"requestHandler.parsers[0].pluginRef: the plugin 'kv-cache-utilization-scorer' (kv-cache-utilization-scorer, added by default) is not a parser plugin", id="parser-type-of-wrong-kind"),
    E("requestHandler: {parsers: [{pluginRef: fcfs-ordering-policy}]}\n", r"requestHandler.parsers[0].pluginRef: plugin 'fcfs-ordering-policy' does not implement the parser interface (it is a ordering-policy type)", id="parser-future-type-of-wrong-kind"),
    # ---------------------------------------------------------------- flowControl.saturationDetector (validation.go validateSaturationDetector)
    E(Q + "flowControl: {saturationDetector: {pluginRef: queue-scorr}}\n", r"flowControl.saturationDetector.pluginRef: saturation detector references undefined plugin 'queue-scorr' (did you mean 'queue-scorer'?); declare it in plugins", id="detector-ref-undefined"),
    E(Q + "flowControl: {saturationDetector: {pluginRef: queue-scorer}}\n", r"flowControl.saturationDetector.pluginRef: plugin 'queue-scorer' (queue-scorer, plugins[0]) is not a saturation-detector", id="detector-wrong-kind"),
    E("flowControl: {saturationDetector: utilization-detector}\n", r"flowControl.saturationDetector: expected a mapping with key pluginRef, got 'utilization-detector' (str)", id="detector-not-mapping"),
    E("flowControl: {saturationDetector: {queueDepthThreshold: 5}}\n", r"flowControl.saturationDetector: unknown key 'queueDepthThreshold': GIE v1.2's saturationDetector thresholds are now parameters of the 'utilization-detector' plugin; declare it in plugins with parameters {queueDepthThreshold: ...} and set flowControl.saturationDetector.pluginRef", id="detector-v12-threshold"),
    # ---------------------------------------------------------------- flowControl (flowcontrol.go, registry/config.go)
    E("flowControl: {maxBytes: -1Gi}\n", r"flowControl.maxBytes: global MaxBytes must be non-negative, got '-1Gi' (str)", id="global-max-bytes-negative"),
    E("flowControl: {maxRequests: -5}\n", r"flowControl.maxRequests: global MaxRequests must be non-negative, got -5 (int)", id="global-max-requests-negative"),
    E("flowControl: {defaultPriorityBand: {maxBytes: -1}}\n", r"flowControl.defaultPriorityBand.maxBytes: default priority band MaxBytes must be non-negative, got -1 (int)", id="default-band-negative"),
    E("flowControl: {defaultNegativePriorityBand: {maxRequests: -2}}\n", r"flowControl.defaultNegativePriorityBand.maxRequests: default negative priority band MaxRequests must be non-negative, got -2 (int)", id="negative-band-negative"),
    E("flowControl: {priorityBands: [{priority: 7, maxBytes: -3}]}\n", r"flowControl.priorityBands[0].maxBytes: priority band 7 MaxBytes must be non-negative, got -3 (int)", id="band-negative"),
    E("flowControl: {priorityBands: [{priority: 1}, {priority: 1}]}\n", r"flowControl.priorityBands[1].priority: duplicate priority level 1, also used by flowControl.priorityBands[0]", id="band-duplicate-priority"),
    E("flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: lifo}]}\n", r"flowControl.priorityBands[0].orderingPolicyRef: plugin 'lifo' not found; declare it in plugins", id="ordering-ref-not-found"),
    E(FC + "flowControl: {defaultPriorityBand: {fairnessPolicyRef: fair}}\n", r"flowControl.defaultPriorityBand.fairnessPolicyRef: plugin 'fair' not found; declare it in plugins", id="fairness-ref-not-found"),
    E("flowControl: {usageLimitPolicyPluginRef: mine}\n", r"flowControl.usageLimitPolicyPluginRef: plugin 'mine' not found; declare it in plugins", id="usage-limit-ref-not-found"),
    E(Q + "flowControl: {priorityBands: [{priority: 1, fairnessPolicyRef: queue-scorer}]}\n", r"flowControl.priorityBands[0].fairnessPolicyRef: plugin 'queue-scorer' (queue-scorer, plugins[0]) does not implement the fairness-policy interface", id="fairness-ref-wrong-kind"),
    E("flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: global-strict-fairness-policy}]}\n", r"flowControl.priorityBands[0].orderingPolicyRef: plugin 'global-strict-fairness-policy' does not implement the ordering-policy interface (it is a fairness-policy type)", id="ordering-ref-names-a-fairness-type"),
    E("flowControl: {usageLimitPolicyPluginRef: fcfs-ordering-policy}\n", r"flowControl.usageLimitPolicyPluginRef: plugin 'fcfs-ordering-policy' does not implement the usage-limit-policy interface (it is a ordering-policy type)", id="usage-limit-ref-names-an-ordering-type"),
    E(Q + "flowControl: {usageLimitPolicyPluginRef: queue-scorer}\n", r"flowControl.usageLimitPolicyPluginRef: plugin 'queue-scorer' (queue-scorer, plugins[0]) does not implement the usage-limit-policy interface", id="usage-limit-ref-wrong-kind"),
    E("flowControl: {noEndpointRequestTTL: soon}\n", r"flowControl.noEndpointRequestTTL: expected a non-negative duration such as '60s', got 'soon' (str)", id="no-endpoint-ttl-garbage"),
    E("flowControl: {enableEviction: 'yes'}\n", r"flowControl.enableEviction: expected a bool, got 'yes' (str)", id="eviction-not-bool"),
    E("flowControl: {defaultNegativePriorityBand: 3}\n", r"flowControl.defaultNegativePriorityBand: expected a mapping, got 3 (int)", id="negative-band-not-mapping"),
    E("flowControl: {defaultNegativePriorityBand: {maxbytes: 1}}\n", r"flowControl.defaultNegativePriorityBand: unknown key 'maxbytes' (did you mean 'maxBytes'?); known keys: maxBytes, maxRequests, fairnessPolicyRef, orderingPolicyRef", id="negative-band-unknown-key"),
    E("flowControl: {noEndpointTTL: 1s}\n", r"flowControl: unknown key 'noEndpointTTL' (did you mean 'noEndpointRequestTTL'?); known keys: saturationDetector, maxBytes, maxRequests, defaultRequestTTL, noEndpointRequestTTL, defaultPriorityBand, defaultNegativePriorityBand, priorityBands, usageLimitPolicyPluginRef, enableEviction", id="flow-unknown-key"),
    # ---------------------------------------------------------------- dataLayer (datalayer config, defaults.go ensureDataLayer)
    E("dataLayer: {injectDefaults: 'no'}\n", r"dataLayer.injectDefaults: expected a bool, got 'no' (str)", id="inject-not-bool"),
    E("dataLayer: {injectDefault: false}\n", r"dataLayer: unknown key 'injectDefault' (did you mean 'injectDefaults'?); known keys: injectDefaults, sources, discovery, peerDiscovery, crossReplicaSyncerPluginRef, crossReplicaSyncInterval", id="datalayer-unknown-key"),
    E(Q + "dataLayer: {sources: [{pluginRef: queue-scorer, extractors: []}]}\n", r"dataLayer.sources[0].pluginRef: plugin 'queue-scorer' (queue-scorer, plugins[0]) is not a data-source", id="source-not-a-data-source"),
    E("dataLayer: {sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: my-extractor}]}]}\n", r"dataLayer.sources[0].extractors[0].pluginRef: undefined plugin 'my-extractor'; declare it in plugins", id="extractor-undefined"),
    E("dataLayer: {discovery: file-discovery}\n", r"dataLayer.discovery: expected a mapping with key pluginRef, got 'file-discovery' (str)", id="discovery-not-mapping"),
    E("dataLayer: {discovery: {pluginRef: files}}\n", r"dataLayer.discovery.pluginRef: undefined plugin 'files'; declare it in plugins", id="discovery-undefined"),
    E(Q + "dataLayer: {discovery: {pluginRef: queue-scorer}}\n", r"dataLayer.discovery.pluginRef: plugin 'queue-scorer' (queue-scorer, plugins[0]) is not a endpoint-discovery", id="discovery-wrong-kind"),
    E("dataLayer: {peerDiscovery: {}}\n", r"dataLayer.peerDiscovery.pluginRef: required key is missing", id="peer-discovery-ref-missing"),
    E("dataLayer: {crossReplicaSyncerPluginRef: syncer}\n", r"dataLayer.crossReplicaSyncerPluginRef: undefined plugin 'syncer'; declare it in plugins", id="syncer-undefined"),
    E("dataLayer: {crossReplicaSyncInterval: 200}\n", r"dataLayer.crossReplicaSyncInterval: expected a non-negative duration such as '200ms', got 200 (int)", id="sync-interval-int"),
    # ---------------------------------------------------------------- deprecated keys
    E("parser: {pluginRef: my-parser}\n", r"parser.pluginRef: parser references undefined plugin 'my-parser'; declare it in plugins or name a parser type", id="deprecated-parser-undefined"),
    E(Q + "saturationDetector: {pluginRef: queue-scorr}\n", r"saturationDetector.pluginRef: saturation detector references undefined plugin 'queue-scorr' (did you mean 'queue-scorer'?); declare it in plugins", id="deprecated-detector-undefined"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_error(text: str, message: str) -> None:
    """Each row is exactly one problem, named by its path."""
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert str(info.value) == message


def test_no_parsers_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only reachable without default parsers (llm-d-router's registry check)."""
    monkeypatch.setattr(sections, "DEFAULT_PARSERS", ())
    with pytest.raises(ConfigError, match=r"^requestHandler\.parsers: no parsers configured$"):
        load_config("requestHandler: {parsers: []}\n")


def test_saturation_detector_reference_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only reachable without a default detector (an empty pluginRef means the default)."""
    monkeypatch.setattr(sections, "DETECTOR", "")
    monkeypatch.setattr(flow, "DETECTOR", "")
    with pytest.raises(ConfigError, match=r"^flowControl\.saturationDetector\.pluginRef: saturation detector plugin reference is empty$"):  # fmt: skip
        load_config("flowControl: {saturationDetector: {pluginRef: ''}}\n")


def test_configured_parser_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenEntryPoint:
        name = "my-parser"
        value = "broken:Parser"
        dist = None

        def load(self) -> Any:
            raise ImportError("boom")

    monkeypatch.setattr(registry, "_entry_points", lambda: {"my-parser": BrokenEntryPoint()})
    try:
        with pytest.raises(ConfigError) as info:
            load_config("requestHandler: {parsers: [{pluginRef: my-parser}]}\n")
    finally:
        registry._forget("my-parser")
    assert str(info.value) == (
        "requestHandler.parsers[0].pluginRef: the configured parser 'my-parser' is not loaded: "
        "plugin type 'my-parser' failed to load from an unknown distribution: ImportError: boom"
    )


def test_parser_kind_is_checked_by_protocol() -> None:
    with pytest.raises(ConfigError, match=r"^requestHandler\.parsers\[0\]\.pluginRef: the plugin 'queue-scorer' \(queue-scorer, plugins\[0\]\) is not a parser plugin$"):  # fmt: skip
        load_config(Q + "requestHandler: {parsers: [{pluginRef: queue-scorer}]}\n")


def test_policy_ref_of_a_registered_type_of_another_kind(policy_stubs: None) -> None:
    with pytest.raises(ConfigError, match=r"^flowControl\.priorityBands\[0\]\.fairnessPolicyRef: plugin 'fcfs-ordering-policy' \(fcfs-ordering-policy, added by default\) does not implement the fairness-policy interface$"):  # fmt: skip
        load_config(FC + "flowControl: {priorityBands: [{priority: 1, fairnessPolicyRef: fcfs-ordering-policy}]}\n")  # fmt: skip


def test_registered_policy_type_must_be_declared(policy_stubs: None) -> None:
    """Only llm-d-router's three default policies are created when absent."""
    with pytest.raises(ConfigError, match=r"^flowControl\.priorityBands\[0\]\.orderingPolicyRef: plugin 'edf-ordering-policy' not found \(did you mean 'fcfs-ordering-policy'\?\); declare it in plugins$"):  # fmt: skip
        load_config("flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: edf-ordering-policy}]}\n")  # fmt: skip
    cfg = load_config(
        "plugins: [{type: edf-ordering-policy}]\n"
        "flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: edf-ordering-policy}]}\n"
    )
    assert cfg.plugin("edf-ordering-policy").path == "plugins[0]"


# ====================================================================== apiVersion
def test_default_api_version_is_llm_d() -> None:
    cfg = load_config(Q)
    assert cfg.api_version == API_VERSION == "llm-d.ai/v1alpha1"
    assert load_config(None).api_version == API_VERSION
    assert not any(w.startswith("apiVersion") for w in cfg.warnings)


def test_gie_api_version_is_accepted_and_deprecated() -> None:
    cfg = load_config("apiVersion: inference.networking.x-k8s.io/v1alpha1\n" + Q)
    assert cfg.api_version == "inference.networking.x-k8s.io/v1alpha1"  # kept as given
    assert cfg.warnings[0] == (
        "apiVersion: 'inference.networking.x-k8s.io/v1alpha1' is deprecated; write "
        "'llm-d.ai/v1alpha1' (the same schema)"
    )


# ====================================================================== featureGates
def test_registered_gates_and_defaults() -> None:
    assert FEATURE_GATES == ("flowControl", "haPopulateNonLeaderDatastore")
    cfg = load_config(Q)
    assert cfg.feature_gates == ()
    assert (cfg.gate("flowControl"), cfg.gate("haPopulateNonLeaderDatastore")) == (False, True)
    assert "featureGates" not in cfg.to_dict()


@pytest.mark.parametrize(
    ("gates", "entries", "flow_control", "ha"),
    [
        ("[flowControl]", ("flowControl",), True, True),
        ("[flowControl=true]", ("flowControl",), True, True),
        ("['flowControl= TRUE ']", ("flowControl",), True, True),
        ("[flowControl=1, flowControl=f]", ("flowControl=false",), False, True),
        ("[haPopulateNonLeaderDatastore=false]", ("haPopulateNonLeaderDatastore=false",), False, False),
        ("[flowControl=false, haPopulateNonLeaderDatastore=0, flowControl=t]", ("haPopulateNonLeaderDatastore=false", "flowControl"), True, False),
    ],
)  # fmt: skip
def test_gate_spellings(gates: str, entries: tuple[str, ...], flow_control: bool, ha: bool) -> None:
    cfg = load_config(f"featureGates: {gates}\n" + Q)
    assert cfg.feature_gates == entries
    assert (cfg.gate("flowControl"), cfg.gate("haPopulateNonLeaderDatastore")) == (flow_control, ha)
    assert cfg.to_dict()["featureGates"] == list(entries)
    assert load_config(cfg.to_yaml()).feature_gates == entries


def test_flow_control_gate_off_fills_nothing() -> None:
    cfg = load_config("featureGates: [flowControl=false]\n" + Q)
    assert cfg.flow_control is None
    assert cfg.to_dict()["flowControl"] == {
        "saturationDetector": {"pluginRef": "utilization-detector"}
    }


# ====================================================================== requestHandler
def test_default_parsers_are_added_quietly() -> None:
    cfg = load_config(Q)
    assert cfg.parsers == PARSERS
    assert [p.name for p in cfg.plugins if p.type in PARSERS] == list(PARSERS)
    assert all(cfg.plugin(name).is_auto for name in PARSERS)
    assert not any("parser" in w for w in cfg.warnings)
    assert cfg.to_dict()["requestHandler"] == {"parsers": [{"pluginRef": p} for p in PARSERS]}


def test_unavailable_default_parser_is_skipped_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hide_builtin(monkeypatch, "openai-parser")  # as an installation without it
    monkeypatch.setattr(phases, "_logged", set())
    caplog.set_level(logging.DEBUG, logger=phases.__name__)
    for _ in range(3):
        cfg = load_config(Q)
        assert cfg.parsers == PARSERS
        assert not any("parser" in w for w in cfg.warnings)
    assert [p.type for p in cfg.plugins if p.type in PARSERS] == list(PARSERS[1:])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    openai = [m for m in messages if "default 'openai-parser' is not available" in m]
    assert openai == [
        "requestHandler.parsers: default 'openai-parser' is not available in this version; "
        "request bodies are parsed by the embedder"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_empty_parser_list_is_the_default() -> None:
    for text in (
        "requestHandler: {}\n",
        "requestHandler: {parsers: []}\n",
        "requestHandler: null\n",
    ):
        assert load_config(text).parsers == PARSERS


def test_parser_order_is_kept_and_refs_name_types(policy_stubs: None) -> None:
    cfg = load_config(
        "requestHandler: {parsers: [{pluginRef: passthrough-parser}, {pluginRef: openai-parser}]}\n"
    )
    assert cfg.parsers == ("passthrough-parser", "openai-parser")
    spec = cfg.plugin("openai-parser")  # the reference names the type: instantiated
    assert (spec.type, spec.is_auto) == ("openai-parser", True)


def test_deprecated_parser_is_the_parser_list() -> None:
    cfg = load_config("parser: {pluginRef: vllmhttp-parser}\n" + Q)
    assert cfg.parsers == ("vllmhttp-parser",)
    assert "parser" not in cfg.to_dict()
    assert cfg.warnings[0] == (
        "parser: deprecated; write requestHandler.parsers: [{pluginRef: vllmhttp-parser}] "
        "(it is used as that list)"
    )
    again = load_config(cfg.to_yaml())
    assert again.parsers == cfg.parsers
    assert not any(w.startswith("parser") for w in again.warnings)


def test_parser_list_wins_over_deprecated_parser() -> None:
    cfg = load_config(
        "parser: {pluginRef: openai-parser}\nrequestHandler: {parsers: [{pluginRef: anthropic-parser}]}\n"
    )
    assert cfg.parsers == ("anthropic-parser",)
    assert (
        "parser: deprecated and not used: requestHandler.parsers is set (the new field wins); "
        "remove parser" in cfg.warnings
    )


# ====================================================================== saturation detector
def test_detector_lives_in_flow_control() -> None:
    cfg = load_config(
        "plugins: [{type: concurrency-detector, name: det}, {type: queue-scorer}]\n"
        "flowControl: {saturationDetector: {pluginRef: det}}\n"
    )
    assert cfg.saturation_detector == {"pluginRef": "det"}
    assert cfg.flow_control is None  # the gate is off and nothing else is set
    assert cfg.to_dict()["flowControl"] == {"saturationDetector": {"pluginRef": "det"}}
    assert not any(
        w.startswith("flowControl") for w in cfg.warnings
    )  # the detector alone: no warning
    assert "utilization-detector" not in [p.name for p in cfg.plugins]


def test_deprecated_detector_is_copied_when_the_new_one_is_unset() -> None:
    cfg = load_config(
        "plugins: [{type: concurrency-detector, name: det}, {type: queue-scorer}]\n"
        "saturationDetector: {pluginRef: det}\n"
    )
    assert cfg.saturation_detector == {"pluginRef": "det"}
    assert "saturationDetector" not in cfg.to_dict()
    assert cfg.warnings[0] == (
        "saturationDetector: deprecated; write flowControl.saturationDetector (it is used as that)"
    )


def test_new_detector_wins_over_deprecated() -> None:
    cfg = load_config(
        "plugins: [{type: concurrency-detector, name: det}, {type: queue-scorer}]\n"
        "saturationDetector: {pluginRef: det}\n"
        "flowControl: {saturationDetector: {}}\n"
    )
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    assert (
        "saturationDetector: deprecated and not used: flowControl.saturationDetector is set "
        "(the new field wins); remove it" in cfg.warnings
    )


# ====================================================================== flowControl defaults
def test_flow_control_defaults_with_the_gate() -> None:
    cfg = load_config(FC + Q)
    assert cfg.to_dict()["flowControl"] == {
        "saturationDetector": {"pluginRef": "utilization-detector"},
        "maxBytes": 0,
        "maxRequests": 0,
        "defaultRequestTTL": "60s",
        "noEndpointRequestTTL": "60s",
        "defaultPriorityBand": BAND,
        "defaultNegativePriorityBand": BAND,
        "usageLimitPolicyPluginRef": "static-usage-limit-policy",
        "enableEviction": False,
    }
    assert load_config(cfg.to_yaml()).flow_control == cfg.flow_control


def test_no_endpoint_ttl_follows_the_default_ttl() -> None:
    cfg = load_config(FC + "flowControl: {defaultRequestTTL: 30s}\n")
    assert (cfg.flow_control or {})["noEndpointRequestTTL"] == "30s"
    cfg = load_config(FC + "flowControl: {defaultRequestTTL: 30s, noEndpointRequestTTL: 0s}\n")
    assert (cfg.flow_control or {})["noEndpointRequestTTL"] == "0s"


def test_bands_are_filled_and_the_negative_template_falls_back() -> None:
    cfg = load_config(
        FC
        + textwrap.dedent(
            """\
            flowControl:
              defaultPriorityBand: {maxBytes: 512Mi, maxRequests: 0}
              priorityBands:
              - {priority: 100, maxRequests: 1000, orderingPolicyRef: fcfs-ordering-policy}
              - {priority: -10}
              enableEviction: true
            """
        )
    )
    fc = cfg.to_dict()["flowControl"]
    template = BAND | {"maxBytes": "512Mi"}
    assert fc["defaultPriorityBand"] == template
    assert fc["defaultNegativePriorityBand"] == template
    assert fc["priorityBands"] == [
        {"priority": 100} | BAND | {"maxRequests": 1000},
        {"priority": -10} | BAND,
    ]
    assert fc["enableEviction"] is True


def test_flow_control_without_gate_is_kept_as_given() -> None:
    cfg = load_config("flowControl: {defaultRequestTTL: 5s}\n" + Q)
    assert cfg.flow_control == {"defaultRequestTTL": "5s"}
    assert cfg.warnings[0].startswith(
        "flowControl: ignored because the flowControl feature gate is off"
    )


def test_default_policies_are_added_when_registered(policy_stubs: None) -> None:
    cfg = load_config(FC + Q)
    auto = [p.name for p in cfg.plugins if p.is_auto]
    # llm-d-router's order: scheduling, flow-control policies, parsers, detector, data layer
    assert auto == [
        "single-profile-handler",
        "max-score-picker",
        "fcfs-ordering-policy",
        "global-strict-fairness-policy",
        "static-usage-limit-policy",
        *PARSERS,
        "utilization-detector",
        "metrics-data-source",
        "core-metrics-extractor",
    ]
    assert cfg.warnings == ()


# ====================================================================== dataLayer
def test_data_layer_injection_is_additive() -> None:
    cfg = load_config(
        "plugins: [{type: queue-scorer}, {type: metrics-data-source, name: tls, parameters: {scheme: https}}, {type: core-metrics-extractor, name: x}]\n"
        "dataLayer: {sources: [{pluginRef: tls, extractors: [{pluginRef: x}]}]}\n"
    )
    # a source of type metrics-data-source (under any name) stops the injection
    assert [s["pluginRef"] for s in (cfg.data_layer or {})["sources"]] == ["tls"]
    cfg = load_config(
        "plugins: [{type: queue-scorer}, {type: metrics-data-source, name: extra}]\n"
        "dataLayer: {injectDefaults: true}\n"
    )
    assert cfg.to_dict()["dataLayer"] == {
        "injectDefaults": True,
        "sources": [
            {
                "pluginRef": "metrics-data-source",
                "extractors": [{"pluginRef": "core-metrics-extractor"}],
            }
        ],
    }


def test_inject_defaults_false_adds_nothing() -> None:
    cfg = load_config(Q + "dataLayer: {injectDefaults: false}\n")
    assert cfg.data_layer == {"injectDefaults": False}
    assert "metrics-data-source" not in [p.name for p in cfg.plugins]
    assert any(w.startswith("dataLayer: no sources") for w in cfg.warnings)


def test_sync_interval_default_with_a_syncer() -> None:
    cfg = load_config(
        "plugins: [{type: queue-scorer}, {type: queue-scorer, name: syncer}]\n"
        "schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]}]\n"
        "dataLayer: {crossReplicaSyncerPluginRef: syncer}\n"
    )
    assert (cfg.data_layer or {})["crossReplicaSyncInterval"] == "200ms"
    assert "crossReplicaSyncInterval" not in (load_config(Q).data_layer or {})


# ====================================================================== round trips
def test_effective_config_round_trips_with_every_new_key() -> None:
    text = textwrap.dedent(
        """\
        featureGates: [flowControl, haPopulateNonLeaderDatastore=false]
        plugins: [{type: queue-scorer}, {type: utilization-detector, name: sat}]
        schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]}]
        requestHandler: {parsers: [{pluginRef: openai-parser}]}
        flowControl:
          saturationDetector: {pluginRef: sat}
          maxBytes: 2Gi
          priorityBands: [{priority: 5}]
        dataLayer: {injectDefaults: true}
        """
    )
    cfg = load_config(text)
    again = load_config(cfg.to_yaml())
    assert (again.feature_gates, again.saturation_detector, again.flow_control) == (
        cfg.feature_gates,
        cfg.saturation_detector,
        cfg.flow_control,
    )
    assert (again.request_handler, again.data_layer) == (cfg.request_handler, cfg.data_layer)
    assert load_config(again.to_yaml()) == again


# ====================================================================== spec examples
def test_llm_d_full_shape_example() -> None:
    cfg = load_config(DATA / "llm-d-full-shape.yaml")
    assert cfg.warnings == (
        "flowControl: the flow-control policy plugins (fcfs-ordering-policy, "
        "global-strict-fairness-policy, static-usage-limit-policy) are not available in this "
        "version; requests are not queued",
    )
    assert cfg.gate("flowControl")
    assert cfg.parsers == ("openai-parser", "passthrough-parser")
    assert cfg.saturation_detector == {"pluginRef": "concurrency-detector"}
    fc = cfg.to_dict()["flowControl"]
    assert fc["noEndpointRequestTTL"] == "10s"
    assert fc["defaultNegativePriorityBand"] == BAND | {"maxBytes": "100Mi"}


def test_gie_15b_fails_only_on_plugin_types_we_do_not_have() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "invalid-15b-flow-control.yaml")
    assert [e.path for e in info.value.errors] == ["plugins[1].type", "plugins[2].type"]
    assert all(re.search(r"unknown plugin type '(round-robin-fairness|edf-ordering)-policy'", str(e)) for e in info.value.errors)  # fmt: skip
