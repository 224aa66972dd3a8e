"""The simulator's shared vocabulary: requests, engine parameters, engine events.

Every module of :mod:`inference_sched.sim` speaks these types; they carry no behaviour.

Block identity. A request's prompt is described by ``blocks``: one int64 id per
16-token block (:data:`SIM_BLOCK_TOKENS`), the last one possibly partial. Ids are
*prefix-consistent*: two requests share their first ``k`` blocks exactly when their first
``k`` ids are equal (the generators chain each id to its parent, trace replay expands
Mooncake's prefix hash ids). The engine's KV cache keys blocks by these ids; the prompt
bytes the scheduler hashes are derived from them (:mod:`inference_sched.sim.prompts`), so
prefix identity in a workload is byte-prefix identity for the prefix scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple, Protocol

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "SIM_BLOCK_TOKENS",
    "EngineConfig",
    "EngineEvent",
    "EventKind",
    "Finished",
    "RequestStatus",
    "RunResult",
    "ServerMetrics",
    "SimRequest",
    "StepTimeModel",
]

SIM_BLOCK_TOKENS: Final = 16
"""Tokens per workload block: vLLM's default KV block size, and GIE's default prefix block."""


@attrs.frozen(eq=False)
class SimRequest:
    """One request of a workload, identical for every configuration compared.

    Attributes:
        id: position in the workload (0-based, arrival order).
        arrival_s: arrival time, seconds from the start of the run.
        prompt_tokens: prompt length in tokens (>= 1).
        output_tokens: tokens to generate (>= 1); the request finishes after exactly
            this many, as with ``ignore_eos``.
        blocks: int64 ids of the prompt's 16-token blocks, ``ceil(prompt_tokens / 16)``
            of them, prefix-consistent (module docstring).
        lora: LoRA adapter name, or None for the base model.
        session: session id (multi-turn chat), or None.
        slo_ttft_ms / slo_tpot_ms / priority: the request's SLO class (mixed-slo).
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    blocks: npt.NDArray[np.int64]
    lora: str | None = None
    session: str | None = None
    slo_ttft_ms: float = 0.0
    """The request's TTFT objective (``x-slo-ttft-ms``); 0: none."""
    slo_tpot_ms: float = 0.0
    """The request's TPOT objective (``x-slo-tpot-ms``); 0: none."""
    priority: int = 0
    """InferenceObjective priority; < 0 is sheddable."""


@attrs.frozen
class EngineConfig:
    """A vLLM-like engine; defaults are vLLM V1's on an H100 serving Llama-2-7B
    (``shared/data/latency/README.md``, "vLLM defaults that matter for a simulator").

    Attributes:
        latency_model: step-time model name (:func:`inference_sched.sim.latency.load`).
        max_num_seqs: most running requests (vLLM: 1024 on >= 70 GiB non-A100 GPUs).
        max_num_batched_tokens: token budget of one step, decodes first, then prefill
            chunks (chunked prefill is always on in V1; ``vllm serve`` on H100: 8192).
        block_size: KV block size in tokens (vLLM: 16; a multiple of SIM_BLOCK_TOKENS).
        num_gpu_blocks: KV cache capacity in blocks (Llama-2-7B on an H100 at
            ``gpu_memory_utilization`` 0.9: ~116,736 tokens = 7,296 blocks).
        enable_prefix_caching: keep freed full blocks in an LRU free queue for reuse.
        max_loras: LoRA adapters resident at once (vLLM default 1).
        lora_load_s: time to load an adapter into a free slot (not measured here: a
            stated assumption, see docs/simulator/engine.md).
        step_overhead_s: host time added to every step (scheduling, sampling); the
            latency tables hold GPU time only.
    """

    latency_model: str = "h100-llama2-7b"
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    num_gpu_blocks: int = 7296
    enable_prefix_caching: bool = True
    max_loras: int = 1
    lora_load_s: float = 0.005
    step_overhead_s: float = 0.0


class EventKind:
    """Kinds of :class:`EngineEvent` (plain ints: events are made by the thousand)."""

    FIRST_TOKEN: Final = 0
    FINISHED: Final = 1
    PREEMPTED: Final = 2
    REJECTED: Final = 3
    """The request can never run here (its prompt needs more KV blocks than the server
    has): vLLM answers 400 at once."""


class Finished(NamedTuple):
    """What the engine knows of a request when it ends."""

    scheduled_s: float
    """First time it was admitted into a step (arrival to this = queueing time)."""
    first_token_s: float
    finish_s: float
    cached_tokens: int
    """Prompt tokens served from the prefix cache at its (last) admission."""
    preemptions: int


class EngineEvent(NamedTuple):
    """Something that happened to a request inside an engine, at ``time_s``."""

    time_s: float
    kind: int
    """An :class:`EventKind` value."""
    request_id: int
    finished: Finished | None = None
    """Set for FINISHED events."""


class ServerMetrics(NamedTuple):
    """What a metrics scrape of one server returns (vLLM's Prometheus names in brackets)."""

    waiting: int
    """Admitted but not running requests (``vllm:num_requests_waiting``)."""
    running: int
    """``vllm:num_requests_running``."""
    kv_usage_frac: float
    """Used / total KV blocks (``vllm:kv_cache_usage_perc``)."""
    num_gpu_blocks: int
    """``vllm:cache_config_info{num_gpu_blocks}``."""
    block_size: int
    """``vllm:cache_config_info{block_size}``."""
    max_loras: int
    """``vllm:lora_requests_info{max_lora}``."""
    running_adapters: frozenset[str]
    """``vllm:lora_requests_info{running_lora_adapters}``."""
    waiting_adapters: frozenset[str]
    """``vllm:lora_requests_info{waiting_lora_adapters}``."""
    prefix_queries_tokens: int
    """Cumulative prompt tokens looked up in the prefix cache
    (``vllm:prefix_cache_queries_total``)."""
    prefix_hits_tokens: int
    """Cumulative prompt tokens found there (``vllm:prefix_cache_hits_total``)."""
    preemptions: int
    """Cumulative preemptions (``vllm:num_preemptions_total``)."""


class StepTimeModel(Protocol):
    """Duration of one engine step (``inference_sched.sim.latency`` implements it).

    A step runs the decodes of ``num_decodes`` requests (one token each; their context
    lengths sum to ``decode_context_sum`` tokens) and prefill chunks: chunk ``i`` computes
    ``prefill_new[i]`` new prompt tokens on top of ``prefill_context[i]`` tokens already in
    the KV cache (cached prefix plus earlier chunks).
    """

    name: str

    def step_s(
        self,
        prefill_new: Sequence[int],
        prefill_context: Sequence[int],
        num_decodes: int,
        decode_context_sum: int,
    ) -> float:
        """Seconds for one step (> 0 when there is any work)."""
        ...

    def decode_steps_s(
        self, num_decodes: int, decode_context_sum: int, num_steps: int
    ) -> npt.NDArray[np.float64]:
        """Durations of ``num_steps`` consecutive decode-only steps of the same batch:
        step ``j`` sees context sum ``decode_context_sum + j * num_decodes``."""
        ...


class RequestStatus:
    """Outcome codes of :attr:`RunResult.status`."""

    COMPLETED: Final = 0
    FAILED_SCHEDULING: Final = 1
    """The scheduler found no endpoint (GIE 503) or every profile failed (GIE 429)."""
    REJECTED: Final = 2
    """The chosen server could never run it (prompt larger than its KV cache)."""
    UNFINISHED: Final = 3
    """Still running or queued when the run was cut at its end time."""


@attrs.frozen(eq=False)
class RunResult:
    """One configuration run over a workload: per-request arrays (index = request id)
    and the scraped load of every server over time.

    Times are seconds from the start of the run; NaN where a request never got there.
    """

    config: str
    """The configuration's label (preset name or file name)."""
    endpoint_names: tuple[str, ...]
    arrival_s: npt.NDArray[np.float64]
    scheduled_s: npt.NDArray[np.float64]
    first_token_s: npt.NDArray[np.float64]
    finish_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    cached_tokens: npt.NDArray[np.int64]
    """Prompt tokens served from the engine's prefix cache (0 if never admitted)."""
    preemptions: npt.NDArray[np.int64]
    endpoint: npt.NDArray[np.int32]
    """Index into ``endpoint_names`` of the server it was routed to, -1 if none."""
    status: npt.NDArray[np.int8]
    """A :class:`RequestStatus` code per request."""
    sample_s: npt.NDArray[np.float64]
    """Scrape times, shape (m,)."""
    sample_running: npt.NDArray[np.float64]
    """Running requests per server at each scrape, shape (m, servers)."""
    sample_waiting: npt.NDArray[np.float64]
    """Waiting requests per server at each scrape, shape (m, servers)."""
    sample_kv_usage: npt.NDArray[np.float64]
    """KV usage fraction per server at each scrape, shape (m, servers)."""
    duration_s: float
    """Simulated time from 0 to the last event."""
    wall_s: float
    """Wall-clock seconds the run took."""
    decision_us_p50: float
    """Median wall time of one ``Scheduler.schedule`` call in the run, microseconds."""
    prefill_endpoint: npt.NDArray[np.int32] | None = None
    """P/D: index of the server that ran the request's prefill, -1 when it was not
    disaggregated (None: the run had no prefill pool)."""
