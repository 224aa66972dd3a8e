"""Per-endpoint attributes (``table.attributes``), the table's upsert listeners, the
Screener extension point and the registry's stability metadata."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched import Endpoint, EndpointTable, NoEndpointError, Request, Scheduler
from inference_sched.framework import registry
from inference_sched.framework.catalogue import BUILTIN_DEPRECATED, BUILTIN_PLUGINS
from inference_sched.framework.types import CycleState
from inference_sched.state.attributes import EndpointAttributes, attribute_key, scalar_value
from inference_sched.testing import make_table


def test_attribute_key_prints_as_llm_d_data_key() -> None:
    assert attribute_key("GPUUtilization", "dcgm-extractor") == "GPUUtilization/dcgm-extractor"
    assert attribute_key("llm-d.ai/multicluster-queue-size") == "llm-d.ai/multicluster-queue-size"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5), (np.int64(3), 3.0)],
)
def test_scalar_value_of_numbers(value: Any, expected: float) -> None:
    assert scalar_value(value) == expected


@pytest.mark.parametrize("value", [True, "1", None, math.inf, math.nan, (1,), {"a": 1}])
def test_scalar_value_of_non_numbers_is_nan(value: Any) -> None:
    assert math.isnan(scalar_value(value))


def test_put_get_delete_and_scalars() -> None:
    store = EndpointAttributes()
    store.put(0, "q", 3)
    store.put_many(2, {"q": 1.5, "topo": ("h1",)})
    assert store.get(0, "q") == 3
    assert store.get(1, "q", "absent") == "absent"
    assert store.has(2, "topo")
    assert not store.has(0, "topo")
    np.testing.assert_array_equal(store.scalars("q", [0, 1, 2]), [3.0, np.nan, 1.5])
    np.testing.assert_array_equal(store.scalars("topo", [2]), [np.nan])  # not a number
    assert list(store.keys()) == ["q", "topo"]
    assert store.delete(2, "q")
    assert not store.delete(2, "q")
    assert store.of(2) == {"topo": ("h1",)}


def test_versions_change_only_with_their_key() -> None:
    store = EndpointAttributes()
    store.put(0, "a", 1.0)
    a, b, total = store.key_version("a"), store.key_version("b"), store.version
    store.put(0, "b", 2.0)
    assert store.key_version("a") == a
    assert store.key_version("b") == b + 1
    assert store.version == total + 1
    value = ("same",)
    store.put(1, "c", value)
    before = store.version
    store.put(1, "c", value)  # the very same object: nothing changed
    assert store.version == before


@given(
    st.dictionaries(
        st.integers(0, 20),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text()),
        max_size=10,
    ),
    st.lists(st.integers(0, 25), max_size=15),
)
def test_scalars_match_a_per_row_reference(values: dict[int, Any], rows: list[int]) -> None:
    store = EndpointAttributes()
    for row, value in values.items():
        store.put(row, "k", value)
    got = store.scalars("k", rows)
    want = [scalar_value(values[r]) if r in values else math.nan for r in rows]
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float64))


def test_removing_an_endpoint_drops_its_attributes_before_the_row_is_reused() -> None:
    table = EndpointTable()
    row = table.add(Endpoint("a", "10.0.0.1", 8000)).row
    table.attributes.put(row, "GPUUtilization/dcgm-extractor", 0.9)
    table.remove("a")
    reused = table.add(Endpoint("b", "10.0.0.2", 8000)).row
    assert reused == row
    assert table.attributes.get(reused, "GPUUtilization/dcgm-extractor") is None


def test_upsert_listeners_see_adds_and_updates_and_survive_a_broken_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = EndpointTable()
    seen: list[tuple[int, str, str]] = []

    def broken(row: int, endpoint: Endpoint) -> None:
        raise RuntimeError("boom")

    table.on_upsert(broken)
    table.on_upsert(lambda row, e: seen.append((row, e.name, e.labels.get("zone", ""))))
    table.add(Endpoint("a", "10.0.0.1", 8000))
    table.upsert(Endpoint("a", "10.0.0.1", 8000, labels={"zone": "z1"}))
    table.upsert(Endpoint("b", "10.0.0.2", 8000))
    assert seen == [(0, "a", ""), (0, "a", "z1"), (1, "b", "")]
    assert "endpoint listener" in caplog.text


# ---------------------------------------------------------------------- screeners
class _KeepRows:
    type: ClassVar[str] = "keep-rows"

    def __init__(self, name: str, keep: set[int]) -> None:
        self.name = name
        self.keep = keep
        self.seen: list[list[int]] = []

    def screen(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Any
    ) -> Any:
        self.seen.append([int(r) for r in candidates])
        return np.asarray([r for r in candidates if int(r) in self.keep], dtype=np.int32)


class _Broken:
    type: ClassVar[str] = "broken-screener"
    name = "broken"

    def screen(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Any
    ) -> Any:
        raise RuntimeError("screener bug")


def _scheduler(table: EndpointTable, *screeners: Any) -> Scheduler:
    base = Scheduler.from_config(None, table, seed=0)
    plugins = dict(base.plugins)
    plugins.update({s.name: s for s in screeners})
    return Scheduler(table, base.profiles, base.handler, producers=(), plugins=plugins, seed=0)


def test_screeners_each_see_every_candidate_and_the_cycle_keeps_the_intersection() -> None:
    table = make_table(4, waiting=[0, 0, 0, 0])
    first, second = _KeepRows("first", {1, 2, 3}), _KeepRows("second", {0, 2, 3})
    scheduler = _scheduler(table, first, second, _Broken())
    result = scheduler.schedule(Request.create("m"))
    assert first.seen == [[0, 1, 2, 3]]
    assert second.seen == [[0, 1, 2, 3]]
    assert {e.name for e in result.profile_results["default"].endpoints} <= {"e2", "e3"}
    assert result.endpoint.name in {"e2", "e3"}


def test_screeners_that_remove_everything_fail_with_503() -> None:
    table = make_table(3)
    scheduler = _scheduler(table, _KeepRows("a", {0}), _KeepRows("b", {1}))
    with pytest.raises(
        NoEndpointError, match="screeners eliminated all endpoint candidates"
    ) as info:
        scheduler.schedule(Request.create("m"))
    assert info.value.screened
    assert info.value.http_status == 503


def test_a_broken_screener_is_ignored() -> None:
    table = make_table(2, waiting=[5, 0])
    scheduler = _scheduler(table, _Broken())
    assert scheduler.schedule(Request.create("m")).endpoint.name == "e1"


def test_batches_screen_every_request() -> None:
    table = make_table(3, waiting=[0, 0, 0])
    keep = _KeepRows("keep", {2})
    scheduler = _scheduler(table, keep)
    results = scheduler.schedule_batch([Request.create("m") for _ in range(3)])
    assert [r.endpoint.name for r in results] == ["e2", "e2", "e2"]  # type: ignore[union-attr]
    assert len(keep.seen) == 3


# ---------------------------------------------------------------------- stability
def test_stability_defaults_to_stable_and_reads_the_class() -> None:
    class Plain:
        pass

    class Experimental:
        stability = "alpha"

    class Odd:
        stability = "gamma"

    assert registry.stability_of(Plain) == "stable"
    assert registry.stability_of(Experimental) == "alpha"
    assert registry.stability_of(Odd) == "stable"


def test_deprecated_types_name_a_registered_replacement() -> None:
    for old, new in BUILTIN_DEPRECATED.items():
        assert old in BUILTIN_PLUGINS, old
        assert new in BUILTIN_PLUGINS, (old, new)


def test_known_alpha_types_are_marked() -> None:
    for plugin_type in ("utilization-filter", "topology-affinity-scorer", "agent-identity"):
        assert registry.stability_of(registry.get(plugin_type)) == "alpha"
    assert registry.stability_of(registry.get("probabilistic-admitter")) == "beta"
    assert registry.stability_of(registry.get("queue-scorer")) == "beta"
