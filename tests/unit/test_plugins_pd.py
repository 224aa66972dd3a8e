"""P/D and data parallelism (llm-d A.5, H.7): deciders with exact values, the disagg
handler's stages and headers, the data-parallel handler, and P/D in the simulator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParameterError, SchedulingError
from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    PrefixCacheMatchInfo,
    TokenizedRequest,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    ROLE_LABEL,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
)
from inference_sched.params import parse_params
from inference_sched.plugins.pd import (
    DATA_PARALLEL_HEADER,
    ENCODER_HEADER,
    PREFILLER_HEADER,
    AlwaysDisaggMultimodalDecider,
    DisaggParams,
    PrefixBasedPDDecider,
    input_tokens,
)
from inference_sched.state.table import EndpointTable

pytestmark = pytest.mark.unit

NC, PT = "nonCachedTokens", "promptTokens"


def _decider(threshold: int) -> PrefixBasedPDDecider:
    params = parse_params(PrefixBasedPDDecider.Params, {"nonCachedTokens": threshold}, "p")
    return PrefixBasedPDDecider("d", params, PluginHandle(EndpointTable()))


def _decode(row: int) -> ProfileRunResult:
    return ProfileRunResult(
        rows=(row,), endpoints=(Endpoint("x", "10.0.0.1", 8000),), scores=(1.0,)
    )


def _cycle(matched: list[float] | None, block: int = 16) -> CycleState:
    cycle = CycleState(np.random.default_rng(0))
    if matched is not None:
        info = PrefixCacheMatchInfo(np.asarray(matched, dtype=np.float64), 20, block)
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
    return cycle


@pytest.mark.parametrize(
    ("threshold", "tokens", "matched", "row", "expected"),
    [
        (100, 320, [10.0, 0.0], 0, True),  # 320 - 160 = 160 >= 100
        (100, 320, [15.0, 0.0], 0, False),  # 320 - 240 = 80
        (100, 320, [15.0, 0.0], 1, True),  # nothing cached on row 1
        (100, 80, [0.0, 0.0], 0, False),  # the prompt alone is under the threshold
        (0, 5000, [0.0, 0.0], 0, False),  # 0 disables disaggregation
        (100, 320, None, 0, False),  # no prefix match in the cycle: no (llm-d)
        (100, 320, [12.5, 0.0], 0, True),  # CPU-tier weights: 320 - 200 = 120
    ],
)
def test_prefix_based_decider_counts_real_uncached_tokens(
    threshold: int, tokens: int, matched: list[float] | None, row: int, expected: bool
) -> None:
    request = Request.create("m", prompt="x", token_ids=np.arange(tokens))
    assert _decider(threshold).decide(_cycle(matched), request, _decode(row)) is expected


def _decider_with(raw: dict[str, Any]) -> PrefixBasedPDDecider:
    params = parse_params(PrefixBasedPDDecider.Params, raw, "plugins[0].parameters")
    return PrefixBasedPDDecider("d", params, PluginHandle(EndpointTable()))


def _tokenized(cycle: CycleState, *lengths: int) -> CycleState:
    prompts = tuple(np.arange(n, dtype=np.uint32) for n in lengths)
    cycle.write(TOKENIZED_PROMPT, TokenizedRequest(prompts))
    return cycle


@pytest.mark.parametrize(
    ("raw", "tokens", "matched", "expected"),
    [
        # promptTokens 0: no minimum; 320 - 10 * 16 = 160 >= 100
        pytest.param({NC: 100}, 320, 10.0, True, id="no-minimum"),
        # input 320 < promptTokens 400: no, however little is cached
        pytest.param({NC: 100, PT: 400}, 320, 0.0, False, id="under-prompt-minimum"),
        pytest.param({NC: 100, PT: 320}, 320, 0.0, True, id="at-prompt-minimum"),
        # 320 - 14 * 16 = 96 < 100
        pytest.param({NC: 100, PT: 320}, 320, 14.0, False, id="minimum-but-cached"),
        pytest.param({NC: 100, PT: 50}, 99, 0.0, False, id="under-non-cached"),
        pytest.param({NC: 100, PT: 50}, 100, 0.0, True, id="at-non-cached"),
        # nonCachedTokens 0 disables the decider, whatever promptTokens says
        pytest.param({NC: 0, PT: 10}, 5000, 0.0, False, id="disabled"),
        # exactly at the threshold: 356 - 16 * 16 = 100 >= 100
        pytest.param({NC: 100}, 356, 16.0, True, id="uncached-equal"),
        pytest.param({NC: 100}, 355, 16.0, False, id="uncached-one-short"),
    ],
)  # fmt: skip
def test_prefix_based_decider_rule(
    raw: dict[str, Any], tokens: int, matched: float, expected: bool
) -> None:
    cycle = _tokenized(_cycle([matched]), tokens)
    assert _decider_with(raw).decide(cycle, Request.create("m", prompt="p"), _decode(0)) is expected


def test_prefix_based_decider_counts_every_prompt() -> None:
    # TokenizedRequest.token_count(): 150 + 170 = 320 over two prompts; 320 - 160 = 160
    cycle = _tokenized(_cycle([10.0]), 150, 170)
    assert _decider(160).decide(cycle, Request.create("m", prompt="p"), _decode(0))
    assert not _decider(161).decide(cycle, Request.create("m", prompt="p"), _decode(0))


def test_prefix_based_decider_prefers_the_tokenized_request() -> None:
    # The cycle's TokenizedRequest (64 tokens) wins over the request's own ids (320).
    request = Request.create("m", prompt="p", token_ids=np.arange(320))
    assert not _decider(100).decide(_tokenized(_cycle([0.0]), 64), request, _decode(0))
    assert _decider(100).decide(_cycle([0.0]), request, _decode(0))  # fallback: 320 ids


def test_prefix_based_decider_without_token_counts_never_disaggregates() -> None:
    # llm-d-router: TokenCount() is 0 without a TokenizedRequest (no chars / 4 estimate).
    prompt = "y" * 4000
    request = Request.create("m", prompt=prompt, body={"prompt": prompt})
    assert not _decider(1).decide(_cycle([0.0]), request, _decode(0))
    assert input_tokens(_cycle(None), request) == 0


def test_prefix_based_decider_params() -> None:
    params = parse_params(PrefixBasedPDDecider.Params, None, "p")
    assert (params.non_cached_tokens, params.prompt_tokens) == (0, 0)
    assert PrefixBasedPDDecider.stability == "beta"
    assert PrefixBasedPDDecider.consumes == frozenset({PREFIX_CACHE_MATCH_INFO})
    with pytest.raises(
        ParameterError,
        match=r"^plugins\[0\]\.parameters\.promptTokens: expected int >= 0, got -1 \(int\)$",
    ):
        _decider_with({"promptTokens": -1})
    with pytest.raises(
        ParameterError,
        match=r"^plugins\[0\]\.parameters\.nonCachedTokens: expected int, got True \(bool\)$",
    ):
        _decider_with({"nonCachedTokens": True})
    with pytest.raises(
        ParameterError, match=r"unknown key 'promptToken' \(did you mean 'promptTokens'\?\)"
    ):
        _decider_with({"promptToken": 5})


def test_multimodal_decider() -> None:
    decider = AlwaysDisaggMultimodalDecider("mm", None, PluginHandle(EndpointTable()))
    image = {"type": "image_url", "image_url": {"url": "data:..."}}
    with_image = Request.create("m", body={"messages": [{"role": "user", "content": [image]}]})
    text_only = Request.create("m", body={"messages": [{"role": "user", "content": "hi"}]})
    assert decider.decide(_cycle(None), with_image, _decode(0))
    assert not decider.decide(_cycle(None), text_only, _decode(0))
    assert not decider.decide(_cycle(None), Request.create("m", prompt="p"), _decode(0))


def _pool() -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, role in enumerate(["prefill", "prefill", "decode", "decode"]):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels={ROLE_LABEL: role}))
    table.update_metrics(np.arange(4), waiting=[3, 0, 2, 0])
    return table


def _pd_config(decider: str) -> str:
    return f"""
plugins:
- type: disagg-profile-handler
  parameters: {{deciders: {{prefill: pd-decider}}}}
- {{type: {decider}, name: pd-decider}}
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: decode
  plugins:
  - {{pluginRef: decode-filter}}
  - {{pluginRef: queue-scorer}}
  - {{pluginRef: max-score-picker}}
- name: prefill
  plugins:
  - {{pluginRef: prefill-filter}}
  - {{pluginRef: queue-scorer}}
  - {{pluginRef: max-score-picker}}
"""


def test_disagg_handler_runs_decode_then_prefill_and_sets_the_sidecar_header() -> None:
    scheduler = Scheduler.from_config(_pd_config("always-disagg-pd-decider"), _pool())
    request = Request.create("m", prompt="p", headers={PREFILLER_HEADER: "6.6.6.6:1"})
    result = scheduler.schedule(request)
    assert result.primary_profile_name == "decode"
    assert result.endpoint.name == "e3"  # the idle decode endpoint
    assert result.picked("prefill") is not None
    assert result.picked("prefill").name == "e1"  # type: ignore[union-attr]
    assert dict(result.request_headers) == {PREFILLER_HEADER: "10.0.0.1:8000"}
    assert result.dropped_request_headers == (PREFILLER_HEADER, ENCODER_HEADER)
    assert result.destination_header == "10.0.0.3:8000"


def test_disagg_handler_skips_prefill_when_the_decider_says_no() -> None:
    config = _pd_config("prefix-based-pd-decider").replace(
        "{type: prefix-based-pd-decider, name: pd-decider}",
        "{type: prefix-based-pd-decider, name: pd-decider, parameters: {nonCachedTokens: 9999}}",
    )
    scheduler = Scheduler.from_config(config, _pool())
    result = scheduler.schedule(Request.create("m", prompt="p" * 64))
    assert set(result.profile_results) == {"decode"}
    assert dict(result.request_headers) == {}
    assert result.dropped_request_headers == (PREFILLER_HEADER, ENCODER_HEADER)


def test_disagg_handler_fails_without_decode_workers_or_with_an_unknown_decider() -> None:
    table = EndpointTable()
    table.add(Endpoint("p", "10.0.0.9", 8000, labels={ROLE_LABEL: "prefill"}))
    scheduler = Scheduler.from_config(_pd_config("always-disagg-pd-decider"), table)
    with pytest.raises(SchedulingError, match="profile 'decode': filter 'decode-filter'"):
        scheduler.schedule(Request.create("m", prompt="p"))
    broken = _pd_config("always-disagg-pd-decider").replace(
        "deciders: {prefill: pd-decider}", "deciders: {prefill: nobody}"
    )
    scheduler = Scheduler.from_config(broken, _pool())
    with pytest.raises(SchedulingError, match=r"deciders\.prefill: no plugin named 'nobody'"):
        scheduler.schedule(Request.create("m", prompt="p"))


def test_data_parallel_handler_routes_to_the_primary_port_with_the_rank() -> None:
    table = EndpointTable()
    for rank in range(4):
        table.add(Endpoint(f"pod-rank-{rank}", "10.0.0.5", 8000 + rank))
    table.update_metrics(np.arange(4), waiting=[5, 5, 0, 5])
    config = """
plugins:
- type: data-parallel-profile-handler
  parameters: {primaryPort: 9000}
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""
    result = Scheduler.from_config(config, table).schedule(Request.create("m", prompt="p"))
    assert result.destination_header == "10.0.0.5:9000"
    assert dict(result.request_headers) == {DATA_PARALLEL_HEADER: "10.0.0.5:8002"}
    assert result.endpoint.name == "pod-rank-2"


def test_pd_in_the_simulator_from_a_config_file() -> None:
    from inference_sched.framework.config import load_config
    from inference_sched.sim.fleet import FleetConfig, simulate
    from inference_sched.sim.workloads import load_workload

    workload = load_workload("shared-prefix", duration_s=2.0, rate=10.0, seed=4)
    config = load_config(_pd_config("always-disagg-pd-decider"))
    run = simulate(
        workload, config, label="pd", fleet=FleetConfig(num_servers=6, prefill_servers=2)
    )
    n = len(workload.requests)
    assert run.prefill_endpoint is not None
    assert (run.prefill_endpoint >= 0).all()
    assert (run.prefill_endpoint < 2).all()  # prefilled on the prefill pool
    assert (run.endpoint >= 2).all()  # decoded on the decode pool
    assert int((run.status == 0).sum()) == n  # every request completed
    done: Any = run.first_token_s - run.arrival_s
    assert float(np.min(done)) > 0.001  # at least the transfer's fixed cost


def test_the_prefill_stage_sees_the_decode_pick_as_its_peer() -> None:
    # e0 (busy prefill) shares e3's rack; e1 (idle prefill) is elsewhere. The topology
    # scorer (rack: 0.2, weight 10) can only outweigh the queue (weight 1) if the handler
    # wrote the peer.
    table = EndpointTable(clock=lambda: 100.0)
    racks = ["r1", "r2", "r9", "r1"]
    for i, role in enumerate(["prefill", "prefill", "decode", "decode"]):
        labels = {ROLE_LABEL: role, "topology.kubernetes.io/rack": racks[i]}
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    table.update_metrics(np.arange(4), waiting=[3, 0, 2, 0])
    config = (
        _pd_config("always-disagg-pd-decider").replace(
            "- type: max-score-picker\n",
            "- type: max-score-picker\n- type: topology-affinity-scorer\n",
            1,
        )
        + "  - {pluginRef: topology-affinity-scorer, weight: 10}\n"
    )
    result = Scheduler.from_config(config, table).schedule(Request.create("m", prompt="p"))
    assert result.endpoint.name == "e3"
    assert result.picked("prefill").name == "e0"  # type: ignore[union-attr]


# ------------------------------------------------------ disagg-profile-handler legacy keys
_P = "plugins[2].parameters"
_DEFAULTS = {"decode": "decode", "prefill": "prefill", "encode": "encode"}


def _disagg(raw: dict[str, Any] | None, warned: list[str] | None = None) -> DisaggParams:
    return parse_params(DisaggParams, raw, _P, warn=None if warned is None else warned.append)


@pytest.mark.parametrize(
    ("raw", "profiles", "deciders"),
    [
        pytest.param(None, _DEFAULTS, {}, id="defaults"),
        pytest.param({"decodeProfile": "d2"}, _DEFAULTS | {"decode": "d2"}, {}, id="decodeProfile"),
        pytest.param(
            {"prefillProfile": "p2", "encodeProfile": "e2"},
            _DEFAULTS | {"prefill": "p2", "encode": "e2"}, {}, id="prefill-and-encodeProfile",
        ),
        pytest.param(
            {"deciderPluginName": "pd"}, _DEFAULTS, {"prefill": ("pd", "deciderPluginName")},
            id="deciderPluginName",
        ),
        pytest.param(
            {"prefillDeciderPluginName": "pd", "encodeDeciderPluginName": "mm"}, _DEFAULTS,
            {"prefill": ("pd", "prefillDeciderPluginName"),
             "encode": ("mm", "encodeDeciderPluginName")},
            id="prefill-and-encodeDeciderPluginName",
        ),
        pytest.param(
            {"profiles": {"prefill": "p3"}, "deciders": {"encode": "mm"}},
            _DEFAULTS | {"prefill": "p3"}, {"encode": ("mm", "deciders.encode")}, id="nested",
        ),
        # llm-d-router: an empty nested mapping is "not given", so the flat key is no mix
        pytest.param(
            {"profiles": {}, "deciders": {}, "deciderPluginName": "pd"}, _DEFAULTS,
            {"prefill": ("pd", "deciderPluginName")}, id="empty-nested-and-flat",
        ),
    ],
)  # fmt: skip
def test_disagg_flat_keys_map_to_profiles_and_deciders(
    raw: dict[str, Any] | None, profiles: dict[str, str], deciders: dict[str, Any]
) -> None:
    params = _disagg(raw)
    assert params.stage_profiles() == profiles
    assert params.stage_deciders() == deciders


def test_disagg_flat_keys_warn_with_their_replacement() -> None:
    warned: list[str] = []
    _disagg(
        {
            "decodeProfile": "d",
            "prefillProfile": "p",
            "encodeProfile": "e",
            "prefillDeciderPluginName": "pd",
            "encodeDeciderPluginName": "mm",
        },
        warned,
    )
    old = "(llm-d-router's old flat key)"
    assert warned == [
        f"{_P}.decodeProfile: deprecated: use profiles.decode {old}",
        f"{_P}.prefillProfile: deprecated: use profiles.prefill {old}",
        f"{_P}.encodeProfile: deprecated: use profiles.encode {old}",
        f"{_P}.prefillDeciderPluginName: deprecated: use deciders.prefill {old}",
        f"{_P}.encodeDeciderPluginName: deprecated: use deciders.encode {old}",
    ]
    nested: list[str] = []
    _disagg({"profiles": {"decode": "d"}, "deciders": {"prefill": "pd"}}, nested)
    assert nested == []


_MIX = "the deprecated flat keys and profiles/deciders do not mix"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"deciderPluginName": "a", "deciders": {"prefill": "b"}},
            f"{_P}.deciderPluginName: expected not with deciders.prefill ({_MIX}; write "
            "deciders.prefill), got 'a' (str)",
            id="same-stage-decider",
        ),
        pytest.param(
            {"decodeProfile": "x", "profiles": {"decode": "y"}},
            f"{_P}.decodeProfile: expected not with profiles.decode ({_MIX}; write "
            "profiles.decode), got 'x' (str)",
            id="same-stage-profile",
        ),
        # llm-d-router rejects any mix, not only one stage given twice
        pytest.param(
            {"prefillProfile": "x", "deciders": {"prefill": "pd"}},
            f"{_P}.prefillProfile: expected not with deciders.prefill ({_MIX}; write "
            "profiles.prefill), got 'x' (str)",
            id="other-stage",
        ),
        pytest.param(
            {"deciderPluginName": "a", "prefillDeciderPluginName": "b"},
            f"{_P}.deciderPluginName: expected not with prefillDeciderPluginName (both name "
            "deciders.prefill; use one), got 'a' (str)",
            id="two-flat-prefill-deciders",
        ),
        pytest.param(
            {"deciderPluginName": ""},
            f"{_P}.deciderPluginName: expected a non-empty str, got '' (str)",
            id="empty",
        ),
        pytest.param(
            {"encodeProfile": 3},
            f"{_P}.encodeProfile: expected a non-empty str, got 3 (int)",
            id="not-a-str",
        ),
        # pd-profile-handler's other keys are not disagg-profile-handler's (as llm-d-router's
        # strict decoding)
        pytest.param(
            {"deciderPluginName": "pd", "primaryPort": 8080},
            f"{_P}: unknown key 'primaryPort'",
            id="pd-profile-handler-only-key",
        ),
    ],
)  # fmt: skip
def test_disagg_flat_key_errors_name_the_keys(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match="^" + re.escape(message)):
        _disagg(raw)


_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8)
_FLAT_NESTED = {
    "decodeProfile": ("profiles", "decode"),
    "prefillProfile": ("profiles", "prefill"),
    "encodeProfile": ("profiles", "encode"),
    "prefillDeciderPluginName": ("deciders", "prefill"),
    "deciderPluginName": ("deciders", "prefill"),
    "encodeDeciderPluginName": ("deciders", "encode"),
}


@given(
    flat=st.dictionaries(st.sampled_from(sorted(_FLAT_NESTED)), _NAMES).filter(
        lambda d: not {"deciderPluginName", "prefillDeciderPluginName"} <= d.keys()
    )
)
def test_disagg_flat_form_equals_its_nested_form(flat: dict[str, str]) -> None:
    nested: dict[str, dict[str, str]] = {}
    for key, value in flat.items():
        outer, stage = _FLAT_NESTED[key]
        nested.setdefault(outer, {})[stage] = value
    old, new = _disagg(flat), _disagg(nested)
    assert old.stage_profiles() == new.stage_profiles()
    assert {s: ref for s, (ref, _) in old.stage_deciders().items()} == {
        s: ref for s, (ref, _) in new.stage_deciders().items()
    }


def test_the_wide_ep_guide_loads_with_its_flat_decider_key() -> None:
    from inference_sched.framework.config import load_config

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "wide-ep.yaml"
    config = load_config(path.read_text(encoding="utf-8"))
    assert config.warnings == (
        "plugins[2].parameters.deciderPluginName: deprecated: use deciders.prefill "
        "(llm-d-router's old flat key)",
    )


def test_disagg_handler_with_flat_keys_schedules_as_the_nested_form() -> None:
    flat = _pd_config("always-disagg-pd-decider").replace(
        "parameters: {deciders: {prefill: pd-decider}}",
        "parameters: {deciderPluginName: pd-decider, decodeProfile: decode}",
    )
    assert "deciderPluginName" in flat
    result = Scheduler.from_config(flat, _pool()).schedule(Request.create("m", prompt="p"))
    assert result.endpoint.name == "e3"
    assert result.picked("prefill").name == "e1"  # type: ignore[union-attr]
    assert dict(result.request_headers) == {PREFILLER_HEADER: "10.0.0.1:8000"}
    broken = flat.replace("deciderPluginName: pd-decider", "deciderPluginName: nobody")
    scheduler = Scheduler.from_config(broken, _pool())
    with pytest.raises(SchedulingError, match=r"deciderPluginName: no plugin named 'nobody'"):
        scheduler.schedule(Request.create("m", prompt="p"))


def test_disagg_handler_names_a_plugin_that_is_not_a_decider() -> None:
    broken = _pd_config("always-disagg-pd-decider").replace(
        "deciders: {prefill: pd-decider}", "deciders: {prefill: queue-scorer}"
    )
    scheduler = Scheduler.from_config(broken, _pool())
    with pytest.raises(
        SchedulingError, match=r"deciders\.prefill: 'queue-scorer' is not a decider plugin"
    ):
        scheduler.schedule(Request.create("m", prompt="p"))
