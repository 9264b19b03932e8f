"""``bytelab generate``: sample bytes from a trained checkpoint with cached decoding.

The model is rebuilt from the checkpoint alone (``ByteLM.from_checkpoint``). The output is the
prompt followed by the new bytes: raw bytes for text, or, when the run's ``config.yaml`` (in the
run directory above ``checkpoints/``) names a datamodule with ``to_image`` or ``to_wave``, a PNG
image or a WAV file through that inverse.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from modules import ByteLM
from modules.generate import check_generation_length, generate


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bytelab generate", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by bytelab fit")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="prompt text (UTF-8); default: no prompt")
    prompt.add_argument("--prompt-file", help="file whose raw bytes are the prompt")
    parser.add_argument("--bytes", type=int, default=256, help="number of bytes to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy decoding")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely bytes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument(
        "--out", help="output file (text default: stdout; image/audio default: sample.png / sample.wav)"
    )
    return parser.parse_args(argv)


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
    from torchvision.io import write_png

    size = datamodule.resolution**2 * datamodule.channels
    if len(sample) != size:
        print(
            f"bytelab generate: the sample has {len(sample)} of the image's {size} bytes; the rest is black"
        )
    write_png(datamodule.to_image(sample[:size].ljust(size, b"\0")), str(out))


def write_wave(datamodule: Any, sample: bytes, out: Path) -> None:
    import soundfile

    soundfile.write(str(out), datamodule.to_wave(sample).numpy(), datamodule.sample_rate)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ckpt = Path(args.ckpt)
    model = load_model(ckpt).model.eval()
    prompt = Path(args.prompt_file).read_bytes() if args.prompt_file else args.prompt.encode()
    check_generation_length(model, len(prompt), args.bytes)
    datamodule = modality_inverse(run_data_config(ckpt))
    x = torch.tensor(list(prompt), dtype=torch.long)[None]
    generator = torch.Generator().manual_seed(args.seed)
    y = generate(model, x, args.bytes, args.temperature, args.top_k, generator)
    sample = bytes(y[0].tolist())
    if datamodule is None:
        if args.out:
            Path(args.out).write_bytes(sample)
        else:
            sys.stdout.buffer.write(sample)
            sys.stdout.flush()
        return 0
    image = hasattr(datamodule, "to_image")
    out = Path(args.out or ("sample.png" if image else "sample.wav"))
    (write_image if image else write_wave)(datamodule, sample, out)
    print(f"wrote {out}")
    return 0
