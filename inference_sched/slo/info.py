"""The per-request latency prediction that ``predicted-latency-producer`` writes.

Kept apart from the plugins so that other plugin families (the prefix affinity filter's
TTFT gate) can read it without importing the SLO plugins.
"""

from __future__ import annotations

from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.types import CycleState

__all__ = ["LATENCY_PREDICTION_INFO", "LatencyPredictionInfo", "read_latency_info"]

LATENCY_PREDICTION_INFO: Final = "LatencyPredictionInfo"
"""Data key of the latency prediction (GIE ``LatencyPredictionInfoKey``)."""


@attrs.frozen(eq=False)
class LatencyPredictionInfo:
    """Predicted latencies and SLO headroom per endpoint (GIE ``LatencyPredictionInfo``).

    Every array is indexed by *table row* (as :class:`~inference_sched.plugins.prefix.
    PrefixCacheMatchInfo`) and filled at the cycle's candidate rows; other rows hold NaN
    (False for the validity flags).

    Attributes:
        has_prediction: the model is past its warm-up; when False the prediction arrays
            are NaN, the validity flags False, and consumers fall back (``docs/slo.md``).
        ttft_ms / tpot_ms: predicted TTFT and TPOT at the model's quantile, ms.
        ttft_headroom_ms / tpot_headroom_ms: SLO minus prediction, ms (no SLO: minus
            the prediction, so that a request without SLO ranks endpoints by speed).
        ttft_valid / tpot_valid: the prediction meets the SLO (always True without SLO,
            and for TPOT outside streaming mode or on prefill endpoints).
        dispatched: requests this producer routed to the endpoint that have not ended
            (GIE ``dispatchedRequestCount``); meaningful also during warm-up.
        ttft_slo_ms / tpot_slo_ms: the request's SLOs (0 = none).
    """

    has_prediction: bool
    ttft_ms: npt.NDArray[np.float64]
    tpot_ms: npt.NDArray[np.float64]
    ttft_headroom_ms: npt.NDArray[np.float64]
    tpot_headroom_ms: npt.NDArray[np.float64]
    ttft_valid: npt.NDArray[np.bool_]
    tpot_valid: npt.NDArray[np.bool_]
    dispatched: npt.NDArray[np.float64]
    ttft_slo_ms: float = 0.0
    tpot_slo_ms: float = 0.0


def read_latency_info(cycle: CycleState) -> LatencyPredictionInfo | None:
    """The cycle's prediction, or ``None`` when no producer wrote one."""
    info = cycle.read(LATENCY_PREDICTION_INFO)
    return info if isinstance(info, LatencyPredictionInfo) else None
