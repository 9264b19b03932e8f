"""``bytelab generate``: sample bytes from a trained checkpoint with cached decoding.

Any prompt and any number of bytes: once the context outgrows the model's window, each new byte is
predicted from the last bytes that fit (``modules/generate.py``).

The model is rebuilt from the checkpoint alone (``ByteLM.from_checkpoint``). The output is the
prompt followed by the new bytes: raw bytes for text, or, when the run's ``config.yaml`` (in the
run directory above ``checkpoints/``) names a datamodule with ``to_image`` or ``to_wave``, a PNG
image or a WAV file through that inverse.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules.native import require
from modules import ByteLM
from modules.generate import generate


def load_model(path: Path) -> ByteLM:
    """The trained ByteLM of a checkpoint, with one-line errors for a missing or foreign file."""
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt {path}: no such checkpoint file")
    try:
        return ByteLM.from_checkpoint(str(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, AttributeError) as error:
        raise ValueError(f"--ckpt {path} is not a bytelab checkpoint ({type(error).__name__})") from None


def run_data_config(ckpt: Path) -> dict[str, Any] | None:
    """The ``data`` section of the run's resolved config.yaml (run dir or beside the checkpoint)."""
    for candidate in (ckpt.parent.parent / "config.yaml", ckpt.parent / "config.yaml"):
        if candidate.is_file():
            return (yaml.safe_load(candidate.read_text()) or {}).get("data")
    return None


def modality_inverse(data: dict[str, Any] | None) -> Any | None:
    """The run's datamodule, rebuilt without its data paths, when it turns bytes into images or
    sound (``to_image`` / ``to_wave``); None for text and for runs without a config."""
    if not data or "class_path" not in data:
        return None
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (hasattr(cls, "to_image") or hasattr(cls, "to_wave")):
        return None
    return cls(**{**(data.get("init_args") or {}), "paths": None})  # the inverse needs no files


def write_image(datamodule: Any, sample: bytes, out: Path) -> None:
    write_png = require("torchvision.io", "images").write_png
    size = datamodule.resolution**2 * datamodule.channels
    if len(sample) != size:
        print(
            f"bytelab generate: the sample has {len(sample)} of the image's {size} bytes; the rest is black"
        )
    write_png(datamodule.to_image(sample[:size].ljust(size, b"\0")), str(out))


def write_wave(datamodule: Any, sample: bytes, out: Path) -> None:
    require("soundfile", "audio").write(str(out), datamodule.to_wave(sample).numpy(), datamodule.sample_rate)


def generate_bytes(
    *,
    ckpt: str,
    prompt: str = "",
    prompt_file: str | None = None,
    bytes: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    out: str | None = None,
) -> int:
    """Sample bytes from a trained checkpoint with cached decoding.

    Args:
        ckpt: Checkpoint written by ``bytelab fit``.
        prompt: Prompt text (UTF-8); default: no prompt.
        prompt_file: File whose raw bytes are the prompt (instead of --prompt).
        bytes: Number of bytes to generate: any number; past the model's max_seq_len each byte sees
            the last bytes that fit (the window slides).
        temperature: Sampling temperature; 0 is greedy decoding.
        top_k: Sample among the k most likely bytes.
        seed: Seed of the sampler.
        out: Output file (text default: stdout; image/audio default: sample.png / sample.wav).
    """
    if prompt and prompt_file:
        raise ValueError("give --prompt or --prompt_file, not both")
    path = Path(ckpt)
    model = load_model(path).model.eval()
    start = Path(prompt_file).read_bytes() if prompt_file else prompt.encode()
    datamodule = modality_inverse(run_data_config(path))
    x = torch.tensor(list(start), dtype=torch.long)[None]
    generator = torch.Generator().manual_seed(seed)
    y = generate(model, x, bytes, temperature, top_k, generator)
    sample = y[0].to(torch.uint8).numpy().tobytes()  # the `bytes` option hides the builtin here
    if datamodule is None:
        if out:
            Path(out).write_bytes(sample)
        else:
            sys.stdout.buffer.write(sample)
            sys.stdout.flush()
        return 0
    image = hasattr(datamodule, "to_image")
    target = Path(out or ("sample.png" if image else "sample.wav"))
    (write_image if image else write_wave)(datamodule, sample, target)
    print(f"wrote {target}")
    return 0
