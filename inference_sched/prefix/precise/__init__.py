"""The precise prefix index and its KV-event plumbing.

:mod:`~inference_sched.prefix.precise.index` (the index),
:mod:`~inference_sched.prefix.precise.events` (applying KV events),
:mod:`~inference_sched.prefix.precise.keys` (request, engine and extra keys),
:mod:`~inference_sched.prefix.precise.wire` (vLLM's KV-event wire format) and
:mod:`~inference_sched.prefix.precise.subscriber` (the ZMQ subscriber);
:mod:`~inference_sched.prefix.precise.params` holds the producer plugin's parameters. The index's
public names load on first use, so importing the wire codec alone does not load the
index's kernels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_sched.prefix.precise.events import (
        STATUS_INVALID,
        STATUS_MISALIGNED_PARENT,
        STATUS_UNKNOWN_PARENT,
        EventBatch,
        EventBatchBuilder,
    )
    from inference_sched.prefix.precise.index import DEFAULT_CAPACITY, PreciseIndex
    from inference_sched.prefix.precise.keys import extra_key_mix, split_vllm_extra_keys

__all__ = [
    "DEFAULT_CAPACITY",
    "STATUS_INVALID",
    "STATUS_MISALIGNED_PARENT",
    "STATUS_UNKNOWN_PARENT",
    "EventBatch",
    "EventBatchBuilder",
    "PreciseIndex",
    "extra_key_mix",
    "split_vllm_extra_keys",
]

_LAZY: dict[str, str] = {
    "DEFAULT_CAPACITY": "index",
    "PreciseIndex": "index",
    "STATUS_INVALID": "events",
    "STATUS_MISALIGNED_PARENT": "events",
    "STATUS_UNKNOWN_PARENT": "events",
    "EventBatch": "events",
    "EventBatchBuilder": "events",
    "extra_key_mix": "keys",
    "split_vllm_extra_keys": "keys",
}
"""Public name → the submodule defining it."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
