"""SchedulingProfile: filter chain, weighted sum, clamping, isolation of raising plugins."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from inference_sched.errors import NoEndpointError
from inference_sched.framework.profile import SchedulingProfile
from inference_sched.framework.types import CycleState, Request
from inference_sched.state.table import EndpointTable
from tests.helpers import make_table

I32 = npt.NDArray[np.int32]
F32 = npt.NDArray[np.float32]


class Fixed:
    """A scorer returning fixed scores by row."""

    type: ClassVar[str] = "fixed-scorer"
    category: ClassVar[Any] = "Distribution"

    def __init__(self, name: str, by_row: list[float]) -> None:
        self.name = name
        self.by_row = np.array(by_row, dtype=np.float32)

    def score(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: I32, out: F32
    ) -> None:
        out[:] = self.by_row[candidates]


class KeepRows:
    type: ClassVar[str] = "keep-rows-filter"

    def __init__(self, name: str, rows: list[int]) -> None:
        self.name = name
        self.rows = set(rows)

    def filter(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: I32
    ) -> I32:
        return np.array(
            [c for c in candidates.tolist() if c in self.rows], dtype=np.int64
        )  # int64 on purpose


class Raising:
    type: ClassVar[str] = "raising"
    category: ClassVar[Any] = "Distribution"

    def __init__(self, name: str) -> None:
        self.name = name

    def filter(self, *args: Any) -> I32:
        raise RuntimeError("filter bug")

    def score(self, *args: Any) -> None:
        raise RuntimeError("scorer bug")

    def pick(self, *args: Any) -> I32:
        raise RuntimeError("picker bug")


class Argmax:
    type: ClassVar[str] = "argmax-picker"

    def __init__(self, name: str = "argmax", k: int = 1) -> None:
        self.name = name
        self.k = k

    def pick(self, cycle: CycleState, request: Request, candidates: I32, scores: F32) -> I32:
        return np.argsort(-scores, kind="stable")[: self.k].astype(np.int32)


def run(
    profile: SchedulingProfile, table: EndpointTable, candidates: list[int] | None = None
) -> Any:
    cands = table.candidates() if candidates is None else np.array(candidates, dtype=np.int32)
    return profile.run(CycleState(np.random.default_rng(0)), Request.create("m"), table, cands)


def test_weighted_sum_is_unnormalised_and_clamped() -> None:
    table = make_table(3)
    profile = SchedulingProfile(
        "default",
        scorers=[(Fixed("a", [0.5, 1.0, 0.0]), 2.0), (Fixed("b", [1.0, 0.25, 1.5]), 3.0)],
        picker=Argmax(k=3),
    )
    result = run(profile, table)
    # totals: e0 = 2*.5 + 3*1 = 4; e1 = 2 + .75 = 2.75; e2 = 0 + 3*clamp(1.5) = 3
    assert [e.name for e in result.endpoints] == ["e0", "e2", "e1"]
    np.testing.assert_allclose(result.scores, [4.0, 3.0, 2.75])
    assert result.rows == (0, 2, 1)
    stats = {s.plugin_name: s for s in profile.stats()}
    assert stats["b"].clamped_scores == 1
    assert stats["a"].clamped_scores == 0


def test_nan_and_inf_score_zero_and_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    table = make_table(3)
    profile = SchedulingProfile(
        "p",
        scorers=[(Fixed("bad", [np.nan, np.inf, 0.5]), 1.0)],
        picker=Argmax(k=3),
    )
    with caplog.at_level(logging.WARNING):
        result = run(profile, table)
    np.testing.assert_allclose(result.scores, [0.5, 0.0, 0.0])
    assert result.endpoints[0].name == "e2"
    stats = {s.plugin_name: s for s in profile.stats()}
    assert stats["bad"].nonfinite_scores == 2
    assert "produced 2 NaN/inf scores" in caplog.text


def test_filters_chain_and_int64_output_is_converted() -> None:
    table = make_table(4)
    profile = SchedulingProfile(
        "p",
        filters=[KeepRows("f1", [1, 2, 3]), KeepRows("f2", [0, 2, 3])],
        scorers=[(Fixed("s", [0.0, 0.0, 0.1, 0.9]), 1.0)],
        picker=Argmax(k=5),
    )
    result = run(profile, table)
    assert result.rows == (3, 2)


def test_empty_candidates_name_the_filter() -> None:
    table = make_table(3)
    profile = SchedulingProfile(
        "decode", filters=[KeepRows("f1", [0, 1]), KeepRows("only-two", [2])], picker=Argmax()
    )
    with pytest.raises(
        NoEndpointError, match="profile 'decode': filter 'only-two' removed every candidate"
    ) as info:
        run(profile, table)
    assert info.value.profile == "decode"
    assert info.value.filter == "only-two"
    with pytest.raises(NoEndpointError, match="profile 'decode': no candidate endpoints") as info:
        run(profile, table, candidates=[])
    assert info.value.filter == ""


def test_raising_plugins_are_isolated_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = make_table(3)
    bad = Raising("bad")
    profile = SchedulingProfile(
        "p",
        filters=[bad],
        scorers=[(bad, 5.0), (Fixed("good", [0.1, 0.9, 0.5]), 1.0)],
        picker=Raising("bad-picker"),
    )
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            result = run(profile, table)
    # the filter was skipped, the raising scorer contributed 0, max-score replaced the picker
    assert result.endpoints == (table.endpoint_at(1),)
    stats = {(s.extension_point, s.plugin_name): s for s in profile.stats()}
    assert stats[("Filter", "bad")].errors == 3
    assert stats[("Scorer", "bad")].errors == 3
    assert stats[("Picker", "bad-picker")].errors == 3
    assert stats[("Scorer", "good")].errors == 0
    assert stats[("Scorer", "good")].calls == 3
    # once per plugin per interval, not once per failure
    assert caplog.text.count("Filter plugin bad/raising raised") == 1
    assert caplog.text.count("Scorer plugin bad/raising raised") == 1
    assert caplog.text.count("Picker plugin bad-picker/raising raised") == 1


def test_picker_returning_nothing_falls_back_to_max_score() -> None:
    class Empty(Argmax):
        def pick(self, cycle: CycleState, request: Request, candidates: I32, scores: F32) -> I32:
            return np.empty(0, dtype=np.int32)

    table = make_table(3)
    profile = SchedulingProfile("p", scorers=[(Fixed("s", [0.2, 0.1, 0.7]), 1.0)], picker=Empty())
    assert run(profile, table).endpoint.name == "e2"


def test_no_scorers_gives_zero_totals() -> None:
    table = make_table(2)
    result = run(SchedulingProfile("p", picker=Argmax(k=2)), table)
    np.testing.assert_array_equal(result.scores, [0.0, 0.0])


def test_profile_needs_a_picker_and_has_a_readable_repr() -> None:
    with pytest.raises(ValueError, match="profile 'p' needs a picker"):
        SchedulingProfile("p")
    profile = SchedulingProfile(
        "p", filters=[KeepRows("f", [])], scorers=[(Fixed("q", []), 2.0)], picker=Argmax()
    )
    assert repr(profile) == "SchedulingProfile('p': f -> q*2 -> argmax)"


def test_stats_time_and_calls() -> None:
    table = make_table(2)
    profile = SchedulingProfile("p", scorers=[(Fixed("s", [0.0, 1.0]), 1.0)], picker=Argmax())
    run(profile, table)
    run(profile, table)
    for stats in profile.stats():
        assert stats.calls == 2
        assert stats.total_ns > 0
        assert stats.mean_us > 0
        assert "calls=2" in repr(stats)


class Returns:
    """A filter and picker that return whatever it is given (to test output checks)."""

    type: ClassVar[str] = "returns"

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def filter(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: I32
    ) -> Any:
        return self.value

    def pick(self, cycle: CycleState, request: Request, candidates: I32, scores: F32) -> Any:
        return self.value


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([0, 1], id="python-list-is-accepted"),
        pytest.param(np.array([50_000_000], dtype=np.int32), id="invented-row"),
        pytest.param(np.array([2, 0], dtype=np.int32), id="order-changed"),
        pytest.param(np.array([0, 0], dtype=np.int32), id="duplicated"),
        pytest.param(np.array([0.5]), id="floats"),
        pytest.param(np.zeros((1, 1), dtype=np.int32), id="2-d"),
        pytest.param("rows", id="not-an-array"),
    ],
)
def test_filter_output_is_checked_before_any_kernel_reads_it(bad: Any) -> None:
    table = make_table(3, waiting=[5, 0, 9])
    profile = SchedulingProfile(
        "p",
        filters=[Returns("bad", bad)],
        scorers=[(Fixed("s", [0.1, 0.9, 0.5]), 1.0)],
        picker=Argmax(),
    )
    result = run(profile, table)
    stats = {s.plugin_name: s for s in profile.stats()}
    if isinstance(bad, list):  # a plain list of valid rows is a valid answer
        assert result.rows == (1,)
        assert stats["bad"].errors == 0
    else:  # the filter is treated as failed: its output is ignored
        assert result.rows == (1,)
        assert stats["bad"].errors == 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.array([7], dtype=np.int32), id="out-of-range"),
        pytest.param(np.array([-1], dtype=np.int32), id="negative"),
        pytest.param(np.array([1, 1], dtype=np.int32), id="repeated"),
        pytest.param(np.array([], dtype=np.int32), id="empty"),
        pytest.param(None, id="none"),
    ],
)
def test_picker_output_is_checked(bad: Any) -> None:
    table = make_table(3)
    profile = SchedulingProfile(
        "p", scorers=[(Fixed("s", [0.1, 0.2, 0.9]), 1.0)], picker=Returns("bad-picker", bad)
    )
    assert run(profile, table).rows == (2,)  # the max-score fallback
    assert profile.stats()[-1].errors == 1
