"""``header-profile-handler`` (llm-d-router:
``pkg/epp/framework/plugins/scheduling/profilehandler/headerprofile/``).

Runs exactly one scheduling profile per request: the one a request header names. A
caller that already knows which stage a call is for (llm-d's coordinator, one scheduling
call per ``encode`` / ``prefill`` / ``decode`` stage, tagged ``EPP-Profile``) can then
share one scheduler across the stages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import attrs

from inference_sched.errors import SchedulingError
from inference_sched.framework.interfaces import Handle, ProfileHandler
from inference_sched.framework.registry import register
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import ParamCheck, param

if TYPE_CHECKING:
    from inference_sched.framework.profile import SchedulingProfile

__all__ = ["HeaderProfileHandler", "HeaderProfileParams"]

log = logging.getLogger(__name__)


def _header_name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ParamCheck("headerName", "a non-empty str", raw)
    return raw.strip().lower()


def _profile_name(raw: object) -> str:
    if not isinstance(raw, str):
        raise ParamCheck("defaultProfile", "a str", raw)
    return raw


@attrs.frozen
class HeaderProfileParams:
    """Parameters of ``header-profile-handler`` (llm-d-router)."""

    header_name: str = param("epp-profile", alias="headerName", parse=_header_name)
    """Request header whose value names the profile to run (``EPP-Profile``; matched
    lower-cased, as request header names are)."""
    default_profile: str = param("decode", alias="defaultProfile", parse=_profile_name)
    """Profile run when the header is missing or blank and several profiles exist."""


@register("header-profile-handler")
class HeaderProfileHandler:
    """Runs the one profile the request's header names (or ``defaultProfile``)."""

    stability: ClassVar[str] = "alpha"

    type: ClassVar[str]
    Params = HeaderProfileParams

    def __init__(self, name: str, params: HeaderProfileParams, handle: Handle) -> None:
        self.name = name
        self.params = params

    def selected(self, request: Request, profiles: Mapping[str, object]) -> str | None:
        """The profile this request runs, or None when its header names no profile."""
        if len(profiles) == 1:
            return next(iter(profiles))
        value = request.headers.get(self.params.header_name, "").strip()
        wanted = value or self.params.default_profile
        if wanted in profiles:
            return wanted
        log.warning(
            "%s: %s %r names no configured profile (known: %s)",
            self.name,
            f"header {self.params.header_name!r}" if value else "defaultProfile",
            wanted,
            ", ".join(profiles),
        )
        return None

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        """The named profile, once; nothing when the name is unknown (the scheduler then
        fails with "failed to run any scheduler profile", answered 429)."""
        if results:
            return {}
        chosen = self.selected(request, profiles)
        return {} if chosen is None else {chosen: profiles[chosen]}

    def process_results(
        self,
        cycle: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Make the profile that ran primary.

        Raises:
            SchedulingError: more than one result, or the profile failed.
        """
        if len(results) != 1:
            raise SchedulingError(
                f"header profile handler expects exactly one profile result, got {len(results)}"
            )
        ((name, result),) = results.items()
        if result is None:
            raise SchedulingError(f"failed to run scheduler profile '{name}'")
        return SchedulingResult(profile_results=dict(results), primary_profile_name=name)


_header_profile_handler: type[ProfileHandler] = HeaderProfileHandler
