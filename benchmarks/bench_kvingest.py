"""Precise prefix routing end to end: KV-event ingest from wire bytes, and whole decisions.

**Ingest** (issue 6 §7: >= 200,000 block events/s on one core). The event stream of a
simulated pool (16 vLLM-like servers, shared-prefix workload, a small KV cache so blocks
are evicted and BlockRemoved flows too) is recorded, cut into vLLM-style batches (a
server's consecutive events, up to 16 per batch) and encoded as vLLM publishes them
(msgpack, ``array_like``). Timed, per batch: ``decode_batch`` (the wire decoder), then
``precise-prefix-cache-producer.kv_event`` per event, applied by ``run_deferred`` every 64
batches (one ``apply_events`` kernel call), exactly the subscriber's path minus the
socket. ``block_events_per_s`` = engine blocks named by BlockStored and BlockRemoved
events / time. Baseline (same process, same stream): the per-element Python decoder of
``bench_kvdecode.py`` feeding the pure-Python index model
(:class:`~tests.oracles.prefix_index_model.PreciseIndexModel`).

**Decision** (issue 6 §7: a precise decision for an 8k-token request over 256 endpoints,
p50 <= 50 us): the whole ``Scheduler.schedule`` with the ``llm-d-precise`` preset
(precise producer, prefix 3 + queue 2 + kv-cache 2, max-score picker) over 256 endpoints
whose index holds ~4k blocks each (64 system prompts of 128 blocks, four per endpoint,
plus conversations), for 8k-token requests on a system prompt. ``ratio_vs_baseline``: the
``gie-default`` decision (approximate producer) on the same requests and endpoints over
this one's. Both alternate over 5 rounds; p50 per round listed.

    python benchmarks/bench_kvingest.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, write_report

ROUNDS = 5


# ---------------------------------------------------------------------------- ingest
def record_stream(duration_s: float) -> tuple[list[tuple[str, bytes]], str, list[str]]:
    """(pod, payload) batches of a simulated run, the model, and the pods."""
    from inference_sched.prefix.precise.wire import encode_batch
    from inference_sched.sim.fleet import FleetConfig, simulate
    from inference_sched.sim.presets import resolve_config
    from inference_sched.sim.types import EngineConfig
    from inference_sched.sim.workloads import load_workload

    workload = load_workload("shared-prefix", duration_s=duration_s, rate=60.0, seed=2)
    events: list[tuple[str, object]] = []
    label, config = resolve_config("gie-default")
    fleet = FleetConfig(num_servers=16, engine=EngineConfig(num_gpu_blocks=1500))
    simulate(
        workload, config, label=label, fleet=fleet, kv_events=lambda s, e: events.append((s, e))
    )
    pods = {f"sim-{i}": f"10.0.{i // 256}.{i % 256}:8000" for i in range(16)}
    batches: list[tuple[str, bytes]] = []
    current: list[object] = []
    server = ""
    for name, event in events:
        if current and (name != server or len(current) == 16):
            batches.append((pods[server], encode_batch(current, ts=0.0, encoding="array")))
            current = []
        server = name
        current.append(event)
    if current:
        batches.append((pods[server], encode_batch(current, ts=0.0, encoding="array")))
    return batches, workload.model, list(pods.values())


def block_events(batches: list[tuple[str, bytes]]) -> int:
    from inference_sched.prefix.precise.wire import decode_batch

    return sum(
        len(getattr(e, "block_hashes", ()))
        for _, payload in batches
        for e in decode_batch(payload).events
    )


def ingest_ours(batches: list[tuple[str, bytes]], model: str, pods: list[str]) -> list[float]:
    """Seconds per round (the stream cut in ROUNDS parts, applied in order)."""
    from inference_sched.framework.config import load_config
    from inference_sched.framework.scheduler import Scheduler
    from inference_sched.framework.types import Endpoint
    from inference_sched.prefix.precise.wire import decode_batch
    from inference_sched.sim.presets import PRESETS
    from inference_sched.state.table import EndpointTable

    table = EndpointTable()
    for pod in pods:
        host, port = pod.rsplit(":", 1)
        table.add(Endpoint(pod, host, int(port)))
    scheduler = Scheduler.from_config(load_config(PRESETS["llm-d-precise"]), table)
    producer = scheduler.plugins["precise-prefix-cache-producer"]
    producer.events_in_process()
    kv_event = producer.kv_event
    # Warm-up on a copy of the first batches (compiles the kernels), then start clean.
    for pod, payload in batches[:64]:
        for event in decode_batch(payload).events:
            kv_event(pod, event, model)
    producer.run_deferred()
    for row in table.candidates():
        producer.index.clear_endpoint(int(row))
    out = []
    for part in np.array_split(np.arange(len(batches)), ROUNDS):
        t0 = time.perf_counter()
        for k, i in enumerate(part.tolist()):
            pod, payload = batches[i]
            for event in decode_batch(payload).events:
                kv_event(pod, event, model)
            if k % 64 == 63:
                producer.run_deferred()
        producer.run_deferred()
        out.append(time.perf_counter() - t0)
    assert producer.stats["events_unknown_endpoint"] == 0
    return out


def ingest_baseline(batches: list[tuple[str, bytes]], model: str, pods: list[str]) -> list[float]:
    from bench_kvdecode import python_loop_decode

    from tests.oracles.prefix_index_model import PreciseIndexModel

    index = PreciseIndexModel()
    rows = {pod: i for i, pod in enumerate(pods)}
    out = []
    for part in np.array_split(np.arange(len(batches)), ROUNDS):
        t0 = time.perf_counter()
        for i in part.tolist():
            pod, payload = batches[i]
            row = rows[pod]
            for event in python_loop_decode(payload).events:
                kind = type(event).__name__
                if kind == "BlockStored":
                    index.block_stored(
                        row,
                        event.block_hashes,
                        event.parent_block_hash,
                        event.token_ids,
                        event.block_size,
                        root_name=event.lora_name or model,
                        medium=event.medium,
                    )
                elif kind == "BlockRemoved":
                    index.block_removed(row, event.block_hashes, event.medium)
                else:
                    index.clear_endpoint(row)
        out.append(time.perf_counter() - t0)
    return out


# -------------------------------------------------------------------------- decision
def decision_setup(num_endpoints: int) -> tuple[Any, Any, list[Any]]:
    """Two schedulers over the same endpoints (precise, gie-default) and the requests."""
    from inference_sched.framework.config import load_config
    from inference_sched.framework.scheduler import Scheduler
    from inference_sched.framework.types import Endpoint, Request
    from inference_sched.sim.kvcache import BlockStored
    from inference_sched.sim.presets import PRESETS
    from inference_sched.state.table import EndpointTable

    rng = np.random.default_rng(7)
    model = "meta-llama/Llama-3.1-8B-Instruct"

    def table() -> EndpointTable:
        t = EndpointTable()
        for i in range(num_endpoints):
            t.add(Endpoint(f"e{i}", f"10.1.{i // 256}.{i % 256}", 8000))
        t.update_metrics(
            t.candidates(),
            waiting=rng.integers(0, 8, num_endpoints).tolist(),
            kv_usage_frac=rng.uniform(0, 0.9, num_endpoints).tolist(),
        )
        return t

    precise = Scheduler.from_config(load_config(PRESETS["llm-d-precise"]), table(), seed=1)
    approx = Scheduler.from_config(load_config(PRESETS["gie-default"]), table(), seed=1)
    producer = precise.plugins["precise-prefix-cache-producer"]
    producer.events_in_process()
    systems = [rng.integers(0, 128_000, 128 * 16).astype(np.uint32) for _ in range(64)]
    next_hash = 1
    for e in range(num_endpoints):
        pod = f"10.1.{e // 256}.{e % 256}:8000"
        for s in rng.choice(64, 4, replace=False).tolist():
            hashes = list(range(next_hash, next_hash + 128))
            next_hash += 128
            producer.kv_event(
                pod, BlockStored(hashes, None, systems[s].tolist(), 16, None, "GPU"), model
            )
            for _ in range(2):  # conversations on top
                n = int(rng.integers(16, 128))
                tokens = rng.integers(0, 128_000, n * 16).astype(np.uint32).tolist()
                conv = list(range(next_hash, next_hash + n))
                next_hash += n
                producer.kv_event(
                    pod, BlockStored(conv, hashes[-1], tokens, 16, None, "GPU"), model
                )
    producer.run_deferred()
    requests = []
    for i in range(400):
        system = systems[i % 64]
        tail = rng.integers(0, 128_000, 8192 - system.shape[0]).astype(np.uint32)
        tokens = np.concatenate([system, tail])
        requests.append(Request.create(model, prompt=tokens.tobytes(), token_ids=tokens))
    return precise, approx, requests


def decisions(scheduler: Any, requests: list[Any]) -> np.ndarray:
    samples = np.empty(len(requests), dtype=np.int64)
    for i, request in enumerate(requests):
        t0 = time.perf_counter_ns()
        result = scheduler.schedule(request)
        samples[i] = time.perf_counter_ns() - t0
        scheduler.run_deferred()
        assert result.primary.rows
    return samples


def main() -> None:
    args = parse_args(__doc__ or "")
    duration = 5.0 if args.quick else 20.0
    print(f"recording a {duration:g} s simulated event stream ...", file=sys.stderr)
    batches, model, pods = record_stream(duration)
    blocks = block_events(batches)
    print(f"{len(batches)} batches, {blocks} block events; ingest rounds ...", file=sys.stderr)
    gc.collect()
    gc.freeze()
    ours = ingest_ours(batches, model, pods)
    base = ingest_baseline(batches, model, pods)
    ours_rate = blocks / sum(ours)
    base_rate = blocks / sum(base)
    per_batch_ours = np.array(ours) / (len(batches) / ROUNDS) * 1e6
    per_batch_base = np.array(base) / (len(batches) / ROUNDS) * 1e6
    results: list[dict[str, Any]] = [
        {
            "case": "ingest/wire-to-index",
            "endpoints": len(pods),
            "p50_us": float(np.median(per_batch_ours)),
            "p99_us": float(np.max(per_batch_ours)),
            "ratio_vs_baseline": ours_rate / base_rate,
            "block_events_per_s": ours_rate,
            "round_block_events_per_s": [round(blocks / ROUNDS / t) for t in ours],
            "batches": len(batches),
            "block_events": blocks,
            "note": "p50/p99: mean us per batch of each round (median, max)",
        },
        {
            "case": "ingest/python-baseline",
            "endpoints": len(pods),
            "p50_us": float(np.median(per_batch_base)),
            "p99_us": float(np.max(per_batch_base)),
            "ratio_vs_baseline": 1.0,
            "block_events_per_s": base_rate,
            "round_block_events_per_s": [round(blocks / ROUNDS / t) for t in base],
        },
    ]
    num_endpoints = 64 if args.quick else 256
    print(f"decisions over {num_endpoints} endpoints ...", file=sys.stderr)
    precise, approx, requests = decision_setup(num_endpoints)
    gc.collect()
    gc.freeze()
    decisions(precise, requests[:50])  # compile, warm caches
    decisions(approx, requests[:50])
    runs: dict[str, list[np.ndarray]] = {"precise": [], "approx": []}
    chunks = np.array_split(np.arange(len(requests)), ROUNDS)
    for chunk in chunks:
        part = [requests[i] for i in chunk.tolist()]
        runs["precise"].append(decisions(precise, part))
        runs["approx"].append(decisions(approx, part))
    approx_p50 = float(np.median(np.concatenate(runs["approx"]))) / 1e3
    for name, label in (("precise", "llm-d-precise"), ("approx", "gie-default")):
        samples = np.concatenate(runs[name])
        p50, p99 = percentiles_us(samples)
        results.append(
            {
                "case": f"decision/{label}/8k-tokens",
                "endpoints": num_endpoints,
                "p50_us": p50,
                "p99_us": p99,
                "ratio_vs_baseline": approx_p50 / p50,
                "baseline": "decision/gie-default/8k-tokens (p50)",
                "round_p50_us": [round(float(np.median(r)) / 1e3, 1) for r in runs[name]],
            }
        )
    write_report("kvingest", results, args.json)


if __name__ == "__main__":
    main()
