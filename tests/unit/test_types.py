"""Request.create header handling, Endpoint roles and host strings, results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import DataError
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Role,
    SchedulingResult,
    _go_parse_float,
)
from inference_sched.state.endpoint import strip_port


def test_create_reads_gie_headers() -> None:
    r = Request.create(
        "base",
        prompt="hello",
        headers={
            "X-Request-Id": "abc",
            "x-slo-ttft-ms": "250.5",
            "x-slo-tpot-ms": "20",
            "x-gateway-inference-objective": "premium",
            "x-gateway-inference-fairness-id": "tenant-a",
            "x-gateway-model-name-rewrite": "lora-7",
            "x-session-token": "c2Vzcw==",
        },
        priority=-1,
        subset_hint=["10.0.0.1:8000"],
    )
    assert r.request_id == "abc"
    assert r.incoming_model == "base"
    assert r.target_model == "lora-7"
    assert r.prompt == b"hello"
    assert r.request_size_bytes == 5
    assert r.slo_ttft_ms == 250.5
    assert r.slo_tpot_ms == 20.0
    assert r.objective == "premium"
    assert r.fairness_id == "tenant-a"
    assert r.lora_adapter == "lora-7"
    assert r.session_key == "c2Vzcw=="
    assert r.subset_hint == ("10.0.0.1:8000",)
    assert r.is_sheddable
    assert r.headers["x-request-id"] == "abc"


def test_create_defaults() -> None:
    r = Request.create("m", headers={"x-session-id": "s1"})
    assert len(r.request_id) == 36  # uuid4
    assert r.fairness_id == "default-flow"
    assert r.slo_ttft_ms is None
    assert r.slo_tpot_ms is None
    assert r.session_key == "s1"
    assert r.subset_hint is None
    assert r.request_size_bytes == 0
    assert not r.is_sheddable


def test_create_encodes_a_lone_surrogate_in_the_prompt() -> None:
    # A Python str may hold a lone surrogate, which strict UTF-8 refuses: it used to
    # raise UnicodeEncodeError. Like a Go string's bytes it passes through, and distinct
    # prompts stay distinct (no shared U+FFFD replacement).
    r = Request.create("m", prompt="\ud800")
    assert r.prompt == b"\xed\xa0\x80"
    assert r.request_size_bytes == 3
    assert (
        Request.create("m", prompt="a\udfff").prompt != Request.create("m", prompt="a\ud800").prompt
    )
    assert Request.create("m", prompt="h\u00e9").prompt == "h\u00e9".encode()


def test_create_keeps_surrogates_in_the_model_and_headers_as_text() -> None:
    r = Request.create(
        "m\udc80",
        headers={"x-gateway-model-name-rewrite": "t\ud800", "x-session-id": "\udfff"},
    )
    assert (r.incoming_model, r.target_model, r.session_key) == ("m\udc80", "t\ud800", "\udfff")
    with pytest.raises(DataError, match="x-slo-ttft-ms"):
        Request.create("m", headers={"x-slo-ttft-ms": "1\ud800"})


@pytest.mark.parametrize(
    ("base_models", "expected"),
    [((), "m"), (("m",), None), (("other",), "m")],
    ids=["no-base-list", "target-is-base", "target-is-adapter"],
)
def test_lora_adapter_is_the_target_model_when_it_is_an_adapter(
    base_models: tuple[str, ...], expected: str | None
) -> None:
    assert Request.create("m", base_models=base_models).lora_adapter == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", r"header x-slo-ttft-ms: expected a number of milliseconds, got 'fast'"),
        ("-5", r"header x-slo-ttft-ms: expected a finite number of milliseconds >= 0"),
        ("nan", r"header x-slo-ttft-ms: expected a finite number"),
    ],
)
def test_bad_slo_header_names_the_header(value: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Request.create("m", headers={"x-slo-ttft-ms": value})


def test_empty_slo_header_is_absent() -> None:
    assert Request.create("m", headers={"x-slo-tpot-ms": " "}).slo_tpot_ms is None


# Go's strconv.ParseFloat(s, 64), as GIE parses the SLO headers; expected values from Go's
# src/strconv/atof_test.go where it has the case ("1_23.50_0_0e+1_2" -> 1.235e+14,
# "0x_1_2.3_4_5p+1_2" -> 74565, and the underscore placements it rejects).
GO_FLOATS: list[tuple[str, float]] = [
    ("0", 0.0),
    ("250", 250.0),
    ("250.5", 250.5),
    ("+1", 1.0),
    ("-1", -1.0),
    (".5", 0.5),
    ("5.", 5.0),
    ("1e3", 1000.0),
    ("1E+3", 1000.0),
    ("15e-1", 1.5),
    ("007", 7.0),
    ("1_000", 1000.0),  # Go accepts underscores between digits, prefix or not
    ("1_23.50_0_0e+1_2", 1.235e14),
    ("1e1_0", 1e10),
    ("0x1p0", 1.0),
    ("0x1.8p1", 3.0),
    ("0X.8P-1", 0.25),
    ("-0x1p-2", -0.25),
    ("0xAp0", 10.0),
    ("0x1.p4", 16.0),
    ("0x_1_2.3_4_5p+1_2", 74565.0),
    ("0x1p1_0", 1024.0),
    ("1e-400", 0.0),  # underflow is 0 in Go too
    ("1e400", math.inf),  # Go: +Inf with ErrRange; rejected as not finite either way
    ("0x1p99999", math.inf),
    ("-0x1p99999", -math.inf),
    ("inf", math.inf),
    ("+Inf", math.inf),
    ("-INFINITY", -math.inf),
    ("iNfInItY", math.inf),
]

GO_SYNTAX_ERRORS: list[str] = [
    "",
    " 1",
    "1 ",
    "1\n",
    "+",
    ".",
    "e5",
    "1e",
    "1e+",
    "1e_5",
    "1e+_5",
    "_1",
    "1_",
    "1__0",
    "1_.5",
    "1._5",
    "1.5_e3",
    "1e5_",
    "+_1",
    "1.2.3",
    "0x",
    "0x1",  # Go's hex floats need a p exponent
    "0x1.8",
    "0xp1",
    "0x__1p0",
    "0x_.8p0",
    "0x1_p0",
    "0x1p",
    "0x1pA",
    "0b1",
    "0o7",
    "1f",
    "1d",
    "++1",
    "+-1",
    "+nan",  # Go's special() takes a sign for infinities only
    "-NaN",
    "in",
    "infin",
    "infinityy",
    "nana",
    "\u0661\u0662",  # Arabic-Indic digits: float() reads 12
    "\uff11",  # fullwidth 1
    "\u0661e3",
    "1\u0660",
    "\u00a01",  # no-break space: float() strips it
    "\u20031",
    "1\u2003",
    "\u0130nf",  # Python's IGNORECASE would fold these onto ASCII letters
    "\u212a",
    "in\u0192",
]


@pytest.mark.parametrize(("text", "value"), GO_FLOATS, ids=[t for t, _ in GO_FLOATS])
def test_go_parse_float_accepts_what_go_accepts(text: str, value: float) -> None:
    got = _go_parse_float(text)
    assert got == value
    assert got is not None
    assert math.copysign(1.0, got) == math.copysign(1.0, value)


def test_go_parse_float_nan() -> None:
    for text in ("nan", "NaN", "NAN"):
        got = _go_parse_float(text)
        assert got is not None
        assert math.isnan(got)


@pytest.mark.parametrize("text", GO_SYNTAX_ERRORS, ids=[ascii(t) for t in GO_SYNTAX_ERRORS])
def test_go_parse_float_rejects_what_go_rejects(text: str) -> None:
    assert _go_parse_float(text) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1_000", 1000.0),
        ("0x1p4", 16.0),
        ("\t 250 \t", 250.0),  # HTTP's optional whitespace around a field value
        ("-0", 0.0),
    ],
)
def test_slo_header_go_syntax(value: str, expected: float) -> None:
    got = Request.create("m", headers={"x-slo-ttft-ms": value}).slo_ttft_ms
    assert got == expected
    assert got is not None
    assert math.copysign(1.0, got) == 1.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("\u0661\u0662", r"^header x-slo-ttft-ms: expected a number of milliseconds, got '"),
        ("\uff15\uff10", r"expected a number of milliseconds"),
        ("\u00a0250", r"expected a number of milliseconds"),
        ("250\u2003", r"expected a number of milliseconds"),
        ("1__0", r"expected a number of milliseconds, got '1__0'"),
        ("_10", r"expected a number of milliseconds"),
        ("0x10", r"expected a number of milliseconds, got '0x10'"),
        ("-nan", r"expected a number of milliseconds"),
        ("nan", r"expected a finite number of milliseconds >= 0, got 'nan'"),
        ("-Infinity", r"expected a finite number of milliseconds >= 0"),
        ("1e400", r"expected a finite number of milliseconds >= 0, got '1e400'"),
        ("-0x1p0", r"expected a finite number of milliseconds >= 0, got '-0x1p0'"),
        ("9" * 10_000, r"expected a finite number of milliseconds >= 0, got '9{40}\.\.\.'$"),
    ],
)
def test_slo_header_outside_go_syntax_is_data_error(value: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Request.create("m", headers={"x-slo-ttft-ms": value})


_DIGITS = st.text("0123456789", min_size=1, max_size=8)
_HEX_DIGITS = st.text("0123456789abcdefABCDEF", min_size=1, max_size=8)


def _underscored(digits: str, cuts: list[int]) -> str:
    """``digits`` with ``_`` inserted between digits at the positions ``cuts`` name."""
    out = list(digits)
    for cut in sorted({c % len(digits) for c in cuts if c % len(digits)}, reverse=True):
        out.insert(cut, "_")
    return "".join(out)


_CUTS = st.lists(st.integers(1, 16), max_size=3)
_DEC_RUN = st.builds(_underscored, _DIGITS, _CUTS)
_HEX_RUN = st.builds(_underscored, _HEX_DIGITS, _CUTS)
_SIGN = st.sampled_from(["", "+", "-"])
_GO_DECIMAL = st.builds(
    lambda sign, whole, frac, exp: sign + whole + frac + exp,
    _SIGN,
    _DEC_RUN,
    st.sampled_from(["", "."]) | _DEC_RUN.map(lambda d: "." + d),
    st.just("") | st.builds(lambda e, s, d: e + s + d, st.sampled_from("eE"), _SIGN, _DEC_RUN),
)
_GO_HEX = st.builds(
    lambda sign, x, under, whole, frac, p, esign, exp: (
        f"{sign}0{x}{under}{whole}{frac}{p}{esign}{exp}"
    ),
    _SIGN,
    st.sampled_from("xX"),
    st.sampled_from(["", "_"]),
    _HEX_RUN,
    st.sampled_from(["", "."]) | _HEX_RUN.map(lambda d: "." + d),
    st.sampled_from("pP"),
    _SIGN,
    _DEC_RUN,
)


@given(
    _GO_DECIMAL
    | _GO_HEX
    | st.text(max_size=12)
    | st.text("0123456789+-._eExXpPaAfFinN", max_size=12)
)
def test_go_parse_float_agrees_with_python(text: str) -> None:
    """Whatever the parser accepts, Python reads to the same value: ``float()`` for
    decimal and special forms, ``float.fromhex`` (underscores dropped) for Go's hex
    floats, which ``float()`` does not read. And nothing non-ASCII or spaced gets in."""
    got = _go_parse_float(text)
    if got is None:
        return
    assert text.isascii()
    assert text == text.strip()
    assert " " not in text
    if "x" in text.lower():
        try:
            expected = float.fromhex(text.replace("_", ""))
        except OverflowError:
            expected = -math.inf if text.startswith("-") else math.inf
    else:
        expected = float(text)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


@given(_GO_DECIMAL | _GO_HEX)
def test_go_parse_float_accepts_go_grammar(text: str) -> None:
    assert _go_parse_float(text) is not None


def test_token_ids_are_uint32_and_checked() -> None:
    r = Request.create("m", token_ids=[1, 2, 3])
    assert r.token_ids is not None
    assert r.token_ids.dtype == np.uint32
    assert not r.token_ids.flags.writeable
    with pytest.raises(DataError, match=r"token ids must be in \[0, 2\*\*32\)"):
        Request.create("m", token_ids=[-1])
    with pytest.raises(DataError, match="1-D sequence of integers"):
        Request.create("m", token_ids=[[1, 2]])
    with pytest.raises(DataError, match="1-D sequence of integers"):
        Request.create("m", token_ids=[0.5])


@pytest.mark.parametrize(
    ("label", "role"),
    [
        (None, Role.UNSET),
        ("prefill", Role.PREFILL),
        ("decode", Role.DECODE),
        ("both", Role.BOTH),
        ("prefill-decode", Role.PREFILL_DECODE),
        ("encode", Role.ENCODE),
        ("encode-prefill", Role.ENCODE_PREFILL),
        ("encode-prefill-decode", Role.ENCODE_PREFILL_DECODE),
        (" Decode ", Role.OTHER),  # llm-d-router matches the value exactly
        ("Decode", Role.OTHER),
        ("gpu", Role.OTHER),
    ],
)
def test_role_from_label(label: str | None, role: Role) -> None:
    labels = {} if label is None else {"llm-d.ai/role": label}
    assert Endpoint("e", "10.0.0.1", 80, labels).role is role
    assert Role.from_label(label) is role


def test_role_label_round_trip() -> None:
    for role in Role:
        if role.label is not None:
            assert Role.from_label(role.label) is role


def test_endpoint_hostports() -> None:
    assert Endpoint("e", "10.0.0.1", 8000).hostport == "10.0.0.1:8000"
    assert Endpoint("e", "fd00::1", 8000).hostport == "[fd00::1]:8000"
    assert Endpoint("e", "10.0.0.1", 8000, metrics_port=9090).metrics_hostport == "10.0.0.1:9090"
    assert Endpoint("e", "10.0.0.1", 8000).metrics_hostport == "10.0.0.1:8000"


def test_endpoint_labels_are_read_only_and_hashable_endpoint() -> None:
    e = Endpoint("e", "10.0.0.1", 8000, {"a": "b"})
    with pytest.raises(TypeError):
        e.labels["a"] = "c"  # type: ignore[index]
    assert hash(e) == hash(Endpoint("e", "10.0.0.1", 8000, {"a": "x"}))
    assert e != Endpoint("e", "10.0.0.1", 8000, {"a": "x"})


@pytest.mark.parametrize(
    ("hostport", "ip"),
    [
        ("10.0.0.1:80", "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("[fd00::1]:80", "fd00::1"),
        ("fd00::1", "fd00::1"),
        ("host:80", "host"),
    ],
)
def test_strip_port(hostport: str, ip: str) -> None:
    assert strip_port(hostport) == ip


def test_scheduling_result_accessors() -> None:
    a, b = Endpoint("a", "10.0.0.1", 8000), Endpoint("b", "10.0.0.2", 8001)
    run = ProfileRunResult((0, 1), (a, b), (2.0, 1.0))
    result = SchedulingResult({"decode": run, "prefill": None}, "decode")
    assert result.endpoint is a
    assert result.target_endpoints == (a, b)
    assert run.fallbacks == (b,)
    assert result.destination_header == "10.0.0.1:8000,10.0.0.2:8001"
    assert result.picked("decode") is a
    assert result.picked("prefill") is None
    assert result.picked("missing") is None


def test_cycle_state() -> None:
    cycle = CycleState(np.random.default_rng(0), now_s=5.0)
    cycle.write("k", 1)
    assert cycle.read("k") == 1
    assert "k" in cycle
    assert list(cycle) == ["k"]
    cycle.delete("k")
    cycle.delete("k")
    assert cycle.read("k", "default") == "default"


def test_a_lone_surrogate_in_the_model_hashes_and_schedules() -> None:
    from inference_sched import EndpointTable, Scheduler
    from inference_sched.prefix.hashing import seed_hash

    assert seed_hash("m\ud800") != seed_hash("m\ud801")
    table = EndpointTable()
    table.add(Endpoint("e0", "10.0.0.1", 8000))
    request = Request.create("m\ud800", prompt="p" * 200, headers={"x-session-id": "s\udfff"})
    assert Scheduler.from_config(None, table).schedule(request).endpoint.name == "e0"
