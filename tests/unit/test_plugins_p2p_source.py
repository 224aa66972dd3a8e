"""``p2p-source-producer`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/dataproducer/p2psource/producer.go``;
``docs/plugins/p2p-source-producer.md``)."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework.contracts import (
    PREFIX_CACHE_MATCH_INFO,
    PrefixCacheMatchInfo,
    prefix_info_key,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import (
    CycleState,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from inference_sched.params import parse_params
from inference_sched.plugins.p2p_source import (
    HEADER_KV_CACHE_SOURCE,
    KV_CACHE_SOURCE,
    KVCacheSource,
    P2PSourceParams,
    P2PSourceProducer,
    fnv32a,
    spread_fraction,
)
from inference_sched.state.table import EndpointTable
from inference_sched.testing import check_plugin, make_table

pytestmark = pytest.mark.unit

PATH = "plugins[0].parameters"


def _producer(**raw: Any) -> tuple[P2PSourceProducer, EndpointTable]:
    # rows 0..3: waiting 0, 0, 1, 3
    table = make_table(4, waiting=[0, 0, 1, 3])
    params = parse_params(P2PSourceParams, raw, PATH)
    return P2PSourceProducer("p2p", params, PluginHandle(table)), table


def _info(blocks: list[float], block_size: int = 16) -> PrefixCacheMatchInfo:
    return PrefixCacheMatchInfo(np.asarray(blocks, dtype=np.float64), 8, block_size)


def _produce(
    producer: P2PSourceProducer,
    table: EndpointTable,
    request_id: str,
    info: PrefixCacheMatchInfo | None,
    key: str = PREFIX_CACHE_MATCH_INFO,
) -> CycleState:
    cycle = CycleState(np.random.default_rng(0))
    if info is not None:
        cycle.write(key, info)
    request = Request.create("m", request_id=request_id)
    producer.prepare_request_data(cycle, request, table, table.candidates())
    return cycle


def _result(
    table: EndpointTable,
    primary: int,
    prefill: int | None = None,
    headers: dict[str, str] | None = None,
) -> SchedulingResult:
    def run(row: int) -> ProfileRunResult:
        return ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))

    results: dict[str, ProfileRunResult | None] = {"decode": run(primary)}
    if prefill is not None:
        results["prefill"] = run(prefill)
    return SchedulingResult(results, "decode", {} if headers is None else headers)


# ====================================================================== helpers
@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)],
    ids=["empty", "a", "foobar"],
)
def test_fnv32a_matches_go(data: bytes, expected: int) -> None:
    assert fnv32a(data) == expected


def test_spread_fraction() -> None:
    assert spread_fraction("a") == 0xE40C292C / 2**32
    assert 0.0 <= spread_fraction("req-0") < 1.0


# ====================================================================== params
def test_defaults_and_references() -> None:
    p = parse_params(P2PSourceParams, None, PATH)
    assert (p.prefix_match_info_producer_name, p.min_cached_token_delta) == ("", 1)
    assert p.prefill_profile_name == "prefill"
    assert p.producer_references() == {}
    named = parse_params(P2PSourceParams, {"prefixMatchInfoProducerName": "pp"}, PATH)
    assert named.producer_references() == {
        "prefixMatchInfoProducerName": ("pp", PREFIX_CACHE_MATCH_INFO)
    }


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"minCachedTokenDelta": 0}, "minCachedTokenDelta"),
        ({"minCachedTokenDelta": 1.5}, "minCachedTokenDelta"),
        ({"prefillProfileName": 3}, "prefillProfileName"),
        ({"prefixMatchInfoProducerName": None}, "prefixMatchInfoProducerName"),
    ],
    ids=lambda v: str(v),
)
def test_bad_parameters_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(P2PSourceParams, raw, PATH)
    assert info.value.path == f"{PATH}.{key}"


def test_empty_prefill_profile_means_prefill() -> None:
    producer, _ = _producer(prefillProfileName="")
    assert producer.prefill_profile == "prefill"
    assert producer.stability == "alpha"


# ====================================================================== produce
# blocks [0, 4, 5, 5] x 16 tokens: cached [0, 64, 80, 80]; max 80; rows 1..3 are within a
# block (64 + 16 >= 80); weights 1/(1+waiting) = 1, 0.5, 0.25 (sum 1.75), walked in row
# order: [0, 1) -> row 1, [1, 1.5) -> row 2, [1.5, 1.75) -> row 3.
BLOCKS: list[float] = [0, 4, 5, 5]


@pytest.mark.parametrize(
    ("request_id", "row", "cached"),
    [("req-10", 1, 64), ("req-0", 2, 80), ("req-4", 3, 80)],
    ids=["first-band", "second-band", "third-band"],
)
def test_weighted_choice_by_request_id(request_id: str, row: int, cached: int) -> None:
    producer, table = _producer()
    # the draw points (spread_fraction x 1.75): req-10 0.032, req-0 1.491, req-4 1.518
    assert spread_fraction("req-10") * 1.75 < 1.0
    assert 1.0 <= spread_fraction("req-0") * 1.75 < 1.5 <= spread_fraction("req-4") * 1.75
    cycle = _produce(producer, table, request_id, _info(BLOCKS))
    source = cycle.read("KVCacheSource/p2p")
    assert isinstance(source, KVCacheSource)
    assert (source.host_port, source.cached_tokens) == (f"10.0.0.{row}:8000", cached)
    assert cycle.read(KV_CACHE_SOURCE) is source


def test_band_excludes_endpoints_more_than_a_block_behind() -> None:
    producer, table = _producer()
    # cached [0, 48, 80, 0]: 48 + 16 < 80, so only row 2 qualifies whatever the draw
    for rid in ("req-0", "req-4", "req-10"):
        source = _produce(producer, table, rid, _info([0, 3, 5, 0])).read("KVCacheSource/p2p")
        assert source.host_port == "10.0.0.2:8000"


@pytest.mark.parametrize(
    "info",
    [None, _info([0, 0, 0, 0]), PrefixCacheMatchInfo(np.zeros(4), 0, 16)],
    ids=["no-match", "nothing-cached", "no-blocks"],
)
def test_no_source(info: PrefixCacheMatchInfo | None) -> None:
    producer, table = _producer()
    source = _produce(producer, table, "r", info).read("KVCacheSource/p2p")
    assert isinstance(source, KVCacheSource)
    assert source.host_port is None


def test_named_producer_key_read_first() -> None:
    producer, table = _producer(prefixMatchInfoProducerName="pp")
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(PREFIX_CACHE_MATCH_INFO, _info([0, 0, 0, 9]))
    cycle.write(prefix_info_key("pp"), _info([0, 0, 9, 0]))
    producer.prepare_request_data(
        cycle, Request.create("m", request_id="r"), table, table.candidates()
    )
    assert cycle.read("KVCacheSource/p2p").host_port == "10.0.0.2:8000"


# ====================================================================== pre-request
def _chosen(producer: P2PSourceProducer, table: EndpointTable, blocks: list[float]) -> CycleState:
    return _produce(producer, table, "req-0", _info(blocks))


def test_header_set_when_source_out_caches_the_primary() -> None:
    producer, table = _producer()
    cycle = _chosen(producer, table, [1, 0, 5, 0])  # source row 2 (80 tokens)
    result = _result(table, primary=0, headers={HEADER_KV_CACHE_SOURCE: "1.2.3.4:1"})
    producer.pre_request(cycle, Request.create("m", request_id="req-0"), result)
    assert result.request_headers == {HEADER_KV_CACHE_SOURCE: "10.0.0.2:8000"}
    assert producer.num_headers_set == 1


def test_prefill_pick_computes_the_prefix() -> None:
    producer, table = _producer()
    cycle = _chosen(producer, table, [0, 0, 5, 0])
    # the prefill pick is the source itself: no header (and the client's is removed)
    result = _result(table, primary=0, prefill=2, headers={HEADER_KV_CACHE_SOURCE: "x"})
    producer.pre_request(cycle, Request.create("m", request_id="req-0"), result)
    assert result.request_headers == {}


def test_renamed_prefill_profile() -> None:
    producer, table = _producer(prefillProfileName="pf")
    cycle = _chosen(producer, table, [0, 0, 5, 0])
    run = ProfileRunResult((2,), (table.endpoint_at(2),), (1.0,))
    primary = ProfileRunResult((0,), (table.endpoint_at(0),), (1.0,))
    headers: dict[str, str] = {}
    result = SchedulingResult({"decode": primary, "pf": run}, "decode", headers)
    producer.pre_request(cycle, Request.create("m", request_id="req-0"), result)
    assert headers == {}  # the "pf" pick is the source


@pytest.mark.parametrize(
    ("delta", "expected"),
    [(16, {HEADER_KV_CACHE_SOURCE: "10.0.0.2:8000"}), (17, {})],
    ids=["delta-reached", "delta-missed"],
)
def test_min_cached_token_delta(delta: int, expected: dict[str, str]) -> None:
    producer, table = _producer(minCachedTokenDelta=delta)
    # source row 2 holds 80 tokens; the primary (row 1) holds 64: delta 16
    cycle = _chosen(producer, table, [0, 4, 5, 0])
    cycle.write("KVCacheSource/p2p", KVCacheSource("10.0.0.2:8000", 80, _info([0, 4, 5, 0])))
    result = _result(table, primary=1)
    producer.pre_request(cycle, Request.create("m", request_id="req-0"), result)
    assert dict(result.request_headers) == expected


def test_no_source_only_removes_the_header() -> None:
    producer, table = _producer()
    cycle = _chosen(producer, table, [0, 0, 0, 0])
    result = _result(table, primary=0, headers={HEADER_KV_CACHE_SOURCE: "spoofed"})
    producer.pre_request(cycle, Request.create("m", request_id="req-0"), result)
    assert result.request_headers == {}


def test_read_only_headers_are_left_alone() -> None:
    producer, table = _producer()
    cycle = _chosen(producer, table, [0, 0, 5, 0])
    result = SchedulingResult(
        {"default": ProfileRunResult((0,), (table.endpoint_at(0),), (1.0,))},
        "default",
        types.MappingProxyType({}),
    )
    producer.pre_request(cycle, Request.create("m", request_id="req-0"), result)  # no raise
    assert dict(result.request_headers) == {}


def test_conformance_and_isolation() -> None:
    report = check_plugin("p2p-source-producer")
    assert any(c.startswith("isolation: with pre_request()") for c in report.checked)
