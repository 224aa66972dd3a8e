"""Data-layer plugins: ``metrics-data-source`` and ``core-metrics-extractor``.

GIE's default data layer (``gateway-api-inference-extension``:
``pkg/epp/framework/plugins/datalayer/``): the source says where an endpoint's Prometheus
page is, the extractor reads the engine's metrics from it. Neither takes part
in a scheduling cycle; the :class:`~inference_sched.datalayer.scraper.Scraper` drives
them. Page: ``docs/datalayer.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from inference_sched.datalayer.engines import (
    DEFAULT_ENGINE,
    ENGINE_LABEL_KEY,
    EngineSpec,
    parse_engine_configs,
    resolve_engines,
)
from inference_sched.datalayer.parse import EndpointSample, Page, extract
from inference_sched.datalayer.scraper import MetricsExtractor, MetricsSource
from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.interfaces import Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Endpoint
from inference_sched.params import ParamCheck, boolean, one_of, param, string

__all__ = ["CoreMetricsExtractor", "MetricsDataSource"]


def _metrics_path(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.startswith("/"):
        raise ParamCheck("path", "a URL path starting with '/'", value)


def _non_empty(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.strip():
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty string", value)


@register("metrics-data-source")
class MetricsDataSource:
    """HTTP(S) GET of ``scheme://<metrics host:port><path>`` per endpoint."""

    type: ClassVar[str]

    @attrs.frozen
    class Params:
        """Parameters of ``metrics-data-source`` (GIE defaults)."""

        scheme: str = param("http", alias="scheme", check=one_of("http", "https"))
        """``http`` or ``https``."""
        path: str = param("/metrics", alias="path", check=_metrics_path)
        """URL path of the Prometheus page."""
        insecure_skip_verify: bool = param(True, alias="insecureSkipVerify", check=boolean)
        """With ``https``: accept any certificate (model servers use self-signed ones)."""

    def __init__(self, name: str, params: MetricsDataSource.Params, handle: Handle) -> None:
        self.name = name
        self.params = params

    @property
    def insecure_skip_verify(self) -> bool:
        """Accept any TLS certificate."""
        return self.params.insecure_skip_verify

    def url_for(self, endpoint: Endpoint) -> str:
        """``scheme://ip:metrics_port/path`` (IPv6 addresses bracketed)."""
        return f"{self.params.scheme}://{endpoint.metrics_hostport}{self.params.path}"


def _engine_configs(raw: Any) -> tuple[EngineSpec, ...]:
    try:
        return parse_engine_configs(raw, path="")
    except ConfigError as exc:
        key = "engineConfigs" + exc.path if exc.path else "engineConfigs"
        raise ParamCheck(key, f"a valid engine config ({exc.message})", exc.value) from None


@register("core-metrics-extractor")
class CoreMetricsExtractor:
    """Reads waiting / running / KV usage / LoRA / block geometry with the engine's
    mapping (chosen by pod label, else ``defaultEngine``)."""

    type: ClassVar[str]

    @attrs.frozen
    class Params:
        """Parameters of ``core-metrics-extractor`` (GIE defaults)."""

        engine_label_key: str = param(ENGINE_LABEL_KEY, alias="engineLabelKey", check=_non_empty)
        """Pod label naming the engine."""
        default_engine: str = param(DEFAULT_ENGINE, alias="defaultEngine", check=_non_empty)
        """Engine of endpoints without the label."""
        engine_configs: tuple[EngineSpec, ...] = param(
            (), alias="engineConfigs", parse=_engine_configs
        )
        """Extra engines; one with a built-in's name replaces it entirely."""

        def __attrs_post_init__(self) -> None:
            engines = resolve_engines(self.engine_configs)
            if self.default_engine not in engines:
                raise ParamCheck(
                    "defaultEngine", "one of " + ", ".join(map(repr, engines)), self.default_engine
                )

    def __init__(self, name: str, params: CoreMetricsExtractor.Params, handle: Handle) -> None:
        self.name = name
        self.params = params
        self.engines: Mapping[str, EngineSpec] = resolve_engines(params.engine_configs)
        self._default = self.engines[params.default_engine]

    def engine_for(self, endpoint: Endpoint) -> EngineSpec:
        """The mapping for ``endpoint``: its engine label's, else the default engine's.

        Raises:
            DataError: the label names an engine with no mapping.
        """
        label = endpoint.labels.get(self.params.engine_label_key, "")
        if not label:
            return self._default
        spec = self.engines.get(label)
        if spec is None:
            raise DataError(
                f"label {self.params.engine_label_key}={label!r} names no known engine "
                f"(known: {', '.join(sorted(self.engines))}); add it to engineConfigs",
                source=endpoint.name,
            )
        return spec

    def families_for(self, endpoint: Endpoint) -> tuple[str, ...]:
        """Sample names read for ``endpoint`` (for the scraper's ``name[]`` filter).

        Raises:
            DataError: the engine label names no known engine.
        """
        return self.engine_for(endpoint).metric_names

    accepts_bytes: ClassVar[bool] = True
    """The scraper may hand over pages as received: only the lines read get decoded."""
    accepts_spans: ClassVar[bool] = True
    """... and as a :class:`~inference_sched.datalayer.parse.Span` of its buffer."""

    def extract(self, text: Page, endpoint: Endpoint) -> EndpointSample:
        """Read ``endpoint``'s page (``str``, or UTF-8 ``bytes``) with its engine's mapping.

        Raises:
            DataError: unknown engine label, malformed page or impossible values.
        """
        return extract(text, self.engine_for(endpoint), endpoint=endpoint.name)


_source: type[MetricsSource] = MetricsDataSource
_extractor: type[MetricsExtractor] = CoreMetricsExtractor
