"""Twins of :mod:`inference_sched.kernels.prefix_index`: none, by design.

Every kernel of the prefix index is private (the wrapper class
:class:`~inference_sched.prefix.index.PrefixIndex` is the public surface) and changes or
walks the linked-list store, so a NumPy twin would replay the same list surgery. The
stateful test (``tests/property/test_prefix_index_stateful.py``) checks them instead
against the pure-Python model :class:`~tests.oracles.prefix_index_model.PrefixIndexModel`
(dicts of sets plus ``OrderedDict`` LRUs). This module exists so that every kernel
module has its twin module (``tests/unit/test_kernel_policy.py`` checks the pairing);
like the kernel module, it exports nothing.
"""

__all__: list[str] = []
