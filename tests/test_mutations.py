"""The suite's teeth: each mutation of ``tests/mutations.py``, applied to a copy of the tree, makes the
tests named for it fail. ``pytest -m mutations`` runs them all (about 4 minutes on 2 idle cores: a
pytest process per mutation); the default ``pytest`` only checks that every mutation still applies
to the code it names, so a refactor cannot leave one silently pointing at nothing. Run
``pytest -m mutations`` after changing a test a mutation names, or the code it mutates."""

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


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_mutation_still_applies(name):
    mutation = MUTATIONS[name]
    text = (REPO / mutation.path).read_text()
    assert text.count(mutation.old) == 1, f"{name} no longer applies to {mutation.path}: update it"
    tests = {node.split("::")[0] for node in mutation.caught_by}
    assert all((REPO / path).is_file() for path in tests), f"{name} names a test file that does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_suite_catches_the_mutation(name, tmp_path):
    mutation = MUTATIONS[name]
    copy = mutated_copy(mutation, tmp_path)
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-n", "0"]
    command += mutation.caught_by
    if mutation.select:
        command += ["-k", mutation.select]
    env = {**os.environ, "PYTHONPATH": str(copy), "BYTELAB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"{name}: pytest exited {result.returncode}\n{output[-3000:]}"
    missed = set(mutation.caught_by) - failed_tests(output)
    assert not missed, f"{name} ({mutation.why}) passes {sorted(missed)}\n{output[-3000:]}"
