"""H-Net's dynamic chunking on numbers: data-dependent boundaries stay causal, FLOPs follow the chunks
formed, the ratio loss reaches training, and a FLOP budget stops on the FLOPs actually spent."""

from __future__ import annotations

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.throughput import measure_flops

from datamodules import TextBytes
from experiments.budget import ComputeBudget
from experiments.manifest import RunManifest, read_manifest
from modules import ByteLM, HNet
from modules.hnet import ratio_loss

from .conftest import EXACT, exact_model, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perturbations_that_move_later_boundaries_leave_earlier_predictions(seed):
    """Changing bytes t.. changes boundary decisions after t (checked: the perturbation matters), yet
    p and b at positions <= t (which predict bytes <= t) stay bit for bit the same, and their logits
    to float rounding."""
    torch.manual_seed(seed)
    model = exact_model("hnet")
    x = torch.randint(0, 256, (1, 80))
    moved_boundaries = 0
    for t in (5, 23, 40, 71):
        y = x.clone()
        y[:, t:] = torch.randint(0, 256, (1, 80 - t))
        with torch.no_grad():
            before = model(x)
            b_before, p_before = model.last_boundaries, model.last_probabilities
            after = model(y)
        # The main network then runs over another number of chunks, and its kernels' blocking (so
        # their rounding, ~3e-8 in float32) follows that number; a leak of a later byte moves logits
        # by > 1e-4 (see EXACT).
        assert (before[:, : t + 1] - after[:, : t + 1]).abs().max() < EXACT
        assert torch.equal(b_before[:, : t + 1], model.last_boundaries[:, : t + 1])
        assert torch.equal(p_before[:, : t + 1], model.last_probabilities[:, : t + 1])
        moved_boundaries += int((b_before[:, t + 1 :] != model.last_boundaries[:, t + 1 :]).sum())
        assert (before[:, t + 1 :] - after[:, t + 1 :]).abs().max() > 1e-4
    assert moved_boundaries > 0


def test_right_padding_leaves_the_real_bytes_predictions():
    """Windows padded on the right (a document's start, loss masked) predict their real bytes as the
    short window does: the pad's boundaries and chunks come after them."""
    torch.manual_seed(0)
    model = exact_model("hnet")
    x = torch.randint(0, 256, (2, 37))
    with torch.no_grad():
        short = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 59)))
    torch.testing.assert_close(padded[:, :37], short, rtol=0, atol=EXACT)


def test_the_ratio_loss_counts_the_real_bytes_of_padded_training_windows():
    """A short training window right-padded in a batch: its ratio loss and chunk ratio are those of
    the window alone (the padding's boundaries count for nothing)."""
    torch.manual_seed(0)
    model = exact_model("hnet")
    x = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        model(x)
        alone, ratio = model.auxiliary_loss(), model.training_metrics()["chunk_ratio"]
        model.training_logits(torch.nn.functional.pad(x, (0, 34), value=32), torch.tensor([30]))
    torch.testing.assert_close(model.auxiliary_loss(), alone, rtol=0, atol=EXACT)
    assert model.training_metrics()["chunk_ratio"] == ratio
    with torch.no_grad():
        model(torch.nn.functional.pad(x, (0, 34), value=32))  # the whole padded window: another loss
    assert abs(float(model.auxiliary_loss()) - float(alone)) > 1e-4


def test_chunks_start_at_the_boundaries_and_the_first_position_is_one():
    torch.manual_seed(0)
    model = tiny_model("hnet").eval()
    with torch.no_grad():
        model(torch.randint(0, 256, (3, 50)))
    b, p = model.last_boundaries, model.last_probabilities
    assert b[:, 0].all() and (p[:, 0] == 1).all()
    assert torch.equal(b, p > 0.5)
    assert model.chunk_counts() == b.sum(dim=1).tolist()


@pytest.mark.parametrize("d_main", [64, 32])  # with a learned pad inward, and without (equal widths)
@pytest.mark.parametrize("length", [9, 40])
def test_flops_given_the_chunk_counts_match_the_counter(d_main, length):
    """Rows chunked differently (1, a few, every position): the counter on the meta device equals the
    formula summed over the rows' chunk counts, and batch_flops counts exactly that."""
    counts = [1, 3, length]
    boundaries = torch.zeros(3, length, dtype=torch.bool)
    for row, n in enumerate(counts):
        boundaries[row, torch.linspace(0, length - 1, n).long()] = True
    with torch.device("meta"):
        model = tiny_model("hnet", d_main=d_main)
    x = torch.zeros(3, length, dtype=torch.long, device="meta")
    counted = measure_flops(model, lambda: model(x, boundaries=boundaries))
    expected = sum(model.window_flops(length, n) for n in counts)
    assert counted == expected
    assert model.chunk_counts() == counts and model.batch_flops(x) == expected
    assert model.forward_flops(length) == model.window_flops(length, -(-length // 6))


def test_ratio_loss_is_one_at_the_target_and_pulls_toward_it():
    n = 6.0
    at_target = ratio_loss(torch.tensor([1.0] + [0.0] * 5), torch.full((6,), 1 / 6), n)
    assert float(at_target) == pytest.approx(1.0)
    too_many = ratio_loss(torch.ones(6), torch.full((6,), 0.9, requires_grad=True), n)
    assert float(too_many.detach()) > 1
    p = torch.full((6,), 0.9, requires_grad=True)
    ratio_loss(torch.ones(6), p, n).backward()
    assert (p.grad > 0).all()  # too many boundaries: the loss pushes p down


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="d_main=16 must be at least d_model=32"):
        HNet(d_model=32, d_main=16)
    with pytest.raises(ValueError, match="target_ratio=1 must be above 1"):
        HNet(target_ratio=1)
    with pytest.raises(ValueError, match="boundaries must be a"):
        no_first = torch.zeros(1, 8, dtype=torch.bool)
        tiny_model("hnet")(torch.zeros(1, 8, dtype=torch.long), boundaries=no_first)


class SpentPerStep(L.Callback):
    """The training FLOPs of each batch as the model formed its chunks (3x batch_flops)."""

    def __init__(self) -> None:
        self.flops: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.flops.append(3 * pl_module.model.batch_flops(batch["x"]))


def test_flop_budget_stops_on_the_flops_actually_spent(tmp_path, corpus):
    """train/flops is the budget's truth: the run stops at the first step after which what is left of the
    budget no longer covers one step at the expected cost; it spent the sum of its batches' chunk FLOPs,
    which the manifest records beside the expected ones; the ratio loss reached the training loss."""
    cache = str(tmp_path / "cache")
    data = TextBytes(str(corpus), seq_len=48, batch_size=4, cache_dir=cache, max_eval_bytes=96)
    torch.manual_seed(0)
    lm = ByteLM(tiny_model("hnet", max_seq_len=48), warmup_steps=1)
    budget, spent = ComputeBudget(flops=6e8), SpentPerStep()
    manifest = RunManifest(tmp_path / "run", {})
    trainer = L.Trainer(
        accelerator="cpu",
        callbacks=[budget, spent, manifest],
        logger=L.pytorch.loggers.CSVLogger(tmp_path / "logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        log_every_n_steps=1,
        **budget.trainer_arguments(max_epochs=None),
    )
    trainer.fit(lm, datamodule=data)
    per_step = budget.flops_per_step
    running = torch.tensor(spent.flops).cumsum(0).tolist()
    assert lm.flops_seen == running[-1] and len(running) == trainer.global_step
    stop = next(i for i, f in enumerate(running) if 6e8 - f < per_step) + 1
    assert trainer.global_step == stop
    assert running[-1] != trainer.global_step * per_step  # the chunks, not the expected count, were paid
    run = read_manifest(tmp_path / "run")
    assert run["flops_seen"] == lm.flops_seen and run["flops_expected"] == trainer.global_step * per_step
    logged = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv")))
    ratio, aux = logged["train/chunk_ratio"].dropna(), logged["train/aux_loss"].dropna()
    assert len(ratio) == trainer.global_step and ((ratio > 0) & (ratio <= 1)).all()
    assert (aux > 0).all()  # alpha x the ratio loss, logged beside the pure cross-entropy bits
