"""The packages import one way (docs/architecture.md): geometry ← datamodules ← generation,
translation ← lightning_modules, and no two modules or packages import each other, even indirectly.
Read from the source with `ast`, so an import inside a function, which Python only runs when the
function is called, counts as much as one at the top of the module. The tests' own imports keep
to two rules as well."""
from __future__ import annotations

import ast
import graphlib
import re
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("geometry", "datamodules", "generation", "translation", "lightning_modules")
LIGHTNING = {"lightning", "pytorch_lightning", "lightning_fabric"}
# package -> the signlab packages it may import (besides itself)
ALLOWED = {
    "geometry": set(),
    "datamodules": {"geometry"},
    "generation": {"geometry", "datamodules"},
    "translation": {"geometry", "datamodules", "generation"},
    "lightning_modules": {"geometry", "datamodules", "generation", "translation"},
}
WITHOUT_LIGHTNING = ("geometry", "generation", "translation")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, name: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in `source`, the source of
    module `name`. Names of `known` modules resolve to the deepest known module they reach
    (`from geometry import poincare` is `geometry.poincare`, `from geometry import expmap0` is
    `geometry`); other imports keep their full dotted name."""
    here = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[:len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            deepest = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known),
                           target.removesuffix(".*"))
            found.append((deepest, node.lineno))
    return found


def import_graph(root: Path = REPO, packages=PACKAGES) -> dict[str, list[tuple[str, str, int]]]:
    """signlab module -> [(imported module, file, line)], over every module of `packages`."""
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        rel = str(path.relative_to(root))
        graph[name] = [(target, rel, line) for target, line in
                       imports(path.read_text(), name, path.name == "__init__.py", set(files))]
    return graph


def package(module: str) -> str:
    return module.split(".")[0]


GRAPH = import_graph()


def _violations(rule) -> list[str]:
    return [f"{rel}:{line} imports {target}" for source, edges in GRAPH.items()
            for target, rel, line in edges if rule(package(source), target)]


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    source = textwrap.dedent("""
        import os.path
        from . import poincare
        from .nn import Curvature
        from datamodules.keypoints import PART_NAMES as P, PART_NODES

        def load():
            from lightning_modules.checkpoint_io import load_checkpoint_file
            import lightning.pytorch as pl
    """)
    known = {"geometry", "geometry.poincare", "geometry.nn", "datamodules", "datamodules.keypoints",
             "lightning_modules", "lightning_modules.checkpoint_io"}
    assert [t for t, _ in imports(source, "geometry.frechet", False, known)] == [
        "os.path", "geometry.poincare", "geometry.nn", "datamodules.keypoints",
        "datamodules.keypoints", "lightning_modules.checkpoint_io", "lightning.pytorch"]
    assert [t for t, _ in imports("from . import poincare", "geometry", True, known)] == ["geometry.poincare"]


def test_every_package_is_read():
    assert {package(m) for m in GRAPH} == set(PACKAGES)
    reached = {package(t) for edges in GRAPH.values() for t, *_ in edges}
    assert set(PACKAGES) <= reached  # each package is imported somewhere (the reader found edges)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages_import_only_the_layers_below(pkg):
    assert _violations(lambda source, target: source == pkg and package(target) in PACKAGES
                       and package(target) not in ALLOWED[pkg] | {pkg}) == []


@pytest.mark.parametrize("pkg", WITHOUT_LIGHTNING)
def test_networks_and_geometry_never_import_lightning(pkg):
    assert _violations(lambda source, target: source == pkg and package(target) in LIGHTNING) == []


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, *_ in edges if t in GRAPH and t != m} for m, edges in GRAPH.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail("an import cycle: " + " imports ".join(reversed(err.args[1])))


def test_no_import_cycle_between_packages():
    graph = {pkg: set() for pkg in PACKAGES}
    for source, edges in GRAPH.items():
        graph[package(source)] |= {package(t) for t, *_ in edges if package(t) in PACKAGES} - {package(source)}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail("an import cycle between packages: " + " imports ".join(reversed(err.args[1])))


# ------------------------------------------------------------------------------------ the tests

TEST_SOURCES = {p.relative_to(REPO): ast.parse(p.read_text()) for p in sorted((REPO / "tests").rglob("*.py"))}
# import names of the distributions pyproject.toml requires (here each is its distribution's name)
DEPENDENCIES = {re.match(r"[A-Za-z0-9_.-]+", spec).group().lower().replace("-", "_")
                for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}


def test_no_test_module_imports_another_or_a_conftest():
    """Shared fixtures belong in a conftest.py and shared helpers in modules without the test_
    prefix: a test module imported by another ties the two together (and a test function imported
    by name runs twice), and a conftest is pytest's to import."""
    found = []
    for path, tree in TEST_SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [f"{path}:{node.lineno} imports {name}" for name in names
                      if any(part.startswith("test_") or part == "conftest" for part in name.split("."))]
    assert found == []


def test_only_optional_extras_are_skipped_and_each_skip_says_why():
    """An import error in signlab or in a required dependency is a failure, not a skip."""
    required = set(PACKAGES) | DEPENDENCIES
    assert {"sentencepiece", "torch", "lightning"} <= required
    skips = [(path, node) for path, tree in TEST_SOURCES.items() for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "importorskip"]
    assert skips  # the reader finds them (the extras' tests skip this way)
    for path, call in skips:
        module = call.args[0].value
        assert module.split(".")[0] not in required, f"{path}:{call.lineno} skips on {module}"
        assert any(k.arg == "reason" for k in call.keywords), f"{path}:{call.lineno}: a skip without a reason"
