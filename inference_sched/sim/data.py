"""Where the simulator finds the shared data (latency tables, traces).

The data is read in place, never copied into the package: ``INFERENCE_SCHED_DATA`` when
set, else a ``shared/data`` directory beside the source checkout (the layout of this
project's workspace). Without either, the latency models fall back to their embedded
fits and trace replay needs an explicit path.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "shared_data_dir"]

DATA_ENV = "INFERENCE_SCHED_DATA"
"""Environment variable naming the data directory (holding ``latency/`` and ``traces/``)."""

_CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_data_dir() -> Path | None:
    """The data directory: ``$INFERENCE_SCHED_DATA``, else ``../shared/data`` beside the
    checkout when it exists, else None."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return _CHECKOUT_DATA if _CHECKOUT_DATA.is_dir() else None
