"""``check_plugin``: a plugin exercised through every extension-point Protocol it claims.

A plugin author calls it from a test::

    from inference_sched.testing import check_plugin

    def test_conformance() -> None:
        check_plugin(RunningHeadroomScorer)            # or the type: "running-headroom-scorer"

It checks what the framework relies on and cannot verify for each call on the hot path
(``docs/plugin-authoring.md``, the Protocols in
:mod:`inference_sched.framework.interfaces`), and raises :class:`AssertionError` naming
the plugin, the extension point and what went wrong:

1. **registration**: the type is registered (a class that is not is registered for the
   duration of the check, through the same checks as ``@register``);
2. **parameters**: ``Params`` is a frozen attrs class; it parses from an empty mapping
   (every parameter has a default, unless ``params=`` supplies the required ones); a
   value of the wrong type for any parameter, and an unknown key, are rejected with a
   :class:`~inference_sched.errors.ParameterError` whose path names the key;
3. **a scheduler builds with it**: a config that uses it loads, and the instance
   satisfies each Protocol (``isinstance``), with ``name``, ``type`` and the class
   attributes the Protocol declares (a scorer's ``category``, a producer's
   ``produces`` / ``consumes``);
4. **each kind, called directly** on a small table (:func:`~inference_sched.testing.
   make_table`): a scorer writes a finite score in [0, 1] for *every* candidate and
   leaves the candidates alone; a filter returns an int subset of its input in order; a
   picker returns distinct positions into the candidates, best first; a data producer
   writes every key it ``produces``; a profile handler picks configured profiles until
   it stops and makes a successful one primary; a decider answers a bool; a saturation
   detector a finite number >= 0; an admitter admits or raises
   ``AdmissionDeniedError``; PreRequest, DeferredWork and the response hooks run
   through one request's lifecycle; a data source gives an ``http(s)`` URL per endpoint;
   an extractor reads a vLLM page and raises only ``DataError`` on a malformed one;
5. **in a scheduler**: several requests are scheduled through the whole lifecycle and
   the scheduler counted no error (and no bad score) against the plugin;
6. **error isolation**: each method the scheduler calls is replaced by one that raises,
   and the scheduler must keep scheduling (a raising profile handler or decider fails
   that cycle with :class:`~inference_sched.errors.SchedulingError`, never with the
   plugin's exception); the next cycle, with the method restored, succeeds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from inference_sched.errors import (
    InferenceSchedError,
    ParameterError,
    PluginRegistrationError,
    SchedulingError,
)
from inference_sched.framework import registry
from inference_sched.framework.config import load_config
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Request, SchedulingResult
from inference_sched.params import parse_params
from inference_sched.state.endpoint import Role
from inference_sched.state.table import EndpointTable
from inference_sched.testing._kinds import KindChecks, fail_check
from inference_sched.testing.cycles import make_cycle
from inference_sched.testing.tables import make_table

__all__ = ["CheckReport", "InjectedFailure", "check_plugin", "conformance_table"]

PARAMS_PATH: Final = "plugins[0].parameters"
"""The config path parameter errors are checked against."""
_UNKNOWN_KEY: Final = "isched-conformance-unknown-key"
_DECIDER_PROFILES: Final = ("decode", "prefill")
_DECIDER_HANDLER: Final = "disagg-profile-handler"

_ISOLATED_POINTS: Final = {
    "filter": "Filter",
    "scorer": "Scorer",
    "picker": "Picker",
    "data-producer": "PrepareData",
    "pre-request": "PreRequest",
    "deferred-work": "Deferred",
    "response-received": "ResponseReceived",
    "response-streaming": "ResponseStreaming",
    "response-complete": "ResponseComplete",
    "admitter": "Admitter",
    "screener": "Screener",
}
"""Kind → the extension point the scheduler counts its errors under."""

_DATA_LAYER_KINDS: Final = frozenset(
    {
        "data-source",
        "extractor",
        "attribute-extractor",
        "endpoint-extractor",
        "notification-source",
        "endpoint-discovery",
        "parser",
    }
)
"""Kinds the scheduling cycle does not call: the data layer's (scrapers, pollers,
notification sources, discovery) and the gateway's request parsers."""


class InjectedFailure(RuntimeError):
    """What a method made to raise by :func:`check_plugin` raises."""


class _Foreign:
    """A parameter value no check should accept (of no type a config can hold)."""

    def __repr__(self) -> str:
        return "<a value of no parameter type>"


@attrs.frozen
class CheckReport:
    """What :func:`check_plugin` verified."""

    plugin_type: str
    """The registered type."""
    kinds: tuple[str, ...]
    """The extension points it implements (``registry.KINDS`` names)."""
    checked: tuple[str, ...]
    """One line per check that passed."""
    skipped: tuple[str, ...] = ()
    """Checks that do not apply, with the reason."""


def conformance_table() -> EndpointTable:
    """The table :func:`check_plugin` uses unless given one: four endpoints with every
    role (prefill, decode, none, both), GPU labels, LoRA adapters and varied load."""
    return make_table(
        4,
        roles=[Role.PREFILL, Role.DECODE, None, Role.BOTH],
        labels=[{"gpu": "h100"}, {"gpu": "h200"}, {}, {"gpu": "h200"}],
        adapters=[("lora-a",), (), ("lora-b",), ("lora-a", "lora-b")],
        waiting=[0, 3, 1, 6],
        running=[1, 4, 0, 2],
        kv_usage_frac=[0.1, 0.6, 0.3, 0.85],
        kv_blocks_total=1000,
        block_size_tokens=16,
        max_loras=4,
    )


def check_plugin(
    plugin: str | type[Any],
    params: Mapping[str, Any] | None = None,
    *,
    plugin_type: str | None = None,
    table: EndpointTable | None = None,
    profiles: Sequence[str] = ("default",),
    requests: int = 4,
) -> CheckReport:
    """Exercise a plugin through every Protocol it implements (see the module docstring).

    Args:
        plugin: a registered plugin type (``"queue-scorer"``, an installed entry point)
            or a plugin class; a class that is not registered yet is registered for the
            duration of the check (and forgotten after).
        params: the ``parameters`` mapping to build it with (its defaults when omitted;
            needed when ``Params`` has required parameters).
        plugin_type: the type to register an undecorated class under.
        table: the endpoint table to run on (:func:`conformance_table` by default). The
            check schedules on it, so its in-flight columns change.
        profiles: the profiles to configure (a profile handler may need its own, e.g.
            ``("decode", "prefill")`` for ``disagg-profile-handler``).
        requests: how many requests the scheduler run sends.

    Returns:
        What was checked, and what was skipped with the reason.

    Raises:
        AssertionError: a check failed; the message names the plugin, the extension
            point and the problem.
    """
    cls, resolved_type, temporary = _resolve(plugin, plugin_type)
    try:
        checker = _Checker(cls, resolved_type, params, table, tuple(profiles), requests)
        return checker.run()
    finally:
        if temporary:
            registry._forget(resolved_type)


# ====================================================================== resolution
def _resolve(plugin: str | type[Any], plugin_type: str | None) -> tuple[type[Any], str, bool]:
    """(class, type, registered by us) or AssertionError."""
    if isinstance(plugin, str):
        try:
            return registry.get(plugin), plugin, False
        except InferenceSchedError as exc:
            fail_check(plugin, f"not a registered plugin type: {exc}")
    declared = vars(plugin).get("type") or plugin_type
    if not isinstance(declared, str) or not declared:
        fail_check(
            plugin.__qualname__,
            "has no plugin type: decorate it with @register('<type>') or pass plugin_type=",
        )
    if registry.is_registered(declared):
        try:
            registered = registry.get(declared)
        except InferenceSchedError as exc:
            fail_check(declared, f"the registry cannot load it: {exc}")
        if registered is not plugin:
            fail_check(
                declared,
                f"the type is registered by {registered.__module__}.{registered.__qualname__}, "
                f"not by {plugin.__module__}.{plugin.__qualname__}",
            )
        return plugin, declared, False
    try:
        registry.register(declared)(plugin)
    except PluginRegistrationError as exc:
        fail_check(declared, f"@register rejects the class: {exc}")
    return plugin, declared, True


# ====================================================================== the checks
class _Checker(KindChecks):
    def __init__(
        self,
        cls: type[Any],
        plugin_type: str,
        params: Mapping[str, Any] | None,
        table: EndpointTable | None,
        profiles: tuple[str, ...],
        requests: int,
    ) -> None:
        self.cls = cls
        self.plugin_type = plugin_type
        self.name = plugin_type
        self.params = None if params is None else dict(params)
        self.table = conformance_table() if table is None else table
        self.kinds = registry.kinds_of(cls)
        self.profiles = profiles
        deciding = "decider" in self.kinds and "profile-handler" not in self.kinds
        if deciding and profiles == ("default",):
            self.profiles = _DECIDER_PROFILES
        self.requests = max(1, requests)
        self.checked: list[str] = []
        self.skipped: list[str] = []
        self.scheduler: Scheduler | None = None
        self.instance: Any = None

    # ............................................................ driver
    def run(self) -> CheckReport:
        if not self.kinds:
            self.fail("", "implements no extension point")
        if getattr(self.cls, "type", None) != self.plugin_type:
            self.fail(
                "", f"cls.type is {getattr(self.cls, 'type', None)!r}, not {self.plugin_type!r}"
            )
        self.check_params()
        self.build()
        for kind in self.kinds:
            getattr(self, "exercise_" + kind.replace("-", "_"))(kind)
        self.schedule_requests()
        with _quiet_injected_failures():
            for kind in self.kinds:
                self.isolation(kind)
        self.schedule_once("after the isolation checks, with every method restored")
        self.checked.append("the scheduler schedules again once the methods are restored")
        return CheckReport(self.plugin_type, self.kinds, tuple(self.checked), tuple(self.skipped))

    # ............................................................ parameters
    def check_params(self) -> None:
        params_cls = getattr(self.cls, "Params", None)
        if params_cls is None or not attrs.has(params_cls):
            self.fail("Params", "must be an attrs class (inference_sched.params.NoParams if none)")
        fields = attrs.fields(params_cls)
        keys = [a.alias or a.name for a in fields]
        required = [a.alias or a.name for a in fields if a.default is attrs.NOTHING]
        try:
            parse_params(params_cls, {}, PARAMS_PATH)
        except ParameterError as exc:
            if not required:
                self.fail("Params", f"does not parse from an empty mapping: {exc}")
            if self.params is None:
                self.fail(
                    "Params",
                    f"has required parameters ({', '.join(required)}): pass params= "
                    "with a value for each",
                )
            self.checked.append(f"Params: an empty mapping names the required {required}")
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            self.fail("Params", f"parsing an empty mapping raised {type(exc).__name__}: {exc}")
        else:
            self.checked.append("Params: every parameter has a default (an empty mapping parses)")
        base = dict(self.params or {})
        try:
            parsed = parse_params(params_cls, base, PARAMS_PATH)
        except ParameterError as exc:
            self.fail("Params", f"the given params= were rejected: {exc}")
        try:
            setattr(parsed, fields[0].name if fields else "_conformance_probe", None)
        except attrs.exceptions.FrozenInstanceError:
            pass
        except Exception as exc:  # noqa: BLE001 - any refusal but attrs' is a wrong class
            self.fail("Params", f"must be a frozen attrs class (@attrs.frozen); {exc!r}")
        else:
            self.fail("Params", "must be a frozen attrs class (@attrs.frozen): it can be changed")
        for key in [*keys, _UNKNOWN_KEY]:
            self.rejects(params_cls, base, key)
        self.checked.append(
            f"Params: a wrong value for each of {keys} and an unknown key are ParameterErrors "
            "naming the key"
        )

    def rejects(self, params_cls: type[Any], base: dict[str, Any], key: str) -> None:
        bad: Any = 1 if key == _UNKNOWN_KEY else _Foreign()
        where = f"{PARAMS_PATH}.{key}"
        try:
            parse_params(params_cls, {**base, key: bad}, PARAMS_PATH)
        except ParameterError as exc:
            errors = exc.errors or [exc]
            named = any(
                e.path == where or e.path.startswith(where + ".") or repr(key) in str(e)
                for e in errors
            )
            if not named:
                self.fail("Params", f"the error for a bad {key!r} does not name it: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            self.fail(
                "Params",
                f"a bad {key!r} raised {type(exc).__name__} instead of a ParameterError: {exc} "
                "(checks raise inference_sched.params.ParamCheck)",
            )
        else:
            self.fail(
                "Params",
                f"{key!r} accepts {bad!r}: give the field a check from inference_sched.params "
                "(integer, number, boolean, string, at_least, in_range, one_of, ...)",
            )

    # ............................................................ building
    def document(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": self.plugin_type, "name": self.name}
        if self.params is not None:
            entry["parameters"] = dict(self.params)
        plugins: list[dict[str, Any]] = [entry]
        refs: list[dict[str, Any]] = []
        if "scorer" in self.kinds:
            refs.append({"pluginRef": self.name, "weight": 1})
        elif {"filter", "picker"} & set(self.kinds):
            refs.append({"pluginRef": self.name})
        if "decider" in self.kinds and "profile-handler" not in self.kinds:
            plugins.append(
                {"type": _DECIDER_HANDLER, "parameters": {"deciders": {"prefill": self.name}}}
            )
        document: dict[str, Any] = {
            "plugins": plugins,
            "schedulingProfiles": [{"name": p, "plugins": refs} for p in self.profiles],
        }
        if "saturation-detector" in self.kinds:
            document["saturationDetector"] = {"pluginRef": self.name}
        return document

    def build(self) -> None:
        try:
            config = load_config(self.document())
        except InferenceSchedError as exc:
            self.fail("", f"a config using it does not load: {exc}")
        try:
            self.scheduler = Scheduler.from_config(config, self.table, seed=0)
        except InferenceSchedError as exc:
            self.fail("", f"Scheduler.from_config fails with it: {exc}")
        instance = self.scheduler.plugins.get(self.name)
        if not isinstance(instance, self.cls):
            self.fail("", f"the scheduler holds {instance!r} as {self.name!r}, not a {self.cls}")
        if getattr(instance, "name", None) != self.name:
            self.fail(
                "", f"instance.name is {getattr(instance, 'name', None)!r}, not {self.name!r}"
            )
        for kind in self.kinds:
            protocol = registry.KINDS[kind][0]
            if not isinstance(instance, protocol):
                missing = _missing_members(instance, protocol)
                self.fail(kind, f"not a {protocol.__name__}: missing {', '.join(missing)}")
        self.instance = instance
        self.checked.append(
            f"a config using it loads and builds; the instance satisfies {list(self.kinds)}"
        )

    # ............................................................ in a scheduler
    def schedule_once(self, when: str, request: Request | None = None) -> SchedulingResult:
        assert self.scheduler is not None
        request = self.request() if request is None else request
        try:
            return self.scheduler.schedule(request)
        except InferenceSchedError as exc:
            self.fail("", f"the scheduler failed to schedule {when}: {exc}")

    def schedule_requests(self) -> None:
        assert self.scheduler is not None
        scheduler = self.scheduler
        for i in range(self.requests):
            request = self.request(i)
            self.respond(request, self.schedule_once(f"request {i}", request))
        for stats in scheduler.stats():
            if stats.plugin_name != self.name:
                continue
            if stats.errors:
                self.fail(
                    "",
                    f"the scheduler counted {stats.errors} error(s) at {stats.extension_point} "
                    "over the scheduler run (its log has the traceback)",
                )
            if stats.nonfinite_scores or stats.clamped_scores:
                self.fail(
                    "scorer",
                    f"the scheduler zeroed {stats.nonfinite_scores} NaN/inf and clamped "
                    f"{stats.clamped_scores} out-of-range scores",
                )
        self.checked.append(
            f"scheduler: {self.requests} requests through schedule, deferred work and the "
            "response hooks, no error counted against it"
        )

    def respond(self, request: Request, result: SchedulingResult) -> None:
        """Deferred work and the response hooks of one scheduled request, in order."""
        assert self.scheduler is not None
        scheduler = self.scheduler
        fake = make_cycle(self.table, request)
        scheduler.run_deferred()
        scheduler.response_received(request, fake.response(), result)
        scheduler.response_streaming(request, fake.response(start=True), result)
        scheduler.response_streaming(request, fake.response(end=True), result)
        scheduler.response_complete(request, fake.response(end=True), result)

    # ............................................................ isolation
    def errors_at(self, point: str) -> int:
        assert self.scheduler is not None
        return sum(
            s.errors
            for s in self.scheduler.stats()
            if s.plugin_name == self.name and s.extension_point == point
        )

    def isolation(self, kind: str) -> None:
        assert self.scheduler is not None
        scheduler = self.scheduler
        methods = registry.KINDS[kind][1]
        if kind in _DATA_LAYER_KINDS:
            self.skipped.append(
                f"isolation of {kind}: not called by the Scheduler (the data layer's runners "
                "isolate it)"
            )
            return
        request = self.request(0, priority=-1 if kind == "saturation-detector" else 0)
        fails_cleanly = kind in ("profile-handler", "decider")
        point = _ISOLATED_POINTS.get(kind)
        before = self.errors_at(point) if point else scheduler.admission_errors
        what = "/".join(f"{m}()" for m in methods)
        with _raising(self.instance, methods):
            try:
                result = scheduler.schedule(request)
                # The rest of the request's life, as an embedder runs it.
                self.respond(request, result)
            except InjectedFailure as exc:
                self.fail(kind, f"the scheduler let a raising {what} escape: {exc!r}")
            except SchedulingError as exc:
                if not fails_cleanly:
                    self.fail(kind, f"a raising {what} failed the whole cycle: {exc}")
            except InferenceSchedError as exc:
                self.fail(kind, f"a raising {what} failed the cycle: {exc}")
            else:
                after = self.errors_at(point) if point else scheduler.admission_errors
                if not fails_cleanly and after <= before:
                    where = point or "admission_errors"
                    self.fail(kind, f"the raising {what} was not counted ({where})")
        self.checked.append(
            f"isolation: with {what} raising, the scheduler "
            + (
                "fails that cycle cleanly (SchedulingError) or schedules"
                if kind in ("profile-handler", "decider")
                else "keeps scheduling and counts the error"
            )
        )


class _DropInjected(logging.Filter):
    """Drops the log records of the failures :func:`check_plugin` injects."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InjectedFailure):
            return False
        return not any(isinstance(a, InjectedFailure) for a in _args(record))


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return () if args is None else (args,)


@contextlib.contextmanager
def _quiet_injected_failures() -> Iterator[None]:
    """Keep the scheduler's error logs of injected failures out of the test output
    (every other record still goes through)."""
    drop = _DropInjected()
    loggers = [
        logging.getLogger(name)
        for name in list(logging.Logger.manager.loggerDict)
        if name == "inference_sched" or name.startswith("inference_sched.")
    ]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextlib.contextmanager
def _raising(instance: Any, methods: Sequence[str]) -> Iterator[None]:
    """Make ``instance``'s ``methods`` raise :class:`InjectedFailure`, then restore them."""

    def make(method: str) -> Callable[..., Any]:
        def raising(*args: Any, **kwargs: Any) -> Any:
            raise InjectedFailure(f"injected by check_plugin into {method}()")

        return raising

    patched_class = not hasattr(instance, "__dict__")
    target: Any = type(instance) if patched_class else instance
    saved = {m: vars(target).get(m) for m in methods}
    try:
        for method in methods:
            setattr(target, method, make(method))
        yield
    finally:
        for method, old in saved.items():
            if old is None:
                delattr(target, method)
            else:
                setattr(target, method, old)


def _missing_members(instance: Any, protocol: type[Any]) -> list[str]:
    names: set[str] = set()
    for base in protocol.__mro__:
        if not getattr(base, "_is_protocol", False) or base.__module__ == "typing":
            continue
        names |= set(getattr(base, "__annotations__", {}))
        names |= {k for k, v in vars(base).items() if callable(v) and not k.startswith("_")}
    return sorted(n for n in names if not hasattr(instance, n)) or ["(unknown)"]
