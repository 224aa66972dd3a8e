"""``serve``'s setup in process: flag parsing, endpoint sources, the InferencePool lookup,
the ext_proc destination without fallbacks, and a start/stop on OS-assigned ports."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_sched.cli import serve as serve_cli
from inference_sched.epp.serve import Serve, ServeOptions, inference_pool_discovery
from inference_sched.errors import ConfigError
from tests.e2e._helpers import CONFIG


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_flags_follow_gie_defaults() -> None:
    options = serve_cli.options_from_args(_args("--endpoint", "a=127.0.0.1:8000"))
    assert (options.grpc_port, options.grpc_health_port, options.metrics_port) == (9002, 9003, 9090)
    assert options.http_port is None
    assert options.refresh_metrics_interval_s == 0.05
    assert options.metrics_staleness_threshold_s == 2.0
    assert options.endpoint_unhealthy_after == 3
    assert options.endpoint_unhealthy_on_refused is True
    assert options.num_fallbacks == 1
    assert options.ext_proc_fallbacks is False
    assert options.host == "0.0.0.0"
    assert options.config is None


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (("--ext-proc-port", "7000"), "grpc_port", 7000),
        (("--refresh-metrics-interval", "250ms"), "refresh_metrics_interval_s", 0.25),
        (("--metrics-staleness-threshold", "1m"), "metrics_staleness_threshold_s", 60.0),
        (("--endpoint-unhealthy-on-refused", "false"), "endpoint_unhealthy_on_refused", False),
        (("--pool-name", "p", "--pool-namespace", "ns"), "inference_pool", "ns/p"),
        (("--config-file", "x.yaml"), "config", Path("x.yaml")),
        (("--drain-timeout", "30s"), "drain_timeout_s", 30.0),
    ],
)
def test_flag_values(argv: tuple[str, ...], field: str, value: Any) -> None:
    options = serve_cli.options_from_args(_args(*argv))
    assert getattr(options, field) == value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--refresh-metrics-interval", "fast"), "expected a duration like 50ms or 2s"),
        (("--grpc-port", "70000"), "expected a port in 0..65535"),
        (("--endpoint-unhealthy-after", "-1"), "expected an integer >= 0"),
        (("--endpoint-unhealthy-on-refused", "maybe"), "expected true or false"),
    ],
)
def test_bad_flags_name_the_problem(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _args(*argv)
    assert message in capsys.readouterr().err


def test_exactly_one_endpoint_source() -> None:
    with pytest.raises(ConfigError, match="exactly one endpoint source") as none:
        Serve(ServeOptions(config=CONFIG))
    assert "got none" in str(none.value)
    with pytest.raises(ConfigError, match=r"\['--endpoint', '--endpoints-file'\]"):
        Serve(ServeOptions(config=CONFIG, endpoints=["127.0.0.1:1"], endpoints_file="x.yaml"))


def test_bad_endpoint_names_its_index() -> None:
    with pytest.raises(ConfigError) as info:
        Serve(ServeOptions(config=CONFIG, endpoints=["a=127.0.0.1:1", "b=nohost"]))
    assert info.value.path == "endpoints[1]"


class _FakeCustomApi:
    def __init__(self, pools: dict[str, dict[str, Any]]) -> None:
        self.pools = pools
        self.calls: list[tuple[str, str, str, str, str]] = []

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        self.calls.append((group, version, namespace, plural, name))
        if group not in self.pools:
            raise LookupError(f"404 {group}")
        return self.pools[group]


def test_inference_pool_lookup_tries_v1_then_v1alpha2() -> None:
    pytest.importorskip("kubernetes")
    legacy = {"spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000}}
    api = _FakeCustomApi({"inference.networking.x-k8s.io": legacy})
    discovery = inference_pool_discovery("prod/pool", custom_api=api, api=object())
    assert api.calls == [
        ("inference.networking.k8s.io", "v1", "prod", "inferencepools", "pool"),
        ("inference.networking.x-k8s.io", "v1alpha2", "prod", "inferencepools", "pool"),
    ]
    assert discovery.namespace == "prod"
    assert discovery.selector == {"app": "vllm"}
    assert discovery.target_ports == [8000]


@pytest.mark.parametrize("ref", ["pool", "/pool", "ns/", "a/b/c"])
def test_inference_pool_reference_must_be_namespace_slash_name(ref: str) -> None:
    with pytest.raises(ConfigError, match="expected NAMESPACE/NAME"):
        inference_pool_discovery(ref, custom_api=_FakeCustomApi({}))


def test_inference_pool_not_found_names_each_group() -> None:
    pytest.importorskip("kubernetes")
    with pytest.raises(ConfigError, match="InferencePool not found") as info:
        inference_pool_discovery("ns/p", custom_api=_FakeCustomApi({}))
    assert "inference.networking.k8s.io: LookupError" in str(info.value)
    assert "inference.networking.x-k8s.io: LookupError" in str(info.value)


def _serve(**kwargs: Any) -> Serve:
    return Serve(
        ServeOptions(
            config=CONFIG,
            endpoints=["a=127.0.0.1:1", "b=127.0.0.1:2", "c=127.0.0.1:3"],
            host="127.0.0.1",
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            endpoint_unhealthy_after=0,  # the ports are closed: keep them candidates
            seed=1,
            **kwargs,
        )
    )


def test_ext_proc_destination_is_the_pick_alone_by_default() -> None:
    body = b'{"model": "m", "prompt": "hi"}'
    headers = {":path": "/v1/completions"}
    alone = _serve()
    listed = _serve(ext_proc_fallbacks=True)

    async def run() -> tuple[str, str]:
        await alone.start()
        await listed.start()
        try:
            decision: Any = alone.director.handle_request(headers, body)
            assert len(decision.destinations) == 2  # the Director keeps the fallback
            decision.tracker.finish()
            from tests.e2e._extproc_client import Client

            answers = []
            for serve in (alone, listed):
                with Client(f"127.0.0.1:{serve.extproc.port}") as client:
                    stream = await asyncio.to_thread(client.stream)
                    answer = await asyncio.to_thread(stream.request, headers, body)
                    answers.append(answer)
                    await asyncio.to_thread(stream.cancel)
            url = f"http://127.0.0.1:{alone.metrics_port}/metrics"
            metrics = await asyncio.to_thread(httpx.get, url, timeout=5)
            assert "inference_extension_active_requests" in metrics.text
            return answers[0].destination, answers[1].destination
        finally:
            await alone.stop()
            await listed.stop()

    one, two = asyncio.run(run())
    assert "," not in one
    assert len(two.split(",")) == 2
    assert alone.describe().startswith("serve: ext_proc 127.0.0.1:")


PRECISE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    kvEventsConfig: {{topicFilter: "kv@", discoverPods: false, zmqEndpoint: "tcp://127.0.0.1:{port}"}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: max-score-picker
"""


def test_precise_producer_subscribes_at_start() -> None:
    pytest.importorskip("zmq")
    from tests.e2e._helpers import free_port

    serve = Serve(
        ServeOptions(
            config=PRECISE.format(port=free_port()),
            endpoints=["a=127.0.0.1:1"],
            host="127.0.0.1",
            grpc_port=0,
            grpc_health_port=None,
            metrics_port=None,
            endpoint_unhealthy_after=0,
        )
    )
    (plugin,) = [
        p for p in serve.scheduler.plugins.values() if type(p).type == "precise-prefix-cache-scorer"
    ]

    async def run() -> bool:
        await serve.start()
        try:
            return plugin._subscriber is not None  # opened before any request
        finally:
            await serve.stop()

    assert asyncio.run(run()) is True
    assert plugin._subscriber is None  # stop() closed it
