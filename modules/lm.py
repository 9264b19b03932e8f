"""ByteLM: the one LightningModule. Loss in bits per byte, AdamW, warm-up + decay, FLOP accounting."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from .base import ByteModel, build_model, nats
from .checkpoint import describe_change, load_checkpoint, rng_states, set_rng_states
from .metrics import BitsPerByte, FlopsPerByte, PositionBitsPerByte
from .parallel import parallelize


class ByteLM(L.LightningModule):
    """Trains and evaluates any :class:`ByteModel` on byte batches.

    Batches are dicts: ``x`` LongTensor[B, L] and, for evaluation, ``num_scored`` LongTensor[B]
    (row b scores its last ``num_scored[b]`` bytes) or, for training, ``lengths`` LongTensor[B] (row
    b holds ``lengths[b]`` bytes, then right padding). Training scores every position the model
    predicts in each row's own bytes. Every byte value is a real symbol: no byte value is ignored in
    the loss; only padding is.

    Args:
        model: The byte model (Decoder, Megabyte, PerceiverAR or any ByteModel).
        lr: Peak learning rate.
        warmup_steps: Linear warm-up steps from 0 to ``lr``.
        decay: Shape of the decay from ``lr`` to ``lr * min_lr_ratio`` over the remaining steps
            (``linear`` with ``min_lr_ratio=0`` is the paper's polynomial decay of power 1).
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay, applied to matrices only (not norms, biases, pads).
        betas: AdamW betas (the paper: 0.9, 0.98).
        activation_checkpointing: Recompute each transformer block's activations in the backward
            pass instead of storing them (less memory, about a third more compute).
        compile: ``torch.compile`` each transformer block.
        loss_chunk: Compute the head and the loss on this many positions at a time (0: all at once),
            each chunk under activation checkpointing, so that a long window's logits never all
            exist at once; MEGABYTE also runs its local model per chunk of patches
            (:meth:`ByteModel.position_nats`). The loss is the same.
        strided_inference: Evaluate with MEGABYTE's strided inference (two passes per window,
            offset by P/2: :meth:`Megabyte.evaluation_logits`), for models that have it. Sliding-window
            evaluation is the data's ``score_len``; the two combine. ``val/flops_per_byte`` and
            ``test/flops_per_byte`` report what either costs.
        position_bins: Also report bits per byte by where a scored byte sits: in ``position_bins``
            equal bins of the window (``val/bpb_window/<first>-<last>``, positions in the data's
            ``seq_len``) and, for a model with patches, by position inside its patch
            (``val/bpb_patch/<j>``); the same for ``test/``. 0 (default) reports neither.

    Attributes:
        budget_steps: The optimiser steps a compute budget allows this run, set before the optimiser
            is configured by the budget that ends the run (``experiments.budget.ComputeBudget``, through
            ``trainer.should_stop``): the learning-rate schedule decays over the fewer of these and the
            trainer's ``estimated_stepping_batches``. None without a budget.
    """

    def __init__(
        self,
        model: ByteModel,
        lr: float = 1e-3,
        warmup_steps: int = 100,
        decay: Literal["cosine", "linear", "constant"] = "cosine",
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        activation_checkpointing: bool = False,
        compile: bool = False,
        strided_inference: bool = False,
        position_bins: int = 0,
        loss_chunk: int = 0,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        if loss_chunk < 0:
            raise ValueError(f"loss_chunk={loss_chunk} must be >= 0 (0: the whole window at once)")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        # strided_inference is how a run is evaluated, not part of the trained model: kept out of the
        # checkpoint's hyperparameters, which `bytelab validate --ckpt_path` would otherwise restore
        # over the command line's choice.
        self.save_hyperparameters(ignore=["model", "strided_inference", "position_bins"])
        self.strided_inference = strided_inference
        if position_bins < 0:
            raise ValueError(f"position_bins={position_bins} must be 0 (off) or more")
        self.position_bins = position_bins
        patch = getattr(model, "patch_size", 0) if position_bins else 0
        self.positions = torch.nn.ModuleDict(
            {
                f"{split}_{kind}": PositionBitsPerByte(n)
                for split in ("val", "test")
                for kind, n in (("window", position_bins), ("patch", patch))
                if n
            }
        )
        self.model = model
        if strided_inference and not model.has_strided_inference:
            raise ValueError(
                f"strided_inference offsets passes by half a patch; {type(model).__name__} has no patches"
            )
        self.train_bpb, self.val_bpb, self.test_bpb = BitsPerByte(), BitsPerByte(), BitsPerByte()
        self.val_cost, self.test_cost = FlopsPerByte(), FlopsPerByte()
        self._model_configured = False
        self.bytes_seen = 0  # training bytes scored, all ranks
        self.flops_seen = 0  # training FLOPs spent (3x forward), all ranks
        self.budget_steps: int | None = None

    def configure_model(self) -> None:
        """Activation checkpointing, ``torch.compile`` and, under Lightning's ``ModelParallelStrategy``,
        FSDP2 sharding of the model (:func:`modules.parallel.parallelize`, torchtitan's order)."""
        if self._model_configured:  # Lightning calls this again for validate/test after fit
            return
        self._model_configured = True
        parallelize(
            self.model,
            self.device_mesh,
            activation_checkpointing=self.hparams.activation_checkpointing,
            compile=self.hparams.compile,
            bf16="bf16" in str(self.trainer.precision),
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "seq_len"):
            self.model.check_window(datamodule.seq_len, datamodule.score_len)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def score(self, batch: dict[str, Tensor], strided: bool = False) -> tuple[Tensor, Tensor]:
        """Total nats and number of bytes scored in a batch (``strided``: the model's strided inference)."""
        nats, mask = self.scored_nats(batch, strided)
        return (nats * mask).sum(), mask.sum()

    def scored_nats(self, batch: dict[str, Tensor], strided: bool = False) -> tuple[Tensor, Tensor]:
        """Nats of every position the model predicts ``[B, S]`` (the last S of each window) and the
        mask of those the batch scores (a window's last ``num_scored`` bytes; all without it)."""
        x = batch["x"]
        nats = self.position_nats(x, strided)
        scored = nats.size(1)
        num_scored = batch.get("num_scored")
        if num_scored is None:
            return nats, torch.ones_like(nats, dtype=torch.bool)
        if int(num_scored.max()) > scored:
            raise ValueError(
                f"a window asks to score {int(num_scored.max())} bytes but the model predicts only "
                f"the last {scored}: lower the data's score_len"
            )
        return nats, torch.arange(scored, device=x.device) >= scored - num_scored[:, None]

    def position_nats(self, x: Tensor, strided: bool = False) -> Tensor:
        """Cross-entropy in nats of every position the model predicts: ``[B, S]``, the last S of x
        (``strided``: from the model's strided inference, :meth:`Megabyte.evaluation_logits`)."""
        if not strided:
            return self.model.position_nats(x, self.hparams.loss_chunk)
        return nats(self.model.evaluation_logits(x, strided), x)

    def evaluation_flops(self, x: Tensor) -> float:
        """Forward FLOPs of evaluating the windows ``x[B, L]`` (both passes when strided)."""
        return float(x.size(0) * self.model.evaluation_flops(x.size(1), self.strided_inference))

    def training_nats(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Total nats and bytes scored of a training batch: every position the model predicts except
        the right padding of windows shorter than the batch (``lengths``; see
        ``ByteModel.training_logits``)."""
        x = batch["x"]
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = torch.full((x.size(0),), x.size(1), dtype=torch.long, device=x.device)
        seq_len = x.size(1)
        chunk = self.hparams.loss_chunk
        if chunk and (bool((lengths == seq_len).all()) or self.model.scored_len(seq_len) == seq_len):
            # The head and the loss a chunk at a time (a million-byte window): padding, if any, after
            # the bytes of a model that scores every position, as ByteModel.training_logits assumes.
            values = self.model.position_nats(x, chunk)
            positions = torch.arange(seq_len - values.size(1), seq_len, device=x.device).expand_as(values)
        else:
            logits, positions = self.model.training_logits(x, lengths)
            values = nats(logits, x.gather(1, positions))
        real = positions < lengths[:, None]
        return torch.where(real, values, 0.0).sum(), real.sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nats, num_bytes = self.training_nats(batch)
        self.check_finite(nats)
        self.train_bpb(nats, num_bytes)
        # Every rank's own bytes (windows at a document's start are short, so ranks differ), summed.
        seen = num_bytes.detach()
        if self.trainer.world_size > 1:
            seen = self.trainer.strategy.reduce(seen.clone(), reduce_op="sum")
        self.bytes_seen += int(seen)
        self.flops_seen += self.spent_flops(batch["x"])
        auxiliary = self.model.auxiliary_loss()
        self.log("train/bpb", self.train_bpb, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/bytes", float(self.bytes_seen), on_step=True, on_epoch=False)
        self.log("train/flops", float(self.flops_seen), on_step=True, on_epoch=False)
        self.log("train/aux_loss", torch.as_tensor(auxiliary).detach(), on_step=True, on_epoch=False)
        for name, value in self.model.training_metrics().items():
            self.log(f"train/{name}", float(value), on_step=True, on_epoch=False)
        # Per byte of the batch's windows as if none were short: a constant for every micro-batch and
        # rank, so that each real byte weighs the same in the step's gradient however the padding
        # falls (a mean over each micro-batch's own bytes would weigh the bytes of a batch with short
        # windows more, and accumulation or DDP would then differ from one process).
        positions = batch["x"].size(0) * self.model.scored_len(batch["x"].size(1))
        return nats / positions + auxiliary

    def spent_flops(self, x: Tensor) -> int:
        """Training FLOPs of this step's batch over all ranks (3x the forward as it ran). A model whose
        cost depends on the bytes spends different FLOPs on each rank: summed across them, so every
        rank holds the same ``flops_seen`` and a FLOP budget stops them at the same step."""
        local = round(3 * self.model.batch_flops(x))
        world = self.trainer.world_size
        if world == 1 or not self.model.data_dependent_flops:
            return local * world
        total = torch.tensor(float(local), dtype=torch.float64, device=x.device)
        return round(float(self.trainer.strategy.reduce(total, reduce_op="sum")))

    def check_finite(self, nats: Tensor) -> None:
        """Stop a diverged run before the update: a NaN/inf loss raises FloatingPointError naming the
        step. Every rank agrees first, so no rank is left waiting in a collective. The last good
        checkpoint stays as it was (nothing is saved on the failing step)."""
        finite = torch.isfinite(nats.detach()).float()
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if not finite:
            raise FloatingPointError(
                f"training diverged at step {self.global_step}: the loss is not finite; the last good "
                "checkpoint is kept (lower model.lr or raise model.warmup_steps, then resume)"
            )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate(batch, self.val_bpb, self.val_cost, "val")
        self.log("val/bpb", self.val_bpb, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/flops_per_byte", self.val_cost, on_step=False, on_epoch=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate(batch, self.test_bpb, self.test_cost, "test")
        self.log("test/bpb", self.test_bpb, on_step=False, on_epoch=True)
        self.log("test/flops_per_byte", self.test_cost, on_step=False, on_epoch=True)

    def evaluate(
        self, batch: dict[str, Tensor], bpb: BitsPerByte, cost: FlopsPerByte, split: str = "val"
    ) -> None:
        """Score an evaluation batch (strided if so configured), count what it cost, and, with
        ``position_bins``, where in the window and in the patch the scored bytes sit."""
        nats, mask = self.scored_nats(batch, strided=self.strided_inference)
        num_bytes = mask.sum()
        bpb.update((nats * mask).sum(), num_bytes)
        cost.update(self.evaluation_flops(batch["x"]), num_bytes)
        if self.position_bins:
            self.log_positions(batch["x"].size(1), nats, mask, split)

    def log_positions(self, length: int, nats: Tensor, mask: Tensor, split: str) -> None:
        """Count the scored bytes by window bin and by position inside the patch (``position_bins``);
        logged at the end of the evaluation (``on_validation_epoch_end``)."""
        position = torch.arange(length - nats.size(1), length, device=nats.device).expand_as(nats)
        self.positions[f"{split}_window"].update(
            nats, mask, (position // self.bin_width()).clamp(max=self.position_bins - 1)
        )
        if f"{split}_patch" in self.positions:
            self.positions[f"{split}_patch"].update(nats, mask, position % self.model.patch_size)

    def bin_width(self) -> int:
        """Positions per window bin: the data's seq_len (the model's longest window without data) in bins."""
        seq_len = getattr(getattr(self._trainer, "datamodule", None), "seq_len", self.model.max_seq_len)
        return -(-seq_len // self.position_bins)

    def position_metrics(self, split: str) -> dict[str, float]:
        """``{split}/bpb_window/<first>-<last>`` and ``{split}/bpb_patch/<j>`` of the evaluation so far
        (reduced over ranks), each group that scored at least one byte."""
        values: dict[str, float] = {}
        width = self.bin_width() if self.position_bins else 0
        for kind in ("window", "patch"):
            if f"{split}_{kind}" not in self.positions:
                continue
            metric = self.positions[f"{split}_{kind}"]
            bits, counts = metric.compute(), metric.bytes
            for i in range(metric.num_groups):
                if counts[i] > 0:
                    name = f"{i * width}-{(i + 1) * width - 1}" if kind == "window" else str(i)
                    values[f"{split}/bpb_{kind}/{name}"] = float(bits[i])
            metric.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        for name, value in self.position_metrics("val").items():
            self.log(name, value, sync_dist=False)  # already summed over ranks

    def on_test_epoch_end(self) -> None:
        for name, value in self.position_metrics("test").items():
            self.log(name, value, sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        matrices = [p for p in self.model.parameters() if p.ndim >= 2]
        others = [p for p in self.model.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": matrices, "weight_decay": hp.weight_decay}, {"params": others, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        total = self.trainer.estimated_stepping_batches
        if self.budget_steps is not None:
            total = min(total, self.budget_steps)
        total = max(int(total), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, total, hp.decay, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bytelab"] = {
            "model": self.model.config,
            "bytes_seen": self.bytes_seen,
            "flops_seen": self.flops_seen,
            "rng": rng_states(),  # dropout masks continue exactly after a resume
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("bytelab", {}).get("model")
        if saved is not None and (change := describe_change(saved, self.model.config)):
            raise ValueError(f"the checkpoint holds a different model: {change}")
        self.restore_counters(checkpoint)
        if "rng" in checkpoint.get("bytelab", {}):
            set_rng_states(checkpoint["bytelab"]["rng"])

    def restore_counters(self, checkpoint: dict[str, Any]) -> None:
        """Training bytes and FLOPs seen so far, from a checkpoint."""
        counters = checkpoint.get("bytelab", {})
        self.bytes_seen = counters.get("bytes_seen", 0)
        self.flops_seen = counters.get("flops_seen", 0)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> ByteLM:
        """Rebuild a trained ByteLM (architecture, hyperparameters, weights) from a checkpoint file or
        a sharded checkpoint directory (consolidated in memory)."""
        checkpoint = load_checkpoint(path, map_location)
        if "model" not in checkpoint.get("bytelab", {}):
            raise ValueError(f"{path} is not a bytelab checkpoint (no model config inside)")
        names = set(inspect.signature(cls).parameters) - {"model"}
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in names}
        lm = cls(build_model(checkpoint["bytelab"]["model"]), **hparams)
        lm.load_state_dict(checkpoint["state_dict"])
        lm.restore_counters(checkpoint)
        return lm


def lr_factor(step: int, warmup: int, total: int, decay: str, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then ``decay`` down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape
