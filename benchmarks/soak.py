"""Soak: a million decisions with endpoint churn, scrapes and KV events; memory and
latency per window.

A pool of ``--endpoints`` vLLM-like endpoints (engine block = index block = 16 tokens)
serves a shared-prefix workload: 32 system prompts of 64 blocks, each request one of them
plus 4-32 blocks of its own. Every decision is ``Request.create`` + ``schedule`` +
``run_deferred`` (the timed part) under GIE's default profile (queue 2, kv-cache 2,
prefix 3) with the ``precise-prefix-cache-producer`` fed in process
(``events_in_process``; ``--producer approx`` uses GIE's approximate producer instead).
Around the decisions, untimed, as a running pool would:

* KV events (precise producer): the picked endpoint "prefills" the request and reports a
  BlockStored for the blocks it did not hold (its system prompt once, then the request's
  own blocks, chained); once it holds more than :data:`ENGINE_BLOCKS` blocks it evicts its oldest
  requests' blocks (BlockRemoved), and now and then a whole system prompt. Engine hashes
  are per endpoint, as with vLLM's per-process seed.
* Scrapes: every :data:`SCRAPE_EVERY` decisions, ``table.update_metrics`` with new queue,
  running and KV-usage values for every endpoint.
* Churn: every :data:`CHURN_EVERY` decisions one endpoint is removed and a new one (new
  name and address) added.

Per window of 100k decisions (10k with ``--quick``) it reports the p50 / p99 decision
latency, the RSS after a ``gc.collect()``, and the window's p50 over the first window's
(``ratio_vs_baseline``): a leak shows as RSS growing window after window, a slowing
structure as the ratio. ``tests/unit/test_soak.py`` runs a short soak and checks the RSS
bound.

    python benchmarks/soak.py [--quick] [--json PATH] [--decisions N] [--window N]
                              [--endpoints N] [--producer precise|approx] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import write_report

from inference_sched.framework.scheduler import Scheduler
from inference_sched.framework.types import Endpoint, Request
from inference_sched.prefix.precise.wire import BlockRemoved, BlockStored
from inference_sched.state.table import EndpointTable

MODEL: Final = "meta-llama/Llama-3.1-8B-Instruct"
BLOCK: Final = 16
NUM_SYSTEMS: Final = 32
SYSTEM_BLOCKS: Final = 64
OWN_BLOCKS: Final = (4, 33)  # each request's own blocks: [4, 33)
ENGINE_BLOCKS: Final = 1024
"""Blocks an engine holds before it evicts (a small cache: steady state comes early)."""
SCRAPE_EVERY: Final = 500
CHURN_EVERY: Final = 2000
SYSTEM_EVICTION_P: Final = 0.002
VOCAB: Final = 128_000
_MASK64: Final = 2**64 - 1

_DEFAULT_PROFILE: Final = """
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
"""
CONFIGS: Final = {
    "precise": "plugins:\n- type: precise-prefix-cache-producer\n"
    "  parameters: {speculativeIndexing: true}" + _DEFAULT_PROFILE,
    "approx": "plugins:\n- type: approx-prefix-cache-producer\n"
    f"  parameters: {{lruCapacityPerServer: {ENGINE_BLOCKS}}}" + _DEFAULT_PROFILE,
}


def rss_mb() -> float:
    """Resident memory now, MB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Engine:
    """What one endpoint's engine caches, and the KV events it reports."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.systems: dict[int, np.ndarray] = {}  # system prompt -> its engine hashes
        self.own: collections.deque[np.ndarray] = collections.deque()  # requests' blocks
        self.blocks = 0

    def _hashes(self, parent: int, key: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.uint64)
        h = parent
        for i in range(n):
            h = hash((self.seed, h, key, i)) & _MASK64
            out[i] = h
        return out

    def prefill(self, system: int, request_key: int, tokens: np.ndarray) -> list[object]:
        """The events of serving a request: its uncached blocks stored, evictions."""
        events: list[object] = []
        hashes = self.systems.get(system)
        if hashes is None:
            hashes = self._hashes(0, -1 - system, SYSTEM_BLOCKS)
            self.systems[system] = hashes
            self.blocks += SYSTEM_BLOCKS
            events.append(
                BlockStored(hashes, None, tokens[: SYSTEM_BLOCKS * BLOCK], BLOCK, None, "GPU")
            )
        own_blocks = len(tokens) // BLOCK - SYSTEM_BLOCKS
        own = self._hashes(int(hashes[-1]), request_key, own_blocks)
        events.append(
            BlockStored(own, int(hashes[-1]), tokens[SYSTEM_BLOCKS * BLOCK :], BLOCK, None, "GPU")
        )
        self.own.append(own)
        self.blocks += own_blocks
        while self.blocks > ENGINE_BLOCKS and self.own:
            old = self.own.popleft()
            self.blocks -= len(old)
            events.append(BlockRemoved(old, "GPU"))
        return events

    def evict_system(self, system: int) -> list[object]:
        hashes = self.systems.pop(system, None)
        if hashes is None:
            return []
        self.blocks -= len(hashes)
        return [BlockRemoved(hashes, "GPU")]


class Pool:
    """The table, the engines behind it and the churn."""

    def __init__(self, num_endpoints: int, rng: np.random.Generator) -> None:
        self.table = EndpointTable()
        self.rng = rng
        self.engines: dict[str, Engine] = {}
        self.pods: dict[str, str] = {}  # name -> ip:port (the KV-event topic's pod)
        self.added = 0
        self.removed = 0
        self._next = 0
        for _ in range(num_endpoints):
            self.add()
        self.added = 0

    def add(self) -> None:
        k = self._next
        self._next += 1
        name = f"vllm-{k}"
        address = f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
        self.table.add(Endpoint(name, address, 8000))
        self.engines[name] = Engine(seed=k)
        self.pods[name] = f"{address}:8000"
        self.added += 1

    def churn(self) -> None:
        names = sorted(self.engines)
        gone = names[int(self.rng.integers(len(names)))]
        self.table.remove(gone)
        del self.engines[gone], self.pods[gone]
        self.removed += 1
        self.add()

    def scrape(self) -> None:
        rows = self.table.candidates()
        n = len(rows)
        self.table.update_metrics(
            rows,
            waiting=self.rng.integers(0, 8, n).astype(np.float64),
            running=self.rng.integers(0, 32, n).astype(np.float64),
            kv_usage_frac=self.rng.random(n),
        )


def soak(
    decisions: int, window: int, num_endpoints: int, producer: str, seed: int
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    pool = Pool(num_endpoints, rng)
    scheduler = Scheduler.from_config(CONFIGS[producer], pool.table, seed=seed)
    precise = scheduler.plugins.get("precise-prefix-cache-producer")
    if precise is not None:
        precise.events_in_process()
    pool.scrape()
    systems = [rng.integers(0, VOCAB, SYSTEM_BLOCKS * BLOCK, dtype=np.uint32) for _ in range(32)]
    counters = {"events": 0}

    def one(i: int, timed: np.ndarray | None, at: int) -> None:
        system = int(rng.integers(NUM_SYSTEMS))
        own = rng.integers(0, VOCAB, int(rng.integers(*OWN_BLOCKS)) * BLOCK, dtype=np.uint32)
        tokens = np.concatenate([systems[system], own])
        t0 = time.perf_counter_ns()
        request = Request.create(MODEL, prompt=tokens.tobytes(), token_ids=tokens)
        result = scheduler.schedule(request)
        scheduler.run_deferred()
        if timed is not None:
            timed[at] = time.perf_counter_ns() - t0
        if precise is not None:  # the approximate producer learns from its picks alone
            name = result.endpoint.name
            engine = pool.engines[name]
            events = engine.prefill(system, i, tokens)
            if rng.random() < SYSTEM_EVICTION_P:
                events += engine.evict_system(int(rng.integers(NUM_SYSTEMS)))
            pod = pool.pods[name]
            for event in events:
                precise.kv_event(pod, event, MODEL)
            counters["events"] += len(events)
        if i % SCRAPE_EVERY == 0:
            pool.scrape()
        if i % CHURN_EVERY == CHURN_EVERY - 1:
            pool.churn()

    warmup = min(2000, window)
    start = time.perf_counter()
    for i in range(warmup):  # JIT compiles, the engines fill
        one(i, None, 0)
    print(
        f"soak: {producer} producer, {num_endpoints} endpoints, {decisions} decisions in "
        f"windows of {window} (after {warmup} warm-up decisions, {time.perf_counter() - start:.1f}"
        f" s); RSS {rss_mb():.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    results: list[dict[str, Any]] = []
    samples = np.empty(window, dtype=np.int64)
    done = 0
    k = 0
    while done < decisions:
        n = min(window, decisions - done)
        events_before = counters["events"]
        removed_before = pool.removed
        t0 = time.perf_counter()
        for j in range(n):
            one(warmup + done + j, samples, j)
        elapsed = time.perf_counter() - t0
        done += n
        gc.collect()
        p50 = float(np.percentile(samples[:n], 50)) / 1e3
        p99 = float(np.percentile(samples[:n], 99)) / 1e3
        baseline = results[0]["p50_us"] if results else p50
        results.append(
            {
                "case": f"soak/window{k}",
                "endpoints": len(pool.table),
                "p50_us": p50,
                "p99_us": p99,
                "ratio_vs_baseline": p50 / baseline,
                "rss_mb": rss_mb(),
                "peak_rss_mb": peak_rss_mb(),
                "decisions": n,
                "decisions_total": done,
                "kv_events": counters["events"] - events_before,
                "endpoints_replaced": pool.removed - removed_before,
                "window_s": elapsed,
                "producer": producer,
            }
        )
        r = results[-1]
        print(
            f"  window {k}: {done}/{decisions} decisions, p50 {p50:.1f} us, p99 {p99:.1f} us, "
            f"RSS {r['rss_mb']:.1f} MB, {r['kv_events']} KV events, "
            f"{r['endpoints_replaced']} endpoints replaced, {elapsed:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        k += 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k decisions, windows of 10k")
    parser.add_argument("--json", type=Path, help="write results as JSON to this path")
    parser.add_argument("--decisions", type=int, help="decisions (default 10**6; 50k --quick)")
    parser.add_argument("--window", type=int, help="decisions per window (100k; 10k --quick)")
    parser.add_argument("--endpoints", type=int, default=64, help="pool size (default 64)")
    parser.add_argument("--producer", choices=sorted(CONFIGS), default="precise")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    decisions = args.decisions or (50_000 if args.quick else 10**6)
    window = args.window or (10_000 if args.quick else 100_000)
    if decisions < 1 or window < 1 or args.endpoints < 2:
        parser.error("--decisions and --window must be >= 1, --endpoints >= 2")
    results = soak(decisions, window, args.endpoints, args.producer, args.seed)
    write_report("soak", results, args.json)


if __name__ == "__main__":
    main()
