"""Scale-out on the CPU: FSDP2 (ModelParallelStrategy) and DDP with 2 processes over gloo, through
the real ``bytelab`` entry point. Select with ``pytest -m distributed``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from datamodules import TextBytes
from modules import ByteLM
from modules.lm import load_checkpoint

from .test_cli import CONFIGS, bytelab

pytestmark = [pytest.mark.distributed, pytest.mark.cli]

TRAINERS = CONFIGS.parent / "trainer"
TWO_CPUS = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true"]
SMALL = [
    "--trainer.enable_progress_bar=false",
    "--data.init_args.seq_len=64",
    "--data.init_args.score_len=32",
    "--data.init_args.batch_size=4",
    "--data.init_args.eval_batch_size=2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven documents; with these window sizes the validation batches split unevenly over 2 ranks."""
    root = tmp_path_factory.mktemp("corpus")
    line = b"all the world's a stage, and all the men and women merely players;\n"
    for i in range(7):
        (root / f"doc{i}.txt").write_bytes(line * (9 + 4 * i))
    return root


def val_bpb(run: Path) -> list[float]:
    return pd.read_csv(run / "metrics.csv")["val/bpb"].dropna().tolist()


def validate_in_process(checkpoint: Path, corpus: Path, cache: Path) -> float:
    """One process, no strategy: the reference number for the distributed evaluations."""
    lm = ByteLM.from_checkpoint(checkpoint)
    dm = TextBytes(
        str(corpus), seq_len=64, score_len=32, batch_size=4, eval_batch_size=2, cache_dir=str(cache)
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    return trainer.validate(lm, datamodule=dm, verbose=False)[0]["val/bpb"]


def test_uneven_validation_batches(corpus, tmp_path):
    dm = TextBytes(str(corpus), seq_len=64, score_len=32, eval_batch_size=2, cache_dir=str(tmp_path))
    dm.setup()
    ranks = [len(dm.dataloader("val", rank=r, world_size=2)) for r in range(2)]
    single = len(dm.dataloader("val", rank=0, world_size=1))
    assert single % 2 == 1 and ranks == [single // 2 + 1] * 2  # rank 1 runs one padding batch


def test_fsdp_fit_resume_and_evaluate(corpus, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = [
        f"--config={TRAINERS / 'fsdp.yaml'}", f"--config={CONFIGS / 'megabyte_tiny.yaml'}", *TWO_CPUS, *SMALL,
        f"--data.init_args.paths={corpus}", f"--run_dir={run}", "--trainer.val_check_interval=2",
    ]  # fmt: skip
    first = bytelab("fit", *common, "--trainer.max_steps=4", cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    curve = val_bpb(run)
    assert len(curve) == 2 and curve[1] < curve[0] < 8.1
    shards = run / "checkpoints" / "last.ckpt"
    assert shards.is_dir() and {p.name for p in shards.iterdir()} >= {
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    }
    assert torch.load(shards / "meta.pt", weights_only=True)["global_step"] == 4

    second = bytelab("fit", *common, "--trainer.max_steps=6", "--ckpt_path=last", cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = load_checkpoint(shards)
    assert resumed["global_step"] == 6
    assert resumed["bytelab"]["bytes_seen"] == 6 * 2 * 4 * 64  # steps x ranks x batch x seq_len

    evaluation = bytelab(
        "validate", *common, f"--ckpt_path={shards}", f"--run_dir={tmp_path / 'eval'}", cache=cache
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    sharded = val_bpb(tmp_path / "eval")[-1]
    assert sharded == pytest.approx(validate_in_process(shards, corpus, cache), abs=1e-6)


def test_ddp_evaluation_equals_one_process(corpus, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = [f"--config={CONFIGS / 'decoder_tiny.yaml'}", *SMALL, f"--data.init_args.paths={corpus}"]
    trained = bytelab("fit", *common, f"--run_dir={run}", "--trainer.max_steps=3", cache=cache)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = run / "checkpoints" / "last.ckpt"
    ddp = bytelab(
        "validate", f"--config={TRAINERS / 'ddp.yaml'}", *common, *TWO_CPUS, f"--ckpt_path={checkpoint}",
        f"--run_dir={tmp_path / 'ddp'}", cache=cache,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert val_bpb(tmp_path / "ddp")[-1] == pytest.approx(
        validate_in_process(checkpoint, corpus, cache), abs=1e-6
    )
