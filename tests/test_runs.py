"""Run manifests (run.json), compute budgets and the bounded evaluation subset."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.throughput import measure_flops

from datamodules import TextBytes
from datamodules.protocol import evaluation_windows, truncated_lengths
from experiments.budget import ComputeBudget, accumulation, steps_for_budget
from experiments.manifest import RunManifest, parameter_counts, read_manifest, write_json_atomic
from modules import ByteLM, Decoder, Megabyte
from modules.base import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(
    tmp_path: Path,
    corpus: Path,
    callbacks: list[L.Callback],
    ckpt_path: Path | None = None,
    **trainer: object,
) -> tuple[L.Trainer, ByteLM]:
    data = TextBytes(
        str(corpus),
        seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.2,
        test_fraction=0.2,
        max_eval_bytes=256,
    )
    lm = ByteLM(Decoder(d_model=16, n_layers=1, n_heads=2, max_seq_len=32), warmup_steps=1)
    options = {
        "max_steps": 100,
        "val_check_interval": 1000,
        "check_val_every_n_epoch": None,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
        **trainer,
    }
    t = L.Trainer(accelerator="cpu", callbacks=callbacks, **options)
    t.fit(lm, datamodule=data, ckpt_path=ckpt_path)
    return t, lm


@pytest.mark.parametrize(
    "budget,per_step,steps", [(3e12, 1e12, 3), (3.5e12, 1e12, 3), (1e12, 1e12, 1), (2.9999e12, 1e12, 2)]
)
def test_steps_for_budget_never_exceeds_it(budget, per_step, steps):
    assert steps_for_budget(budget, per_step) == steps
    assert 0 <= budget - steps * per_step < per_step * (1 + 1e-9)


@pytest.mark.parametrize(
    "global_batch,batch,world,steps", [(72, 9, 1, 8), (72, 9, 8, 1), (48, 6, 4, 2), (4800, 75, 64, 1)]
)
def test_global_batch_fixes_windows_per_step_whatever_the_world_size(global_batch, batch, world, steps):
    assert accumulation(global_batch, batch, world) == steps
    assert steps * batch * world == global_batch


@pytest.mark.parametrize("global_batch,batch,world", [(72, 9, 16), (48, 5, 1), (0, 1, 1)])
def test_global_batch_that_does_not_divide_is_a_one_line_error(global_batch, batch, world):
    with pytest.raises(ValueError, match=f"global_batch={global_batch} is not a whole number") as error:
        accumulation(global_batch, batch, world)
    assert "\n" not in str(error.value)


def test_budget_below_one_step_is_an_error():
    with pytest.raises(ValueError, match="less than one training step"):
        steps_for_budget(5e11, 1e12)


def counted_forward_flops(config: dict, batch: int, seq_len: int) -> int:
    """FLOPs of one forward as torch's counter sees them (meta device): the independent reference."""
    with torch.device("meta"):
        model = build_model(config)
    x = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    return measure_flops(model, lambda: model(x))


def window_bytes(trainer: L.Trainer, samples: int) -> int:
    """The bytes of the first ``samples`` training windows (each scored once, padding left out)."""
    dataset = trainer.datamodule.train_dataset()
    return sum(len(dataset[i]) for i in range(samples))


def test_flop_budget_sets_steps_and_spends_within_one_step(tmp_path, corpus):
    budget = ComputeBudget(flops=1e8, validations=2)
    manifest = RunManifest(tmp_path / "run", {"note": "test"})
    trainer, lm = fit(tmp_path, corpus, [budget, manifest])
    forward = counted_forward_flops(lm.model.config, batch=4, seq_len=32)
    per_step = 3 * forward  # training = 3 x forward, by DESIGN's convention
    assert budget.max_steps == int(1e8 // per_step) == trainer.global_step
    assert 1e8 - per_step < lm.flops_seen <= 1e8
    run = read_manifest(tmp_path / "run")
    assert run["status"] == "finished" and run["flops_seen"] == trainer.global_step * per_step
    assert run["budget"] == {"flops": 1e8, "bytes": None, "max_steps": budget.max_steps}
    # two evenly spaced validations, the last one at the budget
    assert [h["step"] for h in run["history"]] == [-(-budget.max_steps // 2), budget.max_steps]
    assert run["metrics"]["final"]["val/bpb"] == run["history"][-1]["val/bpb"]
    assert run["model"]["flops_per_byte"]["training"] == per_step / (4 * 32)
    assert run["model"]["params"]["total"] == sum(p.numel() for p in lm.model.parameters())
    assert run["bytes_seen"] == window_bytes(trainer, trainer.global_step * 4) < trainer.global_step * 4 * 32
    assert run["data"]["name"] == "corpus" and run["data"]["max_eval_bytes"] == 256
    assert run["config"] == {"note": "test"} and run["versions"]["torch"] and run["wall_time_s"] > 0


def test_byte_budget_and_both_budgets(tmp_path, corpus):
    by_bytes = ComputeBudget(bytes=4 * 32 * 5 + 7)
    trainer, lm = fit(tmp_path, corpus, [by_bytes])
    # Steps from whole windows; bytes seen are the windows' own (short ones at a document's start).
    assert by_bytes.max_steps == 5 and lm.bytes_seen == window_bytes(trainer, 4 * 5) <= 4 * 32 * 5
    both = ComputeBudget(flops=1e12, bytes=4 * 32 * 3)  # the byte budget runs out first
    fit(tmp_path, corpus, [both])
    assert both.max_steps == 3


def test_budget_alone_ends_the_run_and_the_learning_rate_decay(tmp_path, corpus):
    """Under the Trainer `bytelab fit` builds for a budget (no step limit) the budget ends the run,
    the learning rate reaches its floor exactly at the budget's last step, and resuming the finished
    run trains no further step; a Trainer step limit below the budget is refused."""
    budget = ComputeBudget(flops=1e8)
    trainer, lm = fit(tmp_path, corpus, [budget], **budget.trainer_arguments(max_epochs=None))
    assert trainer.max_steps == -1 and trainer.global_step == budget.max_steps == lm.budget_steps > 2
    for lr in trainer.lr_scheduler_configs[0].scheduler.get_last_lr():  # matrices, then the rest
        assert lr == pytest.approx(lm.hparams.lr * lm.hparams.min_lr_ratio)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    trained = []

    class Count(L.Callback):
        def on_train_batch_end(self, *args):
            trained.append(1)

    again = ComputeBudget(flops=1e8)
    resumed, _ = fit(tmp_path, corpus, [again, Count()], tmp_path / "last.ckpt", max_steps=-1, max_epochs=-1)
    assert resumed.global_step == budget.max_steps and not trained
    with pytest.raises(ValueError, match="would end the run before its budget"):
        fit(tmp_path, corpus, [ComputeBudget(flops=1e8)], max_steps=2)


def test_manifest_is_running_during_the_run_and_updated_at_each_validation(tmp_path, corpus):
    seen = []

    class Spy(L.Callback):
        def on_validation_end(self, trainer, pl_module):  # runs after RunManifest's (added later)
            seen.append(json.loads((tmp_path / "run" / "run.json").read_text()))

    fit(tmp_path, corpus, [RunManifest(tmp_path / "run"), Spy()], max_steps=4, val_check_interval=2)
    assert [s["status"] for s in seen] == ["running", "running"]
    assert [len(s["history"]) for s in seen] == [1, 2]
    assert read_manifest(tmp_path / "run")["status"] == "finished"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"]  # no temporary files left


def test_a_crash_marks_the_run_failed(tmp_path, corpus):
    class Crash(L.Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fit(tmp_path, corpus, [RunManifest(tmp_path / "run"), Crash()])
    run = read_manifest(tmp_path / "run")
    assert run["status"] == "failed" and "boom" in run["error"]


def test_megabyte_parameter_split():
    model = Megabyte(
        patch_size=4,
        global_d_model=64,
        global_layers=2,
        local_d_model=32,
        local_layers=1,
        n_heads=2,
        max_seq_len=32,
    )
    counts = parameter_counts(model)

    def stack(d: int, layers: int) -> int:  # per block 12 d^2 matrices + 2 LayerNorms, + a final one
        return layers * (12 * d * d + 4 * d) + 2 * d

    assert counts["global"] == stack(64, 2) == 98_944 and counts["local"] == stack(32, 1) == 12_480
    # the rest: pad patch 64, pad byte 32, global-to-local 16 x 32, head 32 x 256; embeddings
    # 256 x 16 + 32 x 16 (global), 256 x 32 + 4 x 32 (local)
    assert counts["non_embedding"] == 98_944 + 12_480 + 64 + 32 + 16 * 32 + 32 * 256
    assert counts["total"] == counts["non_embedding"] + 256 * 16 + 32 * 16 + 256 * 32 + 4 * 32


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "running", "x": list(range(1000))})
    write_json_atomic(path, {"status": "finished"})
    assert json.loads(path.read_text()) == {"status": "finished"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


@pytest.mark.parametrize("max_bytes", [1, 5, 16, 17, 40, 1000])
def test_max_eval_bytes_scores_a_prefix_once(max_bytes):
    lengths = np.array([16, 1, 20, 7])
    kept = truncated_lengths(lengths, max_bytes)
    assert kept.sum() == min(max_bytes, lengths.sum())
    assert (kept <= lengths[: len(kept)]).all() and (kept[:-1] == lengths[: len(kept) - 1]).all()
    windows = evaluation_windows(kept, 8, 3)
    assert windows[:, 3].sum() == kept.sum()  # every byte of the prefix scored exactly once


def test_max_eval_bytes_in_the_datamodule(tmp_path, corpus):
    full = TextBytes(str(corpus), seq_len=32, cache_dir=str(tmp_path / "cache"))
    part = TextBytes(str(corpus), seq_len=32, cache_dir=str(tmp_path / "cache"), max_eval_bytes=100)
    full.setup(), part.setup()
    assert full.windows("val")[:, 3].sum() == full.splits["val"].lengths.sum()
    assert part.windows("val")[:, 3].sum() == 100
    n = len(part.windows("val"))
    np.testing.assert_array_equal(part.windows("val")[:-1], full.windows("val")[: n - 1])  # same prefix
    with pytest.raises(ValueError, match="max_eval_bytes=0"):
        TextBytes(str(corpus), max_eval_bytes=0)
