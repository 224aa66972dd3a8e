"""inference-sched."""
