"""The house's layers, read from the source: imports point down only, and no module imports itself back.

    entry points (finetune, pretrain, selftrain, evaluate, ..., cli)   top
    stage, registry, tracking                                          run lifecycle and MLflow
    train, ssl, selftrain.pseudo, models, data, metrics, plots, ...    no MLflow here
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lesion", "tuning")
# Layers that must know nothing of MLflow runs or the registry (models/pyfunc serving lives in lesion/serving.py).
LOW = ("lesion.data", "lesion.models", "lesion.train", "lesion.ssl", "lesion.metrics", "lesion.inference",
       "lesion.postprocess", "lesion.plots", "lesion.config", "lesion.errors", "lesion.outputs", "lesion.progress",
       "lesion.runs", "lesion.selftrain.pseudo")
ABOVE_LOW = ("lesion.tracking", "lesion.registry", "lesion.stage", "lesion.serving", "lesion.finetune",
             "lesion.pretrain", "lesion.evaluate", "lesion.predict", "lesion.export", "lesion.report", "lesion.sweep",
             "lesion.selftrain.loop", "lesion.selftrain.rounds", "lesion.cli", "lesion.launch", "tuning")
# Imports inside functions: only where the module is heavy and optional, or loaded on demand by design.
LAZY_ALLOWED = {
    ("lesion.cli", "lesion.data.inspect"),  # `lesion data inspect` only
    ("lesion.cli", "lesion.launch"),  # `lesion launch` only
    ("lesion.cli", "lesion.tracking"),  # mlflow, only to drop mlflow run's run after a refused command
    ("lesion.cli", "lesion.cli"),  # python -m lesion.cli: the module, not __main__, holds the registry
    ("lesion.data.sources", "lesion.data.synthetic"),  # cv2 drawing, only for synthetic data
    ("lesion.data.synthetic", "lesion.progress"),
    ("lesion.predict", "lesion.export"),  # onnxruntime, only for an .onnx model
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, at top level) for every import of a lesion/tuning module in path."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append((name, id(node) in top))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {imp for imp, _ in imports(path, known) if imp != name} for name, path in mods.items()}


def test_low_layers_never_import_tracking_registry_or_entry_points():
    bad = [(m, imp) for m, deps in graph().items() if m.startswith(LOW) for imp in deps if imp.startswith(ABOVE_LOW)]
    assert not bad, f"imports that point up: {bad}"


def test_low_layers_know_nothing_of_mlflow():
    mods = modules()
    bad = []
    for name, path in mods.items():
        if not name.startswith(LOW):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [(name, n) for n in names if n.split(".")[0] == "mlflow"]
    assert not bad, f"MLflow below the tracking layer: {bad}"


def test_the_import_graph_has_no_circle():
    g = graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
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
                circles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_imports_sit_at_the_top_of_modules():
    mods = modules()
    known = set(mods)
    lazy = sorted({(name, imp) for name, path in mods.items() for imp, at_top in imports(path, known) if not at_top}
                  - LAZY_ALLOWED)
    assert not lazy, f"lesion imports inside functions (move them to the top, or say why in LAZY_ALLOWED): {lazy}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_says_what_it_owns(name):
    tree = ast.parse(modules()[name].read_text())
    doc = ast.get_docstring(tree)
    empty_init = name.count(".") and modules()[name].name == "__init__.py" and not tree.body
    assert doc or empty_init, f"{name}: no opening docstring saying what the module owns"
