"""Torch views of a cached split: the datasets and sampler that serve the windows of ``protocol``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .protocol import train_sample_numbers, training_ends, training_window


class ByteSplit:
    """One split of a cache: its documents' bytes end to end (a read-only memmap) and their offsets.

    It pickles as its directory, so dataloader workers reopen the memmap instead of copying the bytes.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.data = np.memmap(directory / f"{name}.bin", dtype=np.uint8, mode="r")
        self.offsets: np.ndarray = np.load(directory / f"{name}.docs.npy")

    def __reduce__(self) -> tuple[type[ByteSplit], tuple[Path, str]]:
        return ByteSplit, (self.directory, self.name)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Bytes per document."""
        return np.diff(self.offsets)

    def document(self, index: int) -> np.ndarray:
        """The bytes of document `index`."""
        return self.data[self.offsets[index] : self.offsets[index + 1]]


class TrainWindows(Dataset):
    """Training sample number i: up to seq_len bytes of one document, drawn from (seed, i) only (see
    ``protocol.training_window``: the window ends on a uniform byte of the split, every `align`-th)."""

    def __init__(self, split: ByteSplit, seq_len: int, seed: int, align: int = 1) -> None:
        self.split = split
        self.seq_len = seq_len
        self.seed = seed
        self.align = align
        self.ends = training_ends(split.lengths, align)

    def __getitem__(self, i: int) -> np.ndarray:
        doc, start, end = training_window(self.ends, self.seed, i, self.seq_len, self.align)
        base = self.split.offsets[doc]
        return self.split.data[base + start : base + end]


class TrainSampler(Sampler[int]):
    """The sample numbers one process trains on in the current epoch (see
    ``protocol.train_sample_numbers``).

    The stream is counted in samples, not in Lightning's epochs: a run resumed from a checkpoint goes
    on with the sample after the last one trained, whatever epoch number Lightning resumes at (it
    starts a new epoch after a run that ended at ``max_steps`` mid-epoch, which would otherwise jump
    the stream ahead by a whole epoch of samples)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0
        self.offset = 0  # epochs of the stream before Lightning's epoch 0 (negative after a resume)
        self.resume: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every training epoch."""
        self.epoch = epoch

    def resume_at(self, samples_done: int) -> None:
        """Start the next pass ``samples_done`` samples into the stream: after a resume the stream goes
        on with the first sample that was not trained on, so no window is repeated or skipped."""
        self.skip = samples_done % self.length
        self.resume = samples_done // self.length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        if self.resume is not None:  # this epoch continues the stream's epoch `resume`
            self.offset, self.resume = self.resume - self.epoch, None
        return train_sample_numbers(self.epoch + self.offset, self.length, self.rank, self.world_size, skip)


class EvaluationWindows(Dataset):
    """The evaluation windows of a split: item k is (window bytes, number of scored bytes)."""

    def __init__(self, split: ByteSplit, windows: np.ndarray) -> None:
        self.split = split
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int]:
        """Window ``key``, or for a key ``(k, n)`` window k scoring n bytes (n = 0: a padding batch)."""
        k, scored = key if isinstance(key, tuple) else (key, None)
        doc, start, end, num_scored = self.windows[k]
        base = self.split.offsets[doc]
        return self.split.data[base + start : base + end], int(num_scored if scored is None else scored)


def collate_train(items: list[np.ndarray], seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """Windows into {"x": LongTensor[B, seq_len], "lengths": LongTensor[B]}: a window shorter than
    seq_len (it ends less than seq_len bytes into its document) is padded on the right with zeros,
    which no model's earlier predictions can see and the loss leaves out (``ByteLM``). Every batch
    has the same shape (None: the longest window's length)."""
    lengths = [len(item) for item in items]
    x = np.zeros((len(items), seq_len or max(lengths)), dtype=np.int64)
    for row, item in zip(x, items, strict=True):
        row[: len(item)] = item
    return {"x": torch.from_numpy(x), "lengths": torch.tensor(lengths, dtype=torch.long)}


def collate_evaluation(items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
    """Stack equal-length windows into {"x": LongTensor[B, L], "num_scored": LongTensor[B]}."""
    windows, num_scored = zip(*items, strict=True)
    return {
        "x": torch.from_numpy(np.stack(windows).astype(np.int64)),
        "num_scored": torch.tensor(num_scored, dtype=torch.long),
    }
