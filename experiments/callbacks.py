"""Lightning callbacks that every bytelab run gets."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


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
