"""Numba hot-path kernels and their NumPy twins.

Kernels are imported from their modules (``inference_sched.kernels.scoring``,
``.picking``, ``.filtering``); ``.reference`` holds the NumPy twin of each, with the
contracts. Importing this package compiles nothing.
"""

__all__: list[str] = []
