"""file-discovery / multicluster-file-discovery: parsing, skipped entries, hostile files,
reloads (edit, rename, symlink swap), readiness and the dataLayer.discovery wiring."""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.datalayer.discovery import DiscoveryRunner, discovery_from_config
from inference_sched.datalayer.file_discovery import (
    MAX_FILE_BYTES,
    FileDiscoveryParams,
    FileDiscoveryPlugin,
    FileEntry,
    MulticlusterFileDiscoveryPlugin,
    SkippedEntry,
    is_hostname,
    parse_endpoints_file,
    read_endpoints_file,
)
from inference_sched.errors import ConfigError, DataError, ParameterError
from inference_sched.framework.config import load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.registry import kinds_of
from inference_sched.framework.types import Endpoint
from inference_sched.params import parse_params
from inference_sched.state.table import EndpointTable

HAS_METRICS_ADDRESS = "metrics_address" in attrs.fields_dict(Endpoint)

GOOD = """\
endpoints:
  - name: vllm-0
    address: "10.0.0.1"
    port: "8000"
    labels: {llm-d.ai/role: decode, zone: z1}
  - name: vllm-1
    namespace: prod
    address: "10.0.0.2"
    port: "8001"
"""


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text), encoding="utf-8")


def plugin(path: Path, *, watch: bool = False, multicluster: bool = False) -> FileDiscoveryPlugin:
    cls = MulticlusterFileDiscoveryPlugin if multicluster else FileDiscoveryPlugin
    params = parse_params(FileDiscoveryParams, {"path": str(path), "watchFile": watch}, "p")
    return cls("disc", params, PluginHandle(EndpointTable()))


def names(endpoints: list[Endpoint]) -> list[tuple[str, str, int]]:
    return [(e.name, e.address, e.port) for e in endpoints]


def entry(**fields: Any) -> dict[str, Any]:
    return {"name": "e", "address": "10.0.0.1", "port": "8000", **fields}


# ------------------------------------------------------------------ parsing
def test_parse_exact_entries() -> None:
    result = parse_endpoints_file(
        {
            "endpoints": [
                entry(name="a", labels={"k": "v"}),
                entry(name="b", namespace="prod", address="10.0.0.2", port="+80"),
            ],
            "other": 1,  # ignored, as upstream's decoder ignores unknown keys
        }
    )
    assert result.skipped == ()
    assert result.entries == (
        FileEntry(0, "a", "default", "10.0.0.1", 8000, {"k": "v"}),
        FileEntry(1, "b", "prod", "10.0.0.2", 80, {}),
    )
    assert result.endpoints == [
        Endpoint("a", "10.0.0.1", 8000, {"k": "v"}),
        Endpoint("b", "10.0.0.2", 80),
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"address": "10.0.0"}, "invalid IPv4 address '10.0.0'"),
        ({"address": "fd00::1"}, "invalid IPv4 address 'fd00::1'"),
        ({"address": "gw.example.com"}, "invalid IPv4 address 'gw.example.com'"),
        ({"address": 10}, "address: expected a string, got 10 (int)"),
        ({"address": None}, "missing 'address'"),
        ({"port": 8000}, 'port: expected a string such as "8000" (quote it in YAML), got 8000'),
        ({"port": "0"}, "invalid port '0': expected an integer in 1..65535"),
        ({"port": "65536"}, "invalid port '65536': expected an integer in 1..65535"),
        ({"port": "http"}, "invalid port 'http': expected an integer in 1..65535"),
        ({"port": ""}, "invalid port '': expected an integer in 1..65535"),
        ({"port": "-1"}, "invalid port '-1': expected an integer in 1..65535"),
        ({"port": None}, "missing 'port'"),
        ({"name": ""}, "missing 'name'"),
        ({"name": 7}, "name: expected a string, got 7 (int)"),
        ({"labels": {"a": 1}}, "labels: 'a' (str): 1 (int) must map a string to a string"),
        ({"labels": ["a"]}, "labels: expected a mapping of strings, got ['a'] (list)"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_invalid_entries_are_skipped_with_reason(fields: dict[str, Any], reason: str) -> None:
    result = parse_endpoints_file({"endpoints": [entry(name="ok"), entry(**fields)]})
    assert [e.name for e in result.entries] == ["ok"]
    (skipped,) = result.skipped
    assert skipped.index == 1
    assert skipped.reason.startswith(reason)


def test_skipped_entry_names_the_entry() -> None:
    result = parse_endpoints_file({"endpoints": [entry(name="x", port="99999"), "a:1"]})
    assert [str(s) for s in result.skipped] == [
        "endpoints[0] 'x': invalid port '99999': expected an integer in 1..65535",
        "endpoints[1]: expected a mapping with name, address and port, got 'a:1' (str)",
    ]


def test_duplicate_name_keeps_the_first() -> None:
    result = parse_endpoints_file(
        {"endpoints": [entry(name="a"), entry(name="a", address="10.0.0.9")]}
    )
    assert [e.address for e in result.entries] == ["10.0.0.1"]
    assert result.skipped == (SkippedEntry(1, "a", "duplicate name (first used by endpoints[0])"),)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([entry()], "expected a mapping with an 'endpoints' list, got list"),
        ({"endpoints": {"a": 1}}, "endpoints: expected a list, got dict"),
    ],
)
def test_document_shape_errors(document: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_endpoints_file(document)


def test_null_endpoints_is_an_empty_pool() -> None:
    assert parse_endpoints_file({"endpoints": None}).entries == ()


# ------------------------------------------------------------------ multicluster
@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("gw.example.com", True),
        ("gw.example.com.", True),
        ("fd00::1", True),
        ("10.0.0.1", True),
        ("1.2.3", False),
        ("-gw.example.com", False),
        ("gw_1.example.com", False),
        ("a" * 64 + ".com", False),
        ("", False),
    ],
)
def test_multicluster_address(address: str, ok: bool) -> None:
    result = parse_endpoints_file({"endpoints": [entry(address=address)]}, multicluster=True)
    assert bool(result.entries) is ok
    if not ok:
        assert result.skipped[0].reason.startswith(("invalid host", "missing 'address'"))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a", True),
        ("a-b.c", True),
        ("A1.example", True),
        ("123", False),
        ("a..b", False),
        ("a-.b", False),
        ("é.com", False),
        ("a." * 126 + "ab", False),  # 254 characters
    ],
)
def test_is_hostname(host: str, expected: bool) -> None:
    assert is_hostname(host) is expected


def test_multicluster_metrics_labels() -> None:
    labels = {"metricsAddress": "metrics.peer.example", "metricsPort": "9090"}
    result = parse_endpoints_file(
        {"endpoints": [entry(address="gw.peer.example", port="443", labels=labels)]},
        multicluster=True,
    )
    (e,) = result.entries
    assert (e.metrics_address, e.metrics_port) == ("metrics.peer.example", 9090)
    assert e.endpoint.metrics_port == 9090
    if HAS_METRICS_ADDRESS:
        assert e.endpoint.metrics_hostport == "metrics.peer.example:9090"


def test_multicluster_metrics_port_defaults_to_endpoint_port() -> None:
    result = parse_endpoints_file(
        {"endpoints": [entry(port="443", labels={"metricsAddress": "10.1.1.1"})]},
        multicluster=True,
    )
    (e,) = result.entries
    assert (e.metrics_address, e.metrics_port, e.endpoint.metrics_port) == ("10.1.1.1", None, 443)


def test_multicluster_bad_metrics_labels_skip_the_entry() -> None:
    result = parse_endpoints_file(
        {
            "endpoints": [
                entry(name="a", labels={"metricsAddress": "bad host"}),
                entry(name="b", labels={"metricsAddress": "m.example", "metricsPort": "x"}),
            ]
        },
        multicluster=True,
    )
    assert [str(s) for s in result.skipped] == [
        "endpoints[0] 'a': label metricsAddress: invalid host 'bad host': expected an IP or "
        "an RFC-1123 host name",
        "endpoints[1] 'b': invalid label metricsPort 'x': expected an integer in 1..65535",
    ]


def test_plain_file_discovery_ignores_metrics_labels() -> None:
    result = parse_endpoints_file({"endpoints": [entry(labels={"metricsAddress": "10.9.9.9"})]})
    assert result.entries[0].metrics_address is None
    assert result.endpoints[0].metrics_hostport == "10.0.0.1:8000"


# ------------------------------------------------------------------ hostile files
def test_file_over_one_mib(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(DataError, match=r"exceeds the 1048576 byte \(1 MiB\) limit"):
        read_endpoints_file(path)


def test_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    body = b"endpoints: []\n"
    path.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body)))
    assert read_endpoints_file(path).entries == ()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.yaml", "endpoints: " + "[" * 5000 + "]" * 5000, "invalid YAML: .*nest"),
        ("deep.json", '{"endpoints": ' + "[" * 5000 + "]" * 5000 + "}", "invalid JSON: .*nest"),
        (
            "bomb.yaml",
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + "endpoints: *i\n",
            "invalid YAML",
        ),
        ("bad.yaml", "endpoints: [", "invalid YAML"),
        ("empty.yaml", "", "empty document"),
        ("bin.yaml", None, "not UTF-8 text"),
    ],
)
def test_hostile_files(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"endpoints: [\xff\xfe]")
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_endpoints_file(path)
    assert info.value.source == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read endpoints file: No such file"):
        read_endpoints_file(tmp_path / "nope.yaml")


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "eps.json"
    path.write_text('{"endpoints": [{"name": "a", "address": "10.0.0.1", "port": "1"}]}')
    assert names(read_endpoints_file(path).endpoints) == [("a", "10.0.0.1", 1)]


# ------------------------------------------------------------------ parameters
def test_params_defaults_and_kinds() -> None:
    params = parse_params(FileDiscoveryParams, {"path": "/etc/eps.yaml"}, "plugins[0].parameters")
    assert (params.path, params.watch_file) == ("/etc/eps.yaml", False)
    assert kinds_of(FileDiscoveryPlugin) == ("endpoint-discovery",)
    assert FileDiscoveryPlugin.stability == "beta"
    assert MulticlusterFileDiscoveryPlugin.stability == "alpha"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({}, r"plugins\[0\]\.parameters\.path: required key is missing"),
        ({"path": ""}, r"plugins\[0\]\.parameters\.path: expected a non-empty file path"),
        ({"path": 3}, r"plugins\[0\]\.parameters\.path: expected str"),
        ({"path": "/x", "watchFile": "yes"}, r"plugins\[0\]\.parameters\.watchFile: expected bool"),
        ({"path": "/x", "watch": True}, r"unknown key 'watch' \(did you mean 'watchFile'\?\)"),
    ],
)
def test_params_errors(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        parse_params(FileDiscoveryParams, raw, "plugins[0].parameters")


def test_params_errors_through_config() -> None:
    text = """
    apiVersion: llm-d.ai/v1alpha1
    kind: EndpointPickerConfig
    plugins:
    - type: file-discovery
      parameters: {watchFile: true}
    dataLayer:
      discovery: {pluginRef: file-discovery}
    """
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.path"):
        load_config(textwrap.dedent(text))


# ------------------------------------------------------------------ start and readiness
def test_start_is_lazy_and_sets_ready(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    p = plugin(path)  # nothing read yet: the file may not exist when the config loads
    ready_before = p.is_ready
    assert not ready_before
    write(path, GOOD)
    assert names(p.endpoints()) == [("vllm-0", "10.0.0.1", 8000), ("vllm-1", "10.0.0.2", 8001)]
    assert p.is_ready
    assert p.wait_ready(0)
    assert [(e.namespace, e.name) for e in p.entries] == [("default", "vllm-0"), ("prod", "vllm-1")]
    assert p.endpoints()[0].labels == {"llm-d.ai/role": "decode", "zone": "z1"}
    assert p.dump_state() == {
        "endpoints": ["default/vllm-0", "prod/vllm-1"],
        "totalEndpoints": 2,
        "maxEndpoints": 100,
        "truncated": False,
    }


def test_start_fails_on_file_errors(tmp_path: Path) -> None:
    p = plugin(tmp_path / "missing.yaml")
    with pytest.raises(DataError, match="cannot read endpoints file"):
        p.start()
    assert not p.is_ready


def test_start_fails_on_invalid_entries_listing_each(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write(
        path,
        """\
        endpoints:
          - {name: a, address: "10.0.0.1", port: "8000"}
          - {name: b, address: "10.0.0", port: "8000"}
          - {name: c, address: "10.0.0.3", port: 8000}
        """,
    )
    p = plugin(path)
    with pytest.raises(DataError) as info:
        p.start()
    assert str(info.value).startswith(
        f"{path}: file-discovery: initial load failed: 2 invalid entries: "
        "endpoints[1] 'b': invalid IPv4 address '10.0.0'; endpoints[2] 'c': port: expected"
    )
    assert not p.is_ready
    write(path, GOOD)  # fixed: the next start succeeds
    p.start()
    assert p.is_ready


def test_dump_state_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    lines = [f'  - {{name: e{i:03d}, address: "10.0.0.1", port: "1"}}' for i in range(150)]
    write(path, "endpoints:\n" + "\n".join(lines) + "\n")
    p = plugin(path)
    p.start()
    state = p.dump_state()
    assert (len(state["endpoints"]), state["totalEndpoints"], state["truncated"]) == (
        100,
        150,
        True,
    )
    assert state["endpoints"][0] == "default/e000"


# ------------------------------------------------------------------ reloads
def test_reload_applies_changes_and_skips_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    p = plugin(path, watch=True)
    p.start()
    assert p.poll_once() is False  # unchanged
    write(
        path,
        """\
        endpoints:
          - {name: vllm-0, address: "10.0.0.1", port: "8000"}
          - {name: vllm-2, address: "10.0.0.3", port: "8002"}
          - {name: broken, address: "not-an-ip", port: "8003"}
        """,
    )
    with caplog.at_level(logging.WARNING, logger="inference_sched.datalayer.file_discovery"):
        assert p.poll_once() is True
    assert names(p.endpoints()) == [("vllm-0", "10.0.0.1", 8000), ("vllm-2", "10.0.0.3", 8002)]
    assert p.skipped == (SkippedEntry(2, "broken", "invalid IPv4 address 'not-an-ip'"),)
    assert "endpoints[2] 'broken': invalid IPv4 address 'not-an-ip'" in caplog.text
    assert p.num_reloads == 1


def test_reload_file_error_keeps_last_list(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    p = plugin(path, watch=True)
    p.start()
    path.unlink()
    with pytest.raises(DataError, match="cannot read endpoints file"):
        p.poll_once()
    write(path, "endpoints: [")
    with pytest.raises(DataError, match="invalid YAML"):
        p.poll_once()
    assert [e.name for e in p.endpoints()] == ["vllm-0", "vllm-1"]
    write(path, "endpoints: []\n")
    assert p.poll_once() is True
    assert p.endpoints() == []
    assert p.last_error is None


def test_reload_after_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    p = plugin(path, watch=True)
    p.start()
    tmp = tmp_path / ".eps.yaml.tmp"
    write(tmp, 'endpoints: [{name: z, address: "10.9.9.9", port: "9"}]\n')
    os.replace(tmp, path)  # an editor's safe write: a new inode at the path
    assert p.poll_once() is True
    assert names(p.endpoints()) == [("z", "10.9.9.9", 9)]


def test_reload_after_configmap_symlink_swap(tmp_path: Path) -> None:
    # The ConfigMap volume layout: eps.yaml -> ..data/eps.yaml, ..data -> ..v1 (swapped).
    v1, v2 = tmp_path / "..v1", tmp_path / "..v2"
    v1.mkdir()
    v2.mkdir()
    write(v1 / "eps.yaml", GOOD)
    write(v2 / "eps.yaml", 'endpoints: [{name: only, address: "10.0.0.7", port: "7"}]\n')
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/eps.yaml", tmp_path / "eps.yaml")
    p = plugin(tmp_path / "eps.yaml", watch=True)
    p.start()
    assert len(p.endpoints()) == 2
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap
    assert p.poll_once() is True
    assert names(p.endpoints()) == [("only", "10.0.0.7", 7)]


async def _wait_for(condition: Any, deadline_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def test_watch_applies_reloads_to_the_table(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    p = plugin(path, watch=True)
    p.poll_s = 0.01
    table = EndpointTable()
    runner = DiscoveryRunner(p, table, "disc")

    async def scenario() -> None:
        task = asyncio.create_task(runner.run())
        await _wait_for(lambda: len(table) == 2)
        assert runner.is_ready
        write(path, 'endpoints: [{name: vllm-1, address: "10.0.0.2", port: "8001"}]\n')
        await _wait_for(lambda: "vllm-0" not in table)
        assert [e.name for e in table] == ["vllm-1"]
        runner.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert runner.last_sync is not None
    assert runner.last_sync.removed == ("vllm-0",)


def test_watch_without_watch_file_yields_once(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    p = plugin(path)

    async def collect() -> list[list[Endpoint]]:
        return [snapshot async for snapshot in p.watch()]

    snapshots = asyncio.run(collect())
    assert [[e.name for e in s] for s in snapshots] == [["vllm-0", "vllm-1"]]


def test_watch_start_failure_is_fatal(tmp_path: Path) -> None:
    runner = DiscoveryRunner(plugin(tmp_path / "none.yaml", watch=True), EndpointTable())
    with pytest.raises(DataError, match="cannot read endpoints file"):
        asyncio.run(runner.run())
    assert not runner.is_ready


# ------------------------------------------------------------------ config wiring
CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: {type}
  name: disc
  parameters: {{path: {path}}}
dataLayer:
  discovery: {{pluginRef: disc}}
"""


@pytest.mark.parametrize("type_", ["file-discovery", "multicluster-file-discovery"])
def test_discovery_from_config(tmp_path: Path, type_: str) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    config = load_config(CONFIG.format(type=type_, path=path))
    table = EndpointTable()
    runner = discovery_from_config(config, table)
    assert runner is not None
    assert runner.name == "disc"
    assert type(runner.discovery).type == type_  # type: ignore[attr-defined]
    result = runner.start()
    assert result.added == ("vllm-0", "vllm-1")
    assert [e.name for e in table] == ["vllm-0", "vllm-1"]


def test_discovery_from_config_reuses_built_instance(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    write(path, GOOD)
    built = plugin(path)
    runner = discovery_from_config(
        CONFIG.format(type="file-discovery", path=path), EndpointTable(), plugins={"disc": built}
    )
    assert runner is not None
    assert runner.discovery is built


def test_discovery_from_config_without_section() -> None:
    assert discovery_from_config(None, EndpointTable()) is None


def test_discovery_from_config_rejects_non_discovery() -> None:
    text = """\
    apiVersion: llm-d.ai/v1alpha1
    kind: EndpointPickerConfig
    plugins:
    - type: queue-scorer
    dataLayer:
      discovery: {pluginRef: queue-scorer}
    """
    with pytest.raises(ConfigError, match=r"dataLayer\.discovery\.pluginRef"):
        discovery_from_config(textwrap.dedent(text), EndpointTable())


# ------------------------------------------------------------------ properties
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["10.0.0.1", "8000", "65535", "0", "+1", "gw.example", "::1", ""]),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_entries = st.one_of(
    _values,
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(st.text(max_size=6), _values),
            "namespace": _values,
            "address": st.one_of(
                st.sampled_from(["10.0.0.1", "1.2.3.4", "gw.example", "::1"]), _values
            ),
            "port": st.one_of(st.sampled_from(["1", "8000", "65535", "65536", "+80"]), _values),
            "labels": st.one_of(
                st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), _values
            ),
        },
    ),
)


@given(st.lists(_entries, max_size=6), st.booleans())
def test_every_entry_is_kept_or_skipped(entries: list[Any], multicluster: bool) -> None:
    result = parse_endpoints_file({"endpoints": entries}, multicluster=multicluster)
    indices = sorted([e.index for e in result.entries] + [s.index for s in result.skipped])
    assert indices == list(range(len(entries)))
    assert len({e.name for e in result.entries}) == len(result.entries)
    for e in result.entries:
        assert 1 <= e.port <= 65535
        assert e.name
        assert e.namespace
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.labels.items())
        if not multicluster:
            assert e.address.count(".") == 3
    for s in result.skipped:
        assert s.reason
        assert str(s).startswith(f"endpoints[{s.index}]")
