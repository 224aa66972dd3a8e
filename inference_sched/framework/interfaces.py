"""Plugin contracts: one ``typing.Protocol`` per extension point, cut as GIE cuts them.

A plugin is a class with a kebab-case ``type`` (set by ``@register``), an instance
``name`` and a constructor ``__init__(self, name, params, handle)``. It takes part in
every extension point whose Protocol it satisfies: one instance can be a scorer and a
PreRequest hook at once (the prefix producer is a data producer, a PreRequest hook and
a removal listener).

The scheduling cycle (``docs/architecture.md``)::

    ProfileHandler.pick_profiles ──► per profile: DataProducer? ─► Filter* ─► Scorer* ─► Picker
    ProfileHandler.process_results ──► PreRequest*
    after the answer is out: DeferredWork* (work a plugin postponed off the decision path)
    response: ResponseReceived* ─► ResponseStreaming* (each chunk) ─► ResponseComplete*

Candidates are int32 row indices into the :class:`~inference_sched.state.table.EndpointTable`;
plugins read table columns with them and never build per-endpoint Python objects on the
hot path.

Protocols, not base classes: third parties need not inherit from anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    ProfileRunResult,
    Request,
    Response,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.state.table import EndpointTable

if TYPE_CHECKING:
    from inference_sched.framework.parsing import ParsedRequest, ResponseUsageParser
    from inference_sched.framework.profile import SchedulingProfile

__all__ = [
    "Admitter",
    "AttributeExtractor",
    "DataProducer",
    "Decider",
    "DataSource",
    "DeferredWork",
    "EndpointDiscovery",
    "EndpointExtractor",
    "Extractor",
    "Filter",
    "Handle",
    "NotificationSource",
    "Parser",
    "Picker",
    "Plugin",
    "PreRequest",
    "ProfileHandler",
    "ResponseComplete",
    "ResponseReceived",
    "ResponseStreaming",
    "SaturationDetector",
    "Scorer",
    "Screener",
]


@runtime_checkable
class Handle(Protocol):
    """What a plugin's constructor receives to reach the rest of the scheduler.

    Mirrors GIE's plugin ``Handle``: the endpoint table, the other plugin instances by
    name, and the clock.
    """

    @property
    def table(self) -> EndpointTable:
        """The pool's endpoint table."""
        ...

    def plugin(self, name: str) -> Any:
        """The plugin instance called ``name``.

        Raises:
            KeyError: no plugin with that name.
        """
        ...

    def plugins(self) -> Mapping[str, Any]:
        """Every plugin instance, by name, in config order."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """Time source in seconds (monotonic unless a simulator supplies its own)."""
        ...


class Plugin(Protocol):
    """Identity every plugin carries: GIE's ``TypedName``.

    Attributes:
        type: the registered kebab-case type (``queue-scorer``); a class attribute.
        name: the instance name from config (defaults to the type).
    """

    type: ClassVar[str]
    name: str


@runtime_checkable
class Filter(Plugin, Protocol):
    """Narrows the candidate set of a profile."""

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Return the candidates to keep.

        Called once per profile run, after the previous filter, before any scorer.

        Args:
            cycle: the cycle's scratch state (``cycle.rng`` for random choices).
            request: the request being scheduled.
            table: endpoint state; read columns at ``candidates``.
            candidates: int32 rows, never empty when called; do not modify it.

        Returns:
            An int32 subset of ``candidates`` in the same order. Empty is allowed: the
            profile then fails with :class:`~inference_sched.errors.NoEndpointError`
            naming this filter.
        """
        ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    """Scores candidates; the profile sums scores with the configured weights.

    Attributes:
        category: ``Affinity``, ``Distribution`` or ``Balance`` (informational).
    """

    category: ClassVar[ScorerCategory]

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """Fill ``out[i]`` with the score of ``candidates[i]``, higher is better.

        Called once per profile run after filtering, with a non-empty candidate set.

        Args:
            cycle: the cycle's scratch state (producers' data lives here).
            request: the request being scheduled.
            table: endpoint state.
            candidates: int32 rows to score.
            out: float32, ``len(candidates)`` long, zero-filled; write every entry.

        A score should be finite and in [0, 1]. The profile clamps out-of-range values,
        turns NaN/inf into 0 and counts both per scorer (see ``SchedulingProfile.stats``).
        """
        ...


@runtime_checkable
class Picker(Plugin, Protocol):
    """Chooses the endpoint (and fallbacks) from weighted totals."""

    def pick(
        self,
        cycle: CycleState,
        request: Request,
        candidates: Candidates,
        scores: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.int32]:
        """Rank the candidates.

        Called once per profile run, after scoring.

        Args:
            cycle: the cycle's scratch state; ``cycle.rng`` breaks ties.
            request: the request being scheduled.
            candidates: int32 rows (non-empty).
            scores: float32 weighted totals, aligned with ``candidates``.

        Returns:
            int32 *positions* into ``candidates``, best first: the pick, then the
            fallbacks (``maxNumOfEndpoints`` entries at most). Must not be empty.
        """
        ...


@runtime_checkable
class ProfileHandler(Plugin, Protocol):
    """Decides which profiles run, and turns their results into the cycle's answer."""

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        """Profiles to run next.

        Called in a loop (GIE's scheduler loop) until it returns an empty mapping; each
        call sees the results of every profile run so far.

        Args:
            cycle: the cycle's scratch state.
            request: the request being scheduled.
            profiles: every configured profile, by name.
            results: results so far (``None`` for a profile that failed).

        Returns:
            The profiles to run in this round; empty to stop.
        """
        ...

    def process_results(
        self,
        cycle: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Combine the profile results into the cycle's answer.

        Called once, after ``pick_profiles`` returned an empty mapping.

        Raises:
            SchedulingError: the results do not allow an answer (e.g. the primary
                profile failed).
        """
        ...


@runtime_checkable
class DataProducer(Plugin, Protocol):
    """Computes per-request data before the profiles run (GIE ``PrepareRequestData``).

    Attributes:
        produces: data keys written to the cycle state.
        consumes: data keys read (producers are ordered so that these exist first).
    """

    produces: ClassVar[frozenset[str]]
    consumes: ClassVar[frozenset[str]]

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Write this request's data into ``cycle`` under the ``produces`` keys.

        Called once per cycle, before the profile handler, in dependency order. An
        exception is logged and counted; scheduling continues without the data.
        """
        ...


@runtime_checkable
class Screener(Plugin, Protocol):
    """Narrows the candidate endpoints before the data producers run (llm-d-router
    ``Screener``, ``pkg/epp/framework/interface/requestcontrol``)."""

    def screen(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Return the rows of ``candidates`` this screener keeps.

        Every screener receives the full candidate set; the cycle keeps the
        intersection of their answers and fails with 503 ("screeners eliminated all
        endpoint candidates") when it is empty.

        Args:
            cycle: the cycle's state (no producer has run yet).
            request: the request.
            table: endpoint state.
            candidates: int32 rows (non-empty, ascending); do not modify.

        Returns:
            A subset of ``candidates`` (int32 rows). A screener that raises is counted,
            logged and ignored (its answer counts as "keep all").
        """
        ...


@runtime_checkable
class Admitter(Plugin, Protocol):
    """Admits or denies a request after the data producers ran (GIE ``Admitter``)."""

    def admit_request(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Return to admit; raise to deny.

        Called once per request, after every DataProducer and before the profile
        handler, in config order; the first denial stops the request.

        Args:
            cycle: the cycle's state, with the producers' data.
            request: the request.
            table: endpoint state.
            candidates: int32 rows (non-empty).

        Raises:
            AdmissionDeniedError: the request is denied (GIE answers HTTP 500). Any other
                exception is a plugin bug: counted, logged, and the request admitted.
        """
        ...


@runtime_checkable
class PreRequest(Plugin, Protocol):
    """Runs after the pick, before the gateway forwards the request."""

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Record the decision (e.g. in-flight +1, prefix index update).

        Called once per successful cycle, in config order. Per-request state a plugin
        keeps from here must be released in :class:`ResponseComplete`.
        """
        ...


@runtime_checkable
class DeferredWork(Plugin, Protocol):
    """Work a plugin postponed off the decision path (GIE runs it in goroutines).

    The embedder calls :meth:`Scheduler.run_deferred
    <inference_sched.framework.scheduler.Scheduler.run_deferred>` once the decision is on its way to
    the gateway (after each request, or when idle). A plugin must not depend on that call
    for correctness: it runs whatever is still pending before it next reads the state
    the work updates, so skipping the call only moves the cost into the next decision.
    """

    def run_deferred(self) -> None:
        """Do the postponed work now (e.g. the prefix index updates of PreRequest)."""
        ...


@runtime_checkable
class ResponseReceived(Plugin, Protocol):
    """Runs when the upstream response headers arrive."""

    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Called once per request, when the response headers are in."""
        ...


@runtime_checkable
class ResponseStreaming(Plugin, Protocol):
    """Runs on each response body chunk."""

    def response_streaming(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Called per chunk; ``response.is_start_of_stream`` marks the first one."""
        ...


@runtime_checkable
class ResponseComplete(Plugin, Protocol):
    """Runs once when a response ends, successfully or not."""

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Release per-request state. Always called, also after errors or disconnects."""
        ...


@runtime_checkable
class SaturationDetector(Plugin, Protocol):
    """Measures how saturated the pool is (GIE ``flowcontrol.SaturationDetector``).

    The config's ``saturationDetector.pluginRef`` names the instance the scheduler asks
    at admission: a sheddable request (priority < 0) is rejected when the answer is
    ``>= 1.0``. A detector may also be a :class:`Filter` and sit in a profile.
    """

    def saturation(self, table: EndpointTable, candidates: Candidates, now_s: float) -> float:
        """The pool's saturation over ``candidates``: ``>= 1.0`` means saturated, above 1
        the depth of the overload.

        Called at admission, before the profiles run, with the request's candidates
        (possibly empty).

        Args:
            table: endpoint state; read columns at ``candidates``.
            candidates: int32 rows; may be empty (a detector then answers 1.0).
            now_s: the current time on the table's clock (for metric staleness).

        Returns:
            A finite number >= 0.
        """
        ...


@runtime_checkable
class Decider(Plugin, Protocol):
    """P/D (llm-d): whether a request also runs an optional stage (``prefill``,
    ``encode``), named in ``disagg-profile-handler``'s ``deciders``."""

    def decide(self, cycle: CycleState, request: Request, decode: ProfileRunResult) -> bool:
        """Called by the profile handler after the decode profile picked ``decode``.

        Args:
            cycle: the cycle's state (the prefix match of every row is there).
            request: the request.
            decode: the decode profile's result (non-empty).

        Returns:
            True to run the stage.
        """
        ...


@runtime_checkable
class DataSource(Plugin, Protocol):
    """Data layer: where an endpoint's metrics are polled from (GIE ``metrics-data-source``).

    The one contract the registry recognises and the scraper drives
    (:class:`~inference_sched.datalayer.scraper.Scraper`)."""

    @property
    def insecure_skip_verify(self) -> bool:
        """Accept any TLS certificate when polling (GIE ``insecureSkipVerify``)."""
        ...

    def url_for(self, endpoint: Endpoint) -> str:
        """The URL to GET for ``endpoint``'s metrics page."""
        ...


@runtime_checkable
class Extractor(Plugin, Protocol):
    """Data layer: turns a polled page into endpoint metrics (GIE ``core-metrics-extractor``)."""

    def extract(self, text: str, endpoint: Endpoint) -> Any:
        """Read one endpoint's page into an
        :class:`~inference_sched.datalayer.parse.EndpointSample` (``bytes`` as received
        instead of ``str`` when the extractor has a true ``accepts_bytes`` attribute).

        Raises:
            DataError: the page is malformed or has impossible values.
        """
        ...


@runtime_checkable
class AttributeExtractor(Plugin, Protocol):
    """Data layer: turns a polled page into endpoint *attributes* (llm-d-router
    extractors such as ``models-data-extractor``, ``dcgm-extractor``); the poller writes
    the result to ``table.attributes`` (:mod:`inference_sched.state.attributes`)."""

    def extract_attributes(self, page: Any, endpoint: Endpoint) -> Mapping[str, Any]:
        """Attribute key → value read from one endpoint's page (``bytes`` or ``str`` as
        the extractor documents); an empty mapping writes nothing.

        Raises:
            DataError: the page is malformed.
        """
        ...


@runtime_checkable
class EndpointExtractor(Plugin, Protocol):
    """Data layer: derives attributes from an endpoint's own metadata (labels, node),
    on every endpoint add or update (llm-d-router ``topology-extractor``, fed by an
    endpoint notification source)."""

    def extract_endpoint(self, endpoint: Endpoint) -> Mapping[str, Any]:
        """Attribute key → value for ``endpoint``; a key mapped to ``None`` is removed."""
        ...


@runtime_checkable
class NotificationSource(Plugin, Protocol):
    """Data layer: delivers endpoint (or Kubernetes object) events to extractors
    (llm-d-router ``endpoint-notification-source``, ``k8s-notification-source``)."""

    def attach(self, table: EndpointTable, extractors: Sequence[Any]) -> None:
        """Start delivering ``table``'s events to ``extractors`` (endpoints already in
        the table are delivered at once)."""
        ...


@runtime_checkable
class EndpointDiscovery(Plugin, Protocol):
    """Data layer: a source of the pool's endpoints configured as a plugin
    (``dataLayer.discovery.pluginRef``; llm-d-router ``file-discovery``)."""

    def endpoints(self) -> list[Endpoint]:
        """The current endpoints, sorted by name."""
        ...

    def watch(self) -> AsyncIterator[list[Endpoint]]:
        """Yield the current snapshot, then a new full snapshot whenever it changes."""
        ...


@runtime_checkable
class Parser(Plugin, Protocol):
    """Reads request bodies of the paths it claims, and their responses' token usage
    (llm-d-router ``requesthandling.Parser``; ``docs/parsers.md``).

    Parsers are not part of the scheduling cycle: the gateway resolves one per request
    (:class:`~inference_sched.framework.parsing.ParserRegistry`, in
    ``requestHandler.parsers`` order) before it builds the scheduler's ``Request``.
    """

    def claims(self) -> tuple[str, ...]:
        """The path suffixes this parser serves (``chat/completions``); called once, when
        the registry is built. Empty: the parser is the fallback for unclaimed paths.
        """
        ...

    def parse_request(self, path: str, headers: Mapping[str, str], body: bytes) -> ParsedRequest:
        """Read one request body, once the whole body arrived.

        Args:
            path: the request path, query string removed (``parsing.request_path``).
            headers: the request headers, keys lower-case.
            body: the body bytes as received (may be anything: the client wrote them).

        Returns:
            What the gateway needs to build the scheduler's ``Request`` and to forward.

        Raises:
            ParseError: the body does not fit the API (HTTP 400); the error names the
                field. No other exception may escape, whatever the bytes.
        """
        ...

    def new_response_parser(self, request: ParsedRequest) -> ResponseUsageParser:
        """A fresh per-request state that reads token usage from the response (called
        when the response starts, never for ``skip_response_processing`` requests)."""
        ...
