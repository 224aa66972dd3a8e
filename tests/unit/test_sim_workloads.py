"""Synthetic workloads: structure, prefix identity, determinism and arrival statistics.

Statistical checks use fixed seeds, so they are deterministic; their bounds are still
chosen wide enough (>= 4 standard errors) to hold for any seed in practice.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference_sched.errors import ConfigError
from inference_sched.sim.data import shared_data_dir
from inference_sched.sim.prompts import num_blocks, prompt_bytes
from inference_sched.sim.traces import servegen_windows
from inference_sched.sim.types import SimRequest
from inference_sched.sim.workloads import (
    DEFAULT_MODEL,
    WORKLOADS,
    Workload,
    bursty,
    hot_prefix,
    load_workload,
    lora_mix,
    multi_turn_chat,
    shared_prefix,
)


def common_ids(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def common_bytes(a: SimRequest, b: SimRequest) -> int:
    x = np.frombuffer(prompt_bytes(a.blocks, a.prompt_tokens), np.uint8)
    y = np.frombuffer(prompt_bytes(b.blocks, b.prompt_tokens), np.uint8)
    n = min(len(x), len(y))
    diff = np.flatnonzero(x[:n] != y[:n])
    return int(diff[0]) if diff.size else n


def check_structure(w: Workload, duration_s: float) -> None:
    assert [r.id for r in w.requests] == list(range(len(w)))
    arrivals = w.arrivals()
    assert (np.diff(arrivals) >= 0).all()
    assert arrivals.size == 0 or (arrivals[0] >= 0 and arrivals[-1] < duration_s)
    for r in w.requests:
        assert r.blocks.dtype == np.int64
        assert r.blocks.shape == (num_blocks(r.prompt_tokens),)
        assert not r.blocks.flags.writeable
        assert r.prompt_tokens >= 1
        assert r.output_tokens >= 1
    json.dumps(w.params)  # the report embeds it


def check_bytes_follow_ids(w: Workload, pairs: int = 300) -> None:
    """Shared leading ids <=> shared leading bytes (64 per block), on sampled pairs."""
    rng = np.random.default_rng(0)
    n = len(w)
    for i, j in rng.integers(n, size=(pairs, 2)).tolist():
        a, b = w.requests[i], w.requests[j]
        k = common_ids(a.blocks, b.blocks)
        common = common_bytes(a, b)
        shortest = 4 * min(a.prompt_tokens, b.prompt_tokens)
        if k == min(len(a.blocks), len(b.blocks)):
            assert common == shortest
        else:
            assert 64 * k <= common < 64 * k + 4 or common == shortest


GENERATORS: dict[str, Callable[..., Workload]] = dict(WORKLOADS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_structure_and_determinism(name: str) -> None:
    make = GENERATORS[name]
    w = make(rate=20.0, duration_s=10.0, seed=3)
    assert w.name == name
    assert w.model == DEFAULT_MODEL
    assert w.params["generator"] == name
    assert w.params["num_requests"] == len(w) > 100
    check_structure(w, 10.0)
    check_bytes_follow_ids(w)
    again = make(rate=20.0, duration_s=10.0, seed=3)
    assert len(again) == len(w)
    for a, b in zip(w.requests, again.requests, strict=True):
        assert (a.arrival_s, a.prompt_tokens, a.output_tokens, a.lora, a.session) == (
            b.arrival_s,
            b.prompt_tokens,
            b.output_tokens,
            b.lora,
            b.session,
        )
        assert np.array_equal(a.blocks, b.blocks)
    other = make(rate=20.0, duration_s=10.0, seed=4)
    assert other.arrivals().tolist() != w.arrivals().tolist()
    # Ids are scoped by seed: no block of one seed appears in the other.
    ids = set(np.concatenate([r.blocks for r in w.requests]).tolist())
    assert ids.isdisjoint(np.concatenate([r.blocks for r in other.requests]).tolist())


def test_load_workload_defaults_are_a_30_second_moderate_run() -> None:
    w = load_workload("shared-prefix")
    assert 1500 <= len(w) <= 2100  # 60 req/s for 30 s
    assert w.requests[-1].arrival_s < 30.0
    assert {r.prompt_tokens for r in w.requests} == {1536 + 256}
    assert w.params["rate"] == 60.0


def test_shared_prefix_groups() -> None:
    w = shared_prefix(
        rate=50.0,
        duration_s=20.0,
        num_groups=4,
        prompts_per_group=3,
        system_tokens=100,
        question_tokens=40,
        output_tokens=(5, 9),
    )
    assert {r.prompt_tokens for r in w.requests} == {140}
    assert {r.output_tokens for r in w.requests} == set(range(5, 10))
    # 100 system tokens = 6 full blocks shared in a group; block 6 straddles, so unique.
    firsts = {int(r.blocks[0]) for r in w.requests}
    assert len(firsts) == 4
    prompts = {r.blocks.tobytes() for r in w.requests}
    assert len(prompts) == 12  # every (group, prompt) drawn, each one fixed text
    for a, b in itertools.combinations(w.requests[:60], 2):
        k = common_ids(a.blocks, b.blocks)
        same_group = a.blocks[0] == b.blocks[0]
        same_prompt = a.blocks.tobytes() == b.blocks.tobytes()
        assert k == (9 if same_prompt else 6 if same_group else 0)
        if same_prompt:
            assert a.blocks is b.blocks  # one array per distinct prompt


def test_shared_prefix_picks_groups_uniformly() -> None:
    w = shared_prefix(rate=100.0, duration_s=200.0, num_groups=5, prompts_per_group=2)
    counts = Counter(int(r.blocks[0]) for r in w.requests)
    n = len(w)
    for c in counts.values():  # binomial(n, 1/5): 5 standard deviations
        assert abs(c - n / 5) < 5 * math.sqrt(n * 0.2 * 0.8)


def test_question_length_is_fixed_per_prompt() -> None:
    w = shared_prefix(
        rate=50.0, duration_s=20.0, num_groups=2, prompts_per_group=2, question_tokens=(10, 500)
    )
    by_prompt = defaultdict(set)
    for r in w.requests:
        by_prompt[r.blocks.tobytes()].add(r.prompt_tokens)
    assert all(len(v) == 1 for v in by_prompt.values())


def test_poisson_rate_over_a_long_run() -> None:
    w = shared_prefix(rate=20.0, duration_s=1000.0, seed=11)
    expected = 20_000
    assert abs(len(w) - expected) < 4 * math.sqrt(expected)
    gaps = np.diff(w.arrivals())
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # exponential gaps: CV 1


def test_gamma_cv_and_rate() -> None:
    w = bursty(rate=100.0, duration_s=1000.0, cv=3.0, seed=5, num_groups=2)
    gaps = np.diff(w.arrivals())
    assert abs(len(w) / 1000.0 - 100.0) < 5.0
    assert abs(gaps.std() / gaps.mean() - 3.0) < 0.15
    even = bursty(rate=10.0, duration_s=10.0, cv=0.0, num_groups=2)
    assert np.allclose(np.diff(even.arrivals()), 0.1)


def test_lora_zipf_popularity() -> None:
    w = lora_mix(rate=100.0, duration_s=200.0, num_adapters=4, zipf_s=1.0, seed=2)
    counts = Counter(r.lora for r in w.requests)
    names = ["adapter-0", "adapter-1", "adapter-2", "adapter-3"]
    assert set(counts) == set(names)
    ordered = [counts[name] for name in names]
    assert ordered == sorted(ordered, reverse=True)
    n = len(w)
    p = np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (1 + 1 / 2 + 1 / 3 + 1 / 4)
    for count, q in zip(ordered, p, strict=True):
        assert abs(count - n * q) < 5 * math.sqrt(n * q * (1 - q))


def test_lora_ids_never_cross_adapters() -> None:
    w = lora_mix(rate=50.0, duration_s=20.0, num_adapters=3, num_groups=1, base_fraction=0.3)
    assert None in {r.lora for r in w.requests}
    for a, b in itertools.combinations(w.requests[:80], 2):
        k = common_ids(a.blocks, b.blocks)
        if a.lora != b.lora:
            assert k == 0
        else:  # one group per adapter: the 64 full system blocks are shared
            assert k >= 64


def test_lora_names_are_zero_padded() -> None:
    w = lora_mix(rate=50.0, duration_s=10.0, num_adapters=12, zipf_s=0.0)
    assert {r.lora for r in w.requests} <= {f"adapter-{k:02d}" for k in range(12)}


def test_hot_prefix_traffic_split() -> None:
    w = hot_prefix(rate=100.0, duration_s=100.0, num_hot=2, hot_fraction=0.8, cold_groups=50)
    counts = Counter(int(r.blocks[0]) for r in w.requests)
    top = counts.most_common()
    n = len(w)
    hot = top[0][1] + top[1][1]
    assert abs(hot / n - 0.8) < 0.02
    assert abs(top[0][1] - top[1][1]) < 5 * math.sqrt(n * 0.4 * 0.6)
    assert top[2][1] < top[1][1] / 5  # a cold group: 0.2 / 50 of traffic
    assert w.params["hot_requests"] == hot
    assert len({r.blocks.tobytes() for r in w.requests}) == n  # every question unique


def _sessions(w: Workload) -> dict[str, list[SimRequest]]:
    sessions: dict[str, list[SimRequest]] = defaultdict(list)
    for r in w.requests:
        assert r.session is not None
        sessions[r.session].append(r)
    return sessions


def test_multi_turn_context_grows() -> None:
    w = multi_turn_chat(
        rate=30.0,
        duration_s=60.0,
        turns=(3, 6),
        system_tokens=200,
        user_tokens=(10, 50),
        output_tokens=(20, 80),
        warm_start=False,
        max_context_tokens=100_000,
    )
    sessions = _sessions(w)
    assert len(sessions) > 50
    grew = 0
    for turns in sessions.values():
        first = turns[0]
        assert 210 <= first.prompt_tokens <= 250  # system + one user message
        for prev, cur in itertools.pairwise(turns):
            assert cur.arrival_s - prev.arrival_s >= 2.0  # min_gap_s
            added = cur.prompt_tokens - prev.prompt_tokens - prev.output_tokens
            assert 10 <= added <= 50
            assert np.array_equal(cur.blocks[: len(prev.blocks)], prev.blocks)
            grew += 1
    assert grew > 100
    # Sessions share only full system blocks (200 tokens = 12), with one of 4 systems.
    firsts = [t[0] for t in sessions.values()]
    for a, b in itertools.combinations(firsts[:30], 2):
        assert common_ids(a.blocks, b.blocks) in (0, 12)


def test_multi_turn_rate_and_warm_start() -> None:
    cold = multi_turn_chat(rate=20.0, duration_s=40.0, turns=4, warm_start=False, seed=1)
    warm = multi_turn_chat(rate=20.0, duration_s=40.0, turns=4, warm_start=True, seed=1)
    # Warm start: turns from sessions begun before 0 are there from the first second.
    early = lambda w: sum(r.arrival_s < 10.0 for r in w.requests)  # noqa: E731
    assert early(warm) > 1.5 * early(cold)
    long = multi_turn_chat(
        rate=20.0, duration_s=1000.0, turns=4, seed=2, max_context_tokens=100_000
    )
    # Steady state: no ramp-up bias; compound Poisson (4 turns a session): sd = sqrt(4 n).
    assert abs(len(long) - 20_000) < 5 * math.sqrt(4 * 20_000)


def test_multi_turn_max_context() -> None:
    w = multi_turn_chat(rate=20.0, duration_s=60.0, turns=20, max_context_tokens=2000)
    assert all(r.prompt_tokens + r.output_tokens <= 2000 for r in w.requests)
    assert w.params["sessions_cut_by_context"] > 0


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="rate"):
        shared_prefix(rate=0.0)
    with pytest.raises(ConfigError, match="output_tokens"):
        shared_prefix(output_tokens=(5, 2))
    with pytest.raises(ConfigError, match="hot_fraction"):
        hot_prefix(hot_fraction=1.5)
    with pytest.raises(ConfigError, match="cv"):
        bursty(cv=-1.0)


def test_workload_rejects_unsorted_requests() -> None:
    blocks = np.zeros(1, dtype=np.int64)
    r0 = SimRequest(id=0, arrival_s=1.0, prompt_tokens=1, output_tokens=1, blocks=blocks)
    r1 = SimRequest(id=1, arrival_s=0.5, prompt_tokens=1, output_tokens=1, blocks=blocks)
    with pytest.raises(ValueError, match="sorted"):
        Workload(name="x", requests=(r0, r1), params={})


def test_load_workload() -> None:
    w = load_workload("hot-prefix", rate=10.0, duration_s=5.0, seed=1, num_hot=1)
    assert w.name == "hot-prefix"
    assert w.params["rate"] == 10.0
    assert w.params["num_hot"] == 1
    assert w.params["seed"] == 1
    with pytest.raises(ConfigError, match="unknown workload 'nope'"):
        load_workload("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        load_workload("bursty", colour="red")


def test_load_workload_trace(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 20, "output_length": 2, "hash_ids": [1]}\n'
        '{"timestamp": 500, "input_length": 30, "output_length": 3, "hash_ids": [1]}\n'
    )
    w = load_workload(f"trace:{path}", rate=4.0)
    assert w.name == "trace:t.jsonl"
    assert w.arrivals().tolist() == [0.0, 0.5 * (2 / 0.5) / 4.0]
    with pytest.raises(ConfigError, match="unknown option"):
        load_workload(f"trace:{path}", num_groups=3)


# ----------------------------------------------------------------------------- ServeGen

SERVEGEN_CSV = (
    "0,2.0,1.0,Gamma,1.0,0.5\n"
    "600,0,0,,0,0\n"
    "1200,6.0,2.0,Weibull,0.5,1.0\n"
    "1800,4.0,0.5,Gamma,4.0,0.0625\n"
)


def _servegen_tar(tmp_path: Path) -> Path:
    path = tmp_path / "sg.tar.gz"
    data = SERVEGEN_CSV.encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("language/m-large/chunk-7-trace.csv")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_servegen_windows(tmp_path: Path) -> None:
    tar = _servegen_tar(tmp_path)
    windows = servegen_windows(tar, 7)
    assert len(windows) == 4
    assert windows[0] == (0.0, 2.0, 1.0, "Gamma", 1.0, 0.5)
    assert windows[1].pattern == ""
    assert windows[2].pattern == "Weibull"
    plain = tmp_path / "chunk-7-trace.csv"
    plain.write_text(SERVEGEN_CSV)
    assert servegen_windows(plain, 7) == windows


def test_bursty_from_servegen(tmp_path: Path) -> None:
    tar = _servegen_tar(tmp_path)
    w = bursty(
        rate=30.0,
        duration_s=400.0,
        servegen_client=7,
        servegen_path=str(tar),
        window_s=100.0,
        num_groups=2,
    )
    check_structure(w, 400.0)
    used = w.params["servegen_windows"]
    assert isinstance(used, list)
    assert len(used) == 4
    arrivals = w.arrivals()
    # Mean window rate 3 -> scale 10: windows at 20, 0, 60, 40 req/s.
    counts = np.histogram(arrivals, bins=[0, 100, 200, 300, 400])[0]
    assert counts[1] == 0
    assert abs(counts[0] - 2000) < 5 * math.sqrt(2000)
    assert abs(counts[3] - 4000) < 5 * math.sqrt(4000)
    assert 3000 < counts[2] < 9000  # Weibull 0.5 is very bursty
    with pytest.raises(ConfigError, match="first_window"):
        bursty(
            servegen_client=7,
            servegen_path=str(tar),
            window_s=100.0,
            duration_s=400.0,
            first_window=2,
        )


@pytest.mark.skipif(shared_data_dir() is None, reason="no shared data directory")
def test_bursty_from_the_real_servegen_tarball() -> None:
    w = bursty(servegen_client=0, rate=20.0, duration_s=30.0)
    assert len(w) > 0
    used = w.params["servegen_windows"]
    assert isinstance(used, list)
    assert len(used) == 3
