"""The README's embedding example runs and prints what its comment says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_embedding_example_runs_as_written() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README lost its embedding example"
    example = blocks[0]
    assert len(example.splitlines()) <= 22  # the issue asks for a ~20-line example
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(README), "exec"), {})  # our own README, not input
    assert out.getvalue().strip() == "10.0.0.3:8000"
