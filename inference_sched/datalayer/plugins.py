"""Data-layer plugins: ``metrics-data-source`` and ``core-metrics-extractor``.

GIE's default data layer as llm-d-router has it today (``llm-d/llm-d-router``:
``pkg/epp/framework/plugins/datalayer/source/metrics/datasource.go``,
``.../extractor/metrics/``): the source says where an endpoint's Prometheus page is (and
how to reach it: port override, TLS, mTLS, polling interval), the extractor reads the
engine's metrics from it. Neither takes part in a scheduling cycle; the
:class:`~inference_sched.datalayer.scraper.Scraper` drives them. :class:`HttpSource` is
the URL and TLS logic every polled source shares (:mod:`.sources` has the others). Page:
``docs/datalayer.md``.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from inference_sched.datalayer.engines import (
    DEFAULT_ENGINE,
    ENGINE_LABEL_KEY,
    LEGACY_ENGINE_LABEL_KEY,
    RESERVED_ENGINE,
    EngineSpec,
    parse_engine_configs,
    resolve_engines,
)
from inference_sched.datalayer.fetch import DEFAULT_MAX_BYTES, tls_context
from inference_sched.datalayer.parse import EndpointSample, Page, extract
from inference_sched.datalayer.scraper import MetricsExtractor, MetricsSource
from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.interfaces import Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Endpoint
from inference_sched.params import ParamCheck, boolean, one_of, param, parse_duration_s, string

__all__ = [
    "CoreMetricsExtractor",
    "HttpSource",
    "MetricsDataSource",
    "check_interval",
    "check_metrics_path",
    "check_port",
    "check_readable_file",
    "check_tls_pair",
    "parse_interval",
]


def check_metrics_path(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """``path``: a URL path starting with ``/``."""
    string(inst, attribute, value)
    if not value.startswith("/"):
        raise ParamCheck("path", "a URL path starting with '/'", value)


_metrics_path = check_metrics_path


def _non_empty(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    string(inst, attribute, value)
    if not value.strip():
        raise ParamCheck(attribute.alias or attribute.name, "a non-empty string", value)


def check_port(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """``port``: an int in 0..65535, 0 meaning "the endpoint's own metrics port"."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ParamCheck(attribute.alias or attribute.name, "an int in [0, 65535]", value)


def check_readable_file(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A path parameter: ``""`` (unset) or a readable file."""
    string(inst, attribute, value)
    if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
        raise ParamCheck(attribute.alias or attribute.name, "a readable file", value)


def parse_interval(raw: Any) -> float | None:
    """``interval``: a duration string (``"1s"``); ``""`` or absent polls every tick."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ParamCheck("interval", "a duration string such as '1s'", raw)
    try:
        seconds = parse_duration_s(raw)
    except ValueError:
        raise ParamCheck("interval", "a duration string such as '1s'", raw) from None
    return seconds


def check_interval(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """``interval``: unset or a positive duration."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ParamCheck("interval", "a positive duration such as '1s'", value)
    if not math.isfinite(value):
        raise ParamCheck("interval", "a finite duration", value)


def check_tls_pair(params: Any) -> None:
    """``clientCertPath`` and ``clientKeyPath`` go together (llm-d-router TLSOptions)."""
    if bool(params.client_cert_path) != bool(params.client_key_path):
        given = "clientCertPath" if params.client_cert_path else "clientKeyPath"
        missing = "clientKeyPath" if params.client_cert_path else "clientCertPath"
        raise ParamCheck(missing, f"a file path, since {given} is set (mTLS needs both)", "")


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class HttpSource:
    """What every polled HTTP(S) source shares: the URL of an endpoint's page and the
    TLS settings. Subclasses are registered plugins whose ``Params`` have ``scheme``,
    ``path``, ``insecure_skip_verify`` and optionally ``port``, ``use_node_address``,
    ``ca_cert_path``, ``client_cert_path``, ``client_key_path``, ``interval_s``.

    The host is the endpoint's address with ``port`` when ``port`` > 0 (the node's
    address instead with ``useNodeAddress``, when the endpoint has one), else the
    endpoint's metrics host and port (llm-d-router
    ``pkg/epp/framework/plugins/datalayer/source/http/datasource.go``, ``getEndpoint``).
    """

    page_format: ClassVar[str] = "prometheus"
    """What the page is: ``prometheus`` text or ``models`` JSON (an extractor declares
    the same ``page_format``; the config is refused when they differ)."""
    max_bytes: ClassVar[int] = DEFAULT_MAX_BYTES
    """Largest body read."""

    def __init__(self, name: str, params: Any, handle: Handle) -> None:
        self.name = name
        self.params = params
        self._ssl: ssl.SSLContext | None = None
        if params.scheme == "https":
            self._ssl = self.ssl_context()  # unreadable certificates fail at startup

    @property
    def insecure_skip_verify(self) -> bool:
        """Accept any TLS certificate."""
        return bool(self.params.insecure_skip_verify)

    @property
    def interval_s(self) -> float | None:
        """Polling period of this source (``interval``), or ``None``: the runner's own."""
        return getattr(self.params, "interval_s", None)

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for ``https`` (built once; CA bundle and client certificate
        from the parameters)."""
        if self._ssl is None:
            p = self.params
            self._ssl = tls_context(
                verify=not p.insecure_skip_verify,
                ca_cert_path=getattr(p, "ca_cert_path", ""),
                client_cert_path=getattr(p, "client_cert_path", ""),
                client_key_path=getattr(p, "client_key_path", ""),
            )
        return self._ssl

    def url_for(self, endpoint: Endpoint) -> str:
        """``scheme://host:port/path`` for ``endpoint`` (IPv6 addresses bracketed)."""
        p = self.params
        port = getattr(p, "port", 0)
        if port:
            host = endpoint.address
            if getattr(p, "use_node_address", False):
                host = getattr(endpoint, "node_address", None) or host
            hostport = _join_host_port(host, port)
        else:
            hostport = endpoint.metrics_hostport
        return f"{p.scheme}://{hostport}{p.path}"


@register("metrics-data-source")
class MetricsDataSource(HttpSource):
    """HTTP(S) GET of ``scheme://<metrics host:port><path>`` per endpoint."""

    type: ClassVar[str]
    stability: ClassVar[str] = "stable"

    @attrs.frozen
    class Params:
        """Parameters of ``metrics-data-source`` (llm-d-router defaults)."""

        scheme: str = param("http", alias="scheme", check=one_of("http", "https"))
        """``http`` or ``https``."""
        path: str = param("/metrics", alias="path", check=_metrics_path)
        """URL path of the Prometheus page."""
        port: int = param(0, alias="port", check=check_port)
        """Port of the page on every endpoint (1-65535); 0 keeps the endpoint's metrics
        port. Not for pools with several target ports (each rank has its own)."""
        insecure_skip_verify: bool = param(True, alias="insecureSkipVerify", check=boolean)
        """With ``https``: accept any certificate (model servers use self-signed ones)."""
        ca_cert_path: str = param("", alias="caCertPath", check=check_readable_file)
        """With ``https``: PEM CA bundle to verify the server with (ignored with
        ``insecureSkipVerify``)."""
        client_cert_path: str = param("", alias="clientCertPath", check=check_readable_file)
        """With ``https``: client certificate (PEM) for mTLS; needs ``clientKeyPath``."""
        client_key_path: str = param("", alias="clientKeyPath", check=check_readable_file)
        """With ``https``: the client certificate's private key (PEM)."""
        interval_s: float | None = param(
            None, alias="interval", parse=parse_interval, check=check_interval
        )
        """Polling period of this source (``"1s"``); unset: the scraper's interval."""

        def __attrs_post_init__(self) -> None:
            check_tls_pair(self)


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
    stability: ClassVar[str] = "stable"

    @attrs.frozen
    class Params:
        """Parameters of ``core-metrics-extractor`` (llm-d-router defaults)."""

        engine_label_key: str = param(ENGINE_LABEL_KEY, alias="engineLabelKey", check=_non_empty)
        """Pod label naming the engine (the legacy ``inference.networking.k8s.io/engine-type``
        is read when it is absent or empty)."""
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
        key = self.params.engine_label_key
        label = endpoint.labels.get(key, "")
        if not label:
            key = LEGACY_ENGINE_LABEL_KEY
            label = endpoint.labels.get(key, "")
        if not label or label == RESERVED_ENGINE:
            return self._default
        spec = self.engines.get(label)
        if spec is None:
            raise DataError(
                f"label {key}={label!r} names no known engine "
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

    page_format: ClassVar[str] = "prometheus"
    """Reads Prometheus text pages."""
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
