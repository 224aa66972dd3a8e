"""Precise prefix routing over real ZMQ sockets on loopback: simulated vLLM servers publish
their KV events (vLLM's wire format, llm-d's topics) to a ``precise-prefix-cache-producer``
in both of llm-d's modes, and the index it builds equals the one built from the same
events in process.

Waits are bounded and assert outcomes, never timing. ZeroMQ drops messages until a
subscription has reached the publisher (the slow joiner), so each stream is primed by
repeating a harmless message (AllBlocksCleared, sequence 0) until it arrives.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("zmq")
pytest.importorskip("msgpack")

from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Endpoint, Request
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.kvcache import AllBlocksCleared
from inference_sched.sim.presets import resolve_config
from inference_sched.sim.prompts import prompt_token_ids
from inference_sched.sim.publisher import ZmqKvPublisher
from inference_sched.sim.types import EngineConfig
from inference_sched.sim.workloads import load_workload
from inference_sched.state.table import EndpointTable

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
SERVERS = 3


@pytest.fixture
def closing() -> Iterator[list[Callable[[], object]]]:
    """Closers run at teardown, newest first, each one even if a test or another closer
    failed: a publisher or subscriber left to the garbage collector can hang the process
    (zmq_ctx_term waits for its open sockets)."""
    closers: list[Callable[[], object]] = []
    with contextlib.ExitStack() as stack:
        yield closers
        for close in closers:
            stack.callback(close)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _endpoints() -> dict[str, Endpoint]:
    return {f"sim-{i}": Endpoint(f"sim-{i}-rank-0", f"10.0.0.{i}", 8000) for i in range(SERVERS)}


def _scheduler(endpoints: dict[str, Endpoint], parameters: str) -> tuple[Scheduler, Any]:
    table = EndpointTable()
    for endpoint in endpoints.values():
        table.add(endpoint)
    scheduler = Scheduler.from_config(
        f"""
plugins:
- type: precise-prefix-cache-producer
  parameters: {parameters}
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: prefix-cache-scorer}}, {{pluginRef: max-score-picker}}]
""",
        table,
    )
    return scheduler, scheduler.plugins["precise-prefix-cache-producer"]


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _prime(publisher: ZmqKvPublisher, producer: Any) -> None:
    """Repeat seq 0 (AllBlocksCleared) on every stream until the producer applied one
    from each; the repeats count as duplicates."""
    for server in publisher.addresses:
        seen_before = producer.stats["AllBlocksCleared"]
        publisher._seq[server] = 0

        def arrived(before: int = seen_before, server: str = server) -> bool:
            publisher._seq[server] = 0
            publisher.publish(server, [AllBlocksCleared()])
            time.sleep(0.01)
            producer.run_deferred()
            return bool(producer.stats["AllBlocksCleared"] > before)

        _wait(arrived, f"the subscription to {server}")
        publisher._seq[server] = 1


def _entries(producer: Any, prompts: list[np.ndarray], model: str) -> list[list[float]]:
    """What a match of each prompt finds on each row."""
    out = []
    for tokens in prompts:
        counts = np.zeros(producer._table.capacity)
        producer.index.match_tokens(tokens, model, "", counts)
        out.append(counts[: len(producer._table)].tolist())
    return out


@pytest.mark.parametrize("mode", ["bind", "dial"])
def test_events_over_zmq_build_the_same_index_as_in_process(
    mode: str, closing: list[Callable[[], object]]
) -> None:
    workload = load_workload("shared-prefix", duration_s=2.0, rate=10.0, seed=1)
    endpoints = _endpoints()
    recorded: list[tuple[str, object]] = []
    if mode == "bind":
        port = _free_port()
        wire_scheduler, wire = _scheduler(
            endpoints, f"{{kvEventsConfig: {{zmqEndpoint: 'tcp://127.0.0.1:{port}'}}}}"
        )
        closing.append(wire.close)
        assert wire.start()
        # The table's endpoints keep their sequence state whatever other topics arrive.
        assert wire._subscriber.known_endpoints == {e.hostport for e in endpoints.values()}
        publisher = ZmqKvPublisher(endpoints, workload.model, connect=f"tcp://127.0.0.1:{port}")
        closing.append(publisher.close)
    else:
        # Dial mode connects to tcp://<address>:<socketPort>: one server, on loopback.
        endpoints = {"sim-0": Endpoint("sim-0-rank-0", "127.0.0.1", 8000)}
        publisher = ZmqKvPublisher(endpoints, workload.model, bind_host="127.0.0.1")
        closing.append(publisher.close)
        port = int(publisher.addresses["sim-0"].rsplit(":", 1)[1])
        wire_scheduler, wire = _scheduler(
            endpoints, f"{{kvEventsConfig: {{podDiscoveryConfig: {{socketPort: {port}}}}}}}"
        )
        closing.append(wire.close)
        assert wire.start()
    with publisher:
        _prime(publisher, wire)
        label, config = resolve_config("load-only")
        fleet = FleetConfig(num_servers=len(endpoints), engine=EngineConfig(num_gpu_blocks=400))

        def tee(server: str, event: object) -> None:
            recorded.append((server, event))
            publisher.sink(server, event)

        simulate(workload, config, label=label, fleet=fleet, kv_events=tee)
        assert recorded
        expected_messages = publisher.sent
        _wait(
            lambda: (
                (
                    wire.run_deferred(),
                    sum(wire.stats[k] for k in ("BlockStored", "BlockRemoved", "AllBlocksCleared")),
                )[1]
                >= len(recorded) + len(endpoints)
            ),
            f"{len(recorded)} events",
        )
    assert publisher.closed
    subscriber = wire._subscriber
    wire.close()
    assert subscriber._ctx.closed  # stopped: sockets closed and its context terminated
    # The same events fed in process.
    _, local = _scheduler(endpoints, "{}")
    local.events_in_process()
    pods = {server: e.hostport for server, e in endpoints.items()}
    for server, event in recorded:
        local.kv_event(pods[server], event, workload.model)
    assert local.index_size() == wire.index_size() > 0
    prompts = [prompt_token_ids(r.blocks, r.prompt_tokens) for r in workload.requests[:20]]
    found = _entries(wire, prompts, workload.model)
    assert found == _entries(local, prompts, workload.model)
    assert wire.stats["BlockRemoved"] > 0  # the small cache evicted: removals crossed too
    assert expected_messages >= len(recorded)
    # The subscriber saw no gap.
    assert wire.stats["invalidated"] == 0
    assert wire.stats["events_rejected"] == wire.stats["queue_overflows"] == 0
    # A decision over the wire-fed index picks where the prefix is cached.
    best = max(range(len(prompts)), key=lambda i: max(found[i]))
    assert max(found[best]) > 0
    request = Request.create(workload.model, prompt="x", token_ids=prompts[best])
    result = wire_scheduler.schedule(request)  # opens a subscriber again (closing: closed)
    assert found[best][result.primary.rows[0]] == max(found[best])
