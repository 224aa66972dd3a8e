"""The plugin registry: register-time checks and lazy entry-point discovery.

Throwaway classes are registered under ``test-*`` types and forgotten afterwards.
Entry points are faked by monkeypatching ``importlib.metadata.entry_points`` (as pluggy's
``test_load_setuptools_instantiation`` does); their modules are real files in a temporary
directory, so the registration happens during the import, as for an installed plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from inference_sched.errors import (
    PluginLoadError,
    PluginRegistrationError,
    UnknownPluginTypeError,
)
from inference_sched.framework import registry
from inference_sched.framework.registry import register
from inference_sched.params import NoParams
from inference_sched.plugins.load import QueueScorer


@pytest.fixture
def forget() -> Iterator[list[str]]:
    """Types to drop from the registry after the test."""
    types: list[str] = []
    yield types
    for plugin_type in types:
        registry._forget(plugin_type)


def _scorer_class() -> type[Any]:
    class Scorer:
        category = "Distribution"

        def __init__(self, name: str, params: Any, handle: Any) -> None:
            self.name = name

        def score(self, cycle: Any, request: Any, table: Any, candidates: Any, out: Any) -> None:
            out[:] = 1.0

    return Scorer


# ---------------------------------------------------------------- @register checks
def test_register_sets_type_and_default_params(forget: list[str]) -> None:
    forget.append("test-plain-scorer")
    cls = register("test-plain-scorer")(_scorer_class())
    assert cls.type == "test-plain-scorer"
    assert cls.Params is NoParams
    assert registry.get("test-plain-scorer") is cls
    assert registry.kinds_of(cls) == ("scorer",)
    assert registry.source_of("test-plain-scorer") == f"module {__name__}"


def test_register_same_class_twice_is_harmless(forget: list[str]) -> None:
    forget.append("test-twice")
    cls = _scorer_class()
    assert register("test-twice")(register("test-twice")(cls)) is cls


def test_register_keeps_declared_params(forget: list[str]) -> None:
    forget.append("test-with-params")

    @attrs.frozen
    class Params:
        size: int = 1

    cls = _scorer_class()
    cls.Params = Params
    assert register("test-with-params")(cls).Params is Params


def test_register_records_default_producer(forget: list[str]) -> None:
    forget.append("test-producer")
    register("test-producer", default_producer_for=("TestDataKey",))(_scorer_class())
    assert registry.default_producer_for("TestDataKey") == "test-producer"
    registry._forget("test-producer")
    assert registry.default_producer_for("TestDataKey") is None


@pytest.mark.parametrize(
    "plugin_type", ["QueueScorer", "queue_scorer", "-queue", "queue-", "queue--scorer", "1-x", ""]
)
def test_type_must_be_kebab_case(plugin_type: str) -> None:
    with pytest.raises(PluginRegistrationError, match=r"must be kebab-case") as info:
        register(plugin_type)(_scorer_class())
    assert info.value.plugin_type == plugin_type


def test_duplicate_type_names_both_sources() -> None:
    with pytest.raises(
        PluginRegistrationError,
        match=r"^plugin type 'queue-scorer' is already registered by "
        r"inference_sched\.plugins\.load\.QueueScorer \(inference-sched \(built-in\)\); "
        r"\S+\.Scorer \(module \S+\) cannot take it$",
    ):
        register("queue-scorer")(_scorer_class())
    assert registry.get("queue-scorer") is QueueScorer


def test_no_extension_point() -> None:
    class Nothing:
        def __init__(self, name: str, params: Any, handle: Any) -> None: ...

    with pytest.raises(
        PluginRegistrationError, match=r"^.*Nothing implements no extension point; define one of: "
    ):
        register("test-nothing")(Nothing)
    with pytest.raises(UnknownPluginTypeError):
        registry.get("test-nothing")


def test_wrong_method_parameter_names() -> None:
    class Renamed:
        def __init__(self, name: str, params: Any, handle: Any) -> None: ...

        def score(self, cycle: Any, req: Any, table: Any, rows: Any, out: Any) -> None: ...

    with pytest.raises(
        PluginRegistrationError,
        match=r"Renamed\.score must take \(self, cycle, request, table, candidates, out\) "
        r"to be a scorer, got \(self, cycle, req, table, rows, out\)$",
    ):
        register("test-renamed")(Renamed)


def test_params_must_be_attrs() -> None:
    cls = _scorer_class()
    cls.Params = dict
    with pytest.raises(PluginRegistrationError, match=r"Scorer\.Params must be an attrs class"):
        register("test-dict-params")(cls)


def test_constructor_signature() -> None:
    class NoHandle:
        def __init__(self, name: str, params: Any) -> None: ...

        def filter(self, cycle: Any, request: Any, table: Any, candidates: Any) -> Any: ...

    with pytest.raises(
        PluginRegistrationError,
        match=r"NoHandle\.__init__ must take \(self, name, params, handle\), "
        r"got \(self, name, params\)$",
    ):
        register("test-no-handle")(NoHandle)


@pytest.fixture(autouse=True)
def _fresh_entry_point_scan() -> Iterator[None]:
    """Tests fake ``importlib.metadata.entry_points``: never leave a stale cached scan."""
    yield
    registry.refresh_entry_points()


def test_unknown_type_suggests_close_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    registry.refresh_entry_points()
    with pytest.raises(UnknownPluginTypeError, match=r"did you mean 'queue-scorer'\?") as info:
        registry.get("queue-scoer")
    assert info.value.plugin_type == "queue-scoer"
    assert "queue-scorer" in info.value.suggestions


# ---------------------------------------------------------------- entry points
@attrs.frozen
class _Dist:
    name: str
    version: str


@attrs.frozen
class _EntryPoint:
    """Quacks like importlib.metadata.EntryPoint: ``load`` imports ``module:attr``."""

    name: str
    value: str
    dist: _Dist | None
    group: str = registry.ENTRY_POINT_GROUP

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        return getattr(importlib.import_module(module), attr)


class _Plugins:
    """Writes plugin modules into a temporary directory and serves them as entry points."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path
        self.modules: list[str] = []
        self.entry_points: list[_EntryPoint] = []
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(importlib.metadata, "entry_points", self._select)
        registry.refresh_entry_points()  # the registry caches the scan per process

    def _select(self, **kwargs: Any) -> list[_EntryPoint]:
        assert kwargs == {"group": registry.ENTRY_POINT_GROUP}
        return list(self.entry_points)

    def add(self, name: str, value: str, source: str = "", dist: str = "isched-example") -> None:
        module = value.partition(":")[0]
        if source:
            (self.path / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.append(module)
        self.entry_points.append(_EntryPoint(name, value, _Dist(dist, "0.3.1")))
        registry.refresh_entry_points()

    def cleanup(self) -> None:
        for module in self.modules:
            sys.modules.pop(module, None)
        registry.refresh_entry_points()


@pytest.fixture
def plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget: list[str]
) -> Iterator[_Plugins]:
    fake = _Plugins(tmp_path, monkeypatch)
    yield fake
    fake.cleanup()
    forget.extend(ep.name for ep in fake.entry_points)


_DECORATED = """
    from inference_sched.framework.registry import register

    @register("{type}")
    class {cls}:
        def __init__(self, name, params, handle):
            self.name = name

        def filter(self, cycle, request, table, candidates):
            return candidates
"""

_UNDECORATED = """
    class {cls}:
        category = "Affinity"

        def __init__(self, name, params, handle):
            self.name = name

        def score(self, cycle, request, table, candidates, out):
            out[:] = 0.5
"""


def test_entry_point_loads_lazily_and_records_its_distribution(plugins: _Plugins) -> None:
    plugins.add(
        "test-ep-filter",
        "isched_ep_filter:EpFilter",
        _DECORATED.format(type="test-ep-filter", cls="EpFilter"),
    )
    assert "isched_ep_filter" not in sys.modules  # nothing imported before it is asked for
    cls = registry.get("test-ep-filter")
    assert cls.__name__ == "EpFilter"
    assert cls.type == "test-ep-filter"
    assert registry.source_of("test-ep-filter") == "isched-example 0.3.1"
    assert registry.kinds_of(cls) == ("filter",)
    assert registry.get("test-ep-filter") is cls  # cached


def test_broken_entry_point_raises_plugin_load_error(plugins: _Plugins) -> None:
    plugins.add("test-ep-broken", "isched_not_installed:Scorer", dist="isched-broken")
    with pytest.raises(
        PluginLoadError,
        match=r"^plugin type 'test-ep-broken' failed to load from isched-broken 0\.3\.1: "
        r"ModuleNotFoundError: No module named 'isched_not_installed'$",
    ) as info:
        registry.get("test-ep-broken")
    assert info.value.distribution == "isched-broken 0.3.1"
    assert info.value.plugin_type == "test-ep-broken"
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(PluginLoadError) as again:  # the failure is cached, not retried
        registry.get("test-ep-broken")
    assert again.value is info.value


def test_import_error_inside_the_plugin_module(plugins: _Plugins) -> None:
    plugins.add(
        "test-ep-bad-import",
        "isched_bad_import:Scorer",
        "import isched_missing_dependency\n",
        dist="isched-bad-import",
    )
    with pytest.raises(
        PluginLoadError,
        match=r"failed to load from isched-bad-import 0\.3\.1: ModuleNotFoundError: "
        r"No module named 'isched_missing_dependency'",
    ):
        registry.get("test-ep-bad-import")


def test_entry_point_name_must_equal_declared_type(plugins: _Plugins, forget: list[str]) -> None:
    forget.append("test-declared-type")
    plugins.add(
        "test-ep-other-name",
        "isched_mismatch:Mismatch",
        _DECORATED.format(type="test-declared-type", cls="Mismatch"),
    )
    with pytest.raises(
        PluginLoadError,
        match=r"^entry point 'test-ep-other-name' of isched-example 0\.3\.1 names Mismatch, "
        r"which registers type 'test-declared-type'; the entry point name must equal it$",
    ) as info:
        registry.get("test-ep-other-name")
    assert info.value.distribution == "isched-example 0.3.1"


def test_undecorated_class_is_registered_under_the_entry_point_name(
    plugins: _Plugins,
) -> None:
    plugins.add("test-ep-plain", "isched_plain:Plain", _UNDECORATED.format(cls="Plain"))
    cls = registry.get("test-ep-plain")
    assert cls.type == "test-ep-plain"
    assert cls.Params is NoParams
    assert registry.kinds_of(cls) == ("scorer",)
    assert registry.source_of("test-ep-plain") == "isched-example 0.3.1"
    out = np.zeros(2, dtype=np.float32)
    cls("plain", NoParams(), None).score(None, None, None, np.arange(2), out)
    assert out.tolist() == [0.5, 0.5]


def test_undecorated_subclass_of_a_builtin_gets_its_own_type(plugins: _Plugins) -> None:
    plugins.add(
        "test-ep-my-queue",
        "isched_myqueue:MyQueueScorer",
        "from inference_sched.plugins.load import QueueScorer\n"
        "class MyQueueScorer(QueueScorer):\n    pass\n",
    )
    cls = registry.get("test-ep-my-queue")
    assert cls.type == "test-ep-my-queue"
    assert registry.get("queue-scorer").type == "queue-scorer"  # the parent is untouched


def test_undecorated_class_failing_the_checks_is_rejected(plugins: _Plugins) -> None:
    plugins.add(
        "test-ep-rejected",
        "isched_rejected:Rejected",
        "class Rejected:\n    def __init__(self, name, params, handle): ...\n",
    )
    with pytest.raises(
        PluginLoadError,
        match=r"^plugin type 'test-ep-rejected' from isched-example 0\.3\.1 was rejected: "
        r"Rejected implements no extension point",
    ):
        registry.get("test-ep-rejected")


def test_entry_point_naming_a_function(plugins: _Plugins) -> None:
    plugins.add("test-ep-func", "isched_func:make", "def make():\n    return None\n")
    with pytest.raises(
        PluginLoadError,
        match=r"^entry point 'test-ep-func' of isched-example 0\.3\.1 names "
        r"'isched_func:make', which is not a class$",
    ):
        registry.get("test-ep-func")


def test_available_lists_builtins_and_entry_points(plugins: _Plugins) -> None:
    plugins.add("test-ep-plain-2", "isched_plain2:Plain2", _UNDECORATED.format(cls="Plain2"))
    plugins.add("test-ep-broken-2", "isched_nowhere:X", dist="isched-broken")
    infos = {info.type: info for info in registry.available()}
    assert infos["queue-scorer"].source == "inference-sched (built-in)"
    assert infos["queue-scorer"].kinds == ("scorer",)
    assert infos["test-ep-plain-2"].source == "isched-example 0.3.1"
    assert infos["test-ep-plain-2"].kinds == ("scorer",)
    broken = infos["test-ep-broken-2"]
    assert (broken.cls, broken.kinds, broken.source) == (None, (), "isched-broken 0.3.1")
    assert broken.error is not None
    assert "ModuleNotFoundError" in broken.error


def test_builtin_types_are_all_registered() -> None:
    expected = {
        "queue-scorer": ("scorer",),
        "running-requests-size-scorer": ("scorer",),
        "kv-cache-utilization-scorer": ("scorer",),
        "token-load-scorer": ("scorer",),
        "active-request-scorer": ("scorer",),
        "load-aware-scorer": ("scorer",),
        "lora-affinity-scorer": ("scorer",),
        "prefix-cache-scorer": ("scorer",),
        "no-hit-lru-scorer": ("scorer", "pre-request"),
        "prefix-cache-affinity-filter": ("filter",),
        "approx-prefix-cache-producer": ("data-producer", "pre-request", "deferred-work"),
        "max-score-picker": ("picker",),
        "random-picker": ("picker",),
        "weighted-random-picker": ("picker",),
        "decode-filter": ("filter",),
        "prefill-filter": ("filter",),
        "label-selector-filter": ("filter",),
        "by-label-selector": ("filter",),
        "single-profile-handler": ("profile-handler",),
        "inflight-load-producer": (
            "data-producer",
            "pre-request",
            "response-streaming",
            "response-complete",
        ),
    }
    for plugin_type, kinds in expected.items():
        cls = registry.get(plugin_type)
        assert cls.type == plugin_type
        assert registry.kinds_of(cls) == kinds
        assert registry.source_of(plugin_type) == "inference-sched (built-in)"
