"""``bytelab generate`` on tiny checkpoints: text, images, audio, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
import yaml
from torchvision.io import read_image

import datamodules
from experiments.cli import main
from modules import ByteLM, Decoder
from modules.generate import generate as library_generate

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(sys.executable).with_name("bytelab")
ENTRY = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "experiments.cli"]


def write_run(run_dir: Path, data: dict | None = None) -> Path:
    """A run directory as bytelab fit leaves it: checkpoints/last.ckpt and, optionally, config.yaml."""
    torch.manual_seed(0)
    lm = ByteLM(Decoder(d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"bytelab": {"model": lm.model.config}, "state_dict": lm.state_dict()}, ckpt)
    if data is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    return ckpt


def generate(ckpt: Path, *args: str) -> int:
    return main(["generate", f"--ckpt={ckpt}", *args])


def test_text_continues_the_prompt_deterministically(tmp_path):
    ckpt = write_run(tmp_path / "run")
    outs = [tmp_path / f"{name}.txt" for name in ("a", "b", "c")]
    for out, seed in zip(outs, (1, 1, 2), strict=True):
        assert (
            generate(ckpt, "--prompt=To be", "--bytes=20", "--top-k=40", f"--seed={seed}", f"--out={out}")
            == 0
        )
    first, again, other = (out.read_bytes() for out in outs)
    assert len(first) == 25 and first.startswith(b"To be")
    assert first == again and first != other


def test_a_page_from_a_64_byte_window_is_the_library_generate_over_the_sliding_window(tmp_path):
    """The issue's request: 25 prompt bytes and 200 new ones from a model trained on 64-byte windows."""
    ckpt = write_run(tmp_path / "run")
    out = tmp_path / "page.txt"
    prompt = "And God said unto Moses, "
    assert generate(ckpt, f"--prompt={prompt}", "--bytes=200", "--seed=4", f"--out={out}") == 0
    model = ByteLM.from_checkpoint(str(ckpt)).model.eval()
    x = torch.tensor([list(prompt.encode())])
    expected = library_generate(model, x, 200, generator=torch.Generator().manual_seed(4))
    assert out.read_bytes() == bytes(expected[0].tolist()) and len(expected[0]) == 225


def test_text_goes_to_stdout_and_prompt_files_are_raw_bytes(tmp_path, capsysbinary):
    ckpt = write_run(tmp_path / "run")
    prompt = tmp_path / "prompt.bin"
    prompt.write_bytes(bytes([0, 255, 10]))
    assert generate(ckpt, f"--prompt-file={prompt}", "--bytes=5", "--temperature=0") == 0
    out = capsysbinary.readouterr().out
    assert len(out) == 8 and out.startswith(bytes([0, 255, 10]))


@pytest.mark.skipif(not hasattr(datamodules, "ImageBytes"), reason="datamodules.ImageBytes not there yet")
def test_image_runs_write_a_png_through_to_image(tmp_path):
    data = {
        "class_path": "datamodules.ImageBytes",
        "init_args": {
            "paths": "gone/*.png",
            "resolution": 4,
            "scan": "patch",
            "patch_size": 12,
            "seq_len": 48,
        },
    }
    ckpt = write_run(tmp_path / "run", data)
    out = tmp_path / "sample.png"
    assert generate(ckpt, "--bytes=48", f"--out={out}") == 0
    assert read_image(str(out)).shape == (3, 4, 4)


@pytest.mark.skipif(not hasattr(datamodules, "AudioBytes"), reason="datamodules.AudioBytes not there yet")
def test_audio_runs_write_a_wav_through_to_wave(tmp_path):
    data = {
        "class_path": "datamodules.AudioBytes",
        "init_args": {"sample_rate": 8000, "encoding": "mulaw8", "seq_len": 32},
    }
    ckpt = write_run(tmp_path / "run", data)
    out = tmp_path / "sample.wav"
    assert generate(ckpt, "--bytes=40", f"--out={out}") == 0
    info = soundfile.info(str(out))
    assert info.frames == 40 and info.samplerate == 8000


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("missing", [], "no such checkpoint file"),
        ("text_file", [], "is not a bytelab checkpoint"),
        ("foreign", [], "is not a bytelab checkpoint"),
        ("ok", ["--bytes=0"], "the number of bytes to generate (0) must be at least 1"),
    ],
)
def test_bad_requests_are_one_line_errors(case, args, message, tmp_path, capsys):
    ckpt = {"missing": tmp_path / "none.ckpt", "text_file": tmp_path / "notes.ckpt"}.get(case)
    if case == "text_file":
        ckpt.write_text("not a checkpoint")
    elif case == "foreign":
        ckpt = tmp_path / "foreign.ckpt"
        torch.save({"state_dict": {}}, ckpt)
    elif case == "ok":
        ckpt = write_run(tmp_path / "run")
    assert generate(ckpt, *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.cli
def test_the_console_script_generates(tmp_path):
    ckpt = write_run(tmp_path / "run")
    result = subprocess.run(
        [*ENTRY, "generate", f"--ckpt={ckpt}", "--prompt=hi", "--bytes=6", "--seed=3"],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout) == 8 and result.stdout.startswith(b"hi")
