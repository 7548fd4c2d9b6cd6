"""The package's shape: layers import only downward, no cycles (also through imports inside
functions), no module over the size limit, every docstring reference resolves in the repo."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ptychograph"

#: Layers from the bottom (docs/design.md, "Architecture: layers"). A module may import
#: modules of its own layer or below; the graph of all imports must be acyclic.
LAYERS: list[set[str]] = [
    {"errors", "version", "backend", "config_cluster", "config", "scan", "phantoms", "memory"}
    | {"paths", "yamlfile", "config_live", "config_reconstruction", "run_lock"},
    {"partials", "operators", "fourier", "modes", "geometry", "metrics", "initial", "simulate"}
    | {"noise"}
    | {"io", "io.cxi", "io.hxn", "io.npz", "io.validate", "io.zarr_store", "io.store_check"}
    | {"io.live_mark", "live", "scan_watch"},
    {
        "ops",
        "gpu",
        "gpu.kernels",
        "gpu.ops",
        "shifted_probe",
        "cpu_ops",
        "cpu_fused",
        "cpu_fused_pixels",
    },
    {"views", "likelihood", "positions", "position_search"},
    {"state", "problem", "run_checks"},
    {"resident", "growth"},
    {"algorithms", "algorithms.base", "algorithms.dm", "algorithms.fit", "algorithms.ml"}
    | {"algorithms.positions"},
    {"cluster", "executors", "executors.local", "executors.placement", "executors.worker"}
    | {"executors.dask"},
    {"driver"},
    {"auto_modes", "checkpoint", "plotting", "results", "info"}
    | {"figures_common", "comparison", "provenance", "export", "progress", "interrupts"}
    | {"solve", "follow"},
    {"engine"},
    {"cli", "demo", ""},  # "" is the package itself (its lazy ``reconstruct``)
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_LINES = 380


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported ptychograph module, inside a function?) for every import of the file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module]
                # ``from ptychograph.io import zarr_store`` imports a module
                names += [f"{child.module}.{alias.name}" for alias in child.names]
            for name in names:
                if name == "ptychograph" or name.startswith("ptychograph."):
                    module = name.removeprefix("ptychograph").removeprefix(".")
                    if module in RANK:
                        found.append((module, inner))
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    name: {target for target, _ in _imports(path) if target != name}
    for name, path in MODULES.items()
}


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(RANK)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = [
        (target, "in a function" if inner else "at the top")
        for target, inner in _imports(MODULES[module])
        if RANK[target] > RANK[module]
    ]
    assert upward == [], f"{module} (layer {RANK[module]}) imports upward: {upward}"


def test_import_graph_is_acyclic() -> None:
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def _headings() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    return {h.strip().lower() for h in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def test_docstring_references_resolve() -> None:
    """``docs/design.md, "Section"`` names a heading there (part of it is enough);
    no reference to a DESIGN.md outside the repository or to a module that does not exist."""
    headings = _headings()
    problems = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text()
        if re.search(r"(?<!docs/design\.md)(?<![/\w])DESIGN\.md", text):
            problems.append(f"{path.name}: cites DESIGN.md")
        for section in re.findall(r'docs/design\.md,?\s+"([^"]+)"', text):
            section = " ".join(section.split())
            if not any(section.lower() in h for h in headings):
                problems.append(f'{path.name}: no section "{section}"')
        for module in re.findall(r":mod:`~?ptychograph\.([\w.]+)`", text):
            if module not in MODULES:
                problems.append(f"{path.name}: no module ptychograph.{module}")
    assert problems == []


def test_readme_layout_lists_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Development")]
    missing = []
    for name, path in MODULES.items():
        relative = path.relative_to(PACKAGE).as_posix()
        short = relative.removesuffix("/__init__.py") + ("/" if path.name == "__init__.py" else "")
        if f"`{relative}`" not in layout and f"`{short}`" not in layout and name:
            missing.append(relative)
    assert missing == []
