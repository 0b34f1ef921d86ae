"""Each compress module imports on its own in a fresh interpreter, and compress/ has no import cycle.

The cycle check reads every ``import`` in compress/ (lazy ones and ``TYPE_CHECKING`` ones included,
as an import linter would) and fails on any cycle between modules; the fresh-interpreter imports
catch a cycle that only bites when a particular module is imported first.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "compress"
TORCH_FREE = ("compress.registry", "compress.config", "compress.catalog_entries", "compress.model_dir")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(path) for path in PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The compress modules ``path`` imports (absolute and relative, at any depth of the file)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_compress_has_no_import_cycle() -> None:
    graph = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}
    # A package's __init__ importing its own submodules is not a cycle of interest; drop parent edges.
    graph = {mod: {dep for dep in deps if not mod.startswith(dep + ".")} for mod, deps in graph.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_check_sees_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_catalog_reaches_neither_export_nor_session() -> None:
    graph = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}
    seen, todo = set(), ["compress.catalog"]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    assert {"compress.export", "compress.session"}.isdisjoint(seen)


# One fresh interpreter preloads the third-party packages, then forks a child per module: each child
# imports one compress module into an interpreter that has no compress module loaded.
_FORKED_IMPORTS = """
import importlib, json, os, sys, traceback
import numpy, torch  # third-party only: compress itself stays unloaded in the parent
result = {}
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            message = ""
        except BaseException:
            message = traceback.format_exc()[-2000:] or "failed"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        result[module] = fh.read()
    os.waitpid(pid, 0)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def import_errors() -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS, *MODULES], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str, import_errors: dict[str, str]) -> None:
    assert import_errors[module] == "", import_errors[module]


def test_torch_free_modules_do_not_import_torch() -> None:
    code = f"import sys, {', '.join(TORCH_FREE)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
