"""Budgets and the shared property of the fuzz suite.

Every fuzz target checks one property: the parser under test returns, or raises a typed
error of :mod:`inference_sched.errors` whose message names the place (a field path or a
line), and it does so within :data:`TIME_BUDGET_S` seconds and without pushing the
process past :data:`RSS_BUDGET_MB` MB of resident memory.

Budgets of the suite:

* short (the default, and what CI runs): :data:`SHORT_EXAMPLES` examples per target
  (a target may ask for fewer), derandomized with no example database, so every run
  tries the same inputs;
* long: ``FUZZ_EXAMPLES=5000 pytest tests/fuzz`` (or ``nox -s fuzz -- ...`` with the
  variable set) runs that many examples per target, randomized, and keeps failing
  examples in Hypothesis' database (``.hypothesis/``) so a rerun replays them first.
"""

from __future__ import annotations

import contextlib
import os
import re
import reprlib
import resource
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Final, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings

from inference_sched.errors import ConfigError, DataError, InferenceSchedError

__all__ = [
    "LONG",
    "short_repr",
    "RSS_BUDGET_MB",
    "SHORT_EXAMPLES",
    "TIME_BUDGET_S",
    "BudgetExceeded",
    "budget",
    "fuzz_settings",
    "names_a_place",
    "typed_outcome",
]

T = TypeVar("T")

SHORT_EXAMPLES: Final = 50
"""Examples per target under the short budget."""
TIME_BUDGET_S: Final = 5.0
"""Wall-clock seconds one input may take."""
RSS_BUDGET_MB: Final = 500.0
"""Resident memory no input may push the process past."""
_ADDRESS_SPACE_HEADROOM: Final = 1 << 30
"""Address space an input may add (RLIMIT_AS): a runaway allocation fails fast with a
MemoryError instead of swapping a shared machine; the RSS check is the budget itself."""
_PEAK_SLACK_MB: Final = 32.0
"""When the process already peaked above the budget (other tests ran first), an input
may raise the peak by this much (allocator noise)."""

_env = os.environ.get("FUZZ_EXAMPLES", "").strip()
LONG: Final = bool(_env) and int(_env) > 0
"""Whether the long budget is selected (``FUZZ_EXAMPLES=N``, N > 0)."""
_LONG_EXAMPLES: Final = int(_env) if LONG else 0
_HEALTH: Final = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
_PHASES: Final = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
"""No explain phase: its tracer slows the code under test tenfold, and the time budget
would then fail inputs that are fine."""


def fuzz_settings(examples: int = SHORT_EXAMPLES) -> settings:
    """Hypothesis settings of one target: ``examples`` under the short budget
    (deterministic), ``FUZZ_EXAMPLES`` under the long one (randomized)."""
    if LONG:
        return settings(
            max_examples=_LONG_EXAMPLES,
            deadline=None,
            derandomize=False,
            suppress_health_check=_HEALTH,
            phases=_PHASES,
        )
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_HEALTH,
        phases=_PHASES,
    )


class BudgetExceeded(BaseException):
    """An input overran the time budget (raised by a SIGALRM handler). A BaseException,
    so an ``except Exception`` in the code under test cannot swallow it."""


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4000:  # repr() refuses past 4300 digits
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 60


def short_repr(value: object) -> str:
    """A bounded repr of an input for failure messages (never raises: a huge int's repr
    would, past Python's 4300-digit limit)."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded(f"over the time budget of {TIME_BUDGET_S} s")


@contextlib.contextmanager
def budget(what: str) -> Iterator[None]:
    """Run the block under the time and memory budgets; fail the test when it overruns
    them (``what`` describes the input in the failure message)."""
    peak_before = _peak_rss_mb()
    rss_before = _rss_mb()
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + _ADDRESS_SPACE_HEADROOM
    if old_limit[1] != resource.RLIM_INFINITY:
        limit = min(limit, old_limit[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, old_limit[1]))
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BUDGET_S)
    start = time.monotonic()
    try:
        yield
    except BudgetExceeded:
        pytest.fail(f"{what}: over the time budget of {TIME_BUDGET_S} s")
    except MemoryError:
        pytest.fail(
            f"{what}: MemoryError (tried to grow the address space by more than "
            f"{_ADDRESS_SPACE_HEADROOM >> 20} MB; RSS was {rss_before:.0f} MB)"
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)
    elapsed = time.monotonic() - start
    if elapsed > TIME_BUDGET_S:  # the alarm cannot interrupt one long C call
        pytest.fail(f"{what}: took {elapsed:.1f} s, over the budget of {TIME_BUDGET_S} s")
    peak_after = _peak_rss_mb()
    allowed = max(RSS_BUDGET_MB, peak_before + _PEAK_SLACK_MB)
    if peak_after > allowed:
        pytest.fail(
            f"{what}: pushed the process to {peak_after:.0f} MB RSS (budget "
            f"{RSS_BUDGET_MB:.0f} MB; {rss_before:.0f} MB before the input)"
        )


_LINE = re.compile(r"\bline \d+")
_FIELD_PATH = re.compile(r"^[A-Za-z_][\w-]*(?:\[\d+\]|\.[\w-]+)*: |\bfield '[^']+'")
"""``field: ...``, ``a.b[2].c: ...`` at the start of the message, or ``field 'name'``."""


def names_a_place(error: InferenceSchedError, *, source_is_place: bool = False) -> bool:
    """Whether the error says where: a config field path (or the line of a YAML syntax
    error), a data line, or a field path at the start of a data error's message (after
    its source). ``source_is_place``: a data error's source alone says where (a header)."""
    if isinstance(error, ConfigError):
        # A field's problem has its path ("" = the document's top level, whose key the
        # message names); a YAML syntax problem has no path and must give the line.
        return all(
            bool(e.path) or bool(_LINE.search(str(e))) or not str(e).startswith("invalid YAML")
            for e in error.errors
        )
    if isinstance(error, DataError):
        if source_is_place and error.source:
            return True
        where = error.source + (f":{error.line}" if error.line else "")
        message = str(error)
        if where and message.startswith(where + ": "):
            message = message[len(where) + 2 :]
        return error.line > 0 or bool(_FIELD_PATH.search(message) or _LINE.search(message))
    return False


def typed_outcome(
    call: Callable[[], T],
    what: str,
    *,
    expected: type[InferenceSchedError] | tuple[type[InferenceSchedError], ...],
    check: Callable[[InferenceSchedError], Any] | None = None,
    source_is_place: bool = False,
    about_the_whole_input: Callable[[InferenceSchedError], bool] | None = None,
) -> T | InferenceSchedError:
    """``call()`` under the budgets: its value, or the typed error it raised after
    checking that the error is ``expected``, names a place and passes ``check``. Any
    other exception propagates (the test fails, Hypothesis shrinks the input).
    ``about_the_whole_input`` tells the errors whose place is the whole input (a file
    of the wrong format): they need not name a field or line."""
    with budget(what):
        try:
            return call()
        except InferenceSchedError as exc:
            error = exc
    assert isinstance(error, expected), f"{type(error).__name__} is not {expected}: {error}"
    whole = about_the_whole_input is not None and about_the_whole_input(error)
    assert whole or names_a_place(error, source_is_place=source_is_place), (
        f"the error names no field or line: {error}"
    )
    if check is not None:
        check(error)
    return error
