"""The package's layout: stage packages, thin public faces, no import circles, lazy torch."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import scellst as sst

SRC = Path(sst.__file__).resolve().parent
STAGES = ("segmentation", "embedding", "mil")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The scellst modules that ``name`` imports anywhere in its file (also inside functions,
    and the ``importlib`` targets of a lazy face), resolved to module names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    targets: set[str] = set()

    def absolute(module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = absolute(node.module, node.level)
            for a in node.names:  # `from . import x` may name a submodule
                sub = f"{mod}.{a.name}"
                targets.add(sub if sub in modules else mod)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value  # the lazy faces' "..mil.fit" strings
            if value.startswith(".") and value.strip(".").replace(".", "").isidentifier():
                level = len(value) - len(value.lstrip("."))
                targets.add(absolute(value[level:], level))
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    """No module of scellst imports, directly or through others, a module that imports it."""
    graph = _graph()
    assert len(graph) > 50  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle():
    """The check itself: a circle through a lazy face string and a function-level import."""
    graph = _graph()
    assert "scellst.mil.fit" in graph["scellst.tl"]  # the lazy face's target is an edge
    graph["scellst.mil.options"] = graph["scellst.mil.options"] | {"scellst.tl"}
    assert any("scellst.tl" in c and "scellst.mil.fit" in c for c in _cycles(graph))


def test_stages_do_not_import_the_faces():
    """The stage packages are the implementation: they never import the public faces
    (pp/tl/pl) or the CLI, and each depends only on the stages before it."""
    graph = _graph()
    faces = {"scellst.pp", "scellst.tl", "scellst.nn", "scellst.pl", "scellst.cli", "scellst"}
    order = {stage: i for i, stage in enumerate(STAGES)}
    for name, deps in graph.items():
        stage = name.split(".")[1] if name.count(".") else None
        if stage not in order:
            continue
        assert not deps & faces, (name, deps & faces)
        for dep in deps:
            dep_stage = dep.split(".")[1]
            if dep_stage in order:
                assert order[dep_stage] <= order[stage], f"{name} imports the later stage {dep}"


def test_faces_are_thin():
    """pp and tl define nothing themselves: every public name comes from a stage package."""
    import scellst.nn

    for face in (sst.pp, sst.tl, scellst.nn):
        for name in face.__all__:
            obj = getattr(face, name)
            module = getattr(obj, "__module__", "")
            assert module.split(".")[1] in STAGES, (face.__name__, name, module)
    for face in ("pp", "tl", "nn"):
        tree = ast.parse((SRC / face / "__init__.py").read_text())
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert set(defined) <= {"__getattr__", "__dir__"}, (face, defined)


def test_stage_packages_document_what_they_read_and_write():
    for stage in STAGES:
        init = SRC / stage / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "Reads" in doc and "Modules:" in doc, stage
        # every module of the stage is named in its map
        for module in (SRC / stage).glob("*.py"):
            if module.stem != "__init__":
                assert f"``{module.stem}``" in doc, (stage, module.stem)


def test_import_scellst_does_not_import_torch():
    code = (
        "import sys, scellst as sst; sst.pp.segment; sst.tl.embed; sst.pl.cells; "
        "import scellst.segmentation, scellst.embedding, scellst.mil; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["fit", "predict", "MILModel", "train_encoder", "TorchEncoder"])
def test_lazy_names_resolve_to_their_stage(name):
    obj = getattr(sst.tl, name)
    assert obj.__module__.split(".")[1] in STAGES
    assert inspect.isfunction(obj) or inspect.isclass(obj)


def test_fit_reads_the_training_defaults():
    """fit's keyword defaults are the training defaults (one place: mil.options)."""
    from scellst.mil.options import DEFAULTS, TRAINING_OPTIONS

    params = inspect.signature(sst.tl.fit).parameters
    for k in TRAINING_OPTIONS:
        assert params[k].default is getattr(DEFAULTS, k), k
    source = inspect.getsource(sst.tl.fit)
    assert all(f"DEFAULTS.{k}" in source for k in TRAINING_OPTIONS)
