"""Session affinity (llm-d-router): ``session-affinity-scorer``, ``session-affinity-filter``
and ``multicluster-session-affinity-filter`` (docs/plugins/session-affinity-scorer.md,
docs/plugins/session-affinity-filter.md,
docs/plugins/multicluster-session-affinity-filter.md; llm-d-router
``pkg/epp/framework/plugins/scheduling/{filter,scorer}/sessionaffinity/``,
``pkg/epp/framework/plugins/scheduling/util/sessionaffinity/``).

Both types share one parameter set and two strategies:

* ``encoded_endpoint_header`` (default, stateless): the request header
  (``encodedEndpointHeaderConfig.header``, ``x-session-token``) carries base64 of an
  endpoint's identity. The filter keeps that candidate alone (else every candidate); the
  scorer gives it 1 and the others 0. The response hooks put the token of the pick of
  ``profileName`` (empty or not run: the served, primary pick) on the response
  (``Response.set_headers``), so the client sends it back.
* ``session_id`` (stateful): the session id is the first non-empty of
  ``sessionIdConfig.sources`` (request headers, or request attributes written by a data
  producer such as ``session-id-producer``). A binding session -> endpoint is kept per
  replica; the bound endpoint is chosen while it is a candidate (filter: alone; scorer:
  1), otherwise every candidate passes (scorer: all 0). PreRequest binds a new session to
  the pick of ``profileName`` (empty: the primary profile); an existing binding moves to
  a different pick only when this request's filter / scorer found the bound endpoint
  absent from the candidates.

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

from inference_sched.framework.contracts import SESSION_ID, read_session_id
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
from inference_sched.params import ParamCheck, at_least, nested, number, one_of, param, string
from inference_sched.state.table import EndpointHandle, EndpointTable

__all__ = [
    "ENCODED_ENDPOINT_HEADER",
    "SESSION_ID_STRATEGY",
    "EncodedEndpointHeaderConfig",
    "MulticlusterSessionAffinityFilter",
    "SessionAffinityFilter",
    "SessionAffinityFilterParams",
    "SessionAffinityParams",
    "SessionAffinityScorer",
    "SessionIdConfig",
    "SessionIdSource",
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

SESSION_ID_STRATEGY: Final = "session_id"
ENCODED_ENDPOINT_HEADER: Final = "encoded_endpoint_header"
_STRATEGIES: Final = (ENCODED_ENDPOINT_HEADER, SESSION_ID_STRATEGY)
_DEFAULT_TTL_S: Final = 300.0
_DEFAULT_SWEEP_S: Final = 10.0


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


# ---------------------------------------------------------------- parameters
def _normalize_header(name: str, default: str) -> str:
    """llm-d ``NormalizeHeader``: lower-cased and trimmed; empty means the default."""
    return name.strip().lower() or default


def _header_name(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.strip():
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty header name", value)


def _optional_seconds(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """None (unset), or a finite number >= 0 (0: the default, as llm-d)."""
    if value is None:
        return
    number(inst, attribute, value)
    if value < 0:
        raise ParamCheck(attribute.alias or attribute.name, "a number >= 0 (0: default)", value)


def _optional_header(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _header_name(inst, attribute, value)


def _strategy(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        one_of(*_STRATEGIES)(inst, attribute, value)


@attrs.frozen
class EncodedEndpointHeaderConfig:
    """``encodedEndpointHeaderConfig`` (strategy ``encoded_endpoint_header``)."""

    header: str = param(HEADER_SESSION_TOKEN, alias="header", check=_header_name)
    """Request and response header carrying the base64 endpoint token (case-insensitive)."""


@attrs.frozen
class SessionIdSource:
    """One place a session id is read from: exactly one of ``header`` and ``attribute``."""

    header: str = param("", alias="header", check=string)
    """A request header name (case-insensitive)."""
    attribute: str = param("", alias="attribute", check=string)
    """A request attribute key written by a data producer (e.g. ``SessionID`` of
    ``session-id-producer``, ``agent-identity`` of ``agent-identity``)."""
    producer: str = param("", alias="producer", check=string)
    """With ``attribute``: the producer instance whose value to read
    (``<attribute>/<producer>``); empty: the shared key."""

    def __attrs_post_init__(self) -> None:
        has_header, has_attribute = bool(self.header.strip()), bool(self.attribute.strip())
        if has_header == has_attribute:
            raise ParamCheck(
                "header",
                "exactly one of header and attribute (non-empty)",
                {"header": self.header, "attribute": self.attribute},
            )
        if self.producer and not has_attribute:
            raise ParamCheck("producer", "only with attribute", self.producer)

    def key(self) -> str:
        """The cycle key an attribute source reads."""
        attribute = self.attribute.strip()
        return f"{attribute}/{self.producer}" if self.producer else attribute


def _parse_sources(raw: Any) -> tuple[SessionIdSource, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, tuple) and all(isinstance(s, SessionIdSource) for s in raw):
        return raw or None
    if not isinstance(raw, list | tuple):
        raise ParamCheck("sources", "a list of {header} or {attribute, producer}", raw)
    if not raw:
        return None  # llm-d: an empty list means the default source
    return tuple(nested(SessionIdSource, f"sources[{i}]")(item) for i, item in enumerate(raw))


def _is_sources(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (
        not isinstance(value, tuple) or not all(isinstance(s, SessionIdSource) for s in value)
    ):
        raise ParamCheck("sources", "a tuple of SessionIdSource", value)


@attrs.frozen
class SessionIdConfig:
    """``sessionIdConfig`` (strategy ``session_id``)."""

    sources: tuple[SessionIdSource, ...] | None = param(
        None, alias="sources", parse=_parse_sources, check=_is_sources
    )
    """Where the session id is read, in order; the first non-empty (trimmed) value wins.
    Each is ``{header: name}`` or ``{attribute: key, producer: name}``. Unset or empty:
    ``[{header: x-session-id}]``."""
    eviction_ttl_seconds: float | None = param(
        None, alias="evictionTtlSeconds", check=_optional_seconds
    )
    """A binding unused for longer than this is forgotten (unset or 0: 300)."""
    eviction_sweep_seconds: float | None = param(
        None, alias="evictionSweepSeconds", check=_optional_seconds
    )
    """How often expired bindings are swept out of memory (unset or 0: 10)."""


def _instance(cls: type[Any], key: str) -> Any:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ParamCheck(key, f"a mapping of {cls.__name__} keys", value)

    return check


@attrs.frozen
class SessionAffinityParams:
    """Parameters of ``session-affinity-filter`` / ``-scorer`` (llm-d-router)."""

    strategy: str | None = param(None, alias="strategy", check=_strategy)
    """``encoded_endpoint_header`` (default) or ``session_id``. Unset with one of the
    GIE-era keys ``sessionHeader``, ``evictionTtlSeconds``, ``evictionSweepSeconds``:
    ``session_id``, as those configs meant."""
    profile_name: str = param("", alias="profileName", check=string)
    """Profile whose pick is bound / written (e.g. ``prefill`` for an instance in the
    prefill profile); empty: the primary profile (the served endpoint)."""
    encoded_endpoint_header_config: EncodedEndpointHeaderConfig = param(  # noqa: RUF009 - an attrs field
        factory=EncodedEndpointHeaderConfig,
        alias="encodedEndpointHeaderConfig",
        parse=nested(EncodedEndpointHeaderConfig, "encodedEndpointHeaderConfig"),
        check=_instance(EncodedEndpointHeaderConfig, "encodedEndpointHeaderConfig"),
    )
    """``{header}``: the token header (``x-session-token``)."""
    session_id_config: SessionIdConfig = param(  # noqa: RUF009 - an attrs field
        factory=SessionIdConfig,
        alias="sessionIdConfig",
        parse=nested(SessionIdConfig, "sessionIdConfig"),
        check=_instance(SessionIdConfig, "sessionIdConfig"),
    )
    """``{sources, evictionTtlSeconds, evictionSweepSeconds}`` (see SessionIdConfig)."""
    session_header: str | None = param(
        None,
        alias="sessionHeader",
        check=_optional_header,
        deprecated="use sessionIdConfig.sources: [{header: <name>}]",
    )
    """GIE-era: the session id header; same as ``sessionIdConfig.sources: [{header}]``."""
    eviction_ttl_seconds: float | None = param(
        None,
        alias="evictionTtlSeconds",
        check=_optional_seconds,
        deprecated="use sessionIdConfig.evictionTtlSeconds",
    )
    """GIE-era: same as ``sessionIdConfig.evictionTtlSeconds``."""
    eviction_sweep_seconds: float | None = param(
        None,
        alias="evictionSweepSeconds",
        check=_optional_seconds,
        deprecated="use sessionIdConfig.evictionSweepSeconds",
    )
    """GIE-era: same as ``sessionIdConfig.evictionSweepSeconds``."""
    max_sessions: int = param(100_000, alias="maxSessions", check=at_least(1))
    """Ours: bindings kept at most; beyond it the least recently used is forgotten."""
    max_session_id_bytes: int = param(128, alias="maxSessionIdBytes", check=at_least(16))
    """Ours: a session id longer than this (UTF-8 bytes) is held as its 16-byte XXH3-128
    digest, so a client cannot make the bindings hold its long ids."""
    max_session_bytes: int = param(64 * 1024 * 1024, alias="maxSessionBytes", check=at_least(1))
    """Ours: bytes the bindings may hold (each charged its id's size plus 256 for the
    entry); beyond it the least recently used is forgotten."""

    def __attrs_post_init__(self) -> None:
        nested_cfg = self.session_id_config
        if self.session_header is not None and nested_cfg.sources is not None:
            raise ParamCheck(
                "sessionHeader", "not with sessionIdConfig.sources (use one)", self.session_header
            )
        for key, top, inner in (
            ("evictionTtlSeconds", self.eviction_ttl_seconds, nested_cfg.eviction_ttl_seconds),
            (
                "evictionSweepSeconds",
                self.eviction_sweep_seconds,
                nested_cfg.eviction_sweep_seconds,
            ),
        ):
            if top is not None and inner is not None:
                raise ParamCheck(key, f"not with sessionIdConfig.{key} (use one)", top)

    # ------------------------------------------------------------- resolved values
    def resolved_strategy(self) -> str:
        """The strategy in effect (see ``strategy``)."""
        if self.strategy is not None:
            return self.strategy
        legacy = (self.session_header, self.eviction_ttl_seconds, self.eviction_sweep_seconds)
        if any(v is not None for v in legacy):
            return SESSION_ID_STRATEGY
        return ENCODED_ENDPOINT_HEADER

    def sources(self) -> tuple[SessionIdSource, ...]:
        """The session id sources in effect."""
        if self.session_id_config.sources is not None:
            return self.session_id_config.sources
        return (SessionIdSource(header=self.session_header or HEADER_SESSION_ID),)

    def ttl_s(self) -> float:
        """The binding TTL in effect, seconds."""
        value = self.session_id_config.eviction_ttl_seconds or self.eviction_ttl_seconds
        return float(value or _DEFAULT_TTL_S)

    def sweep_s(self) -> float:
        """The sweep interval in effect, seconds."""
        value = self.session_id_config.eviction_sweep_seconds or self.eviction_sweep_seconds
        return float(value or _DEFAULT_SWEEP_S)

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: each attribute source's ``producer`` names a
        plugin producing that attribute."""
        return {
            f"sessionIdConfig.sources[{i}].producer": (s.producer, s.attribute.strip())
            for i, s in enumerate(self.session_id_config.sources or ())
            if s.producer
        }


SessionAffinityFilterParams = SessionAffinityParams
"""The filter's parameters (the scorer's are the same)."""


# ---------------------------------------------------------------- shared core
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
_PRESENCE_KEY: Final = "session-affinity/bound-present/"
"""Cycle key prefix (+ instance name): whether this request's bound endpoint was a
candidate when the filter / scorer ran (llm-d's ``boundPodPresence`` plugin state)."""


def _held_bytes(key: _SessionKey) -> int:
    return sys.getsizeof(key) + _ENTRY_BYTES


class _SessionAffinity:
    """What the scorer and the filter share: parameters, the token and session-id
    lookups, the bindings and their bounds, PreRequest and the response hooks.

    Design note: with ``session_id`` the bindings live in one ``OrderedDict`` in least
    recently used order: every lookup or PreRequest write stamps the clock's time and
    moves the session to the end, so the front is always the oldest binding. That makes
    both bounds cheap: the LRU bound pops the front, and a sweep pops from the front
    until it meets a binding idle past the TTL. A lookup checks the TTL itself, so
    expiry is exact whatever the sweep interval. Each binding keeps the endpoint's
    ``(row, generation)`` handle, so a lookup costs no name resolution, and the table's
    removal listener drops the bindings of a departing endpoint before its row is
    reused.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    Params = SessionAffinityParams

    def __init__(self, name: str, params: SessionAffinityParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._table = handle.table
        self._clock = handle.clock
        self.strategy = params.resolved_strategy()
        """The strategy in effect."""
        self._is_session_id = self.strategy == SESSION_ID_STRATEGY
        self.token_header = _normalize_header(
            params.encoded_endpoint_header_config.header, HEADER_SESSION_TOKEN
        )
        """The encoded strategy's request / response header."""
        self.sources = params.sources()
        """The session id sources in effect (session_id strategy)."""
        self._source_keys = tuple(
            (_normalize_header(s.header, HEADER_SESSION_ID), None)
            if s.header.strip()
            else (None, s)
            for s in self.sources
        )
        self._ttl_s = params.ttl_s()
        self._sweep_s = params.sweep_s()
        self._max_sessions = params.max_sessions
        self._max_id_bytes = params.max_session_id_bytes
        self._max_bytes = params.max_session_bytes
        self._profile_name = params.profile_name
        self._presence_key = _PRESENCE_KEY + name
        self._lock = threading.Lock()
        self._tokens: dict[TokenStatus, int] = {"ok": 0, "empty": 0, "malformed": 0, "unknown": 0}
        self._bindings: collections.OrderedDict[_SessionKey, _Binding] = collections.OrderedDict()
        self._bytes = 0
        self._last_sweep_s = self._clock()
        self.num_hits = 0
        """Requests whose bound (or token-named) endpoint was a candidate."""
        self.num_misses = 0
        """Requests with a session id but no live binding (new or expired session)."""
        self.num_fail_open = 0
        """Requests whose endpoint was not a candidate: every candidate kept."""
        self.num_rebound = 0
        """Sessions moved to another endpoint by PreRequest (bound endpoint was absent)."""
        self.num_kept_binding = 0
        """PreRequest picks that differed from a binding whose endpoint was a candidate:
        the binding stays (llm-d migrates only on a confirmed absence)."""
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
    def num_matched_tokens(self) -> int:
        """encoded_endpoint_header: tokens that named an endpoint of the table."""
        return self._tokens["ok"]

    @property
    def num_malformed_tokens(self) -> int:
        """encoded_endpoint_header: tokens that were not base64 of UTF-8 text."""
        return self._tokens["malformed"]

    @property
    def num_unknown_tokens(self) -> int:
        """encoded_endpoint_header: tokens that named no endpoint of the table."""
        return self._tokens["unknown"]

    def binding(self, session_id: str) -> str | None:
        """The endpoint name ``session_id`` is bound to, if live (does not refresh it)."""
        key = self._key(session_id)
        with self._lock:
            bound = self._bindings.get(key)
            if bound is None or self._is_expired(bound, self._clock()):
                return None
            return bound.name

    def sessions(self) -> list[str]:
        """Session ids held, least recently used first (for tests and debugging); a long
        id shows as ``<xxh3-128 HEX>``, its digest."""
        with self._lock:
            keys = list(self._bindings)
        return [k if isinstance(k, str) else f"<xxh3-128 {k.hex()}>" for k in keys]

    def session_id(self, cycle: CycleState, request: Request) -> str | None:
        """The request's session id: the first non-empty (trimmed) value of the sources."""
        headers = request.headers
        for header, source in self._source_keys:
            if header is not None:
                value: Any = headers.get(header)
            elif source is not None and source.attribute.strip() == SESSION_ID:
                value = read_session_id(cycle, source.producer)
            else:
                assert source is not None, "a source is a header or an attribute"
                value = cycle.read(source.key())
            if isinstance(value, str) and value.strip():
                return value.strip()
        return None

    # ------------------------------------------------------------- lookups
    def _key(self, session_id: str) -> _SessionKey:
        """The id as held: itself, or its 16-byte digest past ``maxSessionIdBytes``."""
        if len(session_id) * 4 <= self._max_id_bytes:  # UTF-8: at most 4 bytes a char
            return session_id
        raw = session_id.encode("utf-8", "surrogatepass")
        if len(raw) <= self._max_id_bytes:
            return session_id
        return bytes(xxhash.xxh3_128_digest(raw))

    def _is_expired(self, bound: _Binding, now: float) -> bool:
        return now - bound.last_used_s > self._ttl_s  # llm-d: expired past the TTL

    def _token_row(self, request: Request, table: EndpointTable) -> int | None:
        """Table row of the endpoint the request's token names, if any."""
        status, name = resolve_session_token(request.headers.get(self.token_header), table)
        with self._lock:
            self._tokens[status] += 1
        if name is None:
            if status not in ("empty",):
                log.debug("%s: request %s: %s session token", self.name, request.request_id, status)
            return None
        try:
            return table.row(name)
        except KeyError:  # removed since the lookup; as if unknown
            return None

    def _bound_row(self, cycle: CycleState, request: Request, table: EndpointTable) -> int | None:
        session_id = self.session_id(cycle, request)
        if session_id is None:
            return None
        key = self._key(session_id)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            bound = self._bindings.get(key)
            if bound is not None and self._is_expired(bound, now):
                self._forget(key)
                self.num_evicted_ttl += 1
                bound = None
            if bound is None:
                self.num_misses += 1
                return None
            self._bindings[key] = bound._replace(last_used_s=now)  # refresh on use
            self._bindings.move_to_end(key)
        if not table.is_current(bound.handle):
            return -1  # no candidate has row -1: absent
        return bound.handle.row

    def _chosen(
        self, cycle: CycleState, request: Request, table: EndpointTable, candidates: Candidates
    ) -> npt.NDArray[np.bool_] | None:
        """Mask of ``candidates`` equal to the session's endpoint, None when the request
        names none; records whether it was present (for PreRequest) and counts."""
        if self._is_session_id:
            row = self._bound_row(cycle, request, table)
        else:
            row = self._token_row(request, table)
        if row is None:
            return None
        mask: npt.NDArray[np.bool_] = candidates == row
        present = bool(mask.any())
        if self._is_session_id:
            cycle.write(self._presence_key, present)
        with self._lock:
            if present:
                self.num_hits += 1
            else:
                self.num_fail_open += 1
        return mask if present else None

    # ------------------------------------------------------------- lifecycle
    def _target(self, result: SchedulingResult) -> tuple[int, Endpoint] | None:
        """(row, endpoint) of the pick of ``profileName`` (empty: the primary profile)."""
        run = result.profile_results.get(self._profile_name or result.primary_profile_name)
        if run is None or not run.rows or not run.endpoints:
            return None
        return int(run.rows[0]), run.endpoints[0]

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """session_id: bind a new session to the pick of ``profileName``; move a bound
        session to a different pick only when its endpoint was not a candidate."""
        if not self._is_session_id:
            return
        session_id = self.session_id(cycle, request)
        if session_id is None:
            return
        target = self._target(result)
        if target is None:
            return
        row, endpoint = target
        table = self._table
        if table.endpoint_or_none(row) is not endpoint:
            return  # removed (or its row reused) between the pick and now
        handle = EndpointHandle(row, int(table.generation[row]))
        key = self._key(session_id)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            previous = self._bindings.get(key)
            if previous is not None and self._is_expired(previous, now):
                self._forget(key)
                self.num_evicted_ttl += 1
                previous = None
            if previous is None:
                self._bytes += _held_bytes(key)
                if isinstance(key, bytes):
                    self.num_hashed_ids += 1
            elif previous.name != endpoint.name:
                if cycle.read(self._presence_key) is not False:
                    # No confirmed absence (present, or not looked up this cycle).
                    self.num_kept_binding += 1
                    return
                self.num_rebound += 1
            self._bindings[key] = _Binding(endpoint.name, handle, now)
            self._bindings.move_to_end(key)
            while len(self._bindings) > self._max_sessions:
                self._forget_oldest()
                self.num_evicted_lru += 1
            while self._bytes > self._max_bytes and self._bindings:
                self._forget_oldest()
                self.num_evicted_bytes += 1

    def _set_token(self, response: Response, result: SchedulingResult) -> None:
        endpoint = None
        if self._profile_name:
            endpoint = result.picked(self._profile_name)
        if endpoint is None:  # llm-d: the served endpoint
            endpoint = result.picked(result.primary_profile_name)
        if endpoint is not None:
            response.set_headers[self.token_header] = encode_session_token(endpoint.name)

    def response_received(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """encoded_endpoint_header: set the token header already with the response
        headers, where a gateway can still send it."""
        if not self._is_session_id:
            self._set_token(response, result)

    def response_complete(
        self, request: Request, response: Response, result: SchedulingResult
    ) -> None:
        """encoded_endpoint_header: set the token header (llm-d: end of stream)."""
        if not self._is_session_id:
            self._set_token(response, result)

    # ------------------------------------------------------------- eviction
    def _sweep(self, now: float) -> None:
        """Drop expired bindings, at most once per ``evictionSweepSeconds``; the lock is held."""
        if now - self._last_sweep_s < self._sweep_s:
            return
        self._last_sweep_s = now
        bindings = self._bindings
        while bindings:
            oldest = next(iter(bindings.values()))
            if not self._is_expired(oldest, now):
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


# ---------------------------------------------------------------- scorer
@register("session-affinity-scorer")
class SessionAffinityScorer(_SessionAffinity):
    """1.0 for the session's endpoint when it is a candidate, 0 for the others (all 0
    when the request names none)."""

    category: ClassVar[ScorerCategory] = "Affinity"

    def score(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
        out: npt.NDArray[np.float32],
    ) -> None:
        """1.0 at the session's endpoint if it is a candidate, 0 elsewhere."""
        n = len(candidates)
        mask = self._chosen(cycle, request, table, candidates)
        if mask is None:
            out[:n] = 0.0
            return
        out[:n] = mask


_scorer: type[Scorer] = SessionAffinityScorer
_scorer_pre: type[PreRequest] = SessionAffinityScorer
_scorer_received: type[ResponseReceived] = SessionAffinityScorer
_scorer_complete: type[ResponseComplete] = SessionAffinityScorer


# ---------------------------------------------------------------- filter
@register("session-affinity-filter")
class SessionAffinityFilter(_SessionAffinity):
    """Keeps only the session's endpoint while it is a candidate; otherwise every
    candidate (fail open: never empty)."""

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """The session's candidate alone, or every candidate when there is none."""
        mask = self._chosen(cycle, request, table, candidates)
        if mask is None:
            return candidates
        kept: Candidates = candidates[mask]
        return kept


_filter: type[Filter] = SessionAffinityFilter
_filter_pre: type[PreRequest] = SessionAffinityFilter
_filter_received: type[ResponseReceived] = SessionAffinityFilter
_filter_complete: type[ResponseComplete] = SessionAffinityFilter


@register("multicluster-session-affinity-filter")
class MulticlusterSessionAffinityFilter(SessionAffinityFilter):
    """``session-affinity-filter`` under llm-d-router's multicluster type name: the
    endpoints are peer clusters / gateways (llm-d-router, same parameters)."""


_multicluster_filter: type[Filter] = MulticlusterSessionAffinityFilter
