"""``mm-embeddings-cache-producer`` and ``mm-embeddings-cache-scorer`` (llm-d-router,
``pkg/epp/framework/plugins/requestcontrol/dataproducer/multimodal/``;
``docs/plugins/mm-embeddings-cache-producer.md``,
``docs/plugins/mm-embeddings-cache-scorer.md``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cachetools import LRUCache
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.contracts import (
    MM_ENCODER_CACHE_MATCH_INFO,
    TOKENIZED_PROMPT,
    EncoderCacheMatchInfo,
    MultiModalFeature,
    TokenizedRequest,
)
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    CycleState,
    ProfileRunResult,
    Request,
    SchedulingResult,
)
from inference_sched.params import parse_params
from inference_sched.plugins.mm_cache import (
    MmEmbeddingsCacheProducer,
    MmEmbeddingsCacheProducerParams,
    MmEmbeddingsCacheScorer,
    MmEmbeddingsCacheScorerParams,
    lru_capacity,
    request_items,
)
from inference_sched.state.table import EndpointTable
from inference_sched.testing import check_plugin, make_table

pytestmark = pytest.mark.unit

PATH = "plugins[0].parameters"
REQUEST = Request.create("m", request_id="r")


class _Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _producer(
    table: EndpointTable | None = None, clock: _Clock | None = None, **raw: Any
) -> tuple[MmEmbeddingsCacheProducer, EndpointTable]:
    table = table if table is not None else make_table(3)
    params = parse_params(MmEmbeddingsCacheProducerParams, raw, PATH)
    handle = PluginHandle(table, clock=clock or _Clock())
    return MmEmbeddingsCacheProducer("mm", params, handle), table


def _cycle(*hashes: str, modality: str = "image") -> CycleState:
    cycle = CycleState(np.random.default_rng(0))
    features = tuple(MultiModalFeature(modality, h) for h in hashes)
    cycle.write(TOKENIZED_PROMPT, TokenizedRequest((np.arange(4, dtype=np.uint32),), features))
    return cycle


def _result(table: EndpointTable, rows: tuple[int, ...]) -> SchedulingResult:
    run = ProfileRunResult(rows, tuple(table.endpoint_at(r) for r in rows), (1.0,) * len(rows))
    return SchedulingResult({"default": run}, "default")


def _route(
    producer: MmEmbeddingsCacheProducer, table: EndpointTable, rows: tuple[int, ...], *hashes: str
) -> EncoderCacheMatchInfo:
    """One full cycle: produce, then PreRequest with ``rows`` as the primary targets."""
    cycle = _cycle(*hashes)
    producer.prepare_request_data(cycle, REQUEST, table, table.candidates())
    info = cycle.read(MM_ENCODER_CACHE_MATCH_INFO)
    producer.pre_request(cycle, REQUEST, _result(table, rows))
    assert isinstance(info, EncoderCacheMatchInfo)
    return info


# ====================================================================== producer
@pytest.mark.parametrize(
    ("mb", "capacity"),
    [(4096, 2048), (0, 2048), (-5, 2048), (1, 1), (3, 1), (10, 5)],
    ids=["default", "zero", "negative", "one", "odd", "ten"],
)
def test_lru_capacity(mb: int, capacity: int) -> None:
    assert lru_capacity(mb) == capacity
    assert _producer(cacheSizeInMBPerServer=mb)[0].capacity == capacity


def test_bad_cache_size_names_the_key() -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(MmEmbeddingsCacheProducerParams, {"cacheSizeInMBPerServer": "4Gi"}, PATH)
    assert info.value.path == f"{PATH}.cacheSizeInMBPerServer"
    with pytest.raises(ParameterError, match="unknown key 'cacheSize'"):
        parse_params(MmEmbeddingsCacheProducerParams, {"cacheSize": 1}, PATH)


def test_is_the_default_producer_of_its_key() -> None:
    assert registry.default_producer_for(MM_ENCODER_CACHE_MATCH_INFO) == (
        "mm-embeddings-cache-producer"
    )
    assert MmEmbeddingsCacheProducer.stability == "beta"


def test_items_are_unique_non_empty_hashes_in_order() -> None:
    cycle = _cycle("b", "", "a", "b")
    assert request_items(cycle) == {"b": "image", "a": "image"}
    assert request_items(CycleState(np.random.default_rng(0))) == {}


def test_no_multimodal_item_writes_an_empty_match() -> None:
    producer, table = _producer()
    cycle = CycleState(np.random.default_rng(0))
    producer.prepare_request_data(cycle, REQUEST, table, table.candidates())
    info = cycle.read(MM_ENCODER_CACHE_MATCH_INFO)
    assert isinstance(info, EncoderCacheMatchInfo)
    assert info.request_items == 0
    assert info.matched.tolist()[:3] == [0.0, 0.0, 0.0]
    assert cycle.read("MultiModalEncoderCacheMatchInfo/mm") is info
    assert producer.queries == {}


def test_pre_request_adds_items_to_every_primary_target() -> None:
    producer, table = _producer()
    first = _route(producer, table, (0, 2), "x", "y")  # pick e0, fallback e2
    assert first.request_items == 2
    assert first.matched.tolist()[:3] == [0.0, 0.0, 0.0]
    assert producer.cached_items("e0") == ["x", "y"]
    assert producer.cached_items("e2") == ["x", "y"]
    assert producer.cached_items("e1") == []
    second = _route(producer, table, (1,), "y", "z", "w")
    assert second.request_items == 3
    assert second.matched.tolist()[:3] == [1.0, 0.0, 1.0]


def test_lru_eviction_order() -> None:
    producer, table = _producer(cacheSizeInMBPerServer=4)  # 2 items per endpoint
    _route(producer, table, (0,), "a", "b")
    # matching "a" leaves recency alone; routing it again makes it most recent
    _route(producer, table, (0,), "a")
    _route(producer, table, (0,), "c")
    assert producer.cached_items("e0") == ["a", "c"]  # "b" was the least recent, evicted


def test_matching_does_not_touch_recency() -> None:
    producer, table = _producer(cacheSizeInMBPerServer=4)
    _route(producer, table, (0,), "a", "b")
    cycle = _cycle("a")
    producer.prepare_request_data(cycle, REQUEST, table, table.candidates())  # no PreRequest
    _route(producer, table, (0,), "c")
    assert producer.cached_items("e0") == ["b", "c"]  # "a" stayed the least recent


def test_counters() -> None:
    producer, table = _producer()
    _route(producer, table, (0,), "a")
    cycle = _cycle("a", "v", modality="video")
    producer.prepare_request_data(cycle, REQUEST, table, table.candidates())
    assert producer.queries == {"image": 1, "video": 2}
    assert producer.hits == {("e0", "video"): 1}
    # ratios: first request 0, 0, 0 (3 candidates); second 1/2, 0, 0
    assert producer.hit_ratio_count == 6
    assert producer.hit_ratio_sum == pytest.approx(0.5)


def test_table_removal_drops_the_endpoint() -> None:
    producer, table = _producer()
    _route(producer, table, (0, 1), "a")
    assert producer.tracked_endpoints() == ["e0", "e1"]
    table.remove("e0")
    assert producer.tracked_endpoints() == ["e1"]


def test_removed_pick_is_not_resurrected() -> None:
    producer, table = _producer()
    cycle = _cycle("a")
    producer.prepare_request_data(cycle, REQUEST, table, table.candidates())
    result = _result(table, (0,))
    table.remove("e0")
    producer.pre_request(cycle, REQUEST, result)
    assert producer.tracked_endpoints() == []


def test_stale_endpoints_dropped_every_two_minutes() -> None:
    clock = _Clock()
    producer, table = _producer(clock=clock)
    _route(producer, table, (0,), "a")
    producer._caches["ghost"] = LRUCache(2)  # an endpoint the table never had
    clock.now_s += 119.0
    _route(producer, table, (0,), "a")
    assert "ghost" in producer.tracked_endpoints()
    clock.now_s += 1.0  # 120 s since construction
    _route(producer, table, (0,), "a")
    assert producer.tracked_endpoints() == ["e0"]


def test_remove_stale_keeps_everything_when_the_table_is_empty() -> None:
    producer, _ = _producer(table=make_table(0))
    producer._caches["ghost"] = LRUCache(2)
    assert producer.remove_stale() == 0
    assert producer.tracked_endpoints() == ["ghost"]


@settings(max_examples=60, deadline=None)
@given(
    routes=st.lists(
        st.tuples(
            st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
            st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4),
        ),
        max_size=12,
    ),
    mb=st.integers(2, 8),
)
def test_caches_match_a_reference_lru(routes: list[tuple[list[int], list[str]]], mb: int) -> None:
    producer, table = _producer(cacheSizeInMBPerServer=mb)
    capacity = mb // 2
    model: dict[str, list[str]] = {}
    for rows, hashes in routes:
        unique = list(dict.fromkeys(hashes))
        info = _route(producer, table, tuple(rows), *hashes)
        for row in range(3):
            held = model.get(f"e{row}", [])
            assert info.matched[row] == sum(h in held for h in unique)
        for row in rows:
            held = model.setdefault(f"e{row}", [])
            for h in unique:
                if h in held:
                    held.remove(h)
                held.append(h)
            del held[: max(len(held) - capacity, 0)]
    for name, held in model.items():
        assert producer.cached_items(name) == sorted(held)


def test_producer_conformance() -> None:
    report = check_plugin("mm-embeddings-cache-producer")
    assert any(c.startswith("isolation: with pre_request()") for c in report.checked)


# ====================================================================== scorer
def _scorer(**raw: Any) -> MmEmbeddingsCacheScorer:
    params = parse_params(MmEmbeddingsCacheScorerParams, raw, PATH)
    return MmEmbeddingsCacheScorer("mms", params, PluginHandle(make_table(1)))


def _score(scorer: MmEmbeddingsCacheScorer, cycle: CycleState, rows: list[int]) -> list[float]:
    out = np.full(len(rows), np.nan, dtype=np.float32)
    candidates = np.asarray(rows, dtype=np.int32)
    scorer.score(cycle, REQUEST, make_table(4), candidates, out)
    return out.tolist()


def _match(matched: list[float], items: int) -> EncoderCacheMatchInfo:
    return EncoderCacheMatchInfo(np.asarray(matched, dtype=np.float64), items)


def test_score_is_matched_over_request_items() -> None:
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(MM_ENCODER_CACHE_MATCH_INFO, _match([0, 1, 2, 4], 4))
    assert _score(_scorer(), cycle, [0, 1, 2, 3]) == [0.0, 0.25, 0.5, 1.0]
    assert _score(_scorer(), cycle, [3, 1]) == [1.0, 0.25]


@pytest.mark.parametrize(
    "value",
    [None, _match([1, 1, 1, 1], 0), "not a match"],
    ids=["missing", "no-items", "wrong-type"],
)
def test_score_zero_without_a_usable_match(value: Any) -> None:
    cycle = CycleState(np.random.default_rng(0))
    if value is not None:
        cycle.write(MM_ENCODER_CACHE_MATCH_INFO, value)
    assert _score(_scorer(), cycle, [0, 1, 2]) == [0.0, 0.0, 0.0]


def test_score_reads_the_named_producer() -> None:
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(MM_ENCODER_CACHE_MATCH_INFO, _match([2, 0], 2))
    cycle.write(f"{MM_ENCODER_CACHE_MATCH_INFO}/mine", _match([0, 2], 2))
    assert _score(_scorer(producerName="mine"), cycle, [0, 1]) == [0.0, 1.0]
    assert _score(_scorer(producerName="absent"), cycle, [0, 1]) == [1.0, 0.0]


def test_score_rows_beyond_the_match_read_zero() -> None:
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(MM_ENCODER_CACHE_MATCH_INFO, _match([2], 2))
    assert _score(_scorer(), cycle, [0, 3]) == [1.0, 0.0]


def test_scorer_params() -> None:
    assert parse_params(MmEmbeddingsCacheScorerParams, None, PATH).producer_references() == {}
    named = parse_params(MmEmbeddingsCacheScorerParams, {"producerName": "mm"}, PATH)
    assert named.producer_references() == {"producerName": ("mm", MM_ENCODER_CACHE_MATCH_INFO)}
    with pytest.raises(ParameterError) as info:
        parse_params(MmEmbeddingsCacheScorerParams, {"producerName": 1}, PATH)
    assert info.value.path == f"{PATH}.producerName"
    assert MmEmbeddingsCacheScorer.category == "Affinity"
    assert MmEmbeddingsCacheScorer.stability == "beta"


def test_scorer_conformance() -> None:
    check_plugin("mm-embeddings-cache-scorer")


def test_producer_and_scorer_in_a_scheduler() -> None:
    text = """
plugins:
- type: mm-embeddings-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: mm-embeddings-cache-scorer
  - pluginRef: max-score-picker
"""
    table = make_table(3)
    scheduler = Scheduler.from_config(text, table)
    producer = scheduler.plugins["mm-embeddings-cache-producer"]  # created by default
    assert isinstance(producer, MmEmbeddingsCacheProducer)
    result = scheduler.schedule(Request.create("m", prompt="hello"))
    assert result.endpoint.name in {"e0", "e1", "e2"}
