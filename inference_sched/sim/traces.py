"""Trace replay: Mooncake and Azure LLM traces as :class:`~.workloads.Workload` values.

Formats (``shared/data/README.md``; :func:`detect_format` tells them apart by content):

* ``mooncake``: JSONL rows ``{"timestamp": ms, "input_length", "output_length",
  "hash_ids": [...]}``; each hash id names a 512-token prefix block.
* ``mooncake-normalized`` / ``azure-normalized``: (gzipped) JSONL rows ``{"t_ms",
  "input_tokens", "output_tokens", "block_hashes", "block_size_tokens", ...}``;
  ``block_hashes`` is null for Azure.
* ``azure``: CSV ``TIMESTAMP,ContextTokens,GeneratedTokens`` with wall-clock timestamps
  (``2023-11-16 18:17:03.9799600``, 100 ns resolution, read exactly).

Block ids. A Mooncake hash id ``h`` of a ``B``-token block becomes ``B / 16`` ids
``mix(h, j)``, ``j < B / 16`` (:func:`.prompts.child_ids`), cut to ``ceil(input / 16)``:
prefix-consistent because Mooncake's ids are (equal id at equal position = same prefix).
Azure rows carry no prefix information, so each request gets ids no other request has.

Limits. A row may ask for at most :data:`MAX_INPUT_TOKENS` (10**7) prompt tokens,
:data:`MAX_OUTPUT_TOKENS` (10**7) output tokens and a ``block_size_tokens`` of at most
:data:`MAX_BLOCK_TOKENS` (65536), so a request has at most ``10**7 / 16 = 625,000`` block
ids (5 MB) and at most that many hash ids are kept from its row; a timestamp must be a
finite float. No real trace comes near these (the shared ones stay below 2 * 10**5 tokens);
a row past one raises :class:`~inference_sched.errors.DataError` naming the field, so a
few bytes of input cannot make a loader allocate gigabytes.

Row policy: an output length of 0 is clamped to 1 (a request always yields one token);
a row with an empty prompt is skipped. Both are counted in ``Workload.params``. Blank
lines are ignored. Any other bad row (invalid JSON or CSV, a missing, negative or
non-integer field, a count past its limit, too few hash ids, a timestamp earlier than the
previous row's, a line nested too deep or with a number too long to parse) raises
:class:`~inference_sched.errors.DataError` with the path, the 1-based line number and the
field. Rows after the selected window or ``limit`` are not read.

Only block-id arrays are built (one shared read-only array sliced per request); prompt
bytes are derived later, on demand (:func:`.prompts.prompt_bytes`).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gzip
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from inference_sched.errors import ConfigError, DataError
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.prompts import child_ids, mix, mix_array
from inference_sched.sim.types import SIM_BLOCK_TOKENS, SimRequest
from inference_sched.sim.workloads import DEFAULT_MODEL, Workload

__all__ = [
    "MAX_BLOCK_TOKENS",
    "MAX_INPUT_TOKENS",
    "MAX_OUTPUT_TOKENS",
    "SERVEGEN_TARBALL",
    "ServeGenWindow",
    "TraceFormat",
    "azure",
    "default_servegen_path",
    "detect_format",
    "load_trace",
    "mooncake",
    "servegen_windows",
]

TraceFormat: TypeAlias = Literal["mooncake", "mooncake-normalized", "azure", "azure-normalized"]
PathLike: TypeAlias = str | os.PathLike[str]

SERVEGEN_TARBALL: Final = "traces/servegen_language_m-large_client_arrivals.tar.gz"
"""The ServeGen per-client windows, relative to :func:`~.data.shared_data_dir`."""

MAX_INPUT_TOKENS: Final = 10**7
"""Most prompt tokens a trace row may ask for (``input_length``, ``input_tokens``,
``ContextTokens``): 625,000 block ids of 16 tokens, 5 MB."""
MAX_OUTPUT_TOKENS: Final = 10**7
"""Most output tokens a trace row may ask for (``output_length``, ``output_tokens``,
``GeneratedTokens``)."""
MAX_BLOCK_TOKENS: Final = 65536
"""Largest ``block_size_tokens`` of a normalized Mooncake row (a multiple of 16)."""

_MOONCAKE_BLOCK_TOKENS: Final = 512
_AZURE_COLUMNS: Final = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_INT64_MAX: Final = 2**63 - 1
_AZURE_ROOT: Final = mix(0, 0x41_5A_55_52_45)  # b"AZURE": a root of its own
_TIMESTAMP_RE: Final = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


class _Rows:
    """Columns of the rows kept so far (parsing fills them, windowing reads them)."""

    def __init__(self) -> None:
        self.t_ms: list[float] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.hashes: list[list[int]] = []  # only for Mooncake
        self.block_tokens: list[int] = []  # tokens per hash id, per row (Mooncake)
        self.clamped_outputs = 0
        self.skipped_empty = 0


class _Window:
    """Which rows to keep: ``[start_ms, end_ms)`` of the trace's own clock, at most
    ``limit`` of them."""

    def __init__(self, limit: int | None, start_s: float, duration_s: float | None) -> None:
        if limit is not None and limit < 0:
            raise ConfigError(f"expected limit >= 0, got {limit!r}", path="limit", value=limit)
        if start_s < 0 or (duration_s is not None and duration_s <= 0):
            raise ConfigError("expected start_s >= 0 and duration_s > 0")
        self.limit = limit
        self.start_ms = start_s * 1000.0
        self.end_ms = math.inf if duration_s is None else (start_s + duration_s) * 1000.0


# --------------------------------------------------------------------------- reading


def _open_binary(path: Path) -> gzip.GzipFile | io.BufferedReader:
    with path.open("rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")


def _open_text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="")


_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")  # the text reader's (newline="")


def _undecodable_line(path: Path) -> int:
    """The 1-based line of the first byte that is not UTF-8 (the text reader decodes 8 KB
    at a time, so it cannot tell), 0 if it cannot be found."""
    breaks = 0
    try:
        with _open_binary(path) as f:
            for raw in f:  # a b"\n" never falls inside a UTF-8 sequence
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return breaks + 1 + len(_LINE_BREAK.findall(raw[: e.start].decode("utf-8")))
                breaks += len(_LINE_BREAK.findall(text))
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    return 0


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines."""
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as e:
        bad = _undecodable_line(path)
        raise DataError(
            f"cannot read trace: not UTF-8 ({e.reason})", source=str(path), line=bad
        ) from e
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read trace: {e}", source=str(path)) from e


def _parse_json(text: str, path: Path, line: int) -> object:
    """``json.loads(text)``, every failure a DataError naming the line: invalid JSON, an
    integer past Python's 4300-digit limit (a ValueError that is no JSONDecodeError),
    nesting deeper than the recursion limit (a RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        message = f"invalid JSON: {e.msg} (column {e.colno})"
    except ValueError as e:  # int_max_str_digits
        message = f"invalid JSON: a number too long to parse ({e})"
    except RecursionError:
        message = "invalid JSON: nested too deep"
    raise DataError(message, source=str(path), line=line)


def detect_format(path: PathLike) -> TraceFormat:
    """The format of a trace file, from its first non-blank line (gzip or plain).

    Raises:
        DataError: empty file or unknown content.
    """
    p = Path(path)
    for number, line in _lines(p):
        if line.lstrip().startswith("TIMESTAMP") or "ContextTokens" in line:
            return "azure"
        try:
            row = _parse_json(line, p, number)
        except DataError as e:
            raise DataError(
                "unknown trace format (expected a Mooncake JSONL object or an Azure CSV header "
                f"{','.join(_AZURE_COLUMNS)}): {str(e).removeprefix(f'{p}:{number}: ')}",
                source=str(p),
                line=number,
            ) from e
        if isinstance(row, dict):
            if "t_ms" in row:
                return (
                    "azure-normalized" if row.get("block_hashes") is None else "mooncake-normalized"
                )
            if "hash_ids" in row or "timestamp" in row:
                return "mooncake"
        raise DataError(
            "unknown trace format (expected Mooncake or Azure rows)", source=str(p), line=number
        )
    raise DataError("unknown or empty trace (expected Mooncake JSONL or Azure CSV)", source=str(p))


def _error(path: Path, line: int, field: str, message: str) -> DataError:
    return DataError(f"field {field!r}: {message}", source=str(path), line=line)


def _show(value: object) -> str:
    """A short repr: a long integer is given by its number of digits."""
    if type(value) is int and not -(10**20) < value < 10**20:
        return f"an integer of {value.bit_length()} bits"  # str() refuses 4300+ digits
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounded(value: int, limit: int, field: str, path: Path, line: int) -> int:
    if value > limit:
        raise _error(path, line, field, f"{_show(value)} is past the limit of {limit}")
    return value


def _count(row: dict[str, object], field: str, limit: int, path: Path, line: int) -> int:
    """A non-negative integer field of at most ``limit`` (JSON bools are not integers)."""
    if field not in row:
        raise _error(path, line, field, "missing")
    value = row[field]
    if type(value) is not int or value < 0:
        raise _error(path, line, field, f"expected a non-negative integer, got {_show(value)}")
    return _bounded(value, limit, field, path, line)


def _time(row: dict[str, object], field: str, path: Path, line: int) -> float:
    if field not in row:
        raise _error(path, line, field, "missing")
    value = row[field]
    ms = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an integer past the float range
            ms = float(value)
    if not 0 <= ms < math.inf:
        raise _error(path, line, field, f"expected a non-negative number of ms, got {_show(value)}")
    return ms


def _hash_ids(value: object, field: str, needed: int, path: Path, line: int) -> list[int]:
    if not isinstance(value, list):
        raise _error(path, line, field, f"expected a list of hash ids, got {_show(value)}")
    if value and (not set(map(type, value)) <= {int} or min(value) < 0 or max(value) > _INT64_MAX):
        raise _error(path, line, field, "expected non-negative 64-bit integers")
    if len(value) < needed:
        raise _error(path, line, field, f"{len(value)} hash ids, the prompt needs {needed}")
    return value[:needed]  # the extra ones are never used


def _keep(
    rows: _Rows,
    window: _Window,
    path: Path,
    line: int,
    field: str,
    t_ms: float,
    previous_ms: float,
    first_ms: float,
) -> int:
    """0: keep the row, 1: skip it (before the window), 2: stop reading (past it)."""
    if t_ms < previous_ms:
        raise _error(path, line, field, f"{t_ms} is earlier than the previous row's {previous_ms}")
    rel = t_ms - first_ms
    if rel < window.start_ms:
        return 1
    if rel >= window.end_ms or (window.limit is not None and len(rows.t_ms) >= window.limit):
        return 2
    return 0


def _add(rows: _Rows, t_rel_ms: float, inputs: int, outputs: int) -> bool:
    """Apply the row policy; False when the row is skipped (empty prompt)."""
    if inputs == 0:
        rows.skipped_empty += 1
        return False
    if outputs == 0:
        rows.clamped_outputs += 1
        outputs = 1
    rows.t_ms.append(t_rel_ms)
    rows.inputs.append(inputs)
    rows.outputs.append(outputs)
    return True


def _read_jsonl(path: Path, window: _Window, *, prefix: bool) -> _Rows:
    """Rows of a Mooncake or normalized JSONL file; ``prefix`` reads the hash ids."""
    rows = _Rows()
    previous = -math.inf
    first = math.nan
    for line, text in _lines(path):
        row = _parse_json(text, path, line)
        if not isinstance(row, dict):
            raise DataError("expected a JSON object", source=str(path), line=line)
        if "t_ms" in row:
            names = ("t_ms", "input_tokens", "output_tokens", "block_hashes")
        else:
            names = ("timestamp", "input_length", "output_length", "hash_ids")
        t = _time(row, names[0], path, line)
        inputs = _count(row, names[1], MAX_INPUT_TOKENS, path, line)
        outputs = _count(row, names[2], MAX_OUTPUT_TOKENS, path, line)
        if math.isnan(first):
            first = t
        action = _keep(rows, window, path, line, names[0], t, previous, first)
        previous = t
        if action == 2:
            break
        if prefix:
            block = _MOONCAKE_BLOCK_TOKENS
            if "block_size_tokens" in row:
                block = _count(row, "block_size_tokens", MAX_BLOCK_TOKENS, path, line)
                if block == 0 or block % SIM_BLOCK_TOKENS:
                    raise _error(
                        path, line, "block_size_tokens", f"{block} is not a multiple of 16"
                    )
            if names[3] not in row:
                raise _error(path, line, names[3], "missing")
            ids = _hash_ids(row[names[3]], names[3], -(-inputs // block), path, line)
            if action == 0 and _add(rows, t - first, inputs, outputs):
                rows.hashes.append(ids)
                rows.block_tokens.append(block)
        elif action == 0:
            _add(rows, t - first, inputs, outputs)
    return rows


_DATE_CACHE: dict[str, int] = {}


def _timestamp_ns(text: str) -> int | None:
    """Wall-clock ``YYYY-MM-DD HH:MM:SS[.f{1,9}]`` as integer ns (UTC), None if malformed."""
    m = _TIMESTAMP_RE.fullmatch(text.strip())
    if m is None:
        return None
    date, hh, mm, ss, frac = m.groups()
    days = _DATE_CACHE.get(date)
    if days is None:
        try:
            days = datetime.date.fromisoformat(date).toordinal()
        except ValueError:
            return None
        _DATE_CACHE[date] = days
    h, mi, s = int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or s > 60:
        return None
    ns = int((frac or "").ljust(9, "0"))
    return (((days * 24 + h) * 60 + mi) * 60 + s) * 1_000_000_000 + ns


def _read_azure_csv(path: Path, window: _Window) -> _Rows:
    rows = _Rows()
    lines = _lines(path)
    header_line = next(lines, None)
    if header_line is None:
        raise DataError("empty trace", source=str(path))
    header = [h.strip() for h in header_line[1].strip().split(",")]
    if not set(_AZURE_COLUMNS) <= set(header):
        raise DataError(
            f"expected columns {', '.join(_AZURE_COLUMNS)}, got {header_line[1].strip()!r}",
            source=str(path),
            line=header_line[0],
        )
    i_t, i_in, i_out = (header.index(c) for c in _AZURE_COLUMNS)
    previous = -math.inf
    first_ns: int | None = None
    for line, text in lines:
        try:
            fields = next(csv.reader([text]))
        except csv.Error as e:  # e.g. a field past csv.field_size_limit()
            raise DataError(f"invalid CSV: {e}", source=str(path), line=line) from e
        if len(fields) != len(header):
            raise DataError(
                f"expected {len(header)} fields, got {len(fields)}", source=str(path), line=line
            )
        ns = _timestamp_ns(fields[i_t])
        if ns is None:
            raise _error(
                path,
                line,
                "TIMESTAMP",
                f"expected YYYY-MM-DD HH:MM:SS.fffffff, got {fields[i_t]!r}",
            )
        counts = []
        for index, name, limit in (
            (i_in, "ContextTokens", MAX_INPUT_TOKENS),
            (i_out, "GeneratedTokens", MAX_OUTPUT_TOKENS),
        ):
            value = fields[index].strip()
            if not value.isdigit() or not value.isascii():
                raise _error(
                    path, line, name, f"expected a non-negative integer, got {_show(value)}"
                )
            if len(value.lstrip("0")) > len(str(limit)):  # int() refuses 4300+ digits
                raise _error(
                    path,
                    line,
                    name,
                    f"an integer of {len(value)} digits is past the limit of {limit}",
                )
            counts.append(_bounded(int(value), limit, name, path, line))
        if first_ns is None:
            first_ns = ns
        t_ms = (ns - first_ns) / 1e6
        action = _keep(rows, window, path, line, "TIMESTAMP", t_ms, previous, 0.0)
        previous = t_ms
        if action == 2:
            break
        if action == 0:
            _add(rows, t_ms, counts[0], counts[1])
    return rows


# -------------------------------------------------------------------------- building


def _time_scale(rows: _Rows, window: _Window, time_scale: float, rate: float | None) -> float:
    if not time_scale > 0:
        raise ConfigError(f"expected time_scale > 0, got {time_scale!r}", path="time_scale")
    if rate is None:
        return time_scale
    if time_scale != 1.0:
        raise ConfigError("give rate or time_scale, not both", path="rate", value=rate)
    if not rate > 0:
        raise ConfigError(f"expected rate > 0, got {rate!r}", path="rate", value=rate)
    if not rows.t_ms:
        return 1.0
    span_ms = (
        window.end_ms - window.start_ms
        if math.isfinite(window.end_ms)
        else rows.t_ms[-1] - window.start_ms
    )
    if span_ms <= 0:
        raise ConfigError("rate: the selected rows span no time", path="rate", value=rate)
    native = len(rows.t_ms) / (span_ms / 1000.0)
    return native / rate


def _build(
    name: str,
    fmt: TraceFormat,
    path: Path,
    rows: _Rows,
    blocks: list[npt.NDArray[np.int64]],
    window: _Window,
    scale: float,
    params: dict[str, object],
    model: str,
) -> Workload:
    arrivals = ((np.array(rows.t_ms, dtype=np.float64) - window.start_ms) / 1000.0 * scale).tolist()
    requests = tuple(
        SimRequest(id=i, arrival_s=a, prompt_tokens=p, output_tokens=o, blocks=b)
        for i, (a, p, o, b) in enumerate(
            zip(arrivals, rows.inputs, rows.outputs, blocks, strict=True)
        )
    )
    params = {
        "generator": "trace",
        "path": str(path),
        "format": fmt,
        **params,
        "time_scale": scale,
        "num_requests": len(requests),
        "clamped_outputs": rows.clamped_outputs,
        "skipped_empty_prompts": rows.skipped_empty,
    }
    return Workload(name=name, requests=requests, params=params, model=model)


def _mooncake_blocks(rows: _Rows) -> list[npt.NDArray[np.int64]]:
    """Each row's hash ids expanded to 16-token ids, as slices of one read-only array."""
    if not rows.inputs:
        return []
    needed = np.array([-(-n // SIM_BLOCK_TOKENS) for n in rows.inputs], dtype=np.int64)
    per = np.array(rows.block_tokens, dtype=np.int64) // SIM_BLOCK_TOKENS
    used = -(-needed // per)  # hash ids each row needs
    if np.all(per == per[0]):
        flat: list[int] = []
        for ids, m in zip(rows.hashes, used.tolist(), strict=True):
            flat.extend(ids[:m])
        children = child_ids(np.array(flat, dtype=np.int64), int(per[0]))
        starts = np.concatenate(([0], np.cumsum(used * per)[:-1]))
    else:  # mixed block sizes in one file: expand row by row
        parts = [
            child_ids(np.array(ids[:m], dtype=np.int64), int(k))
            for ids, m, k in zip(rows.hashes, used.tolist(), per.tolist(), strict=True)
        ]
        children = np.concatenate(parts)
        starts = np.concatenate(([0], np.cumsum([p.shape[0] for p in parts])[:-1]))
    children.flags.writeable = False
    return [children[s : s + n] for s, n in zip(starts.tolist(), needed.tolist(), strict=True)]


def _unique_blocks(rows: _Rows, root: int) -> list[npt.NDArray[np.int64]]:
    """Ids no other request shares: ``mix(mix(root, i), j)`` for request ``i``, block ``j``."""
    if not rows.inputs:
        return []
    needed = np.array([-(-n // SIM_BLOCK_TOKENS) for n in rows.inputs], dtype=np.int64)
    roots = mix_array(root, np.arange(needed.shape[0], dtype=np.int64))
    starts = np.cumsum(needed) - needed
    positions = np.arange(int(needed.sum()), dtype=np.int64) - np.repeat(starts, needed)
    ids = mix_array(np.repeat(roots, needed), positions)
    ids.flags.writeable = False
    return [ids[s : s + n] for s, n in zip(starts.tolist(), needed.tolist(), strict=True)]


def mooncake(
    path: PathLike,
    *,
    limit: int | None = None,
    time_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate: float | None = None,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """Replay a Mooncake trace (raw JSONL or ``.normalized.jsonl.gz``) with its prefixes.

    Args:
        path: the trace file (gzip detected by content).
        limit: keep at most this many rows (after the window start).
        time_scale: multiply inter-arrival times (0.5 replays twice as fast).
        start_s: skip rows earlier than this, seconds after the first row; arrivals are
            shifted so the window starts at 0.
        duration_s: keep rows earlier than ``start_s + duration_s`` (trace seconds).
        rate: rescale the timeline so the kept rows arrive at this mean rate (replaces
            ``time_scale``; the rate is rows over the window, or over first-to-last row
            when ``duration_s`` is None).
        model: the target model recorded in the workload.

    Raises:
        DataError: a malformed row (path, 1-based line and field in the message).
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt not in ("mooncake", "mooncake-normalized"):
        raise DataError(f"not a Mooncake trace ({fmt}): it has no prefix hash ids", source=str(p))
    window = _Window(limit, start_s, duration_s)
    rows = _read_jsonl(p, window, prefix=True)
    scale = _time_scale(rows, window, time_scale, rate)
    params: dict[str, object] = {
        "limit": limit,
        "start_s": start_s,
        "duration_s": duration_s,
        "rate": rate,
    }
    return _build(
        f"trace:{p.name}", fmt, p, rows, _mooncake_blocks(rows), window, scale, params, model
    )


def azure(
    path: PathLike,
    *,
    limit: int | None = None,
    time_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate: float | None = None,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """Replay an Azure LLM inference trace (CSV or its normalized JSONL).

    No prefix information: every request gets block ids of its own. Arguments as in
    :func:`mooncake`; ``block_hashes`` of a normalized file are ignored.

    Raises:
        DataError: a malformed row (path, 1-based line and field in the message).
    """
    p = Path(path)
    fmt = detect_format(p)
    window = _Window(limit, start_s, duration_s)
    if fmt == "azure":
        rows = _read_azure_csv(p, window)
    elif fmt in ("azure-normalized", "mooncake-normalized"):
        rows = _read_jsonl(p, window, prefix=False)
    else:
        raise DataError(f"not an Azure trace ({fmt})", source=str(p))
    scale = _time_scale(rows, window, time_scale, rate)
    params: dict[str, object] = {
        "limit": limit,
        "start_s": start_s,
        "duration_s": duration_s,
        "rate": rate,
    }
    blocks = _unique_blocks(rows, _AZURE_ROOT)
    return _build(f"trace:{p.name}", fmt, p, rows, blocks, window, scale, params, model)


def load_trace(
    path: PathLike,
    *,
    limit: int | None = None,
    time_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate: float | None = None,
    model: str = DEFAULT_MODEL,
) -> Workload:
    """:func:`mooncake` or :func:`azure`, whichever :func:`detect_format` says."""
    fmt = detect_format(path)
    reader = mooncake if fmt in ("mooncake", "mooncake-normalized") else azure
    return reader(
        path,
        limit=limit,
        time_scale=time_scale,
        start_s=start_s,
        duration_s=duration_s,
        rate=rate,
        model=model,
    )


# -------------------------------------------------------------------------- ServeGen


class ServeGenWindow(NamedTuple):
    """One 600 s window of one ServeGen client's arrival process."""

    start_s: float
    rate: float
    """Mean requests per second (0: no requests)."""
    cv: float
    """Coefficient of variation of inter-arrival times."""
    pattern: str
    """``Gamma``, ``Weibull`` or ``""`` (empty window)."""
    shape: float
    scale: float


def default_servegen_path() -> Path:
    """The shared ServeGen tarball (:data:`SERVEGEN_TARBALL`).

    Raises:
        ConfigError: no shared data directory.
    """
    root = shared_data_dir()
    if root is None:
        raise ConfigError("no shared data directory: pass servegen_path", path="servegen_path")
    return root / SERVEGEN_TARBALL


def servegen_windows(path: PathLike, client: int | str) -> list[ServeGenWindow]:
    """A client's windows from a ServeGen ``chunk-<client>-trace.csv``, or from the tarball
    holding it (``language/m-large/chunk-<client>-trace.csv``).

    Raises:
        DataError: no such client, or a malformed row.
    """
    p = Path(path)
    member = f"chunk-{client}-trace.csv"
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(p) as tar:
                names = [n for n in tar.getnames() if n.rsplit("/", 1)[-1] == member]
                extracted = tar.extractfile(names[0]) if names else None
                if extracted is None:
                    raise DataError(f"no ServeGen client {client!r} ({member})", source=str(p))
                text = extracted.read().decode("utf-8")
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"cannot read ServeGen tarball: {e}", source=str(p)) from e
        source = f"{p}:{names[0]}"
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise DataError(f"cannot read ServeGen windows: {e}", source=str(p)) from e
        source = str(p)
    windows = []
    fields = ServeGenWindow._fields
    for line, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row:
            continue
        if len(row) != len(fields):
            raise DataError(
                f"expected {len(fields)} fields, got {len(row)}", source=source, line=line
            )
        try:
            start, rate, cv, shape, scale = (float(row[i]) for i in (0, 1, 2, 4, 5))
        except ValueError as e:
            raise DataError(f"bad number: {e}", source=source, line=line) from e
        if not all(0 <= v < math.inf for v in (start, rate, cv, shape, scale)):
            raise DataError("expected non-negative finite numbers", source=source, line=line)
        windows.append(ServeGenWindow(start, rate, cv, row[3].strip(), shape, scale))
    return windows
