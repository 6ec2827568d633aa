"""The shape of the code: settings and references at the bottom, steps above them, flows on top.

Read from the source (every import statement, including those inside functions, which is where hidden
cycles live), so the test fails the moment a module imports upward or two modules import each other.
"""

import ast
from pathlib import Path

from conftest import REPO

STEPS = {"tasks.ingest", "tasks.tokenize", "tasks.train", "tasks.evaluate", "tasks.card", "tasks.publish", "tasks.track"}
# A step's private helpers count as the step (only the train step has some).
STEP_PARTS = {"tasks.trainer": "tasks.train", "tasks.distributed": "tasks.train"}
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    return {f"{f.parent.name}.{f.stem}": f for pkg in ("tasks", "flows") for f in sorted((REPO / pkg).glob("*.py"))}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n for n in names if n.split(".")[0] in ("tasks", "flows")}
    return found


GRAPH = {name: imports(path) for name, path in modules().items()}


def test_nothing_below_the_flows_imports_them():
    upward = {m: sorted(d for d in deps if d.startswith("flows")) for m, deps in GRAPH.items() if m.startswith("tasks")}
    assert {m: d for m, d in upward.items() if d} == {}


def test_no_step_imports_another_step():
    def step(module: str) -> str | None:
        return STEP_PARTS.get(module, module if module in STEPS else None)

    crossing = {
        m: sorted(d for d in deps if step(d) and step(d) != step(m)) for m, deps in GRAPH.items() if m.startswith("tasks")
    }
    assert {m: d for m, d in crossing.items() if d} == {}


def test_the_import_graph_has_no_cycle():
    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for dep in sorted(GRAPH.get(path[-1], ())):
            if dep == start:
                return path + [dep]
            if dep not in path and dep in GRAPH:
                found = cycle_from(start, path + [dep])
                if found:
                    return found
        return None

    cycles = [c for m in GRAPH if (c := cycle_from(m, [m]))]
    assert cycles == []


def test_functions_stay_short():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= MAX_FUNCTION_LINES:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
