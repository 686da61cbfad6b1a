"""The package is built in layers, and imports only go down them.

```
app.main, app.cli        the wiring and the command
app.ui                   the console: a second HTTP front over the API layer
app.server               the process: HTTP protocol, worker server, supervisor (uvicorn's shape)
app.api                  the HTTP layer: endpoints, admission, validation, the one error table
app.runtime              the services one process runs with, their building, reload, drain state
app.batches              the Batch API's durable work
app.auth                 who is calling
app.keys                 managed keys: records, stores, policy checks
app.core                 the typed job, the embedder, token accounting, routing
app.state | providers    what is kept in Redis (and other stores) | the upstream adapters
app.config               settings, the registry and its file
app.local_model          data only (the local model's tokenizer)
app.errors, metrics, logs, encoding    shared by every layer
app.tracing              OpenTelemetry, free when off (under logs: a log line reads the span)
```

A module may import from its own package and from any layer below its own, never from its own
layer's siblings or from above. So nothing but the wiring, the console and the server imports
`app.api`, nothing below the core imports it, and there can be no import cycle between packages.

Read from the source with `ast`, so an import inside a function or under TYPE_CHECKING counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

LAYERS: list[set[str]] = [
    {"app.main", "app.cli"},
    {"app.ui"},
    {"app.server"},
    {"app.api"},
    {"app.runtime"},
    {"app.batches"},
    {"app.auth"},
    {"app.keys"},
    {"app.core"},
    {"app.state", "app.providers"},
    {"app.config"},
    {"app.local_model"},
    {"app.errors", "app.metrics", "app.logs", "app.encoding"},
    {"app.tracing"},
]
RANK = {node: rank for rank, layer in enumerate(LAYERS) for node in layer}
MAX_TOP_LEVEL_MODULES = 8
MAX_MODULE_LINES = 400  # a module longer than this is usually two ideas


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
    """The package (or top-level module) a module belongs to: `app.core.routing.router` →
    `app.core`; `app.metrics` stays."""
    return ".".join(module.split(".")[:2])


def violations(modules: dict[str, set[str]]) -> list[str]:
    """Every import that does not go down the layers."""
    found = []
    for module, imported in sorted(modules.items()):
        here = node(module)
        for target in sorted(imported):
            there = node(target)
            if there in (here, "app"):
                continue
            if RANK[there] <= RANK[here]:
                found.append(f"{module} imports {target}")
    return found


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


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, imported in modules.items():
        edges = graph.setdefault(node(module), set())
        edges.update(node(i) for i in imported if node(i) != node(module))
    return graph


def test_every_package_and_top_level_module_has_a_layer():
    unplaced = sorted({node(m) for m in app_modules()} - set(RANK) - {"app"})
    assert unplaced == [], "add it to LAYERS (and the picture above)"


def test_imports_only_go_down_the_layers():
    assert violations(app_modules()) == []


def test_no_import_cycle_between_packages_under_app():
    assert cycles(package_graph(app_modules())) == []


def test_ls_app_shows_the_layers_not_a_flat_list_of_modules():
    top = sorted(p.name for p in APP.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_module_is_small_enough_to_read_in_one_sitting():
    long = {
        str(path.relative_to(APP.parent)): lines
        for path in APP.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_checks_see_an_import_up_the_layers_and_a_cycle(tmp_path):
    # The checks themselves can fail: made-up imports up the layers and round a circle.
    assert violations({"app.core.embedder": {"app.api.errors"}}) == [
        "app.core.embedder imports app.api.errors"
    ]
    assert violations({"app.state.cache": {"app.providers.base"}}) == [
        "app.state.cache imports app.providers.base"
    ]
    assert violations({"app.api.embeddings": {"app.core.embedder", "app.api.errors"}}) == []
    graph = {"app.runtime": {"app.api"}, "app.api": {"app.runtime"}, "app.core": set()}
    assert cycles(graph) == [["app.api", "app.runtime"]]
    source = tmp_path / "core.py"
    source.write_text("from app.api.admission import presented_key\nfrom . import routing\n")
    assert imports_of(source, "app.core") >= {"app.api.admission", "app.routing"}
