"""Numba kernel of llm-d-router's token-id prefix-block hash chain.

llm-d-router hashes a tokenized prompt in ``computeBlockHashes`` (llm-d/llm-d-router:
``pkg/epp/framework/plugins/requestcontrol/dataproducer/prefixhash/hashing.go``): the
token ids are cut into blocks of ``block_tokens`` ids (the last block may be partial),
each block's *content* hashes to ``block_id = xxh64(ids as uint32 LE bytes)``, and the
chain is ``h_i = xxh64(le64(block_id_i) ‖ le64(h_{i-1}))`` with ``h_{-1}`` the request's
seed, ``xxh64(target_model ‖ cache_salt)``. Unlike GIE's chain
(:mod:`inference_sched.kernels.hashing`), the parent never mixes with the block bytes,
so the content hashes of all blocks are independent and are computed first, in one pass.

The XXH64 steps and word primitives (which also run without JIT) are shared with
:mod:`inference_sched.kernels.hashing`. The twin in
:mod:`inference_sched.kernels._twins.token_hashing` is written with the ``xxhash``
package and documents the contract.
"""

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import kernel
from inference_sched.kernels.hashing import (
    _P1,
    _P4,
    _P5,
    _ZERO,
    _add,
    _avalanche,
    _hash_blocks,
    _mul,
    _rotl,
    _round,
    _word,
)

__all__ = ["chained_token_content_hashes"]

_PAIR_BYTES = 16  # le64(block_id) ‖ le64(parent)


@kernel
def _xxh64_pair(a: np.uint64, b: np.uint64) -> np.uint64:
    """``xxh64(le64(a) ‖ le64(b), seed=0)``: XXH64 of a 16-byte input, unrolled."""
    h = _add(_P5, _word(_PAIR_BYTES))  # < 32 bytes: no stripes
    h = _add(_mul(_rotl(h ^ _round(_ZERO, a), 27), _P1), _P4)
    h = _add(_mul(_rotl(h ^ _round(_ZERO, b), 27), _P1), _P4)
    return _avalanche(h)  # type: ignore[no-any-return]


@kernel
def chained_token_content_hashes(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """Write llm-d-router's chained hashes of ``tokens``' blocks to ``out``; return how many.

    Reads ``tokens`` through a byte view, so it assumes a little-endian host (the
    wrapper in :mod:`inference_sched.prefix.hashing` asserts it).
    """
    n = tokens.shape[0]
    if block_tokens <= 0 or n == 0 or max_blocks <= 0:
        return 0
    count: int = min((n - 1) // block_tokens + 1, max_blocks, out.shape[0])
    if count <= 0:
        return 0
    block_bytes = 4 * min(block_tokens, n)  # a block longer than the prompt is the prompt
    end = min(4 * n, count * block_bytes)
    # Content hashes first (no parent bytes: each is a plain xxh64 of its block) ...
    _hash_blocks(tokens.view(np.uint8), block_bytes, count, end, _ZERO, _ZERO, 0, out)
    # ... then the chain over them, in place.
    prev = _word(seed_hash)
    for k in range(count):
        prev = _xxh64_pair(_word(out[k]), prev)
        out[k] = prev
    return count
