"""Simulation reports: per-run summaries, the JSON report and a side-by-side table.

:func:`summarize` turns one :class:`~inference_sched.sim.types.RunResult` into a flat dict
of plain Python values (the JSON contract, ``docs/simulator/reports.md``); keys are never
renamed, only added. Definitions, all times in seconds from the start of the run:

* TTFT = ``first_token_s - arrival_s`` (includes queueing); E2E = ``finish_s - arrival_s``;
  queue = ``scheduled_s - arrival_s``; TPOT = ``(finish_s - first_token_s) /
  (output_tokens - 1)`` for requests with at least 2 output tokens.
* Percentiles (p50, p90, p99) are over COMPLETED requests with a finite value, by
  ``numpy.percentile`` (linear interpolation); ``None`` when there is no such request.
* The span is ``max(finish_s of completed) - min(arrival_s of all requests)``;
  ``throughput_req_s = completed / span`` and ``throughput_out_tok_s = sum(output_tokens
  of completed) / span``; both are 0.0 when nothing completed and ``None`` if the span
  is not positive.
* ``prefix_hit_rate = sum(cached_tokens) / sum(prompt_tokens)`` over completed requests
  (token-weighted), ``None`` when nothing completed.
* ``failed`` counts requests that got an error: scheduling failures (no endpoint, GIE
  503/429) plus rejections (prompt larger than the chosen server's KV cache);
  ``failed_scheduling`` and ``rejected`` split it. ``unfinished`` were cut by the end.
* Load spread: ``requests_by_endpoint`` counts requests routed to each endpoint (any
  outcome), ``load_cv`` is its coefficient of variation (population standard deviation
  over mean) and ``load_max_over_mean`` its max over mean. ``running_mean_by_endpoint``
  is each endpoint's time-averaged running requests from the scrapes (trapezoidal rule
  over the scrape times; the plain mean when there is a single scrape time), with
  ``running_cv`` and ``running_max_over_mean`` alike; ``kv_usage_mean`` is the fleet mean
  of the time-averaged KV usage fraction. All ``None`` when undefined (no endpoints, no
  scrapes, or a zero mean).

No value is ever NaN or infinite, so the report is strict JSON (``allow_nan=False``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from inference_sched.sim.types import RequestStatus, RunResult

__all__ = [
    "PERCENTILES",
    "TABLE_ROWS",
    "TableRow",
    "build_table",
    "comparison_table",
    "print_comparison",
    "report_json",
    "summarize",
    "write_json",
]

PERCENTILES: Final = (50, 90, 99)
"""Latency percentiles reported, as in the ``*_p50_s`` / ``*_p90_s`` / ``*_p99_s`` keys."""

BEST_MARK: Final = "*"
"""Put before the best value of a table row (plain text: visible without colours)."""


# ---------------------------------------------------------------------------------------
# Summaries


def _float(value: float | np.floating | None) -> float | None:
    """A plain float, or None for NaN / infinity / None (the JSON stays strict)."""
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _ratio(num: float, den: float) -> float | None:
    return _float(num / den) if den > 0 else None


def _percentiles(prefix: str, values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {f"{prefix}_p{q}_s": None for q in PERCENTILES}
    points = np.percentile(values, PERCENTILES)
    return {f"{prefix}_p{q}_s": _float(v) for q, v in zip(PERCENTILES, points, strict=True)}


def _spread(values: npt.NDArray[np.float64]) -> tuple[float | None, float | None]:
    """(coefficient of variation, max / mean) of per-endpoint values; None if undefined."""
    if values.size == 0:
        return None, None
    mean = float(values.mean())
    if not mean > 0:
        return None, None
    return _float(values.std() / mean), _float(values.max() / mean)


def _time_average(
    times: npt.NDArray[np.float64], samples: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Per-column time average of ``samples`` (shape (m, k)) scraped at ``times`` (m,)."""
    span = float(times[-1] - times[0]) if times.size else 0.0
    if not span > 0:
        return np.asarray(samples.mean(axis=0), dtype=np.float64)
    # Trapezoids by hand: np.trapezoid needs NumPy 2 and the floor is 1.26.
    dt = np.diff(times)[:, None]
    area = ((samples[1:] + samples[:-1]) * 0.5 * dt).sum(axis=0)
    return np.asarray(area / span, dtype=np.float64)


def summarize(run: RunResult) -> dict[str, object]:
    """The metrics of one run as a flat dict of JSON-ready values (module docstring).

    Keys, in order: ``config``, ``requests``, ``completed``, ``failed``,
    ``failed_scheduling``, ``rejected``, ``unfinished``, ``ttft_p{50,90,99}_s``,
    ``tpot_p*_s``, ``e2e_p*_s``, ``queue_p*_s``, ``throughput_req_s``,
    ``throughput_out_tok_s``, ``prefix_hit_rate``, ``preemptions``, ``endpoints``,
    ``requests_by_endpoint``, ``load_cv``, ``load_max_over_mean``,
    ``running_mean_by_endpoint``, ``running_cv``, ``running_max_over_mean``,
    ``kv_usage_mean``, ``duration_s``, ``wall_s``, ``sim_requests_per_wall_s``,
    ``decision_us_p50``.
    """
    status = run.status
    done = status == RequestStatus.COMPLETED
    n_done = int(done.sum())
    n_failed_sched = int((status == RequestStatus.FAILED_SCHEDULING).sum())
    n_rejected = int((status == RequestStatus.REJECTED).sum())
    n_requests = int(status.size)

    arrival = run.arrival_s[done]
    first = run.first_token_s[done]
    finish = run.finish_s[done]
    out_tokens = run.output_tokens[done]
    multi = out_tokens >= 2
    tpot = (finish[multi] - first[multi]) / (out_tokens[multi] - 1)

    summary: dict[str, object] = {
        "config": run.config,
        "requests": n_requests,
        "completed": n_done,
        "failed": n_failed_sched + n_rejected,
        "failed_scheduling": n_failed_sched,
        "rejected": n_rejected,
        "unfinished": int((status == RequestStatus.UNFINISHED).sum()),
    }
    summary |= _percentiles("ttft", first - arrival)
    summary |= _percentiles("tpot", tpot)
    summary |= _percentiles("e2e", finish - arrival)
    summary |= _percentiles("queue", run.scheduled_s[done] - arrival)

    finite_finish = finish[np.isfinite(finish)]
    if n_done == 0 or finite_finish.size == 0:
        thr_req: float | None = 0.0
        thr_tok: float | None = 0.0
    else:
        span = float(finite_finish.max() - np.nanmin(run.arrival_s))
        thr_req = _ratio(n_done, span)
        thr_tok = _ratio(float(out_tokens.sum()), span)
    summary["throughput_req_s"] = thr_req
    summary["throughput_out_tok_s"] = thr_tok
    summary["prefix_hit_rate"] = _ratio(
        float(run.cached_tokens[done].sum()), float(run.prompt_tokens[done].sum())
    )
    summary["preemptions"] = int(run.preemptions.sum())

    n_endpoints = len(run.endpoint_names)
    routed = run.endpoint[run.endpoint >= 0]
    per_endpoint = np.bincount(routed, minlength=n_endpoints).astype(np.float64)
    load_cv, load_max = _spread(per_endpoint)
    summary["endpoints"] = list(run.endpoint_names)
    summary["requests_by_endpoint"] = [int(c) for c in per_endpoint]
    summary["load_cv"] = load_cv
    summary["load_max_over_mean"] = load_max

    if run.sample_s.size and n_endpoints:
        running = _time_average(run.sample_s, run.sample_running)
        kv_usage = _float(_time_average(run.sample_s, run.sample_kv_usage).mean())
        running_list: list[float | None] = [_float(v) for v in running]
        running_cv, running_max = _spread(running)
    else:
        running_list, kv_usage, running_cv, running_max = [], None, None, None
    summary["running_mean_by_endpoint"] = running_list
    summary["running_cv"] = running_cv
    summary["running_max_over_mean"] = running_max
    summary["kv_usage_mean"] = kv_usage

    summary["duration_s"] = _float(run.duration_s)
    summary["wall_s"] = _float(run.wall_s)
    summary["sim_requests_per_wall_s"] = _ratio(n_requests, run.wall_s)
    summary["decision_us_p50"] = _float(run.decision_us_p50)
    return summary


# ---------------------------------------------------------------------------------------
# JSON


def _jsonable(value: object) -> object:
    """``value`` with NumPy scalars/arrays, tuples and paths made plain; NaN becomes None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def report_json(workload: Mapping[str, object], runs: Sequence[RunResult]) -> dict[str, object]:
    """``{"workload": workload, "runs": [summarize(run), ...]}``, JSON-ready.

    ``workload`` describes the request stream all runs shared (generator, seed, rate, ...);
    it is copied with NumPy values made plain and NaN turned into None.
    """
    return {"workload": _jsonable(workload), "runs": [summarize(run) for run in runs]}


def write_json(path: str | Path, workload: Mapping[str, object], runs: Sequence[RunResult]) -> Path:
    """Write :func:`report_json` to ``path`` (indented, strict JSON); returns the path."""
    path = Path(path)
    text = json.dumps(report_json(workload, runs), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# Comparison table


class TableRow(NamedTuple):
    """One metric row of the comparison table."""

    key: str
    """Summary key."""
    label: str
    scale: float
    """Multiplier applied before formatting (1000 for seconds shown in ms)."""
    digits: int
    """Decimals shown (and compared when picking the best)."""
    better: Literal["min", "max"] | None
    """Which way is better; None: no best is marked."""
    suffix: str = ""


def _latency_rows(key: str, label: str) -> list[TableRow]:
    return [TableRow(f"{key}_p{q}_s", f"{label} p{q} (ms)", 1e3, 1, "min") for q in PERCENTILES]


TABLE_ROWS: Final[tuple[TableRow, ...]] = (
    TableRow("requests", "requests", 1, 0, None),
    TableRow("completed", "completed", 1, 0, "max"),
    TableRow("failed", "failed", 1, 0, "min"),
    TableRow("rejected", "rejected", 1, 0, "min"),
    TableRow("unfinished", "unfinished", 1, 0, "min"),
    *_latency_rows("ttft", "TTFT"),
    *_latency_rows("tpot", "TPOT"),
    *_latency_rows("e2e", "E2E"),
    *_latency_rows("queue", "queue"),
    TableRow("throughput_req_s", "throughput (req/s)", 1, 2, "max"),
    TableRow("throughput_out_tok_s", "throughput (out tok/s)", 1, 1, "max"),
    TableRow("prefix_hit_rate", "prefix hit rate", 100, 1, "max", "%"),
    TableRow("preemptions", "preemptions", 1, 0, "min"),
    TableRow("load_cv", "routed load CV", 1, 3, "min"),
    TableRow("load_max_over_mean", "routed load max/mean", 1, 2, "min"),
    TableRow("running_cv", "running CV", 1, 3, "min"),
    TableRow("running_max_over_mean", "running max/mean", 1, 2, "min"),
    TableRow("kv_usage_mean", "KV usage mean", 100, 1, None, "%"),
    TableRow("decision_us_p50", "decision p50 (us)", 1, 1, "min"),
    TableRow("duration_s", "simulated (s)", 1, 1, None),
    TableRow("wall_s", "wall (s)", 1, 1, None),
    TableRow("sim_requests_per_wall_s", "sim req / wall s", 1, 0, None),
)
"""The rows of :func:`comparison_table`, top to bottom. Latencies are shown in ms."""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return _float(value)


def _cells(row: TableRow, summaries: Sequence[Mapping[str, object]]) -> list[Text]:
    """Formatted cells of one row, the best marked (ties all marked; none if all equal)."""
    shown = [_number(s.get(row.key)) for s in summaries]
    shown = [None if v is None else round(v * row.scale, row.digits) for v in shown]
    present = [v for v in shown if v is not None]
    best: float | None = None
    if row.better is not None and len(set(present)) > 1:
        best = min(present) if row.better == "min" else max(present)
    cells = []
    for v in shown:
        if v is None:
            cells.append(Text("-"))
            continue
        text = f"{v:,.{row.digits}f}{row.suffix}"
        # The mark goes in front: rich trims trailing spaces, so a trailing mark would
        # shift the digits of the marked cell out of line with the rest of the column.
        cells.append(Text(f"{BEST_MARK} {text}", style="bold") if v == best else Text(text))
    return cells


def build_table(summaries: Sequence[Mapping[str, object]], title: str | None = None) -> Table:
    """A :class:`rich.table.Table`: one row per metric of :data:`TABLE_ROWS`, one column
    per summary (titled by its ``config``), the best value of each row marked ``* ``.

    A metric a summary lacks, or whose value is None, shows as ``-``.
    """
    table = Table(
        title=title,
        caption=f"{BEST_MARK} best of the row",
        # Rules only under the header: reads in a terminal and in CI logs alike.
        box=box.SIMPLE_HEAD,
    )
    table.add_column("metric", no_wrap=True)
    for summary in summaries:
        # Text, not str: config names like "a[1].yaml" must not be read as rich markup.
        table.add_column(Text(str(summary.get("config", "?"))), justify="right", no_wrap=True)
    for row in TABLE_ROWS:
        table.add_row(Text(row.label), *_cells(row, summaries))
    return table


def comparison_table(
    summaries: Sequence[Mapping[str, object]], title: str | None = None, width: int = 200
) -> str:
    """:func:`build_table` rendered as plain text (no colour codes), lines right-trimmed.

    ``width`` caps the line length; the table keeps its natural width below it.
    """
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(build_table(summaries, title))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def print_comparison(
    summaries: Sequence[Mapping[str, object]],
    console: Console | None = None,
    title: str | None = None,
) -> None:
    """Print :func:`build_table` to ``console`` (default: a new stdout console, which
    drops colours by itself when stdout is not a terminal)."""
    (console or Console()).print(build_table(summaries, title))
