"""The lazy built-in catalogue equals what the family modules register, and a config
imports only the families it names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from inference_sched.framework import registry
from inference_sched.framework.catalogue import (
    BUILTIN_DEFAULT_PRODUCERS,
    BUILTIN_FAMILIES,
    BUILTIN_PLUGINS,
)

pytestmark = pytest.mark.unit


def test_catalogue_equals_what_each_family_registers() -> None:
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)
    registered = {
        t: cls.__module__
        for t, cls in registry._classes.items()
        if cls.__module__.startswith("inference_sched.")
    }
    assert registered == dict(BUILTIN_PLUGINS)


def test_default_producers_equal_the_registrations() -> None:
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)
    assert {k: v for k, v in registry._default_producers.items() if v in BUILTIN_PLUGINS} == (
        dict(BUILTIN_DEFAULT_PRODUCERS)
    )


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if "
            "m.startswith('inference_sched.plugins.') or m.endswith('datalayer.plugins'))))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(out.stdout.split())


def test_a_config_imports_only_the_families_it_names() -> None:
    loaded = _loaded_after(
        "from inference_sched import Scheduler, EndpointTable\n"
        "Scheduler.from_config('plugins: [{type: queue-scorer}, {type: max-score-picker}]\\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}, "
        "{pluginRef: max-score-picker}]}]\\n', EndpointTable())"
    )
    # queue-scorer's and the picker's families, the default profile handler's, GIE's
    # default saturation detector's, the data layer's default source and extractor, and
    # the default request parsers (llm-d-router's requestHandler)
    assert loaded == {
        "inference_sched.plugins.parsers",
        "inference_sched.plugins.load",
        "inference_sched.plugins.saturation",
        "inference_sched.plugins.pickers",
        "inference_sched.plugins.profile_handlers",
        "inference_sched.datalayer.plugins",
    }


def test_importing_the_package_imports_no_family() -> None:
    assert _loaded_after("import inference_sched\ninference_sched.Scheduler") == set()


def test_a_third_party_type_clashing_with_a_lazy_builtin_is_refused() -> None:
    code = (
        "from inference_sched.framework.registry import register\n"
        "from inference_sched.params import NoParams\n"
        "class Mine:\n"
        "    Params = NoParams\n"
        "    def __init__(self, name, params, handle): pass\n"
        "    def score(self, cycle, request, table, candidates, out): pass\n"
        "try:\n"
        "    register('queue-scorer')(Mine)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "PluginRegistrationError"
