"""The approximate prefix index of :mod:`inference_sched.prefix.index`, shared through Redis.

Same semantics as :class:`~inference_sched.prefix.index.PrefixIndex` (GIE's indexer), keyed
by endpoint *name* instead of table row: a per-endpoint LRU of block hashes with a
capacity fixed when the LRU is created, each hash -> the endpoints holding it, the
counting (GIE) and strict prefix matches. Hashing stays local; a match is one script
call, an add one more (several adds and a match share one round trip,
:meth:`RedisPrefixIndex.add_and_match`).

An add inserts its hashes in order with increasing use stamps, then trims the LRU to its
capacity from the least recently used end. An LRU always holds the ``capacity`` most
recently used distinct hashes, so trimming once after the batch leaves exactly what
``PrefixIndex`` leaves after evicting one hash per insert.

Endpoints leave by expiry, not by one replica's table: a replica that drops an endpoint
may be the only one that does (discovery lag, a subset). Every replica's maintenance
thread marks the endpoints of its table as *seen*; an endpoint that no replica has seen
(nor added to) for ``endpointTtlMs`` is forgotten, in chunks, by whichever replica
notices first. :meth:`RedisPrefixIndex.forget_endpoint` forgets one at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from inference_sched.state.redis.link import Call, RedisLink, names_blob
from inference_sched.state.redis.params import RedisPrefixParams

__all__ = ["HashEncoding", "RedisPrefixIndex"]

HashEncoding = Literal["binary", "decimal"]

_FORGET_CHUNK: Final = 1000
"""LRU entries one forget call drops (about a millisecond of Redis time)."""
_MAX_STALE_PER_TICK: Final = 64


def _split_ids(raw: bytes) -> list[bytes]:
    return [raw[i : i + 4] for i in range(0, len(raw), 4)]


def _match_counts(
    ids_raw: bytes, lens_raw: bytes, *, strict: bool
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """(endpoint ids, counts) from the match script's reply: the holders of each leading
    block, concatenated, and each block's holder count.

    Counting (GIE): the blocks each id appears in. Strict: the length of each id's run
    of consecutive leading blocks (an id appears at most once per block).
    """
    ids = np.frombuffer(ids_raw, dtype="<u4").astype(np.uint32)
    if len(ids) == 0:
        return ids, np.empty(0, dtype=np.int64)
    if not strict:
        uniq, counts = np.unique(ids, return_counts=True)
        return uniq, counts.astype(np.int64)
    lens = np.frombuffer(lens_raw, dtype="<u2")
    block = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    order = np.lexsort((block, ids))  # by id, then block
    ids_s, block_s = ids[order], block[order]
    starts = np.flatnonzero(np.r_[True, ids_s[1:] != ids_s[:-1]])
    sizes = np.diff(np.r_[starts, len(ids_s)])
    k = np.arange(len(ids_s)) - np.repeat(starts, sizes)  # position among the id's blocks
    # An id's run ends at its first block that is not the k-th block.
    first_gap = np.where(block_s != k, k, np.repeat(sizes, sizes))
    return ids_s[starts], np.minimum.reduceat(first_gap, starts).astype(np.int64)


class RedisPrefixIndex:
    """Block hash -> endpoint names, with a bounded LRU per endpoint, in Redis.

    Args:
        link: the connection (circuit breaker, scripts, maintenance thread).
        endpoint_ttl_ms: forget endpoints unseen by every replica for this long.
        table_names: the names in this replica's table (called on the maintenance
            thread); ``None`` marks nothing seen (tests, benchmarks).
        encoding: how hashes are written in keys: 8 raw little-endian bytes (the
            default: measured faster, ``benchmarks/bench_redis.py``) or decimal digits.

    Decision-path methods (:meth:`match`, :meth:`add_and_match`, :meth:`add_many`)
    raise :class:`~inference_sched.state.redis.link.Unavailable` when Redis does not
    answer within the link's timeout; inspection methods raise redis-py's errors.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        endpoint_ttl_ms: int = 120_000,
        table_names: Callable[[], Iterable[str]] | None = None,
        encoding: HashEncoding = "binary",
    ) -> None:
        assert sys.byteorder == "little", "hashes are sent as little-endian bytes"
        self.link = link
        self._ttl_ms = int(endpoint_ttl_ms)
        self._table_names = table_names
        self._enc = b"b" if encoding == "binary" else b"d"
        self._names_by_id: dict[int, str] = {}
        self._hash_prefix = np.frombuffer(link.prefix + b"h:", dtype=np.uint8)
        self._key_width = len(self._hash_prefix) + 8
        self._epoch = b""
        self.num_forgotten = 0
        """Endpoints forgotten by this replica's expiry."""
        link.add_task(min(self._ttl_ms / 4000.0, 30.0), self._mark_seen_and_expire)
        link.start()

    @classmethod
    def connect(
        cls,
        params: RedisPrefixParams,
        table_names: Callable[[], Iterable[str]] | None = None,
        *,
        encoding: HashEncoding = "binary",
    ) -> RedisPrefixIndex:
        """A shared index on a new link (``role`` ``prefix``).

        Raises:
            ConfigError: the ``[redis]`` extra is missing.
        """
        link = RedisLink(params, role="prefix")
        return cls(
            link, endpoint_ttl_ms=params.endpoint_ttl_ms, table_names=table_names, encoding=encoding
        )

    def close(self) -> None:
        """Stop the maintenance thread and close the connections (the data stays)."""
        self.link.close()

    # ------------------------------------------------------------------ decision path
    def encode(self, hashes: npt.NDArray[np.uint64]) -> bytes:
        """``hashes`` as the scripts take them."""
        if self._enc == b"b":
            return np.ascontiguousarray(hashes, dtype=np.uint64).tobytes()
        return ",".join(map(str, np.asarray(hashes, dtype=np.uint64).tolist())).encode()

    def add_call(self, hashes: npt.NDArray[np.uint64], endpoint: str, capacity: int) -> Call:
        """The script call of :meth:`add` (to batch it with others)."""
        return ("add", (endpoint, int(capacity), self._enc, self.encode(hashes)))

    def match_call(self, hashes: npt.NDArray[np.uint64], *, strict: bool) -> Call:
        """The script call of :meth:`match`."""
        mode = b"s" if strict else b"c"
        if self._enc != b"b":
            return ("match", (mode, self._enc, self.encode(hashes)))
        # The blocks' keys, fixed width, built here in one array: cheaper than in Lua.
        n = len(hashes)
        keys = np.empty((n, self._key_width), dtype=np.uint8)
        keys[:, : len(self._hash_prefix)] = self._hash_prefix
        keys[:, len(self._hash_prefix) :] = (
            np.ascontiguousarray(hashes, dtype=np.uint64).view(np.uint8).reshape(n, 8)
        )
        return ("match", (mode, b"k", keys.tobytes(), self._key_width))

    def add(self, hashes: npt.NDArray[np.uint64], endpoint: str, capacity: int) -> int:
        """Record that ``endpoint`` now holds ``hashes`` (in prompt order); the number of
        hashes its LRU evicted. ``capacity`` applies only when the LRU is created."""
        return int(self.link.calls([self.add_call(hashes, endpoint, capacity)])[0])

    def add_many(self, adds: Sequence[tuple[npt.NDArray[np.uint64], str, int]]) -> None:
        """:meth:`add` each ``(hashes, endpoint, capacity)`` in order, one round trip."""
        if adds:
            self.link.calls([self.add_call(h, e, c) for h, e, c in adds])

    def match(self, hashes: npt.NDArray[np.uint64], *, strict: bool = False) -> dict[str, int]:
        """Per endpoint name, the count of :meth:`PrefixIndex.match_counting` (or of
        ``match_prefix`` when ``strict``); endpoints matching nothing are left out."""
        return self.add_and_match((), hashes, strict=strict)

    def add_and_match(
        self,
        adds: Sequence[tuple[npt.NDArray[np.uint64], str, int]],
        hashes: npt.NDArray[np.uint64],
        *,
        strict: bool = False,
    ) -> dict[str, int]:
        """:meth:`add_many` then :meth:`match`, in one round trip (the match sees the adds)."""
        if len(hashes) == 0 and not adds:
            return {}
        calls = [self.add_call(h, e, c) for h, e, c in adds]
        calls.append(self.match_call(hashes, strict=strict))
        ids_raw, lens_raw, epoch = self.link.calls(calls)[-1]
        ids, counts = _match_counts(ids_raw, lens_raw, strict=strict)
        names = self._names_of(ids, epoch)
        return {
            names[i]: c
            for i, c in zip(ids.tolist(), counts.tolist(), strict=True)
            if c > 0 and i in names
        }

    def _names_of(self, ids: npt.NDArray[np.uint32], epoch: bytes) -> dict[int, str]:
        """Endpoint names of ``ids``: from the cache (ids are never reused within an
        epoch), unknown ones in one more round trip (once per endpoint and replica)."""
        if epoch != self._epoch:  # Redis restarted empty or the namespace was cleared
            self._names_by_id.clear()
            self._epoch = epoch
        known = self._names_by_id
        missing = [i for i in ids.tolist() if i not in known]
        if missing:
            packed = np.asarray(missing, dtype="<u4").tobytes()
            now, names = self.link.calls([("names", (packed,))])[0]
            if now == epoch:  # else the id space changed between the calls: skip them
                for i, raw in zip(missing, names, strict=True):
                    if raw is not None:  # forgotten since the match: left out
                        known[i] = raw.decode()
        return known

    # ------------------------------------------------------------------ maintenance
    def forget_endpoint(self, endpoint: str) -> int:
        """Drop every entry and the LRU of ``endpoint`` for all replicas; the number of
        entries dropped. For an endpoint known to be gone for good (expiry does the
        same after ``endpointTtlMs``).

        Raises:
            Unavailable: Redis did not answer.
        """
        return self._forget(endpoint, b"")

    def _forget(self, endpoint: str, cutoff: bytes) -> int:
        dropped = 0
        while True:  # in chunks: one large LRU must not stall Redis for everyone
            done, left = self.link.maintenance([("forget", (endpoint, cutoff, _FORGET_CHUNK))])[0]
            dropped += int(done)
            if int(left) <= 0:
                return dropped

    def _mark_seen_and_expire(self) -> None:
        names = names_blob(self._table_names())[1] if self._table_names is not None else b""
        reply = self.link.maintenance([("seen", (names, self._ttl_ms, _MAX_STALE_PER_TICK))])[0]
        cutoff = str(int(reply[0])).encode()
        for raw in reply[1:]:
            self._forget(raw.decode(), cutoff)
            self.num_forgotten += 1

    def expire_now(self) -> None:
        """Run the seen-marking and expiry now, on the caller's thread (tests).

        Raises:
            Unavailable: Redis did not answer.
        """
        self._mark_seen_and_expire()

    # ------------------------------------------------------------------ inspection
    def _key(self, kind: str, name: bytes) -> bytes:
        return self.link.prefix + kind.encode() + b":" + name

    def _hash_name(self, h: int) -> bytes:
        return self.encode(np.asarray([h], dtype=np.uint64))

    def _decode(self, raw: bytes) -> int:
        if self._enc == b"b":
            return int(np.frombuffer(raw, dtype=np.uint64)[0])
        return int(raw)

    def lru_order(self, endpoint: str) -> list[int]:
        """``endpoint``'s hashes from least to most recently used."""
        members = self.link.command("ZRANGE", self._key("lru", endpoint.encode()), 0, -1)
        return [self._decode(m) for m in members]

    def endpoint_size(self, endpoint: str) -> int:
        """Hashes in ``endpoint``'s LRU (0 if it has none)."""
        return int(self.link.command("ZCARD", self._key("lru", endpoint.encode())))

    def endpoint_capacity(self, endpoint: str) -> int:
        """Capacity of ``endpoint``'s LRU (0 if it has none)."""
        raw = self.link.command("HGET", self.link.prefix + b"eps", endpoint)
        return 0 if raw is None else int(raw)

    def endpoints(self) -> list[str]:
        """Endpoints with an LRU, sorted."""
        return sorted(n.decode() for n in self.link.command("HKEYS", self.link.prefix + b"eps"))

    def holders(self, h: int) -> set[str]:
        """Endpoints holding hash ``h``."""
        raw = self.link.command("GET", self._key("h", self._hash_name(h)))
        if raw is None:
            return set()
        names = self.link.command("HMGET", self.link.prefix + b"names", *_split_ids(raw))
        return {n.decode() for n in names if n is not None}

    def size(self) -> int:
        """(hash, endpoint) entries over every endpoint."""
        return sum(self.endpoint_size(e) for e in self.endpoints())
