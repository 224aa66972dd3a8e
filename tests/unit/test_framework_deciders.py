"""framework/deciders.py: the decider lookup the P/D profile handlers share."""

from __future__ import annotations

import pytest

from inference_sched.errors import SchedulingError
from inference_sched.framework.deciders import lookup_decider
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, ProfileRunResult, Request
from inference_sched.state.table import EndpointTable

pytestmark = pytest.mark.unit


class _Decider:
    type = "test-decider"

    def __init__(self, name: str) -> None:
        self.name = name

    def decide(self, cycle: CycleState, request: Request, decode: ProfileRunResult) -> bool:
        return True


class _NotADecider:
    type = "test-scorer"
    name = "scorer"
    decide = "not callable"


def _handle() -> PluginHandle:
    handle = PluginHandle(EndpointTable())
    handle.add_plugin("pd", _Decider("pd"))
    handle.add_plugin("scorer", _NotADecider())
    return handle


def test_lookup_returns_the_named_instance() -> None:
    handle = _handle()
    decider = lookup_decider(handle, "pd", "disagg", "deciders.prefill")
    assert decider is handle.plugin("pd")


@pytest.mark.parametrize(
    ("ref", "owner", "key", "message"),
    [
        pytest.param(
            "nobody", "disagg", "deciders.prefill",
            "disagg: deciders.prefill: no plugin named 'nobody' (known: pd, scorer)",
            id="unknown",
        ),
        pytest.param(
            "scorer", "pd", "deciderPluginName",
            "pd: deciderPluginName: 'scorer' is not a decider plugin",
            id="not-a-decider",
        ),
    ],
)  # fmt: skip
def test_lookup_errors_name_the_owner_and_the_key(
    ref: str, owner: str, key: str, message: str
) -> None:
    with pytest.raises(SchedulingError) as info:
        lookup_decider(_handle(), ref, owner, key)
    assert str(info.value) == message
    assert info.value.__cause__ is None
