"""NumPy twins of :mod:`inference_sched.kernels.hashing`, and their contracts.

The prefix hash's reference *is* the ``xxhash`` package: these twins call it on real
concatenated bytes, block by block, exactly as GIE's ``approximateprefix/hashing.go``
(kubernetes-sigs/gateway-api-inference-extension) does. ``tests/property/test_hashing.py``
holds the kernels equal to them, bit for bit.
"""

import numpy as np
import numpy.typing as npt
import xxhash

__all__ = [
    "xxh64",
    "chained_block_hashes",
    "chained_token_block_hashes",
]


def xxh64(data: npt.NDArray[np.uint8], seed: np.uint64) -> int:
    """XXH64 of the bytes of ``data`` with ``seed`` (``xxhash.xxh64_intdigest``).

    Args:
        data: uint8 (n,) bytes, any length (0 included).
        seed: np.uint64 seed (a Python int would compile a second signature of the kernel).

    Returns:
        The 64-bit digest, a Python int in [0, 2**64).
    """
    digest: int = xxhash.xxh64_intdigest(data.tobytes(), int(seed))
    return digest


def chained_block_hashes(
    data: npt.NDArray[np.uint8],
    block_bytes: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """GIE's chained prefix-block hashes of ``data`` (``approximateprefix/hashing.go``).

    With ``B = block_bytes``: no hashes when ``B <= 0``, ``len(data) < B`` (short prompts
    get none) or ``max_blocks <= 0``. Otherwise ``data`` is truncated to
    ``max_blocks * B`` bytes and cut into blocks of ``B`` bytes, the last one possibly
    partial (it is hashed too); with ``prev = seed_hash``, block ``i`` hashes to
    ``h_i = xxh64(block_i + uint64_le(prev), seed=0)`` and ``prev = h_i``.

    Args:
        data: uint8 (n,) the prompt bytes.
        block_bytes: block size in bytes (GIE: ``blockSizeTokens * 4``).
        max_blocks: most blocks to hash (GIE: ``maxPrefixBlocksToMatch``).
        seed_hash: np.uint64 ``xxh64(target_model + cache_salt)``, the first parent.
        out: uint64; ``out[:count]`` receives the hashes in block order. At most
            ``len(out)`` are written: a short ``out`` acts as a smaller ``max_blocks``.

    Returns:
        ``count``, the number of hashes written: ``min(ceil(n / B), max_blocks,
        len(out))``, or 0 as above.
    """
    n = data.shape[0]
    if block_bytes <= 0 or n < block_bytes or max_blocks <= 0:
        return 0
    count: int = min(-(-n // block_bytes), max_blocks, out.shape[0])
    payload = data[: count * block_bytes].tobytes()
    prev = int(seed_hash)
    for k in range(count):
        block = payload[k * block_bytes : (k + 1) * block_bytes]
        prev = xxhash.xxh64_intdigest(block + prev.to_bytes(8, "little"))
        out[k] = prev
    return count


def chained_token_block_hashes(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """:func:`chained_block_hashes` over token ids, each serialised as uint32 little-endian.

    Block ``i`` is ``block_tokens`` ids (``4 * block_tokens`` bytes), the last possibly
    partial; a prompt of fewer than ``block_tokens`` ids gets no hashes.

    Args:
        tokens: uint32 (n,) token ids.
        block_tokens: block size in tokens (GIE: ``blockSizeTokens``).
        max_blocks: most blocks to hash.
        seed_hash: np.uint64, the first parent.
        out: uint64; ``out[:count]`` receives the hashes, as in :func:`chained_block_hashes`.

    Returns:
        ``count``, the number of hashes written.
    """
    if block_tokens <= 0:
        return 0
    serialised = np.frombuffer(tokens.astype("<u4").tobytes(), dtype=np.uint8)
    return chained_block_hashes(serialised, 4 * block_tokens, max_blocks, seed_hash, out)
