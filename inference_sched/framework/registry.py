"""Plugin registry: ``@register`` for built-ins, entry points for third parties.

One registry, one set of checks. Built-in plugins register with ``@register("type")`` when
their family module is imported, which happens the first time a config names one of its
types (:mod:`inference_sched.framework.catalogue` says which module holds which type).
Third-party distributions declare entry points in
the group ``inference_sched.plugins`` (name = plugin type, value = ``module:Class``); they
are imported lazily, per type, the first time a config asks for that type, so a broken
third-party plugin never breaks ``import inference_sched`` and fails only the config that
uses it (with the distribution named).

``register`` checks the class the way pluggy verifies hook implementations: kebab-case
type, not taken, at least one extension-point Protocol satisfied with the Protocol's
parameter names, and ``Params`` an attrs class.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.metadata
import inspect
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import attrs

from inference_sched.errors import PluginLoadError, PluginRegistrationError, UnknownPluginTypeError
from inference_sched.framework import interfaces
from inference_sched.framework.catalogue import (
    BUILTIN_DEFAULT_PRODUCERS,
    BUILTIN_DEPRECATED,
    BUILTIN_FAMILIES,
    BUILTIN_PLUGINS,
)
from inference_sched.params import NoParams, closest

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PluginInfo",
    "available",
    "default_producer_for",
    "get",
    "is_registered",
    "kinds_of",
    "refresh_entry_points",
    "register",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "inference_sched.plugins"
BUILTIN_SOURCE: Final = "inference-sched (built-in)"

_TYPE_RE: Final = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")

KINDS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "filter": (interfaces.Filter, ("filter",)),
    "scorer": (interfaces.Scorer, ("score",)),
    "picker": (interfaces.Picker, ("pick",)),
    "profile-handler": (interfaces.ProfileHandler, ("pick_profiles", "process_results")),
    "data-producer": (interfaces.DataProducer, ("prepare_request_data",)),
    "pre-request": (interfaces.PreRequest, ("pre_request",)),
    "deferred-work": (interfaces.DeferredWork, ("run_deferred",)),
    "data-source": (interfaces.DataSource, ("url_for",)),
    "extractor": (interfaces.Extractor, ("extract",)),
    "response-received": (interfaces.ResponseReceived, ("response_received",)),
    "response-streaming": (interfaces.ResponseStreaming, ("response_streaming",)),
    "response-complete": (interfaces.ResponseComplete, ("response_complete",)),
    "saturation-detector": (interfaces.SaturationDetector, ("saturation",)),
    "decider": (interfaces.Decider, ("decide",)),
    "admitter": (interfaces.Admitter, ("admit_request",)),
    "screener": (interfaces.Screener, ("screen",)),
    "attribute-extractor": (interfaces.AttributeExtractor, ("extract_attributes",)),
    "endpoint-extractor": (interfaces.EndpointExtractor, ("extract_endpoint",)),
    "notification-source": (interfaces.NotificationSource, ("attach",)),
    "endpoint-discovery": (interfaces.EndpointDiscovery, ("endpoints", "watch")),
    "parser": (interfaces.Parser, ("claims", "parse_request", "new_response_parser")),
}
"""Extension points: kind → (Protocol, methods that define it). Later subsystems
(flow control, saturation detection, the data layer) add their kinds here."""

C = TypeVar("C", bound=type[Any])


@attrs.frozen
class PluginInfo:
    """What the registry knows about a plugin type."""

    type: str
    kinds: tuple[str, ...]
    source: str
    """``inference-sched (built-in)`` or ``<distribution> <version>``."""
    cls: builtins.type[Any] | None
    error: str | None = None
    """Why the type failed to load (third-party plugins only)."""
    stability: str = "stable"
    """``alpha``, ``beta`` or ``stable`` (llm-d-router's ``Stability``; the class's
    ``stability`` attribute, ``stable`` when it has none). llm-d-router refuses Alpha
    instances unless started with ``--allow-experimental-plugins``."""
    replaced_by: str | None = None
    """The type that replaces this deprecated one, or None."""


_lock = threading.RLock()
_classes: dict[str, type[Any]] = {}
_sources: dict[str, str] = {}
_default_producers: dict[str, str] = {}
_load_errors: dict[str, PluginLoadError] = {}
_builtins_loaded = False
_entry_point_cache: dict[str, importlib.metadata.EntryPoint] | None = None
_loading_source: str | None = None  # set while an entry point module is being imported


def kinds_of(cls: type[Any]) -> tuple[str, ...]:
    """Extension-point kinds ``cls`` implements, in :data:`KINDS` order."""
    return tuple(
        kind
        for kind, (_, methods) in KINDS.items()
        if all(callable(getattr(cls, m, None)) for m in methods)
    )


def _check_signatures(cls: type[Any], kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        protocol, methods = KINDS[kind]
        for method in methods:
            want = list(inspect.signature(getattr(protocol, method)).parameters)
            have = list(inspect.signature(getattr(cls, method)).parameters)
            if have != want:
                raise PluginRegistrationError(
                    f"{cls.__qualname__}.{method} must take ({', '.join(want)}) to be a "
                    f"{kind}, got ({', '.join(have)})",
                    plugin_type=getattr(cls, "type", ""),
                )


def _validate_class(plugin_type: str, cls: type[Any]) -> None:
    if not _TYPE_RE.match(plugin_type):
        raise PluginRegistrationError(
            f"{cls.__qualname__}: plugin type {plugin_type!r} must be kebab-case "
            "(lower-case words joined by '-')",
            plugin_type=plugin_type,
        )
    kinds = kinds_of(cls)
    if not kinds:
        wanted = ", ".join(f"{k} ({'/'.join(m)})" for k, (_, m) in KINDS.items())
        raise PluginRegistrationError(
            f"{cls.__qualname__} implements no extension point; define one of: {wanted}",
            plugin_type=plugin_type,
        )
    _check_signatures(cls, kinds)
    params = getattr(cls, "Params", None)
    if params is None or not attrs.has(params):
        raise PluginRegistrationError(
            f"{cls.__qualname__}.Params must be an attrs class "
            "(use inference_sched.params.NoParams when the plugin takes none)",
            plugin_type=plugin_type,
        )
    init = list(inspect.signature(cls.__init__).parameters)
    if init[:4] != ["self", "name", "params", "handle"]:
        raise PluginRegistrationError(
            f"{cls.__qualname__}.__init__ must take (self, name, params, handle), "
            f"got ({', '.join(init)})",
            plugin_type=plugin_type,
        )


def register(plugin_type: str, *, default_producer_for: tuple[str, ...] = ()) -> Callable[[C], C]:
    """Class decorator: record ``cls`` as the plugin of type ``plugin_type``.

    Sets ``cls.type`` (and ``cls.Params = NoParams`` when absent) and checks the class.

    Args:
        plugin_type: GIE's kebab-case type string, e.g. ``queue-scorer``.
        default_producer_for: data keys this plugin produces by default: when a profile
            consumes one of them and no instance produces it, config loading creates
            this plugin with default parameters (GIE's ``RegisterAsDefaultProducer``).

    Raises:
        PluginRegistrationError: bad type string, type already taken (both sources are
            named), no extension point satisfied, wrong method parameter names, or
            ``Params`` not an attrs class.
    """

    def decorate(cls: C) -> C:
        if "Params" not in vars(cls) and getattr(cls, "Params", None) is None:
            cls.Params = NoParams
        cls.type = plugin_type
        _validate_class(plugin_type, cls)
        if BUILTIN_PLUGINS.get(plugin_type, cls.__module__) != cls.__module__:
            _import_family(plugin_type)  # a clash with a lazy built-in is reported now
        source = _loading_source or _module_source(cls)
        with _lock:
            existing = _classes.get(plugin_type)
            if existing is not None and existing is not cls:
                raise PluginRegistrationError(
                    f"plugin type {plugin_type!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__} ({_sources[plugin_type]}); "
                    f"{cls.__module__}.{cls.__qualname__} ({source}) cannot take it",
                    plugin_type=plugin_type,
                )
            _classes[plugin_type] = cls
            _sources[plugin_type] = source
            for key in default_producer_for:
                _default_producers[key] = plugin_type
        return cls

    return decorate


def _module_source(cls: type[Any]) -> str:
    if cls.__module__.split(".")[0] == "inference_sched":
        return BUILTIN_SOURCE
    return f"module {cls.__module__}"


def _import_family(plugin_type: str) -> None:
    """Import the built-in family that registers ``plugin_type`` (no-op when unknown or
    already imported)."""
    module = BUILTIN_PLUGINS.get(plugin_type)
    if module is not None and plugin_type not in _classes:
        importlib.import_module(module)


def _import_all_families() -> None:
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)


def _ensure_builtins() -> None:
    """Warn once about entry points that name a built-in type (the built-in wins)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for name, ep in _entry_points().items():
            if name in BUILTIN_PLUGINS:  # never shadow silently: say which one wins
                log.warning(
                    "entry point %r of %s is ignored: %r is a built-in plugin type",
                    name,
                    _distribution(ep),
                    name,
                )


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    # Scanning installed distributions costs milliseconds: do it once per process
    # (``refresh_entry_points`` rescans after installing a plugin at run time).
    global _entry_point_cache
    if _entry_point_cache is None:
        _entry_point_cache = {
            ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        }
    return _entry_point_cache


def refresh_entry_points() -> None:
    """Forget the cached entry-point scan (after installing a plugin distribution)."""
    global _entry_point_cache
    _entry_point_cache = None


def is_registered(plugin_type: str) -> bool:
    """Whether :func:`get` can find ``plugin_type`` (without importing third parties)."""
    _ensure_builtins()
    return (
        plugin_type in _classes or plugin_type in BUILTIN_PLUGINS or plugin_type in _entry_points()
    )


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> type[Any]:
    global _loading_source
    source = _distribution(ep)
    with _lock:
        previous, _loading_source = _loading_source, source
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin type {ep.name!r} failed to load from {source}: "
                f"{type(exc).__name__}: {exc}",
                plugin_type=ep.name,
                distribution=source,
            ) from exc
        finally:
            _loading_source = previous
        if not isinstance(obj, type):
            raise PluginLoadError(
                f"entry point {ep.name!r} of {source} names {ep.value!r}, which is not a class",
                plugin_type=ep.name,
                distribution=source,
            )
        # vars(): a subclass of a built-in inherits its parent's ``type``; only a type set
        # on the class itself (by @register) counts as declared.
        declared = vars(obj).get("type")
        if declared is None:  # not decorated: register it under the entry-point name
            try:
                register(ep.name)(obj)
            except PluginRegistrationError as exc:
                raise PluginLoadError(
                    f"plugin type {ep.name!r} from {source} was rejected: {exc}",
                    plugin_type=ep.name,
                    distribution=source,
                ) from exc
        elif declared != ep.name:
            raise PluginLoadError(
                f"entry point {ep.name!r} of {source} names {obj.__qualname__}, "
                f"which registers type {declared!r}; the entry point name must equal it",
                plugin_type=ep.name,
                distribution=source,
            )
        _sources[ep.name] = source
        return obj


def get(plugin_type: str) -> type[Any]:
    """The class registered for ``plugin_type`` (imports a third-party entry point lazily).

    Raises:
        UnknownPluginTypeError: no built-in or entry point has this type (with close
            matches).
        PluginLoadError: the entry point exists but failed to load (cached: the import
            is not retried).
    """
    _ensure_builtins()
    cls = _classes.get(plugin_type)
    if cls is not None:
        return cls
    if plugin_type in BUILTIN_PLUGINS:
        _import_family(plugin_type)
        return _classes[plugin_type]
    with _lock:
        if plugin_type in _load_errors:
            raise _load_errors[plugin_type]
        ep = _entry_points().get(plugin_type)
        if ep is None:
            known = sorted(set(_classes) | set(BUILTIN_PLUGINS) | set(_entry_points()))
            raise UnknownPluginTypeError(plugin_type, closest(plugin_type, known))
        try:
            return _load_entry_point(ep)
        except PluginLoadError as exc:
            _load_errors[plugin_type] = exc
            raise


def default_producer_for(data_key: str) -> str | None:
    """The plugin type registered as the default producer of ``data_key``."""
    _ensure_builtins()
    return _default_producers.get(data_key) or BUILTIN_DEFAULT_PRODUCERS.get(data_key)


def source_of(plugin_type: str) -> str:
    """Where ``plugin_type`` came from (after it was loaded)."""
    return _sources.get(plugin_type, "unknown")


def available() -> Iterator[PluginInfo]:
    """Every plugin type: built-ins and entry points (loaded now, errors reported)."""
    _ensure_builtins()
    _import_all_families()
    types = sorted(set(_classes) | set(_entry_points()))
    for plugin_type in types:
        try:
            cls = get(plugin_type)
        except PluginLoadError as exc:
            yield PluginInfo(plugin_type, (), exc.distribution, None, str(exc))
            continue
        yield PluginInfo(
            plugin_type,
            kinds_of(cls),
            _sources[plugin_type],
            cls,
            stability=stability_of(cls),
            replaced_by=BUILTIN_DEPRECATED.get(plugin_type),
        )


STABILITIES: Final = ("alpha", "beta", "stable")


def stability_of(cls: type[Any]) -> str:
    """``cls.stability`` (``alpha`` / ``beta`` / ``stable``), ``stable`` by default."""
    value = getattr(cls, "stability", "stable")
    return value if value in STABILITIES else "stable"


def _forget(plugin_type: str) -> None:
    """Drop a type (tests only: undo a registration made by a test)."""
    refresh_entry_points()
    with _lock:
        _classes.pop(plugin_type, None)
        _sources.pop(plugin_type, None)
        _load_errors.pop(plugin_type, None)
        for key in [k for k, v in _default_producers.items() if v == plugin_type]:
            del _default_producers[key]
