"""NumPy twins of the Numba kernels: the contracts, the test oracles and the benchmark baseline.

Private: not part of the library's API. One module per kernel module, of the same name
(``_twins/scoring.py`` mirrors ``kernels/scoring.py``, and so on). Each twin has the name,
parameters and ``out`` contract of the kernel it mirrors; the property tests hold the two
equal (index outputs exactly, float32 outputs to a few ulp) and
``tests/unit/test_kernel_policy.py`` checks that every public kernel has its twin. They are
written as idiomatic, vectorised NumPy, because the benchmarks report the kernels'
speed-up over them: ``benchmarks/_common.py`` swaps each kernel for the twin of the same
name found on this package, which is why it re-exports every twin.

Conventions shared by all kernels:

* ``candidates`` is an int32 array of endpoint-table *rows*; columns (``values``,
  bitsets, masks, codes) are indexed by row and are usually longer than ``candidates``.
  ``n`` below is ``len(candidates)`` (or the length of the score vector), and may be 0.
* Dtypes are pinned exactly: metric columns float64, scores and score ``out`` arrays
  float32, tie keys and uniforms float64 in [0, 1), ranks and rows int32, counters int64,
  weights float64, scalars Python ``float``/``int``. Callers convert once, so each Numba
  kernel compiles one signature.
* Results go to the first ``n`` entries of a caller-owned ``out`` (``len(out) >= n``, the
  rest is left alone) or come back as a returned count. Nothing raises for expected
  input such as NaN, inf or an empty candidate set.
* A scorer writes NaN for a candidate whose input is NaN (and for some kernels, inf) so the
  profile can count bad metrics; :func:`weighted_sum` then zeroes and counts them.

The precise prefix index's kernels are private (the wrapper class is their public
surface), so their twins keep the private names; they are re-exported here too, outside
``__all__``. The prefix index's kernels have no twins (see :mod:`.prefix_index`).
"""

from inference_sched.kernels._twins.assignment import assign_greedy
from inference_sched.kernels._twins.cost import kv_cost_scores, softmax_sample_keys
from inference_sched.kernels._twins.filtering import (
    filter_below,
    filter_by_code,
    filter_by_mask,
    is_subsequence,
)
from inference_sched.kernels._twins.hashing import (
    chained_block_hashes,
    chained_token_block_hashes,
    xxh64,
)
from inference_sched.kernels._twins.picking import (
    ares_keys,
    tie_keys_from_salt,
    top_k_ranked,
    top_k_ranked_batch,
    top_k_ranked_salted,
    top_k_ranked_shared,
    top_k_ranked_shared_salted,
)
from inference_sched.kernels._twins.precise_index import (
    _chain_block_keys as _chain_block_keys,
)
from inference_sched.kernels._twins.precise_index import (
    _hash_match_tiers as _hash_match_tiers,
)
from inference_sched.kernels._twins.precise_index import (
    _match_tiers as _match_tiers,
)
from inference_sched.kernels._twins.scoring import (
    active_request,
    divided,
    load_aware,
    lora_affinity,
    min_max_inverted,
    one_minus,
    threshold_load,
    weighted_sum,
    weighted_sum_batch,
)
from inference_sched.kernels._twins.token_hashing import chained_token_content_hashes

__all__ = [
    # scoring
    "min_max_inverted",
    "one_minus",
    "divided",
    "threshold_load",
    "load_aware",
    "active_request",
    "lora_affinity",
    "weighted_sum",
    "weighted_sum_batch",
    # picking
    "tie_keys_from_salt",
    "top_k_ranked",
    "top_k_ranked_salted",
    "top_k_ranked_shared",
    "top_k_ranked_shared_salted",
    "top_k_ranked_batch",
    "ares_keys",
    # filtering
    "is_subsequence",
    "filter_by_mask",
    "filter_by_code",
    "filter_below",
    # hashing
    "xxh64",
    "chained_block_hashes",
    "chained_token_block_hashes",
    "chained_token_content_hashes",
    # cost
    "kv_cost_scores",
    "softmax_sample_keys",
    # assignment
    "assign_greedy",
]
