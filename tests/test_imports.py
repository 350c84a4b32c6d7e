"""No import cycles among the package's modules (module-level imports; imports inside functions are deferred on
purpose and do not count), and the pure math stays free of TRL, Snakemake and I/O libraries."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "frpo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """The frpo modules ``path`` imports when it is imported (not inside functions or TYPE_CHECKING blocks)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("frpo")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("frpo"):
                target = node.module
            else:
                continue
            out.add(target)
            for alias in node.names:  # `from . import api` imports the submodule frpo.judges.api
                if (SRC.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").is_file():
                    out.add(f"{target}.{alias.name}")
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target in _top_level_imports(path):
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(modules)
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
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


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 30 and "frpo.tracks.math" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"p": {"p.x"}, "p.x": set()}) is None


def test_the_objective_is_pure_torch():
    imports = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
               for n in ast.walk(ast.parse((SRC / "objective.py").read_text()))
               if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imports <= {"__future__", "math", "torch", "typing", "dataclasses", "collections"}, imports
