"""What the tests share: models of the one size table (modules/sizes.py), built the same way everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from modules.base import ByteModel, build_model
from modules.sizes import ARCHITECTURES, TEST_VARIANTS, model_config

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N test processes share the cores, so each (and every process it starts) runs torch
    # on one thread; two OpenMP threads per process on busy cores spin and slow everything down.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Every registered architecture at its ``test`` size, and each of its test variants
# (``megabyte_no_local`` ...): the models the contract tests run on.
CONTRACT_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (name, {}) for name in ARCHITECTURES},
    **{
        f"{name}_{variant}": (name, options)
        for name, variants in TEST_VARIANTS.items()
        for variant, options in variants.items()
    },
}


# Structural facts (causality, rows that never see each other, chunked == whole, cached == full,
# padding that moves nothing) are checked on float64 copies of the models: the same value computed by
# two kernels (another sequence length, another blocking, another CPU's AVX2 or AVX-512 path, another
# thread count) differs by float64 rounding, about 1e-16 relative on logits of order 10 after ~1e3
# accumulations, so < 1e-12; in float32 the same differences measured 6e-8 to 2.4e-6 and are not a
# property of the code. A leak, a lost link or a wrong mask moves a logit by 1e-3 or more (the
# mutants of tests/mutations.py), so EXACT sits seven orders of magnitude below the bug and four
# above the rounding.
EXACT = 1e-10


def tiny_model(name: str, max_seq_len: int = 96, **options: Any) -> ByteModel:
    """A contract model (an architecture or ``architecture_variant``) at its ``test`` size."""
    architecture, variant = CONTRACT_MODELS[name]
    options = {"max_seq_len": max_seq_len, **variant, **options}
    return build_model(model_config(architecture, "test", **options))


def exact_model(name: str, max_seq_len: int = 96, **options: Any) -> ByteModel:
    """``tiny_model`` in float64 and eval mode, for structural facts checked to ``EXACT``."""
    return tiny_model(name, max_seq_len, **options).double().eval()


@pytest.fixture
def one_thread():
    """Tiny models are all small ops: one thread is faster and immune to OpenMP spinning on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fox_corpus(tmp_path: Path) -> Path:
    """Six documents of one sentence repeated 30-50 times under ``tmp_path/corpus``, and a TextBytes
    config reading them at ``tmp_path/data.yaml``: the corpus of the end-to-end studies. Returns the
    config."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(6):
        (root / f"doc{i}.txt").write_bytes(b"the quick brown fox jumps over the lazy dog. " * (30 + 4 * i))
    config = tmp_path / "data.yaml"
    config.write_text(f"class_path: datamodules.TextBytes\ninit_args:\n  paths: {root}\n")
    return config


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Five small text documents (a test module may define its own ``corpus`` instead)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(5):
        (root / f"doc{i}.txt").write_bytes(b"to be, or not to be, that is the question:\n" * (20 + 5 * i))
    return root
