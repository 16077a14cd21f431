"""Every DVC stage lists, in its deps, every project module its command imports: a change
to one re-runs the stage (dvc status says so), instead of leaving stale results."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = ("skrd4ad", "pipelines")


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.Module) -> list[ast.AST]:
    """Every import statement, leaving out a module-level __getattr__ (PEP 562's lazy
    attributes load only when the attribute is read, as skrd4ad/__init__.py's do) and
    ``if TYPE_CHECKING:`` blocks."""
    lazy = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    lazy += [  # `if TYPE_CHECKING:` blocks never run
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    ]
    skip = {id(n) for f in lazy for n in ast.walk(f)}
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in skip
    ]


def imported_files(module: str) -> set[Path]:
    """The project's files that importing ``module`` can load: every import statement,
    module level or inside a function, followed transitively, with each package's
    __init__.py on the way."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if not name.startswith(PROJECT):
            continue
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                todo += [base, *(f"{base}.{a.name}" for a in node.names)]
    return seen


def test_every_stage_depends_on_every_project_module_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    missing = {}
    for name, stage in stages.items():
        module = re.search(r"python -m ([\w.]+)", stage["cmd"]).group(1)
        root = params["dataset"]["root"]
        deps = [REPO / d.replace("${dataset.root}", root) for d in stage.get("deps", [])]
        for path in sorted(imported_files(module)):
            if not any(path == d or d in path.parents for d in deps):
                missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not missing, f"dvc.yaml deps lack: {missing}"


def test_the_import_walk_sees_function_level_and_relative_imports():
    found = {str(p.relative_to(REPO)) for p in imported_files("pipelines.benchmark")}
    assert "skrd4ad/evaluate.py" in found  # imported inside a function of ray_train
    assert "skrd4ad/atomic.py" in found and "skrd4ad/__init__.py" in found
