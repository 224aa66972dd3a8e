"""Step-time models: how long one engine step takes, from measured tables.

Every model splits a step the way Vidur does (``shared/data/latency/README.md``, "Using it
in a step-level simulator"). For a step with ``B`` decodes (context lengths summing to
``S``, mean ``C = S / B``) and prefill chunks ``i`` of ``T_i`` new tokens on top of ``P_i``
tokens already in the KV cache, with ``N = B + sum T_i`` tokens in the batch::

    step = dense(N) + sum_i prefill_attn(T_i, P_i) + decode_attn(B, C)

``h100-llama2-7b`` (:class:`VidurStepTime`)
    ``dense`` = Vidur's measured linear ops (x32 layers) of an H100 at ``N`` tokens,
    linearly interpolated, extrapolated above 4096 tokens by the line fitted on
    2048..4096; both attention terms are the README's analytical formulas (constants
    below: assumptions, not measurements).
``h200-llama2-7b``, ``h200-llama3-8b`` (:class:`MeasuredStepTime`)
    whole-model timings measured on one H200 (``measured_h200/``), taken apart into the
    same three terms: ``dense(N)`` = a one-sequence prefill of ``N`` tokens (N >= 128) or
    a decode batch of ``N`` extrapolated to zero context (N < 128); the prefill term is
    the measured extra time of a cached prefix as a function of ``sum_i T_i * P_i`` (the
    cached-key FLOPs); ``decode_attn`` = the measured decode time minus ``dense(B)``.
    Each is interpolated in log-space between measured rows (docs/simulator/latency.md).

``monotone=True`` (the default) replaces every measured curve by its lower monotone
envelope (the value at ``x`` is the cheapest value at any ``x' >= x``): timing noise is
one-sided and an engine can always pad a batch to a faster shape, so more work never
takes less time. ``monotone=False`` keeps the raw rows and reproduces every table row.

Without a data directory the models are built from an embedded fit (constants at the
end of this module, derived by :mod:`inference_sched.sim._fit_latency`). Host overhead
per step is not in these tables: the engine adds ``EngineConfig.step_overhead_s``.
"""

from __future__ import annotations

import bisect
import csv
import functools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from inference_sched.errors import ConfigError, DataError
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.types import StepTimeModel

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "load",
    "for_model",
    "VidurStepTime",
    "MeasuredStepTime",
    "NUM_LAYERS",
    "NUM_HEADS",
    "HEAD_DIM",
    "KV_BYTES_PER_TOKEN_LAYER",
    "PREFILL_ATTN_FLOPS_PER_S",
    "DECODE_KV_BYTES_PER_S",
    "ATTN_FLOOR_S",
    "LINEAR_EXTRAPOLATION_FROM",
    "LINEAR_OPS_FILE",
    "H200_PREFILL_FILE",
    "H200_DECODE_FILE",
]

DEFAULT_MODEL: Final = "h100-llama2-7b"
"""The model :func:`for_model` picks for unknown names: the only 7-8B model with
Vidur-profiled H100 data."""

MODELS: Final = ("h100-llama2-7b", "h200-llama2-7b", "h200-llama3-8b")
"""Names :func:`load` accepts."""

# Llama-2-7B shape and the README's analytical attention model (stated assumptions).
NUM_LAYERS: Final = 32
NUM_HEADS: Final = 32
HEAD_DIM: Final = 128
KV_BYTES_PER_TOKEN_LAYER: Final = 16_384
"""K and V of one token in one layer: 2 x 32 KV heads x 128 x 2 bytes (bf16)."""
PREFILL_ATTN_FLOPS_PER_S: Final = 400e12
"""Effective causal FlashAttention bf16 throughput on an H100 (between FA2 and FA3)."""
DECODE_KV_BYTES_PER_S: Final = 2.4e12
"""Effective KV read bandwidth of paged decode attention (~72 % of 3.35 TB/s HBM3)."""
ATTN_FLOOR_S: Final = 10e-6
"""Per-layer, per-kernel attention floor (launch + tail): 0.010 ms."""
LINEAR_EXTRAPOLATION_FROM: Final = 2048
"""Above the last profiled token count, linear ops follow the line fitted from here on."""

LINEAR_OPS_FILE: Final = "latency/vidur_h100_llama2_7b_tp1_linear_ops.csv"
H200_PREFILL_FILE: Final = "latency/measured_h200/model_prefill.csv"
H200_DECODE_FILE: Final = "latency/measured_h200/model_decode.csv"

_H200_TABLE_MODEL: Final = {"h200-llama2-7b": "Llama-2-7b-hf", "h200-llama3-8b": "Meta-Llama-3-8B"}

# Attention per step in seconds: per-chunk / per-batch floors, and the work coefficients.
_PREFILL_COEF_S: Final = NUM_LAYERS * 4 * NUM_HEADS * HEAD_DIM / PREFILL_ATTN_FLOPS_PER_S
_DECODE_COEF_S: Final = NUM_LAYERS * KV_BYTES_PER_TOKEN_LAYER / DECODE_KV_BYTES_PER_S
_ATTN_FLOOR_STEP_S: Final = NUM_LAYERS * ATTN_FLOOR_S

_FAR: Final = 1e4
"""Log-space distance of the far knots that extend a grid axis with slope 1."""

_MIN_ATTN_MS: Final = 1e-3
"""Floor of a derived decode-attention knot (ms), so noise cannot make it <= 0 in log-space."""

Float64Array = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- models


class VidurStepTime:
    """Vidur's composition: measured linear ops + analytical attention (module docstring).

    Attributes:
        name: the model name (:data:`MODELS`).
        source: where the numbers came from (a file path or ``"embedded fit"``).
    """

    def __init__(
        self,
        name: str,
        source: str,
        linear_ms: Float64Array,
        slope_ms: float,
        intercept_ms: float,
    ) -> None:
        """``linear_ms[n]``: linear ops of ``n`` tokens (``linear_ms[0] == 0``); above the
        array, ``slope_ms * n + intercept_ms``."""
        self.name = name
        self.source = source
        self._lin: list[float] = (np.asarray(linear_ms, dtype=np.float64) * 1e-3).tolist()
        self._lin_max = len(self._lin) - 1
        self._slope = slope_ms * 1e-3
        self._icpt = intercept_ms * 1e-3

    def linear_s(self, num_tokens: int) -> float:
        """Seconds of the non-attention ops (32 layers) for ``num_tokens`` in the batch."""
        if num_tokens <= self._lin_max:
            return self._lin[num_tokens]
        return self._slope * num_tokens + self._icpt

    def step_s(
        self,
        prefill_new: Sequence[int],
        prefill_context: Sequence[int],
        num_decodes: int,
        decode_context_sum: int,
    ) -> float:
        """Seconds for one step (see :class:`~inference_sched.sim.types.StepTimeModel`)."""
        n = num_decodes
        attn = 0.0
        for t, p in zip(prefill_new, prefill_context, strict=True):
            if t > 0:
                n += t
                attn += _ATTN_FLOOR_STEP_S + _PREFILL_COEF_S * t * (p + 0.5 * t)
        if num_decodes > 0:
            attn += _ATTN_FLOOR_STEP_S + _DECODE_COEF_S * decode_context_sum
        lin = self._lin[n] if n <= self._lin_max else self._slope * n + self._icpt
        return lin + attn

    def decode_steps_s(
        self, num_decodes: int, decode_context_sum: int, num_steps: int
    ) -> Float64Array:
        """Durations of ``num_steps`` decode-only steps; step ``j`` has context sum
        ``decode_context_sum + j * num_decodes`` (bit-identical to :meth:`step_s`)."""
        if num_decodes <= 0:
            return np.zeros(num_steps, dtype=np.float64)
        ctx = decode_context_sum + num_decodes * np.arange(num_steps, dtype=np.float64)
        # Same operation order as step_s, so the two agree to the last bit.
        return self.linear_s(num_decodes) + (_ATTN_FLOOR_STEP_S + _DECODE_COEF_S * ctx)

    def __repr__(self) -> str:
        return f"VidurStepTime({self.name!r}, source={self.source!r})"


class MeasuredStepTime:
    """Whole-model measured timings taken apart into dense + attention terms
    (module docstring; interpolation rules in :func:`_build_measured`).

    Attributes:
        name: the model name (:data:`MODELS`).
        source: where the numbers came from (a file path or ``"embedded fit"``).
    """

    def __init__(
        self,
        name: str,
        source: str,
        dense_ms: Float64Array,
        dense_slope_ms: float,
        ctx_x: Float64Array,
        ctx_ms: Float64Array,
        grid_b: Float64Array,
        grid_c: Float64Array,
        grid_attn_ms: Float64Array,
    ) -> None:
        """``dense_ms[n]``: dense time of ``n`` tokens (``dense_ms[0] == 0``), continued
        above the array with ``dense_slope_ms`` per token. ``ctx_ms`` at ``ctx_x``: extra
        prefill time of ``T * P`` (new x cached tokens). ``grid_attn_ms[i, j]``: decode
        attention of ``grid_b[i]`` requests at mean context ``grid_c[j]``."""
        self.name = name
        self.source = source
        dense = np.asarray(dense_ms, dtype=np.float64) * 1e-3
        self._dense: list[float] = dense.tolist()
        self._dense_max = len(self._dense) - 1
        self._dense_top = float(dense[-1])
        self._dense_slope = dense_slope_ms * 1e-3
        self._ctx_lx: list[float] = np.log(ctx_x).tolist()
        self._ctx_ly: list[float] = np.log(np.asarray(ctx_ms) * 1e-3).tolist()
        self._lb: list[float] = np.log(grid_b).tolist()
        self._lc: list[float] = np.log(grid_c).tolist()
        la = np.log(np.asarray(grid_attn_ms, dtype=np.float64) * 1e-3)
        self._la: list[list[float]] = la.tolist()
        # For decode_steps_s: the context axis with far end knots of slope 1 in log-space,
        # so np.interp alone does the proportional extrapolation below and above the grid.
        self._lc_ext = np.array([self._lc[0] - _FAR, *self._lc, self._lc[-1] + _FAR])
        self._la_ext = np.hstack([la[:, :1] - _FAR, la, la[:, -1:] + _FAR])

    def dense_s(self, num_tokens: int) -> float:
        """Seconds of the dense (context-free) part for ``num_tokens`` in the batch."""
        if num_tokens <= self._dense_max:
            return self._dense[num_tokens]
        return self._dense_top + self._dense_slope * (num_tokens - self._dense_max)

    def prefill_context_s(self, work: float) -> float:
        """Extra seconds of prefill chunks whose ``sum T_i * P_i`` is ``work``: log-log
        interpolation, proportional to ``work`` outside the measured range."""
        if work <= 0:
            return 0.0
        lx = self._ctx_lx
        u = math.log(work)
        if u <= lx[0]:
            return math.exp(self._ctx_ly[0] + u - lx[0])
        if u >= lx[-1]:
            return math.exp(self._ctx_ly[-1] + u - lx[-1])
        i = bisect.bisect_right(lx, u) - 1
        ly = self._ctx_ly
        return math.exp(ly[i] + (ly[i + 1] - ly[i]) * (u - lx[i]) / (lx[i + 1] - lx[i]))

    def _batch_position(self, num_decodes: int) -> tuple[int, float, float]:
        """Row ``i``, fraction toward row ``i + 1`` and log-space excess beyond the grid
        of a batch size on the log-B axis."""
        lb = self._lb
        u = math.log(num_decodes)
        if u < lb[0]:
            return 0, 0.0, u - lb[0]
        if u >= lb[-1]:
            return len(lb) - 2, 1.0, u - lb[-1]
        i = bisect.bisect_right(lb, u) - 1
        return i, (u - lb[i]) / (lb[i + 1] - lb[i]), 0.0

    def decode_attn_s(self, num_decodes: int, mean_context: float) -> float:
        """Decode attention seconds: bilinear in (log B, log C) of log time inside the
        grid, proportional to B and to C beyond it."""
        if num_decodes <= 0 or mean_context <= 0:
            return 0.0
        i, fu, extra = self._batch_position(num_decodes)
        lc = self._lc
        v = math.log(mean_context)
        if v < lc[0]:
            extra, v, j = extra + v - lc[0], lc[0], 0
        elif v >= lc[-1]:
            extra, v, j = extra + v - lc[-1], lc[-1], len(lc) - 2
        else:
            j = bisect.bisect_right(lc, v) - 1
        fv = (v - lc[j]) / (lc[j + 1] - lc[j])
        r0, r1 = self._la[i], self._la[i + 1]
        a0 = r0[j] + (r0[j + 1] - r0[j]) * fv
        a1 = r1[j] + (r1[j + 1] - r1[j]) * fv
        return math.exp(a0 + (a1 - a0) * fu + extra)

    def step_s(
        self,
        prefill_new: Sequence[int],
        prefill_context: Sequence[int],
        num_decodes: int,
        decode_context_sum: int,
    ) -> float:
        """Seconds for one step (see :class:`~inference_sched.sim.types.StepTimeModel`)."""
        n = num_decodes
        work = 0
        for t, p in zip(prefill_new, prefill_context, strict=True):
            if t > 0:
                n += t
                work += t * p
        total = self._dense[n] if n <= self._dense_max else self.dense_s(n)
        if work > 0:
            total += self.prefill_context_s(work)
        if num_decodes > 0 and decode_context_sum > 0:
            total += self.decode_attn_s(num_decodes, decode_context_sum / num_decodes)
        return total

    def decode_steps_s(
        self, num_decodes: int, decode_context_sum: int, num_steps: int
    ) -> Float64Array:
        """Durations of ``num_steps`` decode-only steps; step ``j`` has context sum
        ``decode_context_sum + j * num_decodes`` (equal to :meth:`step_s` up to rounding
        of the vectorised log/exp)."""
        if num_decodes <= 0:
            return np.zeros(num_steps, dtype=np.float64)
        dense = self.dense_s(num_decodes)
        steps = np.arange(num_steps, dtype=np.float64)
        mean_ctx = (decode_context_sum + num_decodes * steps) / num_decodes
        i, fu, extra = self._batch_position(num_decodes)
        row = self._la_ext[i] + (self._la_ext[i + 1] - self._la_ext[i]) * fu
        # Only step 0 can lack context (decode_context_sum == 0): it has no attention.
        log_ctx = np.log(np.maximum(mean_ctx, 1e-300))
        attn = np.exp(np.interp(log_ctx, self._lc_ext, row) + extra)
        if decode_context_sum <= 0 and num_steps > 0:
            attn[0] = 0.0
        result: Float64Array = dense + attn
        return result

    def __repr__(self) -> str:
        return f"MeasuredStepTime({self.name!r}, source={self.source!r})"


# --------------------------------------------------------------------------- public API


def for_model(model: str) -> str:
    """The latency model for a Hugging Face model name.

    Llama-2-7B (any variant, e.g. ``meta-llama/Llama-2-7b-chat-hf``) -> ``h100-llama2-7b``;
    Llama-3 / 3.x 8B (``meta-llama/Meta-Llama-3-8B``, ``meta-llama/Llama-3.1-8B-Instruct``)
    -> ``h200-llama3-8b``; a name in :data:`MODELS` -> itself; anything else ->
    :data:`DEFAULT_MODEL` (a stand-in for a 7-8B dense model on one H100).
    """
    if model in MODELS:
        return model
    lowered = model.lower()
    if re.search(r"llama-?3(?:\.\d+)?-8b", lowered):
        return "h200-llama3-8b"
    if re.search(r"llama-?2-7b", lowered):
        return "h100-llama2-7b"
    return DEFAULT_MODEL


def load(
    name: str = DEFAULT_MODEL, data_dir: Path | None = None, *, monotone: bool = True
) -> StepTimeModel:
    """The step-time model ``name`` (one of :data:`MODELS`).

    Args:
        name: model name.
        data_dir: the data directory holding ``latency/`` (default
            :func:`~inference_sched.sim.data.shared_data_dir`). When it (or its
            ``latency/`` folder) does not exist, the embedded fit is returned.
        monotone: use the lower monotone envelope of the measured curves (module
            docstring); False reproduces every table row exactly.

    Raises:
        ConfigError: unknown ``name``.
        DataError: a table file is missing, lacks a column or holds a non-numeric cell
            (the message names the file and line).
    """
    if name not in MODELS:
        raise ConfigError(
            f"unknown latency model {name!r}; choose one of {', '.join(MODELS)}", value=name
        )
    root = data_dir if data_dir is not None else shared_data_dir()
    if root is None or not (root / "latency").is_dir():
        return _embedded(name)
    return _load_cached(name, root.resolve(), monotone)


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, root: Path, monotone: bool) -> StepTimeModel:
    # Servers of one fleet share a model: read the tables once per process.
    if name == "h100-llama2-7b":
        return _build_vidur(name, root / LINEAR_OPS_FILE, monotone)
    return _build_measured(
        name, root / H200_PREFILL_FILE, root / H200_DECODE_FILE, _H200_TABLE_MODEL[name], monotone
    )


# --------------------------------------------------------------------------- table reading


def _read_table(
    path: Path, numeric: Sequence[str], text: Sequence[str] = ()
) -> list[tuple[int, dict[str, float], dict[str, str]]]:
    """Rows of a CSV as (line number, numeric cells, text cells); DataError on a missing
    file, a missing column, or a cell that is not a finite number."""
    source = str(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read latency table: {exc.strerror or exc}", source=source) from exc
    rows: list[tuple[int, dict[str, float], dict[str, str]]] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError("empty file, expected a CSV header", source=source, line=1)
        index = {col.strip(): k for k, col in enumerate(header)}
        missing = [c for c in (*numeric, *text) if c not in index]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", source=source, line=1)
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(
                    f"expected {len(header)} cells, found {len(cells)}", source=source, line=line
                )
            nums: dict[str, float] = {}
            for col in numeric:
                cell = cells[index[col]].strip()
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise DataError(
                        f"column {col!r}: {cell!r} is not a finite number", source=source, line=line
                    )
                nums[col] = value
            rows.append((line, nums, {col: cells[index[col]].strip() for col in text}))
    if not rows:
        raise DataError("no data rows", source=source, line=1)
    return rows


def _lower_envelope(values: Float64Array, axis: int = 0) -> Float64Array:
    """``out[k] = min(values[k:])`` along ``axis``: the largest non-decreasing curve
    that never exceeds the data."""
    flipped = np.flip(values, axis=axis)
    return np.flip(np.minimum.accumulate(flipped, axis=axis), axis=axis)


def _build_vidur(name: str, path: Path, monotone: bool) -> VidurStepTime:
    """Linear ops from Vidur's table: interpolated per token, extrapolated above."""
    rows = _read_table(path, ("num_tokens", "linear_ops_ms_per_layer"))
    tokens = np.array([r[1]["num_tokens"] for r in rows])
    per_layer = np.array([r[1]["linear_ops_ms_per_layer"] for r in rows])
    order = np.argsort(tokens, kind="stable")
    tokens, per_layer = tokens[order], per_layer[order]
    if tokens[0] < 1 or np.any(np.diff(tokens) <= 0):
        raise DataError("num_tokens must be distinct and >= 1", source=str(path))
    fit = tokens >= LINEAR_EXTRAPOLATION_FROM
    if fit.sum() < 2:
        raise DataError(
            f"need two rows at >= {LINEAR_EXTRAPOLATION_FROM} tokens to extrapolate",
            source=str(path),
        )
    # As derive_tables.py: fit per layer on 2048..max, then x32 layers.
    slope, icpt = np.polyfit(tokens[fit], per_layer[fit], 1)
    top = int(tokens[-1])
    dense = np.interp(np.arange(top + 1, dtype=np.float64), tokens, per_layer) * NUM_LAYERS
    if monotone:
        dense = _lower_envelope(dense)
    dense[0] = 0.0
    return VidurStepTime(
        name, str(path), dense, float(slope) * NUM_LAYERS, float(icpt) * NUM_LAYERS
    )


def _loglog(x: Float64Array, xp: Float64Array, yp: Float64Array) -> Float64Array:
    """Piecewise-linear interpolation of log y over log x (x inside [xp[0], xp[-1]])."""
    return np.exp(np.interp(np.log(x), np.log(xp), np.log(yp)))


def _build_measured(
    name: str, prefill_path: Path, decode_path: Path, table_model: str, monotone: bool
) -> MeasuredStepTime:
    """Take the H200 whole-model rows apart into dense, prefill-context and decode
    attention terms (module docstring)."""
    pre = [
        (line, n)
        for line, n, t in _read_table(
            prefill_path, ("prefix_tokens", "new_tokens", "ms"), ("model",)
        )
        if t["model"] == table_model
    ]
    dec_rows = [
        (line, n)
        for line, n, t in _read_table(decode_path, ("batch", "context", "ms"), ("model",))
        if t["model"] == table_model
    ]
    if not pre:
        raise DataError(f"no rows for model {table_model!r}", source=str(prefill_path))
    if not dec_rows:
        raise DataError(f"no rows for model {table_model!r}", source=str(decode_path))
    for path, table in ((prefill_path, pre), (decode_path, dec_rows)):
        for line, n in table:
            if n.get("prefix_tokens", 0) < 0 or any(
                v <= 0 for k, v in n.items() if k != "prefix_tokens"
            ):
                raise DataError(
                    "token counts and times must be positive", source=str(path), line=line
                )
    dec = {(int(n["batch"]), int(n["context"])): n["ms"] for _, n in dec_rows}
    cs = sorted({c for _, c in dec})
    bs = sorted({b for b, _ in dec})
    if len(cs) < 2:
        raise DataError("need decode rows at two or more contexts", source=str(decode_path))

    # Dense knots: one-sequence prefill rows (P = 0); below the smallest of them, decode
    # rows extrapolated linearly to zero context from the two smallest contexts.
    p0 = sorted((int(n["new_tokens"]), n["ms"]) for _, n in pre if n["prefix_tokens"] == 0)
    if not p0:
        raise DataError("no rows with prefix_tokens == 0", source=str(prefill_path))
    c0, c1 = cs[0], cs[1]
    knots = {
        b: dec[b, c0] - c0 * (dec[b, c1] - dec[b, c0]) / (c1 - c0)
        for b in bs
        if b < p0[0][0] and (b, c0) in dec and (b, c1) in dec
    }
    knots.update(p0)
    kx = np.array(sorted(knots), dtype=np.float64)
    ky = np.array([knots[int(k)] for k in kx])
    if np.any(ky <= 0):
        raise DataError("dense time extrapolated to zero context is <= 0", source=str(decode_path))
    top = int(kx[-1])
    dense = np.empty(top + 1)
    dense[0] = 0.0
    first = int(kx[0])
    # Below the first knot (only when no 1-token row exists): proportional to tokens.
    dense[1:first] = ky[0] * np.arange(1, first) / first
    dense[first:] = _loglog(np.arange(first, top + 1, dtype=np.float64), kx, ky)
    if monotone:
        dense[1:] = _lower_envelope(dense[1:])
    # Above the last row: the slope of the last measured segment (compute-bound).
    slope = (dense[top] - dense[int(kx[-2])]) / (top - kx[-2]) if len(kx) > 1 else ky[-1] / top

    def dense_at(n: int) -> float:
        return float(dense[n]) if n <= top else float(dense[top] + slope * (n - top))

    # Prefill context: ms(P, T) - dense(T), keyed by T * P (the cached-key FLOPs).
    ctx: dict[float, float] = {}
    for _, n in pre:
        if n["prefix_tokens"] > 0:
            x = n["new_tokens"] * n["prefix_tokens"]
            extra = max(n["ms"] - dense_at(int(n["new_tokens"])), _MIN_ATTN_MS)
            ctx[x] = min(extra, ctx.get(x, math.inf))
    if not ctx:
        raise DataError("no rows with prefix_tokens > 0", source=str(prefill_path))
    ctx_x = np.array(sorted(ctx), dtype=np.float64)
    ctx_ms = np.array([ctx[x] for x in ctx_x])
    if monotone:
        ctx_ms = _lower_envelope(ctx_ms)

    # Decode attention grid: ms(B, C) - dense(B); cells not measured (large B x C) are
    # continued proportionally to B from the largest measured batch of that context.
    grid = np.full((len(bs), len(cs)), np.nan)
    for (b, c), ms in dec.items():
        grid[bs.index(b), cs.index(c)] = max(ms - dense_at(b), _MIN_ATTN_MS)
    for j in range(len(cs)):
        col = grid[:, j]
        known = np.flatnonzero(~np.isnan(col))
        if known.size == 0:
            continue
        lo, hi = known[0], known[-1]
        for i in range(len(bs)):
            if np.isnan(col[i]):
                ref = lo if i < lo else hi
                col[i] = col[ref] * bs[i] / bs[ref]
    if np.isnan(grid).any():
        raise DataError("decode rows must cover every context", source=str(decode_path))
    if monotone:
        grid = _lower_envelope(_lower_envelope(grid, axis=0), axis=1)
    return MeasuredStepTime(
        name,
        f"{prefill_path} + {decode_path}",
        dense,
        float(slope),
        ctx_x,
        ctx_ms,
        np.array(bs, dtype=np.float64),
        np.array(cs, dtype=np.float64),
        grid,
    )


# --------------------------------------------------------------------------- embedded fit


def _embedded(name: str) -> StepTimeModel:
    """The model built from the constants below (no data directory)."""
    if name == "h100-llama2-7b":
        kn, km = _EMB_H100_LINEAR_KNOTS
        top = int(kn[-1])
        dense = np.interp(np.arange(top + 1, dtype=np.float64), kn, km)
        dense[0] = 0.0
        return VidurStepTime(name, "embedded fit", dense, *_EMB_H100_LINEAR_EXTRAPOLATION)
    fit = _EMB_H200[name]
    kx = np.array(fit["dense_n"], dtype=np.float64)
    ky = np.array(fit["dense_ms"], dtype=np.float64)
    top = int(kx[-1])
    dense = np.zeros(top + 1)
    dense[1:] = _loglog(np.arange(1, top + 1, dtype=np.float64), kx, ky)
    slope = (ky[-1] - ky[-2]) / (kx[-1] - kx[-2])
    return MeasuredStepTime(
        name,
        "embedded fit",
        dense,
        float(slope),
        np.array(fit["ctx_x"], dtype=np.float64),
        np.array(fit["ctx_ms"], dtype=np.float64),
        np.array(fit["grid_b"], dtype=np.float64),
        np.array(fit["grid_c"], dtype=np.float64),
        np.array(fit["grid_ms"], dtype=np.float64).reshape(len(fit["grid_b"]), -1),
    )


# BEGIN EMBEDDED FIT (generated by `python -m inference_sched.sim._fit_latency`; do not edit)
# h100-llama2-7b: 30 knots (tokens, ms x32 layers) of the lower envelope of
# latency/vidur_h100_llama2_7b_tp1_linear_ops.csv, within 3% at every token count.
# fmt: off
_EMB_H100_LINEAR_KNOTS: Final[tuple[tuple[float, ...], tuple[float, ...]]] = (
    (1.0, 40.0, 65.0, 69.0, 128.0, 133.0, 193.0, 200.0, 255.0, 322.0, 331.0, 385.0, 392.0, 512.0,
     520.0, 640.0, 648.0, 770.0, 784.0, 1025.0, 1043.0, 1283.0, 1299.0, 1525.0, 1562.0, 2048.0,
     2090.0, 2821.0, 3335.0, 4096.0),
    (5.472, 5.856, 6.024, 6.352, 6.368, 7.36, 7.62, 8.832, 9.112, 10.064, 10.864, 11.228, 11.984,
     11.984, 15.152, 15.712, 18.592, 19.18, 20.096, 21.279, 25.024, 27.229, 30.096, 32.166, 34.688,
     40.424, 46.09, 59.071, 72.048, 83.208),
)
# Extrapolation above 4096 tokens (ms per token, ms), fitted on 2048..4096 tokens.
_EMB_H100_LINEAR_EXTRAPOLATION: Final[tuple[float, float]] = (0.020203387, 3.3759329)
# h200-*: dense knots (tokens, ms), prefill-context knots (T*P, ms) and the
# decode-attention grid (batch x mean context, ms, row-major) of the monotone model
# from latency/measured_h200/model_prefill.csv and latency/measured_h200/model_decode.csv.
_EMB_H200: Final[dict[str, dict[str, tuple[float, ...]]]] = {
    "h200-llama2-7b": {
        "dense_n": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            4096.0, 8192.0, 16384.0),
        "dense_ms": (6.0404, 6.4148, 6.4225, 6.5845, 7.0225, 7.2439, 7.4503, 7.7837, 9.8412, 15.893,
            28.968, 57.304, 117.25, 252.1, 557.07),
        "ctx_x": (1048576.0, 4194304.0, 16777216.0, 33554432.0, 67108864.0),
        "ctx_ms": (2.1926, 7.6828, 28.846, 54.707, 128.65),
        "grid_b": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
        "grid_c": (512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0),
        "grid_ms": (0.10279, 0.20558, 0.33436, 0.56479, 1.0146, 1.9395, 3.7903, 0.12622, 0.25244,
            0.48324, 0.93276, 1.8607, 3.7188, 7.3622, 0.26111, 0.52222, 0.97516, 1.8893, 3.7385,
            7.4626, 14.724, 0.50533, 1.0107, 1.9095, 3.7435, 7.3855, 14.925, 29.449, 0.9123, 1.8246,
            3.69, 7.4041, 14.771, 29.85, 58.898, 1.824, 3.648, 7.3286, 14.808, 29.542, 59.7, 117.8,
            3.6309, 7.2617, 14.657, 29.616, 59.084, 119.4, 235.59, 7.5581, 14.523, 29.314, 59.233,
            118.17, 238.8, 471.18),
    },
    "h200-llama3-8b": {
        "dense_n": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            4096.0, 8192.0, 16384.0),
        "dense_ms": (6.478, 6.7771, 6.8808, 7.1327, 7.4652, 7.5925, 7.8703, 9.295, 10.534, 16.488,
            29.805, 58.911, 119.74, 260.4, 580.26),
        "ctx_x": (1048576.0, 4194304.0, 16777216.0, 33554432.0, 67108864.0),
        "ctx_ms": (2.3292, 7.5806, 28.675, 54.173, 126.68),
        "grid_b": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0),
        "grid_c": (512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0),
        "grid_ms": (0.03229, 0.06458, 0.21849, 0.30708, 0.44613, 0.69786, 1.1782, 0.06039, 0.12078,
            0.26137, 0.62247, 0.90745, 1.1477, 2.1816, 0.11278, 0.22556, 0.38308, 0.98935, 1.0835,
            2.0875, 3.9849, 0.12275, 0.2455, 0.49355, 0.98935, 1.9851, 3.8753, 7.5772, 0.2202,
            0.4404, 0.94378, 1.9007, 3.7501, 7.5691, 15.154, 0.48405, 0.9681, 1.9377, 3.8423, 7.413,
            15.138, 30.309, 0.98156, 1.9631, 3.8393, 7.4457, 14.826, 30.276, 60.618, 2.4903, 4.4366,
            8.0836, 14.891, 29.652, 60.553, 121.24, 5.1906, 9.2196, 16.167, 29.783, 59.304, 121.11,
            242.47),
    },
}
# fmt: on
# END EMBEDDED FIT
