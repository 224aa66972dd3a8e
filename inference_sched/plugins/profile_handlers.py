"""Profile handlers: ``single-profile-handler`` (GIE, ``gateway-api-inference-extension``:
``pkg/epp/framework/plugins/scheduling/profile/``).

A profile handler decides which scheduling profiles run for a request and turns their
results into the cycle's answer. The single-profile handler runs the one configured
profile and makes it primary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from inference_sched.errors import SchedulingError
from inference_sched.framework.interfaces import Handle, ProfileHandler
from inference_sched.framework.registry import register
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import NoParams

if TYPE_CHECKING:
    from inference_sched.framework.profile import SchedulingProfile

__all__ = ["SingleProfileHandler"]


@register("single-profile-handler")
class SingleProfileHandler:
    """Runs every profile once (GIE expects exactly one) and makes it primary."""

    type: ClassVar[str]
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name

    def static_profile(self, profiles: Mapping[str, SchedulingProfile]) -> str | None:
        """The profile every request runs, when there is exactly one.

        With it the scheduler runs that profile directly, skipping the handler loop; the
        answer is the one ``pick_profiles`` + ``process_results`` give.
        """
        return next(iter(profiles)) if len(profiles) == 1 else None

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        """The profiles that have not run yet; empty once every profile has a result."""
        if len(results) >= len(profiles):
            return {}
        return {name: p for name, p in profiles.items() if name not in results}

    def process_results(
        self,
        cycle: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Make the single profile primary.

        Raises:
            SchedulingError: not exactly one result, or that profile failed.
        """
        if len(results) != 1:
            raise SchedulingError(
                "single profile handler is intended to be used with a single profile, "
                f"failed to process {len(results)} profile results"
            )
        ((name, result),) = results.items()
        if result is None:
            raise SchedulingError(f"failed to run scheduler profile '{name}'")
        return SchedulingResult(profile_results=dict(results), primary_profile_name=name)


_single_profile_handler: type[ProfileHandler] = SingleProfileHandler
