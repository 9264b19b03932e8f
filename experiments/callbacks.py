"""Lightning callbacks that every bytelab run gets."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

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
