"""The module map: the pipeline flows one way, each module imports only the shared foundation and
modules earlier in the flow, no two modules import each other (directly or through others, at import
time or lazily inside functions), and the README's Layout paragraph lists the stages in this order.
Checked by parsing every module's imports (no execution)."""

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
    {"extract"},
    {"stored_stats"},
    {"evaluate", "refbuild"},
    {"api"},
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
            f"{module} imports {imported}: a later stage of the pipeline (see the module map above)")


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


# ---------------------------------------------------------------------------------------------
# No import cycles, between modules (not stages): module-level and function-level imports alike.

def _resolve(imported: str, modules: set[str]) -> str | None:
    """The evalkit module an import names: itself, or the package/module it is a member of."""
    name = imported
    while name.startswith("evalkit"):
        if name in modules:
            return name
        if f"{name}.__init__" in modules:
            return f"{name}.__init__"
        name = name.rpartition(".")[0]
    return None


def _packages(module: str) -> list[str]:
    """The package __init__ modules above `module` (``evalkit.store.meta`` → ``evalkit.store.__init__``...)."""
    parts = module.split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return [".".join(parts[:i]) + ".__init__" for i in range(1, len(parts))]


def _graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module → evalkit modules it imports, counting the package __init__ files that importing runs
    (except the packages the importer itself is in, which are already being imported)."""
    modules = set(imports)
    graph = {}
    for module, found in imports.items():
        own = set(_packages(module))
        edges = set()
        for imported in found:
            target = _resolve(imported, modules)
            if target is None:
                continue
            for step in [*_packages(target), target]:
                if step in modules and step not in own and step != module:
                    edges.add(step)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_checker_finds_a_planted_cycle():
    """The checker itself: a lazy import of refbuild inside extract (which refbuild imports) is a cycle,
    and so is a package __init__ importing a module that imports the package."""
    planted = {m: set(i) for m, i in MODULES.items()}
    planted["evalkit.extract"].add("evalkit.refbuild")
    assert ["evalkit.extract", "evalkit.refbuild"] in find_cycles(_graph(planted))
    planted = {m: set(i) for m, i in MODULES.items()}
    planted["evalkit.store.__init__"].add("evalkit.evaluate")
    assert any("evalkit.store.__init__" in c and "evalkit.evaluate" in c for c in find_cycles(_graph(planted)))


@pytest.mark.parametrize("kind", ["module level", "module level and lazy"])
def test_no_import_cycles(kind):
    imports = IMPORT_TIME if kind == "module level" else MODULES
    cycles = find_cycles(_graph(imports))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# ---------------------------------------------------------------------------------------------
# The README's Layout paragraph names the stages in pipeline order.

def _readme_layout() -> str:
    text = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _readme_name(module: str) -> str:
    return f"`{module}/`" if (PACKAGE / module / "__init__.py").exists() else f"`{module}.py`"


def test_readme_stage_map_is_true():
    layout = _readme_layout()
    positions = []
    for stage in STAGES:
        for module in sorted(stage - {"__main__"}):
            name = _readme_name(module)
            assert name in layout, f"README's Layout paragraph does not list {name} (stage {sorted(stage)})"
            positions.append((layout.index(name), STAGES.index(stage), name))
    order = [stage for _, stage, _ in sorted(positions)]
    assert order == sorted(order), ("README's Layout paragraph lists the stages out of pipeline order: "
                                    + ", ".join(name for _, _, name in sorted(positions)))
