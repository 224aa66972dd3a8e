"""The check of ``flowControl``: its keys, its saturation detector, its defaults.

The shape is llm-d-router's ``FlowControlConfig`` (``llm-d-router:
apix/config/v1alpha1/endpointpickerconfig_types.go``); the defaults are those of its
flow-control registry and controller (``llm-d-router: pkg/epp/flowcontrol/registry/
config.go``, ``pkg/epp/flowcontrol/controller/config.go``) and the errors those of
``pkg/epp/config/loader/flowcontrol.go``. With the ``flowControl`` gate on, the effective
section lists every key with its value; with the gate off it is kept as given (only
``saturationDetector`` is used then). The flow-control layer itself is a later issue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from inference_sched.framework.config.model import (
    BAND_MAX_BYTES,
    BAND_MAX_REQUESTS,
    DEFAULT_REQUEST_TTL,
    DETECTOR,
    FAIRNESS_POLICY,
    FLOW_POLICIES,
    MISSING,
    ORDERING_POLICY,
    POLICY_TYPES,
    USAGE_LIMIT_POLICY,
)
from inference_sched.framework.config.sections import Section, SectionChecker, SectionRef
from inference_sched.framework.config.values import parse_quantity
from inference_sched.params import describe

__all__ = ["FlowChecker"]

_ORDERING_DEFAULT, _FAIRNESS_DEFAULT, _USAGE_LIMIT_DEFAULT = FLOW_POLICIES
_BAND_KEYS: Final = ("maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef")
_FLOW_KEYS: Final = (
    "saturationDetector",
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "noEndpointRequestTTL",
    "defaultPriorityBand",
    "defaultNegativePriorityBand",
    "priorityBands",
    "usageLimitPolicyPluginRef",
    "enableEviction",
)
_BAND_POLICIES: Final = (
    ("fairnessPolicyRef", FAIRNESS_POLICY, _FAIRNESS_DEFAULT),
    ("orderingPolicyRef", ORDERING_POLICY, _ORDERING_DEFAULT),
)


class FlowChecker(SectionChecker):
    """:class:`~inference_sched.framework.config.sections.SectionChecker` plus
    ``flowControl``."""

    def flow_control_shape(self, raw: Any, deprecated_detector: Any) -> tuple[Section, Section]:
        """``flowControl`` and its saturation detector: the deprecated top-level
        ``saturationDetector`` is used only when ``flowControl.saturationDetector`` is
        unset (``llm-d-router: pkg/epp/config/loader/configloader.go``)."""
        section: Mapping[Any, Any] | None = None
        ok = True
        if raw is not MISSING and raw is not None:
            section = self.mapping(raw, "flowControl", "a mapping")
            ok = section is not None
        new = None if section is None else section.get("saturationDetector")
        detector = self.saturation_detector_shape(
            MISSING if new is None else new, "flowControl.saturationDetector"
        )
        old = self.saturation_detector_shape(deprecated_detector, "saturationDetector")
        if deprecated_detector is not MISSING and deprecated_detector is not None:
            if new is None:
                self.warn(
                    "saturationDetector: deprecated; write flowControl.saturationDetector "
                    "(it is used as that)"
                )
                detector = old
            else:
                self.warn(
                    "saturationDetector: deprecated and not used: "
                    "flowControl.saturationDetector is set (the new field wins); remove it"
                )
        if detector.raw is None and detector.ok and old.ok:
            detector = Section(
                {"pluginRef": DETECTOR},
                [self.detector_ref("flowControl.saturationDetector", DETECTOR, True)],
            )
        if not ok:
            return Section(None, ok=False), detector
        given = {k: v for k, v in (section or {}).items() if k != "saturationDetector"}
        gate_on = "flowControl" in self.gates
        if given and not gate_on:
            self.warn(
                "flowControl: ignored because the flowControl feature gate is off "
                "(add flowControl to featureGates); only saturationDetector is used, as in "
                "llm-d-router"
            )
        if section is None and not gate_on:
            return Section(None), detector
        self.check_keys(given, _FLOW_KEYS, "flowControl")
        out, refs = self.flow_values(given, fill=gate_on)
        if not out and not gate_on:
            return Section(None), detector
        return Section(out, refs), detector

    def flow_values(
        self, given: Mapping[Any, Any], *, fill: bool
    ) -> tuple[dict[str, Any], list[SectionRef]]:
        out: dict[str, Any] = dict(given)
        refs: list[SectionRef] = []
        for key in ("maxBytes", "maxRequests"):
            self.quantity(given, key, "flowControl", f"global {key[0].upper()}{key[1:]}")
        for key in ("defaultRequestTTL", "noEndpointRequestTTL"):
            if given.get(key) is not None:
                self.duration(given[key], f"flowControl.{key}")
        eviction = given.get("enableEviction")
        if eviction is not None and not isinstance(eviction, bool):
            self.error(
                "flowControl.enableEviction", f"expected a bool, got {describe(eviction)}", eviction
            )
        usage = self.name_field(given, "usageLimitPolicyPluginRef", "flowControl", required=False)
        refs.append(
            SectionRef(
                "flowControl.usageLimitPolicyPluginRef",
                usage or _USAGE_LIMIT_DEFAULT,
                USAGE_LIMIT_POLICY,
                usage is None,
                POLICY_TYPES[USAGE_LIMIT_POLICY],
            )
        )
        template: dict[str, Any] | None = None
        for key in ("defaultPriorityBand", "defaultNegativePriorityBand"):
            if given.get(key) is not None:
                band = self.band(given[key], f"flowControl.{key}", None, refs, fill=fill)
                out[key] = band
                template = band if key == "defaultPriorityBand" else template
        if fill:
            out.setdefault("maxBytes", 0)
            out.setdefault("maxRequests", 0)
            ttl = given.get("defaultRequestTTL")
            out["defaultRequestTTL"] = DEFAULT_REQUEST_TTL if ttl is None else ttl
            no_endpoint = given.get("noEndpointRequestTTL")
            out["noEndpointRequestTTL"] = (
                out["defaultRequestTTL"] if no_endpoint is None else no_endpoint
            )
            out["usageLimitPolicyPluginRef"] = usage or _USAGE_LIMIT_DEFAULT
            if template is None:
                template = self.band({}, "flowControl.defaultPriorityBand", None, refs, fill=True)
                out["defaultPriorityBand"] = template
            if given.get("defaultNegativePriorityBand") is None:
                out["defaultNegativePriorityBand"] = dict(template)
            out["enableEviction"] = False if eviction is None else eviction
        bands = self.sequence(
            given.get("priorityBands"), "flowControl.priorityBands", "a list of priority bands"
        )
        first_index: dict[int, int] = {}
        filled = []
        for i, item in enumerate(bands or []):
            path = f"flowControl.priorityBands[{i}]"
            priority = item.get("priority") if isinstance(item, Mapping) else None
            filled.append(self.band(item, path, priority, refs, fill=fill))
            if isinstance(priority, int) and not isinstance(priority, bool):
                if priority in first_index:
                    self.error(
                        f"{path}.priority",
                        f"duplicate priority level {priority}, also used by "
                        f"flowControl.priorityBands[{first_index[priority]}]",
                        priority,
                    )
                else:
                    first_index[priority] = i
        if bands is not None and "priorityBands" in given:
            out["priorityBands"] = filled
        return _ordered(out, _FLOW_KEYS), refs

    def band(
        self, raw: Any, path: str, priority: Any, refs: list[SectionRef], *, fill: bool
    ) -> dict[str, Any]:
        """A priority band (``priority`` is ``None`` for the two templates); filled in:
        caps 0 or omitted are 1,000,000,000 bytes / 5,000 requests, policies default to
        the global-strict fairness and FCFS ordering policies."""
        band = self.mapping(raw, path, "a mapping")
        if band is None:
            return {}
        is_template = not path.startswith("flowControl.priorityBands[")
        if is_template:
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
            elif isinstance(priority, bool) or not isinstance(priority, int):
                self.error(f"{path}.priority", f"expected int, got {describe(priority)}", priority)
        label = (
            f"priority band {priority}"
            if not is_template
            else "default priority band"
            if path.endswith("defaultPriorityBand")
            else "default negative priority band"
        )
        out = {k: v for k, v in band.items() if not (is_template and k == "priority")}
        for key, cap in (("maxBytes", BAND_MAX_BYTES), ("maxRequests", BAND_MAX_REQUESTS)):
            value = self.quantity(band, key, path, f"{label} {key[0].upper()}{key[1:]}")
            if fill and value in (None, 0):
                out[key] = cap
        for key, kind, policy in _BAND_POLICIES:
            ref = self.name_field(band, key, path, required=False)
            if ref is None and not fill:
                continue
            refs.append(
                SectionRef(f"{path}.{key}", ref or policy, kind, ref is None, POLICY_TYPES[kind])
            )
            out[key] = ref or policy
        return _ordered(out, ("priority", *_BAND_KEYS))

    def quantity(self, raw: Mapping[Any, Any], key: str, path: str, label: str) -> int | None:
        """``raw[key]`` as a Kubernetes quantity; ``None`` when absent or invalid."""
        value = raw.get(key)
        if value is None:
            return None
        try:
            return parse_quantity(value)
        except ValueError as exc:
            if str(exc).startswith("negative"):
                message = f"{label} must be non-negative, got {describe(value)}"
            else:
                message = (
                    "expected a non-negative quantity (an int, or a string such as '500', "
                    f"'10Gi', '1k'), got {describe(value)}"
                )
            self.error(f"{path}.{key}", message, value)
            return None


def _ordered(raw: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``raw`` with ``keys`` first, in that order (the effective config's key order)."""
    return {k: raw[k] for k in keys if k in raw} | raw
