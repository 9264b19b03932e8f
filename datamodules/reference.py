"""Reference rows: what classic compressors and an order-0 model achieve on exactly the bytes evaluation
scores, so that every bits-per-byte table says what "good" is (DESIGN, "The evaluation protocol";
docs/PROTOCOL.md).

For each evaluation split, on the bytes its windows score (``ByteDataModule.windows``: every byte of
the split, or of its first ``max_eval_bytes``, once, whatever ``seq_len`` and ``score_len`` are):

- ``zlib -9``, ``bz2 -9``, ``xz -9e``: Python's standard library at its strongest setting
  (``lzma`` preset 9 | PRESET_EXTREME), bits of the whole compressed file, headers and checksums
  included, per scored byte;
- ``... | train``: the same compressor given the training split as prior context: the bits of
  prior + scored bytes minus the bits of the prior alone. The prior is the tail of the training
  split (its documents end to end, in split order), as much as the compressor can use: the last
  64 MiB for zlib and xz (xz -9e's dictionary; zlib's 32 KiB window sees the end of it), the last
  800 kB for bz2, which codes each 900 kB block on its own, so the block the scored bytes start in
  holds 800 kB of training text and up to 100 kB of them (a margin for bz2's run-length pre-pass);
- ``order-0 entropy``: the training split's byte frequencies, add-one smoothed
  ((count + 1) / (N + 256)), as a code for the scored bytes.

The scored bytes are compressed concatenated (in the order evaluation scores them), not per
document: a standalone compressor learns only from what it compresses, bz2 and lzma cannot restart
from a shared prior per document (their compressors cannot be copied), and the main job's scored
bytes lie in one document anyway. Concatenation lets a compressor use an earlier scored document as
context, which no model may (windows never cross a document boundary): the reference rows are, if
anything, slightly strong.

The numbers are computed once per dataset and scored bytes and cached as
``reference-<key>.json`` in the datamodule's cache directory (a rebuilt cache drops them with it),
written atomically.
"""

from __future__ import annotations

import bz2
import contextlib
import json
import logging
import lzma
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cache import digest, progress_bar

if TYPE_CHECKING:
    from .bytes import ByteDataModule

log = logging.getLogger(__name__)

VERSION = 1  # of the numbers: a change of rule or prior gives a new cache key
EVALUATION_SPLITS = ("val", "test")
# Below this many bytes to compress (about ten seconds of xz -9e) no progress bar is shown.
PROGRESS_MIN_BYTES = 8 * 2**20
PRIOR_BYTES = {"zlib": 64 * 2**20, "bz2": 800_000, "xz": 64 * 2**20}
COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "zlib -9": ("zlib", lambda data: zlib.compress(data, 9)),
    "bz2 -9": ("bz2", lambda data: bz2.compress(data, 9)),
    "xz -9e": ("xz", lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
}
ORDER0 = "order-0 entropy"
GIVEN = " | train"
# The rows in table order, and the rule in one line for every table's notes.
ROWS = [row for name in COMPRESSORS for row in (name, name + GIVEN)] + [ORDER0]
RULE = (
    "Reference rows: the scored bytes of the split, concatenated in evaluation order (not per document). "
    "zlib -9, bz2 -9, xz -9e: Python's standard library, whole compressed size per scored byte. "
    "'| train': given the training split's tail as prior context (bits of prior + scored minus bits of "
    "prior alone): the last 64 MiB for zlib and xz (xz -9e's dictionary), 800 kB for bz2 (its 900 kB block). "
    "Order-0 entropy: the training split's add-one smoothed byte frequencies."
)


def compressed_bits(name: str, data: bytes) -> int:
    """Bits of ``data`` compressed by the compressor ``name`` (a key of ``COMPRESSORS``)."""
    return 8 * len(COMPRESSORS[name][1](data))


Bits = Callable[[str, bytes], int]


def given_bits(
    name: str, prior: bytes, data: bytes, prior_bits: int | None = None, bits: Bits = compressed_bits
) -> int:
    """Bits ``data`` costs after ``prior``: compressed(prior + data) - compressed(prior), the
    latter computed here unless given as ``prior_bits`` (``bits``: ``compressed_bits``, or one that
    counts what it compresses)."""
    if prior_bits is None:
        prior_bits = bits(name, prior)
    return bits(name, prior + data) - prior_bits


@contextlib.contextmanager
def counted_bits(total: int, description: str) -> Iterator[Bits]:
    """``compressed_bits`` that advances a progress bar of ``total`` bytes as it compresses them:
    xz -9e runs at about 1 MB/s, so the reference rows of a large split take minutes (the bar is
    hidden below PROGRESS_MIN_BYTES, about ten seconds of it)."""
    with progress_bar(total, PROGRESS_MIN_BYTES) as progress:
        task = progress.add_task(description, total=total)

        def bits(name: str, data: bytes) -> int:
            progress.update(task, description=f"{description}: {name}")
            result = compressed_bits(name, data)
            progress.update(task, advance=len(data))
            return result

        yield bits


def order0_bits(train: np.ndarray, data: np.ndarray) -> float:
    """Bits of ``data`` under the add-one smoothed byte frequencies of ``train``."""
    counts = np.bincount(np.asarray(train, dtype=np.uint8), minlength=256) + 1
    log_p = np.log2(counts) - math.log2(counts.sum())
    return float(-(np.bincount(np.asarray(data, dtype=np.uint8), minlength=256) * log_p).sum())


def scored_bytes(datamodule: ByteDataModule, split: str) -> np.ndarray:
    """The bytes evaluation scores on a split, concatenated in the order it scores them."""
    data = datamodule.splits[split]
    pieces = [data.document(doc)[end - scored : end] for doc, _, end, scored in datamodule.windows(split)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint8)


def priors(train: np.ndarray) -> dict[str, bytes]:
    """The prior of each compressor: the tail of the training split it is given (``PRIOR_BYTES``)."""
    return {kind: bytes(train[max(0, len(train) - size) :]) for kind, size in PRIOR_BYTES.items()}


def split_reference(
    train: np.ndarray,
    scored: np.ndarray,
    prior: dict[str, bytes],
    prior_bits: dict[str, int],
    bits: Bits = compressed_bits,
) -> dict[str, Any]:
    """The reference numbers of one split's scored bytes (``scored``), in bits per scored byte."""
    data = bytes(scored)
    n = max(len(data), 1)
    bpb: dict[str, float] = {}
    for name, (kind, _) in COMPRESSORS.items():
        bpb[name] = bits(name, data) / n
        bpb[name + GIVEN] = given_bits(name, prior[kind], data, prior_bits[kind], bits) / n
    bpb[ORDER0] = order0_bits(train, scored) / n
    return {
        "bytes": len(data),
        "prior_bytes": {kind: len(p) for kind, p in prior.items()},
        "bpb": {row: bpb[row] for row in ROWS},
    }


def compute_reference(datamodule: ByteDataModule) -> dict[str, Any]:
    """The reference numbers of every evaluation split of a set-up datamodule, uncached."""
    train = np.asarray(datamodule.splits["train"].data)
    prior = priors(train)
    scored = {split: scored_bytes(datamodule, split) for split in EVALUATION_SPLITS}
    # Every compressor compresses its prior once, and each split alone and after its prior.
    total = sum(
        len(prior[kind]) + sum(len(prior[kind]) + 2 * len(data) for data in scored.values())
        for kind, _ in COMPRESSORS.values()
    )
    with counted_bits(total, "reference compressors") as bits:
        prior_bits = {kind: bits(name, prior[kind]) for name, (kind, _) in COMPRESSORS.items()}
        splits = {
            split: split_reference(train, scored[split], prior, prior_bits, bits)
            for split in EVALUATION_SPLITS
        }
    return {"version": VERSION, "rule": RULE, "train_bytes": len(train), "splits": splits}


def reference_key(datamodule: ByteDataModule) -> str:
    """What the scored bytes depend on beyond the cached splits: the prefix evaluation keeps and the
    data's unit (``protocol.truncated_lengths``); seq_len and score_len only regroup them."""
    return digest(
        {
            "version": VERSION,
            "max_eval_bytes": datamodule.max_eval_bytes,
            "align": datamodule.align,
            "priors": PRIOR_BYTES,
        }
    )


def reference(datamodule: ByteDataModule) -> dict[str, Any]:
    """The reference numbers of a set-up datamodule's evaluation splits, from its cache directory or
    computed and cached there (``reference-<key>.json``, written atomically; a read-only cache only
    costs the recomputation): ``{"version", "rule", "train_bytes", "splits": {split: {"bytes",
    "prior_bytes", "bpb": {row: bits per byte}}}}``."""
    path = datamodule.cache_path / f"reference-{reference_key(datamodule)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    numbers = compute_reference(datamodule)
    try:
        write_atomic(path, json.dumps(numbers, indent=2) + "\n")
    except OSError as error:
        log.warning("could not cache the reference numbers in %s: %s", path, error)
    return numbers


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, renamed over it once complete: a reader
    sees the whole file or none, and a failed write leaves nothing behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # as readable as the cache's other files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
