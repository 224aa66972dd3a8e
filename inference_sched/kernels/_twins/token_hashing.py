"""NumPy twin of :mod:`inference_sched.kernels.token_hashing`, and its contract.

Written with the ``xxhash`` package on real bytes, block by block, as llm-d-router's
``computeBlockHashes`` does (llm-d/llm-d-router:
``pkg/epp/framework/plugins/requestcontrol/dataproducer/prefixhash/hashing.go``).
``tests/unit/test_token_hashing.py`` holds the kernel equal to it, bit for bit.
"""

import numpy as np
import numpy.typing as npt
import xxhash

__all__ = ["chained_token_content_hashes"]


def chained_token_content_hashes(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """llm-d-router's chained prefix-block hashes of a prompt's token ids.

    No hashes when ``block_tokens <= 0``, ``tokens`` is empty or ``max_blocks <= 0``.
    Otherwise the ids are cut into blocks of ``block_tokens`` ids, the last one possibly
    partial (so any non-empty prompt gets at least one hash), and at most ``max_blocks``
    blocks are hashed. With ``prev = seed_hash``, block ``i`` hashes to
    ``h_i = xxh64(le64(xxh64(ids_i as uint32 LE)) ‖ le64(prev), seed=0)`` and
    ``prev = h_i``.

    Args:
        tokens: uint32 (n,) token ids.
        block_tokens: block size in tokens (llm-d-router: ``blockSizeTokens``).
        max_blocks: most blocks to hash.
        seed_hash: np.uint64 ``xxh64(target_model ‖ cache_salt)``, the first parent.
        out: uint64; ``out[:count]`` receives the hashes in block order. At most
            ``len(out)`` are written: a short ``out`` acts as a smaller ``max_blocks``.

    Returns:
        ``count``: ``min(ceil(n / block_tokens), max_blocks, len(out))``, or 0 as above.
    """
    n = tokens.shape[0]
    if block_tokens <= 0 or n == 0 or max_blocks <= 0:
        return 0
    count = min(-(-n // block_tokens), max_blocks, out.shape[0])
    payload = np.ascontiguousarray(tokens[: count * block_tokens], dtype="<u4").tobytes()
    block_bytes = 4 * block_tokens
    prev = int(seed_hash)
    for k in range(count):
        block_id = xxhash.xxh64_intdigest(payload[k * block_bytes : (k + 1) * block_bytes])
        prev = xxhash.xxh64_intdigest(block_id.to_bytes(8, "little") + prev.to_bytes(8, "little"))
        out[k] = prev
    return int(count)
