"""The checks of the sections later subsystems own: requestHandler, the saturation
detector, dataLayer and the deprecated top-level saturationDetector and parser.

Each is shape-checked when the config loads and kept in llm-d-router's key spelling
with its static defaults filled in (a read-only mapping in the effective config); the
plugins it references are collected as :class:`SectionRef` and resolved once the
defaulting pipeline ran (:mod:`inference_sched.framework.config.phases`). The shapes
are llm-d-router's API types (``llm-d-router:
apix/config/v1alpha1/endpointpickerconfig_types.go``); ``flowControl`` is checked in
:mod:`inference_sched.framework.config.flow`. docs/configuration.md ("Shape") lists them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Final, cast

import attrs

from inference_sched.framework.config.checks import Checker
from inference_sched.framework.config.model import (
    DEFAULT_PARSERS,
    DETECTOR,
    MISSING,
    PARSER_TYPES,
    SYNC_INTERVAL,
)
from inference_sched.framework.config.values import freeze
from inference_sched.params import describe, parse_duration_s

__all__ = [
    "KIND_DETECTOR",
    "KIND_EXTRACTOR",
    "KIND_PARSER",
    "KIND_SOURCE",
    "Section",
    "SectionChecker",
    "SectionRef",
    "Sections",
    "freeze_section",
]

# Kinds that later subsystems add to registry.KINDS; a section reference is checked
# against its kind once the registry defines it (before that, against the known types).
KIND_DETECTOR: Final = "saturation-detector"
KIND_PARSER: Final = "parser"
KIND_SOURCE: Final = "data-source"
KIND_EXTRACTOR: Final = "extractor"
_KIND_DISCOVERY: Final = "endpoint-discovery"
_KIND_PEER_DISCOVERY: Final = "peer-discovery"
_KIND_SYNCER: Final = "cross-replica-syncer"

_DETECTOR_V12_KEYS: Final = (
    "queueDepthThreshold",
    "kvCacheUtilThreshold",
    "metricsStalenessThreshold",
)
_DATA_LAYER_KEYS: Final = (
    "injectDefaults",
    "sources",
    "discovery",
    "peerDiscovery",
    "crossReplicaSyncerPluginRef",
    "crossReplicaSyncInterval",
)


@attrs.frozen
class SectionRef:
    path: str
    name: str
    kind: str
    defaulted: bool = False
    """The key was absent or empty and ``name`` is the default for it."""
    known: frozenset[str] | None = None
    """The llm-d-router types of ``kind``, for the kind check while the registry does
    not define ``kind`` (``None``: not checked then)."""


@attrs.define
class Section:
    """A later-subsystem section: its mapping (defaults filled) and its references."""

    raw: dict[Any, Any] | None
    refs: list[SectionRef] = attrs.Factory(list)
    ok: bool = True


@attrs.define
class Sections:
    saturation_detector: Section
    data_layer: Section
    flow_control: Section
    request_handler: Section

    def all(self) -> tuple[Section, ...]:
        return (self.flow_control, self.request_handler, self.saturation_detector, self.data_layer)


def freeze_section(section: Section) -> Mapping[str, Any] | None:
    """The section as the effective config keeps it (read-only), or ``None``."""
    return None if section.raw is None else cast("Mapping[str, Any]", freeze(section.raw))


class SectionChecker(Checker):
    """:class:`~inference_sched.framework.config.checks.Checker` plus the checks of the
    later subsystems' sections; each returns the section and the references it holds."""

    # .................................................................. detector
    def saturation_detector_shape(self, raw: Any, path: str) -> Section:
        """``{pluginRef}`` at ``path`` (``flowControl.saturationDetector``, or the
        deprecated top-level ``saturationDetector``); absent, empty or null means the
        default ``utilization-detector`` (``llm-d-router: pkg/epp/config/loader/
        defaults.go``, ``ensureSaturationDetector``)."""
        if raw is MISSING or raw is None:
            return Section(None)
        section = self.mapping(raw, path, "a mapping with key pluginRef")
        if section is None:
            return Section(None, ok=False)
        for key in section:
            if key in _DETECTOR_V12_KEYS:
                self.error(
                    path,
                    f"unknown key {key!r}: GIE v1.2's saturationDetector thresholds are now "
                    f"parameters of the {DETECTOR!r} plugin; declare it in plugins with "
                    f"parameters {{{key}: ...}} and set {path}.pluginRef",
                    key,
                )
        self.check_keys(
            {k: v for k, v in section.items() if k not in _DETECTOR_V12_KEYS}, ("pluginRef",), path
        )
        ref = self.name_field(section, "pluginRef", path, required=False)
        if ref is None:
            return Section({"pluginRef": DETECTOR}, [self.detector_ref(path, DETECTOR, True)])
        return Section({"pluginRef": ref}, [self.detector_ref(path, ref, False)])

    @staticmethod
    def detector_ref(path: str, name: str, defaulted: bool) -> SectionRef:
        return SectionRef(f"{path}.pluginRef", name, KIND_DETECTOR, defaulted)

    # .................................................................. parsers
    def request_handler_shape(self, raw: Any, deprecated: Any) -> Section:
        """``requestHandler.parsers`` (``[{pluginRef}]``), after the deprecated top-level
        ``parser`` is mapped onto an empty list; an empty list is llm-d-router's default
        parsers (``llm-d-router: pkg/epp/config/loader/defaults.go``, ``ensureParsers``)."""
        refs: list[SectionRef] = []
        ok = True
        given = False
        if raw is not MISSING and raw is not None:
            section = self.mapping(raw, "requestHandler", "a mapping with key parsers")
            if section is None:
                ok = False
            else:
                self.check_keys(section, ("parsers",), "requestHandler")
                items = self.sequence(
                    section.get("parsers"), "requestHandler.parsers", "a list of {pluginRef}"
                )
                ok = items is not None
                for i, item in enumerate(items or []):
                    path = f"requestHandler.parsers[{i}]"
                    entry = self.mapping(item, path, "a mapping with key pluginRef")
                    if entry is None:
                        ok = False
                        continue
                    self.check_keys(entry, ("pluginRef",), path)
                    ref = self.name_field(entry, "pluginRef", path, required=True)
                    if ref is None:
                        ok = False
                    else:
                        refs.append(self.parser_ref(f"{path}.pluginRef", ref, False))
                given = bool(items)
        old = self.parser_shape(deprecated)
        if old is not None and not given and ok:
            refs = [old]
            self.warn(
                "parser: deprecated; write requestHandler.parsers: "
                f"[{{pluginRef: {old.name}}}] (it is used as that list)"
            )
        elif old is not None:
            self.warn(
                "parser: deprecated and not used: requestHandler.parsers is set (the new "
                "field wins); remove parser"
            )
        if not ok:
            return Section(None, ok=False)
        if not refs:
            refs = [
                self.parser_ref("requestHandler.parsers", name, True) for name in DEFAULT_PARSERS
            ]
        if not refs:  # only when there are no default parsers
            self.error("requestHandler.parsers", "no parsers configured")
        return Section({"parsers": [{"pluginRef": r.name} for r in refs]}, refs)

    @staticmethod
    def parser_ref(path: str, name: str, defaulted: bool) -> SectionRef:
        return SectionRef(path, name, KIND_PARSER, defaulted, PARSER_TYPES)

    def parser_shape(self, raw: Any) -> SectionRef | None:
        """The deprecated top-level ``parser: {pluginRef}``."""
        if raw is MISSING or raw is None:
            return None
        section = self.mapping(raw, "parser", "a mapping with key pluginRef")
        if section is None:
            return None
        self.check_keys(section, ("pluginRef",), "parser")
        ref = self.name_field(section, "pluginRef", "parser", required=True)
        return None if ref is None else self.parser_ref("parser.pluginRef", ref, False)

    # .................................................................. data layer
    def data_layer_shape(self, raw: Any) -> Section:
        """``dataLayer`` (``llm-d-router: apix/config/v1alpha1``, ``DataLayerConfig``):
        ``injectDefaults`` is filled in (true), ``crossReplicaSyncInterval`` too when a
        syncer is set; the default source is appended later (``Loader.data_layer_default``)."""
        if raw is MISSING or raw is None:
            return Section(None)
        section = self.mapping(raw, "dataLayer", "a mapping with key sources")
        if section is None:
            return Section(None, ok=False)
        self.check_keys(section, _DATA_LAYER_KEYS, "dataLayer")
        out: dict[str, Any] = {"injectDefaults": True} | dict(section)
        inject = section.get("injectDefaults")
        if inject is not None and not isinstance(inject, bool):
            self.error(
                "dataLayer.injectDefaults", f"expected a bool, got {describe(inject)}", inject
            )
        sources = self.sequence(
            section.get("sources"), "dataLayer.sources", "a list of {pluginRef, extractors}"
        )
        if inject is None and sources == [] and "sources" in section:
            inject = False
            self.warn(
                "dataLayer.sources: an empty list disables metrics collection as in GIE; "
                "llm-d-router would add its default source: write injectDefaults: false "
                "to say so"
            )
        out["injectDefaults"] = True if inject is None else inject
        refs = list(self.sources(sources or []))
        for key, kind in (("discovery", _KIND_DISCOVERY), ("peerDiscovery", _KIND_PEER_DISCOVERY)):
            if section.get(key) is None:
                continue
            path = f"dataLayer.{key}"
            entry = self.mapping(section[key], path, "a mapping with key pluginRef")
            if entry is not None:
                self.check_keys(entry, ("pluginRef",), path)
                ref = self.name_field(entry, "pluginRef", path, required=True)
                if ref is not None:
                    known = frozenset({"file-discovery"}) if key == "discovery" else None
                    refs.append(SectionRef(f"{path}.pluginRef", ref, kind, known=known))
        syncer = self.name_field(
            section, "crossReplicaSyncerPluginRef", "dataLayer", required=False
        )
        if syncer is not None:
            refs.append(SectionRef("dataLayer.crossReplicaSyncerPluginRef", syncer, _KIND_SYNCER))
        interval = section.get("crossReplicaSyncInterval")
        if interval is not None:
            self.duration(interval, "dataLayer.crossReplicaSyncInterval", example="200ms")
        elif syncer is not None:
            out["crossReplicaSyncInterval"] = SYNC_INTERVAL
        return Section(out, refs=refs)

    def sources(self, sources: list[Any]) -> list[SectionRef]:
        refs: list[SectionRef] = []
        for i, item in enumerate(sources):
            path = f"dataLayer.sources[{i}]"
            source = self.mapping(item, path, "a mapping with keys pluginRef, extractors")
            if source is None:
                continue
            self.check_keys(source, ("pluginRef", "extractors"), path)
            ref = self.name_field(source, "pluginRef", path, required=True)
            if ref is not None:
                refs.append(SectionRef(f"{path}.pluginRef", ref, KIND_SOURCE))
            extractors = self.sequence(
                source.get("extractors"), f"{path}.extractors", "a list of {pluginRef}"
            )
            for k, ext in enumerate(extractors or []):
                ext_path = f"{path}.extractors[{k}]"
                extractor = self.mapping(ext, ext_path, "a mapping with key pluginRef")
                if extractor is None:
                    continue
                self.check_keys(extractor, ("pluginRef",), ext_path)
                ext_ref = self.name_field(extractor, "pluginRef", ext_path, required=True)
                if ext_ref is not None:
                    refs.append(SectionRef(f"{ext_path}.pluginRef", ext_ref, KIND_EXTRACTOR))
        return refs

    # .................................................................. values
    def duration(self, raw: Any, path: str, *, example: str = "60s") -> None:
        seconds = -1.0
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                seconds = parse_duration_s(raw)
        if seconds < 0:
            self.error(
                path,
                f"expected a non-negative duration such as {example!r}, got {describe(raw)}",
                raw,
            )
