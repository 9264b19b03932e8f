"""Fault injection for tests/test_faults.py, loaded by the real CLI as a trainer callback."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules import TextBytes


class KillAtStep(L.Callback):
    """SIGKILL this process at the end of training step ``step``, before the callbacks after it (the
    checkpoints) run: a preemption with no chance to clean up or save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillOnce(KillAtStep):
    """KillAtStep for sweeps: fires once, in the first run after ``after_runs`` runs have started, and
    only while the file ``flag`` exists (it is removed first), so rerunning the sweep is not killed."""

    def __init__(self, step: int, flag: str, after_runs: int) -> None:
        super().__init__(step)
        self.flag = Path(flag)
        self.after_runs = after_runs

    def on_train_start(self, trainer: L.Trainer, *args: object) -> None:
        if self.flag.exists():
            self.flag.write_text(str(int(self.flag.read_text() or 0) + 1))

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        armed = self.flag.exists() and int(self.flag.read_text()) > self.after_runs
        if armed and trainer.global_step == self.step:
            self.flag.unlink()
            super().on_train_batch_end(trainer, *args)


class SignalAtStep(L.Callback):
    """Send the signal ``name`` (SIGTERM, SIGUSR1, SIGINT) at the end of training step ``step``: to
    this process, or with ``parent=True`` to the process that started it (a Ctrl-C to a sweep), then
    wait in that step for the parent's SIGTERM and pass it on to Lightning. With
    ``flag``, only while that file exists (it is removed first), so a rerun is not signalled."""

    def __init__(self, step: int, name: str, parent: bool = False, flag: str | None = None) -> None:
        self.step = step
        self.signum = getattr(signal, name)
        self.parent = parent
        self.flag = None if flag is None else Path(flag)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step != self.step or (self.flag is not None and not self.flag.exists()):
            return
        if self.flag is not None:
            self.flag.unlink()
        if not self.parent:
            os.kill(os.getpid(), self.signum)
            return
        # Stay in this step until the parent answers with SIGTERM, so the step the run stops at does
        # not depend on how fast the parent reacts; then hand the signal to Lightning's handler.
        # A Python handler, not sigwait: the kernel may give a process-wide signal to any thread that
        # does not block it (TensorBoard's writer thread), and sigwait in the main thread would then
        # wait forever; a Python handler always runs in the main thread.
        answered = threading.Event()
        lightnings = signal.signal(signal.SIGTERM, lambda signum, frame: answered.set())
        os.kill(os.getppid(), self.signum)
        while not answered.wait(0.05):  # the timeout lets the main thread run a handler that is due
            pass
        signal.signal(signal.SIGTERM, lightnings)
        lightnings(signal.SIGTERM, None)


class PauseAtStep(L.Callback):
    """At the end of training step ``step``, print ``PAUSED`` and wait for a line on stdin: the test
    holds the run there (no sleeping on either side) while it launches a second one."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            print("PAUSED", flush=True)
            sys.stdin.readline()


class DataFailsOnRank(TextBytes):
    """TextBytes whose training data cannot be read on one rank (``fail_rank``) only: a file that one
    node cannot see, a shard that is damaged on one disk."""

    def __init__(self, *args: Any, fail_rank: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_rank = fail_rank

    def train_dataloader(self) -> Any:
        if self.trainer.global_rank == self.fail_rank:
            raise FileNotFoundError(f"the training data of rank {self.fail_rank} is unreadable on this node")
        return super().train_dataloader()


class NanOnRank(L.Callback):
    """Poison one weight with NaN on rank ``rank`` only, before training step ``step``."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class SignalMidSweep(L.Callback):
    """A signal to the sweep (``SignalAtStep`` with ``parent=True``) at step ``step`` of the first run
    to get there once ``after`` runs of ``runs`` (a run root) have finished, and only while the file
    ``flag`` exists (the run that removes it is the one that signals), so that the kill lands in the
    middle of a study and its rerun is not signalled."""

    def __init__(self, step: int, name: str, flag: str, runs: str, after: int) -> None:
        self.signal = SignalAtStep(step, name, parent=True)
        self.flag, self.runs, self.after = Path(flag), Path(runs), after

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step != self.signal.step or not self.flag.exists():
            return
        finished = sum('"status": "finished"' in p.read_text() for p in self.runs.glob("*/run.json"))
        if finished < self.after:
            return
        try:
            self.flag.unlink()
        except FileNotFoundError:  # another run got there first
            return
        self.signal.on_train_batch_end(trainer, *args)
