"""Endpoint discovery: where the pool's endpoints come from (GIE: ``docs/discovery.md``).

A :class:`Discovery` source knows the current set of endpoints (:meth:`Discovery.endpoints`)
and can follow it over time (:meth:`Discovery.watch`, an async iterator of *full
snapshots*). Snapshots rather than add/remove deltas keep consumers simple and make every
update idempotent: :func:`apply` turns a snapshot into the minimal set of table changes,
so a repeated or missed snapshot cannot leave the table wrong.

Sources here:

* :class:`StaticDiscovery`: a fixed list (``ip:port`` / ``name=ip:port`` strings from the
  CLI or config, or :class:`~inference_sched.framework.types.Endpoint` objects);
* :class:`FileDiscovery`: a YAML or JSON file, re-read when it changes; a malformed edit
  keeps the last good list.

Kubernetes pods (the InferencePool way) live in :mod:`inference_sched.datalayer.k8s`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs
import yaml

from inference_sched._yaml_limits import (
    DEPTH_PROBLEM,
    MAX_INT_DIGITS,
    YAMLLimitError,
    check_nesting,
    check_node_graph,
)
from inference_sched.errors import ConfigError, DataError, InferenceSchedError
from inference_sched.framework.config import EndpointPickerConfig, load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import Endpoint
from inference_sched.params import describe
from inference_sched.state.table import EndpointTable

__all__ = [
    "Discovery",
    "FileDiscovery",
    "StaticDiscovery",
    "SyncResult",
    "DiscoveryRunner",
    "apply",
    "discovery_from_config",
    "load_document",
    "parse_endpoint",
    "parse_endpoints_document",
    "run_discovery",
]

logger = logging.getLogger(__name__)

_ENTRY_KEYS: Final = ("name", "address", "port", "labels", "metricsPort")
# A file whose mtime is this recent may be rewritten within the same timestamp tick, so
# (mtime, size) alone cannot prove it unchanged: re-hash it (git's "racy clean" rule).
_RACY_S: Final = 2.0


@runtime_checkable
class Discovery(Protocol):
    """A source of the pool's endpoints."""

    def endpoints(self) -> list[Endpoint]:
        """The current endpoints, sorted by name (a copy: callers may keep it)."""
        ...

    def watch(self) -> AsyncIterator[list[Endpoint]]:
        """Yield the current snapshot, then a new full snapshot whenever the set changes.

        A source that can never change may end the iteration after the first snapshot.
        Errors of the source are logged and retried inside; they never yield an empty
        snapshot in place of the last good one.
        """
        ...


@attrs.frozen
class SyncResult:
    """What :func:`apply` changed, by endpoint name (each tuple sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the table changed at all."""
        return bool(self.added or self.removed or self.updated)


def apply(table: EndpointTable, endpoints: Iterable[Endpoint]) -> SyncResult:
    """Make ``table`` hold exactly ``endpoints`` and report the difference.

    Endpoints that left are removed through :meth:`EndpointTable.remove`, so the table's
    removal listeners release their rows, prefix-index entries and in-flight counters.
    Endpoints whose metadata changed (address, port, labels) keep their row and metrics.
    Applying the same snapshot twice changes nothing.

    Raises:
        DataError: two endpoints share a name (the snapshot is ambiguous; nothing changes).
    """
    wanted: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        if endpoint.name in wanted:
            raise DataError(f"duplicate endpoint name {endpoint.name!r} in snapshot")
        wanted[endpoint.name] = endpoint
    with table.lock:
        before = {e.name: e for e in table}
        table.sync(wanted.values())
    return SyncResult(
        added=tuple(sorted(wanted.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - wanted.keys())),
        updated=tuple(sorted(n for n, e in wanted.items() if n in before and before[n] != e)),
    )


async def run_discovery(discovery: Discovery, table: EndpointTable) -> None:
    """Apply every snapshot of ``discovery`` to ``table`` until the source ends.

    Run it on the event loop that runs scheduling cycles: table changes then never
    overlap a cycle (the table's concurrency contract).
    """
    async for snapshot in discovery.watch():
        result = apply(table, snapshot)
        if result.changed:
            logger.info(
                "endpoints: +%d -%d ~%d (now %d)",
                len(result.added),
                len(result.removed),
                len(result.updated),
                len(table),
            )


# --------------------------------------------------------------------------- parsing
def parse_endpoint(spec: str) -> Endpoint:
    """Parse ``ip:port``, ``[v6]:port`` or ``name=ip:port`` into an endpoint.

    Without a name the endpoint is called by its ``ip:port``.

    Raises:
        ConfigError: the text is not one of those shapes or the port is out of range.
    """
    text = spec.strip()
    name, sep, hostport = text.partition("=")
    if not sep:
        name, hostport = "", text
    name, hostport = name.strip(), hostport.strip()
    if sep and not name:
        raise ConfigError(f"empty endpoint name in {spec!r}; expected name=ip:port", value=spec)
    if hostport.startswith("["):
        host, close, rest = hostport[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise ConfigError(f"expected [ipv6]:port, got {spec!r}", value=spec)
        port_text = rest[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            raise ConfigError(f"expected ip:port or name=ip:port, got {spec!r}", value=spec)
        if ":" in host:
            raise ConfigError(
                f"IPv6 addresses need brackets, e.g. [{host}]:{port_text}; got {spec!r}",
                value=spec,
            )
    address = _check_address(host, spec)
    port = _check_port_text(port_text, spec)
    endpoint = Endpoint(name or "", address, port)
    return attrs.evolve(endpoint, name=name or endpoint.hostport)


def _check_address(host: str, spec: str) -> str:
    if not host or any(c.isspace() or c in "/=[]" for c in host):
        raise ConfigError(f"invalid host {host!r} in {spec!r}", value=spec)
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid IPv6 address {host!r} in {spec!r}", value=spec) from None
    return host


def _check_port_text(text: str, spec: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ConfigError(f"port must be a number, got {text!r} in {spec!r}", value=spec)
    port = int(text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be in 1..65535, got {port} in {spec!r}", value=spec)
    return port


def parse_endpoints_document(
    text: str,
    *,
    source: str = "<string>",
    fmt: Literal["yaml", "json"] = "yaml",
) -> list[Endpoint]:
    """Parse an endpoints file: a list of entries, or a mapping with an ``endpoints`` list.

    Each entry is either an ``ip:port`` / ``name=ip:port`` string or a mapping with
    ``address`` and ``port`` and optional ``name`` (default ``ip:port``), ``labels``
    (string to string) and ``metricsPort``. Unknown keys are errors, so a typo such as
    ``adress`` fails loudly instead of silently dropping an endpoint. An empty document
    is an error too (a half-written file): write ``endpoints: []`` to empty the pool.

    Returns:
        The endpoints sorted by name.

    Raises:
        DataError: naming ``source``, the line when known, and the field
            (``endpoints[2].port``).
    """
    data = load_document(text, source, fmt)
    lines = _entry_lines(text)
    if isinstance(data, Mapping):
        extra = sorted(str(k) for k in data if k != "endpoints")
        if extra:
            raise DataError(
                f"unknown top-level key(s) {extra}; expected 'endpoints'", source=source
            )
        if "endpoints" not in data:
            raise DataError("missing key 'endpoints'", source=source)
        entries = data["endpoints"]
    else:
        entries = data
    if entries is None:
        raise DataError(
            "empty document; write 'endpoints: []' to empty the pool on purpose", source=source
        )
    if not isinstance(entries, list):
        raise DataError(f"endpoints: expected a list, got {type(entries).__name__}", source=source)
    result: dict[str, Endpoint] = {}
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        line, field_lines = lines[i] if i < len(lines) else (0, {})
        endpoint = _parse_entry(entry, f"endpoints[{i}]", source, line, field_lines)
        if endpoint.name in result:
            raise DataError(
                f"endpoints[{i}]: duplicate endpoint name {endpoint.name!r} "
                f"(also endpoints[{first_index[endpoint.name]}])",
                source=source,
                line=line,
            )
        result[endpoint.name] = endpoint
        first_index[endpoint.name] = i
    return [result[name] for name in sorted(result)]


def load_document(text: str, source: str, fmt: Literal["yaml", "json"] = "yaml") -> Any:
    """The YAML or JSON document in ``text``; nesting deeper than the shared YAML
    limits, alias bombs and huge integers are refused before anything recurses into,
    copies or renders them.

    Raises:
        DataError: empty text, invalid YAML/JSON or a limit exceeded (naming ``source``
            and the line when known).
    """
    if not text.strip():
        raise DataError(
            "empty document; write 'endpoints: []' to empty the pool on purpose", source=source
        )
    invalid = "invalid JSON" if fmt == "json" else "invalid YAML"
    try:
        check_nesting(text)  # json and PyYAML's composer recurse
    except YAMLLimitError as exc:
        raise DataError(f"{invalid}: {exc.problem}", source=source, line=exc.line) from None
    if fmt == "json":
        try:
            return json.loads(text, parse_int=_json_int)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", source=source, line=exc.lineno) from None
        except _HugeInt as exc:
            line = text.count("\n", 0, max(text.find(exc.digits), 0)) + 1
            raise DataError(
                f"invalid JSON: an integer of {len(exc.digits)} digits", source=source, line=line
            ) from None
        except RecursionError:  # not reached past check_nesting; kept as a backstop
            raise DataError(f"invalid JSON: {DEPTH_PROBLEM}", source=source, line=1) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_node_graph(node)
        return loader.construct_document(node)
    except YAMLLimitError as exc:
        raise DataError(f"invalid YAML: {exc.problem}", source=source, line=exc.line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise DataError(f"invalid YAML: {problem}", source=source, line=line) from None
    except RecursionError:  # deep block nesting: PyYAML composes recursively
        line = loader.get_mark().line + 1
        raise DataError(f"invalid YAML: {DEPTH_PROBLEM}", source=source, line=line) from None
    finally:
        loader.dispose()


class _HugeInt(ValueError):
    def __init__(self, digits: str) -> None:
        super().__init__(f"an integer of {len(digits)} digits")
        self.digits = digits


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:  # int() refuses past 4300 digits anyway
        raise _HugeInt(digits)
    return int(digits)


def _entry_lines(text: str) -> list[tuple[int, dict[str, int]]]:
    """Line of each entry and of each of its keys (best effort: [] when unknown).

    JSON is (nearly always) valid YAML, so the YAML composer gives line marks for both.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return []
    if isinstance(root, yaml.MappingNode):
        root = next((v for k, v in root.value if k.value == "endpoints"), None)
    if not isinstance(root, yaml.SequenceNode):
        return []
    out: list[tuple[int, dict[str, int]]] = []
    for item in root.value:
        fields: dict[str, int] = {}
        if isinstance(item, yaml.MappingNode):
            fields = {str(k.value): k.start_mark.line + 1 for k, _ in item.value}
        out.append((item.start_mark.line + 1, fields))
    return out


def _parse_entry(
    entry: object, path: str, source: str, line: int, field_lines: Mapping[str, int]
) -> Endpoint:
    def fail(message: str, key: str = "") -> DataError:
        where = f"{path}.{key}" if key else path
        return DataError(f"{where}: {message}", source=source, line=field_lines.get(key, line))

    if isinstance(entry, str):
        try:
            return parse_endpoint(entry)
        except ConfigError as exc:
            raise fail(exc.message) from None
    if not isinstance(entry, Mapping):
        raise fail(
            f"expected 'ip:port' or a mapping with address and port, got {type(entry).__name__}"
        )
    unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {unknown}; allowed: {list(_ENTRY_KEYS)}", unknown[0])
    for key in ("address", "port"):
        if key not in entry:
            raise fail(f"missing key {key!r}")
    address = entry["address"]
    if not isinstance(address, str) or not address.strip():
        raise fail(f"expected a non-empty string, got {describe(address)}", "address")
    address = address.strip()
    if address.startswith("[") and address.endswith("]"):  # accept a bracketed IPv6 literal
        address = address[1:-1]
    try:
        address = _check_address(address, address)
    except ConfigError as exc:
        raise fail(exc.message, "address") from None
    port = _int_port(entry["port"], lambda m: fail(m, "port"))
    metrics_port = entry.get("metricsPort")
    if metrics_port is not None:
        metrics_port = _int_port(metrics_port, lambda m: fail(m, "metricsPort"))
    labels = entry.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise fail(f"expected a mapping of strings, got {type(labels).__name__}", "labels")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise fail(
                f"label {describe(k)}: {describe(v)} must map a string to a string "
                "(quote numbers and booleans in YAML)",
                "labels",
            )
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise fail(f"expected a non-empty string, got {describe(name)}", "name")
    endpoint = Endpoint("", address, port, labels, metrics_port=metrics_port)
    return attrs.evolve(endpoint, name=name.strip() if name else endpoint.hostport)


def _int_port(value: object, fail: Callable[[str], DataError]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"expected an integer port, got {describe(value)}")
    if not 1 <= value <= 65535:
        raise fail(f"port must be in 1..65535, got {value}")
    return value


# --------------------------------------------------------------------------- sources
class StaticDiscovery:
    """A fixed list of endpoints (from the CLI or a config).

    Args:
        endpoints: :class:`Endpoint` objects or ``ip:port`` / ``name=ip:port`` strings.

    Raises:
        ConfigError: a string does not parse (``path`` is ``endpoints[i]``), or two
            endpoints share a name.
    """

    def __init__(self, endpoints: Iterable[str | Endpoint]) -> None:
        parsed: dict[str, Endpoint] = {}
        for i, item in enumerate(endpoints):
            if isinstance(item, Endpoint):
                endpoint = item
            else:
                try:
                    endpoint = parse_endpoint(item)
                except ConfigError as exc:
                    raise ConfigError(exc.message, path=f"endpoints[{i}]", value=item) from None
            if endpoint.name in parsed:
                raise ConfigError(
                    f"duplicate endpoint name {endpoint.name!r}",
                    path=f"endpoints[{i}]",
                    value=endpoint.name,
                )
            parsed[endpoint.name] = endpoint
        self._endpoints = tuple(parsed[name] for name in sorted(parsed))

    def endpoints(self) -> list[Endpoint]:
        """The fixed endpoints, sorted by name."""
        return list(self._endpoints)

    async def watch(self) -> AsyncGenerator[list[Endpoint], None]:
        """Yield the list once; a static pool never changes."""
        yield self.endpoints()


class FileDiscovery:
    """Endpoints listed in a YAML or JSON file, re-read when the file changes.

    The file is checked every ``poll_s`` seconds: a changed ``(mtime, size)`` (or a
    recent mtime, which a same-tick rewrite could hide) triggers a read, and a changed
    content hash a parse. No inotify, so it works on every filesystem, including
    ConfigMap volumes whose files are swapped by symlink. See
    :func:`parse_endpoints_document` for the format (``.json`` files are parsed as
    JSON, anything else as YAML).

    A malformed or unreadable file keeps the last good list: :meth:`poll_once` raises
    the :class:`DataError` (also kept in :attr:`last_error`) and :meth:`watch` logs it
    once; the pool is never emptied because of a typo.

    Args:
        path: the file.
        poll_s: seconds between checks in :meth:`watch`.

    Raises:
        ConfigError: ``poll_s`` is not positive.
        DataError: the file cannot be read or parsed at start-up (there is no last good
            list to fall back on).
    """

    def __init__(self, path: str | os.PathLike[str], poll_s: float = 1.0) -> None:
        if not poll_s > 0:
            raise ConfigError(f"poll interval must be > 0 seconds, got {poll_s}", value=poll_s)
        self.path = Path(path)
        self.poll_s = float(poll_s)
        self.last_error: DataError | None = None
        """The error of the latest check, or ``None`` after a good read."""
        self._fmt: Literal["yaml", "json"] = (
            "json" if self.path.suffix.lower() == ".json" else "yaml"
        )
        self._stat_key: tuple[int, int] | None = None
        self._digest: bytes | None = None
        self._endpoints: tuple[Endpoint, ...] = ()
        self.poll_once()

    def endpoints(self) -> list[Endpoint]:
        """The last good list, sorted by name."""
        return list(self._endpoints)

    def poll_once(self) -> bool:
        """Check the file once; return whether the endpoint list changed.

        Raises:
            DataError: the file is unreadable, or changed and is malformed (the last
                good list stays in place). A malformed content is reported once, not on
                every poll; a missing file on every poll until it is back.
        """
        source = str(self.path)
        try:
            st = self.path.stat()
            stat_key = (st.st_mtime_ns, st.st_size)
            racy = time.time() - st.st_mtime_ns / 1e9 < _RACY_S
            if stat_key == self._stat_key and not racy:
                return False
            raw = self.path.read_bytes()
        except OSError as exc:
            self._stat_key = self._digest = None  # re-read whatever appears next
            error = DataError(f"cannot read endpoints file: {exc.strerror or exc}", source=source)
            self.last_error = error
            raise error from None
        self._stat_key = stat_key
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not UTF-8 text: {exc.reason}", source=source) from None
            endpoints = parse_endpoints_document(text, source=source, fmt=self._fmt)
        except DataError as exc:
            self.last_error = exc
            raise
        self.last_error = None
        new = tuple(endpoints)
        changed = new != self._endpoints
        self._endpoints = new
        return changed

    async def watch(self) -> AsyncGenerator[list[Endpoint], None]:
        """Yield the current list, then the new list after each change (forever)."""
        yield self.endpoints()
        reported = ""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                changed = self.poll_once()
            except DataError as exc:
                if str(exc) != reported:  # log on transitions, not on every poll
                    logger.warning("%s; keeping the last good endpoint list", exc)
                    reported = str(exc)
                continue
            if reported and self.last_error is None:
                logger.info("%s: endpoints file is valid again", self.path)
                reported = ""
            if changed:
                yield self.endpoints()


# --------------------------------------------------------------------------- from config
class DiscoveryRunner:
    """Keeps a table equal to what a discovery plugin reports (``dataLayer.discovery``).

    :meth:`start` does the first load and applies it (its errors are fatal, as
    llm-d-router's ``Start``); :meth:`run` then applies every later snapshot until the
    source ends or :meth:`stop` is called. Run it on the event loop of the scheduling
    cycles (the table's concurrency contract).
    """

    def __init__(self, discovery: Discovery, table: EndpointTable, name: str = "") -> None:
        self.discovery = discovery
        self.table = table
        self.name = name or type(discovery).__name__
        self.last_sync: SyncResult | None = None
        """What the latest applied snapshot changed."""
        self._started = False

    @property
    def is_ready(self) -> bool:
        """Whether the first snapshot was applied (the plugin's readiness)."""
        return self._started

    def start(self) -> SyncResult:
        """Apply the source's current endpoints (the first load, if not done yet).

        Raises:
            DataError: the first load failed (e.g. a missing or invalid endpoints file).
        """
        result = apply(self.table, self.discovery.endpoints())
        self.last_sync = result
        self._started = True
        return result

    async def run(self) -> None:
        """Apply every snapshot of the source to the table until it ends or is stopped.

        Raises:
            DataError: the first load failed.
        """
        async for snapshot in self.discovery.watch():
            result = apply(self.table, snapshot)
            self.last_sync = result
            self._started = True
            if result.changed:
                logger.info(
                    "%s: endpoints +%d -%d ~%d (now %d)",
                    self.name,
                    len(result.added),
                    len(result.removed),
                    len(result.updated),
                    len(self.table),
                )

    def stop(self) -> None:
        """Make :meth:`run` end (at the source's next check)."""
        stop = getattr(self.discovery, "stop", None)
        if callable(stop):
            stop()

    async def close(self) -> None:
        """Stop; the same shape as the scrapers' ``close``."""
        self.stop()


def discovery_from_config(
    config: Any,
    table: EndpointTable,
    *,
    plugins: Mapping[str, Any] | None = None,
) -> DiscoveryRunner | None:
    """The runner of the plugin ``dataLayer.discovery.pluginRef`` names, or ``None``
    when the config sets none (endpoints then come from elsewhere: Kubernetes, the CLI).

    Args:
        config: a loaded :class:`~inference_sched.framework.config.EndpointPickerConfig`
            or anything :func:`~inference_sched.framework.config.load_config` takes.
        table: the table the runner keeps in sync.
        plugins: instances already built, by name (a scheduler's ``plugins``); the
            discovery plugin is taken from there when present, else built from its
            ``plugins`` entry.

    Raises:
        ConfigError: the config is invalid, the reference names no plugin, the plugin
            is not an endpoint discovery (no ``endpoints`` / ``watch``), or its
            constructor failed (the error names its path).
    """
    if not isinstance(config, EndpointPickerConfig):
        config = load_config(config)
    section = config.data_layer or {}
    entry = section.get("discovery")
    if not entry:
        return None
    ref = entry["pluginRef"]
    path = "dataLayer.discovery.pluginRef"
    known = dict(plugins or {})
    if ref in known:
        instance = known[ref]
    else:
        try:
            spec = config.plugin(ref)
        except KeyError:
            raise ConfigError(f"no plugin named {ref!r}", path=path, value=ref) from None
        try:
            instance = spec.cls(spec.name, spec.params, PluginHandle(table, known))
        except InferenceSchedError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"plugin {spec.name!r} ({spec.type}) failed to start: {type(exc).__name__}: {exc}",
                path=spec.path,
            ) from exc
    if not isinstance(instance, Discovery):
        raise ConfigError(
            f"plugin {ref!r} is not an endpoint discovery (it needs endpoints() and watch())",
            path=path,
            value=ref,
        )
    return DiscoveryRunner(instance, table, ref)
