"""Precise prefix index (issue 6 part 2, §7): KV-event ingestion and a decision's index part.

A synthetic fleet of 256 vLLM-like endpoints (engine block = index block = 16 tokens)
reports KV events the way an engine does: 64 system prompts of 128 blocks (2k tokens),
four per endpoint (so each sits on 16 endpoints), and conversations on top: a prefill
BlockStored of 16-128 blocks chained to its system prompt, then 0-16 single-block decode
BlockStored events; CPU offloads (BlockStored without tokens, medium "CPU") for part of
them; BlockRemoved (up to 16 hashes per event) when an endpoint retires its oldest
conversation. Engine hashes are random per endpoint, as with vLLM's per-process seed.
The index is filled to ~4k blocks per endpoint (~1M GPU entries, plus CPU copies and the
engine-key map) before anything is timed; the same events fill the baseline.

Cases (compile time excluded by a warm-up, heap frozen with ``gc.freeze()``):

* ``ingest/numba/single``: a steady-state event stream (new conversations on random
  endpoints, their decodes, offloads, retirements) applied event by event with
  ``block_stored`` / ``block_removed``; ``p50_us``/``p99_us`` per event.
* ``ingest/numba/batched``: the same stream through ``apply_events`` in batches of 64
  events (one kernel call per batch; what a decoder draining its socket would do);
  ``p50_us``/``p99_us`` per batch.
* ``ingest/python-model``: the same stream, event by event, into
  :class:`~tests.oracles.prefix_index_model.PreciseIndexModel` (dicts, sets,
  OrderedDicts, ``xxhash`` per block): the baseline.
  Each ingest case reports ``block_events_per_s`` (engine blocks in stored and removed
  events / wall time, over the whole stream) and its ``ratio_vs_baseline`` is that rate
  over the baseline's. Target: >= 200,000 block events/s on one core.
* ``decision/numba``: the index part of one precise decision for an 8k-token request (512
  blocks of 16 tokens) over the 256 endpoints: ``expire(now)`` then the fused
  ``match_tokens`` (hash 512 blocks + tier-weighted longest-prefix match over GPU, CPU and
  speculative entries). Half the requests open a new conversation on a system prompt
  (16 endpoints match 128 blocks), half continue a live one (one endpoint matches its
  whole conversation). Target: p50 <= 50 us.
* ``decision/python-model``: the same requests through the model's ``match_tokens``; the
  decision's ``ratio_vs_baseline`` is its p50 over ``decision/numba``'s. Timed before the
  Numba decision cases rather than alternating with them: its sweep over a Python heap
  of millions of dict and set entries would evict their working set from the caches.
* ``decision/numba/lazy-keys``: the same with ``match_tokens(..., all_keys=False)``,
  which stops hashing once the match is decided (the plugin then hashes the rest for
  the speculative insert after the pick, off the decision path).
* ``decision/numba/full-hit``: requests sent again right after their pick, so all 512
  blocks match on one endpoint (its speculative entries): the longest walk.
* ``decision/numba/match-only`` and ``pre-request/add-speculative`` (the 512 keys of
  another request on its picked endpoint, what the plugin does after a pick): for the
  breakdown.

The ingest cases alternate over 5 rounds (one fifth of the stream each, the same part for
every implementation, so their states stay identical), and so do the Numba decision
cases; each timed case lists the p50 (or rate) of every round, to show the noisy
machine's phases.

    python benchmarks/bench_precise.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, round_p50s_us, time_calls, write_report

from inference_sched.prefix.precise import EventBatchBuilder, PreciseIndex
from tests.oracles.prefix_index_model import PreciseIndexModel

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BLOCK = 16
NUM_ENDPOINTS = 256
NUM_GROUPS = 64
GROUPS_PER_ENDPOINT = 4
SYSTEM_BLOCKS = 128
REQUEST_TOKENS = 8192
CAPACITY = 8192  # as if each engine had 8k GPU blocks: the fill never evicts
BATCH_EVENTS = 64
ROUNDS = 5
VOCAB = 128_000

Event = tuple[str, tuple[Any, ...], dict[str, Any]]


class Fleet:
    """Generates the KV events of the fleet and keeps what each endpoint holds."""

    def __init__(self, seed: int, conversations_per_endpoint: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.systems = [self.tokens(SYSTEM_BLOCKS * BLOCK) for _ in range(NUM_GROUPS)]
        self.groups = [
            self.rng.choice(NUM_GROUPS, GROUPS_PER_ENDPOINT, replace=False)
            for _ in range(NUM_ENDPOINTS)
        ]
        self.keep = conversations_per_endpoint
        # Per endpoint: the last engine hash of each system prompt it holds, and its live
        # conversations as (group, tokens after the system prompt, engine hashes).
        self.system_tails: list[dict[int, int]] = [{} for _ in range(NUM_ENDPOINTS)]
        self.conversations: list[list[tuple[int, np.ndarray, list[int]]]] = [
            [] for _ in range(NUM_ENDPOINTS)
        ]

    def tokens(self, n: int) -> np.ndarray:
        return self.rng.integers(0, VOCAB, n, dtype=np.uint32)

    def hashes(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 2**64, n, dtype=np.uint64)

    def fill(self) -> list[Event]:
        """Every endpoint's system prompts and ``keep`` conversations."""
        events: list[Event] = []
        for row in range(NUM_ENDPOINTS):
            for group in self.groups[row]:
                hashes = self.hashes(SYSTEM_BLOCKS)
                events.append(stored(row, hashes, None, self.systems[group]))
                self.system_tails[row][int(group)] = int(hashes[-1])
        for _ in range(self.keep):
            for row in range(NUM_ENDPOINTS):
                events += self.conversation(row)
        return events

    def conversation(self, row: int) -> list[Event]:
        """A new conversation on ``row``: prefill, decodes, maybe an offload, and the
        retirement of the oldest one once the endpoint holds more than ``keep``."""
        group = int(self.rng.choice(self.groups[row]))
        prefill = int(self.rng.integers(16, 129))
        decodes = int(self.rng.integers(0, 17))
        tokens = self.tokens((prefill + decodes) * BLOCK)
        hashes = self.hashes(prefill + decodes)
        parent = self.system_tails[row][group]
        events = [stored(row, hashes[:prefill], parent, tokens[: prefill * BLOCK])]
        for i in range(prefill, prefill + decodes):
            block = tokens[i * BLOCK : (i + 1) * BLOCK]
            events.append(stored(row, hashes[i : i + 1], int(hashes[i - 1]), block))
        if self.rng.random() < 0.3:  # offloaded to CPU as well
            events.append(stored(row, hashes, None, np.zeros(0, np.uint32), medium="CPU"))
        self.conversations[row].append((group, tokens, [int(h) for h in hashes]))
        if len(self.conversations[row]) > self.keep:
            _, _, old = self.conversations[row].pop(0)
            for start in range(0, len(old), 16):
                part = np.array(old[start : start + 16], dtype=np.uint64)
                events.append(("removed", (row, part), {"medium": None}))
                events.append(("removed", (row, part), {"medium": "CPU"}))
        return events

    def stream(self, num_conversations: int) -> list[Event]:
        """Steady state: new conversations on random endpoints."""
        events: list[Event] = []
        for _ in range(num_conversations):
            events += self.conversation(int(self.rng.integers(NUM_ENDPOINTS)))
        return events

    def request(self) -> np.ndarray:
        """An 8k-token request: a new conversation on a system prompt, or a live one's
        next turn (its whole history, then new tokens)."""
        if self.rng.random() < 0.5:
            prefix = self.systems[int(self.rng.integers(NUM_GROUPS))]
        else:
            row = int(self.rng.integers(NUM_ENDPOINTS))
            group, tokens, _ = self.conversations[row][-1 - int(self.rng.integers(4))]
            prefix = np.concatenate([self.systems[group], tokens])
        return np.concatenate([prefix, self.tokens(REQUEST_TOKENS - len(prefix))])


def stored(
    row: int, hashes: np.ndarray, parent: int | None, tokens: np.ndarray, medium: str | None = None
) -> Event:
    return (
        "stored",
        (row, hashes, parent, tokens, BLOCK),
        {"root_name": MODEL, "medium": medium},
    )


def block_events(events: list[Event]) -> int:
    """Engine blocks in stored and removed events."""
    return sum(len(args[1]) for _, args, _ in events)


def apply_one(index: PreciseIndex | PreciseIndexModel, event: Event) -> int:
    kind, args, kwargs = event
    if kind == "stored":
        return index.block_stored(*args, **kwargs)
    return index.block_removed(*args, **kwargs)


def batches(index: PreciseIndex, events: list[Event]) -> list[Any]:
    out = []
    for start in range(0, len(events), BATCH_EVENTS):
        builder = EventBatchBuilder(index)
        for kind, args, kwargs in events[start : start + BATCH_EVENTS]:
            getattr(builder, kind)(*args, **kwargs)
        out.append(builder.build())
    return out


def result(case: str, samples: np.ndarray, ratio: float, **extra: Any) -> dict[str, Any]:
    p50, p99 = percentiles_us(samples)
    rounds = round_p50s_us(samples, ROUNDS)
    return {
        "case": case,
        "endpoints": NUM_ENDPOINTS,
        "p50_us": p50,
        "p99_us": p99,
        "ratio_vs_baseline": ratio,
        "calls": int(samples.size),
        "best_round_p50_us": min(rounds),
        "round_p50s_us": rounds,
        **extra,
    }


def new_index() -> PreciseIndex:
    index = PreciseIndex(block_size_tokens=BLOCK, capacity=CAPACITY)
    for row in range(NUM_ENDPOINTS):
        index.set_capacity(row, "gpu", CAPACITY)
    return index


def bench(quick: bool) -> list[dict[str, Any]]:
    fleet = Fleet(seed=6, conversations_per_endpoint=12 if quick else 40)
    fill = fleet.fill()
    stream = fleet.stream(300 if quick else 1500)
    single, batched = new_index(), new_index()
    model = PreciseIndexModel(block_size_tokens=BLOCK, capacity=CAPACITY)
    t0 = time.perf_counter()
    for batch in batches(batched, fill):
        single.apply_events(batch)
        batched.apply_events(batch)
    t1 = time.perf_counter()
    for event in fill:
        apply_one(model, event)
    t2 = time.perf_counter()
    print(
        f"fill: {len(fill)} events, {block_events(fill)} block events: Numba batched "
        f"{(t1 - t0) / 2:.1f} s, model {t2 - t1:.1f} s; index {single!r}",
        file=sys.stderr,
    )
    assert single.size() == model.size()
    assert single.num_engine_keys() == model.num_engine_keys()
    results = bench_ingest(single, batched, model, stream)
    results += bench_decisions(fleet, single, model, quick)
    return results


def bench_ingest(
    single: PreciseIndex, batched: PreciseIndex, model: PreciseIndexModel, stream: list[Event]
) -> list[dict[str, Any]]:
    n = len(stream)
    parts = [stream[r * n // ROUNDS : (r + 1) * n // ROUNDS] for r in range(ROUNDS)]
    part_batches = [batches(batched, part) for part in parts]
    samples: dict[str, list[np.ndarray]] = {"single": [], "batched": [], "model": []}
    seconds: dict[str, list[float]] = {"single": [], "batched": [], "model": []}
    clock = time.perf_counter_ns
    gc.collect()
    for part, part_batch in zip(parts, part_batches, strict=True):
        for name, index in (("single", single), ("model", model)):
            times = np.empty(len(part), dtype=np.int64)
            for i, event in enumerate(part):
                start = clock()
                apply_one(index, event)
                times[i] = clock() - start
            samples[name].append(times)
            seconds[name].append(times.sum() / 1e9)
        times = np.empty(len(part_batch), dtype=np.int64)
        for i, batch in enumerate(part_batch):
            start = clock()
            batched.apply_events(batch)
            times[i] = clock() - start
        samples["batched"].append(times)
        seconds["batched"].append(times.sum() / 1e9)
    assert single.stats() == batched.stats() == model.stats(), (single.stats(), model.stats())
    assert single.size() == model.size()
    blocks = [block_events(part) for part in parts]
    rates = {name: [b / s for b, s in zip(blocks, seconds[name], strict=True)] for name in seconds}
    total = {name: sum(blocks) / sum(seconds[name]) for name in seconds}
    extra = {"events": len(stream), "block_events": sum(blocks)}
    cases = (
        ("ingest/numba/single", "single"),
        ("ingest/numba/batched", "batched"),
        ("ingest/python-model", "model"),
    )
    return [
        result(
            case,
            np.concatenate(samples[name]),
            total[name] / total["model"],
            block_events_per_s=total[name],
            round_block_events_per_s=rates[name],
            baseline="ingest/python-model",
            **({"events_per_batch": BATCH_EVENTS} if name == "batched" else {}),
            **extra,
        )
        for case, name in cases
    ]


def bench_decisions(
    fleet: Fleet, index: PreciseIndex, model: PreciseIndexModel, quick: bool
) -> list[dict[str, Any]]:
    out, model_out = np.zeros(NUM_ENDPOINTS), np.zeros(NUM_ENDPOINTS)

    def pick(tokens: np.ndarray) -> tuple[int, np.ndarray]:
        """The endpoint with the longest weighted match (the picker, roughly)."""
        keys = index.match_tokens(tokens, MODEL, "", out)
        row = int(out.argmax()) if out.max() > 0 else int(fleet.rng.integers(NUM_ENDPOINTS))
        return row, keys

    def speculate_on_pick(tokens: np.ndarray) -> None:
        row, keys = pick(tokens)
        index.add_speculative(row, keys, 0.0)
        model.add_speculative(row, keys, 0.0)

    num_requests = 200 if quick else 1000
    # Recent picks: speculative entries on the endpoints chosen for 256 earlier requests,
    # alive while the timing runs (now stays below their 2 s TTL).
    for _ in range(NUM_ENDPOINTS):
        speculate_on_pick(fleet.request())
    requests = [fleet.request() for _ in range(num_requests)]
    keys = [index.request_keys(r, MODEL) for r in requests]
    # Requests sent again right after their first pick: all 512 blocks match on one
    # endpoint (its speculative entries), the longest walk a decision can take.
    repeats = [fleet.request() for _ in range(num_requests // 4)]
    for tokens in repeats:
        speculate_on_pick(tokens)
    # Other requests, for the timed speculative inserts (inserting the timed requests'
    # own keys would turn every later decision on them into a full hit).
    others = [pick(fleet.request()) for _ in range(num_requests)]
    matched = []
    for request in requests[:50] + repeats[:10]:  # same results; what is matched
        got = index.match_tokens(request, MODEL, "", out)
        model.match_tokens(request, MODEL, "", model_out)
        assert (out == model_out).all()
        assert len(got) == REQUEST_TOKENS // BLOCK
        matched.append(float(out.max()))
    cursor: dict[str, int] = {}

    def cycle(name: str, n: int) -> int:
        i = cursor.get(name, 0)
        cursor[name] = i + 1
        return i % n

    def decide() -> None:
        index.expire(1.0)
        index.match_tokens(requests[cycle("decide", num_requests)], MODEL, "", out)

    def decide_lazily() -> None:
        index.expire(1.0)
        tokens = requests[cycle("lazy", num_requests)]
        index.match_tokens(tokens, MODEL, "", out, all_keys=False)

    def decide_repeat() -> None:
        index.expire(1.0)
        index.match_tokens(repeats[cycle("repeat", len(repeats))], MODEL, "", out)

    def decide_model() -> None:
        model.expire(1.0)
        model.match_tokens(requests[cycle("model", num_requests)], MODEL, "", model_out)

    def match_only() -> None:
        index.match(keys[cycle("match", num_requests)], out)

    def speculate() -> None:  # the pick's keys on the picked endpoint, as PreRequest does
        row, picked = others[cycle("speculate", num_requests)]
        index.add_speculative(row, picked, 0.5)

    calls = 2000 if quick else 10_000
    runs: dict[str, tuple[Callable[[], None], int]] = {
        "decision/numba": (decide, calls),
        "decision/numba/lazy-keys": (decide_lazily, calls),
        "decision/numba/full-hit": (decide_repeat, calls // 2),
        "decision/numba/match-only": (match_only, calls),
        "pre-request/add-speculative": (speculate, calls // 2),
    }
    for fn, _ in runs.values():
        time_calls(fn, 3)  # warm-up
    # The baseline sweeps a heap of dicts and sets far larger than the caches: timed in
    # rounds of its own first, so that it does not evict the Numba cases' working set.
    samples = {"decision/python-model": time_calls(decide_model, 50 if quick else 250)}
    gc.collect()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, (fn, n) in runs.items():
            parts[name].append(time_calls(fn, n // ROUNDS))
    samples.update({name: np.concatenate(p) for name, p in parts.items()})
    base_p50, _ = percentiles_us(samples["decision/python-model"])
    extra = {
        "request_tokens": REQUEST_TOKENS,
        "request_blocks": REQUEST_TOKENS // BLOCK,
        "mean_best_match_blocks": float(np.mean(matched[:50])),
        "index_entries": index.size(),
        "engine_map_entries": index.num_engine_keys(),
        "index_nbytes": index.nbytes,
    }
    results = []
    for name, values in samples.items():
        ratio = base_p50 / percentiles_us(values)[0] if name != "decision/python-model" else 1.0
        baseline = (
            {"baseline": "decision/python-model"} if name.startswith("decision/numba") else {}
        )
        results.append(result(name, values, ratio, **baseline, **extra))
    return results


def warm_up() -> None:
    """Compile every kernel the cases call on a tiny index (kept out of the timings)."""
    index = PreciseIndex(block_size_tokens=BLOCK)
    tokens = np.arange(4 * BLOCK, dtype=np.uint32)
    hashes = np.arange(4, dtype=np.uint64)
    index.block_stored(0, hashes, None, tokens, BLOCK, root_name=MODEL)
    index.block_stored(0, hashes[:1], None, np.zeros(0, np.uint32), BLOCK, root_name=MODEL)
    index.block_removed(0, hashes[:2])
    builder = EventBatchBuilder(index)
    builder.stored(1, hashes, None, tokens, BLOCK, root_name=MODEL)
    builder.removed(1, hashes[:1])
    index.apply_events(builder.build())
    keys = index.match_tokens(tokens, MODEL, "", np.zeros(2))
    index.match(keys, np.zeros(2))
    index.add_speculative(0, keys, 0.0)
    index.expire(5.0)


def main() -> None:
    args = parse_args(__doc__ or "")
    warm_up()
    gc.collect()
    gc.freeze()
    results = bench(args.quick)
    write_report("precise", results, args.json)
    print(f"\n{'case (p50 of 5 consecutive rounds, us)':<40} {'rounds'}")
    for r in results:
        rounds = " ".join(f"{x:8.1f}" for x in r["round_p50s_us"])
        print(f"{r['case']:<40} {rounds}")
    print(f"\n{'ingest case':<28} {'block events/s':>15}  rounds")
    for r in results:
        if "block_events_per_s" in r:
            rounds = " ".join(f"{x:10,.0f}" for x in r["round_block_events_per_s"])
            print(f"{r['case']:<28} {r['block_events_per_s']:>15,.0f}  {rounds}")


if __name__ == "__main__":
    main()
