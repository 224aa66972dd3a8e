"""The config model: the ``EndpointPickerConfig`` constants and the effective config.

:class:`EndpointPickerConfig` mirrors llm-d-router's API type (``llm-d-router:
apix/config/v1alpha1/endpointpickerconfig_types.go``, GIE's type plus
``requestHandler``, ``flowControl.saturationDetector`` and the new ``dataLayer`` keys)
after the loader's defaulting pipeline ran: every plugin to build, the profiles with
their references resolved, and the sections of later subsystems with their defaults
filled in. The constants here name what that pipeline adds (``llm-d-router:
pkg/epp/config/loader/defaults.go``, ``pkg/epp/flowcontrol/registry/config.go``); the rest
of the package reads them.
"""

from __future__ import annotations

import builtins
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import yaml

from inference_sched.errors import redact
from inference_sched.framework.config.values import effective_parameters, thaw
from inference_sched.params import closest

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "AUTO_PATH",
    "BAND_MAX_BYTES",
    "BAND_MAX_REQUESTS",
    "DATA_SOURCE",
    "DEFAULT_PARSERS",
    "DEFAULT_PROFILE",
    "DEFAULT_REQUEST_TTL",
    "DEFAULT_SCORER_WEIGHT",
    "DETECTOR",
    "EXTRACTOR",
    "FAIRNESS_POLICY",
    "FEATURE_GATES",
    "FEATURE_GATE_DEFAULTS",
    "FLOW_POLICIES",
    "FUTURE_TYPES",
    "GIE_API_VERSION",
    "GIE_FEATURE_GATES",
    "KIND",
    "MAX_SCORE_PICKER",
    "MISSING",
    "ORDERING_POLICY",
    "PARSER",
    "PARSER_TYPES",
    "POLICY_TYPES",
    "PROFILE_KINDS",
    "SINGLE_PROFILE_HANDLER",
    "SYNC_INTERVAL",
    "SYSTEM_TYPES",
    "USAGE_LIMIT_POLICY",
    "EndpointPickerConfig",
    "PluginSpec",
    "ProfileRef",
    "ProfileSpec",
    "did_you_mean",
    "join_path",
]

API_VERSION: Final = "llm-d.ai/v1alpha1"
"""llm-d-router's apiVersion; assumed when a document has none (``llm-d-router:
pkg/epp/config/loader/defaults.go``, ``loadDefaultConfig``)."""
GIE_API_VERSION: Final = "inference.networking.x-k8s.io/v1alpha1"
"""GIE's apiVersion: the same schema, accepted with a deprecation warning."""
LLMD_V1_API_VERSION: Final = "llm-d.ai/v1"
"""The apiVersion of llm-d-router releases after the spec's commit (same schema; its
guides write it)."""
API_VERSIONS: Final = (API_VERSION, LLMD_V1_API_VERSION, GIE_API_VERSION)
"""Accepted apiVersions, the current one first."""
KIND: Final = "EndpointPickerConfig"
FEATURE_GATE_DEFAULTS: Final[Mapping[str, bool]] = types.MappingProxyType(
    {"flowControl": False, "haPopulateNonLeaderDatastore": True}
)
"""llm-d-router's registered feature gates and their defaults (``llm-d-router:
cmd/epp/runner/runner.go``, ``parseConfigurationPhaseOne``)."""
FEATURE_GATES: Final = tuple(FEATURE_GATE_DEFAULTS)
GIE_FEATURE_GATES: Final = ("dataLayer", "enableLegacyMetrics")
"""GIE's gates llm-d-router no longer registers: accepted here with a warning."""

DEFAULT_PROFILE: Final = "default"
DEFAULT_SCORER_WEIGHT: Final = 1.0
AUTO_PATH: Final = "(default)"
"""``PluginSpec.path`` of a plugin the defaulting pipeline added."""

SINGLE_PROFILE_HANDLER: Final = "single-profile-handler"
MAX_SCORE_PICKER: Final = "max-score-picker"

FAIRNESS_POLICY: Final = "fairness-policy"
ORDERING_POLICY: Final = "ordering-policy"
USAGE_LIMIT_POLICY: Final = "usage-limit-policy"
FLOW_POLICIES: Final = (
    "fcfs-ordering-policy",
    "global-strict-fairness-policy",
    "static-usage-limit-policy",
)
"""The flow-control policies llm-d-router adds when absent (ordering, fairness, usage
limit), in its order (``llm-d-router: pkg/epp/config/loader/defaults.go``,
``ensureFlowControlLayer``)."""
POLICY_TYPES: Final[Mapping[str, frozenset[str]]] = types.MappingProxyType(
    {
        FAIRNESS_POLICY: frozenset(
            {
                "global-strict-fairness-policy",
                "round-robin-fairness-policy",
                "program-aware-fairness",
            }
        ),
        ORDERING_POLICY: frozenset(
            {"fcfs-ordering-policy", "edf-ordering-policy", "slo-deadline-ordering-policy"}
        ),
        USAGE_LIMIT_POLICY: frozenset(
            {
                "static-usage-limit-policy",
                "priority-holdback-policy",
                "soft-reflective-ceiling-policy",
            }
        ),
    }
)
"""llm-d-router's flow-control policy types by kind (``llm-d-router:
cmd/epp/runner/runner.go``, ``registerInTreePlugins``): while the registry has no such
kind, a policy reference is checked against these."""
DEFAULT_REQUEST_TTL: Final = "60s"
"""``flowControl.defaultRequestTTL`` when unset (GIE: 0, the client's deadline only)."""
BAND_MAX_BYTES: Final = 1_000_000_000
BAND_MAX_REQUESTS: Final = 5000
"""A priority band's caps when 0 or omitted (GIE: requests unlimited)."""

PARSER: Final = "openai-parser"
DEFAULT_PARSERS: Final = (
    "openai-parser",
    "anthropic-parser",
    "vllmhttp-parser",
    "passthrough-parser",
)
"""``requestHandler.parsers`` when the list is empty, in order (``llm-d-router:
pkg/epp/config/loader/defaults.go``, ``ensureParsers``)."""
PARSER_TYPES: Final = frozenset(
    {*DEFAULT_PARSERS, "sglanghttp-parser", "vllmgrpc-parser", "vertexai-parser"}
)
"""llm-d-router's parser types (``llm-d-router:
pkg/epp/framework/plugins/requesthandling/parsers``)."""
DETECTOR: Final = "utilization-detector"
DATA_SOURCE: Final = "metrics-data-source"
EXTRACTOR: Final = "core-metrics-extractor"
SYNC_INTERVAL: Final = "200ms"
"""``dataLayer.crossReplicaSyncInterval`` when unset."""
SYSTEM_TYPES: Final = frozenset(
    {SINGLE_PROFILE_HANDLER, MAX_SCORE_PICKER, *FLOW_POLICIES, *DEFAULT_PARSERS, DETECTOR}
    | {DATA_SOURCE, EXTRACTOR}
)
"""Types the pipeline may add by name; a reference to one is not reported as undefined
while the plugins phase has errors (the pipeline could not run to add it)."""
FUTURE_TYPES: Final = PARSER_TYPES | frozenset().union(*POLICY_TYPES.values())
"""llm-d-router types of subsystems later issues implement: a reference to one that is
not registered is kept, quietly (logged once per process at debug level)."""

PROFILE_KINDS: Final = frozenset({"filter", "scorer", "picker"})
"""The kinds a scheduling profile references."""

MISSING: Final[Any] = object()
"""Absent (a key not in the document; a value that failed to parse)."""


# ====================================================================== result types
@attrs.frozen
class PluginSpec:
    """One plugin instance to build: a ``plugins`` entry after defaulting and parsing."""

    type: str
    """The registered plugin type (kebab-case)."""
    name: str
    """The instance name (GIE: defaults to the type)."""
    params: Any
    """The plugin's parsed ``Params`` instance."""
    cls: builtins.type[Any]
    """The registered class; build with ``cls(name, params, handle)``."""
    path: str
    """Where it came from: ``plugins[3]``, or ``(default)`` when the pipeline added it."""
    parameters: Mapping[str, Any] | None = attrs.field(
        default=None, repr=lambda v: redact(repr(_redacted(v)))
    )
    """The raw ``parameters`` as given (``None`` when absent)."""
    is_auto: bool = False
    """Added by the defaulting pipeline rather than listed in the config."""


@attrs.frozen
class ProfileRef:
    """One ``schedulingProfiles[].plugins`` entry."""

    plugin_ref: str
    """Name of a plugin instance."""
    weight: float | None = None
    """The scorer weight; ``None`` only for filters and pickers."""


@attrs.frozen
class ProfileSpec:
    """A scheduling profile: filters, weighted scorers and exactly one picker, by name."""

    name: str
    plugins: tuple[ProfileRef, ...]
    """References in config order; an auto-added picker reference comes last."""


@attrs.frozen
class EndpointPickerConfig:
    """The effective ``EndpointPickerConfig``: given plugins plus the pipeline's defaults.

    Build one with :func:`~inference_sched.framework.config.load_config`. Sections owned
    by later subsystems are kept as read-only mappings in llm-d-router's key spelling,
    with their defaults filled in (docs/configuration.md, "Shape").
    """

    api_version: str
    kind: str
    feature_gates: tuple[str, ...]
    """The gates as given, one entry per gate (the last value wins): ``"name"`` when
    on, ``"name=false"`` when off. :meth:`gate` reads a gate with its default."""
    plugins: tuple[PluginSpec, ...]
    """Every instance to build: config order, then the auto-added ones."""
    scheduling_profiles: tuple[ProfileSpec, ...]
    saturation_detector: Mapping[str, Any] | None
    """``flowControl.saturationDetector`` (``{pluginRef}``; also fed by the deprecated
    top-level ``saturationDetector``)."""
    data_layer: Mapping[str, Any] | None
    flow_control: Mapping[str, Any] | None
    """``flowControl`` without ``saturationDetector``; every key filled in when the
    ``flowControl`` gate is on, as given (or ``None``) when it is off."""
    request_handler: Mapping[str, Any] | None = None
    """``requestHandler``: ``{parsers: [{pluginRef}, ...]}`` (also fed by the deprecated
    top-level ``parser``)."""
    warnings: tuple[str, ...] = ()
    """Things the loader accepted but a user should know (deprecated keys, skipped
    defaults, data nobody produces)."""

    @property
    def parsers(self) -> tuple[str, ...]:
        """The ``requestHandler.parsers`` references, in order."""
        entries = (self.request_handler or {}).get("parsers") or ()
        return tuple(str(entry["pluginRef"]) for entry in entries)

    def gate(self, name: str) -> bool:
        """Whether feature gate ``name`` is on (its registered default when not given)."""
        value = FEATURE_GATE_DEFAULTS.get(name, False)
        for entry in self.feature_gates:
            gate, _, off = entry.partition("=")
            if gate == name:
                value = not off
        return value

    def plugin(self, name: str) -> PluginSpec:
        """The plugin instance called ``name``.

        Raises:
            KeyError: no instance has that name (the message suggests close matches).
        """
        for spec in self.plugins:
            if spec.name == name:
                return spec
        names = [p.name for p in self.plugins]
        raise KeyError(f"no plugin named {name!r}{did_you_mean(name, names)}")

    def to_dict(self) -> dict[str, Any]:
        """The effective config in llm-d-router's YAML shape (camelCase keys).

        Every plugin is listed with its name and its effective parameter values by key
        (see :func:`~inference_sched.framework.config.effective_parameters`); the
        deprecated top-level ``saturationDetector`` and ``parser`` are written at their
        new places. Loading the result gives an equal config, with the auto-added plugins
        now listed explicitly.
        """
        document: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind}
        if self.feature_gates:
            document["featureGates"] = list(self.feature_gates)
        document["plugins"] = [_plugin_document(spec) for spec in self.plugins]
        document["schedulingProfiles"] = [
            {
                "name": profile.name,
                "plugins": [
                    {"pluginRef": ref.plugin_ref}
                    | ({} if ref.weight is None else {"weight": ref.weight})
                    for ref in profile.plugins
                ],
            }
            for profile in self.scheduling_profiles
        ]
        if self.request_handler is not None:
            document["requestHandler"] = thaw(self.request_handler)
        flow: dict[str, Any] = {}
        if self.saturation_detector is not None:
            flow["saturationDetector"] = thaw(self.saturation_detector)
        flow |= thaw(self.flow_control or {})
        if flow or self.flow_control is not None:
            document["flowControl"] = flow
        if self.data_layer is not None:
            document["dataLayer"] = thaw(self.data_layer)
        return document

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML text, for people: URL passwords (a Redis address) and
        the values of secret keys (``huggingFaceToken``, ``password``, ...) are shown as
        ``***`` (:meth:`to_dict` keeps the real values)."""
        return yaml.safe_dump(_redacted(self.to_dict()), sort_keys=False, allow_unicode=True)


_SECRET_KEY = re.compile(r"(?:^|[a-z])(?:token|password|secret|apikey|api_key)$", re.IGNORECASE)
"""Parameter keys whose string values are credentials (``huggingFaceToken``)."""


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            k: "***" if isinstance(v, str) and v and _is_secret_key(k) else _redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def _plugin_document(spec: PluginSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "type": spec.type}
    parameters = effective_parameters(spec.params, spec.parameters)
    if parameters:
        entry["parameters"] = parameters
    return entry


# ====================================================================== helpers
def join_path(path: str, key: Any) -> str:
    """``path.key`` (``key`` alone at the top level)."""
    return f"{path}.{key}" if path else str(key)


def did_you_mean(word: Any, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    near = closest(str(word), list(choices))
    return f" (did you mean {near[0]!r}?)" if near else ""
