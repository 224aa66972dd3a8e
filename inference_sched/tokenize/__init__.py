"""Request → token ids without the scheduler: llm-d's estimate backend, the vLLM render
client (may import errors, params, kernels)."""
