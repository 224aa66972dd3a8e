"""(c) A sim-server killed mid-run: no request through the HTTP gateway fails (retries go
to the fallback), and the dead endpoint leaves the candidate set within the bound
(``--endpoint-unhealthy-on-refused``: the next 50 ms scrape)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e._helpers import ServeProc, Sim, pool, wait_until

TAKE_OUT_BOUND_S = 2.0
"""A refused scrape takes the endpoint out at once; scrapes run every 50 ms. The bound
leaves room for a loaded machine."""


@pytest.fixture(scope="module")
def killable_pool(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[Sim], ServeProc]]:
    with pool(Path(tmp_path_factory.mktemp("kill")), 3) as started:
        yield started


def test_killed_backend_loses_no_request(killable_pool: tuple[list[Sim], ServeProc]) -> None:
    sims, serve = killable_pool
    wait_until(lambda: serve.metric("inference_pool_ready_pods") == 3.0, 10, "3 ready pods")
    victim = sims[0]
    statuses: list[tuple[int, str, float]] = []
    lock = threading.Lock()
    done_before_kill = threading.Event()

    def one(i: int, client: httpx.Client) -> None:
        body = {"model": "sim-model", "prompt": f"request {i} " * 8, "max_tokens": 2}
        response = client.post(serve.http_url + "/v1/completions", json=body, timeout=15)
        with lock:
            statuses.append(
                (response.status_code, response.headers.get("x-sim-server", ""), time.monotonic())
            )
            if len(statuses) >= 20:
                done_before_kill.set()

    with httpx.Client() as client, ThreadPoolExecutor(4) as executor:
        futures = [executor.submit(one, i, client) for i in range(120)]
        assert done_before_kill.wait(20), "traffic did not start"
        victim.proc.kill()
        killed_at = time.monotonic()
        taken_out = wait_until(
            lambda: serve.metric("inference_pool_unhealthy_endpoints") == 1.0 and time.monotonic(),
            TAKE_OUT_BOUND_S + 3,
            "the dead endpoint taken out",
        )
        for future in futures:
            future.result(timeout=30)
        after = [executor.submit(one, 1000 + i, client) for i in range(20)]
        for future in after:
            future.result(timeout=30)
    assert taken_out - killed_at <= TAKE_OUT_BOUND_S
    assert [s for s, _, _ in statuses] == [200] * 140
    served_by = {name for _, name, _ in statuses[:20]}
    assert victim.name in served_by  # it took traffic before it died
    # Once taken out, nothing is routed to it.
    assert {name for _, name, _ in statuses[120:]} <= {sims[1].name, sims[2].name}
    # >= 1: a scrape answered just before the kill may put it back once, briefly.
    transitions = serve.metric("inference_pool_endpoint_health_transitions_total", to="unhealthy")
    assert transitions is not None
    assert transitions >= 1.0
    assert serve.metric("inference_pool_unhealthy_endpoints") == 1.0
