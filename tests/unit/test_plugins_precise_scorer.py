"""precise-prefix-cache-scorer: llm-d-router's deprecated bundle of a precise producer and
a prefix-cache-scorer bound to it (or to the one declared precise producer)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference_sched.errors import ConfigError, SchedulingError
from inference_sched.framework.config import load_config
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Request
from inference_sched.plugins.precise_prefix import (
    PrecisePrefixCacheProducer,
    PrecisePrefixCacheScorer,
)
from inference_sched.sim.kvcache import BlockStored
from tests.helpers import make_table

pytestmark = pytest.mark.unit

MODEL = "m"
TOKENS = np.arange(1000, 1000 + 96, dtype=np.uint32)  # 6 blocks of 16
_HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
_PARAMS = "{kvEventsConfig: {discoverPods: false}}"
_SCORER = f"- {{name: s, type: precise-prefix-cache-scorer, parameters: {_PARAMS}}}\n"
_PICKER = "- {type: max-score-picker}\n"
_PROFILE = (
    "schedulingProfiles:\n- name: default\n"
    "  plugins: [{pluginRef: s}, {pluginRef: max-score-picker}]\n"
)


def _producer(name: str) -> str:
    return f"- {{name: {name}, type: precise-prefix-cache-producer, parameters: {_PARAMS}}}\n"


def _stored(n: int) -> BlockStored:
    return BlockStored(
        [500 + i for i in range(n)], None, TOKENS[: n * 16].tolist(), 16, None, "GPU"
    )


def _schedule(scheduler: Scheduler) -> tuple[str, float]:
    result = scheduler.schedule(Request.create(MODEL, prompt="x", token_ids=TOKENS))
    return result.primary.endpoints[0].name, float(result.primary.scores[0])


def test_alone_it_is_the_producer_and_the_scorer(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(_HEAD + _SCORER + _PICKER + _PROFILE)
    types = [p.type for p in config.plugins]
    assert "approx-prefix-cache-producer" not in types
    assert "precise-prefix-cache-producer" not in types
    with caplog.at_level(logging.WARNING):
        scheduler = Scheduler.from_config(config, make_table(3))
    assert (
        "plugin 's': type 'precise-prefix-cache-scorer' is deprecated; declare a "
        "'precise-prefix-cache-producer' and a 'prefix-cache-scorer' with "
        "prefixMatchInfoProducerName"
    ) in [r.getMessage() for r in caplog.records]
    bundle = scheduler.plugins["s"]
    assert isinstance(bundle, PrecisePrefixCacheScorer)
    bundle.events_in_process()
    bundle.kv_event("10.0.0.1:8000", _stored(3), MODEL)
    assert bundle.producer_name == "s"
    assert _schedule(scheduler) == ("e1", 0.5)  # 3 of 6 blocks
    assert bundle.index_size() == 3


@pytest.mark.parametrize("producer_first", [True, False], ids=["declared-before", "after"])
def test_with_one_producer_it_scores_that_producers_match(producer_first: bool) -> None:
    plugins = _producer("p") + _SCORER if producer_first else _SCORER + _producer("p")
    config = load_config(_HEAD + plugins + _PICKER + _PROFILE)
    scheduler = Scheduler.from_config(config, make_table(3))
    producer, bundle = scheduler.plugins["p"], scheduler.plugins["s"]
    assert type(producer) is PrecisePrefixCacheProducer
    assert bundle.producer_name == "p"
    producer.events_in_process()
    bundle.events_in_process()
    producer.kv_event("10.0.0.2:8000", _stored(4), MODEL)
    bundle.kv_event("10.0.0.0:8000", _stored(6), MODEL)  # dropped: the bundle is no producer
    assert _schedule(scheduler) == ("e2", pytest.approx(4 / 6))
    assert bundle.index_size() == 0


def test_two_producers_declared_before_are_an_error_at_startup() -> None:
    config = load_config(_HEAD + _producer("p") + _producer("q") + _SCORER + _PICKER + _PROFILE)
    with pytest.raises(ConfigError) as info:
        Scheduler.from_config(config, make_table(3))
    assert info.value.path == "plugins[2]"
    assert str(info.value) == (
        "plugins[2]: plugin 's' (precise-prefix-cache-scorer) failed to start: ValueError: "
        "precise-prefix-cache-scorer 's': 2 precise-prefix-cache-producer plugins ('p', 'q'); "
        "it can bind to one only: use a 'prefix-cache-scorer' with "
        "prefixMatchInfoProducerName instead"
    )


def test_two_producers_declared_after_are_an_error_on_first_use() -> None:
    config = load_config(_HEAD + _SCORER + _producer("p") + _producer("q") + _PICKER + _PROFILE)
    scheduler = Scheduler.from_config(config, make_table(3))
    with pytest.raises(SchedulingError, match=r"2 precise-prefix-cache-producer plugins"):
        _ = scheduler.plugins["s"].producer_name


def test_parameters_are_the_precise_producers() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            _HEAD + "- {name: s, type: precise-prefix-cache-scorer, parameters: "
            "{indexerConfig: {kvBlockIndexConfig: {redisConfig: {address: 'redis://r'}}}}}\n"
            + _PICKER
            + _PROFILE
        )
    assert info.value.path == "plugins[0].parameters.indexerConfig.kvBlockIndexConfig.redisConfig"
    assert PrecisePrefixCacheScorer.Params is PrecisePrefixCacheProducer.Params
