"""SLO prediction for every candidate of a request at 16 / 64 / 256 endpoints.

Cases, per endpoint count (compile-free: the model is NumPy):

* ``predict``: the feature map and the TTFT + TPOT quantile predictions of all
  candidates in one vectorised call (what ``predicted-latency-producer`` does per
  request);
* ``prepare-request-data``: the producer's whole PrepareData step (features, predictions,
  SLO validity and headroom, the ``LatencyPredictionInfo`` arrays);
* the baseline: the same model in a per-candidate Python loop (one feature row and two
  ``predict_one`` calls per candidate).

``ratio_vs_baseline`` is baseline p50 / case p50 (the speed-up); ``us_per_candidate`` is
p50 / endpoints. Target (issue 7 part 4): <= 5 us per candidate.

    python benchmarks/bench_slo.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import parse_args, percentiles_us, time_calls, write_report

import inference_sched.plugins.slo  # noqa: F401 - registers the SLO plugin types
from inference_sched import Endpoint, EndpointTable, Request
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.types import CycleState
from inference_sched.params import parse_params
from inference_sched.plugins.slo import PredictedLatencyProducer
from inference_sched.slo import LatencyPredictor, feature_matrix

SIZES = (16, 64, 256)
PROMPT_TOKENS = 2000.0


def make_pool(num_endpoints: int, seed: int = 0) -> EndpointTable:
    rng = np.random.default_rng(seed)
    table = EndpointTable()
    for i in range(num_endpoints):
        table.add(Endpoint(f"e{i}-rank-0", f"10.0.{i // 256}.{i % 256}", 8000))
    rows = table.candidates()
    table.update_metrics(
        rows,
        waiting=rng.integers(0, 16, len(rows)).astype(np.float64),
        running=rng.integers(0, 64, len(rows)).astype(np.float64),
        kv_usage_frac=rng.uniform(0, 1, len(rows)),
    )
    return table


def trained_predictor(seed: int = 0) -> LatencyPredictor:
    """A predictor past its warm-up, trained on a synthetic stream."""
    rng = np.random.default_rng(seed)
    predictor = LatencyPredictor()
    for _ in range(200):
        x = feature_matrix(
            float(rng.integers(100, 4000)),
            rng.random(1),
            rng.integers(0, 10, 1).astype(np.float64),
            rng.integers(0, 32, 1).astype(np.float64),
            rng.random(1),
            rng.integers(0, 8000, 1).astype(np.float64),
            np.zeros(1),
        )[0]
        predictor.observe_ttft(x, 20.0 + 40.0 * x[1] + 60.0 * x[3] * rng.lognormal(0, 0.2))
        predictor.observe_tpot(x, 5.0 + 0.5 * x[4] * rng.lognormal(0, 0.2))
    return predictor


def vectorised(table: EndpointTable, predictor: LatencyPredictor) -> Callable[[], Any]:
    rows = table.candidates()
    prefix = np.zeros(len(rows))
    inflight = np.zeros(table.capacity)
    role = np.zeros(table.capacity)

    def run() -> Any:
        x = feature_matrix(
            PROMPT_TOKENS,
            prefix,
            table.waiting[rows],
            table.running[rows],
            table.kv_usage_frac[rows],
            inflight[rows],
            role[rows],
        )
        return predictor.predict(x)

    return run


def per_candidate(table: EndpointTable, predictor: LatencyPredictor) -> Callable[[], Any]:
    """The baseline: the same model, one candidate at a time."""
    rows = table.candidates().tolist()
    zero = np.zeros(1)

    def run() -> Any:
        out = []
        for row in rows:
            x = feature_matrix(
                PROMPT_TOKENS,
                zero,
                table.waiting[row : row + 1],
                table.running[row : row + 1],
                table.kv_usage_frac[row : row + 1],
                zero,
                zero,
            )[0]
            out.append((predictor.ttft.predict_one(x), predictor.tpot.predict_one(x)))
        return out

    return run


def prepare(table: EndpointTable, predictor: LatencyPredictor) -> Callable[[], Any]:
    params = parse_params(PredictedLatencyProducer.Params, {"streamingMode": True}, "bench")
    producer = PredictedLatencyProducer("plp", params, PluginHandle(table))
    producer.predictor = predictor
    rows = table.candidates()
    request = Request.create(
        "m", prompt="x" * 8000, headers={"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "50"}
    )
    rng = np.random.default_rng(0)

    def run() -> Any:
        producer.prepare_request_data(CycleState(rng), request, table, rows)

    return run


def main() -> None:
    args = parse_args(__doc__ or "")
    calls = 500 if args.quick else 5000
    predictor = trained_predictor()
    results: list[dict[str, Any]] = []
    for n in SIZES:
        table = make_pool(n)
        cases = {
            "per-candidate-loop": per_candidate(table, predictor),
            "predict": vectorised(table, predictor),
            "prepare-request-data": prepare(table, predictor),
        }
        for fn in cases.values():  # warm-up
            for _ in range(50):
                fn()
        samples = {name: time_calls(fn, calls) for name, fn in cases.items()}
        base_p50, _ = percentiles_us(samples["per-candidate-loop"])
        for name, ns in samples.items():
            p50, p99 = percentiles_us(ns)
            results.append(
                {
                    "case": name,
                    "endpoints": n,
                    "p50_us": p50,
                    "p99_us": p99,
                    "ratio_vs_baseline": base_p50 / p50,
                    "us_per_candidate": p50 / n,
                }
            )
    write_report("bench_slo", results, args.json)
    print("\nus per candidate (p50):")
    for r in results:
        print(f"  {r['case']:<22} {r['endpoints']:>4}: {r['us_per_candidate']:.3f}")


if __name__ == "__main__":
    main()
