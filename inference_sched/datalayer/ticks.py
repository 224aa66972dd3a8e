"""The fixed-rate tick loop the data layer's runners share (metrics scraper, attribute
poller): start work every ``interval_s``, never bursting to catch up after a slow tick."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

__all__ = ["run_ticks"]


async def run_ticks(
    interval_s: float,
    stop: asyncio.Event,
    tick: Callable[[], object],
    after_wait: Callable[[], object],
) -> None:
    """Call ``tick()`` every ``interval_s`` seconds, then wait for the next tick (or for
    ``stop``) and call ``after_wait()``, until ``stop`` is set.

    A tick that overran its slot starts the next one at once and re-bases the schedule
    (no burst of catch-up ticks).
    """
    next_tick = time.monotonic()
    while not stop.is_set():
        tick()
        next_tick += interval_s
        delay = next_tick - time.monotonic()
        if delay < 0:  # a slow cycle: don't try to catch up with a burst
            next_tick, delay = time.monotonic(), 0.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        after_wait()
