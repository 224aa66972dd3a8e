"""Typed plugin parameters: frozen attrs classes with GIE's camelCase aliases.

A plugin declares ``Params``, a frozen attrs class whose fields carry ``alias=`` (the GIE
key) and GIE's default. :func:`parse_params` builds it from the raw ``parameters`` mapping
of a config entry, with path-named errors::

    @attrs.frozen
    class Params:
        max_num_of_endpoints: int = param(1, alias="maxNumOfEndpoints", check=at_least(1))
        \"\"\"How many endpoints to return: the pick, then fallbacks.\"\"\"

Checks follow the attrs validator protocol ``(inst, attribute, value)`` and raise
:class:`ParamCheck`, which carries the expectation; the loader adds the path. Values that
need parsing first (durations such as ``"200ms"``) use ``parse=`` (raw → value).
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs

from inference_sched.errors import ParameterError, redact

__all__ = [
    "DEPRECATED_KEY",
    "PARSE_KEY",
    "NoParams",
    "ParamCheck",
    "at_least",
    "boolean",
    "closest",
    "describe",
    "duration_s",
    "in_range",
    "integer",
    "nested",
    "number",
    "one_of",
    "param",
    "parse_duration_s",
    "parse_params",
    "string",
    "string_list",
]

T = TypeVar("T")
P = TypeVar("P")
Check = Callable[[Any, "attrs.Attribute[Any]", Any], None]

PARSE_KEY: Final = "inference_sched.parse"
"""Field metadata key of a ``parse=`` function (raw config value -> value)."""
DEPRECATED_KEY: Final = "inference_sched.deprecated"
"""Field metadata key of a deprecation message."""
_PARSE: Final = PARSE_KEY
_DEPRECATED: Final = DEPRECATED_KEY


@attrs.frozen
class NoParams:
    """Parameters of a plugin that takes none."""


class ParamCheck(ValueError):
    """A parameter failed its check; the loader turns it into a path-named ParameterError."""

    def __init__(self, key: str, expectation: str, value: object) -> None:
        self.key = key
        self.expectation = expectation
        self.value = value
        super().__init__(f"{key}: expected {expectation}, got {describe(value)}")


_BOUNDED = reprlib.Repr()  # keyword arguments need Python 3.12
_BOUNDED.maxlevel = 3
for _name in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_BOUNDED, _name, 8)
_BOUNDED.maxstring = _BOUNDED.maxlong = _BOUNDED.maxother = 200


def describe(value: object) -> str:
    """``'x' (str)``: a value and its type, as error messages show it: at most 80
    characters, built without rendering the whole value (a config's nested aliases can
    expand to billions of elements), credentials redacted."""
    text = redact(_BOUNDED.repr(value))
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def closest(word: str, choices: Sequence[str]) -> list[str]:
    """Close matches of ``word`` among ``choices`` (case-insensitive), best first."""
    lowered = {c.lower(): c for c in choices}
    key = word.lower()
    hits = difflib.get_close_matches(key, list(lowered), n=3, cutoff=0.6)
    if len(hits) > 1:  # keep only the matches about as close as the best one
        ratios = [difflib.SequenceMatcher(None, key, h).ratio() for h in hits]
        hits = [h for h, r in zip(hits, ratios, strict=True) if r >= ratios[0] - 0.1]
    return [lowered[h] for h in hits]


def param(
    default: Any = attrs.NOTHING,
    *,
    alias: str | None = None,
    check: Check | Sequence[Check] = (),
    parse: Callable[[Any], Any] | None = None,
    deprecated: str | None = None,
    factory: Callable[[], Any] | None = None,
    redacted: bool = False,
    secret: bool = False,
) -> Any:
    """Declare a parameter field.

    Args:
        default: GIE's default (omit for a required parameter).
        alias: the GIE (camelCase) key; the field's own name when omitted.
        check: validators in the attrs protocol; raise :class:`ParamCheck`.
        parse: converts the raw config value first; raises :class:`ParamCheck`.
        deprecated: a message logged when the key is used.
        factory: default factory for mutable defaults.
        redacted: the value may hold credentials (a URL's password): ``repr`` shows it
            through :func:`~inference_sched.errors.redact`.
        secret: the value is a credential (a token): ``repr`` shows ``'***'`` unless it
            is empty (the printed effective config hides it by its key name).
    """
    checks = [check] if callable(check) else list(check)
    validator = attrs.validators.and_(*checks) if checks else None
    metadata: dict[str, Any] = {}
    if parse is not None:
        metadata[_PARSE] = parse
    if deprecated is not None:
        metadata[_DEPRECATED] = deprecated
    shown: Callable[[Any], str] | bool = (
        _secret_repr if secret else _redacted_repr if redacted else True
    )
    if factory is not None:
        return attrs.field(
            factory=factory, validator=validator, metadata=metadata, alias=alias, repr=shown
        )
    return attrs.field(
        default=default, validator=validator, metadata=metadata, alias=alias, repr=shown
    )


def _secret_repr(value: Any) -> str:
    return "'***'" if value else repr(value)


def _redacted_repr(value: Any) -> str:
    return repr(redact(value)) if isinstance(value, str) else repr(value)


def _key(attribute: attrs.Attribute[Any]) -> str:
    return attribute.alias or attribute.name


# ------------------------------------------------------------------ type checks
def integer(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An int (bools rejected: YAML ``true`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamCheck(_key(attribute), "int", value)


def number(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A finite int or float (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamCheck(_key(attribute), "a finite number", value)


def boolean(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A bool (``true``/``false`` in YAML)."""
    if not isinstance(value, bool):
        raise ParamCheck(_key(attribute), "bool", value)


def string(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A str."""
    if not isinstance(value, str):
        raise ParamCheck(_key(attribute), "str", value)


def string_list(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A list of str."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ParamCheck(_key(attribute), "a list of str", value)


def at_least(bound: float, *, kind: str = "int") -> Check:
    """The type check for ``kind`` (int or number) and ``value >= bound``."""
    type_check = integer if kind == "int" else number

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        type_check(inst, attribute, value)
        if value < bound:
            shown = int(bound) if kind == "int" else bound
            raise ParamCheck(_key(attribute), f"{kind} >= {shown}", value)

    return check


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number in the interval (brackets per the open flags)."""

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        number(inst, attribute, value)
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            raise ParamCheck(_key(attribute), f"a number in {left}{low}, {high}{right}", value)

    return check


def one_of(*choices: str) -> Check:
    """One of the given strings."""

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            hint = ""
            if isinstance(value, str) and (near := closest(value, choices)):
                hint = f" (did you mean {near[0]!r}?)"
            raise ParamCheck(
                _key(attribute), "one of " + ", ".join(map(repr, choices)) + hint, value
            )

    return check


# ------------------------------------------------------------------ durations
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration_s(text: str) -> float:
    """Seconds in a Go duration string (``"200ms"``, ``"1m30s"``, ``"0"``).

    Raises:
        ValueError: not a Go duration.
    """
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def duration_s(key: str) -> Callable[[Any], float]:
    """A ``parse=`` function turning a Go duration string into seconds."""

    def parse(raw: Any) -> float:
        if not isinstance(raw, str):
            raise ParamCheck(key, "a duration string such as '200ms'", raw)
        try:
            return parse_duration_s(raw)
        except ValueError:
            raise ParamCheck(key, "a duration string such as '200ms'", raw) from None

    return parse


def nested(cls: type[P], key: str) -> Callable[[Any], P]:
    """A ``parse=`` function for a parameter that is an object of ``cls``'s keys (e.g.
    llm-d's ``kvEventsConfig: {topicFilter: ..., podDiscoveryConfig: {...}}``).

    Keys are checked like top-level ones, nested parse functions apply, and an error
    names the nested key (``kvEventsConfig.podDiscoveryConfig.socketPort``). Absent keys
    take ``cls``'s defaults.
    """
    fields = {a.alias or a.name: a for a in attrs.fields(cls)}  # type: ignore[arg-type]
    expected = "a mapping with keys " + ", ".join(fields)

    def parse(raw: Any) -> P:
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping):
            raise ParamCheck(key, expected, raw)
        kwargs: dict[str, Any] = {}
        for name, value in raw.items():
            attribute = fields.get(name) if isinstance(name, str) else None
            if attribute is None:
                near = closest(str(name), list(fields))
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ParamCheck(
                    f"{key}.{name}", f"one of the keys {', '.join(fields)}{hint}", name
                )
            try:
                inner = attribute.metadata.get(_PARSE)
                if inner is not None:
                    value = inner(value)
                if attribute.validator is not None:
                    attribute.validator(None, attribute, value)
            except ParamCheck as exc:
                raise ParamCheck(f"{key}.{exc.key}", exc.expectation, exc.value) from None
            kwargs[attribute.alias or attribute.name] = value
        try:
            return cls(**kwargs)
        except ParamCheck as exc:
            raise ParamCheck(f"{key}.{exc.key}", exc.expectation, exc.value) from None

    return parse


# ------------------------------------------------------------------ loading
def parse_params(
    params_cls: type[P],
    raw: Mapping[str, Any] | None,
    path: str,
    *,
    warn: Callable[[str], None] | None = None,
) -> P:
    """Build ``params_cls`` from a config ``parameters`` mapping.

    Args:
        params_cls: a (frozen) attrs class whose fields carry GIE's keys as aliases.
        raw: the ``parameters`` value (``None`` = all defaults).
        path: the config path of ``raw`` for error messages, e.g. ``plugins[3].parameters``.
        warn: called with a message for each deprecated key used.

    Raises:
        ParameterError: ``raw`` is not a mapping, has an unknown key (with a did-you-mean
            suggestion), lacks a required key, or a value fails its check. Every error
            is collected first; the exception carries them all in ``errors``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParameterError(f"expected a mapping, got {describe(raw)}", path=path, value=raw)
    fields = {_key(a): a for a in attrs.fields(params_cls)}  # type: ignore[arg-type]
    errors: list[ParameterError] = []
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        attribute = fields.get(key) if isinstance(key, str) else None
        if attribute is None:
            near = closest(str(key), list(fields))
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            known = ", ".join(fields) or "none"
            errors.append(
                ParameterError(
                    f"unknown key {key!r}{hint}; known keys: {known}", path=path, value=key
                )
            )
            continue
        if (message := attribute.metadata.get(_DEPRECATED)) and warn is not None:
            warn(f"{path}.{key}: {message}")
        parse = attribute.metadata.get(_PARSE)
        try:
            kwargs[key] = parse(value) if parse is not None else value
        except ParamCheck as exc:
            errors.append(_to_error(exc, path))
    missing = [key for key, a in fields.items() if a.default is attrs.NOTHING and key not in raw]
    errors.extend(
        ParameterError("required key is missing", path=f"{path}.{key}") for key in missing
    )
    # Validate one field at a time so every failing field is reported, not just the first.
    for key, value in kwargs.items():
        attribute = fields[key]
        if attribute.validator is not None:
            try:
                attribute.validator(None, attribute, value)
            except ParamCheck as exc:
                errors.append(_to_error(exc, path))
    if errors:
        raise _combined(errors)
    try:
        return params_cls(**kwargs)
    except ParamCheck as exc:  # cross-field checks in __attrs_post_init__
        raise _to_error(exc, path) from None


def _to_error(exc: ParamCheck, path: str) -> ParameterError:
    where = f"{path}.{exc.key}" if exc.key else path
    return ParameterError(
        f"expected {exc.expectation}, got {describe(exc.value)}", path=where, value=exc.value
    )


def _combined(errors: list[ParameterError]) -> ParameterError:
    if len(errors) == 1:
        return errors[0]
    combined = ParameterError("; ".join(str(e) for e in errors))
    combined.path, combined.value = errors[0].path, errors[0].value
    combined.errors = [*errors]
    return combined
