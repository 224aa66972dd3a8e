"""Kubernetes label selectors: parsing (both forms) and matching.

Two spellings of the same thing are accepted:

* the object form of a ``metav1.LabelSelector`` (``{matchLabels, matchExpressions}``),
  :class:`LabelSelectorParams`, as ``label-selector-filter`` takes it;
* the string form of ``k8s.io/apimachinery/pkg/labels.Parse``
  (``"app=x,tier!=cache,env in (a,b),!legacy,gpu,rank>2"``), :func:`parse_selector`,
  as ``disaggregatedset-rollout-screener``'s ``scope.labelSelector`` takes it.

Both produce a :class:`LabelSelector`, a conjunction of :class:`LabelRequirement`; an
empty selector matches every label set. Key and value syntax follow apimachinery's
``validation.IsQualifiedName`` / ``IsValidLabelValue``. Errors are
:class:`~inference_sched.params.ParamCheck` naming the failing key, so a plugin's
``Params`` can use these functions as ``parse=`` / ``check=`` directly.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from inference_sched.params import ParamCheck, param

__all__ = [
    "LabelRequirement",
    "LabelSelector",
    "LabelSelectorParams",
    "Operator",
    "check_label_key",
    "check_label_value",
    "parse_match_expressions",
    "parse_match_labels",
    "parse_selector",
]

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
_OBJECT_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")

_NAME: Final = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE: Final = re.compile(rf"^(?:(?P<prefix>[a-z0-9.-]{{1,253}})/)?{_NAME}$")
_PREFIX_RE: Final = re.compile(
    r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
)
_VALUE_RE: Final = re.compile(rf"^(?:{_NAME})?$")
_INT_RE: Final = re.compile(r"^[+-]?[0-9]+$")
_MAX_SELECTOR_CHARS: Final = 8192


@attrs.frozen
class LabelRequirement:
    """One requirement: ``key``, ``operator`` and ``values``.

    ``Gt`` / ``Lt`` (string form only) hold one integer value: the label must exist,
    parse as an integer and compare greater / less.
    """

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics; ``NotIn`` (and ``!=``) also match when the label is absent."""
        operator = self.operator
        if operator == "In":
            return labels.get(self.key) in self.values
        if operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if operator == "Exists":
            return self.key in labels
        if operator == "DoesNotExist":
            return self.key not in labels
        value = labels.get(self.key)
        if value is None or not _INT_RE.match(value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if operator == "Gt" else int(value) < bound


@attrs.frozen
class LabelSelector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[LabelRequirement, ...] = ()

    @classmethod
    def from_match_labels(cls, match_labels: Mapping[str, str]) -> LabelSelector:
        """The selector of a ``matchLabels`` map: one ``In`` requirement per pair, in order.

        Keys and values are taken as given (not validated).
        """
        return cls(tuple(LabelRequirement(k, "In", (v,)) for k, v in match_labels.items()))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every requirement holds for ``labels``."""
        return all(r.matches(labels) for r in self.requirements)


# ---------------------------------------------------------------- key / value syntax
def check_label_key(where: str, key: Any) -> str:
    """``key`` if it is a valid label key, else :class:`ParamCheck` naming ``where``."""
    if not isinstance(key, str):
        raise ParamCheck(where, "a label key (str)", key)
    match = _KEY_RE.match(key)
    if match is None or (match["prefix"] is not None and not _PREFIX_RE.match(match["prefix"])):
        raise ParamCheck(
            where,
            "a label key: [DNS-subdomain prefix/]name, the name at most 63 characters of "
            "[A-Za-z0-9-_.] starting and ending alphanumeric",
            key,
        )
    return key


def check_label_value(where: str, value: Any) -> str:
    """``value`` if it is a valid label value, else :class:`ParamCheck` naming ``where``."""
    if not isinstance(value, str) or not _VALUE_RE.match(value):
        raise ParamCheck(
            where,
            "a label value: empty, or at most 63 characters of [A-Za-z0-9-_.] starting "
            "and ending alphanumeric",
            value,
        )
    return value


# ---------------------------------------------------------------- object form
def parse_match_labels(raw: Any) -> Mapping[str, str]:
    """``matchLabels``: a mapping of label key to value (read-only copy)."""
    if not isinstance(raw, Mapping):
        raise ParamCheck("matchLabels", "a mapping of label key to value", raw)
    for key, value in raw.items():
        check_label_key("matchLabels", key)
        check_label_value(f"matchLabels.{key}", value)
    return types.MappingProxyType(dict(raw))


def _parse_requirement(i: int, raw: Any) -> LabelRequirement:
    where = f"matchExpressions[{i}]"
    if not isinstance(raw, Mapping):
        raise ParamCheck(where, "a mapping with keys key, operator and values", raw)
    unknown = sorted(set(raw) - {"key", "operator", "values"}, key=str)
    if unknown:
        raise ParamCheck(where, "only the keys key, operator and values", unknown[0])
    if "key" not in raw:
        raise ParamCheck(f"{where}.key", "a label key (required)", None)
    key = check_label_key(f"{where}.key", raw["key"])
    operator = raw.get("operator")
    if operator not in _OBJECT_OPERATORS:
        raise ParamCheck(f"{where}.operator", "one of " + ", ".join(_OBJECT_OPERATORS), operator)
    values = raw.get("values")
    if values is None:
        values = []
    if not isinstance(values, list | tuple):
        raise ParamCheck(f"{where}.values", "a list of str", values)
    for j, value in enumerate(values):
        check_label_value(f"{where}.values[{j}]", value)
    if operator in ("In", "NotIn") and not values:
        raise ParamCheck(f"{where}.values", f"a non-empty list for operator {operator}", values)
    if operator in ("Exists", "DoesNotExist") and values:
        raise ParamCheck(f"{where}.values", f"no values for operator {operator}", values)
    return LabelRequirement(key, operator, tuple(values))


def parse_match_expressions(raw: Any) -> tuple[LabelRequirement, ...]:
    """``matchExpressions``: a list of ``{key, operator, values}``."""
    if not isinstance(raw, list | tuple):
        raise ParamCheck("matchExpressions", "a list of {key, operator, values}", raw)
    return tuple(_parse_requirement(i, item) for i, item in enumerate(raw))


def _is_match_labels(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    parse_match_labels(value)


def _is_requirements(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(r, LabelRequirement) for r in value):
        raise ParamCheck("matchExpressions", "a tuple of LabelRequirement", value)


def _empty_labels() -> Mapping[str, str]:
    return types.MappingProxyType({})


@attrs.frozen
class LabelSelectorParams:
    """A Kubernetes ``LabelSelector`` in object form; every requirement must hold (an
    empty one matches every endpoint)."""

    match_labels: Mapping[str, str] = param(
        alias="matchLabels",
        factory=_empty_labels,
        parse=parse_match_labels,
        check=_is_match_labels,
    )
    """Labels an endpoint must carry with exactly these values."""
    match_expressions: tuple[LabelRequirement, ...] = param(
        (), alias="matchExpressions", parse=parse_match_expressions, check=_is_requirements
    )
    """Requirements ``{key, operator: In|NotIn|Exists|DoesNotExist, values}``."""

    def selector(self) -> LabelSelector:
        """The equivalent :class:`LabelSelector` (``matchLabels`` first, as ``In``)."""
        from_labels = LabelSelector.from_match_labels(self.match_labels)
        return LabelSelector((*from_labels.requirements, *self.match_expressions))


# ---------------------------------------------------------------- string form
_TOKEN_RE: Final = re.compile(r"\s*(==|!=|[=!,()<>]|[^\s=!,()<>]+)")


def _tokens(text: str, where: str) -> list[str]:
    out: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN_RE.match(stripped, pos)
        if match is None:  # pragma: no cover - the pattern matches any non-space char
            raise ParamCheck(where, "a label selector", text)
        out.append(match.group(1))
        pos = match.end()
    return out


def parse_selector(text: Any, where: str = "labelSelector") -> LabelSelector:
    """Parse apimachinery's string selector syntax.

    Requirements are comma-separated: ``key`` (exists), ``!key`` (does not exist),
    ``key=value`` / ``key==value``, ``key!=value`` (also matches an absent label),
    ``key in (v1,v2)``, ``key notin (v1,v2)``, ``key>N`` / ``key<N`` (integer). The
    empty string is the selector matching everything.

    Raises:
        ParamCheck: not a str, too long, a syntax error, or an invalid key / value; the
            expectation names the failing requirement.
    """
    if not isinstance(text, str):
        raise ParamCheck(where, "a label selector string such as 'app=x,tier in (a,b)'", text)
    if len(text) > _MAX_SELECTOR_CHARS:
        raise ParamCheck(where, f"a label selector of at most {_MAX_SELECTOR_CHARS} chars", text)
    tokens = _tokens(text, where)
    requirements: list[LabelRequirement] = []
    i = 0

    def fail(expectation: str) -> ParamCheck:
        return ParamCheck(where, f"{expectation} (requirement {len(requirements) + 1})", text)

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise fail("a complete label selector")
        token = tokens[i]
        i += 1
        return token

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    def key_of(token: str) -> str:
        try:
            return check_label_key(where, token)
        except ParamCheck as exc:
            raise fail(exc.expectation) from None

    def value_of(token: str) -> str:
        try:
            return check_label_value(where, token)
        except ParamCheck as exc:
            raise fail(exc.expectation) from None

    while i < len(tokens):
        token = take()
        if token == "!":
            requirements.append(LabelRequirement(key_of(take()), "DoesNotExist"))
        else:
            key = key_of(token)
            op = peek()
            if op is None or op == ",":
                requirements.append(LabelRequirement(key, "Exists"))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                value = "" if nxt is None or nxt == "," else value_of(take())
                requirements.append(
                    LabelRequirement(key, "NotIn" if op == "!=" else "In", (value,))
                )
            elif op in ("<", ">"):
                take()
                bound = take()
                if not _INT_RE.match(bound):
                    raise fail(f"an integer after {op!r}")
                requirements.append(LabelRequirement(key, "Gt" if op == ">" else "Lt", (bound,)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise fail(f"'(' after {op!r}")
                values: list[str] = []
                nxt = take()
                if nxt == ")":
                    raise fail(f"at least one value in the {op!r} set")
                while True:
                    values.append(value_of(nxt))
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        raise fail("',' or ')' in the value set")
                    nxt = take()
                operator: Operator = "In" if op == "in" else "NotIn"
                requirements.append(LabelRequirement(key, operator, tuple(values)))
            else:
                raise fail(f"an operator (=, ==, !=, in, notin, <, >) after {key!r}, got {op!r}")
        if i < len(tokens):
            if take() != ",":
                raise fail("',' between requirements")
            if i >= len(tokens):
                raise fail("a requirement after ','")
    return LabelSelector(tuple(requirements))
