"""NumPy twin of :mod:`inference_sched.kernels.assignment`, and its contract.

:func:`assign_greedy` has the name, parameters and in-place contract of the kernel;
``tests/property/test_kernels_assignment.py`` holds the two equal.
"""

import math

import numpy as np
import numpy.typing as npt

__all__ = ["assign_greedy"]


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
    """Greedy joint assignment of a burst on Dynamo's cost, in ``order``.

    Request ``i`` (``n = len(order)`` requests, ``order`` a permutation of ``0..n-1``)
    has the candidate rows ``cand_rows[cand_start[i]:cand_start[i + 1]]`` (may be empty),
    with its index match ``match_blocks`` (blocks, aligned with ``cand_rows``) and tie
    keys ``tie_keys`` (same alignment), ``total_blocks[i]`` prefix blocks of
    ``block_size_tokens[i]`` (> 0) tokens, and ``request_tokens[i]`` tokens of load. Its
    block hashes are ``hashes[i, :num_hashes[i]]``, chained (equal at block ``b`` means
    equal before ``b``, so two requests share the blocks before their first difference).

    Taking requests in ``order``, the cost of candidate ``row`` is
    ``credit * max(0, total_blocks[i] - cached) + load_tokens[row] / block_size_tokens[i]``
    (``kv-cost-scorer``'s cost) with ``cached`` the larger of the index match and the
    longest prefix shared with a request already assigned to ``row`` in this call (the
    batch's own optimistic cache; a NaN match counts as no match). A NaN cost ranks as
    +inf. ``ranked[i]`` receives the ``k = ranked.shape[1]`` cheapest candidate positions
    (ties: smaller tie key, then lower position), -1 past the candidates; ``costs[i]``
    their costs (+inf past them).
    The pick's ``load_tokens[row]`` then grows by ``request_tokens[i]`` (in place).
    """
    n = order.shape[0]
    k = ranked.shape[1]
    assigned = np.full(n, -1, dtype=np.int64)
    for t in range(n):
        i = int(order[t])
        start, stop = int(cand_start[i]), int(cand_start[i + 1])
        rows = cand_rows[start:stop]
        shared = np.zeros(load_tokens.shape[0], dtype=np.float64)
        earlier = order[:t]
        for j in earlier[assigned[earlier] >= 0].tolist():
            length = int(min(num_hashes[i], num_hashes[j]))
            same = hashes[i, :length] == hashes[j, :length]
            lcp = length if same.all() else int(np.argmin(same))
            row = int(assigned[j])
            shared[row] = max(shared[row], lcp)
        cached = np.fmax(match_blocks[start:stop], shared[rows])  # NaN match: ignored
        uncached = total_blocks[i] - cached
        uncached = np.where(uncached < 0.0, 0.0, uncached)
        cost = credit * uncached + load_tokens[rows] / block_size_tokens[i]
        cost = np.where(np.isnan(cost), math.inf, cost)
        pick = np.lexsort((np.arange(rows.shape[0]), tie_keys[start:stop], cost))[:k]
        ranked[i] = -1
        costs[i] = math.inf
        ranked[i, : pick.shape[0]] = pick
        costs[i, : pick.shape[0]] = cost[pick]
        if pick.shape[0]:
            row = int(rows[pick[0]])
            assigned[i] = row
            load_tokens[row] += request_tokens[i]
