"""Loading GIE's EndpointPickerConfig: every error path, the defaulting pipeline, round trips."""

# ruff: noqa: E501  (the error table keeps one case per line: YAML, error type, message)

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs
import numpy as np
import numpy.typing as npt
import pytest

import inference_sched.plugins.saturation  # noqa: F401 - registers utilization-detector
from inference_sched.errors import (
    ConfigError,
    ParameterError,
    PluginLoadError,
    UnknownPluginTypeError,
)
from inference_sched.framework import registry
from inference_sched.framework.config import (
    API_VERSION,
    AUTO_PATH,
    EndpointPickerConfig,
    PluginSpec,
    ProfileRef,
    ProfileSpec,
    default_config,
    effective_parameters,
    load_config,
    load_config_file,
    parse_quantity,
)
from inference_sched.framework.interfaces import Handle
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.params import at_least, duration_s, param, parse_params
from inference_sched.plugins.pickers import PickerParams
from inference_sched.state.table import EndpointTable
from tests.helpers import hide_builtin

DATA = Path(__file__).parent.parent / "data" / "configs"
DATA_LAYER = ["metrics-data-source", "core-metrics-extractor"]
"""The data-layer plugins GIE's defaulting adds to every config without a dataLayer."""
PARSER_DEFAULTS = ["openai-parser", "anthropic-parser", "vllmhttp-parser", "passthrough-parser"]
"""llm-d-router's default ``requestHandler.parsers``, added to every config."""
SECTION_DEFAULTS = [*PARSER_DEFAULTS, "utilization-detector", *DATA_LAYER]
"""What the defaulting adds for absent sections: the parsers, the saturation detector, the
data layer."""
PARSERS = [(t, t, True) for t in PARSER_DEFAULTS]
DETECTOR = ("utilization-detector", "utilization-detector", True)
BAND = {
    "maxBytes": 1_000_000_000,
    "maxRequests": 5000,
    "fairnessPolicyRef": "global-strict-fairness-policy",
    "orderingPolicyRef": "fcfs-ordering-policy",
}
"""llm-d-router's default priority band."""


# ====================================================================== test plugins
class _Base:
    type: ClassVar[str]

    def __init__(self, name: str, params: Any, handle: Handle) -> None:
        self.name = name


class HeaderBasedTestingFilter(_Base):
    """GIE's conformance filter (stub)."""

    def filter(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> Candidates:
        return candidates


class DestinationEndpointServedVerifier(_Base):
    """GIE's conformance response hook (stub)."""

    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        return None


class MultiProfileHandler(_Base):
    """A handler that runs every profile (stub)."""

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, Any],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, Any]:
        return {}

    def process_results(
        self, cycle: CycleState, request: Request, results: Mapping[str, ProfileRunResult | None]
    ) -> SchedulingResult:
        raise NotImplementedError


@attrs.frozen
class TuningParams:
    """Parameters with a parsed (duration) field, for round trips."""

    window_s: float = param(
        2.0, alias="window", parse=duration_s("window"), check=at_least(0, kind="number")
    )
    """Averaging window."""
    depth: int = param(4, alias="depth", check=at_least(1))
    """Queue depth."""


class TuningScorer(_Base):
    """A scorer with parameters that consumes ``test-key``."""

    category: ClassVar[ScorerCategory] = "Distribution"
    consumes: ClassVar[frozenset[str]] = frozenset({"test-key"})
    Params = TuningParams

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        out[:] = 0.0


class _Producer(_Base):
    produces: ClassVar[frozenset[str]] = frozenset()
    consumes: ClassVar[frozenset[str]] = frozenset()

    def prepare_request_data(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> None:
        return None


class KeyProducer(_Producer):
    """Default producer of ``test-key``."""

    produces = frozenset({"test-key"})


class CycleA(_Producer):
    produces = frozenset({"a"})
    consumes = frozenset({"b"})


class CycleB(_Producer):
    produces = frozenset({"b"})
    consumes = frozenset({"a"})


class Orphan(_Producer):
    """Consumes a key nobody produces."""

    consumes = frozenset({"nobody-makes-this"})


def _crashing_check(inst: Any, attribute: Any, value: Any) -> None:
    raise KeyError(value)


@attrs.frozen
class CrashingParams:
    """A third-party check that raises something other than ParamCheck."""

    mode: str = param("a", alias="mode", check=_crashing_check)
    """Anything."""


class CrashingScorer(_Base):
    category: ClassVar[ScorerCategory] = "Balance"
    Params = CrashingParams

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        out[:] = 0.0


class Stub(_Base):
    """Stands in for a system-default type of a later subsystem."""

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        return None


class StubFilter(Stub):
    def filter(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> Candidates:
        return candidates


TEST_PLUGINS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "header-based-testing-filter": (HeaderBasedTestingFilter, ()),
    "destination-endpoint-served-verifier": (DestinationEndpointServedVerifier, ()),
    "test-multi-profile-handler": (MultiProfileHandler, ()),
    "test-tuning-scorer": (TuningScorer, ()),
    "test-key-producer": (KeyProducer, ("test-key",)),
    "test-cycle-a": (CycleA, ()),
    "test-cycle-b": (CycleB, ()),
    "test-orphan": (Orphan, ()),
    "test-crashing-scorer": (CrashingScorer, ()),
}


def _register(plugin_type: str, cls: type[Any], default_for: tuple[str, ...] = ()) -> None:
    registry.register(plugin_type, default_producer_for=default_for)(cls)


@pytest.fixture(autouse=True)
def test_plugins() -> Iterator[None]:
    """Throwaway plugin types for this module, forgotten afterwards."""
    for plugin_type, (cls, default_for) in TEST_PLUGINS.items():
        _register(plugin_type, cls, default_for)
    yield
    for plugin_type in TEST_PLUGINS:
        registry._forget(plugin_type)


@pytest.fixture
def system_stubs() -> Iterator[None]:
    """Register stubs for the system-default types a later issue implements (if absent)."""
    added = []
    for plugin_type in (
        "fcfs-ordering-policy",
        "global-strict-fairness-policy",
        "static-usage-limit-policy",
        *PARSER_DEFAULTS,
        "utilization-detector",
        "metrics-data-source",
        "core-metrics-extractor",
    ):
        try:
            registry.get(plugin_type)
        except UnknownPluginTypeError:
            cls = type(plugin_type.title().replace("-", ""), (StubFilter,), {})
            _register(plugin_type, cls)
            added.append(plugin_type)
    yield
    for plugin_type in added:
        registry._forget(plugin_type)


def _load(text: str) -> EndpointPickerConfig:
    return load_config(textwrap.dedent(text))


def _types(cfg: EndpointPickerConfig) -> list[tuple[str, str, bool]]:
    return [(p.name, p.type, p.is_auto) for p in cfg.plugins]


def _normalized(cfg: EndpointPickerConfig) -> tuple[Any, ...]:
    """``cfg`` without what differs after a round trip (auto flags, paths, raw params)."""
    return (
        cfg.api_version,
        cfg.kind,
        cfg.feature_gates,
        [(p.type, p.name, p.params, p.cls) for p in cfg.plugins],
        cfg.scheduling_profiles,
        cfg.saturation_detector,
        cfg.data_layer,
        cfg.flow_control,
        cfg.request_handler,
    )


# ====================================================================== error table
E = pytest.param
BASE = "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"

ERRORS = [
    # ---------------------------------------------------------------- document
    E("plugins: [\n- type: x\n", ConfigError, r"^invalid YAML at line 2, column 1: ", id="yaml-syntax"),
    E("a: 1\n---\nb: 2\n", ConfigError, r"^invalid YAML at line 2.*expected a single document", id="yaml-two-documents"),
    E("!!python/object:os.system {}\n", ConfigError, r"^invalid YAML.*could not determine a constructor", id="yaml-unsafe-tag"),
    E("plugins: []\nplugins: []\n", ConfigError, r"^duplicate key 'plugins' at line 2 \(first at line 1\)$", id="yaml-duplicate-top"),
    E("plugins:\n- type: queue-scorer\n  type: max-score-picker\n", ConfigError, r"^plugins\[0\]: duplicate key 'type' at line 3 \(first at line 2\)$", id="yaml-duplicate-plugin-key"),
    E("plugins:\n- type: max-score-picker\n  parameters:\n    maxNumOfEndpoints: 1\n    maxNumOfEndpoints: 2\n", ConfigError, r"^plugins\[0\]\.parameters: duplicate key 'maxNumOfEndpoints' at line 5", id="yaml-duplicate-parameter"),
    E("schedulingProfiles:\n- name: a\n  plugins: []\n  plugins: []\n", ConfigError, r"^schedulingProfiles\[a\]: duplicate key 'plugins' at line 4", id="yaml-duplicate-profile-key"),
    E("plugins: [\x1b]\n", ConfigError, r"^invalid YAML at line 1: unacceptable character #x001b: special characters are not allowed$", id="yaml-non-printable"),
    E("[1, 2]\n", ConfigError, r"^expected a mapping \(an EndpointPickerConfig document\), got \[1, 2\] \(list\)$", id="document-list"),
    E("just text\n", ConfigError, r"^expected a mapping .*got 'just text' \(str\)$", id="document-scalar"),
    # ---------------------------------------------------------------- top level
    E("data: {sources: []}\n", ConfigError, r"^unknown key 'data' \(did you mean 'dataLayer'\? GIE's documentation writes `data:`", id="top-data"),
    E("plugin: []\n", ConfigError, r"^unknown key 'plugin' \(did you mean 'plugins'\?\); known keys: apiVersion, ", id="top-plugin"),
    E("schedulingprofiles: []\n", ConfigError, r"^unknown key 'schedulingprofiles' \(did you mean 'schedulingProfiles'\?\)", id="top-case"),
    E("1: x\n", ConfigError, r"^unknown key 1; known keys", id="top-int-key"),
    E("apiVersion: v1\n", ConfigError, r"^apiVersion: expected one of 'llm-d\.ai/v1alpha1', 'llm-d\.ai/v1', 'inference\.networking\.x-k8s\.io/v1alpha1', got 'v1' \(str\)$", id="apiversion-unknown"),
    E("apiVersion: inference.networking.x-k8s.io/v1alpha2\n", ConfigError, r"^apiVersion: .*\(did you mean 'inference\.networking\.x-k8s\.io/v1alpha1'\?\)$", id="apiversion-near"),
    E("apiVersion: 1\n", ConfigError, r"^apiVersion: .*got 1 \(int\)$", id="apiversion-int"),
    E("kind: EndpointPickerConfiguration\n", ConfigError, r"^kind: expected 'EndpointPickerConfig', got 'EndpointPickerConfiguration' \(str\) \(did you mean 'EndpointPickerConfig'\?\)$", id="kind-wrong"),
    E("featureGates: [flowcontrol]\n", ConfigError, r"^featureGates\[0\]: feature gate 'flowcontrol' is unknown or unregistered \(did you mean 'flowControl'\?\); known gates: flowControl, haPopulateNonLeaderDatastore \(GIE's, deprecated: dataLayer, enableLegacyMetrics\)$", id="gate-unknown"),
    E("featureGates: [3]\n", ConfigError, r"^featureGates\[0\]: expected a feature gate name, got 3 \(int\)$", id="gate-int"),
    E("featureGates: flowControl\n", ConfigError, r"^featureGates: expected a list of feature gate names, got 'flowControl' \(str\)$", id="gates-not-list"),
    # ---------------------------------------------------------------- plugins
    E("plugins: {type: queue-scorer}\n", ConfigError, r"^plugins: expected a list of plugin entries .*got \{'type': 'queue-scorer'\} \(dict\)$", id="plugins-not-list"),
    E("plugins: [queue-scorer]\n", ConfigError, r"^plugins\[0\]: expected a mapping with keys type, name\?, parameters\?, got 'queue-scorer' \(str\)$", id="plugin-not-mapping"),
    E("plugins: [{type: queue-scorer, paramters: {}}]\n", ConfigError, r"^plugins\[0\]: unknown key 'paramters' \(did you mean 'parameters'\?\); known keys: type, name, parameters$", id="plugin-unknown-key"),
    E("plugins: [{name: q}]\n", ConfigError, r"^plugins\[0\]\.type: required key is missing$", id="plugin-type-missing"),
    E("plugins: [{type: ''}]\n", ConfigError, r"^plugins\[0\]\.type: expected a non-empty str, got '' \(str\)$", id="plugin-type-empty"),
    E("plugins: [{type: null}]\n", ConfigError, r"^plugins\[0\]\.type: expected a non-empty str, got None \(NoneType\)$", id="plugin-type-null"),
    E("plugins: [{type: 3}]\n", ConfigError, r"^plugins\[0\]\.type: expected a non-empty str, got 3 \(int\)$", id="plugin-type-int"),
    E("plugins: [{type: queue-scorer, name: 5}]\n", ConfigError, r"^plugins\[0\]\.name: expected a non-empty str, got 5 \(int\)$", id="plugin-name-int"),
    E("plugins: [{type: queue-scorer, name: x}, {type: max-score-picker, name: x}]\n", ConfigError, r"^plugins\[1\]\.name: duplicate plugin name 'x', also used by plugins\[0\]; give each instance a distinct name$", id="plugin-duplicate-name"),
    E("plugins: [{type: queue-scorer}, {type: queue-scorer}]\n", ConfigError, r"^plugins\[1\]: duplicate plugin name 'queue-scorer' \(the name defaults to the type\), also used by plugins\[0\]", id="plugin-duplicate-default-name"),
    E("plugins: [{type: queue-scorr}]\n", UnknownPluginTypeError, r"^plugins\[0\]\.type: unknown plugin type 'queue-scorr' \(did you mean 'queue-scorer'\?\)", id="plugin-type-unknown"),
    E("plugins: [{type: max-score-picker, parameters: [1]}]\n", ParameterError, r"^plugins\[0\]\.parameters: expected a mapping, got \[1\] \(list\)$", id="parameters-not-mapping"),
    E("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoint: 2}}]\n", ParameterError, r"^plugins\[0\]\.parameters: unknown key 'maxNumOfEndpoint' \(did you mean 'maxNumOfEndpoints'\?\)", id="parameter-unknown-key"),
    E("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 0}}]\n", ParameterError, r"^plugins\[0\]\.parameters\.maxNumOfEndpoints: expected int >= 1, got 0 \(int\)$", id="parameter-range"),
    E("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: x}}]\n", ParameterError, r"^plugins\[0\]\.parameters\.maxNumOfEndpoints: expected int, got 'x' \(str\)$", id="parameter-type"),
    E("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: true}}]\n", ParameterError, r"^plugins\[0\]\.parameters\.maxNumOfEndpoints: expected int, got True \(bool\)$", id="parameter-bool"),
    E("plugins: [{type: test-tuning-scorer, parameters: {window: 5}}]\n", ParameterError, r"^plugins\[0\]\.parameters\.window: expected a duration string such as '200ms', got 5 \(int\)$", id="parameter-duration"),
    E("plugins: [{type: test-crashing-scorer, parameters: {mode: b}}]\n", ParameterError, r"^plugins\[0\]\.parameters: rejected by test-crashing-scorer: KeyError: 'b'$", id="parameter-check-crashes"),
    # ---------------------------------------------------------------- profiles
    E(BASE + "schedulingProfiles: {name: default}\n", ConfigError, r"^schedulingProfiles: expected a list of profiles \{name, plugins\}, got", id="profiles-not-list"),
    E(BASE + "schedulingProfiles: [default]\n", ConfigError, r"^schedulingProfiles\[0\]: expected a mapping with keys name, plugins, got 'default' \(str\)$", id="profile-not-mapping"),
    E(BASE + "schedulingProfiles: [{name: a, plugin: []}]\n", ConfigError, r"^schedulingProfiles\[0\]: unknown key 'plugin' \(did you mean 'plugins'\?\); known keys: name, plugins$", id="profile-unknown-key"),
    E(BASE + "schedulingProfiles: [{plugins: []}]\n", ConfigError, r"^schedulingProfiles\[0\]\.name: required key is missing$", id="profile-name-missing"),
    E(BASE + "schedulingProfiles: [{name: ''}]\n", ConfigError, r"^schedulingProfiles\[0\]\.name: expected a non-empty str, got '' \(str\)$", id="profile-name-empty"),
    E(BASE + "schedulingProfiles: [{name: a}, {name: a}]\n", ConfigError, r"^schedulingProfiles\[1\]\.name: duplicate profile name 'a', also used by schedulingProfiles\[0\]$", id="profile-duplicate-name"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: queue-scorer}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins: expected a list of \{pluginRef, weight\?\}, got 'queue-scorer' \(str\)$", id="profile-plugins-not-list"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [queue-scorer]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]: expected a mapping with keys pluginRef, weight\?, got 'queue-scorer' \(str\)$", id="ref-not-mapping"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weigth: 2}]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]: unknown key 'weigth' \(did you mean 'weight'\?\)", id="ref-unknown-key"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [{weight: 2}]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]\.pluginRef: required key is missing$", id="ref-missing"),
    E(BASE + "schedulingProfiles: [{plugins: [{pluginRef: queue-scorer, weight: x}]}]\n", ConfigError, r"schedulingProfiles\[0\]\.plugins\[0\]\.weight: expected a finite number, got 'x' \(str\)", id="ref-path-by-index"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weight: true}]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]\.weight: expected a finite number, got True \(bool\)$", id="weight-bool"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weight: '2'}]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]\.weight: expected a finite number, got '2' \(str\)$", id="weight-str"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weight: .nan}]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]\.weight: expected a finite number, got nan \(float\)$", id="weight-nan"),
    E(BASE + "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, weight: -.inf}]}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]\.weight: expected a finite number, got -inf \(float\)$", id="weight-inf"),
    E(BASE + f"schedulingProfiles: [{{name: a, plugins: [{{pluginRef: queue-scorer, weight: {10**400}}}]}}]\n", ConfigError, r"^schedulingProfiles\[a\]\.plugins\[0\]\.weight: expected a finite number, got 1000", id="weight-huge-int"),
    E("plugins: [{type: queue-scorer}, {name: prefix, type: prefix-cache-scorer}]\nschedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}, {pluginRef: pfx}]}]\n", ConfigError, r"^schedulingProfiles\[default\]\.plugins\[1\] references undefined plugin 'pfx' \(did you mean 'prefix'\?\)$", id="ref-undefined"),
    E("plugins: [{type: queue-scorr}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: nope}]}]\n", ConfigError, r"^2 problems.*\n  plugins\[0\]\.type: unknown plugin type .*\n  schedulingProfiles\[a\]\.plugins\[0\] references undefined plugin 'nope'$", id="ref-undefined-while-types-fail"),
    E("plugins: [{type: max-score-picker, name: a}, {type: random-picker, name: b}]\nschedulingProfiles: [{name: p, plugins: [{pluginRef: a}, {pluginRef: b}]}]\n", ConfigError, r"^schedulingProfiles\[p\]\.plugins\[1\]: second picker 'b' in schedulingProfiles\[p\] \(first: 'a'\); a profile has exactly one picker$", id="second-picker"),
    E("plugins: [{type: max-score-picker, name: a}, {type: random-picker, name: b}]\n", ConfigError, r"^plugins\[1\]: second picker 'b' in the implicit 'default' profile \(first: 'a'\); a profile has exactly one picker; declare schedulingProfiles to choose$", id="second-picker-implicit-profile"),
    E(BASE + "schedulingProfiles: [{name: a}, {name: b}]\n", ConfigError, r"^plugins: no profile handler configured: 2 profiles need a profile-handler plugin", id="no-handler"),
    E("plugins: [{type: single-profile-handler, name: h1}, {type: single-profile-handler, name: h2}]\n", ConfigError, r"^plugins: more than one profile handler: 'h1' \(single-profile-handler, plugins\[0\]\), 'h2' \(single-profile-handler, plugins\[1\]\); keep exactly one$", id="two-handlers"),
    E("plugins: [{type: single-profile-handler}]\nschedulingProfiles: [{name: a}, {name: b}]\n", ConfigError, r"^plugins\[0\]: 'single-profile-handler' runs exactly one profile, but 2 are configured", id="single-handler-two-profiles"),
    E("plugins: [{type: queue-scorer, name: max-score-picker}]\n", ConfigError, r"^plugins\[0\]: no picker is configured, so 'max-score-picker' would be added by default, but 'max-score-picker' \(queue-scorer, plugins\[0\]\) already has that name; rename it$", id="auto-name-taken"),
    # ---------------------------------------------------------------- saturationDetector
    E("saturationDetector: utilization-detector\n", ConfigError, r"^saturationDetector: expected a mapping with key pluginRef, got 'utilization-detector' \(str\)$", id="detector-not-mapping"),
    E("saturationDetector: {pluginref: x}\n", ConfigError, r"^saturationDetector: unknown key 'pluginref' \(did you mean 'pluginRef'\?\)", id="detector-unknown-key"),
    E("saturationDetector: {queueDepthThreshold: 5}\n", ConfigError, r"^saturationDetector: unknown key 'queueDepthThreshold': GIE v1\.2's saturationDetector thresholds are now parameters of the 'utilization-detector' plugin", id="detector-v12-threshold"),
    E("saturationDetector: {pluginRef: 3}\n", ConfigError, r"^saturationDetector\.pluginRef: expected a non-empty str, got 3 \(int\)$", id="detector-ref-int"),
    E("plugins: [{type: nope}]\nparser: {pluginRef: my-parser}\n", ConfigError, r"^parser\.pluginRef: parser references undefined plugin 'my-parser'; declare it in plugins or name a parser type$", id="section-ref-undefined-while-types-fail"),
    E(BASE + "saturationDetector: {pluginRef: queue-scorr}\n", ConfigError, r"^saturationDetector\.pluginRef: saturation detector references undefined plugin 'queue-scorr' \(did you mean 'queue-scorer'\?\); declare it in plugins$", id="detector-ref-undefined"),
    # ---------------------------------------------------------------- parser
    E("parser: openai-parser\n", ConfigError, r"^parser: expected a mapping with key pluginRef, got 'openai-parser' \(str\)$", id="parser-not-mapping"),
    E("parser: {}\n", ConfigError, r"^parser\.pluginRef: required key is missing$", id="parser-ref-missing"),
    E("parser: {pluginRef: openai-parser, type: y}\n", ConfigError, r"^parser: unknown key 'type'; known keys: pluginRef$", id="parser-unknown-key"),
    E("parser: {pluginRef: my-parser}\n", ConfigError, r"^parser\.pluginRef: parser references undefined plugin 'my-parser'; declare it in plugins or name a parser type$", id="parser-ref-undefined"),
    # ---------------------------------------------------------------- dataLayer
    E("dataLayer: [x]\n", ConfigError, r"^dataLayer: expected a mapping with key sources, got \['x'\] \(list\)$", id="datalayer-not-mapping"),
    E("dataLayer: {source: []}\n", ConfigError, r"^dataLayer: unknown key 'source' \(did you mean 'sources'\?\)", id="datalayer-unknown-key"),
    E("dataLayer: {sources: x}\n", ConfigError, r"^dataLayer\.sources: expected a list of \{pluginRef, extractors\}, got 'x' \(str\)$", id="sources-not-list"),
    E("dataLayer: {sources: [x]}\n", ConfigError, r"^dataLayer\.sources\[0\]: expected a mapping with keys pluginRef, extractors, got 'x' \(str\)$", id="source-not-mapping"),
    E("dataLayer: {sources: [{extractors: []}]}\n", ConfigError, r"^dataLayer\.sources\[0\]\.pluginRef: required key is missing$", id="source-ref-missing"),
    E("dataLayer: {sources: [{pluginRef: metrics-data-source, extractor: []}]}\n", ConfigError, r"^dataLayer\.sources\[0\]: unknown key 'extractor' \(did you mean 'extractors'\?\)", id="source-unknown-key"),
    E("dataLayer: {sources: [{pluginRef: metrics-data-source, extractors: e}]}\n", ConfigError, r"^dataLayer\.sources\[0\]\.extractors: expected a list of \{pluginRef\}, got 'e' \(str\)$", id="extractors-not-list"),
    E("dataLayer: {sources: [{pluginRef: metrics-data-source, extractors: [e]}]}\n", ConfigError, r"^dataLayer\.sources\[0\]\.extractors\[0\]: expected a mapping with key pluginRef, got 'e' \(str\)$", id="extractor-not-mapping"),
    E("dataLayer: {sources: [{pluginRef: metrics-data-source, extractors: [{}]}]}\n", ConfigError, r"^dataLayer\.sources\[0\]\.extractors\[0\]\.pluginRef: required key is missing$", id="extractor-ref-missing"),
    E("dataLayer: {sources: [{pluginRef: my-source}]}\n", ConfigError, r"^dataLayer\.sources\[0\]\.pluginRef: undefined plugin 'my-source'; declare it in plugins$", id="source-ref-undefined"),
    # ---------------------------------------------------------------- flowControl
    E("flowControl: [x]\n", ConfigError, r"^flowControl: expected a mapping, got \['x'\] \(list\)$", id="flow-not-mapping"),
    E("flowControl: {maxbytes: 1}\n", ConfigError, r"^flowControl: unknown key 'maxbytes' \(did you mean 'maxBytes'\?\)", id="flow-unknown-key"),
    E("flowControl: {maxBytes: 10Gx}\n", ConfigError, r"^flowControl\.maxBytes: expected a non-negative quantity \(an int, or a string such as '500', '10Gi', '1k'\), got '10Gx' \(str\)$", id="quantity-garbage"),
    E("flowControl: {maxBytes: -1Gi}\n", ConfigError, r"^flowControl\.maxBytes: global MaxBytes must be non-negative, got '-1Gi' \(str\)$", id="quantity-negative"),
    E("flowControl: {maxRequests: -5}\n", ConfigError, r"^flowControl\.maxRequests: global MaxRequests must be non-negative, got -5 \(int\)$", id="quantity-negative-int"),
    E("flowControl: {maxRequests: true}\n", ConfigError, r"^flowControl\.maxRequests: expected a non-negative quantity .*got True \(bool\)$", id="quantity-bool"),
    E("flowControl: {maxBytes: 10Ei}\n", ConfigError, r"^flowControl\.maxBytes: expected a non-negative quantity .*got '10Ei' \(str\)$", id="quantity-beyond-int64"),
    E("flowControl: {defaultRequestTTL: 10 s}\n", ConfigError, r"^flowControl\.defaultRequestTTL: expected a non-negative duration such as '60s', got '10 s' \(str\)$", id="ttl-garbage"),
    E("flowControl: {defaultRequestTTL: -5s}\n", ConfigError, r"^flowControl\.defaultRequestTTL: expected a non-negative duration .*got '-5s' \(str\)$", id="ttl-negative"),
    E("flowControl: {defaultRequestTTL: 60}\n", ConfigError, r"^flowControl\.defaultRequestTTL: expected a non-negative duration .*got 60 \(int\)$", id="ttl-int"),
    E("flowControl: {usageLimitPolicyPluginRef: mine}\n", ConfigError, r"^flowControl\.usageLimitPolicyPluginRef: plugin 'mine' not found; declare it in plugins$", id="usage-limit-ref-undefined"),
    E("flowControl: {defaultPriorityBand: 5}\n", ConfigError, r"^flowControl\.defaultPriorityBand: expected a mapping, got 5 \(int\)$", id="default-band-not-mapping"),
    E("flowControl: {defaultPriorityBand: {maxByte: 1}}\n", ConfigError, r"^flowControl\.defaultPriorityBand: unknown key 'maxByte' \(did you mean 'maxBytes'\?\)", id="default-band-unknown-key"),
    E("flowControl: {defaultPriorityBand: {maxBytes: lots}}\n", ConfigError, r"^flowControl\.defaultPriorityBand\.maxBytes: expected a non-negative quantity", id="default-band-quantity"),
    E("flowControl: {priorityBands: {priority: 1}}\n", ConfigError, r"^flowControl\.priorityBands: expected a list of priority bands, got", id="bands-not-list"),
    E("flowControl: {priorityBands: [1]}\n", ConfigError, r"^flowControl\.priorityBands\[0\]: expected a mapping, got 1 \(int\)$", id="band-not-mapping"),
    E("flowControl: {priorityBands: [{maxBytes: 1}]}\n", ConfigError, r"^flowControl\.priorityBands\[0\]\.priority: required key is missing$", id="band-priority-missing"),
    E("flowControl: {priorityBands: [{priority: high}]}\n", ConfigError, r"^flowControl\.priorityBands\[0\]\.priority: expected int, got 'high' \(str\)$", id="band-priority-str"),
    E("flowControl: {priorityBands: [{priority: true}]}\n", ConfigError, r"^flowControl\.priorityBands\[0\]\.priority: expected int, got True \(bool\)$", id="band-priority-bool"),
    E("flowControl: {priorityBands: [{priority: 1}, {priority: 1}]}\n", ConfigError, r"^flowControl\.priorityBands\[1\]\.priority: duplicate priority level 1, also used by flowControl\.priorityBands\[0\]$", id="band-priority-duplicate"),
    E("flowControl: {priorityBands: [{priority: 1, fairnessPolicy: x}]}\n", ConfigError, r"^flowControl\.priorityBands\[0\]: unknown key 'fairnessPolicy' \(did you mean 'fairnessPolicyRef'\?\)", id="band-unknown-key"),
    E("flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: lifo}]}\n", ConfigError, r"^flowControl\.priorityBands\[0\]\.orderingPolicyRef: plugin 'lifo' not found; declare it in plugins$", id="band-ref-undefined"),
    # ---------------------------------------------------------------- data dependencies
    E("plugins: [{type: test-cycle-a}, {type: test-cycle-b}]\n", ConfigError, r"^plugins: data dependency cycle: 'test-cycle-a' consumes what 'test-cycle-b' produces, 'test-cycle-b' consumes what 'test-cycle-a' produces; no order can run them$", id="producer-cycle"),
    E("plugins: [{type: test-tuning-scorer}, {type: queue-scorer, name: test-key-producer}]\n", ConfigError, r"^plugins\[1\]: 'test-tuning-scorer' \(test-tuning-scorer, plugins\[0\]\) consumes 'test-key', so 'test-key-producer' would be added by default, but 'test-key-producer' \(queue-scorer, plugins\[1\]\) already has that name; rename it$", id="default-producer-name-taken"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "error", "match"), ERRORS)
def test_error(text: str, error: type[ConfigError], match: str) -> None:
    """Each row names its problem; a row may cause a second, related one (listed too)."""
    with pytest.raises(ConfigError) as info:
        load_config(text)
    hits = [e for e in (info.value, *info.value.errors) if re.search(match, str(e))]
    assert hits, str(info.value)
    assert type(hits[0]) is error, f"{type(hits[0]).__name__}: {hits[0]}"


# ====================================================================== data files
def _expected_error(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{path.name}: first line must be '# error: Type: regex'"
    name, pattern = first.removeprefix("# error: ").split(": ", 1)
    return name, pattern


@pytest.mark.parametrize("path", sorted(DATA.glob("invalid-*.yaml")), ids=lambda p: p.stem)
def test_invalid_file(path: Path) -> None:
    name, pattern = _expected_error(path)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert type(info.value).__name__ == name
    assert re.search(pattern, str(info.value)), str(info.value)


REJECTED_TODAY = {"gie-15a-lora-load-prefix.yaml"}  # see test_gie_15a_is_rejected_today


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in sorted(DATA.glob("*.yaml"))
        if not p.name.startswith("invalid-") and p.name not in REJECTED_TODAY
    ],
    ids=lambda p: p.stem,
)
def test_valid_files_round_trip(path: Path) -> None:
    cfg = load_config(path)
    again = load_config(cfg.to_yaml())
    assert _normalized(again) == _normalized(cfg)
    assert not any(p.is_auto for p in again.plugins)


# ====================================================================== GIE default
@pytest.mark.parametrize(
    "source", [None, "", "   \n\t", "# only a comment\n", "null\n", "~"], ids=repr
)
def test_empty_source_is_gie_default(source: str | None) -> None:
    cfg = load_config(source)
    assert cfg == default_config()
    assert _types(cfg) == [
        ("queue-scorer", "queue-scorer", False),
        ("kv-cache-utilization-scorer", "kv-cache-utilization-scorer", False),
        ("prefix-cache-scorer", "prefix-cache-scorer", False),
        ("single-profile-handler", "single-profile-handler", True),
        ("max-score-picker", "max-score-picker", True),
        *PARSERS,
        DETECTOR,
        ("metrics-data-source", "metrics-data-source", True),
        ("core-metrics-extractor", "core-metrics-extractor", True),
        ("approx-prefix-cache-producer", "approx-prefix-cache-producer", True),
        ("token-producer", "token-producer", True),
    ]
    assert cfg.scheduling_profiles == (
        ProfileSpec(
            "default",
            (
                ProfileRef("queue-scorer", 2.0),
                ProfileRef("kv-cache-utilization-scorer", 2.0),
                ProfileRef("prefix-cache-scorer", 3.0),
                ProfileRef("max-score-picker"),
            ),
        ),
    )
    assert cfg.api_version == API_VERSION
    assert cfg.kind == "EndpointPickerConfig"
    assert cfg.feature_gates == ()
    picker = cfg.plugin("max-score-picker")
    assert picker.path == AUTO_PATH
    assert picker.parameters is None
    assert picker.params == parse_params(PickerParams, None, "")
    assert picker.params.max_num_of_endpoints == 1
    assert not any("PrefixCacheMatchInfo" in w for w in cfg.warnings)  # the producer is added


def test_empty_mapping_gets_the_pipeline_with_no_plugins() -> None:
    """``{}`` is a config with zero plugins (GIE: only empty *text* means the default)."""
    cfg = load_config("{}")
    assert cfg == load_config({})
    assert _types(cfg) == [
        ("single-profile-handler", "single-profile-handler", True),
        ("max-score-picker", "max-score-picker", True),
        *PARSERS,
        DETECTOR,
        ("metrics-data-source", "metrics-data-source", True),
        ("core-metrics-extractor", "core-metrics-extractor", True),
    ]
    assert cfg.scheduling_profiles == (ProfileSpec("default", (ProfileRef("max-score-picker"),)),)
    assert cfg.warnings[0].startswith("plugins: none declared, so the 'default' profile")


def test_default_config_has_no_warnings() -> None:
    """Defaults of later subsystems that are not available yet are skipped quietly
    (logged once per process at debug level): nothing a user could act on."""
    assert default_config().warnings == ()


def test_default_config_adds_the_data_layer_as_gie_does() -> None:
    cfg = default_config()
    assert cfg.plugin("metrics-data-source").is_auto
    assert cfg.plugin("core-metrics-extractor").is_auto
    assert cfg.data_layer == {
        "injectDefaults": True,
        "sources": (
            {
                "pluginRef": "metrics-data-source",
                "extractors": ({"pluginRef": "core-metrics-extractor"},),
            },
        ),
    }


# ====================================================================== GIE examples
def test_gie_full_shape_example() -> None:
    cfg = load_config(DATA / "gie-3.1-full-shape.yaml")
    assert cfg.feature_gates == ("flowControl",)
    assert _types(cfg) == [
        ("my-prefix", "prefix-cache-scorer", False),
        ("single-profile-handler", "single-profile-handler", True),
        ("max-score-picker", "max-score-picker", True),
        PARSERS[0],  # parser: {pluginRef: openai-parser}
        DETECTOR,
        ("metrics-data-source", "metrics-data-source", True),
        ("core-metrics-extractor", "core-metrics-extractor", True),
        ("approx-prefix-cache-producer", "approx-prefix-cache-producer", True),
        ("token-producer", "token-producer", True),
    ]
    assert cfg.plugin("my-prefix").parameters == {}
    assert cfg.scheduling_profiles == (
        ProfileSpec("default", (ProfileRef("my-prefix", 3.0), ProfileRef("max-score-picker"))),
    )
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    assert cfg.parsers == ("openai-parser",)  # the deprecated `parser`, mapped
    assert cfg.data_layer is not None
    document = cfg.to_dict()
    assert "parser" not in document
    assert "saturationDetector" not in document
    assert document["requestHandler"] == {"parsers": [{"pluginRef": "openai-parser"}]}
    assert document["dataLayer"] == {
        "injectDefaults": True,
        "sources": [
            {
                "pluginRef": "metrics-data-source",
                "extractors": [{"pluginRef": "core-metrics-extractor"}],
            }
        ],
    }
    band = {
        "maxBytes": "1Gi",
        "maxRequests": 5000,  # 0 means llm-d-router's default (GIE: unlimited)
        "fairnessPolicyRef": "global-strict-fairness-policy",
        "orderingPolicyRef": "fcfs-ordering-policy",
    }
    assert document["flowControl"] == {
        "saturationDetector": {"pluginRef": "utilization-detector"},
        "maxBytes": "10Gi",
        "maxRequests": 5000,
        "defaultRequestTTL": "60s",
        "noEndpointRequestTTL": "60s",
        "defaultPriorityBand": band,
        "defaultNegativePriorityBand": band,
        "priorityBands": [
            {
                "priority": 100,
                "maxBytes": "5Gi",
                "maxRequests": 500,
                "fairnessPolicyRef": "global-strict-fairness-policy",
                "orderingPolicyRef": "fcfs-ordering-policy",
            }
        ],
        "usageLimitPolicyPluginRef": "static-usage-limit-policy",  # "" means the default
        "enableEviction": False,
    }
    assert cfg.plugin("utilization-detector").is_auto  # the section's ref: added by default
    assert cfg.warnings == (
        "apiVersion: 'inference.networking.x-k8s.io/v1alpha1' is deprecated; write "
        "'llm-d.ai/v1alpha1' (the same schema)",
        "saturationDetector: deprecated; write flowControl.saturationDetector (it is used as that)",
        "parser: deprecated; write requestHandler.parsers: [{pluginRef: openai-parser}] (it "
        "is used as that list)",
        "flowControl: the flow-control policy plugins (fcfs-ordering-policy, "
        "global-strict-fairness-policy, static-usage-limit-policy) are not available in this "
        "version; requests are not queued",
    )


def test_gie_15a_with_the_producer() -> None:
    cfg = load_config(DATA / "gie-15a-lora-load-prefix.yaml")
    producer = cfg.plugin("approx-prefix-cache-producer")
    assert (producer.path, producer.is_auto) == ("plugins[4]", False)
    params = producer.params
    assert (params.auto_tune, params.block_size_tokens) == (False, 16)
    assert (params.max_prefix_blocks_to_match, params.lru_capacity_per_server) == (512, 40000)
    assert [p.name for p in cfg.plugins if p.is_auto] == [
        "single-profile-handler",
        *SECTION_DEFAULTS,
        "token-producer",  # the producer consumes TokenizedPrompt (llm-d-router)
    ]


def test_gie_15a_without_the_producer() -> None:
    cfg = load_config(DATA / "gie-15a-without-producer.yaml")
    assert _types(cfg) == [
        ("queue-scorer", "queue-scorer", False),
        ("kv-cache-utilization-scorer", "kv-cache-utilization-scorer", False),
        ("lora-affinity-scorer", "lora-affinity-scorer", False),
        ("prefix-cache-scorer", "prefix-cache-scorer", False),
        ("max-score-picker", "max-score-picker", False),
        ("single-profile-handler", "single-profile-handler", True),
        *PARSERS,
        DETECTOR,
        ("metrics-data-source", "metrics-data-source", True),
        ("core-metrics-extractor", "core-metrics-extractor", True),
        ("approx-prefix-cache-producer", "approx-prefix-cache-producer", True),
        ("token-producer", "token-producer", True),
    ]
    assert cfg.plugin("max-score-picker").params.max_num_of_endpoints == 2
    assert cfg.scheduling_profiles[0].plugins == (
        ProfileRef("queue-scorer", 2.0),
        ProfileRef("kv-cache-utilization-scorer", 2.0),
        ProfileRef("lora-affinity-scorer", 1.0),
        ProfileRef("prefix-cache-scorer", 3.0),
        ProfileRef("max-score-picker"),
    )


def test_gie_15d_conformance_profile() -> None:
    cfg = load_config(DATA / "gie-15d-conformance.yaml")
    assert _types(cfg) == [
        ("header-based-testing-filter", "header-based-testing-filter", False),
        ("destination-endpoint-served-verifier", "destination-endpoint-served-verifier", False),
        ("single-profile-handler", "single-profile-handler", True),
        ("max-score-picker", "max-score-picker", True),
        *PARSERS,
        DETECTOR,
        ("metrics-data-source", "metrics-data-source", True),
        ("core-metrics-extractor", "core-metrics-extractor", True),
    ]
    assert cfg.scheduling_profiles == (
        ProfileSpec(
            "conformance-profile",
            (ProfileRef("header-based-testing-filter"), ProfileRef("max-score-picker")),
        ),
    )


def test_llm_d_api_version() -> None:
    cfg = load_config(DATA / "llm-d-decode-only.yaml")
    assert cfg.api_version == "llm-d.ai/v1alpha1"
    assert cfg.scheduling_profiles == (
        ProfileSpec(
            "decode",
            (
                ProfileRef("decode-filter"),
                ProfileRef("queue-scorer", 1.0),
                ProfileRef("kv", 2.5),
                ProfileRef("max-score-picker"),
            ),
        ),
    )
    assert cfg.to_dict()["apiVersion"] == "llm-d.ai/v1alpha1"


# ====================================================================== inputs
def test_dict_file_and_text_inputs_agree(tmp_path: Path) -> None:
    text = (DATA / "llm-d-decode-only.yaml").read_text()
    path = tmp_path / "c.yaml"
    path.write_text(text)
    from_text = load_config(text)
    assert load_config(path) == from_text
    assert load_config_file(path) == from_text
    assert load_config_file(str(path)) == from_text
    assert load_config(from_text.to_dict()) == load_config(from_text.to_yaml())


def test_json_text_is_accepted() -> None:
    cfg = load_config('{"plugins": [{"type": "queue-scorer"}]}')
    assert cfg.plugins[0].type == "queue-scorer"


def test_json_exponent_floats_are_numbers() -> None:
    """YAML 1.1 reads ``1e-05`` as a string; Go's decoder (and JSON) read a number."""
    cfg = load_config(
        '{"plugins": [{"type": "queue-scorer"}], "schedulingProfiles": [{"name": "p", '
        '"plugins": [{"pluginRef": "queue-scorer", "weight": 1e-05}]}]}'
    )
    assert cfg.scheduling_profiles[0].plugins[0] == ProfileRef("queue-scorer", 1e-05)
    assert _load("flowControl: {maxBytes: 2E3}\n").flow_control == {"maxBytes": 2000.0}


def test_missing_api_version_and_kind_are_defaulted() -> None:
    cfg = load_config({"plugins": [{"type": "queue-scorer"}]})
    assert (cfg.api_version, cfg.kind) == (API_VERSION, "EndpointPickerConfig")


def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config_file(tmp_path / "nope.yaml")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"plugins: [{type: caf\xe9}]\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config_file(path)


def test_yaml_error_in_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("plugins:\n- type: queue-scorer\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^invalid YAML at line \d+, column \d+: "):
        load_config_file(path)


def test_wrong_source_type() -> None:
    with pytest.raises(TypeError, match="load_config\\(\\) takes YAML text"):
        load_config(42)  # type: ignore[arg-type]


def test_deeply_nested_text_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"^invalid YAML at line 1: nested more than 64 levels deep$"
    ):
        load_config("plugins: " + "[" * 5000 + "]" * 5000)


def test_yaml_aliases_and_merge_keys() -> None:
    cfg = _load(
        """
        plugins:
        - &picker {type: max-score-picker, parameters: {maxNumOfEndpoints: 3}}
        - <<: *picker
          name: other
          type: random-picker
        schedulingProfiles:
        - {name: default, plugins: [{pluginRef: max-score-picker}]}
        """
    )
    assert cfg.plugin("other").params.max_num_of_endpoints == 3
    assert cfg.plugin("other").type == "random-picker"


# ====================================================================== collection
def test_every_problem_is_collected() -> None:
    with pytest.raises(ConfigError) as info:
        _load(
            """
            kind: Other
            featureGates: [nope]
            plugins:
            - type: queue-scorer
              paramters: {}
            - type: max-score-picker
              parameters: {maxNumOfEndpoints: 0, extra: 1}
            - type: not-a-plugin
            schedulingProfiles:
            - name: default
              plugins: [{pluginRef: queue-scorer, weight: x}]
            flowControl: {maxBytes: nope}
            """
        )
    error = info.value
    paths = [e.path for e in error.errors]
    assert paths == [
        "kind",
        "featureGates[0]",
        "plugins[0]",
        "plugins[1].parameters",  # unknown keys first, then every value check
        "plugins[1].parameters.maxNumOfEndpoints",
        "plugins[2].type",
        "schedulingProfiles[default].plugins[0].weight",
        "flowControl.maxBytes",
    ]
    assert isinstance(error.errors[5], UnknownPluginTypeError)
    assert isinstance(error.errors[3], ParameterError)
    assert isinstance(error.errors[4], ParameterError)
    lines = str(error).splitlines()
    assert lines[0] == "8 problems in the EndpointPickerConfig:"
    assert [line.strip() for line in lines[1:]] == [str(e) for e in error.errors]
    assert (error.path, error.value) == ("kind", "Other")


def test_plugin_load_error_becomes_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Dist:
        name = "isched-broken"
        version = "0.3.1"

    class BrokenEntryPoint:
        name = "broken-scorer"
        value = "isched_broken:Scorer"
        dist = Dist()

        def load(self) -> Any:
            raise ImportError("No module named 'isched_broken'")

    monkeypatch.setattr(registry, "_entry_points", lambda: {"broken-scorer": BrokenEntryPoint()})
    try:
        with pytest.raises(ConfigError) as info:
            load_config("plugins: [{type: queue-scorer}, {type: broken-scorer}]")
    finally:
        registry._forget("broken-scorer")
    error = info.value
    assert type(error) is ConfigError
    assert error.path == "plugins[1].type"
    assert str(error) == (
        "plugins[1].type: plugin type 'broken-scorer' failed to load from isched-broken "
        "0.3.1: ImportError: No module named 'isched_broken'"
    )
    assert isinstance(error.__cause__, PluginLoadError)
    assert error.__cause__.distribution == "isched-broken 0.3.1"


# ====================================================================== defaulting
def test_scorer_weight_defaults_to_one_and_picker_weight_is_dropped() -> None:
    cfg = _load(
        """
        plugins: [{type: queue-scorer}, {type: random-picker}]
        schedulingProfiles:
        - name: p
          plugins: [{pluginRef: queue-scorer}, {pluginRef: random-picker, weight: 5}]
        """
    )
    assert cfg.scheduling_profiles[0].plugins == (
        ProfileRef("queue-scorer", 1.0),
        ProfileRef("random-picker"),
    )
    assert "schedulingProfiles[p].plugins[1].weight: ignored, 'random-picker' is not a scorer" in (
        cfg.warnings
    )


def test_profiles_without_picker_share_the_first_picker_in_config_order() -> None:
    cfg = _load(
        """
        plugins:
        - {type: queue-scorer}
        - {type: random-picker, name: r}
        - {type: max-score-picker, name: m}
        - {type: test-multi-profile-handler}
        schedulingProfiles:
        - {name: a, plugins: [{pluginRef: queue-scorer}]}
        - {name: b, plugins: [{pluginRef: m}]}
        - {name: c}
        """
    )
    assert [p.plugins for p in cfg.scheduling_profiles] == [
        (ProfileRef("queue-scorer", 1.0), ProfileRef("r")),
        (ProfileRef("m"),),
        (ProfileRef("r"),),
    ]
    assert [p.name for p in cfg.plugins if p.is_auto] == SECTION_DEFAULTS


def test_implicit_profile_takes_filters_scorers_pickers_in_list_order() -> None:
    cfg = _load(
        """
        plugins:
        - {type: test-key-producer}
        - {type: queue-scorer}
        - {type: decode-filter}
        - {type: random-picker}
        """
    )
    assert cfg.scheduling_profiles == (
        ProfileSpec(
            "default",
            (
                ProfileRef("queue-scorer", 1.0),
                ProfileRef("decode-filter"),
                ProfileRef("random-picker"),
            ),
        ),
    )
    assert [p.name for p in cfg.plugins if p.is_auto] == [
        "single-profile-handler",
        *SECTION_DEFAULTS,
    ]


def test_ref_to_an_auto_added_picker_resolves() -> None:
    """GIE validates references after adding defaults: a profile may name max-score-picker."""
    cfg = _load(
        """
        plugins: [{type: queue-scorer}]
        schedulingProfiles:
        - {name: p, plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]}
        """
    )
    assert cfg.scheduling_profiles[0].plugins[-1] == ProfileRef("max-score-picker")
    assert cfg.plugin("max-score-picker").is_auto


def test_multi_profile_handler_needs_no_single_handler() -> None:
    cfg = _load(
        """
        plugins: [{type: queue-scorer}, {type: test-multi-profile-handler}]
        schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]}, {name: b}]
        """
    )
    assert [p.name for p in cfg.plugins if p.is_auto] == ["max-score-picker", *SECTION_DEFAULTS]


def test_unused_profile_plugin_is_warned() -> None:
    cfg = _load(
        """
        plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]
        schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]}]
        """
    )
    assert (
        "plugins[1]: 'kv-cache-utilization-scorer' (kv-cache-utilization-scorer) is not used by "
        "any profile" in cfg.warnings
    )


def test_system_defaults_are_added_when_registered(system_stubs: None) -> None:
    cfg = load_config(None)
    assert [p.type for p in cfg.plugins if p.is_auto] == [
        "single-profile-handler",
        "max-score-picker",
        "fcfs-ordering-policy",
        "global-strict-fairness-policy",
        "static-usage-limit-policy",
        *PARSER_DEFAULTS,
        "utilization-detector",
        "metrics-data-source",
        "core-metrics-extractor",
        "approx-prefix-cache-producer",
        "token-producer",
    ]
    assert cfg.parsers == (
        "openai-parser",
        "anthropic-parser",
        "vllmhttp-parser",
        "passthrough-parser",
    )
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    assert cfg.to_dict()["dataLayer"] == {
        "injectDefaults": True,
        "sources": [
            {
                "pluginRef": "metrics-data-source",
                "extractors": [{"pluginRef": "core-metrics-extractor"}],
            }
        ],
    }
    assert cfg.warnings == ()


def test_section_default_refs_resolve_to_added_plugins(system_stubs: None) -> None:
    cfg = _load(
        """
        featureGates: [flowControl]
        plugins: [{type: queue-scorer}]
        saturationDetector: {}
        flowControl:
          priorityBands: [{priority: 1, fairnessPolicyRef: global-strict-fairness-policy}]
        dataLayer: {sources: []}
        """
    )
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    assert cfg.plugin("utilization-detector").is_auto
    assert cfg.data_layer == {"injectDefaults": False, "sources": ()}
    assert "metrics-data-source" not in [p.name for p in cfg.plugins]
    assert any(w.startswith("dataLayer: no sources") for w in cfg.warnings)
    assert (
        "dataLayer.sources: an empty list disables metrics collection as in GIE; llm-d-router "
        "would add its default source: write injectDefaults: false to say so" in cfg.warnings
    )


def test_explicit_section_refs_must_be_defined_or_gie_defaults() -> None:
    cfg = _load(
        """
        plugins: [{type: queue-scorer}, {type: concurrency-detector, name: det}]
        saturationDetector: {pluginRef: det}
        """
    )
    assert cfg.saturation_detector == {"pluginRef": "det"}
    assert "utilization-detector" not in [p.name for p in cfg.plugins]


def test_detector_ref_must_implement_the_detector() -> None:
    with pytest.raises(ConfigError, match=r"^saturationDetector\.pluginRef: plugin 'det' \(decode-filter, plugins\[1\]\) is not a saturation-detector$"):  # fmt: skip
        _load(
            "plugins: [{type: queue-scorer}, {type: decode-filter, name: det}]\nsaturationDetector: {pluginRef: det}\n"
        )


def test_section_ref_kind_is_checked_once_the_registry_knows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Detector(Protocol):
        def saturation(self, cycle: CycleState, table: EndpointTable) -> float: ...

    monkeypatch.setitem(registry.KINDS, "saturation-detector", (Detector, ("saturation",)))
    with pytest.raises(ConfigError, match=r"^saturationDetector\.pluginRef: plugin 'q' \(queue-scorer, plugins\[0\]\) is not a saturation-detector$"):  # fmt: skip
        _load("plugins: [{type: queue-scorer, name: q}]\nsaturationDetector: {pluginRef: q}\n")


def test_flow_control_without_gate_is_kept_and_warned() -> None:
    cfg = _load("flowControl: {maxBytes: 1Gi}\n")
    assert cfg.flow_control == {"maxBytes": "1Gi"}
    assert cfg.warnings[0] == (
        "flowControl: ignored because the flowControl feature gate is off (add flowControl to "
        "featureGates); only saturationDetector is used, as in llm-d-router"
    )


def test_enable_legacy_metrics_gate_is_warned() -> None:
    cfg = _load("featureGates: [enableLegacyMetrics, dataLayer, dataLayer]\n")
    assert cfg.feature_gates == ("enableLegacyMetrics", "dataLayer")
    assert cfg.warnings[:2] == (
        "featureGates[0]: 'enableLegacyMetrics' is a GIE feature gate that llm-d-router no "
        "longer registers; remove it, and set dataLayer.injectDefaults: false to stop the "
        "default metrics collection",
        "featureGates[1]: 'dataLayer' is a GIE feature gate that llm-d-router no longer "
        "registers (the data layer is always on); remove it",
    )
    assert cfg.data_layer is None  # as in GIE, the legacy gate adds no data layer


def test_null_sections_are_absent() -> None:
    cfg = _load(
        """
        featureGates: null
        plugins: null
        schedulingProfiles: null
        saturationDetector: null
        dataLayer: null
        flowControl: null
        parser: null
        """
    )
    assert cfg == load_config({})


def test_default_band_priority_is_ignored_with_a_warning() -> None:
    cfg = _load("featureGates: [flowControl]\nflowControl: {defaultPriorityBand: {priority: 3}}\n")
    assert "flowControl.defaultPriorityBand.priority: ignored" in cfg.warnings[0]


def test_required_default_that_is_not_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_builtin(monkeypatch, "single-profile-handler")
    with pytest.raises(ConfigError, match=r"^\(default\): no profile handler is configured and the default 'single-profile-handler' is not available; declare one in plugins$"):  # fmt: skip
        load_config(None)


def test_default_type_failing_to_load_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class BrokenEntryPoint:
        name = "openai-parser"
        value = "broken:Parser"
        dist = None

        def load(self) -> Any:
            raise ImportError("boom")

    hide_builtin(monkeypatch, "openai-parser")  # as an installation without the built-in
    monkeypatch.setattr(registry, "_entry_points", lambda: {"openai-parser": BrokenEntryPoint()})
    try:
        cfg = load_config(None)
    finally:
        registry._load_errors.pop("openai-parser", None)  # the built-in comes back
    assert cfg.parsers == (
        "openai-parser",
        "anthropic-parser",
        "vllmhttp-parser",
        "passthrough-parser",
    )
    assert "openai-parser" not in [p.name for p in cfg.plugins]
    assert (
        "openai-parser: not added by default: plugin type 'openai-parser' failed to load from "
        "an unknown distribution: ImportError: boom" in cfg.warnings
    )


def test_defaulted_section_ref_to_unavailable_type_is_warned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide_builtin(monkeypatch, "utilization-detector")
    cfg = _load("saturationDetector: {}\n")
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}  # kept
    assert (
        "saturationDetector.pluginRef: the default 'utilization-detector' is not available in "
        "this version; saturation detection is off" in cfg.warnings
    )


# ====================================================================== data deps
def test_default_producer_is_added_for_consumed_key() -> None:
    cfg = _load("plugins: [{type: test-tuning-scorer}]\n")
    producer = cfg.plugin("test-key-producer")
    assert producer.is_auto
    assert producer.path == AUTO_PATH
    assert cfg.plugins[-1] is producer
    assert not any("consumes 'test-key'" in w for w in cfg.warnings)


def test_builtin_inflight_load_producer_is_auto_added() -> None:
    cfg = _load("plugins: [{type: token-load-scorer}]\n")
    # The producer consumes TokenizedPrompt (llm-d-router), so token-producer follows it.
    assert _types(cfg)[-2:] == [
        ("inflight-load-producer", "inflight-load-producer", True),
        ("token-producer", "token-producer", True),
    ]


def test_declared_producer_is_not_duplicated() -> None:
    cfg = _load("plugins: [{type: test-tuning-scorer}, {type: test-key-producer, name: mine}]\n")
    assert [p.name for p in cfg.plugins if p.type == "test-key-producer"] == ["mine"]


def test_consumed_key_without_producer_is_warned() -> None:
    cfg = _load("plugins: [{type: queue-scorer}, {type: test-orphan}]\n")
    assert (
        "plugins[1]: 'test-orphan' (test-orphan) consumes 'nobody-makes-this', which no plugin "
        "produces and no default producer is available, so it runs without it" in cfg.warnings
    )


# ====================================================================== effective params
def test_effective_parameters_round_trip_durations() -> None:
    cfg = _load("plugins: [{type: test-tuning-scorer, parameters: {depth: 7}}]\n")
    spec = cfg.plugin("test-tuning-scorer")
    assert (spec.params.window_s, spec.params.depth) == (2.0, 7)
    assert effective_parameters(spec.params, spec.parameters) == {"window": "2s", "depth": 7}
    again = load_config(cfg.to_yaml())
    assert again.plugin("test-tuning-scorer").params == spec.params


def test_given_parameters_are_written_as_given() -> None:
    cfg = _load("plugins: [{type: test-tuning-scorer, parameters: {window: 1500ms}}]\n")
    assert cfg.to_dict()["plugins"][0]["parameters"] == {"window": "1500ms", "depth": 4}


def test_deprecated_parameter_warns_and_is_written_only_when_given() -> None:
    cfg = _load("plugins: [{type: prefix-cache-scorer, parameters: {blockSize: 64}}]\n")
    assert any(w.startswith("plugins[0].parameters.blockSize: ") for w in cfg.warnings)
    assert cfg.to_dict()["plugins"][0]["parameters"] == {"blockSize": 64}
    assert "parameters" not in default_config().to_dict()["plugins"][2]


def test_to_dict_shape() -> None:
    cfg = _load(
        """
        featureGates: [flowControl]
        plugins: [{type: queue-scorer}]
        schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer, weight: 2}]}]
        flowControl: {maxBytes: 1Gi}
        """
    )
    assert cfg.to_dict() == {
        "apiVersion": API_VERSION,
        "kind": "EndpointPickerConfig",
        "featureGates": ["flowControl"],
        "plugins": [
            {"name": "queue-scorer", "type": "queue-scorer"},
            {"name": "single-profile-handler", "type": "single-profile-handler"},
            {
                "name": "max-score-picker",
                "type": "max-score-picker",
                "parameters": {"maxNumOfEndpoints": 1},
            },
            *({"name": t, "type": t} for t in PARSER_DEFAULTS),
            {
                "name": "utilization-detector",
                "type": "utilization-detector",
                "parameters": {
                    "queueDepthThreshold": 5,
                    "kvCacheUtilThreshold": 0.8,
                    "metricsStalenessThreshold": "200ms",
                    "headroom": 0.0,
                },
            },
            {
                "name": "metrics-data-source",
                "type": "metrics-data-source",
                "parameters": {
                    "scheme": "http",
                    "path": "/metrics",
                    "port": 0,
                    "insecureSkipVerify": True,
                    "caCertPath": "",
                    "clientCertPath": "",
                    "clientKeyPath": "",
                },
            },
            {
                "name": "core-metrics-extractor",
                "type": "core-metrics-extractor",
                "parameters": {
                    "engineLabelKey": "llm-d.ai/engine-type",
                    "defaultEngine": "vllm",
                    "engineConfigs": [],
                },
            },
        ],
        "schedulingProfiles": [
            {
                "name": "p",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2.0},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
        "requestHandler": {
            "parsers": [
                {"pluginRef": "openai-parser"},
                {"pluginRef": "anthropic-parser"},
                {"pluginRef": "vllmhttp-parser"},
                {"pluginRef": "passthrough-parser"},
            ]
        },
        "flowControl": {
            "saturationDetector": {"pluginRef": "utilization-detector"},
            "maxBytes": "1Gi",
            "maxRequests": 0,
            "defaultRequestTTL": "60s",
            "noEndpointRequestTTL": "60s",
            "defaultPriorityBand": BAND,
            "defaultNegativePriorityBand": BAND,
            "usageLimitPolicyPluginRef": "static-usage-limit-policy",
            "enableEviction": False,
        },
        "dataLayer": {
            "injectDefaults": True,
            "sources": [
                {
                    "pluginRef": "metrics-data-source",
                    "extractors": [{"pluginRef": "core-metrics-extractor"}],
                }
            ],
        },
    }
    assert cfg.to_yaml().startswith(f"apiVersion: {API_VERSION}\nkind: EndpointPickerConfig\n")


def test_round_trip_of_default_config() -> None:
    cfg = default_config()
    again = load_config(cfg.to_yaml())
    assert _normalized(again) == _normalized(cfg)
    assert [p.is_auto for p in again.plugins] == [False] * len(cfg.plugins)


# ====================================================================== API details
def test_plugin_lookup() -> None:
    cfg = default_config()
    assert isinstance(cfg.plugin("queue-scorer"), PluginSpec)
    with pytest.raises(KeyError, match="no plugin named 'queue-scorr' \\(did you mean 'queue-scorer'\\?\\)"):  # fmt: skip
        cfg.plugin("queue-scorr")


def test_config_is_frozen() -> None:
    cfg = _load("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}]\n")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.plugins = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.plugins[0].parameters["maxNumOfEndpoints"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10Gi", 10 * 2**30),
        ("1.5Gi", 3 * 2**29),
        ("512Mi", 512 * 2**20),
        ("1Ki", 1024),
        ("500", 500),
        ("1k", 1000),
        ("2M", 2_000_000),
        ("1G", 10**9),
        ("1e3", 1000),
        ("1E3", 1000),
        ("100m", 1),  # 0.1 rounds up, like Quantity.Value()
        ("0", 0),
        ("+7", 7),
        (".5k", 500),
        (5000, 5000),
        (0, 0),
        (2.5, 3),
        ("0e999", 0),
    ],
)
def test_parse_quantity(value: object, expected: int) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "Gi", "10Gx", "10 Gi", " 1", "1.2.3", "-1", "-1Gi", "1e99", "1e999999999", "10Ei",
     "0x10", "1i", True, None, -1, 2**63, 1.5e300, float("nan"), float("inf"), [1]],
    ids=repr,
)  # fmt: skip
def test_parse_quantity_rejects(value: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is not the contract
        parse_quantity(value)


def test_gie_15c_sglang_data_layer() -> None:
    cfg = load_config(DATA / "gie-15c-sglang.yaml")
    assert [p.name for p in cfg.plugins if p.is_auto] == [
        "single-profile-handler",
        "max-score-picker",
        *PARSER_DEFAULTS,
        "utilization-detector",
    ]
    extractor = cfg.plugin("core-metrics-extractor")
    assert extractor.params.default_engine == "sglang"
    assert cfg.plugin("metrics-data-source").params.path == "/metrics"


def test_a_profile_reference_to_a_non_profile_plugin_is_dropped_with_a_warning() -> None:
    # llm-d-router's AddPlugins skips it; its guides list producers in profiles.
    cfg = _load(
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: single-profile-handler}, "
        "{pluginRef: queue-scorer}]}]\n"
    )
    assert [r.plugin_ref for r in cfg.scheduling_profiles[0].plugins] == [
        "queue-scorer",
        "max-score-picker",
    ]
    assert (
        "schedulingProfiles[a].plugins[0]: plugin 'single-profile-handler' "
        "(single-profile-handler, added by default) is a profile-handler, not a filter, "
        "scorer or picker; dropped from the profile (it runs at its own extension points)"
        in cfg.warnings
    )
