"""Kubernetes discovery: pod -> endpoints, InferencePool parsing, and a replayed watch stream."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch

from inference_sched.datalayer import k8s
from inference_sched.datalayer.discovery import apply
from inference_sched.datalayer.k8s import (
    PodDiscovery,
    active_ports,
    is_pod_ready,
    label_selector,
    parse_inference_pool,
    parse_selector,
    parse_target_ports,
    pod_endpoints,
)
from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.types import Endpoint, Role
from inference_sched.state.table import EndpointTable

EVENTS = Path(__file__).parent.parent / "data" / "k8s_watch_events.jsonl"
PORTS = [8000, 8001]
SELECTOR = {"app": "vllm"}


def make_pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    deleting: bool = False,
    resource_version: str = "1",
) -> Any:
    """A V1Pod built from the client's model classes."""
    conditions = [
        client.V1PodCondition(type="PodScheduled", status="True"),
        client.V1PodCondition(type="Ready", status="True" if ready else "False"),
    ]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace="llm",
            labels={"app": "vllm"} if labels is None else labels,
            annotations=annotations,
            resource_version=resource_version,
            deletion_timestamp=dt.datetime(2025, 3, 1, tzinfo=dt.UTC) if deleting else None,
        ),
        status=client.V1PodStatus(phase="Running", pod_ip=ip, conditions=conditions),
    )


def pod_list(resource_version: str, *pods: Any) -> Any:
    return client.V1PodList(
        items=list(pods), metadata=client.V1ListMeta(resource_version=resource_version)
    )


class FakeResponse:
    """Just enough of urllib3's HTTPResponse for ``kubernetes.watch.Watch``."""

    status = 200

    def __init__(self, body: bytes, chunk: int = 97) -> None:
        self._chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        self.closed = False

    def stream(self, amt: object = None, decode_content: object = None) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class FakeCoreV1Api:
    """A CoreV1Api that answers lists from ``lists`` and watches from ``streams``."""

    def __init__(self, lists: list[Any], streams: list[bytes]) -> None:
        self.lists = lists
        self.streams = streams
        self.calls: list[dict[str, Any]] = []
        self.responses: list[FakeResponse] = []

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        self.calls.append({"namespace": namespace, **kwargs})
        if kwargs.get("watch"):
            response = FakeResponse(self.streams.pop(0) if self.streams else b"")
            self.responses.append(response)
            return response
        return self.lists.pop(0)


def names(endpoints: list[Endpoint]) -> list[tuple[str, str, int]]:
    return [(e.name, e.address, e.port) for e in endpoints]


# ------------------------------------------------------------------ conversion
def test_ready_pod_gives_one_endpoint_per_target_port() -> None:
    pod = make_pod("vllm-0", "10.0.0.5", labels={"app": "vllm", "llm-d.ai/role": "decode"})
    endpoints = pod_endpoints(pod, PORTS)
    assert endpoints == [
        Endpoint(
            "vllm-0-rank-0",
            "10.0.0.5",
            8000,
            {"app": "vllm", "llm-d.ai/role": "decode"},
            pod_name="vllm-0",
        ),
        Endpoint(
            "vllm-0-rank-1",
            "10.0.0.5",
            8001,
            {"app": "vllm", "llm-d.ai/role": "decode"},
            pod_name="vllm-0",
        ),
    ]
    assert endpoints[0].node_address is None  # the fake pod has no status.hostIP
    assert [e.role for e in endpoints] == [Role.DECODE, Role.DECODE]
    assert endpoints[0].metrics_port is None


@pytest.mark.parametrize(
    ("pod", "ready"),
    [
        pytest.param(make_pod("p"), True, id="ready"),
        pytest.param(make_pod("p", ready=False), False, id="unready"),
        pytest.param(make_pod("p", deleting=True), False, id="terminating"),
        pytest.param(
            client.V1Pod(metadata=client.V1ObjectMeta(name="p"), status=None), False, id="no-status"
        ),
        pytest.param(
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="p"),
                status=client.V1PodStatus(pod_ip="10.0.0.1", conditions=None),
            ),
            False,
            id="no-conditions",
        ),
    ],
)
def test_readiness(pod: Any, ready: bool) -> None:
    assert is_pod_ready(pod) is ready
    assert len(pod_endpoints(pod, PORTS)) == (2 if ready else 0)


def test_ready_pod_without_ip_has_no_endpoints() -> None:
    assert pod_endpoints(make_pod("p", ip=None), PORTS) == []


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        pytest.param(None, [8000, 8001, 8002], id="no-annotation"),
        pytest.param({k8s.ACTIVE_PORTS_ANNOTATION: "8001"}, [8001], id="one"),
        pytest.param({k8s.ACTIVE_PORTS_ANNOTATION: " 8002 ,8000"}, [8000, 8002], id="spaces"),
        pytest.param({k8s.ACTIVE_PORTS_ANNOTATION: "8001,9999,abc,"}, [8001], id="ignored"),
        pytest.param({k8s.ACTIVE_PORTS_ANNOTATION: ""}, [], id="empty-means-none"),
        pytest.param({k8s.LLMD_ACTIVE_PORTS_ANNOTATION: "8002"}, [8002], id="llm-d-key"),
        pytest.param(
            {k8s.ACTIVE_PORTS_ANNOTATION: "8000", k8s.LLMD_ACTIVE_PORTS_ANNOTATION: "8002"},
            [8000],
            id="gie-key-first",
        ),
    ],
)
def test_active_ports(annotations: dict[str, str] | None, expected: list[int]) -> None:
    assert active_ports(make_pod("p", annotations=annotations), [8000, 8001, 8002]) == expected


def test_active_ports_keep_the_target_port_index_in_names() -> None:
    pod = make_pod("p", "10.0.0.3", annotations={k8s.ACTIVE_PORTS_ANNOTATION: "8002"})
    assert names(pod_endpoints(pod, [8000, 8001, 8002])) == [("p-rank-2", "10.0.0.3", 8002)]


def test_custom_active_ports_annotation() -> None:
    pod = make_pod("p", annotations={"example.com/ports": "8001", k8s.ACTIVE_PORTS_ANNOTATION: ""})
    got = pod_endpoints(pod, PORTS, active_ports_annotation="example.com/ports")
    assert names(got) == [("p-rank-1", "10.0.0.1", 8001)]


def test_metrics_port_applies_only_to_single_port_pools() -> None:
    pod = make_pod("p")
    assert [e.metrics_port for e in pod_endpoints(pod, [8000], metrics_port=9090)] == [9090]
    assert pod_endpoints(pod, [8000], metrics_port=9090)[0].metrics_hostport == "10.0.0.1:9090"
    assert [e.metrics_port for e in pod_endpoints(pod, PORTS, metrics_port=9090)] == [None, None]


def test_pod_discovery_drops_pods_that_no_longer_match_the_selector() -> None:
    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=FakeCoreV1Api([], []))
    assert discovery.convert(make_pod("p", labels={"app": "other"})) == []
    assert len(discovery.convert(make_pod("p"))) == 2


def test_pod_discovery_matches_every_selector_label() -> None:
    selector = {"app": "vllm", "tier": "gpu"}
    discovery = PodDiscovery("llm", selector, PORTS, api=FakeCoreV1Api([], []))
    assert discovery.convert(make_pod("p", labels={"app": "vllm"})) == []  # tier missing
    assert discovery.convert(make_pod("p", labels={"app": "vllm", "tier": "cpu"})) == []
    both = make_pod("p", labels={"app": "vllm", "tier": "gpu", "extra": "x"})
    assert len(discovery.convert(both)) == 2


# ------------------------------------------------------------------ configuration
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool", "namespace": "llm"},
    "spec": {
        "selector": {"matchLabels": {"app": "vllm"}},
        "targetPorts": [{"number": 8000}, {"number": 8001}],
        "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
    },
}


def test_parse_inference_pool_v1_and_v1alpha2() -> None:
    assert parse_inference_pool(POOL) == ({"app": "vllm"}, [8000, 8001])
    alpha = {"spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000}}
    assert parse_inference_pool(alpha) == ({"app": "vllm"}, [8000])


def _pool(**spec: Any) -> dict[str, Any]:
    return {"kind": "InferencePool", "spec": {**POOL["spec"], **spec}}  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("manifest", "path", "message"),
    [
        pytest.param(
            {"kind": "Service", "spec": {}}, "kind", "expected kind InferencePool", id="kind"
        ),
        pytest.param({"kind": "InferencePool"}, "spec", "expected a mapping", id="no-spec"),
        pytest.param(_pool(selector=None), "spec.selector", "missing", id="no-selector"),
        pytest.param(
            _pool(selector={"matchLabels": {}}),
            "spec.selector.matchLabels",
            "must not be empty",
            id="empty-selector",
        ),
        pytest.param(
            _pool(selector={"matchLabels": {"app": 1}}),
            "spec.selector.matchLabels.app",
            "must be a string",
            id="label-value",
        ),
        pytest.param(
            _pool(selector={"matchExpressions": []}),
            "spec.selector.matchExpressions",
            "matchLabels only",
            id="match-expressions",
        ),
        pytest.param(
            _pool(targetPorts=[]), "spec.targetPorts", "expected 1..8 ports, got 0", id="no-ports"
        ),
        pytest.param(
            _pool(targetPorts=[{"number": p} for p in range(8000, 8009)]),
            "spec.targetPorts",
            "expected 1..8 ports, got 9",
            id="nine-ports",
        ),
        pytest.param(
            _pool(targetPorts=[{"number": 8000}, {"number": 8000}]),
            "spec.targetPorts[1].number",
            "duplicate port 8000",
            id="duplicate",
        ),
        pytest.param(
            _pool(targetPorts=[{"number": 8000}, {"number": 0}]),
            "spec.targetPorts[1].number",
            "1..65535",
            id="zero",
        ),
        pytest.param(
            _pool(targetPorts=[{"number": "8000"}]),
            "spec.targetPorts[0].number",
            "1..65535, got '8000'",
            id="string-port",
        ),
        pytest.param(
            _pool(targetPorts=[{"port": 8000}]),
            "spec.targetPorts[0]",
            "expected {number: port}",
            id="no-number",
        ),
        pytest.param(
            _pool(targetPorts={"number": 8000}),
            "spec.targetPorts",
            "expected a list",
            id="ports-not-list",
        ),
    ],
)
def test_parse_inference_pool_errors_name_the_field(
    manifest: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_inference_pool(manifest)
    assert info.value.path == path


def test_standalone_flags() -> None:
    assert parse_selector("app=vllm, tier = gpu") == {"app": "vllm", "tier": "gpu"}
    assert parse_target_ports("8000,8001") == [8000, 8001]
    assert label_selector({"tier": "gpu", "app": "vllm"}) == "app=vllm,tier=gpu"
    with pytest.raises(ConfigError, match="expected key=value, got 'app'"):
        parse_selector("app")
    with pytest.raises(ConfigError, match="must not be empty"):
        parse_selector(" , ")
    with pytest.raises(ConfigError, match="expected a port number, got 'http'"):
        parse_target_ports("8000,http")
    with pytest.raises(ConfigError, match="duplicate port 8000"):
        parse_target_ports("8000,8000")


def test_pod_discovery_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        PodDiscovery("llm", {}, PORTS)
    with pytest.raises(ConfigError, match=r"1\.\.8 ports"):
        PodDiscovery("llm", SELECTOR, [])
    with pytest.raises(ConfigError, match="namespace: must not be empty"):
        PodDiscovery("", SELECTOR, PORTS)
    discovery = PodDiscovery.from_inference_pool(POOL, api=object())
    assert (discovery.namespace, discovery.selector, discovery.target_ports) == (
        "llm",
        {"app": "vllm"},
        [8000, 8001],
    )


def test_missing_kubernetes_extra_is_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(ImportError, match=r"needs the \[k8s\] extra: pip install"):
        PodDiscovery("llm", SELECTOR, PORTS)
    # Conversion and parsing helpers need no client.
    assert parse_selector("app=vllm") == {"app": "vllm"}


# ------------------------------------------------------------------ the recorded stream
INITIAL = pod_list("100", make_pod("vllm-0", "10.0.0.10", labels={"app": "vllm"}))
RELISTED = pod_list(
    "200",
    make_pod("vllm-2", "10.0.0.12", annotations={k8s.LLMD_ACTIVE_PORTS_ANNOTATION: "8000"}),
    make_pod("vllm-3", "10.0.0.13"),
)

# The endpoint set after the initial list, after each line of the stream, and after
# the relist that the final 410 triggers.
EXPECTED = [
    [("vllm-0-rank-0", "10.0.0.10", 8000), ("vllm-0-rank-1", "10.0.0.10", 8001)],
    # 1 ADDED vllm-1: pending, no IP
    [("vllm-0-rank-0", "10.0.0.10", 8000), ("vllm-0-rank-1", "10.0.0.10", 8001)],
    # 2 MODIFIED vllm-1: Ready
    [
        ("vllm-0-rank-0", "10.0.0.10", 8000),
        ("vllm-0-rank-1", "10.0.0.10", 8001),
        ("vllm-1-rank-0", "10.0.0.11", 8000),
        ("vllm-1-rank-1", "10.0.0.11", 8001),
    ],
    # 3 MODIFIED vllm-1: active-ports "8001"
    [
        ("vllm-0-rank-0", "10.0.0.10", 8000),
        ("vllm-0-rank-1", "10.0.0.10", 8001),
        ("vllm-1-rank-1", "10.0.0.11", 8001),
    ],
    # 4 BOOKMARK
    [
        ("vllm-0-rank-0", "10.0.0.10", 8000),
        ("vllm-0-rank-1", "10.0.0.10", 8001),
        ("vllm-1-rank-1", "10.0.0.11", 8001),
    ],
    # 5 MODIFIED vllm-0: Ready=False
    [("vllm-1-rank-1", "10.0.0.11", 8001)],
    # 6 MODIFIED vllm-0: Ready again with a new IP
    [
        ("vllm-0-rank-0", "10.0.0.20", 8000),
        ("vllm-0-rank-1", "10.0.0.20", 8001),
        ("vllm-1-rank-1", "10.0.0.11", 8001),
    ],
    # 7 MODIFIED vllm-1: active-ports "8000, 8001, 9999, x"
    [
        ("vllm-0-rank-0", "10.0.0.20", 8000),
        ("vllm-0-rank-1", "10.0.0.20", 8001),
        ("vllm-1-rank-0", "10.0.0.11", 8000),
        ("vllm-1-rank-1", "10.0.0.11", 8001),
    ],
    # 8 MODIFIED vllm-1: deletionTimestamp set, still Ready
    [("vllm-0-rank-0", "10.0.0.20", 8000), ("vllm-0-rank-1", "10.0.0.20", 8001)],
    # 9 DELETED vllm-1
    [("vllm-0-rank-0", "10.0.0.20", 8000), ("vllm-0-rank-1", "10.0.0.20", 8001)],
    # 10 ADDED vllm-2: llm-d.ai/active-ports "8000"
    [
        ("vllm-0-rank-0", "10.0.0.20", 8000),
        ("vllm-0-rank-1", "10.0.0.20", 8001),
        ("vllm-2-rank-0", "10.0.0.12", 8000),
    ],
    # 11 MODIFIED vllm-0: label app changed, no longer selected
    [("vllm-2-rank-0", "10.0.0.12", 8000)],
    # 12 ERROR 410 -> relist
    [
        ("vllm-2-rank-0", "10.0.0.12", 8000),
        ("vllm-3-rank-0", "10.0.0.13", 8000),
        ("vllm-3-rank-1", "10.0.0.13", 8001),
    ],
]


def test_recorded_stream_through_the_real_watch() -> None:
    api = FakeCoreV1Api([INITIAL, RELISTED], [EVENTS.read_bytes()])
    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=api, watch_timeout_s=30)

    got = [names(snapshot) for snapshot in discovery.watch_once()]

    assert got == EXPECTED
    assert [c.get("watch", False) for c in api.calls] == [False, True, False]
    watch_call = api.calls[1]
    assert watch_call["label_selector"] == "app=vllm"
    assert watch_call["resource_version"] == "100"
    assert watch_call["timeout_seconds"] == 30
    assert discovery.resource_version == "200"  # from the relist
    assert api.responses[0].closed
    # The next watch resumes from the relist, without listing again.
    assert list(discovery.watch_once()) == []
    assert api.calls[-1]["resource_version"] == "200"
    assert len(api.calls) == 4


def test_recorded_stream_event_by_event() -> None:
    api = FakeCoreV1Api([INITIAL, RELISTED], [])
    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=api)
    assert discovery.relist() is True
    assert names(discovery.endpoints()) == EXPECTED[0]
    decoder = Watch(return_type="V1Pod")
    versions = []
    for line, expected in zip(EVENTS.read_text().splitlines(), EXPECTED[1:], strict=True):
        event = decoder.unmarshal_event(line, "V1Pod")
        before = discovery.endpoints()
        changed = discovery.handle_event(event)
        assert names(discovery.endpoints()) == expected, event["type"]
        assert changed == (discovery.endpoints() != before)
        versions.append(discovery.resource_version)
    assert versions == [str(v) for v in range(101, 112)] + ["200"]


def test_stream_drives_the_table_and_its_removal_listeners() -> None:
    api = FakeCoreV1Api([INITIAL, RELISTED], [EVENTS.read_bytes()])
    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=api)
    table = EndpointTable(clock=lambda: 0.0)
    removed: list[tuple[int, str]] = []
    table.on_remove(lambda row, endpoint: removed.append((row, endpoint.name)))

    for snapshot in discovery.watch_once():
        apply(table, snapshot)
        assert sorted(e.name for e in table) == [e.name for e in snapshot]

    assert sorted(e.name for e in table) == ["vllm-2-rank-0", "vllm-3-rank-0", "vllm-3-rank-1"]
    assert removed == [
        (2, "vllm-1-rank-0"),  # event 3: active-ports "8001"
        (0, "vllm-0-rank-0"),  # event 5: unready
        (1, "vllm-0-rank-1"),
        (3, "vllm-1-rank-1"),  # event 8: terminating
        (2, "vllm-1-rank-0"),
        (0, "vllm-0-rank-0"),  # event 11: no longer selected
        (1, "vllm-0-rank-1"),
    ]
    assert table.get("vllm-2-rank-0") == Endpoint(
        "vllm-2-rank-0", "10.0.0.12", 8000, {"app": "vllm"}, pod_name="vllm-2"
    )


def test_error_events_other_than_410_raise() -> None:
    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=FakeCoreV1Api([], []))
    status = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "boom"}
    with pytest.raises(ApiException, match="InternalError: boom"):
        discovery.handle_event({"type": "ERROR", "object": status})
    with pytest.raises(DataError, match="unknown watch event type 'SURPRISE'"):
        discovery.handle_event({"type": "SURPRISE", "object": make_pod("p")})


def test_http_410_on_the_watch_request_relists() -> None:
    class GoneApi(FakeCoreV1Api):
        def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
            if kwargs.get("watch"):
                raise ApiException(status=410, reason="Gone")
            return super().list_namespaced_pod(namespace, **kwargs)

    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=GoneApi([INITIAL, RELISTED], []))
    got = [names(s) for s in discovery.watch_once()]
    assert got == [EXPECTED[0], EXPECTED[-1]]
    assert discovery.resource_version == "200"


def test_async_watch_yields_changes_and_survives_api_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FlakyApi(FakeCoreV1Api):
        failures = 1

        def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
            if not kwargs.get("watch") and self.failures:
                self.failures -= 1
                raise ApiException(status=503, reason="Service Unavailable")
            return super().list_namespaced_pod(namespace, **kwargs)

    api = FlakyApi([INITIAL, RELISTED], [EVENTS.read_bytes()])
    discovery = PodDiscovery("llm", SELECTOR, PORTS, api=api, retry_s=0.01)

    async def collect() -> list[list[tuple[str, str, int]]]:
        out = []
        async with contextlib.aclosing(discovery.watch()) as snapshots:
            async for snapshot in snapshots:
                out.append(names(snapshot))
                if snapshot and snapshot[-1].name == "vllm-3-rank-1":
                    break
        return out

    with caplog.at_level(logging.ERROR, logger=k8s.logger.name):
        got = asyncio.run(asyncio.wait_for(collect(), timeout=10))
    assert "pod watch in llm failed; retrying in 0.0 s with the last 0 endpoints" in caplog.text
    # Unchanged snapshots (events 1, 4 and 9) are not repeated.
    dedup = [s for i, s in enumerate(EXPECTED) if i == 0 or s != EXPECTED[i - 1]]
    assert got == dedup
    assert discovery._stop.is_set()
