"""Pickers (GIE): exact seeded picks plus structural checks.

Max-score and random pickers break ties with ``tie_keys_from_salt(random_raw() >> 1)``
of ``np.random.default_rng(seed)``; for four candidates:
seed 0 → [0.726, 0.291, 0.716, 0.438]; seed 1 → [0.526, 0.686, 0.597, 0.321];
seed 4 → [0.528, 0.469, 0.187, 0.642].
Weighted-random draws uniforms with ``np.random.default_rng(seed).random(n)``:
seed 0 → [0.637, 0.270, 0.041, 0.017]; seed 1 → [0.512, 0.950, 0.144, 0.949];
seed 2 → [0.262, 0.298, 0.814, 0.092].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.pickers import (
    MaxScorePicker,
    PickerParams,
    RandomPicker,
    WeightedRandomPicker,
)
from inference_sched.state.table import EndpointTable

PICKERS = [MaxScorePicker, RandomPicker, WeightedRandomPicker]


def _pick(cls: Any, scores: list[float], *, k: int = 1, seed: int = 0) -> list[int]:
    picker = cls("picker", PickerParams(k), PluginHandle(EndpointTable()))
    candidates = np.arange(10, 10 + len(scores), dtype=np.int32)  # rows are not positions
    positions = picker.pick(
        CycleState(np.random.default_rng(seed)),
        Request("r", "m"),
        candidates,
        np.asarray(scores, dtype=np.float32),
    )
    assert positions.dtype == np.int32
    return list(positions.tolist())


@pytest.mark.parametrize(
    ("scores", "k", "seed", "expected"),
    [
        pytest.param([0.2, 0.9, 0.5], 1, 0, [1], id="best"),
        pytest.param([0.2, 0.9, 0.5], 2, 0, [1, 2], id="best-then-fallback"),
        pytest.param([0.2, 0.9, 0.5], 5, 0, [1, 2, 0], id="k-above-n"),
        pytest.param([0.7], 3, 0, [0], id="single"),
        # Tie between positions 1 and 2 (0.9): the larger tie key wins.
        pytest.param([0.5, 0.9, 0.9, 0.1], 4, 0, [2, 1, 0, 3], id="tie-seed0"),
        pytest.param([0.5, 0.9, 0.9, 0.1], 4, 1, [1, 2, 0, 3], id="tie-seed1"),
        pytest.param([0.3, 0.3, 0.3, 0.3], 4, 1, [1, 2, 0, 3], id="all-equal-random-order"),
        pytest.param([math.nan, 0.1], 2, 0, [1, 0], id="nan-ranks-last"),
    ],
)
def test_max_score_picker(scores: list[float], k: int, seed: int, expected: list[int]) -> None:
    assert _pick(MaxScorePicker, scores, k=k, seed=seed) == expected


def test_max_score_picker_ties_all_reachable() -> None:
    scores = [0.9, 0.1, 0.9, 0.9, 0.5]
    firsts = {_pick(MaxScorePicker, scores, seed=seed)[0] for seed in range(60)}
    assert firsts == {0, 2, 3}


@pytest.mark.parametrize(
    ("scores", "k", "seed", "expected"),
    [
        pytest.param([1.0, 0.0, 0.0, 0.0], 4, 0, [0, 2, 3, 1], id="seed0"),
        pytest.param([1.0, 0.0, 0.0, 0.0], 4, 4, [3, 0, 1, 2], id="seed4-scores-ignored"),
        pytest.param([1.0, 0.0, 0.0, 0.0], 2, 4, [3, 0], id="k2"),
        pytest.param([0.5], 1, 0, [0], id="single"),
    ],
)
def test_random_picker(scores: list[float], k: int, seed: int, expected: list[int]) -> None:
    assert _pick(RandomPicker, scores, k=k, seed=seed) == expected


def test_random_picker_every_endpoint_reachable() -> None:
    firsts = {_pick(RandomPicker, [1.0, 0.0, 0.0, 0.0], seed=seed)[0] for seed in range(60)}
    assert firsts == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("scores", "k", "seed", "expected"),
    [
        # keys u ** (1/s): 0.637**2 = 0.406, 0.270**1 = 0.270, 0.041**4 = 2.8e-6
        pytest.param([0.5, 1.0, 0.25], 3, 0, [0, 1, 2], id="seed0"),
        # keys: pos1 0.298**2 = 0.089, pos3 0.092**10 = 4.3e-11; zeros by uniform: 2 then 0
        pytest.param([0.0, 0.5, 0.0, 0.1], 4, 2, [1, 3, 2, 0], id="zero-scores-last"),
        pytest.param([0.0, 0.5, 0.0, 0.1], 1, 2, [1], id="k1"),
        # keys: 0.512**5 = 0.035 vs 0.950**1.25 = 0.938
        pytest.param([0.2, 0.8], 1, 1, [1], id="weighted"),
        pytest.param([0.4], 2, 0, [0], id="single"),
    ],
)
def test_weighted_random_picker(
    scores: list[float], k: int, seed: int, expected: list[int]
) -> None:
    assert _pick(WeightedRandomPicker, scores, k=k, seed=seed) == expected


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "scores",
    [
        pytest.param([0.0, 0.0, 0.0, 0.0], id="zeros"),
        pytest.param([-1.0, 0.0, -0.5, 0.0], id="non-positive"),
    ],
)
def test_weighted_random_without_positive_scores_is_random_picker(
    scores: list[float], seed: int
) -> None:
    expected = _pick(RandomPicker, scores, k=4, seed=seed)
    assert _pick(WeightedRandomPicker, scores, k=4, seed=seed) == expected


def test_weighted_random_never_prefers_zero_scores() -> None:
    for seed in range(60):
        picks = _pick(WeightedRandomPicker, [0.0, 0.5, 0.0, 0.1], k=4, seed=seed)
        assert set(picks[:2]) == {1, 3}


def test_weighted_random_every_positive_endpoint_reachable() -> None:
    firsts = {_pick(WeightedRandomPicker, [0.2, 0.8, 0.0], seed=seed)[0] for seed in range(60)}
    assert firsts == {0, 1}


@pytest.mark.parametrize("cls", PICKERS)
@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_structure(cls: Any, k: int) -> None:
    rng = np.random.default_rng(7)
    scores = rng.random(12).round(1).tolist()  # rounding makes ties
    for seed in range(10):
        picks = _pick(cls, scores, k=k, seed=seed)
        assert len(picks) == min(k, 12)
        assert len(set(picks)) == len(picks)
        assert all(0 <= p < 12 for p in picks)
        if cls is MaxScorePicker:
            ranked = [scores[p] for p in picks]
            assert ranked == sorted(ranked, reverse=True)
            assert ranked[0] == max(scores)


@pytest.mark.parametrize("cls", PICKERS)
def test_same_seed_same_picks(cls: Any) -> None:
    scores = [0.3, 0.3, 0.6, 0.1, 0.6]
    assert _pick(cls, scores, k=3, seed=11) == _pick(cls, scores, k=3, seed=11)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"maxNumOfEndpoints": 0},
            r"^plugins\[0\]\.parameters\.maxNumOfEndpoints: expected int >= 1, got 0 \(int\)$",
            id="zero",
        ),
        pytest.param(
            {"maxNumOfEndpoints": -3}, r"maxNumOfEndpoints: expected int >= 1, got -3", id="neg"
        ),
        pytest.param(
            {"maxNumOfEndpoints": 2.0},
            r"maxNumOfEndpoints: expected int, got 2\.0 \(float\)",
            id="float",
        ),
        pytest.param(
            {"maxNumEndpoints": 2},
            r"unknown key 'maxNumEndpoints' \(did you mean "
            r"'maxNumOfEndpoints'\?\)",
            id="typo",
        ),
    ],
)
@pytest.mark.parametrize("cls", PICKERS)
def test_params_rejected(cls: Any, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(cls.Params, raw, "plugins[0].parameters")


@pytest.mark.parametrize("cls", PICKERS)
def test_params_default(cls: Any) -> None:
    assert parse_params(cls.Params, None, "p").max_num_of_endpoints == 1
    assert parse_params(cls.Params, {"maxNumOfEndpoints": 3}, "p").max_num_of_endpoints == 3
