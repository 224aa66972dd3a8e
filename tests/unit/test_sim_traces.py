"""Trace replay: Mooncake (raw, normalized) and Azure (CSV, normalized), exact values."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from inference_sched.errors import ConfigError, DataError
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.prompts import child_ids
from inference_sched.sim.traces import (
    MAX_BLOCK_TOKENS,
    MAX_INPUT_TOKENS,
    MAX_OUTPUT_TOKENS,
    azure,
    detect_format,
    load_trace,
    mooncake,
)

MOONCAKE_ROWS = [
    {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
    {"timestamp": 0, "input_length": 1000, "output_length": 0, "hash_ids": [0, 2]},
    {"timestamp": 250, "input_length": 512, "output_length": 7, "hash_ids": [0]},
    {"timestamp": 1500, "input_length": 0, "output_length": 3, "hash_ids": []},
    {"timestamp": 3000, "input_length": 17, "output_length": 1, "hash_ids": [9]},
]


def write_jsonl(path: Path, rows: Sequence[object], *, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def normalized(rows: list[dict[str, object]], *, block_size: int | None = 512) -> list[object]:
    return [
        {
            "t_ms": r["timestamp"],
            "input_tokens": r["input_length"],
            "output_tokens": r["output_length"],
            "block_hashes": r["hash_ids"] if block_size else None,
            "block_size_tokens": block_size,
            "session_id": None,
        }
        for r in rows
    ]


def check_mooncake(path: Path) -> None:
    w = mooncake(path)
    assert w.name == f"trace:{path.name}"
    # Row 4 (empty prompt) is skipped; row 2's output 0 is clamped to 1.
    assert [r.arrival_s for r in w.requests] == [0.0, 0.0, 0.25, 3.0]
    assert [r.prompt_tokens for r in w.requests] == [600, 1000, 512, 17]
    assert [r.output_tokens for r in w.requests] == [5, 1, 7, 1]
    assert w.params["clamped_outputs"] == 1
    assert w.params["skipped_empty_prompts"] == 1
    b = [r.blocks for r in w.requests]
    assert b[0].tolist() == child_ids([0, 1], 32)[:38].tolist()  # ceil(600/16) = 38
    assert b[1].tolist() == child_ids([0, 2], 32)[:63].tolist()
    assert b[2].tolist() == child_ids([0], 32).tolist()
    assert b[3].tolist() == child_ids([9], 32)[:2].tolist()
    # Shared hash id 0 -> exactly 32 shared 16-token ids.
    assert (b[0][:32] == b[1][:32]).all()
    assert b[0][32] != b[1][32]
    assert all(not x.flags.writeable and x.dtype == np.int64 for x in b)


def test_mooncake_raw(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", MOONCAKE_ROWS)
    assert detect_format(path) == "mooncake"
    check_mooncake(path)


def test_mooncake_normalized_gz(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.normalized.jsonl.gz", normalized(MOONCAKE_ROWS), gz=True)
    assert detect_format(path) == "mooncake-normalized"
    check_mooncake(path)
    assert load_trace(path).params["format"] == "mooncake-normalized"


def test_normalized_block_size(tmp_path: Path) -> None:
    rows = normalized(MOONCAKE_ROWS[:1], block_size=64)
    rows[0]["block_hashes"] = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # type: ignore[index]
    w = mooncake(write_jsonl(tmp_path / "n.jsonl", rows))
    assert w.requests[0].blocks.tolist() == child_ids(list(range(4, 14)), 4)[:38].tolist()


def test_window_limit_and_time_scale(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", MOONCAKE_ROWS)
    w = mooncake(path, start_s=0.1, duration_s=2.0)
    assert [r.arrival_s for r in w.requests] == [0.25 - 0.1]  # row 4 (1.5 s) is empty
    assert [r.prompt_tokens for r in mooncake(path, limit=2).requests] == [600, 1000]
    assert [r.arrival_s for r in mooncake(path, time_scale=0.5).requests] == [0.0, 0.0, 0.125, 1.5]
    # rate: 4 kept rows over 3 s = 4/3 req/s, replayed at 8 req/s.
    assert [r.arrival_s for r in mooncake(path, rate=8.0).requests] == pytest.approx(
        [0, 0, 0.25 / 6, 0.5]
    )
    assert mooncake(path, limit=0).requests == ()
    with pytest.raises(ConfigError, match="not both"):
        mooncake(path, rate=2.0, time_scale=2.0)
    with pytest.raises(ConfigError):
        mooncake(path, limit=-1)


AZURE_CSV = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:17:03.9799600,4808,10\n"
    "2023-11-16 18:17:04.0319601,3180,0\n"
    "\n"
    "2023-11-16 18:18:00.5,20,8\n"
)


def check_azure(path: Path, fmt: str) -> None:
    assert detect_format(path) == fmt
    w = azure(path)
    assert [r.arrival_s for r in w.requests] == pytest.approx([0.0, 0.0520001, 56.52004], abs=1e-9)
    assert [r.prompt_tokens for r in w.requests] == [4808, 3180, 20]
    assert [r.output_tokens for r in w.requests] == [10, 1, 8]
    ids = [r.blocks for r in w.requests]
    assert [len(x) for x in ids] == [301, 199, 2]
    everything = np.concatenate(ids)
    assert len(set(everything.tolist())) == everything.size  # no prefix info: all unique
    assert load_trace(path).params["format"] == fmt


def test_azure_csv(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(AZURE_CSV)
    check_azure(path, "azure")


def test_azure_normalized(tmp_path: Path) -> None:
    rows = [
        {
            "t_ms": t,
            "input_tokens": i,
            "output_tokens": o,
            "block_hashes": None,
            "block_size_tokens": None,
            "session_id": None,
        }
        for t, i, o in ((0.0, 4808, 10), (52.0001, 3180, 0), (56520.04, 20, 8))
    ]
    check_azure(write_jsonl(tmp_path / "a.normalized.jsonl.gz", rows, gz=True), "azure-normalized")


def test_format_mismatch(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(AZURE_CSV)
    with pytest.raises(DataError, match="not a Mooncake trace"):
        mooncake(csv_path)
    with pytest.raises(DataError, match="not an Azure trace"):
        azure(write_jsonl(tmp_path / "m.jsonl", MOONCAKE_ROWS))
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        detect_format(empty)
    with pytest.raises(DataError, match="unknown trace format"):
        detect_format(write_jsonl(tmp_path / "x.jsonl", [{"a": 1}]))


GOOD = '{"timestamp": 0, "input_length": 20, "output_length": 2, "hash_ids": [1]}'

MOONCAKE_BAD = [
    ('{"timestamp": 0, "input_length": 20', "invalid JSON", ""),
    ("[1, 2]", "expected a JSON object", ""),
    ('{"input_length": 20, "output_length": 2, "hash_ids": [1]}', "missing", "timestamp"),
    (
        '{"timestamp": -1, "input_length": 20, "output_length": 2, "hash_ids": [1]}',
        "non-negative",
        "timestamp",
    ),
    (
        '{"timestamp": "0", "input_length": 20, "output_length": 2, "hash_ids": [1]}',
        "number",
        "timestamp",
    ),
    ('{"timestamp": 5, "output_length": 2, "hash_ids": [1]}', "missing", "input_length"),
    (
        '{"timestamp": 5, "input_length": 2.5, "output_length": 2, "hash_ids": [1]}',
        "integer",
        "input_length",
    ),
    (
        '{"timestamp": 5, "input_length": 20, "output_length": -2, "hash_ids": [1]}',
        "non-negative",
        "output_length",
    ),
    (
        '{"timestamp": 5, "input_length": 20, "output_length": true, "hash_ids": [1]}',
        "integer",
        "output_length",
    ),
    ('{"timestamp": 5, "input_length": 20, "output_length": 2}', "missing", "hash_ids"),
    ('{"timestamp": 5, "input_length": 20, "output_length": 2, "hash_ids": 1}', "list", "hash_ids"),
    (
        '{"timestamp": 5, "input_length": 20, "output_length": 2, "hash_ids": [-1]}',
        "non-negative",
        "hash_ids",
    ),
    (
        '{"timestamp": 5, "input_length": 20, "output_length": 2, "hash_ids": [1.0]}',
        "integers",
        "hash_ids",
    ),
    (
        '{"timestamp": 5, "input_length": 600, "output_length": 2, "hash_ids": [1]}',
        "needs 2",
        "hash_ids",
    ),
    (
        '{"timestamp": 5, "input_length": 20, "output_length": 2, "hash_ids": ['
        + str(2**64 - 1)
        + "]}",
        "64-bit",
        "hash_ids",
    ),
]


@pytest.mark.parametrize(("row", "message", "field"), MOONCAKE_BAD)
def test_mooncake_malformed_rows_name_the_line(
    tmp_path: Path, row: str, message: str, field: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{row}\n{GOOD}\n")  # line 2 blank: the bad row is line 3
    with pytest.raises(DataError, match=message) as info:
        mooncake(path)
    assert info.value.line == 3
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}:3: ")
    if field:
        assert f"field {field!r}" in str(info.value)


def test_unsorted_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(GOOD.replace('"timestamp": 0', '"timestamp": 9') + "\n" + GOOD + "\n")
    with pytest.raises(DataError, match=r"field 'timestamp': 0.0 is earlier than") as info:
        mooncake(path)
    assert info.value.line == 2


def test_normalized_malformed_rows(tmp_path: Path) -> None:
    rows = normalized(MOONCAKE_ROWS[:2])
    rows[1]["block_size_tokens"] = 500  # type: ignore[index]
    with pytest.raises(DataError, match=r"block_size_tokens.*multiple of 16") as info:
        mooncake(write_jsonl(tmp_path / "n.jsonl", rows))
    assert info.value.line == 2
    rows = normalized(MOONCAKE_ROWS[:2], block_size=None)
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(DataError, match="not a Mooncake trace"):
        mooncake(path)


AZURE_BAD = [
    ("2023-11-16 18:17:05.1,12", "expected 3 fields", ""),
    ("2023-11-16 25:17:05.1,12,3", "HH:MM:SS", "TIMESTAMP"),
    ("2023-13-16 18:17:05.1,12,3", "HH:MM:SS", "TIMESTAMP"),
    ("yesterday,12,3", "HH:MM:SS", "TIMESTAMP"),
    ("2023-11-16 18:17:05.1,-12,3", "non-negative integer", "ContextTokens"),
    ("2023-11-16 18:17:05.1,12.0,3", "non-negative integer", "ContextTokens"),
    ("2023-11-16 18:17:05.1,12,", "non-negative integer", "GeneratedTokens"),
    ("2023-11-16 18:17:03.0,12,3", "earlier than", "TIMESTAMP"),
]


@pytest.mark.parametrize(("row", "message", "field"), AZURE_BAD)
def test_azure_malformed_rows_name_the_line(
    tmp_path: Path, row: str, message: str, field: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,1,1\n{row}\n")
    with pytest.raises(DataError, match=message) as info:
        azure(path)
    assert info.value.line == 3
    if field:
        assert f"field {field!r}" in str(info.value)


def test_azure_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:17:04,1,1\n")
    with pytest.raises(DataError, match="expected columns") as info:
        azure(path)
    assert info.value.line == 1


# ------------------------------------------------- hostile rows (fuzz regressions)

AZURE_PROMPT = '{"t_ms": 0, "input_tokens": %s, "output_tokens": 1, "block_hashes": null}'
HUGE_BLOCK = (
    '{"t_ms": 0, "input_tokens": %(n)s, "output_tokens": 1, "block_hashes": [1],'
    ' "block_size_tokens": %(n)s}'
)

ROWS_PAST_A_LIMIT = [
    # 78 bytes that made azure() build 62.5 M block ids (2.5 GB, 11 s); 10**12: 466 GiB
    (azure, AZURE_PROMPT % 10**9, "input_tokens"),
    (azure, AZURE_PROMPT % 10**12, "input_tokens"),
    (azure, AZURE_PROMPT % (MAX_INPUT_TOKENS + 1), "input_tokens"),
    (
        azure,
        AZURE_PROMPT.replace('"output_tokens": 1', f'"output_tokens": {MAX_OUTPUT_TOKENS + 1}') % 1,
        "output_tokens",
    ),
    # one hash id naming a 16 * 10**12-token block: 7.3 TiB of child ids
    (mooncake, HUGE_BLOCK % {"n": 16 * 10**12}, "input_tokens"),
    (
        mooncake,
        '{"t_ms": 0, "input_tokens": 16, "output_tokens": 1, "block_hashes": [1],'
        f' "block_size_tokens": {MAX_BLOCK_TOKENS + 16}}}',
        "block_size_tokens",
    ),
    (
        mooncake,
        '{"timestamp": 0, "input_length": 100000000000, "output_length": 1, "hash_ids": [1]}',
        "input_length",
    ),
]


@pytest.mark.parametrize(("loader", "row", "field"), ROWS_PAST_A_LIMIT)
def test_rows_past_a_size_limit_raise_data_error(
    tmp_path: Path, loader: Callable[[Path], object], row: str, field: str
) -> None:
    path = tmp_path / "big.jsonl"
    good = json.loads(row)  # the same row, small
    for key in ("input_tokens", "input_length", "output_tokens", "output_length"):
        good.update({key: 16} if key in good else {})
    good.update({"block_size_tokens": 16} if "block_size_tokens" in good else {})
    path.write_text(f"{json.dumps(good)}\n{row}\n")  # the bad row is line 2
    with pytest.raises(DataError, match="past the limit") as info:
        loader(path)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}:2: field {field!r}: ")


@pytest.mark.parametrize("tokens", ["1000000000000", "9" * 5000, "0" * 30 + "1"])
def test_azure_csv_counts_past_the_limit(tmp_path: Path, tokens: str) -> None:
    path = tmp_path / "big.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,1,1\n"
        f"2023-11-16 18:17:05,{tokens},1\n2023-11-16 18:17:06,1,{tokens}\n"
    )
    if tokens.lstrip("0") == "1":  # leading zeros are no size
        assert [r.prompt_tokens for r in azure(path).requests] == [1, 1, 1]
        return
    with pytest.raises(DataError, match="past the limit") as info:
        azure(path)
    assert info.value.line == 3
    assert "field 'ContextTokens'" in str(info.value)


def test_rows_at_the_size_limits_load(tmp_path: Path) -> None:
    rows = [
        {"t_ms": 0, "input_tokens": MAX_INPUT_TOKENS, "output_tokens": MAX_OUTPUT_TOKENS}
        | {"block_hashes": list(range(153)), "block_size_tokens": MAX_BLOCK_TOKENS}
    ]
    path = write_jsonl(tmp_path / "max.jsonl", rows)
    (r,) = mooncake(path).requests
    assert (r.prompt_tokens, r.output_tokens) == (MAX_INPUT_TOKENS, MAX_OUTPUT_TOKENS)
    assert r.blocks.shape == (MAX_INPUT_TOKENS // 16,)  # 625,000 ids, 5 MB
    assert r.blocks.tolist()[:3] == child_ids([0], MAX_BLOCK_TOKENS // 16)[:3].tolist()
    (a,) = azure(path).requests
    assert a.blocks.shape == (MAX_INPUT_TOKENS // 16,)


UNPARSABLE = [
    ('{"timestamp": ' + "9" * 5000 + "}", "number too long"),  # json.loads: ValueError
    ("[" * 1000, "nested too deep"),  # json.loads: RecursionError
    ("[" * 200_000, "nested too deep"),
]


@pytest.mark.parametrize(("text", "message"), UNPARSABLE)
def test_unparsable_lines_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{text}\n{GOOD}\n")
    for loader in (mooncake, load_trace):
        with pytest.raises(DataError, match=message) as info:
            loader(path)
        assert info.value.line == 3
        assert str(info.value).startswith(f"{path}:3: invalid JSON: ")
    path.write_text(f"\n{text}\n")  # as the first line: detect_format says so
    for call in (detect_format, mooncake, azure):
        with pytest.raises(DataError, match=message) as info:
            call(path)
        assert info.value.line == 2
        assert "unknown trace format" in str(info.value)


def test_timestamp_past_the_float_range(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n" + GOOD.replace('"timestamp": 0', '"timestamp": 1' + "0" * 400))
    with pytest.raises(DataError, match="non-negative number of ms") as info:
        mooncake(path)
    assert info.value.line == 2
    assert "field 'timestamp'" in str(info.value)
    assert "an integer of 1329 bits" in str(info.value)


def test_first_line_neither_json_nor_azure_header(tmp_path: Path) -> None:
    path = tmp_path / "headless.csv"
    path.write_text("\n2023-11-16 18:17:03.9799600,374,44\n")  # an Azure CSV without header
    for call in (detect_format, azure, mooncake, load_trace):
        with pytest.raises(DataError) as info:
            call(path)
        assert info.value.line == 2
        message = str(info.value)
        assert message.startswith(f"{path}:2: unknown trace format (expected a Mooncake JSONL ")
        assert "Azure CSV header TIMESTAMP,ContextTokens,GeneratedTokens" in message
        assert "invalid JSON" in message


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    rows = f"{GOOD}\n\r\n{GOOD}\r".encode() * 200  # 29 KB, past the reader's 8 KB chunks
    path.write_bytes(rows + f"{GOOD}\n".encode() + b'{"timestamp": "\xff"}\n')
    for gz in (False, True):
        if gz:
            path.write_bytes(gzip.compress(path.read_bytes()))
        with pytest.raises(DataError, match="cannot read trace: not UTF-8") as info:
            mooncake(path)
        assert info.value.line == 602  # 3 lines a repetition, then GOOD


# ------------------------------------------------------------------ the shared traces

DATA = shared_data_dir()
TRACES = DATA / "traces" if DATA is not None else Path("/nonexistent")

REAL = [
    ("mooncake_fast25_conversation_trace.first40min.jsonl", 7851, 2397),
    ("mooncake_fast25_conversation_trace.first40min.normalized.jsonl.gz", 7851, 2397),
    ("mooncake_fast25_synthetic_trace.jsonl", 3993, 1022),
    ("mooncake_fast25_synthetic_trace.normalized.jsonl.gz", 3993, 1022),
    ("azure_llm_2023_code.csv", 8819, 3436),
    ("azure_llm_2023_code.normalized.jsonl.gz", 8819, 3436),
    ("azure_llm_2023_conv.csv", 19366, 3502),
    ("azure_llm_2023_conv.normalized.jsonl.gz", 19366, 3502),
]


@pytest.mark.skipif(DATA is None, reason="no shared data directory")
@pytest.mark.parametrize(("name", "rows", "span_s"), REAL)
def test_real_traces(name: str, rows: int, span_s: int) -> None:
    w = load_trace(TRACES / name)
    assert len(w) == rows  # the data README: no empty rows in any of them
    assert w.params["skipped_empty_prompts"] == 0
    assert round(w.requests[-1].arrival_s) == span_s
    means = np.mean([r.prompt_tokens for r in w.requests])
    expected_mean = {7851: 12427, 3993: 15325, 8819: 2047, 19366: 1154}[rows]
    assert int(means) == expected_mean  # the README truncates


@pytest.mark.skipif(DATA is None, reason="no shared data directory")
def test_real_mooncake_raw_and_normalized_agree() -> None:
    stem = "mooncake_fast25_synthetic_trace"
    raw = load_trace(TRACES / f"{stem}.jsonl")
    norm = load_trace(TRACES / f"{stem}.normalized.jsonl.gz")
    for a, b in zip(raw.requests, norm.requests, strict=True):
        assert a.arrival_s == b.arrival_s
        assert np.array_equal(a.blocks, b.blocks)
    # Prefix reuse against an infinite shared cache, in 512-token units, as in the README
    # (0.640): count leading 16-token ids already seen at their position.
    seen: set[tuple[int, int]] = set()
    hits = total = 0
    for r in raw.requests:
        coarse = r.blocks[::32].tolist()
        total += len(coarse)
        for i, x in enumerate(coarse):
            if (i, x) not in seen:
                break
            hits += 1
        seen.update(enumerate(coarse))
    assert round(hits / total, 2) == 0.64
