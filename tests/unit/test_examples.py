"""docs/examples/: one EndpointPickerConfig per llm-d guide, and every config in the specs.

Each example is the guide's config as the guide has it (docs/examples/README.md). Three
kinds of test:

* it loads (``load_config``) with exactly the warnings listed here;
* it schedules requests over a table whose endpoints carry the labels the config needs
  (roles, topology), with exact expectations;
* the fleet simulator runs it on a slice of a shipped Mooncake trace and serves every
  request (skipped when ``../shared/data`` is absent).

Where our loader still rejects a guide's config, the load test is an explicit strict xfail
naming the error; the scheduling and simulation tests then run an *adapted* copy whose
edits are spelled out in ``ADAPTED`` (strings replaced in the file's text), so the rest of
the config is still exercised. When the loader accepts the guide's text, the xfail turns
into a failure (xfail_strict): drop the marker and the adaptation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from inference_sched import EndpointTable, Request, Scheduler
from inference_sched.errors import ConfigError
from inference_sched.framework.config import load_config
from inference_sched.state.endpoint import ROLE_LABEL, Endpoint

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"
SPECS = REPO.parent / "shared" / "specs"
TRACE = REPO.parent / "shared" / "data" / "traces"
TRACE_FILE = TRACE / "mooncake_fast25_conversation_trace.first40min.normalized.jsonl.gz"

GIE_DEPRECATED = (
    "apiVersion: 'inference.networking.x-k8s.io/v1alpha1' is deprecated; "
    "write 'llm-d.ai/v1alpha1' (the same schema)"
)

NAMES = (
    "optimized-baseline",
    "precise-prefix-cache",
    "pd-disaggregation",
    "pd-topology",
    "wide-ep",
    "multimodal-epd",
    "slo-aware",
    "flow-control",
)

WARNINGS: Mapping[str, tuple[str, ...]] = {
    "optimized-baseline": (GIE_DEPRECATED,),
    "precise-prefix-cache": (
        GIE_DEPRECATED,
        "schedulingProfiles[default].plugins[1]: plugin 'tokenizer' (tokenizer, plugins[0]) "
        "is a data-producer, not a filter, scorer or picker; dropped from the profile (it "
        "runs at its own extension points)",
    ),
    "pd-disaggregation": (),
    "pd-topology": (),
    "wide-ep": (
        "plugins[2].parameters.deciderPluginName: deprecated: use deciders.prefill "
        "(llm-d-router's old flat key)",
    ),
    "multimodal-epd": (),
    "slo-aware": (
        GIE_DEPRECATED,
        "plugins[0]: 'queue-scorer' (queue-scorer) is not used by any profile",
        "plugins[1]: 'kv-cache-utilization-scorer' (kv-cache-utilization-scorer) is not "
        "used by any profile",
        "plugins[2]: 'prefix-cache-scorer' (prefix-cache-scorer) is not used by any profile",
        "schedulingProfiles[default].plugins[0]: plugin 'predicted-latency-producer' "
        "(predicted-latency-producer, plugins[5]) is a data-producer/pre-request/"
        "response-streaming/response-complete, not a filter, scorer or "
        "picker; dropped from the profile (it runs at its own extension points)",
    ),
    "flow-control": (
        "flowControl: the flow-control policy plugins (fcfs-ordering-policy, "
        "global-strict-fairness-policy, static-usage-limit-policy) are not available in "
        "this version; requests are not queued",
    ),
}
"""The warnings each example loads with (for a rejected one: its adapted copy)."""

REJECTED: Mapping[str, str] = {
    "flow-control": (
        "round-robin-fairness-policy and fcfs-ordering-policy are not registered plugin "
        "types yet (flow-control policies: issue 16)"
    ),
}
"""Guides our loader does not accept yet, and why (see the module docstring)."""

ADAPTED: Mapping[str, tuple[tuple[str, str], ...]] = {
    "flow-control": (("- type: round-robin-fairness-policy\n- type: fcfs-ordering-policy\n", ""),),
}
"""Edits (old text, new text) that make a rejected example load, for the other tests."""


def example_text(name: str) -> str:
    """The example's text, adapted when our loader does not accept it yet."""
    text = (EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8")
    for old, new in ADAPTED.get(name, ()):
        assert old in text, f"{name}.yaml: the adaptation no longer applies: {old!r}"
        text = text.replace(old, new)
    return text


def _load_param(name: str) -> object:
    if name in REJECTED:
        return pytest.param(
            name, marks=pytest.mark.xfail(raises=ConfigError, strict=True, reason=REJECTED[name])
        )
    return name


# ---------------------------------------------------------------------------- loading
def test_every_example_file_is_listed_and_in_the_readme() -> None:
    files = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
    assert files == sorted(NAMES)
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"({name}.yaml)" in readme, f"README.md does not link {name}.yaml"


@pytest.mark.parametrize("name", [_load_param(n) for n in NAMES])
def test_example_loads_unchanged(name: str) -> None:
    config = load_config(EXAMPLES / f"{name}.yaml")
    assert config.warnings == WARNINGS[name]


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_example_loads_and_names_the_gap(name: str) -> None:
    """The adapted copy loads; the file as written fails with the error REJECTED names."""
    config = load_config(example_text(name))
    assert config.warnings == WARNINGS[name]
    with pytest.raises(ConfigError):
        load_config(EXAMPLES / f"{name}.yaml")


@pytest.mark.parametrize("name", ["pd-disaggregation", "pd-topology", "flow-control"])
def test_example_loads_with_the_guides_api_version(name: str) -> None:
    text = example_text(name).replace("apiVersion: llm-d.ai/v1alpha1", "apiVersion: llm-d.ai/v1")
    load_config(text)


# ---------------------------------------------------------------------------- scheduling
def _pool(*endpoints: tuple[str, Mapping[str, str]], port: int = 8000) -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, (name, labels) in enumerate(endpoints):
        table.add(Endpoint(name, f"10.0.0.{i + 1}", port, labels=dict(labels)))
    return table


def _metrics(table: EndpointTable, **columns: list[float]) -> None:
    rows = np.arange(len(table), dtype=np.int32)
    arrays: dict[str, Any] = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    table.update_metrics(rows, **arrays)


def _prompt(seed: int, n_chars: int = 4000) -> str:
    return "".join(chr(97 + (seed * 7 + i * 13) % 26) for i in range(n_chars))


def test_optimized_baseline_prefers_the_light_endpoint_then_keeps_the_prefix() -> None:
    table = _pool(("a", {}), ("b", {}), ("c", {}))
    _metrics(table, waiting=[4, 0, 2], kv_usage_frac=[0.6, 0.1, 0.3])
    scheduler = Scheduler.from_config(example_text("optimized-baseline"), table, seed=0)
    first = scheduler.schedule(Request.create("m", prompt=_prompt(1)))
    scheduler.run_deferred()
    assert first.endpoint.name == "b"
    assert sorted(first.profile_results) == ["default"]
    # The same prompt again: b now holds its prefix (prefix x3), while c became as light.
    _metrics(table, waiting=[4, 1, 1], kv_usage_frac=[0.6, 0.2, 0.2])
    again = scheduler.schedule(Request.create("m", prompt=_prompt(1)))
    assert again.endpoint.name == "b"


def test_precise_prefix_cache_keeps_decode_endpoints_and_balances_load() -> None:
    table = _pool(("p", {ROLE_LABEL: "prefill"}), ("d0", {ROLE_LABEL: "decode"}), ("d1", {}))
    _metrics(table, waiting=[0, 3, 1], kv_usage_frac=[0.0, 0.5, 0.2])
    scheduler = Scheduler.from_config(example_text("precise-prefix-cache"), table, seed=0)
    result = scheduler.schedule(Request.create("m", prompt=_prompt(2)))
    # decode-filter drops the prefill-only endpoint; no KV events yet, so load decides.
    assert result.endpoint.name == "d1"


def _pd_pool() -> EndpointTable:
    return _pool(
        ("p0", {ROLE_LABEL: "prefill"}),
        ("p1", {ROLE_LABEL: "prefill"}),
        ("d0", {ROLE_LABEL: "decode"}),
        ("d1", {ROLE_LABEL: "decode"}),
    )


def test_pd_disaggregation_prefills_on_a_prefill_endpoint_and_spreads_decode() -> None:
    table = _pd_pool()
    _metrics(table, waiting=[0, 0, 0, 0])
    scheduler = Scheduler.from_config(example_text("pd-disaggregation"), table, seed=0)
    first = scheduler.schedule(Request.create("m", prompt=_prompt(3)))
    assert first.primary_profile_name == "decode"
    assert sorted(first.profile_results) == ["decode", "prefill"]
    prefill = first.picked("prefill")
    assert prefill is not None
    assert prefill.labels[ROLE_LABEL] == "prefill"
    assert first.endpoint.labels[ROLE_LABEL] == "decode"
    assert dict(first.request_headers) == {"x-prefiller-host-port": prefill.hostport}
    # The first request is in flight: the second decodes on the other decode endpoint
    # (active-request-scorer) and prefills on the other prefill endpoint (token load).
    second = scheduler.schedule(Request.create("m", prompt=_prompt(4)))
    assert second.endpoint.name != first.endpoint.name
    second_prefill = second.picked("prefill")
    assert second_prefill is not None
    assert second_prefill.name != prefill.name


def test_pd_topology_prefills_on_the_decode_endpoints_host() -> None:
    host = "kubernetes.io/hostname"
    table = _pool(
        ("p0", {ROLE_LABEL: "prefill", host: "node-b"}),
        ("p1", {ROLE_LABEL: "prefill", host: "node-a"}),
        ("d0", {ROLE_LABEL: "decode", host: "node-a"}),
        ("d1", {ROLE_LABEL: "decode", host: "node-b"}),
    )
    # d0 is the lighter decode endpoint; p0 is the lighter prefill endpoint, but on the
    # other host than d0, so the topology filter keeps only p1.
    _metrics(table, waiting=[0, 3, 0, 5])
    scheduler = Scheduler.from_config(example_text("pd-topology"), table, seed=0)
    result = scheduler.schedule(Request.create("m", prompt=_prompt(5)))
    assert result.endpoint.name == "d0"
    assert result.picked("prefill") is not None
    assert result.picked("prefill").name == "p1"  # type: ignore[union-attr]
    # A prompt under nonCachedTokens (16) is not disaggregated.
    short = scheduler.schedule(Request.create("m", prompt="hi"))
    assert sorted(short.profile_results) == ["decode"]


def test_wide_ep_places_requests_on_data_parallel_ranks() -> None:
    table = EndpointTable(clock=lambda: 100.0)
    for pod, role, ip in (("pf", "prefill", "10.0.1.1"), ("dc", "decode", "10.0.1.2")):
        for rank in range(8):  # the guide's targetPorts 8000..8007
            labels = {ROLE_LABEL: role}
            table.add(Endpoint(f"{pod}-rank-{rank}", ip, 8000 + rank, labels=labels))
    waiting = [1.0] * 16
    waiting[5] = 0.0  # prefill rank 5 and decode rank 2 are idle
    waiting[8 + 2] = 0.0
    _metrics(table, waiting=waiting)
    scheduler = Scheduler.from_config(example_text("wide-ep"), table, seed=0)
    result = scheduler.schedule(Request.create("m", prompt=_prompt(6)))
    assert result.picked("prefill") is not None
    assert result.picked("prefill").name == "pf-rank-5"  # type: ignore[union-attr]
    assert dict(result.request_headers) == {"x-prefiller-host-port": "10.0.1.1:8005"}
    assert result.endpoint.labels[ROLE_LABEL] == "decode"


def test_multimodal_epd_encodes_only_multimodal_requests() -> None:
    table = _pool(
        ("e0", {ROLE_LABEL: "encode"}),
        ("p0", {ROLE_LABEL: "prefill"}),
        ("d0", {ROLE_LABEL: "decode"}),
    )
    _metrics(table, waiting=[0, 0, 0])
    scheduler = Scheduler.from_config(example_text("multimodal-epd"), table, seed=0)
    text = scheduler.schedule(Request.create("m", prompt=_prompt(7)))
    assert sorted(text.profile_results) == ["decode", "prefill"]
    assert text.endpoint.name == "d0"
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ],
    }
    image = scheduler.schedule(Request.create("m", body=body))
    assert sorted(image.profile_results) == ["decode", "encode", "prefill"]
    assert image.picked("encode") is not None
    assert image.picked("encode").name == "e0"  # type: ignore[union-attr]
    assert image.request_headers["x-encoder-hosts-ports"] == "10.0.0.1:8000"


def test_slo_aware_routes_without_a_trained_predictor() -> None:
    table = _pool(("a", {}), ("b", {}))
    _metrics(table, waiting=[0, 0], kv_usage_frac=[0.1, 0.1])
    scheduler = Scheduler.from_config(example_text("slo-aware"), table, seed=0)
    headers = {"x-llm-d-slo-ttft-ms": "500", "x-llm-d-slo-tpot-ms": "50"}
    result = scheduler.schedule(Request.create("m", prompt=_prompt(8), headers=headers))
    assert sorted(result.profile_results) == ["default"]
    assert result.endpoint.name in {"a", "b"}


def test_flow_control_keeps_the_section_and_schedules_with_the_default_mix() -> None:
    config = load_config(example_text("flow-control"))
    assert config.gate("flowControl")
    assert config.saturation_detector == {"pluginRef": "concurrency-detector"}
    assert config.flow_control is not None
    bands = config.flow_control["priorityBands"]
    assert [band["priority"] for band in bands] == [100, 0, -10]
    table = _pool(("a", {}), ("b", {}))
    _metrics(table, waiting=[3, 0], kv_usage_frac=[0.5, 0.1])
    result = Scheduler.from_config(config, table, seed=0).schedule(
        Request.create("m", prompt=_prompt(9))
    )
    assert result.endpoint.name == "b"


# ---------------------------------------------------------------------------- simulation
SIMULATED: Mapping[str, int] = {
    "optimized-baseline": 0,
    "precise-prefix-cache": 0,
    "pd-disaggregation": 2,
    "pd-topology": 2,
    "wide-ep": 2,
    "multimodal-epd": 2,
    "flow-control": 0,
}
"""Examples the simulator models, with the number of servers labelled prefill (the rest
decode). slo-aware is left out: the simulated requests carry no SLO headers."""

ALWAYS_DISAGGREGATED = frozenset({"pd-disaggregation", "wide-ep", "multimodal-epd"})


@pytest.mark.skipif(not TRACE_FILE.is_file(), reason=f"shared trace data absent: {TRACE_FILE}")
@pytest.mark.parametrize("name", sorted(SIMULATED))
def test_example_serves_every_request_in_the_simulator(name: str) -> None:
    from inference_sched.sim.fleet import FleetConfig, simulate
    from inference_sched.sim.traces import load_trace
    from inference_sched.sim.types import RequestStatus

    config = load_config(example_text(name))
    workload = load_trace(TRACE_FILE, limit=40)
    fleet = FleetConfig(num_servers=4, prefill_servers=SIMULATED[name], seed=0)
    run = simulate(workload, config, label=name, fleet=fleet)
    assert len(run.status) == 40
    assert (run.status == RequestStatus.COMPLETED).all(), np.bincount(run.status)
    if name in ALWAYS_DISAGGREGATED:
        # every request prefilled on one of the two prefill-labelled servers
        prefill = np.asarray(run.prefill_endpoint)
        assert ((prefill >= 0) & (prefill < SIMULATED[name])).all()


# ---------------------------------------------------------------------------- spec examples
_FENCE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.S | re.M)


def _spec_blocks() -> list[object]:
    if not SPECS.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{SPECS} is absent"))]
    params: list[object] = []
    for spec in ("gie.md", "llmd-router.md"):
        text = (SPECS / spec).read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            body = match.group(1)
            line = text.count("\n", 0, match.start()) + 1
            document = yaml.safe_load(body)
            if not isinstance(document, dict):
                continue
            if not (
                {"plugins", "schedulingProfiles"} & document.keys()
                or document.get("kind") == "EndpointPickerConfig"
            ):
                continue
            marks = [
                pytest.mark.xfail(raises=ConfigError, strict=True, reason=reason)
                for (where, marker), reason in SPEC_FAILURES.items()
                if where == spec and marker in body
            ]
            params.append(pytest.param(body, spec, id=f"{spec}:{line}", marks=marks))
    return params


SPEC_FAILURES: Mapping[tuple[str, str], str] = {
    ("gie.md", "parameters: {...}"): (
        "G§3.1 is a schema sketch, not a config: 'parameters: {...}' and "
        "'defaultPriorityBand: {maxBytes, maxRequests, ...}' are placeholders"
    ),
    ("gie.md", "- type: edf-ordering-policy"): (
        "G§15(b): round-robin-fairness-policy and edf-ordering-policy are not registered "
        "plugin types yet (flow-control policies: issue 16)"
    ),
}
"""Spec blocks our loader rejects, keyed by (spec, a line only that block has)."""


@pytest.mark.parametrize(("body", "spec"), _spec_blocks())
def test_spec_config_example_validates_unchanged(body: str, spec: str) -> None:
    load_config(body)


def test_spec_flow_control_example_names_the_missing_policy_types() -> None:
    """G§15(b) fails only for the two policy types issue 16 adds (the exact error)."""
    if not SPECS.is_dir():
        pytest.skip(f"{SPECS} is absent")
    text = (SPECS / "gie.md").read_text(encoding="utf-8")
    body = next(m.group(1) for m in _FENCE.finditer(text) if "edf-ordering-policy" in m.group(1))
    with pytest.raises(ConfigError) as info:  # loads once issue 16 lands: drop both xfails
        load_config(body)
    assert str(info.value) == (
        "2 problems in the EndpointPickerConfig:\n"
        "  plugins[1].type: unknown plugin type 'round-robin-fairness-policy'; run "
        "`inference-sched plugins` to list the registered types\n"
        "  plugins[2].type: unknown plugin type 'edf-ordering-policy'; run "
        "`inference-sched plugins` to list the registered types"
    )
