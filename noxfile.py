"""Developer sessions: ``nox -s tests``, ``tests_nojit``, ``integration``, ``plugins``,
``lint``, ``types``, ``bench``, ``fuzz``, ``stress``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "types", "tests", "plugins"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
ROOT = Path(__file__).parent
PLUGIN_DISTS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


def _pytest(session: nox.Session, *paths: str, markers: str | None = None) -> None:
    """Run pytest with the project's flags (strict markers/config come from pyproject)."""
    args = ["pytest", *paths]
    if markers:
        args += ["-m", markers]
    session.run(*args, *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and property tests with the Numba JIT on."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    _pytest(session, "tests", markers="unit or property")


@nox.session(python=PYTHON)
def tests_nojit(session: nox.Session) -> None:
    """The same tests with NUMBA_DISABLE_JIT=1: kernels run as Python (coverage, bugs)."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    session.env["NUMBA_DISABLE_JIT"] = "1"
    _pytest(session, "tests", markers="unit or property")


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Tests that start real parts on loopback."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    _pytest(session, "tests", markers="integration")


@nox.session(python=PYTHON)
def plugins(session: nox.Session) -> None:
    """Install each out-of-tree plugin distribution and run its own tests."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    for dist in PLUGIN_DISTS:
        session.install(str(dist))
        session.run("pytest", str(dist / "tests"), "-p", "no:cacheprovider")
        session.run("inference-sched", "plugins")
        for config in sorted((dist / "examples").glob("*.yaml")):
            session.run("inference-sched", "validate", str(config))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    """mypy --strict on the package and this noxfile."""
    session.install("-e", ".[dev]")
    session.run("mypy")
    session.run("mypy", "--strict", "noxfile.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark scripts (JSON into .benchmarks/)."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), "--json", str(out / f"{script.stem}.json"))


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Hypothesis fuzzing of every input parser (tests/fuzz) under time and memory
    budgets: the short budget by default; ``FUZZ_EXAMPLES=5000 nox -s fuzz`` for a long run."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    _pytest(session, "tests/fuzz", markers="fuzz")


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """The integration suite 20 times beside busy loops on every core
    (``nox -s stress -- --runs 5``; see benchmarks/stress_tests.py)."""
    session.install("-e", ".[test,plot,k8s,kvevents,redis,tokenizer]")
    session.run("python", str(ROOT / "benchmarks" / "stress_tests.py"), *session.posargs)
