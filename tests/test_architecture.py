"""The shape of the code: which package may import which, read from the source (no import runs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("modules", "datamodules", "experiments", "analysis")
# What each package may not import: models and data know nothing of each other or of the command
# line; analysis reads only what runs wrote to disk.
FORBIDDEN = {
    "modules": {"datamodules", "experiments", "analysis"},
    "datamodules": {"modules", "experiments", "analysis"},
    "analysis": {"experiments", "datamodules"},
    "experiments": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The bytelab modules a file imports (absolute names; relative imports resolved), at any depth."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


SOURCES = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
GRAPH = {name: {other for other in imports(path) if other in SOURCES} for name, path in SOURCES.items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_arrow_runs_back_up(package):
    wrong = sorted(
        f"{name} imports {other}"
        for name, others in GRAPH.items()
        if name.split(".")[0] == package
        for other in others
        if other.split(".")[0] in FORBIDDEN[package]
    )
    assert not wrong, wrong


def test_no_two_files_import_each_other():
    pairs = sorted(
        f"{a} <-> {b}"
        for a, others in GRAPH.items()
        for b in others
        if a < b and a in GRAPH.get(b, set()) and not b.startswith(f"{a}.") and not a.startswith(f"{b}.")
    )
    assert not pairs, pairs
