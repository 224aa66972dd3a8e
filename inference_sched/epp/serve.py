"""``inference-sched serve``: the whole EPP in one asyncio process (``docs/epp.md``,
"Run it").

What GIE's EPP binary wires in ``cmd/epp/runner`` (gie.md §3.3, §7), in one event loop:
endpoint discovery (static list, endpoints file, the config's ``dataLayer.discovery``, or
an InferencePool's pods), the data-layer scrapers with endpoint health, notification
sources, the KV-event subscribers of a precise prefix producer, the ext_proc gRPC server
with its health service, ``/metrics`` (GIE's names) and, optionally, the OpenAI HTTP
gateway. Scheduling, scrapes and discovery all run on the loop's thread, which is the
table's concurrency contract (docs/architecture.md), so no lock is taken per request.

SIGTERM / SIGINT drain: health goes NOT_SERVING, the servers stop accepting and give the
requests in flight ``drain_timeout_s``, then the data layer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from inference_sched.datalayer.discovery import (
    Discovery,
    DiscoveryRunner,
    FileDiscovery,
    StaticDiscovery,
    discovery_from_config,
)
from inference_sched.datalayer.health import DEFAULT_UNHEALTHY_AFTER, EndpointHealth
from inference_sched.epp.director import Decision, Director, Rejection
from inference_sched.errors import ConfigError
from inference_sched.framework.config import EndpointPickerConfig, load_config
from inference_sched.framework.config.fallbacks import with_fallbacks
from inference_sched.framework.scheduler import Scheduler

__all__ = [
    "DEFAULT_GRPC_HEALTH_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_METRICS_PORT",
    "POOL_GROUPS",
    "Serve",
    "ServeOptions",
    "inference_pool_discovery",
]

log = logging.getLogger(__name__)

DEFAULT_GRPC_PORT: Final = 9002
DEFAULT_GRPC_HEALTH_PORT: Final = 9003
DEFAULT_METRICS_PORT: Final = 9090
POOL_GROUPS: Final = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")
"""InferencePool API groups tried in order (GIE v1, then the v1alpha2 one)."""
_SUBSCRIBING_TYPES: Final = frozenset(
    ("precise-prefix-cache-producer", "precise-prefix-cache-scorer")
)
"""Plugin types whose ``start()`` opens a KV-event subscriber (``plugins/precise_prefix.py``)."""
_POOL_VERSIONS: Final = {
    "inference.networking.k8s.io": "v1",
    "inference.networking.x-k8s.io": "v1alpha2",
}


@attrs.define
class ServeOptions:
    """What ``serve`` runs; the CLI flags one to one (``docs/epp.md`` "Flags").

    Ports are OS-assigned when 0; ``None`` turns the server off (health: served on the
    ext_proc port).
    """

    config: EndpointPickerConfig | str | Path | None = None
    """A loaded config, YAML text or a :class:`~pathlib.Path`; ``None``: GIE's default."""
    endpoints: Sequence[str] = ()
    endpoints_file: str | None = None
    inference_pool: str | None = None
    """``NAMESPACE/NAME`` of an InferencePool to follow."""
    pool_group: str | None = None
    endpoint_selector: str | None = None
    endpoint_target_ports: str | None = None
    pool_namespace: str = "default"
    host: str = "0.0.0.0"  # GIE listens on every interface; tests pass 127.0.0.1
    grpc_port: int = DEFAULT_GRPC_PORT
    grpc_health_port: int | None = DEFAULT_GRPC_HEALTH_PORT
    metrics_port: int | None = DEFAULT_METRICS_PORT
    http_port: int | None = None
    refresh_metrics_interval_s: float = 0.05
    metrics_staleness_threshold_s: float = 2.0
    endpoint_unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER
    endpoint_unhealthy_on_refused: bool = True
    num_fallbacks: int = 1
    ext_proc_fallbacks: bool = False
    """Send the fallbacks over ext_proc too (``ip:port,ip:port``). Off by default: Envoy's
    ORIGINAL_DST cluster (GIE's reference gateway) reads one address and answers 503 to
    a list; proxies that walk the list (Envoy's override_host policy, agentgateway)
    can turn it on. The HTTP gateway always uses them."""
    disable_endpoint_subset_filter: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    body_mode: str = "FULL_DUPLEX_STREAMED"
    drain_timeout_s: float = 5.0
    pool_name: str = ""
    """Label of the ``inference_pool_*`` metrics."""
    seed: int | None = None


class Serve:
    """The EPP process: build with options, ``await start()``, ``await stop()``.

    Raises:
        ConfigError: a bad config, endpoint, or an endpoint source missing/duplicated.
    """

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        config = options.config
        if not isinstance(config, EndpointPickerConfig):
            config = load_config(config)
        self.config = with_fallbacks(config, options.num_fallbacks)
        for warning in self.config.warnings:
            log.warning("config: %s", warning)
        self.scheduler = Scheduler.from_config(self.config, seed=options.seed)
        self.table = self.scheduler.table
        self.health = EndpointHealth(
            self.table,
            unhealthy_after=options.endpoint_unhealthy_after,
            unhealthy_on_refused=options.endpoint_unhealthy_on_refused,
        )
        self.director = Director(
            self.scheduler,
            disable_subset_filter=options.disable_endpoint_subset_filter,
            seed=options.seed,
        )
        self.discovery = self._discovery()
        self.scrapers: list[Any] = []
        self.notification_sources: list[Any] = []
        self.extproc: Any = None
        self.gateway: Any = None
        self.registry: Any = None
        self._metrics_runner: Any = None
        self.metrics_port: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._started_plugins: list[Any] = []
        self._stopped = asyncio.Event()

    # ---------------------------------------------------------------- sources
    def _discovery(self) -> DiscoveryRunner:
        o = self.options
        given = [
            ("--endpoint", bool(o.endpoints)),
            ("--endpoints-file", o.endpoints_file is not None),
            ("--inference-pool", o.inference_pool is not None),
            ("--endpoint-selector", o.endpoint_selector is not None),
        ]
        from_config = discovery_from_config(self.config, self.table, plugins=self.scheduler.plugins)
        chosen = [flag for flag, on in given if on]
        if from_config is not None:
            chosen.append("dataLayer.discovery")
        if len(chosen) != 1:
            raise ConfigError(
                "expected exactly one endpoint source (--endpoint, --endpoints-file, "
                "--inference-pool, --endpoint-selector or the config's dataLayer.discovery), "
                f"got {chosen or 'none'}",
                path="endpoints",
            )
        if from_config is not None:
            return from_config
        source: Discovery
        if o.endpoints:
            source = StaticDiscovery(o.endpoints)
        elif o.endpoints_file is not None:
            source = FileDiscovery(o.endpoints_file)
        elif o.inference_pool is not None:
            source = inference_pool_discovery(o.inference_pool, group=o.pool_group)
        else:
            from inference_sched.datalayer.k8s import (
                PodDiscovery,
                parse_selector,
                parse_target_ports,
            )

            source = PodDiscovery(
                o.pool_namespace,
                parse_selector(o.endpoint_selector or ""),
                parse_target_ports(o.endpoint_target_ports or ""),
            )
        return DiscoveryRunner(source, self.table, chosen[0])

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start everything; the servers listen when this returns."""
        from inference_sched.datalayer.notifications import attach_notification_sources
        from inference_sched.datalayer.scraper import scrapers_for
        from inference_sched.epp.extproc import ExtProcServer

        o = self.options
        kubernetes = o.inference_pool is not None or o.endpoint_selector is not None
        if not kubernetes:  # a k8s watch lists first inside run(); the others load now
            self.discovery.start()
        self._spawn(self.discovery.run(), "discovery")
        self.notification_sources = attach_notification_sources(
            self.config, self.table, plugins=self.scheduler.plugins, kubernetes=kubernetes
        )
        self.scrapers = scrapers_for(
            self.scheduler, health=self.health, interval_s=o.refresh_metrics_interval_s
        )
        for scraper in self.scrapers:
            self._spawn(scraper.run(), type(scraper).__name__)
        self._start_subscribers()
        director: Any = self.director if o.ext_proc_fallbacks else _PrimaryOnly(self.director)
        self.extproc = ExtProcServer(
            director,
            host=o.host,
            port=o.grpc_port,
            health_port=o.grpc_health_port,
            max_body_bytes=o.max_body_bytes,
            body_mode=o.body_mode,
        )
        await self.extproc.start()
        if o.metrics_port is not None:
            await self._start_metrics(o.metrics_port)
        if o.http_port is not None:
            from inference_sched.epp.gateway import HttpGateway

            self.gateway = HttpGateway(
                self.director,
                host=o.host,
                port=o.http_port,
                health=self.health,
                max_attempts=1 + o.num_fallbacks,
                max_body_bytes=o.max_body_bytes,
            )
            await self.gateway.start()

    def _start_subscribers(self) -> None:
        """Open the KV-event subscribers of precise prefix producers now rather than at
        the first request, so the index is warm before traffic. Found by type name: the
        epp layer may not import plugins/ (docs/architecture.md)."""
        for plugin in self.scheduler.plugins.values():
            kind = getattr(type(plugin), "type", "")
            if kind not in _SUBSCRIBING_TYPES or plugin in self._started_plugins:
                continue
            if callable(getattr(plugin, "start", None)) and plugin.start():
                self._started_plugins.append(plugin)

    async def _start_metrics(self, port: int) -> None:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        from inference_sched.observability.prometheus import expose, registry_for

        scraper = next((s for s in self.scrapers if hasattr(s, "statuses")), None)
        self.registry = registry_for(
            self.scheduler,
            pool_name=self.options.pool_name,
            staleness_threshold_s=self.options.metrics_staleness_threshold_s,
            scraper=scraper,
            health=self.health,
        )
        self.registry.register(_ServeCollector(self))
        registry = self.registry

        async def metrics(request: web.Request) -> web.Response:
            response = web.Response(body=expose(registry))
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.options.host, port)
        await site.start()
        self._metrics_runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.metrics_port = int(sockets[0].getsockname()[1]) if sockets else port

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(_log_failure)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Drain the servers, then stop the data layer (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.options.drain_timeout_s
        servers = [s for s in (self.extproc, self.gateway) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers), return_exceptions=True)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self.discovery.stop()
        for scraper in self.scrapers:
            scraper.stop()
        for source in self.notification_sources:
            stop = getattr(source, "stop", None)
            if callable(stop):
                stop()
        for plugin in self.scheduler.plugins.values():
            # Every subscriber, also one a request opened: its thread holds sockets.
            close = getattr(plugin, "close", None)
            if getattr(type(plugin), "type", "") in _SUBSCRIBING_TYPES and callable(close):
                close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for scraper in self.scrapers:
            with contextlib.suppress(Exception):
                await scraper.aclose()

    def describe(self) -> str:
        """One line naming every listening port (what the CLI prints when ready)."""
        parts = [f"ext_proc {self.options.host}:{self.extproc.port}"]
        if self.extproc.health_port is not None:
            parts.append(f"grpc health :{self.extproc.health_port}")
        if self.metrics_port is not None:
            parts.append(f"metrics :{self.metrics_port}")
        if self.gateway is not None:
            parts.append(f"http :{self.gateway.port}")
        return (
            f"serve: {', '.join(parts)}; {len(self.table)} endpoint(s) from {self.discovery.name}"
        )

    async def run_until_signal(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Start, report, serve until SIGTERM/SIGINT, then drain."""
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, done.set)
        try:
            await self.start()
            if on_ready is not None:
                on_ready(self.describe())
            await done.wait()
        finally:
            await self.stop()


def inference_pool_discovery(
    ref: str, *, group: str | None = None, custom_api: Any = None, **kwargs: Any
) -> Any:
    """A :class:`~inference_sched.datalayer.k8s.PodDiscovery` for the InferencePool
    ``NAMESPACE/NAME``: its selector and target ports are read once from the API (group
    ``group``, else :data:`POOL_GROUPS` in order); ``kwargs`` go to the discovery.

    Raises:
        ConfigError: ``ref`` is not ``NAMESPACE/NAME`` or the pool was not found.
    """
    from inference_sched.datalayer.k8s import PodDiscovery, _import_kubernetes

    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ConfigError(
            f"expected NAMESPACE/NAME, got {ref!r}", path="--inference-pool", value=ref
        )
    if custom_api is None:
        k8s = _import_kubernetes()
        try:
            k8s.config.load_incluster_config()
        except k8s.config.ConfigException:
            k8s.config.load_kube_config()
        custom_api = k8s.client.CustomObjectsApi()
    errors = []
    for g in (group,) if group else POOL_GROUPS:
        try:
            manifest = custom_api.get_namespaced_custom_object(
                g, _POOL_VERSIONS.get(g, "v1"), namespace, "inferencepools", name
            )
        except Exception as exc:  # noqa: BLE001 - the next group may serve it
            errors.append(f"{g}: {type(exc).__name__}: {exc}")
            continue
        return PodDiscovery.from_inference_pool(manifest, namespace=namespace, **kwargs)
    raise ConfigError(
        f"InferencePool not found ({'; '.join(errors)})", path="--inference-pool", value=ref
    )


class _PrimaryOnly:
    """The Director for the ext_proc server when fallbacks stay off the wire: the
    decision's destination (header and ``envoy.lb`` metadata alike) is the pick alone."""

    def __init__(self, director: Director) -> None:
        self._director = director

    def __getattr__(self, name: str) -> Any:
        return getattr(self._director, name)

    def handle_request(
        self, headers: Mapping[str, str], body: bytes, *, subset_hint: Sequence[str] | None = None
    ) -> Decision | Rejection:
        outcome = self._director.handle_request(headers, body, subset_hint=subset_hint)
        if isinstance(outcome, Decision) and "," in outcome.destination:
            outcome.destination = outcome.destinations[0]
        return outcome


INFLIGHT_METRIC: Final = "inference_pool_endpoint_inflight_requests"
"""Ours (GIE has none): requests scheduled to the endpoint whose response has not ended,
the scheduler's in-flight accounting (``inflight-load-producer``)."""
ACTIVE_STREAMS_METRIC: Final = "inference_extension_active_requests"
"""Ours: ext_proc streams plus gateway requests being served now."""


class _ServeCollector:
    """The process's own gauges, read at scrape time (docs/metrics.md style)."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve

    def describe(self) -> list[Any]:
        return []  # collected lazily: nothing to check for name clashes up front

    def collect(self) -> Any:
        from prometheus_client.metrics_core import GaugeMetricFamily

        serve = self._serve
        pool = serve.options.pool_name
        inflight = GaugeMetricFamily(
            INFLIGHT_METRIC,
            "Requests scheduled to the endpoint whose response has not ended.",
            labels=["name", "endpoint"],
        )
        table = serve.table
        with table.lock:
            counts = [(e.name, float(table.inflight_requests[table.row(e.name)])) for e in table]
        for endpoint, count in sorted(counts):
            inflight.add_metric([pool, endpoint], count)
        yield inflight
        active = GaugeMetricFamily(
            ACTIVE_STREAMS_METRIC,
            "Requests being served now by the ext_proc server and the HTTP gateway.",
            labels=["name", "transport"],
        )
        if serve.extproc is not None:
            active.add_metric([pool, "ext_proc"], float(serve.extproc.num_active_streams))
        if serve.gateway is not None:
            active.add_metric([pool, "http"], float(serve.gateway.num_active))
        yield active


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("serve: %s stopped", task.get_name(), exc_info=task.exception())
