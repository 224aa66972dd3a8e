"""Scheduler: the profile-handler loop of GIE, the request lifecycle hooks, batches.

Design note. ``schedule(request)`` is GIE's ``Scheduler.Schedule`` plus the Director's
steps around it: candidates (the healthy pool, or the gateway's subset) → data producers
(dependency order) → the profile handler picks profiles and runs them until it says stop
→ ``process_results`` → PreRequest hooks. Response hooks are called by the embedder as the
upstream response arrives, with the result it routed on, so plugins can release the
per-request state they took in PreRequest.

A profile handler may declare ``static_profile(profiles) -> name | None``: the one profile
it always runs, made primary, whatever the request (``single-profile-handler`` does). The
scheduler then runs that profile directly instead of the handler loop: same answer, a few
microseconds less per decision.

``schedule_batch`` returns what calling ``schedule`` on each request in order would
return. When every plugin on the path declares that its output does not depend on the
request nor on earlier decisions of the batch (``is_batch_invariant``: load scorers fed by
scraped metrics, role and label filters) and the picker can rank one score vector for
many requests (``pick_shared``), the batch filters and scores once and ranks all requests
in one kernel call; otherwise it loops over ``schedule``.

``schedule_batch(requests, joint=True)`` instead places the burst as a whole
(:mod:`inference_sched.framework.joint`): each request runs admission, the data producers and the
profile's filters as in ``schedule``; then one kernel assigns every request on Dynamo's
cost (uncached prefix blocks against load), with the load and the batch's own prefix
cache updated as each request is placed, so identical prompts co-locate while that pays
and the rest spreads instead of herding on one snapshot; then the PreRequest hooks run
per request, in order. The profile's scorers and picker are not called in that mode. It
needs a handler with a static profile; with any other handler it loops over
``schedule``.

Every plugin call is isolated (see :mod:`inference_sched.framework.profile`): a raising plugin is
counted and logged, and the cycle degrades instead of failing.

Admission (GIE's legacy admission controller, flow control off): before the cycle, a
sheddable request (priority < 0) is rejected with :class:`~inference_sched.errors.
RequestShedError` (HTTP 429) when the saturation detector named by the config's
``saturationDetector`` reports >= 1.0 over the request's candidates. Requests with
priority >= 0 are never shed. A rejected request is not a scheduling attempt (GIE
admits before it schedules): it counts in ``shed`` only.

Admission plugins (GIE ``Admitter``, e.g. ``latency-slo-admitter``): every instantiated
plugin with ``admit_request`` runs after the data producers (it may read their data) and
before the profiles; one raising :class:`~inference_sched.errors.AdmissionDeniedError`
denies the request (GIE: HTTP 500). A denial is not a scheduling attempt either: it counts
in ``denied`` only. Any other exception from an admitter admits (counted in
``admission_errors``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference_sched.errors import (
    AdmissionDeniedError,
    ConfigError,
    InferenceSchedError,
    NoEndpointError,
    RequestShedError,
    SchedulingError,
)
from inference_sched.framework.config import EndpointPickerConfig, load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.interfaces import (
    DataProducer,
    Filter,
    Picker,
    ProfileHandler,
    SaturationDetector,
    Scorer,
)
from inference_sched.framework.joint import JointCost, Plan, Prepared, plan
from inference_sched.framework.profile import PluginStats, SchedulingProfile
from inference_sched.framework.registry import kinds_of
from inference_sched.framework.stats import DEFAULT_DURATION_BUCKETS_S, DurationHistogram
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
)
from inference_sched.state.table import EndpointTable

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

ConfigSource = EndpointPickerConfig | str | os.PathLike[str] | Mapping[str, Any] | None

_MAX_ROUNDS_PER_PROFILE: Final = 2


def _stats(point: str, plugin: Any) -> PluginStats:
    return PluginStats(point, getattr(plugin, "type", type(plugin).__name__), plugin.name)


class Scheduler:
    """Schedules requests onto the endpoints of one pool.

    Build it from a config with :meth:`from_config`, or from plugin instances directly.

    Args:
        table: the pool's endpoint state.
        profiles: scheduling profiles by name.
        handler: the profile handler.
        producers: data producers, in dependency order.
        plugins: every plugin instance by name; the lifecycle hooks (PreRequest,
            Response*) are taken from it, in order, whatever profile they belong to.
        seed: seeds the random tie-breaks; ``None`` draws fresh entropy.
        saturation_detector: sheds sheddable requests at saturation >= 1.0 (see the
            module docstring); ``None`` sheds nothing.
    """

    def __init__(
        self,
        table: EndpointTable,
        profiles: Mapping[str, SchedulingProfile],
        handler: ProfileHandler,
        *,
        producers: Sequence[DataProducer] = (),
        plugins: Mapping[str, Any] | None = None,
        seed: int | None = None,
        saturation_detector: SaturationDetector | None = None,
    ) -> None:
        if not profiles:
            raise ValueError("a scheduler needs at least one profile")
        self.table = table
        self.profiles = dict(profiles)
        self.handler = handler
        self.plugins = dict(plugins or {})
        self.rng = np.random.default_rng(seed)
        self._clock = table.clock
        hooks = list(self.plugins.values())
        self._producers = [(p, _stats("PrepareData", p)) for p in producers]
        self._pre_request = [(p, _stats("PreRequest", p)) for p in _having(hooks, "pre_request")]
        self._deferred = [(p, _stats("Deferred", p)) for p in _having(hooks, "run_deferred")]
        self._received = [
            (p, _stats("ResponseReceived", p)) for p in _having(hooks, "response_received")
        ]
        self._streaming = [
            (p, _stats("ResponseStreaming", p)) for p in _having(hooks, "response_streaming")
        ]
        self._complete = [
            (p, _stats("ResponseComplete", p)) for p in _having(hooks, "response_complete")
        ]
        self._admitters = [(p, _stats("Admitter", p)) for p in _having(hooks, "admit_request")]
        self._handler_pick = _stats("ProfilePicker", handler)
        self._handler_process = _stats("ProcessProfilesResults", handler)
        self._max_rounds = _MAX_ROUNDS_PER_PROFILE * len(self.profiles)
        static = getattr(handler, "static_profile", None)
        name = static(self.profiles) if callable(static) else None
        self._static_profile: SchedulingProfile | None = (
            None if name is None else self.profiles[name]
        )
        self.e2e_ns = 0
        """Total time spent in ``schedule`` (nanoseconds), GIE's scheduler e2e duration."""
        self.e2e_histogram = DurationHistogram()
        """Per-decision durations in GIE's buckets (exported by
        :mod:`inference_sched.observability.prometheus`)."""
        self.cycles = 0
        """Scheduling cycles run (``scheduler_attempts_total``)."""
        self.failures = 0
        """Cycles that ended in an error."""
        self.saturation_detector = saturation_detector
        """The detector admission asks (the config's ``saturationDetector``), or ``None``."""
        self.shed = 0
        """Sheddable requests rejected at admission because the pool was saturated."""
        self.admission_errors = 0
        """Detector or admitter calls that raised (the request was admitted)."""
        self.denied = 0
        """Requests an admission plugin denied (:class:`AdmissionDeniedError`)."""
        self.joint_cost = JointCost()
        """The cost weights of ``schedule_batch(..., joint=True)`` (replace to change)."""
        self.config: EndpointPickerConfig | None = None
        """The config it was built from (:meth:`from_config`), for the parts that live
        outside the scheduling cycle (``dataLayer``: :func:`~inference_sched.datalayer.
        scraper.scrapers_for`)."""

    # --------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        config: ConfigSource = None,
        table: EndpointTable | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Scheduler:
        """Build every plugin of an ``EndpointPickerConfig`` and wire the scheduler.

        Args:
            config: a loaded config, YAML text, a path, a parsed mapping, or ``None``
                for GIE's default (queue 2, kv-cache 2, prefix 3, max-score picker).
            table: the endpoint table to schedule over (a new empty one by default).
            seed: seeds random tie-breaks.
            clock: time source for a new table.

        Raises:
            ConfigError: the config is invalid, or a plugin's constructor failed (the
                error names the plugin's path in the config).
        """
        if not isinstance(config, EndpointPickerConfig):
            config = load_config(config)
        if table is None:
            table = EndpointTable(clock=clock) if clock is not None else EndpointTable()
        handle = PluginHandle(table, clock=clock)
        for spec in config.plugins:
            try:
                instance = spec.cls(spec.name, spec.params, handle)
            except InferenceSchedError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"plugin {spec.name!r} ({spec.type}) failed to start: "
                    f"{type(exc).__name__}: {exc}",
                    path=spec.path,
                ) from exc
            handle.add_plugin(spec.name, instance)
        plugins = handle.plugins()
        profiles = {p.name: _build_profile(p, plugins) for p in config.scheduling_profiles}
        handlers = [p for p in plugins.values() if "profile-handler" in kinds_of(type(p))]
        if len(handlers) != 1:  # the config loader guarantees one; guard hand-made configs
            raise ConfigError(f"expected exactly one profile handler, found {len(handlers)}")
        producers = _dependency_order(
            [p for p in plugins.values() if "data-producer" in kinds_of(type(p))]
        )
        scheduler = cls(
            table,
            profiles,
            handlers[0],
            producers=producers,
            plugins=plugins,
            seed=seed,
            saturation_detector=_saturation_detector(config, plugins),
        )
        scheduler.config = config
        return scheduler

    # ------------------------------------------------------------- scheduling
    def schedule(self, request: Request) -> SchedulingResult:
        """Pick the endpoint (and fallbacks) for one request, then run PreRequest hooks.

        Raises:
            NoEndpointError: no candidate endpoint (empty pool or gateway subset):
                GIE answers 503.
            SchedulingError: every profile failed or the handler rejected the
                results: GIE answers 429. ``profile_errors`` says why per profile.
            RequestShedError: the request is sheddable (priority < 0) and the pool is
                saturated: GIE answers 429. Not counted as a scheduling attempt.
            AdmissionDeniedError: an admission plugin denied the request: GIE answers
                500. Not counted as a scheduling attempt.
        """
        if request.priority < 0 and self.saturation_detector is not None:
            self._admit(request)
        t0 = time.perf_counter_ns()
        self.cycles += 1
        try:
            cycle = CycleState(self.rng, self._clock())
            candidates = self.table.candidates_for(request.subset_hint)
            if len(candidates) == 0:
                raise NoEndpointError("")
            if self._producers:
                self._prepare(cycle, request, candidates)
            if self._admitters:
                self._run_admitters(cycle, request, candidates)
            profile = self._static_profile
            if profile is None:
                result = self._run_profiles(cycle, request, candidates)
            else:
                result = self._run_static(cycle, request, candidates, profile)
            if self._pre_request:
                self._run_pre_request(cycle, request, result)
            return result
        except AdmissionDeniedError:
            self.cycles -= 1  # denied before scheduling: not an attempt (see module doc)
            self.denied += 1
            raise
        except InferenceSchedError:
            self.failures += 1
            raise
        except Exception as exc:  # never let a framework bug escape raw
            self.failures += 1
            log.exception("scheduling cycle failed unexpectedly")
            raise SchedulingError(f"scheduling cycle failed: {exc!r}") from exc
        finally:
            elapsed = time.perf_counter_ns() - t0
            self.e2e_ns += elapsed
            self.e2e_histogram.observe_ns(elapsed)

    def schedule_batch(
        self, requests: Sequence[Request], *, joint: bool = False
    ) -> list[SchedulingResult | InferenceSchedError]:
        """Schedule many requests; entry ``i`` is the result (or error) of ``requests[i]``.

        By default equivalent to calling :meth:`schedule` on each request in order
        (errors are returned in place instead of raised), with the Python overhead
        amortised when the plugins allow it (see the module docstring).

        Args:
            requests: the batch, in arrival order.
            joint: assign the batch as a whole on the cost of :attr:`joint_cost`
                (module docstring, :mod:`inference_sched.framework.joint`): later requests see the
                load and prefixes of earlier ones, identical prompts co-locate while
                that pays. The profile's filters apply; its scorers and picker do not.
                Each entry is a :class:`SchedulingResult` whose scores are the negated
                costs, or the request's own error, as with :meth:`schedule`.
        """
        if joint:
            return self._schedule_joint(requests)
        plan = self._batch_plan(requests)
        if plan is None:
            return [self._schedule_or_error(r) for r in requests]
        return self._schedule_shared(requests, plan)

    def run_deferred(self) -> None:
        """Run the work plugins postponed off the decision path (:class:`DeferredWork`).

        GIE updates the prefix index in a goroutine after the pick; here PreRequest
        queues the update and this call applies it. Call it once the decision is on its
        way (after answering the gateway, or from an idle callback), on the thread that
        schedules. Skipping it is safe: a plugin runs its pending work before its next
        read, so the next decision pays for it instead.
        """
        for plugin, stats in self._deferred:
            _call(stats, plugin.run_deferred)

    # -------------------------------------------------------------- responses
    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Run ResponseReceived hooks (upstream headers arrived)."""
        for plugin, stats in self._received:
            _call(stats, plugin.response_received, request, response, result)

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Run ResponseStreaming hooks (a body chunk arrived)."""
        for plugin, stats in self._streaming:
            _call(stats, plugin.response_streaming, request, response, result)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Run ResponseComplete hooks. Call exactly once per scheduled request, also on
        errors and client disconnects, so plugins release per-request state."""
        for plugin, stats in self._complete:
            _call(stats, plugin.response_complete, request, response, result)

    # ------------------------------------------------------------------ stats
    def record_plugin_histograms(
        self, enabled: bool = True, bounds_s: Sequence[float] = DEFAULT_DURATION_BUCKETS_S
    ) -> None:
        """Record every plugin call's duration in buckets (GIE's by default), so
        ``inference_extension_plugin_duration_seconds`` is exported with real buckets.

        Off by default: plugins then keep totals only (exact ``_sum`` and ``_count``, a
        ``+Inf`` bucket), which spares ~0.1 µs per plugin call. Enabling starts empty
        histograms; disabling drops them.
        """
        for stats in self.stats():
            stats.histogram = DurationHistogram(bounds_s) if enabled else None

    def stats(self) -> list[PluginStats]:
        """Per-plugin counters at every extension point (calls, errors, time)."""
        out = [self._handler_pick, self._handler_process]
        out += [s for _, s in self._producers]
        for profile in self.profiles.values():
            out += profile.stats()
        for hooks in (
            self._admitters,
            self._pre_request,
            self._deferred,
            self._received,
            self._streaming,
            self._complete,
        ):
            out += [s for _, s in hooks]
        return out

    # ---------------------------------------------------------------- phases
    def _admit(self, request: Request) -> None:
        """Shed a sheddable request when the pool is saturated (GIE legacy admission)."""
        detector = self.saturation_detector
        assert detector is not None, "_admit needs a detector"
        candidates = self.table.candidates_for(request.subset_hint)
        if len(candidates) == 0:
            return  # GIE answers "no candidates" (503) before admission: schedule() does
        try:
            saturation = detector.saturation(self.table, candidates, self._clock())
        except Exception:  # a broken detector must not reject traffic: admit, count, log
            self.admission_errors += 1
            if self.admission_errors == 1:
                log.exception("saturation detector %r failed; admitting", detector.name)
            return
        if saturation >= 1.0:
            self.shed += 1
            raise RequestShedError(
                priority=request.priority, saturation=saturation, detector=detector.name
            )

    def _run_admitters(self, cycle: CycleState, request: Request, candidates: Candidates) -> None:
        """Admission plugins, in order; the first denial propagates."""
        for plugin, stats in self._admitters:
            t0 = time.perf_counter_ns()
            try:
                plugin.admit_request(cycle, request, self.table, candidates)
            except AdmissionDeniedError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken admitter must not deny: admit
                stats.failed(exc)
                self.admission_errors += 1
            finally:
                elapsed = time.perf_counter_ns() - t0
                stats.calls += 1
                stats.total_ns += elapsed
                if stats.histogram is not None:
                    stats.histogram.observe_ns(elapsed)

    def _prepare(self, cycle: CycleState, request: Request, candidates: Candidates) -> None:
        for plugin, stats in self._producers:
            _call(stats, plugin.prepare_request_data, cycle, request, self.table, candidates)

    def _run_profiles(
        self, cycle: CycleState, request: Request, candidates: Candidates
    ) -> SchedulingResult:
        results: dict[str, ProfileRunResult | None] = {}
        errors: dict[str, Exception] = {}
        for _ in range(self._max_rounds):
            chosen = self._pick_profiles(cycle, request, results)
            if not chosen:
                break
            for name, profile in chosen.items():
                try:
                    results[name] = profile.run(cycle, request, self.table, candidates)
                except Exception as exc:  # noqa: BLE001 - a failed profile is a None result
                    results[name] = None
                    errors[name] = exc
        else:
            raise SchedulingError(
                f"profile handler {self.handler.name!r} did not stop after "
                f"{self._max_rounds} rounds",
                errors,
            )
        if all(r is None for r in results.values()):
            detail = "; ".join(str(e) for e in errors.values()) or "no profile was chosen"
            raise SchedulingError(f"failed to run any scheduler profile: {detail}", errors)
        stats = self._handler_process
        t0 = time.perf_counter_ns()
        try:
            return self.handler.process_results(cycle, request, results)
        except SchedulingError as exc:
            exc.profile_errors.update(errors)
            raise
        except Exception as exc:
            stats.failed(exc)
            raise SchedulingError(
                f"profile handler {self.handler.name!r} failed: {exc!r}", errors
            ) from exc
        finally:
            elapsed = time.perf_counter_ns() - t0
            stats.calls += 1
            stats.total_ns += elapsed
            if stats.histogram is not None:
                stats.histogram.observe_ns(elapsed)

    def _run_static(
        self,
        cycle: CycleState,
        request: Request,
        candidates: Candidates,
        profile: SchedulingProfile,
    ) -> SchedulingResult:
        # The handler declared that it always runs exactly this profile and makes it
        # primary (``static_profile``): skip the loop, same answer, microseconds less.
        try:
            run = profile.run(cycle, request, self.table, candidates)
        except Exception as exc:  # a failed profile fails the cycle, cleanly
            raise SchedulingError(
                f"failed to run any scheduler profile: {exc}", {profile.name: exc}
            ) from exc
        return SchedulingResult({profile.name: run}, profile.name)

    def _pick_profiles(
        self, cycle: CycleState, request: Request, results: Mapping[str, ProfileRunResult | None]
    ) -> Mapping[str, SchedulingProfile]:
        stats = self._handler_pick
        t0 = time.perf_counter_ns()
        try:
            return self.handler.pick_profiles(cycle, request, self.profiles, results)
        except Exception as exc:
            stats.failed(exc)
            raise SchedulingError(
                f"profile handler {self.handler.name!r} failed to pick profiles: {exc!r}"
            ) from exc
        finally:
            elapsed = time.perf_counter_ns() - t0
            stats.calls += 1
            stats.total_ns += elapsed
            if stats.histogram is not None:
                stats.histogram.observe_ns(elapsed)

    def _run_pre_request(
        self, cycle: CycleState, request: Request, result: SchedulingResult
    ) -> None:
        for plugin, stats in self._pre_request:
            _call(stats, plugin.pre_request, cycle, request, result)

    def _schedule_or_error(self, request: Request) -> SchedulingResult | InferenceSchedError:
        try:
            return self.schedule(request)
        except InferenceSchedError as exc:
            return exc

    # ----------------------------------------------------------------- batches
    def _batch_plan(self, requests: Sequence[Request]) -> SchedulingProfile | None:
        """The single profile a batch can share, or ``None`` to loop over ``schedule``."""
        profile = self._static_profile
        if len(requests) < 2 or self._producers or self._admitters or profile is None:
            return None
        plugins: Iterable[Any] = (*profile.filters, *profile.scorers)
        if not all(getattr(p, "is_batch_invariant", False) for p in plugins):
            return None
        if not callable(getattr(profile.picker, "pick_shared", None)):
            return None
        if self.saturation_detector is not None and any(r.priority < 0 for r in requests):
            return None  # admission is per request
        first = requests[0].subset_hint
        if any(r.subset_hint != first for r in requests):
            return None
        return profile

    def _schedule_shared(
        self, requests: Sequence[Request], profile: SchedulingProfile
    ) -> list[SchedulingResult | InferenceSchedError]:
        t0 = time.perf_counter_ns()
        n = len(requests)
        self.cycles += n
        cycle = CycleState(self.rng, self._clock())
        try:
            candidates = self.table.candidates_for(requests[0].subset_hint)
            if len(candidates) == 0:
                raise NoEndpointError("")
            # Invariant filters and scorers see the same data for every request: run once.
            candidates = profile.filter(cycle, requests[0], self.table, candidates)
            totals = profile.score(cycle, requests[0], self.table, candidates)
        except NoEndpointError as exc:
            self.failures += n
            error: InferenceSchedError = exc
            if exc.profile:
                error = SchedulingError(
                    f"failed to run any scheduler profile: {exc}", {profile.name: exc}
                )
            self._record_batch(time.perf_counter_ns() - t0, n)
            return [error] * n
        ranked, counts = profile.picker.pick_shared(cycle, candidates, totals, n)  # type: ignore[attr-defined]
        out = self._package_shared(requests, profile, candidates, totals, ranked, counts)
        self._record_batch(time.perf_counter_ns() - t0, n)
        return out

    def _schedule_joint(
        self, requests: Sequence[Request]
    ) -> list[SchedulingResult | InferenceSchedError]:
        profile = self._static_profile
        if profile is None:  # the profiles a request runs depend on the handler
            return [self._schedule_or_error(r) for r in requests]
        if not requests:
            return []
        t0 = time.perf_counter_ns()
        first_cycle = self.cycles  # shed requests are not cycles (as in schedule)
        out: list[SchedulingResult | InferenceSchedError | None] = [None] * len(requests)
        prepared: list[Prepared] = []
        for i, request in enumerate(requests):
            try:
                prepared.append(self._prepare_joint(i, request, profile))
            except InferenceSchedError as exc:
                out[i] = exc
        if prepared:
            try:
                planned = plan(prepared, self.table, self.joint_cost, self.rng)
            except Exception as exc:  # never let a framework bug escape raw
                log.exception("joint batch assignment failed unexpectedly")
                self.failures += len(prepared)
                for p in prepared:
                    out[p.position] = SchedulingError(f"joint batch assignment failed: {exc!r}")
            else:
                self._package_joint(prepared, profile, planned, out)
        self._record_batch(time.perf_counter_ns() - t0, self.cycles - first_cycle)
        results = [r for r in out if r is not None]
        assert len(results) == len(requests), "every request gets a result or an error"
        return results

    def _prepare_joint(self, index: int, request: Request, profile: SchedulingProfile) -> Prepared:
        """Admission, producers and filters of one request of a joint batch."""
        if request.priority < 0 and self.saturation_detector is not None:
            self._admit(request)
        self.cycles += 1
        try:
            cycle = CycleState(self.rng, self._clock())
            candidates = self.table.candidates_for(request.subset_hint)
            if len(candidates) == 0:
                raise NoEndpointError("")
            if self._producers:
                self._prepare(cycle, request, candidates)
            try:
                candidates = profile.filter(cycle, request, self.table, candidates)
            except NoEndpointError as exc:  # as _run_static reports a failed profile
                raise SchedulingError(
                    f"failed to run any scheduler profile: {exc}", {profile.name: exc}
                ) from exc
            return Prepared(index, request, cycle, candidates)
        except InferenceSchedError:
            self.failures += 1
            raise
        except Exception as exc:  # never let a framework bug escape raw
            self.failures += 1
            log.exception("scheduling cycle failed unexpectedly")
            raise SchedulingError(f"scheduling cycle failed: {exc!r}") from exc

    def _package_joint(
        self,
        prepared: Sequence[Prepared],
        profile: SchedulingProfile,
        planned: Plan,
        out: list[SchedulingResult | InferenceSchedError | None],
    ) -> None:
        endpoint_at = self.table.endpoint_at
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
            out[p.position] = result
            if self._pre_request:  # in request order: ``prepared`` is
                self._run_pre_request(p.cycle, p.request, result)

    def _record_batch(self, elapsed_ns: int, n: int) -> None:
        self.e2e_ns += elapsed_ns
        self.e2e_histogram.observe_batch_ns(elapsed_ns, n)

    def _package_shared(
        self,
        requests: Sequence[Request],
        profile: SchedulingProfile,
        candidates: Candidates,
        totals: npt.NDArray[np.float32],
        ranked: npt.NDArray[np.int32],
        counts: npt.NDArray[np.int32],
    ) -> list[SchedulingResult | InferenceSchedError]:
        endpoint_at = self.table.endpoint_at
        name = profile.name
        rows2d = candidates.take(ranked).tolist()
        scores2d = totals.take(ranked).tolist()
        counts_list = counts.tolist()
        out: list[SchedulingResult | InferenceSchedError] = []
        pre_request = self._pre_request
        for request, rows_all, scores_all, k in zip(
            requests, rows2d, scores2d, counts_list, strict=True
        ):
            rows = tuple(rows_all[:k])
            run = ProfileRunResult(
                rows, tuple([endpoint_at(r) for r in rows]), tuple(scores_all[:k])
            )
            result = SchedulingResult({name: run}, name)
            if pre_request:
                self._run_pre_request(CycleState(self.rng, self._clock()), request, result)
            out.append(result)
        return out


def _call(stats: PluginStats, fn: Callable[..., None], *args: Any) -> None:
    t0 = time.perf_counter_ns()
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - isolate third-party plugins (profile module doc)
        stats.failed(exc)
    elapsed = time.perf_counter_ns() - t0
    stats.total_ns += elapsed
    stats.calls += 1
    if stats.histogram is not None:
        stats.histogram.observe_ns(elapsed)


def _having(plugins: Iterable[Any], method: str) -> list[Any]:
    return [p for p in plugins if callable(getattr(p, method, None))]


def _build_profile(spec: Any, plugins: Mapping[str, Any]) -> SchedulingProfile:
    filters: list[Filter] = []
    scorers: list[tuple[Scorer, float]] = []
    picker: Picker | None = None
    for ref in spec.plugins:
        plugin = plugins[ref.plugin_ref]
        kinds = kinds_of(type(plugin))
        if "filter" in kinds:
            filters.append(plugin)
        if "scorer" in kinds:
            scorers.append((plugin, 1.0 if ref.weight is None else float(ref.weight)))
        if "picker" in kinds:
            picker = plugin
    return SchedulingProfile(spec.name, filters, scorers, picker)


def _saturation_detector(
    config: EndpointPickerConfig, plugins: Mapping[str, Any]
) -> SaturationDetector | None:
    """The instance the config's ``saturationDetector.pluginRef`` names, if built."""
    ref = (config.saturation_detector or {}).get("pluginRef")
    if not ref or ref not in plugins:  # section off, or its default type is unavailable
        return None
    detector = plugins[ref]
    if "saturation-detector" not in kinds_of(type(detector)):  # hand-made configs only
        raise ConfigError(
            f"plugin {ref!r} ({getattr(detector, 'type', '?')}) is not a saturation-detector",
            path="saturationDetector.pluginRef",
            value=ref,
        )
    return detector  # type: ignore[no-any-return]


def _dependency_order(producers: list[DataProducer]) -> list[DataProducer]:
    """Producers ordered so that each runs after every *other* producer of what it consumes.

    A producer may consume a key it also produces (it refines it): its own output does
    not gate it. Ties keep the given (config) order.
    """
    makers: dict[str, list[int]] = {}
    for i, p in enumerate(producers):
        for key in getattr(p, "produces", ()):
            makers.setdefault(key, []).append(i)
    ordered: list[int] = []
    pending = list(range(len(producers)))
    while pending:
        done = set(ordered)
        ready = [
            i
            for i in pending
            if all(
                m == i or m in done
                for key in getattr(producers[i], "consumes", ())
                for m in makers.get(key, ())
            )
        ]
        if not ready:
            names = ", ".join(producers[i].name for i in pending)
            raise ConfigError(f"data producers depend on each other in a cycle: {names}")
        ordered.extend(ready)
        pending = [i for i in pending if i not in ready]
    return [producers[i] for i in ordered]
