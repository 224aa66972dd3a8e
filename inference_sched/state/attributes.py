"""Per-endpoint attributes: what data-layer extractors know about an endpoint besides
the core metrics columns (llm-d-router's dynamic endpoint attributes,
``pkg/epp/framework/interface/datalayer``).

An attribute is stored under a key printed ``"<dataType>/<producer>"`` (llm-d-router's
``DataKey``: ``GPUUtilization/dcgm-extractor``, ``Topology/topology-extractor``,
``/v1/models/models-data-extractor``, ``llm-d.ai/multicluster-queue-size``, ...); see
:func:`attribute_key`. Values are whatever the extractor documents: a float for scalar
attributes (llm-d-router ``ScalarMetricValue``), a tuple, a frozen mapping.

Rows are table rows: the :class:`~inference_sched.state.table.EndpointTable` owns one
store (``table.attributes``) and clears a row's attributes when the row is freed, so a
removed endpoint's attributes never leak to the endpoint that reuses its row.

Scorers and filters read a scalar attribute over their candidate rows in one call,
:meth:`EndpointAttributes.scalars` (NaN where absent), and may cache derived arrays on
:meth:`EndpointAttributes.version`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["EndpointAttributes", "attribute_key", "scalar_value"]


def attribute_key(data_type: str, producer: str = "") -> str:
    """The key ``"<dataType>/<producer>"`` (llm-d-router's printed ``DataKey``); with no
    producer the bare data type (what multicluster extractors write)."""
    return f"{data_type}/{producer}" if producer else data_type


def scalar_value(value: Any) -> float:
    """``value`` as a float when it is a finite real number (bools excluded), else NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    f = float(value)
    return f if math.isfinite(f) else math.nan


class EndpointAttributes:
    """Attribute values by table row and key; thread safe (data-layer threads write,
    the scheduling thread reads)."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self.version = 0
        """Bumped on every change of any attribute."""

    def put(self, row: int, key: str, value: Any) -> None:
        """Set ``key`` of ``row`` to ``value`` (replacing what was there)."""
        with self._lock:
            values = self._rows.setdefault(row, {})
            if key in values and values[key] is value:
                return
            values[key] = value
            self._bump(key)

    def put_many(self, row: int, values: Mapping[str, Any]) -> None:
        """Set several keys of ``row`` at once."""
        with self._lock:
            current = self._rows.setdefault(row, {})
            for key, value in values.items():
                current[key] = value
                self._bump(key)

    def get(self, row: int, key: str, default: Any = None) -> Any:
        """The value of ``key`` on ``row``, or ``default``."""
        values = self._rows.get(row)
        if values is None:
            return default
        return values.get(key, default)

    def delete(self, row: int, key: str) -> bool:
        """Remove ``key`` from ``row``; return whether it was there."""
        with self._lock:
            values = self._rows.get(row)
            if values is None or key not in values:
                return False
            del values[key]
            self._bump(key)
            return True

    def clear_row(self, row: int) -> None:
        """Drop every attribute of ``row`` (its endpoint left the table)."""
        with self._lock:
            values = self._rows.pop(row, None)
            if values:
                for key in values:
                    self._bump(key)

    def of(self, row: int) -> Mapping[str, Any]:
        """A snapshot of ``row``'s attributes (a new dict)."""
        with self._lock:
            return dict(self._rows.get(row, {}))

    def keys(self) -> Iterator[str]:
        """Every key some row holds."""
        with self._lock:
            found = {k for values in self._rows.values() for k in values}
        return iter(sorted(found))

    def has(self, row: int, key: str) -> bool:
        """``row`` holds ``key``."""
        values = self._rows.get(row)
        return values is not None and key in values

    def scalars(self, key: str, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``key``'s value on each of ``rows`` as float64, NaN where the row has no value
        or a non-numeric one."""
        rows_arr = np.asarray(rows, dtype=np.int64)
        out = np.full(len(rows_arr), np.nan, dtype=np.float64)
        table = self._rows
        for i, row in enumerate(rows_arr.tolist()):
            values = table.get(row)
            if values is not None and key in values:
                out[i] = scalar_value(values[key])
        return out

    def key_version(self, key: str) -> int:
        """Changes whenever a value under ``key`` changes (a cache key)."""
        return self._versions.get(key, 0)

    def _bump(self, key: str) -> None:
        self._versions[key] = self._versions.get(key, 0) + 1
        self.version += 1
