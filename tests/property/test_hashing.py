"""The hashing kernels equal the ``xxhash`` package bit for bit (``docs/architecture.md``, Kernels).

``xxh64`` is compared with ``xxhash.xxh64_intdigest`` on every length 0..100 (all the
32/8/4/1-byte stripe and tail boundaries) and on random lengths up to 1 MiB. The chained
kernels are compared with their twins in ``kernels/_twins/hashing.py``, which call
``xxhash`` on real concatenated ``block + uint64_le(parent)`` bytes, for every block size
of 1..64 tokens and random truncations. Literal vectors, computed once from GIE's formula
(``approximateprefix/hashing.go``) with ``xxhash``, pin the chain itself: a change to the
formula breaks them.

Kernel inputs are read-only views (``prefix_hashing.readonly``), the layout the wrappers
pass, so each kernel compiles one signature. Everything here also runs under
``NUMBA_DISABLE_JIT=1``, where the pure-Python path (a few MB/s) is bounded to 64 KiB
random inputs; the explicit 1 MiB cases run in both modes.
"""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.dispatcher import Dispatcher

from inference_sched.kernels import hashing
from inference_sched.kernels._jit import is_jit_enabled
from inference_sched.kernels._twins import hashing as reference
from inference_sched.prefix.hashing import (
    block_hashes,
    gie_token_block_hashes,
    num_block_hashes,
    readonly,
    seed_hash,
)

Impl = Mapping[str, Callable[..., Any]]

KERNELS: Impl = {name: getattr(hashing, name) for name in hashing.__all__}
REFERENCES: Impl = {name: getattr(reference, name) for name in KERNELS}

MIB = 1 << 20
MAX_BYTES = MIB if is_jit_enabled() else 1 << 16
MAX_U64 = (1 << 64) - 1
SENTINEL = np.uint64(0xDEAD_BEEF_DEAD_BEEF)


def _random_bytes(length: int, seed: int) -> npt.NDArray[np.uint8]:
    """``length`` random bytes from ``seed``, as the read-only view the kernels take."""
    rng = np.random.default_rng(seed)
    return readonly(rng.integers(0, 256, length, dtype=np.uint8))


def _random_tokens(count: int, seed: int) -> npt.NDArray[np.uint32]:
    rng = np.random.default_rng(seed)
    return readonly(rng.integers(0, 1 << 32, count, dtype=np.uint32))


def _out(length: int) -> npt.NDArray[np.uint64]:
    """A uint64 ``out`` pre-filled with a sentinel, so writes past ``count`` show."""
    return np.full(length, SENTINEL, dtype=np.uint64)


def _chain_by_formula(data: bytes, block_bytes: int, max_blocks: int, parent: int) -> list[int]:
    """GIE's hash chain (``approximateprefix/hashing.go``), spelled out with ``xxhash``
    (independent of the twin)."""
    if block_bytes <= 0 or len(data) < block_bytes:
        return []
    data = data[: max(max_blocks, 0) * block_bytes]
    hashes = []
    for start in range(0, len(data), block_bytes):
        parent = xxhash.xxh64_intdigest(
            data[start : start + block_bytes] + parent.to_bytes(8, "little")
        )
        hashes.append(parent)
    return hashes


def _both_chains(
    name: str, data: npt.NDArray[Any], block: int, max_blocks: int, seed: int, out_len: int
) -> list[int]:
    """Run kernel and twin on fresh ``out`` arrays; assert they agree; return the hashes."""
    results = []
    for impl in (KERNELS, REFERENCES):
        out = _out(out_len)
        count = impl[name](data, block, max_blocks, np.uint64(seed), out)
        assert 0 <= count <= out_len
        assert (out[count:] == SENTINEL).all()
        results.append([int(h) for h in out[:count]])
    assert results[0] == results[1]
    return results[0]


lengths = st.one_of(st.integers(0, 300), st.integers(0, 4096), st.integers(0, MAX_BYTES))
seeds = st.integers(0, MAX_U64)
data_seeds = st.integers(0, 2**32 - 1)
max_blocks_values = st.one_of(st.integers(-2, 40), st.just(1 << 40))

# --------------------------------------------------------------------------- xxh64


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        pytest.param(b"", 0, 0xEF46DB3751D8E999, id="empty"),
        pytest.param(b"a", 0, 0xD24EC4F1A98C6E5B, id="a"),
        pytest.param(b"abc", 0, 0x44BC2CF5AD770999, id="abc"),
        pytest.param(b"m", 0, 13415755381228090088, id="seed-hash-of-model-m"),
    ],
)
def test_xxh64_known_vectors(data: bytes, seed: int, expected: int) -> None:
    array = readonly(np.frombuffer(data, dtype=np.uint8))
    for impl in (KERNELS, REFERENCES):
        assert int(impl["xxh64"](array, np.uint64(seed))) == expected


@pytest.mark.parametrize("seed", [0, 1, 0x9E3779B185EBCA87, 1 << 63, MAX_U64])
def test_xxh64_every_short_length(seed: int) -> None:
    # 0..100 crosses every 32-byte stripe, 8-byte lane, 4-byte word and 1-byte boundary.
    data = _random_bytes(100, seed & 0xFFFF)
    for length in range(101):
        prefix = data[:length]
        expected = xxhash.xxh64_intdigest(prefix.tobytes(), seed)
        assert int(KERNELS["xxh64"](prefix, np.uint64(seed))) == expected, length


@settings(max_examples=120)
@given(length=lengths, seed=seeds, data_seed=data_seeds, offset=st.integers(0, 7))
def test_xxh64_matches_xxhash(length: int, seed: int, data_seed: int, offset: int) -> None:
    # ``offset`` starts the view at every alignment of the underlying buffer.
    data = _random_bytes(length + offset, data_seed)[offset:]
    result = KERNELS["xxh64"](data, np.uint64(seed))
    assert type(result) is int
    assert result == xxhash.xxh64_intdigest(data.tobytes(), seed)


def test_xxh64_of_a_mebibyte() -> None:
    data = _random_bytes(MIB + 13, 7)
    assert int(KERNELS["xxh64"](data, np.uint64(3))) == xxhash.xxh64_intdigest(data.tobytes(), 3)


# --------------------------------------------------------------------------- the chain


@pytest.mark.parametrize("block_tokens", range(1, 65))
def test_chain_every_block_size(block_tokens: int) -> None:
    block = 4 * block_tokens
    data = _random_bytes(4096 + 3 * block + 7, block_tokens)
    for length in (0, 1, block - 1, block, block + 1, 2 * block, 3 * block + 5, len(data)):
        prefix = data[:length]
        for max_blocks in (0, 1, 2, 3, 1 << 40):
            expected = _chain_by_formula(prefix.tobytes(), block, max_blocks, 99)
            out_len = num_block_hashes(length, block, max_blocks) + 2
            got = _both_chains("chained_block_hashes", prefix, block, max_blocks, 99, out_len)
            assert got == expected, (length, max_blocks)


@settings(max_examples=60)
@given(
    length=lengths,
    block_tokens=st.integers(1, 64),
    max_blocks=max_blocks_values,
    seed=seeds,
    data_seed=data_seeds,
    offset=st.integers(0, 7),
)
def test_chain_matches_twin(
    length: int, block_tokens: int, max_blocks: int, seed: int, data_seed: int, offset: int
) -> None:
    data = _random_bytes(length + offset, data_seed)[offset:]
    block = 4 * block_tokens
    expected_count = num_block_hashes(length, block, max_blocks)
    got = _both_chains("chained_block_hashes", data, block, max_blocks, seed, expected_count + 3)
    assert len(got) == expected_count


@settings(max_examples=60)
@given(
    length=st.integers(0, 2000),
    block=st.integers(-3, 150),
    max_blocks=max_blocks_values,
    seed=seeds,
    data_seed=data_seeds,
)
def test_chain_any_block_bytes(
    length: int, block: int, max_blocks: int, seed: int, data_seed: int
) -> None:
    # Bytes mode is not limited to multiples of 4: every leftover size reaches the tail.
    data = _random_bytes(length, data_seed)
    got = _both_chains("chained_block_hashes", data, block, max_blocks, seed, length + 2)
    assert got == _chain_by_formula(data.tobytes(), block, max_blocks, seed)


@settings(max_examples=40)
@given(
    length=st.integers(0, 3000),
    block_tokens=st.integers(1, 64),
    out_len=st.integers(0, 30),
    data_seed=data_seeds,
)
def test_short_out_acts_as_a_smaller_max_blocks(
    length: int, block_tokens: int, out_len: int, data_seed: int
) -> None:
    data = _random_bytes(length, data_seed)
    block = 4 * block_tokens
    got = _both_chains("chained_block_hashes", data, block, 1 << 40, 5, out_len)
    assert got == _chain_by_formula(data.tobytes(), block, out_len, 5)


def test_chain_of_a_mebibyte() -> None:
    data = _random_bytes(MIB + 21, 11)  # 16384 full blocks of 64 bytes and a 21-byte tail
    got = _both_chains("chained_block_hashes", data, 64, 1 << 40, 12345, MIB // 64 + 1)
    assert len(got) == MIB // 64 + 1


# --------------------------------------------------------------------------- token ids


@settings(max_examples=60)
@given(
    count=st.one_of(st.integers(0, 200), st.integers(0, MAX_BYTES // 4)),
    block_tokens=st.integers(-1, 64),
    max_blocks=max_blocks_values,
    seed=seeds,
    data_seed=data_seeds,
)
def test_token_chain_is_the_byte_chain_of_le_uint32(
    count: int, block_tokens: int, max_blocks: int, seed: int, data_seed: int
) -> None:
    tokens = _random_tokens(count, data_seed)
    out_len = count + 2
    got = _both_chains(
        "chained_token_block_hashes", tokens, block_tokens, max_blocks, seed, out_len
    )
    as_bytes = readonly(np.frombuffer(tokens.astype("<u4").tobytes(), dtype=np.uint8))
    block = 4 * block_tokens
    assert got == _both_chains("chained_block_hashes", as_bytes, block, max_blocks, seed, out_len)
    out = _out(out_len)
    viewed = KERNELS["chained_block_hashes"](
        tokens.view(np.uint8), block, max_blocks, np.uint64(seed), out
    )
    assert [int(h) for h in out[:viewed]] == got


# --------------------------------------------------------------------------- vectors

HELLO = b"hello world" * 10  # 110 bytes: one 64-byte block and a 46-byte tail
FOX = b"The quick brown fox jumps over the lazy dog"  # 43 bytes


@pytest.mark.parametrize(
    ("prompt", "model", "salt", "block_tokens", "max_blocks", "expected"),
    [
        pytest.param(
            HELLO, "m", "", 16, 256, [0xED3B16D44556DB14, 0xF211CB52713B3689], id="hello-tail"
        ),
        pytest.param(
            HELLO,
            "m",
            "tenant-a",
            16,
            256,
            [0x0AC99DAD4AB03BDB, 0xA67C5C56530BB2CE],
            id="hello-salted",
        ),
        pytest.param(
            FOX,
            "llama-3",
            "",
            4,
            256,
            [0x3572FC26B8674134, 0x018CB905B96C5158, 0xF9176D0BFA830ABE],
            id="fox-blocks-of-16-bytes",
        ),
        pytest.param(
            FOX, "llama-3", "", 4, 2, [0x3572FC26B8674134, 0x018CB905B96C5158], id="fox-truncated"
        ),
        pytest.param(b"hi", "m", "", 16, 256, [], id="shorter-than-a-block"),
        pytest.param(HELLO, "m", "", 0, 256, [], id="block-size-0"),
    ],
)
def test_block_hash_vectors(
    prompt: bytes,
    model: str,
    salt: str,
    block_tokens: int,
    max_blocks: int,
    expected: list[int],
) -> None:
    hashes = block_hashes(prompt, model, salt, block_tokens, max_blocks)
    assert hashes.dtype == np.uint64
    assert [int(h) for h in hashes] == expected


def test_token_block_hash_vector() -> None:
    # ids 1..40, uint32 little-endian, blocks of 16 tokens: 16 + 16 + a tail of 8
    expected = [0xEA0298C387A272ED, 0x1206DE8529D06134, 0xFD54BEA1813FC838]
    hashes = gie_token_block_hashes(list(range(1, 41)), "m", block_size_tokens=16)
    assert [int(h) for h in hashes] == expected
    assert gie_token_block_hashes(list(range(1, 16)), "m", block_size_tokens=16).tolist() == []


@pytest.mark.parametrize(
    ("model", "salt", "expected"),
    [
        pytest.param("m", "", 13415755381228090088, id="model"),
        pytest.param("llama-3", "salt-1", 13415986599028214604, id="model-and-salt"),
    ],
)
def test_seed_hash_vectors(model: str, salt: str, expected: int) -> None:
    assert seed_hash(model, salt) == expected


def test_wrappers_accept_writable_and_readonly_inputs() -> None:
    # bytearray gives a writable buffer; the wrapper still passes a read-only view.
    assert block_hashes(bytearray(HELLO), "m").tolist() == block_hashes(HELLO, "m").tolist()
    ids = np.arange(1, 41, dtype=np.int64)
    assert (
        gie_token_block_hashes(ids, "m").tolist() == gie_token_block_hashes(list(ids), "m").tolist()
    )


# --------------------------------------------------------------------------- signatures


def _canonical_args(name: str) -> tuple[Any, ...]:
    """One call's arguments in the pinned dtypes (the only ones the tests ever pass)."""
    data = _random_bytes(100, 0)
    table: dict[str, tuple[Any, ...]] = {
        "xxh64": (data, np.uint64(0)),
        "chained_block_hashes": (data, 64, 4, np.uint64(1), _out(4)),
        "chained_token_block_hashes": (_random_tokens(20, 0), 16, 4, np.uint64(1), _out(4)),
    }
    return table[name]


def test_canonical_args_cover_every_kernel() -> None:
    for name in KERNELS:
        assert _canonical_args(name)


# Runs last in this module, after every property and table test has called the kernels:
# any call with a stray dtype, layout or scalar type would have compiled a second one.
@pytest.mark.skipif(not is_jit_enabled(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_one_compiled_signature_per_kernel(name: str) -> None:
    dispatcher = KERNELS[name]
    assert isinstance(dispatcher, Dispatcher)
    dispatcher(*_canonical_args(name))
    assert len(dispatcher.signatures) == 1, dispatcher.signatures
