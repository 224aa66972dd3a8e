"""Plots of simulation runs (needs the ``[plot]`` extra: matplotlib).

:func:`plot_runs` draws one PNG: the TTFT CDF of every configuration on a shared axis,
then one panel per configuration with the running requests of each endpoint over time
(from the metric scrapes), on a shared y axis so the panels compare at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from inference_sched.sim.types import RequestStatus, RunResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MAX_ENDPOINT_LINES", "PLOT_EXTRA_MESSAGE", "plot_runs"]

PLOT_EXTRA_MESSAGE: Final = "plots need the [plot] extra: pip install 'inference-sched[plot]'"

MAX_ENDPOINT_LINES: Final = 16
"""Up to this many endpoints a load panel draws one line each; above, the fleet mean with
its min-max band (hundreds of lines are unreadable)."""

_DPI: Final = 100
_LINE_STYLES: Final = ("-", "--", "-.", ":")


def _legend_outside(ax: Axes, title: str | None = None) -> None:
    """Legend right of the axes: inside, it would hide the load curves' peaks."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", title=title)


def _ttft_cdf(ax: Axes, runs: Sequence[RunResult]) -> None:
    """TTFT CDF (ms) of the completed requests of each run, log x when it can be."""
    from matplotlib.ticker import FuncFormatter, LogFormatter  # plot_runs checked the import

    all_positive = True
    drawn = 0
    for i, run in enumerate(runs):
        done = run.status == RequestStatus.COMPLETED
        ttft = (run.first_token_s[done] - run.arrival_s[done]) * 1e3
        ttft = np.sort(ttft[np.isfinite(ttft)])
        if ttft.size == 0:
            # Keep the config in the legend so a missing curve is explained.
            ax.plot([], [], label=f"{run.config} (no completed requests)")
            continue
        all_positive = all_positive and bool(ttft[0] > 0)
        # Start at 0 so the first jump shows; line styles tell overlapping curves apart.
        x = np.concatenate([ttft[:1], ttft])
        fraction = np.arange(ttft.size + 1) / ttft.size
        style = _LINE_STYLES[i % len(_LINE_STYLES)]
        ax.step(x, fraction, where="post", linestyle=style, label=run.config)
        drawn += 1
    # Log x spreads the body and the tail of the distribution; only when every value is
    # positive (a zero TTFT would vanish, and no positive data at all makes it warn).
    if drawn and all_positive:
        ax.set_xscale("log")
        # Plain numbers (0.1, 300, 1000) rather than 10^-1 or 3x10^2: read at a glance.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("TTFT CDF")
    ax.grid(True, which="both", alpha=0.3)
    if runs:
        ax.legend(loc="lower right", fontsize="small")


def _load_panel(ax: Axes, run: RunResult) -> None:
    """Running requests per endpoint over time, from the scrapes."""
    times, running = run.sample_s, run.sample_running
    ax.set_title(f"{run.config}: running requests per endpoint")
    ax.set_ylabel("running")
    ax.grid(True, alpha=0.3)
    if times.size == 0 or running.size == 0:
        ax.text(0.5, 0.5, "no scrapes", ha="center", va="center", transform=ax.transAxes)
        return
    names = run.endpoint_names
    if running.shape[1] <= MAX_ENDPOINT_LINES:
        for j in range(running.shape[1]):
            name = names[j] if j < len(names) else str(j)
            ax.plot(times, running[:, j], linewidth=1.0, label=name)
        _legend_outside(ax)
    else:
        ax.fill_between(times, running.min(axis=1), running.max(axis=1), alpha=0.3, label="min-max")
        ax.plot(times, running.mean(axis=1), linewidth=1.2, label="mean")
        _legend_outside(ax, title=f"{running.shape[1]} endpoints")


def plot_runs(runs: Sequence[RunResult], path: str | Path) -> Path:
    """Write one PNG comparing ``runs`` (module docstring) to ``path``; returns the path.

    The output is deterministic: the Agg renderer is, and the PNG's ``Software``
    metadata (matplotlib's version) is left out.

    Raises:
        ImportError: matplotlib is not installed (the ``[plot]`` extra).
    """
    try:
        # `import matplotlib` first: it fails even when submodules linger in sys.modules.
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(PLOT_EXTRA_MESSAGE) from exc

    path = Path(path)
    rows = 1 + len(runs)
    # A bare Figure on an Agg canvas: no pyplot global state, no GUI backend, and the
    # caller's own matplotlib backend is left alone.
    fig = Figure(figsize=(10.0, 3.6 + 2.6 * len(runs)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    _ttft_cdf(axes[0], runs)
    for ax, run in zip(axes[1:], runs, strict=True):
        _load_panel(ax, run)
    if runs:
        # Shared y (running requests) and x (time) across the config panels.
        load_axes = list(axes[1:])
        top = max(ax.get_ylim()[1] for ax in load_axes)
        right = max(ax.get_xlim()[1] for ax in load_axes)
        for ax in load_axes:
            ax.set_ylim(0.0, top)
            ax.set_xlim(0.0, right)
        load_axes[-1].set_xlabel("simulated time (s)")
    fig.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
    return path
