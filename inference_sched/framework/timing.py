"""One timed plugin call: every extension point calls plugins through :func:`timed_call`.

GIE records each plugin call in ``inference_extension_plugin_duration_seconds``
(``gateway-api-inference-extension: pkg/epp/metrics/metrics.go``,
``RecordPluginProcessingLatency``); here one :class:`~inference_sched.framework.profile.
PluginStats` per plugin and extension point keeps the count, the errors, the total time
and (when enabled) the histogram. The callers decide how a failure degrades (a filter is
skipped, a scorer contributes nothing, a hook is ignored, a handler fails the cycle; see
:mod:`inference_sched.framework.profile`); this helper only times and counts.

It is a plain function on the decision path, called once per plugin call: no context
manager, no closure, nothing allocated but the call's own arguments. Those come as one
tuple, and ``expected`` is positional, because CPython 3.11 specialises (inlines) calls of
functions with neither ``*args`` nor keyword-only parameters: about 0.1 µs per plugin
call.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from inference_sched.framework.profile import PluginStats

__all__ = ["timed_call"]

T = TypeVar("T")


def timed_call(
    stats: PluginStats,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    expected: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """``fn(*args)``, timed and counted as one call of the plugin ``stats`` describes.

    The call is counted in ``stats.calls`` and its duration added to ``stats.total_ns``
    (and ``stats.histogram`` when enabled) whether it returns or raises. An exception is
    counted in ``stats.errors`` and logged at most once per interval
    (:meth:`~inference_sched.framework.profile.PluginStats.failed`), then re-raised for the
    caller to degrade; one of the ``expected`` types (part of the extension point's
    contract, such as an admitter's denial) is re-raised without being counted.

    Args:
        stats: the counters of the plugin at this extension point.
        fn: the plugin's method (or a function that calls and checks it).
        args: the arguments of ``fn``, as one tuple.
        expected: exception types that are answers, not failures.

    Returns:
        What ``fn`` returned.
    """
    t0 = perf_counter_ns()
    try:
        return fn(*args)
    except expected:
        raise
    except Exception as exc:
        stats.failed(exc)
        raise
    finally:
        elapsed = perf_counter_ns() - t0
        stats.calls += 1
        stats.total_ns += elapsed
        if stats.histogram is not None:
            stats.histogram.observe_ns(elapsed)
