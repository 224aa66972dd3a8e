"""Numba kernel of the joint batch assignment (``Scheduler.schedule_batch(joint=True)``).

One call assigns a whole burst greedily on Dynamo's cost (ai-dynamo/dynamo,
``lib/llm/src/kv_router/scheduler.rs``; the cost of ``kv-cost-scorer``, see
``docs/plugins/kv-cost-scorer.md``), updating the load and the batch's own prefix cache as
each request is placed, so later requests see the earlier ones. The contract (formulas,
dtypes, NaN handling) is documented on the NumPy twin of the same name in
:mod:`inference_sched.kernels._twins.assignment`; the property tests hold the two equal;
``docs/architecture.md`` describes the joint path.
"""

import math

import numpy as np
import numpy.typing as npt

from inference_sched.kernels._jit import kernel
from inference_sched.kernels.cost import _dynamo_cost

__all__ = ["assign_greedy"]


@kernel
def _common_prefix(hashes: npt.NDArray[np.uint64], a: int, len_a: int, b: int, len_b: int) -> int:
    """Shared leading blocks of rows ``a`` and ``b`` (chained hashes: binary search)."""
    lo = 0
    hi = min(len_a, len_b)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if hashes[a, mid - 1] == hashes[b, mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@kernel
def assign_greedy(
    order: npt.NDArray[np.int32],
    cand_start: npt.NDArray[np.int64],
    cand_rows: npt.NDArray[np.int32],
    match_blocks: npt.NDArray[np.float64],
    total_blocks: npt.NDArray[np.float64],
    block_size_tokens: npt.NDArray[np.float64],
    request_tokens: npt.NDArray[np.float64],
    hashes: npt.NDArray[np.uint64],
    num_hashes: npt.NDArray[np.int64],
    load_tokens: npt.NDArray[np.float64],
    credit: float,
    tie_keys: npt.NDArray[np.float64],
    ranked: npt.NDArray[np.int32],
    costs: npt.NDArray[np.float64],
) -> None:
    """Assign requests in ``order`` to their cheapest candidate; write ranks and costs."""
    n = order.shape[0]
    k = ranked.shape[1]
    assigned = np.full(n, -1, dtype=np.int64)
    shared = np.zeros(load_tokens.shape[0], dtype=np.float64)
    touched = np.empty(n, dtype=np.int64)
    for t in range(n):
        i = order[t]
        num_touched = 0
        for s in range(t):
            j = order[s]
            row = assigned[j]
            if row < 0:
                continue
            lcp = _common_prefix(hashes, i, num_hashes[i], j, num_hashes[j])
            if lcp > shared[row]:
                if shared[row] == 0.0:
                    touched[num_touched] = row
                    num_touched += 1
                shared[row] = lcp
        start = cand_start[i]
        m = cand_start[i + 1] - start
        cost = np.empty(m, dtype=np.float64)
        for p in range(m):
            row = cand_rows[start + p]
            cached = match_blocks[start + p]
            if not cached >= shared[row]:  # NaN match: the batch's share only
                cached = shared[row]
            c = _dynamo_cost(
                credit, total_blocks[i], cached, load_tokens[row], block_size_tokens[i]
            )
            cost[p] = c if c == c else math.inf  # NaN ranks last
        taken = np.zeros(m, dtype=np.bool_)
        for slot in range(k):
            best = -1
            for p in range(m):
                if taken[p]:
                    continue
                if (
                    best < 0
                    or cost[p] < cost[best]
                    or (cost[p] == cost[best] and tie_keys[start + p] < tie_keys[start + best])
                ):
                    best = p
            if best < 0:
                ranked[i, slot] = -1
                costs[i, slot] = math.inf
            else:
                taken[best] = True
                ranked[i, slot] = best
                costs[i, slot] = cost[best]
        if m > 0:
            row = cand_rows[start + ranked[i, 0]]
            assigned[i] = row
            load_tokens[row] += request_tokens[i]
        for q in range(num_touched):
            shared[touched[q]] = 0.0
