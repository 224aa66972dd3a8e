"""Engine mappings: which Prometheus series hold each metric, per model-server engine.

A mapping is data (an :class:`EngineSpec`), not code: ``core-metrics-extractor`` picks
one per endpoint from the pod label ``llm-d.ai/engine-type`` (else the legacy GIE label
``inference.networking.k8s.io/engine-type``) and its ``engineConfigs`` parameter replaces
a built-in engine of the same name (``llm-d/llm-d-router``:
``pkg/epp/framework/plugins/datalayer/extractor/metrics/factories.go``).

Each field holds a *selector*, a PromQL instant selector without operators other than
``=``: ``name`` or ``name{label=value,...}``, label values quoted or not. The empty string
disables a field. Example::

    nv_trt_llm_request_metrics{request_type=waiting}
    vllm:cache_config_info

GIE's keys (``queuedRequestsSpec``, ``runningRequestsSpec``, ``kvUsageSpec``,
``loraSpec``, ``cacheInfoSpec``) are accepted as they are; a few keys are ours, because
the engines outside vLLM publish block geometry differently: ``kvUsageFallbackSpec``
(vLLM's pre-v0.10 ``vllm:gpu_cache_usage_perc``), ``cacheInfoBlockSizeLabel`` /
``cacheInfoNumBlocksLabel`` (SGLang's ``page_size`` / ``num_pages``) and
``blockSizeSpec`` / ``numBlocksSpec`` (TensorRT-LLM's gauges). llm-d-router's spellings
of those (``cacheBlockSizeLabelName``, ``cacheNumBlocksLabelName``, ``cacheBlockSizeSpec``,
``cacheNumBlocksSpec``) are accepted too, and ``customMetrics`` (``[{attributeKey,
metricSpec}]``) reads extra series into endpoint attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from inference_sched.errors import ConfigError
from inference_sched.params import closest, describe

__all__ = [
    "BUILTIN_ENGINES",
    "CUSTOM_METRICS_PRODUCER",
    "DEFAULT_ENGINE",
    "ENGINE_CONFIG_KEYS",
    "ENGINE_LABEL_KEY",
    "LEGACY_ENGINE_LABEL_KEY",
    "RESERVED_ENGINE",
    "CustomMetric",
    "EngineSpec",
    "Selector",
    "engine_from_config",
    "parse_engine_configs",
    "parse_selector",
    "resolve_engines",
]

ENGINE_LABEL_KEY: Final = "llm-d.ai/engine-type"
"""Pod label naming an endpoint's engine (llm-d-router ``DefaultEngineTypeLabelKey``)."""
LEGACY_ENGINE_LABEL_KEY: Final = "inference.networking.k8s.io/engine-type"
"""GIE's engine label, read when the configured label is absent or empty."""
DEFAULT_ENGINE: Final = "vllm"
"""Engine of endpoints without the label (GIE ``defaultEngine``)."""
RESERVED_ENGINE: Final = "default"
"""Names the default engine's mapping (GIE registers it under this name): no engine
config may use it, and a pod labelled with it gets the default engine."""
CUSTOM_METRICS_PRODUCER: Final = "core-metrics-extractor"
"""Producer part of a custom metric's attribute key (``<attributeKey>/core-metrics-extractor``)."""

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@attrs.frozen
class Selector:
    """A parsed metric selector: a sample name and required label values.

    A series matches when it has every listed label with exactly that value (an absent
    label counts as ``""``, as in PromQL).
    """

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    """(label, value) pairs, sorted by label."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a series with ``labels`` is selected."""
        return all(labels.get(key, "") == value for key, value in self.labels)

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def parse_selector(text: str, *, path: str = "") -> Selector | None:
    """Parse ``name`` or ``name{label=value,...}``; ``""`` (or blanks) gives ``None``.

    Label values may be quoted (``"..."`` with ``\\"`` and ``\\\\`` escapes) or bare
    (no ``,``, ``}``, quote or blank inside).

    Args:
        text: the selector.
        path: config path for the error (e.g. ``engineConfigs[0].kvUsageSpec``).

    Raises:
        ConfigError: not a selector; the message names the selector and the problem.
    """
    spec = text.strip()
    if not spec:
        return None

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"bad metric selector {text!r}: {problem}", path=path, value=text)

    name_match = _METRIC_NAME.match(spec)
    if name_match is None:
        raise fail("expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) first")
    name = name_match.group()
    rest = spec[name_match.end() :].lstrip()
    if not rest:
        return Selector(name)
    if rest[0] != "{":
        raise fail(f"unexpected {rest[0]!r} after the metric name (labels go in {{...}})")
    labels: dict[str, str] = {}
    pos = 1
    while True:
        pos = _skip_blanks(rest, pos)
        if pos < len(rest) and rest[pos] == "}":
            break
        label_match = _LABEL_NAME.match(rest, pos)
        if label_match is None:
            raise fail(f"expected a label name at {rest[pos : pos + 10]!r}")
        label = label_match.group()
        pos = _skip_blanks(rest, label_match.end())
        if rest[pos : pos + 1] != "=" or rest[pos : pos + 2] == "=~":
            op = rest[pos : pos + 2] or "end of text"
            raise fail(f"expected '=' after label {label!r}, got {op!r} (only = is supported)")
        pos = _skip_blanks(rest, pos + 1)
        value, pos = _label_value(rest, pos, fail)
        if label in labels:
            raise fail(f"label {label!r} is given twice")
        labels[label] = value
        pos = _skip_blanks(rest, pos)
        if rest[pos : pos + 1] == ",":
            pos += 1
            continue
        if rest[pos : pos + 1] != "}":
            raise fail("expected ',' or '}' after a label value")
        break
    trailing = rest[pos + 1 :].strip()
    if trailing:
        raise fail(f"unexpected text after '}}': {trailing!r}")
    return Selector(name, tuple(sorted(labels.items())))


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _label_value(text: str, pos: int, fail: Any) -> tuple[str, int]:
    if text[pos : pos + 1] == '"':
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                i += 2
            elif c == '"':
                return "".join(out), i + 1
            else:
                out.append(c)
                i += 1
        raise fail("unterminated quoted label value")
    end = pos
    while end < len(text) and text[end] not in ',}" \t':
        end += 1
    if end == pos:
        raise fail('expected a label value (quote an empty one: "")')
    return text[pos:end], end


def _selector(value: Selector | str | None) -> Selector | None:
    return parse_selector(value) if isinstance(value, str) else value


@attrs.frozen
class CustomMetric:
    """One ``customMetrics`` entry: the newest series ``selector`` matches becomes the
    scalar attribute ``<attribute_key>/core-metrics-extractor`` (llm-d-router
    ``ScalarMetricValue``)."""

    attribute_key: str
    """``attributeKey``: the attribute's data type."""
    selector: Selector = attrs.field(converter=_selector)
    """``metricSpec``: which series to read."""

    @property
    def table_key(self) -> str:
        """The key written to ``table.attributes``."""
        return f"{self.attribute_key}/{CUSTOM_METRICS_PRODUCER}"


def _custom_metrics(value: Any) -> tuple[CustomMetric, ...]:
    return tuple(value)


@attrs.frozen
class EngineSpec:
    """Where one engine publishes each metric the scheduler reads.

    Every selector field may be ``None`` (disabled). Strings are parsed on construction.
    When both a cache-info label and a gauge are configured for the block geometry, the
    gauge wins.
    """

    name: str
    waiting: Selector | None = attrs.field(default=None, converter=_selector)
    """WaitingQueueSize (GIE ``queuedRequestsSpec``)."""
    running: Selector | None = attrs.field(default=None, converter=_selector)
    """RunningRequestsSize (``runningRequestsSpec``)."""
    kv_usage: Selector | None = attrs.field(default=None, converter=_selector)
    """KVCacheUsagePercent as a 0..1 fraction (``kvUsageSpec``)."""
    kv_usage_fallback: Selector | None = attrs.field(default=None, converter=_selector)
    """Read when ``kv_usage`` finds no series (``kvUsageFallbackSpec``; ours)."""
    lora_info: Selector | None = attrs.field(default=None, converter=_selector)
    """LoRA info series; labels ``running_lora_adapters``, ``waiting_lora_adapters``,
    ``max_lora``; the value is a creation time, the largest wins (``loraSpec``)."""
    cache_info: Selector | None = attrs.field(default=None, converter=_selector)
    """Cache-config info series whose labels carry the block geometry (``cacheInfoSpec``)."""
    cache_info_block_size_label: str = "block_size"
    """Label of ``cache_info`` holding tokens per block (``cacheInfoBlockSizeLabel``)."""
    cache_info_num_blocks_label: str = "num_gpu_blocks"
    """Label of ``cache_info`` holding the number of blocks (``cacheInfoNumBlocksLabel``)."""
    block_size: Selector | None = attrs.field(default=None, converter=_selector)
    """Gauge of tokens per block (``blockSizeSpec``; ours)."""
    num_blocks: Selector | None = attrs.field(default=None, converter=_selector)
    """Gauge of the number of KV blocks (``numBlocksSpec``; ours)."""
    custom_metrics: tuple[CustomMetric, ...] = attrs.field(default=(), converter=_custom_metrics)
    """Extra series read into scalar attributes (``customMetrics``; llm-d-router)."""

    @property
    def selectors(self) -> tuple[Selector, ...]:
        """Every configured selector, in field order."""
        fields = (
            self.waiting,
            self.running,
            self.kv_usage,
            self.kv_usage_fallback,
            self.lora_info,
            self.cache_info,
            self.block_size,
            self.num_blocks,
            *(c.selector for c in self.custom_metrics),
        )
        return tuple(s for s in fields if s is not None)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Distinct sample names the engine reads (what a page must be searched for)."""
        return tuple(dict.fromkeys(s.name for s in self.selectors))

    def to_config(self) -> dict[str, Any]:
        """The ``engineConfigs`` entry that builds this spec (GIE keys plus ours)."""
        out: dict[str, Any] = {"name": self.name}
        for key, attr in ENGINE_CONFIG_KEYS.items():
            if attr in ("name", "custom_metrics"):
                continue
            value = getattr(self, attr)
            out[key] = value if isinstance(value, str) else ("" if value is None else str(value))
        if self.custom_metrics:
            out["customMetrics"] = [
                {"attributeKey": c.attribute_key, "metricSpec": str(c.selector)}
                for c in self.custom_metrics
            ]
        return out


ENGINE_CONFIG_KEYS: Final[Mapping[str, str]] = {
    "name": "name",
    "queuedRequestsSpec": "waiting",
    "runningRequestsSpec": "running",
    "kvUsageSpec": "kv_usage",
    "kvUsageFallbackSpec": "kv_usage_fallback",
    "loraSpec": "lora_info",
    "cacheInfoSpec": "cache_info",
    "cacheInfoBlockSizeLabel": "cache_info_block_size_label",
    "cacheInfoNumBlocksLabel": "cache_info_num_blocks_label",
    "blockSizeSpec": "block_size",
    "numBlocksSpec": "num_blocks",
    "customMetrics": "custom_metrics",
}
"""``engineConfigs`` keys → :class:`EngineSpec` fields."""

ENGINE_CONFIG_ALIASES: Final[Mapping[str, str]] = {
    "cacheBlockSizeLabelName": "cacheInfoBlockSizeLabel",
    "cacheNumBlocksLabelName": "cacheInfoNumBlocksLabel",
    "cacheBlockSizeSpec": "blockSizeSpec",
    "cacheNumBlocksSpec": "numBlocksSpec",
}
"""llm-d-router's spelling → ours (both accepted; not both in one entry)."""

_TRITON_REQ: Final = "nv_trt_llm_request_metrics"
_TRITON_KV: Final = "nv_trt_llm_kv_cache_block_metrics"

BUILTIN_ENGINES: Final[Mapping[str, EngineSpec]] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            "vllm",
            waiting="vllm:num_requests_waiting",
            running="vllm:num_requests_running",
            kv_usage="vllm:kv_cache_usage_perc",
            kv_usage_fallback="vllm:gpu_cache_usage_perc",
            lora_info="vllm:lora_requests_info",
            cache_info="vllm:cache_config_info",
        ),
        EngineSpec(
            "sglang",
            waiting="sglang:num_queue_reqs",
            running="sglang:num_running_reqs",
            kv_usage="sglang:token_usage",
            cache_info="sglang:cache_config_info",
            cache_info_block_size_label="page_size",
            cache_info_num_blocks_label="num_pages",
        ),
        EngineSpec(
            "trtllm-serve",
            waiting="trtllm_num_requests_waiting",
            running="trtllm_num_requests_running",
            kv_usage="trtllm_kv_cache_utilization",
            block_size="trtllm_kv_cache_tokens_per_block",
            num_blocks="trtllm_kv_cache_max_blocks",
        ),
        EngineSpec(
            "triton-tensorrt-llm",
            waiting=f"{_TRITON_REQ}{{request_type=waiting}}",
            running=f"{_TRITON_REQ}{{request_type=scheduled}}",
            kv_usage=f"{_TRITON_KV}{{kv_cache_block_type=fraction}}",
            block_size=f"{_TRITON_KV}{{kv_cache_block_type=tokens_per}}",
            num_blocks=f"{_TRITON_KV}{{kv_cache_block_type=max}}",
        ),
        # Triton Inference Server without an LLM backend (llm-d-router: no KV metrics).
        EngineSpec(
            "triton",
            waiting="nv_inference_pending_request_count",
            running="nv_inference_exec_count",
        ),
    )
}
"""GIE's engine table (``gateway-api-inference-extension``:
``pkg/epp/framework/plugins/datalayer/``), by engine name."""


def engine_from_config(entry: Any, *, path: str = "engineConfigs[0]") -> EngineSpec:
    """Build an :class:`EngineSpec` from one ``engineConfigs`` entry.

    Keys left out are disabled (``""``), as in GIE, where an entry fully replaces the
    built-in engine of the same name; the two label keys default to vLLM's label names.

    Raises:
        ConfigError: not a mapping, unknown key (with a did-you-mean), a value that is not
            a string, an empty or reserved name, or a bad selector; ``path`` names the key.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"an engine config is a mapping with keys {', '.join(ENGINE_CONFIG_KEYS)}",
            path=path,
            value=entry,
        )
    kwargs: dict[str, Any] = {}
    known = [*ENGINE_CONFIG_KEYS, *ENGINE_CONFIG_ALIASES]
    for key, value in entry.items():
        canonical = ENGINE_CONFIG_ALIASES.get(key, key) if isinstance(key, str) else key
        attr = ENGINE_CONFIG_KEYS.get(canonical) if isinstance(canonical, str) else None
        if attr is not None and attr in kwargs:
            raise ConfigError(
                f"{key} and {canonical} set the same field; give one of them",
                path=f"{path}.{key}",
                value=value,
            )
        if attr == "custom_metrics":
            kwargs[attr] = _parse_custom_metrics(value, f"{path}.{key}")
            continue
        if attr is None:
            near = closest(str(key), known)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"unknown key {key!r}{hint}; known keys: {', '.join(known)}",
                path=path,
                value=key,
            )
        if not isinstance(value, str):
            raise ConfigError(
                f"{key} must be a string, got {describe(value)}", path=f"{path}.{key}", value=value
            )
        if attr.endswith("_label"):
            if not _LABEL_NAME.fullmatch(value):
                raise ConfigError(
                    f"{key} must be a label name, got {value!r}", path=f"{path}.{key}", value=value
                )
            kwargs[attr] = value
        elif attr == "name":
            kwargs[attr] = value.strip()
        else:
            kwargs[attr] = parse_selector(value, path=f"{path}.{key}")
    name = kwargs.pop("name", "")
    if not name:
        raise ConfigError("an engine config needs a non-empty name", path=f"{path}.name")
    if name == RESERVED_ENGINE:
        raise ConfigError(
            f"engine name {name!r} is reserved (GIE uses it for the default engine)",
            path=f"{path}.name",
            value=name,
        )
    return EngineSpec(name, **kwargs)


_CUSTOM_METRIC_KEYS: Final = ("attributeKey", "metricSpec")


def _parse_custom_metrics(raw: Any, path: str) -> tuple[CustomMetric, ...]:
    """``customMetrics``: a list of ``{attributeKey, metricSpec}``, keys unique."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise ConfigError(
            f"customMetrics must be a list of {{attributeKey, metricSpec}}, got {describe(raw)}",
            path=path,
            value=raw,
        )
    out: list[CustomMetric] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"a custom metric is a mapping {{attributeKey, metricSpec}}, got {describe(item)}",
                path=where,
                value=item,
            )
        for key in item:
            if key not in _CUSTOM_METRIC_KEYS:
                near = closest(str(key), list(_CUSTOM_METRIC_KEYS))
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(
                    f"unknown key {key!r}{hint}; known keys: attributeKey, metricSpec",
                    path=where,
                    value=key,
                )
        key = item.get("attributeKey")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(
                f"attributeKey must be a non-empty string, got {describe(key)}",
                path=f"{where}.attributeKey",
                value=key,
            )
        if key in seen:
            raise ConfigError(
                f"attributeKey {key!r} is given twice", path=f"{where}.attributeKey", value=key
            )
        seen.add(key)
        spec = item.get("metricSpec")
        if not isinstance(spec, str):
            raise ConfigError(
                f"metricSpec must be a metric selector string, got {describe(spec)}",
                path=f"{where}.metricSpec",
                value=spec,
            )
        selector = parse_selector(spec, path=f"{where}.metricSpec")
        if selector is None:
            raise ConfigError(
                "metricSpec must not be empty", path=f"{where}.metricSpec", value=spec
            )
        out.append(CustomMetric(key, selector))
    return tuple(out)


def resolve_engines(
    engine_configs: Iterable[EngineSpec] = (), *, path: str = "engineConfigs"
) -> dict[str, EngineSpec]:
    """The built-in engines with ``engine_configs`` replacing those of the same name.

    Raises:
        ConfigError: two entries share a name.
    """
    engines = dict(BUILTIN_ENGINES)
    seen: set[str] = set()
    for i, spec in enumerate(engine_configs):
        if spec.name in seen:
            raise ConfigError(f"engine {spec.name!r} is configured twice", path=f"{path}[{i}].name")
        seen.add(spec.name)
        engines[spec.name] = spec
    return engines


def parse_engine_configs(raw: Any, *, path: str = "engineConfigs") -> tuple[EngineSpec, ...]:
    """Parse an ``engineConfigs`` list (``None`` = empty).

    Raises:
        ConfigError: not a list, or an entry is invalid (see :func:`engine_from_config`).
    """
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise ConfigError(
            f"engineConfigs must be a list, got {describe(raw)}", path=path, value=raw
        )
    specs = tuple(engine_from_config(e, path=f"{path}[{i}]") for i, e in enumerate(raw))
    resolve_engines(specs, path=path)  # duplicate names
    return specs
