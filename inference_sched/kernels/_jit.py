"""The one Numba compilation policy for every kernel in ``inference_sched.kernels``.

Private: plugin authors import :func:`kernel` and :func:`is_jit_enabled` from
``inference_sched.kernels``. Every kernel module decorates its functions with
:func:`kernel` and never calls ``numba.njit``/``numba.jit`` itself;
``tests/unit/test_kernel_policy.py`` scans the package sources to keep it that way.
The policy is:

* ``cache=True``: compiled machine code is written next to the module (``__pycache__``),
  so only the first process on a machine pays the compile.
* ``nogil=True``: kernels release the GIL, so a threaded server can run decisions in
  parallel.
* ``fastmath`` is **off**: its ``nnan``/``ninf`` flags let LLVM assume that ``x != x``
  is false, which would silently break the NaN accounting the score contract relies on.
* Numba's default ``error_model="python"`` stays: kernels never divide by zero on valid
  input, and a violated precondition raising is better than a silent ``inf``.

With ``NUMBA_DISABLE_JIT=1`` Numba returns the plain Python function, so every kernel
keeps working (slowly) for coverage and debugging.
"""

from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

import numba

__all__ = ["is_jit_enabled", "kernel"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def kernel(func: Callable[_P, _R], /) -> Callable[_P, _R]:
    """Compile ``func`` with the package's Numba policy (``inference_sched.kernels.kernel``).

    The result is ``numba.njit(cache=True, nogil=True)(func)``: nopython mode, machine
    code cached on disk next to the module (so only the first process compiles), the GIL
    released while it runs, ``fastmath`` off (NaN and inf checks keep working). Numba
    compiles on the first call, once per argument types, so pass pinned dtypes. Under
    ``NUMBA_DISABLE_JIT=1`` this returns ``func`` itself, plain Python (see
    :func:`is_jit_enabled`). For mypy the result keeps ``func``'s signature.

    Use it as a decorator::

        from inference_sched.kernels import kernel

        @kernel
        def headroom(running, candidates, limit, out):
            for i in range(candidates.shape[0]):
                out[i] = 1.0 - min(running[candidates[i]], limit) / limit
    """
    # The cast hides the Dispatcher type on purpose: callers see the Python signature,
    # and with NUMBA_DISABLE_JIT=1 the object really is the plain function.
    return cast("Callable[_P, _R]", numba.njit(cache=True, nogil=True)(func))


def is_jit_enabled() -> bool:
    """Return False when ``NUMBA_DISABLE_JIT`` makes :func:`kernel` return plain functions."""
    # numba.config sets its options dynamically, so its stubs do not list DISABLE_JIT.
    return not getattr(numba.config, "DISABLE_JIT", False)
