"""vLLM KV-cache events: the event types, a tolerant fast decoder and a matching encoder,
and what the other two frames of a message mean (topic, sequence number).

vLLM publishes an ``EventBatch`` per scheduler step (``vllm/distributed/kv_events.py``,
``vllm``: ``vllm/distributed/kv_events.py``): ``ts``, a list of ``BlockStored`` / ``BlockRemoved`` /
``AllBlocksCleared`` events and the ``data_parallel_rank``, as msgpack. The wire shape
has changed under every consumer, so :func:`decode_batch` accepts all of them:

* the batch as an array ``[ts, events, dp_rank]`` (``array_like=True``, up to v0.28) or
  a map ``{"ts", "events", "data_parallel_rank"}`` (later main);
* each event as a positional array ``["BlockStored", f1, f2, ...]`` (``array_like``) or a
  map ``{"type": "BlockStored", ...}`` (from vLLM PR #42892; v0.26-v0.28 send map events
  inside an array batch);
* fields missing at the end (older vLLM, or msgspec's ``omit_defaults``) read as their
  default; fields we do not know (newer vLLM: ``locality``, ``ownership`` ...) are
  ignored; an event whose tag we do not know is skipped and reported in
  :attr:`EventBatch.unknown_tags`, so a new event type does not cost the batch.

Anything else malformed raises :class:`~inference_sched.errors.DataError` whose message
names the field, e.g. ``events[2].block_hashes[5]: expected int or bytes, got 'x' (str)``.
Beyond the types, the decoder refuses what no index can take, so a decoded event never
breaks its consumer: ``block_size`` must fit an int32 (``[0, 2**31)``, vLLM's are 16 to
a few hundred) and ``extra_keys`` may hold only str, bytes, int, float, bool, nil and
arrays of them (a map or a msgpack ext type is not a key).

Hashes are normalised exactly as llm-d does, so one engine hash has one ``uint64``
whatever the producer's setting (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``): an int is
taken modulo 2**64 (a negative int64 becomes its unsigned value), bytes are read
big-endian from their last 8 bytes (vLLM's own int truncation), shorter bytes as if
left-padded with zeros.

``token_ids`` rule: empty (CPU-offload / tier-update events carry no tokens), or a whole
number of blocks (``len % block_size == 0``) covering at least every hash
(``len >= len(block_hashes) * block_size``). vLLM sends the tokens of the whole range of
newly full blocks but may name fewer hashes than blocks (null blocks of sliding-window
groups and blocks already cached are skipped, ``BlockPool.cache_full_blocks``), so the
stricter ``len == len(block_hashes) * block_size`` would reject real events.

The frames around the payload (``[topic, 8-byte big-endian seq, payload]``):
:func:`parse_topic` reads llm-d's ``kv@<pod>@<model>`` topics and
:class:`SequenceTracker` classifies each sequence number of a stream (the rules are in
:mod:`~inference_sched.prefix.precise.subscriber`, which acts on them). Neither needs
ZeroMQ.

Speed: the hot work is C (msgpack, ``array``, NumPy). An integer list is type-checked,
range-checked and converted in one ``array.array`` call and wrapped by NumPy without a
copy; only a list that fails (bytes hashes, mixed signs, a bad element) is walked in
Python, which also words the error. One consequence: a msgpack boolean inside a hash or
token array reads as 0/1, as Python's ``bool`` is an ``int``; no known producer sends
one there. Arrays are fresh per batch and owned by the receiver.
"""

from __future__ import annotations

import array
import enum
import importlib
import math
import reprlib
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from inference_sched.errors import DataError

__all__ = [
    "END_SEQ",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "EventBatch",
    "KVEvent",
    "Encoding",
    "SequenceTracker",
    "U32Array",
    "U64Array",
    "Verdict",
    "decode_batch",
    "encode_batch",
    "normalize_block_hash",
    "parse_topic",
]

_IMPORT_HINT: Final = "KV events need the [kvevents] extra: pip install 'inference-sched[kvevents]'"


def _import_msgpack() -> Any:
    """The ``msgpack`` module (untyped: ``Any`` at this boundary, no stubs needed)."""
    try:
        return importlib.import_module("msgpack")
    except ImportError as exc:
        raise ImportError(_IMPORT_HINT) from exc


_msgpack: Final = _import_msgpack()
_unpackb: Final = _msgpack.unpackb
_packb: Final = _msgpack.packb

_MASK64: Final = (1 << 64) - 1
_TOKEN_LIMIT: Final = 1 << 32
_BLOCK_SIZE_LIMIT: Final = 1 << 31
"""Block sizes are int32 in the index (vLLM's are 16 to a few hundred tokens)."""
_BLOCK_SIZE_EXPECTED: Final = "int in [0, 2**31)"

# ``array.array(code, list)`` converts a list of ints in C and raises TypeError for any
# other element (float, str, bytes, None, containers) and OverflowError out of range:
# the type check and the conversion in one pass, 4x faster than np.array on a list.
# np.asarray then wraps its buffer without a copy, the dtype read from its format.
_array: Final = array.array
_asarray: Final = np.asarray
_U32_CODE: Final = next(c for c in "IL" if array.array(c).itemsize == 4)
_U64_CODE: Final = "Q"
_I64_CODE: Final = "q"
_MISSING: Final[Any] = object()

U64Array: TypeAlias = npt.NDArray[np.uint64]
U32Array: TypeAlias = npt.NDArray[np.uint32]


def _frozen(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    values.flags.writeable = False
    return values


_EMPTY_U64: Final[U64Array] = _frozen(np.empty(0, dtype=np.uint64))
_EMPTY_U32: Final[U32Array] = _frozen(np.empty(0, dtype=np.uint32))


# ====================================================================== event types
def _arrays_equal(a: npt.NDArray[Any], b: object) -> bool:
    return isinstance(b, np.ndarray) and a.shape == b.shape and bool((a == b).all())


class BlockStored(NamedTuple):
    """Blocks became cached on ``medium`` (vLLM ``BlockStored``, fields in vLLM's order).

    ``block_hashes`` are engine hashes normalised to uint64, ``token_ids`` the tokens of
    the blocks (may be empty, see the module notes). The arrays are new for each decoded
    batch (empty ones: one shared read-only array). Equality compares arrays by value (a
    plain tuple's ``==`` would raise).
    """

    block_hashes: U64Array
    parent_block_hash: int | None
    token_ids: U32Array
    block_size: int
    lora_id: int | None = None
    """Deprecated by vLLM in favour of ``lora_name``."""
    medium: str | None = None
    """``"GPU"``, ``"CPU"``, ``"STORAGE"``...; None from producers older than the field."""
    lora_name: str | None = None
    extra_keys: tuple[tuple[Any, ...] | None, ...] | None = None
    """One entry per hash: None or the block's extra hash keys (LoRA, MM ids, salt)."""
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is BlockStored
            and _arrays_equal(self.block_hashes, other.block_hashes)
            and _arrays_equal(self.token_ids, other.token_ids)
            and self[1] == other[1]
            and self[3:] == other[3:]
        )

    def __ne__(self, other: object) -> bool:
        return not self == other


class BlockRemoved(NamedTuple):
    """Blocks were evicted from ``medium`` (vLLM ``BlockRemoved``)."""

    block_hashes: U64Array
    medium: str | None = None
    group_idx: int | None = None

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is BlockRemoved
            and _arrays_equal(self.block_hashes, other.block_hashes)
            and self[1:] == other[1:]
        )

    def __ne__(self, other: object) -> bool:
        return not self == other


class AllBlocksCleared(NamedTuple):
    """The engine dropped its whole prefix cache (every tier)."""


KVEvent: TypeAlias = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(NamedTuple):
    """One published batch: the engine's events of one scheduler step, in order."""

    ts: float
    """Publisher wall clock (``time.time()``), seconds."""
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None = None
    unknown_tags: tuple[str, ...] = ()
    """Tags of events skipped because this version does not know them."""


_TAGS: Final = ("BlockStored", "BlockRemoved", "AllBlocksCleared")
_STORED_FIELDS: Final = BlockStored._fields
_REMOVED_FIELDS: Final = BlockRemoved._fields
_STORED_FIRST_DEFAULTED: Final = _STORED_FIELDS.index("extra_keys")
_REMOVED_FIRST_DEFAULTED: Final = _REMOVED_FIELDS.index("group_idx")


# ====================================================================== errors
def _make_repr() -> reprlib.Repr:
    # Bounded in depth and size: a hostile payload nests ~1000 levels (plain repr() then
    # raises RecursionError) or holds huge lists (repr() would build megabytes).
    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxlist = shortener.maxdict = 4
    shortener.maxstring = shortener.maxother = shortener.maxlong = 48
    return shortener


_REPR: Final = _make_repr()


def _show(value: object) -> str:
    """``'x' (str)``: the value (shortened) and its type, for error messages."""
    text = _REPR.repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def _fail(source: str, path: str, expected: str, value: object = _MISSING) -> DataError:
    if value is _MISSING:
        return DataError(f"{path}: missing (expected {expected})", source=source)
    return DataError(f"{path}: expected {expected}, got {_show(value)}", source=source)


# ====================================================================== hashes
def normalize_block_hash(value: object) -> int:
    """One engine block hash as llm-d reads it: a uint64.

    Args:
        value: an int (any sign; taken modulo 2**64) or bytes (big-endian value of the
            last 8 bytes; shorter bytes as if left-padded with zeros).

    Returns:
        The hash in ``[0, 2**64)``.

    Raises:
        TypeError: ``value`` is neither int nor bytes (bool is refused).
    """
    if type(value) is int:
        return value & _MASK64
    if type(value) is bytes:
        return int.from_bytes(value[-8:], "big")
    raise TypeError(f"expected int or bytes, got {_show(value)}")


def _hash_array(values: object, source: str, index: int) -> U64Array:
    """A list of wire hashes as a uint64 array (bulk path for int lists)."""
    if type(values) is not list:
        raise _fail(source, f"events[{index}].block_hashes", "an array of int or bytes", values)
    if not values:
        return _EMPTY_U64
    try:
        return _asarray(_array(_U64_CODE, values))
    except OverflowError:  # negative int64 hashes (Go/old producers): two's complement
        try:
            return _asarray(_array(_I64_CODE, values)).view(np.uint64)
        except (OverflowError, TypeError):  # mixed signs / 64+ bits / bytes: one by one
            return _hash_walk(values, source, index)
    except TypeError:  # bytes hashes, or a bad element the walk will name
        return _hash_walk(values, source, index)


def _hash_walk(values: list[Any], source: str, index: int) -> U64Array:
    out = np.empty(len(values), dtype=np.uint64)
    for j, value in enumerate(values):
        kind = type(value)
        if kind is int or kind is bool:  # bool: as the bulk path reads it (module notes)
            out[j] = value & _MASK64
        elif kind is bytes:
            out[j] = int.from_bytes(value[-8:], "big")
        else:
            raise _fail(source, f"events[{index}].block_hashes[{j}]", "int or bytes", value)
    return out


def _parent_hash(value: Any, source: str, index: int) -> int | None:
    if value is None:
        return None
    kind = type(value)
    if kind is int:
        return int(value & _MASK64)
    if kind is bytes:
        return int.from_bytes(value[-8:], "big")
    raise _fail(source, f"events[{index}].parent_block_hash", "int, bytes or nil", value)


# ====================================================================== tokens
def _token_array(values: object, source: str, index: int) -> U32Array:
    if type(values) is not list:
        raise _fail(source, f"events[{index}].token_ids", "an array of int", values)
    if not values:
        return _EMPTY_U32
    try:
        return _asarray(_array(_U32_CODE, values))
    except (TypeError, OverflowError):
        pass  # the walk below names the first bad element
    for j, value in enumerate(values):
        if type(value) is not int and type(value) is not bool:
            raise _fail(source, f"events[{index}].token_ids[{j}]", "int", value)
        if not 0 <= value < _TOKEN_LIMIT:
            raise _fail(source, f"events[{index}].token_ids[{j}]", "int in [0, 2**32)", value)
    raise AssertionError("unreachable: the bulk conversion only fails on a bad element")


# ====================================================================== events
def _extra_keys(value: object, num_blocks: int, source: str, index: int) -> Any:
    """vLLM's per-block extra keys, arrays turned back into (hashable) tuples."""
    if value is None:
        return None
    path = f"events[{index}].extra_keys"
    if type(value) is not list:
        raise _fail(source, path, "an array (one entry per block) or nil", value)
    if len(value) != num_blocks:
        raise DataError(
            f"{path}: expected one entry per block hash ({num_blocks}), got {len(value)}",
            source=source,
        )
    out: list[tuple[Any, ...] | None] = []
    for j, entry in enumerate(value):
        if entry is None:
            out.append(None)
        elif type(entry) is list:
            try:
                out.append(_as_tuple(entry, source, f"{path}[{j}]"))
            except RecursionError:  # msgpack allows ~1000 levels, Python's stack fewer
                raise DataError(f"{path}[{j}]: nested too deeply", source=source) from None
        else:
            raise _fail(source, f"{path}[{j}]", "an array or nil", entry)
    return tuple(out)


_EXTRA_KEY_TYPES: Final = frozenset({str, bytes, int, float, bool, type(None)})
"""What an extra key may hold (besides arrays of them): what vLLM sends (LoRA names,
multimodal ``(identifier, offset)`` pairs, the cache salt, prompt-embedding hashes) and
what the index can fold into a key."""
_EXTRA_KEY_EXPECTED: Final = "str, bytes, int, float, bool, nil or an array"


def _as_tuple(items: list[Any], source: str, path: str) -> tuple[Any, ...]:
    """Arrays as (hashable) tuples, every leaf checked; ``path`` names ``items``."""
    allowed = _EXTRA_KEY_TYPES
    for x in items:
        if type(x) not in allowed:
            break
    else:
        return tuple(items)  # flat and valid: the common case, no per-item Python work
    out: list[Any] = []
    for k, x in enumerate(items):
        kind = type(x)
        if kind is list:
            out.append(_as_tuple(x, source, f"{path}[{k}]"))
        elif kind in allowed:
            out.append(x)
        else:
            raise _fail(source, f"{path}[{k}]", _EXTRA_KEY_EXPECTED, x)
    return tuple(out)


def _check_optional(
    source: str, index: int, names: Sequence[str], values: Sequence[object], kinds: str
) -> None:
    """Raise for the first optional field whose type is wrong (``kinds``: i = int, s = str)."""
    for name, value, kind in zip(names, values, kinds, strict=True):
        if value is None:
            continue
        if kind == "i" and type(value) is not int:
            raise _fail(source, f"events[{index}].{name}", "int or nil", value)
        if kind == "s" and type(value) is not str:
            raise _fail(source, f"events[{index}].{name}", "str or nil", value)


_STORED_OPTIONAL: Final = ("lora_id", "medium", "lora_name")
_STORED_TAIL: Final = ("group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window")


_STORED_REQUIRED: Final = (
    ("block_hashes", "an array of int or bytes"),
    ("token_ids", "an array of int"),
    ("block_size", _BLOCK_SIZE_EXPECTED),
)


def _block_stored(
    source: str,
    index: int,
    block_hashes: Any,
    parent_block_hash: Any,
    token_ids: Any,
    block_size: Any,
    lora_id: Any = None,
    medium: Any = None,
    lora_name: Any = None,
    extra_keys: Any = None,
    group_idx: Any = None,
    kind: Any = None,
    window: Any = None,
) -> BlockStored:
    """Check and build a BlockStored from its wire fields (``_MISSING``: absent in a map)."""
    if block_hashes is _MISSING or token_ids is _MISSING or block_size is _MISSING:
        values = (block_hashes, token_ids, block_size)
        name, expected = next(
            r for r, v in zip(_STORED_REQUIRED, values, strict=True) if v is _MISSING
        )
        raise _fail(source, f"events[{index}].{name}", expected)
    hashes = _hash_array(block_hashes, source, index)
    if parent_block_hash is not None:
        parent_block_hash = _parent_hash(parent_block_hash, source, index)
    tokens = _token_array(token_ids, source, index)
    if type(block_size) is not int or not 0 <= block_size < _BLOCK_SIZE_LIMIT:
        raise _fail(source, f"events[{index}].block_size", _BLOCK_SIZE_EXPECTED, block_size)
    num_tokens = len(tokens)
    if num_tokens and (
        block_size == 0 or num_tokens % block_size or num_tokens < len(hashes) * block_size
    ):
        raise DataError(
            f"events[{index}].token_ids: expected 0 tokens or a whole number of blocks of "
            f"block_size={block_size} covering all {len(hashes)} block hashes "
            f"(>= {len(hashes) * block_size}), got {num_tokens}",
            source=source,
        )
    if not (
        (lora_id is None or type(lora_id) is int)
        and (medium is None or type(medium) is str)
        and (lora_name is None or type(lora_name) is str)
        and (group_idx is None or type(group_idx) is int)
        and (kind is None or type(kind) is str)
        and (window is None or type(window) is int)
    ):
        _check_optional(source, index, _STORED_OPTIONAL, (lora_id, medium, lora_name), "iss")
        _check_optional(source, index, _STORED_TAIL, (group_idx, kind, window), "isi")
    if extra_keys is not None:
        extra_keys = _extra_keys(extra_keys, len(hashes), source, index)
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (a third of the cost of a
    # one-block event); every field is given, in order.
    return _new_tuple(
        BlockStored,
        (
            hashes, parent_block_hash, tokens, block_size, lora_id, medium, lora_name,
            extra_keys, group_idx, kind, window,
        ),
    )  # fmt: skip


def _block_removed(
    source: str, index: int, block_hashes: Any, medium: Any = None, group_idx: Any = None
) -> BlockRemoved:
    if block_hashes is _MISSING:
        raise _fail(source, f"events[{index}].block_hashes", "an array of int or bytes")
    hashes = _hash_array(block_hashes, source, index)
    if not (
        (medium is None or type(medium) is str) and (group_idx is None or type(group_idx) is int)
    ):
        _check_optional(source, index, ("medium", "group_idx"), (medium, group_idx), "si")
    return BlockRemoved(hashes, medium, group_idx)


_CLEARED: Final = AllBlocksCleared()
_STORED_PAD: Final[list[Any]] = [_MISSING, None, _MISSING, _MISSING]
"""Positional BlockStored cut short: a missing parent reads as None, the others fail."""
_new_tuple: Final = tuple.__new__


def _event(raw: Any, source: str, index: int, unknown: list[str]) -> KVEvent | None:
    """One wire event (array or map form), or None for an unknown tag (appended to
    ``unknown``)."""
    kind = type(raw)
    if kind is list:
        if not raw:
            raise _fail(source, f"events[{index}]", "[tag, fields...]", raw)
        tag = raw[0]
        if type(tag) is not str:
            raise _fail(source, f"events[{index}][0]", "an event tag (str)", tag)
        if tag == "BlockStored":
            if len(raw) < 5:  # the four fields before lora_id have no default in vLLM
                raw = raw + _STORED_PAD[len(raw) - 1 :]
            return _block_stored(source, index, *raw[1:12])
        if tag == "BlockRemoved":
            return _block_removed(source, index, *(raw[1:4] if len(raw) > 1 else [_MISSING]))
    elif kind is dict:
        tag = raw.get("type", _MISSING)
        if type(tag) is not str:
            raise _fail(source, f"events[{index}].type", "an event tag (str)", tag)
        get = raw.get
        if tag == "BlockStored":
            return _block_stored(
                source, index, get("block_hashes", _MISSING), get("parent_block_hash"),
                get("token_ids", _MISSING), get("block_size", _MISSING), get("lora_id"),
                get("medium"), get("lora_name"), get("extra_keys"), get("group_idx"),
                get("kv_cache_spec_kind"), get("kv_cache_spec_sliding_window"),
            )  # fmt: skip
        if tag == "BlockRemoved":
            return _block_removed(
                source, index, get("block_hashes", _MISSING), get("medium"), get("group_idx")
            )
    else:
        raise _fail(source, f"events[{index}]", "an array or a map", raw)
    if tag == "AllBlocksCleared":
        return _CLEARED
    unknown.append(tag)
    return None


_BATCH_EXPECTED: Final = {"ts": "a number (seconds)", "events": "an array of events"}


def decode_batch(payload: bytes, *, source: str = "") -> EventBatch:
    """Decode one msgpack ``EventBatch`` payload in any shape vLLM has sent.

    Args:
        payload: the third frame of a KV-event message (or a replayed payload).
        source: where it came from (an endpoint), carried by the error.

    Returns:
        The batch; events of unknown type are left out and named in ``unknown_tags``.

    Raises:
        DataError: not msgpack, or a field of the wrong shape; the message names the
            field path (``events[2].block_hashes[5]: expected int or bytes, got ...``).
    """
    try:
        obj = _unpackb(payload, raw=False, strict_map_key=False)
    # msgpack's C unpacker raises ValueError and its subclasses (ExtraData, FormatError,
    # StackError, UnicodeDecodeError), TypeError (unhashable map keys) and, for hostile
    # input, others: every one of them means "these bytes are not a batch".
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"payload: expected a msgpack document, got {len(payload)} bytes that do not "
            f"decode ({type(exc).__name__}{f': {exc}' if str(exc) else ''})",
            source=source,
        ) from None
    kind = type(obj)
    if kind is list:
        if len(obj) < 2:
            raise _fail(source, "batch", "[ts, events, data_parallel_rank]", obj)
        ts, events = obj[0], obj[1]
        rank = obj[2] if len(obj) > 2 else None
    elif kind is dict:
        if "ts" not in obj or "events" not in obj:
            missing = "ts" if "ts" not in obj else "events"
            raise _fail(source, missing, _BATCH_EXPECTED[missing])
        ts, events = obj["ts"], obj["events"]
        rank = obj.get("data_parallel_rank")
    else:
        raise _fail(source, "batch", "an array [ts, events, data_parallel_rank] or a map", obj)
    if type(ts) is not float and type(ts) is not int:
        raise _fail(source, "ts", _BATCH_EXPECTED["ts"], ts)
    if rank is not None and type(rank) is not int:
        raise _fail(source, "data_parallel_rank", "int or nil", rank)
    if type(events) is not list:
        raise _fail(source, "events", _BATCH_EXPECTED["events"], events)
    out: list[KVEvent] = []
    unknown: list[str] = []
    for index, raw in enumerate(events):
        event = _event(raw, source, index, unknown)
        if event is not None:
            out.append(event)
    return _new_tuple(EventBatch, (float(ts), tuple(out), rank, tuple(unknown) if unknown else ()))


# ====================================================================== encoder
Encoding: TypeAlias = Literal["array", "map", "mixed"]
"""Wire shape: ``array`` = vLLM ``array_like=True`` (batch and events positional, up to
v0.25), ``mixed`` = array batch of map events (v0.26-v0.28), ``map`` = maps at both
levels (later main)."""


def _wire(value: object) -> object:
    """Plain msgpack-able value: arrays to lists, NumPy scalars to Python scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _pack_default(value: object) -> object:
    plain = _wire(value)
    if plain is value:
        raise TypeError(f"cannot encode {_show(value)} in a KV event")
    return plain


def _event_tag(event: object) -> str:
    """Tag of an event of ours, the simulator's, or any object with vLLM's field names."""
    name = type(event).__name__
    if name in _TAGS:
        return name
    if hasattr(event, "token_ids") and hasattr(event, "block_hashes"):
        return "BlockStored"
    if hasattr(event, "block_hashes"):
        return "BlockRemoved"
    raise TypeError(f"not a KV event: {_show(event)} (no BlockStored/BlockRemoved fields)")


def _encode_event(event: object, as_map: bool) -> object:
    tag = _event_tag(event)
    names: tuple[str, ...]
    if tag == "BlockStored":
        names, first_defaulted = _STORED_FIELDS, _STORED_FIRST_DEFAULTED
    elif tag == "BlockRemoved":
        names, first_defaulted = _REMOVED_FIELDS, _REMOVED_FIRST_DEFAULTED
    else:
        return {"type": tag} if as_map else [tag]
    values = [_wire(getattr(event, name, None)) for name in names]
    if as_map:
        # msgspec's omit_defaults: fields that have a default are left out when equal to it.
        wire: dict[str, object] = {"type": tag}
        for k, (name, value) in enumerate(zip(names, values, strict=True)):
            if k < first_defaulted or value is not None:
                wire[name] = value
        return wire
    # array_like + omit_defaults: trailing fields equal to their default are left out.
    end = len(values)
    while end > first_defaulted and values[end - 1] is None:
        end -= 1
    return [tag, *values[:end]]


def encode_batch(
    batch_or_events: EventBatch | Iterable[object],
    *,
    ts: float | None = None,
    encoding: Encoding = "array",
    data_parallel_rank: int | None = None,
) -> bytes:
    """Encode events as a vLLM publisher would (tests, and the simulator's publisher).

    Args:
        batch_or_events: an :class:`EventBatch`, or events: ours, the simulator's
            (:mod:`inference_sched.sim.kvcache`) or any objects with vLLM's field names
            (missing fields are sent as nil).
        ts: batch timestamp; default the batch's, else ``time.time()``.
        encoding: the wire shape (:data:`Encoding`).
        data_parallel_rank: default the batch's; None leaves it out, as vLLM does.

    Returns:
        The msgpack payload.
    """
    if isinstance(batch_or_events, EventBatch):
        events: Iterable[object] = batch_or_events.events
        if ts is None:
            ts = batch_or_events.ts
        if data_parallel_rank is None:
            data_parallel_rank = batch_or_events.data_parallel_rank
    else:
        events = batch_or_events
    if ts is None:
        ts = time.time()
    if not math.isfinite(ts):
        raise ValueError(f"ts must be finite, got {ts}")
    if encoding not in ("array", "map", "mixed"):
        raise ValueError(f"encoding must be 'array', 'map' or 'mixed', got {encoding!r}")
    wire_events = [_encode_event(event, encoding != "array") for event in events]
    batch: object
    if encoding == "map":
        as_map: dict[str, object] = {"ts": float(ts), "events": wire_events}
        if data_parallel_rank is not None:
            as_map["data_parallel_rank"] = data_parallel_rank
        batch = as_map
    else:
        as_array: list[object] = [float(ts), wire_events]
        if data_parallel_rank is not None:
            as_array.append(data_parallel_rank)
        batch = as_array
    packed: bytes = _packb(batch, default=_pack_default, use_bin_type=True)
    return packed


END_SEQ: Final = (-1).to_bytes(8, "big", signed=True)
"""Sequence frame of the replay socket's end-of-replay marker (vLLM ``END_SEQ``)."""


# ====================================================================== frames: topics
def parse_topic(topic: str, *, source: str = "") -> tuple[str, str]:
    """``kv@<pod>@<model>`` → ``(pod, model)``, llm-d's topic convention.

    llm-d splits on every ``@`` and wants exactly three parts; this splits on the first
    two only, so a model name containing ``@`` (``org/model@rev``) still parses. The
    first part is not checked (the subscription filter already chose it).

    Raises:
        DataError: fewer than three parts, or an empty pod or model.
    """
    parts = topic.split("@", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise DataError(
            f"topic {topic!r}: expected 'kv@<pod>@<model>' (set vLLM's kv-events-config "
            '"topic" to it, e.g. "kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B")',
            source=source,
        )
    return parts[1], parts[2]


# ====================================================================== sequences
class Verdict(enum.Enum):
    """What a sequence number means for its endpoint's stream."""

    OK = "ok"
    """The next number, or the first seen from the endpoint: apply."""
    DUPLICATE = "duplicate"
    """Equal to the last one: drop."""
    STALE = "stale"
    """Lower than the last one and not a restart (reordered / second publisher): drop."""
    GAP = "gap"
    """Higher than last + 1: batches were lost; replay them or invalidate, then apply."""
    RESTART = "restart"
    """The publisher started again (see the module notes): invalidate, then apply."""


class SequenceTracker:
    """Last sequence number per endpoint, and a verdict for each new one.

    Args:
        restart_window: a lower number below this is a restart (0 only: ``1``).
        max_stale_run: this many lower-or-equal numbers in a row make the last a restart.
    """

    def __init__(self, *, restart_window: int = 64, max_stale_run: int = 8) -> None:
        if type(restart_window) is not int or restart_window < 0:
            raise ValueError(f"restart_window must be an int >= 0, got {restart_window!r}")
        if type(max_stale_run) is not int or max_stale_run < 1:
            raise ValueError(f"max_stale_run must be an int >= 1, got {max_stale_run!r}")
        self.restart_window = restart_window
        self.max_stale_run = max_stale_run
        self._last: dict[str, int] = {}
        self._stale_run: dict[str, int] = {}
        self._counts: dict[str, Counter[Verdict]] = {}
        self.totals: Counter[Verdict] = Counter()
        """Verdicts over all endpoints (cumulative, kept across :meth:`reset`)."""

    def last(self, endpoint: str) -> int | None:
        """The last accepted sequence number of ``endpoint`` (None: none yet)."""
        return self._last.get(endpoint)

    def counts(self, endpoint: str) -> Mapping[str, int]:
        """Verdicts of ``endpoint`` so far, by verdict value (``{"ok": 10, "gap": 1}``)."""
        counter = self._counts.get(endpoint, Counter())
        return {verdict.value: counter[verdict] for verdict in Verdict}

    def check(self, endpoint: str, seq: int) -> Verdict:
        """Classify ``seq`` and, unless it is dropped, make it the endpoint's last.

        Args:
            endpoint: the stream's identity.
            seq: the message's sequence number (>= 0).

        Returns:
            The verdict; OK, GAP and RESTART advance the stream, DUPLICATE and STALE don't.
        """
        last = self._last.get(endpoint)
        if last is None or seq == last + 1:
            verdict = Verdict.OK
        elif seq > last:
            verdict = Verdict.GAP
        else:
            run = self._stale_run.get(endpoint, 0) + 1
            if seq < last and (seq < self.restart_window or run >= self.max_stale_run):
                verdict = Verdict.RESTART
            else:
                verdict = Verdict.DUPLICATE if seq == last else Verdict.STALE
                self._stale_run[endpoint] = run
        if verdict is not Verdict.DUPLICATE and verdict is not Verdict.STALE:
            self._last[endpoint] = seq
            self._stale_run.pop(endpoint, None)
        counter = self._counts.get(endpoint)
        if counter is None:
            counter = self._counts[endpoint] = Counter()
        counter[verdict] += 1
        self.totals[verdict] += 1
        return verdict

    def reset(self, endpoint: str) -> None:
        """Forget the endpoint's position: its next number is accepted as a first one."""
        self._last.pop(endpoint, None)
        self._stale_run.pop(endpoint, None)

    def forget(self, endpoint: str) -> None:
        """Drop everything kept for ``endpoint`` (its position and its verdict counts)."""
        self.reset(endpoint)
        self._counts.pop(endpoint, None)

    def __len__(self) -> int:
        """Endpoints with state (a position or verdict counts)."""
        return len(self._counts)
