"""Synthetic prompts: the mixer, prefix-consistent chains, and block ids as bytes/tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.prefix.hashing import block_hashes, gie_token_block_hashes
from inference_sched.sim.prompts import (
    ID_MASK,
    block_token_ids,
    chain_ids,
    chain_ids_reference,
    child_ids,
    fmix64,
    mix,
    mix_array,
    num_blocks,
    prompt_bytes,
    prompt_token_ids,
)

GOLDEN = 0x9E3779B97F4A7C15


def common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8))
    return int(diff[0]) if diff.size else n


def common_ids(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


# ------------------------------------------------------------------------------- mixer


def test_fmix64_is_splitmix64() -> None:
    # splitmix64 seeded with 0: outputs fmix64(k * golden), k = 1, 2, 3 (Vigna's reference).
    assert [fmix64(k * GOLDEN) for k in (1, 2, 3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]


def test_mix_definition_and_pins() -> None:
    assert mix(5, 7) == fmix64(5 ^ fmix64(7 + GOLDEN)) & ID_MASK
    assert mix(-1, 3) == mix(2**64 - 1, 3)  # parents are taken modulo 2**64
    assert mix(3, 4) == 1214365938618782508
    assert mix(0, 0) != mix(0, 1) != mix(1, 0)


def test_mix_array_matches_mix() -> None:
    parents = np.array([0, 1, 2**62, -5], dtype=np.int64)
    contents = np.array([0, 9, 3, 2**40], dtype=np.int64)
    got = mix_array(parents[:, None], contents[None, :])
    assert got.dtype == np.int64
    assert got.tolist() == [[mix(int(p), int(c)) for c in contents] for p in parents]
    assert (got >= 0).all()


def test_child_ids() -> None:
    got = child_ids(np.array([3, 9], dtype=np.int64), 4)
    assert got.tolist() == [mix(p, j) for p in (3, 9) for j in range(4)]
    assert got[:4].tolist() == child_ids([3], 4).tolist()
    assert child_ids(np.empty(0, dtype=np.int64), 32).shape == (0,)


# ------------------------------------------------------------------------------- chains


def test_chain_ids_is_the_chain_of_mix() -> None:
    ids = chain_ids(11, np.arange(5))
    expected = []
    parent = 11
    for c in range(5):
        parent = mix(parent, c)
        expected.append(parent)
    assert ids.dtype == np.int64
    assert ids.tolist() == expected
    assert chain_ids(11, np.empty(0, dtype=np.int64)).shape == (0,)


def test_chain_kernel_matches_reference_on_a_long_chain() -> None:
    contents = np.random.default_rng(1).integers(-(2**62), 2**62, 10_000)
    assert np.array_equal(chain_ids(2**63 + 7, contents), chain_ids_reference(2**63 + 7, contents))


def test_chains_compose_and_diverge_for_good() -> None:
    a = chain_ids(1, [1, 2, 3, 4, 5])
    head = chain_ids(1, [1, 2])
    assert a.tolist() == [*head.tolist(), *chain_ids(int(head[-1]), [3, 4, 5]).tolist()]
    b = chain_ids(1, [1, 2, 9, 4, 5])  # one content differs: every later id differs
    assert common_ids(a, b) == 2
    assert (a[2:] != b[2:]).all()


@given(
    parent=st.integers(0, 2**64 - 1),
    contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
)
def test_chain_ids_property(parent: int, contents: list[int]) -> None:
    array = np.array(contents, dtype=np.int64)
    ids = chain_ids(parent, array)
    assert np.array_equal(ids, chain_ids_reference(parent, array))
    assert ((ids >= 0) & (ids <= ID_MASK)).all()


# ------------------------------------------------------------------------ bytes, tokens


def test_prompt_bytes_layout() -> None:
    ids = chain_ids(5, np.arange(3))
    data = prompt_bytes(ids, 40)  # two full blocks and 8 tokens of the third
    assert len(data) == 160
    full = prompt_bytes(ids, 48)
    assert data == full[:160]
    # Each block depends only on its id.
    for i in range(3):
        assert full[64 * i : 64 * (i + 1)] == prompt_bytes(ids[i : i + 1], 16)
    assert data == prompt_token_ids(ids, 40).tobytes()
    assert prompt_bytes(np.empty(0, dtype=np.int64), 0) == b""
    assert prompt_bytes(np.array([0], dtype=np.int64), 16)[:8].hex() == "f00223a9752ac3eb"


def test_prompt_bytes_rejects_a_wrong_block_count() -> None:
    with pytest.raises(ValueError, match="17 tokens need 2 blocks, got 1"):
        prompt_bytes(np.array([1], dtype=np.int64), 17)


def test_token_ids() -> None:
    ids = chain_ids(5, np.arange(3))
    tokens = prompt_token_ids(ids, 33)
    assert tokens.dtype == np.uint32
    assert tokens.shape == (33,)
    assert tokens[:16].tolist() == block_token_ids(int(ids[0]))
    assert tokens[16:32].tolist() == block_token_ids(int(ids[1]))
    assert tokens[32] == block_token_ids(int(ids[2]))[0]
    assert len(set(block_token_ids(7))) == 16


def test_num_blocks() -> None:
    assert [num_blocks(n) for n in (0, 1, 16, 17, 12_000)] == [0, 1, 1, 2, 750]


def test_scheduler_hashes_see_the_id_prefix() -> None:
    """GIE's chained hashes over the bytes agree exactly as far as the ids agree."""
    shared = chain_ids(1, np.arange(6))
    a = np.concatenate((shared, chain_ids(int(shared[-1]), [100, 101])))
    b = np.concatenate((shared, chain_ids(int(shared[-1]), [200, 201, 202])))
    ha = block_hashes(prompt_bytes(a, 8 * 16 - 3), "m")
    hb = block_hashes(prompt_bytes(b, 9 * 16), "m")
    assert common_ids(ha, hb) == 6
    # The token-id path hashes the very same bytes.
    assert np.array_equal(gie_token_block_hashes(prompt_token_ids(a, 125), "m"), ha)


@given(
    parent=st.integers(0, 2**63 - 1),
    shared=st.lists(st.integers(0, 1000), max_size=8),
    tail_a=st.lists(st.integers(0, 1000), max_size=6),
    tail_b=st.lists(st.integers(1001, 2000), max_size=6),
    cut_a=st.integers(0, 15),
    cut_b=st.integers(0, 15),
)
def test_byte_prefix_iff_id_prefix(
    parent: int, shared: list[int], tail_a: list[int], tail_b: list[int], cut_a: int, cut_b: int
) -> None:
    """Two prompts share ``64 k`` bytes (``k`` maximal over full blocks) exactly when
    their first ``k`` ids are equal."""
    a = chain_ids(parent, shared + tail_a)
    b = chain_ids(parent, shared + tail_b)
    tokens_a = max(16 * len(a) - cut_a, 0) if len(a) else 0
    tokens_b = max(16 * len(b) - cut_b, 0) if len(b) else 0
    k = common_ids(a, b)
    assert k == len(shared)
    common = common_prefix(prompt_bytes(a, tokens_a), prompt_bytes(b, tokens_b))
    shortest = min(tokens_a, tokens_b) * 4
    if k == min(len(a), len(b)):  # one is an id-prefix of the other: the whole shorter one
        assert common == shortest
    else:  # they diverge inside block k, within its first 4 bytes unless one stops there
        assert 64 * k <= common < 64 * k + 4 or common == shortest
