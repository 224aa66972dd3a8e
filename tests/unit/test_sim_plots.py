"""plot_runs writes a PNG (when matplotlib is there) and names the extra when it is not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inference_sched.sim.plots import MAX_ENDPOINT_LINES, PLOT_EXTRA_MESSAGE, plot_runs
from inference_sched.sim.types import RequestStatus, RunResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(
    config: str,
    ttft_s: list[float],
    endpoints: int = 2,
    scrapes: int = 5,
    status: int = RequestStatus.COMPLETED,
) -> RunResult:
    """A run whose request i arrives at i s, gets its first token ttft_s[i] later."""
    n = len(ttft_s)
    arrival = np.arange(n, dtype=np.float64)
    first = arrival + np.array(ttft_s, dtype=np.float64)
    sample_s = np.arange(scrapes, dtype=np.float64)
    running = np.arange(scrapes * endpoints, dtype=np.float64).reshape(scrapes, endpoints) % 7
    return RunResult(
        config=config,
        endpoint_names=tuple(f"ep{j}" for j in range(endpoints)),
        arrival_s=arrival,
        scheduled_s=arrival,
        first_token_s=first,
        finish_s=first + 1.0,
        prompt_tokens=np.full(n, 32, dtype=np.int64),
        output_tokens=np.full(n, 4, dtype=np.int64),
        cached_tokens=np.zeros(n, dtype=np.int64),
        preemptions=np.zeros(n, dtype=np.int64),
        endpoint=(np.arange(n) % endpoints).astype(np.int32),
        status=np.full(n, status, dtype=np.int8),
        sample_s=sample_s,
        sample_running=running,
        sample_waiting=np.zeros_like(running),
        sample_kv_usage=np.zeros_like(running),
        duration_s=float(n + 1),
        wall_s=0.1,
        decision_us_p50=10.0,
    )


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # None in sys.modules makes `import matplotlib` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'inference-sched\[plot\]'") as info:
        plot_runs([make_run("a", [0.1])], tmp_path / "x.png")
    assert str(info.value) == PLOT_EXTRA_MESSAGE
    assert not (tmp_path / "x.png").exists()


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000
    return data


def test_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [make_run("prefix", [0.01, 0.2, 3.0, 0.05]), make_run("load", [0.02, 0.1, 0.4])]
    out = plot_runs(runs, tmp_path / "runs.png")
    assert out == tmp_path / "runs.png"
    _png(out)


def test_output_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [make_run("a", [0.01, 0.2, 3.0]), make_run("b", [0.02, 0.1])]
    first = _png(plot_runs(runs, tmp_path / "1.png"))
    second = _png(plot_runs(runs, str(tmp_path / "2.png")))  # str paths work too
    assert first == second
    assert b"matplotlib version" not in first  # Software metadata left out


def test_degenerate_runs_do_not_warn(tmp_path: Path) -> None:
    # filterwarnings=error: a log axis without positive data, or a legend without labelled
    # artists, would fail here. Covered: nothing completed, zero TTFT (no log axis), no
    # scrapes, more endpoints than lines drawn (min-max band).
    pytest.importorskip("matplotlib")
    runs = [
        make_run("none-completed", [0.1, 0.2], status=RequestStatus.FAILED_SCHEDULING),
        make_run("zero-ttft", [0.0, 0.5]),
        make_run("no-scrapes", [0.3], scrapes=0),
        make_run("big-fleet", [0.1, 0.2], endpoints=MAX_ENDPOINT_LINES + 1),
    ]
    _png(plot_runs(runs, tmp_path / "edge.png"))


def test_no_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _png(plot_runs([], tmp_path / "empty.png"))
