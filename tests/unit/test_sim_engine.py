"""Server: step timing, prefix cache, chunked prefill, preemption, LoRA slots, rejection,
decode fast-forward, metrics and accounting, against a deterministic fake step model.

The fake model's constants are powers of two, so every expected time below is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from inference_sched.sim.engine import Server
from inference_sched.sim.kvcache import BlockRemoved, BlockStored
from inference_sched.sim.types import EngineConfig, EngineEvent, EventKind, SimRequest

A = 2.0**-8  # per step
B = 2.0**-16  # per token in the batch
C = 2.0**-22  # per decode context token

FT, FIN, PRE, REJ = (
    EventKind.FIRST_TOKEN,
    EventKind.FINISHED,
    EventKind.PREEMPTED,
    EventKind.REJECTED,
)


class FakeStepTime:
    """step = A + B * tokens + C * decode context sum."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...], int, int]] = []

    def step_s(
        self,
        prefill_new: Sequence[int],
        prefill_context: Sequence[int],
        num_decodes: int,
        decode_context_sum: int,
    ) -> float:
        self.calls.append(
            (tuple(prefill_new), tuple(prefill_context), num_decodes, decode_context_sum)
        )
        return A + B * (num_decodes + sum(prefill_new)) + C * decode_context_sum

    def decode_steps_s(
        self, num_decodes: int, decode_context_sum: int, num_steps: int
    ) -> npt.NDArray[np.float64]:
        ctx = decode_context_sum + num_decodes * np.arange(num_steps, dtype=np.float64)
        return (A + B * num_decodes) + C * ctx


def decode_s(num: int, ctx_sum: int) -> float:
    return A + B * num + C * ctx_sum


def req(
    rid: int,
    prompt: int,
    output: int,
    *,
    t: float = 0.0,
    family: int | None = None,
    lora: str | None = None,
) -> SimRequest:
    """A request whose blocks are unique, or the prefix of ``family``'s chain."""
    n = -(-prompt // 16)
    base = 1_000_000 * (family + 1) if family is not None else 10_000_000 * (rid + 1)
    return SimRequest(rid, t, prompt, output, np.arange(base, base + n, dtype=np.int64), lora)


def server(fast: bool = True, **config: object) -> tuple[Server, FakeStepTime]:
    model = FakeStepTime()
    s = Server("s0", EngineConfig(**config), model)  # type: ignore[arg-type]
    s.fast_forward = fast
    return s, model


def run(s: Server, requests: Sequence[SimRequest]) -> list[EngineEvent]:
    """Submit in arrival order (advancing first, as the fleet does), then run to idle."""
    events: list[EngineEvent] = []
    for r in sorted(requests, key=lambda r: r.arrival_s):
        events += s.advance(r.arrival_s)
        s.submit(r, r.arrival_s)
    events += s.advance(math.inf)
    assert s.idle
    assert s.next_event_s() == math.inf
    return events


def by_kind(events: list[EngineEvent], kind: int) -> dict[int, EngineEvent]:
    return {e.request_id: e for e in events if e.kind == kind}


# ------------------------------------------------------------------ timing


@pytest.mark.parametrize("fast", [True, False])
def test_one_request_timing(fast: bool) -> None:
    s, _ = server(fast)
    events = run(s, [req(0, 100, 5, t=1.0)])
    ttft = 1.0 + (A + B * 100)
    end = ttft
    for j in range(1, 5):  # decode j sees the prompt and j tokens (its own included)
        end += decode_s(1, 100 + j)
    assert [(e.time_s, e.kind) for e in events] == [(ttft, FT), (end, FIN)]
    fin = events[1].finished
    assert fin is not None
    assert fin == (1.0, ttft, end, 0, 0)


@pytest.mark.parametrize(("prompt", "cached"), [(100, 96), (96, 80)])
def test_prefix_hit_on_repeat(prompt: int, cached: int) -> None:
    s, _ = server()
    first = run(s, [req(0, prompt, 3, family=0)])
    t2 = 10.0
    second = run(s, [req(1, prompt, 3, t=t2, family=0)])
    ttft1 = first[0].time_s
    ttft2 = second[0].time_s - t2
    assert ttft1 - ttft2 == B * cached  # exactly the tokens not recomputed
    fin = second[1].finished
    assert fin is not None
    assert fin.cached_tokens == cached
    m = s.metrics(t2 + 1)
    assert (m.prefix_queries_tokens, m.prefix_hits_tokens) == (2 * prompt, cached)
    assert m.kv_usage_frac == 0.0
    assert m.running == m.waiting == 0


def test_lora_adapters_do_not_share_blocks() -> None:
    s, _ = server(max_loras=2, lora_load_s=0.0)
    run(s, [req(0, 64, 2, family=0, lora="a")])
    fin = by_kind(run(s, [req(1, 64, 2, t=5.0, family=0, lora="b")]), FIN)[1].finished
    assert fin is not None
    assert fin.cached_tokens == 0
    fin = by_kind(run(s, [req(2, 64, 2, t=9.0, family=0, lora="a")]), FIN)[2].finished
    assert fin is not None
    assert fin.cached_tokens == 48


def test_chunked_prefill_splits_and_stalls_decodes() -> None:
    s, model = server(max_num_batched_tokens=64, max_num_seqs=8)
    events = run(s, [req(0, 150, 2)])
    assert [c[:2] for c in model.calls[:3]] == [((64,), (0,)), ((64,), (64,)), ((22,), (128,))]
    assert events[0].time_s == 3 * A + B * 150
    # A long prompt arriving while another request decodes: its chunks share each step
    # with the decode, so that decode's inter-token gaps grow by the chunk's tokens.
    s, model = server(max_num_batched_tokens=64, max_num_seqs=8)
    run(s, [req(0, 16, 6), req(1, 200, 1, t=1e-9)])
    mixed = [c for c in model.calls if c[0] and c[2]]
    assert [(c[0], c[2]) for c in mixed] == [((63,), 1), ((63,), 1), ((63,), 1), ((11,), 1)]


def test_max_num_seqs_bounds_running_and_throughput_saturates() -> None:
    def makespan(n: int) -> float:
        s, _ = server(max_num_seqs=4, max_num_batched_tokens=4096)
        requests = [req(i, 512, 64) for i in range(n)]
        for r in requests:
            s.submit(r, 0.0)
        t, events = 0.0, []
        while not s.idle:
            t += 0.01
            events += s.advance(t)
            m = s.metrics(t)
            assert m.running <= 4
            assert m.running + m.waiting + len(by_kind(events, FIN)) == n
        assert len(by_kind(events, FIN)) == n
        return max(e.time_s for e in events)

    one_batch, ten_batches = makespan(4), makespan(40)
    assert ten_batches > 9.5 * one_batch  # no more than 4 at a time: ~10x as long


def test_rejects_what_can_never_fit() -> None:
    s, _ = server(num_gpu_blocks=16)
    s.submit(req(0, 16 * 17, 4), 2.0)
    s.submit(req(1, 16 * 15, 18), 2.0)  # 15 blocks of prompt, but 257 tokens in the end
    s.submit(req(2, 16 * 15, 17), 2.0)  # exactly 16 blocks: runs
    s.submit(req(3, 16, 4, lora="x"), 2.0)
    events = s.advance(math.inf)
    assert [(e.time_s, e.kind, e.request_id) for e in events if e.kind == REJ] == [
        (2.0, REJ, 0),
        (2.0, REJ, 1),
    ]
    assert set(by_kind(events, FIN)) == {2, 3}
    s, _ = server(max_loras=0)
    s.submit(req(0, 16, 4, lora="x"), 0.0)
    assert s.next_event_s() == 0.0  # an idle server still has an event to hand over
    assert [e.kind for e in s.advance(math.inf)] == [REJ]


# -------------------------------------------------------------- preemption


@pytest.mark.parametrize("fast", [True, False])
def test_preemption_by_recompute(fast: bool) -> None:
    # 18 blocks; each request ends up needing ceil((100 + 59) / 16) = 10.
    s, _ = server(fast, num_gpu_blocks=18)
    events = run(s, [req(0, 100, 60), req(1, 100, 60), req(2, 100, 60, t=0.05)])
    preempted = [e.request_id for e in events if e.kind == PRE]
    assert preempted
    assert preempted[0] == 1
    fins = by_kind(events, FIN)
    assert set(fins) == {0, 1, 2}
    assert sum(f.finished.preemptions for f in fins.values() if f.finished) == len(preempted)
    assert s.metrics(1e9).preemptions == len(preempted)
    assert fins[0].finished is not None
    assert fins[0].finished.preemptions == 0
    first = by_kind(events, FT)
    assert fins[1].time_s > fins[0].time_s
    assert first[1].time_s < fins[0].time_s


def test_preempted_request_recomputes_with_prefix_hits() -> None:
    s, _ = server(num_gpu_blocks=12)
    # Request 0 (newest at preemption time is request 1) grows until 1 must go.
    events = run(s, [req(0, 64, 80), req(1, 64, 60, t=0.001)])
    assert [e.request_id for e in events if e.kind == PRE] == [1]
    fin = by_kind(events, FIN)[1].finished
    assert fin is not None
    assert fin.preemptions == 1
    # Its prompt blocks were freed to the cache and hit again (the last one recomputed is
    # the partial block of generated tokens).
    assert fin.cached_tokens > 0


# -------------------------------------------------------------------- LoRA


def test_lora_load_delays_admission_and_idle_adapter_is_swapped() -> None:
    s, _ = server(max_loras=1, lora_load_s=0.5)
    a = req(0, 32, 4, t=0.0, lora="x")
    b = req(1, 32, 4, t=0.125, lora="y")
    c = req(2, 32, 4, t=0.25)  # base model: never waits for a slot
    for r in (a, b, c):
        s.advance(r.arrival_s)
        s.submit(r, r.arrival_s)
    m = s.metrics(0.25)
    assert m.waiting_adapters == {"x", "y"}
    assert m.running_adapters == frozenset()
    events = s.advance(math.inf)
    fins = {k: e.finished for k, e in by_kind(events, FIN).items()}
    assert fins[2] is not None
    assert fins[2].scheduled_s == 0.25
    assert fins[0] is not None
    assert fins[0].scheduled_s == 0.5
    assert fins[1] is not None
    # y waits until x is idle (request 0 finished), then loads for 0.5 s.
    assert fins[1].scheduled_s == by_kind(events, FIN)[0].time_s + 0.5


def test_max_loras_respected_and_resident_adapter_goes_first() -> None:
    s, _ = server(max_loras=2, lora_load_s=0.25)
    requests = [req(0, 32, 50, lora="x"), req(1, 32, 50, lora="y")]
    requests += [req(2, 32, 5, t=0.01, lora="z"), req(3, 32, 5, t=0.02, lora="x")]
    for r in requests:
        s.advance(r.arrival_s)
        s.submit(r, r.arrival_s)
    seen_running: set[frozenset[str]] = set()
    t, events = 0.0, []
    while not s.idle:
        t += 0.005
        events += s.advance(t)
        m = s.metrics(t)
        assert len(m.running_adapters) <= 2
        seen_running.add(m.running_adapters)
    fins = {k: e.finished for k, e in by_kind(events, FIN).items()}
    assert all(f is not None for f in fins.values())
    # Request 3 (x resident) passes request 2 (z needs a slot that is busy).
    assert fins[3].scheduled_s < fins[2].scheduled_s  # type: ignore[union-attr]
    assert frozenset({"x", "y"}) in seen_running
    assert frozenset({"z"}) in seen_running


# --------------------------------------------------------- fast-forward


def _workload(n: int, seed: int, *, loras: bool = False) -> list[SimRequest]:
    rng = np.random.default_rng(seed)
    t, out = 0.0, []
    for i in range(n):
        t += float(rng.exponential(0.05))
        family = int(rng.integers(0, 3))
        prompt = int(rng.integers(20, 400))
        lora = ["a", "b", "c", None][int(rng.integers(0, 4))] if loras else None
        r = req(i, prompt, int(rng.integers(1, 120)), t=t, family=family, lora=lora)
        if rng.random() < 0.5:  # a unique suffix after a shared prefix
            blocks = r.blocks.copy()
            blocks[2:] += 10_000 * (i + 1)
            r = SimRequest(i, t, prompt, r.output_tokens, blocks, lora)
        out.append(r)
    return out


def _trace(fast: bool, chunk: int, requests: list[SimRequest], **config: object) -> list[object]:
    s, _ = server(fast, **config)
    s.max_chunk_steps = chunk
    trace: list[object] = []
    pending = sorted(requests, key=lambda r: r.arrival_s)
    scrape = 0.0
    while pending or not s.idle:
        nxt = pending[0].arrival_s if pending else math.inf
        if scrape + 0.0371 <= nxt:
            scrape += 0.0371
            trace += s.advance(scrape)
            trace.append(s.metrics(scrape))
            continue
        r = pending.pop(0)
        trace += s.advance(r.arrival_s)
        s.submit(r, r.arrival_s)
    return trace


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"num_gpu_blocks": 60, "max_num_seqs": 6},
        {"num_gpu_blocks": 40, "max_num_batched_tokens": 128, "max_num_seqs": 8, "block_size": 32},
        {"max_loras": 2, "lora_load_s": 0.03, "num_gpu_blocks": 80, "step_overhead_s": 2.0**-10},
    ],
)
def test_fast_forward_equals_step_by_step(config: dict[str, object]) -> None:
    requests = _workload(120, seed=7, loras="max_loras" in config)
    reference = _trace(False, 1, requests, **config)
    assert any(isinstance(x, EngineEvent) and x.kind == FIN for x in reference)
    for chunk in (1, 5, 4096):
        assert _trace(True, chunk, requests, **config) == reference


def test_submit_mid_chunk_joins_at_next_step_boundary() -> None:
    s, _ = server()
    s.submit(req(0, 32, 1000), 0.0)
    s.advance(0.1)
    ends = [A + B * 32]
    j = 1
    while ends[-1] < 0.1:
        ends.append(ends[-1] + decode_s(1, 32 + j))
        j += 1
    assert s.next_event_s() > ends[-1]  # a chunk is planned beyond this step
    s.submit(req(1, 16, 1), 0.1)
    events = s.advance(1.0)
    fin = by_kind(events, FIN)[1].finished
    assert fin is not None
    assert fin.scheduled_s == ends[-1]
    assert fin.finish_s == ends[-1] + decode_s(1, 32 + j) + B * 16


def test_metrics_mid_chunk_are_exact() -> None:
    s, _ = server(num_gpu_blocks=100)
    s.submit(req(0, 16, 200), 0.0)  # 1 block, then one more every 16 decode steps
    end0 = A + B * 16
    t = end0
    ends = []
    for j in range(1, 200):
        t += decode_s(1, 16 + j)
        ends.append(t)
    # Between the ends of decode steps 40 and 41, 41 steps have started: positions up to
    # 16 + 41 = 57 -> 4 blocks.
    now = (ends[39] + ends[40]) / 2
    assert [(e.kind, e.time_s) for e in s.advance(now)] == [(FT, end0)]
    m = s.metrics(now)
    assert (m.running, m.waiting) == (1, 0)
    assert m.kv_usage_frac == 4 / 100
    assert s.metrics(ends[40]).kv_usage_frac == 4 / 100  # step 42 starts: position 57
    assert s.metrics(ends[47]).kv_usage_frac == 5 / 100  # step 49: position 64


# ------------------------------------------------------------- accounting


def test_every_request_ends_once_and_runs_are_deterministic() -> None:
    requests = _workload(150, seed=3, loras=True)
    requests.append(req(999, 16 * 100, 4, t=1.0))  # too large for 60 blocks
    config = {"num_gpu_blocks": 60, "max_loras": 2, "lora_load_s": 0.02}
    runs = []
    for _ in range(2):
        s, _ = server(True, **config)
        runs.append(run(s, requests))
    assert runs[0] == runs[1]
    events = runs[0]
    ends = [e.request_id for e in events if e.kind in (FIN, REJ)]
    assert sorted(ends) == sorted(r.id for r in requests)
    assert [e.request_id for e in events if e.kind == REJ] == [999]
    assert [e.time_s for e in events] == sorted(e.time_s for e in events)
    for e in events:
        if e.kind == FIN:
            f = e.finished
            assert f is not None
            assert f.scheduled_s <= f.first_token_s <= f.finish_s == e.time_s


def test_kv_events() -> None:
    seen: list[tuple[str, object]] = []
    model = FakeStepTime()
    s = Server(
        "s9",
        EngineConfig(num_gpu_blocks=4),
        model,
        kv_events=lambda name, ev: seen.append((name, ev)),
        token_ids_of=lambda block_id: [block_id] * 16,
    )
    run(s, [req(0, 40, 1, family=0)])
    assert seen == [
        (
            "s9",
            BlockStored(
                [1_000_000, 1_000_001], None, [1_000_000] * 16 + [1_000_001] * 16, 16, None, "GPU"
            ),
        )
    ]
    seen.clear()
    run(s, [req(1, 64, 1, t=5.0)])  # 4 new blocks: evicts both cached ones
    kinds = [type(ev) for _, ev in seen]
    assert BlockRemoved in kinds
    removed = [h for _, ev in seen if isinstance(ev, BlockRemoved) for h in ev.block_hashes]
    assert removed == [1_000_001, 1_000_000]  # reverse block order: the tail first


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        server(block_size=24)
    with pytest.raises(ValueError, match="max_num_seqs"):
        server(max_num_seqs=64, max_num_batched_tokens=32)


def test_with_the_real_step_model() -> None:
    latency = pytest.importorskip("inference_sched.sim.latency")
    model = latency.load("h100-llama2-7b")
    requests = _workload(60, seed=11)
    traces = []
    for fast in (True, False):
        s = Server("s0", EngineConfig(num_gpu_blocks=200), model)
        s.fast_forward = fast
        traces.append(run(s, requests))
    assert len(by_kind(traces[0], FIN)) == 60
    # Vidur's decode_steps_s is bit-identical to step_s: chunks change nothing.
    assert traces[0] == traces[1]
