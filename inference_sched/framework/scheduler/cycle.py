"""Scheduler: the profile-handler loop of GIE and the request lifecycle hooks.

``schedule(request)`` is GIE's ``Scheduler.Schedule`` (``gateway-api-inference-extension:
pkg/epp/scheduling/scheduler.go``) plus the Director's steps around it
(``pkg/epp/requestcontrol/director.go``): candidates (the healthy pool, or the
gateway's subset) → data producers (dependency order) → the profile handler picks
profiles and runs them until it says stop → ``process_results`` → PreRequest hooks.
Response hooks are called by the embedder as the upstream response arrives, with the
result it routed on, so plugins can release the per-request state they took in
PreRequest.

A profile handler may declare ``static_profile(profiles) -> name | None``: the one profile
it always runs, made primary, whatever the request (``single-profile-handler`` does). The
scheduler then runs that profile directly instead of the handler loop: same answer, a few
microseconds less per decision.

Every plugin call is timed and isolated (:func:`~inference_sched.framework.timing.
timed_call`, :mod:`inference_sched.framework.profile`): a raising plugin is counted and
logged, and the cycle degrades instead of failing.

Admission (GIE's legacy admission controller, ``pkg/epp/requestcontrol/admission.go``,
flow control off): before the cycle, a sheddable request (priority < 0) is rejected with
:class:`~inference_sched.errors.RequestShedError` (HTTP 429) when the saturation detector
named by the config's ``saturationDetector`` reports >= 1.0 over the request's
candidates. Requests with priority >= 0 are never shed. A rejected request is not a
scheduling attempt (GIE admits before it schedules): it counts in ``shed`` only.

Admission plugins (GIE ``Admitter``, e.g. ``latency-slo-admitter``): every instantiated
plugin with ``admit_request`` runs after the data producers (it may read their data) and
before the profiles; one raising :class:`~inference_sched.errors.AdmissionDeniedError`
denies the request (GIE: HTTP 500). A denial is not a scheduling attempt either: it counts
in ``denied`` only. Any other exception from an admitter admits (counted in
``admission_errors``).

Batches are in :mod:`inference_sched.framework.scheduler.batch`, building from a config
in :mod:`inference_sched.framework.scheduler.build`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np

from inference_sched.errors import (
    AdmissionDeniedError,
    InferenceSchedError,
    NoEndpointError,
    RequestShedError,
    SchedulingError,
)
from inference_sched.framework.config import EndpointPickerConfig
from inference_sched.framework.interfaces import DataProducer, ProfileHandler, SaturationDetector
from inference_sched.framework.profile import PluginStats, SchedulingProfile
from inference_sched.framework.scheduler import batch
from inference_sched.framework.scheduler.build import ConfigSource, build
from inference_sched.framework.scheduler.joint import JointCost
from inference_sched.framework.stats import DEFAULT_DURATION_BUCKETS_S, DurationHistogram
from inference_sched.framework.timing import timed_call
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

log = logging.getLogger(__package__)  # one logger for the scheduler package

_MAX_ROUNDS_PER_PROFILE: Final = 2

_Hooks = list[tuple[Any, PluginStats]]
"""Plugins of one extension point, each with its counters there."""


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
        self._producers: _Hooks = [(p, PluginStats.of("PrepareData", p)) for p in producers]
        self._pre_request = _hooks(hooks, "pre_request", "PreRequest")
        self._deferred = _hooks(hooks, "run_deferred", "Deferred")
        self._received = _hooks(hooks, "response_received", "ResponseReceived")
        self._streaming = _hooks(hooks, "response_streaming", "ResponseStreaming")
        self._complete = _hooks(hooks, "response_complete", "ResponseComplete")
        self._admitters = _hooks(hooks, "admit_request", "Admitter")
        self._screeners = _hooks(hooks, "screen", "Screener")
        self._handler_pick = PluginStats.of("ProfilePicker", handler)
        self._handler_process = PluginStats.of("ProcessProfilesResults", handler)
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
        built = build(config, table, clock=clock)
        scheduler = cls(
            built.table,
            built.profiles,
            built.handler,
            producers=built.producers,
            plugins=built.plugins,
            seed=seed,
            saturation_detector=built.saturation_detector,
        )
        scheduler.config = built.config
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
            if self._screeners:
                candidates = self._screen(cycle, request, candidates)
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
                result = self._run_pre_request(cycle, request, result)
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
        amortised when the plugins allow it (see
        :mod:`inference_sched.framework.scheduler.batch`).

        Args:
            requests: the batch, in arrival order.
            joint: assign the batch as a whole on the cost of :attr:`joint_cost`
                (:mod:`inference_sched.framework.scheduler.batch`,
                :mod:`inference_sched.framework.scheduler.joint`): later requests see the load and
                prefixes of earlier ones, identical prompts co-locate while that pays.
                The profile's filters apply; its scorers and picker do not. Each entry
                is a :class:`SchedulingResult` whose scores are the negated costs, or
                the request's own error, as with :meth:`schedule`.
        """
        if joint:
            return batch.schedule_joint(self, requests)
        profile = batch.shared_profile(self, requests)
        if profile is None:
            return [self._schedule_or_error(r) for r in requests]
        return batch.schedule_shared(self, requests, profile)

    def run_deferred(self) -> None:
        """Run the work plugins postponed off the decision path (:class:`DeferredWork`).

        GIE updates the prefix index in a goroutine after the pick; here PreRequest
        queues the update and this call applies it. Call it once the decision is on its
        way (after answering the gateway, or from an idle callback), on the thread that
        schedules. Skipping it is safe: a plugin runs its pending work before its next
        read, so the next decision pays for it instead.
        """
        _run_hooks(self._deferred, "run_deferred", ())

    # -------------------------------------------------------------- responses
    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Run ResponseReceived hooks (upstream headers arrived)."""
        _run_hooks(self._received, "response_received", (request, response, result))

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Run ResponseStreaming hooks (a body chunk arrived)."""
        _run_hooks(self._streaming, "response_streaming", (request, response, result))

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Run ResponseComplete hooks. Call exactly once per scheduled request, also on
        errors and client disconnects, so plugins release per-request state."""
        _run_hooks(self._complete, "response_complete", (request, response, result))

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
            self._screeners,
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
            try:
                timed_call(
                    stats,
                    plugin.admit_request,
                    (cycle, request, self.table, candidates),
                    AdmissionDeniedError,
                )
            except AdmissionDeniedError:
                raise
            except Exception:  # noqa: BLE001 - a broken admitter must not deny: admit
                self.admission_errors += 1

    def _screen(self, cycle: CycleState, request: Request, candidates: Candidates) -> Candidates:
        """Screeners, each on the full candidate set; the survivors are the intersection
        (llm-d-router Director step 7). A screener that raises is ignored."""
        kept = candidates
        for plugin, stats in self._screeners:
            try:
                rows = timed_call(stats, plugin.screen, (cycle, request, self.table, candidates))
            except Exception:  # noqa: BLE001 - isolated; counted and logged by timed_call
                continue
            kept = np.intersect1d(kept, np.asarray(rows, dtype=np.int32), assume_unique=True)
        if len(kept) == 0:
            raise NoEndpointError("", screened=True)
        return kept.astype(np.int32, copy=False)

    def _prepare(self, cycle: CycleState, request: Request, candidates: Candidates) -> None:
        _run_hooks(
            self._producers, "prepare_request_data", (cycle, request, self.table, candidates)
        )

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
        try:
            return timed_call(
                self._handler_process,
                self.handler.process_results,
                (cycle, request, results),
                SchedulingError,
            )
        except SchedulingError as exc:
            exc.profile_errors.update(errors)
            raise
        except Exception as exc:
            raise SchedulingError(
                f"profile handler {self.handler.name!r} failed: {exc!r}", errors
            ) from exc

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
        handler = self.handler
        try:
            return timed_call(
                self._handler_pick, handler.pick_profiles, (cycle, request, self.profiles, results)
            )
        except Exception as exc:
            raise SchedulingError(
                f"profile handler {handler.name!r} failed to pick profiles: {exc!r}"
            ) from exc

    def _run_pre_request(
        self, cycle: CycleState, request: Request, result: SchedulingResult
    ) -> SchedulingResult:
        """PreRequest hooks, in order; they may set headers in the answer's
        ``request_headers``, which is made a fresh dict first when the handler answered
        with a read-only mapping."""
        if not isinstance(result.request_headers, dict):
            result = result._replace(request_headers=dict(result.request_headers))
        _run_hooks(self._pre_request, "pre_request", (cycle, request, result))
        return result

    def _schedule_or_error(self, request: Request) -> SchedulingResult | InferenceSchedError:
        try:
            return self.schedule(request)
        except InferenceSchedError as exc:
            return exc


def _hooks(plugins: Iterable[Any], method: str, extension_point: str) -> _Hooks:
    """The plugins that implement ``method``, in order, with fresh counters."""
    return [
        (p, PluginStats.of(extension_point, p))
        for p in plugins
        if callable(getattr(p, method, None))
    ]


def _run_hooks(hooks: _Hooks, method: str, args: tuple[Any, ...]) -> None:
    """Call ``method`` of every plugin in ``hooks``, in order; a failure is counted and
    logged (:func:`~inference_sched.framework.timing.timed_call`) and the next one runs."""
    for plugin, stats in hooks:
        try:
            timed_call(stats, getattr(plugin, method), args)
        except Exception:  # noqa: BLE001 - isolated (profile module doc); counted by timed_call
            continue
