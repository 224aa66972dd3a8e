"""session-affinity-scorer, session-affinity-filter and multicluster-session-affinity-filter
(llm-d-router ``pkg/epp/framework/plugins/scheduling/{filter,scorer}/sessionaffinity/``)."""

# ruff: noqa: E501  (the tables keep one case per line: parameters, then the expected error)

from __future__ import annotations

import base64
import threading
import tracemalloc
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inference_sched.plugins.session  # noqa: F401 - registers the session plugins
from inference_sched.errors import ConfigError, ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
)
from inference_sched.params import parse_params
from inference_sched.plugins.session import (
    MulticlusterSessionAffinityFilter,
    SessionAffinityFilter,
    SessionAffinityFilterParams,
    SessionAffinityParams,
    SessionAffinityScorer,
    SessionIdSource,
    encode_session_token,
    resolve_session_token,
)
from inference_sched.state.table import EndpointTable

PATH = "plugins[0].parameters"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _table(clock: Clock, names: tuple[str, ...] = ("e0", "e1", "e2", "e3")) -> EndpointTable:
    table = EndpointTable(clock=clock)
    for i, name in enumerate(names):
        table.add(Endpoint(name, f"10.0.0.{i}", 8000))
    return table


def _rows(*rows: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int32)


def _cycle() -> CycleState:
    return CycleState(np.random.default_rng(0))


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _request(**headers: str) -> Request:
    return Request.create("m", headers={k.replace("_", "-"): v for k, v in headers.items()})


def _result(table: EndpointTable, *picks: tuple[str, str], primary: str = "") -> SchedulingResult:
    """A result whose profile ``p`` picked endpoint ``e`` for each ``(p, e)``."""
    runs = {}
    for profile, name in picks:
        endpoint = table.get(name)
        assert endpoint is not None
        runs[profile] = ProfileRunResult((table.row(name),), (endpoint,), (1.0,))
    return SchedulingResult(runs, primary or picks[0][0])


# ====================================================================== tokens
def test_token_is_base64_of_the_endpoint_name() -> None:
    assert encode_session_token("e1") == "ZTE="
    assert encode_session_token("pod-a-rank-0") == _b64("pod-a-rank-0")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(_b64("e1"), ("ok", "e1"), id="ours"),
        pytest.param(f"  {_b64('e1')} ", ("ok", "e1"), id="surrounding-space"),
        pytest.param(_b64("default/e1"), ("ok", "e1"), id="llm-d-namespace/name"),
        pytest.param(_b64("ns/pod-a"), ("ok", "pod-a-rank-0"), id="llm-d-bare-pod-name"),
        pytest.param(_b64("pod-a"), ("ok", "pod-a-rank-0"), id="bare-pod-name"),
        pytest.param(_b64("ns/e9"), ("unknown", None), id="unknown-name"),
        pytest.param(_b64("ns/"), ("unknown", None), id="namespace-only"),
        pytest.param(None, ("empty", None), id="absent"),
        pytest.param("", ("empty", None), id="empty"),
        pytest.param("  ", ("empty", None), id="blank"),
        pytest.param("not base64!", ("malformed", None), id="bad-alphabet"),
        pytest.param("ZTE", ("malformed", None), id="missing-padding"),
        pytest.param("ZTE=", ("ok", "e1"), id="padded"),
        pytest.param(_b64(b"\xff\xfe"), ("malformed", None), id="not-utf8"),
        pytest.param("é", ("malformed", None), id="non-ascii"),
        pytest.param(_b64(""), ("empty", None), id="empty-string-is-empty"),
        pytest.param(_b64("e1") * 400, ("malformed", None), id="too-long"),
    ],
)
def test_resolve_session_token(token: str | None, expected: tuple[str, str | None]) -> None:
    table = _table(Clock(), ("e0", "e1", "pod-a-rank-0", "pod-a-rank-1"))
    assert resolve_session_token(token, table) == expected


def test_encoded_empty_identity_is_malformed() -> None:
    # base64("") is "", which is an absent token; a token that decodes to "" can only be
    # spelled with padding alone, which is not valid base64.
    assert resolve_session_token("====", _table(Clock()))[0] == "malformed"


# ====================================================================== scorer
def _scorer(table: EndpointTable, **raw: Any) -> SessionAffinityScorer:
    params = parse_params(SessionAffinityParams, raw, PATH)
    return SessionAffinityScorer("session", params, PluginHandle(table))


def _score(
    scorer: SessionAffinityScorer, table: EndpointTable, request: Request, *rows: int
) -> list[float]:
    out = np.zeros(len(rows), dtype=np.float32)
    scorer.score(_cycle(), request, table, _rows(*rows), out)
    return [float(x) for x in out]


@pytest.mark.parametrize(
    ("token", "candidates", "expected"),
    [
        pytest.param(_b64("e1"), (0, 1, 2, 3), [0.0, 1.0, 0.0, 0.0], id="match"),
        pytest.param(_b64("e1"), (3, 1), [0.0, 1.0], id="match-keeps-order"),
        pytest.param(_b64("e1"), (0, 2), [0.0, 0.0], id="not-a-candidate"),
        pytest.param(_b64("ns/e2"), (0, 1, 2), [0.0, 0.0, 1.0], id="llm-d-form"),
        pytest.param(_b64("e9"), (0, 1), [0.0, 0.0], id="unknown"),
        pytest.param("%%%", (0, 1), [0.0, 0.0], id="malformed"),
        pytest.param("", (0, 1), [0.0, 0.0], id="empty"),
    ],
)
def test_scorer_scores(token: str, candidates: tuple[int, ...], expected: list[float]) -> None:
    table = _table(Clock())
    scorer = _scorer(table)
    assert _score(scorer, table, _request(x_session_token=token), *candidates) == expected


def test_scorer_without_header_scores_zero_and_counts_nothing_bad() -> None:
    table = _table(Clock())
    scorer = _scorer(table)
    assert _score(scorer, table, _request(), 0, 1) == [0.0, 0.0]
    assert (scorer.num_matched_tokens, scorer.num_malformed_tokens) == (0, 0)
    assert scorer.num_unknown_tokens == 0


def test_scorer_counts_malformed_and_unknown_tokens() -> None:
    table = _table(Clock())
    scorer = _scorer(table)
    for token in ("%%%", "ZTE", _b64(b"\xff"), _b64("e9"), _b64("e1"), _b64("e3")):
        _score(scorer, table, _request(x_session_token=token), 0, 1)
    assert scorer.num_malformed_tokens == 3
    assert scorer.num_unknown_tokens == 1
    assert scorer.num_matched_tokens == 2


def test_scorer_token_round_trip() -> None:
    """The response carries the pick's token; sending it back scores that pick 1."""
    table = _table(Clock())
    scorer = _scorer(table)
    result = _result(table, ("default", "e2"))
    headers_phase = Response("r1")
    end = Response("r1", is_end_of_stream=True)
    scorer.response_received(_request(), headers_phase, result)
    scorer.response_complete(_request(), end, result)
    assert headers_phase.set_headers == end.set_headers == {"x-session-token": _b64("e2")}
    token = end.set_headers["x-session-token"]
    assert _score(scorer, table, _request(x_session_token=token), 0, 1, 2, 3) == [0, 0, 1, 0]


def test_scorer_token_names_the_primary_pick_not_prefill() -> None:
    table = _table(Clock())
    result = _result(table, ("prefill", "e0"), ("decode", "e3"), primary="decode")
    response = Response("r1", is_end_of_stream=True)
    _scorer(table).response_complete(_request(), response, result)
    assert response.set_headers == {"x-session-token": _b64("e3")}


def test_response_set_headers_is_per_instance_and_outside_equality() -> None:
    a, b = Response("r"), Response("r")
    a.set_headers["x"] = "1"
    assert b.set_headers == {}
    assert a == b


# ====================================================================== filter
def _filter(table: EndpointTable, clock: Clock, **raw: Any) -> SessionAffinityFilter:
    """A filter; ``session_id`` unless ``strategy`` says otherwise (the default is
    ``encoded_endpoint_header``, tested on its own)."""
    raw.setdefault("strategy", "session_id")
    params = parse_params(SessionAffinityFilterParams, raw, PATH)
    return SessionAffinityFilter("sticky", params, PluginHandle(table, clock=clock))


def _run(
    flt: SessionAffinityFilter, table: EndpointTable, request: Request, *rows: int
) -> list[int]:
    candidates = _rows(*rows) if rows else table.candidates()
    return [int(row) for row in flt.filter(_cycle(), request, table, candidates)]


def _bind(flt: SessionAffinityFilter, table: EndpointTable, session: str, name: str) -> None:
    flt.pre_request(_cycle(), _request(x_session_id=session), _result(table, ("default", name)))


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def table(clock: Clock) -> EndpointTable:
    return _table(clock)


def test_params_defaults() -> None:
    params = parse_params(SessionAffinityFilterParams, None, PATH)
    assert attrs.asdict(params) == {
        "strategy": None,
        "profile_name": "",
        "encoded_endpoint_header_config": {"header": "x-session-token"},
        "session_id_config": {
            "sources": None,
            "eviction_ttl_seconds": None,
            "eviction_sweep_seconds": None,
        },
        "session_header": None,
        "eviction_ttl_seconds": None,
        "eviction_sweep_seconds": None,
        "max_sessions": 100_000,
        "max_session_id_bytes": 128,
        "max_session_bytes": 64 * 1024 * 1024,
    }
    assert params.resolved_strategy() == "encoded_endpoint_header"
    assert params.sources() == (SessionIdSource(header="x-session-id"),)
    assert (params.ttl_s(), params.sweep_s()) == (300.0, 10.0)
    assert params.producer_references() == {}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param(
            {"strategy": "session-id"},
            r"plugins\[0\]\.parameters\.strategy: expected one of .*did you mean 'session_id'",
            id="strategy",
        ),
        pytest.param(
            {"evictionTtlSeconds": -1},
            r"parameters\.evictionTtlSeconds: expected a number >= 0 \(0: default\), got -1",
            id="ttl-negative",
        ),
        pytest.param(
            {"evictionSweepSeconds": "10s"},
            r"parameters\.evictionSweepSeconds: expected a finite number",
            id="sweep-string",
        ),
        pytest.param(
            {"maxSessions": 0}, r"parameters\.maxSessions: expected int >= 1", id="max-zero"
        ),
        pytest.param(
            {"maxSessions": True}, r"parameters\.maxSessions: expected int", id="max-bool"
        ),
        pytest.param(
            {"maxSessionIdBytes": 15},
            r"parameters\.maxSessionIdBytes: expected int >= 16",
            id="id-bytes-below-digest",
        ),
        pytest.param(
            {"maxSessionBytes": 0},
            r"parameters\.maxSessionBytes: expected int >= 1",
            id="bytes-zero",
        ),
        pytest.param(
            {"sessionHeader": " "},
            r"parameters\.sessionHeader: expected a non-empty header name",
            id="blank-header",
        ),
        pytest.param(
            {"profileName": 3}, r"parameters\.profileName: expected str", id="profile-int"
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        parse_params(SessionAffinityFilterParams, raw, PATH)


def test_new_session_keeps_all_then_sticks(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock)
    request = _request(x_session_id="s1")
    assert _run(flt, table, request) == [0, 1, 2, 3]
    assert flt.num_misses == 1
    _bind(flt, table, "s1", "e2")
    assert flt.binding("s1") == "e2"
    assert _run(flt, table, request) == [2]
    assert _run(flt, table, request, 3, 2, 0) == [2]
    assert flt.num_hits == 2


def test_requests_without_session_are_untouched(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock)
    _bind(flt, table, "s1", "e2")
    assert _run(flt, table, _request()) == [0, 1, 2, 3]
    assert _run(flt, table, _request(x_session_id="")) == [0, 1, 2, 3]
    flt.pre_request(_cycle(), _request(), _result(table, ("default", "e1")))
    assert flt.sessions() == ["s1"]
    assert (flt.num_hits, flt.num_misses) == (0, 0)


def test_session_header_is_configurable_and_case_insensitive(
    table: EndpointTable, clock: Clock
) -> None:
    flt = _filter(table, clock, sessionHeader="X-Conversation-Id")
    request = Request.create("m", headers={"X-Conversation-ID": "c1"})
    flt.pre_request(_cycle(), request, _result(table, ("default", "e3")))
    assert _run(flt, table, request) == [3]
    assert _run(flt, table, _request(x_session_id="c1")) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("idle_s", "bound"),
    [
        pytest.param(0.0, "e1", id="fresh"),
        pytest.param(299.9, "e1", id="just-under-ttl"),
        pytest.param(300.0, "e1", id="at-ttl"),  # llm-d: expired only past the TTL
        pytest.param(300.5, None, id="past-ttl"),
        pytest.param(1e6, None, id="long-gone"),
    ],
)
def test_ttl_eviction(table: EndpointTable, clock: Clock, idle_s: float, bound: str | None) -> None:
    flt = _filter(table, clock)
    _bind(flt, table, "s1", "e1")
    clock.now += idle_s
    assert flt.binding("s1") == bound
    expected = [1] if bound else [0, 1, 2, 3]
    assert _run(flt, table, _request(x_session_id="s1")) == expected


def test_expired_lookup_counts_and_forgets(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, evictionSweepSeconds=1e9)  # no sweep: the lookup evicts
    _bind(flt, table, "s1", "e1")
    clock.now += 300.5
    assert _run(flt, table, _request(x_session_id="s1")) == [0, 1, 2, 3]
    assert (flt.num_evicted_ttl, flt.num_misses, flt.num_sessions) == (1, 1, 0)


def test_use_refreshes_the_ttl(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, evictionTtlSeconds=100)
    _bind(flt, table, "s1", "e1")
    for _ in range(5):  # 5 x 90 s = 450 s > TTL, but never 100 s idle
        clock.now += 90.0
        assert _run(flt, table, _request(x_session_id="s1")) == [1]
    clock.now += 100.5
    assert _run(flt, table, _request(x_session_id="s1")) == [0, 1, 2, 3]


def test_pre_request_refreshes_the_ttl(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, evictionTtlSeconds=100)
    _bind(flt, table, "s1", "e1")
    clock.now += 90.0
    _bind(flt, table, "s1", "e1")
    clock.now += 90.0
    assert flt.binding("s1") == "e1"
    assert flt.num_rebound == 0


def test_sweep_drops_idle_sessions_from_memory(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, evictionTtlSeconds=60, evictionSweepSeconds=10)
    _bind(flt, table, "old-1", "e0")
    _bind(flt, table, "old-2", "e1")
    clock.now += 30.0
    _bind(flt, table, "young", "e2")
    clock.now += 35.0  # old-* idle 65 s, young 35 s
    _run(flt, table, _request(x_session_id="other"))  # any call sweeps when due
    assert flt.sessions() == ["young"]
    assert flt.num_evicted_ttl == 2


def test_sweep_waits_for_its_interval(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, evictionTtlSeconds=60, evictionSweepSeconds=100)
    _bind(flt, table, "s1", "e0")
    clock.now += 70.0  # expired, but the last sweep (construction) was 70 s ago
    _run(flt, table, _request(x_session_id="other"))
    assert flt.sessions() == ["s1"]
    assert flt.binding("s1") is None  # expiry is exact even before the sweep
    clock.now += 30.0
    _run(flt, table, _request(x_session_id="other"))
    assert flt.sessions() == []


def test_max_sessions_evicts_least_recently_used(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, maxSessions=2)
    _bind(flt, table, "a", "e0")
    clock.now += 1
    _bind(flt, table, "b", "e1")
    clock.now += 1
    assert _run(flt, table, _request(x_session_id="a")) == [0]  # a is now most recent
    _bind(flt, table, "c", "e2")
    assert flt.sessions() == ["a", "c"]
    assert flt.num_evicted_lru == 1
    assert flt.binding("b") is None
    _bind(flt, table, "d", "e3")
    assert flt.sessions() == ["c", "d"]
    assert flt.num_evicted_lru == 2


def test_long_session_ids_do_not_grow_memory(table: EndpointTable, clock: Clock) -> None:
    # The probe: 110k ids of 16 KiB held 1.75 GB. 2000 of them held ~33 MB before the
    # fix; a long id is now held as a 16-byte digest.
    flt = _filter(table, clock)
    n, id_bytes = 2000, 16 * 1024
    result = _result(table, ("default", "e1"))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            session = f"{i:08d}" + "s" * (id_bytes - 8)  # dropped after each request
            flt.pre_request(_cycle(), _request(x_session_id=session), result)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert flt.num_sessions == n
    assert held < n * 600, f"{held / n:.0f} bytes per binding"
    assert flt.bytes_held <= n * 600
    # Distinct long ids stay distinct; the same long id finds its binding again.
    assert flt.binding("00000007" + "s" * (id_bytes - 8)) == "e1"
    assert flt.binding("99999999" + "s" * (id_bytes - 8)) is None


def test_distinct_long_ids_bind_separately(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, maxSessionIdBytes=16)
    a, b = "x" * 40 + "a", "x" * 40 + "b"
    short = "s" * 16  # exactly the bound: kept as is
    _bind(flt, table, a, "e1")
    _bind(flt, table, b, "e2")
    _bind(flt, table, short, "e3")
    held = flt.sessions()
    assert held[-1] == short
    assert all(s.startswith("<xxh3-128 ") and len(s) == 43 for s in held[:2])
    assert held[0] != held[1]
    assert flt.num_hashed_ids == 2
    assert _run(flt, table, _request(x_session_id=a)) == [1]
    assert _run(flt, table, _request(x_session_id=b)) == [2]
    assert flt.binding(short) == "e3"
    # UTF-8 bytes count, not characters: 6 x 3 bytes > 16.
    _bind(flt, table, "\u20ac" * 6, "e0")
    assert flt.sessions()[-1].startswith("<xxh3-128 ")
    assert flt.binding("\u20ac" * 6) == "e0"
    # Lone surrogates (a str may hold them) are hashed too, never an error.
    _bind(flt, table, "\ud800" * 20, "e0")
    assert flt.binding("\ud800" * 20) == "e0"


def test_max_session_bytes_evicts_least_recently_used(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, maxSessionBytes=10_000)
    for i in range(200):
        _bind(flt, table, f"session-{i:04d}", "e1")
        clock.now += 0.001
        assert flt.bytes_held <= 10_000
    kept = flt.num_sessions
    assert 0 < kept < 200
    assert flt.num_evicted_bytes == 200 - kept
    assert flt.num_evicted_lru == 0
    assert flt.sessions()[-1] == "session-0199"  # the newest stay
    assert flt.binding("session-0000") is None
    # Every way out returns the bytes: TTL, sweep, removal.
    clock.now += 1000
    _run(flt, table, _request(x_session_id="other"))
    assert (flt.num_sessions, flt.bytes_held) == (0, 0)
    _bind(flt, table, "z", "e2")
    assert flt.bytes_held > 0
    table.remove("e2")
    assert (flt.num_sessions, flt.bytes_held) == (0, 0)


def test_endpoint_removal_drops_its_bindings(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock)
    _bind(flt, table, "a", "e1")
    _bind(flt, table, "b", "e2")
    _bind(flt, table, "c", "e1")
    table.remove("e1")
    assert flt.sessions() == ["b"]
    assert flt.num_dropped_on_removal == 2
    # The row is reused by a new endpoint: the old session must not stick to it.
    table.add(Endpoint("e9", "10.0.0.9", 8000))
    assert table.row("e9") == 1
    assert _run(flt, table, _request(x_session_id="a")) == [0, 1, 2, 3]


def test_fail_open_when_bound_endpoint_is_unhealthy(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock)
    _bind(flt, table, "s1", "e1")
    table.set_healthy("e1", False)
    request = _request(x_session_id="s1")
    cycle = _cycle()
    assert flt.filter(cycle, request, table, table.candidates()).tolist() == [0, 2, 3]
    assert flt.num_fail_open == 1
    # The new pick takes the session over: this cycle saw the bound endpoint absent.
    flt.pre_request(cycle, request, _result(table, ("default", "e3")))
    assert (flt.binding("s1"), flt.num_rebound) == ("e3", 1)
    table.set_healthy("e1", True)
    assert _run(flt, table, request) == [3]


def test_fail_open_when_an_earlier_filter_dropped_the_endpoint(
    table: EndpointTable, clock: Clock
) -> None:
    flt = _filter(table, clock)
    _bind(flt, table, "s1", "e1")
    cycle = _cycle()
    request = _request(x_session_id="s1")
    assert flt.filter(cycle, request, table, _rows(0, 2)).tolist() == [0, 2]
    assert flt.num_fail_open == 1
    flt.pre_request(cycle, request, _result(table, ("default", "e2")))
    assert (flt.binding("s1"), flt.num_rebound) == ("e2", 1)


def test_a_different_pick_keeps_a_present_binding(table: EndpointTable, clock: Clock) -> None:
    # llm-d: the session moves only when its endpoint was absent from the candidates.
    flt = _filter(table, clock)
    _bind(flt, table, "s1", "e1")
    cycle = _cycle()
    request = _request(x_session_id="s1")
    assert flt.filter(cycle, request, table, table.candidates()).tolist() == [1]
    # A later filter / the picker chose e3 anyway: the binding stays on e1.
    flt.pre_request(cycle, request, _result(table, ("default", "e3")))
    assert (flt.binding("s1"), flt.num_rebound, flt.num_kept_binding) == ("e1", 0, 1)
    # No lookup in this cycle (the instance is in a profile that did not run): kept too.
    flt.pre_request(_cycle(), request, _result(table, ("default", "e3")))
    assert (flt.binding("s1"), flt.num_kept_binding) == ("e1", 2)


def test_pick_removed_before_pre_request_is_not_bound(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock)
    result = _result(table, ("default", "e1"))
    table.remove("e1")
    flt.pre_request(_cycle(), _request(x_session_id="s1"), result)
    assert flt.sessions() == []


@pytest.mark.parametrize(
    ("raw", "bound"),
    [
        pytest.param({}, "e3", id="primary-by-default"),
        pytest.param({"profileName": "prefill"}, "e0", id="prefill-profile"),
        pytest.param({"profileName": "encode"}, None, id="profile-did-not-run"),
    ],
)
def test_profile_name_selects_the_pick_to_bind(
    table: EndpointTable, clock: Clock, raw: dict[str, Any], bound: str | None
) -> None:
    flt = _filter(table, clock, **raw)
    result = _result(table, ("prefill", "e0"), ("decode", "e3"), primary="decode")
    flt.pre_request(_cycle(), _request(x_session_id="s1"), result)
    assert flt.binding("s1") == bound


def test_session_id_strategy_sets_no_response_header(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock)
    response = Response("r", is_end_of_stream=True)
    flt.response_complete(_request(), response, _result(table, ("default", "e1")))
    assert response.set_headers == {}


def test_encoded_endpoint_header_strategy(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, strategy="encoded_endpoint_header")
    assert _run(flt, table, _request(x_session_token=_b64("e2"))) == [2]
    assert _run(flt, table, _request(x_session_token=_b64("ns/e2")), 0, 2) == [2]
    assert _run(flt, table, _request(x_session_token=_b64("e2")), 0, 1) == [0, 1]
    assert _run(flt, table, _request(x_session_token="%%")) == [0, 1, 2, 3]
    assert _run(flt, table, _request(x_session_token=_b64("e7"))) == [0, 1, 2, 3]
    # x-session-id means nothing to this strategy, and nothing is remembered.
    _bind(flt, table, "s1", "e1")
    assert _run(flt, table, _request(x_session_id="s1")) == [0, 1, 2, 3]
    assert flt.sessions() == []
    assert (flt.num_hits, flt.num_fail_open) == (2, 1)
    assert (flt.num_malformed_tokens, flt.num_unknown_tokens) == (1, 1)
    response = Response("r", is_end_of_stream=True)
    flt.response_complete(_request(), response, _result(table, ("default", "e1")))
    assert response.set_headers == {"x-session-token": _b64("e1")}


def test_concurrent_use_stays_bounded(table: EndpointTable, clock: Clock) -> None:
    flt = _filter(table, clock, maxSessions=50)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(300):
                request = _request(x_session_id=f"s{k}-{i % 80}")
                flt.filter(_cycle(), request, table, table.candidates())
                result = _result(table, ("default", f"e{(k + i) % 4}"))
                flt.pre_request(_cycle(), request, result)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert flt.num_sessions == 50
    assert flt.num_hits + flt.num_misses == 1200


# ====================================================================== scheduler
SCORER_CONFIG = """
plugins:
- {type: queue-scorer}
- {type: session-affinity-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: session-affinity-scorer, weight: 2}
  - {pluginRef: max-score-picker}
"""

FILTER_CONFIG = """
plugins:
- type: session-affinity-filter
  parameters: {evictionTtlSeconds: 60, evictionSweepSeconds: 5}
- {type: queue-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: session-affinity-filter}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""


def _waiting(table: EndpointTable, *queues: float) -> None:
    table.update_metrics(np.arange(len(queues)), waiting=list(queues))


def test_scheduler_with_session_affinity_scorer() -> None:
    clock = Clock()
    table = _table(clock)
    scheduler = Scheduler.from_config(SCORER_CONFIG, table, seed=0)
    _waiting(table, 5, 0, 5, 5)
    first = Request.create("m")
    result = scheduler.schedule(first)
    assert result.endpoint.name == "e1"
    response = Response(first.request_id, is_end_of_stream=True)
    scheduler.response_complete(first, response, result)
    token = response.set_headers["x-session-token"]
    assert token == _b64("e1")
    # e1 is now the busiest; the token (weight 2) still outweighs the queue (weight 1).
    _waiting(table, 0, 9, 0, 0)
    follow_up = Request.create("m", headers={"X-Session-Token": token})
    assert scheduler.schedule(follow_up).endpoint.name == "e1"
    # A garbage token is scored 0 everywhere and the queue decides.
    garbage = Request.create("m", headers={"x-session-token": "!!"})
    assert scheduler.schedule(garbage).endpoint.name != "e1"
    scorer = scheduler.plugins["session-affinity-scorer"]
    assert (scorer.num_matched_tokens, scorer.num_malformed_tokens) == (1, 1)
    assert all(s.errors == 0 for s in scheduler.stats())


def test_scheduler_with_session_affinity_filter() -> None:
    clock = Clock(10.0)
    table = _table(clock)
    scheduler = Scheduler.from_config(FILTER_CONFIG, table, seed=0)
    flt = scheduler.plugins["session-affinity-filter"]

    def route(session: str) -> str:
        return scheduler.schedule(
            Request.create("m", headers={"x-session-id": session})
        ).endpoint.name

    _waiting(table, 3, 3, 0, 3)
    assert route("chat-1") == "e2"
    _waiting(table, 0, 0, 9, 0)  # e2 is busy now, but the session stays
    assert [route("chat-1") for _ in range(3)] == ["e2"] * 3
    assert route("chat-2") != "e2"  # a new session follows the load
    # The endpoint leaves: the session fails open and moves to the new pick.
    table.remove("e2")
    moved = route("chat-1")
    assert moved != "e2"
    _waiting(table, 5, 5, 5, 5)
    table.update_metrics(np.asarray([table.row(moved)]), waiting=[50.0])
    assert route("chat-1") == moved
    # Idle beyond the TTL: the binding is gone and load decides again.
    clock.now += 60.5
    assert route("chat-1") != moved
    assert flt.num_dropped_on_removal == 1
    assert all(s.errors == 0 for s in scheduler.stats())


# ====================================================================== llm-d-router drift
def test_default_strategy_is_the_encoded_endpoint_header(table: EndpointTable) -> None:
    flt = SessionAffinityFilter(
        "sticky", parse_params(SessionAffinityParams, None, PATH), PluginHandle(table)
    )
    assert flt.strategy == "encoded_endpoint_header"
    assert _run(flt, table, _request(x_session_token=_b64("default/e2"))) == [2]
    # an x-session-id alone means nothing by default, and nothing is remembered
    flt.pre_request(_cycle(), _request(x_session_id="s1"), _result(table, ("default", "e1")))
    assert _run(flt, table, _request(x_session_id="s1")) == [0, 1, 2, 3]
    assert flt.sessions() == []


@pytest.mark.parametrize(
    ("raw", "strategy"),
    [
        pytest.param({}, "encoded_endpoint_header", id="none"),
        pytest.param({"sessionHeader": "x-chat"}, "session_id", id="gie-session-header"),
        pytest.param({"evictionTtlSeconds": 60}, "session_id", id="gie-ttl"),
        pytest.param({"evictionSweepSeconds": 5}, "session_id", id="gie-sweep"),
        # llm-d-router: only the block matching the strategy is used
        pytest.param({"sessionIdConfig": {"evictionTtlSeconds": 5}}, "encoded_endpoint_header", id="block-alone"),
        pytest.param({"strategy": "encoded_endpoint_header", "sessionHeader": "x"}, "encoded_endpoint_header", id="explicit-wins"),
    ],
)  # fmt: skip
def test_strategy_resolution(raw: dict[str, Any], strategy: str) -> None:
    assert parse_params(SessionAffinityParams, raw, PATH).resolved_strategy() == strategy


def test_gie_era_keys_keep_working(table: EndpointTable, clock: Clock) -> None:
    # No strategy: the GIE-era keys still mean session_id, with their values.
    params = parse_params(
        SessionAffinityParams,
        {"sessionHeader": "X-Chat", "evictionTtlSeconds": 50, "evictionSweepSeconds": 7},
        PATH,
    )
    assert params.sources() == (SessionIdSource(header="X-Chat"),)
    assert (params.ttl_s(), params.sweep_s()) == (50.0, 7.0)
    flt = SessionAffinityFilter("sticky", params, PluginHandle(table, clock=clock))
    request = Request.create("m", headers={"x-chat": "c1"})
    flt.pre_request(_cycle(), request, _result(table, ("default", "e3")))
    assert _run(flt, table, request) == [3]
    clock.now += 50.5
    assert _run(flt, table, request) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("raw", "ttl_s", "sweep_s"),
    [
        pytest.param({}, 300.0, 10.0, id="defaults"),
        pytest.param({"sessionIdConfig": {"evictionTtlSeconds": 0, "evictionSweepSeconds": 0}}, 300.0, 10.0, id="zero-is-default"),
        pytest.param({"sessionIdConfig": {"evictionTtlSeconds": 1.5, "evictionSweepSeconds": 0.25}}, 1.5, 0.25, id="nested"),
        pytest.param({"evictionTtlSeconds": 20}, 20.0, 10.0, id="gie-top-level"),
    ],
)  # fmt: skip
def test_eviction_schedule(raw: dict[str, Any], ttl_s: float, sweep_s: float) -> None:
    params = parse_params(SessionAffinityParams, raw, PATH)
    assert (params.ttl_s(), params.sweep_s()) == (ttl_s, sweep_s)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param({"strategy": "session_id_header"}, r"^plugins\[0\]\.parameters\.strategy: expected one of 'encoded_endpoint_header', 'session_id' \(did you mean 'session_id'\?\), got 'session_id_header' \(str\)$", id="old-scorer-algorithm"),
        pytest.param({"encodedEndpointHeaderConfig": {"header": " "}}, r"^plugins\[0\]\.parameters\.encodedEndpointHeaderConfig\.header: expected a non-empty header name, got ' ' \(str\)$", id="blank-token-header"),
        pytest.param({"encodedEndpointHeaderConfig": {"headr": "x"}}, r"^plugins\[0\]\.parameters\.encodedEndpointHeaderConfig\.headr: expected one of the keys header \(did you mean 'header'\?\)", id="token-header-typo"),
        pytest.param({"encodedEndpointHeaderConfig": "x"}, r"\.encodedEndpointHeaderConfig: expected a mapping with keys header, got 'x' \(str\)$", id="config-not-a-mapping"),
        pytest.param({"sessionIdConfig": {"sources": [{"header": "a", "attribute": "b"}]}}, r"^plugins\[0\]\.parameters\.sessionIdConfig\.sources\[0\]\.header: expected exactly one of header and attribute", id="both"),
        pytest.param({"sessionIdConfig": {"sources": [{"header": "a"}, {}]}}, r"\.sessionIdConfig\.sources\[1\]\.header: expected exactly one of header and attribute", id="neither"),
        pytest.param({"sessionIdConfig": {"sources": [{"header": "  "}]}}, r"\.sessionIdConfig\.sources\[0\]\.header: expected exactly one of header and attribute", id="blank"),
        pytest.param({"sessionIdConfig": {"sources": [{"header": "a", "producer": "p"}]}}, r"\.sessionIdConfig\.sources\[0\]\.producer: expected only with attribute, got 'p' \(str\)$", id="producer-with-header"),
        pytest.param({"sessionIdConfig": {"sources": [{"cookie": "a"}]}}, r"\.sessionIdConfig\.sources\[0\]\.cookie: expected one of the keys header, attribute, producer", id="unknown-source-key"),
        pytest.param({"sessionIdConfig": {"sources": "x-session-id"}}, r"\.sessionIdConfig\.sources: expected a list of \{header\} or \{attribute, producer\}, got 'x-session-id' \(str\)$", id="sources-not-a-list"),
        pytest.param({"sessionIdConfig": {"sources": [{"header": 3}]}}, r"\.sessionIdConfig\.sources\[0\]\.header: expected str, got 3 \(int\)$", id="header-int"),
        pytest.param({"sessionIdConfig": {"evictionSweepSeconds": -2}}, r"\.sessionIdConfig\.evictionSweepSeconds: expected a number >= 0 \(0: default\), got -2 \(int\)$", id="sweep-negative"),
        pytest.param({"sessionIdConfig": {"evictionTtlSeconds": True}}, r"\.sessionIdConfig\.evictionTtlSeconds: expected a finite number, got True \(bool\)$", id="ttl-bool"),
        pytest.param({"sessionHeader": "x", "sessionIdConfig": {"sources": [{"header": "y"}]}}, r"^plugins\[0\]\.parameters\.sessionHeader: expected not with sessionIdConfig\.sources \(use one\), got 'x' \(str\)$", id="header-twice"),
        pytest.param({"evictionTtlSeconds": 5, "sessionIdConfig": {"evictionTtlSeconds": 6}}, r"^plugins\[0\]\.parameters\.evictionTtlSeconds: expected not with sessionIdConfig\.evictionTtlSeconds \(use one\), got 5 \(int\)$", id="ttl-twice"),
    ],
)  # fmt: skip
def test_drift_params_rejected(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        parse_params(SessionAffinityParams, raw, PATH)


def _sid_filter(table: EndpointTable, clock: Clock, sources: list[Any]) -> SessionAffinityFilter:
    raw = {"strategy": "session_id", "sessionIdConfig": {"sources": sources}}
    params = parse_params(SessionAffinityParams, raw, PATH)
    return SessionAffinityFilter("sticky", params, PluginHandle(table, clock=clock))


def test_session_id_sources_first_non_empty_wins(table: EndpointTable, clock: Clock) -> None:
    flt = _sid_filter(
        table,
        clock,
        [
            {"header": "X-Conversation"},
            {"attribute": "SessionID", "producer": "sid"},
            {"attribute": "agent-identity"},
            {"attribute": "SessionID"},
        ],
    )
    cycle = _cycle()
    request = _request(x_conversation="  ")  # blank: skipped
    assert flt.session_id(cycle, request) is None
    cycle.write("SessionID", " shared ")
    assert flt.session_id(cycle, request) == "shared"
    cycle.write("agent-identity", "agent-7")
    assert flt.session_id(cycle, request) == "agent-7"
    cycle.write("SessionID/other", "not-read")
    cycle.write("SessionID/sid", "from-sid")
    assert flt.session_id(cycle, request) == "from-sid"
    assert flt.session_id(cycle, _request(x_conversation=" c9 ")) == "c9"


def test_non_string_attribute_is_skipped(table: EndpointTable, clock: Clock) -> None:
    flt = _sid_filter(table, clock, [{"attribute": "agent-identity"}, {"header": "x-session-id"}])
    cycle = _cycle()
    cycle.write("agent-identity", 42)
    assert flt.session_id(cycle, _request(x_session_id="s1")) == "s1"


def test_session_id_from_a_producer_end_to_end(clock: Clock) -> None:
    table = _table(clock)
    config = """
plugins:
- {name: sid, type: session-id-producer, parameters: {headerName: x-user}}
- type: session-affinity-filter
  parameters:
    strategy: session_id
    sessionIdConfig: {sources: [{attribute: SessionID, producer: sid}]}
- {type: queue-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: session-affinity-filter}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""
    scheduler = Scheduler.from_config(config, table, seed=0)
    _waiting(table, 3, 0, 3, 3)
    assert scheduler.schedule(Request.create("m", headers={"x-user": "u1"})).endpoint.name == "e1"
    _waiting(table, 0, 9, 0, 0)
    assert scheduler.schedule(Request.create("m", headers={"x-user": "u1"})).endpoint.name == "e1"
    assert scheduler.schedule(Request.create("m", headers={"x-user": "u2"})).endpoint.name != "e1"
    assert all(s.errors == 0 for s in scheduler.stats())


def test_attribute_producer_must_produce_it(clock: Clock) -> None:
    table = _table(clock)
    config = """
plugins:
- {type: queue-scorer}
- type: session-affinity-filter
  parameters:
    strategy: session_id
    sessionIdConfig: {sources: [{attribute: SessionID, producer: %s}]}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: session-affinity-filter}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""
    with pytest.raises(ConfigError, match=r"sources\[0\]\.producer.*undefined plugin 'nope'"):
        Scheduler.from_config(config % "nope", table, seed=0)
    with pytest.raises(ConfigError, match=r"does not produce 'SessionID'"):
        Scheduler.from_config(config % "queue-scorer", table, seed=0)


def test_scorer_session_id_strategy(table: EndpointTable, clock: Clock) -> None:
    params = parse_params(SessionAffinityParams, {"strategy": "session_id"}, PATH)
    scorer = SessionAffinityScorer("s", params, PluginHandle(table, clock=clock))
    request = _request(x_session_id="s1")
    assert _score(scorer, table, request, 0, 1, 2) == [0.0, 0.0, 0.0]  # unbound: all 0
    scorer.pre_request(_cycle(), request, _result(table, ("default", "e2")))
    assert _score(scorer, table, request, 0, 1, 2) == [0.0, 0.0, 1.0]
    assert _score(scorer, table, request, 2, 0) == [1.0, 0.0]
    # absent from the candidates: all 0, and this cycle's pick takes the session over
    cycle = _cycle()
    out = np.zeros(2, dtype=np.float32)
    scorer.score(cycle, request, table, _rows(0, 1), out)
    assert out.tolist() == [0.0, 0.0]
    scorer.pre_request(cycle, request, _result(table, ("default", "e1")))
    assert (scorer.binding("s1"), scorer.num_rebound) == ("e1", 1)
    # the scorer sets no response header with session_id
    response = Response("r", is_end_of_stream=True)
    scorer.response_complete(request, response, _result(table, ("default", "e1")))
    assert response.set_headers == {}


@pytest.mark.parametrize(
    ("raw", "header", "token_of"),
    [
        pytest.param({}, "x-session-token", "e3", id="primary"),
        pytest.param({"profileName": "prefill"}, "x-session-token", "e0", id="profile-pick"),
        pytest.param({"profileName": "encode"}, "x-session-token", "e3", id="profile-not-run"),
        pytest.param({"encodedEndpointHeaderConfig": {"header": " X-Token-Prefill "}, "profileName": "prefill"}, "x-token-prefill", "e0", id="custom-header"),
    ],
)  # fmt: skip
def test_encoded_response_header(
    table: EndpointTable, raw: dict[str, Any], header: str, token_of: str
) -> None:
    result = _result(table, ("prefill", "e0"), ("decode", "e3"), primary="decode")
    for plugin in (_scorer(table, **raw), _filter(table, Clock(), strategy=None, **raw)):
        response = Response("r", is_end_of_stream=True)
        plugin.response_complete(_request(), response, result)
        assert response.set_headers == {header: _b64(token_of)}


def test_encoded_custom_header_is_read(table: EndpointTable) -> None:
    raw = {"encodedEndpointHeaderConfig": {"header": "X-Token-Prefill"}}
    scorer = _scorer(table, **raw)
    assert _score(scorer, table, _request(x_token_prefill=_b64("e1")), 0, 1) == [0.0, 1.0]
    assert _score(scorer, table, _request(x_session_token=_b64("e1")), 0, 1) == [0.0, 0.0]


def test_multicluster_session_affinity_filter(table: EndpointTable, clock: Clock) -> None:
    assert registry.get("multicluster-session-affinity-filter") is MulticlusterSessionAffinityFilter
    assert MulticlusterSessionAffinityFilter.type == "multicluster-session-affinity-filter"
    assert SessionAffinityFilter.type == "session-affinity-filter"
    assert issubclass(MulticlusterSessionAffinityFilter, SessionAffinityFilter)
    flt = MulticlusterSessionAffinityFilter(
        "mc", parse_params(SessionAffinityParams, None, PATH), PluginHandle(table)
    )
    assert _run(flt, table, _request(x_session_token=_b64("ns/e1"))) == [1]
    assert registry.kinds_of(MulticlusterSessionAffinityFilter) == registry.kinds_of(
        SessionAffinityFilter
    )


@pytest.mark.parametrize(
    "plugin_type",
    ["session-affinity-filter", "session-affinity-scorer", "multicluster-session-affinity-filter"],
)
def test_session_affinity_types_are_alpha(plugin_type: str) -> None:
    assert registry.get(plugin_type).stability == "alpha"


@settings(max_examples=200)
@given(
    picks=st.lists(st.integers(0, 5), min_size=0, max_size=6, unique=True),
    token_row=st.one_of(st.none(), st.integers(0, 7)),
)
def test_filter_keeps_one_candidate_or_all(picks: list[int], token_row: int | None) -> None:
    table = _table(Clock(), tuple(f"e{i}" for i in range(6)))
    flt = SessionAffinityFilter(
        "sticky", parse_params(SessionAffinityParams, None, PATH), PluginHandle(table)
    )
    token = "" if token_row is None else _b64(f"e{token_row}")
    kept = _run(flt, table, _request(x_session_token=token), *picks) if picks else []
    if token_row is not None and token_row in picks:
        assert kept == [token_row]
    else:
        assert kept == picks  # fail open: every candidate, in order
