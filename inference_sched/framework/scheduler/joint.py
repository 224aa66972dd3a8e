"""Joint assignment of a burst: ``Scheduler.schedule_batch(requests, joint=True)``.

Design note. Requests that arrive together are scheduled against one metrics snapshot,
so one at a time they all see the same "best" endpoint and herd onto it (llm-d-router
issue #298), while identical prompts should share one prefix cache only as long as that
pays. The joint mode places the burst as a whole on one cost, Dynamo's (``ai-dynamo/
dynamo``: ``lib/llm/src/kv_router/scheduler.rs``; the cost of ``kv-cost-scorer``, see
docs/plugins/kv-cost-scorer.md), per request ``i`` and candidate ``e``::

    cost(i, e) = overlapScoreWeight * uncached_blocks(i, e) + load_tokens(e) / B_i

* ``uncached_blocks`` is the request's prefix minus what ``e`` holds: the larger of the
  prefix index's match (``PrefixCacheMatchInfo``) and the longest prefix shared with a
  request of this batch already placed on ``e`` (the batch's own optimistic cache, as
  the prefix producer's PreRequest would record it).
* ``load_tokens(e)`` starts at ``max(inflight_tokens[e], waiting[e] * mean request
  tokens of the batch)``: the scheduler's own in-flight accounting or the scraped queue,
  whichever says more (the two overlap, so they are not added; a queued request of
  unknown size is priced as an average one of this batch) and grows by the estimated
  tokens (``estimate_tokens``, what ``inflight-load-producer`` adds; at least 1) of every
  request placed on ``e`` in the batch.

So a member of a prefix group joins its group's endpoint while the load it adds there is
cheaper than recomputing the prefix elsewhere, and different groups spread. Requests
are grouped by identical prefix (equal last block hash), groups taken by decreasing
shared work (size x blocks, the largest first, as in LPT scheduling; ties in arrival
order) and members in arrival order; each is placed greedily (one kernel call,
:func:`~inference_sched.kernels.assignment.assign_greedy`); ties break on seeded keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import estimate_tokens, read_prefix_info
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.kernels.assignment import assign_greedy
from inference_sched.params import at_least, param
from inference_sched.state.table import EndpointTable

__all__ = ["JointCost"]  # Plan, Prepared and plan are the batch path's internals

_DEFAULT_BLOCK_SIZE_TOKENS: Final = 16
_MASK64: Final = (1 << 64) - 1


@attrs.frozen
class JointCost:
    """Parameters of the joint batch assignment (``Scheduler.joint_cost``)."""

    overlap_score_weight: float = param(1.0, check=at_least(0, kind="number"))
    """Cost of one uncached prefix block relative to one block of load (Dynamo's
    overlap credit, as ``kv-cost-scorer``); 0 ignores the prefix cache."""
    max_num_of_endpoints: int = param(1, check=at_least(1))
    """Endpoints returned per request: the pick, then fallbacks by increasing cost."""


class Prepared(NamedTuple):
    """One request of the batch after its producers and filters ran."""

    position: int
    """The request's position in the batch."""
    request: Request
    cycle: CycleState
    candidates: Candidates


class Plan(NamedTuple):
    """The kernel's answer, row ``t`` for ``prepared[t]``."""

    ranked: npt.NDArray[np.int32]
    costs: npt.NDArray[np.float64]


def _prefix(
    cycle: CycleState, request: Request
) -> tuple[npt.NDArray[np.float64] | None, int, int, npt.NDArray[np.uint64]]:
    """(match by row, total blocks, block size, block hashes) of one request's cycle."""
    info = read_prefix_info(cycle)
    if info is None:
        return None, 0, _DEFAULT_BLOCK_SIZE_TOKENS, np.empty(0, dtype=np.uint64)
    total = int(info.total_blocks)
    block = info.block_size_tokens if info.block_size_tokens > 0 else _DEFAULT_BLOCK_SIZE_TOKENS
    hashes = info.block_hashes()  # both prefix producers publish the chained hashes
    if len(hashes) == total:
        return info.match_blocks, total, block, hashes
    # No hashes (a producer that does not publish them): identical prompts share
    # everything, others nothing.
    body: Any = request.token_ids.tobytes() if request.token_ids is not None else request.prompt
    salt = request.body.get("cache_salt") if request.body is not None else None
    identity = hash((request.target_model, str(salt), body)) & _MASK64
    return info.match_blocks, total, block, np.full(total, identity, dtype=np.uint64)


def _order(keys: list[tuple[int, int]], totals: list[int]) -> npt.NDArray[np.int32]:
    """Groups of equal keys by decreasing size x blocks (ties: first arrival), members
    in arrival order."""
    members: dict[tuple[int, int], list[int]] = {}
    for t, key in enumerate(keys):
        members.setdefault(key, []).append(t)
    groups = sorted(members.values(), key=lambda g: (-len(g) * totals[g[0]], g[0]))
    return np.array([t for g in groups for t in g], dtype=np.int32)


def plan(
    prepared: Sequence[Prepared],
    table: EndpointTable,
    cost: JointCost,
    rng: np.random.Generator,
) -> Plan:
    """Assign the prepared requests jointly (module docstring); one kernel call."""
    n = len(prepared)
    sizes = np.array([len(p.candidates) for p in prepared], dtype=np.int64)
    cand_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=cand_start[1:])
    cand_rows = (
        np.concatenate([p.candidates for p in prepared]).astype(np.int32, copy=False)
        if n
        else np.empty(0, dtype=np.int32)
    )
    match = np.zeros(len(cand_rows), dtype=np.float64)
    total_blocks = np.zeros(n, dtype=np.float64)
    block_size = np.full(n, float(_DEFAULT_BLOCK_SIZE_TOKENS))
    # At least 1 token: a request of unknown size still adds load, so a burst of them spreads.
    tokens = np.array(
        [float(max(estimate_tokens(p.request), 1)) for p in prepared], dtype=np.float64
    )
    all_hashes: list[npt.NDArray[np.uint64]] = []
    keys: list[tuple[int, int]] = []
    totals: list[int] = []
    for t, p in enumerate(prepared):
        match_by_row, total, block, hashes = _prefix(p.cycle, p.request)
        if match_by_row is not None:
            match[cand_start[t] : cand_start[t + 1]] = match_by_row[p.candidates]
        total_blocks[t] = total
        block_size[t] = block
        all_hashes.append(hashes)
        # A request without blocks is its own group; otherwise the last chained hash
        # names the whole prefix.
        keys.append((total, int(hashes[-1])) if total else (-1 - t, 0))
        totals.append(total)
    width = max((len(h) for h in all_hashes), default=0)
    hash_matrix = np.zeros((n, max(width, 1)), dtype=np.uint64)
    for t, hashes in enumerate(all_hashes):
        hash_matrix[t, : len(hashes)] = hashes
    num_hashes = np.array([len(h) for h in all_hashes], dtype=np.int64)
    mean_tokens = float(tokens.mean()) if n else 0.0
    load = np.fmax(table.inflight_tokens, table.waiting * mean_tokens)
    load = np.nan_to_num(load, nan=0.0, posinf=0.0, neginf=0.0)
    ranked = np.empty((n, cost.max_num_of_endpoints), dtype=np.int32)
    costs = np.empty((n, cost.max_num_of_endpoints), dtype=np.float64)
    assign_greedy(
        _order(keys, totals),
        cand_start,
        cand_rows,
        match,
        total_blocks,
        block_size,
        tokens,
        hash_matrix,
        num_hashes,
        load,
        float(cost.overlap_score_weight),
        rng.random(len(cand_rows)),
        ranked,
        costs,
    )
    return Plan(ranked, costs)
