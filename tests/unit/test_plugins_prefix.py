"""prefix-cache-scorer (llm-d-router ``scorer/prefix/plugin.go``, row 1), multicluster alias."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.framework.contracts import PREFIX_CACHE_MATCH_INFO, PrefixCacheMatchInfo
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import parse_params
from inference_sched.plugins.prefix import (
    MulticlusterPrefixCacheScorer,
    PrefixCacheScorer,
)
from tests.helpers import make_table

PATH = "plugins[0].parameters"
LOGGER = "inference_sched.plugins.prefix"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _scorer(clock: _Clock | None = None, **raw: Any) -> PrefixCacheScorer:
    table = make_table(4)
    params = parse_params(PrefixCacheScorer.Params, raw or None, PATH)
    return PrefixCacheScorer("prefix", params, PluginHandle(table, clock=clock or _Clock()))


def _score(scorer: PrefixCacheScorer, info: Any, candidates: list[int]) -> np.ndarray:
    cycle = CycleState(np.random.default_rng(0))
    if info is not None:
        cycle.write(PREFIX_CACHE_MATCH_INFO, info)
    rows = np.asarray(candidates, dtype=np.int32)
    out = np.full(len(rows), 7.0, dtype=np.float32)  # every entry must be written
    scorer.score(cycle, Request("r", "m"), make_table(4), rows, out)
    return out


def _info(match: list[float], total: int, block: int = 16) -> PrefixCacheMatchInfo:
    return PrefixCacheMatchInfo(np.asarray(match, dtype=np.float64), total, block)


@pytest.mark.parametrize(
    ("match", "total", "candidates", "expected"),
    [
        pytest.param([4, 0, 2, 8], 8, [0, 1, 2, 3], [0.5, 0.0, 0.25, 1.0], id="fractions"),
        pytest.param([4, 0, 2, 8], 8, [3, 0], [1.0, 0.5], id="subset"),
        pytest.param([3, 3, 3, 3], 4, [0, 1, 2, 3], [0.75] * 4, id="all-equal"),
        pytest.param([1, 2, 0, 0, 0, 0], 3, [1], [0.6666667], id="single-longer-array"),
        pytest.param([0, 0, 0, 0], 0, [0, 1, 2, 3], [0.0] * 4, id="no-blocks"),
    ],
)
def test_prefix_cache_scorer(
    match: list[float], total: int, candidates: list[int], expected: list[float]
) -> None:
    out = _score(_scorer(), _info(match, total), candidates)
    np.testing.assert_array_equal(out, np.asarray(expected, dtype=np.float32))


def test_missing_data_scores_zero_and_warns_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    scorer = _scorer(clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            np.testing.assert_array_equal(_score(scorer, None, [0, 2]), np.zeros(2, np.float32))
        clock.now += 59.0
        _score(scorer, None, [0])
        assert len(caplog.records) == 1
        clock.now += 1.0
        _score(scorer, None, [0])
    messages = [r.getMessage() for r in caplog.records]
    assert (
        messages
        == [
            "prefix: no PrefixCacheMatchInfo in the cycle (is a prefix producer configured?); "
            "scoring 0"
        ]
        * 2
    )


def test_wrong_data_type_scores_zero_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = _score(_scorer(), {"match": 1}, [0, 1])
    np.testing.assert_array_equal(out, np.zeros(2, np.float32))
    assert [r.getMessage() for r in caplog.records] == [
        "prefix: PrefixCacheMatchInfo holds dict, not PrefixCacheMatchInfo; scoring 0"
    ]


def test_metadata() -> None:
    assert PrefixCacheScorer.type == "prefix-cache-scorer"
    assert PrefixCacheScorer.category == "Affinity"
    assert PrefixCacheScorer.consumes == frozenset({"PrefixCacheMatchInfo"})
    assert PrefixCacheScorer.stability == "beta"
    assert MulticlusterPrefixCacheScorer.type == "multicluster-prefix-cache-scorer"
    assert MulticlusterPrefixCacheScorer.stability == "alpha"
    assert issubclass(MulticlusterPrefixCacheScorer, PrefixCacheScorer)
    params = parse_params(PrefixCacheScorer.Params, None, PATH)
    assert (params.match_length_weight, params.scale_tokens) == (None, 8192)


@pytest.mark.parametrize(
    ("raw", "match", "total", "block", "expected"),
    [
        # w=0.5, scale 8192: m=2 of 8 blocks of 1024 tokens: len=(2048/8192)^2=0.0625
        pytest.param(
            {"matchLengthWeight": 0.5}, [2, 8, 0], 8, 1024, [0.15625, 1.0, 0.0], id="half"
        ),
        # w=1: only the length term; saturates at scale
        pytest.param(
            {"matchLengthWeight": 1.0, "matchLengthScaleTokens": 100},
            [1, 2, 5],
            10,
            64,
            [0.4096, 1.0, 1.0],
            id="length-only",
        ),
        # w=0.25, scale 4096, block 64: m=32 -> len=(2048/4096)^2=0.25, ratio 32/64
        pytest.param(
            {"matchLengthWeight": 0.25, "matchLengthScaleTokens": 4096},
            [32, 0, 64],
            64,
            64,
            [0.4375, 0.0, 1.0],
            id="quarter",
        ),
        pytest.param({"matchLengthWeight": 0.5}, [2, 8, 0], 0, 1024, [0.0] * 3, id="no-blocks"),
        pytest.param(
            {"matchLengthWeight": 0.5}, [2, 4, 0], 4, 0, [0.25, 0.5, 0.0], id="no-block-size"
        ),
    ],
)
def test_match_length_term(
    raw: dict[str, Any], match: list[float], total: int, block: int, expected: list[float]
) -> None:
    """Row 1: ``w * min(1, m * bs / scale)**2 + (1 - w) * m / t``."""
    out = _score(_scorer(**raw), _info(match, total, block), [0, 1, 2])
    np.testing.assert_allclose(out, np.asarray(expected, dtype=np.float32), rtol=1e-6)


@given(
    weight=st.floats(0, 1),
    matched=st.integers(0, 100),
    extra=st.integers(0, 100),
    block=st.integers(1, 4096),
    scale=st.integers(1, 1 << 20),
)
def test_score_is_in_unit_interval_and_matches_the_formula(
    weight: float, matched: int, extra: int, block: int, scale: int
) -> None:
    total = matched + extra
    scorer = _scorer(matchLengthWeight=weight, matchLengthScaleTokens=scale)
    (got,) = _score(scorer, _info([matched], total, block), [0])
    if total == 0:
        assert got == 0.0
        return
    expected = weight * min(1.0, matched * block / scale) ** 2 + (1 - weight) * matched / total
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        pytest.param(None, {}, id="none"),
        pytest.param(
            {"autoTune": False, "blockSizeTokens": 32, "maxPrefixTokensToMatch": 1024},
            {"autoTune": False, "blockSizeTokens": 32, "maxPrefixTokensToMatch": 1024},
            id="producer-keys",
        ),
        pytest.param(
            {"lruCapacityPerServer": 100, "maxPrefixBlocksToMatch": 8, "matchMode": "prefix"},
            {"lruCapacityPerServer": 100, "maxPrefixBlocksToMatch": 8, "matchMode": "prefix"},
            id="more-keys",
        ),
        pytest.param(
            {"blockSize": 64, "matchLengthWeight": 0.5},
            {"blockSize": 64},
            id="deprecated-key-forwarded-own-kept",
        ),
    ],
)
def test_producer_parameters_are_forwarded(
    raw: dict[str, Any] | None, forwarded: dict[str, Any]
) -> None:
    warnings: list[str] = []
    params = parse_params(PrefixCacheScorer.Params, raw, PATH, warn=warnings.append)
    assert params.producer_parameters() == forwarded
    assert warnings == []  # the producer warns (deprecated keys) when it is built with them


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"blockSize": "x"},
            r"^plugins\[0\]\.parameters\.blockSize: expected int, got 'x'",
            id="bad-type",
        ),
        pytest.param({"autoTune": 1}, r"\.autoTune: expected bool, got 1 \(int\)$", id="bad-bool"),
        pytest.param(
            {"blockSise": 64},
            r"unknown key 'blockSise' \(did you mean 'blockSize'",
            id="typo",
        ),
        pytest.param(
            {"hashBlockSize": 64},
            r"^plugins\[0\]\.parameters: unknown key 'hashBlockSize'",
            id="v1-key-removed",
        ),
        pytest.param(
            {"matchLengthWeight": 1.5},
            r"^plugins\[0\]\.parameters\.matchLengthWeight: expected a number in \[0, 1\]",
            id="weight-above-1",
        ),
        pytest.param(
            {"matchLengthWeight": 0.5, "matchLengthScaleTokens": 0},
            r"^plugins\[0\]\.parameters\.matchLengthScaleTokens: expected int >= 1 when "
            r"matchLengthWeight > 0, got 0 \(int\)$",
            id="scale-zero-with-weight",
        ),
        pytest.param(
            {"matchLengthScaleTokens": 1.5},
            r"^plugins\[0\]\.parameters\.matchLengthScaleTokens: expected int",
            id="scale-not-int",
        ),
    ],
)
def test_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(PrefixCacheScorer.Params, raw, PATH)


# ------------------------------------------------------------ prefixMatchInfoProducerName
def _named_scorer(producer: str) -> PrefixCacheScorer:
    params = parse_params(PrefixCacheScorer.Params, {"prefixMatchInfoProducerName": producer}, PATH)
    return PrefixCacheScorer("prefix", params, PluginHandle(make_table(4), clock=_Clock()))


def test_producer_name_reads_that_producers_key() -> None:
    scorer = _named_scorer("precise")
    assert scorer.producer_name == "precise"
    cycle = CycleState(np.random.default_rng(0))
    cycle.write(PREFIX_CACHE_MATCH_INFO, _info([8, 8, 8, 8], 8))  # another producer's
    cycle.write("PrefixCacheMatchInfo/precise", _info([4, 0, 2, 8], 8))
    rows = np.arange(4, dtype=np.int32)
    out = np.full(4, 7.0, dtype=np.float32)
    scorer.score(cycle, Request("r", "m"), make_table(4), rows, out)
    np.testing.assert_array_equal(out, np.asarray([0.5, 0.0, 0.25, 1.0], dtype=np.float32))


def test_producer_name_falls_back_to_the_shared_key() -> None:
    out = _score(_named_scorer("precise"), _info([4, 0, 2, 8], 8), [0, 1, 2, 3])
    np.testing.assert_array_equal(out, np.asarray([0.5, 0.0, 0.25, 1.0], dtype=np.float32))


def test_producer_name_is_not_forwarded_to_the_auto_producer() -> None:
    params = parse_params(
        PrefixCacheScorer.Params,
        {"prefixMatchInfoProducerName": "p", "blockSizeTokens": 32},
        PATH,
    )
    assert params.prefix_match_info_producer_name == "p"
    assert params.producer_parameters() == {"blockSizeTokens": 32}
    assert params.producer_references() == {
        "prefixMatchInfoProducerName": ("p", PREFIX_CACHE_MATCH_INFO)
    }
    assert parse_params(PrefixCacheScorer.Params, None, PATH).producer_references() == {}


_HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
_PROFILE = "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: s\n"


def test_config_binds_the_scorer_to_a_declared_producer() -> None:
    from inference_sched.framework.config import load_config

    config = load_config(
        _HEAD + "- {name: s, type: prefix-cache-scorer, parameters: "
        "{prefixMatchInfoProducerName: burst}}\n"
        "- {name: burst, type: approx-prefix-cache-producer}\n" + _PROFILE
    )
    assert [p.type for p in config.plugins].count("approx-prefix-cache-producer") == 1
    # Naming the default producer's type auto-creates it under that name.
    config = load_config(
        _HEAD + "- {name: s, type: prefix-cache-scorer, parameters: "
        "{prefixMatchInfoProducerName: approx-prefix-cache-producer}}\n" + _PROFILE
    )
    assert "approx-prefix-cache-producer" in {p.name for p in config.plugins}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "",
            "plugins[0].parameters.prefixMatchInfoProducerName: undefined plugin 'p'; "
            "declare it in plugins",
        ),
        (
            "- {name: p, type: queue-scorer}\n",
            "plugins[0].parameters.prefixMatchInfoProducerName: plugin 'p' (queue-scorer, "
            "plugins[1]) does not produce 'PrefixCacheMatchInfo'",
        ),
    ],
)
def test_config_rejects_a_producer_name_that_produces_no_match(extra: str, message: str) -> None:
    from inference_sched.errors import ConfigError
    from inference_sched.framework.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(
            _HEAD + "- {name: s, type: prefix-cache-scorer, parameters: "
            "{prefixMatchInfoProducerName: p}}\n" + extra + _PROFILE
        )
    assert str(info.value) == message
    assert info.value.path == "plugins[0].parameters.prefixMatchInfoProducerName"
