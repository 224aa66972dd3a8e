"""Fuzzing the trace loaders on arbitrary and mutated JSONL / CSV lines: a workload, or
a DataError naming the file, the line and the field, within the budgets (a row's
lengths must not make a loader allocate without bound)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from inference_sched.errors import ConfigError, DataError
from inference_sched.sim.traces import azure, detect_format, load_trace, mooncake
from inference_sched.sim.workloads import Workload
from tests.fuzz._budget import fuzz_settings, short_repr, typed_outcome

pytestmark = pytest.mark.fuzz

MOONCAKE = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}
NORMALIZED = {
    "t_ms": 0,
    "input_tokens": 600,
    "output_tokens": 5,
    "block_hashes": [0, 1],
    "block_size_tokens": 512,
    "session_id": None,
}
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
AZURE_ROW = "2023-11-16 18:17:03.9799600,374,44"
FIELDS = [*MOONCAKE, *NORMALIZED]


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


def _write(directory: Path, lines: list[str], *, gz: bool, suffix: str = ".jsonl") -> Path:
    path = directory / f"trace{suffix}{'.gz' if gz else ''}"
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _check(path: Path) -> Any:
    def check(error: Any) -> None:
        if isinstance(error, DataError):
            assert error.source == str(path), error

    return check


LOADERS = {"load_trace": load_trace, "mooncake": mooncake, "azure": azure}


def _about_the_file(path: Path) -> Any:
    """Errors about the whole file: a loader given the other format's file, or a file
    with no rows at all."""

    def whole(error: Any) -> bool:
        message = str(error)
        if "not an Azure trace" in message or "not a Mooncake trace" in message:
            return True
        blank = not _text_of(path).strip()
        return blank and ("empty trace" in message or "unknown or empty trace" in message)

    return whole


def _text_of(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def _load(path: Path, loader: str, options: dict[str, Any]) -> Workload | DataError | ConfigError:
    outcome = typed_outcome(
        lambda: LOADERS[loader](path, **options),
        f"{loader}({short_repr(_text_of(path))}, {options})",
        expected=(DataError, ConfigError),
        check=_check(path),
        about_the_whole_input=_about_the_file(path),
    )
    if isinstance(outcome, Workload):
        for request in outcome.requests:
            assert request.prompt_tokens >= 1
            assert request.output_tokens >= 1
            assert request.arrival_s >= 0 or options.get("start_s", 0) > 0
    return outcome  # type: ignore[return-value]


_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "limit": st.integers(0, 5),
        "start_s": st.sampled_from([0.0, 0.5, 10.0]),
        "duration_s": st.sampled_from([0.1, 1.0, 100.0]),
    },
)
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=12,
)


# ----------------------------------------------------------------- arbitrary lines
_LINES = st.lists(
    st.one_of(
        _JSON.map(json.dumps),
        st.text(max_size=40),
        st.just(AZURE_HEADER),
        st.just(AZURE_ROW),
        st.just(json.dumps(MOONCAKE)),
    ),
    min_size=1,
    max_size=5,
)


@fuzz_settings()
@given(lines=_LINES, gz=st.booleans(), loader=st.sampled_from(sorted(LOADERS)), options=_OPTIONS)
def test_arbitrary_lines_give_a_workload_or_data_error(
    trace_dir: Path, lines: list[str], gz: bool, loader: str, options: dict[str, Any]
) -> None:
    path = _write(trace_dir, lines, gz=gz)
    typed_outcome(
        lambda: detect_format(path),
        f"detect_format({short_repr(lines)})",
        expected=DataError,
        check=_check(path),
        about_the_whole_input=_about_the_file(path),
    )
    _load(path, loader, options)


# ----------------------------------------------------------------- mutated rows
_HOSTILE_VALUES = st.one_of(
    _JSON_SCALARS,
    st.sampled_from(
        [
            10**12,  # a prompt of a trillion tokens
            2**62,
            2**63 - 1,
            2**64,
            -1,
            1e308,
            0,
            16 * 2**40,  # a block of 2**44 tokens (a multiple of 16)
            [0] * 3,
            list(range(2000)),
        ]
    ),
)


@st.composite
def _mutated_rows(draw: st.DrawFn) -> list[str]:
    base = draw(st.sampled_from([MOONCAKE, NORMALIZED]))
    rows = []
    for k in range(draw(st.integers(1, 3))):
        row = dict(base)
        row["timestamp" if "timestamp" in row else "t_ms"] = k * 100
        for _ in range(draw(st.integers(0, 3))):
            field = draw(st.sampled_from(sorted(row)))
            if draw(st.integers(0, 5)) == 0:
                del row[field]
            else:
                row[field] = draw(_HOSTILE_VALUES)
        rows.append(json.dumps(row))
    if draw(st.booleans()):  # a raw-text mutation of one line
        i = draw(st.integers(0, len(rows) - 1))
        pos = draw(st.integers(0, len(rows[i])))
        chunk = draw(st.sampled_from(['"', "9" * 30, "[", "}", ",", "\x00", "NaN", "1e999"]))
        rows[i] = rows[i][:pos] + chunk + rows[i][pos:]
    return rows


@fuzz_settings()
@given(rows=_mutated_rows(), gz=st.booleans(), loader=st.sampled_from(sorted(LOADERS)))
def test_mutated_rows_give_a_workload_or_data_error(
    trace_dir: Path, rows: list[str], gz: bool, loader: str
) -> None:
    _load(_write(trace_dir, rows, gz=gz), loader, {})


def _hostile_row(kind: str, n: int) -> str:
    """One hostile line, built in the test (a long one would flood Hypothesis' report)."""
    if kind == "huge-prompt":  # n tokens of prompt, no prefix ids (Azure normalized)
        return json.dumps({"t_ms": 0, "input_tokens": n, "output_tokens": 1, "block_hashes": None})
    if kind == "huge-block":  # one hash id naming a block of n * 16 tokens
        size = 16 * n
        row = {"t_ms": 0, "input_tokens": size, "output_tokens": 1, "block_hashes": [1]}
        return json.dumps({**row, "block_size_tokens": size})
    if kind == "long-number":
        return '{"timestamp": ' + "9" * n + "}"
    if kind == "deep":
        return "[" * n
    if kind == "many-ids":
        ids = list(range(n))
        return json.dumps(
            {"timestamp": 0, "input_length": 512 * n, "output_length": 1, "hash_ids": ids}
        )
    raise AssertionError(kind)


@fuzz_settings()
@given(
    kind=st.sampled_from(["huge-prompt", "huge-block", "long-number", "deep", "many-ids"]),
    exponent=st.integers(0, 14),
    loader=st.sampled_from(sorted(LOADERS)),
)
@example(kind="huge-prompt", exponent=12, loader="azure")  # 466 GiB of block ids
@example(kind="huge-block", exponent=12, loader="mooncake")  # 8 TiB of child ids
@example(kind="long-number", exponent=4, loader="mooncake")  # past the 4300-digit limit
@example(kind="deep", exponent=5, loader="mooncake")  # nested 100k deep
def test_hostile_rows_give_a_workload_or_data_error(
    trace_dir: Path, kind: str, exponent: int, loader: str
) -> None:
    n = 10**exponent
    if kind in ("long-number", "deep", "many-ids"):
        n = min(n, 200_000)
    _load(_write(trace_dir, [_hostile_row(kind, n)], gz=False), loader, {})


@st.composite
def _azure_rows(draw: st.DrawFn) -> list[str]:
    rows = [AZURE_HEADER]
    for _ in range(draw(st.integers(1, 3))):
        cells = AZURE_ROW.split(",")
        if draw(st.booleans()):
            cells[draw(st.integers(0, 2))] = draw(
                st.sampled_from(["", "-1", "1e3", "٣", "99999999999999", "9" * 30, '"', "x"])
                | st.text(max_size=12)
            )
        if draw(st.integers(0, 4)) == 0:
            cells.append("extra")
        rows.append(",".join(cells))
    return rows


@fuzz_settings()
@given(rows=_azure_rows(), gz=st.booleans())
@example(rows=[AZURE_HEADER, "2023-11-16 18:17:03.9799600,1000000000000,1"], gz=False)
def test_mutated_azure_csv_gives_a_workload_or_data_error(
    trace_dir: Path, rows: list[str], gz: bool
) -> None:
    _load(_write(trace_dir, rows, gz=gz, suffix=".csv"), "azure", {})
