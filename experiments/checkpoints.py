"""How runs write and resume checkpoints: atomically, verified, and read as tensors and plain values.

Lightning's own writer (``_atomic_save``) builds the file in the system's temporary folder and moves
it over the old one, which is a copy (not a rename) whenever that folder is on another filesystem; a
full disk then leaves half a ``last.ckpt``. :class:`VerifiedCheckpointIO` writes beside the target,
checks the written copy (every member's CRC, readable with ``weights_only``) and only then renames it
over the previous checkpoint, which therefore stays until its successor is complete and verified.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from analysis.atomic import write_bytes_atomic
from modules.checkpoint import (
    CheckpointError,
    checkpoint_problem,
    newest_intact,
    read_checkpoint,
    verify_checkpoint,
)


def _same_device(storage: Any, location: str) -> Any:
    return storage


def _verify_written(tmp: Path) -> None:
    problem = checkpoint_problem(tmp)
    if problem is not None:  # the disk returned other bytes than were written: keep the old one
        raise OSError(f"the checkpoint just written to {tmp} does not read back: {problem}")


class VerifiedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO for single files, written atomically beside the target and verified
    before it replaces the previous version; every load is ``weights_only`` (see ``modules.checkpoint``).
    A full disk is one ``OSError`` naming the file and the space needed (``analysis.atomic``)."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(Path(path), buffer.getbuffer(), verify=_verify_written)

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is True whatever the caller asks: a checkpoint must never run code when read.
        # (Its integrity was checked when the command line was read.) Tensors stay on the device they
        # were saved from unless told otherwise, as in Lightning's own loader.
        return read_checkpoint(path, map_location if map_location is not None else _same_device)


def resolve_resume(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint ``--ckpt_path last`` names, checked before Lightning touches it.

    ``last`` becomes ``<run_dir>/checkpoints/last.ckpt`` (None when the run has no checkpoint yet,
    so a first launch with ``--ckpt_path last`` starts the run); a damaged or refused checkpoint is
    a one-line :class:`CheckpointError` naming the newest intact one, never a silent new start."""
    if ckpt_path != "last":  # an explicit path was checked when the command line was read
        return ckpt_path
    directory = run_dir / "checkpoints"
    last = directory / "last.ckpt"
    if last.exists():
        verify_checkpoint(last)
        return str(last)
    if directory.is_dir() and (other := newest_intact(directory)) is not None:
        path, step = other
        raise CheckpointError(
            f"--ckpt_path last: {last} is missing but {path} (step {step}) is intact; resume from it with "
            f"--ckpt_path={path}, or delete {directory} to start the run over"
        )
    return None
