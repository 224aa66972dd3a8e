"""docs/config-reference.md must match what docs/gen_config_reference.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import attrs

from inference_sched.params import param

DOCS = Path(__file__).parent.parent.parent / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", DOCS / "gen_config_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_up_to_date() -> None:
    committed = (DOCS / "config-reference.md").read_text()
    generated = _generator().render()
    assert committed == generated, (
        "docs/config-reference.md is out of date: run "
        "`.venv/bin/python docs/gen_config_reference.py` and commit the result"
    )


@attrs.frozen
class _Documented:
    first: int = param(1, alias="firstKey")
    """One line."""
    second: str = param("x", alias="secondKey")
    undocumented: bool = param(False, alias="third")
    fourth: float = param(0.5, alias="fourthKey")
    """Spread over
    two lines."""


def test_field_docs_reads_the_docstring_under_each_field() -> None:
    assert _generator().field_docs(_Documented) == {
        "first": "One line.",
        "fourth": "Spread over two lines.",
    }


def test_parameter_rows() -> None:
    rows = _generator().parameter_rows(_Documented)
    assert rows == [
        "| `firstKey` | `int` | `1` | One line. |",
        '| `secondKey` | `str` | `"x"` |  |',
        "| `third` | `bool` | `false` |  |",
        "| `fourthKey` | `float` | `0.5` | Spread over two lines. |",
    ]
