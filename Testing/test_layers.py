"""The engine's layout is its architecture (README "Architecture"): every module imports, and no module
imports upward across the layers, nor in a cycle.

Layers, lowest first; a module may import from its own package or from a lower layer only (every ``from .``,
``from ..`` and ``land.`` import, lazy ones inside functions included; ``if TYPE_CHECKING:`` blocks
excepted)::

    interface, resources  <  imaging  <  conditioning  <  models  <  sampling, decoding  <  pipeline  <  cli
        <  data  <  eval  <  train  <  world  <  teaching

``land`` itself (the façade: the version, the errors, lazy ``LANDPipeline``/``Volume``) and ``land.io`` (the
README's import path, a compatibility module) sit on top; nothing inside ``land`` imports them.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import land

ROOT = Path(land.__file__).resolve().parent
LAYERS = [
    {"interface", "resources"},
    {"imaging"},
    {"conditioning"},
    {"models"},
    {"sampling", "decoding"},
    {"pipeline"},
    {"cli"},
    {"data"},
    {"eval"},
    {"train"},
    {"world"},
    {"teaching"},
    {"__init__", "__main__", "io"},
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}
SLICER_MODULES = [
    ROOT.parent / "LANDSynthesis.py",
    *sorted((ROOT.parent / "LANDSynthesisLib").glob("*.py")),
    ROOT.parents[1] / "LANDTraining" / "LANDTraining.py",
    *sorted((ROOT.parents[1] / "LANDTraining" / "LANDTrainingLib").glob("*.py")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit of ``land.X...``: its top-level package or module (``__init__`` for ``land``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def land_imports(path: Path, package: str | None) -> list[tuple[int, str]]:
    """(line, absolute module) of every land import in ``path``: ``from X import a`` gives ``X.a`` when
    that is
    a module, else ``X``; relative imports are resolved against ``package``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level and package is None:
                continue  # a relative import outside the engine (the Slicer modules' own libraries)
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "land" and not target.startswith("land."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _module_exists(sub) else target))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name == "land" or a.name.startswith("land.")
            ]
    return found


def _module_exists(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


ENGINE = sorted(ROOT.rglob("*.py"))


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ENGINE:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {target for _, target in land_imports(path, package) if target != name}
    return graph


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(land.__path__, "land.") if m.name != "land.__main__"]
    assert len(names) > 60
    for name in names:
        importlib.import_module(name)


def test_no_module_imports_upward():
    upward = []
    for path in ENGINE:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for line, target in land_imports(path, package):
            if unit(target) == unit(name) and unit(name) not in ("__init__", "io"):
                continue  # within one package
            if RANK[unit(target)] >= RANK[unit(name)]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} imports {target}")
    assert not upward, "imports upward across the layers (Testing/test_layers.py LAYERS):\n" + "\n".join(
        upward
    )


def test_interface_imports_nothing_else_from_land():
    for path in sorted((ROOT / "interface").glob("*.py")) + [ROOT / "resources" / "__init__.py"]:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        others = [t for _, t in land_imports(path, package) if unit(t) != unit(name)]
        assert not others, f"{name} imports {others}"


def test_no_import_cycle():
    graph = edges()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("path", SLICER_MODULES, ids=lambda p: p.name)
def test_slicer_modules_import_only_the_interface_and_the_pipeline(path):
    """The Slicer modules use the engine through its torch-free interface (and ``land.resources``), the
    façade ``land`` (``LANDPipeline``, ``Volume``, ``segment_lungs``, ``nodule_shape_info``), and LANDTraining
    the training pipeline's torch-free runner and options (``land.train.pipeline``, ``.pipeline_run``,
    ``.config_files``)."""
    allowed = {
        "land",
        "land.pipeline",
        "land.train.pipeline",
        "land.train.pipeline_run",
        "land.train.config_files",
    }
    bad = [
        f"{line}: {target}"
        for line, target in land_imports(path, None)
        if target not in allowed and unit(target) not in ("interface", "resources")
    ]
    assert not bad, f"{path.name} imports engine internals: {bad}"


def test_readme_architecture_matches_the_tree():
    """README "Architecture" names every package of the engine, the pipeline and the CLI, and only those."""
    readme = (ROOT.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    named = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `land.")}
    tree = {f"land.{p.name}" for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert named == tree | {"land.pipeline", "land.cli"}
    assert set(RANK) - {"__init__", "__main__", "io"} == {name.split(".")[1] for name in named}
