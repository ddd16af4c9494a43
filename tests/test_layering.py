"""The module map of STYLE.md: the pipeline flows one way, and each module imports only the shared
foundation and modules earlier in the flow. Checked by parsing every module's imports (no execution)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "evalkit"

# Stages in data-flow order. A module may import its own stage, the foundation and earlier stages.
FOUNDATION = {"errors", "atomic", "runtime", "context", "options", "hashing", "locks", "flags", "presets", "weights", "plugins", "__init__"}
STAGES = [
    {"models"},
    {"checkpoints"},
    {"diffusion"},
    {"guidance"},
    {"samplers"},
    {"store", "runstore"},
    {"generator"},
    {"sampling"},
    {"features", "refbatches"},
    {"cache"},
    {"metrics"},
    {"evaluate", "refbuild"},
    {"results", "baselines"},
    {"plots"},
    {"report"},
    {"sweep"},
    {"demo"},
    {"cli", "__main__"},
]
# Modules that must never import torch (directly or through an evalkit module), so that tables and
# figures can be rebuilt anywhere.
TORCH_FREE = {"results", "baselines", "plots", "report"}


def _top(module: str) -> str:
    if module == "evalkit":
        return "__init__"
    return module.split(".")[1] if module.startswith("evalkit.") else ""


def _stage(name: str) -> int:
    if name in FOUNDATION:
        return -1
    for i, stage in enumerate(STAGES):
        if name in stage:
            return i
    raise AssertionError(f"evalkit.{name} is not in the module map of tests/test_layering.py; add it to a stage")


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute imports of a file; with `module_level_only`, those that run when it is imported
    (function bodies excluded: a lazy import of an optional dependency is allowed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if module_level_only:
        nodes, todo = [], list(tree.body)
        while todo:
            node = todo.pop()
            nodes.append(node)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                todo.extend(ast.iter_child_nodes(node))
            elif isinstance(node, ast.ClassDef):
                todo.extend(n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    else:
        nodes = list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "evalkit":
                found.update(f"evalkit.{alias.name}" for alias in node.names if _is_module(alias.name))
    return found


def _modules(module_level_only: bool = False) -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out[".".join(rel.parts)] = _imports(path, module_level_only)
    return out


MODULES = _modules()
IMPORT_TIME = _modules(module_level_only=True)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    own = _top(module) or "__init__"
    own_stage = _stage(own)
    for imported in MODULES[module]:
        target = _top(imported)
        if not target or target == own:
            continue
        assert _stage(target) <= max(own_stage, -1) or own_stage == -1 and _stage(target) == -1, (
            f"{module} imports {imported}: a later stage of the pipeline (see STYLE.md's module map)")


def test_nothing_imports_the_cli():
    for module, imports in MODULES.items():
        if _top(module) in {"cli", "__main__"}:
            continue
        assert not any(_top(i) == "cli" for i in imports), f"{module} imports the CLI"


def _closure(module_top: str) -> set[str]:
    """Every evalkit top-level module reachable from `module_top`, and every external import."""
    seen, todo, external = set(), [module_top], set()
    while todo:
        top = todo.pop()
        if top in seen:
            continue
        seen.add(top)
        for module, imports in IMPORT_TIME.items():
            if _top(module) != top and not (top == "__init__" and module == "evalkit.__init__"):
                continue
            for imported in imports:
                t = _top(imported)
                if t:
                    todo.append(t)
                else:
                    external.add(imported.split(".")[0])
    return external


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_tables_and_figures_do_not_need_torch(module):
    assert "torch" not in _closure(module), f"evalkit.{module} imports torch (directly or through another module)"
