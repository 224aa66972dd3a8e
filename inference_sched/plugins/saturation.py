"""Saturation detectors: ``utilization-detector`` and ``concurrency-detector`` (GIE).

Each is both a *saturation detector* (:class:`~inference_sched.framework.interfaces.
SaturationDetector`: the config's ``saturationDetector.pluginRef`` names the one the
scheduler asks at admission, where a sheddable request is rejected at saturation >= 1)
and a *filter* usable in a profile. Formulas: ``gateway-api-inference-extension``
``pkg/epp/saturationdetector/``; one page per type in
``docs/plugins/``.

* ``utilization-detector``: per endpoint ``max(waiting / queueDepthThreshold,
  kv_usage_frac / kvCacheUtilThreshold)``, 1.0 when its metrics are stale or were never
  scraped; the pool's saturation is the unweighted mean (no endpoint: 1.0). The filter
  keeps fresh endpoints under both thresholds times ``1 + headroom`` and fails open.
* ``concurrency-detector``: ``Σ in-flight / Σ capacity`` over the table's
  ``inflight_requests`` or ``inflight_tokens`` column (``inflight-load-producer``);
  no endpoint (capacity 0): 1.0. The filter keeps endpoints below
  ``int(limit * (1 + headroom))`` and may return nothing. llm-d-router's ``hybrid``
  mode takes per endpoint ``max(requests / maxConcurrency, tokens /
  maxTokenConcurrency)`` and the mean over endpoints; its filter needs both counts
  under their limits (llm-d-router ``pkg/epp/framework/plugins/flowcontrol/
  saturationdetector/concurrency/``).

The math is a few numpy operations over the candidate rows: the detector runs once per
sheddable request at admission, and as a filter once per profile run, so a kernel would
save microseconds only.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.framework.contracts import IN_FLIGHT_LOAD
from inference_sched.framework.interfaces import Filter, Handle, SaturationDetector
from inference_sched.framework.registry import register
from inference_sched.framework.types import Candidates, CycleState, Request
from inference_sched.params import (
    ParamCheck,
    at_least,
    in_range,
    one_of,
    param,
    parse_duration_s,
    string,
)
from inference_sched.state.staleness import stale_mask
from inference_sched.state.table import EndpointTable

__all__ = [
    "ConcurrencyDetector",
    "ConcurrencyDetectorParams",
    "UtilizationDetector",
    "UtilizationDetectorParams",
]

_STALENESS_KEY: Final = "metricsStalenessThreshold"
_DURATION: Final = "a positive duration such as '200ms'"


def _staleness_s(raw: Any) -> float:
    """``metricsStalenessThreshold``: a Go duration string > 0, in seconds."""
    if not isinstance(raw, str):
        raise ParamCheck(_STALENESS_KEY, _DURATION, raw)
    try:
        seconds = parse_duration_s(raw)
    except ValueError:
        raise ParamCheck(_STALENESS_KEY, _DURATION, raw) from None
    if not seconds > 0:
        raise ParamCheck(_STALENESS_KEY, _DURATION, raw)
    return seconds


def _positive_seconds(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A finite number of seconds > 0 (bools rejected)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ParamCheck(attribute.alias or attribute.name, _DURATION, value)


# ---------------------------------------------------------------- utilization
@attrs.frozen
class UtilizationDetectorParams:
    """Parameters of ``utilization-detector``."""

    queue_depth_threshold: int = param(5, alias="queueDepthThreshold", check=at_least(1))
    """Waiting requests at which an endpoint counts as saturated (score 1.0)."""
    kv_cache_util_threshold: float = param(
        0.8, alias="kvCacheUtilThreshold", check=in_range(0.0, 1.0, low_open=True)
    )
    """KV-cache usage (0..1 fraction) at which an endpoint counts as saturated."""
    metrics_staleness_threshold_s: float = param(
        0.2, alias="metricsStalenessThreshold", parse=_staleness_s, check=_positive_seconds
    )
    """Metrics older than this (``"200ms"``) make an endpoint saturated (1.0) and filtered."""
    headroom: float = param(0.0, alias="headroom", check=at_least(0.0, kind="number"))
    """Filter only: burst allowance above the thresholds, a fraction (0.2 = 20 %)."""


@register("utilization-detector")
class UtilizationDetector:
    """Saturation from scraped queue depth and KV-cache usage; also a fail-open filter.

    ``saturation = mean over candidates of (1.0 if stale else max(waiting / q, kv / k))``
    with ``q = queueDepthThreshold``, ``k = kvCacheUtilThreshold``; no candidate: 1.0. An
    endpoint whose score is NaN (a NaN metric) counts as 1.0, like missing metrics.
    """

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = UtilizationDetectorParams
    is_batch_invariant: ClassVar[bool] = True
    """Reads scraped metrics only: a batch can filter once for all its requests."""

    def __init__(self, name: str, params: UtilizationDetectorParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._queue = float(params.queue_depth_threshold)
        self._kv = float(params.kv_cache_util_threshold)
        self._stale_s = float(params.metrics_staleness_threshold_s)
        self._queue_limit = self._queue * (1.0 + params.headroom)
        self._kv_limit = self._kv * (1.0 + params.headroom)

    def saturation(self, table: EndpointTable, candidates: Candidates, now_s: float) -> float:
        """Mean per-endpoint saturation (see the class docstring)."""
        if len(candidates) == 0:
            return 1.0
        scores = np.maximum(
            table.waiting[candidates] / self._queue,
            table.kv_usage_frac[candidates] / self._kv,
        )
        saturated = stale_mask(table, candidates, now_s, self._stale_s) | np.isnan(scores)
        return float(np.where(saturated, 1.0, scores).mean())

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Fresh candidates with ``waiting < q * (1 + headroom)`` and ``kv < k * (1 +
        headroom)``; all of ``candidates`` when none qualifies (GIE fails open)."""
        keep = (
            ~stale_mask(table, candidates, cycle.now_s, self._stale_s)
            & (table.waiting[candidates] < self._queue_limit)
            & (table.kv_usage_frac[candidates] < self._kv_limit)
        )
        if not keep.any():
            return candidates
        return candidates[keep]


_utilization_detector: type[SaturationDetector] = UtilizationDetector
_utilization_filter: type[Filter] = UtilizationDetector


# ---------------------------------------------------------------- concurrency
@attrs.frozen
class ConcurrencyDetectorParams:
    """Parameters of ``concurrency-detector``."""

    concurrency_mode: str = param(
        "requests", alias="concurrencyMode", check=one_of("requests", "tokens", "hybrid")
    )
    """What counts as load: in-flight ``requests``, estimated in-flight ``tokens``, or
    ``hybrid`` (both; whichever saturates first)."""
    max_concurrency: int = param(100, alias="maxConcurrency", check=at_least(1))
    """Requests and hybrid modes: one endpoint's capacity in in-flight requests."""
    max_token_concurrency: int = param(1_000_000, alias="maxTokenConcurrency", check=at_least(1))
    """Tokens and hybrid modes: one endpoint's capacity in in-flight tokens."""
    headroom: float = param(0.0, alias="headroom", check=at_least(0.0, kind="number"))
    """Filter only: burst allowance above the capacity, a fraction (0.2 = 20 %)."""
    in_flight_load_producer_name: str = param("", alias="inFlightLoadProducerName", check=string)
    """The ``inflight-load-producer`` instance whose counts to read (llm-d-router); config
    loading checks it names a producer of ``InFlightLoad``. The counters live in the
    endpoint table, one producer per table, so every producer reads the same."""

    def producer_references(self) -> dict[str, tuple[str, str]]:
        """Config loading checks these: parameter key -> (plugin name, data key)."""
        name = self.in_flight_load_producer_name
        return {"inFlightLoadProducerName": (name, IN_FLIGHT_LOAD)} if name else {}


@register("concurrency-detector")
class ConcurrencyDetector:
    """Saturation from the scheduler's own in-flight accounting; also a filter.

    ``requests`` / ``tokens``: ``saturation = Σ load / (len(candidates) * capacity)``
    where load is the ``inflight_requests`` (capacity ``maxConcurrency``) or
    ``inflight_tokens`` column (capacity ``maxTokenConcurrency``). ``hybrid``: the mean
    over candidates of ``max(requests / maxConcurrency, tokens / maxTokenConcurrency)``.
    No candidate: 1.0. The counters come from ``inflight-load-producer``, which config
    loading adds when absent (``consumes``).
    """

    stability: ClassVar[str] = "beta"

    type: ClassVar[str]
    Params = ConcurrencyDetectorParams
    consumes: ClassVar[frozenset[str]] = frozenset({IN_FLIGHT_LOAD})

    def __init__(self, name: str, params: ConcurrencyDetectorParams, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._mode = params.concurrency_mode
        self._max_requests = float(params.max_concurrency)
        self._max_tokens = float(params.max_token_concurrency)
        # Go: int64(float64(limit) * (1 + headroom)), truncation toward zero.
        self._request_limit = float(math.trunc(params.max_concurrency * (1.0 + params.headroom)))
        self._token_limit = float(
            math.trunc(params.max_token_concurrency * (1.0 + params.headroom))
        )

    def saturation(self, table: EndpointTable, candidates: Candidates, now_s: float) -> float:
        """Pool saturation (see the class docstring)."""
        n = len(candidates)
        if n == 0:
            return 1.0
        if self._mode == "requests":
            return float(table.inflight_requests[candidates].sum()) / (n * self._max_requests)
        if self._mode == "tokens":
            return float(table.inflight_tokens[candidates].sum()) / (n * self._max_tokens)
        per_endpoint = np.maximum(
            table.inflight_requests[candidates] / self._max_requests,
            table.inflight_tokens[candidates] / self._max_tokens,
        )
        return float(per_endpoint.mean())

    def filter(
        self,
        cycle: CycleState,
        request: Request,
        table: EndpointTable,
        candidates: Candidates,
    ) -> Candidates:
        """Candidates whose load is below ``int(capacity * (1 + headroom))`` (hybrid:
        both loads below their limits); may be empty (no fail-open, as GIE)."""
        keep: npt.NDArray[np.bool_]
        if self._mode == "requests":
            keep = table.inflight_requests[candidates] < self._request_limit
        elif self._mode == "tokens":
            keep = table.inflight_tokens[candidates] < self._token_limit
        else:
            keep = (table.inflight_requests[candidates] < self._request_limit) & (
                table.inflight_tokens[candidates] < self._token_limit
            )
        return candidates[keep]


_concurrency_detector: type[SaturationDetector] = ConcurrencyDetector
_concurrency_filter: type[Filter] = ConcurrencyDetector
