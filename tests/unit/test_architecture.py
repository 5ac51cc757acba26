"""The shape of ``saga_core`` (ARCHITECTURE.md): imports run one way (no cycle among its
modules, counting imports inside functions and under TYPE_CHECKING), no private name is
imported from another module, and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "saga_core"
MAX_LINES = 550


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported saga_core module, names taken from it) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("saga_core")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if not mod.startswith("saga_core"):
                continue
            names = [a.name for a in node.names]
            # ``from saga_core import machine``: a module, not a name of the package.
            submodules = [n for n in names if f"{mod}.{n}" in known]
            out += [(f"{mod}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                out.append((mod, rest))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for name, path in mods.items():
        for target, names in _imports(path, name, known):
            if target == name:
                continue
            if target in known:
                # Importing a package runs its __init__: an edge to it, not through it.
                graph[name].add(target)
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_")]
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    graph, _ = _graph()
    # The package's own __init__ re-exports the public API: it imports everything, and
    # nothing inside the package may import it.
    importers = sorted(m for m, deps in graph.items() if "saga_core" in deps and m != "saga_core")
    assert importers == [], f"modules importing the package itself: {importers}"
    inner = {m: {d for d in deps if d != "saga_core"} for m, deps in graph.items()}
    assert _cycle(inner) is None, " -> ".join(_cycle(inner) or [])


def test_no_private_name_crosses_modules() -> None:
    _, private = _graph()
    assert private == []


def test_modules_stay_small() -> None:
    sizes = {
        name: len(p.read_text(encoding="utf-8").splitlines()) for name, p in _modules().items()
    }
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"
