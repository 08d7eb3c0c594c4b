"""labbook's modules stand in the layers labbook/__init__.py declares: each imports only from its
own layer or those below, never in a circle, and at the top of the module (an import inside a
function hides a dependency; only the plotting and notebook libraries load late, when used)."""

import ast
import subprocess
import sys
from pathlib import Path

import labbook

PACKAGE = Path(labbook.__file__).parent
LAZY_LIBRARIES = ("matplotlib", "IPython", "nbformat", "jupytext")  # heavy, and only for pictures and notebooks


def modules():
    """{module name: its syntax tree} of every module of labbook but __init__."""
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))
            if path.stem != "__init__"}  # fmt: skip


def imported_modules(node):
    """The top-level package-relative names an import statement brings in: `labbook.x` as `x`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.module == "labbook":
        return [f"labbook.{alias.name}" for alias in node.names]
    return [node.module or ""]


def labbook_imports(tree):
    """The labbook modules a module imports (anywhere in it)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= {name.split(".")[1] for name in imported_modules(node) if name.startswith("labbook.")}
    return found


def function_imports(tree):
    """(line, module) of every import inside a function that is not a plotting or notebook library."""
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = imported_modules(node)
                if not all(name.split(".")[0] in LAZY_LIBRARIES for name in names):
                    found.append((node.lineno, ", ".join(names)))
    return found


def layer_of(name):
    return next((i for i, layer in enumerate(labbook.LAYERS) if name in layer), None)


def cycle(graph):
    """One import cycle of `graph` ({module: modules it imports}) as a list, or None."""
    state = {}

    def visit(name, path):
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "open":
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def layer_problems(trees):
    problems = [f"labbook/{name}.py is in no layer of labbook.LAYERS" for name in trees if layer_of(name) is None]
    for name, tree in trees.items():
        problems += [
            f"labbook/{name}.py:{line} imports {what} inside a function" for line, what in function_imports(tree)
        ]
        for dep in sorted(labbook_imports(trees[name])):
            if layer_of(name) is not None and layer_of(dep) is not None and layer_of(dep) > layer_of(name):
                problems.append(
                    f"labbook/{name}.py (layer {layer_of(name) + 1}) imports {dep} (layer {layer_of(dep) + 1})"
                )
    if found := cycle({name: labbook_imports(tree) for name, tree in trees.items()}):
        problems.append("an import cycle: " + " -> ".join(found))
    return problems


def test_labbook_imports_point_down_the_declared_layers():
    assert layer_problems(modules()) == []


def test_every_declared_module_exists():
    declared = {name for layer in labbook.LAYERS for name in layer}
    assert declared == set(modules())


def test_the_keep_rule_loads_no_other_labbook_module():
    code = "import sys, labbook.keeprule; print(sorted(m for m in sys.modules if m.startswith('labbook')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['labbook', 'labbook.keeprule']"


def test_the_checks_catch_a_late_import_an_upward_import_and_a_cycle():
    trees = {
        "base": ast.parse("def f():\n    import json\n    from matplotlib import pyplot\n"),
        "runlog": ast.parse("from labbook import cli\n"),
        "cli": ast.parse("from labbook.runlog import x\n"),
    }
    assert layer_problems(trees) == [
        "labbook/base.py:2 imports json inside a function",
        "labbook/runlog.py (layer 1) imports cli (layer 6)",
        "an import cycle: cli -> runlog -> cli",
    ]


def test_no_labbook_module_is_over_600_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 600} == {}
