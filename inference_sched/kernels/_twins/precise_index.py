"""NumPy twins of the computing kernels of :mod:`inference_sched.kernels.precise_index`.

Those kernels are private (the wrapper class
:class:`~inference_sched.prefix.precise.index.PreciseIndex` is their public surface), so
their twins here carry the same private names, and ``__all__`` is empty as in the kernel
module. ``tests/property/test_precise_index_properties.py`` holds them equal; the kernels
that change the store are checked against
:class:`~tests.oracles.prefix_index_model.PreciseIndexModel` instead.
"""

import numpy as np
import numpy.typing as npt
import xxhash

from inference_sched.kernels.precise_index import _MATCH_LANES, _NUM_TIERS, _TIER_BITS
from inference_sched.kernels.prefix_index import _EMPTY, _HASH_NEXT, _ROW

__all__: list[str] = []


def _chain_block_keys(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    out: npt.NDArray[np.uint64],
) -> int:
    """Request keys of the full blocks of ``tokens`` (the precise index's chain).

    With ``B = block_tokens`` and ``count = min(len(tokens) // B, max_blocks, len(out))``
    (0 when ``B <= 0`` or ``max_blocks <= 0``; a partial tail block gets no key): with
    ``prev = seed``, block ``i`` hashes to ``xxh64(tokens[iB:(i+1)B] as uint32 LE +
    uint64_le(prev ^ m_i))`` where ``m_i = mixes[i]`` (0 past the end of ``mixes``), and
    ``prev`` becomes that key. Without mixes this is ``chained_token_block_hashes`` over
    the full blocks.

    Args:
        tokens: uint32 (n,) token ids.
        block_tokens: tokens per block.
        max_blocks: most keys to compute.
        seed: np.uint64 parent of block 0 (a chain seed, or the key of the block before).
        mixes: uint64 (m,) per-block extra-key mixes, 0 for none.
        out: uint64; ``out[:count]`` receives the keys.

    Returns:
        ``count``.
    """
    if block_tokens <= 0 or max_blocks <= 0:
        return 0
    count: int = min(tokens.shape[0] // block_tokens, max_blocks, out.shape[0])
    prev = int(seed)
    for i in range(count):
        if i < mixes.shape[0]:
            prev ^= int(mixes[i])
        block = tokens[i * block_tokens : (i + 1) * block_tokens].astype("<u4").tobytes()
        prev = xxhash.xxh64_intdigest(block + prev.to_bytes(8, "little"))
        out[i] = prev
    return count


def _match_tiers(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    request_keys: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Tier-weighted longest consecutive prefix per row (llm-d's LongestPrefix).

    The store is a ``kernels/prefix_index`` table: a key's slot is the occupied one
    holding it (found here by a scan, so ``shift`` is unused), its entries a list of
    nodes, each node's LRU id ``row * 8 + tier``. With ``w[i, row]`` the largest
    ``weights[tier]`` among row's entries at key ``i`` (entries of tiers weighing < 0 are
    ignored), ``out[row]`` is the sum of ``w[i, row]`` over ``i`` below the row's first
    key without an entry, added in key order; rows without any are 0.

    Args:
        keys, heads, nodes, shift: the store (see ``kernels/prefix_index.py``).
        request_keys: int64 (n,) the request's keys viewed as int64.
        weights: float64 (8,) weight per tier code.
        out: float64, one per row; fully overwritten.

    Returns:
        ``n``.
    """
    _matched_until(keys, heads, nodes, request_keys, weights, out)
    return int(request_keys.shape[0])


def _matched_until(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    request_keys: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """:func:`_match_tiers` into ``out``; return the first key no row extends its run
    with (``n`` if every key extends one)."""
    num_keys = int(request_keys.shape[0])
    weight = np.full((num_keys, out.shape[0]), -1.0)
    occupied = heads != _EMPTY
    for i in range(num_keys):
        slots = np.flatnonzero(occupied & (keys == request_keys[i]))
        if slots.size == 0:
            break  # no row holds this key, so no row matches past it
        node = int(heads[slots[0]])
        while node >= 0:
            lru = int(nodes[node, _ROW])
            w = float(weights[lru % _NUM_TIERS])
            row = lru >> _TIER_BITS
            if w >= 0.0 and w > weight[i, row]:
                weight[i, row] = w
            node = int(nodes[node, _HASH_NEXT])
    held = weight >= 0.0
    consecutive = np.cumprod(held, axis=0).astype(bool)
    # cumsum adds in key order, as the kernel does, so the sums agree to the last bit.
    sums = np.cumsum(np.where(consecutive, weight, 0.0), axis=0)
    out[:] = sums[-1] if num_keys else 0.0
    stopped = np.flatnonzero(~consecutive.any(axis=1))
    return int(stopped[0]) if stopped.size else num_keys


def _hash_match_tiers(
    keys: npt.NDArray[np.int64],
    heads: npt.NDArray[np.int32],
    nodes: npt.NDArray[np.int32],
    shift: int,
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed: np.uint64,
    mixes: npt.NDArray[np.uint64],
    weights: npt.NDArray[np.float64],
    all_keys: bool,
    out_keys: npt.NDArray[np.uint64],
    out: npt.NDArray[np.float64],
) -> int:
    """:func:`_chain_block_keys` then :func:`_match_tiers` over the keys.

    With ``all_keys``, every key is written to ``out_keys``. Without, the keys are
    hashed in steps of ``_MATCH_LANES`` (32) and hashing stops after the step holding the
    first key no row extends its run with: the keys past that step are not written.

    Returns:
        The number of keys written.
    """
    all_out = np.empty(out_keys.shape[0], dtype=np.uint64)
    count = _chain_block_keys(tokens, block_tokens, max_blocks, seed, mixes, all_out)
    stop = _matched_until(keys, heads, nodes, all_out[:count].view(np.int64), weights, out)
    written = count if all_keys else min(count, (stop // _MATCH_LANES + 1) * _MATCH_LANES)
    out_keys[:written] = all_out[:written]
    return written
