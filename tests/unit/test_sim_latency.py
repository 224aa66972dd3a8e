"""Step-time models: table rows reproduced, interpolation, composition, embedded fit, errors.

Tests that read ``shared/data/latency`` skip when :func:`shared_data_dir` finds no data;
the synthetic-table and embedded-fit tests run everywhere.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ConfigError, DataError
from inference_sched.sim import latency
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.types import StepTimeModel

DATA = shared_data_dir()
HAS_DATA = DATA is not None and (DATA / "latency").is_dir()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="no shared latency tables")

EMBEDDED_TOLERANCE = 0.03
"""Embedded fit (and the monotone envelope) vs every table row: relative."""

# The README's analytical attention model, written out independently of the module.
README_PREFILL_MS_PER_PAIR = 32 * 4 * 32 * 128 / 400e12 * 1e3
README_DECODE_MS_PER_TOKEN = 32 * 16_384 / 2.4e12 * 1e3
README_FLOOR_MS = 32 * 0.010

Row = tuple[list[int], list[int], int, int, float]
"""prefill_new, prefill_context, num_decodes, decode_context_sum, table ms."""


def table_rows(name: str) -> Iterator[Row]:
    """Every table row of model ``name`` as step_s arguments plus the table's time."""
    assert DATA is not None
    root = DATA / "latency"
    if name == "h100-llama2-7b":
        with (root / "h100_llama2_7b_tp1_prefill.csv").open() as f:
            for r in csv.DictReader(f):
                t, p = int(r["new_tokens"]), int(r["cached_prefix_tokens"])
                yield [t], [p], 0, 0, float(r["total_ms"])
        with (root / "h100_llama2_7b_tp1_decode.csv").open() as f:
            for r in csv.DictReader(f):
                b, c = int(r["batch"]), int(r["context"])
                yield [], [], b, b * c, float(r["total_ms"])
        return
    table_model = {"h200-llama2-7b": "Llama-2-7b-hf", "h200-llama3-8b": "Meta-Llama-3-8B"}[name]
    with (root / "measured_h200" / "model_prefill.csv").open() as f:
        for r in csv.DictReader(f):
            if r["model"] == table_model:
                t, p = int(r["new_tokens"]), int(r["prefix_tokens"])
                yield [t], [p], 0, 0, float(r["ms"])
    with (root / "measured_h200" / "model_decode.csv").open() as f:
        for r in csv.DictReader(f):
            if r["model"] == table_model:
                b, c = int(r["batch"]), int(r["context"])
                yield [], [], b, b * c, float(r["ms"])


def ms(model: StepTimeModel, new: list[int], ctx: list[int], b: int, s: int) -> float:
    return model.step_s(new, ctx, b, s) * 1e3


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    return tmp_path / "no-data"


def non_decreasing(values: list[float]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- table rows


@needs_data
def test_h100_rows_reproduce_the_tables() -> None:
    """Raw composition = the derived tables (rounded there to 0.001 ms)."""
    model = latency.load("h100-llama2-7b", monotone=False)
    rows = list(table_rows("h100-llama2-7b"))
    assert len(rows) == 29 + 72
    for new, ctx, b, s, expected in rows:
        assert ms(model, new, ctx, b, s) == pytest.approx(expected, abs=5.0001e-4)


@needs_data
@pytest.mark.parametrize("name", ["h200-llama2-7b", "h200-llama3-8b"])
def test_h200_rows_reproduce_the_measurements(name: str) -> None:
    model = latency.load(name, monotone=False)
    rows = list(table_rows(name))
    assert len(rows) == 13 + (35 if name == "h200-llama2-7b" else 48)
    for new, ctx, b, s, expected in rows:
        assert ms(model, new, ctx, b, s) == pytest.approx(expected, rel=1e-12)


@needs_data
@pytest.mark.parametrize("name", latency.MODELS)
def test_monotone_envelope_stays_near_every_row(name: str) -> None:
    model = latency.load(name)
    for new, ctx, b, s, expected in table_rows(name):
        got = ms(model, new, ctx, b, s)
        assert got <= expected + 5.0001e-4  # a lower envelope never adds time
        assert got == pytest.approx(expected, rel=EMBEDDED_TOLERANCE)


@needs_data
def test_h100_envelope_changes_only_the_noisy_one_token_row() -> None:
    """Vidur's 1-token row (5.600 ms) is slower than its 2-token row (5.472 ms)."""
    model = latency.load("h100-llama2-7b")
    assert ms(model, [], [], 1, 128) == pytest.approx(5.472 + 0.348, abs=5.0001e-4)
    assert ms(model, [], [], 2, 256) == pytest.approx(5.848, abs=5.0001e-4)
    assert ms(model, [4096], [0], 0, 0) == pytest.approx(94.523, abs=5.0001e-4)


# --------------------------------------------------------------------------- interpolation


@needs_data
def test_h100_linear_interpolation_between_rows() -> None:
    """132 tokens: halfway between the 128 (0.199 ms/layer) and 136 (0.265) rows."""
    model = latency.load("h100-llama2-7b", monotone=False)
    linear = (0.199 + 0.265) / 2 * 32
    attn = README_FLOOR_MS + README_PREFILL_MS_PER_PAIR * 132 * 66
    assert ms(model, [132], [0], 0, 0) == pytest.approx(linear + attn, rel=1e-12)


@needs_data
def test_h200_log_space_interpolation_between_rows() -> None:
    """181 new tokens: log-log between the 128 (7.78365 ms) and 256 (9.84117) rows."""
    model = latency.load("h200-llama2-7b", monotone=False)
    frac = math.log(181 / 128) / math.log(2)
    expected = math.exp(math.log(7.78365) + frac * (math.log(9.84117) - math.log(7.78365)))
    assert ms(model, [181], [0], 0, 0) == pytest.approx(expected, rel=1e-12)
    # Decode: batch 3 at context 512, bilinear in (log B, log C) of log attention.
    dense = {2: 2 * 6.54101 - 6.66723, 4: 2 * 6.68363 - 6.94474}  # context -> 0
    a2, a4 = 6.54101 - dense[2], 6.68363 - dense[4]
    fb = math.log(3 / 2) / math.log(2)
    attn = math.exp(math.log(a2) + fb * (math.log(a4) - math.log(a2)))
    d3 = math.exp(math.log(dense[2]) + fb * (math.log(dense[4]) - math.log(dense[2])))
    assert ms(model, [], [], 3, 3 * 512) == pytest.approx(d3 + attn, rel=1e-9)


def test_synthetic_table_interpolation_and_extrapolation(tmp_path: Path) -> None:
    """A hand-made linear-ops table: interpolation, the 2048.. fit line, the attention terms."""
    write(
        tmp_path / latency.LINEAR_OPS_FILE,
        "num_tokens,linear_ops_ms_per_layer\n1,0.1\n2048,1.0\n3072,1.5\n4096,2.0\n",
    )
    model = latency.load("h100-llama2-7b", tmp_path)
    assert isinstance(model, latency.VidurStepTime)
    assert model.source.endswith("vidur_h100_llama2_7b_tp1_linear_ops.csv")
    assert model.linear_s(0) == 0.0
    assert model.linear_s(1) * 1e3 == pytest.approx(3.2, rel=1e-12)
    assert model.linear_s(1025) * 1e3 == pytest.approx((0.1 + 0.9 * 1024 / 2047) * 32, rel=1e-12)
    # Above 4096: the line through the >= 2048 rows (0.5 ms per 1024 tokens per layer).
    assert model.linear_s(8192) * 1e3 == pytest.approx(4.0 * 32, rel=1e-9)
    # Mixed step: linear(B + sum T) + per-chunk prefill attention + one decode kernel.
    expected = (
        (1.0 + 0.5 * (2048 + 8 - 2048) / 1024) * 32
        + README_FLOOR_MS
        + README_PREFILL_MS_PER_PAIR * 1024 * (500 + 512)
        + README_FLOOR_MS
        + README_PREFILL_MS_PER_PAIR * 1024 * (0 + 512)
        + README_FLOOR_MS
        + README_DECODE_MS_PER_TOKEN * 8000
    )
    assert ms(model, [1024, 1024], [500, 0], 8, 8000) == pytest.approx(expected, rel=1e-12)
    assert model.step_s([], [], 0, 0) == 0.0
    assert model.step_s([0], [100], 0, 0) == 0.0


@needs_data
def test_h200_mixed_step_composition() -> None:
    """dense(B + sum T) + context(sum T_i * P_i) + decode attention(B, mean context)."""
    model = latency.load("h200-llama3-8b")
    assert isinstance(model, latency.MeasuredStepTime)
    expected = (
        model.dense_s(32 + 512 + 256)
        + model.prefill_context_s(512 * 2048 + 256 * 0)
        + model.decode_attn_s(32, 32 * 1500 / 32)
    )
    assert model.step_s([512, 256], [2048, 0], 32, 32 * 1500) == pytest.approx(expected, rel=1e-15)
    # Prefill context outside the measured T*P range: proportional to T*P.
    small, big = model.prefill_context_s(1000.0), model.prefill_context_s(2000.0)
    assert big == pytest.approx(2 * small, rel=1e-12)


# --------------------------------------------------------------------------- decode fast-forward


def models_to_check() -> list[tuple[str, Path | None, bool]]:
    cases: list[tuple[str, Path | None, bool]] = [
        (name, Path("/nonexistent-latency-data"), True) for name in latency.MODELS
    ]
    if HAS_DATA:
        cases += [(name, None, mono) for name in latency.MODELS for mono in (True, False)]
    return cases


CASES = models_to_check()
CASE_IDS = [
    f"{n}-{'data' if d is None else 'embedded'}-{'mono' if m else 'raw'}" for n, d, m in CASES
]


@pytest.mark.parametrize(("name", "data_dir", "monotone"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize(
    ("b", "c"), [(1, 0), (1, 100), (3, 1500), (64, 64 * 2000), (300, 300 * 700), (2, 2 * 40_000)]
)
def test_decode_steps_equal_single_steps(
    name: str, data_dir: Path | None, monotone: bool, b: int, c: int
) -> None:
    model = latency.load(name, data_dir, monotone=monotone)
    steps = model.decode_steps_s(b, c, 50)
    assert steps.shape == (50,)
    assert steps.dtype == np.float64
    single = [model.step_s([], [], b, c + j * b) for j in range(50)]
    if isinstance(model, latency.VidurStepTime):
        assert steps.tolist() == single  # same operation order: bit-identical
    else:
        assert steps.tolist() == pytest.approx(single, rel=1e-12)
    assert model.decode_steps_s(b, c, 0).shape == (0,)
    assert model.decode_steps_s(0, 0, 3).tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize(("name", "data_dir", "monotone"), [c for c in CASES if c[2]])
def test_monotonic_in_tokens(name: str, data_dir: Path | None, monotone: bool) -> None:
    model = latency.load(name, data_dir, monotone=monotone)
    prefill = [model.step_s([t], [0], 0, 0) for t in range(1, 20_001)]
    assert non_decreasing(prefill)
    decode = [model.step_s([], [], b, b * 1000) for b in range(1, 1025)]
    assert non_decreasing(decode)
    context = [model.step_s([], [], 16, s) for s in range(0, 2_000_000, 997)]
    assert non_decreasing(context)
    cached = [model.step_s([512], [p], 0, 0) for p in range(0, 100_000, 101)]
    assert non_decreasing(cached)


MONOTONE_MODELS = [latency.load(name, data_dir) for name, data_dir, monotone in CASES if monotone]


@given(
    model=st.sampled_from(MONOTONE_MODELS),
    chunks=st.lists(
        st.tuples(st.integers(1, 9000), st.integers(0, 40_000)), min_size=0, max_size=4
    ),
    num_decodes=st.integers(0, 600),
    mean_context=st.integers(1, 40_000),
    which=st.sampled_from(["new", "context", "chunk", "decode_context", "decode"]),
    amount=st.integers(1, 5000),
    extra_context=st.integers(0, 40_000),
)
def test_adding_tokens_never_makes_a_step_faster(
    model: StepTimeModel,
    chunks: list[tuple[int, int]],
    num_decodes: int,
    mean_context: int,
    which: str,
    amount: int,
    extra_context: int,
) -> None:
    new, ctx = [t for t, _ in chunks], [p for _, p in chunks]
    s = num_decodes * mean_context
    before = model.step_s(new, ctx, num_decodes, s)
    b2, s2 = num_decodes, s
    if which == "new" and new:
        new[0] += amount
    elif which == "context" and ctx:
        ctx[0] += amount
    elif which == "chunk":
        new.append(amount)
        ctx.append(extra_context)
    elif which == "decode_context" and num_decodes:
        s2 += amount
    else:
        # A new decode at no less than the mean context (Vidur-style models key decode
        # attention by batch and mean context; the H100 one only by the sum).
        b2, s2 = num_decodes + 1, s + mean_context + extra_context
    assert model.step_s(new, ctx, b2, s2) >= before


# --------------------------------------------------------------------------- embedded fit


@pytest.mark.parametrize("name", latency.MODELS)
def test_empty_data_dir_gives_the_embedded_fit(name: str, empty_dir: Path) -> None:
    empty_dir.mkdir()
    model = latency.load(name, empty_dir)
    assert model.name == name
    assert getattr(model, "source", None) == "embedded fit"
    assert model.step_s([1024], [0], 4, 4000) > 0


def test_no_data_anywhere_gives_the_embedded_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "shared_data_dir", lambda: None)
    model = latency.load()
    assert model.name == latency.DEFAULT_MODEL
    assert getattr(model, "source", None) == "embedded fit"


@needs_data
@pytest.mark.parametrize("name", latency.MODELS)
def test_embedded_fit_is_within_tolerance_of_every_row(name: str, empty_dir: Path) -> None:
    model = latency.load(name, empty_dir)
    worst = max(
        abs(ms(model, new, ctx, b, s) - expected) / expected
        for new, ctx, b, s, expected in table_rows(name)
    )
    assert worst <= EMBEDDED_TOLERANCE


@needs_data
def test_embedded_h100_linear_ops_within_tolerance_at_every_token_count(empty_dir: Path) -> None:
    fit = latency.load("h100-llama2-7b", empty_dir)
    data = latency.load("h100-llama2-7b")
    assert isinstance(fit, latency.VidurStepTime)
    assert isinstance(data, latency.VidurStepTime)
    for n in range(1, 20_000, 7):
        assert fit.linear_s(n) == pytest.approx(data.linear_s(n), rel=EMBEDDED_TOLERANCE)


# --------------------------------------------------------------------------- bad data


LINEAR_HEADER = "num_tokens,linear_ops_ms_per_layer\n"


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        (LINEAR_HEADER + "1,0.1\n2048,abc\n4096,2.0\n", 3, "'abc' is not a finite number"),
        (LINEAR_HEADER + "1,0.1\n2048,\n4096,2.0\n", 3, "is not a finite number"),
        (LINEAR_HEADER + "1,0.1\n2048,1.0\nnan,2.0\n", 4, "num_tokens"),
        ("num_tokens,other\n1,0.1\n", 1, "missing column.*linear_ops_ms_per_layer"),
        (LINEAR_HEADER + "1,0.1\n2048,1.0,7\n", 3, "expected 2 cells"),
        ("", 1, "empty file"),
    ],
)
def test_malformed_linear_table_names_file_and_line(
    tmp_path: Path, text: str, line: int, match: str
) -> None:
    path = write(tmp_path / latency.LINEAR_OPS_FILE, text)
    with pytest.raises(DataError, match=match) as info:
        latency.load("h100-llama2-7b", tmp_path)
    assert info.value.source == str(path.resolve())
    assert info.value.line == line
    assert f"{path.name}:{line}" in str(info.value)


def test_missing_table_file_raises(tmp_path: Path) -> None:
    (tmp_path / "latency").mkdir()
    with pytest.raises(DataError, match="cannot read") as info:
        latency.load("h200-llama2-7b", tmp_path)
    assert info.value.source.endswith("model_prefill.csv")


def test_malformed_h200_decode_table(tmp_path: Path) -> None:
    write(
        tmp_path / latency.H200_PREFILL_FILE,
        "model,prefix_tokens,new_tokens,ms\nLlama-2-7b-hf,0,128,7.0\nLlama-2-7b-hf,1024,128,8.0\n",
    )
    path = write(
        tmp_path / latency.H200_DECODE_FILE,
        "model,batch,context,ms\nLlama-2-7b-hf,1,512,6.1\nLlama-2-7b-hf,1,1024,six\n",
    )
    with pytest.raises(DataError, match="column 'ms'") as info:
        latency.load("h200-llama2-7b", tmp_path)
    assert (info.value.source, info.value.line) == (str(path.resolve()), 3)


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="unknown latency model 'a100-x'"):
        latency.load("a100-x")


# --------------------------------------------------------------------------- for_model


@pytest.mark.parametrize(
    ("hf_name", "expected"),
    [
        ("meta-llama/Llama-2-7b-hf", "h100-llama2-7b"),
        ("meta-llama/Llama-2-7b-chat-hf", "h100-llama2-7b"),
        ("meta-llama/Meta-Llama-3-8B", "h200-llama3-8b"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "h200-llama3-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "h200-llama3-8b"),
        ("meta-llama/Meta-Llama-3.1-8B", "h200-llama3-8b"),
        ("h200-llama2-7b", "h200-llama2-7b"),
        ("meta-llama/Llama-2-13b-hf", latency.DEFAULT_MODEL),
        ("meta-llama/Meta-Llama-3-70B", latency.DEFAULT_MODEL),
        ("Qwen/Qwen2.5-7B-Instruct", latency.DEFAULT_MODEL),
        ("", latency.DEFAULT_MODEL),
    ],
)
def test_for_model(hf_name: str, expected: str) -> None:
    assert latency.for_model(hf_name) == expected
    assert expected in latency.MODELS


def test_public_names() -> None:
    assert latency.MODELS == ("h100-llama2-7b", "h200-llama2-7b", "h200-llama3-8b")
    assert latency.DEFAULT_MODEL == "h100-llama2-7b"
    assert set(latency.__all__) <= set(dir(latency))
