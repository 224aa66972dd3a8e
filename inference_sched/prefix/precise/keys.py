"""Keys of the precise prefix index: request keys, engine keys and extra keys.

**Request keys** are our own chained xxh64 hashes of full token blocks, exactly the token
mode of :mod:`inference_sched.prefix.hashing`: block ``i`` hashes to
``xxh64(tokens_i as uint32 LE ‖ uint64_le(parent_i))`` where ``parent_0 = chain_seed(root,
cache_salt)`` (``root`` = the LoRA name when there is one, else the model name) and
``parent_i = key_{i-1}``; a trailing partial block gets no key. So continuing a chain from
a known key = hashing with that key as the seed (llm-d-kv-cache:
``pkg/kvcache/kvblock/token_processor.go`` chains its keys the same way, with its own
hash).

**Extra keys** (multimodal ids, prompt-embedding hashes) are per block: a block with
extra keys xors :func:`extra_key_mix` of them into its parent before hashing, on the
request side and the event side alike; blocks without extras are the plain chain.
:func:`split_vllm_extra_keys` takes vLLM's raw per-block extra keys apart (vllm:
``vllm/v1/core/kv_cache_utils.py``, ``generate_block_hash_extra_keys``; llm-d-kv-cache
parses them in ``pkg/kvcache/kvblock/extra_keys.go``), and :func:`event_mixes` realigns
an event's per-engine-block extra keys to index blocks.

**Engine keys** are the engine's own block hashes (uint64; vllm:
``vllm/distributed/kv_events.py``, ``BlockStored.block_hashes``). Each endpoint has a
bounded *engine-key map* engine key -> request keys, filled by BlockStored and read by
BlockRemoved and by BlockStored's ``parent_block_hash``, so nothing depends on the
engine's hash algorithm, seed or block size. The map is one more LRU per endpoint in the
index's store (the ``engine_map`` tier of :mod:`inference_sched.prefix.precise.index`);
its entries carry the request key as their payload, and the kernels of
:mod:`inference_sched.kernels.precise_index` fill and read it.

This module computes the request side (:func:`request_keys`) and turns the inputs of
both sides (token ids, engine hashes, parent hashes, rows) into what the kernels take.
``docs/precise-index.md`` ("Keys") has the whole scheme with examples.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.kernels import precise_index as _k
from inference_sched.prefix._checks import as_uint64s, check_row
from inference_sched.prefix.hashing import as_token_ids, chain_seed

__all__ = [
    "MAX_ROW",
    "as_engine_hashes",
    "check_parent_hash",
    "checked_row",
    "event_mixes",
    "extra_key_mix",
    "num_request_keys",
    "request_keys",
    "request_mixes",
    "split_vllm_extra_keys",
]

MAX_ROW: Final = (2**31 - 1) // _k._NUM_TIERS - 1
"""The largest endpoint row: its LRU ids (``row * 8 + tier``) must fit int32."""

_UINT64: Final = np.dtype(np.uint64)  # for np.fromiter
_NO_MIXES: Final = np.zeros(0, dtype=np.uint64)


# --------------------------------------------------------------------------- extra keys


def _encode(item: object, out: list[bytes]) -> None:
    """Append a self-delimiting encoding of ``item`` (type tag, length, bytes)."""
    if item is None:
        out.append(b"N")
    elif isinstance(item, bool | np.bool_):
        out.append(b"T" if item else b"F")
    elif isinstance(item, numbers.Integral):
        _tagged(b"I", str(int(item)).encode("ascii"), out)
    elif isinstance(item, numbers.Real):
        _tagged(b"D", float(item).hex().encode("ascii"), out)
    elif isinstance(item, str):
        _tagged(b"S", item.encode("utf-8", "surrogatepass"), out)
    elif isinstance(item, bytes | bytearray | memoryview):
        _tagged(b"B", bytes(item), out)
    elif isinstance(item, list | tuple):
        out.append(b"L" + len(item).to_bytes(8, "little"))
        for child in item:
            _encode(child, out)
    else:
        raise TypeError(
            "extra keys: expected str, bytes, int, float, bool, None or a list/tuple of "
            f"them, got {type(item).__name__}"
        )


def _tagged(tag: bytes, data: bytes, out: list[bytes]) -> None:
    out.append(tag + len(data).to_bytes(8, "little"))
    out.append(data)


def extra_key_mix(items: Sequence[object] | None) -> int:
    """The value a block's extra keys xor into its parent key; 0 for none.

    ``items`` are the block's extra keys (multimodal ids, prompt-embedding hashes, ...):
    strings, bytes, ints, floats, bools, None, or lists/tuples of them (lists and tuples
    are the same, so msgpack-decoded keys match Python ones). Duplicates are dropped
    (first occurrence kept), then the items' self-delimiting encodings (type tag, 8-byte
    length, bytes; ints in decimal) are concatenated and hashed with xxh64; a digest of 0
    becomes 1, so only "no extra keys" mixes 0.

    Raises:
        TypeError: an item of another type.
    """
    if not items:
        return 0
    encoded: dict[bytes, None] = {}
    for item in items:
        parts: list[bytes] = []
        _encode(item, parts)
        encoded[b"".join(parts)] = None
    digest: int = xxhash.xxh64_intdigest(b"".join(encoded))
    return digest or 1


def split_vllm_extra_keys(
    extra_keys: Sequence[Sequence[object] | None] | None, lora_name: str | None = None
) -> tuple[list[tuple[object, ...] | None] | None, str]:
    """Split a vLLM BlockStored's ``extra_keys`` into content keys and the cache salt.

    vLLM gives each block ``lora names + multimodal keys + cache_salt (block 0 only) +
    prompt-embedding hashes (bytes)`` (``kv_cache_utils.generate_block_hash_extra_keys``).
    Here the LoRA name is the chain's root and the salt its seed's salt, so both come
    out: a leading item equal to ``lora_name`` is dropped from every block, and in block
    0 the string right before the trailing bytes items (if any) is taken as the salt.
    What is left (multimodal ``(identifier, offset)`` pairs, embedding hashes) is what
    :meth:`PreciseIndex.block_stored` mixes in; the request side must produce the same
    items per index block (offsets relative to the block: use the engine's block size).

    Returns:
        ``(content_keys, cache_salt)``: one entry per block (None when nothing is left;
        the whole list None when no block has any), and the salt ("" for none).
    """
    if extra_keys is None:
        return None, ""
    content: list[tuple[object, ...] | None] = []
    salt = ""
    for k, entry in enumerate(extra_keys):
        items = list(entry or ())
        if lora_name is not None and items and items[0] == lora_name:
            items.pop(0)
        if k == 0:
            tail = len(items)
            while tail > 0 and isinstance(items[tail - 1], bytes | bytearray):
                tail -= 1
            if tail > 0 and isinstance(items[tail - 1], str):
                salt = str(items.pop(tail - 1))
        content.append(tuple(items) or None)
    return (content if any(content) else None), salt


def request_mixes(extra_keys: Sequence[Sequence[object] | None] | None) -> npt.NDArray[np.uint64]:
    """Mixes of request blocks ``0..len(extra_keys)`` (later blocks mix nothing)."""
    if not extra_keys:
        return _NO_MIXES
    mixes = np.fromiter((extra_key_mix(items) for items in extra_keys), _UINT64, len(extra_keys))
    return mixes if mixes.any() else _NO_MIXES


def event_mixes(
    extra_keys: Sequence[Sequence[object] | None] | None,
    num_engine_blocks: int,
    engine_block_size: int,
    num_tokens: int,
    block_size: int,
) -> npt.NDArray[np.uint64]:
    """Per index block, the mix of the extra keys of the engine blocks it overlaps (in
    order); with equal block sizes, each engine block's own. llm-d realigns the same way:
    replicated when an engine block spans several index blocks, merged otherwise.

    Raises:
        ValueError: ``extra_keys`` not one entry per engine block.
    """
    if extra_keys is None:
        return _NO_MIXES
    if len(extra_keys) != num_engine_blocks:
        raise ValueError(
            f"extra_keys: expected one entry per engine block ({num_engine_blocks}), "
            f"got {len(extra_keys)}"
        )
    if not any(extra_keys) or num_tokens != num_engine_blocks * engine_block_size:
        return _NO_MIXES  # nothing to mix, or an invalid event the kernel rejects
    num_keys = num_tokens // block_size
    mixes = np.zeros(num_keys, dtype=np.uint64)
    for k in range(num_keys):
        first = k * block_size // engine_block_size
        last = ((k + 1) * block_size - 1) // engine_block_size
        items: list[object] = []
        for j in range(first, last + 1):
            items.extend(extra_keys[j] or ())
        mixes[k] = extra_key_mix(items)
    return mixes if mixes.any() else _NO_MIXES


# --------------------------------------------------------------------------- request keys


def num_request_keys(num_tokens: int, block_size: int, max_blocks: int | None = None) -> int:
    """How many request keys ``num_tokens`` tokens have: full blocks of ``block_size``
    tokens, at most ``max_blocks`` (the scorer's denominator)."""
    count = int(num_tokens) // block_size
    return count if max_blocks is None else max(0, min(count, int(max_blocks)))


def request_keys(
    token_ids: npt.ArrayLike,
    block_size: int,
    root_name: str,
    cache_salt: str = "",
    max_blocks: int | None = None,
    extra_keys: Sequence[Sequence[object] | None] | None = None,
) -> npt.NDArray[np.uint64]:
    """The request keys of the full ``block_size``-token blocks of ``token_ids`` (at most
    ``max_blocks``), as :meth:`PreciseIndex.request_keys` documents them."""
    tokens = as_token_ids(token_ids)
    out = np.empty(num_request_keys(tokens.shape[0], block_size, max_blocks), dtype=np.uint64)
    count = _k._chain_block_keys(
        tokens,
        block_size,
        out.shape[0],
        chain_seed(root_name, cache_salt),
        request_mixes(extra_keys),
        out,
    )
    return out[:count]


# --------------------------------------------------------------------------- inputs


def checked_row(row: Any) -> int:
    """An endpoint row as an int in ``[0, MAX_ROW]`` (ValueError otherwise)."""
    return check_row(row, MAX_ROW)


def check_parent_hash(value: object) -> int | None:
    """A BlockStored's ``parent_block_hash`` as an int in uint64 range, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"parent_engine_hash: expected int or None, got {type(value).__name__}")
    if not 0 <= int(value) < 2**64:
        raise ValueError(f"parent_engine_hash: expected an int in [0, 2**64), got {value!r}")
    return int(value)


def as_engine_hashes(hashes: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Engine hashes as the writable, contiguous 1-D uint64 array the kernels take."""
    return as_uint64s("engine_hashes", hashes, writable=True)
