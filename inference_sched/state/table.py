"""EndpointTable: the pool's endpoint state as struct-of-arrays numpy columns.

One row per endpoint. Kernels read the columns as plain arrays indexed by candidate rows,
so a scheduling decision never touches a Python object per endpoint.

Design notes:

* Rows are reused after an endpoint leaves; each row has a generation counter that is
  bumped on removal, so an :class:`EndpointHandle` taken before the removal is detectably
  stale (:meth:`EndpointTable.is_current`).
* Columns grow by doubling. A column attribute may therefore be a new array after an
  ``add``: read ``table.waiting`` at use time, never keep the array across calls.
* Every metric column is float64: Prometheus values are floats, and one dtype per column
  family means one compiled signature per kernel.
* LoRA adapter sets are bitsets (uint8 matrix, adapter ``k`` = bit ``k % 8`` of byte
  ``k // 8``) over an interned adapter table that only grows.

Concurrency contract: structural changes (add, upsert, remove, health) and scheduling
cycles must not overlap. Run them on one thread or event loop, or hold ``table.lock``
around both (structural changes take it themselves; a scheduler used from several threads
must take it around ``schedule``). Metric writes (the data layer's bulk updates) may come
from another thread: they are plain array stores, and a cycle that reads during one may
see a row's columns from two scrapes, which is harmless because metrics are samples of a
moving system anyway. In-flight accounting belongs to one ``inflight-load-producer`` per
table.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.state.endpoint import Candidates, Endpoint, Role, strip_port

__all__ = ["EndpointHandle", "EndpointTable", "METRIC_COLUMNS"]

METRIC_COLUMNS: Final = (
    "waiting",
    "running",
    "kv_usage_frac",
    "kv_blocks_total",
    "block_size_tokens",
    "max_loras",
    "num_adapters",
    "last_update_s",
    "inflight_requests",
    "inflight_tokens",
)
"""Float64 columns, in GIE terms:

* ``waiting`` WaitingQueueSize; ``running`` RunningRequestsSize;
* ``kv_usage_frac`` KVCacheUsagePercent (a 0..1 fraction);
* ``kv_blocks_total`` CacheNumBlocks (num_gpu_blocks); ``block_size_tokens`` CacheBlockSize;
* ``max_loras`` MaxActiveModels; ``num_adapters`` |active| + |waiting| adapters;
* ``last_update_s`` UpdateTime of the last metrics write (table clock; -inf = never);
* ``inflight_requests`` / ``inflight_tokens``: the scheduler's own accounting between scrapes.
"""

_SCRAPED: Final = frozenset(
    {"waiting", "running", "kv_usage_frac", "kv_blocks_total", "block_size_tokens", "max_loras"}
)
_INITIAL_CAPACITY: Final = 16
_MAX_CACHED_ADAPTER_SETS: Final = 4096
_OTHER_COLUMNS: Final = (
    "generation",
    "is_alive",
    "is_healthy",
    "role",
    "active_adapters",
    "waiting_adapters",
)


@attrs.frozen
class EndpointHandle:
    """A (row, generation) pair naming one endpoint's row at one point in time."""

    row: int
    generation: int


RemovalListener = Callable[[int, Endpoint], None]


class EndpointTable:
    """Struct-of-arrays state of every endpoint in the pool.

    Args:
        clock: time source for ``last_update_s`` (seconds; monotonic by default; the
            simulator passes its own clock).
        capacity: initial number of rows.
    """

    waiting: npt.NDArray[np.float64]
    running: npt.NDArray[np.float64]
    kv_usage_frac: npt.NDArray[np.float64]
    kv_blocks_total: npt.NDArray[np.float64]
    block_size_tokens: npt.NDArray[np.float64]
    max_loras: npt.NDArray[np.float64]
    num_adapters: npt.NDArray[np.float64]
    last_update_s: npt.NDArray[np.float64]
    inflight_requests: npt.NDArray[np.float64]
    inflight_tokens: npt.NDArray[np.float64]
    generation: npt.NDArray[np.uint32]
    is_alive: npt.NDArray[np.bool_]
    is_healthy: npt.NDArray[np.bool_]
    role: npt.NDArray[np.int8]
    active_adapters: npt.NDArray[np.uint8]
    waiting_adapters: npt.NDArray[np.uint8]

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = _INITIAL_CAPACITY,
    ) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self._capacity = 0
        self._endpoints: list[Endpoint | None] = []
        self._row_by_name: dict[str, int] = {}
        self._free_rows: list[int] = []  # min-heap: reuse low rows first, keeps it compact
        self._high_water = 0  # rows [0, high_water) have been used at least once
        self._adapter_ids: dict[str, int] = {}
        self._adapter_names: list[str] = []
        self._bits_by_set: dict[frozenset[str], tuple[npt.NDArray[np.uint8], int]] = {}
        self._candidates: Candidates | None = None
        self._removal_listeners: list[RemovalListener] = []
        self.version = 0
        """Bumped on every structural or health change (cache key for derived masks)."""
        self._allocate(max(1, capacity), adapter_bytes=1)

    # ----------------------------------------------------------------- structure
    def add(self, endpoint: Endpoint) -> EndpointHandle:
        """Add a new endpoint (healthy, no metrics yet) and return its handle.

        Raises:
            ValueError: an endpoint with this name is already in the table.
        """
        with self.lock:
            if endpoint.name in self._row_by_name:
                raise ValueError(
                    f"endpoint {endpoint.name!r} is already in the table; use upsert()"
                )
            if self._free_rows:
                row = heapq.heappop(self._free_rows)
            else:
                if self._high_water == self._capacity:
                    self._grow(2 * self._capacity)
                row = self._high_water
                self._high_water += 1
            self._endpoints[row] = endpoint
            self._row_by_name[endpoint.name] = row
            self._reset_row(row)
            self.is_alive[row] = True
            self.is_healthy[row] = True
            self.role[row] = int(endpoint.role)
            self._changed()
            return EndpointHandle(row, int(self.generation[row]))

    def upsert(self, endpoint: Endpoint) -> EndpointHandle:
        """Add ``endpoint``, or replace the metadata of the endpoint with its name.

        Metrics and accounting of an existing row are kept.
        """
        with self.lock:
            row = self._row_by_name.get(endpoint.name)
            if row is None:
                return self.add(endpoint)
            self._endpoints[row] = endpoint
            self.role[row] = int(endpoint.role)
            self._changed()
            return EndpointHandle(row, int(self.generation[row]))

    def remove(self, name: str) -> bool:
        """Remove the endpoint called ``name``; return whether it was present.

        Removal listeners run first (with the row still intact), then the row is
        cleared, its generation bumped and the row freed for reuse.
        """
        with self.lock:
            row = self._row_by_name.get(name)
            if row is None:
                return False
            endpoint = self._endpoints[row]
            assert endpoint is not None
            for listener in self._removal_listeners:
                listener(row, endpoint)
            del self._row_by_name[name]
            self._endpoints[row] = None
            self._reset_row(row)
            self.generation[row] += np.uint32(1)
            heapq.heappush(self._free_rows, row)
            self._changed()
            return True

    def sync(self, endpoints: Iterable[Endpoint]) -> None:
        """Make the table hold exactly ``endpoints`` (discovery's desired state)."""
        with self.lock:
            wanted = {e.name: e for e in endpoints}
            for name in [n for n in self._row_by_name if n not in wanted]:
                self.remove(name)
            for endpoint in wanted.values():
                current = self.get(endpoint.name)
                if current != endpoint:
                    self.upsert(endpoint)

    def on_remove(self, listener: RemovalListener) -> None:
        """Call ``listener(row, endpoint)`` before an endpoint's row is released.

        Plugins that keep per-endpoint state (prefix index, in-flight counters) use it
        to release that state.
        """
        self._removal_listeners.append(listener)

    def set_healthy(self, name: str, healthy: bool) -> None:
        """Mark an endpoint (un)healthy; unhealthy endpoints are not candidates."""
        with self.lock:
            row = self._require(name)
            if bool(self.is_healthy[row]) != healthy:
                self.is_healthy[row] = healthy
                self._changed()

    # ------------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self._row_by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._row_by_name

    def __iter__(self) -> Iterator[Endpoint]:
        """Endpoints in row order."""
        for row in sorted(self._row_by_name.values()):
            endpoint = self._endpoints[row]
            assert endpoint is not None
            yield endpoint

    @property
    def capacity(self) -> int:
        """Rows allocated (columns are at least this long)."""
        return self._capacity

    def row(self, name: str) -> int:
        """Row of the endpoint called ``name``.

        Raises:
            KeyError: no such endpoint.
        """
        return self._require(name)

    def get(self, name: str) -> Endpoint | None:
        """The endpoint called ``name``, or ``None``."""
        row = self._row_by_name.get(name)
        return None if row is None else self._endpoints[row]

    def endpoint_at(self, row: int) -> Endpoint:
        """The endpoint at ``row``.

        Raises:
            LookupError: the row is free.
        """
        endpoint = self._endpoints[row] if 0 <= row < self._capacity else None
        if endpoint is None:
            raise LookupError(f"row {row} holds no endpoint")
        return endpoint

    def endpoint_or_none(self, row: int) -> Endpoint | None:
        """The endpoint at ``row``, or ``None`` when the row is free or out of range."""
        return self._endpoints[row] if 0 <= row < self._capacity else None

    def handle(self, name: str) -> EndpointHandle:
        """A handle on the endpoint's current row."""
        row = self._require(name)
        return EndpointHandle(row, int(self.generation[row]))

    def is_current(self, handle: EndpointHandle) -> bool:
        """Whether ``handle`` still names a live endpoint (its row was not reused)."""
        row = handle.row
        return (
            0 <= row < self._capacity
            and bool(self.is_alive[row])
            and int(self.generation[row]) == handle.generation
        )

    def candidates(self) -> Candidates:
        """Rows of every live, healthy endpoint, ascending (int32, cached).

        The array is shared until the next structural change: do not modify it. (It is
        not flagged read-only because Numba compiles a second specialisation of every
        kernel for read-only arrays.)
        """
        cached = self._candidates
        if cached is None:
            version = self.version
            mask = self.is_alive[: self._high_water] & self.is_healthy[: self._high_water]
            cached = np.flatnonzero(mask).astype(np.int32)
            if version == self.version:  # cache only what no concurrent change outdated
                self._candidates = cached
        return cached

    def candidates_for(self, subset: Collection[str] | None) -> Candidates:
        """Candidates restricted to the gateway's subset hint (matched by IP only, as GIE).

        ``None`` means no hint (every candidate); an empty collection means none.
        """
        base = self.candidates()
        if subset is None:
            return base
        ips = {strip_port(s) for s in subset}
        keep = [r for r in base.tolist() if self._endpoint(r).address in ips]
        return np.asarray(keep, dtype=np.int32)

    # ----------------------------------------------------------------- metrics
    def update_metrics(
        self,
        rows: npt.ArrayLike,
        *,
        now_s: float | None = None,
        **columns: npt.ArrayLike,
    ) -> None:
        """Bulk-write scraped metric columns for ``rows`` and stamp ``last_update_s``.

        Args:
            rows: table rows (scalar or array).
            now_s: update time; the table clock when omitted.
            **columns: any of ``waiting``, ``running``, ``kv_usage_frac``,
                ``kv_blocks_total``, ``block_size_tokens``, ``max_loras``: a scalar or an
                array as long as ``rows``.

        Raises:
            KeyError: an unknown column name.
        """
        idx = np.asarray(rows, dtype=np.intp)
        for key, values in columns.items():
            if key not in _SCRAPED:
                raise KeyError(f"not a scraped metric column: {key!r} (one of {sorted(_SCRAPED)})")
            getattr(self, key)[idx] = values
        self.last_update_s[idx] = self.clock() if now_s is None else now_s

    def set_endpoint_metrics(
        self, name: str, *, now_s: float | None = None, **columns: float
    ) -> None:
        """Write metric columns of one endpoint by name (see :meth:`update_metrics`)."""
        self.update_metrics(self._require(name), now_s=now_s, **columns)

    # ------------------------------------------------------------------ adapters
    def intern_adapter(self, adapter: str) -> int:
        """The adapter's id, assigning the next free one on first sight."""
        adapter_id = self._adapter_ids.get(adapter)
        if adapter_id is None:
            adapter_id = len(self._adapter_names)
            self._adapter_ids[adapter] = adapter_id
            self._adapter_names.append(adapter)
            needed = adapter_id // 8 + 1
            if needed > self.active_adapters.shape[1]:
                self._widen_adapters(max(needed, 2 * self.active_adapters.shape[1]))
        return adapter_id

    def adapter_id(self, adapter: str | None) -> int:
        """The adapter's id, or -1 when no endpoint ever reported it."""
        if adapter is None:
            return -1
        return self._adapter_ids.get(adapter, -1)

    def set_adapters(
        self,
        row: int,
        active: Iterable[str],
        waiting: Iterable[str],
        *,
        max_loras: float | None = None,
    ) -> None:
        """Replace one row's running and waiting LoRA adapter sets."""
        active_bits, num_active = self._adapter_bits(active)
        waiting_bits, num_waiting = self._adapter_bits(waiting)
        self.active_adapters[row] = active_bits
        self.waiting_adapters[row] = waiting_bits
        self.num_adapters[row] = num_active + num_waiting
        if max_loras is not None:
            self.max_loras[row] = max_loras

    def _adapter_bits(self, adapters: Iterable[str]) -> tuple[npt.NDArray[np.uint8], int]:
        """The bitset of a set of adapter names and its size (sets repeat: cached)."""
        key = adapters if isinstance(adapters, frozenset) else frozenset(adapters)
        hit = self._bits_by_set.get(key)
        if hit is None or hit[0].shape[0] != self.active_adapters.shape[1]:
            ids = {self.intern_adapter(a) for a in key}  # may widen the bitsets
            bits = _bits(ids, self.active_adapters.shape[1])
            bits.flags.writeable = False
            if len(self._bits_by_set) >= _MAX_CACHED_ADAPTER_SETS:
                self._bits_by_set.clear()
            hit = self._bits_by_set[key] = (bits, len(ids))
        return hit

    def adapters_of(self, row: int) -> tuple[frozenset[str], frozenset[str]]:
        """(running, waiting) adapter names of ``row``."""
        return (
            frozenset(self._names_in(self.active_adapters[row])),
            frozenset(self._names_in(self.waiting_adapters[row])),
        )

    # ------------------------------------------------------------------ helpers
    def metrics_of(self, name: str) -> Mapping[str, float]:
        """Every float column of one endpoint (for logs, debugging and tests)."""
        row = self._require(name)
        return {col: float(getattr(self, col)[row]) for col in METRIC_COLUMNS}

    def role_of(self, row: int) -> Role:
        """Role of the endpoint at ``row``."""
        return Role(int(self.role[row]))

    def _require(self, name: str) -> int:
        try:
            return self._row_by_name[name]
        except KeyError:
            raise KeyError(f"no endpoint named {name!r} in the table") from None

    def _endpoint(self, row: int) -> Endpoint:
        endpoint = self._endpoints[row]
        assert endpoint is not None, f"row {row} is free"
        return endpoint

    def _changed(self) -> None:
        self._candidates = None
        self.version += 1

    def _reset_row(self, row: int) -> None:
        for col in METRIC_COLUMNS:
            getattr(self, col)[row] = 0.0
        self.last_update_s[row] = -np.inf
        self.is_alive[row] = False
        self.is_healthy[row] = False
        self.role[row] = int(Role.UNSET)
        self.active_adapters[row] = 0
        self.waiting_adapters[row] = 0

    def _allocate(self, capacity: int, adapter_bytes: int) -> None:
        for col in METRIC_COLUMNS:
            setattr(self, col, np.zeros(capacity, dtype=np.float64))
        self.last_update_s[:] = -np.inf
        self.generation = np.zeros(capacity, dtype=np.uint32)
        self.is_alive = np.zeros(capacity, dtype=np.bool_)
        self.is_healthy = np.zeros(capacity, dtype=np.bool_)
        self.role = np.zeros(capacity, dtype=np.int8)
        self.active_adapters = np.zeros((capacity, adapter_bytes), dtype=np.uint8)
        self.waiting_adapters = np.zeros((capacity, adapter_bytes), dtype=np.uint8)
        self._endpoints = [None] * capacity
        self._capacity = capacity

    def _grow(self, capacity: int) -> None:
        # Build every new column completely, then swap them in: a reader never sees a
        # zeroed column or a missing endpoint while the table grows.
        n = self._capacity
        fresh: dict[str, npt.NDArray[Any]] = {}
        for name in (*METRIC_COLUMNS, *_OTHER_COLUMNS):
            old = getattr(self, name)
            array = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            array[:n] = old
            fresh[name] = array
        fresh["last_update_s"][n:] = -np.inf
        endpoints = [*self._endpoints, *([None] * (capacity - n))]
        for name, array in fresh.items():
            setattr(self, name, array)
        self._endpoints = endpoints
        self._capacity = capacity

    def _widen_adapters(self, num_bytes: int) -> None:
        for name in ("active_adapters", "waiting_adapters"):
            old = getattr(self, name)
            wide = np.zeros((self._capacity, num_bytes), dtype=np.uint8)
            wide[:, : old.shape[1]] = old
            setattr(self, name, wide)

    def _names_in(self, bits: npt.NDArray[np.uint8]) -> Iterator[str]:
        for adapter_id in np.flatnonzero(np.unpackbits(bits, bitorder="little")).tolist():
            yield self._adapter_names[adapter_id]


def _bits(ids: Collection[int], num_bytes: int) -> npt.NDArray[np.uint8]:
    flags = np.zeros(num_bytes * 8, dtype=np.uint8)
    flags[list(ids)] = 1
    return np.packbits(flags, bitorder="little")
