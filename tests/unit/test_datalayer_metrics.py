"""Engine mappings, selectors and Prometheus text extraction (exact values and errors)."""

from __future__ import annotations

import re

import pytest

from inference_sched.datalayer.engines import (
    BUILTIN_ENGINES,
    EngineSpec,
    Selector,
    engine_from_config,
    parse_engine_configs,
    parse_selector,
    resolve_engines,
)
from inference_sched.datalayer.parse import MAX_LINE_CHARS, EndpointSample, extract
from inference_sched.errors import ConfigError, DataError
from tests.fixtures.metrics_pages import vllm_page

BOTH = pytest.mark.parametrize("full", [False, True], ids=["fast", "full"])


# ====================================================================== selectors
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm:num_requests_waiting", Selector("vllm:num_requests_waiting")),
        ("  m  ", Selector("m")),
        ("m{a=b}", Selector("m", (("a", "b"),))),
        ('m{a="b"}', Selector("m", (("a", "b"),))),
        ('m{ b = "x,y}" , a=1 }', Selector("m", (("a", "1"), ("b", "x,y}")))),
        ('m{a="q\\"uote\\\\"}', Selector("m", (("a", 'q"uote\\'),))),
        ('m{a=""}', Selector("m", (("a", ""),))),
        ("m{a=b,}", Selector("m", (("a", "b"),))),
        ("m{}", Selector("m")),
        ("m {a=b}", Selector("m", (("a", "b"),))),
    ],
)
def test_parse_selector(text: str, expected: Selector) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_selector_disables_the_field(text: str) -> None:
    assert parse_selector(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("9m", "expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) first"),
        ("m x", "unexpected 'x' after the metric name (labels go in {...})"),
        ("m{a!=b}", "expected '=' after label 'a', got '!=' (only = is supported)"),
        ("m{a=~b}", "expected '=' after label 'a', got '=~' (only = is supported)"),
        ("m{a=b", "expected ',' or '}' after a label value"),
        ('m{a="b}', "unterminated quoted label value"),
        ("m{a=b,a=c}", "label 'a' is given twice"),
        ("m{a=b} x", "unexpected text after '}': 'x'"),
        ("m{1=b}", "expected a label name at '1=b}'"),
        ("m{a=}", 'expected a label value (quote an empty one: "")'),
    ],
)
def test_bad_selector_names_itself_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_selector(text, path="engineConfigs[0].kvUsageSpec")
    assert str(info.value) == (
        f"engineConfigs[0].kvUsageSpec: bad metric selector {text!r}: {problem}"
    )
    assert info.value.value == text


def test_selector_str_round_trips() -> None:
    selector = Selector("m", (("a", 'x"y'), ("b", "z")))
    assert str(selector) == 'm{a="x\\"y",b="z"}'
    assert parse_selector(str(selector)) == selector


def test_selector_matches_absent_label_as_empty() -> None:
    assert parse_selector('m{a=""}').matches({})  # type: ignore[union-attr]
    assert parse_selector("m{a=b}").matches({"a": "b", "c": "d"})  # type: ignore[union-attr]
    assert not parse_selector("m{a=b}").matches({"a": "c"})  # type: ignore[union-attr]


# ====================================================================== engines
def test_builtin_engine_table_is_gie_7_2() -> None:
    table = {name: spec.to_config() for name, spec in BUILTIN_ENGINES.items()}
    assert table == {
        "vllm": {
            "name": "vllm",
            "queuedRequestsSpec": "vllm:num_requests_waiting",
            "runningRequestsSpec": "vllm:num_requests_running",
            "kvUsageSpec": "vllm:kv_cache_usage_perc",
            "kvUsageFallbackSpec": "vllm:gpu_cache_usage_perc",
            "loraSpec": "vllm:lora_requests_info",
            "cacheInfoSpec": "vllm:cache_config_info",
            "cacheInfoBlockSizeLabel": "block_size",
            "cacheInfoNumBlocksLabel": "num_gpu_blocks",
            "blockSizeSpec": "",
            "numBlocksSpec": "",
        },
        "sglang": {
            "name": "sglang",
            "queuedRequestsSpec": "sglang:num_queue_reqs",
            "runningRequestsSpec": "sglang:num_running_reqs",
            "kvUsageSpec": "sglang:token_usage",
            "kvUsageFallbackSpec": "",
            "loraSpec": "",
            "cacheInfoSpec": "sglang:cache_config_info",
            "cacheInfoBlockSizeLabel": "page_size",
            "cacheInfoNumBlocksLabel": "num_pages",
            "blockSizeSpec": "",
            "numBlocksSpec": "",
        },
        "trtllm-serve": {
            "name": "trtllm-serve",
            "queuedRequestsSpec": "trtllm_num_requests_waiting",
            "runningRequestsSpec": "trtllm_num_requests_running",
            "kvUsageSpec": "trtllm_kv_cache_utilization",
            "kvUsageFallbackSpec": "",
            "loraSpec": "",
            "cacheInfoSpec": "",
            "cacheInfoBlockSizeLabel": "block_size",
            "cacheInfoNumBlocksLabel": "num_gpu_blocks",
            "blockSizeSpec": "trtllm_kv_cache_tokens_per_block",
            "numBlocksSpec": "trtllm_kv_cache_max_blocks",
        },
        "triton-tensorrt-llm": {
            "name": "triton-tensorrt-llm",
            "queuedRequestsSpec": 'nv_trt_llm_request_metrics{request_type="waiting"}',
            "runningRequestsSpec": 'nv_trt_llm_request_metrics{request_type="scheduled"}',
            "kvUsageSpec": 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}',
            "kvUsageFallbackSpec": "",
            "loraSpec": "",
            "cacheInfoSpec": "",
            "cacheInfoBlockSizeLabel": "block_size",
            "cacheInfoNumBlocksLabel": "num_gpu_blocks",
            "blockSizeSpec": 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"}',
            "numBlocksSpec": 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"}',
        },
        "triton": {  # llm-d-router: Triton without an LLM backend, no KV metrics
            "name": "triton",
            "queuedRequestsSpec": "nv_inference_pending_request_count",
            "runningRequestsSpec": "nv_inference_exec_count",
            "kvUsageSpec": "",
            "kvUsageFallbackSpec": "",
            "loraSpec": "",
            "cacheInfoSpec": "",
            "cacheInfoBlockSizeLabel": "block_size",
            "cacheInfoNumBlocksLabel": "num_gpu_blocks",
            "blockSizeSpec": "",
            "numBlocksSpec": "",
        },
    }


def test_engine_config_round_trips() -> None:
    for spec in BUILTIN_ENGINES.values():
        assert engine_from_config(spec.to_config()) == spec


def test_engine_config_replaces_the_builtin_entirely() -> None:
    specs = parse_engine_configs([{"name": "vllm", "queuedRequestsSpec": "my_queue"}])
    engines = resolve_engines(specs)
    assert engines["vllm"] == EngineSpec("vllm", waiting="my_queue")
    assert engines["vllm"].kv_usage is None  # left out = disabled, as in GIE
    assert engines["sglang"] is BUILTIN_ENGINES["sglang"]
    assert list(engines) == ["vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm", "triton"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("x", "engineConfigs: engineConfigs must be a list, got 'x' (str)"),
        (
            [{"queuedRequestsSpec": "q"}],
            "engineConfigs[0].name: an engine config needs a non-empty name",
        ),
        (
            [{"name": "default"}],
            "engineConfigs[0].name: engine name 'default' is reserved "
            "(GIE uses it for the default engine)",
        ),
        (
            [{"name": "a", "kvUsageSpec": "kv{"}],
            "engineConfigs[0].kvUsageSpec: bad metric selector 'kv{': expected a label name at ''",
        ),
        (
            [{"name": "a", "loraSpec": 1}],
            "engineConfigs[0].loraSpec: loraSpec must be a string, got 1 (int)",
        ),
        (
            [{"name": "a", "cacheInfoBlockSizeLabel": "page size"}],
            "engineConfigs[0].cacheInfoBlockSizeLabel: "
            "cacheInfoBlockSizeLabel must be a label name, got 'page size'",
        ),
        ([{"name": "a"}, {"name": "a"}], "engineConfigs[1].name: engine 'a' is configured twice"),
        (
            [3],
            "engineConfigs[0]: an engine config is a mapping with keys name, queuedRequestsSpec, "
            "runningRequestsSpec, kvUsageSpec, kvUsageFallbackSpec, loraSpec, cacheInfoSpec, "
            "cacheInfoBlockSizeLabel, cacheInfoNumBlocksLabel, blockSizeSpec, numBlocksSpec, "
            "customMetrics",
        ),
    ],
)
def test_bad_engine_configs(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_engine_configs(raw)
    assert str(info.value) == message


def test_unknown_engine_config_key_suggests() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^engineConfigs\[0\]: unknown key 'kvUsageSpc' \(did you mean 'kvUsageSpec'\?\)",
    ):
        parse_engine_configs([{"name": "a", "kvUsageSpc": "x"}])


# ====================================================================== vLLM
VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.4375
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters=" a, ,b ",waiting_lora_adapters="c,"} 2e9
vllm:lora_requests_info{max_lora="3",running_lora_adapters="older",waiting_lora_adapters=""} 1.6e9
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="27000"} 1.0
"""


@BOTH
def test_vllm_exact_values(full: bool) -> None:
    assert extract(VLLM, "vllm", endpoint="e0", full=full) == EndpointSample(
        waiting=7.0,
        running=3.0,
        kv_usage_frac=0.4375,
        block_size=16,
        num_gpu_blocks=27000,
        max_loras=4,
        running_adapters=frozenset({"a", "b"}),
        waiting_adapters=frozenset({"c"}),
    )


@BOTH
def test_vllm_older_kv_name_is_the_fallback(full: bool) -> None:
    page = VLLM.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    sample = extract(page, "vllm", endpoint="e0", full=full)
    assert sample.kv_usage_frac == 0.4375
    assert sample.missing == ()


@BOTH
def test_new_kv_name_wins_over_the_older_one(full: bool) -> None:
    page = VLLM + "vllm:gpu_cache_usage_perc 0.9\n"
    assert extract(page, "vllm", endpoint="e0", full=full).kv_usage_frac == 0.4375


@BOTH
def test_missing_families_are_none_and_listed(full: bool) -> None:
    page = "vllm:num_requests_waiting 2\nother_metric 5\n"
    assert extract(page, "vllm", endpoint="e0", full=full) == EndpointSample(
        waiting=2.0,
        missing=(
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:lora_requests_info",
            "vllm:cache_config_info",
        ),
    )


@BOTH
def test_empty_page_is_an_empty_sample(full: bool) -> None:
    sample = extract("", "vllm", endpoint="e0", full=full)
    assert sample.is_empty
    assert len(sample.missing) == 5


@BOTH
def test_newest_series_wins_by_timestamp(full: bool) -> None:
    page = (
        'vllm:num_requests_waiting{model_name="a"} 1 1000\n'
        'vllm:num_requests_waiting{model_name="b"} 2 3000\n'
        'vllm:num_requests_waiting{model_name="c"} 3 2000\n'
        'vllm:num_requests_running{model_name="a"} 5\n'  # no timestamp = 0; first on ties
        'vllm:num_requests_running{model_name="b"} 6\n'
    )
    sample = extract(page, "vllm", endpoint="e0", full=full)
    assert (sample.waiting, sample.running) == (2.0, 5.0)


@BOTH
def test_lora_info_without_max_lora_label_keeps_it_none(full: bool) -> None:
    page = 'vllm:lora_requests_info{running_lora_adapters="x"} 1\n'
    sample = extract(page, "vllm", endpoint="e0", full=full)
    assert sample.running_adapters == frozenset({"x"})
    assert sample.waiting_adapters == frozenset()
    assert sample.max_loras is None


def test_first_line_and_crlf_and_counters() -> None:
    page = "vllm:num_requests_waiting 4\r\n# TYPE x counter\r\nx_total 1\r\n"
    assert extract(page, "vllm", endpoint="e0").waiting == 4.0


def test_realistic_page_fast_equals_full() -> None:
    page = vllm_page(waiting=5, running=9, kv_usage=0.8125, running_adapters=("x", "y"))
    fast = extract(page, "vllm", endpoint="e0")
    assert fast == extract(page, "vllm", endpoint="e0", full=True)
    assert fast == EndpointSample(
        waiting=5.0,
        running=9.0,
        kv_usage_frac=0.8125,
        block_size=16,
        num_gpu_blocks=27000,
        max_loras=4,
        running_adapters=frozenset({"x", "y"}),
        waiting_adapters=frozenset(),
    )
    assert 30_000 < len(page) < 60_000


def test_family_moving_on_the_next_page_is_found() -> None:
    # The fast path starts searching near the family's previous offset.
    page = vllm_page()
    assert extract(page, "vllm", endpoint="mover").waiting == 1.0
    moved = "\n".join(f"filler_{i} {i}" for i in range(2000)) + "\n" + vllm_page(waiting=8)
    assert extract(moved, "vllm", endpoint="mover").waiting == 8.0
    assert extract(vllm_page(waiting=6), "vllm", endpoint="mover").waiting == 6.0


# ====================================================================== other engines
SGLANG = """\
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 11.0
sglang:num_running_reqs{model_name="m"} 12.0
sglang:token_usage{model_name="m"} 0.5
sglang:cache_config_info{model_name="m",page_size="64",num_pages="1024"} 1.0
"""

TRTLLM = """\
trtllm_num_requests_waiting 4
trtllm_num_requests_running 8
trtllm_kv_cache_utilization 0.125
trtllm_kv_cache_tokens_per_block 32
trtllm_kv_cache_max_blocks 5000
"""

TRITON = """\
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="m",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="m",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="m",request_type="waiting",version="1"} 2
nv_trt_llm_request_metrics{model="m",request_type="max",version="1"} 512
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="m",version="1"} 0.75
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="m",version="1"} 128
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="m",version="1"} 2048
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="m",version="1"} 1536
"""


@BOTH
@pytest.mark.parametrize(
    ("engine", "page", "expected"),
    [
        ("sglang", SGLANG, EndpointSample(11.0, 12.0, 0.5, 64, 1024)),
        ("trtllm-serve", TRTLLM, EndpointSample(4.0, 8.0, 0.125, 32, 5000)),
        ("triton-tensorrt-llm", TRITON, EndpointSample(2.0, 6.0, 0.75, 128, 2048)),
    ],
)
def test_other_engines_exact_values(
    engine: str, page: str, expected: EndpointSample, full: bool
) -> None:
    assert extract(page, engine, endpoint="e0", full=full) == expected


def test_gauge_wins_over_cache_info_label() -> None:
    spec = EngineSpec("x", cache_info="info", block_size="bs")
    page = 'info{block_size="16",num_gpu_blocks="10"} 1\nbs 32\n'
    sample = extract(page, spec, endpoint="e0")
    assert (sample.block_size, sample.num_gpu_blocks) == (32, 10)


# ====================================================================== bad input
@BOTH
@pytest.mark.parametrize(
    ("page", "message"),
    [
        (
            '# ok\nvllm:num_requests_waiting{a="1" 3\n',
            "e7:2: malformed sample 'vllm:num_requests_waiting{a=\"1\" 3': ",
        ),
        (
            "vllm:num_requests_waiting 1\nvllm:num_requests_running 2 x\n",
            "e7:2: malformed sample 'vllm:num_requests_running 2 x': bad value or timestamp '2 x'",
        ),
        (
            "vllm:num_requests_waiting -1\n",
            "e7:1: vllm:num_requests_waiting: expected a count >= 0, got -1.0",
        ),
        (
            "vllm:num_requests_running NaN\n",
            "e7:1: vllm:num_requests_running: expected a count >= 0, got nan",
        ),
        (
            "vllm:num_requests_running +Inf\n",
            "e7:1: vllm:num_requests_running: expected a count >= 0, got inf",
        ),
        (
            "x 1\nvllm:kv_cache_usage_perc 1.5\n",
            "e7:2: vllm:kv_cache_usage_perc: expected a fraction in [0, 1], got 1.5",
        ),
        (
            "vllm:kv_cache_usage_perc -0.1\n",
            "e7:1: vllm:kv_cache_usage_perc: expected a fraction in [0, 1], got -0.1",
        ),
        (
            "vllm:kv_cache_usage_perc NaN\n",
            "e7:1: vllm:kv_cache_usage_perc: expected a fraction in [0, 1], got nan",
        ),
        (
            "vllm:gpu_cache_usage_perc 2\n",
            "e7:1: vllm:gpu_cache_usage_perc: expected a fraction in [0, 1], got 2.0",
        ),
        (
            'vllm:cache_config_info{block_size="16.5",num_gpu_blocks="10"} 1\n',
            "e7:1: vllm:cache_config_info: label block_size must be an integer >= 1, got '16.5'",
        ),
        (
            'vllm:cache_config_info{block_size="0"} 1\n',
            "e7:1: vllm:cache_config_info: label block_size must be an integer >= 1, got '0'",
        ),
        (
            'vllm:cache_config_info{block_size="16",num_gpu_blocks="-3"} 1\n',
            "e7:1: vllm:cache_config_info: label num_gpu_blocks must be an integer >= 0, got '-3'",
        ),
        (
            'vllm:lora_requests_info{max_lora="two"} 1\n',
            "e7:1: vllm:lora_requests_info: label max_lora must be an integer >= 0, got 'two'",
        ),
        (
            'vllm:lora_requests_info{max_lora="1"} NaN\n',
            "e7:1: vllm:lora_requests_info: expected a timestamp value, got nan",
        ),
        (
            'vllm:num_requests_waiting{a="1"} 1\nvllm:num_requests_waiting{a="1"} 2\n',
            "e7:2: duplicate series (first on line 1)",
        ),
        (
            'vllm:num_requests_waiting{a="1",b="2"} 1\nvllm:num_requests_waiting{b="2",a="1"} 2\n',
            "e7:2: duplicate series (first on line 1)",
        ),
    ],
)
def test_bad_input_names_endpoint_and_line(page: str, message: str, full: bool) -> None:
    with pytest.raises(DataError) as info:
        extract(page, "vllm", endpoint="e7", full=full)
    if full and "malformed" in message:  # the whole-page parse fails first, same line
        assert str(info.value).startswith(message.split(": malformed")[0] + ": malformed")
    else:
        assert str(info.value).startswith(message)
    assert info.value.source == "e7"
    assert info.value.line == int(message.split(":")[1])


@BOTH
def test_non_integer_block_size_gauge(full: bool) -> None:
    with pytest.raises(DataError) as info:
        extract("trtllm_kv_cache_tokens_per_block 16.5\n", "trtllm-serve", endpoint="t", full=full)
    assert str(info.value) == (
        "t:1: trtllm_kv_cache_tokens_per_block: expected an integer >= 1, got 16.5"
    )


@BOTH
def test_huge_label_value_is_capped(full: bool) -> None:
    page = "x 1\n" + 'vllm:num_requests_waiting{a="' + "v" * MAX_LINE_CHARS + '"} 1\n'
    with pytest.raises(DataError) as info:
        extract(page, "vllm", endpoint="e1", full=full)
    assert str(info.value) == f"e1:2: line of {MAX_LINE_CHARS + 33} characters; the limit is 65536"


def test_full_mode_rejects_garbage_anywhere_fast_mode_ignores_it() -> None:
    page = "vllm:num_requests_waiting 3\nthis is not { a metric\n"
    assert extract(page, "vllm", endpoint="e2").waiting == 3.0
    with pytest.raises(DataError, match=r"^e2:2: malformed exposition text: "):
        extract(page, "vllm", endpoint="e2", full=True)


def test_full_mode_rejects_duplicates_in_unread_families() -> None:
    page = 'other{a="1"} 1\nother{a="1"} 2\n'
    with pytest.raises(DataError, match=re.escape('e3:2: duplicate series other{a="1"}')):
        extract(page, "vllm", endpoint="e3", full=True)
    assert extract(page, "vllm", endpoint="e3").is_empty
