"""Prefix-cache block hashes, at the Python boundary: GIE's and llm-d-router's chains.

GIE hashes prompt *bytes* in ``hashPrompt`` (gateway-api-inference-extension:
``pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix/hashing.go``):
``h_i = xxh64(block_i ‖ le64(h_{i-1}))``, and prompts shorter than one block get none
(:func:`block_hashes`, :func:`gie_token_block_hashes`). llm-d-router hashes *token ids*
in ``computeBlockHashes`` (llm-d/llm-d-router:
``pkg/epp/framework/plugins/requestcontrol/dataproducer/prefixhash/hashing.go``):
``h_i = xxh64(le64(xxh64(ids_i as uint32 LE)) ‖ le64(h_{i-1}))``, and the last, partial
block always counts (:func:`token_block_hashes`). Both chains start at
``xxh64(target_model ‖ cache_salt)`` (:func:`seed_hash`, :func:`request_seed`).

The wrappers validate, convert once to the pinned dtypes, allocate ``out`` and call one
kernel (:mod:`inference_sched.kernels.hashing`,
:mod:`inference_sched.kernels.token_hashing`) for the whole prompt. Inputs reach the
kernels as read-only views (prompt ``bytes`` are immutable, and a copy of a 400 KB prompt
would cost a tenth of its hashing), so each kernel compiles one signature whatever the
caller passes. Hashes are :data:`BlockHash` values (64-bit unsigned ints) one by one, and
``uint64`` arrays in bulk.
"""

from __future__ import annotations

import functools
import sys
from typing import Final, NewType, TypeVar

import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.kernels.hashing import chained_block_hashes, chained_token_block_hashes
from inference_sched.kernels.token_hashing import chained_token_content_hashes

__all__ = [
    "BYTES_PER_TOKEN",
    "BlockHash",
    "as_token_ids",
    "block_hashes",
    "chain_seed",
    "gie_token_block_hashes",
    "num_block_hashes",
    "pack_prompt_bytes",
    "readonly",
    "request_seed",
    "seed_hash",
    "token_block_hashes",
]

_T = TypeVar("_T", bound=np.generic)

BlockHash = NewType("BlockHash", int)
"""One block's chained xxh64 hash (the block's content and its parent's hash)."""

BYTES_PER_TOKEN = 4
"""GIE's characters-per-token estimate: a block of ``n`` tokens is ``4 * n`` bytes."""

_UINT8: Final = np.dtype(np.uint8)
_UINT32: Final = np.dtype("<u4")
_UINT64: Final = np.dtype(np.uint64)


def seed_hash(model: str, cache_salt: str = "") -> BlockHash:
    """The chain's first parent: ``xxh64(model + cache_salt)`` of their UTF-8 bytes.

    ``model`` is the target model after rewrites (caches are model and LoRA scoped);
    ``cache_salt`` is the request body's ``cache_salt``, appended only when non-empty.
    """
    data = model.encode("utf-8", "surrogatepass")  # a Python str may hold lone surrogates
    if cache_salt:
        data += cache_salt.encode("utf-8", "surrogatepass")
    return BlockHash(xxhash.xxh64_intdigest(data))


@functools.lru_cache(maxsize=1024)
def chain_seed(model: str, cache_salt: str = "") -> np.uint64:
    """:func:`seed_hash` as the kernels take it (``np.uint64``), cached: every decision
    needs it, and a few models and salts recur."""
    return np.uint64(seed_hash(model, cache_salt))


def readonly(array: npt.NDArray[_T]) -> npt.NDArray[_T]:
    """A read-only view of ``array``: the input layout the hashing kernels are pinned to."""
    if not array.flags.writeable:  # e.g. np.frombuffer over bytes: no new view needed
        return array
    view = array.view()
    view.flags.writeable = False
    return view


def as_token_ids(tokens: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """Token ids as the read-only contiguous 1-D uint32 array the token kernels take.

    The kernels read the ids as uint32 little-endian bytes, which they are in memory
    only on a little-endian host; this asserts one.
    """
    assert sys.byteorder == "little", "token hashing reads uint32 ids as little-endian bytes"
    return readonly(np.ascontiguousarray(tokens, dtype=np.uint32).reshape(-1))


def num_block_hashes(num_bytes: int, block_bytes: int, max_blocks: int) -> int:
    """How many hashes a prompt of ``num_bytes`` gets (the partial tail block counts)."""
    if block_bytes <= 0 or num_bytes < block_bytes or max_blocks <= 0:
        return 0
    return min(-(-num_bytes // block_bytes), max_blocks)


def block_hashes(
    prompt: bytes,
    model: str,
    cache_salt: str = "",
    block_size_tokens: int = 16,
    max_blocks: int = 256,
) -> npt.NDArray[np.uint64]:
    """The chained hashes of ``prompt``'s blocks of ``4 * block_size_tokens`` bytes.

    Prompts shorter than one block get none; the prompt is truncated to ``max_blocks``
    blocks; a partial last block is hashed. Block ``i`` hashes to
    ``xxh64(block_i + uint64_le(h_{i-1}))`` with ``h_{-1} = seed_hash(model, cache_salt)``.

    Returns:
        uint64 (count,), one hash per block, in prompt order.
    """
    # Positional dtypes: NumPy's keyword parsing costs more than the call itself here.
    data = readonly(np.frombuffer(prompt, _UINT8))  # a no-op over bytes
    block_bytes = BYTES_PER_TOKEN * int(block_size_tokens)
    out = np.empty(num_block_hashes(len(data), block_bytes, int(max_blocks)), _UINT64)
    if out.shape[0] == 0:
        return out
    seed = chain_seed(model, cache_salt)
    count = chained_block_hashes(data, block_bytes, int(max_blocks), seed, out)
    return out[:count]


def gie_token_block_hashes(
    tokens: npt.ArrayLike,
    model: str,
    cache_salt: str = "",
    block_size_tokens: int = 16,
    max_blocks: int = 256,
) -> npt.NDArray[np.uint64]:
    """:func:`block_hashes` over token ids, each serialised as uint32 little-endian
    (see :func:`as_token_ids`)."""
    ids = as_token_ids(tokens)
    block_tokens = int(block_size_tokens)
    block_bytes = BYTES_PER_TOKEN * block_tokens
    num_bytes = BYTES_PER_TOKEN * ids.shape[0]
    out = np.empty(num_block_hashes(num_bytes, block_bytes, int(max_blocks)), dtype=np.uint64)
    if out.shape[0] == 0:
        return out
    seed = chain_seed(model, cache_salt)
    count = chained_token_block_hashes(ids, block_tokens, int(max_blocks), seed, out)
    return out[:count]


def request_seed(target_model: str, cache_salt: str = "") -> int:
    """llm-d-router's chain seed: ``xxh64(target_model ‖ cache_salt)`` of their UTF-8 bytes.

    The salt is appended only when non-empty (``computeBlockHashes``,
    llm-d/llm-d-router ``pkg/epp/framework/plugins/requestcontrol/dataproducer/prefixhash/
    hashing.go``); the value equals :func:`seed_hash`'s, as a plain int in [0, 2**64).
    """
    return int(chain_seed(target_model, cache_salt))


def token_block_hashes(
    token_ids: npt.ArrayLike, block_size: int, seed: int, max_blocks: int
) -> npt.NDArray[np.uint64]:
    """llm-d-router's chained hashes of one prompt's token ids, bit-exact.

    The ids are cut into blocks of ``block_size`` ids, the last one possibly partial (so
    any non-empty prompt gets at least one hash); at most ``max_blocks`` blocks are hashed.
    With ``prev = seed`` (see :func:`request_seed`), block ``i`` hashes to
    ``h_i = xxh64(le64(xxh64(ids_i as uint32 LE)) ‖ le64(prev))`` and ``prev = h_i``
    (llm-d/llm-d-router ``pkg/epp/framework/plugins/requestcontrol/dataproducer/
    prefixhash/hashing.go``). As there, ``block_size <= 0``, ``max_blocks <= 0`` or no
    ids give no hashes; a caller wanting "unlimited" passes a large ``max_blocks``.

    Args:
        token_ids: the prompt's token ids (converted once to read-only uint32).
        block_size: block size in tokens (``blockSizeTokens``).
        seed: the first parent, an int in [0, 2**64).
        max_blocks: most blocks to hash.

    Returns:
        uint64 (count,), ``count = min(ceil(len(token_ids) / block_size), max_blocks)``.

    Raises:
        ValueError: ``seed`` is outside [0, 2**64).
    """
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    ids = as_token_ids(token_ids)
    block = int(block_size)
    limit = int(max_blocks)
    n = ids.shape[0]
    count = 0 if block <= 0 or limit <= 0 or n == 0 else min(-(-n // block), limit)
    out = np.empty(count, _UINT64)
    if count == 0:
        return out
    # Clamped so both fit the kernel's int64: a block longer than the prompt is the prompt.
    written = chained_token_content_hashes(ids, min(block, n), count, np.uint64(seed), out)
    return out[:written]


def pack_prompt_bytes(prompt: bytes) -> npt.NDArray[np.uint32]:
    """``prompt`` as llm-d-router's estimate backend's token ids: its bytes packed four
    per uint32, little-endian, the last one zero-padded (a read-only array).

    A prompt whose length is a multiple of four is viewed in place, without a copy.
    """
    assert sys.byteorder == "little", "packed ids are read as little-endian bytes"
    pad = -len(prompt) % BYTES_PER_TOKEN
    data = prompt if pad == 0 else bytes(prompt) + bytes(pad)
    return readonly(np.frombuffer(data, _UINT32))
