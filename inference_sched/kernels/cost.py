"""Numba kernels of the cost-model routing: the per-candidate cost and its score, and the
softmax sampling keys, after NVIDIA Dynamo's KV router (ai-dynamo/dynamo,
``lib/llm/src/kv_router/scheduler.rs``; see ``docs/plugins/kv-cost-scorer.md`` and
``docs/plugins/softmax-picker.md``).

The contracts (formulas, NaN handling, dtypes) are documented on the NumPy twins of the
same names in :mod:`inference_sched.kernels._twins.cost`; the property tests hold the
two implementations equal.
"""

import math

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import kernel
from inference_sched.kernels.scoring import min_max_inverted

__all__ = ["kv_cost_scores", "softmax_sample_keys"]

_MIN_UNIFORM = 1e-300  # keeps -log(-log(u)) finite for u == 0


@kernel
def _dynamo_cost(
    credit: float, total_blocks: float, cached_blocks: float, load_tokens: float, block: float
) -> float:
    """``credit * max(total - cached, 0) + load / block``; a NaN input stays NaN (the one
    formula of ``kv_cost_scores`` and of the joint assignment)."""
    uncached = total_blocks - cached_blocks
    if uncached < 0.0:  # NaN fails the test and stays NaN
        uncached = 0.0
    return credit * uncached + load_tokens / block


@kernel
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
    """Write Dynamo's cost per candidate to ``logits`` and its inverted min-max to ``out``."""
    n = candidates.shape[0]
    for i in range(n):
        row = candidates[i]
        logits[i] = _dynamo_cost(
            credit, total_blocks, match_blocks[row], inflight_tokens[row], block_size_tokens
        )
    min_max_inverted(logits, np.arange(n, dtype=np.int32), out)


@kernel
def softmax_sample_keys(
    scores: npt.NDArray[np.float32],
    temperature: float,
    uniforms: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> int:
    """Write Gumbel keys of the range-normalised softmax; return the finite score count."""
    n = scores.shape[0]
    lo = math.inf
    hi = -math.inf
    for i in range(n):
        s = float(scores[i])
        if abs(s) < math.inf:  # finite: NaN fails the comparison
            lo = min(lo, s)
            hi = max(hi, s)
    span = hi - lo
    num_finite = 0
    for i in range(n):
        s = float(scores[i])
        if abs(s) < math.inf:
            z = (s - hi) / span if span > 0.0 else 0.0
            u = max(uniforms[i], _MIN_UNIFORM)
            out[i] = z / temperature - math.log(-math.log(u))
            num_finite += 1
        else:
            out[i] = -math.inf
    return num_finite
