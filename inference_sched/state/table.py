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
  ``k // 8``) over an interned adapter table. Scraped pages name the adapters, so the
  table is bounded (``max_adapters`` names; more are dropped and counted in
  ``adapters_dropped``) and reference-counted: a name no row advertises any more gives
  its id back, lowest ids reused first (docs/reliability.md).

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
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from inference_sched.state.attributes import EndpointAttributes
from inference_sched.state.endpoint import Candidates, Endpoint, Role, strip_port

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_ADAPTERS", "EndpointHandle", "EndpointTable", "METRIC_COLUMNS"]

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
_MAX_CACHED_ADAPTER_NAMES: Final = 65536
"""Names in all cached adapter sets together; a larger set is never cached."""
DEFAULT_MAX_ADAPTERS: Final = 4096
"""Distinct LoRA adapter names a table holds by default (bitsets of 512 bytes a row)."""
_OTHER_COLUMNS: Final = (
    "generation",
    "is_alive",
    "is_healthy",
    "role",
    "active_adapters",
    "waiting_adapters",
)


class _AdapterSet(NamedTuple):
    """An adapter set as interned: its ids, the names dropped (table full), its bitset."""

    ids: tuple[int, ...]
    dropped: int
    bits: npt.NDArray[np.uint8] | None


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
        max_adapters: distinct LoRA adapter names held at most; a row's names past it
            are dropped from its sets (counted in :attr:`adapters_dropped`).

    Raises:
        ValueError: ``max_adapters`` < 1.
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
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
    ) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be >= 1, got {max_adapters}")
        self.clock = clock
        self.max_adapters = max_adapters
        """Distinct adapter names held at most."""
        self.adapters_dropped = 0
        """Adapter names left out of a row's sets because the table was full (counted
        per :meth:`set_adapters` call, and per refused :meth:`intern_adapter`)."""
        self.lock = threading.RLock()
        self._capacity = 0
        self._endpoints: list[Endpoint | None] = []
        self._row_by_name: dict[str, int] = {}
        self._free_rows: list[int] = []  # min-heap: reuse low rows first, keeps it compact
        self._high_water = 0  # rows [0, high_water) have been used at least once
        self._adapter_ids: dict[str, int] = {}
        self._adapter_names: list[str | None] = []  # by id; None: a free id
        self._adapter_refs: list[int] = []  # by id: row sets (running, waiting) holding it
        self._free_adapter_ids: list[int] = []  # min-heap: reuse low ids, keeps bitsets narrow
        self._sets: dict[frozenset[str], _AdapterSet] = {}  # adapter sets seen (they repeat)
        self._cached_names = 0  # names in the keys of _sets
        self._row_sets: dict[int, tuple[_AdapterSet, _AdapterSet]] = {}  # (running, waiting)
        self._candidates: Candidates | None = None
        self._removal_listeners: list[RemovalListener] = []
        self._upsert_listeners: list[RemovalListener] = []
        self.attributes = EndpointAttributes()
        """Data-layer attributes by row (:mod:`inference_sched.state.attributes`); a
        row's attributes are dropped when its endpoint leaves the table."""
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
            self._notify_upsert(row, endpoint)
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
            self._notify_upsert(row, endpoint)
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
            self._release_adapters(row)
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

    def on_upsert(self, listener: RemovalListener) -> None:
        """Call ``listener(row, endpoint)`` after an endpoint is added or its metadata
        replaced (under the table lock): llm-d-router's endpoint notifications, which
        label-reading extractors (``topology-extractor``) turn into attributes. A
        listener that raises is logged and the others still run."""
        self._upsert_listeners.append(listener)

    def _notify_upsert(self, row: int, endpoint: Endpoint) -> None:
        for listener in self._upsert_listeners:
            try:
                listener(row, endpoint)
            except Exception:  # a broken listener must not break discovery
                log.exception("endpoint listener %r failed on %s", listener, endpoint.name)

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
    @property
    def num_adapter_names(self) -> int:
        """Distinct adapter names held (at most :attr:`max_adapters`)."""
        return len(self._adapter_ids)

    def intern_adapter(self, adapter: str) -> int:
        """The adapter's id, assigning the lowest free one on first sight.

        An id no row holds is given back when a row stops advertising the name, or when
        the table is full and needs room.

        Returns:
            The id, or -1 when the table holds :attr:`max_adapters` names every one of
            which some row advertises (counted in :attr:`adapters_dropped`).
        """
        with self.lock:
            adapter_id = self._adapter_ids.get(adapter)
            if adapter_id is not None:
                return adapter_id
            if self._num_free_ids() == 0:
                self._reclaim(frozenset())
            adapter_id = self._new_id(adapter)
            if adapter_id < 0:
                self.adapters_dropped += 1
            return adapter_id

    def adapter_id(self, adapter: str | None) -> int:
        """The adapter's id, or -1 when no endpoint reports it (or it was dropped)."""
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
        """Replace one row's running and waiting LoRA adapter sets.

        ``num_adapters`` counts every name given (the server's slots are taken whether
        or not the table holds the name). Names no row advertises any more are given
        back; when the table is full, the names that find no id are left out of the sets
        (in sorted order: the first ones are kept) and counted in
        :attr:`adapters_dropped`. A name left out stays out of this row until its sets
        are written again, even if room appears meanwhile.
        """
        active_key = active if isinstance(active, frozenset) else frozenset(active)
        waiting_key = waiting if isinstance(waiting, frozenset) else frozenset(waiting)
        with self.lock:
            self.num_adapters[row] = len(active_key) + len(waiting_key)
            if max_loras is not None:
                self.max_loras[row] = max_loras
            running = self._sets.get(active_key)
            queued = self._sets.get(waiting_key)
            current = self._row_sets.get(row)
            if current is not None and current[0] is running and current[1] is queued:
                # The row holds these very sets (no id freed since: that clears _sets).
                self.adapters_dropped += current[0].dropped + current[1].dropped
                return
            old_ids = (*current[0].ids, *current[1].ids) if current is not None else ()
            refs = self._adapter_refs
            for adapter_id in old_ids:
                refs[adapter_id] -= 1
            if running is None or queued is None:
                wanted = active_key | waiting_key
                unknown = sum(1 for a in wanted if a not in self._adapter_ids)
                if unknown > self._num_free_ids():
                    self._reclaim(wanted)  # ids no row holds, except the ones wanted here
                if running is None:
                    running = self._resolve(active_key)
                if queued is None:
                    queued = self._resolve(waiting_key)
            width = self.active_adapters.shape[1]  # final: resolving may have widened it
            running = self._with_bits(active_key, running, width)
            queued = self._with_bits(waiting_key, queued, width)
            assert running.bits is not None
            assert queued.bits is not None
            self.active_adapters[row] = running.bits
            self.waiting_adapters[row] = queued.bits
            self._row_sets[row] = (running, queued)
            for adapter_id in (*running.ids, *queued.ids):
                refs[adapter_id] += 1
            for adapter_id in old_ids:
                if refs[adapter_id] == 0 and self._adapter_names[adapter_id] is not None:
                    self._free_id(adapter_id)
            self.adapters_dropped += running.dropped + queued.dropped

    def _resolve(self, key: frozenset[str]) -> _AdapterSet:
        """Intern a set's names (sorted, so the names kept when full are stable)."""
        ids: list[int] = []
        for adapter in sorted(key):
            adapter_id = self._adapter_ids.get(adapter)
            if adapter_id is None:
                adapter_id = self._new_id(adapter)  # may widen the bitsets
            if adapter_id >= 0:
                ids.append(adapter_id)
        resolved = _AdapterSet(tuple(ids), len(key) - len(ids), None)
        if len(key) <= _MAX_CACHED_ADAPTER_NAMES:  # the cache holds the page's names
            if (
                len(self._sets) >= _MAX_CACHED_ADAPTER_SETS
                or self._cached_names + len(key) > _MAX_CACHED_ADAPTER_NAMES
            ):
                self._clear_sets()
            self._sets[key] = resolved
            self._cached_names += len(key)
        return resolved

    def _clear_sets(self) -> None:
        self._sets.clear()
        self._cached_names = 0

    def _with_bits(self, key: frozenset[str], resolved: _AdapterSet, width: int) -> _AdapterSet:
        """The set with its bitset at ``width`` bytes, cached in its place."""
        bits = resolved.bits
        if bits is None or bits.shape[0] != width:
            bits = _bits(resolved.ids, width)
            bits.flags.writeable = False
            cached = self._sets.get(key) is resolved
            resolved = resolved._replace(bits=bits)
            if cached:
                self._sets[key] = resolved
        return resolved

    def _num_free_ids(self) -> int:
        return len(self._free_adapter_ids) + self.max_adapters - len(self._adapter_names)

    def _new_id(self, adapter: str) -> int:
        """Give ``adapter`` the lowest free id (-1 when full), widening the bitsets."""
        if self._free_adapter_ids:
            adapter_id = heapq.heappop(self._free_adapter_ids)
            self._adapter_names[adapter_id] = adapter
        elif len(self._adapter_names) < self.max_adapters:
            adapter_id = len(self._adapter_names)
            self._adapter_names.append(adapter)
            self._adapter_refs.append(0)
        else:
            return -1
        self._adapter_ids[adapter] = adapter_id
        needed = adapter_id // 8 + 1
        width = self.active_adapters.shape[1]
        if needed > width:
            self._widen_adapters(min(max(needed, 2 * width), -(-self.max_adapters // 8)))
        return adapter_id

    def _free_id(self, adapter_id: int) -> None:
        """Forget the name of an id no row holds; cached sets may name it: dropped."""
        name = self._adapter_names[adapter_id]
        assert name is not None
        assert self._adapter_refs[adapter_id] == 0
        del self._adapter_ids[name]
        self._adapter_names[adapter_id] = None
        heapq.heappush(self._free_adapter_ids, adapter_id)
        self._clear_sets()

    def _reclaim(self, keep: frozenset[str]) -> None:
        """Free every id no row holds, except those of the names in ``keep``."""
        for adapter_id, name in enumerate(self._adapter_names):
            if name is not None and self._adapter_refs[adapter_id] == 0 and name not in keep:
                self._free_id(adapter_id)

    def _release_adapters(self, row: int) -> None:
        """Drop the row's adapter references (it leaves); free the ids nobody holds."""
        current = self._row_sets.pop(row, None)
        old_ids = (*current[0].ids, *current[1].ids) if current is not None else ()
        for adapter_id in old_ids:
            self._adapter_refs[adapter_id] -= 1
        for adapter_id in old_ids:
            if self._adapter_refs[adapter_id] == 0 and self._adapter_names[adapter_id] is not None:
                self._free_id(adapter_id)
        self.active_adapters[row] = 0
        self.waiting_adapters[row] = 0
        self.attributes.clear_row(row)

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
            name = self._adapter_names[adapter_id]
            if name is not None:  # a row holds only live ids; a racing reader may not
                yield name


def _bits(ids: Collection[int], num_bytes: int) -> npt.NDArray[np.uint8]:
    raw = bytearray(num_bytes)  # adapter k: bit k % 8 of byte k // 8
    for adapter_id in ids:
        raw[adapter_id >> 3] |= 1 << (adapter_id & 7)
    return np.frombuffer(raw, dtype=np.uint8)
