"""llm-d-router's ``file-discovery`` and ``multicluster-file-discovery``: the pool read
from an endpoints file, so the scheduler runs without Kubernetes (llm-d-router
``pkg/epp/framework/plugins/datalayer/discovery/file/{plugin.go,multicluster.go}``;
``docs/plugins/file-discovery.md``, ``docs/plugins/multicluster-file-discovery.md``).

The file (YAML or JSON, at most 1 MiB) holds ``endpoints: [{name, namespace, address,
port, labels}]``. Each entry is checked on its own: an invalid one is *skipped* with a
reason naming it (``endpoints[2] 'vllm-2': invalid IPv4 address '10.0.0'``), the
valid ones are applied, and endpoints no longer listed are deleted. As upstream, the
first load is stricter: any invalid entry, and any file problem (missing, unreadable,
over 1 MiB, not YAML, nesting or alias bombs, no ``endpoints`` list), fails the start;
a later reload that hits a file problem keeps the last good list.

Upstream watches with fsnotify and re-attaches after a rename or a ConfigMap symlink
swap. Here the file is polled (``poll_s``, 1 s): ``stat`` follows the symlink, and a
changed device, inode, mtime or size (or an mtime too recent to trust) triggers a read,
a changed content hash a reload. Same outcome on every filesystem, no dependency.

These classes are *plugins* (configured under ``plugins`` and named by
``dataLayer.discovery.pluginRef``); :func:`~inference_sched.datalayer.discovery.
discovery_from_config` builds and runs the configured one. The older
:class:`~inference_sched.datalayer.discovery.FileDiscovery` reads this project's own,
stricter file format (integer ports, ``name=ip:port`` shorthand) for the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import attrs

from inference_sched.datalayer.discovery import load_document
from inference_sched.errors import DataError
from inference_sched.framework.interfaces import EndpointDiscovery, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Endpoint
from inference_sched.params import ParamCheck, boolean, describe, param, string

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_DUMP_ENDPOINTS",
    "MAX_FILE_BYTES",
    "METRICS_ADDRESS_LABEL",
    "METRICS_PORT_LABEL",
    "FileDiscoveryParams",
    "FileDiscoveryPlugin",
    "FileEntry",
    "LoadResult",
    "MulticlusterFileDiscoveryPlugin",
    "SkippedEntry",
    "is_hostname",
    "parse_endpoints_file",
    "read_endpoints_file",
]

logger = logging.getLogger(__name__)

MAX_FILE_BYTES: Final = 1 << 20
"""Largest endpoints file read (llm-d-router ``maxEndpointsFileSize``, 1 MiB)."""
DEFAULT_NAMESPACE: Final = "default"
"""Namespace of an entry that gives none."""
METRICS_ADDRESS_LABEL: Final = "metricsAddress"
"""multicluster: label holding the host (or IP) whose metrics are scraped."""
METRICS_PORT_LABEL: Final = "metricsPort"
"""multicluster: label holding the metrics port (default: the endpoint port)."""
MAX_DUMP_ENDPOINTS: Final = 100
"""Endpoint names :meth:`FileDiscoveryPlugin.dump_state` lists at most."""

_KNOWN_KEYS: Final = ("name", "namespace", "address", "port", "labels")
# A file modified this recently may be rewritten within the same mtime tick with the
# same size, so (mtime, size) cannot prove it unchanged: hash it (git's "racy clean").
_RACY_S: Final = 2.0


# --------------------------------------------------------------------------- results
@attrs.frozen
class FileEntry:
    """One valid entry of the file, as read (the endpoint it becomes is :attr:`endpoint`)."""

    index: int
    """Position in ``endpoints``."""
    name: str
    namespace: str
    """``default`` when the entry gives none (upstream keys endpoints by namespace/name)."""
    address: str
    port: int
    labels: Mapping[str, str]
    metrics_address: str | None = None
    """multicluster only: the ``metricsAddress`` label."""
    metrics_port: int | None = None
    """multicluster only: the ``metricsPort`` label (default the endpoint port)."""

    @property
    def endpoint(self) -> Endpoint:
        """The table endpoint (named by the entry name; metrics at ``address:port``
        unless the multicluster labels redirect them)."""
        endpoint = Endpoint(self.name, self.address, self.port, self.labels)
        if self.metrics_address is None:
            return endpoint
        metrics_port = self.port if self.metrics_port is None else self.metrics_port
        return attrs.evolve(
            endpoint, metrics_port=metrics_port, metrics_address=self.metrics_address
        )


@attrs.frozen
class SkippedEntry:
    """An entry left out of the pool, and why."""

    index: int
    name: str
    """The entry's name when it has a usable one, else ``""``."""
    reason: str

    def __str__(self) -> str:
        who = f" {self.name!r}" if self.name else ""
        return f"endpoints[{self.index}]{who}: {self.reason}"


@attrs.frozen
class LoadResult:
    """One parse of an endpoints file."""

    entries: tuple[FileEntry, ...]
    """Valid entries, in file order."""
    skipped: tuple[SkippedEntry, ...]
    """Invalid entries, in file order."""

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints of the valid entries, sorted by name."""
        return sorted((e.endpoint for e in self.entries), key=lambda e: e.name)


class _Invalid(ValueError):
    """An entry failed a check (becomes a :class:`SkippedEntry`)."""


# --------------------------------------------------------------------------- parsing
def is_hostname(host: str) -> bool:
    """Whether ``host`` is an RFC-1123 host name: dot-separated labels of letters,
    digits and inner hyphens (1-63 characters each), an optional trailing dot, at most
    253 characters, and at least one letter (so ``10.0.0`` is not a host name).

    The rule of llm-d-router ``discovery/file/multicluster.go`` (``isValidHostname``).
    """
    if not host.isascii():
        return False
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    has_letter = False
    for label in name.split("."):
        if not 1 <= len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        for c in label:
            if c.isalpha():
                has_letter = True
            elif not (c.isdigit() or c == "-"):
                return False
    return has_letter


def _ipv4(address: str) -> str:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise _Invalid(f"invalid IPv4 address {address!r}") from None
    return address


def _host_or_ip(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not is_hostname(address):
            raise _Invalid(
                f"invalid host {address!r}: expected an IP or an RFC-1123 host name"
            ) from None
    return address


def _port(value: object, key: str) -> int:
    """A port given as a string of digits (Go's ``strconv.Atoi``: an optional ``+``)."""
    if not isinstance(value, str):
        raise _Invalid(
            f'{key}: expected a string such as "8000" (quote it in YAML), got {describe(value)}'
        )
    digits = value[1:] if value.startswith("+") else value
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        raise _Invalid(f"invalid {key} {value!r}: expected an integer in 1..65535")
    port = int(digits)
    if not 1 <= port <= 65535:
        raise _Invalid(f"invalid {key} {value!r}: expected an integer in 1..65535")
    return port


def _string(entry: Mapping[Any, Any], key: str, *, required: bool) -> str:
    value = entry.get(key)
    if value is None or value == "":
        if required:
            raise _Invalid(f"missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"{key}: expected a string, got {describe(value)}")
    return value


def _labels(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _Invalid(f"labels: expected a mapping of strings, got {describe(raw)}")
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _Invalid(
                f"labels: {describe(k)}: {describe(v)} must map a string to a string "
                "(quote numbers and booleans in YAML)"
            )
    return dict(raw)


def _parse_entry(index: int, entry: object, *, multicluster: bool) -> FileEntry:
    if not isinstance(entry, Mapping):
        raise _Invalid(f"expected a mapping with name, address and port, got {describe(entry)}")
    name = _string(entry, "name", required=True)
    namespace = _string(entry, "namespace", required=False) or DEFAULT_NAMESPACE
    address = _string(entry, "address", required=True)
    address = _host_or_ip(address) if multicluster else _ipv4(address)
    if "port" not in entry or entry["port"] is None:
        raise _Invalid("missing 'port'")
    port = _port(entry["port"], "port")
    labels = _labels(entry.get("labels"))
    metrics_address: str | None = None
    metrics_port: int | None = None
    if multicluster and labels.get(METRICS_ADDRESS_LABEL):
        metrics_address = labels[METRICS_ADDRESS_LABEL]
        try:
            _host_or_ip(metrics_address)
        except _Invalid as exc:
            raise _Invalid(f"label {METRICS_ADDRESS_LABEL}: {exc}") from None
        if labels.get(METRICS_PORT_LABEL):
            metrics_port = _port(labels[METRICS_PORT_LABEL], f"label {METRICS_PORT_LABEL}")
    return FileEntry(index, name, namespace, address, port, labels, metrics_address, metrics_port)


def parse_endpoints_file(
    data: object, *, source: str = "<string>", multicluster: bool = False
) -> LoadResult:
    """Check every entry of a parsed endpoints document.

    Args:
        data: the document (a mapping with an ``endpoints`` list; other top-level keys
            are ignored, as upstream's decoder does; ``endpoints`` absent or null is an
            empty pool).
        source: the file, for error messages.
        multicluster: accept host names and IPv6 (``multicluster-file-discovery``) and
            read the ``metricsAddress`` / ``metricsPort`` labels.

    Returns:
        Valid entries and skipped ones. A skipped entry names the reason: a missing or
        non-string ``name`` / ``address``, an address that is not an IPv4 literal (or,
        multicluster, not an IP or RFC-1123 host name), a ``port`` that is not a string
        of an integer in 1..65535, labels that are not strings, a name used by an
        earlier entry, a bad ``metricsAddress`` / ``metricsPort`` label. Unknown entry
        keys are ignored (logged), as upstream's decoder ignores them.

    Raises:
        DataError: the document is not a mapping, or ``endpoints`` is not a list.
    """
    if not isinstance(data, Mapping):
        raise DataError(
            f"expected a mapping with an 'endpoints' list, got {type(data).__name__}",
            source=source,
        )
    raw = data.get("endpoints")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise DataError(f"endpoints: expected a list, got {type(raw).__name__}", source=source)
    entries: list[FileEntry] = []
    skipped: list[SkippedEntry] = []
    first: dict[str, int] = {}
    for i, item in enumerate(raw):
        raw_name = item.get("name") if isinstance(item, Mapping) else None
        shown = raw_name if isinstance(raw_name, str) else ""
        try:
            entry = _parse_entry(i, item, multicluster=multicluster)
            if entry.name in first:
                raise _Invalid(f"duplicate name (first used by endpoints[{first[entry.name]}])")
        except _Invalid as exc:
            skipped.append(SkippedEntry(i, shown, str(exc)))
            continue
        assert isinstance(item, Mapping), "a valid entry is a mapping"
        unknown = sorted(str(k) for k in item if k not in _KNOWN_KEYS)
        if unknown:
            logger.warning(
                "%s: endpoints[%d] %r: ignoring unknown key(s) %s; known: %s",
                source,
                i,
                entry.name,
                unknown,
                list(_KNOWN_KEYS),
            )
        first[entry.name] = i
        entries.append(entry)
    return LoadResult(tuple(entries), tuple(skipped))


def read_endpoints_file(path: str | os.PathLike[str], *, multicluster: bool = False) -> LoadResult:
    """Read and check an endpoints file (see :func:`parse_endpoints_file`).

    A ``.json`` file is parsed as JSON, anything else as YAML (JSON is YAML too).

    Raises:
        DataError: the file is missing or unreadable, larger than 1 MiB, not UTF-8, not
            valid YAML/JSON (including nesting deeper than the shared limits, alias
            bombs, huge integers), empty, or not shaped like an endpoints file.
    """
    text = _read_text(Path(path))
    fmt: Literal["yaml", "json"] = "json" if Path(path).suffix.lower() == ".json" else "yaml"
    return parse_endpoints_file(
        load_document(text, str(path), fmt), source=str(path), multicluster=multicluster
    )


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DataError(
            f"cannot read endpoints file: {exc.strerror or exc}", source=source
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise DataError(
            f"endpoints file exceeds the {MAX_FILE_BYTES} byte (1 MiB) limit", source=source
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason}", source=source) from None


# --------------------------------------------------------------------------- plugins
def _path(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.strip():
        raise ParamCheck("path", "a non-empty file path", value)


@attrs.frozen
class FileDiscoveryParams:
    """Parameters of ``file-discovery`` / ``multicluster-file-discovery`` (llm-d-router)."""

    path: str = param(alias="path", check=_path)
    """The endpoints file (YAML or JSON); required."""
    watch_file: bool = param(False, alias="watchFile", check=boolean)
    """Reload the file when it changes (edits, renames, symlink swaps); else read once."""


@register("file-discovery")
class FileDiscoveryPlugin:
    """The pool from an endpoints file (``dataLayer.discovery.pluginRef``).

    Nothing is read when the plugin is built: :meth:`start` (or the first
    :meth:`endpoints` / :meth:`watch`) does the first load, whose failure is fatal.
    """

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    Params = FileDiscoveryParams
    is_multicluster: ClassVar[bool] = False

    def __init__(self, name: str, params: FileDiscoveryParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self.path = Path(params.path)
        self.poll_s = 1.0
        """Seconds between checks of the file while watching."""
        self.last_error: DataError | None = None
        """The file error of the latest check, ``None`` after a good read."""
        self.num_reloads = 0
        """Reloads that changed the endpoint list."""
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._result = LoadResult((), ())
        self._stat_key: tuple[int, int, int, int] | None = None
        self._digest: bytes | None = None

    # ---------------------------------------------------------------- state
    @property
    def is_ready(self) -> bool:
        """Whether the first load succeeded (upstream's ``Ready()`` channel)."""
        return self._ready.is_set()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until the first load succeeded; return whether it did in time."""
        return self._ready.wait(timeout_s)

    @property
    def entries(self) -> tuple[FileEntry, ...]:
        """The valid entries of the last good load."""
        return self._result.entries

    @property
    def skipped(self) -> tuple[SkippedEntry, ...]:
        """The entries the last good load skipped."""
        return self._result.skipped

    def endpoints(self) -> list[Endpoint]:
        """The endpoints of the last good load, sorted by name (loads first if needed).

        Raises:
            DataError: the first load failed (see :meth:`start`).
        """
        self.start()
        return self._result.endpoints

    def dump_state(self) -> dict[str, Any]:
        """The loaded endpoint names (sorted, at most 100) for a debug endpoint; never
        addresses or labels (upstream ``DumpState``)."""
        names = sorted(f"{e.namespace}/{e.name}" for e in self._result.entries)
        return {
            "endpoints": names[:MAX_DUMP_ENDPOINTS],
            "totalEndpoints": len(names),
            "maxEndpoints": MAX_DUMP_ENDPOINTS,
            "truncated": len(names) > MAX_DUMP_ENDPOINTS,
        }

    # ---------------------------------------------------------------- loading
    def start(self) -> None:
        """The first load (once; later calls do nothing).

        Raises:
            DataError: the file cannot be read or parsed, or an entry is invalid (every
                invalid entry is listed); the plugin stays not ready.
        """
        if self._ready.is_set():
            return
        with self._lock:
            if self._ready.is_set():
                return
            result = self._read()
            if result.skipped:
                reasons = "; ".join(str(s) for s in result.skipped)
                error = DataError(
                    f"{self.type}: initial load failed: {len(result.skipped)} invalid "
                    f"entr{'y' if len(result.skipped) == 1 else 'ies'}: {reasons}",
                    source=str(self.path),
                )
                self.last_error = error
                self._stat_key = self._digest = None
                raise error
            self._result = result
            self._ready.set()
        logger.info("%s: loaded %d endpoints from %s", self.name, len(result.entries), self.path)

    def poll_once(self) -> bool:
        """Check the file once; reload it when it changed; return whether the endpoint
        list changed. Invalid entries are skipped and logged, each naming the entry.

        Raises:
            DataError: the file is missing, unreadable or malformed (the last good list
                stays in place); reported again only after a good read.
        """
        self.start()
        with self._lock:
            old = self._result
            try:
                result = self._read(only_if_changed=True)
            except _Unchanged:
                return False
            for skipped in result.skipped:
                logger.warning("%s: %s: skipped %s", self.name, self.path, skipped)
            self._result = result
        changed = result.endpoints != old.endpoints
        if changed:
            self.num_reloads += 1
            logger.info("%s: reloaded %s: %d endpoints", self.name, self.path, len(result.entries))
        return changed

    def _read(self, *, only_if_changed: bool = False) -> LoadResult:
        source = str(self.path)
        try:
            st = self.path.stat()  # follows symlinks: a swapped target has a new inode
        except OSError as exc:
            self._stat_key = self._digest = None  # re-read whatever appears next
            self.last_error = DataError(
                f"cannot read endpoints file: {exc.strerror or exc}", source=source
            )
            raise self.last_error from None
        stat_key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        racy = time.time() - st.st_mtime_ns / 1e9 < _RACY_S
        if only_if_changed and stat_key == self._stat_key and not racy:
            raise _Unchanged
        try:
            text = _read_text(self.path)
        except DataError as exc:
            self._stat_key = self._digest = None
            self.last_error = exc
            raise
        digest = hashlib.sha256(text.encode()).digest()
        self._stat_key = stat_key
        if only_if_changed and digest == self._digest:
            raise _Unchanged
        self._digest = digest
        fmt: Literal["yaml", "json"] = "json" if self.path.suffix.lower() == ".json" else "yaml"
        try:
            result = parse_endpoints_file(
                load_document(text, source, fmt),
                source=source,
                multicluster=self.is_multicluster,
            )
        except DataError as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return result

    # ---------------------------------------------------------------- watching
    async def watch(self) -> AsyncGenerator[list[Endpoint], None]:
        """Yield the first load's endpoints; with ``watchFile``, then the new list after
        each change until :meth:`stop` (without it the list never changes and the
        iteration ends).

        Raises:
            DataError: the first load failed.
        """
        self._stop.clear()
        yield self.endpoints()
        if not self.params.watch_file:
            return
        reported = ""
        while not self._stop.is_set():
            await asyncio.sleep(self.poll_s)
            try:
                changed = self.poll_once()
            except DataError as exc:
                if str(exc) != reported:  # on transitions, not on every poll
                    logger.error("%s: failed to reload: %s; keeping the last list", self.name, exc)
                    reported = str(exc)
                continue
            if reported:
                logger.info("%s: %s is readable again", self.name, self.path)
                reported = ""
            if changed:
                yield self.endpoints()

    def stop(self) -> None:
        """End :meth:`watch` at its next check."""
        self._stop.set()


class _Unchanged(Exception):
    """The file did not change since the last read."""


@register("multicluster-file-discovery")
class MulticlusterFileDiscoveryPlugin(FileDiscoveryPlugin):
    """:class:`FileDiscoveryPlugin` whose endpoints are peer clusters: an address may be
    an IP (v4 or v6) or an RFC-1123 host name, and the labels ``metricsAddress`` /
    ``metricsPort`` (default the endpoint port) move the metrics scrape."""

    stability: ClassVar[str] = "alpha"
    is_multicluster: ClassVar[bool] = True


_: type[EndpointDiscovery] = FileDiscoveryPlugin
_mc: type[EndpointDiscovery] = MulticlusterFileDiscoveryPlugin
