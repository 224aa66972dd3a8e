"""Numba hot-path kernels, and the decorator that compiles them.

Kernels are imported from their modules (``inference_sched.kernels.scoring``,
``.picking``, ``.filtering``, ...); their NumPy twins, which document the contracts, are
in the private :mod:`inference_sched.kernels._twins` (one module per kernel module).

For plugin authors, this package exports the compilation policy its own kernels use:

* :func:`kernel`: decorate a function to compile it with ``numba.njit(cache=True,
  nogil=True)`` (no ``fastmath``, so NaN checks keep working): the machine code is cached
  on disk next to the module, and the compiled function releases the GIL. Compilation
  happens on the first call, per argument types. Under ``NUMBA_DISABLE_JIT=1`` it returns
  the plain Python function, so the code still runs (slowly) for debugging and coverage.
* :func:`is_jit_enabled`: False under ``NUMBA_DISABLE_JIT=1``.

Importing this package compiles nothing (it imports Numba, nothing more).
"""

from inference_sched.kernels._jit import is_jit_enabled, kernel

__all__ = ["is_jit_enabled", "kernel"]
