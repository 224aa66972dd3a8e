"""The concrete plugin handle: what a plugin's constructor receives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from inference_sched.state.table import EndpointTable

__all__ = ["PluginHandle"]


class PluginHandle:
    """Gives plugins the endpoint table, the other plugins by name, and the clock.

    Args:
        table: the pool's endpoint table.
        plugins: plugin instances by name; the scheduler fills it while it builds them,
            in config order, so a plugin may look up plugins declared before it.
        clock: time source in seconds; defaults to the table's clock.
    """

    def __init__(
        self,
        table: EndpointTable,
        plugins: Mapping[str, Any] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._table = table
        self._plugins: dict[str, Any] = dict(plugins or {})
        self._clock = clock or table.clock

    @property
    def table(self) -> EndpointTable:
        """The pool's endpoint table."""
        return self._table

    @property
    def clock(self) -> Callable[[], float]:
        """Time source in seconds."""
        return self._clock

    def plugin(self, name: str) -> Any:
        """The plugin instance called ``name``.

        Raises:
            KeyError: no plugin with that name.
        """
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(self._plugins) or "none"
            raise KeyError(f"no plugin named {name!r} (known: {known})") from None

    def plugins(self) -> Mapping[str, Any]:
        """Every plugin instance by name, in config order."""
        return dict(self._plugins)

    def add_plugin(self, name: str, plugin: Any) -> None:
        """Make ``plugin`` reachable as ``name`` (GIE ``Handle.AddPlugin``)."""
        self._plugins[name] = plugin
