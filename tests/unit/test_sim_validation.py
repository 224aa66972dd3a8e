"""Validation of the simulated server against the latency tables (issue 4, part 6).

The engine's own tests use an exact fake step model; these use the shipped H100 model
and, when the shared data is present, the table rows themselves.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from inference_sched.sim import latency
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.engine import Server
from inference_sched.sim.types import EngineConfig, EngineEvent, EventKind, SimRequest

MODEL = latency.load("h100-llama2-7b")


def _request(i: int, t: float, prompt_tokens: int, output: int, root: int = 0) -> SimRequest:
    blocks = np.arange(root, root + math.ceil(prompt_tokens / 16), dtype=np.int64)
    return SimRequest(
        id=i, arrival_s=t, prompt_tokens=prompt_tokens, output_tokens=output, blocks=blocks
    )


def _events(server: Server, *requests: SimRequest) -> list[EngineEvent]:
    out: list[EngineEvent] = []
    for r in requests:
        out += server.advance(r.arrival_s)
        server.submit(r, r.arrival_s)
    return out + server.advance(math.inf)


def _first_token(events: list[EngineEvent], rid: int) -> float:
    (t,) = [e.time_s for e in events if e.kind == EventKind.FIRST_TOKEN and e.request_id == rid]
    return t


def _table_ms(new_tokens: int, cached: int) -> float:
    data = shared_data_dir()
    if data is None:
        pytest.skip("no shared data directory")
    path = data / "latency" / "h100_llama2_7b_tp1_prefill.csv"
    with path.open() as f:
        for row in csv.DictReader(f):
            if int(row["new_tokens"]) == new_tokens and int(row["cached_prefix_tokens"]) == cached:
                return float(row["total_ms"])
    raise AssertionError(f"no table row for {new_tokens} new tokens on {cached} cached")


def test_idle_ttft_is_the_tables_prefill_time() -> None:
    server = Server("s", EngineConfig(), MODEL)
    events = _events(server, _request(0, 0.0, 2048, 1))
    assert _first_token(events, 0) == MODEL.step_s([2048], [0], 0, 0)
    assert _first_token(events, 0) * 1e3 == pytest.approx(_table_ms(2048, 0), abs=5e-4)


def test_a_repeated_prompt_is_faster_by_the_cached_prefill() -> None:
    server = Server("s", EngineConfig(), MODEL)
    first = _request(0, 0.0, 2048, 1)
    again = _request(1, 1.0, 2048, 1)  # same blocks, after the first has finished
    events = _events(server, first, again)
    ttft_first = _first_token(events, 0)
    ttft_again = _first_token(events, 1) - 1.0
    # all 128 blocks are cached, but vLLM recomputes the last block's tokens
    expected = MODEL.step_s([16], [2032], 0, 0)
    assert ttft_again == pytest.approx(expected, rel=1e-12)
    assert ttft_first - ttft_again == pytest.approx(
        MODEL.step_s([2048], [0], 0, 0) - expected, rel=1e-12
    )
    (finished,) = [e.finished for e in events if e.kind == EventKind.FINISHED and e.request_id == 1]
    assert finished is not None
    assert finished.cached_tokens == 2032


def test_a_prompt_on_a_1024_token_cached_prefix_matches_the_table() -> None:
    server = Server("s", EngineConfig(), MODEL)
    prefix = _request(0, 0.0, 1024, 1)
    longer = _request(1, 1.0, 3072, 1)  # its first 64 blocks are the prefix's
    events = _events(server, prefix, longer)
    ttft = _first_token(events, 1) - 1.0
    assert ttft * 1e3 == pytest.approx(_table_ms(2048, 1024), rel=0.03)


def test_a_full_cache_preempts_and_everything_still_finishes() -> None:
    # 40 blocks of KV: four 128-token prompts fit, their decodes do not.
    server = Server("s", EngineConfig(num_gpu_blocks=40), MODEL)
    requests = [_request(i, 0.0, 128, 200, root=1000 * i) for i in range(4)]
    events = _events(server, *requests)
    assert [e.kind for e in events].count(EventKind.PREEMPTED) > 0
    finished = [e for e in events if e.kind == EventKind.FINISHED]
    assert sorted(e.request_id for e in finished) == [0, 1, 2, 3]
    assert server.metrics(math.inf).preemptions == [e.kind for e in events].count(
        EventKind.PREEMPTED
    )


def test_throughput_saturates_at_max_num_seqs() -> None:
    # Decode-bound requests: with 8 slots, 32 requests take ~4x as long as 8.
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=8192)
    spans = []
    for n in (8, 32):
        server = Server("s", config, MODEL)
        requests = [_request(i, 0.0, 64, 500, root=1000 * i) for i in range(n)]
        events = _events(server, *requests)
        spans.append(max(e.time_s for e in events))
    assert spans[1] / spans[0] == pytest.approx(4.0, rel=0.1)
