"""Loading the ``EndpointPickerConfig`` from YAML text, a file, or a parsed mapping.

:func:`load_config` runs llm-d-router's loading pipeline (``llm-d-router:
pkg/epp/config/loader``; GIE's configs load too) over one document and returns the
*effective* config: exactly what the scheduler builds, with every plugin the pipeline
added listed (``is_auto``) and everything skipped explained in ``warnings``. It never
lists a plugin that cannot be built. docs/configuration.md describes the pipeline, the
errors and the warnings.

The package is split by concern:

* :mod:`~inference_sched.framework.config.model`: the constants and the result types
  (:class:`EndpointPickerConfig`, :class:`PluginSpec`, :class:`ProfileSpec`, …);
* :mod:`~inference_sched.framework.config.values`: quantities, parameters written back;
* :mod:`~inference_sched.framework.config.document`: YAML/JSON text → the document (with
  line numbers in the errors), and the one error a load raises;
* :mod:`~inference_sched.framework.config.checks`,
  :mod:`~inference_sched.framework.config.sections` and
  :mod:`~inference_sched.framework.config.flow`: the checks of each section;
* :mod:`~inference_sched.framework.config.phases`: the defaulting pipeline and the
  public entry points;
* :mod:`~inference_sched.framework.config.graph`: the data-dependency graph of producers
  (also what orders them in the scheduler).
"""

from __future__ import annotations

from inference_sched.framework.config.fallbacks import with_fallbacks
from inference_sched.framework.config.model import (
    API_VERSION,
    API_VERSIONS,
    DEFAULT_PARSERS,
    FEATURE_GATE_DEFAULTS,
    FEATURE_GATES,
    GIE_API_VERSION,
    KIND,
    EndpointPickerConfig,
    PluginSpec,
    ProfileRef,
    ProfileSpec,
)
from inference_sched.framework.config.model import AUTO_PATH as AUTO_PATH
from inference_sched.framework.config.phases import default_config, load_config, load_config_file
from inference_sched.framework.config.values import effective_parameters, parse_quantity

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "DEFAULT_PARSERS",
    "FEATURE_GATES",
    "FEATURE_GATE_DEFAULTS",
    "GIE_API_VERSION",
    "KIND",
    "EndpointPickerConfig",
    "PluginSpec",
    "ProfileRef",
    "ProfileSpec",
    "default_config",
    "effective_parameters",
    "load_config",
    "load_config_file",
    "parse_quantity",
    "with_fallbacks",
]
