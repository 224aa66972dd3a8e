"""In-process SLO prediction: an online model of TTFT and TPOT quantiles.

GIE's latency-predictor stack (``docs/slo.md``) trains XGBoost in a sidecar; this
package learns online inside the library instead. :mod:`.predictor` holds the model; the
per-request prediction the SLO plugins exchange through the cycle is a framework data
contract (:class:`inference_sched.framework.contracts.LatencyPredictionInfo`).
``docs/slo.md`` describes both.
"""

from inference_sched.slo.predictor import (
    NUM_FEATURES,
    LatencyPredictor,
    OnlineQuantileModel,
    feature_matrix,
)

__all__ = [
    "NUM_FEATURES",
    "LatencyPredictor",
    "OnlineQuantileModel",
    "feature_matrix",
]
