"""session-id-producer and agent-identity (llm-d-router): request attributes from
headers and cookies, exact values, and parameter errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ConfigError, ParameterError
from inference_sched.framework.contracts import (
    AGENT_IDENTITY,
    SESSION_ID,
    read_session_id,
    session_id_key,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.session_id import AgentIdentity, SessionIdProducer, cookie_value
from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table

pytestmark = pytest.mark.unit


def _produce(plugin: Any, headers: dict[str, str]) -> CycleState:
    cycle = CycleState(np.random.default_rng(0))
    plugin.prepare_request_data(cycle, Request.create("m", headers=headers), None, None)
    return cycle


def _session(params: dict[str, Any], name: str = "sid") -> SessionIdProducer:
    parsed = parse_params(SessionIdProducer.Params, params, "p")
    return SessionIdProducer(name, parsed, PluginHandle(EndpointTable()))


def test_session_id_from_a_header() -> None:
    producer = _session({"headerName": "X-Session"})
    cycle = _produce(producer, {"x-session": "  abc  "})
    assert cycle.read(SESSION_ID) == "abc"
    assert cycle.read("SessionID/sid") == "abc"
    assert session_id_key("sid") == "SessionID/sid"
    assert read_session_id(cycle) == "abc"
    assert read_session_id(cycle, "sid") == "abc"
    assert read_session_id(cycle, "other") is None
    assert list(_produce(producer, {"x-session": "   "})) == []  # blank: nothing written
    assert list(_produce(producer, {})) == []


def test_session_id_from_a_cookie() -> None:
    producer = _session({"cookieName": "sess"})
    cookie = {"cookie": "theme=dark; sess=s-42 ; session=nope"}
    assert _produce(producer, cookie).read(SESSION_ID) == "s-42"
    assert list(_produce(producer, {"cookie": "session=nope; Sess=x"})) == []  # exact name
    assert list(_produce(producer, {"x-session": "h"})) == []
    assert cookie_value("a=1;b=2=3", "b") == "2=3"
    assert cookie_value("a", "a") is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"headerName": "h", "cookieName": "c"},
            r"^p: expected exactly one of headerName and cookieName",
        ),
        ({"headerName": 1}, r"p\.headerName: expected a str, got 1 \(int\)"),
        ({"cookie": "c"}, r"unknown key 'cookie'"),
    ],
)
def test_session_id_parameter_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(SessionIdProducer.Params, params, "p")


def test_session_id_needs_a_source() -> None:
    with pytest.raises(ValueError, match="exactly one of headerName and cookieName is required"):
        _session({})
    config = """
plugins:
- type: session-id-producer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: max-score-picker}]
"""
    with pytest.raises(
        ConfigError, match=r"plugin 'session-id-producer' \(session-id-producer\) failed to start"
    ):
        Scheduler.from_config(config, make_table(1))


def _agent(params: dict[str, Any] | None = None) -> AgentIdentity:
    parsed = parse_params(AgentIdentity.Params, params, "p")
    return AgentIdentity("agent", parsed, PluginHandle(EndpointTable()))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-claude-code-session-id": "c", "x-session-affinity": "a", "session-id": "s"}, "c"),
        ({"x-session-affinity": "a", "session-id": "s", "session_id": "u"}, "a"),
        ({"session-id": " s ", "session_id": "u"}, "s"),
        ({"session-id": "  ", "session_id": "u"}, "u"),  # blank: the next one
        ({"x-session-id": "x"}, None),
    ],
)
def test_agent_identity_order(headers: dict[str, str], expected: str | None) -> None:
    assert _produce(_agent(), headers).read(AGENT_IDENTITY) == expected


def test_agent_identity_additional_headers_come_first() -> None:
    agent = _agent({"additionalSessionHeaders": ["X-Agent", " ", "x-team"]})
    assert agent.headers == (
        "x-agent",
        "x-team",
        "x-claude-code-session-id",
        "x-session-affinity",
        "session-id",
        "session_id",
    )
    both = {"x-team": "t", "session-id": "s"}
    assert _produce(agent, both).read(AGENT_IDENTITY) == "t"
    assert AGENT_IDENTITY == "agent-identity"
    with pytest.raises(
        ParameterError, match=r"p\.additionalSessionHeaders: expected a list of str"
    ):
        parse_params(AgentIdentity.Params, {"additionalSessionHeaders": "x-agent"}, "p")
