"""Values in a config: Kubernetes quantities, parameters written back, frozen copies.

:func:`parse_quantity` reads ``maxBytes``-style fields as Kubernetes does
(``k8s.io/apimachinery: pkg/api/resource/quantity.go``); :func:`effective_parameters`
writes a plugin's parsed parameters back in GIE's spelling (what
``EndpointPickerConfig.to_dict`` lists); :func:`freeze` and :func:`thaw` turn the
sections of a document into read-only copies and back.
"""

from __future__ import annotations

import fractions
import math
import re
import types
from collections.abc import Mapping
from typing import Any, Final

import attrs

from inference_sched.params import DEPRECATED_KEY as _DEPRECATED
from inference_sched.params import PARSE_KEY as _PARSE

__all__ = ["effective_parameters", "freeze", "parse_quantity", "thaw"]

_MISSING: Final[Any] = object()
"""Not writable (see :func:`_writable`)."""


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
            out[key] = thaw(given[key])
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


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (for YAML)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value
