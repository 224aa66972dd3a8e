"""The Director alone: headers set and removed, rewrites, priority, fairness, the error
table (llm-d-router §4.4) and the response tracker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched import Scheduler
from inference_sched.epp.director import (
    HEADER_DROPPED_REASON,
    Decision,
    Director,
    ModelRewrite,
    Rejection,
    RewriteTarget,
)
from inference_sched.errors import (
    AdmissionDeniedError,
    DataError,
    NoEndpointError,
    ParseError,
    RequestShedError,
    SchedulingError,
)
from inference_sched.testing import make_table
from tests.helpers import EPP_CONFIG, EPP_PD_CONFIG

CONFIG = EPP_CONFIG
PD_CONFIG = EPP_PD_CONFIG

CHAT = "/v1/chat/completions"


def _body(model: str = "m", **extra: Any) -> bytes:
    doc = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps(doc).encode()


def _director(waiting: list[float] | None = None, **kwargs: Any) -> Director:
    table = make_table(3, waiting=waiting or [4, 0, 2], kv_usage_frac=0.1)
    return Director(Scheduler.from_config(CONFIG, table, seed=1), **kwargs)


def _decide(director: Director, headers: dict[str, str], body: bytes, **kw: Any) -> Decision:
    outcome = director.handle_request({":path": CHAT, **headers}, body, **kw)
    assert isinstance(outcome, Decision), outcome
    return outcome


def _reject(director: Director, headers: dict[str, str], body: bytes, **kw: Any) -> Rejection:
    outcome = director.handle_request({":path": CHAT, **headers}, body, **kw)
    assert isinstance(outcome, Rejection), outcome
    return outcome


# ------------------------------------------------------------------- headers
def test_decision_headers_destination_and_body() -> None:
    director = _director()
    headers = {
        "X-Request-Id": "r1",
        "Authorization": "Bearer k",
        "x-prefiller-host-port": "6.6.6.6:1",  # only the EPP may set it
        "x-gateway-inference-objective": "gold",
        "x-gateway-destination-endpoint": "9.9.9.9:1",  # system-owned: never echoed
        "content-length": "999",
        "host": "gw",
    }
    body = _body()
    decision = _decide(director, headers, body)
    assert decision.destination == "10.0.0.1:8000,10.0.0.2:8000"  # pick, then fallback
    assert decision.destinations == ("10.0.0.1:8000", "10.0.0.2:8000")
    assert decision.dynamic_metadata == {
        "envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000,10.0.0.2:8000"}
    }
    assert decision.set_headers == {"x-request-id": "r1", "authorization": "Bearer k"}
    assert decision.remove_headers == ("x-gateway-inference-objective", "x-prefiller-host-port")
    assert decision.body is body  # nothing rewritten: forwarded as received
    assert decision.request.request_id == "r1"
    assert "x-prefiller-host-port" not in decision.request.headers
    assert decision.is_streaming is False
    assert director.scheduler.table.inflight_requests.tolist() == [0.0, 1.0, 0.0]


def test_generated_request_id_is_forwarded() -> None:
    decision = _decide(_director(), {}, _body(stream=True))
    assert decision.set_headers["x-request-id"] == decision.request.request_id
    assert len(decision.request.request_id) == 36  # a UUID
    assert decision.is_streaming is True


def test_pd_headers_replace_the_clients() -> None:
    table = make_table(4, roles=["prefill", "prefill", "decode", "decode"], waiting=[3, 0, 2, 0])
    director = Director(Scheduler.from_config(PD_CONFIG, table, seed=1))
    decision = _decide(director, {"x-prefiller-host-port": "6.6.6.6:1"}, _body())
    assert decision.destination == "10.0.0.3:8000"
    assert decision.set_headers["x-prefiller-host-port"] == "10.0.0.1:8000"
    assert decision.remove_headers == ()  # set, so not removed


# ------------------------------------------------------------ request fields
@pytest.mark.parametrize(
    ("headers", "priority", "fairness"),
    [
        pytest.param({}, 0, "default-flow", id="none"),
        pytest.param({"x-gateway-inference-objective": "gold"}, 5, "default-flow", id="gie"),
        pytest.param(
            {"x-llm-d-inference-objective": "batch", "x-gateway-inference-objective": "gold"},
            -1,
            "default-flow",
            id="llmd-wins",
        ),
        pytest.param({"x-llm-d-inference-objective": "nope"}, 0, "default-flow", id="unknown"),
        pytest.param(
            {"x-llm-d-inference-fairness-id": "a", "x-gateway-inference-fairness-id": "b"},
            0,
            "a",
            id="fairness-llmd",
        ),
        pytest.param({"x-gateway-inference-fairness-id": "b"}, 0, "b", id="fairness-gie"),
    ],
)
def test_priority_and_fairness(headers: dict[str, str], priority: int, fairness: str) -> None:
    director = _director(objectives={"gold": 5, "batch": -1})
    decision = _decide(director, headers, _body())
    assert decision.request.priority == priority
    assert decision.request.fairness_id == fairness


def test_slo_headers_llmd_names_win() -> None:
    headers = {"x-llm-d-slo-ttft-ms": "200", "x-slo-ttft-ms": "900", "x-slo-tpot-ms": "30"}
    decision = _decide(_director(), headers, _body())
    assert (decision.request.slo_ttft_ms, decision.request.slo_tpot_ms) == (200.0, 30.0)


@pytest.mark.parametrize(
    ("headers", "rules", "target"),
    [
        pytest.param({}, (), "m", id="none"),
        pytest.param({"x-gateway-model-name-rewrite": "g"}, (), "g", id="gie-header"),
        pytest.param(
            {"x-llm-d-model-name-rewrite": "l", "x-gateway-model-name-rewrite": "g"},
            (),
            "l",
            id="llmd-header-wins",
        ),
        pytest.param(
            {"x-llm-d-model-name-rewrite": "l"},
            (ModelRewrite("", (RewriteTarget("any"),)),),
            "any",
            id="rule-overrides-header",
        ),
        pytest.param(
            {},
            (
                ModelRewrite("", (RewriteTarget("generic"),)),
                ModelRewrite("m", (RewriteTarget("exact"),)),
            ),
            "exact",
            id="exact-beats-generic",
        ),
        pytest.param(
            {},
            (ModelRewrite("other", (RewriteTarget("x"),)),),
            "m",
            id="no-match",
        ),
        pytest.param(
            {},
            (ModelRewrite("m", (RewriteTarget("unweighted"), RewriteTarget("w", weight=1))),),
            "w",
            id="only-weighted-targets",
        ),
    ],
)
def test_model_rewrite(
    headers: dict[str, str], rules: tuple[ModelRewrite, ...], target: str
) -> None:
    director = _director(model_rewrites=rules, seed=3)
    for _ in range(5):
        decision = _decide(director, headers, _body())
        assert decision.request.target_model == target
        assert decision.request.incoming_model == "m"
        assert json.loads(decision.body)["model"] == target
        decision.tracker.finish()


def test_weighted_rewrite_follows_the_weights() -> None:
    rule = ModelRewrite("m", (RewriteTarget("a", weight=3), RewriteTarget("b", weight=1)))
    director = _director(model_rewrites=(rule,), seed=7)
    picks = [_decide(director, {}, _body()).request.target_model for _ in range(400)]
    assert 260 <= picks.count("a") <= 340  # 3:1 within sampling noise (p ~ 1e-5 outside)


def test_response_model_is_restored() -> None:
    director = _director()
    decision = _decide(director, {"x-llm-d-model-name-rewrite": "big"}, _body())
    tracker = decision.tracker
    assert tracker.restores_model
    tracker.on_headers(200, {"content-type": "application/json"})
    out = tracker.on_body(
        b'{"model": "big","usage":{"prompt_tokens":3,"completion_tokens":2}}', True
    )
    assert out == b'{"model": "m","usage":{"prompt_tokens":3,"completion_tokens":2}}'
    assert tracker.usage is not None
    assert tracker.usage.total_tokens == 5


# ---------------------------------------------------------------- errors
def test_error_body_format() -> None:
    rejection = _reject(_director(), {}, b"{")
    assert rejection.status == 400
    assert rejection.body.startswith(b"inference error: BadRequest - body: not valid JSON")
    assert rejection.headers == {}


@pytest.mark.parametrize(
    ("error", "status", "code", "reason"),
    [
        pytest.param(ParseError("messages", "missing"), 400, "BadRequest", None, id="parse"),
        pytest.param(
            DataError("bad", source="header x-slo-ttft-ms"), 400, "BadRequest", None, id="data"
        ),
        pytest.param(
            RequestShedError(priority=-1, saturation=1.5, detector="d"),
            429,
            "ResourceExhausted",
            None,
            id="shed",
        ),
        pytest.param(
            NoEndpointError(""), 503, "ServiceUnavailable", "rejected-no-endpoints", id="none"
        ),
        pytest.param(
            NoEndpointError("", screened=True),
            503,
            "ServiceUnavailable",
            "rejected-no-endpoints",
            id="screened",
        ),
        pytest.param(
            SchedulingError("x", {"default": NoEndpointError("default", "f")}),
            429,
            "ResourceExhausted",
            "rejected-saturated",
            id="filtered",
        ),
        pytest.param(
            SchedulingError("x", {"default": ValueError("boom")}),
            429,
            "ResourceExhausted",
            None,
            id="scheduling",
        ),
        pytest.param(
            AdmissionDeniedError(priority=0, admitter="a", reason="slow"),
            500,
            "Internal",
            None,
            id="admitter",
        ),
        pytest.param(RuntimeError("bug"), 500, "Internal", None, id="unexpected"),
    ],
)
def test_error_table(error: Exception, status: int, code: str, reason: str | None) -> None:
    rejection = Director.reject(error)
    assert (rejection.status, rejection.code) == (status, code)
    assert rejection.headers == ({HEADER_DROPPED_REASON: reason} if reason else {})
    assert rejection.body.startswith(f"inference error: {code} - ".encode())


def test_admitter_message() -> None:
    rejection = Director.reject(AdmissionDeniedError(priority=0, admitter="a", reason="slow"))
    assert rejection.body == b"inference error: Internal - request cannot be admitted: slow"


def test_rejections_from_the_scheduler() -> None:
    director = _director(waiting=[10, 10, 10], objectives={"batch": -1})
    shed = _reject(director, {"x-gateway-inference-objective": "batch"}, _body())
    assert (shed.status, shed.code, dict(shed.headers)) == (429, "ResourceExhausted", {})
    empty = _reject(director, {}, _body(), subset_hint=[])
    assert (empty.status, dict(empty.headers)) == (
        503,
        {HEADER_DROPPED_REASON: "rejected-no-endpoints"},
    )
    bad_slo = _reject(director, {"x-slo-ttft-ms": "soon"}, _body())
    assert bad_slo.status == 400
    assert b"x-slo-ttft-ms" in bad_slo.body
    no_model = _reject(
        director, {}, json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    )
    assert no_model.body == b"inference error: BadRequest - model: not found in request body"
    assert director.scheduler.table.inflight_requests.tolist() == [0.0, 0.0, 0.0]


def test_subset_hint_matches_ip_and_can_be_disabled() -> None:
    decision = _decide(_director(), {}, _body(), subset_hint=["10.0.0.2:1234"])
    assert decision.destination == "10.0.0.2:8000"
    ignored = _decide(_director(disable_subset_filter=True), {}, _body(), subset_hint=[])
    assert ignored.destination == "10.0.0.1:8000,10.0.0.2:8000"


# --------------------------------------------------------------- responses
def test_tracker_sse_usage_and_single_completion() -> None:
    director = _director()
    table = director.scheduler.table
    tracker = _decide(director, {}, _body(stream=True)).tracker
    assert table.inflight_requests.tolist() == [0.0, 1.0, 0.0]
    response = tracker.on_headers(200, {"Content-Type": "text/event-stream"})
    assert response.is_start_of_stream is False
    assert tracker.is_streaming
    stream = b'data: {"choices":[]}\n\ndata: {"usage":{"prompt_tokens":7,"comp'
    assert tracker.on_body(stream, False) == stream
    tail = b'letion_tokens":4}}\n\ndata: [DONE]\n\n'
    tracker.on_body(tail, True)
    assert tracker.usage is not None
    assert (tracker.usage.prompt_tokens, tracker.usage.completion_tokens) == (7, 4)
    assert tracker.cause == "complete"
    assert tracker.num_chunks == 2
    assert table.inflight_requests.tolist() == [0.0, 0.0, 0.0]
    assert tracker.finish("client-disconnect") is False  # already done


def test_tracker_finish_on_disconnect_releases() -> None:
    director = _director()
    tracker = _decide(director, {}, _body()).tracker
    tracker.on_headers(200, {})
    tracker.on_body(b'{"partial', False)
    assert tracker.finish("client-disconnect") is True
    assert tracker.cause == "client-disconnect"
    assert director.scheduler.table.inflight_requests.tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- fuzzing
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=10,
        ).map(lambda doc: json.dumps(doc).encode()),
    ),
    path=st.sampled_from(
        [CHAT, "/v1/completions", "/v1/embeddings", "/v1/responses", "/other", ""]
    ),
    header=st.text(max_size=12),
)
def test_any_input_gives_a_decision_or_a_400(body: bytes, path: str, header: str) -> None:
    director = _DIRECTOR
    headers = {":path": path, "x-llm-d-model-name-rewrite": header, "x-slo-tpot-ms": header}
    outcome = director.handle_request(headers, body)
    if isinstance(outcome, Rejection):
        assert outcome.status == 400, outcome
        assert outcome.body.startswith(b"inference error: BadRequest - ")
    else:
        outcome.tracker.finish("error")
    assert director.scheduler.table.inflight_requests.tolist() == [0.0, 0.0, 0.0]


_DIRECTOR = _director()
