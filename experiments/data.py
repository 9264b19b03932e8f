"""``bytelab data inspect|prepare``: what a corpus's cache holds, and building that cache on its own."""

from __future__ import annotations

import copy
import importlib
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from datamodules import ByteDataModule
from datamodules.cache import cache_problem
from datamodules.datasets import ByteSplit
from datamodules.protocol import SPLITS
from datamodules.reference import COMPRESSORS, EVALUATION_SPLITS, ROWS, RULE, counted_bits, reference

from .subcommand import DataConfig
from .trainer_cli import DEFAULT_DATA

# Bytes counted at a time for the entropy: a split larger than memory streams through.
COUNT_BYTES = 64 * 2**20
# The reference compressors see at most this many bytes of a split (xz -9e runs at about 1 MB/s),
# so inspect stays bounded on any corpus; beyond them only the priors cost (64 MiB at most).
INSPECT_BYTES = 8 * 2**20


def order0_bits(data: np.ndarray) -> float:
    """The order-0 entropy of bytes in bits per byte: what a model of byte frequencies alone scores."""
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(data), COUNT_BYTES):
        counts += np.bincount(np.asarray(data[start : start + COUNT_BYTES]), minlength=256)
    total = counts.sum()
    if not total:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


# The rows of ``inspect``'s table, one value per split; a measure of a split is one more entry.
MEASURES: dict[str, Callable[[ByteSplit], str]] = {
    "documents": lambda split: f"{len(split):,}",
    "bytes": lambda split: f"{int(split.offsets[-1]):,}",
    "order-0 entropy (bits/byte)": lambda split: f"{order0_bits(split.data):.3f}",
}


def scored_length(dm: ByteDataModule, split: str) -> int:
    """How many bytes of a split evaluation scores (all of it, or its first ``max_eval_bytes``)."""
    return int(dm.windows(split)[:, 3].sum())


def bounded(dm: ByteDataModule) -> ByteDataModule:
    """``dm``, or where it scores more than INSPECT_BYTES of an evaluation split, a copy that scores
    their first INSPECT_BYTES (``reference`` keys its cached numbers by ``max_eval_bytes``)."""
    if all(scored_length(dm, split) <= INSPECT_BYTES for split in EVALUATION_SPLITS):
        return dm
    copied = copy.copy(dm)
    copied.max_eval_bytes = INSPECT_BYTES
    return copied


def reference_table(dm: ByteDataModule) -> str:
    """The reference compressors of ``datamodules.reference`` per split, in bits per byte, and which
    bytes they compressed: val and test the bytes evaluation scores (at most INSPECT_BYTES), train
    its first INSPECT_BYTES, alone only (its tail is the other rows' prior)."""
    scored = bounded(dm)
    numbers = reference(scored)["splits"]
    train = bytes(dm.splits["train"].data[:INSPECT_BYTES])
    with counted_bits(len(COMPRESSORS) * len(train), "compressing the training split") as bits:
        train_cells = {name: f"{bits(name, train) / max(len(train), 1):.3f}" for name in COMPRESSORS}
    rows = {
        row: [train_cells.get(row, "-"), *(f"{numbers[s]['bpb'][row]:.3f}" for s in EVALUATION_SPLITS)]
        for row in ROWS
    }
    return "\n".join(
        [
            f"reference compressors (datamodules/reference.py), bits per byte, on at most {INSPECT_BYTES:,} "
            "bytes of a split",
            table(rows, ["", *SPLITS]),
            textwrap.fill(f"{compressed_note(dm, scored, numbers, len(train))} {RULE}", 100),
        ]
    )


def compressed_note(dm: ByteDataModule, scored: ByteDataModule, numbers: dict[str, Any], train: int) -> str:
    """Which bytes of each split the reference table compressed, in one sentence."""
    splits = " and ".join(f"{s} {numbers[s]['bytes']:,}" for s in EVALUATION_SPLITS)
    if scored is not dm:
        evaluated = " and ".join(f"{scored_length(dm, s):,}" for s in EVALUATION_SPLITS)
        which = f"their first bytes, inspect's bound (evaluation scores {evaluated})"
    elif dm.max_eval_bytes:
        which = f"the bytes evaluation scores (max_eval_bytes={dm.max_eval_bytes:,})"
    else:
        which = "the whole split, as evaluation scores it"
    whole = int(dm.splits["train"].offsets[-1])
    first = "the whole split" if train == whole else f"its first bytes, inspect's bound (of {whole:,})"
    return f"Compressed: {splits} bytes, {which}; train {train:,} bytes, {first}, alone only."


def datamodule(data: dict[str, Any] | None) -> ByteDataModule:
    """The DataModule of a ``--data`` config (fit's default, the embedded text, when None)."""
    config = data or yaml.safe_load(DEFAULT_DATA.read_text())["data"]
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(config.get("init_args") or {}))


def cache_size(directory: Path) -> int:
    """Bytes of every file of a cache directory."""
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def table(rows: dict[str, list[str]], header: list[str]) -> str:
    """Rows of cells as aligned plain text under a header: the first column left, the others right."""
    lines = [header, *([label, *cells] for label, cells in rows.items())]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def aligned(line: list[str]) -> str:
        cells = [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        return "  ".join([line[0].ljust(widths[0]), *cells])

    return "\n".join(aligned(line) for line in lines)


def peek(document: np.ndarray, length: int) -> str:
    """The first ``length`` bytes of a document, printable (Python bytes notation), and its size."""
    head = bytes(document[:length])
    more = "..." if len(document) > length else ""
    return f"{head!r}{more} ({len(document):,} bytes)"


def inspect_cache(dm: ByteDataModule, documents: int, length: int) -> str:
    """What ``bytelab data inspect`` prints about a DataModule whose splits are open."""
    manifest = dm.manifest
    skipped, empty = len(manifest.get("skipped", [])), manifest.get("empty_documents", 0)
    rows = {measure: [value(dm.splits[s]) for s in SPLITS] for measure, value in MEASURES.items()}
    lines = [
        f"{dm._describe()}",
        f"cache: {dm.cache_path} ({cache_size(dm.cache_path) / 1e6:.1f} MB)",
        f"left out: {skipped} unreadable files (on_error=skip), {empty} empty documents",
        "",
        table(rows, ["", *SPLITS]),
        "",
        reference_table(dm),
    ]
    for split in SPLITS:
        shown = min(documents, len(dm.splits[split]))
        lines += ["", f"{split}: the first {shown} documents"]
        lines += [f"  [{i}] {peek(dm.splits[split].document(i), length)}" for i in range(shown)]
    return "\n".join(lines)


def data_command(
    action: Literal["inspect", "prepare"],
    data: DataConfig | None = None,
    documents: int = 3,
    peek_bytes: int = 60,
) -> int:
    """Inspect a corpus's cache (building it if needed), or build it alone (``prepare``).

    ``prepare`` builds the cache with a progress bar and exits, so a cluster job can build it once on
    one node before its ranks start (docs/DATA.md); ``inspect`` prints, per split, the documents, bytes
    and order-0 entropy, the reference compressors (``datamodules.reference``: zlib, bz2 and xz alone
    and given the training split, on at most INSPECT_BYTES of a split), the cache's path and size,
    and the first bytes of a few documents.

    Args:
        action: ``inspect`` or ``prepare``.
        data: The DataModule config, read as ``bytelab fit --data`` reads it: a YAML file with
            class_path and init_args, a class name, and/or ``--data.init_args.KEY=VALUE``, on fit's
            default (the embedded text).
        documents: Documents shown per split (inspect).
        peek_bytes: Bytes shown of each of them (inspect).
    """
    dm = datamodule(data)
    if action == "prepare":
        dm.progress = True
        problem = cache_problem(dm.cache_path)
        start = time.monotonic()
        dm.prepare_data()
        took = time.monotonic() - start
        state = f"built in {took:.1f} s" if problem else "already built, nothing to do"
        print(f"bytelab data prepare: {dm.cache_path} ({cache_size(dm.cache_path) / 1e6:.1f} MB), {state}")
        return 0
    dm.setup()
    print(inspect_cache(dm, documents, peek_bytes))
    return 0
