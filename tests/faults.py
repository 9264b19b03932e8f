"""Fault injection for tests/test_faults.py, loaded by the real CLI as a trainer callback."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process at the end of training step ``step``, before the callbacks after it (the
    checkpoints) run: a preemption with no chance to clean up or save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
