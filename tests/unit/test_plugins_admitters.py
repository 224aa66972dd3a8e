"""probabilistic-admitter (llm-d-router): the saturation formula, the shedding curve, the
seeded draw, who is always admitted, and parameter errors."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import AdmissionDeniedError, ParameterError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.admitters import ProbabilisticAdmitter
from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table

pytestmark = pytest.mark.unit


def _admitter(params: dict[str, Any] | None = None) -> ProbabilisticAdmitter:
    parsed = parse_params(ProbabilisticAdmitter.Params, params, "p")
    return ProbabilisticAdmitter("adm", parsed, PluginHandle(EndpointTable()))


def test_defaults() -> None:
    p = _admitter().params
    assert (p.queue_depth_threshold, p.kv_cache_util_threshold, p.power, p.k) == (
        5,
        0.8,
        5.0,
        300.0,
    )


def test_saturation_is_the_mean_of_per_endpoint_maxima_and_unscraped_count_one() -> None:
    table = make_table(3, waiting=[2, 10, 0], kv_usage_frac=[0.6, 0.4, 0.0])
    adm = _admitter()
    rows = np.arange(3, dtype=np.int32)
    # max(2/5, 0.6/0.8) = 0.75; max(10/5, 0.4/0.8) = 2; max(0, 0) = 0 -> mean 2.75 / 3
    assert adm.pool_saturation(table, rows) == pytest.approx(2.75 / 3)
    assert adm.pool_saturation(table, rows[:1]) == pytest.approx(0.75)
    fresh = make_table(2)  # never scraped
    fresh.update_metrics(np.array([0]), waiting=[1], kv_usage_frac=[0.0])
    assert adm.pool_saturation(fresh, np.arange(2, dtype=np.int32)) == pytest.approx(
        0.6
    )  # (0.2+1)/2


@pytest.mark.parametrize(
    ("saturation", "probability"),
    [(0.0, 0.0), (0.2, 0.2**5 * 300), (0.3, 0.3**5 * 300), (0.33, 1.0), (2.0, 1.0)],
)
def test_shed_probability(saturation: float, probability: float) -> None:
    assert _admitter().shed_probability(saturation) == pytest.approx(probability)
    assert _admitter().shed_probability(0.2) == pytest.approx(0.096)


def test_the_draw_uses_the_cycle_rng() -> None:
    table = make_table(1, waiting=[1], kv_usage_frac=[0.0])  # sat 0.2 -> p = 0.096
    rows = np.arange(1, dtype=np.int32)
    adm = _admitter()
    sheddable = Request.create("m", priority=-1)
    draws = np.random.default_rng(7).random(200)
    expected_denied = int((draws < 0.096).sum())
    rng = np.random.default_rng(7)
    denied = []
    for _ in range(200):
        with contextlib.suppress(AdmissionDeniedError):
            adm.admit_request(CycleState(rng), sheddable, table, rows)
            continue
        denied.append(1)
    assert len(denied) == expected_denied == 20
    always = _admitter({"k": 1e9})
    with pytest.raises(AdmissionDeniedError) as info:
        always.admit_request(CycleState(rng), sheddable, table, rows)
    assert (info.value.admitter, info.value.priority) == ("adm", -1)
    assert info.value.reason == "saturation 0.200: shed with probability 1.000"


def test_always_admitted() -> None:
    table = make_table(2, waiting=[50, 50], kv_usage_frac=[1.0, 1.0])  # p = 1
    rows = np.arange(2, dtype=np.int32)
    adm = _admitter()
    rng = np.random.default_rng(0)
    for priority in (0, 3):
        adm.admit_request(CycleState(rng), Request.create("m", priority=priority), table, rows)
    adm.admit_request(CycleState(rng), Request.create("m", priority=-1), table, rows[:0])
    with pytest.raises(AdmissionDeniedError):
        adm.admit_request(CycleState(rng), Request.create("m", priority=-1), table, rows)


def test_custom_curve() -> None:
    adm = _admitter({"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.5, "power": 2, "k": 4})
    table = make_table(1, waiting=[4], kv_usage_frac=[0.1])  # max(0.4, 0.2) = 0.4
    sat = adm.pool_saturation(table, np.arange(1, dtype=np.int32))
    assert sat == pytest.approx(0.4)
    assert adm.shed_probability(sat) == pytest.approx(0.64)  # 0.16 * 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"queueDepthThreshold": 0}, r"p\.queueDepthThreshold: expected a finite number > 0"),
        ({"kvCacheUtilThreshold": -0.5}, r"p\.kvCacheUtilThreshold: expected a finite number > 0"),
        ({"power": "5"}, r"p\.power: expected"),
        ({"k": 0.0}, r"p\.k: expected a finite number > 0, got 0\.0 \(float\)"),
        ({"kk": 1}, r"unknown key 'kk'"),
    ],
)
def test_parameter_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(ProbabilisticAdmitter.Params, params, "p")


def test_in_a_scheduler_a_denial_is_not_a_scheduling_attempt() -> None:
    config = """
plugins:
- type: probabilistic-admitter
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""
    scheduler = Scheduler.from_config(
        config, make_table(2, waiting=[0, 0], kv_usage_frac=0.4)
    )  # sat 0.5: p = 1
    assert scheduler.schedule(Request.create("m", prompt="p")).endpoint.name in ("e0", "e1")
    with pytest.raises(AdmissionDeniedError):
        scheduler.schedule(Request.create("m", prompt="p", priority=-1))
    assert (scheduler.denied, scheduler.cycles) == (1, 1)
    assert AdmissionDeniedError.http_status == 500
