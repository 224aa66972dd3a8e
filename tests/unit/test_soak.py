"""benchmarks/soak.py: a short soak keeps its memory flat after the first window, and
writes the report other benchmarks write. Asserts on memory and on the report's shape,
never on timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "benchmarks" / "soak.py"
RSS_GROWTH_BOUND_MB = 20.0
"""How much the RSS after a window may exceed the first window's (allocator noise; a
leak of a few hundred bytes per decision, or an index that keeps removed endpoints,
grows past it)."""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    # 8000 decisions in 4 windows over 16 endpoints: every engine reaches its cache size
    # in the warm-up, so the windows run at steady state.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--decisions", "8000", "--window", "2000",
         "--endpoints", "16", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "window 3: 8000/8000 decisions" in done.stderr  # progress lines
    loaded = json.loads(out.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_report_has_the_benchmark_shape(report: dict[str, object]) -> None:
    assert report["benchmark"] == "soak"
    machine = report["machine"]
    assert isinstance(machine, dict)
    assert {"cpu", "cores", "python", "numpy", "numba"} <= set(machine)
    results = report["results"]
    assert isinstance(results, list)
    assert [r["case"] for r in results] == [f"soak/window{k}" for k in range(4)]
    for r in results:
        assert {"endpoints", "p50_us", "p99_us", "ratio_vs_baseline", "rss_mb"} <= set(r)
        assert r["endpoints"] == 16
        assert r["decisions"] == 2000
        assert r["kv_events"] > 0
        assert r["endpoints_replaced"] >= 0
        assert 0 < r["p50_us"] <= r["p99_us"]
        assert r["rss_mb"] > 0
    assert results[0]["ratio_vs_baseline"] == 1.0
    assert sum(r["endpoints_replaced"] for r in results) >= 3  # churn happened


def test_rss_stays_flat_after_the_first_window(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, list)
    first = results[0]["rss_mb"]
    for r in results[1:]:
        assert r["rss_mb"] <= first + RSS_GROWTH_BOUND_MB, (r["case"], r["rss_mb"], first)
