"""Reading checkpoints safely: tensors and plain values only, damage reported in one line.

A checkpoint is a pickle, and a pickle can run code when it is read. Researchers share checkpoints,
so every load here is ``torch.load(weights_only=True)``, and the one pickle torch's distributed
checkpoint format reads without that guard (the ``.metadata`` of a sharded directory) is first read
by an unpickler that only accepts the classes that format stores. A file that is truncated or has a
flipped bit is caught by the CRC-32 of every member of its zip archive (``torch.load`` does not check
them) before anything uses it.
"""

from __future__ import annotations

import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)
# What the index of a torch.distributed.checkpoint directory holds besides plain values.
DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
SAFE_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a layout from its name
    ("collections", "OrderedDict"),
    *(("pathlib", name) for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")),
}
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded directory
LIGHTNING_META = "meta.pt"  # Lightning's non-tensor state beside the shards


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, or holding more than tensors and plain values.

    Its message is one line that names the file (and, for a damaged one, what to resume from)."""


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Reads a ``.metadata`` file of torch.distributed.checkpoint, refusing every global outside the
    classes that format writes (so a crafted file cannot call ``os.system`` on load)."""

    def find_class(self, module: str, name: str) -> Any:
        # A dotted name would let pickle walk from an allowed module to anything it imported
        # (``filesystem.os.system``): plain names only, and only classes of the metadata itself.
        if "." not in name and (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        if "." not in name and module in DCP_METADATA_MODULES:
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:  # its dataclasses and enums
                return found
        if module == "torch" and "." not in name:
            found = getattr(torch, name, None)
            if found is torch.Size or isinstance(found, TORCH_VALUES):
                return found
        raise pickle.UnpicklingError(f"unsupported global {module}.{name}")


def _refused(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    """The one-line error for a checkpoint whose pickle asks for more than tensors and plain values."""
    found = re.search(r"GLOBAL (\S+)|unsupported global (\S+)", str(error))
    what = f"its pickle calls for {found.group(1) or found.group(2)}" if found else first_line(error)
    return CheckpointError(
        f"checkpoint {path} holds more than tensors and plain values ({what}); refusing to load it, "
        "since reading it could run code: use only checkpoints written by bytelab or people you trust"
    )


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint (file or sharded directory) cannot be used, or None when it is intact.

    Reads the whole file once (CRC-32 of every member) and maps its tensors without copying them.
    A refused pickle raises :class:`CheckpointError` instead: that is not damage to recover from.
    """
    path = Path(path)
    if not path.exists():
        return "it does not exist"
    if path.is_dir():
        return _sharded_problem(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"it is not a bytelab checkpoint, or one cut short ({error})"
    if bad is not None:
        return f"its member {bad} fails its CRC check: corrupted"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise _refused(path, error) from None
        return f"unreadable ({first_line(error)})"
    except (RuntimeError, EOFError, ValueError) as error:
        return f"unreadable ({first_line(error)})"
    return None


def _sharded_problem(path: Path) -> str | None:
    """Why a sharded (torch.distributed.checkpoint) directory cannot be used, or None."""
    index = path / DCP_METADATA
    if not index.is_file():
        return f"it has no {DCP_METADATA} file: not a complete sharded checkpoint"
    try:
        with open(index, "rb") as f:
            metadata = _DcpMetadataUnpickler(f).load()
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error):
            raise _refused(index, error) from None
        return f"its {DCP_METADATA} is unreadable ({first_line(error)})"
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        return f"its {DCP_METADATA} is unreadable ({first_line(error)})"
    # Every shard must hold the bytes the index points into; a cut file is caught here (DCP keeps
    # no checksums, so a flipped bit inside a shard's tensor bytes is not).
    needed: dict[str, int] = {}
    for info in getattr(metadata, "storage_data", {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        shard = path / name
        size = shard.stat().st_size if shard.is_file() else -1
        if size < end:
            return f"its shard {name} has {max(size, 0)} bytes, its index needs {end}: truncated or missing"
    meta = path / LIGHTNING_META
    if meta.is_file():
        problem = checkpoint_problem(meta)
        if problem is not None:
            return f"its {LIGHTNING_META}: {problem}"
    return None


def checkpoint_step(path: Path) -> int | None:
    """The training step a checkpoint was saved at (None if unreadable)."""
    meta = path / LIGHTNING_META if path.is_dir() else path
    try:
        return int(torch.load(meta, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - any unreadable checkpoint simply has no step
        return None


def newest_intact(directory: Path, exclude: Path | None = None) -> tuple[Path, int] | None:
    """The intact checkpoint of ``directory`` with the highest training step (and that step)."""
    found = []
    for candidate in sorted(directory.glob("*.ckpt")):
        if candidate.name.startswith("."):  # a temporary file of an interrupted write
            continue
        if exclude is not None and candidate.resolve() == exclude.resolve():
            continue
        try:
            if checkpoint_problem(candidate) is None and (step := checkpoint_step(candidate)) is not None:
                found.append((step, candidate.stat().st_mtime, candidate))
        except CheckpointError:
            continue  # a refused file is no place to resume from
    if not found:
        return None
    step, _, best = max(found)
    return best, step


def verify_checkpoint(path: str | Path) -> None:
    """Raise a one-line :class:`CheckpointError` if ``path`` is damaged or refused; for a damaged
    one, the message names the newest intact checkpoint beside it to resume from instead."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is None:
        return
    alternative = newest_intact(path.parent, exclude=path)
    if alternative is None:
        advice = f"no intact checkpoint is left in {path.parent}; delete it to start the run over"
    else:
        other, step = alternative
        advice = f"resume from {other} (step {step}), the newest intact checkpoint: --ckpt_path={other}"
    raise CheckpointError(f"checkpoint {path} is damaged: {problem}; {advice}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint as one dict, from a file or from a sharded (FSDP) checkpoint directory,
    checked first (:func:`verify_checkpoint`) and read as tensors and plain values only."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    verify_checkpoint(path)
    if path.is_dir():
        return consolidate(path)
    return read_checkpoint(path, map_location)


def consolidate(directory: Path) -> dict[str, Any]:
    """A sharded (FSDP) checkpoint directory as one checkpoint dict, in memory: torch's own conversion
    (``dcp_to_torch_save``, through a temporary file beside nothing else) read back weights-only, plus
    Lightning's non-tensor state from ``meta.pt``. The whole checkpoint must fit in CPU memory."""
    with tempfile.TemporaryDirectory() as scratch:
        consolidated = Path(scratch) / "consolidated.pt"
        dcp_to_torch_save(directory, consolidated)
        checkpoint = read_checkpoint(consolidated)
    meta = directory / LIGHTNING_META
    if meta.is_file():
        checkpoint.update(read_checkpoint(meta))
    return checkpoint


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a one-line error for a refused pickle (no integrity
    check: see :func:`load_checkpoint`)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refused(Path(path), error) from None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's run to a paragraph)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_change(saved: dict[str, Any], configured: dict[str, Any]) -> str:
    """What differs between a checkpoint's model config and the configured one, in a few words; empty
    when they agree. Options the checkpoint predates (added to the model later) are not compared."""
    if saved["class_path"] != configured["class_path"]:
        return f"{saved['class_path']} in the checkpoint, {configured['class_path']} in the config"
    differences = [
        f"{name}={saved['init_args'][name]!r} in the checkpoint, {value!r} in the config"
        for name, value in configured["init_args"].items()
        if name in saved["init_args"] and saved["init_args"][name] != value
    ]
    return "; ".join(differences)


def rng_states() -> dict[str, Any]:
    """The random states of this process: Python, NumPy, torch (CPU and, if present, CUDA)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    # Tensors and plain Python values only, so `torch.load(weights_only=True)` reads the checkpoint.
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
