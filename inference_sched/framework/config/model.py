"""The config model: GIE's ``EndpointPickerConfig`` constants and the effective config.

:class:`EndpointPickerConfig` mirrors GIE's API type (``gateway-api-inference-extension:
apix/config/v1alpha1``) after the loader's defaulting pipeline ran: every plugin to
build, the profiles with their references resolved, and the sections of later subsystems
as given. The constants here name what that pipeline adds (``gateway-api-inference-
extension: pkg/epp/config/loader/defaults.go``); the rest of the package reads them.
"""

from __future__ import annotations

import builtins
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
    "DATA_SOURCE",
    "DEFAULT_PROFILE",
    "DEFAULT_SCORER_WEIGHT",
    "DETECTOR",
    "EXTRACTOR",
    "FEATURE_GATES",
    "FLOW_POLICIES",
    "KIND",
    "MAX_SCORE_PICKER",
    "MISSING",
    "PARSER",
    "PROFILE_KINDS",
    "SINGLE_PROFILE_HANDLER",
    "SYSTEM_TYPES",
    "EndpointPickerConfig",
    "PluginSpec",
    "ProfileRef",
    "ProfileSpec",
    "did_you_mean",
    "join_path",
]

API_VERSION: Final = "inference.networking.x-k8s.io/v1alpha1"
"""GIE's apiVersion; assumed when a document has none."""
API_VERSIONS: Final = (API_VERSION, "llm-d.ai/v1alpha1")
"""Accepted apiVersions: GIE's and llm-d's (same schema)."""
KIND: Final = "EndpointPickerConfig"
FEATURE_GATES: Final = ("dataLayer", "enableLegacyMetrics", "flowControl")
"""GIE's registered feature gates."""

DEFAULT_PROFILE: Final = "default"
DEFAULT_SCORER_WEIGHT: Final = 1.0
AUTO_PATH: Final = "(default)"
"""``PluginSpec.path`` of a plugin the defaulting pipeline added."""

SINGLE_PROFILE_HANDLER: Final = "single-profile-handler"
MAX_SCORE_PICKER: Final = "max-score-picker"
FLOW_POLICIES: Final = (
    "fcfs-ordering-policy",
    "global-strict-fairness-policy",
    "static-usage-limit-policy",
)
"""The flow-control policies GIE adds when absent (ordering, fairness, usage limit)."""
PARSER: Final = "openai-parser"
DETECTOR: Final = "utilization-detector"
DATA_SOURCE: Final = "metrics-data-source"
EXTRACTOR: Final = "core-metrics-extractor"
SYSTEM_TYPES: Final = frozenset(
    {SINGLE_PROFILE_HANDLER, MAX_SCORE_PICKER, *FLOW_POLICIES, PARSER, DETECTOR}
    | {DATA_SOURCE, EXTRACTOR}
)
"""Types the pipeline may add by name; a reference to one is not reported as undefined
while the plugins phase has errors (the pipeline could not run to add it)."""

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
    parameters: Mapping[str, Any] | None = attrs.field(default=None, repr=lambda v: redact(repr(v)))
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
    by later subsystems are kept as shape-checked read-only mappings in GIE's key
    spelling.
    """

    api_version: str
    kind: str
    feature_gates: tuple[str, ...]
    plugins: tuple[PluginSpec, ...]
    """Every instance to build: config order, then the auto-added ones."""
    scheduling_profiles: tuple[ProfileSpec, ...]
    saturation_detector: Mapping[str, Any] | None
    data_layer: Mapping[str, Any] | None
    flow_control: Mapping[str, Any] | None
    parser: Mapping[str, Any] | None
    warnings: tuple[str, ...] = ()
    """Things the loader accepted but a user should know (deprecated keys, skipped
    defaults, data nobody produces)."""

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
        """The effective config in GIE's YAML shape (camelCase keys).

        Every plugin is listed with its name and its effective parameter values by GIE
        key (see :func:`~inference_sched.framework.config.effective_parameters`); loading
        the result gives an equal config, with the auto-added plugins now listed
        explicitly.
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
        sections = (
            ("saturationDetector", self.saturation_detector),
            ("dataLayer", self.data_layer),
            ("flowControl", self.flow_control),
            ("parser", self.parser),
        )
        for key, section in sections:
            if section is not None:
                document[key] = thaw(section)
        return document

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML text, for people: URL passwords (a Redis address) are
        shown as ``***`` (:meth:`to_dict` keeps the real values)."""
        return yaml.safe_dump(_redacted(self.to_dict()), sort_keys=False, allow_unicode=True)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


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
