"""``request-attribute-reporter`` (GIE / llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/requestattributereporter/plugin.go``;
``docs/plugins/request-attribute-reporter.md``).

Computes one number per response from the token usage the model server reported, with
a CEL expression, and returns it to the proxy as Envoy dynamic metadata
(``{namespace: {name: value}}``, namespace ``envoy.lb`` by default), e.g. a request cost
for rate limiting or billing::

    attributes:
    - key: {name: x-gateway-inference-request-cost}
      expression: usage.prompt_tokens + usage.completion_tokens
      condition: has(usage.completion_tokens)

The only CEL variable is ``usage``: a map with ``prompt_tokens``, ``completion_tokens``,
``total_tokens`` and, when the server reported cached tokens,
``prompt_tokens_details.cached_tokens``. Its numbers are doubles, as upstream (a JSON
``google.protobuf.Struct``). Upstream semantics are kept: the value is the result
truncated to an integer, and results 0 and -1 are not written; a condition that is not
``true`` skips the attribute; an evaluation error is logged and skips it.

Expressions are compiled when the plugin is built (a syntax error names
``attributes[0].expression``); an identifier other than ``usage`` (and the variables of
comprehension macros) is rejected then, as cel-go's checked environment does. Cost is
bounded: expressions are at most 2048 characters, may not nest comprehension macros
(``map``/``filter``/``all``/``exists``/``exists_one``) nor call ``matches`` (a regular
expression), and the last result is memoised per usage value.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs

from inference_sched.errors import ConfigError
from inference_sched.framework.interfaces import Handle, ResponseComplete, ResponseStreaming
from inference_sched.framework.registry import register
from inference_sched.framework.types import Request, Response, SchedulingResult, Usage
from inference_sched.params import ParamCheck, param

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_EXPRESSION_CHARS",
    "ReportedAttribute",
    "RequestAttributeReporter",
    "RequestAttributeReporterParams",
    "usage_variable",
]

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE: Final = "envoy.lb"
"""Dynamic-metadata namespace used when ``key.namespace`` is empty."""
MAX_EXPRESSION_CHARS: Final = 2048
"""Longest accepted ``expression`` / ``condition``."""
MAX_REMEMBERED_RESPONSES: Final = 4096
"""Responses whose metadata :attr:`RequestAttributeReporter.reported` keeps."""
_CEL_HINT: Final = (
    "request-attribute-reporter needs the [cel] extra (CEL expressions): "
    "pip install 'inference-sched[cel]'"
)
_MACROS: Final = frozenset({"map", "filter", "all", "exists", "exists_one"})
_FORBIDDEN_CALLS: Final = frozenset({"matches"})
_TYPE_NAMES: Final = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
_LOG_INTERVAL_S: Final = 60.0


def _celpy() -> Any:
    """The ``celpy`` module, or ``None`` when the [cel] extra is not installed."""
    try:
        import celpy
    except ImportError:
        return None
    return celpy


# ====================================================================== CEL checks
def _static_check(tree: Any, where: str, source: str) -> None:
    """Reject nested comprehension macros, ``matches`` and undeclared identifiers."""
    from lark import Token, Tree

    bound: set[str] = set()
    idents: list[str] = []

    def walk(node: Any, macro_depth: int) -> None:
        if not isinstance(node, Tree):
            return
        depth = macro_depth
        if node.data in ("member_dot_arg", "ident_arg"):
            names = [c for c in node.children if isinstance(c, Token)]
            call = str(names[0]) if names else ""
            if call in _FORBIDDEN_CALLS:
                raise ParamCheck(
                    where, f"a CEL expression without {call}() (unbounded cost)", source
                )
            if node.data == "member_dot_arg" and call in _MACROS:
                depth += 1
                if depth > 1:
                    raise ParamCheck(
                        where, "a CEL expression without nested comprehension macros", source
                    )
                args = node.children[-1]
                first = args.children[0] if isinstance(args, Tree) and args.children else None
                if first is not None:
                    for sub in first.iter_subtrees():
                        if sub.data == "ident":
                            bound.update(str(t) for t in sub.children if isinstance(t, Token))
        elif node.data == "ident":
            idents.extend(str(t) for t in node.children if isinstance(t, Token))
        for child in node.children:
            walk(child, depth)

    walk(tree, 0)
    for ident in idents:
        if ident != "usage" and ident not in bound and ident not in _TYPE_NAMES:
            raise ParamCheck(
                where, f"a CEL expression over 'usage' (undeclared reference to {ident!r})", source
            )


def _compile(celpy: Any, source: str, where: str) -> Any:
    """A CEL program for ``source``; :class:`ParamCheck` naming ``where`` when invalid."""
    if not source.strip():
        raise ParamCheck(where, "a non-empty CEL expression", source)
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ParamCheck(where, f"a CEL expression of at most {MAX_EXPRESSION_CHARS} chars", source)
    # celpy.Environment() raises the interpreter's recursion limit for the whole process
    # (sys.setrecursionlimit(2500)); a plugin must not change global state, so put it back.
    limit = sys.getrecursionlimit()
    try:
        env = celpy.Environment()
        try:
            tree = env.compile(source)
        except Exception as exc:  # noqa: BLE001 - celpy raises several parser error types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ParamCheck(where, f"a valid CEL expression ({first})", source) from None
        _static_check(tree, where, source)
        return env.program(tree)
    finally:
        sys.setrecursionlimit(limit)


# ====================================================================== parameters
@attrs.frozen
class ReportedAttribute:
    """One ``attributes`` entry."""

    namespace: str
    """``key.namespace``: dynamic-metadata namespace (empty in config: ``envoy.lb``)."""
    name: str
    """``key.name``: the key inside the namespace."""
    expression: str
    """CEL expression giving the value (a number)."""
    condition: str = ""
    """CEL expression that must be ``true`` for the value to be reported (empty: always)."""


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ParamCheck(where, "str", value)
    return value


def _keys(raw: Any, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(raw, Mapping):
        raise ParamCheck(where, "a mapping with keys " + ", ".join(allowed), raw)
    for key in raw:
        if key not in allowed:
            raise ParamCheck(f"{where}.{key}", "one of the keys " + ", ".join(allowed), key)


def _parse_attribute(i: int, raw: Any) -> ReportedAttribute:
    where = f"attributes[{i}]"
    _keys(raw, where, ("key", "expression", "condition"))
    key = raw.get("key")
    if key is None:
        raise ParamCheck(f"{where}.key", "{namespace, name} (required)", None)
    _keys(key, f"{where}.key", ("namespace", "name"))
    name = _str(f"{where}.key.name", key.get("name", ""))
    if not name:
        raise ParamCheck(f"{where}.key.name", "a non-empty str", name)
    namespace = _str(f"{where}.key.namespace", key.get("namespace", "")) or DEFAULT_NAMESPACE
    expression = _str(f"{where}.expression", raw.get("expression", ""))
    if not expression.strip():
        raise ParamCheck(f"{where}.expression", "a non-empty CEL expression", expression)
    condition = _str(f"{where}.condition", raw.get("condition", "") or "")
    celpy = _celpy()
    if celpy is not None:  # else the constructor reports the missing extra
        _compile(celpy, expression, f"{where}.expression")
        if condition:
            _compile(celpy, condition, f"{where}.condition")
    return ReportedAttribute(namespace, name, expression, condition)


def _parse_attributes(raw: Any) -> tuple[ReportedAttribute, ...]:
    if isinstance(raw, tuple) and all(isinstance(a, ReportedAttribute) for a in raw):
        return raw
    if not isinstance(raw, list | tuple) or len(raw) != 1:
        raise ParamCheck(
            "attributes", "a list of exactly one {key: {namespace, name}, expression}", raw
        )
    return tuple(_parse_attribute(i, item) for i, item in enumerate(raw))


def _is_attributes(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 1
        or not all(isinstance(a, ReportedAttribute) for a in value)
    ):
        raise ParamCheck("attributes", "a tuple of exactly one ReportedAttribute", value)


@attrs.frozen
class RequestAttributeReporterParams:
    """Parameters of ``request-attribute-reporter`` (GIE)."""

    attributes: tuple[ReportedAttribute, ...] = param(
        alias="attributes", parse=_parse_attributes, check=_is_attributes
    )
    """Exactly one ``{key: {namespace (default envoy.lb), name}, expression,
    condition}`` (required, as upstream): the CEL ``expression`` over ``usage`` gives the
    number written to ``namespace.name`` when the optional ``condition`` is true."""


# ====================================================================== plugin
def usage_variable(usage: Usage | None) -> dict[str, Any]:
    """The CEL ``usage`` variable as plain Python (numbers as floats, like a protobuf
    ``Struct``): zeros when the server reported no usage, as upstream's zero struct."""
    usage = usage if usage is not None else Usage()
    out: dict[str, Any] = {
        "prompt_tokens": float(usage.prompt_tokens),
        "completion_tokens": float(usage.completion_tokens),
        "total_tokens": float(usage.prompt_tokens + usage.completion_tokens),
    }
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": float(usage.cached_tokens)}
    return out


_NOT_REPORTED: Final = object()


@register("request-attribute-reporter")
class RequestAttributeReporter:
    """Writes ``int(expression(usage))`` to dynamic metadata ``namespace.name`` when
    ``condition(usage)`` is true (results 0 and -1 are not written, as upstream).

    Runs at the end of the response (``response_complete``, always delivered) and on any
    streamed chunk that carries usage. The metadata goes to ``response.dynamic_metadata``
    when :class:`~inference_sched.framework.types.Response` has that field, and is kept
    in :attr:`reported` (the last responses, by request id) for the embedder either way.
    """

    stability: ClassVar[str] = "beta"
    type: ClassVar[str]
    Params = RequestAttributeReporterParams

    def __init__(self, name: str, params: RequestAttributeReporterParams, handle: Handle) -> None:
        celpy = _celpy()
        if celpy is None:
            raise ConfigError(_CEL_HINT)
        self.name = name
        self.params = params
        attribute = params.attributes[0]
        self.attribute = attribute
        self._celtypes = celpy.celtypes
        self._json_to_cel = celpy.json_to_cel
        self._expression = _compile(celpy, attribute.expression, "attributes[0].expression")
        self._condition = (
            _compile(celpy, attribute.condition, "attributes[0].condition")
            if attribute.condition
            else None
        )
        self._lock = threading.Lock()
        self._memo: tuple[Usage | None, Any] | None = None
        self._last_log_s = -float("inf")
        self.reported: OrderedDict[str, dict[str, dict[str, float]]] = OrderedDict()
        """Dynamic metadata written per request id (``{namespace: {name: value}}``), the
        last :data:`MAX_REMEMBERED_RESPONSES` responses."""
        self.num_reported = 0
        """Values written (the end of a streamed response can write twice: same value)."""
        self.num_skipped = 0
        """Evaluations that wrote nothing (condition false, result 0 or -1)."""
        self.num_errors = 0
        """Evaluations that failed (logged at most once a minute; nothing written)."""

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, usage: Usage | None) -> int | None:
        """The value to report for ``usage``, or ``None`` when nothing is reported
        (condition not true, an error, a non-numeric result, or 0 / -1)."""
        memo = self._memo
        if memo is not None and memo[0] == usage:
            value: Any = memo[1]
        else:
            value = self._compute(usage)
            self._memo = (usage, value)
        return None if value is _NOT_REPORTED else int(value)

    def _compute(self, usage: Usage | None) -> Any:
        activation = {"usage": self._json_to_cel(usage_variable(usage))}
        celtypes = self._celtypes
        try:
            if self._condition is not None:
                ok = self._condition.evaluate(activation)
                if not (isinstance(ok, celtypes.BoolType) and bool(ok)):
                    self.num_skipped += 1
                    return _NOT_REPORTED
            result = self._expression.evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - any CEL error skips the attribute
            self._error(f"evaluation failed: {exc!s:.200}")
            return _NOT_REPORTED
        # celpy returns its own IntType/DoubleType, or plain int/float from arithmetic.
        if isinstance(result, bool | celtypes.BoolType) or not isinstance(result, int | float):
            self._error(f"expression result is not a number: {result!r:.80}")
            return _NOT_REPORTED
        try:
            number = int(float(result))
        except (OverflowError, ValueError):
            self._error(f"expression result is not finite: {result!r:.80}")
            return _NOT_REPORTED
        if number in (0, -1):  # upstream: 0 skipped, -1 is its error sentinel
            self.num_skipped += 1
            return _NOT_REPORTED
        return number

    def _error(self, message: str) -> None:
        self.num_errors += 1
        now = time.monotonic()
        if now - self._last_log_s >= _LOG_INTERVAL_S:
            self._last_log_s = now
            log.warning(
                "plugin %r: attribute %s.%s: %s (expression %r)",
                self.name,
                self.attribute.namespace,
                self.attribute.name,
                message,
                self.attribute.expression,
            )

    # ------------------------------------------------------------------ hooks
    def _report(self, request: Request, response: Response) -> None:
        value = self.evaluate(response.usage)
        if value is None:
            return
        attribute = self.attribute
        with self._lock:
            metadata = self.reported.setdefault(response.request_id, {})
            metadata.setdefault(attribute.namespace, {})[attribute.name] = float(value)
            self.reported.move_to_end(response.request_id)
            while len(self.reported) > MAX_REMEMBERED_RESPONSES:
                self.reported.popitem(last=False)
            self.num_reported += 1
        target = getattr(response, "dynamic_metadata", None)
        if isinstance(target, dict):
            target.setdefault(attribute.namespace, {})[attribute.name] = float(value)

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """A chunk that carries usage: report from it (GIE ResponseBody)."""
        if response.usage is not None:
            self._report(request, response)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """End of the response: report from the final usage (GIE's end-of-stream
        ResponseBody call, whose dynamic metadata rides on the last chunk)."""
        self._report(request, response)


_response_streaming: type[ResponseStreaming] = RequestAttributeReporter
_response_complete: type[ResponseComplete] = RequestAttributeReporter
