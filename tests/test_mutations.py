"""The suite's teeth: each mutation of ``tests/mutations.py``, applied to a copy of the tree, makes the
tests named for it fail. ``pytest -m mutations`` runs them all; the default ``pytest`` leaves out the
``slow`` ones (those that train with 2 processes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .mutations import MUTATIONS, Mutation

pytestmark = pytest.mark.mutations

REPO = Path(__file__).resolve().parents[1]
TREE = ("modules", "datamodules", "experiments", "analysis", "tests", "pyproject.toml")


def mutated_copy(mutation: Mutation, root: Path) -> Path:
    """A copy of the source tree under ``root`` with ``mutation`` applied (its text must occur once)."""
    copy = root / "tree"
    for name in TREE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    path = copy / mutation.path
    text = path.read_text()
    assert text.count(mutation.old) == 1, f"the mutation no longer applies to {mutation.path}: update it"
    path.write_text(text.replace(mutation.old, mutation.new))
    return copy


def failed_tests(output: str) -> set[str]:
    """Node ids (without parameters) of the tests pytest's summary reports as failed."""
    return {match.split("[")[0] for match in re.findall(r"^FAILED (\S+)", output, flags=re.MULTILINE)}


# Mutations whose tests train with 2 processes are marked slow: `pytest -m mutations` runs them.
CASES = [
    pytest.param(name, marks=pytest.mark.slow) if mutation.two_processes else name
    for name, mutation in MUTATIONS.items()
]


@pytest.mark.parametrize("name", CASES)
def test_the_suite_catches_the_mutation(name, tmp_path):
    mutation = MUTATIONS[name]
    copy = mutated_copy(mutation, tmp_path)
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *mutation.caught_by]
    if mutation.select:
        command += ["-k", mutation.select]
    env = {**os.environ, "PYTHONPATH": str(copy), "BYTELAB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"{name}: pytest exited {result.returncode}\n{output[-3000:]}"
    missed = set(mutation.caught_by) - failed_tests(output)
    assert not missed, f"{name} ({mutation.why}) passes {sorted(missed)}\n{output[-3000:]}"
