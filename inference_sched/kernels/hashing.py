"""Numba hashing kernels: xxHash64 and GIE's chained prefix-block hash.

:func:`xxh64` is the XXH64 algorithm (Collet; 32-byte stripes over four accumulators,
then 8-, 4- and 1-byte tail steps and the avalanche), reading little-endian lanes, and
is bit-identical to ``xxhash.xxh64_intdigest``. :func:`chained_block_hashes` and
:func:`chained_token_block_hashes` are the prefix-cache chain of GIE's
``approximateprefix/hashing.go`` (kubernetes-sigs/gateway-api-inference-extension):
block ``i`` hashes to ``xxh64(block_i ‖ uint64_le(h_{i-1}), seed=0)`` with ``h_{-1}``
the request's seed hash, and the last, partial block is hashed too. Their twins in
:mod:`inference_sched.kernels._twins.hashing` are written with the ``xxhash`` package and
real concatenation; the contracts are documented there.

No block is copied: each block is hashed as a *stream*, its bytes read in place and then
the parent's eight bytes, which is what ``XXH64_update(block); XXH64_update(parent)``
computes. Lanes that straddle the end of the block take their high bytes from the parent
word, so nothing is gathered into a buffer either.

Without JIT (``NUMBA_DISABLE_JIT=1``) NumPy uint64 scalars would warn on the intended
wrap-around, so every word operation goes through a primitive that has two bodies: a
compiled one on ``np.uint64`` (which wraps silently) and a Python-int one masked to 64
bits, chosen once at import (the ``picking._salted_key`` pattern). The algorithm itself
is written once, on top of those primitives; LLVM inlines them when compiled.
"""

from collections.abc import Callable
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import is_jit_enabled, kernel

__all__ = ["xxh64", "chained_block_hashes", "chained_token_block_hashes"]

# A 64-bit word: np.uint64 in compiled code, a Python int in [0, 2**64) without JIT.
_Word: TypeAlias = Any

_MASK = 0xFFFF_FFFF_FFFF_FFFF
_STRIPE = 32  # bytes per stripe: four 8-byte lanes
_PARENT_BYTES = 8  # a parent hash is appended as a little-endian uint64

# --------------------------------------------------------------------------- primitives


@kernel  # the policy for uniformity; never compiled: only used with NUMBA_DISABLE_JIT=1
def _word_python(x: int) -> int:
    """Python-int word: ``x`` modulo 2**64."""
    return int(x) & _MASK


@kernel
def _word_compiled(x: int) -> np.uint64:
    """Compiled word: ``np.uint64(x)``."""
    return np.uint64(x)


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _add_python(a: int, b: int) -> int:
    return (a + b) & _MASK


@kernel
def _add_compiled(a: np.uint64, b: np.uint64) -> np.uint64:
    return a + b


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _mul_python(a: int, b: int) -> int:
    return (a * b) & _MASK


@kernel
def _mul_compiled(a: np.uint64, b: np.uint64) -> np.uint64:
    return a * b


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _rotl_python(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


@kernel
def _rotl_compiled(x: np.uint64, r: int) -> np.uint64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _shl_python(x: int, r: int) -> int:
    return (x << r) & _MASK


@kernel
def _shl_compiled(x: np.uint64, r: int) -> np.uint64:
    return x << np.uint64(r)


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _shr_python(x: int, r: int) -> int:
    return x >> r


@kernel
def _shr_compiled(x: np.uint64, r: int) -> np.uint64:
    return x >> np.uint64(r)


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _read64_python(data: npt.NDArray[np.uint8], i: int) -> int:
    """The little-endian uint64 at ``data[i:i + 8]``."""
    return int.from_bytes(data[i : i + 8].tobytes(), "little")


@kernel
def _read64_compiled(data: npt.NDArray[np.uint8], i: int) -> np.uint64:
    """The little-endian uint64 at ``data[i:i + 8]``.

    Spelled as byte shifts, so it is right at any alignment and on any host. The index
    is unsigned: a signed one makes Numba wrap negative indices byte by byte, which
    stops LLVM from combining the eight loads into one unaligned 64-bit load.
    """
    j = np.uint64(i)
    return (
        np.uint64(data[j])
        | (np.uint64(data[j + np.uint64(1)]) << np.uint64(8))
        | (np.uint64(data[j + np.uint64(2)]) << np.uint64(16))
        | (np.uint64(data[j + np.uint64(3)]) << np.uint64(24))
        | (np.uint64(data[j + np.uint64(4)]) << np.uint64(32))
        | (np.uint64(data[j + np.uint64(5)]) << np.uint64(40))
        | (np.uint64(data[j + np.uint64(6)]) << np.uint64(48))
        | (np.uint64(data[j + np.uint64(7)]) << np.uint64(56))
    )


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _read8_python(data: npt.NDArray[np.uint8], i: int) -> int:
    """The byte ``data[i]``, as a word."""
    return int(data[i])


@kernel
def _read8_compiled(data: npt.NDArray[np.uint8], i: int) -> np.uint64:
    """The byte ``data[i]``, as a word (unsigned index, as in :func:`_read64_compiled`)."""
    return np.uint64(data[np.uint64(i)])


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _read32_python(data: npt.NDArray[np.uint8], i: int) -> int:
    """The little-endian uint32 at ``data[i:i + 4]``, as a word."""
    return int.from_bytes(data[i : i + 4].tobytes(), "little")


@kernel
def _read32_compiled(data: npt.NDArray[np.uint8], i: int) -> np.uint64:
    """The little-endian uint32 at ``data[i:i + 4]``, as a word (unsigned index, as above)."""
    j = np.uint64(i)
    return (
        np.uint64(data[j])
        | (np.uint64(data[j + np.uint64(1)]) << np.uint64(8))
        | (np.uint64(data[j + np.uint64(2)]) << np.uint64(16))
        | (np.uint64(data[j + np.uint64(3)]) << np.uint64(24))
    )


@kernel  # never compiled: only used with NUMBA_DISABLE_JIT=1
def _digest_python(h: np.uint64) -> int:
    """A uint64 array element as the Python int a compiled kernel's result boxes to."""
    return int(h)


@kernel
def _digest_compiled(h: np.uint64) -> np.uint64:
    return h  # Numba boxes a returned uint64 as a Python int


_JIT = is_jit_enabled()
_word: Callable[[Any], _Word] = _word_compiled if _JIT else _word_python
# cast: the compiled body returns a uint64 that Numba boxes as the int the type promises.
_digest = cast("Callable[[np.uint64], int]", _digest_compiled if _JIT else _digest_python)
_add: Callable[[_Word, _Word], _Word] = _add_compiled if _JIT else _add_python
_mul: Callable[[_Word, _Word], _Word] = _mul_compiled if _JIT else _mul_python
_rotl: Callable[[_Word, int], _Word] = _rotl_compiled if _JIT else _rotl_python
_shl: Callable[[_Word, int], _Word] = _shl_compiled if _JIT else _shl_python
_shr: Callable[[_Word, int], _Word] = _shr_compiled if _JIT else _shr_python
_read64: Callable[[npt.NDArray[np.uint8], int], _Word] = (
    _read64_compiled if _JIT else _read64_python
)
_read8: Callable[[npt.NDArray[np.uint8], int], _Word] = _read8_compiled if _JIT else _read8_python
_read32: Callable[[npt.NDArray[np.uint8], int], _Word] = (
    _read32_compiled if _JIT else _read32_python
)

# XXH64 primes, as words of the active mode (np.uint64 constants fold into the code).
_as_word: Callable[[int], _Word] = np.uint64 if _JIT else int
_P1 = _as_word(0x9E3779B185EBCA87)
_P2 = _as_word(0xC2B2AE3D27D4EB4F)
_P3 = _as_word(0x165667B19E3779F9)
_P4 = _as_word(0x85EBCA77C2B2AE63)
_P5 = _as_word(0x27D4EB2F165667C5)
_P1_P2 = _as_word((0x9E3779B185EBCA87 + 0xC2B2AE3D27D4EB4F) & _MASK)  # v1 = seed + P1 + P2
_MINUS_P1 = _as_word((-0x9E3779B185EBCA87) & _MASK)  # v4 = seed - P1
_ZERO = _as_word(0)
_LOW_8 = _as_word(0xFF)
_LOW_32 = _as_word(0xFFFF_FFFF)

# --------------------------------------------------------------------------- XXH64 steps


@kernel
def _round(acc: _Word, lane: _Word) -> _Word:
    """XXH64_round: ``rotl(acc + lane * P2, 31) * P1``."""
    return _mul(_rotl(_add(acc, _mul(lane, _P2)), 31), _P1)


@kernel
def _merge_round(h: _Word, acc: _Word) -> _Word:
    """XXH64_mergeRound: fold one stripe accumulator into the hash."""
    return _add(_mul(h ^ _round(_ZERO, acc), _P1), _P4)


@kernel
def _avalanche(h: _Word) -> _Word:
    """XXH64_avalanche: the final mix."""
    h = _mul(h ^ _shr(h, 33), _P2)
    h = _mul(h ^ _shr(h, 29), _P3)
    return h ^ _shr(h, 32)


@kernel
def _read_stream64(data: npt.NDArray[np.uint8], i: int, rest: int, parent: _Word, o: int) -> _Word:
    """The 8 bytes at offset ``o`` of the stream ``data[i:i + rest]`` ‖ ``le64(parent)``.

    ``o + 8 <= rest + 8``: a lane lies in the data, straddles into the parent, or is the
    parent itself (``o == rest``).
    """
    if o + 8 <= rest:
        return _read64(data, i + o)
    low = _ZERO
    m = rest - o  # data bytes in this lane (0..7)
    for k in range(m):
        low = low | _shl(_read8(data, i + o + k), 8 * k)
    return low | _shl(parent, 8 * m)


@kernel
def _read_stream32(data: npt.NDArray[np.uint8], i: int, rest: int, parent: _Word, o: int) -> _Word:
    """The 4 bytes at offset ``o`` of the stream, as :func:`_read_stream64`."""
    if o + 4 <= rest:
        return _read32(data, i + o)
    if o >= rest:
        return _shr(parent, 8 * (o - rest)) & _LOW_32
    low = _ZERO
    m = rest - o  # data bytes in this word (1..3)
    for k in range(m):
        low = low | _shl(_read8(data, i + o + k), 8 * k)
    return (low | _shl(parent, 8 * m)) & _LOW_32


@kernel
def _read_stream8(data: npt.NDArray[np.uint8], i: int, rest: int, parent: _Word, o: int) -> _Word:
    """The byte at offset ``o`` of the stream, as :func:`_read_stream64`."""
    if o < rest:
        return _read8(data, i + o)
    return _shr(parent, 8 * (o - rest)) & _LOW_8


@kernel
def _hash_blocks(
    data: npt.NDArray[np.uint8],
    block_bytes: int,
    count: int,
    end: int,
    seed: _Word,
    parent: _Word,
    parent_bytes: int,
    out: npt.NDArray[np.uint64],
) -> None:
    """Hash ``count`` blocks of ``data[:end]`` into ``out``, each chained to the previous.

    Block ``k`` is ``data[k * block_bytes : min((k + 1) * block_bytes, end)]``; its hash
    is XXH64 with ``seed`` of the block followed by the low ``parent_bytes`` (0 or 8)
    bytes of ``parent`` (the previous block's hash, ``parent`` itself for block 0), as
    if streamed through ``XXH64_update``: whole stripes are read in place, and the last
    (< 32 + 8) bytes of the stream through :func:`_read_stream64` and friends, so nothing
    is copied. One flat loop, so that every helper inlines and no array crosses a call.
    """
    start = 0
    for k in range(count):
        stop = min(start + block_bytes, end)
        total = stop - start + parent_bytes
        i = start
        o = 0  # offset in the stream's remainder, data[i:stop] then the parent
        if total >= _STRIPE:
            v1 = _add(seed, _P1_P2)
            v2 = _add(seed, _P2)
            v3 = seed
            v4 = _add(seed, _MINUS_P1)
            while i + _STRIPE <= stop:
                v1 = _round(v1, _read64(data, i))
                v2 = _round(v2, _read64(data, i + 8))
                v3 = _round(v3, _read64(data, i + 16))
                v4 = _round(v4, _read64(data, i + 24))
                i += _STRIPE
            rest = stop - i
            if rest + parent_bytes >= _STRIPE:  # the parent completes a last stripe
                v1 = _round(v1, _read_stream64(data, i, rest, parent, 0))
                v2 = _round(v2, _read_stream64(data, i, rest, parent, 8))
                v3 = _round(v3, _read_stream64(data, i, rest, parent, 16))
                v4 = _round(v4, _read_stream64(data, i, rest, parent, 24))
                o = _STRIPE
            h = _add(_add(_rotl(v1, 1), _rotl(v2, 7)), _add(_rotl(v3, 12), _rotl(v4, 18)))
            h = _merge_round(h, v1)
            h = _merge_round(h, v2)
            h = _merge_round(h, v3)
            h = _merge_round(h, v4)
        else:
            rest = stop - i
            h = _add(seed, _P5)
        h = _add(h, _word(total))
        # XXH64_finalize over the stream's last (< 32) bytes: by 8, then 4, then 1.
        avail = rest + parent_bytes
        while o + 8 <= avail:
            lane = _read_stream64(data, i, rest, parent, o)
            h = _add(_mul(_rotl(h ^ _round(_ZERO, lane), 27), _P1), _P4)
            o += 8
        if o + 4 <= avail:
            word = _read_stream32(data, i, rest, parent, o)
            h = _add(_mul(_rotl(h ^ _mul(word, _P1), 23), _P2), _P3)
            o += 4
        while o < avail:
            byte = _read_stream8(data, i, rest, parent, o)
            h = _mul(_rotl(h ^ _mul(byte, _P5), 11), _P1)
            o += 1
        parent = _avalanche(h)
        out[k] = parent
        start = stop


# --------------------------------------------------------------------------- kernels


@kernel
def xxh64(data: npt.NDArray[np.uint8], seed: np.uint64) -> int:
    """XXH64 of ``data`` with ``seed`` (pass ``np.uint64``: one compiled signature)."""
    out = np.empty(1, dtype=np.uint64)
    n = data.shape[0]
    _hash_blocks(data, n, 1, n, _word(seed), _ZERO, 0, out)
    return _digest(out[0])


@kernel
def chained_block_hashes(
    data: npt.NDArray[np.uint8],
    block_bytes: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """Write GIE's chained hashes of ``data``'s blocks to ``out``; return how many."""
    return _chain(data, block_bytes, max_blocks, seed_hash, out)


@kernel
def chained_token_block_hashes(
    tokens: npt.NDArray[np.uint32],
    block_tokens: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """:func:`chained_block_hashes` over token ids serialised as uint32 little-endian.

    Reads ``tokens`` through a byte view, so it assumes a little-endian host (the
    wrapper in :mod:`inference_sched.prefix.hashing` asserts it).
    """
    if block_tokens <= 0:
        return 0
    return _chain(tokens.view(np.uint8), block_tokens * 4, max_blocks, seed_hash, out)


@kernel
def _chain(
    data: npt.NDArray[np.uint8],
    block_bytes: int,
    max_blocks: int,
    seed_hash: np.uint64,
    out: npt.NDArray[np.uint64],
) -> int:
    """Shared body of the chained kernels (the contract is on their twins)."""
    n = data.shape[0]
    if block_bytes <= 0 or n < block_bytes or max_blocks <= 0:
        return 0
    # Blocks of the whole input, the partial tail included, capped by max_blocks and out.
    count: int = min((n - 1) // block_bytes + 1, max_blocks, out.shape[0])
    end = min(n, count * block_bytes)
    _hash_blocks(data, block_bytes, count, end, _ZERO, _word(seed_hash), _PARENT_BYTES, out)
    return count
