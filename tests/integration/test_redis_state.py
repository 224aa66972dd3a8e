"""Shared prefix index and in-flight counters against a real redis-server on loopback.

Two ``Scheduler`` replicas share one namespace, each with its own ``EndpointTable`` holding
the same endpoint names in different row orders. Every wait is bounded by a deadline and
asserts on outcomes, never on timing; timeouts are generous (2 s) except where a test
makes Redis slow on purpose, so a noisy machine cannot degrade a call by accident.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_sched.framework.contracts import TOKENIZED_PROMPT, TokenizedRequest
from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import (
    CycleState,
    Endpoint,
    Request,
    Response,
    SchedulingResult,
)
from inference_sched.plugins.load import InflightLoadProducer
from inference_sched.plugins.prefix import ApproxPrefixCacheProducer
from inference_sched.prefix.hashing import pack_prompt_bytes, request_seed, token_block_hashes
from inference_sched.prefix.index import PrefixIndex
from inference_sched.state.redis import (
    RedisInflightCounters,
    RedisLink,
    RedisPrefixIndex,
    RedisPrefixParams,
)
from inference_sched.state.table import EndpointTable
from tests import redis_server
from tests.redis_server import RedisServer, require_redis_server

if os.environ.get("CI") != "true":  # CI installs the [redis] extra: missing there is a failure
    pytest.importorskip("redis")

DEADLINE_S = 10.0
NAMES = ["e0", "e1", "e2", "e3"]
MODEL = "m"
SYSTEM = b"You are a helpful assistant. " * 40  # 1160 bytes = 290 estimated tokens
BLOCK = 64  # tokens per block: llm-d-router's floor
SHARED_BLOCKS = 4  # SYSTEM + any short suffix share SYSTEM's 4 full blocks (1024 bytes)


# ====================================================================== fixtures
@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One server for the module's tests (each test uses its own namespace)."""
    with RedisServer(require_redis_server()) as srv:
        yield srv


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that kill or pause it."""
    with RedisServer(require_redis_server()) as srv:
        yield srv


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex}"


def _config(url: str, namespace: str, **redis: Any) -> dict[str, Any]:
    """GIE's default profile (queue 2, kv-cache 2, prefix 3) plus the in-flight producer,
    both producers sharing ``namespace``."""
    common = {"address": url, "namespace": namespace, "timeoutMs": redis.pop("timeoutMs", 2000)}
    prefix = {**common, "endpointTtlMs": redis.pop("endpointTtlMs", 120_000)}
    inflight = {**common, **redis}
    return {
        "plugins": [
            {
                "type": "approx-prefix-cache-producer",
                "parameters": {"lruCapacityPerServer": 1000, "redis": prefix},
            },
            {"type": "inflight-load-producer", "parameters": {"redis": inflight}},
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ],
            }
        ],
    }


class Replica:
    """One scheduler replica: its table (``names`` in that row order) and its plugins."""

    def __init__(self, url: str, namespace: str, names: list[str], **redis: Any) -> None:
        self.table = EndpointTable(clock=lambda: 100.0)
        for name in names:
            self.table.add(Endpoint(name, f"10.0.0.{name[1:]}", 8000))
        rows = self.table.candidates()
        self.table.update_metrics(rows, waiting=1.0, kv_usage_frac=0.5)
        self.scheduler = Scheduler.from_config(_config(url, namespace, **redis), self.table, seed=1)
        prefix = self.scheduler.plugins["approx-prefix-cache-producer"]
        inflight = self.scheduler.plugins["inflight-load-producer"]
        assert isinstance(prefix, ApproxPrefixCacheProducer)
        assert isinstance(inflight, InflightLoadProducer)
        assert prefix.shared is not None
        assert inflight.shared is not None
        self.prefix = prefix
        self.inflight = inflight
        self.index: RedisPrefixIndex = prefix.shared
        self.counters: RedisInflightCounters = inflight.shared

    def schedule(self, prompt: bytes) -> tuple[Request, SchedulingResult]:
        """Schedule, then apply the deferred index update (as an embedder does)."""
        request = Request.create(MODEL, prompt=prompt)
        result = self.scheduler.schedule(request)
        self.scheduler.run_deferred()
        return request, result

    def complete(self, request: Request, result: SchedulingResult) -> None:
        response = Response(request.request_id, is_end_of_stream=True)
        self.scheduler.response_complete(request, response, result)

    def sync(self) -> None:
        """The in-flight producer's per-decision read, without a decision."""
        cycle = CycleState(np.random.default_rng(0))
        request = Request.create(MODEL)
        self.inflight.prepare_request_data(cycle, request, self.table, self.table.candidates())

    def load(self, name: str) -> tuple[float, float]:
        """(requests, tokens) in flight on ``name`` as this replica's table says."""
        row = self.table.row(name)
        return float(self.table.inflight_requests[row]), float(self.table.inflight_tokens[row])

    def synced_load(self, name: str) -> tuple[float, float]:
        self.sync()
        return self.load(name)

    def eventually(self, name: str, expected: tuple[float, float]) -> None:
        """Wait (bounded) until this replica reads ``expected`` for ``name``: other
        replicas publish their changes from a background thread."""
        seen: list[tuple[float, float]] = []

        def check() -> bool:
            seen.append(self.synced_load(name))
            return seen[-1] == expected

        wait_for(f"{name} to read {expected} (last read {seen[-1:]})", check)

    def links(self) -> tuple[RedisLink, RedisLink]:
        return self.index.link, self.counters.link

    def errors(self) -> int:
        """Errors counted by the scheduler's plugin isolation (must stay 0: no raise)."""
        return sum(s.errors for s in self.scheduler.stats())

    def close(self) -> None:
        self.prefix.close()
        self.inflight.close()


@pytest.fixture
def replicas() -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(url: str, namespace: str, names: list[str] = NAMES, **redis: Any) -> Replica:
        replica = Replica(url, namespace, names, **redis)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.close()


def wait_for(what: str, predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until true; fail after the deadline (outcomes, not timing)."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(0.02)


def tokens(prompt: bytes) -> int:
    """The estimate backend's token count: the prompt's bytes packed four per id."""
    return -(-len(prompt) // 4)


def blocks(prompt: bytes) -> int:
    """llm-d-router's block count: the last partial block included."""
    return -(-tokens(prompt) // BLOCK)


def uncached(prompt: bytes, matched: int = 0) -> float:
    """What inflight-load-producer adds for ``prompt`` on an endpoint holding ``matched``
    of its blocks (llm-d-router: ``(t - m) * bs + max(0, input - t * bs)``; no output
    estimate without ``addEstimatedOutputTokens``)."""
    t = blocks(prompt)
    return float((t - matched) * BLOCK + max(0, tokens(prompt) - t * BLOCK))


def producer_hashes(prompt: bytes) -> np.ndarray:
    """The block hashes approx-prefix-cache-producer indexes for a body-less ``prompt``."""
    return token_block_hashes(pack_prompt_bytes(prompt), BLOCK, request_seed(MODEL), 2048)


# ====================================================================== the fixture
def test_a_missing_server_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server, "redis_server_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        redis_server.require_redis_server()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the Redis tests"):
        redis_server.require_redis_server()


def test_the_server_restarts_on_its_port_without_data() -> None:
    with RedisServer(require_redis_server()) as srv:
        port, pid = srv.port, srv.pid
        srv.restart()
        assert (srv.port, srv.is_running) == (port, True)
        assert srv.pid != pid
    assert not srv.is_running


# ====================================================================== two replicas
def test_a_pick_on_one_replica_is_a_prefix_hit_and_a_load_on_the_other(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    b = replicas(server.url, namespace, NAMES[::-1])  # same names, other rows
    _, first = a.schedule(SYSTEM + b"question 0")
    picked = first.endpoint.name
    assert a.table.row(picked) != b.table.row(picked)
    assert a.prefix.last_match_blocks == 0  # cold
    b.eventually(picked, (1.0, uncached(SYSTEM + b"question 0")))
    for name in NAMES:
        if name != picked:
            assert b.load(name) == (0.0, 0.0)

    _, second = b.schedule(SYSTEM + b"question 1")
    assert second.endpoint.name == picked  # B never saw the first request: Redis told it
    assert b.prefix.last_match_blocks == SHARED_BLOCKS  # the system prompt's full blocks
    total = blocks(SYSTEM + b"question 1")
    assert second.primary.scores[0] == pytest.approx(2 * 1.0 + 2 * 0.5 + 3 * 4 / total)
    both = uncached(SYSTEM + b"question 0") + uncached(SYSTEM + b"question 1", SHARED_BLOCKS)
    a.eventually(picked, (2.0, both))  # and B's pick, which found most of it cached
    assert (a.errors(), b.errors()) == (0, 0)
    assert all(link.num_errors == 0 for link in (*a.links(), *b.links()))


def test_release_happens_on_the_picking_replica_and_counters_converge(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    b = replicas(server.url, namespace, NAMES[::-1])
    prompt = b"x" * 400  # 100 input tokens in 2 blocks: 128 uncached tokens when cold
    load = uncached(prompt)
    request, result = a.schedule(prompt)
    picked = result.endpoint.name
    assert a.synced_load(picked) == (1.0, load)  # a replica's sync carries its own changes
    b.eventually(picked, (1.0, load))
    b.complete(request, result)  # B holds nothing for it: a no-op
    assert b.inflight.num_tracked_requests() == 0
    assert b.synced_load(picked) == (1.0, load)
    a.complete(request, result)
    assert a.synced_load(picked) == (0.0, 0.0)  # at once: the sync published the release
    assert b.synced_load(picked) == (0.0, 0.0)
    a.complete(request, result)  # a second completion changes nothing
    assert a.counters.flush()
    assert b.synced_load(picked) == (0.0, 0.0)
    assert b.counters.link.command("EXISTS", b.counters.link.prefix + b"inflight") == 0


def test_prefill_share_is_released_on_the_first_chunk_everywhere(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    b = replicas(server.url, namespace, NAMES[::-1])
    request = Request.create(MODEL, prompt=b"x" * 400)
    result = SchedulingResult(
        {
            "decode": _run(a.table, "e1"),
            "prefill": _run(a.table, "e2"),
        },
        "decode",
    )
    cycle = CycleState(np.random.default_rng(0))
    # What token-producer would have written: 100 ids, no prefix match (all uncached).
    cycle.write(TOKENIZED_PROMPT, TokenizedRequest((pack_prompt_bytes(b"x" * 400),)))
    a.inflight.pre_request(cycle, request, result)
    b.eventually("e1", (1.0, 100.0))
    b.eventually("e2", (1.0, 100.0))
    chunk = Response(request.request_id, is_start_of_stream=True)
    a.scheduler.response_streaming(request, chunk, result)
    # llm-d-router without addEstimatedOutputTokens: at the first chunk the prefill hold
    # goes entirely and the decode hold keeps its request but drops its tokens.
    b.eventually("e2", (0.0, 0.0))
    b.eventually("e1", (1.0, 0.0))


def _run(table: EndpointTable, name: str) -> Any:
    from inference_sched.framework.types import ProfileRunResult

    row = table.row(name)
    return ProfileRunResult((row,), (table.endpoint_at(row),), (1.0,))


def test_sync_interval_serves_the_last_read_plus_own_changes(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    lazy = replicas(server.url, namespace, NAMES[::-1], syncIntervalMs=600_000)
    lazy.sync()  # the first read always happens
    request, result = a.schedule(b"y" * 400)
    picked = result.endpoint.name
    assert lazy.synced_load(picked) == (0.0, 0.0)  # within the interval: not re-read
    own_request, own = lazy.schedule(b"z" * 400)
    assert lazy.load(own.endpoint.name)[0] >= 1.0  # its own pick shows at once
    eager = replicas(server.url, namespace, NAMES, syncIntervalMs=0)
    wait_for("a fresh read to see A's pick", lambda: eager.synced_load(picked)[0] >= 1.0)
    assert lazy.load(picked)[0] == 0.0 or picked == own.endpoint.name
    a.complete(request, result)
    lazy.complete(own_request, own)


def test_a_table_removal_keeps_the_shared_entries_until_no_replica_sees_the_endpoint(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    # The TTL must outlast the steps below while B still has the endpoint: B marks it
    # seen every TTL/4, so only a maintenance thread starved for 3/4 of it could lose it.
    a = replicas(server.url, namespace, NAMES, endpointTtlMs=2000)
    b = replicas(server.url, namespace, NAMES[::-1], endpointTtlMs=2000)
    _, result = a.schedule(SYSTEM + b"q")
    picked = result.endpoint.name
    hashes = producer_hashes(SYSTEM + b"q")
    a.table.remove(picked)
    assert a.prefix.index.size() == 0  # the local copy dropped it
    assert b.index.holders(int(hashes[0])) == {picked}  # B still routes there
    _, again = b.schedule(SYSTEM + b"r")
    assert again.endpoint.name == picked
    b.table.remove(picked)
    # The expiring replica's thread counts the forget after Redis ran it: wait for the
    # count too, or a loaded machine shows the entries gone before the count moves.
    wait_for(
        "the unseen endpoint to expire",
        lambda: (
            picked not in b.index.endpoints()
            and not b.index.holders(int(hashes[0]))
            and a.index.num_forgotten + b.index.num_forgotten >= 1
        ),
    )


def test_forget_endpoint_drops_it_for_every_replica(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    b = replicas(server.url, namespace, NAMES[::-1])
    _, result = a.schedule(SYSTEM + b"q")
    picked = result.endpoint.name
    assert a.index.forget_endpoint(picked) == blocks(SYSTEM + b"q")
    assert b.index.endpoints() == []
    assert b.index.match(producer_hashes(SYSTEM + b"q")) == {}


# ====================================================================== LRU semantics
@pytest.fixture(scope="module", params=["binary", "decimal"])
def shared_index(request: pytest.FixtureRequest, server: RedisServer) -> Iterator[RedisPrefixIndex]:
    params = RedisPrefixParams(address=server.url, namespace=f"lru-{uuid.uuid4().hex}")
    index = RedisPrefixIndex.connect(params, encoding=request.param)
    yield index
    index.link.clear_namespace()
    index.close()


def test_lru_eviction_order_and_capacity(shared_index: RedisPrefixIndex) -> None:
    shared_index.link.clear_namespace()
    h = np.arange(1, 8, dtype=np.uint64)
    assert shared_index.add(h[:3], "a", 4) == 0
    assert shared_index.add(h[[0]], "a", 99) == 0  # hash 1 becomes most recent
    assert shared_index.lru_order("a") == [2, 3, 1]
    assert shared_index.add(h[3:6], "a", 99) == 2  # capacity stays 4: evicts 2, then 3
    assert shared_index.lru_order("a") == [1, 4, 5, 6]
    assert shared_index.endpoint_capacity("a") == 4
    assert shared_index.holders(2) == set()
    shared_index.add(h[:2], "b", 10)
    assert shared_index.holders(1) == {"a", "b"}
    assert shared_index.match(h) == {"a": 1, "b": 2}  # counting stops at hash 3
    assert shared_index.match(h, strict=True) == {"a": 1, "b": 2}
    assert shared_index.size() == 6


def test_replicas_follow_a_new_id_space(server: RedisServer, namespace: str) -> None:
    params = RedisPrefixParams(address=server.url, namespace=namespace)
    a, b = RedisPrefixIndex.connect(params), RedisPrefixIndex.connect(params)
    try:
        h = np.arange(1, 4, dtype=np.uint64)
        a.add(h, "first", 10)
        assert b.match(h) == {"first": 3}  # B now caches first's id
        a.link.clear_namespace()  # what a Redis restarted without data looks like
        a.add(h, "second", 10)  # the same id, given to another endpoint
        assert b.match(h) == {"second": 3}
        assert b.match(h, strict=True) == {"second": 3}
    finally:
        a.link.clear_namespace()
        a.close()
        b.close()


HASH_POOL = [
    0,
    1,
    2**64 - 1,
    0x0A,  # the newline byte, as raw bytes
    0x2C2C2C2C2C2C2C2C,  # commas, as raw bytes
    12345678901234567890,
    42,
    7,
    2**63,
    99,
]
_ops = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.lists(st.sampled_from(HASH_POOL), max_size=8),
        st.integers(1, 5),
    ),
    min_size=1,
    max_size=12,
)
_queries = st.lists(st.lists(st.sampled_from(HASH_POOL), min_size=1, max_size=6), max_size=4)


@settings(max_examples=25)
@given(ops=_ops, queries=_queries)
def test_same_lru_and_matches_as_prefix_index(
    shared_index: RedisPrefixIndex,
    ops: list[tuple[int, list[int], int]],
    queries: list[list[int]],
) -> None:
    shared_index.link.clear_namespace()
    reference = PrefixIndex()
    for row, hashes, capacity in ops:
        arr = np.asarray(hashes, dtype=np.uint64)
        reference.add(arr, row, capacity)
        shared_index.add(arr, f"ep{row}", capacity)
    for row in range(3):
        assert shared_index.lru_order(f"ep{row}") == reference.lru_order(row)
        assert shared_index.endpoint_capacity(f"ep{row}") == reference.endpoint_capacity(row)
    assert shared_index.size() == reference.size()
    for query in queries:
        arr = np.asarray(query, dtype=np.uint64)
        for strict in (False, True):
            counts = np.zeros(3)
            if strict:
                reference.match_prefix(arr, counts)
            else:
                reference.match_counting(arr, counts)
            expected = {f"ep{r}": int(c) for r, c in enumerate(counts.tolist()) if c > 0}
            assert shared_index.match(arr, strict=strict) == expected


# ====================================================================== failures
def test_redis_killed_mid_run_degrades_then_recovers(
    own_server: RedisServer,
    namespace: str,
    replicas: Callable[..., Replica],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = replicas(own_server.url, namespace, NAMES)
    b = replicas(own_server.url, namespace, NAMES[::-1])
    held_request, held = a.schedule(SYSTEM + b"held")  # stays in flight throughout
    picked = held.endpoint.name
    b.eventually(picked, (1.0, uncached(SYSTEM + b"held")))

    own_server.stop()
    for i in range(5):  # every decision succeeds, on local state
        _, result = a.schedule(SYSTEM + f"down {i}".encode())
        assert result.endpoint.name == picked  # the local copy still has A's own pick
        assert a.prefix.last_match_blocks == SHARED_BLOCKS
    assert all(link.num_errors >= 1 for link in a.links())
    assert a.counters.link.num_skipped >= 1  # later calls skipped: the circuit is open
    assert a.load(picked)[0] == 6.0  # A's own share: the held request and five more
    assert b.synced_load(picked) == (0.0, 0.0)  # B's own share is empty
    assert (a.errors(), b.errors()) == (0, 0)  # no plugin raised
    for link in a.links():  # logged once per interval, not once per degraded call
        logged = [r for r in caplog.records if link.replica_id in r.getMessage()]
        assert [r.levelname for r in logged] == ["WARNING"]

    own_server.start()  # empty: no persistence
    # A link's thread counts the recovery just after it closes the circuit: wait for both.
    wait_for(
        "every link to recover",
        lambda: (
            all(lk.is_healthy for lk in (*a.links(), *b.links()))
            and all(lk.num_recoveries >= 1 for lk in a.links())
        ),
    )
    # A's heartbeat republishes its share: B sees A's requests, sent while Redis was down.
    wait_for("A's share to be republished", lambda: b.synced_load(picked)[0] == 6.0)
    _, fresh = a.schedule(b"fresh prompt after the restart " * 10)
    _, echo = b.schedule(b"fresh prompt after the restart " * 10)
    assert echo.endpoint.name == fresh.endpoint.name
    assert b.prefix.last_match_blocks > 0
    assert all(link.num_recoveries >= 1 for link in a.links())
    # B's prefix link was idle through the outage: it found its connection closed by the
    # restart and reconnected, without an error or a degraded decision.
    assert b.index.link.num_errors == 0
    a.complete(held_request, held)


def test_slow_redis_times_out_and_the_decision_still_succeeds(
    own_server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(own_server.url, namespace, NAMES, timeoutMs=100)
    a.schedule(SYSTEM + b"warm")
    os.kill(own_server.pid, signal.SIGSTOP)  # alive, accepting, never answering
    try:
        _, result = a.schedule(SYSTEM + b"slow")
        assert result.endpoint is not None
        assert a.counters.link.num_errors + a.index.link.num_errors >= 1
        assert not a.index.link.is_healthy
    finally:
        os.kill(own_server.pid, signal.SIGCONT)
    wait_for("recovery after the pause", lambda: all(lk.is_healthy for lk in a.links()))
    a.schedule(SYSTEM + b"after")
    assert a.errors() == 0


def test_a_replica_starting_while_redis_is_down_starts_degraded(
    own_server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    own_server.stop()
    a = replicas(own_server.url, namespace, NAMES)
    assert not any(link.is_healthy for link in a.links())
    _, first = a.schedule(SYSTEM + b"1")
    _, second = a.schedule(SYSTEM + b"2")
    assert second.endpoint == first.endpoint  # local prefix affinity
    own_server.start()
    wait_for("the first connection", lambda: all(lk.is_healthy for lk in a.links()))


def test_flushed_scripts_are_reloaded(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    a.schedule(SYSTEM + b"1")
    a.index.link.command("SCRIPT", "FLUSH")
    _, result = a.schedule(SYSTEM + b"2")
    assert a.prefix.last_match_blocks == SHARED_BLOCKS
    assert all(link.num_errors == 0 for link in a.links())
    assert result.endpoint is not None


# ====================================================================== leases
def test_lease_expiry_reaps_a_dead_replicas_share(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES, leaseTtlMs=300)
    b = replicas(server.url, namespace, NAMES[::-1], leaseTtlMs=300)
    _, result = a.schedule(b"w" * 400)
    picked = result.endpoint.name
    b.eventually(picked, (1.0, uncached(b"w" * 400)))
    a.counters.link.close()  # a crash: no heartbeat, no withdrawal
    # B's janitor counts the reap after Redis ran it: wait for the count as well.
    wait_for(
        "B's janitor to reap A",
        lambda: b.synced_load(picked) == (0.0, 0.0) and b.counters.num_reaped >= 1,
    )


def test_a_replica_reaped_while_alive_puts_its_share_back(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    # A's lease outlasts the steps from its wake-up heartbeat to B's read (B's janitor,
    # every 100 ms, would reap it again once it lapsed); B's is short, so it reaps soon.
    a = replicas(server.url, namespace, NAMES, leaseTtlMs=2000)
    b = replicas(server.url, namespace, NAMES[::-1], leaseTtlMs=300)
    request, result = a.schedule(b"w" * 400)
    picked = result.endpoint.name
    b.eventually(picked, (1.0, uncached(b"w" * 400)))
    a.counters.link.stop_thread()  # frozen: its lease lapses
    wait_for("B's janitor to reap A", lambda: b.synced_load(picked) == (0.0, 0.0))
    a.counters.heartbeat_now()  # A wakes up: the heartbeat republishes its share
    assert b.synced_load(picked) == (1.0, uncached(b"w" * 400))
    a.complete(request, result)
    assert a.counters.flush()  # A's thread is stopped: publish on this thread
    assert b.synced_load(picked) == (0.0, 0.0)


def test_closing_a_replica_withdraws_its_share_at_once(
    server: RedisServer, namespace: str, replicas: Callable[..., Replica]
) -> None:
    a = replicas(server.url, namespace, NAMES)
    b = replicas(server.url, namespace, NAMES[::-1])
    _, result = a.schedule(b"w" * 400)
    b.eventually(result.endpoint.name, (1.0, uncached(b"w" * 400)))
    a.inflight.close()
    assert b.synced_load(result.endpoint.name) == (0.0, 0.0)
