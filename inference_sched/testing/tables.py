"""Endpoint tables for plugin tests: a few endpoints with the metrics a test states."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from inference_sched.state.endpoint import ROLE_LABEL, Endpoint, Role
from inference_sched.state.table import EndpointTable

__all__ = ["make_table"]

T = TypeVar("T")

DEFAULT_NOW_S = 100.0
"""The fixed time of a :func:`make_table` table's clock unless a test gives its own."""


def make_table(
    n: int = 4,
    *,
    clock: Callable[[], float] | float = DEFAULT_NOW_S,
    roles: Sequence[Role | str | None] | None = None,
    labels: Sequence[Mapping[str, str]] | Mapping[str, str] | None = None,
    adapters: Sequence[Iterable[str]] | None = None,
    port: int = 8000,
    **columns: npt.ArrayLike,
) -> EndpointTable:
    """A table of ``n`` endpoints ``e0..e{n-1}`` at ``10.0.0.i:port``, with metrics.

    ::

        table = make_table(3, waiting=[0, 4, 9], kv_usage_frac=[0.1, 0.5, 0.9])
        table = make_table(2, roles=["prefill", "decode"], running=2)

    Args:
        n: number of endpoints (rows ``0..n-1``, in that order).
        clock: the table's clock: a fixed time in seconds, or a callable. Metric
            columns are stamped with it (``last_update_s``), so they are fresh.
        roles: one per endpoint: a :class:`~inference_sched.state.endpoint.Role`, a
            ``llm-d.ai/role`` label value (``"prefill"``, ``"decode"``, ``"both"`` ...) or
            ``None`` (no role label).
        labels: pod labels, one mapping per endpoint, or one mapping for all.
        adapters: the LoRA adapters running on each endpoint (one iterable each).
        port: every endpoint's port.
        **columns: scraped metric columns (``waiting``, ``running``, ``kv_usage_frac``,
            ``kv_blocks_total``, ``block_size_tokens``, ``max_loras``): a scalar for
            every endpoint or one value per endpoint. Without any, no metrics are
            written (``last_update_s`` stays ``-inf``: never scraped).

    Raises:
        ValueError: a per-endpoint sequence is not ``n`` long, or ``n`` is negative.
        KeyError: an unknown column name.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    now = clock if callable(clock) else _fixed(float(clock))
    table = EndpointTable(clock=now, capacity=max(n, 1))
    role_list = _per_endpoint("roles", roles, n)
    label_list = [labels] * n if isinstance(labels, Mapping) else _per_endpoint("labels", labels, n)
    for i in range(n):
        pod_labels = dict(label_list[i] or {}) if label_list is not None else {}
        role = role_list[i] if role_list is not None else None
        address = f"10.0.{i // 256}.{i % 256}"
        if role is None or isinstance(role, str):
            if role is not None:
                pod_labels[ROLE_LABEL] = role  # the endpoint reads its role from the label
            table.add(Endpoint(f"e{i}", address, port, pod_labels))
        else:
            role = Role(role)
            if role.label is not None:
                pod_labels[ROLE_LABEL] = role.label
            table.add(Endpoint(f"e{i}", address, port, pod_labels, role=role))
    if columns:
        arrays: dict[str, Any] = {}
        for key, values in columns.items():
            array = np.asarray(values, dtype=np.float64)
            if array.ndim > 1 or (array.ndim == 1 and len(array) != n):
                raise ValueError(f"column {key!r}: expected a scalar or {n} values, got {values!r}")
            arrays[key] = array
        table.update_metrics(np.arange(n), **arrays)
    adapter_list = _per_endpoint("adapters", adapters, n)
    if adapter_list is not None:
        for row, running in enumerate(adapter_list):
            table.set_adapters(row, frozenset(running), frozenset())
    return table


def _fixed(now_s: float) -> Callable[[], float]:
    def clock() -> float:
        return now_s

    return clock


def _per_endpoint(what: str, values: Sequence[T] | None, n: int) -> Sequence[T] | None:
    if values is not None and len(values) != n:
        raise ValueError(f"{what}: expected {n} entries (one per endpoint), got {len(values)}")
    return values
