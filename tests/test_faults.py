"""Faults a long study meets, each tried for real. ``pytest -m faults -v`` lists one line per fault."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import TextBytes
from modules import ByteLM, Decoder
from modules.lm import load_checkpoint

from .test_cli import CONFIGS, bytelab

pytestmark = pytest.mark.faults

RUN = [
    f"--config={CONFIGS / 'decoder_tiny.yaml'}",
    "--trainer.max_steps=12",
    "--trainer.val_check_interval=6",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.seq_len=64",
    "--data.init_args.batch_size=4",
    "--data.init_args.train_samples_per_epoch=16",  # 4 steps per epoch: resumes cross epochs
    "--model.model.init_args.dropout=0.1",  # dropout draws random numbers: the RNG state must resume too
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(5):
        (root / f"{i}.txt").write_bytes(b"now is the winter of our discontent\n" * (12 + i))
    return root


@pytest.fixture(scope="module")
def uninterrupted(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("uninterrupted")
    result = bytelab("fit", *RUN, f"--data.init_args.paths={corpus}", f"--run_dir={run}", cache=run / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(run / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("save_every,kill_at", [(3, 7), (4, 6)], ids=["mid-epoch", "epoch-boundary"])
def test_sigkill_then_resume_is_exact(save_every, kill_at, corpus, uninterrupted, tmp_path):
    """Killed with SIGKILL, resumed with --ckpt_path last: the same weights, optimiser state and
    counters as a run that was never interrupted, bit for bit (CPU, float32)."""
    common = [
        *RUN,
        f"--data.init_args.paths={corpus}",
        f"--run_dir={tmp_path}",
        f"--save_every_n_steps={save_every}",
    ]
    kill = f'{{"class_path": "tests.faults.KillAtStep", "init_args": {{"step": {kill_at}}}}}'
    killed = bytelab("fit", *common, f"--trainer.callbacks+={kill}", cache=tmp_path / "cache")
    assert killed.returncode == -9
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == kill_at // save_every * save_every
    resumed = bytelab("fit", *common, "--ckpt_path=last", cache=tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert final["global_step"] == uninterrupted["global_step"] == 12
    assert final["bytelab"]["bytes_seen"] == uninterrupted["bytelab"]["bytes_seen"]
    for name, weight in uninterrupted["state_dict"].items():
        assert torch.equal(final["state_dict"][name], weight), name
    moments = [checkpoint["optimizer_states"][0]["state"].values() for checkpoint in (final, uninterrupted)]
    for a, b in zip(*moments, strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_nan_loss_stops_the_run_naming_the_step(corpus, tmp_path):
    """A non-finite loss stops training before the update, with the step in the message."""
    model = Decoder(d_model=32, n_layers=1, n_heads=4, max_seq_len=64)
    with torch.no_grad():
        model.head.weight[0, 0] = math.nan
    dm = TextBytes(str(corpus), seq_len=64, batch_size=4, cache_dir=str(tmp_path))
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(FloatingPointError, match="training diverged at step 0: the loss is not finite"):
        trainer.fit(ByteLM(model), datamodule=dm)
