"""SchedulingProfile: filters → weighted scorers → picker, with plugin isolation.

Design note. A profile run is the inner loop of every scheduling decision, so it does
O(plugins) Python work and leaves O(endpoints) work to kernels: each filter narrows an
int32 candidate array, each scorer fills one row of a float32 score matrix, one kernel
call clamps, sanitises and sums the rows with their weights, and the picker ranks the
totals. Plugins are third-party code: one that raises must not take the decision down,
so each call is isolated: a raising filter is skipped, a raising scorer contributes
nothing, a raising picker is replaced by the max-score rule. Every call goes through
:func:`~inference_sched.framework.timing.timed_call`, which times it and counts each
failure per plugin (:class:`PluginStats`, logged at most once per interval). GIE runs the
same pipeline (``gateway-api-inference-extension: pkg/epp/scheduling/framework/
scheduler_profile.go``) without the isolation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference_sched.errors import NoEndpointError
from inference_sched.framework.interfaces import Filter, Picker, Scorer
from inference_sched.framework.stats import DurationHistogram
from inference_sched.framework.timing import timed_call
from inference_sched.framework.types import Candidates, CycleState, ProfileRunResult, Request
from inference_sched.kernels.filtering import is_subsequence
from inference_sched.kernels.picking import top_k_ranked_salted
from inference_sched.kernels.scoring import weighted_sum
from inference_sched.state.table import EndpointTable

__all__ = ["PluginStats", "SchedulingProfile"]

log = logging.getLogger(__name__)

LOG_INTERVAL_S: Final = 60.0
"""A failing plugin is logged at most once per this many seconds."""


class PluginStats:
    """Counters of one plugin at one extension point (GIE's ``plugin_duration_seconds``).

    Attributes:
        extension_point: ``Filter``, ``Scorer``, ``Picker``, ``PrepareData``,
            ``ProfilePicker``, ``ProcessProfilesResults``, ``PreRequest``, ``Deferred``
            (ours), ``ResponseReceived``, ``ResponseStreaming`` or ``ResponseComplete``.
        plugin_type / plugin_name: the plugin's identity.
        calls: completed and failed calls.
        errors: calls that raised.
        total_ns: time spent in the plugin, nanoseconds.
        nonfinite_scores / clamped_scores: scorer outputs that were NaN/inf (→ 0) or
            outside [0, 1] (clamped).
        histogram: per-call durations in buckets (``None`` unless enabled).
    """

    __slots__ = (
        "_last_log_s",
        "_warned_clamped",
        "_warned_nonfinite",
        "calls",
        "clamped_scores",
        "errors",
        "extension_point",
        "histogram",
        "nonfinite_scores",
        "plugin_name",
        "plugin_type",
        "total_ns",
    )

    def __init__(self, extension_point: str, plugin_type: str, plugin_name: str) -> None:
        self.extension_point = extension_point
        self.plugin_type = plugin_type
        self.plugin_name = plugin_name
        self.calls = 0
        self.errors = 0
        self.total_ns = 0
        self.nonfinite_scores = 0
        self.clamped_scores = 0
        self.histogram: DurationHistogram | None = None
        """Per-call durations in buckets, when enabled
        (:meth:`~inference_sched.framework.scheduler.Scheduler.record_plugin_histograms`)."""
        self._warned_nonfinite = 0
        self._warned_clamped = 0
        self._last_log_s = -np.inf

    def failed(self, exc: BaseException) -> None:
        """Count a failure and log it unless one was logged within the interval."""
        self.errors += 1
        now = time.monotonic()
        if now - self._last_log_s >= LOG_INTERVAL_S:
            self._last_log_s = now
            log.error(
                "%s plugin %s/%s raised (%d failures so far; logged at most every %.0f s): %r",
                self.extension_point,
                self.plugin_name,
                self.plugin_type,
                self.errors,
                LOG_INTERVAL_S,
                exc,
                exc_info=exc,
            )

    def warn_scores(self, what: str, count: int) -> None:
        """Log bad scores (at most once per interval)."""
        now = time.monotonic()
        if now - self._last_log_s >= LOG_INTERVAL_S:
            self._last_log_s = now
            log.warning(
                "scorer %s/%s produced %d %s scores so far (scored 0 / clamped); "
                "scores must be finite and in [0, 1]",
                self.plugin_name,
                self.plugin_type,
                count,
                what,
            )

    @classmethod
    def of(cls, extension_point: str, plugin: Any) -> PluginStats:
        """Empty counters for ``plugin`` (its ``type``, else its class name, and ``name``)."""
        return cls(extension_point, getattr(plugin, "type", type(plugin).__name__), plugin.name)

    @property
    def mean_us(self) -> float:
        """Mean time per call, microseconds."""
        return self.total_ns / self.calls / 1e3 if self.calls else 0.0

    def __repr__(self) -> str:
        return (
            f"PluginStats({self.extension_point} {self.plugin_name}/{self.plugin_type}: "
            f"calls={self.calls} errors={self.errors} mean={self.mean_us:.2f}us)"
        )


def _checked_subset(kept: object, candidates: Candidates) -> Candidates:
    """A filter's output as int32 rows, verified to be an ordered subset of its input.

    Kernels index table columns with these rows without bounds checks: a filter that
    invented a row would make them read out of bounds, so this is not optional.
    """
    rows = np.asarray(kept)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise TypeError(f"filter returned {rows.dtype} array of shape {rows.shape}, not int rows")
    rows = rows.astype(np.int32, copy=False)
    if not is_subsequence(candidates, rows):
        raise ValueError("filter returned rows that are not an ordered subset of its input")
    return rows


def _checked_positions(positions: object, n: int) -> npt.NDArray[np.int32]:
    """A picker's output, verified: non-empty, distinct positions in [0, n)."""
    ranked = positions if type(positions) is np.ndarray else np.asarray(positions)
    if ranked.ndim != 1 or ranked.size == 0 or ranked.dtype.kind not in "iu":
        raise ValueError(f"picker returned {ranked!r}; expected non-empty int positions")
    listed = ranked.tolist()
    if len(listed) == 1:  # the usual answer: one pick, no fallbacks
        if not 0 <= listed[0] < n:
            raise ValueError(f"picker returned position {listed[0]} outside [0, {n})")
    elif len(set(listed)) != len(listed) or min(listed) < 0 or max(listed) >= n:
        raise ValueError(f"picker returned positions {listed} outside [0, {n}) or repeated")
    return ranked if ranked.dtype == np.int32 else ranked.astype(np.int32)


def _filter_checked(
    plugin: Filter,
    cycle: CycleState,
    request: Request,
    table: EndpointTable,
    candidates: Candidates,
) -> Candidates:
    """The filter's output, checked: an invalid output is the filter's failure."""
    return _checked_subset(plugin.filter(cycle, request, table, candidates), candidates)


def _pick_checked(
    picker: Picker,
    cycle: CycleState,
    request: Request,
    candidates: Candidates,
    totals: npt.NDArray[np.float32],
) -> npt.NDArray[np.int32]:
    """The picker's ranked positions, checked: an invalid output is the picker's failure."""
    return _checked_positions(picker.pick(cycle, request, candidates, totals), len(candidates))


class SchedulingProfile:
    """A named pipeline: filters, weighted scorers and one picker.

    Args:
        name: the profile's name (``default``, ``prefill``, ``decode`` …).
        filters: applied in order, each to the previous one's output.
        scorers: ``(scorer, weight)`` pairs; totals are Σ weight · clamp01(score),
            unnormalised as in GIE.
        picker: ranks the totals.
    """

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter] = (),
        scorers: Sequence[tuple[Scorer, float]] = (),
        picker: Picker | None = None,
    ) -> None:
        if picker is None:
            raise ValueError(f"profile {name!r} needs a picker")
        self.name = name
        self.filters: tuple[Filter, ...] = tuple(filters)
        self.scorers: tuple[Scorer, ...] = tuple(s for s, _ in scorers)
        self.weights = np.array([float(w) for _, w in scorers], dtype=np.float64)
        self.picker = picker
        self._filter_stats = [PluginStats.of("Filter", f) for f in self.filters]
        self._scorer_stats = [PluginStats.of("Scorer", s) for s in self.scorers]
        self._picker_stats = PluginStats.of("Picker", picker)
        # Each plugin with its counters, zipped once (the loops below run per decision).
        self._filter_calls = tuple(zip(self.filters, self._filter_stats, strict=True))
        self._scorer_calls = tuple(zip(self.scorers, self._scorer_stats, strict=True))
        # Kernel-owned accumulators; folded into PluginStats by stats().
        self._nonfinite = np.zeros(len(self.scorers), dtype=np.int64)
        self._clamped = np.zeros(len(self.scorers), dtype=np.int64)
        self._next_score_check_s = 0.0

    def __repr__(self) -> str:
        parts = [f.name for f in self.filters]
        parts += [f"{s.name}*{w:g}" for s, w in zip(self.scorers, self.weights, strict=True)]
        return f"SchedulingProfile({self.name!r}: {' -> '.join(parts)} -> {self.picker.name})"

    def stats(self) -> list[PluginStats]:
        """Counters of every plugin in this profile (filters, scorers, picker)."""
        for i, stats in enumerate(self._scorer_stats):
            stats.nonfinite_scores = int(self._nonfinite[i])
            stats.clamped_scores = int(self._clamped[i])
        return [*self._filter_stats, *self._scorer_stats, self._picker_stats]

    # ------------------------------------------------------------------ phases
    def filter(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> Candidates:
        """Run the filters.

        Raises:
            NoEndpointError: the candidate set is or becomes empty (names the filter).
        """
        if len(candidates) == 0:
            raise NoEndpointError(self.name)
        if not self.filters:
            return candidates
        for plugin, stats in self._filter_calls:
            try:
                kept = timed_call(
                    stats, _filter_checked, (plugin, cycle, request, table, candidates)
                )
            except Exception:  # noqa: BLE001 - isolated (module doc); timed_call counted it
                kept = candidates
            if len(kept) == 0:
                raise NoEndpointError(self.name, plugin.name)
            candidates = kept
        return candidates

    def score(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> npt.NDArray[np.float32]:
        """Weighted totals of the scorers for ``candidates`` (float32, aligned)."""
        n = len(candidates)
        num_scorers = len(self.scorers)
        # One allocation for the score rows and the totals row (C-contiguous slices).
        block = np.zeros((num_scorers + 1, n), dtype=np.float32)
        matrix = block[:num_scorers]
        for i, (plugin, stats) in enumerate(self._scorer_calls):
            try:
                timed_call(stats, plugin.score, (cycle, request, table, candidates, matrix[i]))
            except Exception:  # noqa: BLE001 - isolated (module doc); timed_call counted it
                matrix[i] = 0.0
        totals: npt.NDArray[np.float32] = block[num_scorers]
        weighted_sum(matrix, self.weights, totals, self._nonfinite, self._clamped)
        self._check_scores()
        return totals

    def pick(
        self,
        cycle: CycleState,
        request: Request,
        candidates: Candidates,
        totals: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.int32]:
        """Ranked positions into ``candidates`` (the picker's, or max-score if it fails)."""
        try:
            return timed_call(
                self._picker_stats, _pick_checked, (self.picker, cycle, request, candidates, totals)
            )
        except Exception:  # noqa: BLE001 - isolated (module doc); timed_call counted it
            positions = np.empty(1, dtype=np.int32)
            salt = cycle.rng.bit_generator.random_raw() >> 1
            top_k_ranked_salted(totals, salt, 1, positions)
            return positions

    def run(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> ProfileRunResult:
        """Filter, score and pick for one request.

        Args:
            cycle: the cycle's state (shared with the other profiles of the cycle).
            request: the request.
            table: endpoint state.
            candidates: int32 rows to consider.

        Returns:
            The ranked endpoints: the pick, then fallbacks.

        Raises:
            NoEndpointError: no candidate survived the filters.
        """
        candidates = self.filter(cycle, request, table, candidates)
        totals = self.score(cycle, request, table, candidates)
        positions = self.pick(cycle, request, candidates, totals)
        return self.result(table, candidates, totals, positions)

    @staticmethod
    def result(
        table: EndpointTable,
        candidates: Candidates,
        totals: npt.NDArray[np.float32],
        positions: npt.NDArray[np.int32],
    ) -> ProfileRunResult:
        """Package ranked positions as a :class:`ProfileRunResult`."""
        # A handful of positions: Python ints and tuples beat NumPy fancy indexing and
        # small-array construction by several microseconds per decision.
        ranked = positions.tolist()
        rows = tuple([int(candidates[p]) for p in ranked])
        endpoint_at = table.endpoint_at
        return ProfileRunResult(
            rows, tuple([endpoint_at(r) for r in rows]), tuple([float(totals[p]) for p in ranked])
        )

    def _check_scores(self) -> None:
        # Checking counters costs more than the kernel at small sizes: do it once a second.
        now = time.monotonic()
        if now < self._next_score_check_s:
            return
        self._next_score_check_s = now + 1.0
        for i, stats in enumerate(self._scorer_stats):
            nonfinite, clamped = int(self._nonfinite[i]), int(self._clamped[i])
            if nonfinite > stats._warned_nonfinite:
                stats.warn_scores("NaN/inf", nonfinite)
                stats._warned_nonfinite = nonfinite
            if clamped > stats._warned_clamped:
                stats.warn_scores("out-of-range", clamped)
                stats._warned_clamped = clamped
            stats.nonfinite_scores, stats.clamped_scores = nonfinite, clamped
