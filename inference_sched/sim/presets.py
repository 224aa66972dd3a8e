"""Scheduler configurations the simulator knows by name.

``round-robin`` spreads blindly (GIE has no round-robin picker: a random pick is its
stateless equivalent), ``load-only`` routes on scraped load alone, ``gie-default`` is
GIE's default profile (queue 2, kv-cache 2, prefix 3), ``llm-d-precise`` the same weights
over llm-d's precise prefix index (the servers' KV events, fed in process),
``gie-predicted-latency`` GIE's latency-predictor pipeline (the predictor
learned in process: docs/slo.md), ``ours-best``
the cost model of NVIDIA Dynamo's KV router (credit 4: uncached prefix blocks and the
scheduler's own in-flight blocks, counted at pick time) weighted 3 with prefix 2, queue 1
and kv-cache 1: the most robust of the profiles measured in docs/benchmarks.md. Anything
else is read as a path to an ``EndpointPickerConfig`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from inference_sched.errors import ConfigError
from inference_sched.framework.config import EndpointPickerConfig, load_config, load_config_file

__all__ = ["PRESETS", "resolve_config"]

_HEADER = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
"""

PRESETS: Final[dict[str, str | None]] = {
    "round-robin": _HEADER
    + """\
plugins:
- type: random-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: random-picker
""",
    "load-only": _HEADER
    + """\
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: max-score-picker}
""",
    "gie-default": None,  # GIE's defaulting: queue 2, kv-cache 2, prefix 3, max-score
    "llm-d-precise": _HEADER
    + """\
plugins:
- type: precise-prefix-cache-producer
- type: prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: max-score-picker}
""",
    "gie-predicted-latency": _HEADER
    + """\
plugins:
- type: predicted-latency-producer
  parameters: {streamingMode: true}
- name: prefix-strict
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.99}
- type: slo-headroom-tier-filter
- name: prefix-loose
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.80}
- type: latency-scorer
- type: weighted-random-picker
- type: latency-slo-admitter
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-strict
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: prefix-loose
  - pluginRef: latency-scorer
  - pluginRef: weighted-random-picker
""",
    "ours-best": _HEADER
    + """\
plugins:
- type: kv-cost-scorer
  parameters: {overlapScoreWeight: 4.0}
- type: inflight-load-producer  # kv-cost's load term needs the output estimate
  parameters: {addEstimatedOutputTokens: true}
- type: prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: kv-cost-scorer, weight: 3}
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: max-score-picker}
""",
}
"""Preset name -> config YAML (``None``: GIE's empty-config default)."""


def resolve_config(spec: str) -> tuple[str, EndpointPickerConfig]:
    """``(label, config)`` for a preset name or a config file path.

    Raises:
        ConfigError: the file does not exist or is not a valid config; the message lists
            the presets when ``spec`` looks like a misspelt one.
    """
    if spec in PRESETS:
        return spec, load_config(PRESETS[spec])
    path = Path(spec)
    if not path.exists() and path.suffix == "":
        raise ConfigError(
            f"unknown config {spec!r}: not a preset ({', '.join(PRESETS)}) nor a file"
        )
    return path.stem, load_config_file(path)
