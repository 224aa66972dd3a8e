"""single-profile-handler (GIE)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import SchedulingError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Endpoint, ProfileRunResult, Request
from inference_sched.params import NoParams
from inference_sched.plugins.profile_handlers import SingleProfileHandler
from inference_sched.state.table import EndpointTable

# Only a profile's identity matters to the handler.
DEFAULT: Any = object()
OTHER: Any = object()


def _handler() -> SingleProfileHandler:
    return SingleProfileHandler("single-profile-handler", NoParams(), PluginHandle(EndpointTable()))


def _cycle() -> CycleState:
    return CycleState(np.random.default_rng(0))


def _run() -> ProfileRunResult:
    return ProfileRunResult(
        np.array([0], dtype=np.int32),
        (Endpoint("e0", "10.0.0.1", 8000),),
        np.array([1.0], dtype=np.float32),
    )


RUN = _run()


@pytest.mark.parametrize(
    ("profiles", "results", "expected"),
    [
        pytest.param({"default": DEFAULT}, {}, {"default": DEFAULT}, id="first-round"),
        pytest.param({"default": DEFAULT}, {"default": RUN}, {}, id="done"),
        pytest.param({"default": DEFAULT}, {"default": None}, {}, id="done-after-failure"),
        pytest.param(
            {"a": DEFAULT, "b": OTHER}, {"a": RUN}, {"b": OTHER}, id="only-profiles-not-run"
        ),
        pytest.param({}, {}, {}, id="no-profiles"),
    ],
)
def test_pick_profiles(
    profiles: dict[str, Any], results: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert (
        dict(_handler().pick_profiles(_cycle(), Request("r", "m"), profiles, results)) == expected
    )


def test_process_results_makes_the_profile_primary() -> None:
    result = _handler().process_results(_cycle(), Request("r", "m"), {"default": RUN})
    assert result.primary_profile_name == "default"
    assert dict(result.profile_results) == {"default": RUN}
    assert result.endpoint.name == "e0"


@pytest.mark.parametrize(
    ("results", "message"),
    [
        pytest.param(
            {},
            r"^single profile handler is intended to be used with a single profile, "
            r"failed to process 0 profile results$",
            id="none",
        ),
        pytest.param(
            {"a": RUN, "b": RUN},
            r"single profile handler is intended .*failed to process 2 profile results$",
            id="two",
        ),
        pytest.param(
            {"default": None}, r"^failed to run scheduler profile 'default'$", id="failed"
        ),
    ],
)
def test_process_results_errors(results: dict[str, Any], message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        _handler().process_results(_cycle(), Request("r", "m"), results)
