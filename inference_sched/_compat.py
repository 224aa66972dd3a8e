"""Old module paths (0.x before the package was layered) as deprecated aliases.

``import inference_sched.scheduler`` (or ``from inference_sched import registry``) still
works and returns the module at its new home, with a :class:`DeprecationWarning` that
names it. ``CHANGELOG.md`` lists the moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Final

__all__ = ["MOVED", "install", "resolve_attribute"]

MOVED: Final[dict[str, str]] = {
    "inference_sched.config": "inference_sched.framework.config",
    "inference_sched.handle": "inference_sched.framework.handle",
    "inference_sched.histogram": "inference_sched.framework.stats",
    "inference_sched.interfaces": "inference_sched.framework.interfaces",
    "inference_sched.joint": "inference_sched.framework.scheduler.joint",
    "inference_sched.metrics": "inference_sched.observability.prometheus",
    "inference_sched.precise_index": "inference_sched.prefix.precise",
    "inference_sched.prefix_hashing": "inference_sched.prefix.hashing",
    "inference_sched.prefix_index": "inference_sched.prefix.index",
    "inference_sched.profile": "inference_sched.framework.profile",
    "inference_sched.prompt_bytes": "inference_sched.prefix.prompt_bytes",
    "inference_sched.redis_state": "inference_sched.state.redis",
    "inference_sched.registry": "inference_sched.framework.registry",
    "inference_sched.scheduler": "inference_sched.framework.scheduler",
    "inference_sched.types": "inference_sched.framework.types",
    "inference_sched.datalayer.kv_events": "inference_sched.prefix.precise.wire",
    "inference_sched.datalayer.kv_subscriber": "inference_sched.prefix.precise.subscriber",
    "inference_sched.datalayer.metrics": "inference_sched.datalayer.parse",
    "inference_sched.plugins.datalayer": "inference_sched.datalayer.plugins",
    "inference_sched.slo.info": "inference_sched.framework.contracts",
}
"""Old module → new module."""


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path will be removed in a later 0.x release",
        DeprecationWarning,
        stacklevel=3,
    )


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self._new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self._new)
        return importlib.import_module(self._new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is already executed at its new home."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


_FINDER: Final = _AliasFinder()


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)


def resolve_attribute(name: str) -> ModuleType | None:
    """``from inference_sched import <old module>``: the module at its new home."""
    new = MOVED.get(f"inference_sched.{name}")
    if new is None:
        return None
    _warn(f"inference_sched.{name}", new)
    return importlib.import_module(new)
