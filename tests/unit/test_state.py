"""EndpointTable: rows, generations, growth, bulk metrics, adapters, subsets, listeners."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.framework.types import Endpoint, Role
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table


def ep(i: int, **labels: str) -> Endpoint:
    return Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels)


def test_add_assigns_rows_in_order_and_candidates_are_sorted() -> None:
    table = EndpointTable()
    handles = [table.add(ep(i)) for i in range(5)]
    assert [h.row for h in handles] == [0, 1, 2, 3, 4]
    assert [h.generation for h in handles] == [0] * 5
    np.testing.assert_array_equal(table.candidates(), [0, 1, 2, 3, 4])
    assert table.candidates().dtype == np.int32
    assert len(table) == 5
    assert [e.name for e in table] == ["e0", "e1", "e2", "e3", "e4"]


def test_duplicate_add_is_rejected() -> None:
    table = EndpointTable()
    table.add(ep(0))
    with pytest.raises(ValueError, match=r"endpoint 'e0' is already in the table; use upsert"):
        table.add(ep(0))


def test_remove_frees_the_row_bumps_generation_and_lowest_row_is_reused() -> None:
    table = make_table(5, waiting=[1, 2, 3, 4, 5])
    old = table.handle("e1")
    table.remove("e3")
    table.remove("e1")
    assert not table.is_current(old)
    np.testing.assert_array_equal(table.candidates(), [0, 2, 4])
    new = table.add(ep(9))
    assert new.row == 1
    assert new.generation == 1
    assert table.is_current(new)
    assert table.waiting[1] == 0.0  # metrics of the previous occupant are gone
    assert table.last_update_s[1] == -np.inf
    assert table.add(ep(8)).row == 3
    assert table.add(ep(7)).row == 5


def test_remove_unknown_returns_false() -> None:
    assert EndpointTable().remove("nope") is False


def test_growth_keeps_every_column() -> None:
    table = EndpointTable(capacity=2)
    for i in range(3):
        table.add(ep(i))
    table.update_metrics([0, 1, 2], waiting=[5.0, 6.0, 7.0], kv_usage_frac=0.5)
    table.set_adapters(1, ["a"], ["b"], max_loras=4)
    for i in range(3, 40):
        table.add(ep(i))
    assert table.capacity == 64
    np.testing.assert_array_equal(table.waiting[:3], [5.0, 6.0, 7.0])
    np.testing.assert_array_equal(table.kv_usage_frac[:3], [0.5, 0.5, 0.5])
    assert table.adapters_of(1) == (frozenset({"a"}), frozenset({"b"}))
    assert table.max_loras[1] == 4.0
    assert len(table.candidates()) == 40


def test_update_metrics_stamps_the_clock_and_rejects_unknown_columns() -> None:
    now = [10.0]
    table = EndpointTable(clock=lambda: now[0])
    for i in range(3):
        table.add(ep(i))
    table.update_metrics(np.array([0, 2]), waiting=np.array([3.0, 4.0]), running=1.0)
    np.testing.assert_array_equal(table.waiting[:3], [3.0, 0.0, 4.0])
    np.testing.assert_array_equal(table.running[:3], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(table.last_update_s[:3], [10.0, -np.inf, 10.0])
    table.set_endpoint_metrics("e1", kv_usage_frac=0.25, now_s=3.0)
    assert table.metrics_of("e1")["kv_usage_frac"] == 0.25
    assert table.last_update_s[1] == 3.0
    with pytest.raises(KeyError, match=r"not a scraped metric column: 'inflight_tokens'"):
        table.update_metrics([0], inflight_tokens=1.0)


def test_upsert_keeps_metrics_and_updates_role() -> None:
    table = make_table(2, waiting=[4, 5])
    table.upsert(Endpoint("e1", "10.0.0.1", 8000, {"llm-d.ai/role": "prefill"}))
    assert table.waiting[1] == 5.0
    assert table.role_of(1) is Role.PREFILL
    assert table.get("e1") is not None
    assert table.get("e1").labels["llm-d.ai/role"] == "prefill"
    table.upsert(ep(7))
    assert "e7" in table


def test_sync_adds_updates_and_removes() -> None:
    table = make_table(3)
    table.sync([ep(1), Endpoint("e2", "10.0.0.22", 8000), ep(5)])
    assert sorted(e.name for e in table) == ["e1", "e2", "e5"]
    assert table.get("e2").address == "10.0.0.22"  # type: ignore[union-attr]


def test_health_hides_endpoints_from_candidates() -> None:
    table = make_table(3)
    version = table.version
    table.set_healthy("e1", False)
    np.testing.assert_array_equal(table.candidates(), [0, 2])
    assert table.version > version
    table.set_healthy("e1", True)
    np.testing.assert_array_equal(table.candidates(), [0, 1, 2])


def test_candidates_are_cached_until_a_structural_change() -> None:
    table = make_table(2)
    first = table.candidates()
    assert table.candidates() is first
    table.update_metrics([0], waiting=3.0)  # metrics are not structure
    assert table.candidates() is first
    table.add(Endpoint("x", "10.0.0.9", 8000))
    assert table.candidates() is not first


def test_subset_hint_matches_ip_only() -> None:
    table = EndpointTable()
    table.add(Endpoint("a", "10.0.0.1", 8000))
    table.add(Endpoint("b", "10.0.0.1", 8001))
    table.add(Endpoint("c", "10.0.0.2", 8000))
    table.add(Endpoint("d", "fd00::1", 8000))
    np.testing.assert_array_equal(table.candidates_for(None), [0, 1, 2, 3])
    np.testing.assert_array_equal(table.candidates_for(["10.0.0.1:9999"]), [0, 1])
    np.testing.assert_array_equal(table.candidates_for(["10.0.0.2", "[fd00::1]:8000"]), [2, 3])
    assert table.candidates_for([]).size == 0
    assert table.candidates_for([]).dtype == np.int32


def test_adapters_are_interned_bitsets() -> None:
    table = make_table(2)
    names = [f"lora-{i}" for i in range(20)]
    assert [table.intern_adapter(n) for n in names] == list(range(20))
    assert table.intern_adapter("lora-3") == 3  # stable on second sight
    table.set_adapters(0, names[:10], names[10:12], max_loras=8)
    table.set_adapters(1, ["lora-19"], [])
    assert table.active_adapters.shape[1] >= 3  # 20 adapters need 3 bytes
    assert table.adapter_id("lora-0") == 0
    assert table.adapter_id("lora-19") == 19
    assert table.adapter_id("unknown") == -1
    assert table.adapter_id(None) == -1
    assert table.num_adapters[0] == 12.0
    assert table.num_adapters[1] == 1.0
    assert table.adapters_of(0) == (frozenset(names[:10]), frozenset(names[10:12]))
    # adapter k is bit k % 8 of byte k // 8 (little-endian bit order)
    assert table.active_adapters[1, 19 // 8] == 1 << (19 % 8)
    table.set_adapters(0, [], [])
    assert table.adapters_of(0) == (frozenset(), frozenset())
    assert table.num_adapters[0] == 0.0


def test_removal_listeners_run_before_the_row_is_cleared() -> None:
    table = make_table(2, waiting=[3, 9])
    seen: list[tuple[int, str, float]] = []
    table.on_remove(lambda row, e: seen.append((row, e.name, float(table.waiting[row]))))
    table.remove("e1")
    assert seen == [(1, "e1", 9.0)]


def test_lookup_errors_name_the_endpoint() -> None:
    table = make_table(1)
    with pytest.raises(KeyError, match="no endpoint named 'x'"):
        table.row("x")
    with pytest.raises(LookupError, match="row 5 holds no endpoint"):
        table.endpoint_at(5)
    assert table.get("x") is None


def test_adapter_bitsets_cached_per_set_survive_widening() -> None:
    table = EndpointTable()
    for i in range(3):
        table.add(Endpoint(f"e{i}", "10.0.0.1", 8000 + i))
    table.set_adapters(0, frozenset({"a", "b"}), frozenset())
    table.set_adapters(1, frozenset({"a", "b"}), frozenset({"c"}))  # same running set: cached
    assert table.adapters_of(0) == (frozenset({"a", "b"}), frozenset())
    assert table.adapters_of(1) == (frozenset({"a", "b"}), frozenset({"c"}))
    assert table.num_adapters[1] == 3
    # Twenty new names widen the bitsets; cached sets are rebuilt at the new width.
    table.set_adapters(2, frozenset(f"x{i}" for i in range(20)), ())
    table.set_adapters(0, frozenset({"a", "b"}), ["c"])
    assert table.active_adapters.shape[1] >= 3
    assert table.adapters_of(0) == (frozenset({"a", "b"}), frozenset({"c"}))
    assert table.adapters_of(2)[0] == frozenset(f"x{i}" for i in range(20))
    assert table.adapters_of(1) == (frozenset({"a", "b"}), frozenset({"c"}))


def test_adapter_names_no_endpoint_advertises_are_reclaimed() -> None:
    # The probe interned 1M names scraped over time (RSS +566 MB, 128 KiB bitsets per
    # row). A name no row advertises any more gives its id back.
    table = make_table(2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            table.set_adapters(i % 2, [f"lora-{i}", "shared"], [f"queued-{i}"])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert table.num_adapter_names == 5  # shared + the last running/waiting pair of 2 rows
    assert table.active_adapters.shape[1] == 1  # ids 0..4 fit one byte
    assert held < 256 * 1024, held
    assert table.adapter_id("lora-0") == -1
    assert table.adapter_id("lora-1998") >= 0
    assert table.adapters_of(0) == (frozenset({"lora-1998", "shared"}), frozenset({"queued-1998"}))
    assert table.adapters_of(1) == (frozenset({"lora-1999", "shared"}), frozenset({"queued-1999"}))
    assert table.adapters_dropped == 0


def test_removed_endpoint_releases_its_adapters() -> None:
    table = make_table(2)
    table.set_adapters(0, ["a", "b"], [])
    table.set_adapters(1, [], ["a"])
    table.remove("e0")
    assert table.adapter_id("b") == -1  # only e0 advertised it
    assert table.adapter_id("a") >= 0  # e1 still has it waiting
    assert table.adapters_of(1) == (frozenset(), frozenset({"a"}))
    table.remove("e1")
    assert table.num_adapter_names == 0
    # A freed id is reused, lowest first, and a new row never inherits stale bits.
    table.add(ep(7))
    table.set_adapters(table.row("e7"), ["z"], [])
    assert table.adapter_id("z") == 0
    assert table.adapters_of(table.row("e7")) == (frozenset({"z"}), frozenset())


def test_replacing_a_set_with_itself_keeps_ids() -> None:
    table = make_table(1)
    table.set_adapters(0, ["a", "b"], ["c"])
    ids = [table.adapter_id(n) for n in "abc"]
    for _ in range(3):
        table.set_adapters(0, frozenset({"a", "b"}), frozenset({"c"}))
    assert [table.adapter_id(n) for n in "abc"] == ids
    table.set_adapters(0, ["b"], ["a"])  # moved between the sets: still advertised
    assert [table.adapter_id(n) for n in "ab"] == ids[:2]
    assert table.adapter_id("c") == -1
    assert table.adapters_of(0) == (frozenset({"b"}), frozenset({"a"}))


def test_adapter_table_is_bounded() -> None:
    table = EndpointTable(max_adapters=64)
    for i in range(3):
        table.add(ep(i))
    names = [f"lora-{i:04d}" for i in range(1000)]
    table.set_adapters(0, names, [], max_loras=1000)
    running, _ = table.adapters_of(0)
    assert running == frozenset(names[:64])  # the first names in sorted order are kept
    assert table.num_adapters[0] == 1000  # the slot count is what the server reported
    assert table.adapters_dropped == 936
    assert table.num_adapter_names == 64
    assert table.active_adapters.shape[1] == 8  # 64 bits
    # Full: a new name is dropped (counted), a held one is shared.
    table.set_adapters(1, ["other", names[3]], ["more"])
    assert table.adapters_of(1) == (frozenset({names[3]}), frozenset())
    assert table.adapters_dropped == 938
    assert table.num_adapters[1] == 3
    assert table.intern_adapter("another") == -1
    assert table.adapters_dropped == 939
    # Room again once row 0 stops advertising; row 1's next scrape gets its names.
    table.set_adapters(0, [], [])
    assert table.num_adapter_names == 1
    table.set_adapters(1, ["other", names[3]], ["more"])
    assert table.adapters_of(1) == (frozenset({"other", names[3]}), frozenset({"more"}))
    assert table.adapters_dropped == 939


def test_one_page_with_200k_adapters_is_bounded() -> None:
    table = make_table(4)
    names = [f"lora-{i:06d}" for i in range(200_000)]
    table.set_adapters(2, names, names[:10])
    assert table.num_adapter_names == table.max_adapters == 4096
    assert table.active_adapters.shape[1] == 4096 // 8
    assert table.adapters_dropped == 200_000 - 4096
    assert table.num_adapters[2] == 200_010
    assert len(table.adapters_of(2)[0]) == 4096


def test_max_adapters_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_adapters must be >= 1"):
        EndpointTable(max_adapters=0)


_NAMES = st.sampled_from([f"n{i}" for i in range(12)])
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "set", "set", "remove", "add"]),
        st.integers(0, 3),
        st.frozensets(_NAMES, max_size=5),
        st.frozensets(_NAMES, max_size=3),
    ),
    max_size=30,
)


@given(_OPS, st.integers(1, 10))
def test_adapter_bitsets_match_the_sets_given(ops: list[Any], max_adapters: int) -> None:
    """Whatever the history, each row's bitsets name exactly the names it was last given
    that the table could hold, every held name is advertised by some row, and an id is
    never shared by two names."""
    table = EndpointTable(max_adapters=max_adapters)
    given_sets: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    complete: dict[str, bool] = {}  # the row's last write dropped no name
    for i in range(4):
        table.add(ep(i))
        given_sets[f"e{i}"] = (frozenset(), frozenset())
    for op, i, running, waiting in ops:
        name = f"e{i}"
        if op == "remove":
            table.remove(name)
            given_sets.pop(name, None)
        elif op == "add" and name not in table:
            table.add(ep(i))
            given_sets[name] = (frozenset(), frozenset())
        elif op == "set" and name in table:
            dropped = table.adapters_dropped
            table.set_adapters(table.row(name), running, waiting)
            given_sets[name] = (running, waiting)
            complete[name] = table.adapters_dropped == dropped
        held: set[str] = set()
        for endpoint, (want_running, want_waiting) in given_sets.items():
            row = table.row(endpoint)
            got_running, got_waiting = table.adapters_of(row)
            if complete.get(endpoint, True):
                assert (got_running, got_waiting) == (want_running, want_waiting)
            else:  # some names found no id: a subset, the first ones in sorted order
                assert got_running <= want_running
                assert got_waiting <= want_waiting
            assert table.num_adapters[row] == len(want_running) + len(want_waiting)
            held |= got_running | got_waiting
        ids = {a: table.adapter_id(a) for a in held}
        assert len(set(ids.values())) == len(ids)
        assert table.num_adapter_names == len(held) <= max_adapters
        assert table.active_adapters.shape[1] <= -(-max_adapters // 8)
