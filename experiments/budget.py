"""Compute budgets: when a run stops, from the training FLOPs it actually spent (or its bytes).

SpaceByte's protocol (reference/PAPERS.md): every run of a study gets the same training-FLOP budget
C and trains for ``floor(C / FLOPs per step)`` steps, so it spends at most C and less than one step
under it. FLOPs per step = 3 x forward FLOPs of one window x batch size x processes x gradient
accumulation (DESIGN's convention); ByteLM counts the same quantity as it trains (``train/flops``).

``train/flops`` is the budget's truth: a model whose cost depends on the bytes (H-Net's chunks) spends
more or less than ``forward_flops`` expects, so the run stops at the first step after which what is
left of C no longer covers one more step at the expected cost. For a model whose cost the shape alone
fixes, that is exactly step ``floor(C / FLOPs per step)``; the learning-rate schedule decays over
those expected steps either way.
"""

from __future__ import annotations

import math

import lightning as L

# budget / per_step can land a hair under an integer in floating point (3e12 / 1e12): that is still 3.
_EPS = 1e-9


def training_flops_per_step(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """Training FLOPs of one optimiser step over all processes."""
    datamodule = trainer.datamodule
    window = 3 * pl_module.model.forward_flops(datamodule.seq_len)
    return window * datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches


def training_bytes_per_step(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """Training bytes scored in one optimiser step over all processes."""
    datamodule = trainer.datamodule
    window = pl_module.model.scored_len(datamodule.seq_len)
    return window * datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches


def accumulation(global_batch: int, batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps that make ``global_batch`` windows per optimiser step from
    ``batch_size`` windows per process and ``world_size`` processes, or a one-line ValueError."""
    per_pass = batch_size * world_size
    if global_batch < 1 or global_batch % per_pass:
        raise ValueError(
            f"global_batch={global_batch} is not a whole number of passes of data.init_args.batch_size="
            f"{batch_size} x {world_size} processes ({per_pass} windows): choose a batch_size or process "
            "count whose product divides it"
        )
    return global_batch // per_pass


def steps_for_budget(budget: float, per_step: float, what: str = "flops") -> int:
    """The most whole steps that fit in ``budget``: spends at most it, and less than one step under."""
    if budget <= 0:
        raise ValueError(f"budget {what}={budget:g} must be positive")
    steps = math.floor(budget / per_step + _EPS)
    if steps < 1:
        raise ValueError(
            f"budget {what}={budget:.3g} is less than one training step ({per_step:.3g} {what} per step): "
            "raise the budget or shrink the model or batch"
        )
    return steps


class ComputeBudget(L.Callback):
    """Train for a FLOP budget (compute-controlled) and/or a byte budget (data-controlled).

    At ``fit`` setup it derives the run's expected steps from the model's training FLOPs (and bytes)
    per step, which depend on the world size and so are known only once the Trainer exists; with both
    budgets the run stops at whichever runs out first. Without a budget it does nothing. It acts
    through public hooks and attributes only:

    - after each step it compares the FLOPs actually spent (``ByteLM.flops_seen``, summed over the
      ranks, so every rank decides alike) with the budget (:meth:`spent`); the last step sets
      ``trainer.should_stop``, so Lightning validates once more before it ends the run: the final
      ``val/bpb`` is measured at the budget;
    - ByteLM's learning-rate schedule decays over the expected steps (``ByteLM.budget_steps``);
    - the budget replaces the Trainer's step limit, which must therefore not end the run first:
      ``bytelab fit`` builds its Trainer with :meth:`trainer_arguments` (no step limit); a Trainer
      built by hand needs ``max_steps=-1`` or at least the budget's steps.

    Args:
        flops: Training FLOP budget C (3 x forward, all processes).
        bytes: Training byte budget (bytes scored, all processes).
        validations: Evenly spaced validations over the run, the last at its end; None keeps the
            trainer's ``val_check_interval``.
    """

    def __init__(
        self, flops: float | None = None, bytes: float | None = None, validations: int | None = None
    ):
        if validations is not None and validations < 1:
            raise ValueError(f"budget validations={validations} must be at least 1")
        self.flops = flops
        self.bytes = bytes
        self.validations = validations
        self.max_steps: int | None = None  # expected steps (the schedule's): the fewer of the two below
        self.flops_per_step: int | None = None  # expected training FLOPs of one step, all processes
        self.byte_steps: int | None = None  # the steps the byte budget allows
        self._checked_step = -1

    @property
    def active(self) -> bool:
        return self.flops is not None or self.bytes is not None

    def trainer_arguments(self, max_epochs: int | None) -> dict[str, int]:
        """Trainer arguments under which the budget alone ends training (given the configured
        ``max_epochs``): no step limit, and no epoch limit unless one is configured (Lightning's
        default for a Trainer without ``max_steps`` would be 1000 epochs)."""
        if not self.active:
            return {}
        limits = {"max_steps": -1}
        if max_epochs is None:
            limits["max_epochs"] = -1
        return limits

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.active:
            return
        limits = []
        if self.flops is not None:
            self.flops_per_step = training_flops_per_step(trainer, pl_module)
            limits.append(steps_for_budget(self.flops, self.flops_per_step, "flops"))
        if self.bytes is not None:
            per_step = training_bytes_per_step(trainer, pl_module)
            self.byte_steps = steps_for_budget(self.bytes, per_step, "bytes")
            limits.append(self.byte_steps)
        self.max_steps = min(limits)
        if trainer.max_steps != -1 and trainer.max_steps < self.max_steps:
            raise ValueError(
                f"trainer.max_steps={trainer.max_steps} would end the run before its budget of "
                f"{self.max_steps} steps: leave max_steps out (-1), the budget sets the steps"
            )
        pl_module.budget_steps = self.max_steps  # read when the optimiser and schedule are configured
        if self.validations is not None:
            # Read by Lightning when it sets up the training data, after this hook.
            trainer.val_check_interval = math.ceil(self.max_steps / self.validations)

    def describe(self) -> dict[str, float | int | None]:
        """The budget as the run manifest records it."""
        return {"flops": self.flops, "bytes": self.bytes, "max_steps": self.max_steps}

    def spent(self, step: int, flops_seen: int) -> bool:
        """Whether a run that has taken ``step`` optimiser steps and spent ``flops_seen`` training FLOPs
        (``ByteLM.flops_seen``, the same on every rank) has used its budget: the bytes of another step
        would exceed the byte budget, or another step at the expected cost would exceed the FLOPs."""
        if self.byte_steps is not None and step >= self.byte_steps:
            return True
        if self.flops is None:
            return False
        return math.floor((self.flops - flops_seen) / self.flops_per_step + _EPS) < 1

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Resuming a run that has spent its budget trains no further step: stopping before the loop
        # starts skips training altogether.
        flops_seen = checkpoint.get("bytelab", {}).get("flops_seen", 0)
        if self.max_steps is not None and self.spent(checkpoint.get("global_step", 0), flops_seen):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        # Only once an optimiser step is complete (not between accumulated micro-batches). Stopping
        # through should_stop makes Lightning validate once more before it ends the run.
        step = trainer.global_step
        if self.max_steps is None or step == self._checked_step:
            return
        self._checked_step = step
        if self.spent(step, pl_module.flops_seen):
            trainer.should_stop = True
