"""inference_sched.testing: the table and cycle builders, and ``check_plugin`` on every
built-in plugin type and on broken plugins it must catch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt
import pytest

from inference_sched.framework import registry
from inference_sched.framework.catalogue import BUILTIN_PLUGINS
from inference_sched.framework.contracts import IN_FLIGHT_LOAD
from inference_sched.framework.registry import register
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import CycleState, Request
from inference_sched.params import at_least, in_range, param
from inference_sched.state.endpoint import ROLE_LABEL, Role
from inference_sched.state.table import EndpointTable
from inference_sched.testing import (
    CheckReport,
    FakeCycle,
    check_plugin,
    conformance_table,
    make_cycle,
    make_table,
)

Candidates = npt.NDArray[np.int32]
Scores = npt.NDArray[np.float32]


# ====================================================================== make_table
def test_make_table_builds_named_endpoints_with_metrics() -> None:
    table = make_table(3, waiting=[0, 4, 9], kv_usage_frac=0.5)
    assert [e.name for e in table] == ["e0", "e1", "e2"]
    assert [e.hostport for e in table] == ["10.0.0.0:8000", "10.0.0.1:8000", "10.0.0.2:8000"]
    assert table.waiting[:3].tolist() == [0.0, 4.0, 9.0]
    assert table.kv_usage_frac[:3].tolist() == [0.5, 0.5, 0.5]
    assert table.last_update_s[:3].tolist() == [100.0, 100.0, 100.0]  # fresh on its clock
    assert table.clock() == 100.0


def test_make_table_roles_labels_adapters_and_clock() -> None:
    table = make_table(
        3,
        roles=[Role.PREFILL, "decode", None],
        labels={"gpu": "h100"},
        adapters=[("a",), (), ("a", "b")],
        clock=lambda: 7.0,
        port=9000,
    )
    e0, e1, e2 = table
    assert (e0.role, e1.role, e2.role) == (Role.PREFILL, Role.DECODE, Role.UNSET)
    assert e0.labels == {"gpu": "h100", ROLE_LABEL: "prefill"}
    assert e2.labels == {"gpu": "h100"}
    assert table.adapters_of(2)[0] == frozenset({"a", "b"})
    assert e1.port == 9000
    assert table.clock() == 7.0
    assert table.last_update_s[0] == -np.inf  # no column given: never scraped


def test_make_table_checks_lengths_and_names() -> None:
    with pytest.raises(ValueError, match="column 'waiting': expected a scalar or 2 values"):
        make_table(2, waiting=[1, 2, 3])
    with pytest.raises(ValueError, match="roles: expected 2 entries"):
        make_table(2, roles=["prefill"])
    with pytest.raises(KeyError, match="not a scraped metric column"):
        make_table(2, bogus=[1, 2])
    assert len(make_table(0)) == 0
    assert make_table(300).get("e257") is not None  # addresses beyond 10.0.0.255


def test_tests_helpers_make_table_delegates() -> None:
    from tests.helpers import make_table as helper

    table = helper(2, waiting=[1.0, 2.0])
    assert [e.hostport for e in table] == ["10.0.0.0:8000", "10.0.0.1:8000"]
    assert table.waiting[:2].tolist() == [1.0, 2.0]
    assert table.clock() == 100.0


# ====================================================================== make_cycle
def test_make_cycle_gives_the_scheduler_inputs() -> None:
    table = make_table(3)
    table.set_healthy("e1", False)
    fake = make_cycle(table, model="llama", headers={"x-request-id": "r1"}, seed=3)
    assert isinstance(fake, FakeCycle)
    assert fake.candidates.tolist() == [0, 2]  # healthy rows, as the scheduler offers them
    assert fake.candidates.dtype == np.int32
    assert fake.request.request_id == "r1"
    assert fake.request.target_model == "llama"
    assert fake.cycle.now_s == 100.0
    assert fake.cycle.rng.integers(1 << 30) == np.random.default_rng(3).integers(1 << 30)
    out = fake.scores()
    assert out.dtype == np.float32
    assert out.tolist() == [0.0, 0.0]
    result = fake.result()
    assert result.endpoint.name == "e0"
    assert result.primary_profile_name == "default"
    assert fake.result(rows=[2, 0], profile="decode").target_endpoints[0].name == "e2"
    response = fake.response(end=True)
    assert (response.request_id, response.is_end_of_stream, response.time_s) == ("r1", True, 100.0)


def test_make_cycle_subset_and_explicit_candidates() -> None:
    table = make_table(3)
    assert make_cycle(table, subset=["10.0.0.2:8000"]).candidates.tolist() == [2]
    assert make_cycle(table, candidates=[1]).candidates.tolist() == [1]
    request = Request.create("m", request_id="given")
    assert make_cycle(table, request).request is request
    assert len(make_cycle().candidates) == 4  # a default table


# ====================================================================== built-ins
_PARAMS: dict[str, dict[str, Any]] = {
    "burst-prefix-cache-producer": {"windowDurationMs": 1},  # each request waits the window
    "endpoint-attribute-filter": {
        "attribute": "q",
        "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 3}},
    },
    "endpoint-attribute-scorer": {
        "attributeKey": "q",
        "algorithm": {"type": "linear_lower_is_better"},
    },
    "by-label": {"label": "gpu", "validValues": ["h100"], "allowsNoLabel": True},
    "utilization-filter": {"conditions": [{"metric": "waiting-queue", "maxValue": 3}]},
    "header-label-affinity-scorer": {"headerName": "x-gpu", "labelKey": "gpu"},
    # In-process events: no ZMQ sockets to the made-up endpoint addresses.
    "precise-prefix-cache-producer": {"kvEventsConfig": {"discoverPods": False}},
    "precise-prefix-cache-scorer": {"kvEventsConfig": {"discoverPods": False}},
    # Needs exactly one source; the conformance requests carry x-session-id.
    "session-id-producer": {"headerName": "x-session-id"},
    "agent-identity": {"additionalSessionHeaders": ["x-session-id"]},
    "k8s-notification-source": {"version": "v1", "kind": "Pod"},
    # Revision gating on an unlabelled table keeps nothing: gating off.
    "disaggregatedset-rollout-screener": {
        "scope": {"labelSelector": "app=x"},
        "revisionGating": {"mode": "disabled"},
    },
    "request-attribute-reporter": {
        "attributes": [
            {
                "key": {"name": "x-cost"},
                "expression": "usage.prompt_tokens + usage.completion_tokens",
            }
        ]
    },
}
_PROFILES: dict[str, tuple[str, ...]] = {
    "disagg-profile-handler": ("decode", "prefill"),
    # Decode alone: the handler stops before asking its decider (none is configured).
    "pd-profile-handler": ("decode",),
}


def _tokenizer_file(directory: Path) -> Path:
    """A word-level tokenizer.json built here (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", *(f"w{i}" for i in range(16))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.mark.parametrize("plugin_type", sorted(BUILTIN_PLUGINS))
def test_every_builtin_plugin_passes(plugin_type: str, tmp_path: Path) -> None:
    params = _PARAMS.get(plugin_type)
    if plugin_type in ("file-discovery", "multicluster-file-discovery"):
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(
            "endpoints:\n"
            "- {name: b, address: 10.0.0.2, port: '8000'}\n"
            "- {name: a, address: 10.0.0.1, port: '8000'}\n"
        )
        params = {"path": str(endpoints)}
    if plugin_type in ("token-producer", "tokenizer"):
        pytest.importorskip(
            "tokenizers",
            reason="token-producer needs a tokenizer file, built with the tokenizers package "
            "(the [tokens] extra)",
        )
        params = {"tokenizerFile": str(_tokenizer_file(tmp_path))}
    table = (
        # encode-filter keeps encode endpoints only: give it some
        make_table(3, roles=[Role.ENCODE, Role.DECODE, Role.ENCODE_PREFILL], waiting=[0, 1, 2])
        if plugin_type == "encode-filter"
        else None
    )
    report = check_plugin(
        plugin_type, params, profiles=_PROFILES.get(plugin_type, ("default",)), table=table
    )
    assert isinstance(report, CheckReport)
    assert report.plugin_type == plugin_type
    assert report.kinds == registry.kinds_of(registry.get(plugin_type))
    assert any(line.startswith("Params:") for line in report.checked)
    assert any(line.startswith("isolation:") for line in report.checked) or report.skipped


def test_the_builtins_cover_every_extension_point() -> None:
    kinds = {kind for t in BUILTIN_PLUGINS for kind in registry.kinds_of(registry.get(t))}
    assert kinds == set(registry.KINDS)  # so the test above exercises every branch


def test_report_lists_what_was_checked() -> None:
    report = check_plugin("queue-scorer")
    assert report.kinds == ("scorer",)
    assert report.checked == (
        "Params: every parameter has a default (an empty mapping parses)",
        "Params: a wrong value for each of [] and an unknown key are ParameterErrors "
        "naming the key",
        "a config using it loads and builds; the instance satisfies ['scorer']",
        "scorer: a finite score in [0, 1] for every candidate (4 and 1)",
        "scheduler: 4 requests through schedule, deferred work and the response hooks, no "
        "error counted against it",
        "isolation: with score() raising, the scheduler keeps scheduling and counts the error",
        "the scheduler schedules again once the methods are restored",
    )
    assert report.skipped == ()


def test_a_given_table_is_used() -> None:
    table = make_table(2, waiting=[0, 1])
    check_plugin("queue-scorer", table=table)
    assert len(table) == 2
    assert len(conformance_table()) == 4


# ====================================================================== plugins of our own
@attrs.frozen
class LevelParams:
    level: float = param(0.5, alias="level", check=in_range(0.0, 1.0))
    """The score of every endpoint."""


class GoodScorer:
    Params = LevelParams
    category: ClassVar[str] = "Distribution"

    def __init__(self, name: str, params: LevelParams, handle: Any) -> None:
        self.name = name
        self.level = params.level

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: Scores,
    ) -> None:
        out[:] = self.level


@pytest.fixture
def forget() -> Iterator[list[str]]:
    """Types a test registers for good, dropped afterwards."""
    types: list[str] = []
    yield types
    for plugin_type in types:
        registry._forget(plugin_type)


def test_an_unregistered_class_is_registered_for_the_check_only() -> None:
    cls = type("Scorer", (GoodScorer,), {})
    report = check_plugin(cls, plugin_type="test-good-scorer")
    assert report.kinds == ("scorer",)
    assert not registry.is_registered("test-good-scorer")
    assert check_plugin(cls, {"level": 0.25}).plugin_type == "test-good-scorer"  # again


def test_a_registered_class_and_its_type_name(forget: list[str]) -> None:
    forget.append("test-registered-scorer")
    cls = register("test-registered-scorer")(type("Scorer", (GoodScorer,), {}))
    assert check_plugin(cls).plugin_type == "test-registered-scorer"
    assert check_plugin("test-registered-scorer").kinds == ("scorer",)
    assert registry.get("test-registered-scorer") is cls  # still registered


def test_the_example_scorer_template_passes() -> None:
    # The template third-party plugin, when installed (CI installs it).
    if not registry.is_registered("label-preference-scorer"):
        pytest.skip("plugins/inference-sched-example-scorer is not installed")
    check_plugin("label-preference-scorer", {"label": "gpu", "preferredValues": ["h200"]})


# ====================================================================== broken plugins
def _broken_scorer(write: Any) -> type[Any]:
    """A scorer whose ``score`` is ``write(candidates, out)``."""

    def score(
        self: Any,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: Scores,
    ) -> None:
        write(candidates, out)

    return type("Broken", (GoodScorer,), {"score": score})


def _set(value: float) -> Any:
    def write(candidates: Candidates, out: Scores) -> None:
        out[:] = value

    return write


def _first_only(candidates: Candidates, out: Scores) -> None:
    out[0] = 0.5  # relies on the zero fill for the others


def _sorts_candidates(candidates: Candidates, out: Scores) -> None:
    candidates[::-1].sort()
    out[:] = 0.5


def _raises(candidates: Candidates, out: Scores) -> None:
    raise ValueError("boom")


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_set(2.0), r"score\(\) wrote \[2\.0, 2\.0, 2\.0, 2\.0\] for rows \[0, 1, 2, 3\]: "),
        (_set(-0.5), r"scores must be finite and in \[0, 1\]"),
        (_set(np.inf), r"scores must be finite and in \[0, 1\]"),
        (_set(np.nan), r"left out\[i\] unwritten \(or NaN\) for rows \[0, 1, 2, 3\]"),
        (_first_only, r"left out\[i\] unwritten \(or NaN\) for rows \[1, 2, 3\]"),
        (_sorts_candidates, r"score\(\) modified its candidates array"),
        (_raises, r"score\(\) raised ValueError: boom"),
    ],
    ids=["above-1", "negative", "inf", "nan", "unwritten", "mutates-candidates", "raises"],
)
def test_broken_scorers_are_caught(write: Any, message: str) -> None:
    with pytest.raises(
        AssertionError, match=r"check_plugin\('test-broken-scorer'\): scorer: .*" + message
    ):
        check_plugin(_broken_scorer(write), plugin_type="test-broken-scorer")


def test_a_scorer_category_is_checked() -> None:
    cls = type("Scorer", (GoodScorer,), {"category": "Speed"})
    with pytest.raises(AssertionError, match="category is 'Speed', not one of"):
        check_plugin(cls, plugin_type="test-bad-category")


class _Filter:
    def __init__(self, name: str, params: Any, handle: Any) -> None:
        self.name = name


def _broken_filter(keep: Any) -> type[Any]:
    def filter(
        self: Any,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Any:
        return keep(candidates)

    return type("BrokenFilter", (_Filter,), {"filter": filter})


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (
            lambda c: np.append(c, np.int32(7)),
            r"filter\(\) returned rows \[0, 1, 2, 3, 7\] from \[0, 1, 2, 3\]: expected a "
            r"subset of its input, in the same order",
        ),
        (lambda c: c[::-1].copy(), r"returned rows \[3, 2, 1, 0\] from \[0, 1, 2, 3\]"),
        (lambda c: np.concatenate([c, c]), r"expected a subset of its input"),
        (lambda c: c.astype(np.float64), r"expected a 1-D int array of rows"),
        (lambda c: c.reshape(1, -1), r"expected a 1-D int array of rows"),
    ],
    ids=["adds-a-row", "reorders", "repeats", "floats", "2-d"],
)
def test_broken_filters_are_caught(keep: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=r"filter: .*" + message):
        check_plugin(_broken_filter(keep), plugin_type="test-broken-filter")


def test_a_filter_may_keep_nothing_or_a_subset() -> None:
    check_plugin(_broken_filter(lambda c: c[1:]), plugin_type="test-subset-filter")


class _Picker:
    def __init__(self, name: str, params: Any, handle: Any) -> None:
        self.name = name


def _broken_picker(rank: Any) -> type[Any]:
    def pick(
        self: Any, cycle: CycleState, request: Request, candidates: Candidates, scores: Scores
    ) -> Any:
        return rank(candidates, scores)

    return type("BrokenPicker", (_Picker,), {"pick": pick})


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        (lambda c, s: c[-1:] + 10, r"pick\(\) returned positions \[13\]: expected distinct"),
        (lambda c, s: np.array([0, 0], dtype=np.int32), r"positions \[0, 0\]: expected distinct"),
        (lambda c, s: np.empty(0, dtype=np.int32), r"expected non-empty int positions"),
        (lambda c, s: np.argsort(-s).astype(np.float32), r"expected non-empty int positions"),
    ],
    ids=["row-not-position", "repeated", "empty", "floats"],
)
def test_broken_pickers_are_caught(rank: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=r"picker: .*" + message):
        check_plugin(_broken_picker(rank), plugin_type="test-broken-picker")


def test_a_correct_picker_of_our_own_passes() -> None:
    best_first = _broken_picker(lambda c, s: np.argsort(-s, kind="stable").astype(np.int32))
    assert check_plugin(best_first, plugin_type="test-argsort-picker").kinds == ("picker",)


# ---------------------------------------------------------------- parameters
@attrs.define
class MutableParams:
    level: float = param(0.5, alias="level", check=in_range(0.0, 1.0))


@attrs.frozen
class UncheckedParams:
    level: float = param(0.5, alias="level")


@attrs.frozen
class RequiredParams:
    level: float = param(alias="level", check=in_range(0.0, 1.0))


def _value_error(inst: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, float):
        raise ValueError("not a float")


@attrs.frozen
class WrongErrorParams:
    level: float = param(0.5, alias="level", check=_value_error)


@attrs.frozen
class BadDefaultParams:
    level: int = param(0, alias="level", check=at_least(1))


@pytest.mark.parametrize(
    ("params_cls", "message"),
    [
        (
            UncheckedParams,
            r"Params: 'level' accepts <a value of no parameter type>: give the field a check",
        ),
        (MutableParams, r"Params: must be a frozen attrs class \(@attrs\.frozen\)"),
        (
            RequiredParams,
            r"Params: has required parameters \(level\): pass params= with a value for each",
        ),
        (WrongErrorParams, r"a bad 'level' raised ValueError instead of a ParameterError"),
        (BadDefaultParams, r"Params: does not parse from an empty mapping: .*level: expected"),
    ],
    ids=["no-validation", "not-frozen", "required-without-params", "wrong-error", "bad-default"],
)
def test_broken_params_are_caught(params_cls: type[Any], message: str) -> None:
    cls = type("Scorer", (GoodScorer,), {"Params": params_cls})
    with pytest.raises(AssertionError, match=message):
        check_plugin(cls, plugin_type="test-broken-params")


def test_required_params_given_and_bad_params_given() -> None:
    cls = type("Scorer", (GoodScorer,), {"Params": RequiredParams})
    report = check_plugin(cls, {"level": 0.5}, plugin_type="test-required-params")
    assert "Params: an empty mapping names the required ['level']" in report.checked
    with pytest.raises(AssertionError, match=r"the given params= were rejected: .*level"):
        check_plugin(cls, {"level": 3.0}, plugin_type="test-required-params")


# ---------------------------------------------------------------- other kinds
class _Producer:
    produces: ClassVar[frozenset[str]] = frozenset({"TestKey"})
    consumes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, params: Any, handle: Any) -> None:
        self.name = name

    def prepare_request_data(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> None:
        cycle.write("TestKey", len(candidates))


def _writes_nothing(
    self: Any, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
) -> None:
    pass


def test_a_producer_must_write_what_it_declares() -> None:
    assert check_plugin(_Producer, plugin_type="test-producer").kinds == ("data-producer",)
    silent = type("Silent", (_Producer,), {"prepare_request_data": _writes_nothing})
    with pytest.raises(
        AssertionError, match=r"did not write \[.TestKey.\] to the cycle for any of three requests"
    ):
        check_plugin(silent, plugin_type="test-silent-producer")
    undeclared = type("Undeclared", (_Producer,), {"produces": frozenset()})
    with pytest.raises(AssertionError, match="produces is empty"):
        check_plugin(undeclared, plugin_type="test-undeclared-producer")
    listed = type("Listed", (_Producer,), {"consumes": [IN_FLIGHT_LOAD]})
    with pytest.raises(AssertionError, match="consumes must be a frozenset of data keys"):
        check_plugin(listed, plugin_type="test-listed-producer")


class _Hooks:
    """PreRequest + ResponseComplete that pair up: taken in one, released in the other."""

    def __init__(self, name: str, params: Any, handle: Any) -> None:
        self.name = name
        self.held: set[str] = set()

    def pre_request(self, cycle: CycleState, request: Request, result: Any) -> None:
        self.held.add(request.request_id)

    def response_complete(self, request: Request, response: Any, result: Any) -> None:
        self.held.remove(request.request_id)  # KeyError: released twice or never taken


def test_lifecycle_hooks_run_in_order_and_are_isolated() -> None:
    report = check_plugin(_Hooks, plugin_type="test-hooks")
    assert report.kinds == ("pre-request", "response-complete")
    assert "lifecycle: pre_request() -> response_complete() on one request" in report.checked


def test_a_raising_hook_is_caught() -> None:
    def pre_request(self: Any, cycle: CycleState, request: Request, result: Any) -> None:
        raise RuntimeError("no capacity left")

    cls = type("Raising", (_Hooks,), {"pre_request": pre_request})
    with pytest.raises(
        AssertionError, match=r"pre-request: pre_request\(\) raised RuntimeError: no capacity left"
    ):
        check_plugin(cls, plugin_type="test-raising-hooks")


class _Detector:
    def __init__(self, name: str, params: Any, handle: Any) -> None:
        self.name = name

    def saturation(self, table: EndpointTable, candidates: Candidates, now_s: float) -> float:
        return float(len(candidates)) / 8.0


def test_a_detector_must_answer_a_finite_number() -> None:
    assert check_plugin(_Detector, plugin_type="test-detector").kinds == ("saturation-detector",)
    nan = type("Nan", (_Detector,), {"saturation": lambda self, table, candidates, now_s: np.nan})
    with pytest.raises(AssertionError, match=r"saturation\(\) over the pool is nan: expected"):
        check_plugin(nan, plugin_type="test-nan-detector")


def test_a_class_without_a_type_or_failing_register_is_reported() -> None:
    with pytest.raises(AssertionError, match=r"has no plugin type: decorate it with @register"):
        check_plugin(type("Scorer", (GoodScorer,), {}))
    with pytest.raises(AssertionError, match=r"@register rejects the class: .*implements no"):
        check_plugin(type("Nothing", (_Filter,), {}), plugin_type="test-nothing")
    with pytest.raises(AssertionError, match=r"not a registered plugin type: unknown plugin type"):
        check_plugin("no-such-scorer")
    with pytest.raises(AssertionError, match=r"registered by inference_sched\.plugins\.load"):
        check_plugin(type("Impostor", (GoodScorer,), {}), plugin_type="queue-scorer")


def test_a_scheduler_that_does_not_isolate_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The isolation check itself: a scheduler whose deferred-work call lets errors through.
    def run_deferred(self: Scheduler) -> None:
        for plugin in self.plugins.values():
            if callable(getattr(plugin, "run_deferred", None)):
                plugin.run_deferred()

    class Deferred:
        def __init__(self, name: str, params: Any, handle: Any) -> None:
            self.name = name

        def run_deferred(self) -> None:
            pass

    assert check_plugin(Deferred, plugin_type="test-deferred").kinds == ("deferred-work",)
    monkeypatch.setattr(Scheduler, "run_deferred", run_deferred)
    with pytest.raises(
        AssertionError,
        match=r"deferred-work: the scheduler let a raising run_deferred\(\) escape: "
        r"InjectedFailure\('injected by check_plugin into run_deferred\(\)'\)",
    ):
        check_plugin(Deferred, plugin_type="test-deferred")
