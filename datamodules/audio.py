"""Audio as bytes: every file is one document, mono at one sample rate, 8-bit mu-law or 16-bit PCM."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from .bytes import ByteDataModule
from .files import encoded_files, files_with_suffix
from .native import require

SPEECH = Path(__file__).parent / "data" / "speech.tar"
# Formats libsndfile reads (soundfile's backend); torchaudio.load would need FFmpeg.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".au", ".w64", ".caf", ".mp3")
BYTES_PER_SAMPLE = {"mulaw8": 1, "pcm16": 2}


def torchaudio_functional() -> ModuleType:
    """``torchaudio.functional`` (mu-law, resampling), imported on first use: text and images never
    load torchaudio's native library."""
    return require("torchaudio.functional", "audio")


def soundfile() -> ModuleType:
    """``soundfile`` (libsndfile), imported on first use."""
    return require("soundfile", "audio")


def encode(samples: torch.Tensor, encoding: str) -> np.ndarray:
    """Float samples in [-1, 1] as uint8 bytes: 8-bit mu-law codes, or 16-bit little-endian PCM
    (round(x * 32768), the convention of soundfile and WAV files)."""
    samples = samples.clamp(-1.0, 1.0)
    if encoding == "mulaw8":
        return torchaudio_functional().mu_law_encoding(samples, 256).to(torch.uint8).numpy()
    pcm = torch.round(samples.double() * 32768).clamp(-32768, 32767).numpy().astype("<i2")
    return pcm.view(np.uint8)


def decode(data: np.ndarray, encoding: str) -> torch.Tensor:
    """The float32 samples in [-1, 1] of `encode`'s bytes; a trailing odd byte (half a pcm16 sample)
    is dropped."""
    if encoding == "mulaw8":
        return torchaudio_functional().mu_law_decoding(torch.from_numpy(data.astype(np.int64)), 256).float()
    whole = data[: len(data) // 2 * 2].astype(np.uint8)
    return torch.from_numpy(whole.view("<i2").astype(np.float32) / 32768)


class AudioBytes(ByteDataModule):
    """Audio files as byte documents: each file, mixed to mono and resampled to sample_rate, is one
    document of 8-bit mu-law codes (one byte per sample) or of 16-bit little-endian PCM (two bytes per
    sample, the MEGABYTE paper's raw-audio setup).

    Files are read with soundfile (WAV, FLAC, OGG/Vorbis/Opus, AIFF, MP3, ...), channels averaged, and
    resampled with ``torchaudio.functional.resample`` when their rate differs. A 16-bit mono file at
    sample_rate gives, as pcm16, exactly its own sample bytes. Without paths the corpus is 5 public-domain
    LibriVox utterances (24.7 s of read English at 16 kHz, datamodules/data/speech.tar, see
    DATA_LICENSES.md). ``to_wave`` turns bytes (a document, a generated sample) back into samples.
    """

    def __init__(
        self,
        paths: str | list[str] | None = None,
        sample_rate: int = 16000,
        encoding: Literal["mulaw8", "pcm16"] = "mulaw8",
        on_error: Literal["fail", "skip"] = "fail",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            paths: audio files, folders (read recursively) or glob patterns; None reads the embedded speech.
            sample_rate: samples per second of every document; other rates are resampled.
            encoding: "mulaw8" (8-bit mu-law, 1 byte per sample) or "pcm16" (16-bit little-endian, 2 bytes
                per sample; seq_len and score_len must then be even, so windows hold whole samples).
            on_error: an audio file that cannot be decoded stops the build ("fail") or is reported by path,
                skipped and counted ("skip").
            **kwargs: the options of ByteDataModule.
        """
        torchaudio_functional(), soundfile()  # Stop here, in one line, when either cannot load
        super().__init__(**kwargs)
        if encoding not in BYTES_PER_SAMPLE:
            raise ValueError(f"encoding={encoding!r} must be 'mulaw8' or 'pcm16'")
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error={on_error!r} must be 'fail' or 'skip'")
        if sample_rate < 1:
            raise ValueError(f"sample_rate={sample_rate} must be at least 1")
        self.align = BYTES_PER_SAMPLE[encoding]
        self.unit = "16-bit sample" if encoding == "pcm16" else "byte"
        self.check_alignment()
        self.paths = paths
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.on_error = on_error
        self.files = None if paths is None else self._find(paths)

    @staticmethod
    def _find(paths: str | list[str]) -> list[Path]:
        files = files_with_suffix(paths, AUDIO_SUFFIXES)
        if not files:
            raise ValueError(f"paths: {paths!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return files

    def cache_options(self) -> dict[str, Any]:
        """Every option that changes the cached bytes."""
        return {"sample_rate": self.sample_rate, "encoding": self.encoding, "on_error": self.on_error}

    def sources(self) -> list[Path]:
        """The files read, or the embedded archive."""
        return [SPEECH] if self.files is None else self.files

    def documents(self) -> Iterator[tuple[str, bytes]]:
        """Every readable file as (name, encoded samples)."""
        sf = soundfile()
        for name, origin, raw in encoded_files(self.files, SPEECH):
            try:
                samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
            except sf.LibsndfileError as error:
                self.reject(origin, f"LibsndfileError: {error.error_string}")
                continue
            except (RuntimeError, TypeError, ValueError, EOFError) as error:
                self.reject(origin, f"{type(error).__name__}: {error}")
                continue
            yield name, encode(self._mono(samples, rate), self.encoding).tobytes()

    def _mono(self, samples: np.ndarray, rate: int) -> torch.Tensor:
        mono = torch.from_numpy(samples).mean(dim=1)
        if rate != self.sample_rate:
            mono = torchaudio_functional().resample(mono, orig_freq=rate, new_freq=self.sample_rate)
        return mono

    def to_wave(self, data: bytes | np.ndarray | torch.Tensor) -> torch.Tensor:
        """The float32 samples in [-1, 1] (mono, at sample_rate) of encoded bytes, e.g. a document or a
        generated sample; ``soundfile.write(path, wave.numpy(), sample_rate)`` saves them."""
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        codes = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data)
        return decode(codes, self.encoding)
