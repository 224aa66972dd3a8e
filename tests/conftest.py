"""Shared test configuration: markers by directory, Hypothesis profiles, fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from inference_sched.framework.handle import PluginHandle
from inference_sched.state.table import EndpointTable

# The first example of a kernel property pays the JIT compile: no deadline.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

_MARKER_BY_DIR = {"unit": "unit", "property": "property", "integration": "integration"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag every test with the marker of its directory (unit/, property/, integration/)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for directory, marker in _MARKER_BY_DIR.items():
            if directory in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture
def table() -> EndpointTable:
    """An empty endpoint table on a fixed clock (t = 100 s)."""
    return EndpointTable(clock=lambda: 100.0)


@pytest.fixture
def handle(table: EndpointTable) -> PluginHandle:
    """A plugin handle over the ``table`` fixture."""
    return PluginHandle(table)
