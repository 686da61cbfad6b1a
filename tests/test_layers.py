"""The layers run one way: the HTTP layer (`app/api`) imports the core, never the reverse, and
no group of packages under `app/` imports itself round in a circle.

Read from the source with `ast`, so an import inside a function or under TYPE_CHECKING counts.
Each subpackage (`app/api`, `app/keys`, `app/providers`, …) is one node; each top-level module
of `app` is its own node. Only `app/main.py`, the wiring, and the console (`app/ui`, a second
HTTP front on the same port, which reuses the API layer's validation and admin rules) may import
from `app/api`; nothing imports `app/ui` but the wiring.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
WIRING = {"app.main"}
# HTTP fronts above the API layer: they may use it, and only the wiring may use them.
FRONTS = {"app.ui"}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every `app.…` module `path` (the module `name`) imports, resolving relative imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name or module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from app.api import admin` imports the module app.api.admin
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "app" or name.startswith("app.")}


def app_modules() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in APP.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in modules} for name, path in modules.items()}


def node(module: str) -> str:
    """The package a module belongs to: `app.api.auth` → `app.api`; `app.routing` stays."""
    parts = module.split(".")
    if len(parts) > 2 or (APP / parts[-1]).is_dir():
        return ".".join(parts[:2])
    return module


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, imported in modules.items():
        edges = graph.setdefault(node(module), set())
        edges.update(node(i) for i in imported if node(i) != node(module))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_only_the_http_layer_and_the_wiring_import_the_http_layer():
    offenders = sorted(
        f"{module} imports {imported}"
        for module, imports in app_modules().items()
        if node(module) != "app.api" and node(module) not in FRONTS and module not in WIRING
        for imported in imports
        if node(imported) == "app.api"
    )
    assert offenders == []


def test_only_the_wiring_imports_the_console():
    offenders = sorted(
        f"{module} imports {imported}"
        for module, imports in app_modules().items()
        if node(module) not in FRONTS and module not in WIRING
        for imported in imports
        if node(imported) in FRONTS
    )
    assert offenders == []


def test_no_import_cycle_between_packages_under_app():
    assert cycles(package_graph(app_modules())) == []


def test_the_checks_see_a_cycle_and_a_core_module_importing_the_http_layer(tmp_path):
    # The checks themselves can fail: a made-up graph with the old cycle is caught.
    graph = {"app.gateway": {"app.api"}, "app.api": {"app.gateway"}, "app.routing": set()}
    assert cycles(graph) == [["app.api", "app.gateway"]]
    source = tmp_path / "core.py"
    source.write_text("from app.api.auth import presented_key\nfrom . import routing\n")
    assert imports_of(source, "app.core") >= {"app.api.auth", "app.routing"}
