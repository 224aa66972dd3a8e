"""A fixed-bucket duration recorder cheap enough for the scheduling path.

Kept apart from :mod:`inference_sched.observability.prometheus` so the scheduler can record without
importing prometheus-client (which costs ~0.1 s at start-up); the collector there turns
it into Prometheus histogram buckets at scrape time.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import Final

__all__ = ["DEFAULT_DURATION_BUCKETS_S", "DurationHistogram", "le_label"]

DEFAULT_DURATION_BUCKETS_S: Final = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
)
"""GIE's bucket bounds (seconds) for ``scheduler_e2e_duration_seconds`` and
``plugin_duration_seconds``."""


def le_label(bound: float) -> str:
    """A bucket bound as Prometheus' client libraries print it (``0.0001``, ``+Inf``)."""
    return "+Inf" if bound == math.inf else repr(float(bound))


class DurationHistogram:
    """Fixed-bucket duration recorder cheap enough for the scheduling path.

    One observation is a bisect over integer nanosecond bounds and two integer additions
    (no Prometheus object, no lock, no float conversion). It has one writer, the
    scheduling thread; a scrape reads it from another thread and may see one observation
    in the counts but not yet in the sum, which is harmless for a histogram.

    Args:
        bounds_s: upper bounds in seconds, finite, strictly increasing (``+Inf`` is
            implicit). GIE's by default.

    Raises:
        ValueError: bad bounds.
    """

    __slots__ = ("_bounds_ns", "bounds_s", "counts", "sum_ns")

    def __init__(self, bounds_s: Sequence[float] = DEFAULT_DURATION_BUCKETS_S) -> None:
        bounds = [float(b) for b in bounds_s]
        if not all(math.isfinite(b) and b >= 0 for b in bounds) or any(
            a >= b for a, b in itertools.pairwise(bounds)
        ):
            raise ValueError(f"bucket bounds must be finite, >= 0, increasing: {bounds_s!r}")
        self.bounds_s: tuple[float, ...] = tuple(bounds)
        self._bounds_ns = tuple(round(b * 1e9) for b in bounds)
        self.counts = [0] * (len(bounds) + 1)
        """Per-bucket (not cumulative) counts; the last one is above every bound."""
        self.sum_ns = 0
        """Sum of every observation, nanoseconds."""

    def observe_ns(self, ns: int) -> None:
        """Record one duration in nanoseconds (``le`` semantics: ``ns <= bound``)."""
        self.counts[bisect.bisect_left(self._bounds_ns, ns)] += 1
        self.sum_ns += ns

    def observe_batch_ns(self, total_ns: int, n: int) -> None:
        """Record ``n`` decisions made together in ``total_ns``, each at the mean."""
        if n > 0:
            self.counts[bisect.bisect_left(self._bounds_ns, -(-total_ns // n))] += n
            self.sum_ns += total_ns

    @property
    def count(self) -> int:
        """Observations recorded."""
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative Prometheus buckets ``(le, count)``, ``+Inf`` last."""
        counts = list(self.counts)  # one snapshot: the scheduler may be adding to it
        bounds = [*self.bounds_s, math.inf]
        cumulative = itertools.accumulate(counts)
        return [(le_label(b), float(c)) for b, c in zip(bounds, cumulative, strict=True)]

    def merge(self, other: DurationHistogram) -> None:
        """Add ``other``'s observations (same bounds) into this one.

        Raises:
            ValueError: the bounds differ.
        """
        if other.bounds_s != self.bounds_s:
            raise ValueError("cannot merge histograms with different bounds")
        self.counts = [a + b for a, b in zip(self.counts, list(other.counts), strict=True)]
        self.sum_ns += other.sum_ns
