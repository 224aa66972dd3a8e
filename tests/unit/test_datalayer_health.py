"""EndpointHealth: the take-out / put-back rule, its inputs and its thread safety."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.datalayer.fetch import ConnectError, HttpConnection
from inference_sched.datalayer.health import (
    DEFAULT_UNHEALTHY_AFTER,
    EndpointHealth,
    FailureKind,
    failure_kind,
)
from inference_sched.framework.types import Endpoint
from inference_sched.state.table import EndpointTable

REFUSED, UNREACHABLE, ANSWERED = FailureKind.REFUSED, FailureKind.UNREACHABLE, FailureKind.ANSWERED


def pool(*names: str) -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, name in enumerate(names):
        table.add(Endpoint(name, "127.0.0.1", 8000 + i))
    return table


def healthy(table: EndpointTable) -> list[str]:
    return [e.name for e in table if table.is_healthy[table.row(e.name)]]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ====================================================================== the rule
def test_three_failures_in_a_row_take_it_out_and_one_success_puts_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = pool("a", "b")
    health = EndpointHealth(table)
    caplog.set_level(logging.INFO, logger="inference_sched.datalayer.health")
    assert DEFAULT_UNHEALTHY_AFTER == 3
    assert [health.scrape_failed("a", UNREACHABLE, "timed out") for _ in range(2)] == [
        False,
        False,
    ]
    assert healthy(table) == ["a", "b"]
    assert health.consecutive_failures("a") == 2
    assert health.scrape_failed("a", UNREACHABLE, "HTTP 503") is True
    assert healthy(table) == ["b"]
    assert table.candidates_for(None).tolist() == [1]
    assert (health.taken_out(), health.num_taken_out, health.is_taken_out("a")) == (
        ("a",),
        1,
        True,
    )
    assert health.scrape_failed("a", UNREACHABLE, "HTTP 503") is False  # already out
    assert health.consecutive_failures("a") == 4
    assert health.scrape_succeeded(["b"]) == 0
    assert health.scrape_succeeded(["a"]) == 1
    assert healthy(table) == ["a", "b"]
    assert (health.taken_out(), health.consecutive_failures("a")) == ((), 0)
    assert (health.num_taken_out_total, health.num_put_back_total) == (1, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "endpoint a taken out of the candidate set after 3 consecutive failure(s) "
        "(HTTP 503); it comes back at its first successful scrape",
        "endpoint a back in the candidate set: scrape succeeded after 4 failure(s) "
        "(last: HTTP 503)",
    ]


def test_a_success_in_between_restarts_the_count() -> None:
    table = pool("a")
    health = EndpointHealth(table)
    for _ in range(5):
        health.scrape_failed("a", UNREACHABLE, "timed out")
        health.scrape_failed("a", UNREACHABLE, "timed out")
        health.scrape_succeeded(["a"])
    assert healthy(table) == ["a"]
    assert health.num_taken_out_total == 0


def test_a_page_the_extractor_cannot_read_neither_counts_nor_recovers() -> None:
    table = pool("a")
    health = EndpointHealth(table)
    health.scrape_failed("a", UNREACHABLE, "x")
    health.scrape_failed("a", UNREACHABLE, "x")
    assert health.scrape_failed("a", ANSWERED, "none of the engine's metrics") is False
    assert health.consecutive_failures("a") == 0  # reachable: the run is broken
    for _ in range(10):
        health.scrape_failed("a", ANSWERED, "none of the engine's metrics")
    assert healthy(table) == ["a"]
    health.scrape_failed("a", REFUSED, "refused")
    assert healthy(table) == []
    health.scrape_failed("a", ANSWERED, "garbage")  # answered, but no values: stays out
    assert healthy(table) == []
    assert health.is_taken_out("a")


def test_refused_takes_it_out_at_once_unless_turned_off() -> None:
    table = pool("a", "b")
    health = EndpointHealth(table)
    assert health.scrape_failed("a", REFUSED, "ConnectError: refused") is True
    assert healthy(table) == ["b"]

    table = pool("a")
    patient = EndpointHealth(table, unhealthy_on_refused=False)
    assert [patient.scrape_failed("a", REFUSED, "r") for _ in range(3)] == [False, False, True]


def test_zero_turns_health_handling_off() -> None:
    table = pool("a")
    health = EndpointHealth(table, unhealthy_after=0)
    assert not health.enabled
    for _ in range(10):
        assert health.scrape_failed("a", REFUSED, "refused") is False
        assert health.report_connect_failure("a") is False
    assert healthy(table) == ["a"]
    assert (health.consecutive_failures("a"), health.num_taken_out) == (0, 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, r"unhealthy_after: expected int >= 0, got -1"),
        (True, r"unhealthy_after: expected int >= 0, got True \(bool\)"),
        (2.0, r"unhealthy_after: expected int >= 0, got 2.0 \(float\)"),
        ("3", r"unhealthy_after: expected int >= 0, got '3' \(str\)"),
    ],
    ids=["negative", "bool", "float", "str"],
)
def test_bad_threshold_is_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointHealth(pool(), unhealthy_after=value)  # type: ignore[arg-type]


# ====================================================================== ownership
def test_an_endpoint_someone_else_took_out_is_never_put_back() -> None:
    table = pool("a", "b")
    health = EndpointHealth(table)
    table.set_healthy("a", False)  # an embedder's (or a readiness check's) decision
    assert health.scrape_failed("a", REFUSED, "refused") is False
    assert not health.is_taken_out("a")
    assert health.scrape_succeeded(["a"]) == 0
    assert healthy(table) == ["b"]
    assert health.num_taken_out_total == 0


def test_removal_forgets_and_a_new_endpoint_with_the_name_starts_afresh() -> None:
    table = pool("a", "b")
    health = EndpointHealth(table)
    health.scrape_failed("a", REFUSED, "refused")
    health.scrape_failed("b", UNREACHABLE, "timed out")
    assert health.num_taken_out == 1
    table.remove("a")
    table.remove("b")
    assert (health.num_taken_out, health.taken_out()) == (0, ())
    table.add(Endpoint("a", "127.0.0.1", 9000))
    table.add(Endpoint("b", "127.0.0.1", 9001))
    assert healthy(table) == ["a", "b"]
    assert (health.consecutive_failures("a"), health.consecutive_failures("b")) == (0, 0)
    health.scrape_failed("b", UNREACHABLE, "timed out")
    health.scrape_failed("b", UNREACHABLE, "timed out")
    assert healthy(table) == ["a", "b"]  # b's old failure was forgotten


def test_an_endpoint_that_moved_keeps_its_state_until_a_scrape_succeeds() -> None:
    table = pool("a")
    health = EndpointHealth(table)
    health.scrape_failed("a", REFUSED, "refused")
    table.upsert(Endpoint("a", "127.0.0.2", 8000))  # same name, new address
    assert healthy(table) == []
    health.scrape_succeeded(["a"])
    assert healthy(table) == ["a"]


# ====================================================================== gateway signal
def test_gateway_reports_use_the_same_counter_and_recovery_needs_a_scrape() -> None:
    table = pool("a", "b")
    health = EndpointHealth(table)
    health.scrape_failed("a", UNREACHABLE, "timed out")
    assert health.report_connect_failure("a", "connect timeout", refused=False) is False
    assert health.consecutive_failures("a") == 2
    assert health.report_connect_failure("a", "connect timeout", refused=False) is True
    assert healthy(table) == ["b"]
    assert health.report_connect_failure("b") is True  # refused: at once
    assert healthy(table) == []
    assert health.report_connect_failure("gone") is False  # left meanwhile: ignored
    assert health.scrape_succeeded(["a", "b", "gone"]) == 2
    assert healthy(table) == ["a", "b"]


def test_reports_from_threads_never_leave_table_and_state_apart() -> None:
    names = [f"e{i}" for i in range(8)]
    table = pool(*names)
    health = EndpointHealth(table, unhealthy_after=2)
    deadline = time.monotonic() + 0.5
    errors: list[BaseException] = []

    def gateway() -> None:
        try:
            i = 0
            while time.monotonic() < deadline:
                health.report_connect_failure(names[i % 8], refused=i % 3 == 0)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=gateway) for _ in range(2)]
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        health.scrape_succeeded(names)
    for thread in threads:
        thread.join(timeout=5)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    with table.lock:
        out = set(health.taken_out())
        assert {n for n in names if not table.is_healthy[table.row(n)]} == out
        assert health.num_taken_out_total - health.num_put_back_total == len(out)
    health.scrape_succeeded(names)
    assert healthy(table) == names


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["ok", "answered", "unreachable", "refused", "gateway", "remove"]),
    ),
    max_size=40,
)


@given(events=EVENTS, threshold=st.integers(0, 4), on_refused=st.booleans())
def test_matches_a_reference_model(
    events: list[tuple[str, str]], threshold: int, on_refused: bool
) -> None:
    table = pool("a", "b")
    health = EndpointHealth(table, unhealthy_after=threshold, unhealthy_on_refused=on_refused)
    count = {"a": 0, "b": 0}
    out = {"a": False, "b": False}
    for name, event in events:
        if name not in table:
            table.add(Endpoint(name, "127.0.0.1", 9000))
            count[name], out[name] = 0, False
        if event == "ok":
            health.scrape_succeeded([name])
            count[name], out[name] = 0, False
        elif event == "answered":
            health.scrape_failed(name, ANSWERED, "page")
            count[name] = 0 if threshold else count[name]
        elif event == "remove":
            table.remove(name)
            count[name], out[name] = 0, False
            continue
        else:
            kind = REFUSED if event in ("refused", "gateway") else UNREACHABLE
            if event == "gateway":
                health.report_connect_failure(name)
            else:
                health.scrape_failed(name, kind, event)
            if threshold:
                count[name] += 1
                if count[name] >= threshold or (kind is REFUSED and on_refused):
                    out[name] = True
        assert health.consecutive_failures(name) == count[name]
        assert health.is_taken_out(name) == out[name]
        assert bool(table.is_healthy[table.row(name)]) == (not out[name])


# ====================================================================== failure kinds
def _raise_like_fetch() -> None:
    try:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    except OSError as exc:
        raise ConnectError(f"cannot connect: {exc}") from None  # as fetch.py does


def test_failure_kind_finds_the_refusal_in_exception_chains() -> None:
    assert failure_kind(ConnectionRefusedError()) is REFUSED
    assert failure_kind(OSError(errno.ECONNREFUSED, "refused")) is REFUSED
    assert failure_kind(OSError(errno.ECONNRESET, "reset")) is UNREACHABLE
    assert failure_kind(TimeoutError()) is UNREACHABLE
    with pytest.raises(ConnectError) as caught:
        _raise_like_fetch()
    assert failure_kind(caught.value) is REFUSED
    group = ExceptionGroup("all addresses", [ConnectionRefusedError(), ConnectionRefusedError()])
    assert failure_kind(OSError("All connection attempts failed")) is UNREACHABLE
    wrapped = OSError("All connection attempts failed")
    wrapped.__cause__ = group
    assert failure_kind(wrapped) is REFUSED
    mixed = OSError("All connection attempts failed")
    mixed.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(), TimeoutError()])
    assert failure_kind(mixed) is UNREACHABLE


def test_failure_kind_of_real_refusals_from_both_clients() -> None:
    port = closed_port()
    with pytest.raises(httpx.ConnectError) as caught, httpx.Client() as client:
        client.get(f"http://127.0.0.1:{port}/metrics")
    assert failure_kind(caught.value) is REFUSED

    async def lean() -> BaseException:
        conn = HttpConnection(f"http://127.0.0.1:{port}/metrics", timeout_s=2.0)
        try:
            await conn.get()
        except ConnectError as exc:
            return exc
        finally:
            await conn.aclose()
        raise AssertionError("connected to a closed port")

    assert failure_kind(asyncio.run(lean())) is REFUSED
