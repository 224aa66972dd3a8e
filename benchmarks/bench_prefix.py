"""Prefix-cache affinity hot path (issue 3, benchmarks b-e): index matches, decisions, memory.

Cases, in one run (compile time excluded, heap frozen with ``gc.freeze()`` after warm-up):

* ``decision/gie-default`` (b): one ``Scheduler.schedule`` with GIE's default profile
  (``Scheduler.from_config(None, table)``: queue 2, kv-cache 2, prefix 3, max-score) on
  8k-token (32 KB) prompts over 64 / 256 / 1024 endpoints. The index is warmed to >= 1M
  blocks by scheduling requests of a shared-prefix workload (groups of a common 2k-token
  system prompt + a unique 6k-token question) through the scheduler, so PreRequest fills
  it and each group's prefix sits on the endpoints the scheduler chose; the timed
  decisions are fresh requests of the same groups (they update the index too). Skipped
  when ``approx-prefix-cache-producer`` is not registered. No baseline (ratio 1.0).
  Target: p50 <= 40 us, p99 <= 150 us at 256 endpoints. After each decision the script
  calls ``Scheduler.run_deferred()``, which applies the index update PreRequest queued
  (GIE runs that update in a goroutine, off the decision path): ``decision/...`` times
  ``schedule`` (what the gateway waits for), ``deferred/index-update`` times
  ``run_deferred`` and ``request-cpu`` their sum (the CPU each request costs).
* ``match/numba`` (c): hashing a 100k-token (400 KB) prompt, every block (6,400 blocks
  of 16 tokens, no truncation), and the counting match against a warm index, as the
  producer does it (``PrefixIndex.match_prompt``: one kernel call for both); the index
  holds 1M background blocks over 256 endpoints, and 4 endpoints hold the prompt's
  first 80%. Target <= 300 us.
* ``workload/python-model`` and ``workload/numba`` (d): the same index work, hash + match
  + PreRequest-style ``add`` of the request's blocks on an endpoint, for the 400 KB prompt
  and for 8k-token prompts (GIE default: 256 blocks matched), done by the pure-Python
  baseline (a Python loop of ``xxhash.xxh64`` and
  :class:`~tests.oracles.prefix_index_model.PrefixIndexModel`, a dict of sets plus
  OrderedDict LRUs) and by the Numba path, on identically filled indexes, alternating in
  5 rounds. Target >= 20x.
* ``memory/...`` (e): a fresh child process fills an index to 10M (hash, endpoint)
  entries (320 endpoints x GIE's default LRU capacity 31,250, 256 distinct blocks per
  add, the worst case of one endpoint per hash), then keeps adding 2M more (evictions:
  steady state), once growing on demand and once after ``reserve(10M)``. Reports bytes per
  entry (``nbytes / size``), the RSS added by the index (VmRSS after - before) and the
  peak (VmHWM). Target <= 0.5 GB. ``--quick`` runs 1M entries instead (32 endpoints).

``ratio_vs_baseline`` is baseline p50 / case p50 (the speed-up). Timed cases also carry
``round_p50s_us`` (p50 of 5 consecutive slices of the samples) and ``best_round_p50_us``:
the machine is noisy in phases, and the rounds show how much of a p50 is noise.

    python benchmarks/bench_prefix.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, round_p50s_us, time_calls, write_report

from inference_sched import Endpoint, EndpointTable, Request, Scheduler, registry
from inference_sched.kernels._twins import hashing as reference
from inference_sched.prefix.hashing import block_hashes, readonly, seed_hash
from inference_sched.prefix.index import PrefixIndex
from tests.oracles.prefix_index_model import PrefixIndexModel

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BLOCK_TOKENS = 16
BLOCK_BYTES = 4 * BLOCK_TOKENS
GIE_MAX_BLOCKS = 256
LRU_CAPACITY = 31250
PRODUCER = "approx-prefix-cache-producer"
ROUNDS = 5


def printable(rng: np.random.Generator, size: int) -> bytes:
    return rng.integers(0x20, 0x7F, size, dtype=np.uint8).tobytes()


def result(case: str, endpoints: int, samples: np.ndarray, ratio: float, **extra: Any) -> dict:
    p50, p99 = percentiles_us(samples)
    rounds = round_p50s_us(samples)
    return {
        "case": case,
        "endpoints": endpoints,
        "p50_us": p50,
        "p99_us": p99,
        "ratio_vs_baseline": ratio,
        "calls": int(samples.size),
        "best_round_p50_us": min(rounds),
        "round_p50s_us": rounds,
        **extra,
    }


# ------------------------------------------------------------------ (b) decisions


def make_table(num_endpoints: int, rng: np.random.Generator) -> EndpointTable:
    table = EndpointTable()
    for i in range(num_endpoints):
        table.add(Endpoint(f"e{i}-rank-0", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8000))
    refresh_metrics(table, rng)
    return table


def refresh_metrics(table: EndpointTable, rng: np.random.Generator) -> None:
    """New random queue lengths and KV usage, as a metrics scrape would bring."""
    rows = table.candidates()
    table.update_metrics(
        rows,
        waiting=rng.integers(0, 16, len(rows)).astype(np.float64),
        kv_usage_frac=rng.uniform(0, 1, len(rows)),
    )


class SharedPrefixWorkload:
    """Groups of a common 2k-token system prompt + a unique 6k-token question (32 KB)."""

    def __init__(self, num_groups: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.systems = [printable(self.rng, 8 * 1024) for _ in range(num_groups)]
        self.count = 0

    def request(self) -> Request:
        group = int(self.rng.integers(len(self.systems)))
        self.count += 1
        prompt = self.systems[group] + printable(self.rng, 24 * 1024)
        return Request.create(MODEL, prompt=prompt, request_id=f"r{self.count}")


def bench_decisions(quick: bool) -> list[dict]:
    if not registry.is_registered(PRODUCER):
        print("decision/gie-default: skipped: producer not available", file=sys.stderr)
        return []
    results = []
    target_blocks = 100_000 if quick else 1_000_000
    decisions = 300 if quick else 2000
    for n in (64, 256, 1024):
        rng = np.random.default_rng(n)
        scheduler = Scheduler.from_config(None, make_table(n, rng), seed=n)
        producer_cls = registry.get(PRODUCER)
        producer = next(p for p in scheduler.plugins.values() if isinstance(p, producer_cls))
        index: PrefixIndex = producer.index
        workload = SharedPrefixWorkload(num_groups=max(16, n // 4), seed=n)
        t0 = time.perf_counter()
        # Warm: PreRequest fills the index. Load metrics change every 50 requests (as
        # scrapes would), so groups spread over endpoints instead of filling the LRUs of
        # the few that static metrics favour (which would cap the index below target).
        for _ in range(4 * target_blocks // 128):
            if index.size() >= target_blocks:
                break
            if workload.count % 50 == 0:
                refresh_metrics(scheduler.table, rng)
            scheduler.schedule(workload.request())
            scheduler.run_deferred()
        print(
            f"decision n={n}: warmed {index.size()} blocks with {workload.count} requests "
            f"in {time.perf_counter() - t0:.1f} s; timing {decisions} decisions ...",
            file=sys.stderr,
        )
        requests = [workload.request() for _ in range(decisions)]
        gc.collect()
        decided, deferred = time_decisions(scheduler, requests)
        extra = {
            "index_entries": index.size(),
            "index_hashes": index.num_hashes(),
            "index_nbytes": index.nbytes,
        }
        results.append(result("decision/gie-default/8k-tokens", n, decided, 1.0, **extra))
        results.append(result("deferred/index-update/8k-tokens", n, deferred, 1.0, **extra))
        results.append(
            result("request-cpu/gie-default/8k-tokens", n, decided + deferred, 1.0, **extra)
        )
    return results


def time_decisions(scheduler: Scheduler, requests: list[Request]) -> tuple[np.ndarray, np.ndarray]:
    """Per request: ``schedule`` (what the gateway waits for), then ``run_deferred``
    (PreRequest's queued index update, which GIE also runs off the decision path)."""
    decided = np.empty(len(requests), dtype=np.int64)
    deferred = np.empty(len(requests), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, request in enumerate(requests):
        t0 = clock()
        scheduler.schedule(request)
        t1 = clock()
        scheduler.run_deferred()
        deferred[i] = clock() - t1
        decided[i] = t1 - t0
    return decided, deferred


# ------------------------------------------------------------------ (c, d) index work


def fill(indexes: list[Any], num_rows: int, background: int, rng: np.random.Generator) -> None:
    """The same background content in every index: ``background`` random blocks."""
    hashes = rng.integers(0, 2**64, background, dtype=np.uint64)
    chunk = 256
    for k, start in enumerate(range(0, background, chunk)):
        part = hashes[start : start + chunk]
        as_ints = [int(h) for h in part]
        for index in indexes:
            if isinstance(index, PrefixIndexModel):
                index.add(as_ints, k % num_rows, LRU_CAPACITY)
            else:
                index.add(part, k % num_rows, LRU_CAPACITY)


def bench_index(quick: bool) -> list[dict]:
    rng = np.random.default_rng(1)
    num_rows = 256
    background = 100_000 if quick else 1_000_000
    numba_index = PrefixIndex()
    model = PrefixIndexModel()
    t0 = time.perf_counter()
    fill([numba_index, model], num_rows, background, rng)
    print(
        f"index: {background} background blocks in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    seed = np.uint64(seed_hash(MODEL))
    out = np.zeros(num_rows)
    results = []
    prompts = {
        "400KB": (printable(rng, 400 * 1024), 1 << 40),
        "32KB": (printable(rng, 32 * 1024), GIE_MAX_BLOCKS),
    }
    for label, (prompt, max_blocks) in prompts.items():
        hashes = block_hashes(prompt, MODEL, "", BLOCK_TOKENS, max_blocks)
        held = hashes[: 4 * len(hashes) // 5]
        for row in range(4):  # the prompt's first 80% lives on rows 0-3
            numba_index.add(held, row, LRU_CAPACITY)
            model.add([int(h) for h in held], row, LRU_CAPACITY)
        data = readonly(np.frombuffer(prompt, dtype=np.uint8))
        py_out = np.empty(len(hashes), dtype=np.uint64)

        # The producer's path: hash and match in one kernel call (match_prompt).
        def numba_match(p: bytes = prompt, m: int = max_blocks) -> None:
            numba_index.match_prompt(p, MODEL, "", BLOCK_TOKENS, m, out)

        def numba_work(p: bytes = prompt, m: int = max_blocks) -> None:
            h = numba_index.match_prompt(p, MODEL, "", BLOCK_TOKENS, m, out)
            numba_index.add(h, 0, LRU_CAPACITY)

        def python_work(d: np.ndarray = data, m: int = max_blocks, o: np.ndarray = py_out) -> None:
            count = reference.chained_block_hashes(d, BLOCK_BYTES, m, seed, o)
            h = [int(x) for x in o[:count]]
            model.match_counting(h, out)
            model.add(h, 0, LRU_CAPACITY)

        numba_index.match_counting(hashes, out)
        expected = out.copy()
        model.match_counting([int(h) for h in hashes], out)
        assert (out == expected).all()
        assert expected[0] == len(held)
        fast, slow = (300, 20) if quick else (3000, 200)
        for fn in (numba_match, numba_work, python_work):  # warm-up
            time_calls(fn, 5)
        gc.collect()
        # Alternate the three in 5 rounds, so a slow phase of the machine hits all of them.
        parts: dict[Callable[[], None], list[np.ndarray]] = {
            f: [] for f in (numba_match, python_work, numba_work)
        }
        for _ in range(ROUNDS):
            for fn, calls in ((numba_match, fast), (python_work, slow), (numba_work, fast)):
                parts[fn].append(time_calls(fn, calls // ROUNDS))
        match, work_py, work_nb = (np.concatenate(parts[f]) for f in parts)
        base_p50, _ = percentiles_us(work_py)
        extra = {"prompt_bytes": len(prompt), "blocks": len(hashes)}
        extra["index_entries"] = numba_index.size()
        results.append(result(f"match/numba/{label}", num_rows, match, 1.0, **extra))
        results.append(result(f"workload/python-model/{label}", num_rows, work_py, 1.0, **extra))
        results.append(
            result(
                f"workload/numba/{label}",
                num_rows,
                work_nb,
                base_p50 / percentiles_us(work_nb)[0],
                baseline=f"workload/python-model/{label}",
                **extra,
            )
        )
    return results


# ------------------------------------------------------------------ (e) memory


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(num_rows: int, reserve: bool) -> dict:
    """Run in a fresh process: fill 10M (num_rows x 31,250) entries, report memory."""
    index = PrefixIndex()
    index.add(np.arange(4, dtype=np.uint64), 0, 1)  # compile outside the measurement
    index.remove_endpoint(0)
    rng = np.random.default_rng(2)
    gc.collect()
    rss0 = vm_kb("VmRSS")
    target = num_rows * LRU_CAPACITY
    t0 = time.perf_counter()
    if reserve:
        index.reserve(target)
    added = 0
    k = 0
    while added < target + target // 5:  # then 20% more: evictions, steady state
        index.add(rng.integers(0, 2**64, 256, dtype=np.uint64), k % num_rows, LRU_CAPACITY)
        added += 256
        k += 1
    seconds = time.perf_counter() - t0
    assert index.size() == target, index.size()
    return {
        "entries": index.size(),
        "hashes": index.num_hashes(),
        "nbytes": index.nbytes,
        "bytes_per_entry": index.nbytes / index.size(),
        "rss_delta_mb": (vm_kb("VmRSS") - rss0) / 1024,
        "rss_mb": vm_kb("VmRSS") / 1024,
        "rss_peak_mb": vm_kb("VmHWM") / 1024,
        "rss_before_mb": rss0 / 1024,
        "fill_s": seconds,
        "adds_per_s": k / seconds,
    }


def bench_memory(quick: bool) -> list[dict]:
    num_rows = 32 if quick else 320
    results = []
    for reserve in (False, True):
        label = "reserved" if reserve else "grown"
        print(f"memory/{label}: {num_rows * LRU_CAPACITY} entries in a child ...", file=sys.stderr)
        cmd = [sys.executable, __file__, "--memory-child", str(num_rows), str(int(reserve))]
        child = subprocess.run(cmd, check=True, capture_output=True, text=True)
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        results.append(
            {
                "case": f"memory/{figures['entries'] // 1_000_000}M-entries/{label}",
                "endpoints": num_rows,
                "p50_us": 1e6 / figures["adds_per_s"],
                "p99_us": float("nan"),
                "ratio_vs_baseline": 1.0,
                "note": "p50_us: mean time of one 256-block add while filling",
                **figures,
            }
        )
    return results


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        print(json.dumps(memory_child(int(sys.argv[2]), bool(int(sys.argv[3])))))
        return
    args = parse_args(__doc__ or "")
    # Warm the kernels on a small index, then freeze the startup heap (bench_schedule).
    warm = PrefixIndex()
    warm.add(np.arange(8, dtype=np.uint64), 0, 4)
    warm.match_counting(np.arange(8, dtype=np.uint64), np.zeros(1))
    warm.match_prompt(b"x" * 4096, MODEL, "", BLOCK_TOKENS, GIE_MAX_BLOCKS, np.zeros(1))
    block_hashes(b"x" * 4096, MODEL)
    gc.collect()
    gc.freeze()
    results = bench_index(args.quick)
    results += bench_decisions(args.quick)
    results += bench_memory(args.quick)
    write_report("prefix", results, args.json)
    timed = [r for r in results if "best_round_p50_us" in r]
    print(f"\n{'case (p50 of 5 consecutive rounds, us)':<40} {'endpoints':>9}  rounds")
    for r in timed:
        rounds = " ".join(f"{x:7.1f}" for x in r["round_p50s_us"])
        print(f"{r['case']:<40} {r['endpoints']:>9}  {rounds}")
    mem = [r for r in results if r["case"].startswith("memory/")]
    if mem:
        print(f"\n{'case':<32} {'B/entry':>8} {'RSS+MB':>8} {'peak MB':>8} {'fill s':>7}")
        for r in mem:
            print(
                f"{r['case']:<32} {r['bytes_per_entry']:>8.1f} {r['rss_delta_mb']:>8.1f} "
                f"{r['rss_peak_mb']:>8.1f} {r['fill_s']:>7.1f}"
            )


if __name__ == "__main__":
    main()
