"""Request identity producers: ``session-id-producer`` and ``agent-identity``
(llm-d-router: ``pkg/epp/framework/plugins/requestcontrol/dataproducer/sessionid/``,
``pkg/epp/framework/plugins/requesthandling/agentidentity/``).

Both write a *request attribute*: llm-d-router's ``InferenceRequest.PutAttribute``; here
the cycle state, which lives exactly as long as the request's scheduling cycle, under the
keys of :mod:`inference_sched.framework.contracts` (``SessionID``, ``SessionID/<name>``,
``agent-identity``). They run as data producers, first in the cycle.

- ``session-id-producer`` copies the session identifier from a header or a cookie; no
  built-in plugin consumes it yet (llm-d's session affinity can be pointed at it).
- ``agent-identity`` (a ``RequestHeaderProcessor`` in llm-d, which runs before admission)
  takes the first non-empty of a list of agent session headers; llm-d's Director uses it
  as the flow-control fairness id of a request without a fairness header.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import attrs

from inference_sched.framework.contracts import (
    AGENT_IDENTITY,
    SESSION_ID,
    SessionID,
    session_id_key,
)
from inference_sched.framework.interfaces import DataProducer, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import ParamCheck, param
from inference_sched.state.table import EndpointTable

__all__ = [
    "AGENT_SESSION_HEADERS",
    "AgentIdentity",
    "AgentIdentityParams",
    "SessionIdParams",
    "SessionIdProducer",
    "cookie_value",
]

AGENT_SESSION_HEADERS: Final = (
    "x-claude-code-session-id",
    "x-session-affinity",
    "session-id",
    "session_id",
)
"""Headers ``agent-identity`` reads after ``additionalSessionHeaders``, in order."""


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (``;``-separated
    ``name=value`` pairs, the name matched exactly), or None."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def _optional_str(key: str) -> Any:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str):
            raise ParamCheck(key, "a str", raw)
        return raw.strip()

    return parse


@attrs.frozen
class SessionIdParams:
    """Parameters of ``session-id-producer`` (llm-d-router): exactly one source."""

    header_name: str = param("", alias="headerName", parse=_optional_str("headerName"))
    """The request header holding the session id (matched lower-cased)."""
    cookie_name: str = param("", alias="cookieName", parse=_optional_str("cookieName"))
    """The cookie holding the session id (matched exactly)."""

    def __attrs_post_init__(self) -> None:
        if self.header_name and self.cookie_name:
            raise ParamCheck(
                "",
                "exactly one of headerName and cookieName",
                {"headerName": self.header_name, "cookieName": self.cookie_name},
            )


@register("session-id-producer")
class SessionIdProducer:
    """Copies the request's session id from a header or a cookie to the cycle."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({SESSION_ID})
    consumes: ClassVar[frozenset[str]] = frozenset()
    Params = SessionIdParams

    def __init__(self, name: str, params: SessionIdParams, handle: Handle) -> None:
        if not params.header_name and not params.cookie_name:
            # Here rather than in Params: a Params class must parse from no parameters.
            raise ValueError("parameters: exactly one of headerName and cookieName is required")
        self.name = name
        self.params = params
        self._header = params.header_name.lower()
        self.key = session_id_key(name)
        """Where this instance's value goes: ``SessionID/<name>``."""

    def session_id(self, request: Request) -> SessionID | None:
        """The trimmed header value, or the cookie's value; None when absent or empty."""
        if self._header:
            value: str | None = request.headers.get(self._header, "").strip()
        else:
            value = cookie_value(request.headers.get("cookie", ""), self.params.cookie_name)
        return SessionID(value) if value else None

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Write the session id under ``SessionID`` and ``SessionID/<name>``; nothing when
        the request has none."""
        value = self.session_id(request)
        if value is not None:
            cycle.write(SESSION_ID, value)
            cycle.write(self.key, value)


def _header_list(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(h, str) for h in raw):
        raise ParamCheck("additionalSessionHeaders", "a list of str", raw)
    return tuple(h.strip().lower() for h in raw if h.strip())


@attrs.frozen
class AgentIdentityParams:
    """Parameters of ``agent-identity`` (llm-d-router)."""

    additional_session_headers: tuple[str, ...] = param(
        (), alias="additionalSessionHeaders", parse=_header_list
    )
    """Headers checked before the built-in ones (``x-claude-code-session-id``,
    ``x-session-affinity``, ``session-id``, ``session_id``), matched lower-cased."""


@register("agent-identity")
class AgentIdentity:
    """The first non-empty agent session header, as the request's ``agent-identity``."""

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    produces: ClassVar[frozenset[str]] = frozenset({AGENT_IDENTITY})
    consumes: ClassVar[frozenset[str]] = frozenset()
    Params = AgentIdentityParams

    def __init__(self, name: str, params: AgentIdentityParams, handle: Handle) -> None:
        self.name = name
        self.headers = params.additional_session_headers + AGENT_SESSION_HEADERS
        """The headers read, in order."""

    def identity(self, request: Request) -> str | None:
        """The first non-empty (trimmed) value among :attr:`headers`, or None."""
        for header in self.headers:
            value = request.headers.get(header, "").strip()
            if value:
                return value
        return None

    def prepare_request_data(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> None:
        """Write ``agent-identity`` when one of the headers has a value."""
        value = self.identity(request)
        if value is not None:
            cycle.write(AGENT_IDENTITY, value)


_session_id_producer: type[DataProducer] = SessionIdProducer
_agent_identity: type[DataProducer] = AgentIdentity
