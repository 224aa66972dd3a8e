"""The data-dependency graph of plugins: which producer runs before which.

A plugin class may declare ``produces`` and ``consumes`` (data keys of the cycle
state). A plugin depends on every *other* plugin that produces a key it consumes; a
plugin that consumes a key it also produces refines it, and its own output does not gate
it. GIE builds the same graph from ``Produces()``/``Consumes()``
(``gateway-api-inference-extension: pkg/epp/requestcontrol/dag.go``) and rejects cycles.

:func:`dependency_order` is the one computation of that graph: the config loader reports
the cycle it finds (:mod:`inference_sched.framework.config.phases`), the scheduler runs
its data producers in the order it gives (:mod:`inference_sched.framework.scheduler`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = ["DataNode", "DataOrder", "data_keys", "dependency_order"]


def data_keys(source: object, attribute: str) -> frozenset[str]:
    """The data keys ``source`` (a plugin class or instance) declares under
    ``attribute`` (``"produces"`` or ``"consumes"``); a single ``str`` is one key."""
    value = getattr(source, attribute, None) if source is not None else None
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(key) for key in value)


@attrs.frozen
class DataNode:
    """One plugin in the graph: its name and the keys it produces and consumes."""

    name: str
    produces: frozenset[str]
    consumes: frozenset[str]

    @classmethod
    def of(cls, name: str, source: object) -> DataNode:
        """The node of a plugin class or instance (``None``: a node without keys)."""
        return cls(name, data_keys(source, "produces"), data_keys(source, "consumes"))


@attrs.frozen
class DataOrder:
    """What :func:`dependency_order` found, by position in the given nodes."""

    order: tuple[int, ...]
    """Every node that can run, each after the other producers of what it consumes.
    Nodes are taken in rounds (all that are ready, in the given order), so ties keep
    the given order."""
    blocked: tuple[int, ...]
    """The nodes no order can run (on a cycle, or after one), in the given order."""
    cycle: tuple[str, ...]
    """Names along one cycle, the first repeated last (``a, b, a``: ``a`` consumes what
    ``b`` produces, ``b`` what ``a`` produces); empty when there is none."""


def dependency_order(nodes: Sequence[DataNode]) -> DataOrder:
    """Order ``nodes`` so that each runs after every other producer of what it consumes.

    Args:
        nodes: the plugins, in config order.

    Returns:
        The order, and the cycle that prevents one (``blocked`` and ``cycle`` are
        non-empty exactly when the graph has a cycle).
    """
    makers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for key in node.produces:
            makers.setdefault(key, []).append(i)
    # needs[i]: the other nodes producing what node i consumes, by name (for the cycle).
    needs = [
        sorted(
            {m for key in node.consumes for m in makers.get(key, ()) if m != i},
            key=lambda m: (nodes[m].name, m),
        )
        for i, node in enumerate(nodes)
    ]
    ordered: list[int] = []
    done: set[int] = set()
    pending = list(range(len(nodes)))
    while pending:
        ready = [i for i in pending if all(m in done for m in needs[i])]
        if not ready:
            break
        ordered.extend(ready)
        done.update(ready)
        pending = [i for i in pending if i not in done]
    cycle = _find_cycle(nodes, needs) if pending else ()
    return DataOrder(tuple(ordered), tuple(pending), cycle)


def _find_cycle(nodes: Sequence[DataNode], needs: list[list[int]]) -> tuple[str, ...]:
    """Names along the first cycle a depth-first walk in node order meets, or ``()``."""
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    stack: list[int] = []

    def visit(i: int) -> list[int]:
        state[i] = 1
        stack.append(i)
        for nxt in needs[i]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[i] = 2
        return []

    for i in range(len(nodes)):
        if i not in state and (found := visit(i)):
            return tuple(nodes[j].name for j in found)
    return ()
