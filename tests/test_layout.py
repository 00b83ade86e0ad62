"""The package's shape, as the README's layout section states it: imports
point one way (glue -> stages -> model/engine -> core), with no cycle, all
at the top of their module, and only the engine package talks to the
engine. Read from the source with ast, so a new import that breaks a rule
fails here, with the module and the import named."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ccp_tasks"
# Lower layers never import higher ones; model and engine sit side by side
# and import neither each other; the stages import no other stage's module
# except through what a layer below offers.
LAYER = {"core": 0, "model": 1, "engine": 1, "build": 2, "checks": 2, "publish": 2, "glue": 3}
ENGINE_LIBRARIES = ("docker", "requests_unixsocket", "urllib3")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(tree: ast.Module, known: dict[str, Path]) -> list[tuple[str, ast.AST]]:
    """(module of the package, node) for each import of the package's own
    modules, lazy_module("...") declarations included."""
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ccp_tasks"):
            targets.append(node.module)
            targets += [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known]
        elif isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names if alias.name.startswith("ccp_tasks")]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "lazy_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            targets.append(node.args[0].value)
        found += [(target, node) for target in targets if target in known]
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _node in imports_of(ast.parse(path.read_text()), known):
            if target != name and not name.startswith(target + "."):  # a package's own parents
                edges[name].add(target)
    return edges


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER else None


def test_imports_form_no_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_imports_point_from_glue_through_the_stages_to_the_core():
    wrong = []
    for module, targets in graph().items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if here is None or there is None or here == there:
                continue
            if LAYER[there] >= LAYER[here]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_package_imports_its_own_modules_at_module_level_only():
    known = modules()
    late = []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and imports_of(ast.Module([node], []), known):
                        late.append(f"{name}:{node.lineno}")
    assert late == []


def test_only_the_engine_package_imports_the_engine_libraries():
    outside = []
    for name, path in modules().items():
        if layer(name) == "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            outside += [f"{name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in ENGINE_LIBRARIES]
    assert outside == []


def test_every_public_function_is_typed():
    """pyproject's mypy checks every body; this holds the line the issue drew:
    each module's public functions, and the methods of its public classes,
    annotate every parameter and their return."""
    untyped = []

    def check(module: str, function: ast.FunctionDef | ast.AsyncFunctionDef, owner: str = "") -> None:
        if function.name.startswith("_") and function.name != "__init__":
            return
        arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
        arguments += [a for a in (function.args.vararg, function.args.kwarg) if a is not None]
        missing = [a.arg for a in arguments if a.annotation is None and a.arg not in ("self", "cls")]
        if function.returns is None and function.name != "__init__":
            missing.append("return")
        if missing:
            untyped.append(f"{module}:{function.lineno} {owner}{function.name}: {', '.join(missing)}")

    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                check(name, node)
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        check(name, item, f"{node.name}.")
    assert untyped == []
