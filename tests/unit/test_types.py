"""Request.create header handling, Endpoint roles and host strings, results."""

from __future__ import annotations

import numpy as np
import pytest

from inference_sched.errors import DataError
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Role,
    SchedulingResult,
)
from inference_sched.state.endpoint import strip_port


def test_create_reads_gie_headers() -> None:
    r = Request.create(
        "base",
        prompt="hello",
        headers={
            "X-Request-Id": "abc",
            "x-slo-ttft-ms": "250.5",
            "x-slo-tpot-ms": "20",
            "x-gateway-inference-objective": "premium",
            "x-gateway-inference-fairness-id": "tenant-a",
            "x-gateway-model-name-rewrite": "lora-7",
            "x-session-token": "c2Vzcw==",
        },
        priority=-1,
        subset_hint=["10.0.0.1:8000"],
    )
    assert r.request_id == "abc"
    assert r.incoming_model == "base"
    assert r.target_model == "lora-7"
    assert r.prompt == b"hello"
    assert r.request_size_bytes == 5
    assert r.slo_ttft_ms == 250.5
    assert r.slo_tpot_ms == 20.0
    assert r.objective == "premium"
    assert r.fairness_id == "tenant-a"
    assert r.lora_adapter == "lora-7"
    assert r.session_key == "c2Vzcw=="
    assert r.subset_hint == ("10.0.0.1:8000",)
    assert r.is_sheddable
    assert r.headers["x-request-id"] == "abc"


def test_create_defaults() -> None:
    r = Request.create("m", headers={"x-session-id": "s1"})
    assert len(r.request_id) == 36  # uuid4
    assert r.fairness_id == "default-flow"
    assert r.slo_ttft_ms is None
    assert r.slo_tpot_ms is None
    assert r.session_key == "s1"
    assert r.subset_hint is None
    assert r.request_size_bytes == 0
    assert not r.is_sheddable


@pytest.mark.parametrize(
    ("base_models", "expected"),
    [((), "m"), (("m",), None), (("other",), "m")],
    ids=["no-base-list", "target-is-base", "target-is-adapter"],
)
def test_lora_adapter_is_the_target_model_when_it_is_an_adapter(
    base_models: tuple[str, ...], expected: str | None
) -> None:
    assert Request.create("m", base_models=base_models).lora_adapter == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", r"header x-slo-ttft-ms: expected a number of milliseconds, got 'fast'"),
        ("-5", r"header x-slo-ttft-ms: expected a finite number of milliseconds >= 0"),
        ("nan", r"header x-slo-ttft-ms: expected a finite number"),
    ],
)
def test_bad_slo_header_names_the_header(value: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Request.create("m", headers={"x-slo-ttft-ms": value})


def test_empty_slo_header_is_absent() -> None:
    assert Request.create("m", headers={"x-slo-tpot-ms": " "}).slo_tpot_ms is None


def test_token_ids_are_uint32_and_checked() -> None:
    r = Request.create("m", token_ids=[1, 2, 3])
    assert r.token_ids is not None
    assert r.token_ids.dtype == np.uint32
    assert not r.token_ids.flags.writeable
    with pytest.raises(DataError, match=r"token ids must be in \[0, 2\*\*32\)"):
        Request.create("m", token_ids=[-1])
    with pytest.raises(DataError, match="1-D sequence of integers"):
        Request.create("m", token_ids=[[1, 2]])
    with pytest.raises(DataError, match="1-D sequence of integers"):
        Request.create("m", token_ids=[0.5])


@pytest.mark.parametrize(
    ("label", "role"),
    [
        (None, Role.UNSET),
        ("prefill", Role.PREFILL),
        ("decode", Role.DECODE),
        ("both", Role.BOTH),
        ("prefill-decode", Role.PREFILL_DECODE),
        ("encode", Role.ENCODE),
        ("encode-prefill", Role.ENCODE_PREFILL),
        ("encode-prefill-decode", Role.ENCODE_PREFILL_DECODE),
        (" Decode ", Role.DECODE),
        ("gpu", Role.OTHER),
    ],
)
def test_role_from_label(label: str | None, role: Role) -> None:
    labels = {} if label is None else {"llm-d.ai/role": label}
    assert Endpoint("e", "10.0.0.1", 80, labels).role is role
    assert Role.from_label(label) is role


def test_role_label_round_trip() -> None:
    for role in Role:
        if role.label is not None:
            assert Role.from_label(role.label) is role


def test_endpoint_hostports() -> None:
    assert Endpoint("e", "10.0.0.1", 8000).hostport == "10.0.0.1:8000"
    assert Endpoint("e", "fd00::1", 8000).hostport == "[fd00::1]:8000"
    assert Endpoint("e", "10.0.0.1", 8000, metrics_port=9090).metrics_hostport == "10.0.0.1:9090"
    assert Endpoint("e", "10.0.0.1", 8000).metrics_hostport == "10.0.0.1:8000"


def test_endpoint_labels_are_read_only_and_hashable_endpoint() -> None:
    e = Endpoint("e", "10.0.0.1", 8000, {"a": "b"})
    with pytest.raises(TypeError):
        e.labels["a"] = "c"  # type: ignore[index]
    assert hash(e) == hash(Endpoint("e", "10.0.0.1", 8000, {"a": "x"}))
    assert e != Endpoint("e", "10.0.0.1", 8000, {"a": "x"})


@pytest.mark.parametrize(
    ("hostport", "ip"),
    [
        ("10.0.0.1:80", "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("[fd00::1]:80", "fd00::1"),
        ("fd00::1", "fd00::1"),
        ("host:80", "host"),
    ],
)
def test_strip_port(hostport: str, ip: str) -> None:
    assert strip_port(hostport) == ip


def test_scheduling_result_accessors() -> None:
    a, b = Endpoint("a", "10.0.0.1", 8000), Endpoint("b", "10.0.0.2", 8001)
    run = ProfileRunResult((0, 1), (a, b), (2.0, 1.0))
    result = SchedulingResult({"decode": run, "prefill": None}, "decode")
    assert result.endpoint is a
    assert result.target_endpoints == (a, b)
    assert run.fallbacks == (b,)
    assert result.destination_header == "10.0.0.1:8000,10.0.0.2:8001"
    assert result.picked("decode") is a
    assert result.picked("prefill") is None
    assert result.picked("missing") is None


def test_cycle_state() -> None:
    cycle = CycleState(np.random.default_rng(0), now_s=5.0)
    cycle.write("k", 1)
    assert cycle.read("k") == 1
    assert "k" in cycle
    assert list(cycle) == ["k"]
    cycle.delete("k")
    cycle.delete("k")
    assert cycle.read("k", "default") == "default"
