"""Bursts scheduled one request at a time vs jointly (``schedule_batch(joint=True)``).

The scheduler alone, no engine: the ``bursty`` workload (Gamma arrivals, cv 3; 64 system
prompts of 96 blocks, each prompt adds its own question) is cut into bursts of the
requests arriving within the same ``--window-ms`` (100 ms, llm-d's burst window). Every
burst is scheduled against one scraped snapshot (waiting queues drawn per burst, the
same for every mode: the metrics are stale within a burst, llm-d #298), on 16
endpoints with GIE's default profile (prefix 3, queue 2, kv-cache 2; the approximate
prefix index persists across bursts), either

* ``sequential``: ``schedule`` per request (what ``schedule_batch`` does by default),
* ``seq kv-cost cN``: ``schedule`` per request with Dynamo's ``kv-cost-scorer``
  (``overlapScoreWeight`` N, argmin): in-flight feedback between requests, no queue, or
* ``joint cN``: ``schedule_batch(burst, joint=True)`` with ``overlapScoreWeight`` N.

In-flight counters are cleared before each burst (the previous one has completed).

Figures, over bursts of at least 4 requests:

* ``spread``: max / mean requests per endpoint in a burst (1 is even, 16 all on one);
* ``load``: max / mean of queue + requests routed per endpoint after a burst (what
  the joint cost balances: a burst should fill the short queues first);
* ``groups``: distinct endpoints a system-prompt group of >= 2 requests uses in a burst;
* ``hit``: prefix blocks found on the chosen endpoint (an unbounded per-endpoint cache
  of every block routed there before, in arrival order) / prompt blocks, whole run;
* ``peak``: max / mean requests per endpoint over the whole run.

    python benchmarks/quality/burst.py [--quick] [--window-ms 100] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

import numpy as np

import inference_sched.plugins.cost_model  # noqa: F401 - registers kv-cost-scorer
from inference_sched import Endpoint, EndpointTable, Request, Scheduler, SchedulingResult
from inference_sched.framework.scheduler.joint import JointCost
from inference_sched.sim.prompts import prompt_bytes
from inference_sched.sim.types import SimRequest
from inference_sched.sim.workloads import bursty

NUM_ENDPOINTS = 16
SYSTEM_BLOCKS = 96  # bursty's default system prompt: 1536 tokens


def cut(requests: Sequence[SimRequest], window_s: float) -> list[list[SimRequest]]:
    """Consecutive requests whose arrivals fall in the same window."""
    bursts: dict[int, list[SimRequest]] = {}
    for r in requests:
        bursts.setdefault(int(r.arrival_s // window_s), []).append(r)
    return list(bursts.values())


KV_COST = """
plugins:
- type: kv-cost-scorer
  parameters: {overlapScoreWeight: %s}
- type: softmax-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: kv-cost-scorer, weight: 1}
"""


def run(
    bursts: list[list[SimRequest]],
    snapshots: list[np.ndarray],
    credit: float | None,
    seed: int,
    config: str | None = None,
) -> dict[str, float]:
    table = EndpointTable()
    for i in range(NUM_ENDPOINTS):
        table.add(Endpoint(f"e{i}", f"10.0.0.{i}", 8000))
    scheduler = Scheduler.from_config(config, table, seed=seed)
    if credit is not None:
        scheduler.joint_cost = JointCost(overlap_score_weight=credit)
    rows = table.candidates()
    cached: list[set[int]] = [set() for _ in range(NUM_ENDPOINTS)]
    hit_blocks = total_blocks = 0
    spreads: list[float] = []
    loads: list[float] = []
    group_spans: list[int] = []
    routed: Counter[int] = Counter()
    for burst, waiting in zip(bursts, snapshots, strict=True):
        table.update_metrics(rows, waiting=waiting)
        table.inflight_requests[:] = 0.0
        table.inflight_tokens[:] = 0.0
        requests = [
            Request.create(
                "m", prompt=prompt_bytes(r.blocks, r.prompt_tokens), request_id=str(r.id)
            )
            for r in burst
        ]
        if credit is None:
            results: list[object] = [scheduler.schedule(r) for r in requests]
        else:
            results = list(scheduler.schedule_batch(requests, joint=True))
        scheduler.run_deferred()
        picks = [int(x.primary.rows[0]) for x in results if isinstance(x, SchedulingResult)]
        assert len(picks) == len(burst), "no request may fail here"
        groups: dict[int, set[int]] = {}
        for sim, row in zip(burst, picks, strict=True):
            blocks = sim.blocks.tolist()
            held = cached[row]
            hit = 0
            while hit < len(blocks) and blocks[hit] in held:
                hit += 1
            hit_blocks += hit
            total_blocks += len(blocks)
            held.update(blocks)
            groups.setdefault(blocks[SYSTEM_BLOCKS - 1], set()).add(row)
        counts = Counter(picks)
        routed.update(picks)
        if len(burst) >= 4:
            spreads.append(max(counts.values()) / (len(burst) / NUM_ENDPOINTS))
            after = waiting + np.bincount(picks, minlength=NUM_ENDPOINTS)
            loads.append(float(after.max() / after.mean()))
            members = Counter(sim.blocks[SYSTEM_BLOCKS - 1] for sim in burst)
            group_spans += [len(groups[g]) for g, m in members.items() if m >= 2]
    peak = max(routed.values()) / (sum(routed.values()) / NUM_ENDPOINTS)
    return {
        "spread": float(np.mean(spreads)),
        "load": float(np.mean(loads)),
        "groups": float(np.mean(group_spans)) if group_spans else float("nan"),
        "hit": hit_blocks / total_blocks,
        "peak": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 10 s workload")
    parser.add_argument("--window-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workload = bursty(duration_s=10.0 if args.quick else 30.0, seed=args.seed)
    bursts = cut(workload.requests, args.window_ms / 1000.0)
    rng = np.random.default_rng(args.seed)
    snapshots = [rng.integers(0, 8, NUM_ENDPOINTS).astype(np.float64) for _ in bursts]
    sizes = [len(b) for b in bursts if len(b) >= 4]
    print(
        f"{len(workload)} requests, {len(bursts)} bursts ({len(sizes)} of >= 4 requests, "
        f"mean {np.mean(sizes):.1f}, max {max(sizes)}), {NUM_ENDPOINTS} endpoints\n"
    )
    print(f"{'mode':<15} {'spread':>7} {'load':>7} {'groups':>7} {'hit':>7} {'peak':>7}")
    for label, credit, config in (
        ("sequential", None, None),
        ("seq kv-cost c1", None, KV_COST % 1.0),
        ("seq kv-cost c4", None, KV_COST % 4.0),
        ("joint c1", 1.0, None),
        ("joint c4", 4.0, None),
        ("joint c8", 8.0, None),
    ):
        figures = run(bursts, snapshots, credit, args.seed, config)
        print(
            f"{label:<15} {figures['spread']:>7.2f} {figures['load']:>7.2f} "
            f"{figures['groups']:>7.2f} {figures['hit']:>7.3f} {figures['peak']:>7.2f}"
        )


if __name__ == "__main__":
    main()
