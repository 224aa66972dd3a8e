"""The loading phases: one parsed document through llm-d-router's defaulting pipeline.

llm-d-router loads in two steps (``llm-d-router: pkg/epp/config/loader/configloader.go``,
``LoadRawConfig`` then ``InstantiateAndConfigure``), with its defaults in ``defaults.go``
and its checks in ``validation.go`` and ``flowcontrol.go``. Here the phases are:

1. **shape**: top-level keys, ``apiVersion``/``kind``, ``featureGates`` and the sections
   owned by later subsystems (``requestHandler``, ``flowControl``, ``dataLayer``, and the
   deprecated ``saturationDetector`` and ``parser``, mapped to their new places), checked
   now with their static defaults filled in
   (:mod:`~inference_sched.framework.config.checks`,
   :mod:`~inference_sched.framework.config.sections`,
   :mod:`~inference_sched.framework.config.flow`);
2. **plugins**: ``name := type``, unique names, registered types, typed parameters;
3. **profiles**: names, references and weights as written;
4. **system defaults** (needs every plugin's class), in llm-d-router's order: the
   implicit ``default`` profile, ``single-profile-handler``, ``max-score-picker``, scorer
   weight 1.0; the flow-control policies; the parsers; the saturation detector; the data
   layer. A default of a later subsystem is added *when its type is registered*, else
   skipped quietly with its reference kept; references are resolved against the result,
   as llm-d-router validates after defaulting;
5. **data dependencies**: a default producer for every consumed key nobody produces
   (built with the producer parameters a consumer's ``Params.producer_parameters()``
   carries, as GIE's docs put the prefix producer's keys on ``prefix-cache-scorer``), and
   no producer cycles (:mod:`~inference_sched.framework.config.graph`).

Each phase collects every problem it finds, and the loader raises one
:class:`~inference_sched.errors.ConfigError` listing them all; it stops early only when
nothing after could run (the YAML does not parse, or the document is not a mapping).
While a plugin type does not resolve, the system defaults are skipped and references are
only checked to exist. docs/configuration.md ("The defaulting pipeline") numbers the
same steps.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import os
import threading
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from inference_sched.errors import ConfigError, PluginLoadError, UnknownPluginTypeError
from inference_sched.framework import registry
from inference_sched.framework.config.checks import Entry, RawProfile, RawRef
from inference_sched.framework.config.document import combined, parse_yaml
from inference_sched.framework.config.flow import FlowChecker
from inference_sched.framework.config.graph import DataNode, data_keys, dependency_order
from inference_sched.framework.config.model import (
    API_VERSION,
    AUTO_PATH,
    DATA_SOURCE,
    DEFAULT_PROFILE,
    DEFAULT_SCORER_WEIGHT,
    DETECTOR,
    EXTRACTOR,
    FAIRNESS_POLICY,
    FLOW_POLICIES,
    FUTURE_TYPES,
    KIND,
    MAX_SCORE_PICKER,
    MISSING,
    ORDERING_POLICY,
    PARSER_TYPES,
    POLICY_TYPES,
    PROFILE_KINDS,
    SINGLE_PROFILE_HANDLER,
    SYSTEM_TYPES,
    USAGE_LIMIT_POLICY,
    EndpointPickerConfig,
    PluginSpec,
    ProfileRef,
    ProfileSpec,
    did_you_mean,
)
from inference_sched.framework.config.sections import (
    KIND_DETECTOR,
    KIND_PARSER,
    Section,
    SectionRef,
    Sections,
    freeze_section,
)
from inference_sched.framework.config.values import effective_parameters
from inference_sched.params import describe

__all__ = ["debug_once", "default_config", "load_config", "load_config_file", "load_document"]

log = logging.getLogger(__name__)


_ACCEPTED_KINDS: Final[dict[str, frozenset[str]]] = {
    "data-source": frozenset({"data-source", "notification-source"}),
    "extractor": frozenset({"extractor", "attribute-extractor", "endpoint-extractor"}),
}
"""A ``dataLayer`` source may be polled or a notification source; its extractors may
fill the metric columns, or write attributes from a page or from endpoint events."""

DEFAULT_DOCUMENT: Final[Mapping[str, Any]] = types.MappingProxyType(
    {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "plugins": (
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
        ),
        "schedulingProfiles": (
            {
                "name": DEFAULT_PROFILE,
                "plugins": (
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ),
            },
        ),
    }
)
"""GIE's built-in default (``gateway-api-inference-extension:
pkg/epp/config/loader/defaults.go``, ``loadDefaultConfig``), before system defaults."""


# ====================================================================== public API
def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None,
) -> EndpointPickerConfig:
    """Load and validate an ``EndpointPickerConfig``; apply GIE's defaulting pipeline.

    Args:
        source: YAML (or JSON) text; a path to a file (any ``os.PathLike``; a plain
            ``str`` is always text); an already-parsed document; or ``None``. ``None``,
            and text that holds no document (empty, whitespace or comments only, or a
            YAML null), mean GIE's built-in default config.

    Returns:
        The effective config (see :mod:`inference_sched.framework.config`).

    Raises:
        ConfigError: the config is invalid. ``errors`` lists every problem found, each a
            ``ConfigError`` whose ``path`` names the field (an
            :class:`~inference_sched.errors.UnknownPluginTypeError` for an unregistered
            type); the message lists them one per line. When only one problem was
            found, that error is raised itself.
        OSError: ``source`` is a path that cannot be read.
        TypeError: ``source`` is none of the accepted types.
    """
    if source is None:
        return default_config()
    if isinstance(source, os.PathLike):
        return load_config_file(source)
    if isinstance(source, str):
        document = parse_yaml(source)
        return default_config() if document is None else load_document(document)
    if isinstance(source, Mapping):
        return load_document(source)
    raise TypeError(
        "load_config() takes YAML text (str), a path (os.PathLike), a mapping or None, "
        f"got {type(source).__name__}"
    )


def load_config_file(path: str | os.PathLike[str]) -> EndpointPickerConfig:
    """Load an ``EndpointPickerConfig`` from a UTF-8 YAML (or JSON) file.

    Raises:
        ConfigError: the file is not UTF-8 text, or the config is invalid (see
            :func:`load_config`).
        OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)!s}: not UTF-8 text ({exc.reason})") from None
    document = parse_yaml(text)
    return default_config() if document is None else load_document(document)


def default_config() -> EndpointPickerConfig:
    """GIE's built-in default: queue-scorer 2, kv-cache-utilization-scorer 2,
    prefix-cache-scorer 3 in a ``default`` profile, plus the system defaults."""
    return load_document(DEFAULT_DOCUMENT)


def load_document(document: Any) -> EndpointPickerConfig:
    try:
        return Loader(document).load()
    except RecursionError:
        raise ConfigError("the document is nested too deeply") from None


class Loader(FlowChecker):
    """One load: the phases of the module docstring over one parsed document."""

    def __init__(self, document: Any) -> None:
        super().__init__(document)
        self.auto: list[PluginSpec] = []
        self.unavailable: set[str] = set()
        """Default types the pipeline tried to add and could not (already reported)."""
        self.forwarded: dict[str, str] = {}
        """Auto-created producer name -> the consumer whose parameters it was built with."""
        self.reported: set[str] = set()
        """Paths of section references whose problem is already reported."""

    def load(self) -> EndpointPickerConfig:
        top = self.document
        if not isinstance(top, Mapping):
            raise ConfigError(
                f"expected a mapping (an EndpointPickerConfig document), got {describe(top)}",
                value=top,
            )
        self.check_top_keys(top)
        api_version = self.api_version(top)
        kind = self.kind(top)
        self.gates = self.feature_gates(top.get("featureGates"))
        self.plugins_phase(top.get("plugins"))
        profiles = self.profiles_phase(top.get("schedulingProfiles"))
        flow, detector = self.flow_control_shape(
            top.get("flowControl", MISSING), top.get("saturationDetector", MISSING)
        )
        sections = Sections(
            saturation_detector=detector,
            data_layer=self.data_layer_shape(top.get("dataLayer", MISSING)),
            flow_control=flow,
            request_handler=self.request_handler_shape(
                top.get("requestHandler", MISSING), top.get("parser", MISSING)
            ),
        )
        resolved = all(e.cls is not None for e in self.entries.values())
        effective: list[ProfileSpec] = []
        if resolved and profiles is not None:
            effective = self.system_defaults(profiles, sections)
        elif profiles is not None:
            self.undefined_refs_only(profiles, sections)
        if self.errors:
            raise combined(self.errors)
        specs = [e.spec for e in self.entries.values() if e.spec is not None and not e.spec.is_auto]
        return EndpointPickerConfig(
            api_version=api_version,
            kind=kind,
            feature_gates=self.gate_entries,
            plugins=(*specs, *self.auto),
            scheduling_profiles=tuple(effective),
            saturation_detector=freeze_section(sections.saturation_detector),
            data_layer=freeze_section(sections.data_layer),
            flow_control=freeze_section(sections.flow_control),
            request_handler=freeze_section(sections.request_handler),
            warnings=tuple(self.warnings),
        )

    # .................................................................. defaults
    def system_defaults(self, profiles: list[RawProfile], sections: Sections) -> list[ProfileSpec]:
        """Steps 5-8 of docs/configuration.md ("The defaulting pipeline"): GIE's
        ``applySystemDefaults`` and ``validateConfig`` (every declared plugin's class is
        known here)."""
        declared = list(self.entries.values())
        if not profiles:
            profiles = [self.implicit_profile(declared)]
            if not declared:
                self.warn(
                    "plugins: none declared, so the 'default' profile has only a picker and "
                    "picks at random; give no document at all (or None) for GIE's default "
                    "scorers (queue 2, kv-cache 2, prefix 3)"
                )
        else:
            self.warn_unused(declared, profiles)
        handlers = [e for e in declared if "profile-handler" in e.kinds]
        if len(profiles) == 1 and not handlers:
            self.add_auto(SINGLE_PROFILE_HANDLER, "no profile handler is configured", required=True)
        pickers = [e for e in declared if "picker" in e.kinds]
        default_picker = pickers[0].name if pickers else MAX_SCORE_PICKER
        if not pickers:
            self.add_auto(MAX_SCORE_PICKER, "no picker is configured", required=True)
        self.section_defaults(sections)
        self.resolve_section_refs(sections)
        effective = [self.resolve_profile(p, default_picker) for p in profiles]
        self.check_handlers(len(profiles))
        self.data_dependencies()
        return effective

    def implicit_profile(self, declared: list[Entry]) -> RawProfile:
        refs = [RawRef(e.name, None, e.path) for e in declared if PROFILE_KINDS & set(e.kinds)]
        return RawProfile(DEFAULT_PROFILE, "the implicit 'default' profile", refs, is_auto=True)

    def warn_unused(self, declared: list[Entry], profiles: list[RawProfile]) -> None:
        used = {ref.plugin_ref for p in profiles for ref in p.refs}
        for entry in declared:
            kinds = set(entry.kinds)
            if kinds and kinds <= PROFILE_KINDS and entry.name not in used:
                self.warn(f"{entry.path}: {entry.name!r} ({entry.type}) is not used by any profile")

    def add_auto(
        self,
        plugin_type: str,
        reason: str,
        *,
        required: bool,
        parameters: Mapping[str, Any] | None = None,
        params_path: str | None = None,
    ) -> bool:
        """Add ``plugin_type`` (name = type, default parameters unless ``parameters`` are
        forwarded from ``params_path``); whether it is there now."""
        existing = self.entries.get(plugin_type)
        if existing is not None:
            if existing.type == plugin_type:
                return True
            self.error(
                existing.path,
                f"{reason}, so {plugin_type!r} would be added by default, but "
                f"{existing.describe()} already has that name; rename it",
                plugin_type,
            )
            return False
        cls = self.lookup_optional(plugin_type)
        if cls is None:
            self.unavailable.add(plugin_type)
            if required:
                self.error(
                    AUTO_PATH,
                    f"{reason} and the default {plugin_type!r} is not available; "
                    "declare one in plugins",
                )
            return False
        record = Entry(plugin_type, plugin_type, AUTO_PATH, cls)
        record.spec = self.build_spec(
            record, parameters, params_path or f"(default {plugin_type}).parameters"
        )
        if record.spec is None:
            return False
        self.entries[plugin_type] = record
        self.auto.append(record.spec)
        return True

    def lookup_optional(self, plugin_type: str) -> builtins.type[Any] | None:
        if not self.may_be_registered(plugin_type):
            return None
        try:
            return registry.get(plugin_type)
        except UnknownPluginTypeError:
            return None
        except PluginLoadError as exc:
            self.warn(f"{plugin_type}: not added by default: {exc}")
            return None

    def may_be_registered(self, plugin_type: str) -> bool:
        """Whether ``registry.get`` could find ``plugin_type`` (no third-party import)."""
        return registry.is_registered(plugin_type)

    def section_defaults(self, sections: Sections) -> None:
        """System-default plugins of the sections later issues implement, in
        llm-d-router's order (``llm-d-router: pkg/epp/config/loader/defaults.go``,
        ``applySystemDefaults``): the flow-control policies, the parsers, the saturation
        detector, the data layer.

        Each is added only when its type is registered. A default of a later subsystem
        that is not is skipped quietly (logged once per process at debug level) and its
        reference is kept; ``warnings`` says when the ``flowControl`` gate asks for it.
        """
        missing = [t for t in FLOW_POLICIES if not self.add_auto(t, "flowControl", required=False)]
        for plugin_type in missing:
            debug_once(f"flowControl: default {plugin_type!r} is not available in this version")
        if missing and "flowControl" in self.gates:
            self.warn(
                f"flowControl: the flow-control policy plugins ({', '.join(missing)}) are not "
                "available in this version; requests are not queued"
            )
        for ref in sections.request_handler.refs:  # ensureParsers: a ref names a type
            if ref.name not in self.entries:
                self.add_parser(ref)
        detector = sections.saturation_detector
        if detector.refs and detector.refs[0].name == DETECTOR and DETECTOR not in self.entries:
            ref = detector.refs[0]
            if not self.add_auto(DETECTOR, "saturationDetector", required=False):
                self.warn(
                    f"{ref.path}: the default {DETECTOR!r} is not available in this version; "
                    "saturation detection is off"
                )
        self.data_layer_default(sections.data_layer)

    def add_parser(self, ref: SectionRef) -> None:
        """Instantiate a parser reference that names no instance, using it as the type
        (a default one that fails to load is skipped with a warning)."""
        if ref.defaulted and self.may_be_registered(ref.name):
            self.add_auto(ref.name, "requestHandler.parsers", required=False)
            return
        if ref.name in PARSER_TYPES and not self.may_be_registered(ref.name):
            where = "requestHandler.parsers" if ref.defaulted else ref.path
            default = "default " if ref.defaulted else "parser type "
            debug_once(
                f"{where}: {default}{ref.name!r} is not available in this version; "
                "request bodies are parsed by the embedder"
            )
            return
        if not self.may_be_registered(ref.name):
            return  # undefined: reported when references are resolved
        try:
            registry.get(ref.name)
        except (UnknownPluginTypeError, PluginLoadError) as exc:
            self.error(
                ref.path, f"the configured parser {ref.name!r} is not loaded: {exc}", ref.name
            )
            self.reported.add(ref.path)
            return
        if not self.add_auto(ref.name, ref.path, required=False):
            self.error(ref.path, f"the configured parser {ref.name!r} is not loaded", ref.name)
            self.reported.add(ref.path)

    def data_layer_default(self, section: Section) -> None:
        """``ensureDataLayer``: append the default source unless ``injectDefaults`` is
        false or a source already is a ``metrics-data-source``; additive (GIE replaced
        nothing when a ``dataLayer`` section was given)."""
        if not section.ok or "enableLegacyMetrics" in self.gates:
            return
        raw: dict[Any, Any] = {"injectDefaults": True} if section.raw is None else section.raw
        given = raw.get("sources") or ()
        if not isinstance(given, list | tuple):
            return  # not a list: the section check reports it
        sources = list(given)
        if raw.get("injectDefaults") is False or any(self.is_metrics_source(s) for s in sources):
            section.raw = raw
            self.warn_no_sources(sources)
            return
        types_ = (DATA_SOURCE, EXTRACTOR)
        if not all(t in self.entries or self.lookup_optional(t) for t in types_):
            self.warn(
                "dataLayer: metrics collection plugins are not available in this version; "
                "endpoint metrics must be written to the EndpointTable by the embedder"
            )
            section.raw = None if section.raw is None else raw
            self.warn_no_sources(sources)
            return
        if all(self.add_auto(t, "dataLayer", required=False) for t in types_):
            sources.append({"pluginRef": DATA_SOURCE, "extractors": [{"pluginRef": EXTRACTOR}]})
            section.raw = {"injectDefaults": True} | raw | {"sources": sources}

    def is_metrics_source(self, source: Any) -> bool:
        """A ``dataLayer`` source naming ``metrics-data-source`` (llm-d-router's test), or
        an instance of that type under another name."""
        ref = source.get("pluginRef") if isinstance(source, Mapping) else None
        entry = self.entries.get(ref) if isinstance(ref, str) else None
        return ref == DATA_SOURCE or (entry is not None and entry.type == DATA_SOURCE)

    def warn_no_sources(self, sources: list[Any]) -> None:
        if not sources:
            self.warn(
                "dataLayer: no sources, so endpoint metrics collection is disabled; "
                "endpoint metrics must be written to the EndpointTable by the embedder"
            )

    # .................................................................. resolving
    def resolve_profile(self, profile: RawProfile, default_picker: str) -> ProfileSpec:
        refs: list[ProfileRef] = []
        picker: RawRef | None = None
        seen: set[str] = set()
        for raw in profile.refs:
            entry = self.entries.get(raw.plugin_ref)
            if entry is None:
                self.undefined_ref(raw.path, raw.plugin_ref)
                continue
            kinds = set(entry.kinds)
            if not kinds & PROFILE_KINDS:
                # llm-d-router's AddPlugins skips such references (the plugin still runs
                # at its own extension points); its guides list producers in profiles.
                self.warn(
                    f"{raw.path}: plugin {entry.describe()} is a "
                    f"{'/'.join(entry.kinds) or 'plugin'}, not a filter, scorer or picker; "
                    "dropped from the profile (it runs at its own extension points)"
                )
                continue
            if raw.plugin_ref in seen:
                self.warn(
                    f"{raw.path}: {raw.plugin_ref!r} appears twice in {profile.label}; "
                    "it runs twice"
                )
            seen.add(raw.plugin_ref)
            if "picker" in kinds:
                if picker is not None:
                    self.error(
                        raw.path,
                        f"second picker {raw.plugin_ref!r} in {profile.label} (first: "
                        f"{picker.plugin_ref!r}); a profile has exactly one picker"
                        + ("; declare schedulingProfiles to choose" if profile.is_auto else ""),
                        raw.plugin_ref,
                    )
                    continue
                picker = raw
            weight = raw.weight
            if "scorer" in kinds:
                weight = DEFAULT_SCORER_WEIGHT if weight is None else weight
            elif weight is not None:
                self.warn(f"{raw.path}.weight: ignored, {raw.plugin_ref!r} is not a scorer")
                weight = None
            refs.append(ProfileRef(raw.plugin_ref, weight))
        if picker is None:
            refs.append(ProfileRef(default_picker))
        return ProfileSpec(profile.name, tuple(refs))

    def undefined_ref(self, path: str, name: str, *, sentence: bool = True) -> None:
        hint = did_you_mean(name, list(self.entries))
        if sentence:
            self.error(path, f"references undefined plugin {name!r}{hint}", name, sentence=True)
        else:
            self.error(path, f"undefined plugin {name!r}{hint}; declare it in plugins", name)

    def check_handlers(self, num_profiles: int) -> None:
        handlers = [e for e in self.entries.values() if "profile-handler" in e.kinds]
        if not handlers:
            if SINGLE_PROFILE_HANDLER in self.unavailable:
                return  # adding the default one failed, and said so
            self.error(
                "plugins",
                f"no profile handler configured: {num_profiles} profiles need a "
                f"profile-handler plugin ({SINGLE_PROFILE_HANDLER!r} runs exactly one profile)",
            )
        elif len(handlers) > 1:
            self.error(
                "plugins",
                "more than one profile handler: "
                + ", ".join(h.describe() for h in handlers)
                + "; keep exactly one",
            )
        elif handlers[0].type == SINGLE_PROFILE_HANDLER and num_profiles > 1:
            self.error(
                handlers[0].path,
                f"{SINGLE_PROFILE_HANDLER!r} runs exactly one profile, but "
                f"{num_profiles} are configured; use a multi-profile handler",
            )

    def resolve_section_refs(self, sections: Sections) -> None:
        """Section references name a declared plugin, or a default type (added here with
        default parameters when registered, as llm-d-router instantiates it if absent);
        llm-d-router's ``validateConfig`` and the resolution in ``flowcontrol.go``."""
        for section in sections.all():
            for ref in section.refs:
                if ref.path in self.reported:
                    continue
                if not ref.name:  # only a default can be empty
                    self.error(ref.path, f"{ref.kind.replace('-', ' ')} plugin reference is empty")
                    continue
                entry = self.entries.get(ref.name)
                if entry is None and ref.name in SYSTEM_TYPES:
                    tried = ref.name in self.unavailable
                    if self.add_auto(ref.name, ref.path, required=False):
                        entry = self.entries[ref.name]
                    elif ref.name in FUTURE_TYPES:
                        self.unresolved_ref(ref)  # kept quietly, if of the right kind
                        continue
                    elif tried:
                        continue  # the section default already said why
                    else:
                        self.warn(
                            f"{ref.path}: {ref.name!r} is a default plugin, but its type is "
                            "not available in this version; the reference has no effect"
                        )
                        continue
                if entry is None:
                    self.unresolved_ref(ref)
                elif not self.is_kind(entry, ref):
                    self.error(ref.path, _wrong_kind(entry, ref), ref.name)

    def unresolved_ref(self, ref: SectionRef) -> None:
        """A reference to no instance: a later subsystem's type (kept quietly, unless it
        is a type of another kind), or undefined."""
        unavailable = ref.name in self.unavailable or not self.may_be_registered(ref.name)
        if ref.name in FUTURE_TYPES and unavailable:
            other = next((k for k, t in POLICY_TYPES.items() if ref.name in t), "parser")
            if ref.known is not None and ref.name not in ref.known:
                self.error(
                    ref.path,
                    f"plugin {ref.name!r} does not implement the {ref.kind} interface (it is "
                    f"a {other} type)",
                    ref.name,
                )
                return
            debug_once(f"{ref.path}: {ref.name!r} is not available in this version")
            return
        hint = did_you_mean(ref.name, list(self.entries))
        template = _UNDEFINED.get(
            ref.kind, "undefined plugin {name!r}{hint}; declare it in plugins"
        )
        self.error(ref.path, template.format(name=ref.name, hint=hint), ref.name)

    @staticmethod
    def is_kind(entry: Entry, ref: SectionRef) -> bool:
        """Whether ``entry`` implements ``ref.kind``: by the registry's Protocol once it
        defines the kind, else by llm-d-router's types of that kind (if known)."""
        if ref.kind in registry.KINDS:
            return bool(_ACCEPTED_KINDS.get(ref.kind, {ref.kind}) & set(entry.kinds))
        return ref.known is None or entry.type in ref.known

    def undefined_refs_only(self, profiles: list[RawProfile], sections: Sections) -> None:
        """Reference checks possible while some plugin type failed to resolve."""
        for profile in profiles:
            for raw in profile.refs:
                if raw.plugin_ref not in self.entries and raw.plugin_ref not in SYSTEM_TYPES:
                    self.undefined_ref(raw.path, raw.plugin_ref)
        for section in sections.all():
            for ref in section.refs:
                if ref.name not in self.entries and ref.name not in SYSTEM_TYPES | FUTURE_TYPES:
                    self.unresolved_ref(ref)

    # .................................................................. data
    def data_dependencies(self) -> None:
        """Add default producers for consumed-but-unproduced keys, and reject producer
        cycles (step 8 of docs/configuration.md, "The defaulting pipeline")."""
        produced = {key for e in self.entries.values() for key in data_keys(e.cls, "produces")}
        i = 0
        entries = list(self.entries.values())
        while i < len(entries):  # auto-added producers may consume keys themselves
            consumer = entries[i]
            i += 1
            for key in sorted(_consumes(consumer) - produced):
                producer_type = registry.default_producer_for(key)
                source = self.producer_parameter_source(key)
                if producer_type is None or not self.add_auto(
                    producer_type,
                    f"{consumer.describe()} consumes {key!r}",
                    required=False,
                    parameters=_producer_parameters(source),
                    params_path=None if source is None else f"{source.path}.parameters",
                ):
                    effect = (
                        "scores 0 for every endpoint"
                        if "scorer" in consumer.kinds
                        else "runs without it"
                    )
                    self.warn(
                        f"{consumer.path}: {consumer.name!r} ({consumer.type}) consumes {key!r}, "
                        "which no plugin produces and no default producer is available, so it "
                        f"{effect}"
                    )
                    produced.add(key)  # warn once per key
                    continue
                added = self.entries[producer_type]
                if source is not None and added.path == AUTO_PATH:
                    self.forwarded[added.name] = source.name
                produced |= data_keys(added.cls, "produces") | {key}
                entries.append(added)
        self.warn_ignored_producer_parameters()
        self.check_producer_references()
        nodes = [
            DataNode(e.name, data_keys(e.cls, "produces"), _consumes(e))
            for e in self.entries.values()
        ]
        cycle = dependency_order(nodes).cycle
        if cycle:
            steps = ", ".join(
                f"{a!r} consumes what {b!r} produces" for a, b in itertools.pairwise(cycle)
            )
            self.error("plugins", f"data dependency cycle: {steps}; no order can run them")

    def check_producer_references(self) -> None:
        """Each ``…ProducerName`` parameter a Params declares (``producer_references()``)
        names a plugin of the config (declared or auto-created) that produces the key."""
        for entry in list(self.entries.values()):
            for key, (name, data_key) in _producer_references(entry).items():
                path = f"{entry.path}.parameters.{key}"
                target = self.entries.get(name)
                if target is None:
                    self.error(path, f"undefined plugin {name!r}; declare it in plugins", name)
                elif data_key not in data_keys(target.cls, "produces"):
                    self.error(
                        path, f"plugin {target.describe()} does not produce {data_key!r}", name
                    )

    def producer_parameter_source(self, key: str) -> Entry | None:
        """The first consumer of ``key`` whose parameters carry producer parameters (GIE's
        docs put the prefix producer's keys on ``prefix-cache-scorer``)."""
        for entry in self.entries.values():
            if key in data_keys(entry.cls, "consumes") and _producer_parameters(entry):
                return entry
        return None

    def warn_ignored_producer_parameters(self) -> None:
        """Producer parameters on a consumer that no auto-created producer was built with."""
        for entry in self.entries.values():
            given = _producer_parameters(entry)
            if not given:
                continue
            keys = data_keys(entry.cls, "consumes")
            producers = [e for e in self.entries.values() if keys & data_keys(e.cls, "produces")]
            if not producers or any(self.forwarded.get(p.name) == entry.name for p in producers):
                continue
            # Only values that differ are lost (an effective config written back repeats them).
            effective = [
                effective_parameters(p.spec.params, p.spec.parameters)
                for p in producers
                if p.spec is not None
            ]
            differing = [k for k, v in given.items() if any(e.get(k, v) != v for e in effective)]
            if not differing:
                continue
            self.warn(
                f"{entry.path}.parameters: {', '.join(differing)} ignored: "
                f"{', '.join(p.describe() for p in producers)} produces the data of "
                f"{entry.name!r} with its own parameters; set them there"
            )


_UNDEFINED_ANY: Final = "undefined plugin {name!r}{hint}; declare it in plugins"
_UNDEFINED: Final = {
    KIND_DETECTOR: "saturation detector references undefined plugin {name!r}{hint}; declare "
    "it in plugins",
    KIND_PARSER: "parser references undefined plugin {name!r}{hint}; declare it in plugins or "
    "name a parser type",
    FAIRNESS_POLICY: "plugin {name!r} not found{hint}; declare it in plugins",
    ORDERING_POLICY: "plugin {name!r} not found{hint}; declare it in plugins",
    USAGE_LIMIT_POLICY: "plugin {name!r} not found{hint}; declare it in plugins",
}
"""llm-d-router's wording for an undefined reference, by kind (``llm-d-router:
pkg/epp/config/loader/validation.go``, ``flowcontrol.go``)."""


def _wrong_kind(entry: Entry, ref: SectionRef) -> str:
    if ref.kind == KIND_PARSER:
        return f"the plugin {entry.describe()} is not a parser plugin"
    if ref.kind in POLICY_TYPES:
        return f"plugin {entry.describe()} does not implement the {ref.kind} interface"
    return f"plugin {entry.describe()} is not a {ref.kind}"


_logged: set[str] = set()
_logged_lock = threading.Lock()


def debug_once(message: str) -> None:
    """Log ``message`` at debug level, once per process (a default that is not available
    yet is not actionable: no warning on every load)."""
    with _logged_lock:
        if message in _logged:
            return
        _logged.add(message)
    log.debug("%s", message)


def _producer_parameters(entry: Entry | None) -> dict[str, Any] | None:
    """The producer parameters ``entry``'s Params forwards (``producer_parameters()``)."""
    params = entry.spec.params if entry is not None and entry.spec is not None else None
    method = getattr(params, "producer_parameters", None)
    return (dict(method()) or None) if callable(method) else None


def _consumes(entry: Entry) -> frozenset[str]:
    """The keys ``entry`` consumes: its class's ``consumes``, plus what its parameters
    switch on (a Params ``extra_consumes()``, e.g. ``predicted-latency-producer``'s
    ``useEncoderCacheFeatures``), so their default producers are created too."""
    keys = data_keys(entry.cls, "consumes")
    params = entry.spec.params if entry.spec is not None else None
    extra = getattr(params, "extra_consumes", None)
    return keys | frozenset(extra()) if callable(extra) else keys


def _producer_references(entry: Entry) -> dict[str, tuple[str, str]]:
    """The producers ``entry``'s Params names (``producer_references()``): parameter key
    → (plugin name, data key)."""
    params = entry.spec.params if entry.spec is not None else None
    method = getattr(params, "producer_references", None)
    return dict(method()) if callable(method) else {}
