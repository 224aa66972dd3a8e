"""llm-d-router's token-id block hash chain, bit-exact (``prefix/hashing.token_block_hashes``).

Three implementations must agree on every input: the Numba kernel
(``kernels/token_hashing.py``), its ``xxhash`` twin (``kernels/_twins/token_hashing.py``)
and :func:`_reference` below, an independent transcription of llm-d-router's
``referenceBlockHashes`` (llm-d/llm-d-router
``pkg/epp/framework/plugins/requestcontrol/dataproducer/prefixhash/hashing_reference_test.go``).
The literal vectors were computed once with that formula and pin the chain itself.
"""

import struct

import numpy as np
import numpy.typing as npt
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.kernels import token_hashing
from inference_sched.kernels._twins import token_hashing as twin
from inference_sched.prefix.hashing import readonly, request_seed, seed_hash, token_block_hashes

MAX_U64 = (1 << 64) - 1
SENTINEL = np.uint64(0xDEAD_BEEF_DEAD_BEEF)


def _reference(seed: int, ids: list[int], block_size: int, max_blocks: int) -> list[int]:
    """``computeBlockHashes`` spelled out with ``xxhash`` and ``struct``."""
    if block_size <= 0:
        return []
    chain: list[int] = []
    prev = seed
    for start in range(0, len(ids), block_size):
        if len(chain) >= max_blocks:
            break
        block = ids[start : start + block_size]
        content = xxhash.xxh64_intdigest(struct.pack(f"<{len(block)}I", *block))
        prev = xxhash.xxh64_intdigest(struct.pack("<QQ", content, prev))
        chain.append(prev)
    return chain


def _both(
    ids: npt.NDArray[np.uint32], block: int, max_blocks: int, seed: int, out_len: int
) -> list[int]:
    """Kernel and twin on the same input; they must agree, sentinel tail included."""
    results: list[list[int]] = []
    for impl in (token_hashing.chained_token_content_hashes, twin.chained_token_content_hashes):
        out = np.full(out_len, SENTINEL, dtype=np.uint64)
        count = impl(readonly(ids), block, max_blocks, np.uint64(seed), out)
        assert (out[count:] == SENTINEL).all(), "wrote past count"
        results.append(out[:count].tolist())
    assert results[0] == results[1]
    return list(results[0])


@pytest.mark.parametrize(
    ("model", "salt", "ids", "block", "max_blocks", "seed", "expected"),
    [
        pytest.param(
            "m", "", list(range(1, 11)), 4, 2048, 13415755381228090088,
            [18390267952832273189, 15051379317946961216, 7786504833879382867],
            id="partial-tail-block",
        ),
        pytest.param(
            "m", "salt", [1, 2, 3, 4], 2, 2048, 15642489102335581083,
            [7714218408385768131, 17384806400187647017],
            id="salted",
        ),
        pytest.param(
            "model", "", [1, 2, 3, 4], 2, 2048, 16280172332501218601,
            [18436792931417352715, 11480799520430012692],
            id="two-blocks",
        ),
        pytest.param(
            "model", "", [3, 4], 2, 2048, 16280172332501218601, [16411425130239677961],
            id="fresh-chain",
        ),
        pytest.param(
            "llama", "", [0xFFFF_FFFF, 0, 7], 64, 2048, 15903968041233364506,
            [7351672735061566929],
            id="shorter-than-a-block",
        ),
        pytest.param(
            "llama", "s", list(range(200)), 64, 2, 3320030093983050445,
            [15796819406011989490, 14192305464119146239],
            id="max-blocks",
        ),
    ],
)  # fmt: skip
def test_literal_vectors(
    model: str,
    salt: str,
    ids: list[int],
    block: int,
    max_blocks: int,
    seed: int,
    expected: list[int],
) -> None:
    assert request_seed(model, salt) == seed == seed_hash(model, salt)
    got = token_block_hashes(np.array(ids, dtype=np.uint32), block, seed, max_blocks)
    assert got.dtype == np.uint64
    assert got.tolist() == expected
    assert _reference(seed, ids, block, max_blocks) == expected


def test_prompts_chain_independently() -> None:
    """A second prompt restarts at the seed (the multi-prompt rule of ``hashing.go``)."""
    seed = request_seed("model", "")
    single = token_block_hashes([1, 2, 3, 4], 2, seed, 2048).tolist()
    first = token_block_hashes([1, 2], 2, seed, 2048).tolist()
    second = token_block_hashes([3, 4], 2, seed, 2048).tolist()
    assert first == single[:1]
    assert second != single[1:]


@pytest.mark.parametrize(
    ("ids", "block", "max_blocks"),
    [
        pytest.param([], 4, 10, id="empty"),
        pytest.param([1, 2], 0, 10, id="block-0"),
        pytest.param([1, 2], -1, 10, id="block-negative"),
        pytest.param([1, 2], 4, 0, id="max-blocks-0"),
    ],
)
def test_no_hashes(ids: list[int], block: int, max_blocks: int) -> None:
    assert token_block_hashes(ids, block, 1, max_blocks).tolist() == []


def test_huge_block_size_is_one_block() -> None:
    """Go's ``BlockSizeNearMaxInt`` case: one (partial) block."""
    assert token_block_hashes([1, 2, 3], (1 << 62), 5, 2048).tolist() == _reference(
        5, [1, 2, 3], 1 << 62, 2048
    )


@pytest.mark.parametrize("seed", [-1, 1 << 64])
def test_seed_out_of_range(seed: int) -> None:
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*64\)"):
        token_block_hashes([1], 1, seed, 1)


def test_every_block_size_and_length() -> None:
    """All block sizes 1..20 and lengths 0..70 (Go's reference-test ranges)."""
    rng = np.random.default_rng(7)
    for length in range(71):
        ids = rng.integers(0, 1 << 32, length, dtype=np.uint32)
        for block in range(1, 21):
            expected = _reference(123, ids.tolist(), block, 2048)
            assert _both(ids, block, 2048, 123, len(expected) + 2) == expected


@given(
    ids=st.lists(st.integers(0, (1 << 32) - 1), max_size=300),
    block=st.integers(-1, 80),
    max_blocks=st.integers(0, 40),
    seed=st.integers(0, MAX_U64),
    extra_out=st.integers(-3, 3),
)
def test_kernel_equals_twin_equals_reference(
    ids: list[int], block: int, max_blocks: int, seed: int, extra_out: int
) -> None:
    expected = _reference(seed, ids, block, max_blocks) if max_blocks > 0 else []
    out_len = max(0, len(expected) + extra_out)  # a short out acts as a smaller max_blocks
    got = _both(np.array(ids, dtype=np.uint32), block, max_blocks, seed, out_len)
    assert got == expected[:out_len]
    assert token_block_hashes(ids, block, seed, max_blocks).tolist() == expected


def test_wrapper_accepts_any_integer_array() -> None:
    ids = np.arange(100, dtype=np.int64)
    seed = request_seed("m")
    expected = token_block_hashes(ids.astype(np.uint32), 16, seed, 2048).tolist()
    assert token_block_hashes(ids, 16, seed, 2048).tolist() == expected
    assert token_block_hashes(ids.tolist(), 16, seed, 2048).tolist() == expected
    assert token_block_hashes(ids[::2].astype(np.uint32), 16, seed, 2048).tolist() == (
        _reference(seed, list(range(0, 100, 2)), 16, 2048)
    )
