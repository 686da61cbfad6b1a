"""Reading the registry's YAML with bounds: a size cap, no aliases, a nesting limit.

PyYAML's `safe_load` refuses arbitrary objects but not expansion. An alias (`*name`) makes the
anchored node appear again wherever it is used: ten lines of aliases to aliases ("billion
laughs") are a few nodes to PyYAML, but every walk over the loaded data (interpolation,
validation) visits the expanded tree, which grows without bound. Merge keys (`<<: *base`) copy
and grow the same way. The shipped registry, its examples and the docs never use either, so
they are refused outright rather than limited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, SequenceNode

# The largest registry file read. The shipped one is ~13 KiB; 3,000 models are about 0.8 MB.
# The cap bounds a reload's memory and time (parsing runs at ~1 MB/s with libyaml on a busy
# 2-core machine, several times slower without it).
MAX_REGISTRY_BYTES = 4 * 1024 * 1024
# Far deeper than any registry needs: six levels reach `models.m.routes.0.model`'s value.
# libyaml stops at 1,000 on its own; the pure-Python parser has no limit at all.
MAX_DEPTH = 32

# libyaml's parser when PyYAML was built with it (its wheels are), else the pure-Python one.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlFileError(Exception):
    """The file cannot be read as a registry's YAML; the message says why and where."""


def read_yaml(path: str | Path, max_bytes: int = MAX_REGISTRY_BYTES) -> Any:
    """The one YAML document in `path`, as plain data. FileNotFoundError if it is missing."""
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)  # never more than the cap, whatever the file is
    if len(data) > max_bytes:
        raise YamlFileError(
            f"larger than {max_bytes} bytes ({max_bytes // (1024 * 1024)} MiB), the most a "
            "registry may be"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"not UTF-8 text (at byte offset {exc.start})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_aliases_and_depth(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_aliases_and_depth(root: Node) -> None:
    """Walk the composed nodes once. An alias is the anchored node met a second time (the
    composer hands out the same object), so this finds every alias before anything expands."""
    seen: set[int] = set()
    # (node, its depth, where it is used: its key's position in a mapping, else its parent's)
    stack: list[tuple[Node, int, Mark]] = [(root, 1, root.start_mark)]
    while stack:
        node, depth, used_at = stack.pop()
        if id(node) in seen:
            raise YamlFileError(
                f"{_at(used_at)}: YAML aliases (*name) and merge keys (<<) are not accepted in "
                f"a registry (this one repeats the value anchored at {_at(node.start_mark)}); "
                "write the value out where it is used"
            )
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise YamlFileError(f"{_at(node.start_mark)}: nested deeper than {MAX_DEPTH} levels")
        children: list[tuple[Node, int, Mark]] = []
        if isinstance(node, MappingNode):
            for key, value in node.value:
                children.append((key, depth + 1, node.start_mark))
                children.append((value, depth + 1, key.start_mark))
        elif isinstance(node, SequenceNode):
            children.extend((item, depth + 1, node.start_mark) for item in node.value)
        stack.extend(reversed(children))  # in document order: the anchor is met before aliases


def _at(mark: Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
