"""Config loading properties: valid configs load and round-trip; junk never crashes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import attrs
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.errors import ConfigError
from inference_sched.framework import registry
from inference_sched.framework.config import (
    FEATURE_GATES,
    EndpointPickerConfig,
    load_config,
)
from inference_sched.framework.interfaces import Handle
from inference_sched.framework.types import ProfileRunResult, Request, SchedulingResult
from inference_sched.params import at_least, duration_s, param

MULTI_HANDLER = "prop-multi-profile-handler"
PARAM_SCORER = "prop-param-scorer"


class _MultiProfileHandler:
    type: ClassVar[str]

    def __init__(self, name: str, params: Any, handle: Handle) -> None:
        self.name = name

    def pick_profiles(
        self,
        cycle: Any,
        request: Request,
        profiles: Mapping[str, Any],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, Any]:
        return {}

    def process_results(
        self, cycle: Any, request: Request, results: Mapping[str, ProfileRunResult | None]
    ) -> SchedulingResult:
        raise NotImplementedError


@attrs.frozen
class _Params:
    window_s: float = param(
        0.5, alias="window", parse=duration_s("window"), check=at_least(0, kind="number")
    )
    """Averaging window."""
    depth: int = param(4, alias="depth", check=at_least(1))
    """Queue depth."""


class _ParamScorer:
    type: ClassVar[str]
    category: ClassVar[str] = "Balance"
    Params = _Params

    def __init__(self, name: str, params: _Params, handle: Handle) -> None:
        self.name = name

    def score(self, cycle: Any, request: Any, table: Any, candidates: Any, out: Any) -> None:
        out[:] = 0.0


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> Iterator[None]:
    registry.register(MULTI_HANDLER)(_MultiProfileHandler)
    registry.register(PARAM_SCORER)(_ParamScorer)
    yield
    registry._forget(MULTI_HANDLER)
    registry._forget(PARAM_SCORER)


def _buildable_with_defaults(cls: type[Any]) -> bool:
    return all(a.default is not attrs.NOTHING for a in attrs.fields(cls.Params))


def _types_of(kind: str) -> list[str]:
    return sorted(
        info.type
        for info in registry.available()
        if kind in info.kinds
        and info.cls is not None
        and info.type != PARAM_SCORER
        and _buildable_with_defaults(info.cls)
    )


# Scorers and pickers registered when the module is collected (built-ins and installed
# distributions) that need no parameters, plus our own.
SCORERS = [*_types_of("scorer"), PARAM_SCORER]
PICKERS = _types_of("picker")
RESERVED = {info.type for info in registry.available()} | {
    "single-profile-handler",
    "max-score-picker",
    MULTI_HANDLER,
    PARAM_SCORER,
}

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(lambda n: n not in RESERVED)
weights = st.none() | st.integers(-100, 100) | st.floats(allow_nan=False, allow_infinity=False)
durations = st.sampled_from(["0s", "150ms", "2s", "1m30s", "1h"])


@st.composite
def plugin_entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Unique-named instances of registered scorer and picker types."""
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    for plugin_type in draw(st.lists(st.sampled_from(SCORERS + PICKERS), min_size=1, max_size=6)):
        entry: dict[str, Any] = {"type": plugin_type}
        name = draw(st.none() | names)
        if name is None and plugin_type in taken:
            name = draw(names)
        if name is not None:
            if name in taken:
                continue
            entry["name"] = name
        if plugin_type == PARAM_SCORER and draw(st.booleans()):
            entry["parameters"] = draw(
                st.fixed_dictionaries(
                    {}, optional={"window": durations, "depth": st.integers(1, 99)}
                )
            )
        if plugin_type in PICKERS and draw(st.booleans()):
            entry["parameters"] = {"maxNumOfEndpoints": draw(st.integers(1, 8))}
        taken.add(entry.get("name", plugin_type))
        entries.append(entry)
    return entries


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Valid configs: random instances, 0-3 profiles of random subsets, random weights."""
    entries = draw(plugin_entries())
    by_name = {e.get("name", e["type"]): e["type"] for e in entries}
    scorer_names = [n for n, t in by_name.items() if t in SCORERS]
    picker_names = [n for n, t in by_name.items() if t in PICKERS]
    document: dict[str, Any] = {"plugins": entries}
    if draw(st.booleans()):
        document["featureGates"] = draw(st.lists(st.sampled_from(FEATURE_GATES), unique=True))
    profile_names = draw(st.lists(names, max_size=3, unique=True))
    if len(picker_names) > 1 and not profile_names:
        profile_names = ["default"]  # the implicit profile would get two pickers
    profiles = []
    for profile_name in profile_names:
        refs: list[dict[str, Any]] = []
        chosen: list[str] = []
        if scorer_names:
            chosen = draw(st.lists(st.sampled_from(scorer_names), unique=True))
        for scorer in chosen:
            ref: dict[str, Any] = {"pluginRef": scorer}
            weight = draw(weights)
            if weight is not None:
                ref["weight"] = weight
            refs.append(ref)
        if len(picker_names) > 0 and draw(st.booleans()):
            picker = {"pluginRef": draw(st.sampled_from(picker_names))}
            refs.insert(draw(st.integers(0, len(refs))), picker)
        profiles.append({"name": profile_name, "plugins": refs})
    if profiles:
        document["schedulingProfiles"] = profiles
    if len(profiles) > 1:
        entries.append({"type": MULTI_HANDLER})
    return document


def _normalized(cfg: EndpointPickerConfig) -> tuple[Any, ...]:
    return (
        cfg.api_version,
        cfg.kind,
        cfg.feature_gates,
        [(p.type, p.name, p.params, p.cls) for p in cfg.plugins],
        cfg.scheduling_profiles,
        cfg.saturation_detector,
        cfg.data_layer,
        cfg.flow_control,
        cfg.request_handler,
    )


@given(valid_documents())
def test_valid_configs_load_and_round_trip(document: dict[str, Any]) -> None:
    cfg = load_config(document)
    kinds = {p.name: registry.kinds_of(p.cls) for p in cfg.plugins}
    for profile in cfg.scheduling_profiles:
        pickers = [r for r in profile.plugins if "picker" in kinds[r.plugin_ref]]
        assert len(pickers) == 1
        for ref in profile.plugins:
            assert (ref.weight is not None) == ("scorer" in kinds[ref.plugin_ref])
            assert ref.weight is None or math.isfinite(ref.weight)
    given_weights = {
        (p["name"], r["pluginRef"]): float(r["weight"])
        for p in document.get("schedulingProfiles", [])
        for r in p["plugins"]
        if "weight" in r
    }
    for profile in cfg.scheduling_profiles:
        for ref in profile.plugins:
            if "scorer" in kinds[ref.plugin_ref]:
                assert ref.weight == given_weights.get((profile.name, ref.plugin_ref), 1.0)
    handlers = [n for n, k in kinds.items() if "profile-handler" in k]
    assert len(handlers) == 1
    again = load_config(cfg.to_yaml())
    assert _normalized(again) == _normalized(cfg)
    assert load_config(again.to_yaml()) == again


@given(valid_documents())
def test_json_text_equals_mapping(document: dict[str, Any]) -> None:
    assert load_config(json.dumps(document)) == load_config(document)


# ====================================================================== junk
def _load(source: Any) -> tuple[EndpointPickerConfig | None, list[ConfigError]]:
    """The config, or the problems; any exception other than ConfigError propagates."""
    try:
        return load_config(source), []
    except ConfigError as exc:
        return None, exc.errors


KEYS = [
    "apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles",
    "saturationDetector", "dataLayer", "flowControl", "parser", "type", "name",
    "parameters", "pluginRef", "weight", "sources", "extractors", "maxBytes",
    "maxRequests", "defaultRequestTTL", "priorityBands", "defaultPriorityBand", "priority",
    "fairnessPolicyRef", "orderingPolicyRef", "usageLimitPolicyPluginRef",
    "maxNumOfEndpoints", "window", "depth", "blockSize",
]  # fmt: skip
WORDS = [
    *SCORERS,
    *PICKERS,
    "single-profile-handler",
    MULTI_HANDLER,
    "flowControl",
    "10Gi",
    "60s",
    "default",
    "inference.networking.x-k8s.io/v1alpha1",
    "EndpointPickerConfig",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**400), 10**400)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
junk = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), junk, max_size=6))
def test_junk_mapping_loads_or_raises_config_error(document: dict[str, Any]) -> None:
    cfg, problems = _load(document)
    if cfg is None:
        assert problems
        assert all(isinstance(e, ConfigError) and str(e) for e in problems)
    else:
        assert isinstance(load_config(cfg.to_yaml()), EndpointPickerConfig)


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a JSON-like value, depth first."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield value, key
        yield from _slots(child)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one to three values replaced by junk (or keys dropped)."""
    document = draw(valid_documents())
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(document))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(junk)
    return document


@given(mutated_documents())
def test_mutated_valid_configs_load_or_raise_config_error(document: dict[str, Any]) -> None:
    cfg, problems = _load(document)
    if cfg is None:
        assert all(isinstance(e, ConfigError) and str(e) for e in problems)
    else:
        assert _normalized(load_config(cfg.to_yaml())) == _normalized(cfg)


@given(junk)
def test_junk_text_loads_or_raises_config_error(document: Any) -> None:
    text = yaml.safe_dump(document) if document is not None else ""
    cfg, problems = _load(text)
    assert cfg is not None or problems


@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_config_error(text: str) -> None:
    cfg, problems = _load(text)
    assert cfg is not None or problems
