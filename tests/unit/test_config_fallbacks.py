"""with_fallbacks: pickers whose maxNumOfEndpoints the config leaves at its default."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched import Request, Scheduler
from inference_sched.framework.config import load_config
from inference_sched.framework.config.fallbacks import with_fallbacks
from tests.helpers import make_table


def picker_limits(config: object) -> dict[str, int]:
    return {
        spec.name: spec.params.max_num_of_endpoints
        for spec in config.plugins  # type: ignore[attr-defined]
        if spec.type.endswith("-picker")
    }


def test_gie_default_profile_gets_one_fallback() -> None:
    config = load_config(None)
    raised = with_fallbacks(config, 1)
    assert picker_limits(config) == {"max-score-picker": 1}  # left as it was (frozen)
    assert picker_limits(raised) == {"max-score-picker": 2}
    assert raised.warnings == (
        *config.warnings,
        "fallbacks: maxNumOfEndpoints raised to 2 on picker(s) 'max-score-picker' "
        "((default)), so a gateway has 1 fallback(s) to retry; set maxNumOfEndpoints in "
        "the config to keep another value",
    )
    # The scheduler built from it returns the pick and one fallback.
    scheduler = Scheduler.from_config(raised, make_table(3), seed=0)
    result = scheduler.schedule(Request.create("m", prompt=b"hello"))
    assert len(result.target_endpoints) == 2
    assert len({e.name for e in result.target_endpoints}) == 2
    assert result.destination_header.count(",") == 1  # the gateway's retry list
    alone = Scheduler.from_config(config, make_table(3), seed=0)
    assert len(alone.schedule(Request.create("m", prompt=b"hello")).target_endpoints) == 1
    # to_dict writes the raised value, and loading it back keeps it.
    assert picker_limits(load_config(raised.to_dict())) == {"max-score-picker": 2}


CONFIG = """
plugins:
- type: queue-scorer
- {type: max-score-picker, name: implicit}
- {type: weighted-random-picker, name: pinned, parameters: {maxNumOfEndpoints: 1}}
- {type: random-picker, name: wide, parameters: {maxNumOfEndpoints: 5}}
- {type: random-picker, name: spare}
- type: softmax-picker
schedulingProfiles:
- {name: a, plugins: [{pluginRef: queue-scorer}, {pluginRef: pinned}]}
"""


def test_explicit_values_are_kept_and_a_pinned_profile_picker_is_reported() -> None:
    config = load_config(CONFIG)
    raised = with_fallbacks(config, 2)
    assert picker_limits(raised) == {
        "implicit": 3,
        "pinned": 1,
        "wide": 5,
        "spare": 3,
        "softmax-picker": 3,
    }
    new = raised.warnings[len(config.warnings) :]
    assert new == (
        "fallbacks: maxNumOfEndpoints raised to 3 on picker(s) 'implicit' (plugins[1]), "
        "'spare' (plugins[4]), 'softmax-picker' (plugins[5]), so a gateway has 2 "
        "fallback(s) to retry; set maxNumOfEndpoints in the config to keep another value",
        "fallbacks: plugins[2].parameters.maxNumOfEndpoints is 1 in the config, so picker "
        "'pinned' returns no fallback for a gateway to retry",
    )
    assert raised.scheduling_profiles == config.scheduling_profiles


def test_zero_fallbacks_is_the_config_itself_and_nothing_to_raise_adds_no_line() -> None:
    config = load_config(None)
    assert with_fallbacks(config, 0) is config
    twice = with_fallbacks(with_fallbacks(config, 1), 1)
    assert picker_limits(twice) == {"max-score-picker": 2}
    wide = load_config("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 4}}]\n")
    assert with_fallbacks(wide, 1).warnings == wide.warnings


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, r"num_fallbacks: expected int >= 0, got -1$"),
        (True, r"num_fallbacks: expected int >= 0, got True \(bool\)"),
        (1.0, r"num_fallbacks: expected int >= 0, got 1.0 \(float\)"),
        ("1", r"num_fallbacks: expected int >= 0, got '1' \(str\)"),
    ],
    ids=["negative", "bool", "float", "str"],
)
def test_bad_counts_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with_fallbacks(load_config(None), value)  # type: ignore[arg-type]


@given(
    num_fallbacks=st.integers(0, 64),
    explicit=st.one_of(st.none(), st.integers(1, 64)),
)
def test_limit_is_the_explicit_value_or_one_plus_fallbacks(
    num_fallbacks: int, explicit: int | None
) -> None:
    parameters = "" if explicit is None else f", parameters: {{maxNumOfEndpoints: {explicit}}}"
    config = load_config(f"plugins: [{{type: max-score-picker{parameters}}}]\n")
    got = picker_limits(with_fallbacks(config, num_fallbacks))["max-score-picker"]
    assert got == (explicit if explicit is not None else 1 + num_fallbacks)
