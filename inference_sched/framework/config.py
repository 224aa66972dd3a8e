"""Loading GIE's ``EndpointPickerConfig`` from YAML text, a file, or a parsed mapping.

Design note. Loading follows GIE's pipeline (``specs/gie.md`` §3.2) in phases. Each phase
collects every problem it finds, and the loader raises one :class:`ConfigError` listing
them all; it stops early only when a later phase cannot run (the YAML does not parse, or
the document is not a mapping):

1. **document**: YAML through a safe loader that rejects duplicate keys;
2. **shape**: top-level keys, ``apiVersion``/``kind``, ``featureGates`` and the sections
   owned by later subsystems (``saturationDetector``, ``dataLayer``, ``flowControl``,
   ``parser``), which are shape-checked now and kept as given;
3. **plugins**: ``name := type``, unique names, registered types, typed parameters;
4. **profiles**: names, references and weights as written;
5. **system defaults** (needs every plugin's class): the implicit ``default`` profile,
   ``single-profile-handler``, ``max-score-picker``, scorer weight 1.0, then the plugins
   of later sections *when their types are registered*; references are resolved against
   the result, as GIE validates after defaulting;
6. **data dependencies**: a default producer for every consumed key nobody produces
   (built with the producer parameters a consumer's ``Params.producer_parameters()``
   carries, as GIE's docs put the prefix producer's keys on ``prefix-cache-scorer``), and
   no producer cycles.

The result is the *effective* config: exactly what the scheduler builds, with every
plugin the pipeline added listed (``is_auto``) and everything skipped explained in
``warnings``. It never lists a plugin that cannot be built.
"""

from __future__ import annotations

import builtins
import contextlib
import fractions
import itertools
import math
import os
import re
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import attrs
import yaml

from inference_sched.errors import (
    ConfigError,
    ParameterError,
    PluginLoadError,
    UnknownPluginTypeError,
)
from inference_sched.framework import registry
from inference_sched.params import DEPRECATED_KEY as _DEPRECATED
from inference_sched.params import PARSE_KEY as _PARSE
from inference_sched.params import closest, describe, parse_duration_s, parse_params

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "FEATURE_GATES",
    "KIND",
    "EndpointPickerConfig",
    "PluginSpec",
    "ProfileRef",
    "ProfileSpec",
    "default_config",
    "effective_parameters",
    "load_config",
    "load_config_file",
    "parse_quantity",
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
_ORDERING_POLICY: Final = "fcfs-ordering-policy"
_FAIRNESS_POLICY: Final = "global-strict-fairness-policy"
_USAGE_LIMIT_POLICY: Final = "static-usage-limit-policy"
_FLOW_POLICIES: Final = (_ORDERING_POLICY, _FAIRNESS_POLICY, _USAGE_LIMIT_POLICY)
_PARSER: Final = "openai-parser"
_DETECTOR: Final = "utilization-detector"
_DATA_SOURCE: Final = "metrics-data-source"
_EXTRACTOR: Final = "core-metrics-extractor"
_SYSTEM_TYPES: Final = frozenset(
    {SINGLE_PROFILE_HANDLER, MAX_SCORE_PICKER, *_FLOW_POLICIES, _PARSER, _DETECTOR}
    | {_DATA_SOURCE, _EXTRACTOR}
)
"""Types the pipeline may add by name; a reference to one is not reported as undefined
while the plugins phase has errors (the pipeline could not run to add it)."""

_PROFILE_KINDS: Final = frozenset({"filter", "scorer", "picker"})
# Kinds that later subsystems add to registry.KINDS; a section reference is checked
# against its kind once the registry defines it.
_KIND_DETECTOR: Final = "saturation-detector"
_KIND_PARSER: Final = "parser"
_KIND_SOURCE: Final = "data-source"
_KIND_EXTRACTOR: Final = "extractor"
_KIND_FAIRNESS: Final = "fairness-policy"
_KIND_ORDERING: Final = "ordering-policy"
_KIND_USAGE_LIMIT: Final = "usage-limit-policy"

_TOP_KEYS: Final = (
    "apiVersion",
    "kind",
    "featureGates",
    "plugins",
    "schedulingProfiles",
    "saturationDetector",
    "dataLayer",
    "flowControl",
    "parser",
)
_PLUGIN_KEYS: Final = ("type", "name", "parameters")
_PROFILE_KEYS: Final = ("name", "plugins")
_REF_KEYS: Final = ("pluginRef", "weight")
_BAND_KEYS: Final = ("maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef")
_FLOW_KEYS: Final = (
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "usageLimitPolicyPluginRef",
    "defaultPriorityBand",
    "priorityBands",
)
_KEY_HINTS: Final = {
    "data": "GIE's documentation writes `data:`, but its decoder reads `dataLayer`",
}
_DETECTOR_V12_KEYS: Final = (
    "queueDepthThreshold",
    "kvCacheUtilThreshold",
    "metricsStalenessThreshold",
)

_DEFAULT_DOCUMENT: Final[Mapping[str, Any]] = types.MappingProxyType(
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
"""GIE's built-in default (``defaults.go: loadDefaultConfig``), before system defaults."""

_MISSING: Final = object()


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
    parameters: Mapping[str, Any] | None = None
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

    Build one with :func:`load_config`. Sections owned by later subsystems are kept as
    shape-checked read-only mappings in GIE's key spelling.
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
        raise KeyError(f"no plugin named {name!r}{_did_you_mean(name, names)}")

    def to_dict(self) -> dict[str, Any]:
        """The effective config in GIE's YAML shape (camelCase keys).

        Every plugin is listed with its name and its effective parameter values by GIE
        key (see :func:`effective_parameters`); loading the result gives an equal config,
        with the auto-added plugins now listed explicitly.
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
                document[key] = _thaw(section)
        return document

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _plugin_document(spec: PluginSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "type": spec.type}
    parameters = effective_parameters(spec.params, spec.parameters)
    if parameters:
        entry["parameters"] = parameters
    return entry


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
        The effective config (see the module docstring).

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
        document = _parse_yaml(source)
        return default_config() if document is None else _load_document(document)
    if isinstance(source, Mapping):
        return _load_document(source)
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
    document = _parse_yaml(text)
    return default_config() if document is None else _load_document(document)


def default_config() -> EndpointPickerConfig:
    """GIE's built-in default: queue-scorer 2, kv-cache-utilization-scorer 2,
    prefix-cache-scorer 3 in a ``default`` profile, plus the system defaults."""
    return _load_document(_DEFAULT_DOCUMENT)


def parse_quantity(value: Any) -> int:
    """A non-negative Kubernetes quantity as an int (``"10Gi"``, ``"500"``, ``"1k"``, 5000).

    Binary (``Ki`` … ``Ei``), decimal (``n u m k M G T P E``) and exponent (``1e3``)
    suffixes are understood; a fractional result is rounded up, as ``Quantity.Value()``
    does.

    Raises:
        ValueError: not a quantity, negative, or beyond int64.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        amount = fractions.Fraction(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a quantity: {value!r}")
        amount = fractions.Fraction(value)
    else:
        amount = _parse_quantity_text(value)
    if amount < 0:
        raise ValueError(f"negative quantity: {value!r}")
    result = math.ceil(amount)
    if result > _INT64_MAX:
        raise ValueError(f"quantity beyond int64: {value!r}")
    return result


_INT64_MAX: Final = 2**63 - 1
_QUANTITY_RE: Final = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?\d+))?$"
)
_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: Final = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def _parse_quantity_text(text: str) -> fractions.Fraction:
    match = _QUANTITY_RE.match(text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    amount = fractions.Fraction(match["number"])
    if match["binary"]:
        return amount * _BINARY[match["binary"]]
    exponent = _DECIMAL[match["decimal"]] if match["decimal"] else int(match["exponent"] or 0)
    if abs(exponent) > 30:  # beyond int64 either way; also keeps "1e999999999" cheap
        if amount == 0:
            return amount
        raise ValueError(f"quantity out of range: {text!r}")
    return amount * fractions.Fraction(10) ** exponent


def effective_parameters(params: Any, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A plugin's parameters by GIE key, as a config would write them.

    A key given in the config keeps its raw value; any other field is written with its
    effective value when that value loads back unchanged (a duration in seconds is
    written as a Go duration string). Deprecated keys appear only when given, and a
    field whose value cannot be written back (``None`` meaning "unset", objects YAML
    cannot hold) is left out, so the plugin's default applies when it is loaded again.

    Args:
        params: a parsed ``Params`` instance (an attrs class with GIE aliases).
        given: the raw ``parameters`` mapping from the config, if any.
    """
    given = given or {}
    out: dict[str, Any] = {}
    for attribute in attrs.fields(type(params)):
        key = attribute.alias or attribute.name
        if key in given:
            out[key] = _thaw(given[key])
        elif not attribute.metadata.get(_DEPRECATED):
            written = _writable(attribute, getattr(params, attribute.name))
            if written is not _MISSING:
                out[key] = written
    return out


def _writable(attribute: attrs.Attribute[Any], value: Any) -> Any:
    """A YAML-able value that parses back to ``value``, else ``_MISSING``."""
    if value is None:
        return _MISSING
    candidates = [_plain(value)]
    parse = attribute.metadata.get(_PARSE)
    if parse is not None and isinstance(value, int | float) and not isinstance(value, bool):
        candidates.append(_go_duration(float(value)))
    for candidate in candidates:
        if candidate is _MISSING:
            continue
        try:
            parsed = parse(candidate) if parse is not None else candidate
            _validate(attribute, parsed)
            if parsed == value and type(parsed) is type(value):
                return candidate
        except (TypeError, ValueError, ArithmeticError, LookupError):
            continue  # a third-party parse or check that rejects it: leave the key out
    return _MISSING


def _validate(attribute: attrs.Attribute[Any], value: Any) -> None:
    # ``params.param()`` without ``check=`` leaves ``validator=[]`` (a list, not callable).
    validator = attribute.validator
    checks = validator if isinstance(validator, list | tuple) else [validator]
    for check in checks:
        if check is not None:
            check(None, attribute, value)


def _plain(value: Any) -> Any:
    """``value`` as JSON-like data (attrs by alias, mappings, lists), or ``_MISSING``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if attrs.has(type(value)):
        items = [
            (a.alias or a.name, _plain(getattr(value, a.name))) for a in attrs.fields(type(value))
        ]
        if any(v is _MISSING for _, v in items):
            return _MISSING
        return dict(items)
    if isinstance(value, Mapping):
        mapped = {k: _plain(v) for k, v in value.items()}
        ok = all(isinstance(k, str) for k in mapped) and _MISSING not in mapped.values()
        return mapped if ok else _MISSING
    if isinstance(value, list | tuple):
        listed = [_plain(v) for v in value]
        return _MISSING if any(v is _MISSING for v in listed) else listed
    return _MISSING


def _go_duration(seconds: float) -> str:
    """Shortest Go duration string for ``seconds`` in one unit (``0.2`` → ``"200ms"``)."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        count = seconds / scale
        if abs(count) >= 1 and math.isclose(count, round(count), rel_tol=0, abs_tol=1e-9):
            return f"{round(count)}{unit}"
    return f"{round(seconds * 1e9)}ns"


# ====================================================================== YAML
class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus a check that no mapping repeats a key.

    PyYAML keeps the last of duplicate keys silently; GIE's strict decoder rejects them.
    The check walks the composed node graph (before construction) so the error can name
    the path and both lines.
    """

    def checked_node(self) -> yaml.Node | None:
        """The document's node graph; ``ConfigError`` when a mapping repeats a key."""
        node = self.get_single_node()
        if node is not None:
            errors = list(self._duplicates(node, "", set()))
            if errors:
                raise _combined(errors)
        return node

    def _duplicates(self, node: yaml.Node, path: str, seen: set[int]) -> Iterator[ConfigError]:
        if id(node) in seen:  # aliases share nodes (and may be recursive)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                label = _profile_label(item) if path == "schedulingProfiles" else None
                yield from self._duplicates(item, f"{path}[{label or i}]", seen)
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    yield from self._duplicates(value_node, path, seen)
                    continue
                key = self._scalar_key(key_node)
                line = key_node.start_mark.line + 1
                if key is not _MISSING and key in first_line:
                    yield ConfigError(
                        f"duplicate key {key!r} at line {line} (first at line {first_line[key]})",
                        path=path,
                        value=key,
                    )
                    continue
                if key is not _MISSING:
                    first_line[key] = line
                yield from self._duplicates(value_node, _join(path, key), seen)

    def _scalar_key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return _MISSING  # complex keys: construction reports them (unhashable)
        key = self.construct_object(node, deep=True)
        try:
            hash(key)
        except TypeError:
            return _MISSING
        return key


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent ("1.0e+5"), so
# JSON's "1e-05" or "2E3" would load as strings. Go's YAML decoder (goyaml, under GIE's
# sigs.k8s.io/yaml) reads them as floats; so do we.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _profile_label(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.value == "name"
                and isinstance(value_node, yaml.ScalarNode)
                and value_node.value
            ):
                return str(value_node.value)
    return None


def _parse_yaml(text: str) -> Any:
    """The YAML document in ``text`` (``None`` when there is none)."""
    if not text.strip():
        return None
    try:
        loader = _StrictLoader(text)  # the reader rejects non-printable characters here
        try:
            node = loader.checked_node()
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_message(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError("invalid YAML: the document is nested too deeply") from None


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = exc.problem or "syntax error"
    context = f" ({exc.context})" if exc.context else ""
    return f"invalid YAML{where}: {problem}{context}"


# ====================================================================== loading
@attrs.define
class _Entry:
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
class _RawRef:
    plugin_ref: str
    weight: float | None
    path: str


@attrs.define
class _RawProfile:
    name: str
    label: str
    refs: list[_RawRef]
    is_auto: bool = False


def _load_document(document: Any) -> EndpointPickerConfig:
    try:
        return _Loader(document).load()
    except RecursionError:
        raise ConfigError("the document is nested too deeply") from None


class _Loader:
    """One load: the phases of the module docstring over one parsed document."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []
        self.entries: dict[str, _Entry] = {}
        self.auto: list[PluginSpec] = []
        self.gates: tuple[str, ...] = ()
        self.unavailable: set[str] = set()
        """Default types the pipeline tried to add and could not (already reported)."""
        self.entry_point_names: frozenset[str] | None = None
        self.forwarded: dict[str, str] = {}
        """Auto-created producer name -> the consumer whose parameters it was built with."""

    # ------------------------------------------------------------------ plumbing
    def error(
        self, path: str, message: str, value: Any = _MISSING, *, sentence: bool = False
    ) -> ConfigError:
        """Record ``path: message`` (``path message`` when ``sentence``)."""
        error = (
            ConfigError(message, path=path)
            if value is _MISSING
            else ConfigError(message, path=path, value=value)
        )
        if sentence:
            error.args = (f"{path} {message}",)
        self.errors.append(error)
        return error

    def warn(self, message: str) -> None:
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
        where = _join(path, key)
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

    # ------------------------------------------------------------------ phases
    def load(self) -> EndpointPickerConfig:
        top = self.document
        if not isinstance(top, Mapping):
            raise ConfigError(
                f"expected a mapping (an EndpointPickerConfig document), got {describe(top)}",
                value=top,
            )
        self.check_keys(top, _TOP_KEYS, "")
        api_version = self.api_version(top)
        kind = self.kind(top)
        self.gates = self.feature_gates(top.get("featureGates"))
        self.plugins_phase(top.get("plugins"))
        profiles = self.profiles_phase(top.get("schedulingProfiles"))
        sections = _Sections(
            saturation_detector=self.saturation_detector_shape(
                top.get("saturationDetector", _MISSING)
            ),
            data_layer=self.data_layer_shape(top.get("dataLayer", _MISSING)),
            flow_control=self.flow_control_shape(top.get("flowControl", _MISSING)),
            parser=self.parser_shape(top.get("parser", _MISSING)),
        )
        resolved = all(e.cls is not None for e in self.entries.values())
        effective: list[ProfileSpec] = []
        if resolved and profiles is not None:
            effective = self.system_defaults(profiles, sections)
        elif profiles is not None:
            self.undefined_refs_only(profiles, sections)
        if self.errors:
            raise _combined(self.errors)
        specs = [e.spec for e in self.entries.values() if e.spec is not None and not e.spec.is_auto]
        return EndpointPickerConfig(
            api_version=api_version,
            kind=kind,
            feature_gates=self.gates,
            plugins=(*specs, *self.auto),
            scheduling_profiles=tuple(effective),
            saturation_detector=_freeze_section(sections.saturation_detector),
            data_layer=_freeze_section(sections.data_layer),
            flow_control=_freeze_section(sections.flow_control),
            parser=_freeze_section(sections.parser),
            warnings=tuple(self.warnings),
        )

    def api_version(self, top: Mapping[Any, Any]) -> str:
        value = top.get("apiVersion")
        if value is None:
            return API_VERSION
        if isinstance(value, str) and value in API_VERSIONS:
            return value
        hint = _did_you_mean(value, API_VERSIONS) if isinstance(value, str) else ""
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
        hint = _did_you_mean(value, [KIND]) if isinstance(value, str) else ""
        self.error("kind", f"expected {KIND!r}, got {describe(value)}{hint}", value)
        return KIND

    def feature_gates(self, raw: Any) -> tuple[str, ...]:
        items = self.sequence(raw, "featureGates", "a list of feature gate names")
        gates: list[str] = []
        for i, gate in enumerate(items or []):
            if isinstance(gate, str) and gate in FEATURE_GATES:
                if gate not in gates:
                    gates.append(gate)
                continue
            shown = (
                f"{gate!r}{_did_you_mean(gate, FEATURE_GATES)}"
                if isinstance(gate, str)
                else describe(gate)
            )
            self.error(
                f"featureGates[{i}]",
                f"unknown feature gate {shown}; known gates: {', '.join(FEATURE_GATES)}",
                gate,
            )
        return tuple(gates)

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
            record = _Entry(name, plugin_type or "", path)
            self.entries[name] = record
            if plugin_type is None:
                continue
            record.cls = self.lookup(plugin_type, f"{path}.type")
            if record.cls is not None:
                record.spec = self.build_spec(record, entry.get("parameters"), f"{path}.parameters")

    def build_spec(self, record: _Entry, raw_params: Any, params_path: str) -> PluginSpec | None:
        assert record.cls is not None, "build_spec needs a resolved class"
        params = self.parse_plugin_params(record.cls, record.type, raw_params, params_path)
        if params is _MISSING:
            return None
        frozen = None if raw_params is None else cast("Mapping[str, Any]", _freeze(raw_params))
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
        return _MISSING

    # .................................................................. profiles
    def profiles_phase(self, raw: Any) -> list[_RawProfile] | None:
        items = self.sequence(raw, "schedulingProfiles", "a list of profiles {name, plugins}")
        if items is None:
            return None
        profiles: list[_RawProfile] = []
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
                profiles.append(_RawProfile(name, label, refs))
        # Given but none valid: no implicit profile either (its errors would mislead).
        return None if items and not profiles else profiles

    def profile_refs(self, raw: Any, label: str) -> list[_RawRef]:
        items = self.sequence(raw, f"{label}.plugins", "a list of {pluginRef, weight?}")
        refs: list[_RawRef] = []
        for k, item in enumerate(items or []):
            path = f"{label}.plugins[{k}]"
            entry = self.mapping(item, path, "a mapping with keys pluginRef, weight?")
            if entry is None:
                continue
            self.check_keys(entry, _REF_KEYS, path)
            plugin_ref = self.name_field(entry, "pluginRef", path, required=True)
            weight = self.weight(entry.get("weight"), f"{path}.weight")
            if plugin_ref is not None and weight is not _MISSING:
                refs.append(_RawRef(plugin_ref, weight, path))
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
        return _MISSING

    # .................................................................. sections
    def saturation_detector_shape(self, raw: Any) -> _Section:
        if raw is _MISSING or raw is None:
            return _Section(None)
        section = self.mapping(raw, "saturationDetector", "a mapping with key pluginRef")
        if section is None:
            return _Section(None, ok=False)
        for key in section:
            if key in _DETECTOR_V12_KEYS:
                self.error(
                    "saturationDetector",
                    f"unknown key {key!r}: GIE v1.2's saturationDetector thresholds are now "
                    f"parameters of the {_DETECTOR!r} plugin; declare it in plugins with "
                    f"parameters {{{key}: ...}} and set saturationDetector.pluginRef",
                    key,
                )
        self.check_keys(
            {k: v for k, v in section.items() if k not in _DETECTOR_V12_KEYS},
            ("pluginRef",),
            "saturationDetector",
        )
        ref = self.name_field(section, "pluginRef", "saturationDetector", required=False)
        return _Section(
            dict(section),
            refs=[
                _SectionRef(
                    "saturationDetector.pluginRef", ref or _DETECTOR, _KIND_DETECTOR, ref is None
                )
            ],
        )

    def parser_shape(self, raw: Any) -> _Section:
        if raw is _MISSING or raw is None:
            return _Section(None)
        section = self.mapping(raw, "parser", "a mapping with key pluginRef")
        if section is None:
            return _Section(None, ok=False)
        self.check_keys(section, ("pluginRef",), "parser")
        ref = self.name_field(section, "pluginRef", "parser", required=True)
        refs = [_SectionRef("parser.pluginRef", ref, _KIND_PARSER)] if ref is not None else []
        return _Section(dict(section), refs=refs)

    def data_layer_shape(self, raw: Any) -> _Section:
        if raw is _MISSING or raw is None:
            return _Section(None)
        section = self.mapping(raw, "dataLayer", "a mapping with key sources")
        if section is None:
            return _Section(None, ok=False)
        self.check_keys(section, ("sources",), "dataLayer")
        sources = self.sequence(
            section.get("sources"), "dataLayer.sources", "a list of {pluginRef, extractors}"
        )
        refs: list[_SectionRef] = []
        for i, item in enumerate(sources or []):
            path = f"dataLayer.sources[{i}]"
            source = self.mapping(item, path, "a mapping with keys pluginRef, extractors")
            if source is None:
                continue
            self.check_keys(source, ("pluginRef", "extractors"), path)
            ref = self.name_field(source, "pluginRef", path, required=True)
            if ref is not None:
                refs.append(_SectionRef(f"{path}.pluginRef", ref, _KIND_SOURCE))
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
                    refs.append(_SectionRef(f"{ext_path}.pluginRef", ext_ref, _KIND_EXTRACTOR))
        if sources == []:
            self.warn(
                "dataLayer: no sources, so endpoint metrics collection is disabled (as in GIE); "
                "endpoint metrics must be written to the EndpointTable by the embedder"
            )
        return _Section(dict(section), refs=refs)

    def flow_control_shape(self, raw: Any) -> _Section:
        if raw is _MISSING or raw is None:
            return _Section(None)
        section = self.mapping(raw, "flowControl", "a mapping")
        if section is None:
            return _Section(None, ok=False)
        self.check_keys(section, _FLOW_KEYS, "flowControl")
        refs: list[_SectionRef] = []
        self.quantities(section, "flowControl")
        ttl = section.get("defaultRequestTTL")
        if ttl is not None:
            self.duration(ttl, "flowControl.defaultRequestTTL")
        ref = self.name_field(section, "usageLimitPolicyPluginRef", "flowControl", required=False)
        if ref is not None:
            refs.append(
                _SectionRef("flowControl.usageLimitPolicyPluginRef", ref, _KIND_USAGE_LIMIT)
            )
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
        return _Section(dict(section), refs=refs)

    def band(self, raw: Any, path: str, *, is_default: bool) -> list[_SectionRef]:
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
                refs.append(_SectionRef(f"{path}.{key}", ref, kind))
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

    # .................................................................. defaults
    def system_defaults(
        self, profiles: list[_RawProfile], sections: _Sections
    ) -> list[ProfileSpec]:
        """GIE's §3.2 steps 5-9 (every declared plugin's class is known here)."""
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

    def implicit_profile(self, declared: list[_Entry]) -> _RawProfile:
        refs = [_RawRef(e.name, None, e.path) for e in declared if _PROFILE_KINDS & set(e.kinds)]
        return _RawProfile(DEFAULT_PROFILE, "the implicit 'default' profile", refs, is_auto=True)

    def warn_unused(self, declared: list[_Entry], profiles: list[_RawProfile]) -> None:
        used = {ref.plugin_ref for p in profiles for ref in p.refs}
        for entry in declared:
            kinds = set(entry.kinds)
            if kinds and kinds <= _PROFILE_KINDS and entry.name not in used:
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
        record = _Entry(plugin_type, plugin_type, AUTO_PATH, cls)
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

    def section_defaults(self, sections: _Sections) -> None:
        """System-default plugins of the sections later issues implement (§3.2 step 5).

        Each is added only when its type is registered; otherwise ``warnings`` says what
        is skipped. A section that was given keeps its references, resolved afterwards.
        """
        flow_in_use = "flowControl" in self.gates
        missing = [t for t in _FLOW_POLICIES if not self.add_auto(t, "flowControl", required=False)]
        if missing and flow_in_use:
            self.warn(
                f"flowControl: the flow-control policy plugins ({', '.join(missing)}) are not "
                "available in this version; requests are not queued"
            )
        for section, plugin_type, key, effect in (
            (sections.parser, _PARSER, "parser", "request bodies are parsed by the embedder"),
            (
                sections.saturation_detector,
                _DETECTOR,
                "saturationDetector",
                "saturation detection is off",
            ),
        ):
            if section.raw is not None or not section.ok:
                continue
            if self.add_auto(plugin_type, key, required=False):
                section.raw = {"pluginRef": plugin_type}
            else:
                self.warn(
                    f"{key}: the default {plugin_type!r} is not available in this version; {effect}"
                )
        self.data_layer_default(sections.data_layer)

    def data_layer_default(self, section: _Section) -> None:
        if section.raw is not None or not section.ok:
            return
        if "enableLegacyMetrics" in self.gates:
            self.warn(
                "featureGates: enableLegacyMetrics: the legacy metrics poller is not available "
                "in this version; endpoint metrics must be written to the EndpointTable by "
                "the embedder"
            )
            return
        types_ = (_DATA_SOURCE, _EXTRACTOR)
        if not all(t in self.entries or self.lookup_optional(t) for t in types_):
            self.warn(
                "dataLayer: metrics collection plugins are not available in this version; "
                "endpoint metrics must be written to the EndpointTable by the embedder"
            )
            return
        if all(self.add_auto(t, "dataLayer", required=False) for t in types_):
            section.raw = {
                "sources": [{"pluginRef": _DATA_SOURCE, "extractors": [{"pluginRef": _EXTRACTOR}]}]
            }

    # .................................................................. resolving
    def resolve_profile(self, profile: _RawProfile, default_picker: str) -> ProfileSpec:
        refs: list[ProfileRef] = []
        picker: _RawRef | None = None
        seen: set[str] = set()
        for raw in profile.refs:
            entry = self.entries.get(raw.plugin_ref)
            if entry is None:
                self.undefined_ref(raw.path, raw.plugin_ref)
                continue
            kinds = set(entry.kinds)
            if not kinds & _PROFILE_KINDS:
                self.error(
                    raw.path,
                    f"plugin {entry.describe()} is a {'/'.join(entry.kinds) or 'plugin'}; a "
                    "profile takes only filters, scorers and pickers",
                    raw.plugin_ref,
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
        hint = _did_you_mean(name, list(self.entries))
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

    def resolve_section_refs(self, sections: _Sections) -> None:
        """Section references name a declared plugin, or a GIE default type (added here
        with default parameters when registered, as GIE instantiates it if absent)."""
        for section in sections.all():
            for ref in section.refs:
                entry = self.entries.get(ref.name)
                if entry is None and ref.name in _SYSTEM_TYPES:
                    tried = ref.name in self.unavailable
                    if not self.add_auto(ref.name, ref.path, required=False):
                        if tried:  # the section default already said why
                            continue
                        self.warn(
                            f"{ref.path}: {ref.name!r} is a GIE default plugin, but its type is "
                            "not available in this version; the reference has no effect"
                        )
                        continue
                    entry = self.entries[ref.name]
                if entry is None:
                    self.undefined_ref(ref.path, ref.name, sentence=False)
                elif ref.kind in registry.KINDS and ref.kind not in entry.kinds:
                    self.error(ref.path, f"plugin {entry.describe()} is not a {ref.kind}", ref.name)
                elif ref.defaulted and section.raw is not None:
                    section.raw[ref.path.rsplit(".", 1)[-1]] = ref.name

    def undefined_refs_only(self, profiles: list[_RawProfile], sections: _Sections) -> None:
        """Reference checks possible while some plugin type failed to resolve."""
        for profile in profiles:
            for raw in profile.refs:
                if raw.plugin_ref not in self.entries and raw.plugin_ref not in _SYSTEM_TYPES:
                    self.undefined_ref(raw.path, raw.plugin_ref)
        for section in sections.all():
            for ref in section.refs:
                if ref.name not in self.entries and ref.name not in _SYSTEM_TYPES:
                    self.undefined_ref(ref.path, ref.name, sentence=False)

    # .................................................................. data
    def data_dependencies(self) -> None:
        """Add default producers for consumed-but-unproduced keys (§3.2 step 9)."""
        produced = {key for e in self.entries.values() for key in _data_keys(e.cls, "produces")}
        i = 0
        entries = list(self.entries.values())
        while i < len(entries):  # auto-added producers may consume keys themselves
            consumer = entries[i]
            i += 1
            for key in sorted(_data_keys(consumer.cls, "consumes") - produced):
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
                produced |= _data_keys(added.cls, "produces") | {key}
                entries.append(added)
        self.warn_ignored_producer_parameters()
        cycle = _find_cycle(list(self.entries.values()))
        if cycle:
            steps = ", ".join(
                f"{a!r} consumes what {b!r} produces" for a, b in itertools.pairwise(cycle)
            )
            self.error("plugins", f"data dependency cycle: {steps}; no order can run them")

    def producer_parameter_source(self, key: str) -> _Entry | None:
        """The first consumer of ``key`` whose parameters carry producer parameters (GIE's
        docs put the prefix producer's keys on ``prefix-cache-scorer``)."""
        for entry in self.entries.values():
            if key in _data_keys(entry.cls, "consumes") and _producer_parameters(entry):
                return entry
        return None

    def warn_ignored_producer_parameters(self) -> None:
        """Producer parameters on a consumer that no auto-created producer was built with."""
        for entry in self.entries.values():
            given = _producer_parameters(entry)
            if not given:
                continue
            keys = _data_keys(entry.cls, "consumes")
            producers = [e for e in self.entries.values() if keys & _data_keys(e.cls, "produces")]
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


def _producer_parameters(entry: _Entry | None) -> dict[str, Any] | None:
    """The producer parameters ``entry``'s Params forwards (``producer_parameters()``)."""
    params = entry.spec.params if entry is not None and entry.spec is not None else None
    method = getattr(params, "producer_parameters", None)
    return (dict(method()) or None) if callable(method) else None


@attrs.frozen
class _SectionRef:
    path: str
    name: str
    kind: str
    defaulted: bool = False
    """The key was absent or empty and ``name`` is GIE's default for it."""


@attrs.define
class _Section:
    """A later-subsystem section: its raw mapping and the references it holds."""

    raw: dict[Any, Any] | None
    refs: list[_SectionRef] = attrs.Factory(list)
    ok: bool = True


@attrs.define
class _Sections:
    saturation_detector: _Section
    data_layer: _Section
    flow_control: _Section
    parser: _Section

    def all(self) -> tuple[_Section, ...]:
        return (self.saturation_detector, self.data_layer, self.flow_control, self.parser)


def _data_keys(cls: builtins.type[Any] | None, attribute: str) -> frozenset[str]:
    value = getattr(cls, attribute, None) if cls is not None else None
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(key) for key in value)


def _find_cycle(entries: list[_Entry]) -> list[str]:
    """Names along one producer→consumer cycle (first and last equal), or []."""
    producers: dict[str, list[str]] = {}
    for e in entries:
        for key in _data_keys(e.cls, "produces"):
            producers.setdefault(key, []).append(e.name)
    # edges: consumer -> producers of what it consumes (self-edges ignored)
    needs = {
        e.name: sorted(
            {
                p
                for key in _data_keys(e.cls, "consumes")
                for p in producers.get(key, [])
                if p != e.name
            }
        )
        for e in entries
    }
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        stack.append(name)
        for nxt in needs.get(name, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[name] = 2
        return []

    for e in entries:
        if e.name not in state and (found := visit(e.name)):
            return found
    return []


# ====================================================================== helpers
def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _did_you_mean(word: Any, choices: Sequence[str]) -> str:
    near = closest(str(word), list(choices))
    return f" (did you mean {near[0]!r}?)" if near else ""


def _combined(errors: list[ConfigError]) -> ConfigError:
    """One error carrying all of ``errors`` (the error itself when there is one)."""
    flat = [leaf for error in errors for leaf in error.errors]
    if len(flat) == 1:
        return flat[0]
    lines = "\n".join(f"  {error}" for error in flat)
    combined = ConfigError(f"{len(flat)} problems in the EndpointPickerConfig:\n{lines}")
    combined.path, combined.value = flat[0].path, flat[0].value
    combined.errors = flat
    combined.__cause__ = next((e.__cause__ for e in flat if e.__cause__ is not None), None)
    return combined


def _freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _freeze_section(section: _Section) -> Mapping[str, Any] | None:
    return None if section.raw is None else cast("Mapping[str, Any]", _freeze(section.raw))


def _thaw(value: Any) -> Any:
    """Plain dicts and lists again (for YAML)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value
