"""AudioBytes: mu-law and pcm16 encodings and their inverses, mixing and resampling, the evaluation
protocol, bad input, the embedded speech and a few steps of every model through the bytelab entry point."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules import AudioBytes
from datamodules.audio import SPEECH, decode, encode

from .test_cli import fit_modality_default


def write_waves(folder: Path, seconds: list[float], rate: int = 16000, seed: int = 0) -> list[np.ndarray]:
    """16-bit mono WAVs of noisy tones; returns their int16 samples."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    waves = []
    for i, length in enumerate(seconds):
        t = np.arange(int(length * rate)) / rate
        wave = 0.3 * np.sin(2 * math.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(len(t))
        samples = np.round(wave * 32767).astype(np.int16)
        sf.write(folder / f"clip{i}.wav", samples, rate, subtype="PCM_16")
        waves.append(samples)
    return waves


def test_mulaw_round_trip_error_is_bounded() -> None:
    x = torch.linspace(-1, 1, 20001)
    codes = encode(x, "mulaw8")
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    error = (decode(codes, "mulaw8") - x).abs()
    # Half a code step in the companded domain: |dx| <= ((1 + mu)^(1 / mu) - 1) * (|x| + 1 / mu), mu = 255.
    bound = (256 ** (1 / 255) - 1) * (x.abs() + 1 / 255)
    assert (error <= bound + 1e-6).all()
    assert error[x.abs() < 0.01].max() < 3e-4  # fine steps near silence, as mu-law intends
    assert torch.equal(decode(encode(decode(codes, "mulaw8"), "mulaw8"), "mulaw8"), decode(codes, "mulaw8"))


def test_pcm16_round_trip_is_exact() -> None:
    samples = np.random.default_rng(0).integers(-32768, 32768, 5000).astype(np.int16)
    samples[:2] = [-32768, 32767]
    data = encode(torch.from_numpy(samples / 32768).float(), "pcm16")
    assert data.tobytes() == samples.astype("<i2").tobytes()  # little-endian, 2 bytes per sample
    assert torch.equal(decode(data, "pcm16"), torch.from_numpy(samples / np.float32(32768)))
    assert len(decode(data[:-1], "pcm16")) == 4999  # half a trailing sample is dropped


def test_files_become_pcm16_bytes_exactly(tmp_path: Path) -> None:
    waves = write_waves(tmp_path / "wav", [0.05, 0.06, 0.07, 0.08])
    dm = AudioBytes(str(tmp_path / "wav"), encoding="pcm16", cache_dir=str(tmp_path / "c"), seq_len=64)
    dm.setup()
    stored = [
        dm.splits[s].document(i).tobytes() for s in ("train", "val", "test") for i in range(len(dm.splits[s]))
    ]
    assert sorted(stored) == sorted(w.tobytes() for w in waves)
    wave = dm.to_wave(dm.splits["val"].document(0))
    assert wave.dtype == torch.float32 and any(np.array_equal(wave.numpy() * 32768, w) for w in waves)


def test_mix_to_mono_and_resample(tmp_path: Path) -> None:
    rate, n = 8000, 4000
    tone = 0.5 * np.sin(2 * math.pi * 440 * np.arange(n) / rate)
    (tmp_path / "a").mkdir()
    sf.write(
        tmp_path / "a" / "stereo.flac", np.stack([tone + 0.2, tone - 0.2], axis=1), rate, subtype="PCM_16"
    )
    for i in range(2):
        sf.write(tmp_path / "a" / f"mono{i}.wav", tone, rate, subtype="PCM_16")
    dm = AudioBytes(str(tmp_path / "a"), encoding="pcm16", cache_dir=str(tmp_path / "c"), seq_len=64)
    dm.setup()
    lengths = [int(dm.splits[s].lengths[0]) for s in ("train", "val", "test")]
    assert lengths == [2 * 2 * n] * 3  # 16 kHz: twice the samples, 2 bytes each
    expected = 0.5 * np.sin(2 * math.pi * 440 * np.arange(2 * n) / 16000)
    for split in ("train", "val", "test"):
        wave = dm.to_wave(dm.splits[split].document(0)).numpy()
        assert np.abs(wave - expected)[200:-200].max() < 0.01  # the stereo offsets cancel in the mix


@pytest.mark.parametrize("encoding", ["mulaw8", "pcm16"])
def test_every_evaluation_byte_is_scored_once(tmp_path: Path, encoding: str) -> None:
    write_waves(tmp_path / "wav", [0.01 * k for k in range(1, 11)])
    dm = AudioBytes(
        str(tmp_path / "wav"),
        encoding=encoding,
        cache_dir=str(tmp_path / "c"),
        seq_len=64,
        score_len=24,
        eval_batch_size=3,
        val_fraction=0.2,
        test_fraction=0.2,
    )
    dm.setup()
    for split in ("val", "test"):
        data = dm.splits[split]
        scored = [np.zeros(n, dtype=int) for n in data.lengths]
        rows = [
            (x, int(n))
            for b in dm.dataloader(split, 0, 1)
            for x, n in zip(b["x"], b["num_scored"], strict=True)
        ]
        for (x, num_scored), (doc, start, end, _) in zip(rows, dm.windows(split), strict=True):
            assert x.tolist() == data.document(doc)[start:end].tolist()
            assert encoding == "mulaw8" or start % 2 == end % 2 == 0  # whole 16-bit samples
            scored[doc][end - num_scored : end] += 1
        assert all((counts == 1).all() for counts in scored)


def test_pcm16_training_windows_hold_whole_samples(tmp_path: Path) -> None:
    write_waves(tmp_path / "wav", [0.01, 0.02, 0.03, 0.04, 0.05])
    options = {"cache_dir": str(tmp_path / "c"), "seq_len": 16, "train_samples_per_epoch": 400}
    dm = AudioBytes(str(tmp_path / "wav"), encoding="pcm16", **options)
    dm.setup()
    train = dm.splits["train"]
    base = train.data.__array_interface__["data"][0]
    windows = dm.train_dataset()
    spans = [(w.__array_interface__["data"][0] - base, len(w)) for w in map(windows.__getitem__, range(400))]
    # Windows start and end on whole samples (document offsets are even too); some are short.
    assert all(start % 2 == n % 2 == 0 for start, n in spans) and len({s for s, _ in spans}) > 200
    assert any(n < 16 for _, n in spans)
    with pytest.raises(ValueError, match="seq_len=15 is not a multiple of 2 bytes, one 16-bit sample"):
        AudioBytes(encoding="pcm16", seq_len=15)
    with pytest.raises(ValueError, match="score_len=7 is not a multiple of 2 bytes, one 16-bit sample"):
        AudioBytes(encoding="pcm16", seq_len=16, score_len=7)


@pytest.mark.faults
def test_corrupt_audio_fails_or_is_skipped(tmp_path: Path) -> None:
    write_waves(tmp_path / "wav", [0.02] * 3)
    (tmp_path / "wav" / "broken.flac").write_bytes(b"fLaC but nothing else")
    options = {"cache_dir": str(tmp_path / "cache"), "seq_len": 16}
    with pytest.raises(
        ValueError,
        match=r"broken.flac: LibsndfileError: .*flac decoder.* \(fix or remove it, or set on_error=skip\)$",
    ):
        AudioBytes(str(tmp_path / "wav"), **options).prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []
    dm = AudioBytes(str(tmp_path / "wav"), on_error="skip", **options)
    dm.setup()
    assert [s["path"] for s in dm.manifest["skipped"]] == [str(tmp_path / "wav" / "broken.flac")]
    assert sum(s["documents"] for s in dm.manifest["splits"].values()) == 3
    with pytest.raises(
        ValueError, match="holds no bytes.*1 unreadable files were skipped \\(on_error=skip\\)"
    ):
        AudioBytes(str(tmp_path / "wav" / "broken.flac"), on_error="skip", **options).prepare_data()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    (tmp_path / "wav" / "notes.txt").write_text("not audio, not read")
    with pytest.raises(ValueError, match="holds no audio files"):
        AudioBytes(str(tmp_path / "wav" / "*.txt"))


def test_embedded_speech(tmp_path: Path) -> None:
    assert SPEECH.stat().st_size < 500_000
    dm = AudioBytes(cache_dir=str(tmp_path), seq_len=512)
    dm.setup()
    splits = dm.manifest["splits"]
    assert [splits[s]["documents"] for s in ("train", "val", "test")] == [3, 1, 1]
    assert sum(s["bytes"] for s in splits.values()) == 395_680  # 24.73 s at 16 kHz, one byte per sample
    assert next(iter(dm.train_dataloader()))["x"].shape == (8, 512)


@pytest.mark.cli
@pytest.mark.parametrize(
    "model",
    [
        "megabyte_audio_tiny",
        "decoder_tiny",
        "perceiver_ar_tiny",
        "hourglass_tiny",
        "hnet_tiny",
        "spacebyte_audio_tiny",
    ],
)
def test_fit_each_model_on_the_audio_default(model: str, tmp_path: Path) -> None:
    fit_modality_default("audio_default", model, tmp_path)
