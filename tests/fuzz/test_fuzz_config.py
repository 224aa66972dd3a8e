"""Fuzzing config loading: YAML text, parsed mappings and hostile YAML (alias chains,
deep nesting, huge scalars, tags) give a config or a ConfigError naming the field or
line, within the time and memory budgets (``tests/fuzz/_budget.py``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from inference_sched.errors import ConfigError
from inference_sched.framework import registry
from inference_sched.framework.config import EndpointPickerConfig, load_config
from tests.fuzz._budget import fuzz_settings, short_repr, typed_outcome

pytestmark = pytest.mark.fuzz

CONFIG_DIR = Path(__file__).parents[1] / "data" / "configs"
VALID_TEXTS = sorted(
    p.read_text() for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("invalid-")
)
INVALID_TEXTS = sorted(p.read_text() for p in CONFIG_DIR.glob("invalid-*.yaml"))

_CLASSES = {info.type: info.cls for info in registry.available() if info.cls is not None}
PLUGIN_TYPES = sorted(_CLASSES)
PARAMETER_KEYS = sorted(
    {
        str(field.alias)
        for cls in _CLASSES.values()
        if isinstance(getattr(cls, "Params", None), type) and attrs.has(cls.Params)
        for field in attrs.fields(cls.Params)
    }
)
TOP_KEYS = [
    "apiVersion",
    "kind",
    "featureGates",
    "plugins",
    "schedulingProfiles",
    "saturationDetector",
    "dataLayer",
    "flowControl",
    "parser",
]
CONFIG_KEYS = [
    "apiVersion",
    "kind",
    "featureGates",
    "plugins",
    "schedulingProfiles",
    "saturationDetector",
    "dataLayer",
    "flowControl",
    "parser",
    "type",
    "name",
    "parameters",
    "pluginRef",
    "weight",
    "sources",
    "extractors",
    "priorityBands",
    "defaultPriorityBand",
    "priority",
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "<<",
]
_YAML_PIECES = st.sampled_from([*":-[]{}&*!|>'\"#%@`,?~\n\t ", "  ", "- ", ": ", "\n  "])


def _texts(pieces: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.lists(pieces, max_size=max_size).map("".join)


def _check(error: Any) -> None:
    assert isinstance(error, ConfigError)
    assert error.errors, "a ConfigError lists its problems"
    for problem in error.errors:
        assert str(problem) in str(error)


def _paths_start_in(document: Any) -> Callable[[Any], None]:
    """A check that every problem's path starts at a key of ``document`` (or at a
    section the loader adds, such as a missing ``schedulingProfiles``)."""
    heads = {str(k) for k in document} | set(TOP_KEYS) if isinstance(document, dict) else None

    def check(error: Any) -> None:
        _check(error)
        for problem in error.errors:
            head = re.split(r"[.\[]", problem.path, maxsplit=1)[0]
            if problem.path and heads is not None:
                assert head in heads, f"path {problem.path!r} is not in the document"

    return check


def _load(source: Any, what: str) -> EndpointPickerConfig | Any:
    check = _paths_start_in(source) if isinstance(source, dict) else _check
    outcome = typed_outcome(lambda: load_config(source), what, expected=ConfigError, check=check)
    if not isinstance(outcome, ConfigError):
        assert isinstance(outcome, EndpointPickerConfig)
    return outcome


# ----------------------------------------------------------------- arbitrary text
@fuzz_settings()
@given(text=_texts(_YAML_PIECES | st.characters() | st.sampled_from(CONFIG_KEYS), 200))
@example(text="apiVersion: " + "9" * 5000)  # past Python's int-from-text digit limit
@example(text="plugins: " + "[" * 2000 + "]" * 2000)
@example(text="!!python/object/apply:os.system [echo]")
@example(text="{[a, b]: 1}")
def test_arbitrary_text_loads_or_raises_config_error(text: str) -> None:
    _load(text, f"load_config({short_repr(text)})")


@st.composite
def _mutated_configs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID_TEXTS + INVALID_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        chunk = draw(_texts(_YAML_PIECES | st.sampled_from(PLUGIN_TYPES), 6).filter(bool))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        if kind == "insert":
            text = text[:pos] + chunk + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + len(chunk) :]
        else:
            text = text[:pos] + chunk + text[pos + len(chunk) :]
    return text


@fuzz_settings()
@given(text=_mutated_configs())
def test_mutated_config_files_load_or_raise_config_error(text: str) -> None:
    _load(text, "mutated config file")


# ----------------------------------------------------------------- generated mappings
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(PLUGIN_TYPES),
    st.sampled_from(["10Gi", "1k", "-1", "150ms", "1h", "0s", "x", "", "1e3", "NaN"]),
)
_KEYS = st.one_of(
    st.sampled_from(CONFIG_KEYS),
    st.sampled_from(PARAMETER_KEYS),
    st.text(max_size=6),
    st.integers(),
    st.booleans(),
    st.none(),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=16,
)


@st.composite
def _plugin_entries(draw: st.DrawFn) -> dict[Any, Any]:
    entry: dict[Any, Any] = {"type": draw(st.sampled_from(PLUGIN_TYPES) | _SCALARS)}
    if draw(st.booleans()):
        entry["name"] = draw(st.text(max_size=6) | _SCALARS)
    if draw(st.booleans()):
        entry["parameters"] = draw(
            st.dictionaries(st.sampled_from(PARAMETER_KEYS) | _KEYS, _VALUES, max_size=3) | _VALUES
        )
    return entry


@st.composite
def _documents(draw: st.DrawFn) -> dict[Any, Any]:
    """Config-shaped mappings: mostly the right keys, plugin types and parameter names,
    with any value anywhere."""
    plugins = draw(st.lists(_plugin_entries(), max_size=4))
    document: dict[Any, Any] = {}
    if draw(st.booleans()):
        document["apiVersion"] = draw(
            st.sampled_from(["inference.networking.x-k8s.io/v1alpha1"]) | _SCALARS
        )
    if draw(st.booleans()):
        document["kind"] = draw(st.sampled_from(["EndpointPickerConfig"]) | _SCALARS)
    document["plugins"] = plugins if draw(st.integers(0, 5)) else draw(_VALUES)
    if draw(st.booleans()):
        names = [p.get("name", p.get("type")) for p in plugins] or ["x"]
        refs = st.fixed_dictionaries(
            {"pluginRef": st.sampled_from(names) | _SCALARS},
            optional={"weight": st.integers(-5, 5) | _SCALARS},
        )
        document["schedulingProfiles"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.text(max_size=5) | _SCALARS, "plugins": st.lists(refs, max_size=3)}
                ),
                max_size=3,
            )
            | _VALUES
        )
    extra = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS) | _KEYS, _VALUES, max_size=2))
    return {**document, **extra}


@fuzz_settings()
@given(document=_documents())
def test_generated_mappings_load_or_raise_config_error(document: dict[Any, Any]) -> None:
    _load(document, f"load_config({short_repr(document)})")


@fuzz_settings()
@given(document=_documents())
def test_generated_mappings_as_yaml_text_load_or_raise_config_error(
    document: dict[Any, Any],
) -> None:
    try:
        text = yaml.safe_dump(document, sort_keys=False)
    except yaml.YAMLError:  # a value PyYAML cannot represent
        return
    _load(text, "generated YAML text")


# ----------------------------------------------------------------- hostile YAML
def _alias_chain(depth: int, fan_out: int, flow_map: bool) -> str:
    """A "billion laughs" chain as one flow node: level k refers to level k-1
    ``fan_out`` times, so the expanded document has ``fan_out ** depth`` leaves."""
    node = "&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for k in range(1, depth + 1):
        if flow_map:
            refs = ", ".join(f"k{j}: *l{k - 1}" for j in range(1, fan_out))
            node = f"&l{k} {{k0: {node}, {refs}}}"
        else:
            node = f"&l{k} [{node}" + f", *l{k - 1}" * (fan_out - 1) + "]"
    return node


def _merge_chain(depth: int, fan_out: int) -> str:
    node = "&m0 {a: 1}"
    for k in range(1, depth + 1):
        node = f"&m{k} {{<<: [{node}" + f", *m{k - 1}" * (fan_out - 1) + f"], k{k}: 1}}"
    return node


_HOSTILE = st.one_of(
    st.builds(_alias_chain, st.integers(1, 12), st.integers(2, 10), st.booleans()),
    st.builds(_merge_chain, st.integers(1, 10), st.integers(2, 6)),
    # Past ~400 levels PyYAML's composer hits the recursion limit; its scanner is
    # quadratic in the depth (2000 levels: seconds), so keep the depth modest here.
    st.integers(1, 600).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 600).map(lambda n: "{a: " * n + "1" + "}" * n),
    st.integers(4000, 20000).map(lambda n: "9" * n),
    st.integers(4000, 20000).map(lambda n: "0x" + "f" * n),
    st.integers(1, 200_000).map(lambda n: "a" * n),
    st.sampled_from(
        [
            "&r [*r]",
            "&r {a: *r}",
            "&r {<<: *r}",
            "!!python/object/apply:os.system [echo hi]",
            "!!python/name:os.system",
            "!!binary aGVsbG8=",
            "!!set {a, b}",
            "!!omap [a: 1, b: 2]",
            "!!timestamp 2001-12-14t21:59:43.10-05:00",
            "!!float nan",
            "!!int 1_000",
            "!!str 3",
            "!unknown x",
            "{[a, b]: 1}",
            "{{a: 1}: 2}",
            ".nan",
            "-.inf",
            "1e999999",
            "0o777777777777777777777777777",
            "~",
            "''",
            '"\\uD800"',
            '"\\x00"',
            "*undefined",
        ]
    ),
)


@st.composite
def _hostile_documents(draw: st.DrawFn) -> str:
    """A valid config with one value swapped for a hostile YAML node."""
    plugin_type = draw(st.sampled_from(PLUGIN_TYPES))
    document: dict[str, Any] = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": plugin_type, "name": "p", "parameters": {"x": 1}},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "p", "weight": 1},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }
    paths: list[tuple[Any, ...]] = [
        ("apiVersion",),
        ("kind",),
        ("featureGates",),
        ("plugins",),
        ("plugins", 1, "type"),
        ("plugins", 1, "name"),
        ("plugins", 1, "parameters"),
        ("plugins", 1, "parameters", "x"),
        ("schedulingProfiles",),
        ("schedulingProfiles", 0, "name"),
        ("schedulingProfiles", 0, "plugins"),
        ("schedulingProfiles", 0, "plugins", 1, "pluginRef"),
        ("schedulingProfiles", 0, "plugins", 1, "weight"),
        ("saturationDetector",),
        ("dataLayer",),
        ("flowControl",),
        ("parser",),
        ("other",),
    ]
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        parent: Any = document
        for key in path[:-1]:
            if isinstance(parent, str):  # an earlier swap replaced this branch
                break
            parent = parent[key]
        if not isinstance(parent, str):
            parent[path[-1]] = "HOSTILE_NODE"
    text = yaml.safe_dump(document, sort_keys=False)
    while "HOSTILE_NODE" in text:
        text = text.replace("HOSTILE_NODE", draw(_HOSTILE), 1)
    return text


@fuzz_settings(30)
@given(text=_hostile_documents())
@example(text="plugins:\n- type: queue-scorer\n  parameters: " + _alias_chain(10, 10, False) + "\n")
@example(text="featureGates: " + _alias_chain(10, 10, False) + "\n")
@example(text="plugins: " + _alias_chain(10, 10, True) + "\n")
@example(text="schedulingProfiles:\n- name: " + _alias_chain(10, 10, False) + "\n")
@example(text="plugins:\n- type: queue-scorer\n  parameters: {x: " + "9" * 5000 + "}\n")
@example(text="plugins: " + "[" * 1200 + "]" * 1200 + "\n")  # past the recursion limit
def test_hostile_yaml_loads_or_raises_config_error(text: str) -> None:
    _load(text, f"hostile YAML {short_repr(text)}")
