"""``run.json``: what a run is, where it ran, what it cost and what it scored (DESIGN, "Runs").

The manifest is written when a run starts, rewritten after every validation and at the end, always
atomically (a temporary file renamed over the old one), so a reader never sees half a file. Its
``status`` is ``running`` until the run ends, then ``finished``, ``failed``, or ``interrupted`` (a
termination signal or Ctrl-C stopped it; resuming continues it); sweeps read it to skip
finished work and ``bytelab analyze`` reads it to build tables. Its ``reference`` holds the
reference rows of the run's evaluation splits (``datamodules/reference.py``), which those tables carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from analysis.atomic import write_json_atomic
from analysis.rundir import FORMAT_VERSION, MANIFEST
from analysis.rundir import read_manifest as read_manifest  # re-exported: sweeps and studies use it
from datamodules import ByteDataModule
from datamodules.reference import reference

from .budget import ComputeBudget, training_flops_per_step

SWEEP_INFO = "sweep.json"  # written by `bytelab sweep` before it launches a run; copied into run.json
PACKAGES = ("torch", "lightning", "torchmetrics", "numpy", "pandas", "jsonargparse", "bytelab")
REPO = Path(__file__).resolve().parents[1]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameters; for MEGABYTE also its global and local model.

    ``global``/``local`` count the two transformer stacks only (non-embedding, as in the paper's
    "758M + 262M"); embeddings, pads, the global-to-local projection and the head make up the rest.
    """
    counts = {"total": model.num_params(non_embedding=False), "non_embedding": model.num_params()}
    for name in ("global_model", "local_model"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            counts[name.removesuffix("_model")] = sum(p.numel() for p in part.parameters())
    return counts


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the source tree bytelab runs from (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages a result depends on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def hardware(trainer: L.Trainer) -> dict[str, Any]:
    """Host, CPU, accelerator and process layout of the run."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "accelerator": type(trainer.accelerator).__name__,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
    return info


def dataset_info(datamodule: Any) -> dict[str, Any]:
    """What the run was trained and evaluated on: class, a readable name, a content id, the windows.

    ``id`` hashes the cache manifest (sources' SHA-256, split options), so two runs share it exactly
    when they saw the same bytes split the same way; ``name`` is for tables (one source: its stem,
    several: their common folder).
    """
    manifest = getattr(datamodule, "manifest", None) or {}
    sources = [s["path"] for s in manifest.get("sources", [])]
    if len(sources) == 1:
        name = Path(sources[0]).name.split(".")[0]
    elif sources:
        name = Path(os.path.commonpath(sources)).name
    else:
        name = type(datamodule).__name__
    digest = None
    if manifest:
        key = json.dumps(
            {"sources": manifest.get("sources"), "options": manifest.get("options")}, sort_keys=True
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return {
        "class": type(datamodule).__name__,
        "name": name,
        "id": digest,
        "seq_len": getattr(datamodule, "seq_len", None),
        "score_len": getattr(datamodule, "score_len", None),
        "batch_size": getattr(datamodule, "batch_size", None),
        "max_eval_bytes": getattr(datamodule, "max_eval_bytes", None),
        "splits": manifest.get("splits"),
        # protocol.training_coverage: the share of training bytes some window can reach, and of
        # windows shorter than seq_len (their padding is neither trained on nor counted).
        "training": datamodule.training_coverage() if hasattr(datamodule, "training_coverage") else None,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunManifest(L.Callback):
    """Keeps ``<run_dir>/run.json`` up to date (see the module docstring for when it is written).

    A resumed run (``--ckpt_path last``) or a later ``validate``/``test`` in the same directory
    updates the existing manifest: its start time, earlier wall time and metrics are kept.

    Args:
        run_dir: The run directory.
        config: The run's resolved configuration (recorded as is).
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.data: dict[str, Any] = {}
        self.session_start = time.monotonic()
        self.earlier_wall_time = 0.0

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if previous.get("format_version") != FORMAT_VERSION:
            previous = {}
        self.earlier_wall_time = float(previous.get("wall_time_s", 0.0))
        self.session_start = time.monotonic()
        self.data = previous
        self.data.update(
            format_version=FORMAT_VERSION,
            status="running",
            stage=stage,
            run_dir=str(self.run_dir.resolve()),
            process_argv=sys.argv,  # of the process: `bytelab compare` for runs it starts in-process
            started_at=previous.get("started_at", _now()),
            config=self.config,
            git=git_state(),
            versions=versions(),
            hardware=hardware(trainer),
        )
        sweep = self.run_dir / SWEEP_INFO
        if sweep.is_file():
            self.data["sweep"] = json.loads(sweep.read_text())
        self.data.setdefault("metrics", {"best": {}, "final": {}})
        self.data.setdefault("history", [])

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._describe_model(trainer, pl_module)
        self._write(trainer, pl_module)

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":  # validate/test subcommands: describe the model once
            self._describe_model(trainer, pl_module)

    @rank_zero_only
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._describe_model(trainer, pl_module)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._metrics(trainer)
        if trainer.state.fn == "fit":
            point = {"step": trainer.global_step, **self._progress(trainer, pl_module), **metrics}
            history = [h for h in self.data["history"] if h["step"] < trainer.global_step]
            self.data["history"] = [*history, point]
        self._record(metrics, trainer.global_step)
        self._write(trainer, pl_module)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(self._metrics(trainer), trainer.global_step)
        self._write(trainer, pl_module)

    @rank_zero_only
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.data.get("status") == "running":  # on_exception has already marked a failure
            self.data.update(status="finished", finished_at=_now())
            self._write(trainer, pl_module)

    @rank_zero_only
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            # Stopped from outside (preemption, Ctrl-C), not broken: a sweep resumes it.
            how = (
                "a termination signal" if isinstance(exception, SIGTERMException) else "an interrupt (Ctrl-C)"
            )
            self.data["status"] = "interrupted"
            self.data["error"] = f"stopped by {how} at step {trainer.global_step}"
        else:
            self.data["status"] = "failed"
            self.data["error"] = f"{type(exception).__name__}: {exception}"
        self._write(trainer, pl_module)

    def _describe_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        datamodule = trainer.datamodule
        seq_len = getattr(datamodule, "seq_len", model.max_seq_len)
        forward = model.flops_per_byte(seq_len)
        self.data["model"] = {
            "class": type(model).__name__,
            "params": parameter_counts(model),
            "flops_per_byte": {"inference": forward, "training": 3 * forward, "seq_len": seq_len},
        }
        if datamodule is not None:
            self.data["data"] = dataset_info(datamodule)
            if isinstance(datamodule, ByteDataModule):
                # What zlib, bz2, xz and an order-0 model get on the same scored bytes (cached once
                # per dataset and evaluation prefix): the reference rows of every table of this run.
                self.data["reference"] = reference(datamodule)
            self.data["model"]["flops_per_step"] = training_flops_per_step(trainer, pl_module)
        if trainer.state.fn == "fit":
            budgets = [c for c in trainer.callbacks if isinstance(c, ComputeBudget) and c.active]
            self.data["budget"] = budgets[0].describe() if budgets else None
            # A budget, not the Trainer's max_steps (then -1), sets the steps of a budgeted run.
            self.data["max_steps"] = budgets[0].max_steps if budgets else trainer.max_steps

    def _metrics(self, trainer: L.Trainer) -> dict[str, float]:
        names = ("train/bpb", "val/bpb", "test/bpb", "val/flops_per_byte", "test/flops_per_byte")
        by_position = ("val/bpb_window/", "val/bpb_patch/", "test/bpb_window/", "test/bpb_patch/")
        return {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k in names or k.startswith(by_position)
        }

    def _progress(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | None]:
        """Bytes and FLOPs spent, and the FLOPs ``forward_flops`` expected of the steps taken (they
        differ for a model whose cost depends on the bytes, such as H-Net's chunks)."""
        per_step = self.data.get("model", {}).get("flops_per_step")
        expected = None if per_step is None else trainer.global_step * per_step
        return {
            "bytes_seen": int(pl_module.bytes_seen),
            "flops_seen": int(pl_module.flops_seen),
            "flops_expected": expected,
        }

    def _record(self, metrics: dict[str, float], step: int) -> None:
        final, best = self.data["metrics"]["final"], self.data["metrics"]["best"]
        for name, value in metrics.items():
            final[name] = value
            if name in ("val/bpb", "test/bpb") and (name not in best or value <= best[name]["value"]):
                best[name] = {"value": value, "step": step}

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.data.update(
            updated_at=_now(),
            wall_time_s=round(self.earlier_wall_time + time.monotonic() - self.session_start, 3),
            step=trainer.global_step,
            **self._progress(trainer, pl_module),
        )
        write_json_atomic(self.path, self.data)
