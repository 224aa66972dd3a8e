"""Session affinity: llm-d's ``session-affinity-scorer`` and the router's
``session-affinity-filter`` (docs/plugins/session-affinity-scorer.md,
docs/plugins/session-affinity-filter.md).

* ``session-affinity-scorer`` (stateless, client-held): the request header
  ``x-session-token`` carries base64 of an endpoint's identity; that candidate scores 1,
  every other 0. The response hooks put the token of the endpoint that served the
  request on the response (``Response.set_headers``), so the client sends it back.
* ``session-affinity-filter`` (router): with ``strategy: session_id`` the scheduler
  remembers which endpoint served each session (header ``x-session-id``) and keeps only
  that endpoint while it is a candidate; with ``strategy: encoded_endpoint_header`` it
  keeps the endpoint named by ``x-session-token``, as the scorer prefers it. Either way
  it fails open: when the endpoint is gone, unhealthy or filtered out, every candidate
  stays and the session moves to the new pick.

Endpoint identity. An endpoint is named by :attr:`Endpoint.name
<inference_sched.framework.types.Endpoint.name>`, unique in the pool (GIE's ``<pod>-rank-<i>``
from Kubernetes discovery), and a token is ``base64(name)`` (standard alphabet, padded,
UTF-8), which is what the response hooks issue. llm-d issues ``base64("namespace/name")``;
such a token resolves too: the part after the last ``/`` is looked up as a name, and a
bare pod name (llm-d before multi-port pools) as ``<pod>-rank-0``. We keep no namespace,
so the tokens we issue omit it.

Bindings of ``session_id`` are replica-local (each scheduler replica learns only the
sessions it routed), bounded by ``maxSessions`` and ``maxSessionBytes`` (least recently
used first out) and by an idle TTL; they are dropped when their endpoint leaves the
table. The client picks the ids, so their length is bounded too: an id longer than
``maxSessionIdBytes`` bytes of UTF-8 is held as its 16-byte XXH3-128 digest.
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging
import sys
import threading
from typing import Any, ClassVar, Final, Literal, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.framework.headers import HEADER_SESSION_ID, HEADER_SESSION_TOKEN
from inference_sched.framework.interfaces import (
    Filter,
    Handle,
    PreRequest,
    ResponseComplete,
    ResponseReceived,
    Scorer,
)
from inference_sched.framework.registry import register
from inference_sched.framework.types import (
    Candidates,
    CycleState,
    Endpoint,
    Request,
    Response,
    SchedulingResult,
    ScorerCategory,
)
from inference_sched.params import NoParams, ParamCheck, at_least, number, one_of, param, string
from inference_sched.state.table import EndpointHandle, EndpointTable

__all__ = [
    "SessionAffinityFilter",
    "SessionAffinityFilterParams",
    "SessionAffinityScorer",
    "TokenStatus",
    "encode_session_token",
    "resolve_session_token",
]

log = logging.getLogger(__name__)

_MAX_TOKEN_CHARS: Final = 1024
"""Longer tokens are malformed without decoding them (a name and namespace fit in 400)."""
_POD_PORT_SUFFIX: Final = "-rank-0"

TokenStatus = Literal["ok", "empty", "malformed", "unknown"]
"""How a session token resolved: to an endpoint, absent, not base64 UTF-8, or to no
endpoint of the table."""


# ---------------------------------------------------------------- tokens
def encode_session_token(name: str) -> str:
    """The ``x-session-token`` value for the endpoint called ``name``: ``base64(name)``."""
    return base64.b64encode(name.encode("utf-8", "surrogatepass")).decode("ascii")


def _decode(token: str) -> str | None:
    if len(token) > _MAX_TOKEN_CHARS:
        return None
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, ValueError):  # bad base64, non-ASCII text, bad UTF-8
        return None


def resolve_session_token(
    token: str | None, table: EndpointTable
) -> tuple[TokenStatus, str | None]:
    """The endpoint name a session token names, with how it resolved.

    Accepts ``base64(name)`` (ours) and llm-d's ``base64("namespace/name")``; a name
    that is a bare pod name also tries ``<pod>-rank-0``.

    Returns:
        ``("ok", name)`` for an endpoint in ``table``; ``("empty", None)`` for no token;
        ``("malformed", None)`` when it is not base64 of UTF-8 text; ``("unknown",
        None)`` when it decodes but names no endpoint of ``table``.
    """
    if token is None or not token.strip():
        return "empty", None
    identity = _decode(token.strip())
    if not identity:
        return "malformed", None
    if identity in table:
        return "ok", identity
    name = identity.rsplit("/", 1)[-1]
    for guess in (name, name + _POD_PORT_SUFFIX):
        if guess and guess in table:
            return "ok", guess
    return "unknown", None


def _primary_pick(result: SchedulingResult) -> Endpoint | None:
    return result.picked(result.primary_profile_name)


def _set_token(response: Response, result: SchedulingResult) -> None:
    endpoint = _primary_pick(result)
    if endpoint is not None:
        response.set_headers[HEADER_SESSION_TOKEN] = encode_session_token(endpoint.name)


class _TokenCounters:
    """Thread-safe tallies of how request tokens resolved."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[TokenStatus, int] = {"ok": 0, "empty": 0, "malformed": 0, "unknown": 0}

    def resolve_row(self, request: Request, table: EndpointTable) -> int | None:
        """Table row of the endpoint the request's ``x-session-token`` names, if any."""
        status, name = resolve_session_token(request.headers.get(HEADER_SESSION_TOKEN), table)
        with self.lock:
            self.counts[status] += 1
        if name is None:
            if status != "empty":
                log.debug("request %s: %s session token", request.request_id, status)
            return None
        try:
            return table.row(name)
        except KeyError:  # removed since the lookup; as if unknown
            return None


# ---------------------------------------------------------------- scorer
@register("session-affinity-scorer")
class SessionAffinityScorer:
    """llm-d: 1.0 for the candidate named by ``x-session-token``, 0 for the others; the
    response carries the token of the endpoint that served it."""

    type: ClassVar[str]
    category: ClassVar[ScorerCategory] = "Affinity"
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name
        self._tokens = _TokenCounters()

    @property
    def num_matched_tokens(self) -> int:
        """Tokens that named an endpoint of the table (a candidate or not)."""
        return self._tokens.counts["ok"]

    @property
    def num_malformed_tokens(self) -> int:
        """Tokens that were not base64 of UTF-8 text (scored 0 everywhere)."""
        return self._tokens.counts["malformed"]

    @property
    def num_unknown_tokens(self) -> int:
        """Tokens that named no endpoint of the table (scored 0 everywhere)."""
        return self._tokens.counts["unknown"]

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """1.0 at the token's endpoint if it is a candidate, 0 elsewhere."""
        n = len(candidates)
        row = self._tokens.resolve_row(request, table)
        if row is None:
            out[:n] = 0.0
            return
        out[:n] = candidates == row

    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Set ``x-session-token`` already with the response headers, where a gateway
        can still send it (llm-d sets it at end of stream only)."""
        _set_token(response, result)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """Set ``x-session-token`` to the primary pick's token (llm-d: end of stream)."""
        _set_token(response, result)


_scorer: type[Scorer] = SessionAffinityScorer
_scorer_received: type[ResponseReceived] = SessionAffinityScorer
_scorer_complete: type[ResponseComplete] = SessionAffinityScorer


# ---------------------------------------------------------------- filter
def _positive(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    number(inst, attribute, value)
    if value <= 0:
        raise ParamCheck(attribute.alias or attribute.name, "a number > 0", value)


def _header_name(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.strip():
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty header name", value)


SESSION_ID: Final = "session_id"
ENCODED_ENDPOINT_HEADER: Final = "encoded_endpoint_header"


@attrs.frozen
class SessionAffinityFilterParams:
    """Parameters of ``session-affinity-filter``."""

    strategy: str = param(
        SESSION_ID, alias="strategy", check=one_of(SESSION_ID, ENCODED_ENDPOINT_HEADER)
    )
    """session_id: server-side session -> endpoint bindings; encoded_endpoint_header: the
    endpoint named by x-session-token (base64 of its name)."""
    session_header: str = param(HEADER_SESSION_ID, alias="sessionHeader", check=_header_name)
    """Request header carrying the session id (session_id strategy; case-insensitive)."""
    eviction_ttl_seconds: float = param(300.0, alias="evictionTtlSeconds", check=_positive)
    """A binding unused for this long is forgotten (session_id strategy)."""
    eviction_sweep_seconds: float = param(10.0, alias="evictionSweepSeconds", check=_positive)
    """How often expired bindings are swept out of memory (lookups honour the TTL exactly)."""
    max_sessions: int = param(100_000, alias="maxSessions", check=at_least(1))
    """Ours: bindings kept at most; beyond it the least recently used is forgotten."""
    max_session_id_bytes: int = param(128, alias="maxSessionIdBytes", check=at_least(16))
    """Ours: a session id longer than this (UTF-8 bytes) is held as its 16-byte XXH3-128
    digest, so a client cannot make the bindings hold its long ids."""
    max_session_bytes: int = param(64 * 1024 * 1024, alias="maxSessionBytes", check=at_least(1))
    """Ours: bytes the bindings may hold (each charged its id's size plus 256 for the
    entry); beyond it the least recently used is forgotten."""
    profile_name: str = param("", alias="profileName", check=string)
    """Profile whose pick is bound (e.g. prefill for an instance in the prefill profile);
    empty: the primary profile."""


class _Binding(NamedTuple):
    name: str
    handle: EndpointHandle
    last_used_s: float


_SessionKey = str | bytes
"""A session id as held: the id itself, or the 16-byte digest of a long one (``bytes``
never equals a ``str``, so a digest cannot collide with a short id)."""
_ENTRY_BYTES: Final = 256
"""Charged per binding besides its key: the dict entry, the binding tuple, its handle
and timestamp (measured at ~245 bytes on CPython 3.11)."""


def _held_bytes(key: _SessionKey) -> int:
    return sys.getsizeof(key) + _ENTRY_BYTES


@register("session-affinity-filter")
class SessionAffinityFilter:
    """Router: keeps only the endpoint the request's session is bound to, while it is a
    candidate; otherwise keeps every candidate (fail open).

    Design note: with ``session_id`` the bindings live in one ``OrderedDict`` in least
    recently used order: every lookup or PreRequest write stamps the clock's time and
    moves the session to the end, so the front is always the oldest binding. That makes
    both bounds cheap: the LRU bound pops the front, and a sweep pops from the front
    until it meets a binding younger than the TTL. A lookup checks the TTL itself, so
    expiry is exact whatever the sweep interval. Each binding keeps the endpoint's
    ``(row, generation)`` handle, so a lookup costs no name resolution, and the table's
    removal listener drops the bindings of a departing endpoint before its row is
    reused.
    """

    type: ClassVar[str]
    Params = SessionAffinityFilterParams

    def __init__(self, name: str, params: SessionAffinityFilterParams, handle: Handle) -> None:
        self.name = name
        self._table = handle.table
        self._clock = handle.clock
        self._is_session_id = params.strategy == SESSION_ID
        self._header = params.session_header.strip().lower()
        self._ttl_s = float(params.eviction_ttl_seconds)
        self._sweep_s = float(params.eviction_sweep_seconds)
        self._max_sessions = params.max_sessions
        self._max_id_bytes = params.max_session_id_bytes
        self._max_bytes = params.max_session_bytes
        self._profile_name = params.profile_name
        self._tokens = _TokenCounters()
        self._lock = threading.Lock()
        self._bindings: collections.OrderedDict[_SessionKey, _Binding] = collections.OrderedDict()
        self._bytes = 0
        self._last_sweep_s = self._clock()
        self.num_hits = 0
        """Requests narrowed to their bound (or token-named) endpoint."""
        self.num_misses = 0
        """Requests with a session id but no live binding (new or expired session)."""
        self.num_fail_open = 0
        """Requests whose endpoint was not a candidate: every candidate kept."""
        self.num_rebound = 0
        """Sessions moved to another endpoint by PreRequest (after a fail-open)."""
        self.num_evicted_ttl = 0
        """Bindings forgotten after ``evictionTtlSeconds`` unused."""
        self.num_evicted_lru = 0
        """Bindings forgotten to stay within ``maxSessions``."""
        self.num_evicted_bytes = 0
        """Bindings forgotten to stay within ``maxSessionBytes``."""
        self.num_hashed_ids = 0
        """Session ids over ``maxSessionIdBytes``, held as their digest (PreRequest writes)."""
        self.num_dropped_on_removal = 0
        """Bindings dropped because their endpoint left the table."""
        self._table.on_remove(self._on_remove)

    # ------------------------------------------------------------- inspection
    @property
    def num_sessions(self) -> int:
        """Bindings held (expired ones count until a sweep or lookup drops them)."""
        return len(self._bindings)

    @property
    def bytes_held(self) -> int:
        """Bytes charged to the bindings held (at most ``maxSessionBytes``)."""
        return self._bytes

    @property
    def num_malformed_tokens(self) -> int:
        """encoded_endpoint_header: tokens that were not base64 of UTF-8 text."""
        return self._tokens.counts["malformed"]

    @property
    def num_unknown_tokens(self) -> int:
        """encoded_endpoint_header: tokens that named no endpoint of the table."""
        return self._tokens.counts["unknown"]

    def binding(self, session_id: str) -> str | None:
        """The endpoint name ``session_id`` is bound to, if live (does not refresh it)."""
        key = self._key(session_id)
        with self._lock:
            bound = self._bindings.get(key)
            if bound is None or self._clock() - bound.last_used_s >= self._ttl_s:
                return None
            return bound.name

    def sessions(self) -> list[str]:
        """Session ids held, least recently used first (for tests and debugging); a long
        id shows as ``<xxh3-128 HEX>``, its digest."""
        with self._lock:
            keys = list(self._bindings)
        return [k if isinstance(k, str) else f"<xxh3-128 {k.hex()}>" for k in keys]

    def _key(self, session_id: str) -> _SessionKey:
        """The id as held: itself, or its 16-byte digest past ``maxSessionIdBytes``."""
        if len(session_id) * 4 <= self._max_id_bytes:  # UTF-8: at most 4 bytes a char
            return session_id
        raw = session_id.encode("utf-8", "surrogatepass")
        if len(raw) <= self._max_id_bytes:
            return session_id
        return bytes(xxhash.xxh3_128_digest(raw))

    # ------------------------------------------------------------- filtering
    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """The bound candidate alone, or every candidate when there is none."""
        if self._is_session_id:
            row = self._bound_row(request, table)
        else:
            row = self._tokens.resolve_row(request, table)
        if row is None:
            return candidates
        kept: Candidates = candidates[candidates == row]
        with self._lock:
            if len(kept) == 0:
                self.num_fail_open += 1
                return candidates
            self.num_hits += 1
        return kept

    def _bound_row(self, request: Request, table: EndpointTable) -> int | None:
        session_id = request.headers.get(self._header)
        if not session_id:
            return None
        key = self._key(session_id)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            bound = self._bindings.get(key)
            if bound is not None and now - bound.last_used_s >= self._ttl_s:
                self._forget(key)
                self.num_evicted_ttl += 1
                bound = None
            if bound is None:
                self.num_misses += 1
                return None
            self._bindings[key] = bound._replace(last_used_s=now)  # refresh on use
            self._bindings.move_to_end(key)
        if not table.is_current(bound.handle):
            return -1  # no candidate has row -1: fail open
        return bound.handle.row

    # ------------------------------------------------------------- lifecycle
    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Bind the session to the pick of ``profileName`` (empty: the primary profile)."""
        if not self._is_session_id:
            return
        session_id = request.headers.get(self._header)
        if not session_id:
            return
        run = result.profile_results.get(self._profile_name or result.primary_profile_name)
        if run is None or not run.rows:
            return
        row, endpoint = int(run.rows[0]), run.endpoints[0]
        table = self._table
        if table.endpoint_or_none(row) is not endpoint:
            return  # removed (or its row reused) between the pick and now
        handle = EndpointHandle(row, int(table.generation[row]))
        key = self._key(session_id)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            previous = self._bindings.get(key)
            if previous is None:
                self._bytes += _held_bytes(key)
                if isinstance(key, bytes):
                    self.num_hashed_ids += 1
            elif previous.name != endpoint.name:
                self.num_rebound += 1
            self._bindings[key] = _Binding(endpoint.name, handle, now)
            self._bindings.move_to_end(key)
            while len(self._bindings) > self._max_sessions:
                self._forget_oldest()
                self.num_evicted_lru += 1
            while self._bytes > self._max_bytes and self._bindings:
                self._forget_oldest()
                self.num_evicted_bytes += 1

    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """encoded_endpoint_header: set ``x-session-token`` with the response headers."""
        if not self._is_session_id:
            _set_token(response, result)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """encoded_endpoint_header: set ``x-session-token`` to the primary pick's token."""
        if not self._is_session_id:
            _set_token(response, result)

    # ------------------------------------------------------------- eviction
    def _sweep(self, now: float) -> None:
        """Drop expired bindings, at most once per ``evictionSweepSeconds``; the lock is held."""
        if now - self._last_sweep_s < self._sweep_s:
            return
        self._last_sweep_s = now
        bindings = self._bindings
        while bindings:
            oldest = next(iter(bindings.values()))
            if now - oldest.last_used_s < self._ttl_s:
                break
            self._forget_oldest()
            self.num_evicted_ttl += 1

    def _forget(self, key: _SessionKey) -> None:
        """Drop one binding and its bytes; the lock is held."""
        del self._bindings[key]
        self._bytes -= _held_bytes(key)

    def _forget_oldest(self) -> None:
        """Drop the least recently used binding and its bytes; the lock is held."""
        key, _ = self._bindings.popitem(last=False)
        self._bytes -= _held_bytes(key)

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        # Removals are rare: a scan of the bindings is fine.
        with self._lock:
            gone = [s for s, b in self._bindings.items() if b.handle.row == row]
            for key in gone:
                self._forget(key)
            self.num_dropped_on_removal += len(gone)


_filter: type[Filter] = SessionAffinityFilter
_filter_pre: type[PreRequest] = SessionAffinityFilter
_filter_received: type[ResponseReceived] = SessionAffinityFilter
_filter_complete: type[ResponseComplete] = SessionAffinityFilter
