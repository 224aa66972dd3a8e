"""Config loading: prefix-cache-scorer's producer parameters reach the auto-created
approx-prefix-cache-producer, or are ignored with a warning when a producer is declared."""

from __future__ import annotations

import textwrap

import pytest

from inference_sched.errors import ConfigError
from inference_sched.framework.config import AUTO_PATH, EndpointPickerConfig, load_config

PRODUCER = "approx-prefix-cache-producer"


def _load(text: str) -> EndpointPickerConfig:
    return load_config(textwrap.dedent(text))


def _producer_fields(cfg: EndpointPickerConfig, name: str = PRODUCER) -> tuple[object, ...]:
    p = cfg.plugin(name).params
    return (
        p.auto_tune,
        p.block_size_tokens,
        p.max_prefix_blocks_to_match,
        p.max_prefix_tokens_to_match,
        p.lru_capacity_per_server,
        p.match_mode,
    )


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        pytest.param("{}", (True, 16, 2048, 131072, 31250, "counting"), id="defaults"),
        pytest.param(
            "{autoTune: false, blockSizeTokens: 32, maxPrefixBlocksToMatch: 512, "
            "lruCapacityPerServer: 40000}",
            (False, 32, 512, 131072, 40000, "counting"),
            id="gie-docs-keys",
        ),
        pytest.param(
            "{maxPrefixTokensToMatch: 4096, matchMode: prefix}",
            (True, 16, 2048, 4096, 31250, "prefix"),
            id="tokens-and-mode",
        ),
    ],
)
def test_scorer_parameters_build_the_auto_producer(
    parameters: str, expected: tuple[object, ...]
) -> None:
    cfg = _load(f"plugins: [{{type: prefix-cache-scorer, parameters: {parameters}}}]\n")
    spec = cfg.plugin(PRODUCER)
    assert (spec.is_auto, spec.path) == (True, AUTO_PATH)
    assert _producer_fields(cfg) == expected
    assert not any("ignored" in w for w in cfg.warnings)


def test_forwarded_errors_name_the_scorer_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^plugins\[1\]\.parameters\.blockSizeTokens: expected int >= 1 when autoTune is "
        r"false, got 0 \(int\)$",
    ):
        _load(
            """
            plugins:
            - type: queue-scorer
            - type: prefix-cache-scorer
              parameters: {autoTune: false, blockSizeTokens: 0}
            """
        )


def test_forwarded_match_mode_is_checked() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^plugins\[0\]\.parameters\.matchMode: expected one of 'counting', 'prefix'",
    ):
        _load("plugins: [{type: prefix-cache-scorer, parameters: {matchMode: exact}}]\n")


def test_forwarded_deprecated_key_warns_once_with_the_scorer_path() -> None:
    cfg = _load("plugins: [{type: prefix-cache-scorer, parameters: {blockSize: 64}}]\n")
    assert [w for w in cfg.warnings if "blockSize" in w] == [
        "plugins[0].parameters.blockSize: deprecated: use blockSizeTokens; while "
        "blockSizeTokens is at its default (16) this value becomes blockSizeTokens (taken as "
        "tokens)"
    ]


def test_explicit_producer_wins_and_the_scorer_parameters_are_ignored_with_a_warning() -> None:
    cfg = _load(
        """
        plugins:
        - type: prefix-cache-scorer
          parameters: {blockSizeTokens: 32, lruCapacityPerServer: 10, autoTune: true}
        - name: pfx
          type: approx-prefix-cache-producer
          parameters: {blockSizeTokens: 8}
        schedulingProfiles:
        - name: default
          plugins: [{pluginRef: prefix-cache-scorer}]
        """
    )
    assert [s.name for s in cfg.plugins if s.type == PRODUCER] == ["pfx"]
    assert _producer_fields(cfg, "pfx") == (True, 8, 2048, 131072, 31250, "counting")
    assert (
        "plugins[0].parameters: blockSizeTokens, lruCapacityPerServer ignored: 'pfx' "
        "(approx-prefix-cache-producer, plugins[1]) produces the data of "
        "'prefix-cache-scorer' with its own parameters; set them there"
    ) in cfg.warnings


def test_explicit_producer_and_plain_scorer_do_not_warn() -> None:
    cfg = _load(
        "plugins: [{type: prefix-cache-scorer}, {type: approx-prefix-cache-producer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix-cache-scorer}]}]\n"
    )
    assert not any("ignored" in w for w in cfg.warnings)
    assert not cfg.plugin(PRODUCER).is_auto


def test_first_scorer_with_parameters_builds_the_producer_the_other_is_warned() -> None:
    cfg = _load(
        """
        plugins:
        - type: prefix-cache-affinity-filter
        - {name: a, type: prefix-cache-scorer}
        - {name: b, type: prefix-cache-scorer, parameters: {blockSizeTokens: 64}}
        - {name: c, type: prefix-cache-scorer, parameters: {blockSizeTokens: 8}}
        """
    )
    assert _producer_fields(cfg)[1] == 64
    ignored = [w for w in cfg.warnings if "ignored" in w]
    assert ignored == [
        "plugins[3].parameters: blockSizeTokens ignored: 'approx-prefix-cache-producer' "
        "(approx-prefix-cache-producer, added by default) produces the data of 'c' with its "
        "own parameters; set them there"
    ]


def test_effective_config_round_trips_the_forwarded_parameters() -> None:
    cfg = _load("plugins: [{type: prefix-cache-scorer, parameters: {blockSizeTokens: 32}}]\n")
    document = cfg.to_dict()
    producer = next(p for p in document["plugins"] if p["type"] == PRODUCER)
    assert producer["parameters"]["blockSizeTokens"] == 32
    again = load_config(document)
    assert _producer_fields(again) == _producer_fields(cfg)
    assert not any("ignored" in w for w in again.warnings)  # same values: nothing is lost
