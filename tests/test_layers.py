"""The package's layers (pyproject.toml [tool.importlinter]) hold, and no module imports itself back through others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()", "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    broken = run.stdout[run.stdout.find("Broken contracts") :] if "Broken contracts" in run.stdout else run.stdout[-3000:]
    assert run.returncode == 0, f"lint-imports failed (exit {run.returncode}):\n{broken}\n{run.stderr[-2000:]}"
    assert "1 kept, 0 broken" in run.stdout


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start) & modules)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
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


def test_no_import_cycle():
    graph = grimp.build_graph("resnet_deploy")
    modules = {m for m in graph.modules if m.startswith("resnet_deploy")}
    cycles = _cycles(graph, modules)
    described = []
    for component in cycles:
        first, *rest = component
        back = graph.find_shortest_chain(importer=rest[0], imported=first) or ()
        there = graph.find_shortest_chain(importer=first, imported=rest[0]) or ()
        described.append(f"{' <-> '.join(component)}: {' -> '.join(there)} and back {' -> '.join(back)}")
    assert not cycles, "import cycles:\n" + "\n".join(described)
