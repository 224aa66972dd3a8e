"""Polled data sources and extractors beyond the core metrics: model lists, GPU
utilization, peer-cluster load.

llm-d-router (``llm-d/llm-d-router``, ``pkg/epp/framework/plugins/datalayer/``):

* ``models-data-source`` + ``models-data-extractor``: each endpoint's OpenAI
  ``/v1/models`` list → attribute ``/v1/models/models-data-extractor``
  (``source/models/datasource.go``, ``extractor/models/extractor.go``);
* ``dcgm-data-source`` + ``dcgm-extractor``: NVIDIA DCGM exporter's
  ``DCGM_FI_DEV_GPU_UTIL`` → attribute ``GPUUtilization/dcgm-extractor``
  (``source/dcgm/datasource.go``, ``extractor/dcgm/extractor.go``);
* ``multicluster-metrics-data-source`` + ``multicluster-metrics-extractor``: a peer
  cluster's EPP pool gauges → ``llm-d.ai/multicluster-kv-cache-utilization`` and
  ``llm-d.ai/multicluster-queue-size`` (``source/metrics/multicluster.go``,
  ``extractor/metrics/multicluster.go``).

The :class:`~inference_sched.datalayer.attribute_poller.AttributePoller` drives them
(``scrapers_from_config`` builds one per ``dataLayer`` source). Pages:
``docs/plugins/<type>.md``, ``docs/datalayer.md``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final

import attrs

from inference_sched._yaml_limits import YAMLLimitError, check_nesting
from inference_sched.datalayer.engines import Selector, parse_selector
from inference_sched.datalayer.parse import Page, page_text, read_series
from inference_sched.datalayer.plugins import (
    HttpSource,
    check_interval,
    check_metrics_path,
    check_port,
    check_readable_file,
    check_tls_pair,
    parse_interval,
)
from inference_sched.errors import ConfigError, DataError
from inference_sched.framework.interfaces import AttributeExtractor, DataSource, Handle
from inference_sched.framework.registry import register
from inference_sched.framework.types import Endpoint
from inference_sched.params import NoParams, ParamCheck, boolean, one_of, param
from inference_sched.state.attributes import attribute_key

__all__ = [
    "GPU_UTILIZATION_KEY",
    "MODELS_KEY",
    "MULTICLUSTER_KV_CACHE_UTILIZATION_KEY",
    "MULTICLUSTER_QUEUE_SIZE_KEY",
    "DcgmDataSource",
    "DcgmExtractor",
    "ModelsDataExtractor",
    "ModelsDataSource",
    "MultiClusterMetricsDataSource",
    "MultiClusterMetricsExtractor",
    "gpu_utilization",
    "parse_models",
]

MODELS_KEY: Final = attribute_key("/v1/models", "models-data-extractor")
"""``/v1/models/models-data-extractor``: a tuple of read-only ``{id, parent}`` mappings."""
GPU_UTILIZATION_KEY: Final = attribute_key("GPUUtilization", "dcgm-extractor")
"""``GPUUtilization/dcgm-extractor``: a float in [0, 1] (max over the pod's GPUs)."""
MULTICLUSTER_KV_CACHE_UTILIZATION_KEY: Final = attribute_key(
    "llm-d.ai/multicluster-kv-cache-utilization"
)
"""A peer cluster's average KV-cache utilization (float; no producer in the key)."""
MULTICLUSTER_QUEUE_SIZE_KEY: Final = attribute_key("llm-d.ai/multicluster-queue-size")
"""A peer cluster's average queue size (float; no producer in the key)."""

_GPU_UTIL_METRIC: Final = "DCGM_FI_DEV_GPU_UTIL"
_POD_LABEL: Final = "pod"
_RANK_SUFFIX: Final = re.compile(r"-rank-\d+$")


# ====================================================================== sources
@register("models-data-source")
class ModelsDataSource(HttpSource):
    """GET of each endpoint's OpenAI model list (``/v1/models``)."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    page_format: ClassVar[str] = "models"

    @attrs.frozen
    class Params:
        """Parameters of ``models-data-source`` (llm-d-router defaults)."""

        scheme: str = param("http", alias="scheme", check=one_of("http", "https"))
        """``http`` or ``https``."""
        path: str = param("/v1/models", alias="path", check=check_metrics_path)
        """URL path of the model list."""
        insecure_skip_verify: bool = param(True, alias="insecureSkipVerify", check=boolean)
        """With ``https``: accept any certificate."""
        ca_cert_path: str = param("", alias="caCertPath", check=check_readable_file)
        """With ``https``: PEM CA bundle to verify the server with."""
        client_cert_path: str = param("", alias="clientCertPath", check=check_readable_file)
        """With ``https``: client certificate (PEM) for mTLS; needs ``clientKeyPath``."""
        client_key_path: str = param("", alias="clientKeyPath", check=check_readable_file)
        """With ``https``: the client certificate's private key (PEM)."""
        interval_s: float | None = param(
            None, alias="interval", parse=parse_interval, check=check_interval
        )
        """Polling period of this source (``"5s"``); unset: the poller's interval."""

        def __attrs_post_init__(self) -> None:
            check_tls_pair(self)


@register("dcgm-data-source")
class DcgmDataSource(HttpSource):
    """GET of the NVIDIA DCGM exporter's Prometheus page next to (or on the node of)
    each endpoint."""

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"

    @attrs.frozen
    class Params:
        """Parameters of ``dcgm-data-source`` (llm-d-router defaults)."""

        scheme: str = param("http", alias="scheme", check=one_of("http", "https"))
        """``http`` or ``https``."""
        path: str = param("/metrics", alias="path", check=check_metrics_path)
        """URL path of the exporter's page."""
        port: int = param(9400, alias="port", check=check_port)
        """Port of the exporter (DCGM's 9400); 0 scrapes the endpoint's metrics port."""
        insecure_skip_verify: bool = param(True, alias="insecureSkipVerify", check=boolean)
        """With ``https``: accept any certificate."""
        use_node_address: bool = param(False, alias="useNodeAddress", check=boolean)
        """Scrape the endpoint's node address (a DaemonSet exporter) instead of its own;
        needs ``port`` > 0. An endpoint without a node address is scraped at its own."""
        interval_s: float | None = param(
            None, alias="interval", parse=parse_interval, check=check_interval
        )
        """Polling period of this source (``"1s"``); unset: the poller's interval."""

        def __attrs_post_init__(self) -> None:
            if self.use_node_address and self.port == 0:
                raise ParamCheck(
                    "port", "a port in [1, 65535], since useNodeAddress is true", self.port
                )


@register("multicluster-metrics-data-source")
class MultiClusterMetricsDataSource(HttpSource):
    """GET of a peer cluster's EPP metrics page: ``https`` with verification by default
    (the scrape crosses a trust boundary), body capped at 8 MiB."""

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    max_bytes: ClassVar[int] = 8 << 20

    @attrs.frozen
    class Params:
        """Parameters of ``multicluster-metrics-data-source`` (llm-d-router defaults)."""

        scheme: str = param("https", alias="scheme", check=one_of("http", "https"))
        """``https`` (default) or ``http``."""
        path: str = param("/metrics", alias="path", check=check_metrics_path)
        """URL path of the peer's metrics page."""
        port: int = param(0, alias="port", check=check_port)
        """Port of the page on every peer; 0 keeps the endpoint's metrics port."""
        insecure_skip_verify: bool = param(False, alias="insecureSkipVerify", check=boolean)
        """With ``https``: accept any certificate (off: peers are verified)."""
        ca_cert_path: str = param("", alias="caCertPath", check=check_readable_file)
        """With ``https``: PEM CA bundle of the peers (a private cluster CA)."""
        client_cert_path: str = param("", alias="clientCertPath", check=check_readable_file)
        """With ``https``: client certificate (PEM) for mTLS; needs ``clientKeyPath``."""
        client_key_path: str = param("", alias="clientKeyPath", check=check_readable_file)
        """With ``https``: the client certificate's private key (PEM)."""
        interval_s: float | None = param(
            None, alias="interval", parse=parse_interval, check=check_interval
        )
        """Polling period of this source; unset: the poller's interval."""

        def __attrs_post_init__(self) -> None:
            check_tls_pair(self)


# ====================================================================== parsers
def _json_error(endpoint: str, message: str) -> DataError:
    return DataError(f"/v1/models: {message}", source=endpoint)


def parse_models(page: Page, *, endpoint: str) -> tuple[Mapping[str, str], ...]:
    """An OpenAI ``/v1/models`` answer → ``({"id": ..., "parent": ...}, ...)`` in page
    order (read-only mappings; ``parent`` is ``""`` for a base model). Other fields of
    an entry are ignored; a missing or ``null`` ``data`` is an empty list (llm-d-router
    decodes it so).

    Raises:
        DataError: not JSON, nested too deep, not an object, ``data`` not a list, an
            entry that is not an object, an ``id`` that is not a non-empty string, a
            ``parent`` that is not a string; the message names the field
            (``data[2].id``).
    """
    text = page_text(page)
    try:
        check_nesting(text)
        document = json.loads(text)
    except YAMLLimitError as exc:
        raise _json_error(endpoint, f"line {exc.line}: {exc.problem}") from None
    except json.JSONDecodeError as exc:
        raise _json_error(endpoint, f"line {exc.lineno}: not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
        raise _json_error(endpoint, f"not usable JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(document, dict):
        raise _json_error(endpoint, f"expected a JSON object, got {type(document).__name__}")
    data = document.get("data")
    if data is None:
        return ()
    if not isinstance(data, list):
        raise _json_error(endpoint, f"data: expected a list, got {type(data).__name__}")
    models: list[Mapping[str, str]] = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise _json_error(endpoint, f"data[{i}]: expected an object, got {_kind(entry)}")
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise _json_error(
                endpoint, f"data[{i}].id: expected a non-empty string, got {_kind(model_id)}"
            )
        parent = entry.get("parent")
        if parent is None:
            parent = ""
        elif not isinstance(parent, str):
            raise _json_error(endpoint, f"data[{i}].parent: expected a string, got {_kind(parent)}")
        models.append(MappingProxyType({"id": model_id, "parent": parent}))
    return tuple(models)


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{text[:40]}... ({type(value).__name__})" if len(text) > 40 else text


def pod_name_of(endpoint: Endpoint) -> str:
    """The pod an endpoint belongs to: its ``pod_name`` when it has one, else its name
    without GIE's ``-rank-<n>`` suffix."""
    explicit = endpoint.pod_name
    if explicit:
        return str(explicit)
    return _RANK_SUFFIX.sub("", endpoint.name)


def gpu_utilization(page: Page, *, endpoint: str, pod: str = "") -> float:
    """``DCGM_FI_DEV_GPU_UTIL`` (percent) of ``pod``'s GPUs as a fraction: the largest
    sample whose ``pod`` label equals ``pod`` or that has no ``pod`` label (every sample
    when ``pod`` is empty), floored at 0, divided by 100. Non-finite samples are skipped.

    Raises:
        DataError: the family is missing, has no (finite) sample for ``pod``, or one of its
            lines is malformed (the message names the line).
    """
    series = read_series(page, _GPU_UTIL_METRIC, endpoint=endpoint)
    if not series:
        raise DataError(f"metric {_GPU_UTIL_METRIC!r} not found in the DCGM page", source=endpoint)
    best: float | None = None
    for s in series:
        owner = s.labels.get(_POD_LABEL)
        if pod and owner is not None and owner != pod:
            continue
        if not math.isfinite(s.value):
            continue
        best = s.value if best is None else max(best, s.value)
    if best is None:
        raise DataError(
            f"metric {_GPU_UTIL_METRIC!r} has no finite sample for pod {pod!r}", source=endpoint
        )
    return max(best, 0.0) / 100.0


# ====================================================================== extractors
class _AttributeExtractorBase:
    """An attribute extractor (``extract_attributes``) and the page format it reads."""

    name: str
    page_format: ClassVar[str] = "prometheus"

    def extract_attributes(self, page: Any, endpoint: Endpoint) -> Mapping[str, Any]:
        raise NotImplementedError


@register("models-data-extractor")
class ModelsDataExtractor(_AttributeExtractorBase):
    """The model list of ``models-data-source`` → attribute
    ``/v1/models/models-data-extractor``."""

    type: ClassVar[str]
    stability: ClassVar[str] = "beta"
    page_format: ClassVar[str] = "models"
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name

    def extract_attributes(self, page: Any, endpoint: Endpoint) -> Mapping[str, Any]:
        """``{MODELS_KEY: (...)}``.

        Raises:
            DataError: see :func:`parse_models`.
        """
        return {MODELS_KEY: parse_models(page, endpoint=endpoint.name)}


@register("dcgm-extractor")
class DcgmExtractor(_AttributeExtractorBase):
    """GPU utilization of the endpoint's pod from a DCGM exporter page → attribute
    ``GPUUtilization/dcgm-extractor`` in [0, 1]."""

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"
    Params = NoParams

    def __init__(self, name: str, params: NoParams, handle: Handle) -> None:
        self.name = name

    def extract_attributes(self, page: Any, endpoint: Endpoint) -> Mapping[str, Any]:
        """``{GPU_UTILIZATION_KEY: fraction}``.

        Raises:
            DataError: see :func:`gpu_utilization`.
        """
        util = gpu_utilization(page, endpoint=endpoint.name, pod=pod_name_of(endpoint))
        return {GPU_UTILIZATION_KEY: util}


def _selector_or_error(key: str, raw: Any) -> Selector:
    if not isinstance(raw, str):
        raise ParamCheck(key, "a metric selector such as 'name{label=\"v\"}'", raw)
    try:
        selector = parse_selector(raw)
    except ConfigError as exc:
        raise ParamCheck(key, f"a metric selector ({exc.message})", raw) from None
    if selector is None:
        raise ParamCheck(key, "a non-empty metric selector", raw)
    return selector


def _metric_spec(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _selector_or_error(attribute.alias or attribute.name, value)


@register("multicluster-metrics-extractor")
class MultiClusterMetricsExtractor(_AttributeExtractorBase):
    """A peer cluster's pool gauges (its EPP's ``llm_d_epp_average_*``) → attributes
    ``llm-d.ai/multicluster-kv-cache-utilization`` and ``llm-d.ai/multicluster-queue-size``."""

    type: ClassVar[str]
    stability: ClassVar[str] = "alpha"

    @attrs.frozen
    class Params:
        """Parameters of ``multicluster-metrics-extractor`` (llm-d-router defaults)."""

        kv_cache_utilization_metric: str = param(
            "llm_d_epp_average_kv_cache_utilization",
            alias="kvCacheUtilizationMetric",
            check=_metric_spec,
        )
        """Metric selector of the peer's average KV-cache utilization."""
        queue_size_metric: str = param(
            "llm_d_epp_average_queue_size", alias="queueSizeMetric", check=_metric_spec
        )
        """Metric selector of the peer's average queue size."""

    def __init__(
        self, name: str, params: MultiClusterMetricsExtractor.Params, handle: Handle
    ) -> None:
        self.name = name
        self.params = params
        self._metrics: tuple[tuple[str, Selector], ...] = (
            (
                MULTICLUSTER_KV_CACHE_UTILIZATION_KEY,
                _selector_or_error("kvCacheUtilizationMetric", params.kv_cache_utilization_metric),
            ),
            (
                MULTICLUSTER_QUEUE_SIZE_KEY,
                _selector_or_error("queueSizeMetric", params.queue_size_metric),
            ),
        )

    def extract_attributes(self, page: Any, endpoint: Endpoint) -> Mapping[str, Any]:
        """Each metric's newest matching sample (largest timestamp; first on ties); a
        metric the page lacks is left out, and the other one is still written.

        Raises:
            DataError: a malformed line of a family read, or neither metric on the page.
        """
        text = page_text(page)
        out: dict[str, float] = {}
        missing: list[str] = []
        for key, selector in self._metrics:
            best = None
            for s in read_series(text, selector.name, endpoint=endpoint.name):
                if selector.matches(s.labels) and (best is None or s.timestamp > best.timestamp):
                    best = s
            if best is None:
                missing.append(str(selector))
            else:
                out[key] = best.value
        if not out:
            raise DataError(
                f"none of the pool metrics is on the page (missing: {', '.join(missing)})",
                source=endpoint.name,
            )
        return out


_sources: tuple[type[DataSource], ...] = (
    ModelsDataSource,
    DcgmDataSource,
    MultiClusterMetricsDataSource,
)
_extractors: tuple[type[AttributeExtractor], ...] = (
    ModelsDataExtractor,
    DcgmExtractor,
    MultiClusterMetricsExtractor,
)
