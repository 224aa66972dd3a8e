"""request-attribute-reporter (GIE): the CEL ``usage`` variable, condition and value
semantics (truncation, 0 / -1 skipped), where the metadata goes, compile-time errors that
name the parameter, the cost guards, evaluation errors that never escape, and the plugin
in a Scheduler built from YAML."""

from __future__ import annotations

import builtins
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ConfigError, ParameterError
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Request, Response, SchedulingResult, Usage
from inference_sched.params import parse_params
from inference_sched.plugins import reporting
from inference_sched.plugins.reporting import (
    MAX_REMEMBERED_RESPONSES,
    RequestAttributeReporter,
    usage_variable,
)
from inference_sched.state.table import EndpointTable
from inference_sched.testing import make_table

pytestmark = pytest.mark.unit

pytest.importorskip("celpy", reason="request-attribute-reporter needs the [cel] extra")

TOTAL = "usage.prompt_tokens + usage.completion_tokens"


def _attribute(expression: str = TOTAL, condition: str | None = None, **key: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": {"name": "x-cost", **key}, "expression": expression}
    if condition is not None:
        entry["condition"] = condition
    return entry


def _reporter(
    expression: str = TOTAL, condition: str | None = None, **key: str
) -> RequestAttributeReporter:
    raw = {"attributes": [_attribute(expression, condition, **key)]}
    params = parse_params(RequestAttributeReporter.Params, raw, "p")
    return RequestAttributeReporter("rep", params, PluginHandle(EndpointTable()))


_NO_RESULT = SchedulingResult({}, "default")


def test_usage_variable() -> None:
    assert usage_variable(Usage(3, 4, 0)) == {
        "prompt_tokens": 3.0,
        "completion_tokens": 4.0,
        "total_tokens": 7.0,
    }
    assert usage_variable(Usage(3, 4, 2))["prompt_tokens_details"] == {"cached_tokens": 2.0}
    assert usage_variable(None) == {
        "prompt_tokens": 0.0,
        "completion_tokens": 0.0,
        "total_tokens": 0.0,
    }


@pytest.mark.parametrize(
    ("expression", "condition", "usage", "expected"),
    [
        (TOTAL, None, Usage(3, 4), 7),
        ("usage.total_tokens", None, Usage(10, 5), 15),
        (TOTAL, "has(usage.completion_tokens)", Usage(3, 4), 7),
        (TOTAL, "usage.completion_tokens > 10.0", Usage(3, 4), None),  # condition false
        (TOTAL, "'yes'", Usage(3, 4), None),  # a non-bool condition is not met
        ("usage.prompt_tokens * 1.5", None, Usage(5, 0), 7),  # 7.5 truncated
        ("usage.prompt_tokens - 10.5", None, Usage(5, 0), -5),  # -5.5 truncated toward 0
        ("usage.prompt_tokens - 4.0", None, Usage(3, 0), None),  # -1: upstream's sentinel
        (TOTAL, None, Usage(0, 0), None),  # 0 is not written
        (TOTAL, None, None, None),  # no usage: the zero struct
        ("int(usage.prompt_tokens) * 2", None, Usage(21, 0), 42),
        (
            "has(usage.prompt_tokens_details) ? usage.prompt_tokens_details.cached_tokens : 1.0",
            None,
            Usage(9, 0, 4),
            4,
        ),
        (
            "has(usage.prompt_tokens_details) ? usage.prompt_tokens_details.cached_tokens : 9.0",
            None,
            Usage(9, 0, 0),
            9,
        ),
    ],
)
def test_evaluate(
    expression: str, condition: str | None, usage: Usage | None, expected: int | None
) -> None:
    assert _reporter(expression, condition).evaluate(usage) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "'text'",
        "true",
        "[1, 2]",
        "1 / 0",
        "usage.missing",
        "size([1]) + usage.prompt_tokens",
        "1e400 * 1e400",
    ],
)
def test_evaluation_errors_skip_the_attribute_and_are_counted(
    expression: str, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = _reporter(expression)
    response = Response("r1", usage=Usage(1, 2), is_end_of_stream=True)
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.reporting"):
        reporter.response_complete(Request.create("m"), response, _NO_RESULT)
        reporter.response_complete(
            Request.create("m"), Response("r2", usage=Usage(2, 2)), _NO_RESULT
        )
    assert reporter.reported == {}
    assert reporter.num_errors == 2
    assert len(caplog.records) == 1  # logged at most once a minute
    assert "rep" in caplog.records[0].getMessage()


def test_metadata_is_kept_per_request_in_the_key_namespace() -> None:
    reporter = _reporter(namespace="my.ns")
    response = Response("r1", usage=Usage(3, 4), is_end_of_stream=True)
    reporter.response_complete(Request.create("m"), response, _NO_RESULT)
    assert reporter.reported == {"r1": {"my.ns": {"x-cost": 7.0}}}
    default = _reporter()
    default.response_complete(Request.create("m"), response, _NO_RESULT)
    assert default.reported == {"r1": {"envoy.lb": {"x-cost": 7.0}}}
    assert default.num_reported == 1


def test_streamed_chunks_report_only_when_they_carry_usage() -> None:
    reporter = _reporter()
    request = Request.create("m")
    reporter.response_streaming(request, Response("r1", is_start_of_stream=True), _NO_RESULT)
    assert reporter.reported == {}
    reporter.response_streaming(request, Response("r1", usage=Usage(2, 3)), _NO_RESULT)
    assert reporter.reported == {"r1": {"envoy.lb": {"x-cost": 5.0}}}
    reporter.response_complete(
        request, Response("r1", usage=Usage(2, 5), is_end_of_stream=True), _NO_RESULT
    )
    assert reporter.reported == {"r1": {"envoy.lb": {"x-cost": 7.0}}}


def test_writes_response_dynamic_metadata_when_the_response_has_it() -> None:
    class _WithMetadata:
        def __init__(self) -> None:
            self.request_id = "r9"
            self.usage = Usage(1, 1)
            self.dynamic_metadata: dict[str, dict[str, float]] = {"envoy.lb": {"other": 1.0}}

    response = _WithMetadata()
    _reporter().response_complete(Request.create("m"), response, _NO_RESULT)  # type: ignore[arg-type]
    assert response.dynamic_metadata == {"envoy.lb": {"other": 1.0, "x-cost": 2.0}}


def test_remembered_responses_are_bounded() -> None:
    reporter = _reporter()
    request = Request.create("m")
    for i in range(MAX_REMEMBERED_RESPONSES + 3):
        reporter.response_complete(request, Response(f"r{i}", usage=Usage(1, 1)), _NO_RESULT)
    assert len(reporter.reported) == MAX_REMEMBERED_RESPONSES
    assert next(iter(reporter.reported)) == "r3"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, r"p\.attributes: required key is missing"),
        ({"attributes": []}, r"p\.attributes: expected a list of exactly one"),
        (
            {"attributes": [_attribute(), _attribute()]},
            r"p\.attributes: expected a list of exactly one",
        ),
        (
            {"attributes": [{"expression": TOTAL}]},
            r"p\.attributes\[0\]\.key: expected \{namespace, name\}",
        ),
        (
            {"attributes": [{"key": {"namespace": "x"}, "expression": TOTAL}]},
            r"p\.attributes\[0\]\.key\.name: expected a non-empty str",
        ),
        (
            {"attributes": [{"key": {"name": "x", "ns": "y"}, "expression": TOTAL}]},
            r"p\.attributes\[0\]\.key\.ns: expected one of the keys",
        ),
        (
            {"attributes": [{"key": {"name": "x"}}]},
            r"p\.attributes\[0\]\.expression: expected a non-empty CEL expression",
        ),
        (
            {"attributes": [{**_attribute(), "extra": 1}]},
            r"p\.attributes\[0\]\.extra: expected one of the keys",
        ),
        (
            {"attributes": [_attribute("usage.prompt_tokens +")]},
            r"p\.attributes\[0\]\.expression: expected a valid CEL expression",
        ),
        (
            {"attributes": [_attribute(condition="has(")]},
            r"p\.attributes\[0\]\.condition: expected a valid CEL expression",
        ),
        ({"attributes": [_attribute("request.size + 1")]}, r"undeclared reference to 'request'"),
        (
            {"attributes": [_attribute("[1, 2].map(x, [3].map(y, x * y)).size()")]},
            r"without nested comprehension macros",
        ),
        ({"attributes": [_attribute("'aaa'.matches('a+')")]}, r"without matches\(\)"),
        ({"attributes": [_attribute("1.0 + " * 600 + "1.0")]}, r"at most 2048 chars"),
        ({"attributes": [_attribute(7)]}, r"p\.attributes\[0\]\.expression: expected str"),  # type: ignore[arg-type]
    ],
)
def test_parameter_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(RequestAttributeReporter.Params, raw, "p")


def test_comprehension_variables_are_declared() -> None:
    reporter = _reporter("[1.0, 2.0].filter(x, x > 1.0).size() > 0 ? usage.prompt_tokens : 0.0")
    assert reporter.evaluate(Usage(5, 0)) == 5


def test_missing_cel_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    params = parse_params(RequestAttributeReporter.Params, {"attributes": [_attribute()]}, "p")
    real_import = builtins.__import__

    def no_celpy(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "celpy":
            raise ImportError("no celpy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_celpy)
    assert reporting._celpy() is None
    with pytest.raises(ConfigError, match=r"pip install 'inference-sched\[cel\]'"):
        RequestAttributeReporter("rep", params, PluginHandle(EndpointTable()))


@given(
    prompt=st.integers(0, 10**9),
    completion=st.integers(0, 10**9),
    cached=st.integers(0, 10**6),
)
def test_total_matches_python(prompt: int, completion: int, cached: int) -> None:
    expected = prompt + completion
    got = _REPORTER.evaluate(Usage(prompt, completion, cached))
    assert got == (None if expected in (0, -1) else expected)


_REPORTER = _reporter()

CONFIG = f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- name: cost
  type: request-attribute-reporter
  parameters:
    attributes:
    - key: {{namespace: envoy.lb, name: x-gateway-inference-request-cost}}
      expression: "{TOTAL}"
      condition: "has(usage.completion_tokens)"
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
"""


def test_in_a_scheduler_from_yaml() -> None:
    scheduler = Scheduler.from_config(CONFIG, make_table(2), seed=0)
    request = Request.create("m", request_id="req-1")
    result = scheduler.schedule(request)
    scheduler.response_streaming(request, Response("req-1", is_start_of_stream=True), result)
    scheduler.response_complete(
        request, Response("req-1", usage=Usage(100, 20), is_end_of_stream=True), result
    )
    reporter = scheduler.plugins["cost"]
    assert reporter.reported == {"req-1": {"envoy.lb": {"x-gateway-inference-request-cost": 120.0}}}


def test_a_bad_expression_in_yaml_names_the_plugin_path() -> None:
    bad = CONFIG.replace(f'expression: "{TOTAL}"', 'expression: "usage.prompt_tokens +"')
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.attributes\[0\]\.expression"):
        Scheduler.from_config(bad, make_table(2))


def test_building_leaves_the_process_recursion_limit_alone() -> None:
    # celpy.Environment() sets sys.setrecursionlimit(2500) for the whole process; other
    # code (json's depth errors, the trace loaders' "nested too deep") relies on the
    # interpreter's limit, so the plugin restores it.
    import sys

    before = sys.getrecursionlimit()
    _reporter(TOTAL, "usage.prompt_tokens > 0")
    assert sys.getrecursionlimit() == before
