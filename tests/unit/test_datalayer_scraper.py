"""The asyncio scraper against real loopback HTTP servers, and the data-layer plugins."""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest

from inference_sched.datalayer.engines import ENGINE_LABEL_KEY
from inference_sched.datalayer.parse import EndpointSample
from inference_sched.datalayer.scraper import Scraper
from inference_sched.errors import DataError
from inference_sched.framework import registry
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import Endpoint
from inference_sched.state.staleness import is_stale, stale_mask
from inference_sched.state.table import EndpointTable

TIMEOUT_S = 0.3


def vllm(waiting: float, running: float, kv: float, adapters: str = "a,b") -> str:
    return (
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
        f'vllm:num_requests_running{{model_name="m"}} {running}\n'
        f'vllm:kv_cache_usage_perc{{model_name="m"}} {kv}\n'
        f'vllm:lora_requests_info{{max_lora="4",running_lora_adapters="{adapters}",'
        f'waiting_lora_adapters="w"}} 1.7e9\n'
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1\n'
    )


SGLANG = (
    "sglang:num_queue_reqs 5\nsglang:num_running_reqs 6\nsglang:token_usage 0.5\n"
    'sglang:cache_config_info{page_size="64",num_pages="300"} 1\n'
)


class Page:
    """What one loopback server answers: status, body and an optional delay."""

    def __init__(self, body: str, status: int = 200, delay_s: float = 0.0) -> None:
        self.body = body
        self.status = status
        self.delay_s = delay_s


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up closed the socket under a slow handler: expected


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (port 0) serving ``self.page`` at any path."""

    def __init__(self, page: Page, *, keep_alive: bool = False, listen: bool = True) -> None:
        self.page = page
        self.filtered_page: Page | None = None
        """Served instead of ``page`` to requests with a ``name[]`` query, when set."""
        self.requests = 0
        self.paths: list[str] = []
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps the connection (the scraper's callback path); 1.0 closes it.
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_GET(self) -> None:
                server.requests += 1
                server.paths.append(self.path)
                page = server.page
                if server.filtered_page is not None and "name%5B%5D=" in self.path:
                    page = server.filtered_page
                if page.delay_s:
                    server._release.wait(page.delay_s)
                body = page.body.encode()
                self.send_response(page.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Bound but not listening (listen=False): connections to the port are refused
        # until listen(), as for a model server that is (re)starting.
        self.httpd = _QuietServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.httpd.server_bind()
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        if listen:
            self.listen()

    def listen(self) -> None:
        self.httpd.server_activate()
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def servers() -> Iterator[list[LoopbackServer]]:
    started: list[LoopbackServer] = []
    yield started
    for server in started:
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def plugins() -> Iterator[ModuleType]:
    """The data-layer plugin module, registered; the registry is restored afterwards
    (other tests' expectations assume whatever the package itself registers)."""
    registry.is_registered("queue-scorer")  # load the built-ins first
    registered_before = registry.is_registered("metrics-data-source")
    kinds_before = dict(registry.KINDS)
    module = importlib.import_module("inference_sched.datalayer.plugins")
    if not registry.is_registered("metrics-data-source"):
        module = importlib.reload(module)  # a previous test undid the registration
    yield module
    if not registered_before:
        registry._forget("metrics-data-source")
        registry._forget("core-metrics-extractor")
        registry.KINDS.clear()
        registry.KINDS.update(kinds_before)


def make(plugins: ModuleType, table: EndpointTable, **kwargs: Any) -> tuple[Scraper, Any, Any]:
    handle = PluginHandle(table)
    source = plugins.MetricsDataSource(
        "metrics-data-source", plugins.MetricsDataSource.Params(), handle
    )
    extractor = plugins.CoreMetricsExtractor(
        "core-metrics-extractor", plugins.CoreMetricsExtractor.Params(), handle
    )
    kwargs.setdefault("timeout_s", TIMEOUT_S)
    return Scraper(table, source, extractor, **kwargs), source, extractor


def add(table: EndpointTable, name: str, port: int, **labels: str) -> int:
    table.add(Endpoint(name, "127.0.0.1", port, labels=labels))
    return table.row(name)


# ====================================================================== values land
def test_values_land_in_the_table(plugins: ModuleType, servers: list[LoopbackServer]) -> None:
    clock = Clock()
    table = EndpointTable(clock=clock)
    servers += [LoopbackServer(Page(vllm(2, 3, 0.25))), LoopbackServer(Page(SGLANG))]
    add(table, "v", servers[0].port)
    add(table, "s", servers[1].port, **{ENGINE_LABEL_KEY: "sglang"})
    scraper, _, _ = make(plugins, table)

    async def go() -> Any:
        async with scraper:
            return await scraper.scrape_once()

    report = asyncio.run(go())
    assert (report.written, report.failed) == (2, ())
    assert dict(table.metrics_of("v")) | {} == {
        "waiting": 2.0,
        "running": 3.0,
        "kv_usage_frac": 0.25,
        "kv_blocks_total": 1000.0,
        "block_size_tokens": 16.0,
        "max_loras": 4.0,
        "num_adapters": 3.0,
        "last_update_s": 100.0,
        "inflight_requests": 0.0,
        "inflight_tokens": 0.0,
    }
    assert table.adapters_of(table.row("v")) == (frozenset({"a", "b"}), frozenset({"w"}))
    s = table.metrics_of("s")
    assert (s["waiting"], s["running"], s["kv_usage_frac"]) == (5.0, 6.0, 0.5)
    assert (s["block_size_tokens"], s["kv_blocks_total"], s["max_loras"]) == (64.0, 300.0, 0.0)
    assert table.adapters_of(table.row("s")) == (frozenset(), frozenset())
    assert scraper.status("v").last_success_s == 100.0
    assert not scraper.status("v").failing


def test_one_bulk_update_per_cycle(
    plugins: ModuleType, servers: list[LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    table = EndpointTable(clock=Clock())
    for i in range(5):
        servers.append(LoopbackServer(Page(vllm(i, 0, 0.1))))
        add(table, f"e{i}", servers[-1].port)
    calls: list[list[int]] = []
    original = table.update_metrics

    def spy(rows: Any, **kwargs: Any) -> None:
        calls.append(sorted(np.asarray(rows).tolist()))
        original(rows, **kwargs)

    monkeypatch.setattr(table, "update_metrics", spy)
    scraper, _, _ = make(plugins, table, max_concurrency=2)

    async def go() -> None:
        async with scraper:
            await scraper.scrape_once()

    asyncio.run(go())
    assert calls == [[0, 1, 2, 3, 4]]
    assert table.waiting[:5].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_missing_family_keeps_the_previous_value(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    clock = Clock()
    table = EndpointTable(clock=clock)
    servers.append(LoopbackServer(Page(vllm(1, 2, 0.75))))
    add(table, "v", servers[0].port)
    scraper, _, _ = make(plugins, table)

    async def go() -> None:
        async with scraper:
            await scraper.scrape_once()
            servers[0].page = Page("vllm:num_requests_waiting 9\n")
            clock.now = 101.0
            await scraper.scrape_once()

    asyncio.run(go())
    m = table.metrics_of("v")
    assert (m["waiting"], m["running"], m["kv_usage_frac"], m["last_update_s"]) == (
        9.0,
        2.0,
        0.75,
        101.0,
    )
    assert table.adapters_of(0) == (frozenset({"a", "b"}), frozenset({"w"}))
    assert scraper.status("v").missing == (
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    )


# ====================================================================== failures
FAILURES = {
    "not-found": Page("", status=404),
    "garbage": Page("<html>not metrics</html>\n"),
    "malformed": Page("vllm:num_requests_waiting{oops 1\n"),
    "bad-value": Page("vllm:kv_cache_usage_perc 7\n"),
    "slow": Page(vllm(8, 8, 0.8), delay_s=5.0),
}


def test_failures_mark_only_that_endpoint_stale_and_recovery_clears_it(
    plugins: ModuleType, servers: list[LoopbackServer], caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    table = EndpointTable(clock=clock)
    names = ["ok", *FAILURES, "refused"]
    for i, name in enumerate(names):
        servers.append(LoopbackServer(Page(vllm(i, i, 0.5))))
        add(table, name, servers[-1].port)
    scraper, _, _ = make(plugins, table)
    caplog.set_level(logging.INFO, logger="inference_sched.datalayer.scraper")

    snapshot: dict[str, dict[str, float]] = {}

    async def go() -> tuple[Any, Any, Any, float, Any]:
        async with scraper:
            first = await scraper.scrape_once()
            for i, name in enumerate(names):
                servers[i].page = FAILURES.get(name, Page(vllm(50, 50, 0.9)))
            servers[-1].close()  # connection refused from now on
            clock.now = 200.0
            started = time.monotonic()
            second = await scraper.scrape_once()
            elapsed = time.monotonic() - started
            clock.now = 300.0
            third = await scraper.scrape_once()  # failing again: no new warning
            snapshot.update({name: dict(table.metrics_of(name)) for name in names})
            for i in range(len(names) - 1):
                servers[i].page = Page(vllm(70, 70, 0.7))
            clock.now = 400.0
            fourth = await scraper.scrape_once()
            return first, second, third, elapsed, fourth

    first, second, third, elapsed, fourth = asyncio.run(go())
    assert fourth.failed == ("refused",)
    assert first.failed == ()
    assert elapsed < TIMEOUT_S + 1.0  # the slow endpoint costs one timeout, no more
    assert set(second.failed) == set(FAILURES) | {"refused"}
    assert set(third.failed) == set(FAILURES) | {"refused"}
    assert second.written == third.written == 1

    # After the failures: "ok" is fresh, the failing ones kept their first values.
    assert (snapshot["ok"]["waiting"], snapshot["ok"]["last_update_s"]) == (50.0, 300.0)
    for i, name in enumerate(names[1:], start=1):
        m = snapshot[name]
        assert (m["waiting"], m["kv_usage_frac"], m["last_update_s"]) == (float(i), 0.5, 100.0)
        assert name in table  # never deleted
        # Out of the candidate set only where the connection was refused (at once):
        # the others failed twice, under the default unhealthy_after=3.
        assert table.is_healthy[table.row(name)] == (name != "refused")

    statuses = scraper.statuses()
    assert statuses["refused"].errors_total == 3  # still failing after recovery of others
    assert statuses["refused"].consecutive_failures == 3
    assert "ConnectError" in statuses["refused"].last_error
    for name in FAILURES:
        assert statuses[name].errors_total == 2
        assert statuses[name].consecutive_failures == 0
        assert not statuses[name].failing
    assert scraper.status("ok").errors_total == 0
    assert scraper.health.taken_out() == ("refused",)
    assert not table.is_healthy[table.row("refused")]  # still refusing: still out

    assert table.metrics_of("slow")["waiting"] == 70.0  # recovered
    assert table.metrics_of("refused")["last_update_s"] == 100.0
    rows = [table.row(n) for n in names]
    assert stale_mask(table, rows, 400.0, 0.2).tolist() == [False] * (len(names) - 1) + [True]
    assert is_stale(table, table.row("refused"), 400.0, 0.2)
    assert not is_stale(table, table.row("ok"), 400.0, 0.2)

    scraper_logs = [r for r in caplog.records if r.name == "inference_sched.datalayer.scraper"]
    warnings = [r for r in scraper_logs if r.levelno == logging.WARNING]
    assert sorted(_endpoint(r) for r in warnings) == sorted([*FAILURES, "refused"])
    health_logs = [r for r in caplog.records if r.name == "inference_sched.datalayer.health"]
    assert [(r.levelno, _endpoint(r)) for r in health_logs] == [(logging.WARNING, "refused")]
    recoveries = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert sorted(_endpoint(r) for r in recoveries) == sorted(FAILURES)
    messages = {_endpoint(r): r.getMessage() for r in warnings}
    assert messages["not-found"].endswith("HTTP 404 (keeping its last values; retrying)")
    assert "timed out after 0.3s" in messages["slow"]
    assert "none of the engine's metrics is on the page" in messages["garbage"]
    assert "malformed:1: malformed sample" in messages["malformed"]
    assert "bad-value:1: vllm:kv_cache_usage_perc: expected a fraction" in messages["bad-value"]


def _endpoint(record: logging.LogRecord) -> str:
    assert isinstance(record.args, tuple)
    return str(record.args[0])


def test_connection_refused_never_scraped(plugins: ModuleType) -> None:
    table = EndpointTable(clock=Clock())
    add(table, "gone", closed_port())
    scraper, _, _ = make(plugins, table)

    async def go() -> Any:
        async with scraper:
            return await scraper.scrape_once()

    assert asyncio.run(go()).failed == ("gone",)
    assert table.last_update_s[0] == -np.inf
    assert is_stale(table, 0, 100.0, 1e9)


def test_oversized_body_fails(plugins: ModuleType, servers: list[LoopbackServer]) -> None:
    table = EndpointTable(clock=Clock())
    servers.append(LoopbackServer(Page(vllm(1, 1, 0.1) + "# " + "x" * 5000 + "\n")))
    add(table, "big", servers[0].port)
    scraper, _, _ = make(plugins, table, max_bytes=4096)

    async def go() -> Any:
        async with scraper:
            return await scraper.scrape_once()

    assert asyncio.run(go()).failed == ("big",)
    assert "> 4096" in scraper.status("big").last_error


def test_unknown_engine_label_fails_that_endpoint(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable(clock=Clock())
    servers.append(LoopbackServer(Page(vllm(1, 1, 0.1))))
    add(table, "odd", servers[0].port, **{ENGINE_LABEL_KEY: "tgi"})
    add(table, "fine", servers[0].port)
    scraper, _, _ = make(plugins, table)

    async def go() -> Any:
        async with scraper:
            return await scraper.scrape_once()

    report = asyncio.run(go())
    assert (report.written, report.failed) == (1, ("odd",))
    assert scraper.status("odd").last_error == (
        f"odd: label {ENGINE_LABEL_KEY}='tgi' names no known engine "
        "(known: sglang, triton, triton-tensorrt-llm, trtllm-serve, vllm); add it to engineConfigs"
    )


def test_endpoint_removed_during_scrape_is_not_written(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable(clock=Clock())
    servers.append(LoopbackServer(Page(vllm(4, 4, 0.4), delay_s=0.1)))
    add(table, "leaving", servers[0].port)

    async def go() -> Any:
        scraper, _, _ = make(plugins, table)
        async with scraper:
            task = asyncio.create_task(scraper.scrape_once())
            await asyncio.sleep(0.02)
            table.remove("leaving")
            table.add(Endpoint("newcomer", "127.0.0.1", closed_port()))  # reuses row 0
            report = await task
            return report, scraper.statuses()

    report, statuses = asyncio.run(go())
    assert report.written == 0
    assert table.waiting[0] == 0.0
    assert "leaving" not in statuses


def test_kept_connections_take_the_callback_path_with_one_deadline_sweep(
    plugins: ModuleType,
    servers: list[LoopbackServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    table = EndpointTable(clock=clock)
    for i in range(3):
        servers.append(LoopbackServer(Page(vllm(i, i, 0.5)), keep_alive=True))
        add(table, f"e{i}", servers[-1].port)
    # max_concurrency=1: requests wait for a slot and start as answers come in.
    scraper, _, _ = make(plugins, table, max_concurrency=1)
    caplog.set_level(logging.INFO, logger="inference_sched.datalayer.scraper")
    tasks: list[str] = []

    async def go() -> tuple[Any, ...]:
        async with scraper:
            first = await scraper.scrape_once()  # connects: one task per endpoint
            fetch = scraper._fetch

            def spy(*args: Any) -> Any:
                tasks.append(args[3].name)
                return fetch(*args)

            monkeypatch.setattr(scraper, "_fetch", spy)
            for i in range(3):
                servers[i].page = Page(vllm(10 + i, 0, 0.1))
            clock.now = 200.0
            second = await scraper.scrape_once()  # kept connections: no task at all
            no_tasks = list(tasks)
            servers[1].page = Page(vllm(0, 0, 0.0), delay_s=2.0)
            clock.now = 300.0
            started = time.monotonic()
            third = await scraper.scrape_once()
            elapsed = time.monotonic() - started
            servers[1].page = Page(vllm(21, 0, 0.2))
            clock.now = 400.0
            fourth = await scraper.scrape_once()  # e1 reconnects (a task) and recovers
            return first, second, no_tasks, third, elapsed, fourth

    first, second, no_tasks, third, elapsed, fourth = asyncio.run(go())
    assert first.written == second.written == 3
    assert no_tasks == []
    assert [table.metrics_of(f"e{i}")["waiting"] for i in (0, 2)] == [10.0, 12.0]
    assert (third.written, third.failed) == (2, ("e1",))
    assert elapsed < TIMEOUT_S + 1.0
    assert (fourth.written, fourth.failed) == (3, ())
    assert tasks == ["e1"]
    assert table.metrics_of("e1")["waiting"] == 21.0
    status = scraper.status("e1")
    assert (status.errors_total, status.consecutive_failures) == (1, 0)
    assert status.last_error == "timed out after 0.3s"
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1
    assert [s.requests for s in servers] == [4, 4, 4]


# ====================================================================== run loop
def test_run_loop_ticks_until_stopped(plugins: ModuleType, servers: list[LoopbackServer]) -> None:
    table = EndpointTable()  # real monotonic clock
    servers += [LoopbackServer(Page(vllm(1, 1, 0.1))), LoopbackServer(Page("", delay_s=5.0))]
    add(table, "fast", servers[0].port)
    add(table, "stuck", servers[1].port)
    scraper, _, _ = make(plugins, table, interval_s=0.02, timeout_s=2.0)

    async def go() -> int:
        task = asyncio.create_task(scraper.run())
        deadline = time.monotonic() + 5.0
        while servers[0].requests < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        scraper.stop()
        await asyncio.wait_for(task, 5.0)
        return servers[1].requests

    stuck_requests = asyncio.run(go())
    assert servers[0].requests >= 5  # the stuck endpoint did not hold the others up
    assert stuck_requests == 1  # and was not asked again while its fetch was in flight
    assert table.metrics_of("fast")["waiting"] == 1.0
    assert table.clock() - table.last_update_s[table.row("fast")] < 2.0
    assert table.last_update_s[table.row("stuck")] == -np.inf
    assert scraper._clients == {}  # run() closed them


def test_scraper_rejects_bad_arguments(plugins: ModuleType) -> None:
    table = EndpointTable()
    source, extractor = make(plugins, table)[1:]
    cases: list[dict[str, Any]] = [{"interval_s": 0}, {"timeout_s": -1}, {"max_concurrency": 0}]
    for kwargs in cases:
        with pytest.raises(ValueError, match="must be"):
            Scraper(table, source, extractor, **kwargs)


# ====================================================================== plugins
def test_data_source_urls(plugins: ModuleType) -> None:
    params = plugins.MetricsDataSource.Params(scheme="https", path="/m")
    source = plugins.MetricsDataSource("s", params, PluginHandle(EndpointTable()))
    assert source.url_for(Endpoint("a", "10.0.0.1", 8000)) == "https://10.0.0.1:8000/m"
    assert source.url_for(Endpoint("b", "fd00::1", 8000, metrics_port=9090)) == (
        "https://[fd00::1]:9090/m"
    )
    assert source.insecure_skip_verify is True


def test_extractor_picks_engine_by_label(plugins: ModuleType) -> None:
    cls = plugins.CoreMetricsExtractor
    params = cls.Params(engineLabelKey="engine", defaultEngine="sglang")
    extractor = cls("x", params, PluginHandle(EndpointTable()))
    assert extractor.engine_for(Endpoint("a", "h", 1)).name == "sglang"
    assert extractor.engine_for(Endpoint("a", "h", 1, labels={"engine": "vllm"})).name == "vllm"
    sample = extractor.extract(SGLANG, Endpoint("a", "h", 1))
    assert sample == EndpointSample(5.0, 6.0, 0.5, 64, 300)
    with pytest.raises(DataError, match=r"^b: label engine='x' names no known engine"):
        extractor.engine_for(Endpoint("b", "h", 1, labels={"engine": "x"}))


def test_config_loads_the_plugins_and_wires_the_data_layer(plugins: ModuleType) -> None:
    from inference_sched.framework.config import load_config

    cfg = load_config(
        """
plugins:
- type: queue-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics}
- type: core-metrics-extractor
  parameters:
    defaultEngine: sglang
    engineConfigs:
    - {name: sglang, queuedRequestsSpec: "q{a=b}"}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""
    )
    extractor = cfg.plugin("core-metrics-extractor")
    assert extractor.params.default_engine == "sglang"
    assert extractor.params.engine_configs[0].waiting.labels == (("a", "b"),)
    assert cfg.plugin("metrics-data-source").params.path == "/metrics"
    # Without a dataLayer section GIE adds both plugins with defaults.
    auto = load_config("plugins: [{type: queue-scorer}]")
    assert {"metrics-data-source", "core-metrics-extractor"} <= {p.type for p in auto.plugins}
    assert auto.data_layer is not None


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            "{engineConfigs: [{name: x, kvUsageSpec: 'a{b'}]}",
            "plugins[0].parameters.engineConfigs[0].kvUsageSpec: expected a valid engine config "
            "(bad metric selector 'a{b': expected '=' after label 'b', got 'end of text' "
            "(only = is supported)), got 'a{b' (str)",
        ),
        (
            "{defaultEngine: nope}",
            "plugins[0].parameters.defaultEngine: expected one of 'vllm', 'sglang', "
            "'trtllm-serve', 'triton-tensorrt-llm', 'triton', got 'nope' (str)",
        ),
        (
            "{engineLabelKey: ''}",
            "plugins[0].parameters.engineLabelKey: expected a non-empty string, got '' (str)",
        ),
    ],
)
def test_extractor_parameter_errors(plugins: ModuleType, parameters: str, message: str) -> None:
    from inference_sched.errors import ConfigError
    from inference_sched.framework.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(f"plugins:\n- type: core-metrics-extractor\n  parameters: {parameters}\n")
    assert str(info.value) == message


def test_data_source_parameter_errors(plugins: ModuleType) -> None:
    from inference_sched.errors import ConfigError
    from inference_sched.framework.config import load_config

    with pytest.raises(ConfigError, match=r"parameters\.path: expected a URL path starting"):
        load_config("plugins:\n- type: metrics-data-source\n  parameters: {path: metrics}\n")
    with pytest.raises(ConfigError, match=r"parameters\.scheme: expected one of 'http', 'https'"):
        load_config("plugins:\n- type: metrics-data-source\n  parameters: {scheme: ftp}\n")


# ====================================================================== HTTP clients
def test_http_uses_the_lean_client_https_and_transports_use_httpx(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    import httpx

    from inference_sched.datalayer.fetch import HttpConnection

    table = EndpointTable(clock=Clock())
    servers.append(LoopbackServer(Page(vllm(1, 1, 0.1))))
    add(table, "v", servers[0].port)
    scraper, _, _ = make(plugins, table)
    url = f"http://127.0.0.1:{servers[0].port}/metrics"

    async def go() -> None:
        async with scraper:
            await scraper.scrape_once()
            lean = scraper._clients["v"]
            assert isinstance(lean, HttpConnection)
            assert lean.url == url
            await scraper.scrape_once()
            assert scraper._clients["v"] is lean  # kept across scrapes
            assert isinstance(scraper._client_for("v", "https://h:1/m"), httpx.AsyncClient)
            assert isinstance(scraper._client_for("v", url), HttpConnection)  # back
        assert scraper._clients == {}

    asyncio.run(go())
    assert servers[0].requests == 2
    assert table.metrics_of("v")["waiting"] == 1.0

    with_transport, _, _ = make(plugins, table, transport=httpx.AsyncHTTPTransport())

    async def forced() -> None:
        async with with_transport:
            await with_transport.scrape_once()
            assert isinstance(with_transport._clients["v"], httpx.AsyncClient)

    asyncio.run(forced())


# ====================================================================== name[] filter
def _vllm_registry() -> Any:
    from prometheus_client import CollectorRegistry, Gauge, Histogram

    reg = CollectorRegistry()
    Gauge("vllm:num_requests_waiting", "w", ["model_name"], registry=reg).labels("m").set(2)
    Gauge("vllm:num_requests_running", "r", ["model_name"], registry=reg).labels("m").set(3)
    Gauge("vllm:kv_cache_usage_perc", "kv", ["model_name"], registry=reg).labels("m").set(0.5)
    lora = Gauge(
        "vllm:lora_requests_info",
        "lora",
        ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        registry=reg,
    )
    lora.labels("4", "a", "").set(1.7e9)
    cache = Gauge("vllm:cache_config_info", "cache", ["block_size", "num_gpu_blocks"], registry=reg)
    cache.labels("16", "1000").set(1)
    ttft = Histogram("vllm:time_to_first_token_seconds", "ttft", registry=reg)
    ttft.observe(0.2)
    return reg


def test_request_families_against_prometheus_client_exposition(plugins: ModuleType) -> None:
    from prometheus_client import start_http_server

    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=_vllm_registry())
    try:
        port = httpd.server_port
        table = EndpointTable(clock=Clock())
        add(table, "v", port)
        scraper, _, extractor = make(plugins, table, request_families=True)
        assert extractor.families_for(next(iter(table))) == (
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "vllm:lora_requests_info",
            "vllm:cache_config_info",
        )
        url = scraper._targets()[0][2]
        assert url == (
            f"http://127.0.0.1:{port}/metrics?name%5B%5D=vllm:num_requests_waiting"
            "&name%5B%5D=vllm:num_requests_running&name%5B%5D=vllm:kv_cache_usage_perc"
            "&name%5B%5D=vllm:gpu_cache_usage_perc&name%5B%5D=vllm:lora_requests_info"
            "&name%5B%5D=vllm:cache_config_info"
        )

        async def go() -> tuple[Any, bytes, bytes]:
            from inference_sched.datalayer.fetch import HttpConnection

            async with scraper:
                report = await scraper.scrape_once()
            filtered, whole = HttpConnection(url), HttpConnection(url.split("?")[0])
            try:
                return report, await filtered.get(), await whole.get()
            finally:
                await filtered.aclose()
                await whole.aclose()

        report, filtered_body, whole_body = asyncio.run(go())
        assert (report.written, report.failed) == (1, ())
        m = table.metrics_of("v")
        assert (m["waiting"], m["running"], m["kv_usage_frac"], m["max_loras"]) == (2, 3, 0.5, 4)
        assert (m["block_size_tokens"], m["kv_blocks_total"]) == (16, 1000)
        # The server did the filtering: the histogram never crossed the wire.
        assert b"time_to_first_token" in whole_body
        assert b"time_to_first_token" not in filtered_body
        assert len(filtered_body) < len(whole_body) / 2
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_empty_filtered_page_falls_back_to_the_whole_page(
    plugins: ModuleType, servers: list[LoopbackServer], caplog: pytest.LogCaptureFixture
) -> None:
    servers.append(LoopbackServer(Page(vllm(1, 2, 0.5)), keep_alive=True))
    servers[0].filtered_page = Page("# nothing matched\n")
    table = EndpointTable(clock=Clock())
    add(table, "v", servers[0].port)
    scraper, _, _ = make(plugins, table, request_families=True)

    async def go() -> list[Any]:
        async with scraper:
            return [await scraper.scrape_once() for _ in range(3)]

    with caplog.at_level(logging.INFO, logger="inference_sched.datalayer.scraper"):
        reports = asyncio.run(go())
    assert [(r.written, r.failed) for r in reports] == [(0, ("v",)), (1, ()), (1, ())]
    assert ["?" in p for p in servers[0].paths] == [True, False, False]
    assert "fetching the whole page from now on" in caplog.text
    assert table.metrics_of("v")["kv_usage_frac"] == 0.5


def test_request_families_needs_an_extractor_that_names_them(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    class Plain:
        type: ClassVar[str] = "plain"
        name = "plain"

        def extract(self, text: str, endpoint: Endpoint) -> EndpointSample:
            return EndpointSample(waiting=1.0)

    servers.append(LoopbackServer(Page("x 1\n"), keep_alive=True))
    table = EndpointTable(clock=Clock())
    add(table, "v", servers[0].port)
    source = plugins.MetricsDataSource("s", plugins.MetricsDataSource.Params(), PluginHandle(table))
    scraper = Scraper(table, source, Plain(), request_families=True, timeout_s=TIMEOUT_S)

    async def go() -> Any:
        async with scraper:
            return await scraper.scrape_once()

    assert asyncio.run(go()).written == 1
    assert servers[0].paths == ["/metrics"]


# ====================================================================== from config
def test_scrapers_for_the_default_config_fill_the_table(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    from inference_sched.datalayer.scraper import scrapers_for
    from inference_sched.framework.scheduler import Scheduler

    servers.append(LoopbackServer(Page(vllm(4, 5, 0.75)), keep_alive=True))
    scheduler = Scheduler.from_config(None)  # GIE's default: the data layer is added
    add(scheduler.table, "v", servers[0].port)
    scrapers = scrapers_for(scheduler, interval_s=0.01, timeout_s=TIMEOUT_S)
    assert len(scrapers) == 1
    (scraper,) = scrapers
    assert scraper.source is scheduler.plugins["metrics-data-source"]
    assert scraper.extractor is scheduler.plugins["core-metrics-extractor"]
    assert scraper.interval_s == 0.01

    async def go() -> None:
        task = asyncio.create_task(scraper.run())
        async with asyncio.timeout(5):
            while scraper.status("v").last_success_s == -np.inf:
                await asyncio.sleep(0.005)
        scraper.stop()
        await task

    asyncio.run(go())
    m = scheduler.table.metrics_of("v")
    assert (m["waiting"], m["running"], m["kv_usage_frac"]) == (4.0, 5.0, 0.75)


def test_scrapers_for_configs_without_metrics_or_with_two_extractors(plugins: ModuleType) -> None:
    from inference_sched.datalayer.scraper import scrapers_for
    from inference_sched.errors import ConfigError
    from inference_sched.framework.scheduler import Scheduler

    off = Scheduler.from_config("plugins: [{type: queue-scorer}]\ndataLayer: {sources: []}\n")
    assert scrapers_for(off) == []
    table = EndpointTable()
    hand_made = Scheduler.from_config(None, table)
    hand_made.config = None  # built by hand: nothing to read
    assert scrapers_for(hand_made) == []
    two = Scheduler.from_config(
        """
plugins:
- type: queue-scorer
- type: metrics-data-source
- {type: core-metrics-extractor, name: a}
- {type: core-metrics-extractor, name: b}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: a}, {pluginRef: b}]}]
"""
    )
    with pytest.raises(ConfigError) as info:
        scrapers_for(two)
    assert str(info.value) == (
        "dataLayer.sources[0].extractors: expected at most one metrics extractor per source, got 2"
    )


def test_scrapers_from_config_need_no_scheduler(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    from inference_sched.datalayer import scrapers_from_config
    from inference_sched.framework.config import load_config

    servers.append(LoopbackServer(Page(vllm(2, 3, 0.5)), keep_alive=True))
    table = EndpointTable(clock=Clock())
    add(table, "v", servers[0].port)
    (scraper,) = scrapers_from_config(None, table, timeout_s=TIMEOUT_S)  # GIE's default
    assert isinstance(scraper.source, plugins.MetricsDataSource)
    assert isinstance(scraper.extractor, plugins.CoreMetricsExtractor)
    assert scraper.table is table
    assert scraper.timeout_s == TIMEOUT_S

    async def go() -> Any:
        async with scraper:
            return await scraper.scrape_once()

    assert asyncio.run(go()).written == 1
    m = table.metrics_of("v")
    assert (m["waiting"], m["running"], m["kv_usage_frac"]) == (2.0, 3.0, 0.5)

    # Two sources sharing an extractor build it once; given instances are used as is.
    config = load_config(
        """
plugins:
- type: queue-scorer
- {type: metrics-data-source, name: plain}
- {type: metrics-data-source, name: tls, parameters: {scheme: https}}
- type: core-metrics-extractor
dataLayer:
  sources:
  - {pluginRef: plain, extractors: [{pluginRef: core-metrics-extractor}]}
  - {pluginRef: tls, extractors: [{pluginRef: core-metrics-extractor}]}
"""
    )
    given = plugins.MetricsDataSource("plain", plugins.MetricsDataSource.Params(), None)
    first, second = scrapers_from_config(config, table, plugins={"plain": given})
    assert first.source is given
    assert second.source.url_for(Endpoint("x", "10.0.0.9", 8000)).startswith("https://")
    assert first.extractor is second.extractor
    off = load_config("plugins: [{type: queue-scorer}]\ndataLayer: {sources: []}\n")
    assert scrapers_from_config(off, table) == []


def test_scrapers_from_config_load_no_scheduler() -> None:
    # A fresh interpreter: the data layer of a config, and no scheduling module loaded.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from inference_sched.datalayer import scrapers_from_config\n"
        "from inference_sched.state.table import EndpointTable\n"
        "scrapers = scrapers_from_config(None, EndpointTable())\n"
        "assert len(scrapers) == 1, scrapers\n"
        "assert 'inference_sched.framework.scheduler' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ====================================================================== CLI
def test_scrape_command_prints_what_the_scheduler_reads(
    plugins: ModuleType, servers: list[LoopbackServer], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from inference_sched.cli import main

    servers.append(LoopbackServer(Page(vllm(3, 7, 0.5, adapters="x")), keep_alive=True))
    dead = closed_port()
    argv = ["scrape", "--endpoint", f"v=127.0.0.1:{servers[0].port}", "--duration", "0.3"]
    assert main([*argv, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row | {"age_s": None} == {
        "endpoint": "v",
        "ok": True,
        "waiting": 3.0,
        "running": 7.0,
        "kv_usage_frac": 0.5,
        "block_size": 16.0,
        "kv_blocks": 1000.0,
        "max_loras": 4.0,
        "running_adapters": ["x"],
        "waiting_adapters": ["w"],
        "age_s": None,
        "errors": 0,
        "last_error": "",
        "missing": [],
    }
    # A dead endpoint: exit status 1, and the table says why.
    assert main([*argv, "--endpoint", f"d=127.0.0.1:{dead}"]) == 1
    out = capsys.readouterr().out
    assert "what the scheduler reads" in out
    assert "never" in out
    assert "d: last error: ConnectError" in out
    assert main(["scrape"]) == 1
    assert "give --endpoint" in capsys.readouterr().err


# ====================================================================== endpoint health
def candidates(table: EndpointTable) -> list[str]:
    return [table.endpoint_at(row).name for row in table.candidates_for(None).tolist()]


def test_an_unreachable_endpoint_leaves_the_candidates_and_returns_at_a_good_scrape(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable(clock=Clock())
    servers += [LoopbackServer(Page(vllm(1, 1, 0.1))), LoopbackServer(Page(vllm(2, 2, 0.2)))]
    add(table, "a", servers[0].port)
    add(table, "b", servers[1].port)
    scraper, _, _ = make(plugins, table)
    seen: list[tuple[tuple[str, ...], list[str]]] = []

    async def go() -> None:
        async with scraper:
            await scraper.scrape_once()
            servers[1].page = Page("draining", status=503)
            for _ in range(3):
                report = await scraper.scrape_once()
                seen.append((report.failed, candidates(table)))
            servers[1].page = Page("", delay_s=5.0)  # hung: timeouts keep it out
            report = await scraper.scrape_once()
            seen.append((report.failed, candidates(table)))
            servers[1].page = Page(vllm(3, 3, 0.3))
            report = await scraper.scrape_once()
            seen.append((report.failed, candidates(table)))

    asyncio.run(go())
    assert seen == [
        (("b",), ["a", "b"]),
        (("b",), ["a", "b"]),
        (("b",), ["a"]),  # the third failure in a row
        (("b",), ["a"]),
        ((), ["a", "b"]),  # the first good scrape
    ]
    assert table.metrics_of("b")["waiting"] == 3.0
    health = scraper.health
    assert (health.num_taken_out_total, health.num_put_back_total, health.taken_out()) == (
        1,
        1,
        (),
    )


def test_a_refusing_endpoint_leaves_at_once_and_returns_when_it_listens(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable(clock=Clock())
    servers += [
        LoopbackServer(Page(vllm(1, 1, 0.1)), keep_alive=True),
        LoopbackServer(Page(vllm(2, 2, 0.2)), keep_alive=True, listen=False),
    ]
    add(table, "up", servers[0].port)
    add(table, "starting", servers[1].port)
    scraper, _, _ = make(plugins, table)

    async def go() -> list[list[str]]:
        async with scraper:
            report = await scraper.scrape_once()
            assert report.failed == ("starting",)
            assert "ConnectError" in scraper.status("starting").last_error
            out = [candidates(table)]
            servers[1].listen()
            await scraper.scrape_once()
            out.append(candidates(table))
            return out

    assert asyncio.run(go()) == [["up"], ["up", "starting"]]
    assert table.metrics_of("starting")["waiting"] == 2.0


def test_httpx_path_counts_refusals_and_non_200_too(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable(clock=Clock())
    servers.append(LoopbackServer(Page("", status=500)))
    add(table, "err", servers[0].port)
    add(table, "gone", closed_port())
    # A transport: every URL goes through httpx (the https:// path).
    transport = httpx.AsyncHTTPTransport()
    scraper, _, _ = make(plugins, table, transport=transport, unhealthy_after=2)

    async def go() -> list[list[str]]:
        out = []
        async with scraper:
            for _ in range(2):
                await scraper.scrape_once()
                out.append(candidates(table))
        return out

    assert asyncio.run(go()) == [["err"], []]
    assert scraper.health.taken_out() == ("err", "gone")


def test_health_off_and_a_page_nobody_can_read_keep_endpoints_in(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable(clock=Clock())
    servers.append(LoopbackServer(Page("<html>not metrics</html>\n")))
    add(table, "garbage", servers[0].port)
    add(table, "gone", closed_port())
    scraper, _, _ = make(plugins, table, unhealthy_after=0)
    table2 = EndpointTable(clock=Clock())
    add(table2, "garbage", servers[0].port)
    reading, _, _ = make(plugins, table2)

    async def go() -> None:
        async with scraper, reading:
            for _ in range(4):
                assert (await scraper.scrape_once()).written == 0
                assert (await reading.scrape_once()).failed == ("garbage",)

    asyncio.run(go())
    assert candidates(table) == ["garbage", "gone"]  # health handling off
    assert candidates(table2) == ["garbage"]  # the server answers: a config problem
    assert scraper.status("gone").consecutive_failures == 4


def test_a_shared_health_takes_gateway_reports_and_a_scrape_puts_back(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    from inference_sched.datalayer.health import EndpointHealth

    table = EndpointTable(clock=Clock())
    servers += [LoopbackServer(Page(vllm(1, 1, 0.1))), LoopbackServer(Page(vllm(2, 2, 0.2)))]
    add(table, "a", servers[0].port)
    add(table, "b", servers[1].port)
    health = EndpointHealth(table, unhealthy_after=5)
    scraper, _, _ = make(plugins, table, health=health, unhealthy_after=1)
    assert scraper.health is health

    async def go() -> list[list[str]]:
        async with scraper:
            # The gateway runs on another thread: a refused upstream connection.
            took = await asyncio.to_thread(health.report_connect_failure, "b", "refused")
            assert took
            out = [candidates(table)]
            await scraper.scrape_once()
            out.append(candidates(table))
            return out

    assert asyncio.run(go()) == [["a"], ["a", "b"]]


def test_run_loop_takes_a_killed_endpoint_out_at_its_first_refusal(
    plugins: ModuleType, servers: list[LoopbackServer]
) -> None:
    table = EndpointTable()  # real clock: the scraper's own ticks
    for i in range(3):
        # HTTP/1.0: one connection per scrape. (A kept connection would outlive
        # close(): its handler thread keeps serving, which a killed process does not.)
        servers.append(LoopbackServer(Page(vllm(i, i, 0.1))))
        add(table, f"e{i}", servers[-1].port)
    scraper, _, _ = make(plugins, table, interval_s=0.02)

    async def wait_for(what: str, condition: Any) -> None:
        deadline = time.monotonic() + 10.0
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    async def go() -> None:
        task = asyncio.create_task(scraper.run())
        try:
            await wait_for("first scrapes", lambda: all(s.requests for s in servers))
            servers[1].close()  # killed: connections are refused from now on
            await wait_for("e1 out", lambda: candidates(table) == ["e0", "e2"])
            served = [s.requests for s in servers]
            await wait_for("more scrapes", lambda: servers[0].requests > served[0] + 2)
        finally:
            scraper.stop()
            await asyncio.wait_for(task, 5.0)

    asyncio.run(go())
    assert scraper.status("e1").consecutive_failures >= 2  # still scraped while out
    assert "ConnectError" in scraper.status("e1").last_error
    assert scraper.health.taken_out() == ("e1",)
    assert candidates(table) == ["e0", "e2"]


def test_scrapers_from_config_share_one_health_and_keep_it_from_pollers(
    plugins: ModuleType,
) -> None:
    from inference_sched.datalayer import scrapers_from_config
    from inference_sched.datalayer.attribute_poller import AttributePoller
    from inference_sched.datalayer.health import EndpointHealth
    from inference_sched.framework.config import load_config

    config = load_config(
        """
plugins:
- type: queue-scorer
- {type: metrics-data-source, name: one}
- {type: metrics-data-source, name: two}
- type: core-metrics-extractor
- type: dcgm-extractor
dataLayer:
  sources:
  - {pluginRef: one, extractors: [{pluginRef: core-metrics-extractor}]}
  - pluginRef: two
    extractors: [{pluginRef: core-metrics-extractor}, {pluginRef: dcgm-extractor}]
"""
    )
    table = EndpointTable()
    first, second, poller = scrapers_from_config(
        config, table, unhealthy_after=7, unhealthy_on_refused=False
    )
    assert isinstance(poller, AttributePoller)
    assert first.health is second.health
    assert (first.health.unhealthy_after, first.health.unhealthy_on_refused) == (7, False)
    shared = EndpointHealth(table)
    runners = scrapers_from_config(config, table, health=shared)
    assert [r.health for r in runners[:2]] == [shared, shared]
    (default,) = scrapers_from_config(None, table)
    assert (default.health.unhealthy_after, default.health.unhealthy_on_refused) == (3, True)
