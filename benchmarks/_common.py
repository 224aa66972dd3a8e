"""Shared plumbing of the benchmark scripts: CLI flags, machine info, JSON, baselines."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# The benchmarks run as scripts (``python benchmarks/bench_X.py``): sys.path[0] is this
# directory, so the repository root is added for the test helpers they share
# (``tests.oracles``, ``tests.fixtures``), whether or not the package is installed editable.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))


def parse_args(description: str) -> argparse.Namespace:
    """``[--quick] [--json PATH]``, the flags every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--json", type=Path, help="write results as JSON to this path")
    return parser.parse_args()


def machine_info() -> dict[str, Any]:
    """What ran the benchmark: CPU, core count, Python and library versions."""
    import numba

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


def time_calls(fn: Callable[[], Any], calls: int) -> np.ndarray:
    """Wall time of each of ``calls`` calls of ``fn``, nanoseconds (int64)."""
    samples = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn()
        samples[i] = clock() - t0
    return samples


def percentiles_us(samples_ns: np.ndarray) -> tuple[float, float]:
    """(p50, p99) of nanosecond samples, in microseconds."""
    return (
        float(np.percentile(samples_ns, 50)) / 1e3,
        float(np.percentile(samples_ns, 99)) / 1e3,
    )


def round_p50s_us(samples_ns: np.ndarray, rounds: int = 5) -> list[float]:
    """p50 of each of ``rounds`` consecutive slices of ``samples_ns``, in microseconds.

    The machine is noisy in phases (neighbours, frequency): the whole-run p50 mixes them,
    the best round shows the figure of a quiet phase. Reports give both, labelled.
    """
    return [float(np.percentile(part, 50)) / 1e3 for part in np.array_split(samples_ns, rounds)]


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Swap every Numba kernel for its NumPy twin (the in-process baseline).

    Plugins call kernels either as module attributes (``scoring.min_max_inverted``) or by
    an imported name (``from .kernels.scoring import weighted_sum``); both are swapped:
    the kernel names of the kernel modules, and any kernel name bound in another
    ``inference_sched`` module. Twins are looked up by name on
    ``inference_sched.kernels._twins``, which re-exports every twin module's functions.
    """
    from inference_sched.kernels import _twins

    patched: list[tuple[Any, str, Any]] = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("inference_sched") or name.startswith(_twins.__name__):
            continue
        for attr, value in list(vars(module).items()):
            twin = getattr(_twins, attr, None)
            if twin is not None and twin is not value and hasattr(value, "py_func"):
                patched.append((module, attr, value))
                setattr(module, attr, twin)
    if not patched:
        raise RuntimeError("no kernel was swapped: the baseline would measure Numba")
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


def write_report(benchmark: str, results: list[dict[str, Any]], path: Path | None) -> None:
    """Print a table and write the JSON report (when ``path`` is given)."""
    keys = ["case", "endpoints", "p50_us", "p99_us", "ratio_vs_baseline"]
    print(f"\n{'case':<28} {'endpoints':>9} {'p50_us':>9} {'p99_us':>9} {'ratio':>7}")
    for r in results:
        print(
            f"{r['case']:<28} {r['endpoints']:>9} {r['p50_us']:>9.2f} {r['p99_us']:>9.2f} "
            f"{r['ratio_vs_baseline']:>7.2f}"
        )
    extra = sorted({k for r in results for k in r} - set(keys))
    if extra:
        print("(extra keys in JSON: " + ", ".join(extra) + ")")
    if path is not None:
        report = {"benchmark": benchmark, "machine": machine_info(), "results": results}
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
