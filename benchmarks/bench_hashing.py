"""Prefix-hash throughput (issue 3, benchmark a): GIE's chained xxh64 over 8 KB / 32 KB /
400 KB prompts, blocks of 16 tokens (64 bytes), no truncation.

Per prompt size, in the same process and on the same bytes:

* ``chain/xxhash-python-loop``: the NumPy twin (``kernels/_twins/hashing.py``), a Python
  loop calling ``xxhash.xxh64_intdigest(block + uint64_le(parent))`` per block (the
  baseline);
* ``chain/numba-kernel``: ``kernels.hashing.chained_block_hashes`` on a read-only uint8
  view with a preallocated ``out``;
* ``chain/numba-wrapper``: ``prefix_hashing.block_hashes(prompt_bytes, model)``, end to
  end from ``bytes`` (seed hash, view, allocation, kernel);
* ``xxh64/xxhash-c`` and ``xxh64/numba``: one plain XXH64 over the whole prompt (the C
  library is the baseline), for scale.

``ratio_vs_baseline`` is baseline p50 / case p50 (the speed-up); ``gb_per_s`` is prompt
bytes / p50. Compile time is excluded (warm-up). Target: the chained hash >= 2 GB/s.

    python benchmarks/bench_hashing.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, time_calls, write_report

from inference_sched.kernels import hashing
from inference_sched.kernels._twins import hashing as hashing_twins
from inference_sched.prefix.hashing import block_hashes, readonly, seed_hash

SIZES = {"8KB": 8 * 1024, "32KB": 32 * 1024, "400KB": 400 * 1024}
BLOCK_TOKENS = 16
BLOCK_BYTES = 4 * BLOCK_TOKENS
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def interleaved(
    repeats: int, calls: dict[str, int], runs: dict[str, Callable[[], Any]]
) -> dict[str, np.ndarray]:
    """Time each case ``repeats`` times, alternating cases, so drifts in machine load hit
    every case alike; returns every case's samples concatenated."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(time_calls(run, calls[name]))
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def make_runs(
    prompt: bytes, data: np.ndarray, out: np.ndarray, seed: np.uint64, max_blocks: int
) -> dict[str, Callable[[], Any]]:
    """The timed calls of one prompt size, keyed by case name."""
    return {
        "chain/xxhash-python-loop": lambda: hashing_twins.chained_block_hashes(
            data, BLOCK_BYTES, max_blocks, seed, out
        ),
        "chain/numba-kernel": lambda: hashing.chained_block_hashes(
            data, BLOCK_BYTES, max_blocks, seed, out
        ),
        "chain/numba-wrapper": lambda: block_hashes(prompt, MODEL, "", BLOCK_TOKENS, max_blocks),
        "xxh64/xxhash-c": lambda: xxhash.xxh64_intdigest(prompt),
        "xxh64/numba": lambda: hashing.xxh64(data, np.uint64(0)),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    repeats = 2 if args.quick else 7
    seed = np.uint64(seed_hash(MODEL))
    max_blocks = 1 << 40  # hash everything
    results: list[dict[str, Any]] = []
    for label, size in SIZES.items():
        prompt = np.random.default_rng(size).integers(0x20, 0x7F, size, dtype=np.uint8).tobytes()
        data = readonly(np.frombuffer(prompt, dtype=np.uint8))
        out = np.empty(-(-size // BLOCK_BYTES), dtype=np.uint64)
        expected = np.empty_like(out)
        assert hashing_twins.chained_block_hashes(data, BLOCK_BYTES, max_blocks, seed, expected)
        hashing.chained_block_hashes(data, BLOCK_BYTES, max_blocks, seed, out)  # compile
        assert (out == expected).all()
        assert (block_hashes(prompt, MODEL, "", BLOCK_TOKENS, max_blocks) == expected).all()
        assert hashing.xxh64(data, np.uint64(0)) == xxhash.xxh64_intdigest(prompt)

        # Roughly the same wall time per case: the Python loop is ~30x slower.
        fast = max(50, (8 if args.quick else 40) * 400 * 1024 // size)
        slow = max(10, fast // 20)
        runs = make_runs(prompt, data, out, seed, max_blocks)
        calls = {name: slow if "python" in name else fast for name in runs}
        print(f"{label}: {repeats} x {calls} calls ...", file=sys.stderr)
        for run in runs.values():  # warm every path outside the figures
            time_calls(run, 3)
        gc.collect()
        samples = interleaved(repeats, calls, runs)
        baselines = {"chain": "chain/xxhash-python-loop", "xxh64": "xxh64/xxhash-c"}
        for name, case_samples in samples.items():
            p50, p99 = percentiles_us(case_samples)
            baseline = baselines[name.split("/")[0]]
            base_p50, _ = percentiles_us(samples[baseline])
            results.append(
                {
                    "case": f"{name}/{label}",
                    "endpoints": 0,
                    "p50_us": p50,
                    "p99_us": p99,
                    "ratio_vs_baseline": base_p50 / p50,
                    "baseline": f"{baseline}/{label}",
                    "bytes": size,
                    "blocks": int(out.shape[0]),
                    "gb_per_s": size / (p50 * 1e3),
                    "calls": int(case_samples.size),
                }
            )
    write_report("hashing", results, args.json)
    print(f"\n{'case':<36} {'GB/s':>7}")
    for r in results:
        print(f"{r['case']:<36} {r['gb_per_s']:>7.2f}")


if __name__ == "__main__":
    main()
