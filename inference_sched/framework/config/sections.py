"""The checks of the sections later subsystems own: saturationDetector, dataLayer,
flowControl and parser.

Each is shape-checked when the config loads and kept as given (a read-only mapping in
GIE's key spelling); the plugins it references are collected as :class:`SectionRef` and
resolved once the defaulting pipeline ran (:mod:`inference_sched.framework.config.phases`).
The shapes are GIE's API types (``gateway-api-inference-extension:
apix/config/v1alpha1``); docs/configuration.md ("Shape") lists them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Final, cast

import attrs

from inference_sched.framework.config.checks import Checker
from inference_sched.framework.config.model import DETECTOR, MISSING
from inference_sched.framework.config.values import freeze, parse_quantity
from inference_sched.params import describe, parse_duration_s

__all__ = ["Section", "SectionChecker", "SectionRef", "Sections", "freeze_section"]

# Kinds that later subsystems add to registry.KINDS; a section reference is checked
# against its kind once the registry defines it.
_KIND_DETECTOR: Final = "saturation-detector"
_KIND_PARSER: Final = "parser"
_KIND_SOURCE: Final = "data-source"
_KIND_EXTRACTOR: Final = "extractor"
_KIND_FAIRNESS: Final = "fairness-policy"
_KIND_ORDERING: Final = "ordering-policy"
_KIND_USAGE_LIMIT: Final = "usage-limit-policy"

_BAND_KEYS: Final = ("maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef")
_FLOW_KEYS: Final = (
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "usageLimitPolicyPluginRef",
    "defaultPriorityBand",
    "priorityBands",
)
_DETECTOR_V12_KEYS: Final = (
    "queueDepthThreshold",
    "kvCacheUtilThreshold",
    "metricsStalenessThreshold",
)


@attrs.frozen
class SectionRef:
    path: str
    name: str
    kind: str
    defaulted: bool = False
    """The key was absent or empty and ``name`` is GIE's default for it."""


@attrs.define
class Section:
    """A later-subsystem section: its raw mapping and the references it holds."""

    raw: dict[Any, Any] | None
    refs: list[SectionRef] = attrs.Factory(list)
    ok: bool = True


@attrs.define
class Sections:
    saturation_detector: Section
    data_layer: Section
    flow_control: Section
    parser: Section

    def all(self) -> tuple[Section, ...]:
        return (self.saturation_detector, self.data_layer, self.flow_control, self.parser)


def freeze_section(section: Section) -> Mapping[str, Any] | None:
    """The section as the effective config keeps it (read-only), or ``None``."""
    return None if section.raw is None else cast("Mapping[str, Any]", freeze(section.raw))


class SectionChecker(Checker):
    """:class:`~inference_sched.framework.config.checks.Checker` plus the checks of the
    later subsystems' sections; each returns the section and the references it holds."""

    def saturation_detector_shape(self, raw: Any) -> Section:
        if raw is MISSING or raw is None:
            return Section(None)
        section = self.mapping(raw, "saturationDetector", "a mapping with key pluginRef")
        if section is None:
            return Section(None, ok=False)
        for key in section:
            if key in _DETECTOR_V12_KEYS:
                self.error(
                    "saturationDetector",
                    f"unknown key {key!r}: GIE v1.2's saturationDetector thresholds are now "
                    f"parameters of the {DETECTOR!r} plugin; declare it in plugins with "
                    f"parameters {{{key}: ...}} and set saturationDetector.pluginRef",
                    key,
                )
        self.check_keys(
            {k: v for k, v in section.items() if k not in _DETECTOR_V12_KEYS},
            ("pluginRef",),
            "saturationDetector",
        )
        ref = self.name_field(section, "pluginRef", "saturationDetector", required=False)
        return Section(
            dict(section),
            refs=[
                SectionRef(
                    "saturationDetector.pluginRef", ref or DETECTOR, _KIND_DETECTOR, ref is None
                )
            ],
        )

    def parser_shape(self, raw: Any) -> Section:
        if raw is MISSING or raw is None:
            return Section(None)
        section = self.mapping(raw, "parser", "a mapping with key pluginRef")
        if section is None:
            return Section(None, ok=False)
        self.check_keys(section, ("pluginRef",), "parser")
        ref = self.name_field(section, "pluginRef", "parser", required=True)
        refs = [SectionRef("parser.pluginRef", ref, _KIND_PARSER)] if ref is not None else []
        return Section(dict(section), refs=refs)

    def data_layer_shape(self, raw: Any) -> Section:
        if raw is MISSING or raw is None:
            return Section(None)
        section = self.mapping(raw, "dataLayer", "a mapping with key sources")
        if section is None:
            return Section(None, ok=False)
        self.check_keys(section, ("sources",), "dataLayer")
        sources = self.sequence(
            section.get("sources"), "dataLayer.sources", "a list of {pluginRef, extractors}"
        )
        refs: list[SectionRef] = []
        for i, item in enumerate(sources or []):
            path = f"dataLayer.sources[{i}]"
            source = self.mapping(item, path, "a mapping with keys pluginRef, extractors")
            if source is None:
                continue
            self.check_keys(source, ("pluginRef", "extractors"), path)
            ref = self.name_field(source, "pluginRef", path, required=True)
            if ref is not None:
                refs.append(SectionRef(f"{path}.pluginRef", ref, _KIND_SOURCE))
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
                    refs.append(SectionRef(f"{ext_path}.pluginRef", ext_ref, _KIND_EXTRACTOR))
        if sources == []:
            self.warn(
                "dataLayer: no sources, so endpoint metrics collection is disabled (as in GIE); "
                "endpoint metrics must be written to the EndpointTable by the embedder"
            )
        return Section(dict(section), refs=refs)

    def flow_control_shape(self, raw: Any) -> Section:
        if raw is MISSING or raw is None:
            return Section(None)
        section = self.mapping(raw, "flowControl", "a mapping")
        if section is None:
            return Section(None, ok=False)
        self.check_keys(section, _FLOW_KEYS, "flowControl")
        refs: list[SectionRef] = []
        self.quantities(section, "flowControl")
        ttl = section.get("defaultRequestTTL")
        if ttl is not None:
            self.duration(ttl, "flowControl.defaultRequestTTL")
        ref = self.name_field(section, "usageLimitPolicyPluginRef", "flowControl", required=False)
        if ref is not None:
            refs.append(SectionRef("flowControl.usageLimitPolicyPluginRef", ref, _KIND_USAGE_LIMIT))
        default_band = section.get("defaultPriorityBand")
        if default_band is not None:
            refs += self.band(default_band, "flowControl.defaultPriorityBand", is_default=True)
        bands = self.sequence(
            section.get("priorityBands"), "flowControl.priorityBands", "a list of priority bands"
        )
        first_index: dict[int, int] = {}
        for i, item in enumerate(bands or []):
            path = f"flowControl.priorityBands[{i}]"
            refs += self.band(item, path, is_default=False)
            priority = item.get("priority") if isinstance(item, Mapping) else None
            if isinstance(priority, int) and not isinstance(priority, bool):
                if priority in first_index:
                    self.error(
                        f"{path}.priority",
                        f"duplicate priority {priority}, also used by "
                        f"flowControl.priorityBands[{first_index[priority]}]",
                        priority,
                    )
                else:
                    first_index[priority] = i
        if "flowControl" not in self.gates:
            self.warn(
                "flowControl: ignored because the flowControl feature gate is off "
                "(add flowControl to featureGates), as in GIE"
            )
        return Section(dict(section), refs=refs)

    def band(self, raw: Any, path: str, *, is_default: bool) -> list[SectionRef]:
        band = self.mapping(raw, path, "a mapping")
        if band is None:
            return []
        if is_default:
            if "priority" in band:
                self.warn(
                    f"{path}.priority: ignored; the default band applies to every priority "
                    "without a band of its own"
                )
            self.check_keys({k: v for k, v in band.items() if k != "priority"}, _BAND_KEYS, path)
        else:
            self.check_keys(band, ("priority", *_BAND_KEYS), path)
            if "priority" not in band:
                self.error(f"{path}.priority", "required key is missing")
            else:
                priority = band["priority"]
                if isinstance(priority, bool) or not isinstance(priority, int):
                    self.error(
                        f"{path}.priority", f"expected int, got {describe(priority)}", priority
                    )
        self.quantities(band, path)
        refs = []
        for key, kind in (
            ("fairnessPolicyRef", _KIND_FAIRNESS),
            ("orderingPolicyRef", _KIND_ORDERING),
        ):
            ref = self.name_field(band, key, path, required=False)
            if ref is not None:
                refs.append(SectionRef(f"{path}.{key}", ref, kind))
        return refs

    def quantities(self, raw: Mapping[Any, Any], path: str) -> None:
        for key in ("maxBytes", "maxRequests"):
            value = raw.get(key)
            if value is None:
                continue
            try:
                parse_quantity(value)
            except ValueError:
                self.error(
                    f"{path}.{key}",
                    "expected a non-negative quantity (an int, or a string such as '500', "
                    f"'10Gi', '1k'), got {describe(value)}",
                    value,
                )

    def duration(self, raw: Any, path: str) -> None:
        seconds = -1.0
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                seconds = parse_duration_s(raw)
        if seconds < 0:
            self.error(
                path, f"expected a non-negative duration such as '60s', got {describe(raw)}", raw
            )
