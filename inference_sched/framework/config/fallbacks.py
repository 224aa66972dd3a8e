"""Give a config's pickers fallbacks, for a gateway that retries (docs/datalayer.md,
"Endpoint health").

GIE's default profile ends with ``max-score-picker`` and its ``maxNumOfEndpoints``
defaults to 1 (``gateway-api-inference-extension:
pkg/epp/framework/plugins/scheduling/picker/max_score_picker.go``), so a scheduling
result has no fallback: when the pick refuses the connection, a gateway that can retry
has nowhere to go. :func:`with_fallbacks` is what ``inference-sched serve`` applies
before building the scheduler: every picker whose ``maxNumOfEndpoints`` the config does
not set returns the pick plus ``num_fallbacks`` more. A value the config sets is the
operator's choice and is kept.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from inference_sched.framework import registry
from inference_sched.framework.config.model import EndpointPickerConfig, PluginSpec

__all__ = ["MAX_ENDPOINTS_KEY", "with_fallbacks"]

MAX_ENDPOINTS_KEY: Final = "maxNumOfEndpoints"
"""The picker parameter raised (GIE's key; every built-in picker has it)."""


def with_fallbacks(config: EndpointPickerConfig, num_fallbacks: int) -> EndpointPickerConfig:
    """``config`` with its pickers returning up to ``1 + num_fallbacks`` endpoints.

    Every plugin that is a picker and has a ``maxNumOfEndpoints`` parameter
    (``max-score-picker``, ``random-picker``, ``weighted-random-picker``,
    ``softmax-picker``, third-party pickers with that key) and whose config entry does
    not set it (an auto-added picker never does) gets ``maxNumOfEndpoints = 1 +
    num_fallbacks``, unless its default is larger already. One line is appended to
    ``warnings`` naming the pickers raised, and one per profile picker the config pins
    to a single endpoint (the gateway has no fallback there). ``num_fallbacks = 0``
    returns ``config`` itself.

    Args:
        config: a loaded config (:func:`~inference_sched.framework.config.load_config`).
        num_fallbacks: fallbacks wanted after the pick.

    Returns:
        A new config (``config`` is frozen and left as it was).

    Raises:
        ValueError: ``num_fallbacks`` is not an int >= 0.
    """
    if isinstance(num_fallbacks, bool) or not isinstance(num_fallbacks, int):
        raise ValueError(
            f"num_fallbacks: expected int >= 0, got {num_fallbacks!r} "
            f"({type(num_fallbacks).__name__})"
        )
    if num_fallbacks < 0:
        raise ValueError(f"num_fallbacks: expected int >= 0, got {num_fallbacks}")
    if num_fallbacks == 0:
        return config
    wanted = 1 + num_fallbacks
    plugins: list[PluginSpec] = []
    raised: list[str] = []
    pinned: dict[str, str] = {}
    for spec in config.plugins:
        field = _max_endpoints_field(spec)
        if field is None:
            plugins.append(spec)
            continue
        current = getattr(spec.params, field.name)
        if MAX_ENDPOINTS_KEY in (spec.parameters or {}):
            if current == 1:
                pinned[spec.name] = spec.path
            plugins.append(spec)
        elif current >= wanted:
            plugins.append(spec)
        else:
            params = attrs.evolve(spec.params, **{MAX_ENDPOINTS_KEY: wanted})
            plugins.append(attrs.evolve(spec, params=params))
            raised.append(f"{spec.name!r} ({spec.path})")
    warnings = list(config.warnings)
    if raised:
        warnings.append(
            f"fallbacks: {MAX_ENDPOINTS_KEY} raised to {wanted} on picker(s) "
            f"{', '.join(raised)}, so a gateway has {num_fallbacks} fallback(s) to retry; "
            f"set {MAX_ENDPOINTS_KEY} in the config to keep another value"
        )
    used = {ref.plugin_ref for p in config.scheduling_profiles for ref in p.plugins}
    for name, path in pinned.items():
        if name in used:
            warnings.append(
                f"fallbacks: {path}.parameters.{MAX_ENDPOINTS_KEY} is 1 in the config, so "
                f"picker {name!r} returns no fallback for a gateway to retry"
            )
    return attrs.evolve(config, plugins=tuple(plugins), warnings=tuple(warnings))


def _max_endpoints_field(spec: PluginSpec) -> Any:
    """The attrs field of ``maxNumOfEndpoints`` when ``spec`` is a picker that has one."""
    if "picker" not in registry.kinds_of(spec.cls) or not attrs.has(type(spec.params)):
        return None
    for field in attrs.fields(type(spec.params)):
        if field.alias == MAX_ENDPOINTS_KEY:
            return field
    return None
