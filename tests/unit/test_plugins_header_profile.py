"""header-profile-handler (llm-d-router): the profile a header names, its default, the
single-profile shortcut, unknown names, results and parameter errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError, SchedulingError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Endpoint, ProfileRunResult, Request
from inference_sched.params import parse_params
from inference_sched.plugins.header_profile import HeaderProfileHandler
from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table

pytestmark = pytest.mark.unit

_THREE: dict[str, Any] = {"encode": "E", "prefill": "P", "decode": "D"}


def _handler(params: dict[str, Any] | None = None) -> HeaderProfileHandler:
    parsed = parse_params(HeaderProfileHandler.Params, params, "p")
    return HeaderProfileHandler("h", parsed, PluginHandle(EndpointTable()))


def _pick(handler: HeaderProfileHandler, headers: dict[str, str], profiles: Any) -> Any:
    cycle = CycleState(np.random.default_rng(0))
    return handler.pick_profiles(cycle, Request.create("m", headers=headers), profiles, {})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"epp-profile": "prefill"}, {"prefill": "P"}),
        ({"epp-profile": "  encode \t"}, {"encode": "E"}),  # trimmed
        ({}, {"decode": "D"}),  # absent: defaultProfile
        ({"epp-profile": "   "}, {"decode": "D"}),  # blank: defaultProfile
        ({"epp-profile": "Prefill"}, {}),  # values match case-sensitively: unknown
        ({"epp-profile": "vision"}, {}),  # unknown: nothing runs
    ],
)
def test_the_header_names_the_profile(headers: dict[str, str], expected: dict[str, str]) -> None:
    assert _pick(_handler(), headers, _THREE) == expected


def test_parameters_header_name_is_lower_cased_and_default_profile_is_used() -> None:
    handler = _handler({"headerName": "X-Stage", "defaultProfile": "prefill"})
    assert handler.params.header_name == "x-stage"
    assert _pick(handler, {"x-stage": "encode"}, _THREE) == {"encode": "E"}
    assert _pick(handler, {"epp-profile": "encode"}, _THREE) == {"prefill": "P"}
    # a defaultProfile that is not configured runs nothing
    assert _pick(_handler({"defaultProfile": "nope"}), {}, _THREE) == {}


def test_one_profile_always_runs_and_a_second_round_stops() -> None:
    handler = _handler()
    assert _pick(handler, {"epp-profile": "anything"}, {"only": "O"}) == {"only": "O"}
    cycle = CycleState(np.random.default_rng(0))
    request = Request.create("m", headers={"epp-profile": "decode"})
    assert handler.pick_profiles(cycle, request, _THREE, {"decode": None}) == {}


def test_process_results() -> None:
    handler = _handler()
    cycle = CycleState(np.random.default_rng(0))
    request = Request.create("m")
    run = ProfileRunResult((1,), (Endpoint("e1", "10.0.0.1", 8000),), (0.5,))
    result = handler.process_results(cycle, request, {"prefill": run})
    assert result.primary_profile_name == "prefill"
    assert dict(result.profile_results) == {"prefill": run}
    assert dict(result.request_headers) == {}
    with pytest.raises(SchedulingError, match=r"^failed to run scheduler profile 'prefill'$"):
        handler.process_results(cycle, request, {"prefill": None})
    with pytest.raises(SchedulingError, match="expects exactly one profile result, got 2"):
        handler.process_results(cycle, request, {"prefill": run, "decode": run})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"headerName": ""}, r"p\.headerName: expected a non-empty str, got '' \(str\)"),
        ({"headerName": 3}, r"p\.headerName: expected a non-empty str, got 3 \(int\)"),
        ({"defaultProfile": None}, r"p\.defaultProfile: expected a str, got None"),
        ({"header": "x"}, r"unknown key 'header'"),
    ],
)
def test_parameter_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(HeaderProfileHandler.Params, params, "p")


_CONFIG = """
plugins:
- type: header-profile-handler
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""


def test_in_a_scheduler() -> None:
    table = make_table(4, roles=["prefill", "prefill", "decode", "decode"], waiting=[3, 0, 0, 2])
    scheduler = Scheduler.from_config(_CONFIG, table)
    result = scheduler.schedule(Request.create("m", headers={"epp-profile": "prefill"}))
    assert (result.primary_profile_name, result.endpoint.name) == ("prefill", "e1")
    assert set(result.profile_results) == {"prefill"}
    result = scheduler.schedule(Request.create("m"))
    assert (result.primary_profile_name, result.endpoint.name) == ("decode", "e2")
    with pytest.raises(SchedulingError, match="failed to run any scheduler profile"):
        scheduler.schedule(Request.create("m", headers={"epp-profile": "encode"}))
