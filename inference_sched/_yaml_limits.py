"""Limits on hostile YAML (and JSON) documents, shared by every loader of them.

A few hundred bytes of YAML can expand, through aliases nested in aliases, to billions of
nodes; a few thousand brackets nest deeper than Python's recursion limit (PyYAML's
composer and :mod:`json` recurse, and PyYAML's scanner is quadratic in flow depth).
:func:`check_nesting` refuses deep flow nesting in the raw text before a parser sees it;
:func:`check_node_graph` refuses alias bombs, recursive aliases, deep nesting and huge
integers in a composed node graph before anything constructs, copies or renders it.

Both raise :class:`YAMLLimitError` (line and problem); the config loader turns it into a
``ConfigError``, endpoint discovery into a ``DataError``.
"""

from __future__ import annotations

import re
from typing import Final

import yaml

__all__ = [
    "DEPTH_PROBLEM",
    "MAX_DEPTH",
    "MAX_EXPANDED_NODES",
    "MAX_INT_DIGITS",
    "YAMLLimitError",
    "check_nesting",
    "check_node_graph",
]

MAX_EXPANDED_NODES: Final = 100_000
"""Nodes a document may have once every alias is expanded (a real config has a few
hundred): a 389-byte document of nested aliases expands to billions."""
MAX_DEPTH: Final = 64
"""How deep collections may nest."""
MAX_INT_DIGITS: Final = 1000
"""Digits an integer scalar may have."""


class YAMLLimitError(ValueError):
    """A document exceeds a limit: ``line`` (1-based) and ``problem`` say where and how."""

    def __init__(self, line: int, problem: str) -> None:
        self.line = line
        self.problem = problem
        super().__init__(f"line {line}: {problem}")


DEPTH_PROBLEM: Final = f"nested more than {MAX_DEPTH} levels deep"
"""The problem of a document nested deeper than :data:`MAX_DEPTH`."""


# What the flow scanner stops at: brackets, quotes, comments and line breaks.
_FLOW_TOKEN: Final = re.compile(r"[\[\]{}\"'#\n]")
_DOUBLE_QUOTED_REST: Final = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)
_QUOTE_MAY_FOLLOW: Final = frozenset(" \t\r\n[{,:")


def check_nesting(text: str) -> None:
    """Refuse flow collections (``[``/``{``) nested deeper than :data:`MAX_DEPTH` in the
    raw text, before PyYAML (recursive composer, quadratic scanner) or :mod:`json`
    (recursive decoder) sees it. Brackets in quoted scalars and comments do not count.

    Linear in the text and free for the usual document (fewer brackets than the limit).
    Block nesting is bounded by line length; :func:`check_node_graph` and the loader's
    ``RecursionError`` handling cover it.

    Raises:
        YAMLLimitError: naming the line where the limit is passed.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    pos = 0
    end = len(text)
    while pos < end:
        match = _FLOW_TOKEN.search(text, pos)
        if match is None:
            return
        char, at = match.group(), match.start()
        pos = at + 1
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise YAMLLimitError(text.count("\n", 0, at) + 1, DEPTH_PROBLEM)
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == "#":
            if at == 0 or text[at - 1] in " \t\r\n":  # a comment runs to the end of the line
                newline = text.find("\n", pos)
                pos = end if newline < 0 else newline
        elif char in "'\"" and (at == 0 or text[at - 1] in _QUOTE_MAY_FOLLOW):
            if char == "'":  # '' escapes a quote: a close and a reopen, same effect
                close = text.find("'", pos)
                pos = end if close < 0 else close + 1
            else:
                rest = _DOUBLE_QUOTED_REST.match(text, pos)
                pos = end if rest is None else rest.end()


def check_node_graph(root: yaml.Node) -> None:
    """Refuse alias bombs, recursive aliases, absurd nesting and huge integers before
    anything constructs, copies or renders the document (iterative: no RecursionError).

    Raises:
        YAMLLimitError: naming the line of the offending node.
    """
    size: dict[int, int] = {}  # id(node) -> nodes once expanded
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        line = node.start_mark.line + 1
        if done:
            on_path.discard(key)
            total = 1 + sum(size[id(child)] for child in _children(node))
            if total > MAX_EXPANDED_NODES:
                raise YAMLLimitError(
                    line,
                    f"the document expands to more than {MAX_EXPANDED_NODES} nodes "
                    "(aliases nested in aliases)",
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise YAMLLimitError(line, "an alias refers to itself")
        if len(on_path) >= MAX_DEPTH:
            raise YAMLLimitError(line, DEPTH_PROBLEM)
        if (
            isinstance(node, yaml.ScalarNode)
            and node.tag == "tag:yaml.org,2002:int"
            and len(node.value) > MAX_INT_DIGITS
        ):
            raise YAMLLimitError(line, f"an integer of {len(node.value)} digits")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
