"""The data protocol: which bytes every model is trained and scored on, the same for every model.

Pure functions of document lengths, seeds and sample numbers (no files, no torch, no Lightning), so
that the fairness of a comparison can be checked by reading this file alone:

- splits: which documents (or, for 1 or 2 documents, which contiguous pieces) go to train, val, test;
- training: which window of which document training sample number i is, and which sample numbers
  each process draws in each epoch;
- evaluation: the windows that score every byte of a split exactly once, their truncation to a prefix
  of the split, their batches, and the batches of each process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def _ceil(x: float) -> int:
    # 0.1 * 30 is 3.0000000000000004 in floating point: that must still give 3 documents.
    return math.ceil(x - 1e-9)


def name_keys(names: Iterable[str]) -> bytes:
    """What orders documents for the split: the SHA-256 of every name (its UTF-8, a lone surrogate
    replaced), 32 bytes a name, end to end. The build's workers take them for the documents they
    decode, beside the documents' own digests."""
    return b"".join(hashlib.sha256(name.encode(errors="replace")).digest() for name in names)


def assign_splits(
    names: Sequence[str], val_fraction: float, test_fraction: float, keys: bytes | None = None
) -> dict[str, list[int]]:
    """Document indices of each split, each list in the original order.

    Documents are ordered by the SHA-256 of their name; the first ceil(val_fraction * n) go to val,
    the next ceil(test_fraction * n) to test, the rest to train. A document's split therefore depends
    on its name and the corpus size only, not on the order the documents were read in. ``keys``:
    ``name_keys(names)``, if already taken.
    """
    keys = name_keys(names) if keys is None else keys
    if len(keys) != 32 * len(names):
        raise ValueError(f"assign_splits: {len(keys)} bytes of keys for {len(names)} names (32 a name)")
    # As 32-byte strings the digests sort as bytes compare; a stable sort keeps equal names in order.
    order = np.argsort(np.frombuffer(keys, dtype="S32"), kind="stable")
    num_val = _ceil(val_fraction * len(names))
    num_test = _ceil(test_fraction * len(names))
    return {
        "train": np.sort(order[num_val + num_test :]).tolist(),
        "val": np.sort(order[:num_val]).tolist(),
        "test": np.sort(order[num_val : num_val + num_test]).tolist(),
    }


def split_ranges(
    names: Sequence[str],
    offsets: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    keys: bytes | None = None,
) -> dict[str, np.ndarray]:
    """Byte ranges of a corpus (documents end to end, document i at offsets[i]:offsets[i + 1]) that
    become the documents of each split.

    With 3 or more documents, whole documents as ``assign_splits`` assigns them. With 1 or 2 (one big
    file such as enwik8) each document is cut contiguously instead: its first 1 - val_fraction -
    test_fraction to train, then val_fraction to val, the rest to test; an empty piece is left out.
    Each split's ranges are int64 rows (start, end); ``keys``: ``name_keys(names)``, if already taken.
    """
    if len(names) >= 3:
        return document_ranges(offsets, assign_splits(names, val_fraction, test_fraction, keys))
    ranges: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
    for start, end in zip(offsets[:-1], offsets[1:], strict=True):
        n = end - start
        val_start = start + round(n * (1 - val_fraction - test_fraction))
        test_start = start + round(n * (1 - test_fraction))
        cuts = [start, val_start, test_start, end]
        for split, lo, hi in zip(SPLITS, cuts, cuts[1:], strict=False):
            if hi > lo:
                ranges[split].append((lo, hi))
    return {split: np.array(ranges[split], dtype=np.int64).reshape(-1, 2) for split in SPLITS}


def document_ranges(offsets: np.ndarray, indices: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The byte ranges (int64 rows start, end) of the documents of each split, by their indices."""
    offsets = np.asarray(offsets, dtype=np.int64)
    chosen = {split: np.asarray(indices[split], dtype=np.int64) for split in SPLITS}
    return {split: np.column_stack([offsets[i], offsets[i + 1]]) for split, i in chosen.items()}


def official_split_ranges(
    names: Sequence[str],
    offsets: np.ndarray,
    held_out: Sequence[bool],
    val_fraction: float,
    keys: bytes | None = None,
) -> dict[str, np.ndarray]:
    """Byte ranges of each split when the corpus comes with its own held-out split (CIFAR-10's test
    batch, downsampled ImageNet's validation file): the held-out documents are the test split, and
    the others are hashed into val (the first ceil(val_fraction * n) by SHA-256 of their name) and
    train, as ``assign_splits`` does (``keys``: ``name_keys(names)``, if already taken)."""
    rest = [i for i, out in enumerate(held_out) if not out]
    rest_keys = None if keys is None else np.frombuffer(keys, dtype="S32")[rest].tobytes()
    hashed = assign_splits([names[i] for i in rest], val_fraction, 0.0, rest_keys)
    indices = {
        "train": [rest[i] for i in hashed["train"]],
        "val": [rest[i] for i in hashed["val"]],
        "test": [i for i, out in enumerate(held_out) if out],
    }
    return document_ranges(offsets, indices)


def training_ends(doc_lengths: np.ndarray, align: int = 1) -> np.ndarray:
    """Cumulative count, document by document, of the ends of a training window: every multiple of
    ``align`` bytes into a document, up to its length (a document of n bytes has n // align)."""
    return np.cumsum(np.asarray(doc_lengths, dtype=np.int64) // align)


def training_window(
    ends: np.ndarray, seed: int, sample: int, seq_len: int, align: int = 1
) -> tuple[int, int, int]:
    """(document, start, end) of training sample number `sample`, drawn from (seed, sample) only.

    The rule, the same for every model and context length: the window's end is uniform among all
    ends (``ends`` is ``training_ends``: every ``align``-th byte of every training document), and
    the window is the up to ``seq_len`` bytes before it in its document, ``[max(0, end - seq_len), end)``.
    A document is therefore drawn in proportion to its length whatever ``seq_len`` is, every byte
    of it can be trained on, and windows that end less than ``seq_len`` bytes into a document are
    shorter, exactly like the evaluation windows at a document's start (``evaluation_windows``):
    every position evaluation scores, at every window length, is one training trains.
    """
    position = int(np.random.default_rng([seed, sample]).integers(ends[-1]))
    doc = int(np.searchsorted(ends, position, side="right"))
    first = int(ends[doc - 1]) if doc else 0
    end = (position - first + 1) * align
    return doc, max(0, end - seq_len), end


def training_coverage(doc_lengths: np.ndarray, seq_len: int, align: int = 1) -> dict[str, float]:
    """What the training rule reaches of a split: ``reachable_fraction``, the share of its bytes
    inside at least one possible training window (1 under ``training_window``'s rule; the rule
    before it, whole seq_len windows only, never reached documents shorter than seq_len), and
    ``short_window_fraction``, the share of windows shorter than seq_len (they are padded on the
    right in a batch, and the padding is neither scored nor counted as bytes)."""
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    ends = lengths // align
    reachable = np.minimum(ends * align, lengths).sum()  # bytes up to the last end of each document
    short = np.minimum(ends, -(-seq_len // align) - 1).sum()  # ends before seq_len
    return {
        "reachable_fraction": float(reachable / max(lengths.sum(), 1)),
        "short_window_fraction": float(short / max(ends.sum(), 1)),
    }


def training_crop(
    seed: int,
    sample: int,
    num_images: int,
    size: int,
    resolution: int,
    channels: int,
    side: int,
    seq_len: int,
) -> tuple[int, int, int, int, int]:
    """(image, top, left, start, end) of training sample number `sample` of an image corpus, drawn
    from (seed, sample) only.

    A uniform training image (size x size pixels), a uniform resolution-square crop of it at
    (top, left), and in the crop's scan the window ``[max(0, end - seq_len), end)`` whose end is
    uniform among the ends of whole patches of side x side pixels (whole pixels in raster scan):
    ``training_window``'s rule on the crop, so every window starts and ends on a whole patch.
    """
    rng = np.random.default_rng([seed, sample])
    image = rng.integers(num_images)
    top, left = rng.integers(size - resolution + 1, size=2)
    align = side * side * channels
    end = align * (1 + int(rng.integers(resolution * resolution * channels // align)))
    return int(image), int(top), int(left), max(0, end - seq_len), end


def train_samples_per_rank(samples_per_epoch: int, world_size: int, batch_size: int) -> int:
    """Training samples one process draws per epoch: samples_per_epoch over all processes, rounded up
    to whole batches on every process."""
    return math.ceil(samples_per_epoch / (world_size * batch_size)) * batch_size


def train_sample_numbers(epoch: int, length: int, rank: int, world_size: int, skip: int = 0) -> Iterator[int]:
    """The sample numbers process `rank` trains on in `epoch` (``length`` per epoch), from its
    ``skip``-th on.

    Step j of epoch e is step i = e * length + j of this process, which takes sample number
    i * world_size + rank: the processes share one stream and never draw the same sample, and
    epochs continue the stream instead of repeating it.
    """
    first = epoch * length
    return ((first + j) * world_size + rank for j in range(skip, length))


def check_alignment(align: int, unit: str, **lengths: int) -> None:
    """One-line error unless every window length (seq_len, score_len) is a multiple of ``align``
    bytes, the data's unit (a pixel, a patch of pixels, a 16-bit sample): windows of such lengths
    start on a unit in training and evaluation alike (``training_window``, ``evaluation_windows``)."""
    for name, value in lengths.items():
        if value % align:
            fits = ", ".join(
                str(align * k) for k in range(max(value // align, 1), max(value // align, 1) + 3)
            )
            raise ValueError(
                f"{name}={value} is not a multiple of {align} bytes, one {unit}: every window must start on "
                f"a whole {unit} in training and evaluation (use e.g. {fits})"
            )


def evaluation_windows(doc_lengths: np.ndarray, seq_len: int, score_len: int) -> np.ndarray:
    """The evaluation windows of documents of the given lengths, as int64 rows (doc, start, end, num_scored).

    Document d of length n is scored in chunks [a, b) with a = k * score_len and b = min(n, a + score_len);
    the chunk's window is bytes [max(0, b - seq_len), b) of the document and scores its last b - a bytes.
    Every byte is scored exactly once and no window crosses a document boundary. When seq_len,
    score_len and every length are multiples of a unit (``check_alignment``), every window starts
    and ends on one.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    chunks = -(-lengths // score_len)
    doc = np.repeat(np.arange(len(lengths)), chunks)
    first_chunk = np.repeat(np.cumsum(chunks) - chunks, chunks)
    a = (np.arange(len(doc)) - first_chunk) * score_len
    b = np.minimum(lengths[doc], a + score_len)
    return np.stack([doc, np.maximum(0, b - seq_len), b, b - a], axis=1)


def truncated_lengths(doc_lengths: np.ndarray, max_bytes: int | None, align: int = 1) -> np.ndarray:
    """Document lengths cut to the first ``max_bytes`` bytes of the split, in document order.

    Later documents drop out and the last one kept is cut short, to a multiple of ``align`` bytes
    (whole pixels, patches or samples), so evaluating the result scores a deterministic prefix of
    the split, every byte of it once, in windows that start on the data's units. None keeps every
    length.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if max_bytes is None:
        return lengths
    starts = np.cumsum(lengths) - lengths
    kept = np.clip(max_bytes - starts, 0, lengths)
    kept = np.where(kept < lengths, kept // align * align, kept)
    return kept[kept > 0]


def evaluation_batches(windows: np.ndarray, batch_size: int) -> list[list[int]]:
    """Window indices per batch, in order: a new batch starts when the window length changes or is full.

    Batches therefore need no padding: every window in a batch has the same length.
    """
    lengths = windows[:, 2] - windows[:, 1]
    runs = np.split(np.arange(len(windows)), np.flatnonzero(np.diff(lengths)) + 1)
    return [run[i : i + batch_size].tolist() for run in runs for i in range(0, len(run), batch_size)]


def rank_batches(batches: list[list[int]], rank: int, world_size: int) -> list[list[int | tuple[int, int]]]:
    """The evaluation batches of one process: batches rank, rank + world_size, ...

    Ranks with fewer batches get a padding batch (window 0 scoring 0 bytes) per missing one, so that
    every rank runs the same number of forward passes: FSDP gathers the weights in every forward, and
    a rank that stopped early would leave the others waiting. Padding changes no metric.
    """
    mine: list[list[int | tuple[int, int]]] = list(batches[rank::world_size])
    per_rank = -(-len(batches) // world_size)
    return mine + [[(0, 0)]] * (per_rank - len(mine))
