"""Kubernetes endpoint discovery: pods selected like an InferencePool (``docs/discovery.md``).

:class:`PodDiscovery` lists and watches the pods of one namespace that match a label
selector and turns each *ready* pod into one endpoint per active target port:

* ready means condition ``Ready=True`` and no ``deletionTimestamp`` (a terminating pod
  stops receiving new requests at once), and a pod IP;
* the endpoint of target port ``targetPorts[i]`` is called ``<pod>-rank-<i>``; its address
  is the pod IP and its labels are the pod's labels (so ``llm-d.ai/role`` sets the role);
* the pod annotation ``inference.networking.k8s.io/active-ports: "8000,8001"`` (or llm-d's
  ``llm-d.ai/active-ports``) restricts the ports to its intersection with the target
  ports; ``<i>`` stays the index in the pool's target ports, so names are stable.

The selector and target ports come from an InferencePool manifest
(:func:`parse_inference_pool`) or from standalone flags (:func:`parse_selector`,
:func:`parse_target_ports`), as GIE's ``--endpoint-selector`` / ``--endpoint-target-ports``.

The ``kubernetes`` client is imported lazily (the ``[k8s]`` extra). Its API object and
watch are injectable, so tests replay recorded watch streams without a cluster.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.types import Endpoint
from inference_sched.state.labels import LabelSelector

__all__ = [
    "ACTIVE_PORTS_ANNOTATION",
    "LLMD_ACTIVE_PORTS_ANNOTATION",
    "DEFAULT_ACTIVE_PORTS_ANNOTATIONS",
    "MAX_TARGET_PORTS",
    "PodDiscovery",
    "active_ports",
    "endpoint_name",
    "is_pod_ready",
    "label_selector",
    "parse_inference_pool",
    "parse_selector",
    "parse_target_ports",
    "pod_endpoints",
]

logger = logging.getLogger(__name__)

ACTIVE_PORTS_ANNOTATION: Final = "inference.networking.k8s.io/active-ports"
"""GIE's pod annotation listing the target ports that currently serve (``"8000,8001"``)."""
LLMD_ACTIVE_PORTS_ANNOTATION: Final = "llm-d.ai/active-ports"
"""llm-d's spelling of the same annotation."""
DEFAULT_ACTIVE_PORTS_ANNOTATIONS: Final = (ACTIVE_PORTS_ANNOTATION, LLMD_ACTIVE_PORTS_ANNOTATION)
"""Annotations read by default, in order; the first one present on a pod wins."""
MAX_TARGET_PORTS: Final = 8
"""InferencePool v1 allows 1..8 unique target ports."""

_HTTP_GONE: Final = 410
_IMPORT_HINT: Final = (
    "Kubernetes discovery needs the [k8s] extra: pip install 'inference-sched[k8s]'"
)


def _import_kubernetes() -> Any:
    """The ``kubernetes`` package (untyped: ``Any`` at this boundary)."""
    try:
        module = importlib.import_module("kubernetes")
        importlib.import_module("kubernetes.config")
        importlib.import_module("kubernetes.watch")
        importlib.import_module("kubernetes.client.exceptions")
    except ImportError as exc:
        raise ImportError(_IMPORT_HINT) from exc
    return module


# ------------------------------------------------------------------ pool configuration
def check_selector(selector: object, path: str = "selector") -> dict[str, str]:
    """Validate a matchLabels selector: a non-empty mapping of non-empty strings to strings.

    An empty selector would select every pod of the namespace, so it is refused.
    """
    if not isinstance(selector, Mapping):
        raise ConfigError(
            f"expected a mapping of label to value, got {type(selector).__name__}",
            path=path,
            value=selector,
        )
    if not selector:
        raise ConfigError(
            "must not be empty (it would select every pod in the namespace)", path=path
        )
    out: dict[str, str] = {}
    for key, value in selector.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"label key must be a non-empty string, got {key!r}", path=path)
        if not isinstance(value, str):
            raise ConfigError(
                f"label value must be a string, got {value!r}", path=f"{path}.{key}", value=value
            )
        out[key.strip()] = value.strip()
    return out


def check_target_ports(ports: object, path: str = "targetPorts") -> list[int]:
    """Validate target ports: 1..8 unique integers in 1..65535, order kept."""
    if not isinstance(ports, Sequence) or isinstance(ports, str | bytes):
        raise ConfigError(
            f"expected a list of port numbers, got {type(ports).__name__}", path=path, value=ports
        )
    if not 1 <= len(ports) <= MAX_TARGET_PORTS:
        raise ConfigError(
            f"expected 1..{MAX_TARGET_PORTS} ports, got {len(ports)}", path=path, value=ports
        )
    seen: set[int] = set()
    for i, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(
                f"expected a port number in 1..65535, got {port!r}", path=f"{path}[{i}]", value=port
            )
        if port in seen:
            raise ConfigError(f"duplicate port {port}", path=f"{path}[{i}]", value=port)
        seen.add(port)
    return list(ports)


def parse_selector(text: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` (GIE's ``--endpoint-selector``) into a selector.

    Raises:
        ConfigError: an item is not ``key=value`` or the selector is empty.
    """
    selector: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {item!r}", path="endpoint-selector")
        selector[key.strip()] = value.strip()
    return check_selector(selector, "endpoint-selector")


def parse_target_ports(text: str) -> list[int]:
    """Parse ``8000,8001`` (GIE's ``--endpoint-target-ports``) into target ports.

    Raises:
        ConfigError: an item is not a number, or the ports break the 1..8 unique rule.
    """
    ports: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item.isdigit():
            raise ConfigError(f"expected a port number, got {item!r}", path="endpoint-target-ports")
        ports.append(int(item))
    return check_target_ports(ports, "endpoint-target-ports")


def label_selector(selector: Mapping[str, str]) -> str:
    """The API server's ``labelSelector`` string for a matchLabels selector."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def parse_inference_pool(manifest: Mapping[str, Any]) -> tuple[dict[str, str], list[int]]:
    """``(selector, target_ports)`` of an InferencePool manifest (a parsed YAML/JSON dict).

    Reads v1 ``spec.selector.matchLabels`` and ``spec.targetPorts[].number``; the
    v1alpha2 shape (``spec.selector`` as a plain map, ``spec.targetPortNumber``) is
    accepted too.

    Raises:
        ConfigError: with ``path`` naming the field, e.g. ``spec.targetPorts[1].number``.
    """
    if not isinstance(manifest, Mapping):
        raise ConfigError(f"expected a mapping, got {type(manifest).__name__}", path="")
    kind = manifest.get("kind")
    if kind is not None and kind != "InferencePool":
        raise ConfigError(f"expected kind InferencePool, got {kind!r}", path="kind", value=kind)
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise ConfigError("expected a mapping with selector and targetPorts", path="spec")
    raw_selector = spec.get("selector")
    if raw_selector is None:
        raise ConfigError("missing (InferencePool needs a pod selector)", path="spec.selector")
    if not isinstance(raw_selector, Mapping):
        raise ConfigError(
            f"expected a mapping, got {type(raw_selector).__name__}", path="spec.selector"
        )
    if "matchExpressions" in raw_selector:
        raise ConfigError(
            "not supported: InferencePool selects pods by matchLabels only",
            path="spec.selector.matchExpressions",
        )
    if "matchLabels" in raw_selector:
        selector = check_selector(raw_selector["matchLabels"], "spec.selector.matchLabels")
    else:  # v1alpha2: the selector is the label map itself
        selector = check_selector(raw_selector, "spec.selector")
    if "targetPorts" in spec:
        raw_ports = spec["targetPorts"]
        if not isinstance(raw_ports, list):
            raise ConfigError(
                f"expected a list of {{number: port}}, got {type(raw_ports).__name__}",
                path="spec.targetPorts",
            )
        numbers: list[object] = []
        for i, item in enumerate(raw_ports):
            if not isinstance(item, Mapping) or "number" not in item:
                raise ConfigError(
                    f"expected {{number: port}}, got {item!r}", path=f"spec.targetPorts[{i}]"
                )
            numbers.append(item["number"])
        try:
            ports = check_target_ports(numbers, "spec.targetPorts")
        except ConfigError as exc:  # point at the item's field: spec.targetPorts[i].number
            path = exc.path + ".number" if exc.path.endswith("]") else exc.path
            raise ConfigError(exc.message, path=path, value=exc.value) from None
    elif "targetPortNumber" in spec:
        ports = check_target_ports([spec["targetPortNumber"]], "spec.targetPortNumber")
    else:
        raise ConfigError("missing (1..8 ports)", path="spec.targetPorts")
    return selector, ports


# ------------------------------------------------------------------ pod -> endpoints
def endpoint_name(pod_name: str, port_index: int) -> str:
    """GIE's endpoint name for a pod's ``port_index``-th target port."""
    return f"{pod_name}-rank-{port_index}"


def is_pod_ready(pod: Any) -> bool:
    """Whether a ``V1Pod`` takes traffic: condition Ready=True and not terminating."""
    if pod.metadata.deletion_timestamp is not None:
        return False
    status = pod.status
    conditions = (status.conditions if status is not None else None) or ()
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def active_ports(
    pod: Any,
    target_ports: Sequence[int],
    annotations: Sequence[str] = DEFAULT_ACTIVE_PORTS_ANNOTATIONS,
) -> list[int]:
    """The pod's active target ports, in target-port order.

    Without an active-ports annotation every target port is active. With one, only the
    listed ports that are also target ports are (GIE's rule: an entry that is not a
    number, or not a target port, is ignored; an empty list means no port serves).
    """
    pod_annotations = pod.metadata.annotations or {}
    value = next((pod_annotations[a] for a in annotations if a in pod_annotations), None)
    if value is None:
        return list(target_ports)
    listed = {int(s) for s in (p.strip() for p in str(value).split(",")) if s.isdigit()}
    return [port for port in target_ports if port in listed]


def pod_endpoints(
    pod: Any,
    target_ports: Sequence[int],
    *,
    active_ports_annotation: str | Sequence[str] = DEFAULT_ACTIVE_PORTS_ANNOTATIONS,
    metrics_port: int | None = None,
) -> list[Endpoint]:
    """The endpoints of one ``V1Pod``: one per active target port, ``[]`` unless ready.

    Args:
        pod: a ``kubernetes.client.V1Pod`` (or any object of that shape).
        target_ports: the pool's target ports; the index names the endpoint.
        active_ports_annotation: annotation name(s) restricting the active ports.
        metrics_port: GIE's deprecated ``--model-server-metrics-port``; used only when the
            pool has exactly one target port (else each endpoint's metrics are on its port).
    """
    if not is_pod_ready(pod):
        return []
    ip = pod.status.pod_ip
    if not ip:
        return []  # Ready without an IP does not happen in practice; nothing to route to
    names = _annotation_names(active_ports_annotation)
    active = set(active_ports(pod, target_ports, names))
    labels = dict(pod.metadata.labels or {})
    separate_metrics = metrics_port if len(target_ports) == 1 else None
    return [
        Endpoint(
            endpoint_name(pod.metadata.name, i),
            ip,
            port,
            labels,
            metrics_port=separate_metrics,
            node_address=getattr(pod.status, "host_ip", None) or None,
            pod_name=pod.metadata.name,
        )
        for i, port in enumerate(target_ports)
        if port in active
    ]


def _annotation_names(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _resource_version(obj: Any) -> str | None:
    """``metadata.resourceVersion`` of a model object or of a raw dict (BOOKMARK events)."""
    if isinstance(obj, Mapping):
        metadata = obj.get("metadata") or {}
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        return str(version) if version else None
    metadata = getattr(obj, "metadata", None)
    version = getattr(metadata, "resource_version", None)
    return str(version) if version else None


# ------------------------------------------------------------------ the watch
class PodDiscovery:
    """Endpoints from the ready pods matching ``selector`` in ``namespace``.

    Lists the pods, then watches them from the list's resourceVersion. Each watch
    request ends after ``watch_timeout_s`` (server side) and resumes from the last
    resourceVersion seen (events and bookmarks); a ``410 Gone`` (the version is too old)
    triggers a fresh list. API errors are logged and retried with exponential backoff,
    and the last known endpoints stay in place meanwhile.

    Args:
        namespace: the pool's namespace.
        selector: matchLabels selector (see :func:`parse_inference_pool`).
        target_ports: 1..8 unique ports.
        api: a ``kubernetes.client.CoreV1Api`` (or anything with its
            ``list_namespaced_pod``); default: in-cluster config, else ``~/.kube/config``.
        watch_factory: makes a ``kubernetes.watch.Watch``-like object (tests inject one).
        active_ports_annotation: annotation name(s) restricting a pod's active ports.
        metrics_port: see :func:`pod_endpoints`.
        watch_timeout_s: server-side timeout of one watch request.
        retry_s: first delay after an error; doubles up to ``max_retry_s``.

    Raises:
        ImportError: the ``kubernetes`` package is not installed.
        ConfigError: invalid selector or target ports.
    """

    def __init__(
        self,
        namespace: str,
        selector: Mapping[str, str],
        target_ports: Sequence[int],
        *,
        api: Any = None,
        watch_factory: Callable[[], Any] | None = None,
        active_ports_annotation: str | Sequence[str] = DEFAULT_ACTIVE_PORTS_ANNOTATIONS,
        metrics_port: int | None = None,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        self._k8s = _import_kubernetes()
        if not namespace:
            raise ConfigError("must not be empty", path="namespace")
        self.namespace = namespace
        self.selector = check_selector(selector)
        self.target_ports = check_target_ports(list(target_ports))
        self.active_ports_annotation = _annotation_names(active_ports_annotation)
        self.metrics_port = metrics_port
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.resource_version: str | None = None
        """Where the next watch resumes; ``None`` means list first."""
        self._api = api
        self._watch_factory = watch_factory or self._default_watch
        self._lock = threading.Lock()
        self._by_pod: dict[str, tuple[Endpoint, ...]] = {}
        self._stop = threading.Event()
        self._active_watch: Any = None

    @classmethod
    def from_inference_pool(
        cls, manifest: Mapping[str, Any], *, namespace: str | None = None, **kwargs: Any
    ) -> PodDiscovery:
        """A discovery for an InferencePool manifest (its namespace unless one is given)."""
        selector, ports = parse_inference_pool(manifest)
        metadata = manifest.get("metadata") or {}
        ns = namespace or (metadata.get("namespace") if isinstance(metadata, Mapping) else None)
        if not ns:
            raise ConfigError("no namespace in the manifest and none given", path="metadata")
        return cls(str(ns), selector, ports, **kwargs)

    # -------------------------------------------------------------- state
    def endpoints(self) -> list[Endpoint]:
        """Endpoints of the ready pods known now, sorted by name."""
        with self._lock:
            found = [e for eps in self._by_pod.values() for e in eps]
        return sorted(found, key=lambda e: e.name)

    def convert(self, pod: Any) -> list[Endpoint]:
        """Endpoints of ``pod`` under this pool (``[]`` if it no longer matches)."""
        if not LabelSelector.from_match_labels(self.selector).matches(pod.metadata.labels or {}):
            return []
        return pod_endpoints(
            pod,
            self.target_ports,
            active_ports_annotation=self.active_ports_annotation,
            metrics_port=self.metrics_port,
        )

    def relist(self) -> bool:
        """List the pods, replace the known state and return whether endpoints changed."""
        pods = self._get_api().list_namespaced_pod(
            self.namespace, label_selector=label_selector(self.selector)
        )
        fresh = {}
        for pod in pods.items or ():
            endpoints = tuple(self.convert(pod))
            if endpoints:
                fresh[pod.metadata.name] = endpoints
        with self._lock:
            changed = fresh != self._by_pod
            self._by_pod = fresh
        self.resource_version = _resource_version(pods)
        return changed

    def handle_event(self, event: Mapping[str, Any]) -> bool:
        """Apply one watch event ``{"type": ..., "object": V1Pod}``; return whether it changed.

        ``ADDED`` and ``MODIFIED`` recompute the pod's endpoints (it may have become
        (un)ready, changed IP, labels or active ports), ``DELETED`` drops them,
        ``BOOKMARK`` only moves the resourceVersion, and ``ERROR`` 410 relists.

        Raises:
            kubernetes.client.exceptions.ApiException: an ``ERROR`` event other than 410.
            DataError: an unknown event type.
        """
        kind = event.get("type")
        obj: Any = event.get("object")
        if kind == "BOOKMARK":
            self.resource_version = _resource_version(obj) or self.resource_version
            return False
        if kind == "ERROR":
            status = obj if isinstance(obj, Mapping) else getattr(obj, "to_dict", dict)()
            if status.get("code") == _HTTP_GONE:
                return self._expired()
            raise self._k8s.client.exceptions.ApiException(
                status=status.get("code"), reason=f"{status.get('reason')}: {status.get('message')}"
            )
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise DataError(f"unknown watch event type {kind!r}", source="pod watch")
        name = obj.metadata.name
        endpoints = () if kind == "DELETED" else tuple(self.convert(obj))
        with self._lock:
            old = self._by_pod.pop(name, ())
            if endpoints:
                self._by_pod[name] = endpoints
        self.resource_version = _resource_version(obj) or self.resource_version
        return old != endpoints

    def _expired(self) -> bool:
        logger.info(
            "pod watch in %s expired at resourceVersion %s (410 Gone); relisting",
            self.namespace,
            self.resource_version,
        )
        self.resource_version = None
        return self.relist()

    # -------------------------------------------------------------- watching
    def watch_once(self) -> Iterator[list[Endpoint]]:
        """One watch request (blocking): yield the endpoints after every event.

        Lists first when there is no resourceVersion to resume from (and yields the
        listed state); on ``410 Gone`` relists and yields the listed state. Other errors
        propagate. :meth:`watch` loops over this with retries.
        """
        if self.resource_version is None:
            self.relist()
            yield self.endpoints()
        watcher = self._watch_factory()
        self._active_watch = watcher
        stream = watcher.stream(
            self._get_api().list_namespaced_pod,
            self.namespace,
            label_selector=label_selector(self.selector),
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout_s,
            allow_watch_bookmarks=True,
        )
        try:
            for event in stream:
                self.handle_event(event)
                yield self.endpoints()
                if self._stop.is_set():
                    break
        except self._k8s.client.exceptions.ApiException as exc:
            if exc.status != _HTTP_GONE:
                raise
            self._expired()
            yield self.endpoints()
        finally:
            self._active_watch = None
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # closes the HTTP response when we leave early

    def stop(self) -> None:
        """Make :meth:`watch` end (also interrupts a blocked watch request)."""
        self._stop.set()
        watcher = self._active_watch
        if watcher is not None:
            watcher.stop()

    def snapshots(self) -> Iterator[list[Endpoint]]:
        """Blocking: the listed endpoints, then each changed snapshot, until :meth:`stop`.

        Errors are logged and retried with backoff; the last snapshot stays valid.
        """
        self._stop.clear()
        last: list[Endpoint] | None = None
        delay = self.retry_s
        while not self._stop.is_set():
            started = time.monotonic()
            seen = 0
            try:
                for snapshot in self.watch_once():
                    seen += 1
                    delay = self.retry_s
                    if snapshot != last:
                        last = snapshot
                        yield snapshot
                    if self._stop.is_set():
                        return
            except Exception:
                logger.error(
                    "pod watch in %s failed; retrying in %.1f s with the last %d endpoints",
                    self.namespace,
                    delay,
                    len(last or ()),
                    exc_info=True,
                )
                self._stop.wait(delay)
                delay = min(2 * delay, self.max_retry_s)
                continue
            if not seen and time.monotonic() - started < 1.0:
                self._stop.wait(self.retry_s)  # a watch that closes at once: do not spin

    async def watch(self) -> AsyncGenerator[list[Endpoint], None]:
        """Yield the endpoints after the first list, then after each change, until stopped.

        The blocking client runs in a worker thread; snapshots arrive on the caller's loop.
        """
        snapshots = self.snapshots()
        try:
            while True:
                snapshot = await asyncio.to_thread(next, snapshots, None)
                if snapshot is None:
                    return
                yield snapshot
        finally:
            self.stop()

    # -------------------------------------------------------------- defaults
    def _get_api(self) -> Any:
        if self._api is None:
            config = self._k8s.config
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = self._k8s.client.CoreV1Api()
        return self._api

    def _default_watch(self) -> Any:
        # return_type spelled out: the injected API's method may carry no :rtype: doc.
        return self._k8s.watch.Watch(return_type="V1Pod")
