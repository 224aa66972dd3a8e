"""The checks of a config's own sections: top-level keys, featureGates, plugins, profiles.

Each check records every problem it finds (path, message, offending value) and goes on,
so a load reports them all at once (:mod:`inference_sched.framework.config.phases`).
llm-d-router's loader stops at the first (``llm-d-router:
pkg/epp/config/loader/configloader.go``, ``LoadRawConfig`` and ``loadFeatureConfig``;
``validation.go``); docs/configuration.md ("Errors") describes ours.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import attrs

from inference_sched.errors import (
    ConfigError,
    ParameterError,
    PluginLoadError,
    UnknownPluginTypeError,
    redact,
)
from inference_sched.framework import registry
from inference_sched.framework.config.model import (
    API_VERSION,
    API_VERSIONS,
    AUTO_PATH,
    FEATURE_GATE_DEFAULTS,
    FEATURE_GATES,
    GIE_API_VERSION,
    GIE_FEATURE_GATES,
    KIND,
    MISSING,
    PluginSpec,
    did_you_mean,
    join_path,
)
from inference_sched.framework.config.values import freeze
from inference_sched.params import closest, describe, parse_params

__all__ = ["Checker", "Entry", "RawProfile", "RawRef"]

_TOP_KEYS: Final = (
    "apiVersion",
    "kind",
    "featureGates",
    "plugins",
    "schedulingProfiles",
    "requestHandler",
    "flowControl",
    "dataLayer",
    "saturationDetector",
    "parser",
)
_PLUGIN_KEYS: Final = ("type", "name", "parameters")
_PROFILE_KEYS: Final = ("name", "plugins")
_REF_KEYS: Final = ("pluginRef", "weight")
_KEY_HINTS: Final = {
    "data": "GIE's documentation writes `data:`, but its decoder reads `dataLayer`",
}


@attrs.define
class Entry:
    """A ``plugins`` entry (or an auto-added plugin) as far as it resolved."""

    name: str
    type: str
    path: str
    cls: builtins.type[Any] | None = None
    spec: PluginSpec | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return registry.kinds_of(self.cls) if self.cls is not None else ()

    def describe(self) -> str:
        where = "added by default" if self.path == AUTO_PATH else self.path
        return f"{self.name!r} ({self.type}, {where})"


@attrs.define
class RawRef:
    """A ``schedulingProfiles[].plugins`` entry as written (resolved by the pipeline)."""

    plugin_ref: str
    weight: float | None
    path: str


@attrs.define
class RawProfile:
    """A ``schedulingProfiles`` entry as written; ``label`` names it in messages."""

    name: str
    label: str
    refs: list[RawRef]
    is_auto: bool = False


MAX_MESSAGE_CHARS: Final = 2000
_TRUE: Final = frozenset({"1", "t", "true"})
_FALSE: Final = frozenset({"0", "f", "false"})


def _parse_bool(text: str) -> bool | None:
    """``strconv.ParseBool(strings.ToLower(strings.TrimSpace(text)))``; ``None`` if invalid."""
    value = text.strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def shown(message: str) -> str:
    """``message`` as a config error or warning shows it: credentials redacted, at most
    :data:`MAX_MESSAGE_CHARS` characters (a value rendered into it may be huge)."""
    message = redact(message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return message


class Checker:
    """The problems and warnings of one load, and the checks that find them.

    Args:
        document: the parsed document (checked to be a mapping by the loader).
    """

    def __init__(self, document: Any) -> None:
        self.document = document
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []
        self.entries: dict[str, Entry] = {}
        """Plugin instances by name: the declared ones, then those the pipeline added."""
        self.gates: tuple[str, ...] = ()
        """The gates that are on (given or by default)."""
        self.gate_entries: tuple[str, ...] = ()
        """``featureGates`` normalised: ``name`` or ``name=false``, one per gate."""

    # ------------------------------------------------------------------ plumbing
    def error(
        self, path: str, message: str, value: Any = MISSING, *, sentence: bool = False
    ) -> ConfigError:
        """Record ``path: message`` (``path message`` when ``sentence``); the message is
        capped and its credentials redacted (:func:`shown`)."""
        message = shown(message)
        error = (
            ConfigError(message, path=path)
            if value is MISSING
            else ConfigError(message, path=path, value=value)
        )
        if sentence:
            error.args = (f"{path} {message}",)
        self.errors.append(error)
        return error

    def warn(self, message: str) -> None:
        message = shown(message)
        if message not in self.warnings:
            self.warnings.append(message)

    def check_keys(self, raw: Mapping[Any, Any], known: Sequence[str], path: str) -> None:
        for key in raw:
            if isinstance(key, str) and key in known:
                continue
            near = closest(str(key), known)
            notes = [f"did you mean {near[0]!r}?"] if near else []
            if key in _KEY_HINTS:
                notes.append(_KEY_HINTS[key])
            hint = f" ({' '.join(notes)})" if notes else ""
            self.error(path, f"unknown key {key!r}{hint}; known keys: {', '.join(known)}", key)

    def mapping(self, raw: Any, path: str, what: str = "a mapping") -> Mapping[Any, Any] | None:
        if isinstance(raw, Mapping):
            return raw
        self.error(path, f"expected {what}, got {describe(raw)}", raw)
        return None

    def sequence(self, raw: Any, path: str, what: str) -> list[Any] | None:
        """A list (``None`` as empty); an error for anything else."""
        if raw is None:
            return []
        if isinstance(raw, list | tuple):
            return list(raw)
        self.error(path, f"expected {what}, got {describe(raw)}", raw)
        return None

    def name_field(
        self, raw: Mapping[Any, Any], key: str, path: str, *, required: bool
    ) -> str | None:
        """A non-empty str at ``raw[key]``; ``None`` when absent/null/empty and optional."""
        where = join_path(path, key)
        if key not in raw:
            if required:
                self.error(where, "required key is missing")
            return None
        value = raw[key]
        if isinstance(value, str) and value:
            return value
        if not required and (value is None or value == ""):
            return None
        self.error(where, f"expected a non-empty str, got {describe(value)}", value)
        return None

    def lookup(self, plugin_type: str, path: str) -> builtins.type[Any] | None:
        try:
            return registry.get(plugin_type)
        except UnknownPluginTypeError as exc:
            self.errors.append(UnknownPluginTypeError(plugin_type, exc.suggestions, path=path))
        except PluginLoadError as exc:
            error = self.error(path, str(exc), plugin_type)
            error.__cause__ = exc
        return None

    # ------------------------------------------------------------------ top level
    def check_top_keys(self, top: Mapping[Any, Any]) -> None:
        self.check_keys(top, _TOP_KEYS, "")

    def api_version(self, top: Mapping[Any, Any]) -> str:
        value = top.get("apiVersion")
        if value is None:
            return API_VERSION
        if isinstance(value, str) and value in API_VERSIONS:
            if value == GIE_API_VERSION:
                self.warn(
                    f"apiVersion: {GIE_API_VERSION!r} is deprecated; write {API_VERSION!r} "
                    "(the same schema)"
                )
            return value
        hint = did_you_mean(value, API_VERSIONS) if isinstance(value, str) else ""
        self.error(
            "apiVersion",
            f"expected one of {', '.join(map(repr, API_VERSIONS))}, got {describe(value)}{hint}",
            value,
        )
        return API_VERSION

    def kind(self, top: Mapping[Any, Any]) -> str:
        value = top.get("kind")
        if value is None or value == KIND:
            return KIND
        hint = did_you_mean(value, [KIND]) if isinstance(value, str) else ""
        self.error("kind", f"expected {KIND!r}, got {describe(value)}{hint}", value)
        return KIND

    def feature_gates(self, raw: Any) -> tuple[str, ...]:
        """``featureGates`` as llm-d-router reads it (``llm-d-router: cmd/epp/runner/
        runner.go``, ``loadFeatureConfig``): ``name``, ``name=true`` or ``name=false``;
        the name is not trimmed, the value is (``strconv.ParseBool``, case-insensitive).
        Returns the gates that are on, registered defaults included."""
        items = self.sequence(raw, "featureGates", "a list of feature gate names")
        values: dict[str, bool] = {}
        for i, gate in enumerate(items or []):
            path = f"featureGates[{i}]"
            if not isinstance(gate, str):
                self.error(path, f"expected a feature gate name, got {describe(gate)}", gate)
                continue
            name, has_value, text = gate.partition("=")
            known = (*FEATURE_GATES, *GIE_FEATURE_GATES)
            if name not in known:
                self.error(
                    path,
                    f"feature gate {name!r} is unknown or unregistered"
                    f"{did_you_mean(name, known)}; known gates: {', '.join(FEATURE_GATES)} "
                    f"(GIE's, deprecated: {', '.join(GIE_FEATURE_GATES)})",
                    gate,
                )
                continue
            value = _parse_bool(text) if has_value else True
            if value is None:
                self.error(
                    path,
                    f"{text!r} is not a valid value for the feature gate {name!r} "
                    "(expected one of 1, t, true, 0, f, false)",
                    gate,
                )
                continue
            if name in GIE_FEATURE_GATES:
                self.warn(
                    f"{path}: {name!r} is a GIE feature gate that llm-d-router no longer "
                    "registers"
                    + (
                        " (the data layer is always on); remove it"
                        if name == "dataLayer"
                        else "; remove it, and set dataLayer.injectDefaults: false to "
                        "stop the default metrics collection"
                    )
                )
            values.pop(name, None)  # the last entry wins; keep the order of the last one
            values[name] = value
        self.gate_entries = tuple(n if v else f"{n}=false" for n, v in values.items())
        effective = {**FEATURE_GATE_DEFAULTS, **values}
        return tuple(n for n, v in effective.items() if v)

    # .................................................................. plugins
    def plugins_phase(self, raw: Any) -> None:
        items = self.sequence(raw, "plugins", "a list of plugin entries {type, name?, parameters?}")
        first_index: dict[str, int] = {}
        for i, item in enumerate(items or []):
            path = f"plugins[{i}]"
            entry = self.mapping(item, path, "a mapping with keys type, name?, parameters?")
            if entry is None:
                continue
            self.check_keys(entry, _PLUGIN_KEYS, path)
            plugin_type = self.name_field(entry, "type", path, required=True)
            given_name = self.name_field(entry, "name", path, required=False)
            name = given_name or plugin_type
            if name is None:
                continue
            if name in first_index:
                defaulted = "" if given_name else " (the name defaults to the type)"
                self.error(
                    f"{path}.name" if given_name else path,
                    f"duplicate plugin name {name!r}{defaulted}, also used by "
                    f"plugins[{first_index[name]}]; give each instance a distinct name",
                    name,
                )
                continue
            first_index[name] = i
            record = Entry(name, plugin_type or "", path)
            self.entries[name] = record
            if plugin_type is None:
                continue
            record.cls = self.lookup(plugin_type, f"{path}.type")
            if record.cls is not None:
                record.spec = self.build_spec(record, entry.get("parameters"), f"{path}.parameters")

    def build_spec(self, record: Entry, raw_params: Any, params_path: str) -> PluginSpec | None:
        assert record.cls is not None, "build_spec needs a resolved class"
        params = self.parse_plugin_params(record.cls, record.type, raw_params, params_path)
        if params is MISSING:
            return None
        frozen = None if raw_params is None else cast("Mapping[str, Any]", freeze(raw_params))
        is_auto = record.path == AUTO_PATH
        return PluginSpec(
            record.type, record.name, params, record.cls, record.path, frozen, is_auto
        )

    def parse_plugin_params(
        self, cls: builtins.type[Any], plugin_type: str, raw: Any, path: str
    ) -> Any:
        try:
            return parse_params(cls.Params, raw, path, warn=self.warn)
        except ParameterError as exc:
            self.errors.extend(exc.errors)
        # A plugin's Params is third-party code: a check that raises something other
        # than ParamCheck is still a bad parameter, not a loader crash.
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            error = ParameterError(
                f"rejected by {plugin_type}: {type(exc).__name__}: {exc}", path=path, value=raw
            )
            error.__cause__ = exc
            self.errors.append(error)
        return MISSING

    # .................................................................. profiles
    def profiles_phase(self, raw: Any) -> list[RawProfile] | None:
        items = self.sequence(raw, "schedulingProfiles", "a list of profiles {name, plugins}")
        if items is None:
            return None
        profiles: list[RawProfile] = []
        first_index: dict[str, int] = {}
        for j, item in enumerate(items):
            path = f"schedulingProfiles[{j}]"
            entry = self.mapping(item, path, "a mapping with keys name, plugins")
            if entry is None:
                continue
            self.check_keys(entry, _PROFILE_KEYS, path)
            name = self.name_field(entry, "name", path, required=True)
            if name is not None and name in first_index:
                self.error(
                    f"{path}.name",
                    f"duplicate profile name {name!r}, also used by "
                    f"schedulingProfiles[{first_index[name]}]",
                    name,
                )
                continue
            if name is not None:
                first_index[name] = j
            label = f"schedulingProfiles[{name if name is not None else j}]"
            refs = self.profile_refs(entry.get("plugins"), label)
            if name is not None:
                profiles.append(RawProfile(name, label, refs))
        # Given but none valid: no implicit profile either (its errors would mislead).
        return None if items and not profiles else profiles

    def profile_refs(self, raw: Any, label: str) -> list[RawRef]:
        items = self.sequence(raw, f"{label}.plugins", "a list of {pluginRef, weight?}")
        refs: list[RawRef] = []
        for k, item in enumerate(items or []):
            path = f"{label}.plugins[{k}]"
            entry = self.mapping(item, path, "a mapping with keys pluginRef, weight?")
            if entry is None:
                continue
            self.check_keys(entry, _REF_KEYS, path)
            plugin_ref = self.name_field(entry, "pluginRef", path, required=True)
            weight = self.weight(entry.get("weight"), f"{path}.weight")
            if plugin_ref is not None and weight is not MISSING:
                refs.append(RawRef(plugin_ref, weight, path))
        return refs

    def weight(self, raw: Any, path: str) -> Any:
        if raw is None:
            return None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            try:
                value = float(raw)
            except OverflowError:
                value = math.inf
            if math.isfinite(value):
                return value
        self.error(path, f"expected a finite number, got {describe(raw)}", raw)
        return MISSING
