"""Endpoint discovery: static lists, watched files, and syncing snapshots into the table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import pytest

from inference_sched.datalayer.discovery import (
    Discovery,
    FileDiscovery,
    StaticDiscovery,
    SyncResult,
    apply,
    parse_endpoint,
    parse_endpoints_document,
    run_discovery,
)
from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.types import Endpoint, Role
from inference_sched.state.table import EndpointTable


def summary(endpoints: list[Endpoint]) -> list[tuple[str, str, int]]:
    return [(e.name, e.address, e.port) for e in endpoints]


# ------------------------------------------------------------------ parse_endpoint
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("10.0.0.1:8000", Endpoint("10.0.0.1:8000", "10.0.0.1", 8000)),
        (" a = 10.0.0.1:8000 ", Endpoint("a", "10.0.0.1", 8000)),
        ("[fd00::1]:8000", Endpoint("[fd00::1]:8000", "fd00::1", 8000)),
        ("v6=[::1]:1", Endpoint("v6", "::1", 1)),
        ("vllm.svc.local:65535", Endpoint("vllm.svc.local:65535", "vllm.svc.local", 65535)),
    ],
)
def test_parse_endpoint(spec: str, expected: Endpoint) -> None:
    assert parse_endpoint(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("10.0.0.1", "expected ip:port or name=ip:port, got '10.0.0.1'"),
        ("10.0.0.1:", "port must be a number, got ''"),
        ("10.0.0.1:http", "port must be a number, got 'http'"),
        ("10.0.0.1:0", "port must be in 1..65535, got 0"),
        ("10.0.0.1:65536", "port must be in 1..65535, got 65536"),
        ("=10.0.0.1:80", "empty endpoint name"),
        (":8000", "invalid host ''"),
        ("fd00::1:8000", r"IPv6 addresses need brackets, e.g. \[fd00::1\]:8000"),
        ("[fd00::1]8000", r"expected \[ipv6\]:port"),
        ("[zz::1]:8000", "invalid IPv6 address 'zz::1'"),
        ("a b:80", "invalid host 'a b'"),
    ],
)
def test_parse_endpoint_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_endpoint(spec)


# ------------------------------------------------------------------ StaticDiscovery
def test_static_discovery_sorts_and_accepts_strings_and_endpoints() -> None:
    source = StaticDiscovery(["b=10.0.0.2:8000", Endpoint("a", "10.0.0.1", 8001), "10.0.0.3:8000"])
    assert isinstance(source, Discovery)
    assert summary(source.endpoints()) == [
        ("10.0.0.3:8000", "10.0.0.3", 8000),
        ("a", "10.0.0.1", 8001),
        ("b", "10.0.0.2", 8000),
    ]

    async def snapshots() -> list[list[Endpoint]]:
        return [s async for s in source.watch()]

    assert asyncio.run(snapshots()) == [source.endpoints()]


def test_static_discovery_errors_name_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"^endpoints\[1\]: port must be a number") as info:
        StaticDiscovery(["10.0.0.1:8000", "10.0.0.2:x"])
    assert info.value.path == "endpoints[1]"
    with pytest.raises(ConfigError, match=r"^endpoints\[1\]: duplicate endpoint name 'a'"):
        StaticDiscovery(["a=10.0.0.1:8000", "a=10.0.0.2:8000"])


# ------------------------------------------------------------------ document parsing
YAML_DOC = """\
endpoints:
  - name: prefill-0
    address: 10.0.0.1
    port: 8000
    labels: {llm-d.ai/role: prefill}
  - address: 10.0.0.2
    port: 8000
    metricsPort: 9090
  - decode-0=10.0.0.3:8001
"""


def test_parse_yaml_document() -> None:
    endpoints = parse_endpoints_document(YAML_DOC)
    assert endpoints == [
        Endpoint("10.0.0.2:8000", "10.0.0.2", 8000, metrics_port=9090),
        Endpoint("decode-0", "10.0.0.3", 8001),
        Endpoint("prefill-0", "10.0.0.1", 8000, {"llm-d.ai/role": "prefill"}),
    ]
    assert endpoints[2].role is Role.PREFILL


def _alias_chain(depth: int) -> str:
    node = "&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for k in range(1, depth + 1):
        node = f"&l{k} [{node}" + f", *l{k - 1}" * 8 + "]"
    return node


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            f"endpoints:\n- address: 10.0.0.1\n  port: 80\n  labels: {{k: {_alias_chain(7)}}}\n",
            id="labels",
        ),
        pytest.param(f"endpoints:\n- address: 10.0.0.1\n  port: {_alias_chain(7)}\n", id="port"),
        pytest.param(f"endpoints: {_alias_chain(7)}\n", id="top"),
    ],
)
def test_an_alias_bomb_is_refused_at_load(text: str) -> None:
    # A 400-byte file used to expand into a 312 MB error message (12 s, 950 MB).
    with pytest.raises(DataError, match="expands to more than 100000 nodes") as info:
        parse_endpoints_document(text, source="pool.yaml")
    assert info.value.line >= 1
    assert len(str(info.value)) < 300


def test_a_large_wrong_value_is_shown_bounded() -> None:
    text = f"endpoints:\n- address: 10.0.0.1\n  port: {_alias_chain(3)}\n"  # 7381 nodes
    with pytest.raises(DataError, match=r"endpoints\[0\]\.port: expected an integer port") as info:
        parse_endpoints_document(text, source="pool.yaml")
    assert info.value.line == 3
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize("depth", [65, 500, 5000])
def test_deep_nesting_is_a_data_error_naming_the_line(fmt: str, depth: int) -> None:
    text = "[\n" + "[" * depth + "]" * depth + "]"
    with pytest.raises(DataError, match="nested more than 64 levels deep") as info:
        parse_endpoints_document(text, source="pool", fmt=fmt)  # type: ignore[arg-type]
    assert info.value.line == 2


def test_deep_block_nesting_is_a_data_error_naming_a_line() -> None:
    text = "endpoints:\n" + "- " * 2000 + "x\n"
    with pytest.raises(DataError, match="nested more than 64 levels deep") as info:
        parse_endpoints_document(text, source="pool")
    assert info.value.line == 2


def test_a_huge_json_integer_is_a_data_error_naming_the_line() -> None:
    text = '[\n{"address": "10.0.0.1",\n "port": ' + "9" * 5000 + "}]"
    with pytest.raises(DataError, match="an integer of 5000 digits") as info:
        parse_endpoints_document(text, source="pool", fmt="json")
    assert info.value.line == 3


def test_parse_json_document_and_bare_list() -> None:
    text = '[{"name": "e0", "address": "[fd00::1]", "port": 8000}, "10.0.0.1:8000"]'
    assert parse_endpoints_document(text, fmt="json") == [
        Endpoint("10.0.0.1:8000", "10.0.0.1", 8000),
        Endpoint("e0", "fd00::1", 8000),
    ]
    assert parse_endpoints_document("endpoints: []\n") == []


@pytest.mark.parametrize(
    ("text", "fmt", "message", "line"),
    [
        pytest.param("", "yaml", r"empty document; write 'endpoints: \[\]'", 0, id="empty"),
        pytest.param("endpoints:\n", "yaml", "empty document", 0, id="endpoints-null"),
        pytest.param("endpoints: [\n  - a\n", "yaml", "invalid YAML", 2, id="yaml-syntax"),
        pytest.param('{"endpoints": [\n  1,\n}', "json", "invalid JSON", 3, id="json-syntax"),
        pytest.param(
            "hosts: []\n",
            "yaml",
            r"unknown top-level key\(s\) \[.hosts.\]; expected .endpoints.",
            0,
            id="top-key",
        ),
        pytest.param(
            "endpoints: {a: 1}\n", "yaml", "endpoints: expected a list, got dict", 0, id="not-list"
        ),
        pytest.param(
            "- 10.0.0.1:8000\n- 10.0.0.2\n",
            "yaml",
            r"endpoints\[1\]: expected ip:port or name=ip:port",
            2,
            id="bad-string",
        ),
        pytest.param(
            "- 8000\n", "yaml", r"endpoints\[0\]: expected 'ip:port' or a mapping", 1, id="number"
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: 8000\n- adress: 10.0.0.2\n  port: 8000\n",
            "yaml",
            r"endpoints\[1\]\.adress: unknown key\(s\) \['adress'\]",
            3,
            id="typo",
        ),
        pytest.param(
            "- address: 10.0.0.1\n",
            "yaml",
            r"endpoints\[0\]: missing key 'port'",
            1,
            id="missing-port",
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: '8000'\n",
            "yaml",
            r"endpoints\[0\]\.port: expected an integer port, got '8000'",
            2,
            id="port-string",
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: true\n",
            "yaml",
            r"endpoints\[0\]\.port: expected an integer port",
            2,
            id="port-bool",
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: 70000\n",
            "yaml",
            r"endpoints\[0\]\.port: port must be in 1..65535",
            2,
            id="port-range",
        ),
        pytest.param(
            "- address: ''\n  port: 1\n",
            "yaml",
            r"endpoints\[0\]\.address: expected a non-empty string",
            1,
            id="address",
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: 1\n  labels: {tier: 1}\n",
            "yaml",
            r"endpoints\[0\]\.labels: label 'tier' \(str\): 1 \(int\) must map a string",
            3,
            id="label-int",
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: 1\n  labels: [a]\n",
            "yaml",
            r"endpoints\[0\]\.labels: expected a mapping",
            3,
            id="labels-list",
        ),
        pytest.param(
            "- address: 10.0.0.1\n  port: 1\n  metricsPort: 0\n",
            "yaml",
            r"endpoints\[0\]\.metricsPort: port must be in",
            3,
            id="metrics-port",
        ),
        pytest.param(
            "- {name: a, address: 10.0.0.1, port: 1}\n- a=10.0.0.2:1\n",
            "yaml",
            r"endpoints\[1\]: duplicate endpoint name 'a' \(also endpoints\[0\]\)",
            2,
            id="duplicate",
        ),
        pytest.param(
            '[\n {"address": "10.0.0.1",\n  "port": 0}]',
            "json",
            r"endpoints\[0\]\.port: port must be in",
            3,
            id="json-field-line",
        ),
    ],
)
def test_document_errors_name_the_line_and_field(
    text: str, fmt: str, message: str, line: int
) -> None:
    with pytest.raises(DataError, match=message) as info:
        parse_endpoints_document(text, source="pool.yaml", fmt=fmt)  # type: ignore[arg-type]
    assert info.value.source == "pool.yaml"
    assert info.value.line == line
    assert str(info.value).startswith(f"pool.yaml:{line}: " if line else "pool.yaml: ")


# ------------------------------------------------------------------ FileDiscovery
def write(path: Path, text: str) -> None:
    path.write_text(text)
    # Move the mtime so (mtime, size) changes even on coarse-timestamp filesystems.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_file_discovery_follows_edits(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    write(path, "- a=10.0.0.1:8000\n- b=10.0.0.2:8000\n")
    source = FileDiscovery(path, poll_s=0.01)
    assert isinstance(source, Discovery)
    assert summary(source.endpoints()) == [("a", "10.0.0.1", 8000), ("b", "10.0.0.2", 8000)]
    assert source.poll_once() is False  # nothing changed

    write(path, "- a=10.0.0.1:8000\n- c=10.0.0.3:8000\n")
    assert source.poll_once() is True
    assert summary(source.endpoints()) == [("a", "10.0.0.1", 8000), ("c", "10.0.0.3", 8000)]

    write(path, "- a=10.0.0.1:8000\n- c=10.0.0.3:8000\n")  # touched, same content
    assert source.poll_once() is False

    write(path, "endpoints:\n  - a=10.0.0.9:8000\n")  # same name, new address
    assert source.poll_once() is True
    assert summary(source.endpoints()) == [("a", "10.0.0.9", 8000)]

    write(path, "endpoints: []\n")  # emptying the pool on purpose is allowed
    assert source.poll_once() is True
    assert source.endpoints() == []


def test_same_size_rewrite_within_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("- a=10.0.0.1:8000\n")
    source = FileDiscovery(path)
    stat = path.stat()
    path.write_text("- b=10.0.0.1:8000\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert source.poll_once() is True
    assert [e.name for e in source.endpoints()] == ["b"]


def test_malformed_edit_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    write(path, "- a=10.0.0.1:8000\n- b=10.0.0.2:8000\n")
    source = FileDiscovery(path)
    good = source.endpoints()

    write(path, "- a=10.0.0.1:8000\n- address: 10.0.0.2\n  prot: 8000\n")
    with pytest.raises(DataError, match=r"endpoints\[1\]\.prot: unknown key") as info:
        source.poll_once()
    assert info.value.source == str(path)
    assert info.value.line == 3
    assert source.endpoints() == good
    assert source.last_error is info.value
    assert source.poll_once() is False  # reported once, not on every poll

    write(path, "")  # a truncated write in progress
    with pytest.raises(DataError, match="empty document"):
        source.poll_once()
    assert source.endpoints() == good

    path.unlink()
    with pytest.raises(DataError, match="cannot read endpoints file"):
        source.poll_once()
    assert source.endpoints() == good

    path.write_bytes(b"- \xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        source.poll_once()

    write(path, "- a=10.0.0.1:8000\n")
    assert source.poll_once() is True
    assert source.last_error is None
    assert [e.name for e in source.endpoints()] == ["a"]


def test_file_discovery_start_up_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read endpoints file"):
        FileDiscovery(tmp_path / "missing.yaml")
    bad = tmp_path / "pool.json"
    bad.write_text('{"endpoints": [}')
    with pytest.raises(DataError, match=r"pool\.json:1: invalid JSON"):
        FileDiscovery(bad)
    bad.write_text("[]")
    with pytest.raises(ConfigError, match="poll interval must be > 0"):
        FileDiscovery(bad, poll_s=0)


def test_file_watch_yields_changes_and_logs_errors_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pool.yaml"
    write(path, "- a=10.0.0.1:8000\n")
    source = FileDiscovery(path, poll_s=0.005)

    async def edit() -> None:
        write(path, "- a=10.0.0.1:8000\n- port: oops\n")
        while source.last_error is None:  # the watch saw the bad file (bounded by wait_for)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.03)  # and several more polls see it again
        write(path, "- a=10.0.0.1:8000\n- b=10.0.0.2:8000\n")

    async def follow() -> list[list[str]]:
        seen: list[list[str]] = []
        editing: asyncio.Task[None] | None = None
        async with contextlib.aclosing(source.watch()) as snapshots:
            async for snapshot in snapshots:
                seen.append([e.name for e in snapshot])
                if editing is None:
                    editing = asyncio.create_task(edit())
                else:
                    break
        assert editing is not None
        await editing
        return seen

    with caplog.at_level(logging.WARNING):
        seen = asyncio.run(asyncio.wait_for(follow(), timeout=10))
    assert seen == [["a"], ["a", "b"]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "keeping the last good endpoint list" in warnings[0].getMessage()


# ------------------------------------------------------------------ apply / table
def test_apply_syncs_and_is_idempotent(table: EndpointTable) -> None:
    a, b, c = (Endpoint(n, f"10.0.0.{i}", 8000) for i, n in enumerate("abc"))
    assert apply(table, [a, b]) == SyncResult(added=("a", "b"))
    table.set_endpoint_metrics("a", waiting=3.0)
    a2 = Endpoint("a", "10.0.0.9", 8000, {"llm-d.ai/role": "decode"})
    result = apply(table, [c, a2])
    assert result == SyncResult(added=("c",), removed=("b",), updated=("a",))
    assert result.changed
    assert table.get("a") == a2
    assert table.metrics_of("a")["waiting"] == 3.0  # the row and its metrics are kept
    assert table.role_of(table.row("a")) is Role.DECODE
    assert apply(table, [a2, c]) == SyncResult()
    assert not SyncResult().changed
    with pytest.raises(DataError, match="duplicate endpoint name 'c'"):
        apply(table, [c, c])
    assert sorted(e.name for e in table) == ["a", "c"]


def test_removal_through_discovery_runs_the_table_listeners(
    tmp_path: Path, table: EndpointTable
) -> None:
    path = tmp_path / "pool.yaml"
    write(path, "- a=10.0.0.1:8000\n- b=10.0.0.2:8000\n- c=10.0.0.3:8000\n")
    source = FileDiscovery(path)
    apply(table, source.endpoints())
    row_b = table.row("b")
    handle_b = table.handle("b")
    removed: list[tuple[int, Endpoint]] = []
    table.on_remove(lambda row, endpoint: removed.append((row, endpoint)))

    write(path, "- a=10.0.0.1:8000\n- c=10.0.0.3:8000\n")
    assert source.poll_once() is True
    assert apply(table, source.endpoints()) == SyncResult(removed=("b",))

    assert removed == [(row_b, Endpoint("b", "10.0.0.2", 8000))]
    assert not table.is_current(handle_b)
    assert apply(table, source.endpoints()) == SyncResult()
    assert len(removed) == 1


def test_run_discovery_applies_every_snapshot(table: EndpointTable) -> None:
    source = StaticDiscovery(["a=10.0.0.1:8000", "b=10.0.0.2:8000"])
    table.add(Endpoint("stale", "10.0.0.9", 8000))
    asyncio.run(asyncio.wait_for(run_discovery(source, table), timeout=5))
    assert [e.name for e in table] == ["a", "b"]
