"""PrefixIndex.match_prompt / match_tokens equal hashing then matching, call for call."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_sched.prefix.hashing import block_hashes, gie_token_block_hashes
from inference_sched.prefix.index import PrefixIndex

MODEL = "m"
NUM_ROWS = 6


def _index_holding(
    hashes: npt.NDArray[np.uint64], holdings: list[tuple[int, int, int]]
) -> PrefixIndex:
    """An index where row r holds ``hashes[start:stop]`` for each (r, start, stop)."""
    index = PrefixIndex()
    for row, start, stop in holdings:
        index.add(hashes[start:stop], row, 1000)
    return index


holdings = st.lists(
    st.tuples(st.integers(0, NUM_ROWS - 1), st.integers(0, 40), st.integers(0, 40)).map(
        lambda t: (t[0], min(t[1], t[2]), max(t[1], t[2]))
    ),
    max_size=8,
)


@given(
    prompt=st.binary(max_size=2600),
    block_tokens=st.integers(1, 20),
    max_blocks=st.integers(1, 50),
    salt=st.sampled_from(["", "s"]),
    held=holdings,
    strict=st.booleans(),
)
def test_match_prompt_equals_block_hashes_then_match(
    prompt: bytes,
    block_tokens: int,
    max_blocks: int,
    salt: str,
    held: list[tuple[int, int, int]],
    strict: bool,
) -> None:
    expected_hashes = block_hashes(prompt, MODEL, salt, block_tokens, max_blocks)
    index = _index_holding(expected_hashes, held)
    expected = np.full(NUM_ROWS, -1.0)
    (index.match_prefix if strict else index.match_counting)(expected_hashes, expected)
    counts = np.full(NUM_ROWS, -1.0)
    hashes = index.match_prompt(
        prompt, MODEL, salt, block_tokens, max_blocks, counts, strict=strict
    )
    np.testing.assert_array_equal(hashes, expected_hashes)
    np.testing.assert_array_equal(counts, expected)


@given(
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=400),
    block_tokens=st.integers(1, 20),
    max_blocks=st.integers(1, 50),
    held=holdings,
    strict=st.booleans(),
)
def test_match_tokens_equals_token_block_hashes_then_match(
    tokens: list[int],
    block_tokens: int,
    max_blocks: int,
    held: list[tuple[int, int, int]],
    strict: bool,
) -> None:
    expected_hashes = gie_token_block_hashes(tokens, MODEL, "", block_tokens, max_blocks)
    index = _index_holding(expected_hashes, held)
    expected = np.full(NUM_ROWS, -1.0)
    (index.match_prefix if strict else index.match_counting)(expected_hashes, expected)
    counts = np.full(NUM_ROWS, -1.0)
    hashes = index.match_tokens(tokens, MODEL, "", block_tokens, max_blocks, counts, strict=strict)
    np.testing.assert_array_equal(hashes, expected_hashes)
    np.testing.assert_array_equal(counts, expected)


def test_exact_counts_for_a_prompt_held_in_parts() -> None:
    prompt = bytes(range(256)) * 2  # 512 bytes: 8 blocks of 16 tokens
    hashes = block_hashes(prompt, MODEL)
    index = _index_holding(hashes, [(0, 0, 8), (1, 0, 3), (2, 1, 8)])
    counts = np.zeros(3)
    index.match_prompt(prompt, MODEL, "", 16, 256, counts)
    assert counts.tolist() == [8.0, 3.0, 7.0]
    index.match_prompt(prompt, MODEL, "", 16, 256, counts, strict=True)
    assert counts.tolist() == [8.0, 3.0, 0.0]


@pytest.mark.parametrize("prompt", [b"", b"x" * 63])
def test_a_prompt_without_blocks_zeroes_the_counts(prompt: bytes) -> None:
    index = _index_holding(block_hashes(b"y" * 64, MODEL), [(0, 0, 1)])
    counts = np.ones(2)
    assert index.match_prompt(prompt, MODEL, "", 16, 256, counts).shape == (0,)
    assert counts.tolist() == [0.0, 0.0]


def test_short_out_counts_are_rejected() -> None:
    index = _index_holding(block_hashes(b"y" * 64, MODEL), [(3, 0, 1)])
    with pytest.raises(ValueError, match="out_counts: expected a 1-D float64 array of length >= 4"):
        index.match_prompt(b"y" * 64, MODEL, "", 16, 256, np.zeros(2))
