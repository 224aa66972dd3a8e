"""Helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import numpy as np

from inference_sched.state import EndpointTable
from inference_sched.types import Endpoint


def make_table(n: int, **columns: list[float]) -> EndpointTable:
    """A table with endpoints ``e0..e{n-1}`` (10.0.0.i:8000) and the given metric columns."""
    table = EndpointTable(clock=lambda: 100.0)
    for i in range(n):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000))
    if columns:
        table.update_metrics(np.arange(n), **columns)
    return table
