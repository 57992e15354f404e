"""The package's shape, read from its source: imports flow one way, and cel-expr-python is
reached only through ``authz_server/cel/`` (its defects are worked around behind that one seam).

Imports are read with ``ast`` rather than by importing, so a guarded or lazy import (inside a
function, under ``TYPE_CHECKING``) counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import authz_server
from authz_server.errors import AuthzServerError

ROOT = Path(authz_server.__file__).parent
PACKAGE = "authz_server"
GENERATED = ROOT / "envoy" / "pb"
CEL_LIBRARY = "cel_expr_python"

# Which stages each stage may import (besides itself and the top-level shared values below).
# A stage never imports the one that calls it: serve -> pipeline -> (envoy, mcp, policy,
# observe); policy -> cel -> mcp's Kyverno view.
SHARED = {
    "authz_server",
    "authz_server.errors",
    "authz_server.decision",
    "authz_server.request",
    "authz_server.frozen",
}
MAY_IMPORT = {
    "mcp": set(),
    "cel": {"mcp", "envoy"},
    "envoy": {"mcp"},
    "agentgateway": {"mcp", "envoy"},
    # The HTTP authorizer's adapter builds Kyverno's http.CheckRequest, a type of the CEL library.
    "httpauthz": {"cel"},
    "policy": {"cel", "mcp", "envoy", "identity"},
    "observe": {"mcp", "identity"},
    "state": set(),
    "identity": set(),
    "oversight": {"state", "identity"},
    "listing": {"policy", "cel", "mcp", "identity"},
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        if GENERATED in path.parents:
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


MODULES = dict(_modules())


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, resolved to a module of the package where one exists."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    edges = {n: sorted(d for d in deps if d in graph) for n, deps in graph.items()}
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _package_init_edge(importer: str, imported: str) -> bool:
    # A package's __init__ re-exporting its own modules is not a dependency of those modules.
    return imported.startswith(importer + ".")


def test_the_walk_sees_the_whole_package() -> None:
    assert {"authz_server.cli", "authz_server.policy.engine", "authz_server.mcp.decoder"} <= set(
        MODULES
    )
    assert "authz_server.policy.model" in GRAPH["authz_server.policy.engine"]


def test_no_import_circle() -> None:
    graph = {
        name: {d for d in deps if not _package_init_edge(name, d)} for name, deps in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_cel_expr_python_is_imported_only_inside_cel(name: str) -> None:
    if name.startswith(f"{PACKAGE}.cel"):
        return
    offending = {m for m in GRAPH[name] if m.split(".")[0] == CEL_LIBRARY}
    assert not offending, f"{name} imports {offending}: go through authz_server.cel"


def _stage(module: str) -> str | None:
    """The stage (subpackage) a module of the package belongs to; None for top-level modules."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2 or not (ROOT / parts[1]).is_dir():
        return None
    return parts[1]


@pytest.mark.parametrize("stage", sorted(MAY_IMPORT))
def test_stages_import_only_the_stages_below_them(stage: str) -> None:
    allowed = MAY_IMPORT[stage] | {stage}
    wrong = {
        (name, dep)
        for name, deps in GRAPH.items()
        if _stage(name) == stage
        for dep in deps
        if dep.startswith(f"{PACKAGE}.")
        and dep not in SHARED
        and _stage(dep) not in allowed
        and not dep.startswith(f"{PACKAGE}.envoy.pb")
    }
    assert not wrong


def test_every_error_class_of_the_package_derives_from_the_root() -> None:
    import importlib

    found = []
    for name in MODULES:
        if name.endswith(".__main__"):  # importing it runs the command line
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Exception)
                and value.__module__ == name
                and not value.__name__.startswith("_")
            ):
                found.append(value)
    assert found
    assert [e for e in found if not issubclass(e, AuthzServerError)] == []
