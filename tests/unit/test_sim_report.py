"""Run summaries, the JSON report and the comparison table, on hand-built runs.

Every expected number below is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from inference_sched.sim.report import (
    TABLE_ROWS,
    build_table,
    comparison_table,
    print_comparison,
    report_json,
    summarize,
    write_json,
)
from inference_sched.sim.types import RequestStatus, RunResult

NAN = math.nan
OK = RequestStatus.COMPLETED
FAILED = RequestStatus.FAILED_SCHEDULING
REJECTED = RequestStatus.REJECTED
UNFINISHED = RequestStatus.UNFINISHED

Row = tuple[float, float, float, float, int, int, int, int, int, int]
"""(arrival, scheduled, first token, finish, prompt, output, cached, preemptions,
endpoint, status) of one request."""


def make_run(
    rows: Sequence[Row],
    *,
    config: str = "cfg",
    endpoints: Sequence[str] = ("e0", "e1"),
    sample_s: Sequence[float] = (),
    running: Sequence[Sequence[float]] = (),
    kv_usage: Sequence[Sequence[float]] = (),
    duration_s: float = 5.0,
    wall_s: float = 0.5,
    decision_us_p50: float = 12.5,
) -> RunResult:
    """A RunResult from per-request rows and per-scrape lists (waiting is all zeros)."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * 10

    def f64(i: int) -> np.ndarray:
        return np.array(cols[i], dtype=np.float64)

    def i64(i: int) -> np.ndarray:
        return np.array(cols[i], dtype=np.int64)

    k = len(endpoints)
    samples = np.array(running, dtype=np.float64).reshape(len(sample_s), k)
    kv = np.array(kv_usage, dtype=np.float64).reshape(len(sample_s), k) if kv_usage else None
    return RunResult(
        config=config,
        endpoint_names=tuple(endpoints),
        arrival_s=f64(0),
        scheduled_s=f64(1),
        first_token_s=f64(2),
        finish_s=f64(3),
        prompt_tokens=i64(4),
        output_tokens=i64(5),
        cached_tokens=i64(6),
        preemptions=i64(7),
        endpoint=np.array(cols[8], dtype=np.int32),
        status=np.array(cols[9], dtype=np.int8),
        sample_s=np.array(sample_s, dtype=np.float64),
        sample_running=samples,
        sample_waiting=np.zeros_like(samples),
        sample_kv_usage=np.zeros_like(samples) if kv is None else kv,
        duration_s=duration_s,
        wall_s=wall_s,
        decision_us_p50=decision_us_p50,
    )


# Completed: r0, r1, r2. TTFT 0.3, 0.5, 1.0; TPOT (1.3-0.3)/10 = 0.1, (4-1)/20 = 0.15
# (r2 has one output token: no TPOT); E2E 1.3, 3.5, 1.0; queue 0.1, 0.0, 0.5.
ROWS: list[Row] = [
    (0.0, 0.1, 0.3, 1.3, 100, 11, 50, 0, 0, OK),
    (0.5, 0.5, 1.0, 4.0, 200, 21, 0, 1, 1, OK),
    (1.0, 1.5, 2.0, 2.0, 100, 1, 100, 0, 0, OK),
    (1.5, NAN, NAN, NAN, 50, 5, 0, 0, -1, FAILED),
    (2.0, NAN, NAN, NAN, 5000, 5, 0, 0, 1, REJECTED),
    (3.0, 3.1, 3.5, NAN, 40, 10, 0, 2, 0, UNFINISHED),
]
SAMPLE_S = (0.0, 1.0, 2.0, 4.0)
RUNNING = ((0, 0), (2, 1), (2, 1), (0, 3))
KV_USAGE = ((0.0, 0.2), (0.5, 0.2), (0.5, 0.2), (0.5, 0.2))


def full_run(config: str = "cfg") -> RunResult:
    """ROWS with the scrapes above: every metric defined."""
    return make_run(ROWS, config=config, sample_s=SAMPLE_S, running=RUNNING, kv_usage=KV_USAGE)


def empty_run() -> RunResult:
    """Nothing completed, no scrapes, no timing."""
    return make_run(
        [
            (0.0, NAN, NAN, NAN, 10, 5, 0, 0, -1, FAILED),
            (1.0, 1.2, NAN, NAN, 10, 5, 0, 1, 0, UNFINISHED),
        ],
        config="empty",
        wall_s=0.0,
        decision_us_p50=NAN,
    )


# ---------------------------------------------------------------------------------------
# summarize


def test_summarize_full_run_every_metric() -> None:
    s = summarize(full_run())
    expected = {
        "config": "cfg",
        "requests": 6,
        "completed": 3,
        "failed": 2,  # one scheduling failure + one rejection
        "failed_scheduling": 1,
        "rejected": 1,
        "unfinished": 1,
        # Linear percentiles of 3 sorted values a <= b <= c: p50 = b,
        # p90 = b + 0.8 (c - b), p99 = b + 0.98 (c - b).
        "ttft_p50_s": 0.5,  # 0.3, 0.5, 1.0
        "ttft_p90_s": 0.9,
        "ttft_p99_s": 0.99,
        # Two values 0.1, 0.15: p = 0.1 + q * 0.05.
        "tpot_p50_s": 0.125,
        "tpot_p90_s": 0.145,
        "tpot_p99_s": 0.1495,
        "e2e_p50_s": 1.3,  # 1.0, 1.3, 3.5
        "e2e_p90_s": 3.06,
        "e2e_p99_s": 3.456,
        "queue_p50_s": 0.1,  # 0.0, 0.1, 0.5
        "queue_p90_s": 0.42,
        "queue_p99_s": 0.492,
        # Span: last completed finish 4.0 - first arrival 0.0.
        "throughput_req_s": 0.75,  # 3 / 4
        "throughput_out_tok_s": 8.25,  # (11 + 21 + 1) / 4
        "prefix_hit_rate": 0.375,  # (50 + 0 + 100) / (100 + 200 + 100)
        "preemptions": 3,  # all requests: 1 + 2
        "endpoints": ["e0", "e1"],
        "requests_by_endpoint": [3, 2],  # r0 r2 r5 / r1 r4 (r3 unrouted)
        "load_cv": 0.2,  # std 0.5 / mean 2.5
        "load_max_over_mean": 1.2,  # 3 / 2.5
        # Trapezoids over 4 s: e0 (1 + 2 + 2) / 4, e1 (0.5 + 1 + 4) / 4.
        "running_mean_by_endpoint": [1.25, 1.375],
        "running_cv": 1 / 21,  # std 0.0625 / mean 1.3125
        "running_max_over_mean": 22 / 21,  # 1.375 / 1.3125
        "kv_usage_mean": 0.31875,  # mean of e0 (0.25 + 0.5 + 1.0) / 4 and e1 0.2
        "duration_s": 5.0,
        "wall_s": 0.5,
        "sim_requests_per_wall_s": 12.0,  # 6 / 0.5
        "decision_us_p50": 12.5,
    }
    assert list(s) == list(expected)  # the key order is part of the output
    for key, want in expected.items():
        if isinstance(want, float) or (isinstance(want, list) and isinstance(want[0], float)):
            assert s[key] == pytest.approx(want, rel=1e-12, abs=1e-15), key
        else:
            assert s[key] == want, key


def test_summarize_values_are_plain_python() -> None:
    s = summarize(full_run())
    for key, value in s.items():
        values = value if isinstance(value, list) else [value]
        assert all(type(v) in (str, int, float) for v in values), key


def test_contract_keys_present() -> None:
    contract = {
        "config",
        *(f"{m}_p{q}_s" for m in ("ttft", "tpot", "e2e", "queue") for q in (50, 90, 99)),
        "throughput_req_s",
        "throughput_out_tok_s",
        "prefix_hit_rate",
        "completed",
        "failed",
        "rejected",
        "unfinished",
        "preemptions",
        "requests",
        "load_cv",
        "load_max_over_mean",
        "duration_s",
        "wall_s",
        "sim_requests_per_wall_s",
        "decision_us_p50",
    }
    assert contract <= set(summarize(full_run()))
    assert contract <= set(summarize(empty_run()))


def test_summarize_nothing_completed_gives_none_not_nan() -> None:
    s = summarize(empty_run())
    for m in ("ttft", "tpot", "e2e", "queue"):
        for q in (50, 90, 99):
            assert s[f"{m}_p{q}_s"] is None
    assert s["completed"] == 0
    assert s["failed"] == 1
    assert s["failed_scheduling"] == 1
    assert s["rejected"] == 0
    assert s["unfinished"] == 1
    assert s["preemptions"] == 1
    assert s["throughput_req_s"] == 0.0  # nothing delivered: zero, not undefined
    assert s["throughput_out_tok_s"] == 0.0
    assert s["prefix_hit_rate"] is None
    assert s["requests_by_endpoint"] == [1, 0]
    assert s["load_cv"] == 1.0  # counts 1, 0: std 0.5 / mean 0.5
    assert s["load_max_over_mean"] == 2.0
    assert s["running_mean_by_endpoint"] == []  # no scrapes
    assert s["running_cv"] is None
    assert s["running_max_over_mean"] is None
    assert s["kv_usage_mean"] is None
    assert s["sim_requests_per_wall_s"] is None  # wall_s 0
    assert s["decision_us_p50"] is None  # NaN in the run
    json.dumps(s, allow_nan=False)


def test_summarize_no_requests_at_all() -> None:
    s = summarize(make_run([], endpoints=()))
    assert s["requests"] == 0
    assert s["completed"] == 0
    assert s["ttft_p50_s"] is None
    assert s["throughput_req_s"] == 0.0
    assert s["requests_by_endpoint"] == []
    assert s["load_cv"] is None
    assert s["load_max_over_mean"] is None
    json.dumps(s, allow_nan=False)


def test_no_request_routed_load_spread_undefined() -> None:
    rows: list[Row] = [(0.0, NAN, NAN, NAN, 10, 5, 0, 0, -1, FAILED)]
    s = summarize(make_run(rows))
    assert s["requests_by_endpoint"] == [0, 0]
    assert s["load_cv"] is None  # mean 0
    assert s["load_max_over_mean"] is None


def test_single_request_completed_throughput_span() -> None:
    # Arrival 2.0, finish 6.0: span 4 s; TPOT (6 - 2.5) / (8 - 1) = 0.5.
    rows: list[Row] = [(2.0, 2.0, 2.5, 6.0, 32, 8, 16, 0, 1, OK)]
    s = summarize(make_run(rows))
    assert s["throughput_req_s"] == 0.25
    assert s["throughput_out_tok_s"] == 2.0
    assert s["ttft_p50_s"] == s["ttft_p99_s"] == 0.5
    assert s["tpot_p90_s"] == 0.5
    assert s["queue_p50_s"] == 0.0
    assert s["prefix_hit_rate"] == 0.5
    assert s["requests_by_endpoint"] == [0, 1]
    assert s["load_cv"] == 1.0
    assert s["load_max_over_mean"] == 2.0


def test_tpot_none_when_every_completed_request_has_one_token() -> None:
    rows: list[Row] = [(0.0, 0.0, 0.2, 0.2, 16, 1, 0, 0, 0, OK)]
    s = summarize(make_run(rows))
    assert s["ttft_p50_s"] == 0.2
    assert s["tpot_p50_s"] is None
    assert s["tpot_p99_s"] is None


def test_zero_span_throughput_is_none() -> None:
    # Degenerate: finished at its arrival time. No division by zero, no NaN.
    rows: list[Row] = [(1.0, 1.0, 1.0, 1.0, 16, 1, 0, 0, 0, OK)]
    s = summarize(make_run(rows))
    assert s["throughput_req_s"] is None
    assert s["throughput_out_tok_s"] is None
    assert s["e2e_p50_s"] == 0.0


def test_running_single_scrape_time_plain_mean() -> None:
    rows: list[Row] = [(0.0, 0.0, 0.2, 0.4, 16, 2, 0, 0, 0, OK)]
    run = make_run(rows, sample_s=[1.0], running=[[2.0, 4.0]], kv_usage=[[0.1, 0.3]])
    s = summarize(run)
    assert s["running_mean_by_endpoint"] == [2.0, 4.0]
    assert s["running_cv"] == pytest.approx(1 / 3)  # std 1 / mean 3
    assert s["running_max_over_mean"] == pytest.approx(4 / 3)
    assert s["kv_usage_mean"] == pytest.approx(0.2)


def test_irregular_scrapes_are_time_weighted() -> None:
    # One endpoint: 0 at t=0, 4 at t=1, 4 at t=9: (2 * 1 + 4 * 8) / 9, not the plain 8/3.
    rows: list[Row] = [(0.0, 0.0, 0.2, 0.4, 16, 2, 0, 0, 0, OK)]
    run = make_run(rows, endpoints=["only"], sample_s=[0, 1, 9], running=[[0], [4], [4]])
    s = summarize(run)
    assert s["running_mean_by_endpoint"] == [pytest.approx(34 / 9)]
    assert s["running_cv"] == 0.0
    assert s["running_max_over_mean"] == 1.0


def test_completed_with_missing_time_is_left_out_not_nan() -> None:
    # A malformed run (completed, NaN first token) must not turn percentiles into NaN.
    rows: list[Row] = [
        (0.0, 0.0, NAN, 1.0, 16, 2, 0, 0, 0, OK),
        (0.0, 0.0, 0.25, 1.0, 16, 2, 0, 0, 0, OK),
    ]
    s = summarize(make_run(rows))
    assert s["ttft_p50_s"] == 0.25
    assert s["tpot_p50_s"] == 0.75
    assert s["e2e_p50_s"] == 1.0
    json.dumps(s, allow_nan=False)


# ---------------------------------------------------------------------------------------
# JSON


def test_report_json_round_trip() -> None:
    workload = {
        "generator": "poisson",
        "seed": np.int64(7),
        "rate": np.float64(2.5),
        "mix": (0.5, 0.5),
        "missing": NAN,
        "trace": Path("traces/a.jsonl"),
        "nested": {"sizes": np.array([1, 2])},
    }
    report = report_json(workload, [full_run("a"), empty_run()])
    text = json.dumps(report, allow_nan=False)  # raises on NaN / numpy values
    back = json.loads(text)
    assert back["workload"] == {
        "generator": "poisson",
        "seed": 7,
        "rate": 2.5,
        "mix": [0.5, 0.5],
        "missing": None,
        "trace": "traces/a.jsonl",
        "nested": {"sizes": [1, 2]},
    }
    assert [r["config"] for r in back["runs"]] == ["a", "empty"]
    assert back["runs"][0] == summarize(full_run("a"))
    assert back["runs"][1]["ttft_p50_s"] is None


def test_write_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "report.json", {"seed": 1}, [full_run("a"), full_run("b")])
    assert path == tmp_path / "report.json"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert "NaN" not in text
    data = json.loads(text)
    assert data["workload"] == {"seed": 1}
    assert [r["config"] for r in data["runs"]] == ["a", "b"]
    assert data["runs"][1]["throughput_req_s"] == 0.75


# ---------------------------------------------------------------------------------------
# Table


def _table_rows(text: str) -> dict[str, list[str]]:
    """Label -> cells of the rendered table (cells split on runs of 2+ spaces)."""
    labels = {row.label for row in TABLE_ROWS}
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = [p for p in line.strip().split("  ") if p]
        cells = [p.strip() for p in parts]
        if cells and cells[0] in labels:
            out[cells[0]] = cells[1:]
    return out


def _two_summaries() -> list[dict[str, object]]:
    a = summarize(full_run("prefix-aware"))
    # b: faster TTFT p50, lower throughput, and an absent metric (older JSON).
    b = dict(summarize(full_run("load[1].yaml")), ttft_p50_s=0.4, throughput_req_s=0.5)
    b["prefix_hit_rate"] = None
    del b["kv_usage_mean"]
    return [a, b]


def test_table_columns_and_formatted_values() -> None:
    text = comparison_table(_two_summaries())
    header = next(line for line in text.splitlines() if "metric" in line)
    # Config names are columns, in order; "[1]" is not swallowed as rich markup.
    assert header.split() == ["metric", "prefix-aware", "load[1].yaml"]
    rows = _table_rows(text)
    assert len(rows) == len(TABLE_ROWS)
    assert rows["requests"] == ["6", "6"]  # no best marked: no better direction
    assert rows["failed"] == ["2", "2"]  # equal everywhere: nothing marked
    assert rows["TTFT p50 (ms)"] == ["500.0", "* 400.0"]  # lower is better
    assert rows["TTFT p90 (ms)"] == ["900.0", "900.0"]
    assert rows["TPOT p99 (ms)"] == ["149.5", "149.5"]
    assert rows["E2E p99 (ms)"] == ["3,456.0", "3,456.0"]
    assert rows["queue p90 (ms)"] == ["420.0", "420.0"]
    assert rows["throughput (req/s)"] == ["* 0.75", "0.50"]  # higher is better
    assert rows["throughput (out tok/s)"] == ["8.2", "8.2"]
    assert rows["prefix hit rate"] == ["37.5%", "-"]  # None shows as "-"
    assert rows["KV usage mean"] == ["31.9%", "-"]  # missing key shows as "-"
    assert rows["routed load CV"] == ["0.200", "0.200"]
    assert rows["running max/mean"] == ["1.05", "1.05"]
    assert rows["decision p50 (us)"] == ["12.5", "12.5"]
    assert rows["sim req / wall s"] == ["12", "12"]
    assert "* best of the row" in text
    assert "\x1b[" not in text  # plain text: no colour codes


def test_table_marks_ties_at_displayed_precision() -> None:
    a, b = _two_summaries()
    c = dict(a, config="c", ttft_p50_s=0.40004)  # shows as 400.0, like b
    rows = _table_rows(comparison_table([a, b, c]))
    assert rows["TTFT p50 (ms)"] == ["500.0", "* 400.0", "* 400.0"]


def test_table_single_config_marks_nothing() -> None:
    text = comparison_table([summarize(full_run("solo"))])
    assert "* " not in text.replace("* best of the row", "")
    assert _table_rows(text)["completed"] == ["3"]


def test_table_lines_are_trimmed_and_bounded() -> None:
    text = comparison_table(_two_summaries(), title="demo", width=120)
    lines = text.splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert max(len(line) for line in lines) <= 120
    assert lines[0].strip() == "demo"


def test_print_comparison_to_console() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None)
    print_comparison(_two_summaries(), console=console, title="t")
    printed = buffer.getvalue()
    assert "prefix-aware" in printed
    assert "load[1].yaml" in printed
    assert "* 400.0" in printed


def test_build_table_shape() -> None:
    table = build_table(_two_summaries())
    assert len(table.columns) == 3
    assert table.row_count == len(TABLE_ROWS)


def test_table_from_json_round_trip() -> None:
    # The table reads summaries loaded back from a report file just the same.
    summaries = json.loads(json.dumps(report_json({}, [full_run("a"), empty_run()])))["runs"]
    rows = _table_rows(comparison_table(summaries))
    assert rows["TTFT p50 (ms)"] == ["500.0", "-"]
    assert rows["completed"] == ["* 3", "0"]
    assert rows["throughput (req/s)"] == ["* 0.75", "0.00"]
