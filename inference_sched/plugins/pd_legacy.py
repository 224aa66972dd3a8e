"""llm-d's deprecated P/D plugins, still functional (llm-d-router:
``pkg/epp/framework/plugins/scheduling/profilehandler/pd/pd_profile_handler.go``,
``pkg/epp/framework/plugins/requestcontrol/disaggheaders/``).

``pd-profile-handler`` (deprecated in favour of ``disagg-profile-handler``) runs the
``decode`` profile, then ``prefill`` when one decider plugin approves the decode pick; it
does not set the sidecar's headers itself. That is the job of the PreRequest plugin
``disagg-headers-handler`` (alias ``prefill-header-handler``, both deprecated in favour
of ``disagg-profile-handler``, which does it in one plugin): it writes the prefill pick's
``ip:port`` in ``x-prefiller-host-port`` and the encode picks in ``x-encoder-hosts-ports``.

With ``primaryPort``, ``pd-profile-handler`` also does data parallelism as
``data-parallel-profile-handler``: every decode target's port becomes ``primaryPort`` and
the chosen rank's ``ip:port`` goes in ``x-data-parallel-host-port``.

Each of these types logs a deprecation warning naming ``disagg-profile-handler`` when it
is built (``docs/plugins/pd-profile-handler.md``).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs

from inference_sched.errors import SchedulingError
from inference_sched.framework.contracts import PREFIX_CACHE_MATCH_INFO
from inference_sched.framework.deciders import lookup_decider
from inference_sched.framework.headers import HEADER_DATA_PARALLEL, HEADER_ENCODER, HEADER_PREFILLER
from inference_sched.framework.interfaces import Decider, Handle, PreRequest, ProfileHandler
from inference_sched.framework.registry import register
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import ParamCheck, integer, param, string

if TYPE_CHECKING:
    from inference_sched.framework.profile import SchedulingProfile

__all__ = [
    "DECISION_DECODE_ONLY",
    "DECISION_PREFILL_DECODE",
    "DisaggHeadersHandler",
    "DisaggHeadersParams",
    "PdProfileHandler",
    "PdProfileParams",
    "PrefillHeaderHandler",
]

log = logging.getLogger(__name__)

DECISION_PREFILL_DECODE: Final = "prefill-decode"
"""``pd_decision_total`` label: the decider sent the request to the prefill profile too."""
DECISION_DECODE_ONLY: Final = "decode-only"
"""``pd_decision_total`` label: decode alone."""
_LOG_EVERY_S: Final = 60.0


def _non_empty(key: str) -> Any:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        string(inst, attribute, value)
        if not value:
            raise ParamCheck(key, "a non-empty str", value)

    return check


def _port_or_zero(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    integer(inst, attribute, value)
    if value != 0 and not 1 <= value <= 65535:
        raise ParamCheck("primaryPort", "0 (off) or an int in [1, 65535]", value)


@attrs.frozen
class PdProfileParams:
    """Parameters of ``pd-profile-handler`` (llm-d-router, deprecated)."""

    decode_profile: str = param("decode", alias="decodeProfile", check=_non_empty("decodeProfile"))
    """The decode profile (always runs first; primary)."""
    prefill_profile: str = param(
        "prefill", alias="prefillProfile", check=_non_empty("prefillProfile")
    )
    """The prefill profile (runs when the decider approves the decode pick)."""
    decider_plugin_name: str = param(
        "prefix-based-pd-decider",
        alias="deciderPluginName",
        check=_non_empty("deciderPluginName"),
    )
    """The decider plugin instance, by name (a ``pluginRef``)."""
    primary_port: int = param(0, alias="primaryPort", check=_port_or_zero)
    """Data parallelism: route every decode target to this port and put the rank's
    ``ip:port`` in ``x-data-parallel-host-port`` (0: off)."""
    prefix_match_info_producer_name: str = param(
        "", alias="prefixMatchInfoProducerName", check=string
    )
    """Accepted for llm-d compatibility; the decider reads the cycle's prefix match
    (config loading checks the name produces ``PrefixCacheMatchInfo``)."""
    prefix_plugin_type: str = param("prefix-cache-scorer", alias="prefixPluginType", check=string)
    """Accepted for llm-d compatibility; unused (as in llm-d)."""
    prefix_plugin_name: str = param("", alias="prefixPluginName", check=string)
    """Accepted for llm-d compatibility; unused (as in llm-d)."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key -> (plugin name, data key)."""
        name = self.prefix_match_info_producer_name
        return {"prefixMatchInfoProducerName": (name, PREFIX_CACHE_MATCH_INFO)} if name else {}


@register("pd-profile-handler")
class PdProfileHandler:
    """Decode, then prefill when the decider approves (deprecated llm-d handler)."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = PdProfileParams

    def __init__(self, name: str, params: PdProfileParams, handle: Handle) -> None:
        log.warning(
            "plugin %r: type 'pd-profile-handler' is deprecated; use 'disagg-profile-handler'",
            name,
        )
        if params.primary_port:
            log.info("plugin %r: primaryPort is not needed with Istio >= 1.28.1", name)
        self.name = name
        self.params = params
        self._handle = handle
        self._decider: Decider | None = None
        self.decisions: collections.Counter[str] = collections.Counter()
        """llm-d's ``pd_decision_total``: decisions by type (``prefill-decode``,
        ``decode-only``)."""

    def decider(self) -> Decider:
        """The decider instance named by ``deciderPluginName`` (looked up on first use).

        Raises:
            SchedulingError: no plugin of that name, or it is not a decider.
        """
        decider = self._decider
        if decider is None:
            ref = self.params.decider_plugin_name
            decider = lookup_decider(self._handle, ref, self.name, "deciderPluginName")
            self._decider = decider
        return decider

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        """Decode first; then prefill if every profile has not run yet, decode found an
        endpoint and the decider approves its pick; else stop."""
        decode = self.params.decode_profile
        if decode not in results:
            if decode not in profiles:
                raise SchedulingError(f"{self.name}: no profile named {decode!r} (decodeProfile)")
            return {decode: profiles[decode]}
        decoded = results[decode]
        if len(profiles) == len(results) or decoded is None or not decoded.rows:
            return {}
        if self.decider().decide(cycle, request, decoded):
            self.decisions[DECISION_PREFILL_DECODE] += 1
            prefill = self.params.prefill_profile
            if prefill not in profiles:
                raise SchedulingError(f"{self.name}: no profile named {prefill!r} (prefillProfile)")
            return {prefill: profiles[prefill]}
        self.decisions[DECISION_DECODE_ONLY] += 1
        return {}

    def process_results(
        self,
        cycle: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Decode is primary; a successful prefill run is kept for the header plugin.

        The answer's ``request_headers`` is a mutable mapping that ``disagg-headers-handler``
        fills in PreRequest; ``dropped_request_headers`` names the P/D headers (and the
        data-parallel one with ``primaryPort``) so a client cannot supply them.

        Raises:
            SchedulingError: decode failed ("failed to find available decode workers").
        """
        decode = self.params.decode_profile
        decoded = results.get(decode)
        if decoded is None or not decoded.rows:
            raise SchedulingError("failed to find available decode workers")
        headers: dict[str, str] = {}
        dropped: tuple[str, ...] = (HEADER_PREFILLER, HEADER_ENCODER)
        port = self.params.primary_port
        if port:
            headers[HEADER_DATA_PARALLEL] = decoded.endpoints[0].hostport
            decoded = ProfileRunResult(
                rows=decoded.rows,
                endpoints=tuple(attrs.evolve(e, port=port) for e in decoded.endpoints),
                scores=decoded.scores,
            )
            dropped += (HEADER_DATA_PARALLEL,)
        kept: dict[str, ProfileRunResult | None] = {decode: decoded}
        prefill = results.get(self.params.prefill_profile)
        if prefill is not None:
            kept[self.params.prefill_profile] = prefill
        return SchedulingResult(
            profile_results=kept,
            primary_profile_name=decode,
            request_headers=headers,
            dropped_request_headers=dropped,
        )


_pd_profile_handler: type[ProfileHandler] = PdProfileHandler


# ====================================================================== PreRequest
@attrs.frozen
class DisaggHeadersParams:
    """Parameters of ``disagg-headers-handler`` / ``prefill-header-handler`` (llm-d-router,
    deprecated)."""

    prefill_profile: str = param("prefill", alias="prefillProfile", check=string)
    """The profile whose first pick goes in ``x-prefiller-host-port``."""
    encode_profile: str = param("encode", alias="encodeProfile", check=string)
    """The profile whose picks go in ``x-encoder-hosts-ports``."""


@register("disagg-headers-handler")
class DisaggHeadersHandler:
    """Sets the P/D sidecar headers from the prefill / encode picks (deprecated)."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = DisaggHeadersParams

    def __init__(self, name: str, params: DisaggHeadersParams, handle: Handle) -> None:
        log.warning(
            "plugin %r: type %r is deprecated; use 'disagg-profile-handler' (it sets the "
            "same headers)",
            name,
            self.type,
        )
        self.name = name
        self.params = params
        self._last_log = -_LOG_EVERY_S

    def pre_request(self, cycle: CycleState, request: Request, result: SchedulingResult) -> None:
        """Remove, then set ``x-prefiller-host-port`` (the prefill profile's first pick, if
        it has one) and ``x-encoder-hosts-ports`` (every encode pick, comma-separated) in
        the answer's ``request_headers``.

        The profile handler must answer with a mutable ``request_headers`` mapping
        (``pd-profile-handler`` and ``disagg-profile-handler`` do); otherwise nothing is
        set and a warning is logged at most once a minute.
        """
        headers = result.request_headers
        if not isinstance(headers, MutableMapping):
            now = time.monotonic()
            if now - self._last_log >= _LOG_EVERY_S:
                self._last_log = now
                log.warning(
                    "%s: the profile handler's answer has read-only request headers; "
                    "use pd-profile-handler or disagg-profile-handler",
                    self.name,
                )
            return
        headers.pop(HEADER_PREFILLER, None)
        prefill = result.profile_results.get(self.params.prefill_profile)
        if prefill is not None and prefill.endpoints:
            headers[HEADER_PREFILLER] = prefill.endpoints[0].hostport
        headers.pop(HEADER_ENCODER, None)
        encode = result.profile_results.get(self.params.encode_profile)
        if encode is not None and encode.endpoints:
            headers[HEADER_ENCODER] = ",".join(e.hostport for e in encode.endpoints)


@register("prefill-header-handler")
class PrefillHeaderHandler(DisaggHeadersHandler):
    """The older name of ``disagg-headers-handler`` (deprecated; same parameters)."""


_disagg_headers_handler: type[PreRequest] = DisaggHeadersHandler
