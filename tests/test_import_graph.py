"""The package's import graph has no cycle, and the bottom modules import nothing above them.

Every import counts: module-level, inside a function, and under `if TYPE_CHECKING:` (a type-only
import is still a knot a reader has to untangle, and the next edit makes it a real one). Read
from the source with `ast`, so nothing is imported to check it.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `src` (a package is its __init__)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (`from pkg import mod` counts as `pkg.mod`)."""
    mods = modules(src)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            graph[mod] |= {r for r in map(resolve, targets) if r and r != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle_through_a_function_level_and_a_type_only_import(tmp_path):
    """The check itself can fail: a two-module knot made only of imports a runtime would not trip on."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import H\n")
    (pkg / "high.py").write_text("def f():\n    from . import low\n    return low\n")
    (pkg / "other.py").write_text("import pkg.low\n")
    assert cycles(import_graph(tmp_path)) == [["pkg.high", "pkg.low"]]


@functools.lru_cache(maxsize=1)
def src_graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_no_import_cycle_in_src():
    found = cycles(src_graph())
    assert not found, "import cycles in src/: " + "; ".join(" <-> ".join(c) for c in found)


# The bottom of the layering picture (docs/DESIGN.md): these import no other module of the package,
# so anything may import them (errors.py from every module; redact.py from the logging filter).
BOTTOM = ("llamaduo.errors", "llamaduo.redact", "llamaduo.hf_argparse", "llamaduo.inference.generation",
          "llamaduo.service_llm.records", "llamaduo.service_llm.sidecar", "llamaduo.service_llm.credentials")
ALLOWED_BELOW = {"llamaduo.errors": {"llamaduo.redact"}}  # the error printer masks its one line


@pytest.mark.parametrize("module", BOTTOM)
def test_bottom_modules_import_nothing_above_them(module):
    assert src_graph()[module] <= ALLOWED_BELOW.get(module, set())


#: the upper layers, top first (a name covers its submodules); every other module is a shared
#: module, below them all
LAYERS = (("llamaduo.cli", "llamaduo.__main__"), ("llamaduo.loop",), ("llamaduo.pipeline",))


def layer(module: str) -> int:
    """0 for the top layer; larger is lower."""
    for depth, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return depth
    return len(LAYERS)


def test_dependencies_point_downward():
    """scripts -> cli -> loop -> pipeline (the stages) -> shared modules: no shared module imports
    a stage, no stage imports the loop."""
    upward = sorted((m, t) for m, targets in src_graph().items() for t in targets if layer(m) > layer(t))
    assert not upward, upward
