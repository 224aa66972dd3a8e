"""Role filters and the label-selector filter (llm-d-router,
``pkg/epp/framework/plugins/scheduling/filter/bylabel/``; ``docs/plugins/decode-filter.md``
and siblings)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from inference_sched.errors import ParameterError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import ROLE_LABEL, CycleState, Endpoint, Request, Role
from inference_sched.params import NoParams, parse_params
from inference_sched.plugins.filters import (
    ByLabel,
    ByLabelSelector,
    DecodeFilter,
    EncodeFilter,
    LabelRequirement,
    LabelSelectorFilter,
    PrefillFilter,
)
from inference_sched.state.table import EndpointTable

PATH = "plugins[0].parameters"

# row -> llm-d.ai/role label (None: unlabeled)
_ROLES: list[str | None] = [
    "decode",  # 0
    "prefill",  # 1
    "both",  # 2
    None,  # 3
    "prefill-decode",  # 4
    "encode",  # 5
    "encode-prefill",  # 6
    "encode-prefill-decode",  # 7
    "gpu",  # 8: a value no role spells
    "",  # 9: empty value
]


def _role_table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, role in enumerate(_ROLES):
        labels = {} if role is None else {ROLE_LABEL: role}
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    return table


def _filter(plugin: Any, table: EndpointTable, candidates: list[int]) -> list[int]:
    rows = np.asarray(candidates, dtype=np.int32)
    before = rows.copy()
    kept = plugin.filter(CycleState(np.random.default_rng(0)), Request("r", "m"), table, rows)
    np.testing.assert_array_equal(rows, before)  # the input is not modified
    assert kept.dtype == np.int32
    return list(kept.tolist())


ALL_ROWS = list(range(len(_ROLES)))


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param(ALL_ROWS, [0, 2, 3, 4, 7], id="all"),
        pytest.param([7, 3, 1, 0], [7, 3, 0], id="order-kept"),
        pytest.param([3], [3], id="unlabeled-kept"),
        pytest.param([1, 5, 6, 8, 9], [], id="none-left"),
    ],
)
def test_decode_filter(candidates: list[int], expected: list[int]) -> None:
    table = _role_table()
    plugin = DecodeFilter("decode", NoParams(), PluginHandle(table))
    assert _filter(plugin, table, candidates) == expected


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param(ALL_ROWS, [1, 2, 4, 6, 7], id="all"),
        pytest.param([7, 3, 1, 0], [7, 1], id="order-kept"),
        pytest.param([3], [], id="unlabeled-dropped"),
        pytest.param([0, 5, 8, 9], [], id="none-left"),
    ],
)
def test_prefill_filter(candidates: list[int], expected: list[int]) -> None:
    table = _role_table()
    plugin = PrefillFilter("prefill", NoParams(), PluginHandle(table))
    assert _filter(plugin, table, candidates) == expected


@pytest.mark.parametrize(
    ("plugin_type", "cls", "summary"),
    [
        pytest.param(
            "decode-filter",
            DecodeFilter,
            "Keeps endpoints that can decode, and endpoints without a role label.",
            id="decode",
        ),
        pytest.param(
            "prefill-filter",
            PrefillFilter,
            "Keeps endpoints that can prefill; endpoints without a role label are dropped.",
            id="prefill",
        ),
    ],
)
def test_role_filter_surface(plugin_type: str, cls: Any, summary: str) -> None:
    # Both share one base class; what the registry and the docs see stays per filter.
    assert registry.get(plugin_type) is cls
    assert cls.type == plugin_type
    assert cls.Params is NoParams
    assert cls.is_batch_invariant is True
    doc = cls.__doc__ or ""
    assert doc.splitlines()[0] == summary
    assert "Kept roles:" in doc


def test_role_filters_follow_relabeling() -> None:
    table = _role_table()
    decode = DecodeFilter("decode", NoParams(), PluginHandle(table))
    table.upsert(Endpoint("e1", "10.0.0.1", 8000, labels={ROLE_LABEL: "decode"}))
    assert _filter(decode, table, [0, 1]) == [0, 1]


@pytest.mark.parametrize(
    ("label", "decode", "prefill", "encode"),
    [
        pytest.param("decode", True, False, False, id="decode"),
        pytest.param(" decode", False, False, False, id="leading-space"),
        pytest.param("decode ", False, False, False, id="trailing-space"),
        pytest.param("Decode", False, False, False, id="upper-case"),
        pytest.param("PREFILL", False, False, False, id="upper-prefill"),
        pytest.param("Encode", False, False, False, id="upper-encode"),
        pytest.param("", False, False, False, id="empty-is-a-value"),
        pytest.param(None, True, False, False, id="absent"),
    ],
)
def test_role_label_is_matched_exactly(
    label: str | None, decode: bool, prefill: bool, encode: bool
) -> None:
    # llm-d-router bylabel: a map lookup of the raw label value, no case folding or trim.
    table = EndpointTable()
    table.add(Endpoint("e0", "10.0.0.1", 8000, labels={} if label is None else {ROLE_LABEL: label}))
    handle = PluginHandle(table)
    assert _filter(DecodeFilter("d", NoParams(), handle), table, [0]) == ([0] if decode else [])
    assert _filter(PrefillFilter("p", NoParams(), handle), table, [0]) == ([0] if prefill else [])
    assert _filter(EncodeFilter("e", NoParams(), handle), table, [0]) == ([0] if encode else [])


@pytest.mark.parametrize(
    ("role", "decode", "prefill", "encode"),
    [
        pytest.param(Role.DECODE, True, False, False, id="decode"),
        pytest.param(Role.PREFILL, False, True, False, id="prefill"),
        pytest.param(Role.ENCODE_PREFILL, False, True, True, id="encode-prefill"),
        pytest.param(Role.UNSET, True, False, False, id="unset"),
        pytest.param(Role.OTHER, False, False, False, id="other"),
    ],
)
def test_role_given_without_a_label(role: Role, decode: bool, prefill: bool, encode: bool) -> None:
    # Endpoint(role=...) with no label: judged by the role's label spelling.
    table = EndpointTable()
    table.add(Endpoint("e0", "10.0.0.1", 8000, role=role))
    handle = PluginHandle(table)
    assert _filter(DecodeFilter("d", NoParams(), handle), table, [0]) == ([0] if decode else [])
    assert _filter(PrefillFilter("p", NoParams(), handle), table, [0]) == ([0] if prefill else [])
    assert _filter(EncodeFilter("e", NoParams(), handle), table, [0]) == ([0] if encode else [])


@pytest.mark.parametrize(
    ("plugin_type", "stability"),
    [
        ("decode-filter", "beta"),
        ("prefill-filter", "beta"),
        ("encode-filter", "beta"),
        ("label-selector-filter", "beta"),
        ("by-label-selector", "beta"),
        ("by-label", "beta"),
    ],
)
def test_filter_stability(plugin_type: str, stability: str) -> None:
    assert registry.get(plugin_type).stability == stability


# ---------------------------------------------------------------- label selector
_LABELS: list[dict[str, str]] = [
    {"app": "vllm", "tier": "gold", "zone": "a"},  # 0
    {"app": "vllm", "tier": "silver"},  # 1
    {"app": "sglang", "zone": "b"},  # 2
    {},  # 3
    {"app": ""},  # 4
]


def _label_table() -> EndpointTable:
    table = EndpointTable(clock=lambda: 100.0)
    for i, labels in enumerate(_LABELS):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    return table


def _selector(
    table: EndpointTable, raw: dict[str, Any] | None, cls: Any = LabelSelectorFilter
) -> Any:
    return cls("sel", parse_params(cls.Params, raw, PATH), PluginHandle(table))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, [0, 1, 2, 3, 4], id="empty-selector-matches-all"),
        pytest.param({"matchLabels": {"app": "vllm"}}, [0, 1], id="match-labels"),
        pytest.param({"matchLabels": {"app": "vllm", "tier": "gold"}}, [0], id="match-labels-and"),
        pytest.param({"matchLabels": {"app": ""}}, [4], id="match-empty-value"),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold", "silver"]}]},
            [0, 1],
            id="in",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]}]},
            [1, 2, 3, 4],
            id="not-in-matches-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, [0, 2], id="exists"
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist", "values": []}]},
            [1, 3, 4],
            id="does-not-exist",
        ),
        pytest.param(
            {
                "matchLabels": {"app": "vllm"},
                "matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}],
            },
            [1],
            id="labels-and-expressions",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "app", "operator": "Exists"},
                    {"key": "app", "operator": "NotIn", "values": ["sglang", ""]},
                ]
            },
            [0, 1],
            id="expressions-and",
        ),
        pytest.param({"matchLabels": {"app": "tgi"}}, [], id="none-left"),
    ],
)
def test_label_selector(raw: dict[str, Any] | None, expected: list[int]) -> None:
    table = _label_table()
    assert _filter(_selector(table, raw), table, list(range(len(_LABELS)))) == expected


def test_label_selector_subset_keeps_order() -> None:
    table = _label_table()
    plugin = _selector(table, {"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    assert _filter(plugin, table, [4, 3, 1, 0]) == [4, 1, 0]


def test_label_selector_follows_table_changes() -> None:
    table = _label_table()
    plugin = _selector(table, {"matchLabels": {"app": "vllm"}})
    assert _filter(plugin, table, [0, 1, 2]) == [0, 1]
    table.upsert(Endpoint("e2", "10.0.0.2", 8000, labels={"app": "vllm"}))  # relabeled
    table.remove("e0")
    assert _filter(plugin, table, [1, 2]) == [1, 2]
    for i in range(5, 40):  # grow past the initial capacity
        table.add(Endpoint(f"e{i}", f"10.0.1.{i}", 8000, labels={"app": "vllm" if i % 2 else "x"}))
    kept = _filter(plugin, table, list(table.candidates().tolist()))
    # e5 (vllm) reuses row 0; then e{i} lands on row i - 1 and odd i are vllm.
    assert kept == [0, 1, 2, *range(6, 40, 2)]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
            r"^plugins\[0\]\.parameters\.matchExpressions\[0\]\.operator: expected one of In, "
            r"NotIn, Exists, DoesNotExist, got 'Equals' \(str\)$",
            id="bad-operator",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]},
            r"matchExpressions\[0\]\.operator: expected one of .*, got 'in' \(str\)$",
            id="operator-is-case-sensitive",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "a", "operator": "Exists"},
                    {"key": "b", "operator": "In", "values": []},
                ]
            },
            r"\.matchExpressions\[1\]\.values: expected a non-empty list for operator In, "
            r"got \[\] \(list\)$",
            id="in-without-values",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "b", "operator": "NotIn"}]},
            r"\.matchExpressions\[0\]\.values: expected a non-empty list for operator NotIn",
            id="notin-values-missing",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "b", "operator": "Exists", "values": ["x"]}]},
            r"\.matchExpressions\[0\]\.values: expected no values for operator Exists, "
            r"got \['x'\] \(list\)$",
            id="exists-with-values",
        ),
        pytest.param(
            {"matchExpressions": [{"operator": "Exists"}]},
            r"\.matchExpressions\[0\]\.key: expected a label key \(required\), got None",
            id="key-missing",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "bad key!", "operator": "Exists"}]},
            r"\.matchExpressions\[0\]\.key: expected a label key: .*, got 'bad key!' \(str\)$",
            id="key-invalid",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "Example.COM/x", "operator": "Exists"}]},
            r"\.matchExpressions\[0\]\.key: expected a label key",
            id="key-prefix-upper-case",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "gold"}]},
            r"\.matchExpressions\[0\]\.values: expected a list of str, got 'gold' \(str\)$",
            id="values-not-list",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", 3]}]},
            r"\.matchExpressions\[0\]\.values\[1\]: expected a label value: .*, got 3 \(int\)$",
            id="value-not-str",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "Exists", "value": []}]},
            r"\.matchExpressions\[0\]: expected only the keys key, operator and values, "
            r"got 'value' \(str\)$",
            id="unknown-expression-key",
        ),
        pytest.param(
            {"matchExpressions": ["a=b"]},
            r"\.matchExpressions\[0\]: expected a mapping with keys key, operator and values",
            id="expression-not-mapping",
        ),
        pytest.param(
            {"matchExpressions": {"key": "a"}},
            r"\.matchExpressions: expected a list of \{key, operator, values\}",
            id="expressions-not-list",
        ),
        pytest.param(
            {"matchLabels": ["app"]},
            r"^plugins\[0\]\.parameters\.matchLabels: expected a mapping of label key to value",
            id="labels-not-mapping",
        ),
        pytest.param(
            {"matchLabels": {"app": "has space"}},
            r"\.matchLabels\.app: expected a label value: .*, got 'has space' \(str\)$",
            id="label-value-invalid",
        ),
        pytest.param(
            {"matchLabels": {"app": 1}},
            r"\.matchLabels\.app: expected a label value: .*, got 1 \(int\)$",
            id="label-value-not-str",
        ),
        pytest.param(
            {"matchLabel": {"app": "x"}},
            r"unknown key 'matchLabel' \(did you mean 'matchLabels'\?\)",
            id="typo",
        ),
    ],
)
def test_label_selector_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(LabelSelectorFilter.Params, raw, PATH)


def test_label_selector_params_parsed() -> None:
    params = parse_params(
        LabelSelectorFilter.Params,
        {
            "matchLabels": {"llm-d.ai/role": "decode"},
            "matchExpressions": [
                {"key": "example.com/tier", "operator": "In", "values": ["a", "b-1.x_y"]}
            ],
        },
        PATH,
    )
    assert dict(params.match_labels) == {"llm-d.ai/role": "decode"}
    assert params.match_expressions == (
        LabelRequirement("example.com/tier", "In", ("a", "b-1.x_y")),
    )


def test_by_label_selector_is_a_deprecated_alias(caplog: pytest.LogCaptureFixture) -> None:
    table = _label_table()
    raw = {"matchLabels": {"app": "vllm"}}
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.filters"):
        alias = _selector(table, raw, ByLabelSelector)
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'sel': type 'by-label-selector' is deprecated; use 'label-selector-filter' "
        "(same parameters)"
    ]
    assert _filter(alias, table, [0, 1, 2, 3, 4]) == [0, 1]
    assert ByLabelSelector.type == "by-label-selector"
    assert LabelSelectorFilter.type == "label-selector-filter"
    assert registry.get("by-label-selector") is ByLabelSelector


def test_label_selector_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _selector(_label_table(), None)
    assert caplog.records == []


# ---------------------------------------------------------------- encode-filter
@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param(ALL_ROWS, [5, 6, 7], id="all"),
        pytest.param([7, 3, 6, 0, 5], [7, 6, 5], id="order-kept"),
        pytest.param([3], [], id="unlabeled-dropped"),
        pytest.param([0, 1, 2, 4, 8, 9], [], id="none-left"),
    ],
)
def test_encode_filter(candidates: list[int], expected: list[int]) -> None:
    table = _role_table()
    plugin = EncodeFilter("encode", NoParams(), PluginHandle(table))
    assert _filter(plugin, table, candidates) == expected
    assert EncodeFilter.type == "encode-filter"
    assert registry.get("encode-filter") is EncodeFilter


# ---------------------------------------------------------------- by-label
# row -> labels
_BY_LABEL: list[dict[str, str]] = [
    {"gpu": "h100"},  # 0
    {"gpu": "h200"},  # 1
    {},  # 2: no label
    {"gpu": ""},  # 3: empty value
    {"gpu": "a100", "other": "h100"},  # 4
]


def _by_label(raw: dict[str, Any], candidates: list[int]) -> list[int]:
    table = EndpointTable(clock=lambda: 100.0)
    for i, labels in enumerate(_BY_LABEL):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000, labels=labels))
    plugin = ByLabel("bl", parse_params(ByLabel.Params, raw, PATH), PluginHandle(table))
    return _filter(plugin, table, candidates)


@pytest.mark.parametrize(
    ("raw", "candidates", "expected"),
    [
        pytest.param({"label": "gpu", "validValues": ["h100"]}, [0, 1, 2, 3, 4], [0], id="one"),
        pytest.param(
            {"label": "gpu", "validValues": ["h200", "h100"]}, [4, 1, 0, 2], [1, 0], id="order"
        ),
        pytest.param(
            {"label": "gpu", "validValues": ["h100"], "allowsNoLabel": True},
            [0, 1, 2, 3, 4],
            [0, 2],
            id="allows-no-label",
        ),
        pytest.param(
            {"label": "gpu", "allowsNoLabel": True}, [0, 1, 2, 3, 4], [2], id="only-unlabeled"
        ),
        pytest.param(
            {"label": "gpu", "validValues": [""]},
            [0, 1, 2, 3, 4],
            [2, 3],
            id="absent-reads-as-empty",
        ),
        pytest.param({"label": "missing", "validValues": ["x"]}, [0, 1, 2], [], id="none-left"),
    ],
)
def test_by_label(raw: dict[str, Any], candidates: list[int], expected: list[int]) -> None:
    assert _by_label(raw, candidates) == expected


def test_by_label_is_deprecated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="inference_sched.plugins.filters"):
        _by_label({"label": "gpu", "validValues": ["h100"]}, [0])
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'bl': type 'by-label' is deprecated; use 'label-selector-filter' "
        "(matchExpressions: [{key: gpu, operator: In, values: [...]}])"
    ]
    assert ByLabel.type == "by-label"
    assert registry.get("by-label") is ByLabel


def test_by_label_follows_relabeling() -> None:
    table = EndpointTable(clock=lambda: 100.0)
    table.add(Endpoint("e0", "10.0.0.0", 8000, labels={"gpu": "h100"}))
    plugin = ByLabel(
        "bl",
        parse_params(ByLabel.Params, {"label": "gpu", "validValues": ["h100"]}, PATH),
        PluginHandle(table),
    )
    assert _filter(plugin, table, [0]) == [0]
    table.remove("e0")
    table.add(Endpoint("e1", "10.0.0.1", 8000, labels={"gpu": "h200"}))
    assert _filter(plugin, table, [0]) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {}, r"^plugins\[0\]\.parameters\.label: required key is missing$", id="no-label"
        ),
        pytest.param(
            {"label": "", "validValues": ["a"]},
            r"^plugins\[0\]\.parameters\.label: expected a non-empty str, got '' \(str\)$",
            id="empty-label",
        ),
        pytest.param(
            {"label": "gpu"},
            r"^plugins\[0\]\.parameters\.validValues: expected at least one value "
            r"\(or allowsNoLabel: true, else no endpoint passes\), got \[\] \(list\)$",
            id="no-values",
        ),
        pytest.param(
            {"label": "gpu", "validValues": "h100"},
            r"^plugins\[0\]\.parameters\.validValues: expected a list of str, got 'h100' \(str\)$",
            id="values-not-list",
        ),
        pytest.param(
            {"label": "gpu", "validValues": ["a", 3]},
            r"^plugins\[0\]\.parameters\.validValues\[1\]: expected str, got 3 \(int\)$",
            id="value-not-str",
        ),
        pytest.param(
            {"label": "gpu", "validValues": ["a"], "allowsNoLabel": "yes"},
            r"^plugins\[0\]\.parameters\.allowsNoLabel: expected bool, got 'yes' \(str\)$",
            id="allows-not-bool",
        ),
    ],
)
def test_by_label_params_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(ByLabel.Params, raw, PATH)


def test_by_label_params_parsed() -> None:
    params = parse_params(
        ByLabel.Params, {"label": "gpu", "validValues": ["a", "b"], "allowsNoLabel": True}, PATH
    )
    assert (params.label, params.valid_values, params.allows_no_label) == (
        "gpu",
        ("a", "b"),
        True,
    )


def test_encode_filter_and_by_label_conformance() -> None:
    from inference_sched.state.endpoint import Role
    from inference_sched.testing import check_plugin, make_table

    # The default conformance table has no encode endpoint: encode-filter would keep none.
    table = make_table(3, roles=[Role.ENCODE, Role.DECODE, Role.ENCODE_PREFILL], waiting=[0, 1, 2])
    check_plugin("encode-filter", table=table)
    check_plugin("by-label", {"label": "gpu", "validValues": ["h100"], "allowsNoLabel": True})


def test_filters_reexports_the_shared_types() -> None:
    """The selector types live in ``inference_sched.state.labels``; ``filters`` re-exports
    them."""
    from inference_sched.plugins import filters
    from inference_sched.state import labels

    assert filters.LabelRequirement is labels.LabelRequirement
    assert filters.LabelSelectorParams is labels.LabelSelectorParams
    assert filters.Operator is labels.Operator
