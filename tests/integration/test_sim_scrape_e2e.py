"""End to end on loopback: simulated vLLM servers -> /metrics over HTTP -> the real scraper
and data-layer plugins -> the endpoint table -> a real load-only scheduler.

Everything runs on one event loop (the metrics server serves from the test's loop), so
simulated time only moves when the test moves it; each await is bounded by a second.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inference_sched.datalayer.plugins import CoreMetricsExtractor, MetricsDataSource
from inference_sched.datalayer.scraper import Scraper, ScrapeReport
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Request
from inference_sched.params import parse_params
from inference_sched.sim import latency
from inference_sched.sim.engine import Server
from inference_sched.sim.exposition import MetricsHTTPServer, server_pages
from inference_sched.sim.presets import PRESETS
from inference_sched.sim.types import EngineConfig, ServerMetrics, SimRequest
from inference_sched.state.staleness import is_stale
from inference_sched.state.table import EndpointTable

MODEL = "meta-llama/Llama-2-7b-hf"
STEP_S = 1.0  # bound on every await
STALE_S = 0.2  # GIE's utilization-detector threshold

# Distinct geometry per server, so a value in the wrong row cannot pass.
CONFIGS = (
    EngineConfig(max_num_seqs=4, num_gpu_blocks=2048),
    EngineConfig(max_num_seqs=4, num_gpu_blocks=3072, block_size=32),
    EngineConfig(max_num_seqs=4, num_gpu_blocks=1024, max_loras=2, lora_load_s=0.0),
    EngineConfig(max_num_seqs=4, num_gpu_blocks=4096),
)
LOAD = (6, 1, 9, 3)
"""Requests submitted to each server at t = 0 (server 1 is the least loaded)."""
LORAS = {0: "sql-lora", 1: "sql-lora", 8: "chat-lora"}
"""Adapters of server 2's requests, by position (one runs, one waits)."""


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: a proxy from the environment must not see these requests.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def workload() -> list[list[SimRequest]]:
    """Deterministic requests per server: prompts 256..1024 tokens, unshared blocks."""
    out: list[list[SimRequest]] = []
    rid = 0
    for server, count in enumerate(LOAD):
        requests = []
        for k in range(count):
            prompt = 256 * (1 + (rid % 4))
            blocks = np.arange(rid * 1000, rid * 1000 + prompt // 16, dtype=np.int64)
            lora = LORAS.get(k) if server == 2 else None
            requests.append(SimRequest(rid, 0.0, prompt, 400, blocks, lora))
            rid += 1
        out.append(requests)
    return out


def assert_row_matches(table: EndpointTable, name: str, m: ServerMetrics, at_s: float) -> None:
    """The table holds exactly what server ``m`` published, written at ``at_s``."""
    row = table.row(name)
    expected = {
        "waiting": float(m.waiting),
        "running": float(m.running),
        "kv_usage_frac": m.kv_usage_frac,
        "kv_blocks_total": float(m.num_gpu_blocks),
        "block_size_tokens": float(m.block_size),
        "max_loras": float(m.max_loras),
    }
    got = table.metrics_of(name)
    assert {key: got[key] for key in expected} == expected, name
    assert table.adapters_of(row) == (m.running_adapters, m.waiting_adapters), name
    assert table.last_update_s[row] == at_s, name


def load_only_scores(table: EndpointTable, rows: list[int]) -> np.ndarray:
    """The load-only profile by hand: 2 x queue (min-max inverted) + 2 x (1 - kv usage)."""
    waiting = table.waiting[rows]
    spread = waiting.max() - waiting.min()
    queue = (waiting.max() - waiting) / spread if spread else np.ones(len(rows))
    return np.asarray(2 * queue + 2 * (1 - table.kv_usage_frac[rows]))


def test_scraper_and_scheduler_on_simulated_vllm_servers() -> None:
    asyncio.run(_run())


async def _run() -> None:
    step_model = latency.load()
    servers = [Server(f"sim-{i}", c, step_model) for i, c in enumerate(CONFIGS)]
    names = [f"sim-{i}-rank-0" for i in range(len(servers))]
    now = [0.0]
    table = EndpointTable(clock=lambda: now[0])  # simulated clock: exact last_update_s
    handle = PluginHandle(table)
    source = MetricsDataSource(
        "metrics-data-source", parse_params(MetricsDataSource.Params, {}, "source"), handle
    )
    extractor = CoreMetricsExtractor(
        "core-metrics-extractor",
        parse_params(CoreMetricsExtractor.Params, {}, "extractor"),
        handle,
    )
    scheduler = Scheduler.from_config(PRESETS["load-only"], table, seed=0)

    def advance(t: float) -> list[ServerMetrics]:
        now[0] = t
        for server in servers:
            server.advance(t)
        return [server.metrics(t) for server in servers]

    async def scrape(scraper: Scraper) -> ScrapeReport:
        async with asyncio.timeout(STEP_S):
            return await scraper.scrape_once()

    page_for = server_pages(servers, lambda: now[0], model=MODEL, epoch_unix_s=1.7e9)
    async with MetricsHTTPServer(page_for, len(servers)) as http:
        for i, name in enumerate(names):
            table.add(http.endpoint(i, name))
        assert all(source.url_for(e).startswith("http://127.0.0.1:") for e in table)

        for server, requests in zip(servers, workload(), strict=True):
            for request in requests:
                server.submit(request, 0.0)

        async with Scraper(table, source, extractor, timeout_s=STEP_S / 2) as scraper:
            # 1. One scrape: every row holds exactly its server's metrics.
            published = advance(0.05)
            report = await scrape(scraper)
            assert (report.written, report.failed) == (4, ())
            for name, m in zip(names, published, strict=True):
                assert_row_matches(table, name, m, 0.05)
            # The pattern loads the servers unevenly (the checks are not vacuous).
            assert [m.waiting for m in published] == [2, 0, 5, 0]
            assert [m.running for m in published] == [4, 1, 4, 3]
            assert all(m.kv_usage_frac > 0 for m in published)
            assert published[2].running_adapters == {"sql-lora"}
            assert published[2].waiting_adapters == {"chat-lora"}
            assert published[1].block_size == 32

            # 2. The load-only scheduler picks the least loaded server, by scraped values.
            rows = [table.row(n) for n in names]
            scores = load_only_scores(table, rows)
            assert int(np.argmax(scores)) == 1
            assert np.sum(scores == scores.max()) == 1  # no tie: the pick is not random
            result = scheduler.schedule(Request.create(MODEL, prompt=b"x" * 64, request_id="r"))
            assert result.endpoint.name == "sim-1-rank-0"

            # 3. Time moves; the next scrape sees the new state.
            published_2 = advance(0.5)
            report = await scrape(scraper)
            assert (report.written, report.failed) == (4, ())
            assert published_2 != published
            for name, m in zip(names, published_2, strict=True):
                assert_row_matches(table, name, m, 0.5)

            # 4. Server 2's metrics endpoint goes away: only its row goes stale.
            http.stop_server(2)
            for t in (1.0, 1.05):
                published_3 = advance(t)
                report = await scrape(scraper)
                assert (report.written, report.failed) == (3, ("sim-2-rank-0",))
                for i, (name, m) in enumerate(zip(names, published_3, strict=True)):
                    if i == 2:
                        assert_row_matches(table, name, published_2[2], 0.5)  # last good
                    else:
                        assert_row_matches(table, name, m, t)
                    assert is_stale(table, table.row(name), t, STALE_S) == (i == 2)
            status = scraper.status("sim-2-rank-0")
            assert status.consecutive_failures == 2
            assert status.last_success_s == 0.5
            assert not scraper.status("sim-0-rank-0").failing
            assert http.requests[2] == 2  # served before the stop; never after
