"""Event data sources and the topology extractor (llm-d-router ``endpoint-notification-
source``, ``k8s-notification-source``, ``topology-extractor``; ``pkg/epp/framework/plugins/
datalayer/source/notifications/factory.go``, ``.../extractor/topology/extractor.go``;
``docs/plugins/endpoint-notification-source.md``, ``docs/plugins/k8s-notification-source.md``,
``docs/plugins/topology-extractor.md``).

Two kinds of events reach extractors here, instead of polled pages:

* **endpoint events**: an endpoint was added to the table, its metadata changed, or it
  left. :class:`EndpointNotificationSource` turns the table's ``on_upsert`` /
  ``on_remove`` hooks into calls of each attached extractor's ``extract_endpoint``
  (:class:`~inference_sched.framework.interfaces.EndpointExtractor`) and writes what it
  returns to ``table.attributes`` (a key mapped to ``None`` is removed). Endpoints
  already in the table when it attaches are delivered at once.
* **Kubernetes object events**: :class:`K8sNotificationSource` watches one
  group/version/kind and hands each add/update/delete (the object as a plain mapping)
  to its extractors' ``extract_notification``. It needs the ``[k8s]`` extra; the event
  stream is injectable for tests.

:class:`TopologyExtractor` is both kinds of extractor: from the endpoint's labels it
writes the attribute ``Topology/<its name>`` (a :class:`Topology`); when the hostname
label is missing, the ``spec.hostname`` of the endpoint's Ready pod (from Pod events)
stands in. :func:`attach_notification_sources` wires a config's sources and
extractors to a table, creating the default sources an extractor needs (llm-d-router's
``RegisterDependencies``).

A raising extractor never breaks discovery: the error is counted per extractor and
logged at most once a minute.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal

import attrs

from inference_sched.errors import ConfigError, InferenceSchedError
from inference_sched.framework.config import EndpointPickerConfig, load_config
from inference_sched.framework.contracts import Topology
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.interfaces import EndpointExtractor, Handle, NotificationSource
from inference_sched.framework.registry import register
from inference_sched.framework.types import Endpoint
from inference_sched.params import NoParams, ParamCheck, param, string
from inference_sched.state.attributes import attribute_key
from inference_sched.state.table import EndpointTable

__all__ = [
    "DEFAULT_TOPOLOGY_LABELS",
    "POD_GVK",
    "TOPOLOGY_DATA_TYPE",
    "EndpointNotificationSource",
    "GroupVersionKind",
    "K8sNotificationSource",
    "K8sNotificationSourceParams",
    "NotificationEvent",
    "Topology",
    "TopologyExtractor",
    "TopologyExtractorParams",
    "attach_notification_sources",
    "is_object_ready",
    "pod_name_of",
]

logger = logging.getLogger(__name__)

TOPOLOGY_DATA_TYPE: Final = "Topology"
"""Data type of the topology attribute; the key is ``Topology/<extractor name>``."""
DEFAULT_TOPOLOGY_LABELS: Final = {
    "hostname": "kubernetes.io/hostname",
    "rack": "topology.kubernetes.io/rack",
    "zone": "topology.kubernetes.io/zone",
    "region": "topology.kubernetes.io/region",
}
"""Pod label read for each topology field unless a parameter names another."""
_LOG_INTERVAL_S: Final = 60.0
_RANK_SUFFIX: Final = re.compile(r"-rank-\d+$")
_K8S_HINT: Final = (
    "k8s-notification-source needs the [k8s] extra: pip install 'inference-sched[k8s]'"
)


# --------------------------------------------------------------------------- values
@attrs.frozen
class GroupVersionKind:
    """A Kubernetes object type; ``group`` is ``""`` for the core API."""

    group: str
    version: str
    kind: str

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, else ``group/version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:  # Go's schema.GroupVersionKind.String()
        return f"{self.group}/{self.version}, Kind={self.kind}"


POD_GVK: Final = GroupVersionKind("", "v1", "Pod")
"""core/v1 Pod, the type the topology extractor watches."""


@attrs.frozen
class NotificationEvent:
    """One Kubernetes object event as extractors see it."""

    type: Literal["add-or-update", "delete"]
    object: Mapping[str, Any]
    """The object as a plain mapping (API field spelling: ``metadata.name``,
    ``spec.hostname``, ``status.conditions``)."""


def is_object_ready(obj: Mapping[str, Any]) -> bool:
    """Whether the object has condition ``Ready`` with status ``"True"``."""
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions if isinstance(conditions, list) else ():
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def pod_name_of(endpoint: Endpoint) -> str:
    """The pod an endpoint belongs to: its ``pod_name`` when discovery set one, else its
    name without GIE's ``-rank-<i>`` suffix (one pod serves one endpoint per port)."""
    return endpoint.pod_name or _RANK_SUFFIX.sub("", endpoint.name)


class _ErrorLog:
    """Per-extractor error counts, logged at most once per interval per extractor."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.errors: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, extractor: Any, what: str) -> None:
        name = str(getattr(extractor, "name", type(extractor).__name__))
        now = time.monotonic()
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + 1
            due = now - self._last.get(name, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S
            if due:
                self._last[name] = now
            count = self.errors[name]
        if due:
            logger.exception(
                "%s: extractor %s failed on %s (%d errors so far)", self.owner, name, what, count
            )


def _describe_extractor(extractor: Any) -> str:
    return str(getattr(extractor, "name", type(extractor).__name__))


# --------------------------------------------------------------------------- endpoint events
@register("endpoint-notification-source")
class EndpointNotificationSource:
    """Delivers the table's endpoint add/update/remove events to endpoint extractors and
    writes the attributes they return."""

    type: ClassVar[str]
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name
        self._extractors: list[Any] = []
        self._tables: list[EndpointTable] = []
        self._log = _ErrorLog(name)

    @property
    def errors(self) -> Mapping[str, int]:
        """Failures per extractor name."""
        return dict(self._log.errors)

    @property
    def extractors(self) -> tuple[Any, ...]:
        """The attached extractors, in attach order."""
        return tuple(self._extractors)

    def attach(self, table: EndpointTable, extractors: Sequence[Any]) -> None:
        """Deliver ``table``'s endpoint events to ``extractors`` from now on, starting
        with the endpoints already there.

        Raises:
            ConfigError: an extractor has no ``extract_endpoint``, or the source is
                already attached to another table.
        """
        for extractor in extractors:
            if not callable(getattr(extractor, "extract_endpoint", None)):
                raise ConfigError(
                    f"{self.name}: plugin {_describe_extractor(extractor)!r} is not an "
                    "endpoint extractor (it needs extract_endpoint)",
                    value=_describe_extractor(extractor),
                )
        if self._tables and self._tables[0] is not table:
            raise ConfigError(f"{self.name}: already attached to another table")
        new = [e for e in extractors if not any(e is x for x in self._extractors)]
        with table.lock:
            if not self._tables:
                self._tables.append(table)
                table.on_upsert(self._on_upsert)
                table.on_remove(self._on_remove)
            self._extractors.extend(new)
            for endpoint in table:
                self._deliver(table, table.row(endpoint.name), endpoint, new)

    def _on_upsert(self, row: int, endpoint: Endpoint) -> None:
        self._deliver(self._tables[0], row, endpoint, self._extractors)

    def _deliver(
        self, table: EndpointTable, row: int, endpoint: Endpoint, extractors: Iterable[Any]
    ) -> None:
        for extractor in extractors:
            try:
                values = extractor.extract_endpoint(endpoint)
                for key, value in values.items():
                    if value is None:
                        table.attributes.delete(row, key)
                    else:
                        table.attributes.put(row, key, value)
            except Exception:  # noqa: BLE001 - a broken extractor must not break discovery
                self._log.failed(extractor, endpoint.name)

    def _on_remove(self, row: int, endpoint: Endpoint) -> None:
        # The table drops the row's attributes itself; extractors with per-endpoint
        # state of their own hear about it here. The table does not guard its removal
        # listeners, so nothing may escape.
        for extractor in self._extractors:
            removed = getattr(extractor, "endpoint_removed", None)
            if removed is None:
                continue
            try:
                removed(endpoint)
            except Exception:  # noqa: BLE001 - see above
                self._log.failed(extractor, endpoint.name)


# --------------------------------------------------------------------------- k8s events
def _required_name(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.strip():
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty string", value)


@attrs.frozen
class K8sNotificationSourceParams:
    """Parameters of ``k8s-notification-source`` (llm-d-router)."""

    version: str = param(alias="version", check=_required_name)
    """API version (``v1``, ``v1beta1``); required."""
    kind: str = param(alias="kind", check=_required_name)
    """Object kind (``Pod``, ``Service``); required."""
    group: str = param("", alias="group", check=string)
    """API group of the watched type (``""`` for core types such as Pod)."""


EventStream = Callable[[], Iterable[Mapping[str, Any]]]
"""Makes one watch stream of raw events ``{"type": "ADDED" | "MODIFIED" | "DELETED" |
"BOOKMARK" | "ERROR", "object": ...}``."""


@register("k8s-notification-source")
class K8sNotificationSource:
    """Watches one Kubernetes object type and delivers its events to notification
    extractors (``extract_notification(event)``).

    The watch runs in a daemon thread once :meth:`attach` is called, in namespace
    :attr:`namespace` (environment ``NAMESPACE``, else ``default``); a failed watch is
    logged and retried with backoff. :attr:`stream_factory` replaces the Kubernetes
    client (tests replay events through it, or call :meth:`deliver`).
    """

    type: ClassVar[str]
    Params = K8sNotificationSourceParams

    def __init__(self, name: str, params: K8sNotificationSourceParams, handle: Handle) -> None:
        self.name = name
        self.gvk = GroupVersionKind(params.group, params.version, params.kind)
        self.namespace = os.environ.get("NAMESPACE") or "default"
        self.stream_factory: EventStream | None = None
        self.retry_s = 1.0
        self.max_retry_s = 30.0
        self.num_events = 0
        """Events delivered (add/update/delete)."""
        self._extractors: list[Any] = []
        self._log = _ErrorLog(name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def errors(self) -> Mapping[str, int]:
        """Failures per extractor name."""
        return dict(self._log.errors)

    def attach(self, table: EndpointTable, extractors: Sequence[Any]) -> None:
        """Deliver this type's events to ``extractors`` and start the watch.

        Raises:
            ConfigError: an extractor has no ``extract_notification``, or it declares a
                ``notification_gvk`` other than this source's type.
            ImportError: no :attr:`stream_factory` and the ``kubernetes`` package is
                missing (the message names the extra).
        """
        for extractor in extractors:
            if not callable(getattr(extractor, "extract_notification", None)):
                raise ConfigError(
                    f"{self.name}: plugin {_describe_extractor(extractor)!r} is not a "
                    "notification extractor (it needs extract_notification)",
                    value=_describe_extractor(extractor),
                )
            wanted = getattr(extractor, "notification_gvk", None)
            if wanted is not None and wanted != self.gvk:
                raise ConfigError(
                    f"{self.name}: extractor {_describe_extractor(extractor)!r} reads "
                    f"{wanted} but this source watches {self.gvk}",
                    value=_describe_extractor(extractor),
                )
        self._extractors.extend(e for e in extractors if not any(e is x for x in self._extractors))
        if self.stream_factory is None:
            self.stream_factory = self._default_stream_factory()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"{self.name}-watch", daemon=True
            )
            self._thread.start()

    def deliver(self, raw: Mapping[str, Any]) -> bool:
        """Hand one raw watch event to the extractors; return whether it was delivered
        (``BOOKMARK`` and unknown types are not; ``ERROR`` is logged)."""
        kind = raw.get("type")
        obj = raw.get("object")
        if kind == "ERROR":
            logger.warning("%s: watch error event: %r", self.name, obj)
            return False
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return False
        if not isinstance(obj, Mapping):
            to_dict = getattr(obj, "to_dict", None)
            obj = to_dict() if callable(to_dict) else None
        if not isinstance(obj, Mapping):
            return False
        event = NotificationEvent("delete" if kind == "DELETED" else "add-or-update", obj)
        self.num_events += 1
        for extractor in list(self._extractors):
            try:
                extractor.extract_notification(event)
            except Exception:  # noqa: BLE001 - a broken extractor must not stop the watch
                self._log.failed(extractor, f"{self.gvk.kind} event")
        return True

    def stop(self) -> None:
        """End the watch thread (at its next event or retry)."""
        self._stop.set()

    def _run(self) -> None:
        delay = self.retry_s
        while not self._stop.is_set():
            factory = self.stream_factory
            assert factory is not None, "attach sets the stream factory"
            try:
                for raw in factory():
                    self.deliver(raw)
                    delay = self.retry_s
                    if self._stop.is_set():
                        return
            except Exception:
                logger.exception("%s: watch of %s failed; retrying", self.name, self.gvk)
            self._stop.wait(delay)
            delay = min(2 * delay, self.max_retry_s)

    def _default_stream_factory(self) -> EventStream:
        try:
            kubernetes = importlib.import_module("kubernetes")
            dynamic = importlib.import_module("kubernetes.dynamic")
            importlib.import_module("kubernetes.config")
        except ImportError as exc:
            raise ImportError(_K8S_HINT) from exc
        gvk, namespace = self.gvk, self.namespace

        def stream() -> Iterator[Mapping[str, Any]]:
            config = kubernetes.config
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            client = dynamic.DynamicClient(kubernetes.client.ApiClient())
            resource = client.resources.get(api_version=gvk.api_version, kind=gvk.kind)
            for event in client.watch(resource, namespace=namespace, timeout=300):
                obj = event.get("raw_object") or event.get("object")
                yield {"type": event.get("type"), "object": obj}

        return stream


# --------------------------------------------------------------------------- topology
def _label_key(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)


@attrs.frozen
class TopologyExtractorParams:
    """Parameters of ``topology-extractor`` (llm-d-router); an empty string means the
    default label."""

    hostname: str = param(DEFAULT_TOPOLOGY_LABELS["hostname"], alias="hostname", check=_label_key)
    """Pod label holding the host name (missing: the Ready pod's ``spec.hostname``)."""
    rack: str = param(DEFAULT_TOPOLOGY_LABELS["rack"], alias="rack", check=_label_key)
    """Pod label holding the rack."""
    zone: str = param(DEFAULT_TOPOLOGY_LABELS["zone"], alias="zone", check=_label_key)
    """Pod label holding the zone."""
    region: str = param(DEFAULT_TOPOLOGY_LABELS["region"], alias="region", check=_label_key)
    """Pod label holding the region."""


@register("topology-extractor")
class TopologyExtractor:
    """Writes ``Topology/<name>`` from an endpoint's labels on every add/update (and for
    the endpoints already in the table when its source attaches); removes it when no
    field has a value. A missing hostname label is filled from the pod's
    ``spec.hostname`` when Pod events arrive (a Ready pod; cleared when the pod is
    deleted or not Ready)."""

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    Params = TopologyExtractorParams
    notification_gvk: ClassVar[GroupVersionKind] = POD_GVK

    def __init__(self, name: str, params: TopologyExtractorParams, handle: Handle) -> None:
        self.name = name
        self.labels = {
            field: getattr(params, field) or default
            for field, default in DEFAULT_TOPOLOGY_LABELS.items()
        }
        self.data_key = attribute_key(TOPOLOGY_DATA_TYPE, name)
        self._table = handle.table
        self._lock = threading.Lock()
        self._unlabelled: dict[str, set[str]] = {}  # pod -> endpoints without hostname label
        self._hostnames: dict[str, str] = {}  # pod -> spec.hostname of the Ready pod

    def topology_of(self, endpoint: Endpoint) -> Topology:
        """The endpoint's topology from its labels (and the pod's cached hostname)."""
        labels = endpoint.labels
        hostname = labels.get(self.labels["hostname"], "")
        if not hostname:
            with self._lock:
                hostname = self._hostnames.get(pod_name_of(endpoint), "")
        return Topology(
            hostname,
            labels.get(self.labels["rack"], ""),
            labels.get(self.labels["zone"], ""),
            labels.get(self.labels["region"], ""),
        )

    def extract_endpoint(self, endpoint: Endpoint) -> Mapping[str, Any]:
        """``{Topology/<name>: Topology}``, or ``{...: None}`` (remove) with no values."""
        pod = pod_name_of(endpoint)
        with self._lock:
            if endpoint.labels.get(self.labels["hostname"]):
                self._forget(pod, endpoint.name)
            else:
                self._unlabelled.setdefault(pod, set()).add(endpoint.name)
        topology = self.topology_of(endpoint)
        return {self.data_key: topology if topology else None}

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Stop tracking a removed endpoint (its attributes go with its row)."""
        with self._lock:
            self._forget(pod_name_of(endpoint), endpoint.name)

    def _forget(self, pod: str, name: str) -> None:
        names = self._unlabelled.get(pod)
        if names is not None:
            names.discard(name)
            if not names:
                del self._unlabelled[pod]

    def extract_notification(self, event: NotificationEvent) -> None:
        """A Pod event: cache a Ready pod's ``spec.hostname`` and stamp it on the pod's
        endpoints that lack the hostname label (keeping their rack/zone/region)."""
        metadata = event.object.get("metadata")
        pod = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(pod, str) or not pod:
            return
        if event.type == "delete" or not is_object_ready(event.object):
            with self._lock:
                self._hostnames.pop(pod, None)
            return
        spec = event.object.get("spec")
        hostname = spec.get("hostname") if isinstance(spec, Mapping) else None
        if not isinstance(hostname, str) or not hostname:
            return
        with self._lock:
            self._hostnames[pod] = hostname
            names = sorted(self._unlabelled.get(pod, ()))
        table = self._table
        with table.lock:
            for name in names:
                endpoint = table.get(name)
                if endpoint is None:
                    continue
                row = table.row(name)
                old = table.attributes.get(row, self.data_key)
                base = old if isinstance(old, Topology) else self.topology_of(endpoint)
                table.attributes.put(row, self.data_key, attrs.evolve(base, hostname=hostname))


_source: type[NotificationSource] = EndpointNotificationSource
_k8s_source: type[NotificationSource] = K8sNotificationSource
_extractor: type[EndpointExtractor] = TopologyExtractor


# --------------------------------------------------------------------------- wiring
def attach_notification_sources(
    config: Any,
    table: EndpointTable,
    *,
    plugins: Mapping[str, Any] | None = None,
    kubernetes: bool = False,
) -> list[Any]:
    """Attach a config's notification sources to ``table`` and return them.

    Each ``dataLayer.sources`` entry whose plugin is a notification source (has
    ``attach``) gets its ``extractors``. Then, as llm-d-router's ``RegisterDependencies``:
    every endpoint extractor of the config that no source feeds is attached to the
    ``endpoint-notification-source`` instance (the configured one of that name, else a
    new one); with ``kubernetes=True`` every notification extractor that no source
    feeds gets a ``k8s-notification-source`` named ``<extractor>/pod`` for its
    ``notification_gvk`` (without Kubernetes, e.g. with ``dataLayer.discovery``, such
    sources do not bind, as upstream).

    Args:
        config: a loaded config, or anything ``load_config`` takes.
        table: the table whose events are delivered.
        plugins: instances already built, by name (a scheduler's ``plugins``); the rest
            are built from the config.
        kubernetes: whether the process runs against a Kubernetes API.

    Raises:
        ConfigError: the config is invalid, a reference names no plugin, an extractor
            does not fit its source, or a constructor failed (naming its path).
    """
    if not isinstance(config, EndpointPickerConfig):
        config = load_config(config)
    handle = PluginHandle(table, plugins)

    def instance(ref: str, path: str) -> Any:
        known = handle.plugins()
        if ref in known:
            return known[ref]
        try:
            spec = config.plugin(ref)
        except KeyError:
            raise ConfigError(f"no plugin named {ref!r}", path=path, value=ref) from None
        return _build(spec.cls, spec.name, spec.params, spec.path, spec.type)

    def _build(cls: Any, name: str, params: Any, path: str, type_: str) -> Any:
        try:
            built = cls(name, params, handle)
        except InferenceSchedError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"plugin {name!r} ({type_}) failed to start: {type(exc).__name__}: {exc}",
                path=path,
            ) from exc
        handle.add_plugin(name, built)
        return built

    sources: list[Any] = []
    fed_endpoint: list[Any] = []
    fed_k8s: list[Any] = []
    for i, entry in enumerate((config.data_layer or {}).get("sources") or ()):
        path = f"dataLayer.sources[{i}]"
        source = instance(entry["pluginRef"], f"{path}.pluginRef")
        if not callable(getattr(source, "attach", None)):
            continue  # a polled source: the scrapers run it
        extractors = [
            instance(e["pluginRef"], f"{path}.extractors[{k}].pluginRef")
            for k, e in enumerate(entry.get("extractors") or ())
        ]
        try:
            source.attach(table, extractors)
        except ConfigError as exc:
            raise ConfigError(exc.message, path=f"{path}.extractors", value=exc.value) from None
        sources.append(source)
        fed = fed_k8s if isinstance(source, K8sNotificationSource) else fed_endpoint
        fed.extend(extractors)

    extractors = [
        instance(spec.name, spec.path)
        for spec in config.plugins
        if callable(getattr(spec.cls, "extract_endpoint", None))
        or callable(getattr(spec.cls, "extract_notification", None))
    ]
    need_endpoint = [
        e
        for e in extractors
        if callable(getattr(e, "extract_endpoint", None)) and not any(e is f for f in fed_endpoint)
    ]
    if need_endpoint:
        name = EndpointNotificationSource.type
        default = handle.plugins().get(name)
        if default is None:
            default = _build(EndpointNotificationSource, name, NoParams(), "(default)", name)
        default.attach(table, need_endpoint)
        if not any(default is s for s in sources):
            sources.append(default)
    for extractor in extractors:
        gvk = getattr(extractor, "notification_gvk", None)
        if not kubernetes or gvk is None or any(extractor is f for f in fed_k8s):
            continue
        params = K8sNotificationSourceParams(version=gvk.version, kind=gvk.kind, group=gvk.group)
        name = f"{extractor.name}/pod"
        k8s = _build(K8sNotificationSource, name, params, "(default)", K8sNotificationSource.type)
        k8s.attach(table, [extractor])
        sources.append(k8s)
    return sources
