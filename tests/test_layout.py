"""The package's layers (docs/ARCHITECTURE.md), checked from the source: no cycles, no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

import sanatool

ROOT = Path(sanatool.__file__).parent

# What each layer may import from sanatool (besides itself and the package root's __version__).
# A module is in the first layer whose prefix it has.
FOUNDATION = (
    "sanatool.errors",
    "sanatool.progress",
    "sanatool.formatting",
    "sanatool.arch",
    "sanatool.quiet",
)
LAYERS = {
    "sanatool.cli": None,  # the top: anything
    "sanatool.__main__": None,
    "sanatool.demo": ("sanatool.",),
    "sanatool.io": (*FOUNDATION, "sanatool.io"),
    "sanatool.arch": ("sanatool.errors",),
    "sanatool.formatting": (),
    "sanatool.errors": (),
    "sanatool.progress": (),
    "sanatool.quiet": (),
    "sanatool.optim": ("sanatool.errors", "sanatool.optim"),
    "sanatool.shapes": (*FOUNDATION, "sanatool.io", "sanatool.shapes"),
    "sanatool.distributed": ("sanatool.errors",),
}
LIBRARY = (*FOUNDATION, "sanatool.io", "sanatool.optim", "sanatool.shapes", "sanatool.distributed")
COMMAND_LOGIC = (
    "sanatool.surgery",
    "sanatool.inference",
    "sanatool.samples",
    "sanatool.training",
    "sanatool.judges",
)
for _package in COMMAND_LOGIC:
    LAYERS[_package] = (*LIBRARY, *COMMAND_LOGIC)


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every sanatool module a file imports, at any depth (lazy imports count), but not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sanatool":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "sanatool"}
    return found - {"sanatool"}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " → ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for dependency in sorted(graph.get(module, ())):
            visit(dependency, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_module_imports_a_layer_above_it():
    problems = []
    for module, dependencies in _graph().items():
        if module == "sanatool":
            continue  # the front door names everything, lazily (its imports are strings)
        layer = next(
            (prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), None
        )
        assert layer is not None, (
            f"{module} is in no layer; add its folder to LAYERS and docs/ARCHITECTURE.md"
        )
        allowed = LAYERS[layer]
        if allowed is None:
            continue
        for dependency in dependencies:
            ok = dependency == layer or dependency.startswith(layer + ".")
            ok = ok or any(
                dependency == a or dependency.startswith(a if a.endswith(".") else a + ".") for a in allowed
            )
            if not ok:
                problems.append(f"{module} imports {dependency}")
    assert not problems, problems


def test_only_the_cli_prints_or_exits():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("sanatool.cli") or name in ("sanatool.__main__", "sanatool.shapes.__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                if called in ("print", "sys.exit", "exit", "quit", "os._exit"):
                    offenders.append(f"{name}:{node.lineno} calls {called}")
    assert not offenders, offenders
