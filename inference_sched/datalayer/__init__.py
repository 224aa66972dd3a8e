"""The data layer: what the scheduler knows about the pool, read from the pool itself.

Endpoint discovery (:mod:`.discovery`: a static list, a watched file, Kubernetes pods),
metrics scraping (:mod:`.scraper`) and parsing (:mod:`.metrics`, engine mappings for vLLM,
SGLang and TensorRT-LLM as configuration), written into the
:class:`~inference_sched.state.table.EndpointTable` in bulk (GIE:
``gateway-api-inference-extension`` ``pkg/epp/datalayer/``).
"""
