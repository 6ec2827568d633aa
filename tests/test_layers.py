"""The shape of the code, read from the tree: each module's layer is where it lives.

  0 foundation  tasks/settings/, tasks/runtime/, tasks/refs.py: what every layer may use
  1 helpers     tasks/<concern>/ (data, training, scoring, ...): one concern each
  2 steps       tasks/*.py: the pipeline's steps, one module each
  3 flows       flows/*.py: Prefect flows, the pipeline's order, the operator's policy
  4 tools       flows/cli/: the command line, the server supervisor, work-pool set-up

Read from the source (every import statement, including those inside functions, which is where hidden
cycles live), so the test fails the moment a module imports upward, a step imports another step, or two
modules import each other; a new folder under tasks/ is a new concern without touching this file.
"""

import ast
from pathlib import Path

from conftest import REPO

FOUNDATION = {"settings", "runtime"}  # the tasks/ folders below the helpers
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(["nerflow", *parts[:-1]] + ([] if parts[-1] == "__init__" else [parts[-1]]))


def layer(path: Path) -> int:
    top, *rest = path.relative_to(REPO).parts
    if top == "flows":
        return 4 if rest[0] == "cli" else 3
    if len(rest) == 1:  # a module directly in tasks/
        return 0 if rest[0] in ("refs.py", "__init__.py") else 2
    return 0 if rest[0] in FOUNDATION else 1


def source_files() -> list[Path]:
    return sorted(p for pkg in ("tasks", "flows") for p in (REPO / pkg).rglob("*.py"))


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:  # `from nerflow.tasks.runtime import s3`
            names += [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n.startswith("nerflow.")}
    return found


FILES = {module_name(p): p for p in source_files()}
LAYER = {name: layer(path) for name, path in FILES.items()}
GRAPH = {name: {d for d in imports(path) if d in FILES and d != name} for name, path in FILES.items()}


def test_every_folder_is_a_package_the_wheel_installs():
    import tomllib

    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(p) for p in source_files() if p.name == "__init__.py"}
    assert folders - packages == set() and "nerflow.deployments" in packages


def test_nothing_imports_a_layer_above_its_own():
    upward = {m: sorted(d for d in deps if LAYER[d] > LAYER[m]) for m, deps in GRAPH.items()}
    assert {m: d for m, d in upward.items() if d} == {}


def test_no_step_imports_another_step():
    crossing = {m: sorted(d for d in deps if LAYER[d] == 2) for m, deps in GRAPH.items() if LAYER[m] == 2}
    assert {m: d for m, d in crossing.items() if d} == {}


def test_the_import_graph_has_no_cycle():
    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for dep in sorted(GRAPH.get(path[-1], ())):
            if dep == start:
                return path + [dep]
            if dep not in path:
                found = cycle_from(start, path + [dep])
                if found:
                    return found
        return None

    cycles = [c for m in GRAPH if (c := cycle_from(m, [m]))]
    assert cycles == []


def test_functions_stay_short():
    long = []
    for name, path in FILES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno >= MAX_FUNCTION_LINES
            ):
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_loading_the_flows_loads_no_ml_library():
    """A worker's flow-run process, `prefect deploy` and a run refused by its policy import the flows
    and nothing heavier: torch, transformers, datasets and pandas load where a step first needs them."""
    import subprocess
    import sys

    flows = ", ".join(f"nerflow.flows.{name}" for name in ("finetune", "sweep", "predict", "watcher", "recovery"))
    heavy = ("torch", "transformers", "datasets", "pandas", "matplotlib", "onnxruntime")
    code = f"import sys, {flows}; print(sorted(set(sys.modules) & set({heavy!r})))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
