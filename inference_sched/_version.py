"""Version of the inference-sched distribution (read by hatchling)."""

__version__ = "0.1.0"
