"""In-process SLO prediction: an online model of TTFT and TPOT quantiles.

GIE's latency-predictor stack (``specs/gie.md`` §4.8) trains XGBoost in a sidecar; this
package learns online inside the library instead. :mod:`.predictor` holds the model,
:mod:`.info` the per-request prediction data the SLO plugins exchange through the cycle
(:mod:`inference_sched.plugins.slo`). ``docs/slo.md`` describes both.
"""

from inference_sched.slo.info import LATENCY_PREDICTION_INFO, LatencyPredictionInfo
from inference_sched.slo.predictor import (
    NUM_FEATURES,
    LatencyPredictor,
    OnlineQuantileModel,
    feature_matrix,
)

__all__ = [
    "LATENCY_PREDICTION_INFO",
    "NUM_FEATURES",
    "LatencyPredictionInfo",
    "LatencyPredictor",
    "OnlineQuantileModel",
    "feature_matrix",
]
