"""Lightning callbacks that every bytelab run gets."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_summary.model_summary import NOT_APPLICABLE

from .perf import peak_memory_bytes, spec_peak_flops, synchronize


class PrintMetrics(L.Callback):
    """Print one line per validation (step, bytes and FLOPs seen, train and val bits per byte), so a
    terminal or a log file shows the curve without opening TensorBoard."""

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"step {trainer.global_step:>6}"]
        for name in ("train/bpb", "val/bpb"):
            if name in metrics:
                parts.append(f"{name} {float(metrics[name]):.4f}")
        for name in ("bytes_seen", "flops_seen"):
            if hasattr(pl_module, name):
                parts.append(f"{name.replace('_seen', '')} {getattr(pl_module, name):.3g}")
        print("  ".join(parts), flush=True)


class FlopsModelSummary(RichModelSummary):
    """Lightning's model summary, its "Total FLOPs" the model's analytic forward FLOPs of one window.

    Lightning counts FLOPs by running ``example_input_array`` under ``FlopCounterMode``; ByteLM has
    none (a window's length belongs to the data), so the default summary printed 0. Here the total is
    ``model.forward_flops(seq_len)`` of the data's windows (DESIGN's convention; training costs 3x
    it) and the per-layer column says ``n/a`` instead of zeros.
    """

    forward_flops = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        self.forward_flops = int(
            model.forward_flops(getattr(trainer.datamodule, "seq_len", model.max_seq_len))
        )
        super().on_fit_start(trainer, pl_module)

    def summarize(  # type: ignore[override]  # Lightning's is static; this one needs the count
        self, summary_data: list[tuple[str, list[str]]], *args: Any, total_flops: int, **kwargs: Any
    ) -> None:
        summary_data = [
            (name, [NOT_APPLICABLE] * len(values) if name == "FLOPs" else values)
            for name, values in summary_data
        ]
        super().summarize(summary_data, *args, total_flops=self.forward_flops, **kwargs)


class PerfMonitor(L.Callback):
    """Log training speed every ``log_every_n_steps`` steps: ``perf/bytes_per_s`` and
    ``perf/flops_per_s`` (bytes scored and training FLOPs, all ranks, from ByteLM's counters),
    ``perf/peak_mem_bytes`` (this rank), and on a GPU ``perf/mfu`` against the card's spec-sheet peak
    (Lightning's ``get_available_flops``). Time spent in validation is left out."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        precision = str(trainer.precision)
        dtype = (
            torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
        )
        self.peak_flops = spec_peak_flops(device, dtype)
        self._restart(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart(pl_module)

    def _restart(self, pl_module: L.LightningModule) -> None:
        self.start = (time.perf_counter(), pl_module.bytes_seen, pl_module.flops_seen)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step % trainer.log_every_n_steps:
            return
        device = trainer.strategy.root_device
        synchronize(device)
        start, bytes_seen, flops_seen = self.start
        seconds = time.perf_counter() - start
        metrics = {
            "perf/bytes_per_s": (pl_module.bytes_seen - bytes_seen) / seconds,
            "perf/flops_per_s": (pl_module.flops_seen - flops_seen) / seconds,
        }
        if self.peak_flops:
            metrics["perf/mfu"] = metrics["perf/flops_per_s"] / (self.peak_flops * trainer.world_size)
        peak_mem = peak_memory_bytes(device)
        if peak_mem is not None:
            metrics["perf/peak_mem_bytes"] = float(peak_mem)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._restart(pl_module)


# The exit status of a run stopped by a termination signal after saving its state: EX_TEMPFAIL of
# sysexits.h ("temporary failure, retry"), so a job script can tell a preemption to requeue from a
# failure (1 or 2) and from a finished run (0).
EXIT_PREEMPTED = 75


class Preemption(L.Callback):
    """Save a resumable checkpoint when the run is told to stop (SIGTERM: a preemption, a time limit).

    Lightning's signal connector catches SIGTERM and ends the training step in progress, then raises
    ``SIGTERMException`` at the step boundary; this callback writes ``path`` there (every rank takes
    part, as sharded checkpoints need), so ``--ckpt_path last`` continues with the same state as an
    uninterrupted run. On SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` also handles the
    requeue signal (``#SBATCH --signal=USR1@90``): it saves ``hpc_ckpt_N.ckpt`` and runs ``scontrol
    requeue``, whose SIGTERM brings the run here; that snapshot is taken wherever the signal landed,
    in the middle of a step, so it is deleted once this step-boundary checkpoint is written.

    Args:
        path: Where to save (the run's ``checkpoints/last.ckpt``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        if trainer.is_global_zero:
            for snapshot in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                snapshot.unlink(missing_ok=True)
            print(
                f"bytelab: stopped by a termination signal at step {trainer.global_step}: saved {self.path}; "
                f"resume with --ckpt_path last (exit status {EXIT_PREEMPTED})",
                file=sys.stderr,
                flush=True,
            )
