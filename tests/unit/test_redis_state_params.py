"""The ``redis`` parameter object (inference_sched.state.redis.params): parsing, path-named
errors, forwarding from prefix-cache-scorer, and the missing-extra error. No server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from inference_sched.errors import ConfigError, ParameterError
from inference_sched.framework.config import load_config
from inference_sched.framework.handle import PluginHandle
from inference_sched.framework.scheduler import Scheduler
from inference_sched.params import parse_params
from inference_sched.plugins.load import InflightLoadProducer, InflightLoadProducerParams
from inference_sched.plugins.prefix import ApproxPrefixCacheProducer
from inference_sched.state.redis import (
    EXTRA_HINT,
    RedisInflightParams,
    RedisPrefixParams,
)
from tests.helpers import make_table

PATH = "plugins[0].parameters"
RX = r"plugins\[0\]\.parameters"
INFLIGHT_KEYS = "address, namespace, timeoutMs, syncIntervalMs, leaseTtlMs"


def _inflight(raw: dict[str, Any]) -> InflightLoadProducerParams:
    return parse_params(InflightLoadProducer.Params, raw, PATH)


# ====================================================================== parsing
def test_absent_or_null_means_in_process() -> None:
    assert _inflight({}).redis is None
    assert _inflight({"redis": None}).redis is None
    assert parse_params(ApproxPrefixCacheProducer.Params, None, PATH).redis is None


def test_defaults() -> None:
    inflight = _inflight({"redis": {}}).redis
    assert inflight == RedisInflightParams()
    assert (
        inflight.address,
        inflight.namespace,
        inflight.timeout_ms,
        inflight.sync_interval_ms,
        inflight.lease_ttl_ms,
    ) == ("redis://127.0.0.1:6379/0", "default", 50, 0, 10_000)
    prefix = parse_params(ApproxPrefixCacheProducer.Params, {"redis": {}}, PATH).redis
    assert prefix == RedisPrefixParams()
    assert prefix.endpoint_ttl_ms == 120_000


def test_every_key() -> None:
    raw = {
        "address": "rediss://user:pw@redis.pool.svc:6380/2",
        "namespace": "pool-a",
        "timeoutMs": 7.5,
        "syncIntervalMs": 20,
        "leaseTtlMs": 3000,
    }
    redis = _inflight({"redis": raw}).redis
    assert redis is not None
    assert (
        redis.address,
        redis.namespace,
        redis.timeout_ms,
        redis.sync_interval_ms,
        redis.lease_ttl_ms,
    ) == ("rediss://user:pw@redis.pool.svc:6380/2", "pool-a", 7.5, 20, 3000)


@pytest.mark.parametrize(
    "address",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://[::1]:6379",
        "rediss://redis.example:6380/15",
        "valkey://valkey:6379/0",
        "valkeys://valkey:6379",
        "unix:///run/redis/redis.sock",
        "redis://:secret@10.0.0.5:6379/1",
    ],
)
def test_accepted_addresses(address: str) -> None:
    redis = _inflight({"redis": {"address": address}}).redis
    assert redis is not None
    assert redis.address == address


# ====================================================================== errors
@pytest.mark.parametrize(
    ("redis", "message"),
    [
        pytest.param(
            "redis://127.0.0.1:6379",
            rf"^{RX}\.redis: expected a mapping with keys {INFLIGHT_KEYS}, "
            r"got 'redis://127\.0\.0\.1:6379' \(str\)$",
            id="not-a-mapping",
        ),
        pytest.param(
            {"adress": "redis://x"},
            rf"^{RX}\.redis\.adress: expected one of the keys {INFLIGHT_KEYS} "
            r"\(did you mean 'address'\?\), got 'adress' \(str\)$",
            id="unknown-key",
        ),
        pytest.param(
            {"address": "127.0.0.1:6379"},
            rf"^{RX}\.redis\.address: expected a Redis URL redis://\[user:password@\]host"
            r"\[:port\]\[/db\] \(or rediss://, valkey://, valkeys://, unix:///path\), "
            r"got '127\.0\.0\.1:6379' \(str\)$",
            id="no-scheme",
        ),
        pytest.param(
            {"address": "http://127.0.0.1:6379"},
            rf"^{RX}\.redis\.address: expected a Redis URL .*, got 'http://127\.0\.0\.1:6379'",
            id="http",
        ),
        pytest.param(
            {"address": "redis://127.0.0.1:port"},
            rf"^{RX}\.redis\.address: expected a Redis URL",
            id="bad-port",
        ),
        pytest.param(
            {"address": "redis://127.0.0.1:6379/db0"},
            rf"^{RX}\.redis\.address: expected a Redis URL",
            id="bad-db",
        ),
        pytest.param(
            {"address": "redis://"},
            rf"^{RX}\.redis\.address: expected a Redis URL",
            id="no-host",
        ),
        pytest.param(
            {"address": 6379},
            rf"^{RX}\.redis\.address: expected str, got 6379 \(int\)$",
            id="not-a-str",
        ),
        pytest.param(
            {"namespace": ""},
            rf"^{RX}\.redis\.namespace: expected a non-empty str without '{{', '}}' or "
            r"newlines, got '' \(str\)$",
            id="empty-namespace",
        ),
        pytest.param(
            {"namespace": "pool{a}"},
            rf"^{RX}\.redis\.namespace: expected a non-empty str without",
            id="hash-tag-namespace",
        ),
        pytest.param(
            {"timeoutMs": 0},
            rf"^{RX}\.redis\.timeoutMs: expected a number in \(0, 10000\], got 0 \(int\)$",
            id="zero-timeout",
        ),
        pytest.param(
            {"timeoutMs": "50ms"},
            rf"^{RX}\.redis\.timeoutMs: expected a finite number, got '50ms' \(str\)$",
            id="timeout-str",
        ),
        pytest.param(
            {"timeoutMs": True},
            rf"^{RX}\.redis\.timeoutMs: expected a finite number, got True \(bool\)$",
            id="timeout-bool",
        ),
        pytest.param(
            {"syncIntervalMs": -1},
            rf"^{RX}\.redis\.syncIntervalMs: expected number >= 0, got -1 \(int\)$",
            id="negative-sync-interval",
        ),
        pytest.param(
            {"leaseTtlMs": 50},
            rf"^{RX}\.redis\.leaseTtlMs: expected int >= 100, got 50 \(int\)$",
            id="short-lease",
        ),
        pytest.param(
            {"leaseTtlMs": 1.5e4},
            rf"^{RX}\.redis\.leaseTtlMs: expected int, got 15000\.0 \(float\)$",
            id="float-lease",
        ),
        pytest.param(
            {"endpointTtlMs": 1000},
            rf"^{RX}\.redis\.endpointTtlMs: expected one of the keys {INFLIGHT_KEYS}",
            id="prefix-key-on-inflight",
        ),
    ],
)
def test_rejected(redis: Any, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        _inflight({"redis": redis})


def test_prefix_producer_keys() -> None:
    with pytest.raises(
        ParameterError,
        match=rf"^{RX}\.redis\.endpointTtlMs: expected int >= 100, got 0 \(int\)$",
    ):
        parse_params(ApproxPrefixCacheProducer.Params, {"redis": {"endpointTtlMs": 0}}, PATH)
    with pytest.raises(ParameterError, match=rf"^{RX}\.redis\.leaseTtlMs: expected one of"):
        parse_params(ApproxPrefixCacheProducer.Params, {"redis": {"leaseTtlMs": 1000}}, PATH)


def test_config_errors_carry_the_plugin_path() -> None:
    text = textwrap.dedent(
        """\
        plugins:
        - type: queue-scorer
        - type: inflight-load-producer
          parameters: {redis: {address: "redis://h:6379", timeoutMs: -5}}
        - type: approx-prefix-cache-producer
          parameters: {redis: {namespace: 7}}
        """
    )
    with pytest.raises(ConfigError) as info:
        load_config(text)
    messages = [str(e) for e in info.value.errors]
    assert (
        "plugins[1].parameters.redis.timeoutMs: expected a number in (0, 10000], "
        "got -5 (int)" in messages
    )
    assert (
        "plugins[2].parameters.redis.namespace: expected a non-empty str without '{', '}' "
        "or newlines, got 7 (int)" in messages
    )


# ====================================================================== forwarding
def test_scorer_forwards_redis_to_the_auto_created_producer() -> None:
    text = textwrap.dedent(
        """\
        plugins:
        - type: prefix-cache-scorer
          parameters:
            lruCapacityPerServer: 100
            redis: {address: "redis://10.0.0.9:6379/3", namespace: pool-b}
        """
    )
    config = load_config(text)
    (producer,) = [p for p in config.plugins if p.type == "approx-prefix-cache-producer"]
    assert producer.params.lru_capacity_per_server == 100
    assert producer.params.redis == RedisPrefixParams(
        address="redis://10.0.0.9:6379/3", namespace="pool-b"
    )


def test_scorer_checks_the_forwarded_object() -> None:
    text = textwrap.dedent(
        """\
        plugins:
        - type: prefix-cache-scorer
          parameters: {redis: {timeoutMs: 0}}
        """
    )
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.redis\.timeoutMs"):
        load_config(text)


def test_round_trip_keeps_the_object_as_written() -> None:
    text = textwrap.dedent(
        """\
        plugins:
        - type: inflight-load-producer
          parameters: {redis: {namespace: pool-c, syncIntervalMs: 5}}
        - type: active-request-scorer
        """
    )
    config = load_config(text)
    again = load_config(config.to_dict())
    (first,) = [p for p in config.plugins if p.type == "inflight-load-producer"]
    (second,) = [p for p in again.plugins if p.type == "inflight-load-producer"]
    assert first.params == second.params
    assert (
        second.params.redis
        == _inflight({"redis": {"namespace": "pool-c", "syncIntervalMs": 5}}).redis
    )
    assert second.params.redis.sync_interval_ms == 5


# ====================================================================== the extra
def test_in_process_producers_accept_the_old_params() -> None:
    table = make_table(2)
    InflightLoadProducer("inflight", InflightLoadProducerParams(), PluginHandle(table))
    producer = _prefix_producer(table, None)
    assert producer.shared is None
    producer.close()  # a no-op in-process


def _prefix_producer(table: Any, redis: dict[str, Any] | None) -> ApproxPrefixCacheProducer:
    raw = {} if redis is None else {"redis": redis}
    params = parse_params(ApproxPrefixCacheProducer.Params, raw, PATH)
    return ApproxPrefixCacheProducer("approx", params, PluginHandle(table))


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` now raises ImportError
    table = make_table(2)
    with pytest.raises(ConfigError) as info:
        _prefix_producer(table, {})
    assert str(info.value) == (
        "inference_sched.state.redis needs the [redis] extra: pip install 'inference-sched[redis]'"
    )
    assert str(info.value) == EXTRA_HINT
    assert isinstance(info.value.__cause__, ImportError)
    config = {
        "plugins": [
            {"type": "inflight-load-producer", "parameters": {"redis": {}}},
            {"type": "active-request-scorer"},
        ]
    }
    with pytest.raises(ConfigError, match=r"needs the \[redis\] extra"):
        Scheduler.from_config(config, make_table(2))


def test_importing_the_library_does_not_import_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import inference_sched, inference_sched.plugins, inference_sched.state.redis\n"
        "from inference_sched.framework.config import load_config\n"
        "load_config({'plugins': [{'type': 'prefix-cache-scorer', "
        "'parameters': {'redis': {}}}]})\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ====================================================================== credentials
def test_a_rejected_address_never_shows_its_password() -> None:
    raw = {"redis": {"address": "redis://:hunter2@10.0.0.5:port/1"}}
    with pytest.raises(ParameterError) as caught:
        _inflight(raw)
    assert "hunter2" not in str(caught.value)
    assert "'redis://:***@10.0.0.5:port/1' (str)" in str(caught.value)


def test_a_long_rejected_value_is_cut_and_redacted() -> None:
    address = "redis://admin:hunter2@" + "h" * 500
    with pytest.raises(ParameterError) as caught:
        _inflight({"redis": {"address": address, "namespace": 7}})
    text = str(caught.value)
    assert "hunter2" not in text
    assert len(text) < 300


def test_params_repr_redacts_the_password() -> None:
    redis = _inflight({"redis": {"address": "rediss://admin:hunter2@redis.example:6380/2"}}).redis
    assert redis is not None
    assert redis.address == "rediss://admin:hunter2@redis.example:6380/2"  # the real value
    assert "hunter2" not in repr(redis)
    assert "rediss://admin:***@redis.example:6380/2" in repr(redis)
