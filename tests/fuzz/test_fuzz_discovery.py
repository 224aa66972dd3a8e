"""Fuzzing file-based discovery on arbitrary and mutated YAML / JSON endpoint files: the
endpoints, or a DataError naming the file and the entry (``endpoints[2].port``) or
line, within the budgets; a bad file never replaces the last good list."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from inference_sched.datalayer.discovery import FileDiscovery, parse_endpoints_document
from inference_sched.errors import DataError
from inference_sched.framework.types import Endpoint
from tests.fuzz._budget import fuzz_settings, short_repr, typed_outcome

pytestmark = pytest.mark.fuzz

SOURCE = "endpoints.yaml"
ENTRY_KEYS = ["name", "address", "port", "labels", "metricsPort", "endpoints"]
VALID = {
    "endpoints": [
        "10.0.0.1:8000",
        "b=10.0.0.2:8000",
        {"name": "c", "address": "10.0.0.3", "port": 8000, "labels": {"k": "v"}},
        {"address": "fd00::1", "port": 9000, "metricsPort": 9100},
    ]
}
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.integers(0, 70_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["10.0.0.1:8000", "a=[::1]:1", "[fd00::1]8000", "host", "", " ", "8000"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(ENTRY_KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=16,
)


def _check(error: Any) -> None:
    assert error.source == SOURCE
    assert str(error).startswith(SOURCE)


def _whole_document(error: Any) -> bool:
    """Errors about the whole document: it is empty, not a list or mapping, has other
    top-level keys, or is not valid YAML / JSON at all (PyYAML and json give no line
    for some of those)."""
    message = str(error)
    return any(
        phrase in message
        for phrase in (
            "empty document",
            "endpoints: expected a list",
            "unknown top-level key",
            "missing key 'endpoints'",
        )
    )


def _parse(text: str, fmt: Literal["yaml", "json"]) -> list[Endpoint] | DataError:
    outcome = typed_outcome(
        lambda: parse_endpoints_document(text, source=SOURCE, fmt=fmt),
        f"parse_endpoints_document({short_repr(text)}, fmt={fmt})",
        expected=DataError,
        check=_check,
        about_the_whole_input=_whole_document,
    )
    if isinstance(outcome, list):
        names = [e.name for e in outcome]
        assert names == sorted(set(names))
        for endpoint in outcome:
            assert 1 <= endpoint.port <= 65535
    return outcome  # type: ignore[return-value]


_FMT = st.sampled_from(["yaml", "json"])


# ----------------------------------------------------------------- generated documents
@st.composite
def _documents(draw: st.DrawFn) -> Any:
    entry = st.one_of(
        _SCALARS,
        st.fixed_dictionaries(
            {"address": _SCALARS, "port": _SCALARS},
            optional={
                "name": _SCALARS,
                "labels": st.dictionaries(_SCALARS, _SCALARS, max_size=2) | _VALUES,
                "metricsPort": _SCALARS,
                "bogus": _SCALARS,
            },
        ),
        _VALUES,
    )
    entries = draw(st.lists(entry, max_size=5))
    shape = draw(st.sampled_from(["mapping", "list", "any"]))
    if shape == "mapping":
        return {"endpoints": entries, **draw(st.dictionaries(st.text(max_size=4), _VALUES))}
    return entries if shape == "list" else draw(_VALUES)


@fuzz_settings()
@given(document=_documents(), fmt=_FMT)
def test_generated_documents_give_endpoints_or_data_error(document: Any, fmt: str) -> None:
    try:
        text = json.dumps(document) if fmt == "json" else yaml.safe_dump(document)
    except (TypeError, ValueError, yaml.YAMLError):  # keys JSON cannot write
        return
    _parse(text, fmt)  # type: ignore[arg-type]


# ----------------------------------------------------------------- arbitrary text
_PIECES = st.sampled_from(
    [*":-[]{}&*!|>'\"#,?\n\t ", "  ", "- ", "endpoints:", "address: ", "port: ", "10.0.0.1"]
)


@fuzz_settings()
@given(text=st.lists(_PIECES | st.characters(), max_size=80).map("".join), fmt=_FMT)
@example(text='{"endpoints": [' + "[" * 3000, fmt="json")
@example(text="endpoints: [" + "[" * 3000, fmt="yaml")
def test_arbitrary_text_gives_endpoints_or_data_error(text: str, fmt: str) -> None:
    _parse(text, fmt)  # type: ignore[arg-type]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, str]:
    fmt = draw(_FMT)
    text = json.dumps(VALID, indent=1) if fmt == "json" else yaml.safe_dump(VALID)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        chunk = draw(st.lists(_PIECES, min_size=1, max_size=4).map("".join))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        if kind == "insert":
            text = text[:pos] + chunk + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + len(chunk) :]
        else:
            text = text[:pos] + chunk + text[pos + len(chunk) :]
    return text, fmt


@fuzz_settings()
@given(mutated=_mutated())
def test_mutated_files_give_endpoints_or_data_error(mutated: tuple[str, str]) -> None:
    _parse(*mutated)  # type: ignore[arg-type]


# ----------------------------------------------------------------- hostile YAML
def _alias_chain(depth: int) -> str:
    node = "&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for k in range(1, depth + 1):
        node = f"&l{k} [{node}" + f", *l{k - 1}" * 8 + "]"
    return node


@fuzz_settings(25)
@given(
    field=st.sampled_from(["address", "port", "name", "labels", "metricsPort", "entry", "top"]),
    depth=st.integers(1, 6),  # 7 is the explicit example; each level costs 9x
)
@example(field="labels", depth=7)  # a 429-byte file: a 312 MB message, 12 s
def test_alias_chains_give_endpoints_or_data_error(field: str, depth: int) -> None:
    chain = _alias_chain(depth)
    if field == "top":
        text = f"endpoints: {chain}\n"
    elif field == "entry":
        text = f"endpoints:\n- {chain}\n"
    elif field == "labels":
        text = f"endpoints:\n- address: 10.0.0.1\n  port: 80\n  labels: {{k: {chain}}}\n"
    else:
        entry = {"address": "10.0.0.1", "port": 80, field: "CHAIN"}
        text = yaml.safe_dump({"endpoints": [entry]}).replace("CHAIN", chain)
    _parse(text, "yaml")


# ----------------------------------------------------------------- the watched file
@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FileDiscovery]:
    path = tmp_path_factory.mktemp("discovery") / "endpoints.yaml"
    path.write_text(yaml.safe_dump(VALID))
    return path, FileDiscovery(path, poll_s=0.1)


@fuzz_settings()
@given(mutated=_mutated())
def test_a_bad_file_keeps_the_last_good_list(
    watched: tuple[Path, FileDiscovery], mutated: tuple[str, str]
) -> None:
    path, discovery = watched
    path.write_text(yaml.safe_dump(VALID))
    discovery.poll_once()
    good = discovery.endpoints()
    text, _ = mutated
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a new (mtime, size)
    outcome = typed_outcome(
        discovery.poll_once,
        f"FileDiscovery.poll_once() of {short_repr(text)}",
        expected=DataError,
        check=lambda e: None,
        about_the_whole_input=_whole_document,
    )
    if isinstance(outcome, DataError):
        assert discovery.endpoints() == good
        assert discovery.last_error is outcome
        assert outcome.source == str(path)
