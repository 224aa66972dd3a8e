"""The package keeps its layers (``docs/architecture.md``, "Package map").

Every ``import`` and ``from … import`` in ``inference_sched/`` is read with :mod:`ast`
(``TYPE_CHECKING`` blocks included: a type-only edge is still an edge) and checked
against the layer order

    errors < params, _yaml_limits, kernels < state, prefix, slo < framework < plugins, flowcontrol
    < datalayer, observability < sim, epp, testing < cli

A module may import from its own subpackage or from a lower layer, never from a higher
one or from another subpackage of its own layer. Besides: no module outside
``plugins/`` imports from ``plugins/``, and no plugin family imports another (families
share data through :mod:`inference_sched.framework.contracts`). Built-in families are
found by the registry through strings (:mod:`inference_sched.framework.catalogue`),
which are not import edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import inference_sched

pytestmark = pytest.mark.unit

PACKAGE = "inference_sched"
PACKAGE_DIR = Path(inference_sched.__file__).parent

LAYERS: dict[str, int] = {
    "errors": 0,
    "_version": 0,
    "_compat": 0,
    "params": 1,
    "_yaml_limits": 1,
    "kernels": 1,
    "state": 2,
    "prefix": 2,
    "tokenize": 2,
    "slo": 2,
    "framework": 3,
    "plugins": 4,
    "flowcontrol": 4,
    "datalayer": 5,
    "observability": 5,
    "sim": 6,
    "epp": 6,
    "testing": 6,
    "cli": 7,
}
"""Top-level part of the package → layer (lower may be imported by higher)."""

MAX_LINES = 900


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every package-internal import in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            if target == PACKAGE:  # ``from inference_sched import x``: x is the target
                for alias in node.names:
                    yield node.lineno, f"{PACKAGE}.{alias.name}"
            else:
                yield node.lineno, target


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What ``source`` (the text of ``module``) imports against the rules."""
    found = []
    part = _part(module)
    if part not in LAYERS:
        if module == PACKAGE:  # the facade re-exports lazily; it may name anything
            return []
        return [f"{module}: not in a layer (add its part to LAYERS)"]
    for line, target in imported_modules(source, module, is_package):
        other = _part(target)
        where = f"{module}:{line}: imports {target}"
        if other == "":
            found.append(f"{where} (the package facade: import from the defining module)")
        elif other not in LAYERS:
            found.append(f"{where} (not in a layer)")
        elif other == "plugins" and part != "plugins":
            found.append(f"{where} (only plugins/ imports plugins/)")
        elif other == part == "plugins":
            mine, theirs = module.split(".")[2:3], target.split(".")[2:3]
            if mine and theirs and mine != theirs:
                found.append(f"{where} (a plugin family imports another family)")
        elif other != part and LAYERS[other] >= LAYERS[part]:
            kind = "sideways" if LAYERS[other] == LAYERS[part] else "upward"
            found.append(
                f"{where} ({kind}: {part} is layer {LAYERS[part]}, {other} is "
                f"layer {LAYERS[other]})"
            )
    return found


def package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_every_import_goes_down_the_layers() -> None:
    found = []
    for path in package_files():
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert found == []


def test_no_source_file_is_over_the_size_limit() -> None:
    sizes = {
        str(p.relative_to(PACKAGE_DIR)): len(p.read_text().splitlines()) for p in package_files()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


# ---------------------------------------------------------------- the checker fails
@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "inference_sched.state.table",
            "from inference_sched.framework.types import Request\n",
            "inference_sched.state.table:1: imports inference_sched.framework.types (upward: "
            "state is layer 2, framework is layer 3)",
        ),
        (
            "inference_sched.prefix.index",
            "import inference_sched.slo.predictor\n",
            "inference_sched.prefix.index:1: imports inference_sched.slo.predictor (sideways: "
            "prefix is layer 2, slo is layer 2)",
        ),
        (
            "inference_sched.plugins.prefix",
            "from inference_sched.plugins.load import IN_FLIGHT_LOAD\n",
            "inference_sched.plugins.prefix:1: imports inference_sched.plugins.load (a plugin "
            "family imports another family)",
        ),
        (
            "inference_sched.sim.fleet",
            "from inference_sched.plugins import load\n",
            "inference_sched.sim.fleet:1: imports inference_sched.plugins (only plugins/ "
            "imports plugins/)",
        ),
        (
            "inference_sched.framework.scheduler",
            "from ..datalayer.scraper import Scraper\n",
            "inference_sched.framework.scheduler:1: imports inference_sched.datalayer.scraper "
            "(upward: framework is layer 3, datalayer is layer 5)",
        ),
        (
            "inference_sched.framework.joint",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from inference_sched.observability.prometheus import expose\n",
            "inference_sched.framework.joint:3: imports inference_sched.observability.prometheus"
            " (upward: framework is layer 3, observability is layer 5)",
        ),
        (
            "inference_sched.kernels.scoring",
            "from inference_sched import Scheduler\n",
            "inference_sched.kernels.scoring:1: imports inference_sched.Scheduler (not in a layer)",
        ),
    ],
)
def test_a_forbidden_import_is_reported(module: str, source: str, expected: str) -> None:
    assert violations(source, module) == [expected]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("inference_sched.framework.scheduler", "from inference_sched.state.table import X\n"),
        ("inference_sched.plugins.prefix", "from inference_sched.framework import contracts\n"),
        ("inference_sched.plugins.prefix", "from . import _shared\n"),
        ("inference_sched.cli.simulate", "from inference_sched.sim.fleet import run\n"),
        ("inference_sched.prefix.precise.index", "from ..hashing import chain_seed\n"),
        ("inference_sched.state.table", "from inference_sched.errors import DataError\n"),
    ],
)
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert violations(source, module) == []
