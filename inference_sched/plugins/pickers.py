"""Pickers: ``max-score-picker``, ``random-picker``, ``weighted-random-picker``
(GIE, ``gateway-api-inference-extension``: ``pkg/epp/framework/plugins/scheduling/picker/``).

A picker ranks the candidates' weighted totals and returns *positions* into the
candidate array, best first: the pick, then up to ``maxNumOfEndpoints - 1`` fallbacks.
Every random choice draws from ``cycle.rng`` (seeded), so a run is reproducible; the
kernels take the draws as tie-key arrays.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.interfaces import Handle, Picker
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.kernels import picking
from inference_sched.params import at_least, param

__all__ = ["MaxScorePicker", "PickerParams", "RandomPicker", "WeightedRandomPicker"]


@attrs.frozen
class PickerParams:
    """Parameters shared by the pickers."""

    max_num_of_endpoints: int = param(1, alias="maxNumOfEndpoints", check=at_least(1))
    """How many endpoints to return: the pick, then fallbacks."""


def _ranked_salted(
    scores: npt.NDArray[np.float32], rng: np.random.Generator, k: int
) -> npt.NDArray[np.int32]:
    # One 64-bit draw seeds the tie keys: drawing n uniforms would cost more than ranking.
    n = len(scores)
    out = np.empty(k if k < n else n, dtype=np.int32)
    picking.top_k_ranked_salted(scores, rng.bit_generator.random_raw() >> 1, k, out)
    return out  # the kernel fills exactly min(k, n) positions


def _ranked_shared(
    scores: npt.NDArray[np.float32], rng: np.random.Generator, k: int, num_requests: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    salts = np.asarray(rng.bit_generator.random_raw(num_requests), dtype=np.uint64)
    out = np.empty((num_requests, min(k, len(scores))), dtype=np.int32)
    counts = np.empty(num_requests, dtype=np.int32)
    picking.top_k_ranked_shared_salted(scores, salts, k, out, counts)
    return out, counts


@register("max-score-picker")
class MaxScorePicker:
    """Highest total first; ties broken at random (GIE: shuffle, then stable sort)."""

    type: ClassVar[str]
    Params = PickerParams

    def __init__(self, name: str, params: PickerParams, handle: Handle) -> None:
        self.name = name
        self._k = params.max_num_of_endpoints

    def _ranking_scores(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The scores to rank (the random picker ranks zeros: ties everywhere)."""
        return scores

    def pick(
        self,
        cycle: CycleState,
        request: Request,
        candidates: Candidates,
        scores: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.int32]:
        """Top ``maxNumOfEndpoints`` by score, then by a random tie key."""
        return _ranked_salted(self._ranking_scores(scores), cycle.rng, self._k)

    def pick_shared(
        self,
        cycle: CycleState,
        candidates: Candidates,
        scores: npt.NDArray[np.float32],
        num_requests: int,
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """Rank one score vector for ``num_requests`` requests, each with its own ties.

        Returns:
            ``(positions, counts)``: int32 ``(num_requests, k)`` rankings and how many
            entries of each row are valid (used by ``Scheduler.schedule_batch``).
        """
        return _ranked_shared(self._ranking_scores(scores), cycle.rng, self._k, num_requests)


_max_score_picker: type[Picker] = MaxScorePicker


@register("random-picker")
class RandomPicker(MaxScorePicker):
    """Uniformly random endpoints, ignoring scores (GIE: shuffle, take the first k)."""

    def _ranking_scores(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.zeros(len(scores), dtype=np.float32)


_random_picker: type[Picker] = RandomPicker


@register("weighted-random-picker")
class WeightedRandomPicker:
    """Random endpoints with probability proportional to the total (A-Res sampling).

    Each candidate with a positive total draws ``u ~ U(0, 1)`` and gets the key
    ``u ** (1 / total)``; the largest keys win. Candidates with a total <= 0 get key 0
    and come last, in random order. When no total is positive it behaves as
    ``random-picker``.
    """

    type: ClassVar[str]
    Params = PickerParams

    def __init__(self, name: str, params: PickerParams, handle: Handle) -> None:
        self.name = name
        self._k = params.max_num_of_endpoints

    def pick(
        self,
        cycle: CycleState,
        request: Request,
        candidates: Candidates,
        scores: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.int32]:
        """``maxNumOfEndpoints`` positions by descending A-Res key."""
        n = len(scores)
        if not ((scores > 0) & (scores < np.inf)).any():
            return _ranked_salted(np.zeros(n, dtype=np.float32), cycle.rng, self._k)
        uniforms = cycle.rng.random(n)
        keys = np.empty(n, dtype=np.float64)
        picking.ares_keys(scores, uniforms, keys)
        # Rank the float64 keys in NumPy (float32 would merge close keys). The uniforms
        # break ties among the key-0 candidates; they played no part in those keys.
        order = np.lexsort((-uniforms, -keys))[: self._k]
        return order.astype(np.int32)


_weighted_random_picker: type[Picker] = WeightedRandomPicker
