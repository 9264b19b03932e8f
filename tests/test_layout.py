"""The import graph of DESIGN's layout: no arrow runs back up.

``modules`` and ``datamodules`` import none of the other packages (models and data meet only in
``experiments``); ``analysis`` reads only what runs wrote to disk, so it imports neither
``experiments`` nor ``datamodules``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("modules", "datamodules", "experiments", "analysis")
FORBIDDEN = {
    "modules": {"datamodules", "experiments", "analysis"},
    "datamodules": {"modules", "experiments", "analysis"},
    "analysis": {"experiments", "datamodules"},
}


def imported_packages(path: Path) -> set[str]:
    """The bytelab packages a file imports by absolute name, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package: str) -> None:
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert not {path: names for path, names in wrong.items() if names}
