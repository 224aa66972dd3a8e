"""``Scheduler.schedule_batch``: many requests in one call, shared or joint.

By default a batch returns what calling ``schedule`` on each request in order would
return. When every plugin on the path declares that its output does not depend on the
request nor on earlier decisions of the batch (``is_batch_invariant``: load scorers fed
by scraped metrics, role and label filters) and the picker can rank one score vector for
many requests (``pick_shared``), the batch filters and scores once and ranks all
requests in one kernel call (:func:`schedule_shared`); otherwise it loops over
``schedule``.

``joint=True`` instead places the burst as a whole (:func:`schedule_joint`,
:mod:`inference_sched.framework.scheduler.joint`): each request runs admission, the data producers
and the profile's filters as in ``schedule``; then one kernel assigns every request on
Dynamo's cost (uncached prefix blocks against load), with the load and the batch's own
prefix cache updated as each request is placed, so identical prompts co-locate while
that pays and the rest spreads instead of herding on one snapshot; then the PreRequest
hooks run per request, in order. The profile's scorers and picker are not called in that
mode. It needs a handler with a static profile; with any other handler it loops over
``schedule``. docs/architecture.md ("Batches") describes both paths.

GIE schedules one request at a time; these paths are ours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from inference_sched.errors import InferenceSchedError, NoEndpointError, SchedulingError
from inference_sched.framework.profile import SchedulingProfile
from inference_sched.framework.scheduler.joint import Plan, Prepared, plan
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    ProfileRunResult,
    Request,
    SchedulingResult,
)

if TYPE_CHECKING:
    from inference_sched.framework.scheduler.cycle import Scheduler

__all__ = ["Outcome", "shared_profile", "schedule_joint", "schedule_shared"]

log = logging.getLogger(__package__)  # one logger for the scheduler package

Outcome = SchedulingResult | InferenceSchedError
"""One entry of a batch's answer: the request's result, or its error."""


# ====================================================================== shared
def shared_profile(scheduler: Scheduler, requests: Sequence[Request]) -> SchedulingProfile | None:
    """The single profile a batch can share, or ``None`` to loop over ``schedule``."""
    profile = scheduler._static_profile
    if (
        len(requests) < 2
        or scheduler._producers
        or scheduler._admitters
        or scheduler._screeners
        or profile is None
    ):
        return None
    plugins: Iterable[Any] = (*profile.filters, *profile.scorers)
    if not all(getattr(p, "is_batch_invariant", False) for p in plugins):
        return None
    if not callable(getattr(profile.picker, "pick_shared", None)):
        return None
    if scheduler.saturation_detector is not None and any(r.priority < 0 for r in requests):
        return None  # admission is per request
    first = requests[0].subset_hint
    if any(r.subset_hint != first for r in requests):
        return None
    return profile


def schedule_shared(
    scheduler: Scheduler, requests: Sequence[Request], profile: SchedulingProfile
) -> list[Outcome]:
    """Filter and score once for the whole batch, rank every request in one kernel call."""
    t0 = time.perf_counter_ns()
    n = len(requests)
    scheduler.cycles += n
    table = scheduler.table
    cycle = CycleState(scheduler.rng, scheduler._clock())
    try:
        candidates = table.candidates_for(requests[0].subset_hint)
        if len(candidates) == 0:
            raise NoEndpointError("")
        # Invariant filters and scorers see the same data for every request: run once.
        candidates = profile.filter(cycle, requests[0], table, candidates)
        totals = profile.score(cycle, requests[0], table, candidates)
    except NoEndpointError as exc:
        scheduler.failures += n
        error: InferenceSchedError = exc
        if exc.profile:
            error = SchedulingError(
                f"failed to run any scheduler profile: {exc}", {profile.name: exc}
            )
        _record(scheduler, time.perf_counter_ns() - t0, n)
        return [error] * n
    ranked, counts = profile.picker.pick_shared(cycle, candidates, totals, n)  # type: ignore[attr-defined]
    out = _package_shared(scheduler, requests, profile, candidates, totals, ranked, counts)
    _record(scheduler, time.perf_counter_ns() - t0, n)
    return out


def _package_shared(
    scheduler: Scheduler,
    requests: Sequence[Request],
    profile: SchedulingProfile,
    candidates: Candidates,
    totals: npt.NDArray[np.float32],
    ranked: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int32],
) -> list[Outcome]:
    endpoint_at = scheduler.table.endpoint_at
    name = profile.name
    rows2d = candidates.take(ranked).tolist()
    scores2d = totals.take(ranked).tolist()
    counts_list = counts.tolist()
    out: list[Outcome] = []
    pre_request = scheduler._pre_request
    for request, rows_all, scores_all, k in zip(
        requests, rows2d, scores2d, counts_list, strict=True
    ):
        rows = tuple(rows_all[:k])
        run = ProfileRunResult(rows, tuple([endpoint_at(r) for r in rows]), tuple(scores_all[:k]))
        result = SchedulingResult({name: run}, name)
        if pre_request:
            cycle = CycleState(scheduler.rng, scheduler._clock())
            result = scheduler._run_pre_request(cycle, request, result)
        out.append(result)
    return out


# ====================================================================== joint
def schedule_joint(scheduler: Scheduler, requests: Sequence[Request]) -> list[Outcome]:
    """Assign the batch as a whole (module docstring)."""
    profile = scheduler._static_profile
    if profile is None:  # the profiles a request runs depend on the handler
        return [scheduler._schedule_or_error(r) for r in requests]
    if not requests:
        return []
    t0 = time.perf_counter_ns()
    first_cycle = scheduler.cycles  # shed requests are not cycles (as in schedule)
    out: list[Outcome | None] = [None] * len(requests)
    prepared: list[Prepared] = []
    for i, request in enumerate(requests):
        try:
            prepared.append(_prepare_joint(scheduler, i, request, profile))
        except InferenceSchedError as exc:
            out[i] = exc
    if prepared:
        try:
            planned = plan(prepared, scheduler.table, scheduler.joint_cost, scheduler.rng)
        except Exception as exc:  # never let a framework bug escape raw
            log.exception("joint batch assignment failed unexpectedly")
            scheduler.failures += len(prepared)
            for p in prepared:
                out[p.position] = SchedulingError(f"joint batch assignment failed: {exc!r}")
        else:
            _package_joint(scheduler, prepared, profile, planned, out)
    _record(scheduler, time.perf_counter_ns() - t0, scheduler.cycles - first_cycle)
    results = [r for r in out if r is not None]
    assert len(results) == len(requests), "every request gets a result or an error"
    return results


def _prepare_joint(
    scheduler: Scheduler, index: int, request: Request, profile: SchedulingProfile
) -> Prepared:
    """Admission, producers and filters of one request of a joint batch."""
    if request.priority < 0 and scheduler.saturation_detector is not None:
        scheduler._admit(request)
    scheduler.cycles += 1
    table = scheduler.table
    try:
        cycle = CycleState(scheduler.rng, scheduler._clock())
        candidates = table.candidates_for(request.subset_hint)
        if len(candidates) == 0:
            raise NoEndpointError("")
        if scheduler._screeners:
            candidates = scheduler._screen(cycle, request, candidates)
        if scheduler._producers:
            scheduler._prepare(cycle, request, candidates)
        try:
            candidates = profile.filter(cycle, request, table, candidates)
        except NoEndpointError as exc:  # as Scheduler._run_static reports a failed profile
            raise SchedulingError(
                f"failed to run any scheduler profile: {exc}", {profile.name: exc}
            ) from exc
        return Prepared(index, request, cycle, candidates)
    except InferenceSchedError:
        scheduler.failures += 1
        raise
    except Exception as exc:  # never let a framework bug escape raw
        scheduler.failures += 1
        log.exception("scheduling cycle failed unexpectedly")
        raise SchedulingError(f"scheduling cycle failed: {exc!r}") from exc


def _package_joint(
    scheduler: Scheduler,
    prepared: Sequence[Prepared],
    profile: SchedulingProfile,
    planned: Plan,
    out: list[Outcome | None],
) -> None:
    endpoint_at = scheduler.table.endpoint_at
    name = profile.name
    for p, positions, costs in zip(
        prepared, planned.ranked.tolist(), planned.costs.tolist(), strict=True
    ):
        kept = [q for q in positions if q >= 0]
        rows = tuple([int(p.candidates[q]) for q in kept])
        run = ProfileRunResult(
            rows, tuple([endpoint_at(r) for r in rows]), tuple([-c for c in costs[: len(kept)]])
        )
        result = SchedulingResult({name: run}, name)
        if scheduler._pre_request:  # in request order: ``prepared`` is
            result = scheduler._run_pre_request(p.cycle, p.request, result)
        out[p.position] = result


def _record(scheduler: Scheduler, elapsed_ns: int, n: int) -> None:
    """Count ``n`` decisions made together in ``elapsed_ns`` in the e2e metrics."""
    scheduler.e2e_ns += elapsed_ns
    scheduler.e2e_histogram.observe_batch_ns(elapsed_ns, n)
