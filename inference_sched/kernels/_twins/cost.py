"""NumPy twins of :mod:`inference_sched.kernels.cost`, and their contracts.

Each function has the name, parameters and ``out`` contract of the cost kernel it
mirrors; ``tests/property/test_kernels_cost.py`` holds the two equal. The conventions
shared by every kernel are in :mod:`inference_sched.kernels._twins`.
"""

import math

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._twins.scoring import min_max_inverted

__all__ = ["kv_cost_scores", "softmax_sample_keys"]


def kv_cost_scores(
    match_blocks: npt.NDArray[np.float64],
    inflight_tokens: npt.NDArray[np.float64],
    candidates: npt.NDArray[np.int32],
    total_blocks: float,
    block_size_tokens: float,
    credit: float,
    logits: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
) -> None:
    """Dynamo's KV-router cost per candidate, and its score (``kv-cost-scorer``).

    With ``r = candidates[i]``::

        prefill_blocks = max(total_blocks - match_blocks[r], 0)   # NaN stays NaN
        decode_blocks  = inflight_tokens[r] / block_size_tokens
        logits[i]      = credit * prefill_blocks + decode_blocks   # lower is better

    then ``out[:n]`` = :func:`min_max_inverted` of ``logits[:n]``: the cheapest candidate
    scores 1, the dearest 0, all equal (or a single candidate) 1, NaN/inf cost NaN.

    Args:
        match_blocks: float64, the request's blocks cached per row (``PrefixCacheMatchInfo``).
        inflight_tokens: float64, tokens in flight per row (``inflight-load-producer``).
        candidates: int32 rows to score.
        total_blocks: the request's prefix blocks.
        block_size_tokens: tokens per block (> 0).
        credit: ``overlapScoreWeight`` (Dynamo's overlap credit).
        logits: float64, ``logits[:n]`` receives the costs.
        out: float32, ``out[:n]`` receives the scores.
    """
    n = candidates.shape[0]
    uncached = total_blocks - match_blocks[candidates]
    uncached = np.where(uncached < 0.0, 0.0, uncached)
    logits[:n] = credit * uncached + inflight_tokens[candidates] / block_size_tokens
    min_max_inverted(logits, np.arange(n, dtype=np.int32), out)


def softmax_sample_keys(
    scores: npt.NDArray[np.float32],
    temperature: float,
    uniforms: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Gumbel-max keys for Dynamo's softmax sampling over totals (``softmax-picker``).

    With ``lo``/``hi`` the min/max of the finite scores, ``z_i = (s_i - hi) / (hi - lo)``
    (0 when ``hi == lo``) and ``out[i] = z_i / temperature - log(-log(max(u_i, 1e-300)))``;
    non-finite scores get key ``-inf``. The position of the largest key is a sample from
    ``softmax(z / temperature)`` and the keys in descending order a sample without
    replacement (Gumbel-top-k), which gives the fallbacks.

    Args:
        scores: float32 weighted totals, higher is better.
        temperature: > 0.
        uniforms: float64 in [0, 1), one per score (from the cycle's seeded RNG).
        out: float64, ``out[:n]`` receives the keys.

    Returns:
        The number of finite scores.
    """
    n = scores.shape[0]
    s = scores.astype(np.float64)
    finite = np.abs(s) < math.inf
    if not finite.any():
        out[:n] = -math.inf
        return 0
    hi = float(s[finite].max())
    span = hi - float(s[finite].min())
    z = (np.where(finite, s, hi) - hi) / span if span > 0.0 else np.zeros(n)
    gumbel = -np.log(-np.log(np.maximum(uniforms[:n], 1e-300)))
    out[:n] = np.where(finite, z / temperature + gumbel, -math.inf)
    return int(finite.sum())
