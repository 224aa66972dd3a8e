"""Stress: run the integration suite again and again while other processes burn every core.

Tests that start real parts (Redis, ZMQ sockets, scrape servers) wait on background
threads; on a loaded machine a test that relies on wall-clock luck (a sleep, a lease
that must not lapse, a counter read before the thread that bumps it runs) fails now and
then. This script makes the load happen on purpose: it starts ``--burners`` busy loops
(``python -c "while True: pass"``, default one per core), runs ``pytest
tests/integration -q -p no:cacheprovider`` ``--runs`` times (default 20), stops at the
first failure and prints its output, then kills the busy loops, always (also on a
failure, an error or Ctrl-C). A run that does not end within ``--timeout`` seconds
(default 600) is interrupted and counts as a failure: a hang is a finding too. One
summary line per run and a total; the exit code is 1 when a run failed (2 on bad
arguments, 130 on Ctrl-C).

    python benchmarks/stress_tests.py [--runs N] [--burners N] [--timeout S] [-- ARGS ...]

Arguments after ``--`` replace the test selection, e.g. ``-- tests/integration/
test_redis_state.py -k lease``. ``nox -s stress -- --runs 5`` runs it in nox.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SELECTION = ["tests/integration"]
_SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|error|errors|skipped).*?)\s*=*$", re.M)


def _burners(count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill the busy loops this script started (by their own handles, nothing else)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"busy loop {process.pid} did not exit", file=sys.stderr)


def _stop_pytest(proc: subprocess.Popen[bytes]) -> None:
    """Interrupt a pytest run and let it tear its fixtures down (it starts servers of its
    own); kill it if it does not end within 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # pytest stops and runs its teardowns
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_pytest(command: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run one pytest: (exit code or None when it hung past ``timeout_s``, output)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        returncode: int | None
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
            _stop_pytest(proc)
        except BaseException:
            _stop_pytest(proc)
            raise
        out.seek(0)
        return returncode, out.read()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(143)  # unwinds through the finally that kills the busy loops


def _summary(output: str) -> str:
    found = _SUMMARY.findall(output)
    return found[-1][0] if found else "(no pytest summary line)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        usage="%(prog)s [--runs N] [--burners N] [--timeout S] [-- PYTEST_ARGS ...]",
    )
    parser.add_argument("--runs", type=int, default=20, help="runs of the suite (default 20)")
    parser.add_argument(
        "--burners",
        type=int,
        default=os.cpu_count() or 2,
        help="busy-loop processes (default: one per core)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds one run may take before it counts as hung (default 600)",
    )
    args_in = sys.argv[1:] if argv is None else argv
    selection = DEFAULT_SELECTION
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, selection = args_in[:cut], args_in[cut + 1 :] or DEFAULT_SELECTION
    args = parser.parse_args(args_in)
    if args.runs < 1 or args.burners < 0 or not args.timeout > 0:
        parser.error("--runs must be >= 1, --burners >= 0 and --timeout > 0")
    command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider"]
    print(f"stress: {args.runs} runs of `{' '.join(command[2:])}` beside {args.burners} busy loops")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    burners: list[subprocess.Popen[bytes]] = []
    passed = 0
    start = time.monotonic()
    try:
        burners = _burners(args.burners)
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            returncode, output = _run_pytest(command, args.timeout)
            took = time.monotonic() - t0
            ok = returncode == 0
            if returncode is None:
                verdict = f"HUNG (no end within {args.timeout:.0f} s: interrupted)"
            else:
                verdict = "ok" if ok else f"FAILED (exit {returncode})"
            print(f"run {run}/{args.runs}: {verdict} in {took:.1f} s: {_summary(output)}")
            sys.stdout.flush()
            if not ok:
                print(output)
                break
            passed += 1
    except KeyboardInterrupt:
        print(f"interrupted after {passed} passing runs")
        return 130
    finally:
        _stop(burners)
        signal.signal(signal.SIGTERM, previous)
    total = time.monotonic() - start
    failed = passed < args.runs
    word = f"FAILED at run {passed + 1}" if failed else "all passed"
    print(f"total: {passed}/{args.runs} runs passed, {word}, {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
