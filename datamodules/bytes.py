"""Shared base of the byte datamodules: cached uint8 splits, training windows, evaluation windows."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import DataLoader, Dataset, Sampler

from .files import CHUNK_BYTES

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# Below this many source bytes a build takes about a second, so a progress bar would only flicker.
PROGRESS_MIN_BYTES = 64 * 2**20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


def _ceil(x: float) -> int:
    # 0.1 * 30 is 3.0000000000000004 in floating point: that must still give 3 documents.
    return math.ceil(x - 1e-9)


def assign_splits(names: Sequence[str], val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """Document indices of each split, each list in the original order.

    Documents are ordered by the SHA-256 of their name; the first ceil(val_fraction * n) go to val,
    the next ceil(test_fraction * n) to test, the rest to train. A document's split therefore depends
    on its name and the corpus size only, not on the order the documents were read in.
    """
    order = sorted(
        range(len(names)), key=lambda i: hashlib.sha256(names[i].encode(errors="replace")).digest()
    )
    num_val = _ceil(val_fraction * len(names))
    num_test = _ceil(test_fraction * len(names))
    return {
        "train": sorted(order[num_val + num_test :]),
        "val": sorted(order[:num_val]),
        "test": sorted(order[num_val : num_val + num_test]),
    }


def evaluation_windows(doc_lengths: np.ndarray, seq_len: int, score_len: int) -> np.ndarray:
    """The evaluation windows of documents of the given lengths, as int64 rows (doc, start, end, num_scored).

    Document d of length n is scored in chunks [a, b) with a = k * score_len and b = min(n, a + score_len);
    the chunk's window is bytes [max(0, b - seq_len), b) of the document and scores its last b - a bytes.
    Every byte is scored exactly once and no window crosses a document boundary.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    chunks = -(-lengths // score_len)
    doc = np.repeat(np.arange(len(lengths)), chunks)
    first_chunk = np.repeat(np.cumsum(chunks) - chunks, chunks)
    a = (np.arange(len(doc)) - first_chunk) * score_len
    b = np.minimum(lengths[doc], a + score_len)
    return np.stack([doc, np.maximum(0, b - seq_len), b, b - a], axis=1)


def truncated_lengths(doc_lengths: np.ndarray, max_bytes: int | None) -> np.ndarray:
    """Document lengths cut to the first ``max_bytes`` bytes of the split, in document order.

    Later documents drop out and the last one kept is cut short, so evaluating the result scores a
    deterministic prefix of the split, every byte of it once. None keeps every length.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if max_bytes is None:
        return lengths
    starts = np.cumsum(lengths) - lengths
    kept = np.clip(max_bytes - starts, 0, lengths)
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


def copy_range(source: Any, target: Any, start: int, end: int, chunk: int = CHUNK_BYTES) -> None:
    """Copy bytes [start, end) of the open file ``source`` to the open file ``target``, in pieces."""
    source.seek(start)
    while start < end:
        data = source.read(min(chunk, end - start))
        if not data:
            raise OSError(f"{source.name} ended at byte {start}, before {end}")
        target.write(data)
        start += len(data)


def file_record(path: Path) -> dict[str, Any]:
    """Size, modification time and SHA-256 of a cache file, as its manifest keeps them."""
    stat = path.stat()
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def stored_corpus_id(directory: Path) -> str | None:
    """The corpus id a cache directory's manifest records; None without a readable manifest."""
    try:
        return json.loads((directory / "manifest.json").read_text()).get("corpus_id")
    except (OSError, ValueError):
        return None


def build_host() -> str:
    """This host's name with its dots replaced, so it is one field of a temporary build's name."""
    return socket.gethostname().replace(".", "_")


def remove_abandoned_builds(final: Path) -> None:
    """Delete the temporary build directories of ``final`` (``.NAME.HOST.PID.RANDOM.tmp``) left by
    processes of this host that no longer run: a SIGKILL mid-build skips the cleanup. A build still
    running, or one from another host sharing the cache folder, is left alone."""
    host = build_host()
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        owner = tmp.name[len(final.name) + 2 : -len(".tmp")].split(".")
        if len(owner) != 3 or owner[0] != host or not owner[1].isdigit() or process_alive(int(owner[1])):
            continue
        log.warning("removing %s, left by an interrupted cache build", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def cache_problem(directory: Path) -> str | None:
    """Why a cache directory cannot be used as it is, or None when it is complete and intact.

    Sizes are checked every time; a file whose size or modification time moved is hashed and compared
    with the manifest's SHA-256, so a truncated or edited cache is caught without rehashing every run."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        return "no complete cache"
    except ValueError:
        return "its manifest.json is unreadable"
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.exists():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != expected["size"]:
            return f"{name} has {stat.st_size} bytes, its manifest says {expected['size']}"
        if stat.st_mtime_ns != expected["mtime_ns"] and file_record(path)["sha256"] != expected["sha256"]:
            return f"{name} was modified after the cache was built"
    return None


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world_size) of this process in torch.distributed, or (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    """Training sample number i: seq_len bytes inside one document, drawn from (seed, i) only.

    The start is uniform among all positions where a whole window fits in one document and that are a
    multiple of `align` bytes into it (align=2 keeps 16-bit samples whole), so a document is drawn in
    proportion to its number of such positions and documents shorter than seq_len never.
    """

    def __init__(self, split: ByteSplit, seq_len: int, seed: int, align: int = 1) -> None:
        self.split = split
        self.seq_len = seq_len
        self.seed = seed
        self.align = align
        counts = np.maximum((split.lengths - seq_len) // align + 1, 0)
        self.cumulative = np.cumsum(counts)
        self.first = self.cumulative - counts

    def __getitem__(self, i: int) -> np.ndarray:
        position = np.random.default_rng([self.seed, i]).integers(self.cumulative[-1])
        doc = np.searchsorted(self.cumulative, position, side="right")
        start = self.split.offsets[doc] + (position - self.first[doc]) * self.align
        return self.split.data[start : start + self.seq_len]


class TrainSampler(Sampler[int]):
    """The sample numbers one process trains on in the current epoch.

    Step j of epoch e is step i = e * length + j of this process, which takes sample number
    i * world_size + rank: the processes share one stream and never draw the same sample.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every training epoch."""
        self.epoch = epoch

    def resume_at(self, samples_done: int) -> None:
        """Start the next pass ``samples_done`` samples into the epoch: after a resume the stream goes
        on with the first sample that was not trained on, so no window is repeated or skipped."""
        self.skip = samples_done % self.length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        first, skip = self.epoch * self.length, self.skip
        self.skip = 0
        return ((first + j) * self.world_size + self.rank for j in range(skip, self.length))


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


def collate_train(items: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Stack uint8 windows into {"x": LongTensor[B, seq_len]}."""
    return {"x": torch.from_numpy(np.stack(items).astype(np.int64))}


def collate_evaluation(items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
    """Stack equal-length windows into {"x": LongTensor[B, L], "num_scored": LongTensor[B]}."""
    windows, num_scored = zip(*items, strict=True)
    return {
        "x": torch.from_numpy(np.stack(windows).astype(np.int64)),
        "num_scored": torch.tensor(num_scored, dtype=torch.long),
    }


class ByteDataModule(L.LightningDataModule):
    """A corpus of byte documents, cached as uint8 splits, served as training and evaluation windows.

    Subclasses implement ``documents()`` (name and bytes of every document), ``sources()`` (the files
    it reads) and, if they have options that change the bytes, ``cache_options()``. Modalities that
    decode files call ``reject()`` for a file they cannot read; they may also override
    ``documents_in_split()`` (what a document becomes once its split is known) and ``train_dataset()``.

    Split: with 3 or more documents, documents are ordered by the SHA-256 of their name; the first
    ceil(val_fraction * n) go to val, the next ceil(test_fraction * n) to test, the rest to train.
    With 1 or 2 documents (one big file such as enwik8), each document is cut contiguously instead:
    its first 1 - val_fraction - test_fraction to train, then val_fraction to val, the rest to test.
    Empty documents are dropped. Every split must end up with at least one byte.

    Cache: ``prepare_data()`` writes, once, ``{split}.bin`` (the split's documents end to end, uint8),
    ``{split}.docs.npy`` (int64 document offsets) and ``manifest.json`` into a directory named by a
    hash of the class, the options that change the bytes and the sources' paths, sizes and mtimes; it
    builds in a temporary sibling directory that is renamed into place, so a cache either is complete
    or does not exist. Changing a source or an option gives a new directory.

    Training: an endless stream of windows of seq_len bytes, sample number i drawn from (seed, i)
    only (see ``TrainWindows``); an "epoch" is a fixed number of them, so runs are reproducible.

    Evaluation: every byte of the split scored exactly once by windows of at most seq_len bytes that
    each score at most score_len bytes (see ``evaluation_windows``); batches hold windows of equal
    length, without padding.

    Distributed runs: rank r trains on samples r, r + world_size, ... and evaluates batches
    r, r + world_size, ...; set the trainer's ``use_distributed_sampler=False`` so Lightning keeps
    these samplers.
    """

    def __init__(
        self,
        *,
        seq_len: int = 1024,
        score_len: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        train_samples_per_epoch: int = 100_000,
        max_eval_bytes: int | None = None,
    ) -> None:
        """
        Args:
            seq_len: bytes per window, for training and evaluation.
            score_len: bytes scored per evaluation window, each with up to seq_len - score_len bytes of
                left context; None scores whole windows (seq_len).
            batch_size: training windows per batch and process.
            eval_batch_size: evaluation windows per batch and process; None uses batch_size.
            num_workers: dataloader worker processes (0 loads in the main process).
            seed: seed of the training windows; sample number i depends on (seed, i) only.
            cache_dir: where the prepared splits live; None uses $BYTELAB_CACHE or ~/.cache/bytelab.
            val_fraction: share of the documents (or of the bytes, for 1 or 2 documents) for validation.
            test_fraction: share of the documents (or of the bytes, for 1 or 2 documents) for test.
            train_samples_per_epoch: training windows per epoch over all processes, rounded up to whole
                batches per process; it only sets how often epoch-end hooks (validation,
                checkpoints) run, since the stream never repeats.
            max_eval_bytes: score only the first max_eval_bytes bytes of each evaluation split (its
                first documents, the last one cut short), each exactly once, for quick studies; None
                scores the whole split.
        """
        super().__init__()
        score_len = seq_len if score_len is None else score_len
        eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be at least 1")
        if not 1 <= score_len <= seq_len:
            raise ValueError(f"score_len={score_len} must be between 1 and seq_len={seq_len}")
        for name, value in [
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("train_samples_per_epoch", train_samples_per_epoch),
        ]:
            if value < 1:
                raise ValueError(f"{name}={value} must be at least 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be 0 or more")
        for name, value in [("val_fraction", val_fraction), ("test_fraction", test_fraction)]:
            if not 0 < value < 1:
                raise ValueError(f"{name}={value} must be between 0 and 1 (exclusive)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction} must be below 1 "
                "to leave training data"
            )
        self.seq_len = seq_len
        self.score_len = score_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = Path(
            cache_dir or os.environ.get("BYTELAB_CACHE") or Path.home() / ".cache" / "bytelab"
        )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.train_samples_per_epoch = train_samples_per_epoch
        if max_eval_bytes is not None and max_eval_bytes < 1:
            raise ValueError(f"max_eval_bytes={max_eval_bytes} must be at least 1 (or None for whole splits)")
        self.max_eval_bytes = max_eval_bytes
        self.splits: dict[str, ByteSplit] = {}
        self.manifest: dict[str, Any] = {}
        self.skipped: list[dict[str, str]] = []

    # What reject() does with a file that cannot be decoded: "fail" raises, "skip" counts it and goes on.
    # Subclasses that decode their files take it as an option (and key the cache with it).
    on_error: str = "fail"

    def documents(self) -> Iterator[tuple[str, bytes]]:
        """Yield (stable name, raw bytes) for every document of the corpus, in a deterministic order."""
        raise NotImplementedError

    def sources(self) -> list[Path]:
        """The files the documents are read from; their paths, sizes and mtimes key the cache."""
        raise NotImplementedError

    def cache_options(self) -> dict[str, Any]:
        """Subclass options that change the cached bytes (JSON-serialisable); they key the cache."""
        return {}

    def document_chunks(self) -> Iterator[tuple[str, Iterable[bytes]]]:
        """Every document as (name, its bytes in pieces): what the cache build reads. Here each
        document of ``documents()`` in one piece; modalities with large documents (text) stream them."""
        for name, data in self.documents():
            yield name, (data,)

    def corpus_bytes(self) -> int | None:
        """How many bytes ``document_chunks()`` yields in all, if known without reading (the
        progress bar's total, for its time left); None when decoding changes the size."""
        return None

    def documents_in_split(self, split: str, document: np.ndarray) -> list[np.ndarray]:
        """The documents that one corpus document (or, for 1 or 2 documents, one contiguous piece of
        one) becomes in `split`, once the split is known; itself here."""
        return [document]

    def train_dataset(self) -> Dataset:
        """Training sample number i as a uint8 array of seq_len bytes, a function of (seed, i) only."""
        return TrainWindows(self.splits["train"], self.seq_len, self.seed)

    def reject(self, source: str, reason: str) -> None:
        """Report a source file that cannot be decoded: raise a ValueError naming it (on_error="fail"),
        or log it, count it and go on without it (on_error="skip")."""
        if self.on_error != "skip":
            raise ValueError(f"cannot read {source}: {reason} (fix or remove it, or set on_error=skip)")
        log.warning("skipping unreadable %s: %s", source, reason)
        self.skipped.append({"path": source, "reason": reason})

    def _skipped_note(self) -> str:
        if not self.skipped:
            return ""
        first = self.skipped[0]
        return (
            f"; {len(self.skipped)} unreadable files were skipped (on_error=skip), "
            f"the first {first['path']}: {first['reason']}"
        )

    def _options(self) -> dict[str, Any]:
        return {
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            **self.cache_options(),
        }

    def _describe(self) -> str:
        names = [str(path) for path in self.sources()]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return f"{type(self).__name__} corpus {', '.join(names[:3])}{more}"

    @property
    def cache_path(self) -> Path:
        """The cache directory of the current sources and options."""
        key = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "format_version": FORMAT_VERSION,
            "options": self._options(),
            "sources": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in self.sources()],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{type(self).__name__.lower()}-{digest}"

    @property
    def corpus_id(self) -> str:
        """What the cache holds, without the sources' sizes and times: caches of one corpus share it."""
        key = {
            "class": type(self).__qualname__,
            "options": self._options(),
            "sources": sorted(map(str, self.sources())),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def prepare_data(self) -> None:
        """Build the cache unless a complete, intact one exists.

        A cache whose files no longer match its manifest (truncated, edited, missing) is rebuilt, and
        a cache of the same corpus built from older versions of the sources is replaced, each with a
        one-line notice."""
        final = self.cache_path
        problem = cache_problem(final)
        if problem is None:
            return
        if (final / "manifest.json").exists():
            log.warning("%s: %s; rebuilding it", final, problem)
        final.parent.mkdir(parents=True, exist_ok=True)
        corpus = self.corpus_id  # lists the sources once, not once per sibling cache
        siblings = final.parent.glob(f"{type(self).__name__.lower()}-*")
        stale = [d for d in siblings if d != final and stored_corpus_id(d) == corpus]
        for old in stale:
            log.warning("the sources of %s changed since it was built; building %s instead", old, final.name)
        log.info("building the %s cache in %s", type(self).__name__, final)
        remove_abandoned_builds(final)
        prefix = f".{final.name}.{build_host()}.{os.getpid()}."
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
        try:
            manifest = self._write_splits(tmp)
            manifest["corpus_id"] = corpus
            manifest["files"] = {f.name: file_record(f) for f in sorted(tmp.iterdir())}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process published the same cache first: keep theirs.
                if not (final / "manifest.json").exists():
                    raise
                shutil.rmtree(tmp)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if error.errno in DISK_FULL:
                raise self._disk_full(final, error) from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)

    def _disk_full(self, final: Path, error: OSError) -> OSError:
        """One line for a build that ran out of space: the cache, the space it needs (the corpus
        twice: its copy, then its splits, before the copy is deleted) and what is free."""
        needed = 2 * sum(path.stat().st_size for path in self.sources())
        free = shutil.disk_usage(final.parent).free
        message = (
            f"no space left on device building the {type(self).__name__} cache {final}: it needs about "
            f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free; any previous cache is kept, free some space "
            "(or set cache_dir / BYTELAB_CACHE to a larger disk) and run again"
        )
        return OSError(error.errno, message, str(final))

    def _progress(self) -> Progress:
        total = sum(path.stat().st_size for path in self.sources())
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
            disable=total < PROGRESS_MIN_BYTES,
        )

    def _read_corpus(self, path: Path) -> tuple[list[str], np.ndarray]:
        """Write every non-empty document end to end into `path`; return their names and offsets."""
        names: list[str] = []
        ends = [0]
        self.skipped = []
        with open(path, "wb") as f, self._progress() as progress:
            task = progress.add_task(f"reading {type(self).__name__}", total=self.corpus_bytes())
            for name, chunks in self.document_chunks():
                size = 0
                for data in chunks:
                    f.write(data)
                    size += len(data)
                    progress.update(task, advance=len(data))
                if size:
                    names.append(name)
                    ends.append(ends[-1] + size)
        return names, np.array(ends, dtype=np.int64)

    def _split_ranges(self, names: list[str], offsets: np.ndarray) -> dict[str, list[tuple[int, int]]]:
        """Byte ranges of the corpus that become the documents of each split (see the class docstring)."""
        if len(names) >= 3:
            indices = assign_splits(names, self.val_fraction, self.test_fraction)
            return {split: [(offsets[i], offsets[i + 1]) for i in indices[split]] for split in SPLITS}
        ranges: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            n = end - start
            val_start = start + round(n * (1 - self.val_fraction - self.test_fraction))
            test_start = start + round(n * (1 - self.test_fraction))
            cuts = [start, val_start, test_start, end]
            for split, lo, hi in zip(SPLITS, cuts, cuts[1:], strict=False):
                if hi > lo:
                    ranges[split].append((lo, hi))
        return ranges

    def _write_splits(self, directory: Path) -> dict[str, Any]:
        """Write the split files into `directory` and return the manifest."""
        corpus_path = directory / "corpus.bin"
        names, offsets = self._read_corpus(corpus_path)
        if offsets[-1] == 0:
            note = self._skipped_note()
            raise ValueError(f"{self._describe()} holds no bytes: give it non-empty files{note}")
        if self.skipped:
            log.warning(
                "skipped %d unreadable files of %s (on_error=skip); they are listed in %s",
                len(self.skipped),
                self._describe(),
                self.cache_path / "manifest.json",
            )
        ranges = self._split_ranges(names, offsets)
        for split in SPLITS:
            if not ranges[split]:
                raise ValueError(
                    f"split {split!r} of {self._describe()} would be empty ({len(names)} documents); "
                    "add documents or change val_fraction/test_fraction"
                )
        # Documents kept as they are (text) are copied in pieces with plain reads; a memory map would
        # leave every page it touched resident, so the build's memory would grow with the corpus.
        streamed = type(self).documents_in_split is ByteDataModule.documents_in_split
        corpus = np.memmap(corpus_path, dtype=np.uint8, mode="r")
        counts = {}
        with open(corpus_path, "rb") as source:
            for split in SPLITS:
                lengths = []
                with open(directory / f"{split}.bin", "wb") as f:
                    for lo, hi in ranges[split]:
                        if streamed:
                            copy_range(source, f, int(lo), int(hi))
                            lengths.append(int(hi - lo))
                            continue
                        for document in self.documents_in_split(split, corpus[lo:hi]):
                            f.write(document)
                            lengths.append(len(document))
                doc_offsets = np.cumsum([0, *lengths], dtype=np.int64)
                np.save(directory / f"{split}.docs.npy", doc_offsets)
                counts[split] = {"bytes": int(doc_offsets[-1]), "documents": len(lengths)}
        del corpus
        corpus_path.unlink()
        sources = []
        for path in self.sources():
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            sources.append({"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest})
        return {
            "format_version": FORMAT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "options": self._options(),
            "sources": sources,
            "splits": counts,
            "skipped": self.skipped,
        }

    def setup(self, stage: str | None = None) -> None:
        """Open the cached splits (building them first if needed, e.g. outside a Trainer)."""
        self.prepare_data()
        directory = self.cache_path
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.splits = {split: ByteSplit(directory, split) for split in SPLITS}
        if self.manifest.get("skipped"):
            log.warning(
                "%s was built without %d unreadable files (on_error=skip); see its manifest.json",
                directory,
                len(self.manifest["skipped"]),
            )
        if stage in ("fit", None):
            longest = int(self.splits["train"].lengths.max())
            if longest < self.seq_len:
                raise ValueError(
                    f"seq_len={self.seq_len} is longer than every training document of {self._describe()} "
                    f"(longest: {longest} bytes); lower seq_len or add longer documents"
                )

    def windows(self, split: str) -> np.ndarray:
        """Evaluation windows of a split: int64 rows (doc, start, end, num_scored), offsets in the doc."""
        lengths = truncated_lengths(self.splits[split].lengths, self.max_eval_bytes)
        return evaluation_windows(lengths, self.seq_len, self.score_len)

    def dataloader(self, split: str, rank: int | None = None, world_size: int | None = None) -> DataLoader:
        """The dataloader of a split for one process; rank and world_size default to torch.distributed's."""
        if rank is None or world_size is None:
            rank, world_size = distributed_rank_world()
        common: dict[str, Any] = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            # Without its own generator, every iter() of a DataLoader draws from the global torch RNG,
            # so a resumed run's dropout masks would drift from an uninterrupted run's.
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if split == "train":
            per_process = math.ceil(self.train_samples_per_epoch / (world_size * self.batch_size))
            return DataLoader(
                self.train_dataset(),
                batch_size=self.batch_size,
                sampler=TrainSampler(per_process * self.batch_size, rank, world_size),
                collate_fn=collate_train,
                **common,
            )
        windows = self.windows(split)
        return DataLoader(
            EvaluationWindows(self.splits[split], windows),
            batch_sampler=rank_batches(evaluation_batches(windows, self.eval_batch_size), rank, world_size),
            collate_fn=collate_evaluation,
            **common,
        )

    def train_dataloader(self) -> DataLoader:
        """Random training windows: {"x": LongTensor[batch_size, seq_len]}.

        When Lightning resumes a run, the stream continues after the last sample trained on: a
        checkpoint always follows a whole optimizer step, so the batches done are global_step x
        accumulate_grad_batches (Lightning restores global_step before asking for the dataloader)."""
        loader = self.dataloader("train")
        trainer = self.trainer
        if trainer is not None and trainer.fit_loop.restarting:
            batches_done = trainer.global_step * trainer.accumulate_grad_batches
            loader.sampler.resume_at(batches_done * self.batch_size)
        return loader

    def val_dataloader(self) -> DataLoader:
        """Validation windows: {"x": LongTensor[B, L], "num_scored": LongTensor[B]}, L <= seq_len."""
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Test windows: {"x": LongTensor[B, L], "num_scored": LongTensor[B]}, L <= seq_len."""
        return self.dataloader("test")
