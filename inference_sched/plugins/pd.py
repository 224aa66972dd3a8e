"""Prefill/decode disaggregation (llm-d-router:
``pkg/epp/framework/plugins/profilehandler/disagg/``, ``docs/disaggregation.md``).

``disagg-profile-handler`` runs the ``decode`` profile first, always; a *decider* then
says whether the request also runs ``prefill`` (and, for multimodal requests, ``encode``)
given the decode pick. The answer routes to the decode pick and carries the prefill pick
for the decode pod's sidecar in ``x-prefiller-host-port`` (the encode picks in
``x-encoder-hosts-ports``); the gateway must drop any client-supplied copy of those
headers (:attr:`~inference_sched.framework.types.SchedulingResult.dropped_request_headers`), so a
client cannot point a decode pod at a prefiller of its choice. llm-d-router's deprecated
flat keys (``decodeProfile``, ``deciderPluginName``, ...) map onto ``profiles`` /
``deciders`` with a config warning (``docs/plugins/disagg-profile-handler.md``).

Deciders: ``prefix-based-pd-decider`` (disaggregate when the prompt reaches
``promptTokens`` and its tokens the decode pick does not hold in cache reach
``nonCachedTokens``; the prompt's length is the ``TokenizedRequest`` token count, as
llm-d-router), ``always-disagg-pd-decider`` and ``always-disagg-multimodal-decider``.

``data-parallel-profile-handler`` (llm-d, deprecated there in favour of Istio's DP
support) runs the single profile and sends the request to the pod's ``primaryPort`` with
the chosen rank's ``ip:port`` in ``x-data-parallel-host-port``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs

from inference_sched.errors import SchedulingError
from inference_sched.framework.contracts import (
    PEER_ENDPOINT,
    PREFIX_CACHE_MATCH_INFO,
    read_prefix_info,
    read_tokenized,
    request_token_ids,
)
from inference_sched.framework.deciders import lookup_decider
from inference_sched.framework.headers import HEADER_DATA_PARALLEL, HEADER_ENCODER, HEADER_PREFILLER
from inference_sched.framework.interfaces import Decider, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import CycleState, ProfileRunResult, Request, SchedulingResult
from inference_sched.params import ParamCheck, at_least, in_range, param

if TYPE_CHECKING:
    from inference_sched.framework.profile import SchedulingProfile

__all__ = [
    "DATA_PARALLEL_HEADER",
    "ENCODER_HEADER",
    "PREFILLER_HEADER",
    "AlwaysDisaggMultimodalDecider",
    "AlwaysDisaggPDDecider",
    "DataParallelProfileHandler",
    "DisaggProfileHandler",
    "PrefixBasedPDDecider",
    "PrefixBasedParams",
    "input_tokens",
]

log = logging.getLogger(__name__)

PREFILLER_HEADER: Final = HEADER_PREFILLER
ENCODER_HEADER: Final = HEADER_ENCODER
DATA_PARALLEL_HEADER: Final = HEADER_DATA_PARALLEL
_PD_HEADERS: Final = (PREFILLER_HEADER, ENCODER_HEADER)
_MEDIA_PARTS: Final = frozenset({"image_url", "video_url", "input_audio"})
_LOG_EVERY_S: Final = 60.0


def input_tokens(cycle: CycleState, request: Request) -> int:
    """The prompt's length in tokens for the deciders: the cycle's ``TokenizedRequest``
    token count (llm-d-router ``TokenizedRequest.TokenCount()``), else the request's own
    token ids; 0 when neither is known."""
    tokenized = read_tokenized(cycle)
    if tokenized is not None:
        return tokenized.token_count()
    ids = request_token_ids(request, cycle)
    return 0 if ids is None else len(ids)


# ====================================================================== deciders
@attrs.frozen
class PrefixBasedParams:
    """Parameters of ``prefix-based-pd-decider`` (llm-d-router)."""

    non_cached_tokens: int = param(0, alias="nonCachedTokens", check=at_least(0))
    """Disaggregate when at least this many prompt tokens are not cached on the decode
    pick (0: the decider never disaggregates)."""
    prompt_tokens: int = param(0, alias="promptTokens", check=at_least(0))
    """Disaggregate only prompts of at least this many tokens (0: no minimum)."""


@register("prefix-based-pd-decider")
class PrefixBasedPDDecider:
    """Prefill elsewhere when the decode pick would have to compute a long prompt.

    With ``input`` the prompt's tokens (:func:`input_tokens`) and ``cached`` the decode
    pick's matched blocks x block size (the cycle's ``PrefixCacheMatchInfo``, whichever
    producer wrote the shared key), it disaggregates iff ``nonCachedTokens > 0``,
    ``input >= promptTokens`` (when > 0), ``input >= nonCachedTokens`` and ``input -
    cached >= nonCachedTokens``.
    """

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = PrefixBasedParams
    consumes: ClassVar[frozenset[str]] = frozenset({PREFIX_CACHE_MATCH_INFO})

    def __init__(self, name: str, params: PrefixBasedParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._clock = handle.clock
        self._last_log = -_LOG_EVERY_S
        if params.non_cached_tokens == 0:
            log.info("%s: prefix-based P/D disabled (nonCachedTokens=0)", name)

    def decide(self, cycle: CycleState, request: Request, decode: ProfileRunResult) -> bool:
        """Whether to run the prefill stage for ``decode``'s pick (see the class
        docstring). Without a prefix match in the cycle the answer is no (logged once a
        minute), as llm-d-router."""
        threshold = self.params.non_cached_tokens
        if threshold <= 0 or not decode.rows:
            return False
        tokens = input_tokens(cycle, request)
        minimum = self.params.prompt_tokens
        if (minimum > 0 and tokens < minimum) or tokens < threshold:
            return False
        info = read_prefix_info(cycle)
        if info is None:
            now = self._clock()
            if now - self._last_log >= _LOG_EVERY_S:
                self._last_log = now
                log.error(
                    "%s: no PrefixCacheMatchInfo in the cycle (add a prefix producer); "
                    "not disaggregating",
                    self.name,
                )
            return False
        row = decode.rows[0]
        matched = float(info.match_blocks[row]) if row < len(info.match_blocks) else 0.0
        return tokens - matched * info.block_size_tokens >= threshold


@register("always-disagg-pd-decider")
class AlwaysDisaggPDDecider:
    """Always prefill on the prefill pool."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]

    def __init__(self, name: str, params: object, handle: Handle) -> None:
        self.name = name

    def decide(self, cycle: CycleState, request: Request, decode: ProfileRunResult) -> bool:
        """True."""
        return True


@register("always-disagg-multimodal-decider")
class AlwaysDisaggMultimodalDecider:
    """Encode on the encode pool when the chat request carries images, video or audio."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]

    def __init__(self, name: str, params: object, handle: Handle) -> None:
        self.name = name

    def decide(self, cycle: CycleState, request: Request, decode: ProfileRunResult) -> bool:
        """True iff a message has an ``image_url``, ``video_url`` or ``input_audio`` part."""
        body = request.body
        messages = body.get("messages") if body is not None else None
        if not isinstance(messages, list):
            return False
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, Mapping) and part.get("type") in _MEDIA_PARTS:
                        return True
        return False


# ====================================================================== handlers
def _names(raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise ParamCheck(key, f"a mapping with keys among {', '.join(allowed)}", raw)
    out = {}
    for name, value in raw.items():
        if name not in allowed:
            raise ParamCheck(f"{key}.{name}", f"one of the keys {', '.join(allowed)}", name)
        if not isinstance(value, str) or not value:
            raise ParamCheck(f"{key}.{name}", "a non-empty str", value)
        out[name] = value
    return out


_DEFAULT_PROFILES: Final = {"decode": "decode", "prefill": "prefill", "encode": "encode"}
_DEPRECATED: Final = "deprecated: use {} (llm-d-router's old flat key)"

# llm-d-router's deprecated flat keys (``legacyDisaggProfileHandlerParameters`` in
# ``.../profilehandler/disagg/disagg_profile_handler.go``): flat key -> (nested key, stage).
_FLAT_KEYS: Final = {
    "decodeProfile": ("profiles", "decode"),
    "prefillProfile": ("profiles", "prefill"),
    "encodeProfile": ("profiles", "encode"),
    "prefillDeciderPluginName": ("deciders", "prefill"),
    "deciderPluginName": ("deciders", "prefill"),
    "encodeDeciderPluginName": ("deciders", "encode"),
}


def _profiles(raw: Any) -> dict[str, str]:
    return _names(raw, "profiles", tuple(_DEFAULT_PROFILES))


def _deciders(raw: Any) -> dict[str, str]:
    return _names(raw, "deciders", ("prefill", "encode"))


def _flat(key: str) -> Any:
    nested_key, stage = _FLAT_KEYS[key]

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ParamCheck(key, "a non-empty str", value)

    return param(
        None, alias=key, check=check, deprecated=_DEPRECATED.format(f"{nested_key}.{stage}")
    )


@attrs.frozen
class DisaggParams:
    """Parameters of ``disagg-profile-handler`` (llm-d).

    The deprecated flat keys (``decodeProfile`` ... ``encodeDeciderPluginName``) are
    llm-d-router's older form of ``profiles`` / ``deciders`` and map onto them
    (:meth:`stage_profiles`, :meth:`stage_deciders`); a config uses one form or the
    other, as llm-d-router requires.
    """

    profiles: dict[str, str] = param(factory=dict, alias="profiles", parse=_profiles)  # noqa: RUF009 - an attrs field
    """Profile names by stage (``decode``, ``prefill``, ``encode``); a stage not named
    here uses the profile of its own name (``{decode: decode, prefill: prefill, encode:
    encode}``)."""
    deciders: dict[str, str] = param(factory=dict, alias="deciders", parse=_deciders)  # noqa: RUF009 - an attrs field
    """The decider plugin (by name) of each optional stage; a stage without one never runs."""
    decode_profile: str | None = _flat("decodeProfile")
    """Deprecated: ``profiles.decode``."""
    prefill_profile: str | None = _flat("prefillProfile")
    """Deprecated: ``profiles.prefill``."""
    encode_profile: str | None = _flat("encodeProfile")
    """Deprecated: ``profiles.encode``."""
    prefill_decider_plugin_name: str | None = _flat("prefillDeciderPluginName")
    """Deprecated: ``deciders.prefill``."""
    decider_plugin_name: str | None = _flat("deciderPluginName")
    """Deprecated (``pd-profile-handler``'s key): ``deciders.prefill``."""
    encode_decider_plugin_name: str | None = _flat("encodeDeciderPluginName")
    """Deprecated: ``deciders.encode``."""

    def _flat_values(self) -> dict[str, str]:
        values = {
            "decodeProfile": self.decode_profile,
            "prefillProfile": self.prefill_profile,
            "encodeProfile": self.encode_profile,
            "prefillDeciderPluginName": self.prefill_decider_plugin_name,
            "deciderPluginName": self.decider_plugin_name,
            "encodeDeciderPluginName": self.encode_decider_plugin_name,
        }
        return {k: v for k, v in values.items() if v is not None}

    def __attrs_post_init__(self) -> None:
        flat = self._flat_values()
        if not flat:
            return
        given = [f"profiles.{s}" for s in self.profiles] + [f"deciders.{s}" for s in self.deciders]
        if given:
            # llm-d-router rejects any mix of the two forms. Name the nested key of the
            # same stage when there is one, else the first nested key given.
            key, value = next(iter(flat.items()))
            same = "{}.{}".format(*_FLAT_KEYS[key])
            other = same if same in given else given[0]
            raise ParamCheck(
                key,
                f"not with {other} (the deprecated flat keys and profiles/deciders do not "
                f"mix; write {same})",
                value,
            )
        if "prefillDeciderPluginName" in flat and "deciderPluginName" in flat:
            raise ParamCheck(
                "deciderPluginName",
                "not with prefillDeciderPluginName (both name deciders.prefill; use one)",
                flat["deciderPluginName"],
            )

    def stage_profiles(self) -> dict[str, str]:
        """The profile of every stage: ``profiles`` (or the flat keys), else the defaults."""
        out = dict(_DEFAULT_PROFILES)
        for key, value in self._flat_values().items():
            nested_key, stage = _FLAT_KEYS[key]
            if nested_key == "profiles":
                out[stage] = value
        return out | self.profiles

    def stage_deciders(self) -> dict[str, tuple[str, str]]:
        """The decider of each optional stage and the key that named it:
        ``{stage: (plugin name, key)}`` from ``deciders`` (or the flat keys)."""
        out = {stage: (ref, f"deciders.{stage}") for stage, ref in self.deciders.items()}
        for key, value in self._flat_values().items():
            nested_key, stage = _FLAT_KEYS[key]
            if nested_key == "deciders":
                out[stage] = (value, key)
        return out


@register("disagg-profile-handler")
class DisaggProfileHandler:
    """Decode first, then prefill / encode when their deciders say so (llm-d)."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = DisaggParams

    def __init__(self, name: str, params: DisaggParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._handle = handle
        self._profile_names = params.stage_profiles()
        self._decider_refs = params.stage_deciders()
        self._deciders: dict[str, Decider] = {}

    def _decider(self, stage: str) -> Decider | None:
        named = self._decider_refs.get(stage)
        if named is None:
            return None
        decider = self._deciders.get(stage)
        if decider is None:  # on first use: a decider may be declared after the handler
            ref, key = named
            decider = lookup_decider(self._handle, ref, self.name, key)
            self._deciders[stage] = decider
        return decider

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        """Decode alone first; then the optional stages whose decider approves."""
        names = self._profile_names
        decode = names["decode"]
        if decode not in profiles:
            raise SchedulingError(f"{self.name}: no profile named {decode!r} (profiles.decode)")
        if decode not in results:
            return {decode: profiles[decode]}
        decoded = results[decode]
        if decoded is None or not decoded.rows:
            return {}  # process_results reports it
        chosen: dict[str, SchedulingProfile] = {}
        for stage in ("encode", "prefill"):
            profile = names[stage]
            if profile in results or profile not in profiles:
                continue
            decider = self._decider(stage)
            if decider is not None and decider.decide(cycle, request, decoded):
                chosen[profile] = profiles[profile]
        if chosen:  # llm-d-router: the next stage sees the decode pick as its peer
            cycle.write(PEER_ENDPOINT, decoded.endpoints[0])
        return chosen

    def process_results(
        self,
        cycle: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Decode is primary; the prefill / encode picks go to the sidecar's headers.

        Raises:
            SchedulingError: decode found no endpoint ("failed to find available decode
                workers", as llm-d).
        """
        names = self._profile_names
        decoded = results.get(names["decode"])
        if decoded is None or not decoded.rows:
            raise SchedulingError("failed to find available decode workers")
        headers: dict[str, str] = {}
        prefill = results.get(names["prefill"])
        if prefill is not None and prefill.endpoints:
            headers[PREFILLER_HEADER] = prefill.endpoints[0].hostport
        encode = results.get(names["encode"])
        if encode is not None and encode.endpoints:
            headers[ENCODER_HEADER] = ",".join(e.hostport for e in encode.endpoints)
        ran = {k: v for k, v in results.items() if v is not None or k == names["decode"]}
        return SchedulingResult(
            profile_results=ran,
            primary_profile_name=names["decode"],
            request_headers=headers,
            dropped_request_headers=_PD_HEADERS,
        )


@attrs.frozen
class DataParallelParams:
    """Parameters of ``data-parallel-profile-handler`` (llm-d)."""

    primary_port: int = param(8000, alias="primaryPort", check=in_range(1, 65535))
    """The port the pod's sidecar listens on; it forwards to the rank in the header."""


@register("data-parallel-profile-handler")
class DataParallelProfileHandler:
    """One profile; the request goes to ``primaryPort`` with the rank in a header."""

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = DataParallelParams

    def __init__(self, name: str, params: DataParallelParams, handle: Handle) -> None:
        self.name = name
        self.params = params

    def pick_profiles(
        self,
        cycle: CycleState,
        request: Request,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulingProfile]:
        """The single profile, once.

        Raises:
            SchedulingError: more than one profile is configured.
        """
        if len(profiles) != 1:
            raise SchedulingError(
                f"{self.name}: data-parallel-profile-handler needs exactly one profile, "
                f"got {len(profiles)}"
            )
        return {} if results else dict(profiles)

    def process_results(
        self,
        cycle: CycleState,
        request: Request,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Route to each pick's ``primaryPort``; the rank's ``ip:port`` in the header."""
        ((name, result),) = results.items()
        if result is None or not result.endpoints:
            raise SchedulingError(f"failed to run scheduler profile '{name}'")
        port = self.params.primary_port
        ranks = result.endpoints
        rerouted = ProfileRunResult(
            rows=result.rows,
            endpoints=tuple(attrs.evolve(e, port=port) for e in ranks),
            scores=result.scores,
        )
        return SchedulingResult(
            profile_results={name: rerouted},
            primary_profile_name=name,
            request_headers={DATA_PARALLEL_HEADER: ranks[0].hostport},
            dropped_request_headers=(DATA_PARALLEL_HEADER,),
        )
