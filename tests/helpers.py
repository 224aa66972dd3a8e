"""Helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import pytest

from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table as _make_table


def make_table(n: int, **columns: list[float]) -> EndpointTable:
    """A table with endpoints ``e0..e{n-1}`` (10.0.0.i:8000) and the given metric columns,
    on a clock fixed at t = 100 s (:func:`inference_sched.testing.make_table`)."""
    return _make_table(n, **columns)


def hide_builtin(monkeypatch: pytest.MonkeyPatch, plugin_type: str) -> None:
    """Make a built-in plugin type unavailable for one test (as in a build without it)."""
    from inference_sched.framework import registry

    registry.get(plugin_type)  # import its family first, so nothing re-registers it
    monkeypatch.delitem(registry._classes, plugin_type)
    monkeypatch.setattr(
        registry,
        "BUILTIN_PLUGINS",
        {k: v for k, v in registry.BUILTIN_PLUGINS.items() if k != plugin_type},
    )


# ---------------------------------------------------------------- EPP configs
EPP_CONFIG = """
plugins:
- type: queue-scorer
- type: inflight-load-producer
- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""

EPP_PD_CONFIG = """
plugins:
- type: disagg-profile-handler
  parameters: {deciders: {prefill: pd-decider}}
- {type: always-disagg-pd-decider, name: pd-decider}
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""
