"""Kubernetes label selectors (``inference_sched.state.labels``): the string syntax of
apimachinery's ``labels.Parse``, the object form, matching semantics, and errors that
name the failing key."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ParameterError
from inference_sched.params import ParamCheck, parse_params
from inference_sched.state.labels import (
    LabelRequirement,
    LabelSelector,
    LabelSelectorParams,
    parse_selector,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "requirements"),
    [
        ("", ()),
        ("app=x", (LabelRequirement("app", "In", ("x",)),)),
        ("app==x", (LabelRequirement("app", "In", ("x",)),)),
        ("app!=x", (LabelRequirement("app", "NotIn", ("x",)),)),
        ("app=", (LabelRequirement("app", "In", ("",)),)),
        ("gpu", (LabelRequirement("gpu", "Exists"),)),
        ("!legacy", (LabelRequirement("legacy", "DoesNotExist"),)),
        (" env in ( a , b ) ", (LabelRequirement("env", "In", ("a", "b")),)),
        ("env notin (a)", (LabelRequirement("env", "NotIn", ("a",)),)),
        ("rank>2", (LabelRequirement("rank", "Gt", ("2",)),)),
        ("rank < -1", (LabelRequirement("rank", "Lt", ("-1",)),)),
        (
            "disaggregatedset.x-k8s.io/name=my-set,tier!=cache,!old",
            (
                LabelRequirement("disaggregatedset.x-k8s.io/name", "In", ("my-set",)),
                LabelRequirement("tier", "NotIn", ("cache",)),
                LabelRequirement("old", "DoesNotExist"),
            ),
        ),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else "",
)
def test_parse_selector(text: str, requirements: tuple[LabelRequirement, ...]) -> None:
    assert parse_selector(text) == LabelSelector(requirements)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a in ()", "at least one value in the 'in' set"),
        ("a in (b c)", "',' or ')' in the value set"),
        ("a in b", "'(' after 'in'"),
        ("a=b,", "a requirement after ','"),
        ("a b", "an operator"),
        ("!", "a complete label selector"),
        ("a>x", "an integer after '>'"),
        ("Bad/Key=1", "a label key"),
        ("a=b c", "',' between requirements"),
        ("a=-bad-", "a label value"),
        ("a=b,c in (x", "a complete label selector (requirement 2)"),
    ],
)
def test_parse_selector_errors(text: str, message: str) -> None:
    with pytest.raises(ParamCheck, match=r"scope\.labelSelector") as info:
        parse_selector(text, "scope.labelSelector")
    assert message in info.value.expectation


def test_parse_selector_rejects_non_strings_and_huge_text() -> None:
    with pytest.raises(ParamCheck, match="labelSelector: expected a label selector string"):
        parse_selector({"matchLabels": {}})
    with pytest.raises(ParamCheck, match="at most 8192"):
        parse_selector("a=b," * 3000)


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("app=x", {"app": "x"}, True),
        ("app=x", {"app": "y"}, False),
        ("app=x", {}, False),
        ("app!=x", {}, True),  # NotIn matches an absent label
        ("app!=x", {"app": "x"}, False),
        ("app in (x,y)", {"app": "y"}, True),
        ("app notin (x,y)", {"app": "z"}, True),
        ("gpu", {"gpu": ""}, True),
        ("!gpu", {"gpu": ""}, False),
        ("rank>2", {"rank": "3"}, True),
        ("rank>2", {"rank": "2"}, False),
        ("rank>2", {"rank": "x"}, False),
        ("rank<2", {}, False),
        ("", {"anything": "1"}, True),
        ("a=1,b=2", {"a": "1", "b": "2"}, True),
        ("a=1,b=2", {"a": "1"}, False),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


def test_object_form_builds_the_same_selector() -> None:
    params = parse_params(
        LabelSelectorParams,
        {
            "matchLabels": {"app": "x"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}],
        },
        "p",
    )
    assert params.selector() == parse_selector("app=x,env notin (dev)")
    assert params.selector().matches({"app": "x"})
    assert not params.selector().matches({"app": "x", "env": "dev"})
    assert parse_params(LabelSelectorParams, None, "p").selector() == LabelSelector()


def test_selector_from_match_labels() -> None:
    selector = LabelSelector.from_match_labels({"app": "x", "tier": ""})
    assert selector == LabelSelector(
        (LabelRequirement("app", "In", ("x",)), LabelRequirement("tier", "In", ("",)))
    )
    assert selector.matches({"app": "x", "tier": "", "other": "1"})
    assert not selector.matches({"app": "x"})
    assert LabelSelector.from_match_labels({}) == LabelSelector()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"matchLabels": []}, r"p\.matchLabels: expected a mapping"),
        ({"matchLabels": {"a": "-x"}}, r"p\.matchLabels\.a: expected a label value"),
        ({"matchExpressions": [{"key": "a", "operator": "Gt"}]}, r"operator: expected one of"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, r"values: expected a non-empty"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            r"values: expected no values",
        ),
        ({"matchExpressions": [{"operator": "Exists"}]}, r"matchExpressions\[0\]\.key"),
        ({"matchExpressions": [{"key": "a", "op": "In"}]}, r"only the keys"),
    ],
)
def test_object_form_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(LabelSelectorParams, raw, "p")


_label = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)


@given(
    pairs=st.dictionaries(_label, _label, min_size=1, max_size=5),
    other=st.dictionaries(_label, _label, max_size=5),
)
def test_equality_selector_matches_iff_every_pair_is_present(
    pairs: dict[str, str], other: dict[str, str]
) -> None:
    selector = parse_selector(",".join(f"{k}={v}" for k, v in pairs.items()))
    assert selector.matches({**other, **pairs})
    expected = all(other.get(k) == v for k, v in pairs.items())
    assert selector.matches(other) is expected
