"""Reading the registry's YAML with bounds: a size cap, bounded alias expansion, a nesting limit.

PyYAML's `safe_load` refuses arbitrary objects but not expansion. An alias (`*name`) makes the
anchored node appear again wherever it is used: ten lines of aliases to aliases ("billion
laughs") are a few nodes to PyYAML, but every walk over the loaded data (interpolation,
validation) visits the expanded tree, which grows without bound. Merge keys (`<<: *base`) copy
and grow the same way. Aliases are ordinary YAML (and YAML writers such as PyYAML's own emit
them for repeated values), so they are allowed, but the tree they expand to is measured first,
from the composed nodes and before anything is built: at most `MAX_EXPANSION` nodes more than
the document has, no deeper than `MAX_DEPTH`, and no alias inside its own anchor.
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
# How many nodes aliases and merge keys may add once expanded: generous for repeated route
# policies, thousands of times less than an alias bomb.
MAX_EXPANSION = 100_000

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
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: Node) -> None:
    """Measure the tree the document expands to, once per distinct node (an alias is the
    anchored node met again: the composer hands out the same object), so an alias bomb costs
    a few multiplications, not its expansion."""
    size: dict[int, int] = {}  # node -> nodes in its expanded subtree, itself included
    height: dict[int, int] = {}
    distinct = 0
    on_path: set[int] = set()
    # Post-order without recursion: (node, where it is used, children visited yet)
    stack: list[tuple[Node, Mark, bool]] = [(root, root.start_mark, False)]
    while stack:
        node, used_at, visited = stack.pop()
        key = id(node)
        if visited:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(kid)] for kid, _ in kids)
            height[key] = 1 + max((height[id(kid)] for kid, _ in kids), default=0)
            if height[key] > MAX_DEPTH:
                raise YamlFileError(
                    f"{_at(node.start_mark)}: nested deeper than {MAX_DEPTH} levels"
                )
            continue
        if key in on_path:
            raise YamlFileError(
                f"{_at(used_at)}: an alias inside its own anchor would repeat without end"
            )
        if key in size:
            continue  # measured already: an alias to it
        distinct += 1
        on_path.add(key)
        stack.append((node, used_at, True))
        stack.extend((kid, at, False) for kid, at in reversed(_children(node)))
    added = size[id(root)] - distinct
    if added > MAX_EXPANSION:
        raise YamlFileError(
            f"its aliases (*name) and merge keys (<<) expand to {added} more values than it "
            f"holds; at most {MAX_EXPANSION} are allowed: write repeated values out"
        )


def _children(node: Node) -> list[tuple[Node, Mark]]:
    """A node's children, each with where it is used (a value: its key's position)."""
    if isinstance(node, MappingNode):
        out: list[tuple[Node, Mark]] = []
        for key, value in node.value:
            out.append((key, node.start_mark))
            out.append((value, key.start_mark))
        return out
    if isinstance(node, SequenceNode):
        return [(item, node.start_mark) for item in node.value]
    return []


def _at(mark: Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
