"""The ``redis`` parameter object of the prefix and in-flight producers (ours: GIE has none).

Parsed with the plugin's other parameters (:func:`redis_field`), so a bad value is reported
like any other: ``plugins[2].parameters.redis.timeoutMs: expected a number in (0, 10000],
got 0 (int)``. Nothing here imports ``redis``: a config is validated without the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import attrs

from inference_sched.params import ParamCheck, at_least, in_range, nested, param, string

__all__ = [
    "DEFAULT_ADDRESS",
    "RedisInflightParams",
    "RedisParams",
    "RedisPrefixParams",
    "redis_field",
    "redis_forwarded",
]

DEFAULT_ADDRESS: Final = "redis://127.0.0.1:6379/0"
_TCP_SCHEMES: Final = ("redis", "rediss", "valkey", "valkeys")
_URL_FORM: Final = (
    "a Redis URL redis://[user:password@]host[:port][/db] (or rediss://, valkey://, "
    "valkeys://, unix:///path)"
)

P = TypeVar("P", bound="RedisParams")


def _address(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    try:
        url = urlsplit(value)
        port = url.port  # raises ValueError on a bad port
    except ValueError:
        raise ParamCheck("address", _URL_FORM, value) from None
    if url.scheme == "unix":
        ok = bool(url.path)
    else:
        db = url.path.lstrip("/")
        ok = (
            url.scheme in _TCP_SCHEMES
            and bool(url.hostname)
            and (port is None or port > 0)
            and (not db or db.isdigit())
        )
    if not ok:
        raise ParamCheck("address", _URL_FORM, value)


def _namespace(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Braces would break the {namespace} hash tag that keeps a namespace's keys together.
    if not isinstance(value, str) or not value or any(c in value for c in "{}\n"):
        raise ParamCheck("namespace", "a non-empty str without '{', '}' or newlines", value)


@attrs.frozen
class RedisParams:
    """Where the shared state lives (the keys every ``redis`` object has)."""

    address: str = param(DEFAULT_ADDRESS, alias="address", check=_address, redacted=True)
    """Redis URL; ``valkey://`` and ``valkeys://`` are accepted as aliases (llm-d does)."""
    namespace: str = param("default", alias="namespace", check=_namespace)
    """Key namespace, normally the pool name: the replicas of one pool share it."""
    timeout_ms: float = param(50, alias="timeoutMs", check=in_range(0, 10_000, low_open=True))
    """Longest wait for Redis per socket operation of a decision; then the plugin uses its
    local state until Redis answers again."""


@attrs.frozen
class RedisPrefixParams(RedisParams):
    """``redis`` of ``approx-prefix-cache-producer``: a shared prefix index."""

    endpoint_ttl_ms: int = param(120_000, alias="endpointTtlMs", check=at_least(100))
    """An endpoint that no replica has had in its table for this long loses its entries
    (GIE purges endpoints that left the pool every 2 minutes)."""


@attrs.frozen
class RedisInflightParams(RedisParams):
    """``redis`` of ``inflight-load-producer``: shared in-flight counters."""

    sync_interval_ms: float = param(0, alias="syncIntervalMs", check=at_least(0, kind="number"))
    """Re-read the shared counters at most this often (0: on every decision); between
    reads the table holds the last read plus this replica's own changes."""
    lease_ttl_ms: int = param(10_000, alias="leaseTtlMs", check=at_least(100))
    """A replica that has not renewed its lease for this long (crashed, partitioned) has
    its in-flight holds subtracted by the other replicas."""


def _parse(cls: type[P], key: str) -> Callable[[Any], P | None]:
    parse_object = nested(cls, key)

    def parse(raw: Any) -> P | None:
        return None if raw is None else parse_object(raw)

    return parse


def _is(cls: type[RedisParams], key: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, cls):
            raise ParamCheck(key, f"a mapping with the keys of {cls.__name__}", value)

    return check


def redis_forwarded(cls: type[RedisParams], key: str = "redis") -> Any:
    """A field that checks a raw ``redis`` mapping as ``cls`` and keeps it raw, for a
    plugin that forwards it to the producer it creates (``prefix-cache-scorer``)."""
    parse = _parse(cls, key)

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            parse(value)

    return param(None, alias=key, check=check)


def redis_field(cls: type[RedisParams], key: str = "redis") -> Any:
    """A Params field holding a ``redis`` object of type ``cls`` (absent: ``None``).

    The raw mapping is checked key by key with the field checks of ``cls``, and an error
    names the nested key (``redis.address``), so the loader reports
    ``plugins[i].parameters.redis.address: expected ...``.
    """
    return param(None, alias=key, parse=_parse(cls, key), check=_is(cls, key))
