"""Prompt-bytes properties: Go json.Marshal parity and bodies that never crash."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import DataError
from inference_sched.prefix.prompt_bytes import APIS, go_json_marshal, prompt_bytes

# Characters on which Go and Python's json.dumps agree: no HTML set, no U+2028/2029, no
# surrogates (Go's decoder would have replaced them).
_PLAIN_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>&\u2028\u2029"))
_PLAIN_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | _PLAIN_TEXT,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(_PLAIN_TEXT, children, max_size=5)
    ),
    max_leaves=30,
)


@given(_PLAIN_JSON)
def test_marshal_equals_compact_sorted_json_dumps(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert go_json_marshal(value) == expected.encode()


def _go_float_oracle(x: float) -> str:
    """Go's floatEncoder via numpy's Dragon4 (independent of Python's repr)."""
    if x == 0.0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    if 1e-6 <= abs(x) < 1e21:
        return np.format_float_positional(x, unique=True, trim="-")
    text = np.format_float_scientific(x, unique=True, trim="-", exp_digits=2)
    if len(text) >= 4 and text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
        text = text[:-2] + text[-1]  # Go cleans up e-09 to e-9
    return text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_format_matches_go_rules(x: float) -> None:
    got = go_json_marshal(x).decode()
    assert got == _go_float_oracle(x)
    assert float(got) == x


@given(st.integers(-(2**53), 2**53))
def test_integral_floats_have_no_fraction(n: int) -> None:
    assert go_json_marshal(float(n)) == str(n).encode()


@given(st.text())
def test_strings_round_trip_through_json(text: str) -> None:
    got = go_json_marshal(text)
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    assert json.loads(got) == fixed
    assert not {b"<", b">", b"&"} & {bytes([c]) for c in got}


# Random bodies: keys that the parsers look at (in several cases) plus junk, and values of
# every JSON type plus the Python values json.loads can produce that Go would reject.
_KEYS = st.sampled_from(
    [
        "messages",
        "Messages",
        "role",
        "content",
        "type",
        "text",
        "image_url",
        "input_audio",
        "video_url",
        "url",
        "data",
        "format",
        "prompt",
        "input",
        "instructions",
        "tools",
        "items",
        "metadata",
        "documents",
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "cache_salt",
    ]
) | st.text(max_size=4)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
_ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=25,
)


@given(st.sampled_from(APIS), st.dictionaries(_KEYS, _ANY_JSON, max_size=6) | _ANY_JSON)
def test_random_bodies_raise_only_data_error(api: str, body: Any) -> None:
    try:
        got = prompt_bytes(api, body)
    except DataError:
        return
    assert isinstance(got, bytes)
    if api != "completions":
        json.loads(got)  # every JSON API yields valid JSON


_BLOCKS = st.dictionaries(
    st.sampled_from(["type", "text", "image_url", "input_audio", "video_url"]),
    _SCALARS | st.dictionaries(st.sampled_from(["url", "data", "format"]), _SCALARS),
)
_MESSAGES = st.lists(
    st.none()
    | st.dictionaries(
        st.sampled_from(["role", "Role", "content", "name"]),
        _SCALARS | st.lists(st.none() | _BLOCKS, max_size=3),
    ),
    max_size=3,
)


@given(_MESSAGES)
def test_random_chat_messages_raise_only_data_error(messages: list[Any]) -> None:
    try:
        got = prompt_bytes("chat/completions", {"messages": messages})
    except DataError:
        return
    decoded = json.loads(got)
    assert len(decoded) == len(messages)
    assert all(list(m)[-1] == "content" for m in decoded)


_PROMPTS = (
    st.text()
    | st.lists(st.text(max_size=5), max_size=4)
    | st.lists(st.integers(-1, 2**32) | st.floats(-1.0, 2.0**32), max_size=4)
    | _ANY_JSON
)
_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "completions": st.fixed_dictionaries({"prompt": _PROMPTS}, optional={"cache_salt": _SCALARS}),
    "embeddings": st.fixed_dictionaries({"input": _PROMPTS}, optional={"cache_salt": _SCALARS}),
    "responses": st.fixed_dictionaries(
        {"input": _ANY_JSON}, optional={"instructions": _ANY_JSON, "tools": _ANY_JSON}
    ),
    "conversations": st.fixed_dictionaries(
        {
            "items": st.lists(
                st.none()
                | st.dictionaries(st.sampled_from(["type", "role", "content"]), _ANY_JSON),
                max_size=3,
            )
        },
        optional={"metadata": _ANY_JSON},
    ),
    "chat/completions": st.fixed_dictionaries(
        {"messages": _MESSAGES}, optional={"tools": _ANY_JSON, "chat_template_kwargs": _ANY_JSON}
    ),
}


@given(st.sampled_from(APIS).flatmap(lambda api: st.tuples(st.just(api), _BODIES[api])))
def test_targeted_bodies_raise_only_data_error(case: tuple[str, dict[str, Any]]) -> None:
    api, body = case
    try:
        got = prompt_bytes(api, body)
    except DataError:
        return
    if api != "completions":
        json.loads(got)


# Hostile JSON-like values: what a parser, a client or a bug can hand over. Integers past
# Python's 4300-digit str() limit and past every Go range, NaN and infinities, lone
# surrogates, non-string keys, tuples, and nesting far past the interpreter's recursion
# limit. prompt_bytes must answer bytes or DataError, nothing else.
# Built by map: Hypothesis must never repr() an int past 4300 digits (it raises).
_HOSTILE_INTS = st.sampled_from(
    [(1, 10, 5000), (-1, 10, 5000), (1, 10, 4300), (1, 2, 64), (-1, 2, 63), (1, 2, 1024)]
).map(lambda s: s[0] * s[1] ** s[2] - (s[0] < 0 and s[1] == 2))
_HOSTILE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=6) | (
    st.sampled_from(["\ud800", "a\udfff", "\ud83d\ude00", "\udc00\ud800", "\u212a", "MESSAGES"])
)
_HOSTILE_KEYS: st.SearchStrategy[Any] = (
    _KEYS
    | _HOSTILE_TEXT
    | st.integers()
    | _HOSTILE_INTS
    | st.none()
    | st.booleans()
    | st.floats()
    | st.tuples(st.integers(), _HOSTILE_INTS)
)
_HOSTILE_SCALARS: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers()
    | _HOSTILE_INTS
    | st.floats()
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
    | _HOSTILE_TEXT
)


def _nest(value: Any, depth: int, as_map: bool) -> Any:
    for _ in range(depth):
        value = {"content": value} if as_map else [value]
    return value


_DEEP: st.SearchStrategy[Any] = st.builds(
    _nest, _HOSTILE_SCALARS, st.integers(0, 3000), st.booleans()
)
_HOSTILE_JSON: st.SearchStrategy[Any] = st.recursive(
    _HOSTILE_SCALARS | _DEEP,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(_HOSTILE_KEYS, children, max_size=4)
    ),
    max_leaves=20,
)
_HOSTILE_BODY: st.SearchStrategy[Any] = (
    st.dictionaries(_KEYS | _HOSTILE_KEYS, _HOSTILE_JSON, max_size=6)
    | st.fixed_dictionaries(
        {"messages": st.lists(st.dictionaries(_KEYS, _HOSTILE_JSON, max_size=3), max_size=3)},
        optional={"tools": _HOSTILE_JSON, "chat_template_kwargs": _HOSTILE_JSON},
    )
    | st.fixed_dictionaries({"prompt": _HOSTILE_JSON}, optional={"cache_salt": _HOSTILE_JSON})
    | st.fixed_dictionaries({"input": _HOSTILE_JSON}, optional={"tools": _HOSTILE_JSON})
    | st.fixed_dictionaries(
        {"items": st.lists(st.dictionaries(_KEYS, _HOSTILE_JSON, max_size=3), max_size=3)},
        optional={"metadata": _HOSTILE_JSON},
    )
    | _HOSTILE_JSON
)


@given(st.sampled_from(APIS) | _HOSTILE_SCALARS | st.just([]), _HOSTILE_BODY)
def test_hostile_bodies_give_bytes_or_data_error(api: Any, body: Any) -> None:
    try:
        got = prompt_bytes(api, body)
    except DataError as err:
        message = str(err)
    else:
        assert isinstance(got, bytes)
        return
    assert len(message) < 500  # values and paths are cut short
