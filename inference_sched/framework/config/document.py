"""YAML (or JSON) text to the document a config is loaded from.

PyYAML's safe loader, made as strict as GIE's decoder (``gateway-api-inference-extension:
pkg/epp/config/loader/configloader.go``, ``decodeRawConfig``: a strict universal decoder
over ``sigs.k8s.io/yaml``): a key repeated in a mapping is an error naming its path and
both lines, JSON's exponent floats are floats, and every syntax error names its line and
column. :func:`combined` turns the problems a load collected into the one
:class:`~inference_sched.errors.ConfigError` it raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from inference_sched._yaml_limits import (
    DEPTH_PROBLEM,
    MAX_DEPTH,
    MAX_EXPANDED_NODES,
    MAX_INT_DIGITS,
    YAMLLimitError,
    check_nesting,
    check_node_graph,
)
from inference_sched.errors import ConfigError
from inference_sched.framework.config.model import MISSING, join_path

__all__ = ["MAX_DEPTH", "MAX_EXPANDED_NODES", "MAX_INT_DIGITS", "combined", "parse_yaml"]


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus a check that no mapping repeats a key.

    PyYAML keeps the last of duplicate keys silently; GIE's strict decoder rejects them.
    The check walks the composed node graph (before construction) so the error can name
    the path and both lines.
    """

    def checked_node(self) -> yaml.Node | None:
        """The document's node graph; ``ConfigError`` when a mapping repeats a key, or the
        document is too big once its aliases are expanded, or too deep."""
        node = self.get_single_node()
        if node is not None:
            _check_expansion(node)
            errors = list(self._duplicates(node, "", set()))
            if errors:
                raise combined(errors)
        return node

    def _duplicates(self, node: yaml.Node, path: str, seen: set[int]) -> Iterator[ConfigError]:
        if id(node) in seen:  # aliases share nodes (and may be recursive)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                label = _profile_label(item) if path == "schedulingProfiles" else None
                yield from self._duplicates(item, f"{path}[{label or i}]", seen)
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    yield from self._duplicates(value_node, path, seen)
                    continue
                key = self._scalar_key(key_node)
                line = key_node.start_mark.line + 1
                if key is not MISSING and key in first_line:
                    yield ConfigError(
                        f"duplicate key {key!r} at line {line} (first at line {first_line[key]})",
                        path=path,
                        value=key,
                    )
                    continue
                if key is not MISSING:
                    first_line[key] = line
                yield from self._duplicates(value_node, join_path(path, key), seen)

    def _scalar_key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return MISSING  # complex keys: construction reports them (unhashable)
        key = self.construct_object(node, deep=True)
        try:
            hash(key)
        except TypeError:
            return MISSING
        return key


def _check_expansion(root: yaml.Node) -> None:
    """Refuse alias bombs, recursive aliases, absurd nesting and huge integers before
    anything constructs, copies or renders the document (see
    :func:`inference_sched._yaml_limits.check_node_graph`)."""
    try:
        check_node_graph(root)
    except YAMLLimitError as exc:
        raise ConfigError(f"invalid YAML at line {exc.line}: {exc.problem}") from None


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent ("1.0e+5"), so
# JSON's "1e-05" or "2E3" would load as strings. Go's YAML decoder (goyaml, under GIE's
# sigs.k8s.io/yaml) reads them as floats; so do we.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _profile_label(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.value == "name"
                and isinstance(value_node, yaml.ScalarNode)
                and value_node.value
            ):
                return str(value_node.value)
    return None


def parse_yaml(text: str) -> Any:
    """The YAML document in ``text`` (``None`` when there is none).

    Flow collections nested deeper than ``MAX_DEPTH`` are refused from the raw text
    before PyYAML sees it (its composer recurses and its scanner is quadratic in the
    depth); deep block nesting is refused by the node-graph check, or where the composer
    ran out of stack: either way the error names a line.
    """
    if not text.strip():
        return None
    try:
        check_nesting(text)
    except YAMLLimitError as exc:
        raise ConfigError(f"invalid YAML at line {exc.line}: {exc.problem}") from None
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # the reader rejects non-printable characters here
        try:
            node = loader.checked_node()
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_message(exc)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"invalid YAML at line {line}: unacceptable character #x{character:04x}: {exc.reason}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes recursively: name where it gave up
        line = loader.get_mark().line + 1 if loader is not None else 1
        raise ConfigError(f"invalid YAML at line {line}: {DEPTH_PROBLEM}") from None


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = exc.problem or "syntax error"
    context = f" ({exc.context})" if exc.context else ""
    return f"invalid YAML{where}: {problem}{context}"


def combined(errors: list[ConfigError]) -> ConfigError:
    """One error carrying all of ``errors`` (the error itself when there is one)."""
    flat = [leaf for error in errors for leaf in error.errors]
    if len(flat) == 1:
        return flat[0]
    lines = "\n".join(f"  {error}" for error in flat)
    result = ConfigError(f"{len(flat)} problems in the EndpointPickerConfig:\n{lines}")
    result.path, result.value = flat[0].path, flat[0].value
    result.errors = flat
    result.__cause__ = next((e.__cause__ for e in flat if e.__cause__ is not None), None)
    return result
