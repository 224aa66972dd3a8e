"""The deprecated llm-d P/D plugins: pd-profile-handler (stages, decisions, primaryPort,
errors, warnings) and disagg-headers-handler / prefill-header-handler (PreRequest)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError, SchedulingError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.headers import HEADER_DATA_PARALLEL, HEADER_ENCODER, HEADER_PREFILLER
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from inference_sched.params import parse_params
from inference_sched.plugins.pd_legacy import (
    DisaggHeadersHandler,
    PdProfileHandler,
    PrefillHeaderHandler,
)
from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table

pytestmark = pytest.mark.unit


class _Decider:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[ProfileRunResult] = []

    def decide(self, cycle: CycleState, request: Request, decode: ProfileRunResult) -> bool:
        self.calls.append(decode)
        return self.answer


def _handler(params: dict[str, Any] | None = None, decider: Any = None) -> PdProfileHandler:
    handle = PluginHandle(EndpointTable())
    if decider is not None:
        handle.add_plugin("prefix-based-pd-decider", decider)
    parsed = parse_params(PdProfileHandler.Params, params, "p")
    return PdProfileHandler("pd", parsed, handle)


def _run(*hosts: tuple[str, int]) -> ProfileRunResult:
    return ProfileRunResult(
        rows=tuple(range(len(hosts))),
        endpoints=tuple(Endpoint(f"e{i}", ip, port) for i, (ip, port) in enumerate(hosts)),
        scores=tuple(1.0 for _ in hosts),
    )


_PROFILES: Any = {"decode": "D", "prefill": "P"}
_ONE: Any = {"decode": "D"}
_CYCLE = CycleState(np.random.default_rng(0))
_REQ = Request.create("m", prompt="p")


def test_defaults_and_the_deprecation_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inference_sched.plugins.pd_legacy"):
        handler = _handler({"primaryPort": 9000})
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'pd': type 'pd-profile-handler' is deprecated; use 'disagg-profile-handler'",
        "plugin 'pd': primaryPort is not needed with Istio >= 1.28.1",
    ]
    p = _handler().params
    assert (p.decode_profile, p.prefill_profile, p.decider_plugin_name, p.primary_port) == (
        "decode",
        "prefill",
        "prefix-based-pd-decider",
        0,
    )
    assert (p.prefix_plugin_type, p.prefix_plugin_name, p.prefix_match_info_producer_name) == (
        "prefix-cache-scorer",
        "",
        "",
    )
    assert handler.params.primary_port == 9000


def test_pick_decode_first_then_prefill_when_the_decider_approves() -> None:
    yes = _Decider(True)
    handler = _handler(decider=yes)
    assert handler.pick_profiles(_CYCLE, _REQ, _PROFILES, {}) == {"decode": _PROFILES["decode"]}
    decoded = _run(("10.0.0.2", 8000))
    assert handler.pick_profiles(_CYCLE, _REQ, _PROFILES, {"decode": decoded}) == {
        "prefill": _PROFILES["prefill"]
    }
    assert yes.calls == [decoded]
    done = {"decode": decoded, "prefill": _run(("10.0.0.1", 8000))}
    assert handler.pick_profiles(_CYCLE, _REQ, _PROFILES, done) == {}  # every profile ran
    assert handler.pick_profiles(_CYCLE, _REQ, _PROFILES, {"decode": None}) == {}  # decode failed
    assert dict(handler.decisions) == {"prefill-decode": 1}
    no = _Decider(False)
    handler = _handler(decider=no)
    assert handler.pick_profiles(_CYCLE, _REQ, _PROFILES, {"decode": decoded}) == {}
    assert dict(handler.decisions) == {"decode-only": 1}
    # one profile: it stops before asking the decider (none needed)
    lone = _handler()
    assert lone.pick_profiles(_CYCLE, _REQ, _ONE, {"decode": decoded}) == {}


def test_pick_errors() -> None:
    decoded = {"decode": _run(("10.0.0.2", 8000))}
    with pytest.raises(
        SchedulingError, match=r"pd: deciderPluginName: no plugin named 'prefix-based-pd-decider'"
    ):
        _handler().pick_profiles(_CYCLE, _REQ, _PROFILES, decoded)
    with pytest.raises(SchedulingError, match=r"'prefix-based-pd-decider' is not a decider plugin"):
        _handler(decider=object()).pick_profiles(_CYCLE, _REQ, _PROFILES, decoded)
    with pytest.raises(SchedulingError, match=r"no profile named 'dec' \(decodeProfile\)"):
        _handler({"decodeProfile": "dec"}).pick_profiles(_CYCLE, _REQ, _PROFILES, {})
    handler = _handler({"prefillProfile": "pf"}, decider=_Decider(True))
    with pytest.raises(SchedulingError, match=r"no profile named 'pf' \(prefillProfile\)"):
        handler.pick_profiles(_CYCLE, _REQ, _PROFILES, decoded)


def test_process_results() -> None:
    handler = _handler()
    decoded = _run(("10.0.0.2", 8000), ("10.0.0.3", 8001))
    prefill = _run(("10.0.0.1", 8000))
    result = handler.process_results(_CYCLE, _REQ, {"decode": decoded, "prefill": prefill})
    assert result.primary_profile_name == "decode"
    assert dict(result.profile_results) == {"decode": decoded, "prefill": prefill}
    assert dict(result.request_headers) == {}  # the header plugin sets them
    assert result.dropped_request_headers == (HEADER_PREFILLER, HEADER_ENCODER)
    result = handler.process_results(_CYCLE, _REQ, {"decode": decoded, "prefill": None})
    assert set(result.profile_results) == {"decode"}  # a failed prefill is left out
    with pytest.raises(SchedulingError, match=r"^failed to find available decode workers$"):
        handler.process_results(_CYCLE, _REQ, {"decode": None})


def test_primary_port_rewrites_every_decode_target() -> None:
    handler = _handler({"primaryPort": 9000})
    decoded = _run(("10.0.0.2", 8002), ("10.0.0.3", 8001))
    result = handler.process_results(_CYCLE, _REQ, {"decode": decoded})
    assert result.destination_header == "10.0.0.2:9000,10.0.0.3:9000"
    assert dict(result.request_headers) == {HEADER_DATA_PARALLEL: "10.0.0.2:8002"}
    assert result.dropped_request_headers == (
        HEADER_PREFILLER,
        HEADER_ENCODER,
        HEADER_DATA_PARALLEL,
    )
    assert result.primary.rows == (0, 1)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"primaryPort": 65536},
            r"p\.primaryPort: expected 0 \(off\) or an int in \[1, 65535\], got 65536",
        ),
        (
            {"primaryPort": -1},
            r"p\.primaryPort: expected 0 \(off\) or an int in \[1, 65535\], got -1",
        ),
        ({"primaryPort": 8080.5}, r"p\.primaryPort: expected int"),
        ({"deciderPluginName": ""}, r"p\.deciderPluginName: expected a non-empty str, got ''"),
        ({"decodeProfile": ""}, r"p\.decodeProfile: expected a non-empty str"),
        ({"threshold": 0}, r"unknown key 'threshold'"),
    ],
)
def test_parameter_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(PdProfileHandler.Params, params, "p")


# ====================================================================== PreRequest
def _headers_handler(cls: type[DisaggHeadersHandler], params: dict[str, Any] | None = None) -> Any:
    parsed = parse_params(cls.Params, params, "p")
    return cls("hh", parsed, PluginHandle(EndpointTable()))


def test_headers_handler_sets_removes_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.pd_legacy"):
        handler = _headers_handler(DisaggHeadersHandler)
        alias = _headers_handler(PrefillHeaderHandler)
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'hh': type 'disagg-headers-handler' is deprecated; use 'disagg-profile-handler' "
        "(it sets the same headers)",
        "plugin 'hh': type 'prefill-header-handler' is deprecated; use 'disagg-profile-handler' "
        "(it sets the same headers)",
    ]
    for plugin in (handler, alias):
        headers = {HEADER_PREFILLER: "6.6.6.6:1", HEADER_ENCODER: "6.6.6.6:2", "x-other": "1"}
        runs = {
            "decode": _run(("10.0.0.2", 8000)),
            "prefill": _run(("10.0.0.1", 8000), ("10.0.0.4", 8000)),
            "encode": _run(("10.0.0.5", 8000), ("10.0.0.6", 8001)),
        }
        plugin.pre_request(_CYCLE, _REQ, SchedulingResult(runs, "decode", headers))
        assert headers == {
            "x-other": "1",
            HEADER_PREFILLER: "10.0.0.1:8000",
            HEADER_ENCODER: "10.0.0.5:8000,10.0.0.6:8001",
        }
        headers = {HEADER_PREFILLER: "6.6.6.6:1", HEADER_ENCODER: "6.6.6.6:2"}
        plugin.pre_request(
            _CYCLE, _REQ, SchedulingResult({"decode": runs["decode"]}, "decode", headers)
        )
        assert headers == {}  # removed: no prefill, no encode


def test_headers_handler_profile_names_and_read_only_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = _headers_handler(
        DisaggHeadersHandler, {"prefillProfile": "pf", "encodeProfile": "enc"}
    )
    headers: dict[str, str] = {}
    runs = {"decode": _run(("10.0.0.2", 8000)), "pf": _run(("10.0.0.1", 8000))}
    handler.pre_request(_CYCLE, _REQ, SchedulingResult(runs, "decode", headers))
    assert headers == {HEADER_PREFILLER: "10.0.0.1:8000"}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.pd_legacy"):
        handler.pre_request(_CYCLE, _REQ, SchedulingResult(runs, "decode"))  # read-only: logged
        handler.pre_request(_CYCLE, _REQ, SchedulingResult(runs, "decode"))  # once a minute
    assert [r.getMessage() for r in caplog.records] == [
        "hh: the profile handler's answer has read-only request headers; "
        "use pd-profile-handler or disagg-profile-handler"
    ]
    with pytest.raises(ParameterError, match=r"p\.encodeProfile: expected str, got 1"):
        parse_params(DisaggHeadersHandler.Params, {"encodeProfile": 1}, "p")


# ====================================================================== end to end
_CONFIG = """
plugins:
- type: pd-profile-handler
  parameters: {deciderPluginName: pd-decider}
- {type: always-disagg-pd-decider, name: pd-decider}
- type: prefill-header-handler
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


def test_pd_profile_handler_with_the_header_plugin_in_a_scheduler() -> None:
    table = make_table(4, roles=["prefill", "prefill", "decode", "decode"], waiting=[3, 0, 2, 0])
    scheduler = Scheduler.from_config(_CONFIG, table)
    result = scheduler.schedule(
        Request.create("m", prompt="p", headers={HEADER_PREFILLER: "6.6.6.6:1"})
    )
    assert result.primary_profile_name == "decode"
    assert result.endpoint.name == "e3"
    assert dict(result.request_headers) == {HEADER_PREFILLER: "10.0.0.1:8000"}
    assert result.dropped_request_headers == (HEADER_PREFILLER, HEADER_ENCODER)
    assert dict(scheduler.plugins["pd-profile-handler"].decisions) == {"prefill-decode": 1}


def test_stability_is_beta() -> None:
    assert PdProfileHandler.stability == "beta"
    assert DisaggHeadersHandler.stability == "beta"
    assert PrefillHeaderHandler.stability == "beta"


def test_prefix_match_info_producer_name_is_checked() -> None:
    params = parse_params(PdProfileHandler.Params, {"prefixMatchInfoProducerName": "pfx"}, "p")
    assert params.producer_references() == {
        "prefixMatchInfoProducerName": ("pfx", "PrefixCacheMatchInfo")
    }
    assert parse_params(PdProfileHandler.Params, None, "p").producer_references() == {}
