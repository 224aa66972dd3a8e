"""Parameters of ``precise-prefix-cache-producer`` (and of the deprecated
``precise-prefix-cache-scorer``): llm-d's ``tokenProcessorConfig``, ``indexerConfig``
(with llm-d-kv-cache's ``kvBlockIndexConfig`` and ``tokenizersPoolConfig``),
``kvEventsConfig`` and our own keys.

The plugin lives in :mod:`inference_sched.plugins.precise_prefix`; its page is
``docs/plugins/precise-prefix-cache-producer.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from inference_sched.params import (
    ParamCheck,
    at_least,
    boolean,
    duration_s,
    in_range,
    integer,
    nested,
    param,
    string,
)
from inference_sched.prefix.precise.index import DEFAULT_CAPACITY

__all__ = [
    "CostAwareMemoryIndexConfig",
    "HFTokenizerConfig",
    "IndexerConfig",
    "InMemoryIndexConfig",
    "KVBlockIndexConfig",
    "KVEventsConfig",
    "LocalTokenizerConfig",
    "PodDiscoveryConfig",
    "PrecisePrefixParams",
    "TokenProcessorConfig",
    "TokenizersPoolConfig",
    "UdsTokenizerConfig",
    "VllmRenderConfig",
    "unsupported_settings",
]


@attrs.frozen
class TokenProcessorConfig:
    """``tokenProcessorConfig`` (llm-d): how token blocks become keys."""

    block_size_tokens: int = param(16, alias="blockSizeTokens", check=at_least(1))
    """Tokens per index block (any engine block size that is a multiple of it works)."""
    block_size: int = param(0, alias="blockSize", check=at_least(0))
    """llm-d's old name of blockSizeTokens; used when set and blockSizeTokens is not."""
    hash_seed: str = param("", alias="hashSeed", check=string)
    """Folded into every chain root: replicas must agree on it, engines need not."""


@attrs.frozen
class PodDiscoveryConfig:
    """``kvEventsConfig.podDiscoveryConfig`` (llm-d)."""

    socket_port: int = param(5557, alias="socketPort", check=in_range(1, 65535))
    """The port of every engine's KV-event publisher (vLLM ``tcp://*:5557``)."""
    replay_port: int = param(0, alias="replayPort", check=in_range(0, 65535))
    """Ours: the port of each engine's replay socket (vLLM ``replay_endpoint``); 0: no
    replay, a sequence gap drops the endpoint's entries instead."""


@attrs.frozen
class KVEventsConfig:
    """``kvEventsConfig`` (llm-d): where the events come from."""

    topic_filter: str = param("kv@", alias="topicFilter", check=string)
    """ZMQ subscription prefix."""
    concurrency: int = param(4, alias="concurrency", check=at_least(1))
    """llm-d's event workers. Accepted for llm-d configs; here events are applied in
    order per endpoint by one writer at a time (the index's lock), so it changes nothing."""
    discover_pods: bool = param(True, alias="discoverPods", check=boolean)
    """Connect to every endpoint's publisher (engines bind), following the table."""
    pod_discovery_config: PodDiscoveryConfig = param(  # noqa: RUF009 - an attrs field
        factory=PodDiscoveryConfig,
        alias="podDiscoveryConfig",
        parse=nested(PodDiscoveryConfig, "podDiscoveryConfig"),
    )
    zmq_endpoint: str = param("", alias="zmqEndpoint", check=string)
    """Bind one SUB socket here (``tcp://*:5557``) for engines that connect; wins over
    discoverPods."""


def _backends(raw: Any) -> tuple[tuple[str, float], ...]:
    key = "kvCacheBackendConfigs"
    expected = "a list of {name: str, weight: number >= 0}"
    if not isinstance(raw, list | tuple):
        raise ParamCheck(key, expected, raw)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or set(item) - {"name", "weight"} or "name" not in item:
            raise ParamCheck(f"{key}[{i}]", "a mapping with keys name, weight", item)
        name, weight = item["name"], item.get("weight", 1.0)
        if not isinstance(name, str) or not name.strip():
            raise ParamCheck(f"{key}[{i}].name", "a non-empty str", name)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise ParamCheck(f"{key}[{i}].weight", "a number >= 0", weight)
        out.append((name.strip().lower(), float(weight)))
    return tuple(out)


@attrs.frozen
class InMemoryIndexConfig:
    """``indexerConfig.kvBlockIndexConfig.inMemoryConfig`` (llm-d-kv-cache)."""

    size: int = param(100_000_000, alias="size", check=at_least(1))
    """llm-d: most keys the index holds. Here: caps every endpoint tier's LRU capacity
    (an endpoint never holds more keys than the whole index): ``min(size, 31250)``."""
    pod_cache_size: int = param(10, alias="podCacheSize", check=at_least(1))
    """llm-d: most pod entries per key. Accepted and ignored: this index has no per-key
    bound (every endpoint's tiers are bounded instead)."""


@attrs.frozen
class CostAwareMemoryIndexConfig:
    """``indexerConfig.kvBlockIndexConfig.costAwareMemoryConfig`` (llm-d-kv-cache)."""

    size: str = param("2GiB", alias="size", check=string)
    """llm-d: the cache's memory bound. Accepted and not applied (a warning): the
    in-process index is bounded by entries per endpoint tier."""


def _unsupported_backend(key: str) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if raw is None:
            return None
        shown = sorted(str(k) for k in raw) if isinstance(raw, Mapping) else raw
        raise ParamCheck(
            key,
            "no external index backend: the redis/valkey KV-block index is not available "
            "here (events are indexed in process; remove it)",
            shown,
        )

    return parse


@attrs.frozen
class KVBlockIndexConfig:
    """``indexerConfig.kvBlockIndexConfig`` (llm-d-kv-cache ``kvblock.IndexConfig``): the
    index backend. Only the in-process index exists here: ``redisConfig`` and
    ``valkeyConfig`` are rejected (llm-d would use them before ``inMemoryConfig``)."""

    in_memory_config: InMemoryIndexConfig | None = param(  # noqa: RUF009 - an attrs field
        None, alias="inMemoryConfig", parse=nested(InMemoryIndexConfig, "inMemoryConfig")
    )
    cost_aware_memory_config: CostAwareMemoryIndexConfig | None = param(  # noqa: RUF009
        None,
        alias="costAwareMemoryConfig",
        parse=nested(CostAwareMemoryIndexConfig, "costAwareMemoryConfig"),
    )
    redis_config: None = param(None, alias="redisConfig", parse=_unsupported_backend("redisConfig"))
    valkey_config: None = param(
        None, alias="valkeyConfig", parse=_unsupported_backend("valkeyConfig")
    )
    enable_metrics: bool = param(False, alias="enableMetrics", check=boolean)
    """Accepted for llm-d configs; the producer's ``stats`` are always kept."""
    metrics_logging_interval_s: float = param(
        0.0, alias="metricsLoggingInterval", parse=duration_s("metricsLoggingInterval")
    )
    """Accepted for llm-d configs; nothing is logged periodically."""

    @property
    def capacity(self) -> int:
        """The index's per-endpoint-tier capacity (``inMemoryConfig.size`` caps it)."""
        if self.in_memory_config is None:
            return DEFAULT_CAPACITY
        return min(self.in_memory_config.size, DEFAULT_CAPACITY)


# ------------------------------------------------------------------ tokenizersPoolConfig
def _optional(cls: type[Any], key: str) -> Callable[[Any], Any]:
    """``nested(cls, key)``, with ``null`` meaning "not set" (Go's nil pointer)."""
    parse = nested(cls, key)
    return lambda raw: None if raw is None else parse(raw)


def _non_empty_path(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty path string", value)


def _str_map(key: str) -> Callable[[Any], tuple[tuple[str, str], ...]]:
    def parse(raw: Any) -> tuple[tuple[str, str], ...]:
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            raise ParamCheck(key, "a mapping of model name to path", raw)
        for name, path in raw.items():
            if not isinstance(name, str) or not name:
                raise ParamCheck(key, "non-empty str model names", name)
            if not isinstance(path, str) or not path:
                raise ParamCheck(f"{key}.{name}", "a non-empty path string", path)
        return tuple(sorted(raw.items()))

    return parse


@attrs.frozen
class VllmRenderConfig:
    """``tokenizersPoolConfig.vllm``: a vLLM server's render endpoints (the keys of
    llm-d-router's token-producer ``vllm`` block)."""

    url: str = param("http://localhost:8000", alias="url", check=_non_empty_path)
    """Base URL of the render server."""
    timeout_s: float = param(
        5.0, alias="timeout", parse=duration_s("timeout"), check=at_least(1e-3, kind="number")
    )
    """Deadline of a completions or text-only chat render (``"5s"``)."""
    mm_timeout_s: float = param(
        30.0,
        alias="mmTimeout",
        parse=duration_s("mmTimeout"),
        check=at_least(1e-3, kind="number"),
    )
    """Deadline of a chat render with content blocks (``"30s"``)."""


@attrs.frozen
class UdsTokenizerConfig:
    """``tokenizersPoolConfig.uds`` (llm-d-kv-cache ``tokenization.UdsTokenizerConfig``):
    the gRPC-over-UDS tokenizer sidecar. Accepted; not supported here (a warning)."""

    socket_file: str | None = param(None, alias="socketFile", check=_non_empty_path)
    """The sidecar's Unix socket (set: the backend is enabled, as llm-d)."""
    use_tcp: bool = param(False, alias="useTCP", check=boolean)
    """llm-d: dial ``socketFile`` as host:port (tests only)."""
    model_tokenizer_map: tuple[tuple[str, str], ...] = param(
        (), alias="modelTokenizerMap", parse=_str_map("modelTokenizerMap")
    )
    """llm-d: model name -> tokenizer directory or ``tokenizer.json`` for the sidecar."""
    hugging_face_token: str = param("", alias="huggingFaceToken", check=string, secret=True)
    """An older llm-d-kv-cache key (the sidecar's Hugging Face token)."""
    tokenizers_cache_dir: str = param("", alias="tokenizersCacheDir", check=string)
    """An older llm-d-kv-cache key (the sidecar's download directory)."""

    @property
    def enabled(self) -> bool:
        """llm-d's ``IsEnabled``: a socket is named."""
        return self.socket_file is not None


@attrs.frozen
class HFTokenizerConfig:
    """``tokenizersPoolConfig.hf`` (llm-d-kv-cache ``HFTokenizerConfig``): download the
    model's tokenizer from the Hugging Face Hub. Accepted; not implemented here."""

    enabled: bool = param(True, alias="enabled", check=boolean)
    """llm-d-kv-cache's default config enables it."""
    hugging_face_token: str = param("", alias="huggingFaceToken", check=string, secret=True)
    """Token for private models."""
    tokenizers_cache_dir: str = param("", alias="tokenizersCacheDir", check=string)
    """Download directory."""


@attrs.frozen
class LocalTokenizerConfig:
    """``tokenizersPoolConfig.local`` (llm-d-kv-cache ``LocalTokenizerConfig``):
    ``tokenizer.json`` files on disk. Accepted; not implemented here."""

    auto_discovery_dir: str = param("", alias="autoDiscoveryDir", check=string)
    """Directory searched for tokenizer files (llm-d: ``/mnt/models``)."""
    auto_discovery_tokenizer_file_name: str = param(
        "", alias="autoDiscoveryTokenizerFileName", check=string
    )
    """File name searched for (llm-d: ``tokenizer.json``)."""
    model_tokenizer_map: tuple[tuple[str, str], ...] = param(
        (), alias="modelTokenizerMap", parse=_str_map("modelTokenizerMap")
    )
    """Model name -> ``tokenizer.json`` path (non-empty: enabled, as llm-d)."""

    @property
    def enabled(self) -> bool:
        """Mappings given, or a directory to discover them in (llm-d fills the map from
        it; enabled when the map is not empty)."""
        return bool(self.model_tokenizer_map or self.auto_discovery_dir)


@attrs.frozen
class TokenizersPoolConfig:
    """``indexerConfig.tokenizersPoolConfig`` (llm-d-kv-cache ``tokenization.Config``):
    where the producer gets token ids for requests that only have estimated ones. Only
    ``vllm`` (a render endpoint) is implemented; ``uds``, ``hf`` and ``local`` are
    accepted and warned about at build time (:func:`unsupported_settings`)."""

    model_name: str = param("", alias="modelName", check=string)
    """The model written to render bodies (``""``: the request's)."""
    workers_count: int = param(5, alias="workersCount", check=at_least(0))
    """llm-d's tokenization workers. Accepted; renders run in the cycle here."""
    min_prefix_overlap_ratio: float = param(
        0.8, alias="minPrefixOverlapRatio", check=in_range(0.0, 1.0)
    )
    """llm-d's prefix-store reuse threshold. Accepted; there is no prefix store here."""
    vllm: VllmRenderConfig | None = param(  # noqa: RUF009 - an attrs field
        None, alias="vllm", parse=_optional(VllmRenderConfig, "vllm")
    )
    """A vLLM render endpoint for requests with only estimated ids."""
    uds: UdsTokenizerConfig | None = param(  # noqa: RUF009 - an attrs field
        None, alias="uds", parse=_optional(UdsTokenizerConfig, "uds")
    )
    """The gRPC-over-UDS sidecar: not supported (a warning when ``socketFile`` is set)."""
    hf: HFTokenizerConfig | None = param(  # noqa: RUF009 - an attrs field
        None, alias="hf", parse=_optional(HFTokenizerConfig, "hf")
    )
    """Hugging Face Hub tokenizers: not implemented (a warning when enabled)."""
    local: LocalTokenizerConfig | None = param(  # noqa: RUF009 - an attrs field
        None, alias="local", parse=_optional(LocalTokenizerConfig, "local")
    )
    """Local ``tokenizer.json`` files: not implemented (a warning when enabled)."""


@attrs.frozen
class IndexerConfig:
    """``indexerConfig`` (llm-d's kv-cache config): the tiers' weights, the index
    backend."""

    kv_cache_backend_configs: tuple[tuple[str, float], ...] = param(
        (("gpu", 1.0), ("cpu", 0.8)), alias="kvCacheBackendConfigs", parse=_backends
    )
    """Weight of a block held in each medium (max over media per block)."""
    kv_block_index_config: KVBlockIndexConfig = param(  # noqa: RUF009 - an attrs field
        factory=KVBlockIndexConfig,
        alias="kvBlockIndexConfig",
        parse=nested(KVBlockIndexConfig, "kvBlockIndexConfig"),
    )
    """The index backend (llm-d-kv-cache): in-memory keys only."""
    tokenizers_pool_config: TokenizersPoolConfig | None = param(  # noqa: RUF009
        None,
        alias="tokenizersPoolConfig",
        parse=_optional(TokenizersPoolConfig, "tokenizersPoolConfig"),
    )
    """Token ids for requests with estimated ones: a vLLM render endpoint only."""


@attrs.frozen
class PrecisePrefixParams:
    """Parameters of ``precise-prefix-cache-producer`` (llm-d's keys and defaults)."""

    token_processor_config: TokenProcessorConfig = param(  # noqa: RUF009 - an attrs field
        factory=TokenProcessorConfig,
        alias="tokenProcessorConfig",
        parse=nested(TokenProcessorConfig, "tokenProcessorConfig"),
    )
    indexer_config: IndexerConfig = param(  # noqa: RUF009 - an attrs field
        factory=IndexerConfig, alias="indexerConfig", parse=nested(IndexerConfig, "indexerConfig")
    )
    kv_events_config: KVEventsConfig = param(  # noqa: RUF009 - an attrs field
        factory=KVEventsConfig,
        alias="kvEventsConfig",
        parse=nested(KVEventsConfig, "kvEventsConfig"),
    )
    speculative_indexing: bool = param(False, alias="speculativeIndexing", check=boolean)
    """After each pick, index the request's blocks on the picked endpoint(s) at once, for
    ``speculativeTTL``: the next request with the same prefix finds them before the
    engine's BlockStored arrives (llm-d's answer to bursts of one prefix scattering)."""
    speculative_ttl_s: float = param(
        2.0,
        alias="speculativeTTL",
        parse=duration_s("speculativeTTL"),
        check=at_least(1e-3, kind="number"),
    )
    """How long a speculative entry lives (``"2s"``)."""
    max_prefix_blocks_to_match: int = param(0, alias="maxPrefixBlocksToMatch", check=integer)
    """Ours: match at most this many leading blocks (0: all of them, as llm-d)."""
    max_queued_events: int = param(100_000, alias="maxQueuedEvents", check=at_least(1))
    """Ours: KV events waiting to be applied, all endpoints together; past it the endpoint
    with the most waiting loses them and is invalidated (its entries dropped)."""
    max_queued_events_per_endpoint: int = param(
        20_000, alias="maxQueuedEventsPerEndpoint", check=at_least(1)
    )
    """Ours: KV events of one endpoint waiting to be applied; past it they are dropped and
    the endpoint is invalidated."""
    max_events_per_apply: int = param(4096, alias="maxEventsPerApply", check=at_least(1))
    """Ours: most queued events applied at once (by a decision before its match, a
    deferred run or the receiving thread): what a decision can wait for."""

    @property
    def block_size_tokens(self) -> int:
        config = self.token_processor_config
        if config.block_size and config.block_size_tokens == 16:
            return config.block_size  # only the old key was given
        return config.block_size_tokens


_FALLBACK: Final = (
    "token ids come from the request, a token-producer, or tokenizersPoolConfig.vllm "
    "(docs/plugins/precise-prefix-cache-producer.md)"
)


def unsupported_settings(params: PrecisePrefixParams) -> list[str]:
    """What ``params`` asks for that is accepted but not done here, one message each
    (the producer logs them as warnings when it is built)."""
    out: list[str] = []
    index = params.indexer_config.kv_block_index_config
    if index.cost_aware_memory_config is not None:
        out.append(
            "indexerConfig.kvBlockIndexConfig.costAwareMemoryConfig.size is not applied; "
            "the in-process index is bounded by entries per endpoint tier"
        )
    pool = params.indexer_config.tokenizers_pool_config
    if pool is None:
        return out
    if pool.uds is not None and pool.uds.enabled:
        out.append(
            f"indexerConfig.tokenizersPoolConfig.uds (socketFile {pool.uds.socket_file!r}): "
            "the gRPC-over-UDS tokenizer sidecar is not supported here; " + _FALLBACK
        )
    if pool.hf is not None and pool.hf.enabled:
        out.append(
            "indexerConfig.tokenizersPoolConfig.hf: Hugging Face Hub tokenizers are not "
            "implemented here; " + _FALLBACK
        )
    if pool.local is not None and pool.local.enabled:
        out.append(
            "indexerConfig.tokenizersPoolConfig.local: local tokenizer files are not "
            "implemented here (a token-producer with tokenizerFile reads one); " + _FALLBACK
        )
    return out
