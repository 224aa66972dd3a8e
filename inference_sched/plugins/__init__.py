"""Built-in plugins, one module per family.

Importing this package imports no family: the registry imports a family the first time a
config names one of its types (the catalogue is
:data:`inference_sched.framework.catalogue.BUILTIN_PLUGINS`).

Families (GIE/llm-d type strings):

* :mod:`.load`: ``queue-scorer``, ``running-requests-size-scorer``,
  ``kv-cache-utilization-scorer``, ``token-load-scorer``, ``active-request-scorer``,
  ``load-aware-scorer`` and the ``inflight-load-producer`` (in-flight accounting).
* :mod:`.cost_model`: ``kv-cost-scorer`` and ``softmax-picker`` (NVIDIA Dynamo's KV-router
  cost and softmax selection).
* :mod:`.lora`: ``lora-affinity-scorer``.
* :mod:`.prefix`: ``approx-prefix-cache-producer`` (the approximate prefix index),
  ``prefix-cache-scorer``, ``prefix-cache-affinity-filter`` and llm-d's ``no-hit-lru-scorer``.
* :mod:`.precise_prefix`: ``precise-prefix-cache-producer`` (llm-d: the prefix match from
  the engines' KV events) and the deprecated bundle ``precise-prefix-cache-scorer``.
* :mod:`inference_sched.datalayer.plugins` (beside the data layer it drives):
  ``metrics-data-source`` and ``core-metrics-extractor``, configured under ``dataLayer``.
* :mod:`.slo`: GIE's latency-predictor stack, learned in process:
  ``predicted-latency-producer``, ``latency-scorer``, ``slo-headroom-tier-filter``,
  ``latency-slo-admitter``.
* :mod:`.tokens`: ``token-producer`` (prompt token ids from a local ``tokenizer.json``).
* :mod:`.pd`: llm-d's ``disagg-profile-handler``, ``prefix-based-pd-decider``,
  ``always-disagg-pd-decider``, ``always-disagg-multimodal-decider`` and
  ``data-parallel-profile-handler``.
* :mod:`.saturation`: GIE's ``utilization-detector`` and ``concurrency-detector``
  (saturation detectors, also filters).
* :mod:`.session`: llm-d's ``session-affinity-scorer`` and the router's
  ``session-affinity-filter``.
* :mod:`.pickers`: ``max-score-picker``, ``random-picker``, ``weighted-random-picker``.
* :mod:`.filters`: ``decode-filter``, ``prefill-filter``, ``label-selector-filter``
  (deprecated alias ``by-label-selector``).
* :mod:`.profile_handlers`: ``single-profile-handler``.

Each plugin has a page in ``docs/plugins/<type>.md``. The classes are importable, but
only the type strings are promised: configs name plugins by type.
"""
