"""Building a scheduler's parts from an ``EndpointPickerConfig``.

GIE instantiates every plugin of the effective config into one handle, then assembles
the profiles and finds the one profile handler (``gateway-api-inference-extension:
pkg/epp/config/loader/configloader.go``, ``instantiatePlugins`` and
``buildSchedulerConfig``). :func:`build` does the same, plus what the scheduler needs
around the cycle: the data producers in dependency order
(:mod:`inference_sched.framework.config.graph`) and the saturation detector the
``saturationDetector`` section names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from inference_sched.errors import ConfigError, InferenceSchedError
from inference_sched.framework.config import EndpointPickerConfig, ProfileSpec, load_config
from inference_sched.framework.config.graph import DataNode, dependency_order
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.interfaces import (
    DataProducer,
    Filter,
    Picker,
    ProfileHandler,
    SaturationDetector,
    Scorer,
)
from inference_sched.framework.profile import SchedulingProfile
from inference_sched.framework.registry import kinds_of
from inference_sched.state.table import EndpointTable

__all__ = ["Built", "ConfigSource", "build"]

ConfigSource = EndpointPickerConfig | str | os.PathLike[str] | Mapping[str, Any] | None
"""What :meth:`~inference_sched.framework.scheduler.Scheduler.from_config` accepts: a
loaded config, YAML text, a path, a parsed mapping, or ``None`` for GIE's default."""


class Built(NamedTuple):
    """Everything a :class:`~inference_sched.framework.scheduler.Scheduler` is made of."""

    config: EndpointPickerConfig
    table: EndpointTable
    profiles: dict[str, SchedulingProfile]
    handler: ProfileHandler
    producers: list[DataProducer]
    """In dependency order."""
    plugins: Mapping[str, Any]
    """Every instance by name, in config order."""
    saturation_detector: SaturationDetector | None


def build(
    config: ConfigSource,
    table: EndpointTable | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> Built:
    """Load ``config`` if needed and build every plugin of it.

    Args:
        config: see :data:`ConfigSource`.
        table: the endpoint table to schedule over (a new empty one by default).
        clock: time source for a new table.

    Raises:
        ConfigError: the config is invalid, or a plugin's constructor failed (the error
            names the plugin's path in the config).
    """
    if not isinstance(config, EndpointPickerConfig):
        config = load_config(config)
    if table is None:
        table = EndpointTable(clock=clock) if clock is not None else EndpointTable()
    handle = PluginHandle(table, clock=clock)
    for spec in config.plugins:
        try:
            instance = spec.cls(spec.name, spec.params, handle)
        except InferenceSchedError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"plugin {spec.name!r} ({spec.type}) failed to start: {type(exc).__name__}: {exc}",
                path=spec.path,
            ) from exc
        handle.add_plugin(spec.name, instance)
    plugins = handle.plugins()
    profiles = {p.name: _build_profile(p, plugins) for p in config.scheduling_profiles}
    handlers = [p for p in plugins.values() if "profile-handler" in kinds_of(type(p))]
    if len(handlers) != 1:  # the config loader guarantees one; guard hand-made configs
        raise ConfigError(f"expected exactly one profile handler, found {len(handlers)}")
    producers = _dependency_order(
        [p for p in plugins.values() if "data-producer" in kinds_of(type(p))]
    )
    return Built(
        config,
        table,
        profiles,
        handlers[0],
        producers,
        plugins,
        _saturation_detector(config, plugins),
    )


def _build_profile(spec: ProfileSpec, plugins: Mapping[str, Any]) -> SchedulingProfile:
    filters: list[Filter] = []
    scorers: list[tuple[Scorer, float]] = []
    picker: Picker | None = None
    for ref in spec.plugins:
        plugin = plugins[ref.plugin_ref]
        kinds = kinds_of(type(plugin))
        if "filter" in kinds:
            filters.append(plugin)
        if "scorer" in kinds:
            scorers.append((plugin, 1.0 if ref.weight is None else float(ref.weight)))
        if "picker" in kinds:
            picker = plugin
    return SchedulingProfile(spec.name, filters, scorers, picker)


def _saturation_detector(
    config: EndpointPickerConfig, plugins: Mapping[str, Any]
) -> SaturationDetector | None:
    """The instance the config's ``saturationDetector.pluginRef`` names, if built."""
    ref = (config.saturation_detector or {}).get("pluginRef")
    if not ref or ref not in plugins:  # section off, or its default type is unavailable
        return None
    detector = plugins[ref]
    if "saturation-detector" not in kinds_of(type(detector)):  # hand-made configs only
        raise ConfigError(
            f"plugin {ref!r} ({getattr(detector, 'type', '?')}) is not a saturation-detector",
            path="saturationDetector.pluginRef",
            value=ref,
        )
    return detector  # type: ignore[no-any-return]


def _dependency_order(producers: list[DataProducer]) -> list[DataProducer]:
    """Producers ordered so that each runs after every *other* producer of what it consumes.

    A producer may consume a key it also produces (it refines it): its own output does
    not gate it. Ties keep the given (config) order.

    Raises:
        ConfigError: producers depend on each other in a cycle (the loader rejects such
            a config; this guards hand-made ones).
    """
    found = dependency_order([DataNode.of(p.name, p) for p in producers])
    if found.blocked:
        names = ", ".join(producers[i].name for i in found.blocked)
        raise ConfigError(f"data producers depend on each other in a cycle: {names}")
    return [producers[i] for i in found.order]
