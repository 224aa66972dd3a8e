"""The bytes GIE's approximate prefix cache hashes, taken from an OpenAI request body.

GIE's ``approx-prefix-cache-producer`` (gateway-api-inference-extension:
``pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix/hashing.go``,
``getUserInputBytes``) hashes different bytes for each API:

=================  ==========================================================================
API                bytes
=================  ==========================================================================
conversations      ``json.Marshal(items)``; item = ``{"type"?, "role"?, "content"?}``
responses          ``json.Marshal([{"instructions": …}?, {"tools": …}?, {"input": …}])``
chat/completions   ``json.Marshal(messages)``; message = ``{"role"?, "content"}``
completions        the prompt text: a string as is, a list of strings joined by one space,
                   token ids → ``b""``
embeddings         ``json.Marshal`` of the Go struct ``{"Raw", "Strings", "TokenIDs"}``
=================  ==========================================================================

Byte parity with Go needs two things this module reproduces:

* **Go's decoding into GIE's structs** (the openai-parser:
  ``pkg/epp/framework/plugins/requesthandling/parsers/openai/openai.go``). Only declared
  fields survive; a key matches a field case-insensitively (Go's ``foldName``), the last matching
  key wins; JSON ``null`` leaves a field at its zero value; numbers inside ``any`` fields
  become ``float64``; a value of the wrong type fails the whole body (HTTP 400 in GIE,
  :class:`~inference_sched.errors.DataError` here).
* **Go's** ``encoding/json.Marshal`` (:func:`go_json_marshal`): compact, map keys sorted,
  struct fields in declared order, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as
  ``\\u003c`` …, invalid UTF-16 (lone surrogates) replaced by U+FFFD, and Go's float
  format (``1e+21``, ``1e-7``, ``-0``, no ``.0`` on integral values).
"""

from __future__ import annotations

import json.encoder
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, final

import attrs

from inference_sched.errors import DataError

__all__ = [
    "APIS",
    "Api",
    "GoStruct",
    "api_from_path",
    "cache_salt",
    "go_json_marshal",
    "prompt_bytes",
]

Api = Literal["conversations", "responses", "chat/completions", "completions", "embeddings"]
"""The OpenAI APIs GIE's openai-parser tells apart, spelled as GIE spells them."""

APIS: Final[tuple[Api, ...]] = (
    "conversations",
    "responses",
    "chat/completions",
    "completions",
    "embeddings",
)
"""Every :data:`Api`, in the order :func:`api_from_path` tries their path suffixes."""

_MAX_UINT32: Final = 2**32 - 1
_MIN_INT64: Final = -(2**63)
_MAX_UINT64: Final = 2**64 - 1
_MAX_REPR_CHARS: Final = 40
_MAX_REPR_INT_BITS: Final = 4096
"""Larger integers are described by their size (``repr`` refuses past 4300 digits)."""
_MAX_PATH_CHARS: Final = 200
"""A field path in an error message is cut to this many characters."""


def _to_fields(fields: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple(fields)


@final
@attrs.frozen
class GoStruct:
    """A Go struct value for :func:`go_json_marshal`: fields are emitted in the given order.

    Go marshals a struct's fields in declaration order and a map's keys sorted; a plain
    :class:`~collections.abc.Mapping` stands for a Go map, this class for a struct. Fields
    tagged ``omitempty`` are the builder's business: leave them out of ``fields``.

    Attributes:
        fields: ``(json name, value)`` pairs, in declaration order.
    """

    fields: tuple[tuple[str, Any], ...] = attrs.field(converter=_to_fields)


@final
class _GoAny:
    """Marks a value decoded into a Go ``any``: its numbers are ``float64``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _PathError(Exception):
    """A marshal failure; ``path`` is filled in innermost-first while unwinding."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


# ---------------------------------------------------------------------------------------
# Go encoding/json.Marshal
# ---------------------------------------------------------------------------------------


def go_json_marshal(value: Any) -> bytes:
    """Marshal a JSON-like value exactly as Go's ``encoding/json.Marshal`` would.

    Python types stand for Go types: ``None`` → nil, ``bool``, ``int`` → a Go integer
    (exact digits), ``float`` → ``float64``, ``str`` → string, ``list``/``tuple`` → slice,
    :class:`~collections.abc.Mapping` with ``str`` keys → ``map[string]…`` (keys sorted by
    byte order), :class:`GoStruct` → struct (fields in the order given).

    Output rules (Go >= 1.22): no whitespace; ``"``, ``\\``, ``\\b``, ``\\f``, ``\\n``,
    ``\\r``, ``\\t`` get short escapes and other control characters ``\\u00XX``; ``<``, ``>``,
    ``&``, U+2028, U+2029 are escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``, ``\\u2028``,
    ``\\u2029``; other characters are written as UTF-8; a lone surrogate becomes U+FFFD (as
    Go's decoder does with an unpaired ``\\uD800`` escape). Floats use the shortest digits
    that round-trip, in ``%f`` style for ``1e-6 <= |x| < 1e21`` and ``%e`` style otherwise
    with an unpadded exponent: ``1`` for ``1.0``, ``-0``, ``1e+21``, ``1e-7``.

    Args:
        value: the value to marshal.

    Returns:
        The UTF-8 JSON text.

    Raises:
        DataError: for a value Go cannot marshal (NaN, ±inf, an int outside the 64-bit
            range, a non-``str`` map key, an unsupported type), naming where it sits.
    """
    return _marshal(value, "value")


def _marshal(value: Any, root: str) -> bytes:
    out: list[str] = []
    try:
        _encode(value, out, False)
    except _PathError as err:
        path = "".join(reversed(err.path))
        if len(path) > _MAX_PATH_CHARS:
            path = path[: _MAX_PATH_CHARS - 3] + "..."
        raise DataError(f"{root}{path}: {err.message}") from None
    except RecursionError:
        raise DataError(f"{root}: nested too deeply to marshal") from None
    return _to_utf8("".join(out))


def _encode(value: Any, out: list[str], as_float64: bool) -> None:
    """Append the Go JSON text of ``value``; ``as_float64``: ints are Go ``float64``."""
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(_format_float(_int_to_float64(value)) if as_float64 else _format_int(value))
    elif isinstance(value, float):
        out.append(_format_float(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            try:
                _encode(item, out, as_float64)
            except _PathError as err:
                err.path.append(f"[{index}]")
                raise
        out.append("]")
    elif isinstance(value, Mapping):
        _encode_map(value, out, as_float64)
    elif isinstance(value, GoStruct):
        out.append("{")
        for index, (name, item) in enumerate(value.fields):
            if index:
                out.append(",")
            out.append(_quote(name))
            out.append(":")
            try:
                _encode(item, out, as_float64)
            except _PathError as err:
                err.path.append(f".{name}")
                raise
        out.append("}")
    elif isinstance(value, _GoAny):
        _encode(value.value, out, True)
    else:
        raise _PathError(f"cannot marshal {_describe(value)}")


def _encode_map(value: Mapping[Any, Any], out: list[str], as_float64: bool) -> None:
    items: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _PathError(f"object keys must be strings, got {_describe(key)}")
        # Go's decoder already turned a lone surrogate into U+FFFD, so keys that only
        # differ there collapse into one (the last wins, as in a Go map).
        items[_fix_surrogates(key)] = item
    out.append("{")
    # Go sorts by the keys' UTF-8 bytes; code point order is the same order.
    for index, key in enumerate(sorted(items)):
        if index:
            out.append(",")
        out.append(_quote(key))
        out.append(":")
        try:
            _encode(items[key], out, as_float64)
        except _PathError as err:
            err.path.append(f".{_cut(key)}")
            raise
    out.append("}")


_HTML_ESCAPES: Final = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_encode_basestring: Final[Callable[[str], str]] = json.encoder.encode_basestring


def _quote(text: str) -> str:
    """Go's quoted string: Python's escapes agree with Go >= 1.22 except the HTML set.

    Lone surrogates pass through here; :func:`_to_utf8` replaces them at the end.
    """
    quoted = _encode_basestring(text)
    # `in` + str.replace run at memchr speed; a regex with a callback is ~100x slower here.
    for char, escape in _HTML_ESCAPES:
        if char in quoted:
            quoted = quoted.replace(char, escape)
    return quoted


def _to_utf8(text: str) -> bytes:
    """UTF-8 bytes, lone surrogates replaced by U+FFFD (a Python str may hold them)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _fix_surrogates(text).encode("utf-8")


def _fix_surrogates(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD, as Go's decoder does."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _format_int(value: int) -> str:
    if not _MIN_INT64 <= value <= _MAX_UINT64:
        raise _PathError(f"integer {_short_repr(value)} does not fit a Go 64-bit integer")
    return str(value)


def _int_to_float64(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _PathError(
            f"number {_short_repr(value)} is out of float64 range (Go rejects it)"
        ) from None


def _format_float(value: float) -> str:
    """Go's ``floatEncoder``: ES6 number-to-string, shortest round-trip digits."""
    if math.isnan(value) or math.isinf(value):
        raise _PathError(f"cannot marshal {value!r}: Go rejects NaN and infinities")
    if value == 0.0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    # repr() gives the shortest digits that round-trip, as Go's strconv with precision -1.
    mantissa, _, exponent_text = repr(magnitude).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent_text) if exponent_text else 0)
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    significant = significant.rstrip("0")
    if magnitude < 1e-6 or magnitude >= 1e21:
        exponent = point - 1
        head = significant[0]
        tail = f".{significant[1:]}" if len(significant) > 1 else ""
        # Go writes e+21 and e-07, then trims the latter to e-7: no padding either way.
        return f"{sign}{head}{tail}e{'-' if exponent < 0 else '+'}{abs(exponent)}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{significant}"
    if point >= len(significant):
        return f"{sign}{significant}{'0' * (point - len(significant))}"
    return f"{sign}{significant[:point]}.{significant[point:]}"


# ---------------------------------------------------------------------------------------
# Path → API, cache salt
# ---------------------------------------------------------------------------------------


def api_from_path(path: str) -> Api:
    """The API of a request path, as GIE's openai-parser picks it.

    One trailing ``/`` is ignored, then the first matching suffix wins, in this order:
    ``/conversations``, ``/responses``, ``/chat/completions``, ``/completions``,
    ``/embeddings``. Anything else is ``completions``, GIE's backward-compatible default.
    Like GIE, this expects a path the proxy has normalized: a query string is not stripped.

    Args:
        path: the ``:path`` header (or ``x-original-path`` / ``x-forwarded-path``).

    Returns:
        One of :data:`APIS`.
    """
    if path.endswith("/"):
        path = path[:-1]
    for api in APIS:
        if path.endswith("/" + api):
            return api
    return "completions"


def cache_salt(body: Mapping[str, Any]) -> str:
    """The body's ``cache_salt`` (GIE seeds the first block hash with it), else ``""``.

    Args:
        body: the parsed request body.

    Returns:
        The salt; ``""`` when the key is absent or ``null``.

    Raises:
        DataError: when the body is not an object or ``cache_salt`` is not a string (GIE
            rejects such a body).
    """
    fields = _struct_fields(_require_object(body, "body"), _SALT_FIELDS, "body")
    return _string_field(fields, "cache_salt", "cache_salt")


# ---------------------------------------------------------------------------------------
# Request body → hashed bytes
# ---------------------------------------------------------------------------------------


def prompt_bytes(api: str, body: Mapping[str, Any]) -> bytes:
    """The bytes GIE's approximate prefix cache hashes for a request body.

    The body is checked as GIE's openai-parser checks it: chat needs at least
    one message; completions a non-empty ``prompt`` (a string, a list of strings, or a list
    of token ids in uint32 range); responses an ``input``; conversations at least one item;
    embeddings a non-empty ``input``. Declared fields of the wrong JSON type fail too, as
    Go's ``json.Unmarshal`` into GIE's structs fails.

    Args:
        api: one of :data:`APIS` (see :func:`api_from_path`).
        body: the request body as parsed from JSON (``json.loads``).

    Returns:
        The bytes to hash; ``b""`` for a completions prompt of token ids.

    Raises:
        DataError: the body does not pass validation; the message names the field, e.g.
            ``messages[2].content: expected a string or a list of content blocks, got 3
            (int)``. No other exception escapes.
    """
    build = _BUILDERS.get(api) if isinstance(api, str) else None  # a list is unhashable
    if build is None:
        raise DataError(f"api: expected one of {', '.join(APIS)}, got {_describe(api)}")
    try:
        return build(_require_object(body, "body"))
    except RecursionError:
        raise DataError("body: nested too deeply") from None


def _body_fields(body: Mapping[Any, Any], declared: frozenset[str]) -> dict[str, Any]:
    """The body's declared fields (see :func:`_struct_fields`), its ``cache_salt`` checked."""
    fields = _struct_fields(body, declared, "body")
    _string_field(fields, "cache_salt", "cache_salt")
    return fields


def _marshal_items(
    fields: Mapping[str, Any], name: str, what: str, convert: Callable[[Any, str], GoStruct]
) -> bytes:
    """``json.Marshal`` of the list field ``name`` (at least one element, each decoded by
    ``convert(element, path)``)."""
    items = _list_field(fields, name, name)
    if not items:
        raise DataError(f"{name}: expected at least one {what}, got none")
    return _marshal([convert(item, f"{name}[{i}]") for i, item in enumerate(items)], name)


def _text_or_tokens_field(
    fields: Mapping[str, Any], name: str
) -> tuple[str, list[str] | None, list[int] | None]:
    """:func:`_text_or_tokens` of the field ``name``, which must not be empty."""
    raw, strings, token_ids = _text_or_tokens(fields.get(name), name)
    if not raw and not strings and not token_ids:
        raise DataError(f"{name}: expected a non-empty string, list of strings or token ids")
    return raw, strings, token_ids


def _chat_bytes(body: Mapping[Any, Any]) -> bytes:
    fields = _body_fields(body, _CHAT_FIELDS)
    for name in ("tools", "documents"):
        _check_any(_list_field(fields, name, name), name)
    _string_field(fields, "chat_template", "chat_template")
    for name in ("return_assistant_tokens_mask", "continue_final_message", "add_generation_prompt"):
        _bool_field(fields, name, name)
    _check_any(
        _object_field(fields, "chat_template_kwargs", "chat_template_kwargs"),
        "chat_template_kwargs",
    )
    return _marshal_items(fields, "messages", "message", _chat_message)


def _chat_message(message: Any, path: str) -> GoStruct:
    # A null element is Go's zero Message: no role, content "".
    fields = _struct_fields(_optional_object(message, path), _MESSAGE_FIELDS, path)
    role = _string_field(fields, "role", f"{path}.role")
    content = _chat_content(fields.get("content"), f"{path}.content")
    return GoStruct((("role", role), ("content", content)) if role else (("content", content),))


def _chat_content(content: Any, path: str) -> str | list[GoStruct]:
    # Content.MarshalJSON: the string when non-empty, else the blocks (even []), else "".
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list | tuple):
        return [_content_block(b, f"{path}[{i}]") for i, b in enumerate(content)]
    raise DataError(
        f"{path}: expected a string or a list of content blocks, got {_describe(content)}"
    )


def _content_block(block: Any, path: str) -> GoStruct:
    fields = _struct_fields(_optional_object(block, path), _BLOCK_FIELDS, path)
    block_type = _string_field(fields, "type", f"{path}.type")
    text = _string_field(fields, "text", f"{path}.text")
    image = _nested_block(fields, "image_url", ("url",), path)
    audio = _nested_block(fields, "input_audio", ("data", "format"), path)
    video = _nested_block(fields, "video_url", ("url",), path)
    # "type" has no omitempty; the three nested structs are never "empty" to Go.
    head: tuple[tuple[str, Any], ...] = (("type", block_type),)
    if text:
        head += (("text", text),)
    return GoStruct((*head, ("image_url", image), ("input_audio", audio), ("video_url", video)))


def _nested_block(
    fields: Mapping[str, Any], name: str, names: tuple[str, ...], path: str
) -> GoStruct:
    inner_path = f"{path}.{name}"
    inner = _struct_fields(_optional_object(fields.get(name), inner_path), frozenset(names), path)
    pairs = [(n, _string_field(inner, n, f"{inner_path}.{n}")) for n in names]
    return GoStruct((n, v) for n, v in pairs if v)


def _completions_bytes(body: Mapping[Any, Any]) -> bytes:
    raw, strings, _ = _text_or_tokens_field(_body_fields(body, _COMPLETIONS_FIELDS), "prompt")
    # Prompt.PlainText(): the string, else the strings joined by one space; ids give "".
    text = raw or " ".join(strings or ())
    return _to_utf8(text)


def _embeddings_bytes(body: Mapping[Any, Any]) -> bytes:
    raw, strings, token_ids = _text_or_tokens_field(_body_fields(body, _EMBEDDINGS_FIELDS), "input")
    # EmbeddingsInput has no MarshalJSON and no json tags: Go's field names, nil → null.
    return _marshal(
        GoStruct((("Raw", raw), ("Strings", strings), ("TokenIDs", token_ids))), "input"
    )


def _responses_bytes(body: Mapping[Any, Any]) -> bytes:
    fields = _body_fields(body, _RESPONSES_FIELDS)
    if fields.get("input") is None:
        raise DataError("input: required for the responses API, got none")
    # Each element is a one-key map[string]any; marshal them one by one so that an error
    # names the field ("input[2]: ...") rather than the element's position.
    pieces = [
        b'{"%s":%s}' % (name.encode(), _marshal(_GoAny(fields[name]), name))
        for name in ("instructions", "tools", "input")
        if fields.get(name) is not None
    ]
    return b"[" + b",".join(pieces) + b"]"


def _conversations_bytes(body: Mapping[Any, Any]) -> bytes:
    fields = _body_fields(body, _CONVERSATIONS_FIELDS)
    _check_any(_object_field(fields, "metadata", "metadata"), "metadata")
    return _marshal_items(fields, "items", "conversation item", _conversation_item)


def _conversation_item(item: Any, path: str) -> GoStruct:
    fields = _struct_fields(_optional_object(item, path), _ITEM_FIELDS, path)
    pairs: list[tuple[str, Any]] = []
    for name in ("type", "role"):
        value = _string_field(fields, name, f"{path}.{name}")
        if value:
            pairs.append((name, value))
    content = fields.get("content")
    if content is not None:  # an `any` field: omitempty drops only nil
        pairs.append(("content", _GoAny(content)))
    return GoStruct(pairs)


_BUILDERS: Final[dict[str, Callable[[Mapping[Any, Any]], bytes]]] = {
    "conversations": _conversations_bytes,
    "responses": _responses_bytes,
    "chat/completions": _chat_bytes,
    "completions": _completions_bytes,
    "embeddings": _embeddings_bytes,
}


# ---------------------------------------------------------------------------------------
# Go-decoding helpers
# ---------------------------------------------------------------------------------------

_SALT_FIELDS: Final = frozenset({"cache_salt"})
_CHAT_FIELDS: Final = frozenset(
    {
        "messages",
        "tools",
        "documents",
        "chat_template",
        "return_assistant_tokens_mask",
        "continue_final_message",
        "add_generation_prompt",
        "chat_template_kwargs",
        "cache_salt",
    }
)
_MESSAGE_FIELDS: Final = frozenset({"role", "content"})
_BLOCK_FIELDS: Final = frozenset({"type", "text", "image_url", "input_audio", "video_url"})
_COMPLETIONS_FIELDS: Final = frozenset({"prompt", "cache_salt"})
_EMBEDDINGS_FIELDS: Final = frozenset({"input", "cache_salt"})
_RESPONSES_FIELDS: Final = frozenset({"input", "instructions", "tools", "cache_salt"})
_CONVERSATIONS_FIELDS: Final = frozenset({"items", "metadata", "cache_salt"})
_ITEM_FIELDS: Final = frozenset({"type", "role", "content"})

# Non-ASCII runes that Go's foldName (ToUpper(ToLower(r))) maps onto an ASCII letter.
_NON_ASCII_FOLDS: Final = {"\u212a": "k", "\u017f": "s", "\u0130": "i", "\u0131": "i"}


def _struct_fields(obj: Mapping[Any, Any], names: frozenset[str], path: str) -> dict[str, Any]:
    """The values Go's decoder puts in a struct with JSON field ``names``.

    A key matches a field exactly or case-insensitively (Go's ``foldName``); the last key
    that matches wins; keys matching no field are ignored.
    """
    found: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise DataError(f"{path}: object keys must be strings, got {_describe(key)}")
        if key in names:
            found[key] = value
        elif key != key.lower() or not key.isascii():
            folded = _go_fold(key)
            if folded in names:
                found[folded] = value
    return found


def _go_fold(key: str) -> str:
    return "".join(
        c.lower() if c.isascii() else _NON_ASCII_FOLDS.get(c, c) for c in _fix_surrogates(key)
    )


def _require_object(value: Any, path: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise DataError(f"{path}: expected a JSON object, got {_describe(value)}")
    return value


def _optional_object(value: Any, path: str) -> Mapping[Any, Any]:
    """An object, or ``{}`` for null (Go leaves a struct at its zero value)."""
    if value is None:
        return {}
    return _require_object(value, path)


def _string_field(fields: Mapping[str, Any], name: str, path: str) -> str:
    value = fields.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}: expected a string, got {_describe(value)}")
    return value


def _bool_field(fields: Mapping[str, Any], name: str, path: str) -> bool:
    value = fields.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise DataError(f"{path}: expected a boolean, got {_describe(value)}")
    return value


def _list_field(fields: Mapping[str, Any], name: str, path: str) -> list[Any]:
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise DataError(f"{path}: expected a list, got {_describe(value)}")
    return list(value)


def _object_field(fields: Mapping[str, Any], name: str, path: str) -> Mapping[Any, Any]:
    return _optional_object(fields.get(name), path)


def _check_any(value: Any, path: str) -> None:
    """Fail as Go's decoder would on a value it cannot hold in an ``any`` (e.g. 1e400)."""
    _marshal(_GoAny(value), path)


def _text_or_tokens(value: Any, path: str) -> tuple[str, list[str] | None, list[int] | None]:
    """GIE's Prompt / EmbeddingsInput decoding: ``(Raw, Strings, TokenIDs)``.

    The first element decides the kind of a list: all strings, or all numbers that are
    integers in uint32 range (JSON ``3`` and ``3.0`` are both token 3).
    """
    if isinstance(value, str):
        return value, None, None
    if not isinstance(value, list | tuple):
        raise DataError(
            f"{path}: expected a string or a list of strings or token ids, got {_describe(value)}"
        )
    if not value:
        return "", None, None
    if isinstance(value[0], str):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise DataError(
                    f"{path}[{index}]: expected a string like {path}[0], got {_describe(item)}"
                )
        return "", list(value), None
    if _is_number(value[0]):
        return "", None, [_token_id(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise DataError(f"{path}[0]: expected a string or a token id, got {_describe(value[0])}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _token_id(value: Any, path: str) -> int:
    if not _is_number(value):
        raise DataError(
            f"{path}: expected a token id like the first element, got {_describe(value)}"
        )
    if isinstance(value, float) and not value.is_integer():
        raise DataError(f"{path}: expected an integer token id, got {_describe(value)}")
    if not 0 <= value <= _MAX_UINT32:
        raise DataError(
            f"{path}: expected a token id in [0, {_MAX_UINT32}], got {_describe(value)}"
        )
    return int(value)


def _short_repr(value: object) -> str:
    return _cut(_repr_head(value, _MAX_REPR_CHARS))


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_REPR_CHARS else text[: _MAX_REPR_CHARS - 3] + "..."


def _repr_head(value: object, budget: int) -> str:
    """``repr(value)``, or a head of it longer than ``budget`` characters.

    Bounded whatever the value: a container is walked only until the text outgrows the
    budget (so depth and size cost nothing), a string is cut before quoting, and an
    integer too long for ``repr`` (Python refuses more than 4300 digits) is shown by its
    size.
    """
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        bits = value.bit_length()
        return f"<int of {bits} bits>" if bits > _MAX_REPR_INT_BITS else int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, str):
        return repr(str(value[: max(budget, 0) + 1]))
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value[: max(budget, 0) + 1]))
    if isinstance(value, Mapping):
        out = "{"
        for index, (key, item) in enumerate(value.items()):
            if len(out) > budget:
                return out
            out += ", " if index else ""
            out += _repr_head(key, budget - len(out)) + ": "
            out += _repr_head(item, budget - len(out))
        return out + "}"
    if isinstance(value, list | tuple):
        out = "[" if isinstance(value, list) else "("
        for index, item in enumerate(value):
            if len(out) > budget:
                return out
            out += ", " if index else ""
            out += _repr_head(item, budget - len(out))
        if isinstance(value, list):
            return out + "]"
        return out + (",)" if len(value) == 1 else ")")
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not escape
        return f"<{type(value).__name__} object>"


def _describe(value: object) -> str:
    """``value (type)`` for error messages, the value's repr cut short."""
    return f"{_short_repr(value)} ({type(value).__name__})"
