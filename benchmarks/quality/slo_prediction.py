"""How well ``predicted-latency-producer`` predicts the simulator's latencies.

Runs the shared-prefix workload over simulated servers with GIE's SLO pipeline
(``predicted-latency-producer`` in streaming mode, ``latency-scorer``,
``weighted-random-picker``; no SLO headers, so the scorer prefers the endpoint predicted
fastest) and compares, per request decided after the warm-up, the prediction for the
endpoint it was routed to with what the simulator then measured:

* TTFT = first token - decision time; TPOT = (end - first token) / (output tokens - 1);
* MAE of each, and the p90 coverage: the fraction of requests whose actual latency is
  at or below the predicted p90 (0.9 is perfect calibration).

The simulator's end-of-stream response carries the final chunk's ``usage`` (output
tokens), from which the producer learns TPOT.

    python benchmarks/quality/slo_prediction.py [--quick] [--workload NAME|trace:PATH]
        [--duration S] [--rate R] [--servers N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

import inference_sched.plugins.slo  # noqa: F401 - registers the SLO plugin types
from inference_sched.framework.config import load_config
from inference_sched.framework.contracts import read_latency_info
from inference_sched.framework.types import CycleState, Request, SchedulingResult
from inference_sched.plugins.slo import PredictedLatencyProducer
from inference_sched.sim.fleet import FleetConfig, simulate
from inference_sched.sim.workloads import load_workload

CONFIG = """\
plugins:
- type: predicted-latency-producer
  parameters: {streamingMode: true}
- type: latency-scorer
- type: weighted-random-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: latency-scorer}
  - {pluginRef: weighted-random-picker}
"""

Predictions = dict[str, tuple[bool, float, float]]


def _record_predictions(predictions: Predictions) -> Any:
    """Wrap the producer's PreRequest to remember each request's prediction for its pick."""
    original = PredictedLatencyProducer.pre_request

    def pre_request(
        self: PredictedLatencyProducer,
        cycle: CycleState,
        request: Request,
        result: SchedulingResult,
    ) -> None:
        info = read_latency_info(cycle)
        if info is not None and result.primary.rows:
            row = result.primary.rows[0]
            predictions[request.request_id] = (
                info.has_prediction and self.predictor.has_tpot,
                float(info.ttft_ms[row]),
                float(info.tpot_ms[row]),
            )
        original(self, cycle, request, result)

    return original, pre_request


def run(
    rate: float | None, duration_s: float, servers: int, spec: str = "shared-prefix"
) -> dict[str, Any]:
    workload = load_workload(spec, rate=rate, duration_s=duration_s, seed=0)
    predictions: Predictions = {}
    original_pre, pre_request = _record_predictions(predictions)
    PredictedLatencyProducer.pre_request = pre_request  # type: ignore[method-assign]
    try:
        result = simulate(
            workload,
            load_config(CONFIG),
            label="slo",
            fleet=FleetConfig(num_servers=servers, seed=0),
        )
    finally:
        PredictedLatencyProducer.pre_request = original_pre  # type: ignore[method-assign]
    ttft_true, ttft_pred, tpot_true, tpot_pred = [], [], [], []
    for i in range(len(workload.requests)):
        entry = predictions.get(str(i))
        first, finish = result.first_token_s[i], result.finish_s[i]
        if entry is None or not entry[0] or math.isnan(first) or math.isnan(finish):
            continue
        ttft_true.append((first - result.arrival_s[i]) * 1000.0)
        ttft_pred.append(entry[1])
        tokens = int(result.output_tokens[i])
        if tokens >= 2:
            tpot_true.append((finish - first) * 1000.0 / (tokens - 1))
            tpot_pred.append(entry[2])
    return {
        "workload": (
            f"{workload.name} @{len(workload.requests) / duration_s:.1f} req/s, {duration_s:g} s"
        ),
        "servers": servers,
        "requests": len(workload.requests),
        "scored_requests": len(ttft_true),
        **_errors("ttft", np.asarray(ttft_true), np.asarray(ttft_pred)),
        **_errors("tpot", np.asarray(tpot_true), np.asarray(tpot_pred)),
    }


def _errors(name: str, actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    if actual.size == 0:
        return {}
    return {
        f"{name}_mean_actual_ms": float(actual.mean()),
        f"{name}_p90_actual_ms": float(np.percentile(actual, 90)),
        f"{name}_mean_predicted_ms": float(predicted.mean()),
        f"{name}_mae_ms": float(np.abs(actual - predicted).mean()),
        f"{name}_p90_coverage": float(np.mean(actual <= predicted)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 s of arrivals instead of 120")
    parser.add_argument("--rate", type=float, help="req/s (default 40 for shared-prefix)")
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument(
        "--workload",
        default="shared-prefix",
        metavar="NAME|trace:PATH",
        help="a generator or a trace (a trace keeps its own rate unless --rate is given)",
    )
    parser.add_argument("--duration", type=float, help="seconds of arrivals (default 120)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rate = args.rate if args.rate is not None or args.workload.startswith("trace:") else 40.0
    duration = args.duration or (20.0 if args.quick else 120.0)
    report = run(rate, duration, args.servers, args.workload)
    for key, value in report.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:<24} {shown}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
