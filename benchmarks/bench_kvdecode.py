"""KV-event decoding (issue 6): msgpack payload → ``EventBatch`` with NumPy arrays.

A realistic batch is one scheduler step of one engine: a ``BlockStored`` of N full blocks
of 16 tokens (N = 1, 16, 128; random 64-bit hashes, half of them >= 2**63 as vLLM sends
them, a parent hash, token ids < 152,064, medium "GPU"), in vLLM's two encodings:
``array`` (``array_like=True``, up to v0.25) and ``map`` (maps at both levels, later main;
the v0.26-v0.28 ``mixed`` form costs the same as ``map``). One more case has 32-byte
hashes (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``), which takes the per-element path.

Per batch, in the same process and on the same bytes:

* ``python-loop``: the baseline, a straightforward decoder that checks and normalises
  every hash and token in a Python loop, then builds the arrays;
* ``decode_batch``: :func:`inference_sched.prefix.precise.wire.decode_batch` (bulk
  ``sum``-checked NumPy conversion);
* ``unpackb-only``: ``msgpack.unpackb`` alone, the floor any msgpack decoder pays.

``ratio_vs_baseline`` is baseline p50 / case p50 (the speed-up); ``block_events_per_s``
is blocks / p50 and ``us_per_block`` its inverse. Both decoders must return equal batches
before anything is timed. Target (issue 6): ingest >= 200,000 block events/s on one core
*including* the index, so decoding must cost well under 2 us per block.

    python benchmarks/bench_kvdecode.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, time_calls, write_report

from inference_sched.prefix.precise.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KVEvent,
    decode_batch,
    encode_batch,
)

BLOCK_TOKENS = 16
VOCAB = 152_064
SIZES = (1, 16, 128)
_MASK64 = (1 << 64) - 1
_FIELDS = {"BlockStored": BlockStored._fields, "BlockRemoved": BlockRemoved._fields}


# ---------------------------------------------------------------------- baseline
def _hash(value: object) -> int:
    if type(value) is int:
        return value & _MASK64
    if type(value) is bytes:
        return int.from_bytes(value[-8:], "big")
    raise ValueError(f"bad hash {value!r}")


def python_loop_decode(payload: bytes) -> EventBatch:
    """The obvious decoder: every element checked and converted in Python."""
    obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if isinstance(obj, dict):
        ts, events, rank = obj["ts"], obj["events"], obj.get("data_parallel_rank")
    else:
        ts, events, rank = obj[0], obj[1], (obj[2] if len(obj) > 2 else None)
    out: list[KVEvent] = []
    fields: list[Any]
    for raw in events:
        if isinstance(raw, dict):
            tag = raw["type"]
            fields = [raw.get(name) for name in _FIELDS.get(tag, ())]
        else:
            tag = raw[0]
            names = _FIELDS.get(tag, ())
            fields = list(raw[1 : 1 + len(names)]) + [None] * (len(names) + 1 - len(raw))
        if tag == "BlockStored":
            hashes = [_hash(h) for h in fields[0]]
            tokens = []
            for token in fields[2]:
                if type(token) is not int or not 0 <= token < 2**32:
                    raise ValueError(f"bad token {token!r}")
                tokens.append(token)
            parent = None if fields[1] is None else _hash(fields[1])
            extra = fields[7]
            if extra is not None:
                extra = tuple(None if e is None else tuple(e) for e in extra)
            arrays = [np.array(hashes, np.uint64), parent, np.array(tokens, np.uint32)]
            out.append(BlockStored._make([*arrays, *fields[3:7], extra, *fields[8:]]))
        elif tag == "BlockRemoved":
            hashes = [_hash(h) for h in fields[0]]
            out.append(BlockRemoved._make([np.array(hashes, np.uint64), *fields[1:]]))
        elif tag == "AllBlocksCleared":
            out.append(AllBlocksCleared())
    return EventBatch(float(ts), tuple(out), rank)


# ---------------------------------------------------------------------- inputs
def make_payload(num_blocks: int, encoding: Any, *, bytes_hashes: bool = False) -> bytes:
    """One scheduler step's BlockStored of ``num_blocks`` full blocks."""
    rng = np.random.default_rng(num_blocks)
    hashes = rng.integers(0, 2**64 - 1, num_blocks, dtype=np.uint64, endpoint=True)
    tokens = rng.integers(0, VOCAB, num_blocks * BLOCK_TOKENS, dtype=np.uint32)
    parent = int(rng.integers(0, 2**63))
    stored = BlockStored(hashes, parent, tokens, BLOCK_TOKENS, None, "GPU", None)
    if not bytes_hashes:
        return encode_batch([stored], ts=1.7e9, encoding=encoding, data_parallel_rank=0)
    # 32-byte digests whose last 8 bytes are the hash (vLLM's int truncation).
    digests = [rng.bytes(24) + int(h).to_bytes(8, "big") for h in hashes]
    wire = [1.7e9, [["BlockStored", digests, parent, tokens.tolist(), 16, None, "GPU", None]], 0]
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return packed


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


def main() -> None:
    args = parse_args(__doc__ or "")
    repeats = 2 if args.quick else 7
    inputs = [(n, encoding, False) for n in SIZES for encoding in ("array", "map")]
    inputs.append((16, "array", True))
    results: list[dict[str, Any]] = []
    for num_blocks, encoding, bytes_hashes in inputs:
        data = make_payload(num_blocks, encoding, bytes_hashes=bytes_hashes)
        label = f"{encoding}{'-bytes32' if bytes_hashes else ''}/{num_blocks}blocks"
        assert decode_batch(data) == python_loop_decode(data), label
        runs: dict[str, Callable[[], Any]] = {
            "python-loop": partial(python_loop_decode, data),
            "decode_batch": partial(decode_batch, data, source="bench"),
            "unpackb-only": partial(msgpack.unpackb, data, raw=False, strict_map_key=False),
        }
        # Roughly the same wall time per input: ~1 us per token for the Python loop.
        fast = max(200, (400 if args.quick else 2000) * 16 // num_blocks)
        calls = {"python-loop": max(50, fast // 8), "decode_batch": fast, "unpackb-only": fast}
        print(f"{label}: {repeats} x {calls} calls ...", file=sys.stderr)
        for run in runs.values():
            time_calls(run, 20)
        gc.collect()
        samples = interleaved(repeats, calls, runs)
        base_p50, _ = percentiles_us(samples["python-loop"])
        for name, case_samples in samples.items():
            p50, p99 = percentiles_us(case_samples)
            results.append(
                {
                    "case": f"{name}/{label}",
                    "endpoints": 0,
                    "p50_us": p50,
                    "p99_us": p99,
                    "ratio_vs_baseline": base_p50 / p50,
                    "baseline": f"python-loop/{label}",
                    "encoding": encoding,
                    "blocks": num_blocks,
                    "tokens": num_blocks * BLOCK_TOKENS,
                    "payload_bytes": len(data),
                    "us_per_block": p50 / num_blocks,
                    "block_events_per_s": num_blocks / (p50 * 1e-6),
                    "calls": int(case_samples.size),
                }
            )
    write_report("kvdecode", results, args.json)
    print(f"\n{'case':<44} {'us/block':>9} {'blocks/s':>12}")
    for r in results:
        print(f"{r['case']:<44} {r['us_per_block']:>9.3f} {r['block_events_per_s']:>12,.0f}")


if __name__ == "__main__":
    main()
