"""The example plugin, exercised as a third party would: through the installed entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference_sched import CycleState, Endpoint, EndpointTable, Request, Scheduler
from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.params import parse_params
from inference_sched.testing import check_plugin

EXAMPLE = Path(__file__).parent.parent / "examples" / "example-scorer.yaml"


def _table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 0.0)
    for i, gpu in enumerate(["h100", "h200", None, "h200"]):
        labels = {"gpu": gpu} if gpu else {}
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels))
    return table


def test_entry_point_registers_the_type_with_its_distribution() -> None:
    cls = registry.get("label-preference-scorer")
    assert cls.__module__ == "isched_example_scorer"
    infos = {i.type: i for i in registry.available()}
    assert infos["label-preference-scorer"].kinds == ("scorer",)
    assert infos["label-preference-scorer"].source.startswith("inference-sched-example-scorer ")


def test_conforms_to_the_scorer_protocol() -> None:
    # Registered, Params checked, scores in [0, 1] for every candidate, and a Scheduler
    # built with it keeps scheduling when it raises.
    report = check_plugin("label-preference-scorer", {"label": "gpu", "preferredValues": ["h200"]})
    assert report.kinds == ("scorer",)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"label": "gpu", "preferredValues": ["h200"]}, [0.0, 1.0, 0.0, 1.0]),
        ({"label": "gpu", "preferredValues": ["h200"], "otherScore": 0.25}, [0.25, 1.0, 0.25, 1.0]),
        ({"label": "gpu", "preferredValues": ["h100", "h200"]}, [1.0, 1.0, 0.0, 1.0]),
        ({"label": "zone"}, [0.0, 0.0, 0.0, 0.0]),
    ],
    ids=["one-value", "other-score", "two-values", "absent-label"],
)
def test_scores(parameters: dict[str, object], expected: list[float]) -> None:
    cls = registry.get("label-preference-scorer")
    params = parse_params(cls.Params, parameters, "plugins[0].parameters")
    table = _table()
    scorer = cls("pref", params, None)
    out = np.zeros(4, dtype=np.float32)
    scorer.score(
        CycleState(np.random.default_rng(0)), Request.create("m"), table, table.candidates(), out
    )
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))


def test_scores_follow_table_changes() -> None:
    cls = registry.get("label-preference-scorer")
    params = parse_params(cls.Params, {"label": "gpu", "preferredValues": ["h200"]}, "p")
    table = _table()
    scorer = cls("pref", params, None)
    cycle = CycleState(np.random.default_rng(0))
    out = np.zeros(4, dtype=np.float32)
    scorer.score(cycle, Request.create("m"), table, table.candidates(), out)
    table.upsert(Endpoint("e0", "10.0.0.0", 8000, {"gpu": "h200"}))
    scorer.score(cycle, Request.create("m"), table, table.candidates(), out)
    assert out[0] == 1.0


def test_bad_parameters_name_the_path() -> None:
    cls = registry.get("label-preference-scorer")
    with pytest.raises(ParameterError, match=r"plugins\[0\]\.parameters\.otherScore: expected"):
        parse_params(cls.Params, {"label": "gpu", "otherScore": 2}, "plugins[0].parameters")
    with pytest.raises(ParameterError, match=r"plugins\[0\]\.parameters\.label: required"):
        parse_params(cls.Params, {}, "plugins[0].parameters")


def test_example_config_schedules_on_the_preferred_gpu() -> None:
    table = _table()
    scheduler = Scheduler.from_config(Path(EXAMPLE), table, seed=1)
    picks = {scheduler.schedule(Request.create("m")).endpoint.name for _ in range(50)}
    assert picks == {"e1", "e3"}  # equal load everywhere: the label decides
