"""Fuzzing what a gateway hands over per request: ``prompt_bytes`` on arbitrary JSON
bodies, and ``Request.create`` with arbitrary headers and prompts. A value, or a
DataError naming the field (``messages[2].content: ...``) or the header, within the
budgets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from inference_sched.errors import DataError
from inference_sched.framework import headers as gie_headers
from inference_sched.framework.types import Request
from inference_sched.prefix.prompt_bytes import APIS, prompt_bytes
from tests.fuzz._budget import fuzz_settings, short_repr, typed_outcome

pytestmark = pytest.mark.fuzz

BODY_KEYS = [
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "input_audio",
    "video_url",
    "url",
    "prompt",
    "input",
    "instructions",
    "tools",
    "items",
    "metadata",
    "cache_salt",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "return_assistant_tokens_mask",
    "stream",
]
_KEY = st.one_of(
    st.sampled_from(BODY_KEYS),
    st.sampled_from(BODY_KEYS).map(str.upper),
    st.sampled_from(BODY_KEYS).map(str.title),
    st.text(max_size=6),
)
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 2**32 + 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["user", "system", "assistant", "text", "image_url", "", "<&>\u2028"]),
)
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_KEY, inner, max_size=5),
    max_leaves=24,
)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly request-shaped bodies (messages of role/content blocks, prompts, inputs),
    with any JSON value anywhere."""
    message = st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "system"]) | JSON_VALUES,
            "content": st.text(max_size=10)
            | st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["text", "image_url"]) | JSON_VALUES},
                    optional={"text": st.text(max_size=8) | JSON_VALUES},
                ),
                max_size=3,
            )
            | JSON_VALUES,
        },
    )
    body = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "model": st.text(max_size=8),
                "messages": st.lists(message, max_size=3) | JSON_VALUES,
                "prompt": st.text(max_size=10)
                | st.lists(st.text(max_size=5), max_size=3)
                | st.lists(st.integers(-1, 2**32), max_size=4)
                | JSON_VALUES,
                "input": st.text(max_size=10) | st.lists(message, max_size=2) | JSON_VALUES,
                "instructions": st.text(max_size=8) | JSON_VALUES,
                "items": st.lists(message, max_size=2) | JSON_VALUES,
                "cache_salt": st.text(max_size=4) | JSON_VALUES,
            },
        )
    )
    extra = draw(st.dictionaries(_KEY, JSON_VALUES, max_size=3))
    return {**body, **extra}


def _prompt_bytes(api: str, body: Any) -> bytes | DataError:
    outcome = typed_outcome(
        lambda: prompt_bytes(api, body),
        f"prompt_bytes({api!r}, {short_repr(body)})",
        expected=DataError,
    )
    assert isinstance(outcome, bytes | DataError)
    return outcome


@fuzz_settings()
@given(api=st.sampled_from(APIS), body=_bodies())
def test_request_shaped_bodies_give_bytes_or_data_error(api: str, body: dict[str, Any]) -> None:
    _prompt_bytes(api, body)


@fuzz_settings()
@given(api=st.sampled_from(APIS), body=JSON_VALUES)
def test_any_json_value_gives_bytes_or_data_error(api: str, body: Any) -> None:
    _prompt_bytes(api, body)


def _hostile(kind: str, n: int) -> Any:
    """A hostile value, built in the test (Hypothesis would print it on failure, and a
    deep one breaks its printer)."""
    if kind in ("list", "map"):
        value: Any = "x"
        for _ in range(n):
            value = [value] if kind == "list" else {"content": value}
        return value
    builders: dict[str, Callable[[], Any]] = {
        "long-string": lambda: "x" * (n * 50),
        "many-strings": lambda: ["x"] * n,
        "many-ints": lambda: list(range(n)),
        "huge-int": lambda: 10 ** (4000 + n % 100_000),
        "huge-int-in-message": lambda: [{"content": 10 ** (4000 + n % 100_000)}],
    }
    return builders[kind]()


_HOSTILE_KINDS = ["list", "map", "long-string", "many-strings", "many-ints", "huge-int"]
_HOSTILE_KINDS += ["huge-int-in-message"]


@fuzz_settings()
@given(
    api=st.sampled_from(APIS),
    field=st.sampled_from(["messages", "prompt", "input", "items", "tools", "metadata"]),
    kind=st.sampled_from(_HOSTILE_KINDS),
    n=st.integers(1, 100_000),
)
@example(api="chat/completions", field="messages", kind="huge-int-in-message", n=1)
@example(api="completions", field="prompt", kind="huge-int", n=1)
@example(api="chat/completions", field="messages", kind="list", n=50_000)
def test_hostile_bodies_give_bytes_or_data_error(api: str, field: str, kind: str, n: int) -> None:
    _prompt_bytes(api, {field: _hostile(kind, n), "model": "m"})


@fuzz_settings()
@given(
    api=st.sampled_from(APIS),
    field=st.sampled_from(["messages", "prompt", "input", "items", "cache_salt"]),
    value=st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, "\ud800", "\x00"]),
)
def test_special_values_give_bytes_or_data_error(api: str, field: str, value: Any) -> None:
    _prompt_bytes(api, {field: value, "model": "m"})
    _prompt_bytes(api, {field: [value], "model": "m"})
    _prompt_bytes(api, {field: [{"role": "user", "content": value}], "model": "m"})


@fuzz_settings()
@given(api=st.sampled_from(APIS), body=_bodies())
def test_bodies_through_json_give_bytes_or_data_error(api: str, body: dict[str, Any]) -> None:
    # What a gateway actually has: json.loads of the wire bytes.
    _prompt_bytes(api, json.loads(json.dumps(body)))


# ----------------------------------------------------------------- Request.create
HEADER_NAMES = sorted(
    value
    for name, value in vars(gie_headers).items()
    if name.startswith("HEADER_") and isinstance(value, str)
)
_HEADER_NAME = st.one_of(
    st.sampled_from(HEADER_NAMES),
    st.sampled_from(HEADER_NAMES).map(str.upper),
    st.text(max_size=12),
)
_HEADER_VALUE = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            " ",
            "500",
            " 500\t",
            "-0",
            "-1",
            "1e309",
            "NaN",
            "inf",
            "+Infinity",
            "0x1p-2",
            "0x1p99999999",
            "0x_1p0",
            "1_000",
            "1__0",
            "١٢",
            "5\x00",
        ]
    ),
    st.integers(1, 100_000).map(lambda n: "9" * n),
    st.integers(1, 100_000).map(lambda n: "0x1p" + "9" * n),
    st.integers(1, 100_000).map(lambda n: "1" + "_1" * n),
)


def _check_header(error: Any) -> None:
    # The error names the header it is about.
    assert any(name in str(error) for name in HEADER_NAMES), error


@fuzz_settings()
@given(
    headers=st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=6),
    model=st.text(max_size=10),
    prompt=st.one_of(st.none(), st.binary(max_size=50), st.text(max_size=50)),
    token_ids=st.one_of(st.none(), st.lists(st.integers(0, 2**32 - 1), max_size=20)),
)
@example(headers={"x-slo-ttft-ms": "9" * 100_000}, model="m", prompt=None, token_ids=None)
@example(headers={"x-slo-tpot-ms": "0x1p" + "9" * 100_000}, model="m", prompt=None, token_ids=None)
@example(headers={}, model="m", prompt="\ud800", token_ids=None)
def test_request_create_with_any_headers_gives_a_request_or_data_error(
    headers: dict[str, str], model: str, prompt: bytes | str | None, token_ids: list[int] | None
) -> None:
    outcome = typed_outcome(
        lambda: Request.create(model, prompt=prompt, headers=headers, token_ids=token_ids),
        f"Request.create({short_repr(model)}, headers={short_repr(headers)})",
        expected=DataError,
        check=_check_header,
        source_is_place=True,
    )
    if isinstance(outcome, Request):
        assert outcome.headers == {k.lower(): v for k, v in headers.items()}
        for slo in (outcome.slo_ttft_ms, outcome.slo_tpot_ms):
            assert slo is None or (math.isfinite(slo) and slo >= 0)
