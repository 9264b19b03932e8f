"""Native libraries stay on the paths that need them: with torchaudio unable to load (as torchaudio
2.11.1 beside torch 2.11.0 was), everything but audio works, and audio stops with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from datamodules import image

from .test_cli import CONFIGS, REPO, bytelab

pytestmark = pytest.mark.cli

# What a torchaudio built for another torch raised on import, word for word.
BROKEN = "libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace"
PACKAGES = ("modules", "datamodules", "experiments", "analysis")


@pytest.fixture
def broken_torchaudio(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``import torchaudio`` raises OSError: a stub package first on PYTHONPATH."""
    stub = tmp_path / "stub" / "torchaudio"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"raise OSError({BROKEN!r})\n")
    return {"PYTHONPATH": f"{stub.parent}:{REPO}"}


def test_the_stub_really_breaks_torchaudio(broken_torchaudio):
    run = subprocess.run(
        [sys.executable, "-c", "import torchaudio.functional"],
        env=broken_torchaudio,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and BROKEN in run.stderr


def test_every_module_imports_without_torchaudio(broken_torchaudio):
    """No module of bytelab's imports torchaudio (or soundfile, torchvision, Pillow) at import time:
    each is imported in a fresh interpreter whose torchaudio cannot load."""
    names = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torchaudio', 'soundfile') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=broken_torchaudio, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"  # nor did any import try to load them


def test_help_and_text_training_work_without_torchaudio(broken_torchaudio, tmp_path):
    helped = bytelab("--help", cache=tmp_path / "cache", env=broken_torchaudio)
    assert helped.returncode == 0 and "usage: bytelab" in helped.stdout
    fit = bytelab(
        "fit",
        f"--config={CONFIGS / 'decoder_tiny.yaml'}",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.seq_len=64",
        "--data.init_args.batch_size=2",
        f"--run_dir={tmp_path / 'run'}",
        cache=tmp_path / "cache",
        env=broken_torchaudio,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    val = pd.read_csv(tmp_path / "run" / "metrics.csv")["val/bpb"].dropna()
    assert len(val) == 1 and 6 < float(val.iloc[-1]) < 9  # two steps: about log2(256) bits
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_audio_stops_with_one_line_that_names_torchaudio_and_the_fix(broken_torchaudio, tmp_path):
    run = bytelab(
        "fit",
        f"--config={CONFIGS.parent / 'data' / 'audio_default.yaml'}",
        f"--config={CONFIGS / 'decoder_tiny.yaml'}",
        "--trainer.max_steps=1",
        f"--run_dir={tmp_path / 'run'}",
        cache=tmp_path / "cache",
        env=broken_torchaudio,
    )
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("bytelab: error:")]
    assert errors == [
        f"bytelab: error: audio needs torchaudio, whose import failed (OSError: {BROKEN}); install the "
        "locked environment (make install, docs/INSTALL.md), or a torchaudio built for torch "
        f"{__import__('torch').__version__}"
    ]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.bin"))


def test_image_constants_agree_with_torchvision():
    """image.py spells out torchvision's CIFAR-10 file list and image suffixes so that reading them
    loads no native library; they must stay torchvision's."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.folder import IMG_EXTENSIONS

    listed = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    assert listed == image.CIFAR10_FILES
    assert image.IMG_EXTENSIONS == IMG_EXTENSIONS
