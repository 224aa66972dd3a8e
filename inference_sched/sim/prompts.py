"""Synthetic prompts: prefix-consistent block ids and the bytes and token ids behind them.

A workload describes a prompt by one int64 id per 16-token block
(:data:`~inference_sched.sim.types.SIM_BLOCK_TOKENS`). :func:`chain_ids` makes such ids
*prefix-consistent*: ``id_i = mix(id_{i-1}, content_i)``, so two chains agree at position
``k`` exactly when their parents and first ``k + 1`` contents agree (up to 64-bit
collisions, ~2**-63 per pair).

The scheduler hashes prompt *bytes* (4 per token, :mod:`inference_sched.prefix.hashing`),
so :func:`prompt_bytes` turns ids into bytes: each block's 64 bytes are a function of its
id alone, the last block cut to the remaining tokens. Hence two prompts share their first
``64 * k`` bytes exactly when their first ``k`` ids are equal, and the prefix scorer sees
the same prefix structure as the engine's KV cache. :func:`prompt_token_ids` is the same
data as little-endian uint32 token ids (``prompt_bytes == prompt_token_ids(...).tobytes()``
on every host), for KV events.

The mixer is splitmix64's finaliser (a bijection of 64-bit words); ids are masked to 63
bits so they are non-negative int64. Block contents depend only on the id, so a partial
block is a prefix of the full block with the same id (multi-turn chat relies on this: a
turn's partial last block is completed, under the same id, in the next turn's prompt).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from inference_sched.kernels import is_jit_enabled, kernel
from inference_sched.sim.types import SIM_BLOCK_TOKENS

__all__ = [
    "ID_MASK",
    "block_token_ids",
    "chain_ids",
    "chain_ids_reference",
    "child_ids",
    "fmix64",
    "mix",
    "mix_array",
    "num_blocks",
    "prompt_bytes",
    "prompt_token_ids",
]

_M64: Final = 0xFFFF_FFFF_FFFF_FFFF
ID_MASK: Final = 0x7FFF_FFFF_FFFF_FFFF
"""Ids are masked to 63 bits: non-negative as int64."""

_GOLDEN: Final = 0x9E37_79B9_7F4A_7C15  # splitmix64's increment
_C1: Final = 0xBF58_476D_1CE4_E5B9
_C2: Final = 0x94D0_49BB_1331_11EB
_BYTES_SALT: Final = 0x5851_F42D_4C95_7F2D  # separates byte words from chain ids
# One key per 8-byte word of a block (word 0 keeps the hash itself).
_WORD_KEYS: Final = np.array(
    [
        0,
        0xA076_1D64_78BD_642F,
        0xE703_7ED1_A0B4_28DB,
        0x8EBC_6AF0_9C88_C6E3,
        0x5899_65CC_7537_4CC3,
        0x1D8E_4E27_C47D_124F,
        0xFF51_AFD7_ED55_8CCD,
        0xC4CE_B9FE_1A85_EC53,
    ],
    dtype=np.uint64,
)
_WORDS_PER_BLOCK: Final = SIM_BLOCK_TOKENS // 2  # 16 tokens x 4 bytes = 8 uint64 words
_TILED_KEYS = np.tile(_WORD_KEYS, 1024)
# NumPy scalars made once: building one costs about as much as a 750-element xor.
_U64_BYTES_SALT: Final = np.uint64(_BYTES_SALT)
_U64_C1: Final = np.uint64(_C1)
_U64_32: Final = np.uint64(32)
_U64: Final = np.dtype(np.uint64)
_LE_U32: Final = np.dtype("<u4")
_LE_U64: Final = np.dtype("<u8")


def fmix64(z: int) -> int:
    """splitmix64's finaliser on a Python int taken modulo 2**64 (a bijection)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def mix(parent: int, content: int) -> int:
    """The chain step: ``fmix64(parent ^ fmix64(content + golden))`` masked to 63 bits.

    Injective in each argument for a fixed other one (both steps are bijections), so a
    chain never merges two different prefixes except by a 64-bit collision.
    """
    return fmix64((parent & _M64) ^ fmix64((content + _GOLDEN) & _M64)) & ID_MASK


def _fmix64_array(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """:func:`fmix64` elementwise (uint64 array ops wrap silently, unlike NumPy scalars)."""
    z = z ^ (z >> np.uint64(30))
    z *= np.uint64(_C1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_C2)
    z ^= z >> np.uint64(31)
    return z


def _as_u64(values: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Integers as uint64 modulo 2**64 (int64 reinterpreted, not converted)."""
    array = np.asarray(values)
    if array.dtype == np.int64:
        return array.view(np.uint64)
    if array.dtype.kind not in "iu":
        if array.size == 0:  # np.asarray([]) is float64
            return np.empty(array.shape, dtype=_U64)
        raise TypeError(f"expected integers, got dtype {array.dtype}")
    return array.astype(np.int64).view(np.uint64) if array.dtype.kind == "i" else array.astype(_U64)


def mix_array(parent: npt.ArrayLike, content: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """:func:`mix` elementwise with broadcasting; int64 results in ``[0, 2**63)``."""
    p = _as_u64(parent)
    g = _fmix64_array(_as_u64(content) + np.uint64(_GOLDEN))
    out = _fmix64_array(p ^ g) & np.uint64(ID_MASK)
    return out.view(np.int64)


# ------------------------------------------------------------------------------ chains


@kernel
def _chain_kernel(
    parent: np.uint64, mixed: npt.NDArray[np.uint64], out: npt.NDArray[np.int64]
) -> None:
    """Compiled chain: ``out[i] = fmix64(out[i-1] ^ mixed[i]) & ID_MASK``."""
    p = parent
    c1 = np.uint64(_C1)
    c2 = np.uint64(_C2)
    mask = np.uint64(ID_MASK)
    s30 = np.uint64(30)
    s27 = np.uint64(27)
    s31 = np.uint64(31)
    for i in range(mixed.shape[0]):
        z = p ^ mixed[i]
        z = (z ^ (z >> s30)) * c1
        z = (z ^ (z >> s27)) * c2
        p = (z ^ (z >> s31)) & mask
        out[i] = np.int64(p)


def _chain_python(parent: int, mixed: list[int]) -> list[int]:
    """The chain on Python ints: ~1 M ids/s, used when JIT is disabled (NumPy scalars
    would warn on the intended wrap-around)."""
    out = [0] * len(mixed)
    p = parent & _M64
    for i, g in enumerate(mixed):
        z = p ^ g
        z = ((z ^ (z >> 30)) * _C1) & _M64
        z = ((z ^ (z >> 27)) * _C2) & _M64
        p = (z ^ (z >> 31)) & ID_MASK
        out[i] = p
    return out


def chain_ids_reference(parent: int, contents: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """:func:`chain_ids` written with :func:`mix` one id at a time (the test twin)."""
    out: list[int] = []
    p = int(parent)
    for c in np.asarray(contents).reshape(-1).tolist():
        p = mix(p, int(c))
        out.append(p)
    return np.array(out, dtype=np.int64)


def chain_ids(parent: int, contents: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Prefix-consistent block ids: ``id_i = mix(id_{i-1}, contents[i])``, ``id_{-1} = parent``.

    Chains compose: ``chain_ids(p, a + b) == chain_ids(p, a) + chain_ids(chain_ids(p, a)[-1], b)``.

    Args:
        parent: the chain's root (any int, taken modulo 2**64), e.g. a group's root id or
            the last id of the prefix this chain continues.
        contents: integers, one per block, that distinguish sibling blocks.

    Returns:
        int64 ids in ``[0, 2**63)``, one per content.
    """
    flat = _as_u64(contents).reshape(-1)
    mixed = _fmix64_array(flat + np.uint64(_GOLDEN))  # the content half of mix(), vectorised
    if not is_jit_enabled():
        return np.array(_chain_python(int(parent), mixed.tolist()), dtype=np.int64)
    out = np.empty(flat.shape[0], dtype=np.int64)
    _chain_kernel(np.uint64(int(parent) & _M64), mixed, out)
    return out


def child_ids(parents: npt.ArrayLike, count: int) -> npt.NDArray[np.int64]:
    """``mix(parents[i], j)`` for each parent and ``j < count``, flattened parent-major.

    Expands coarse prefix-block ids into fine ones (a Mooncake 512-token hash id into 32
    16-token ids): each child is a function of its parent id and position only, so
    children are prefix-consistent whenever the parents are.
    """
    p = _as_u64(parents).reshape(-1)
    mixed = _fmix64_array(np.arange(count, dtype=np.uint64) + np.uint64(_GOLDEN))
    # repeat + tile instead of an (n, count) broadcast: NumPy is ~3x faster on flat arrays
    z = np.repeat(p, count)
    z ^= np.tile(mixed, p.shape[0])
    out = _fmix64_array(z)
    out &= np.uint64(ID_MASK)
    return out.view(np.int64)


# ------------------------------------------------------------------------ bytes, tokens


def num_blocks(prompt_tokens: int) -> int:
    """``ceil(prompt_tokens / 16)``: blocks of a prompt (the last one possibly partial)."""
    return -(-int(prompt_tokens) // SIM_BLOCK_TOKENS)


def _block_words(blocks: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """(8 n,) little-endian uint64 words: block ``i``'s 64 bytes, a function of its id.

    ``h = xorshift32(odd_multiply(id ^ salt))`` is a bijection of the id, so distinct ids
    give distinct first words; word ``j`` is ``h ^ K_j``. Chain ids are already
    well mixed, so this cheap step (not a full finaliser) only has to spread arbitrary
    ids; xors keep it at a few microseconds for a 12k-token prompt.
    """
    h = _as_u64(blocks).reshape(-1) ^ _U64_BYTES_SALT
    h *= _U64_C1
    h ^= h >> _U64_32
    # repeat + xor with a pre-tiled key row: a broadcast over an inner axis of 8 is ~3x slower
    words = np.repeat(h, _WORDS_PER_BLOCK)
    words ^= _tiled_keys(h.shape[0])
    return words.astype(_LE_U64, copy=False)  # no copy on little-endian hosts


def _tiled_keys(n: int) -> npt.NDArray[np.uint64]:
    """``_WORD_KEYS`` tiled ``n`` times, sliced from a cache grown by doubling."""
    global _TILED_KEYS
    tiled = _TILED_KEYS
    if tiled.shape[0] < n * _WORDS_PER_BLOCK:
        blocks = max(n, 2 * tiled.shape[0] // _WORDS_PER_BLOCK)
        tiled = np.tile(_WORD_KEYS, blocks)
        tiled.flags.writeable = False
        _TILED_KEYS = tiled  # a whole-object swap: safe under threads
    return tiled[: n * _WORDS_PER_BLOCK]


def prompt_token_ids(blocks: npt.ArrayLike, prompt_tokens: int) -> npt.NDArray[np.uint32]:
    """Token ids of a prompt: 16 uint32 per block, derived from the block id alone.

    Ids span the whole uint32 range (they are not a real vocabulary). The last block is
    cut to the remaining tokens.

    Raises:
        ValueError: ``len(blocks) != ceil(prompt_tokens / 16)``.
    """
    ids = np.asarray(blocks)
    need = num_blocks(prompt_tokens)
    if ids.size != need:
        raise ValueError(f"{prompt_tokens} tokens need {need} blocks, got {ids.size}")
    return _block_words(ids).view(_LE_U32).reshape(-1)[:prompt_tokens]


def prompt_bytes(blocks: npt.ArrayLike, prompt_tokens: int) -> bytes:
    """The prompt's bytes as the scheduler hashes them: 4 per token, 64 per block.

    Block ``i``'s bytes depend only on ``blocks[i]``; the last block is cut to the
    remaining tokens. Equal to ``prompt_token_ids(blocks, prompt_tokens).tobytes()``.

    Raises:
        ValueError: ``len(blocks) != ceil(prompt_tokens / 16)``.
    """
    return prompt_token_ids(blocks, prompt_tokens).tobytes()


def block_token_ids(block_id: int) -> list[int]:
    """The 16 token ids of one full block (what a KV ``BlockStored`` event carries)."""
    ids = prompt_token_ids(np.array([block_id], dtype=np.int64), SIM_BLOCK_TOKENS)
    return [int(t) for t in ids.tolist()]
