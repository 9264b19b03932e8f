"""ByteDataModule, the shared base of the byte datamodules: a corpus of byte documents, cached as
uint8 splits (``cache``), served as the training and evaluation windows of ``protocol``."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from .cache import (
    FORMAT_VERSION,
    build,
    cache_problem,
    digest,
    frozen_objects,
    progress_bar,
    source_records,
    write_corpus,
    write_splits,
)
from .datasets import (
    ByteSplit,
    EvaluationWindows,
    TrainSampler,
    TrainWindows,
    collate_evaluation,
    collate_train,
)
from .files import resolved_stats
from .pool import Part, Reader, Workers, default_workers
from .protocol import (
    SPLITS,
    check_alignment,
    evaluation_batches,
    evaluation_windows,
    name_keys,
    rank_batches,
    split_ranges,
    train_samples_per_rank,
    training_coverage,
    truncated_lengths,
)

log = logging.getLogger(__name__)


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world_size) of this process in torch.distributed, or (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def corpus_keys(parts: list[Part], names: list[str]) -> bytes:
    """``protocol.name_keys`` of ``names``, the names of the non-empty documents of ``parts`` in
    order: those the workers took as they decoded the parts, or, if a part has none (the parts
    the main process made), all taken here."""
    if not all(len(part.name_keys) == 32 * len(part.documents) for part in parts):
        return name_keys(names)
    lengths = np.fromiter((length for part in parts for _, length in part.documents), dtype=np.int64)
    keys = np.frombuffer(b"".join(part.name_keys for part in parts), dtype="S32")
    return keys[lengths > 0].tobytes()


class ByteDataModule(L.LightningDataModule):
    """A corpus of byte documents, cached as uint8 splits, served as training and evaluation windows.

    Subclasses implement ``documents()`` (name and bytes of every document), ``sources()`` (the files
    it reads) and, if they have options that change the bytes, ``cache_options()``. Modalities that
    decode files call ``reject()`` for a file they cannot read, and may decode them in the build's
    worker processes (``corpus_parts()`` with ``decoded_parts()``); they may also override
    ``split_transform()`` (what a document becomes once its split is known) and ``train_dataset()``.

    Split: with 3 or more documents, documents are ordered by the SHA-256 of their name; the first
    ceil(val_fraction * n) go to val, the next ceil(test_fraction * n) to test, the rest to train.
    With 1 or 2 documents (one big file such as enwik8), each document is cut contiguously instead:
    its first 1 - val_fraction - test_fraction to train, then val_fraction to val, the rest to test.
    Empty documents are dropped. Every split must end up with at least one byte (see
    ``protocol.split_ranges``).

    Cache: ``prepare_data()`` writes, once, ``{split}.bin`` (the split's documents end to end, uint8),
    ``{split}.docs.npy`` (int64 document offsets) and ``manifest.json`` into a directory named by a
    hash of the class, the options that change the bytes and the sources' paths, sizes and mtimes; it
    builds in a temporary sibling directory that is renamed into place, so a cache either is complete
    or does not exist (see ``cache``). Changing a source or an option gives a new directory.

    Training: an endless stream of windows of up to seq_len bytes, sample number i drawn from
    (seed, i) only (see ``protocol.training_window``: the window ends on a uniform byte of the
    training split and holds the up to seq_len bytes before it in its document, so every model,
    whatever its seq_len, draws documents in proportion to their length); an "epoch" is a fixed
    number of them, so runs are reproducible. The stream's position is the DataModule's state
    (``state_dict``), kept in every
    checkpoint, so a resumed run trains on the windows an uninterrupted one would.

    Evaluation: every byte of the split scored exactly once by windows of at most seq_len bytes that
    each score at most score_len bytes (see ``protocol.evaluation_windows``); batches hold windows of equal
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
        workers: int | None = None,
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
            workers: processes that decode the corpus's files while its cache is built (row files,
                images); None uses the cores this process may use, at most 4. The cache is the same
                byte for byte whatever the number (num_workers are the dataloader's).
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
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers} must be at least 1 (or None for the cores available)")
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
        self.workers = default_workers() if workers is None else workers
        # Show the build's progress bar: None for builds of 64 MB of sources or more.
        self.progress: bool | None = None
        self.empty_documents = 0
        self.splits: dict[str, ByteSplit] = {}
        self.manifest: dict[str, Any] = {}
        self.skipped: list[dict[str, str]] = []
        # (resolved path, stat) of every source while a build runs: what keys the cache, taken once.
        self._source_stats: list[tuple[str, os.stat_result]] | None = None
        self._resume_samples: int | None = None

    # The data's unit in bytes (a pixel or patch of pixels, a 16-bit sample): every window starts and
    # ends on one, in training and evaluation, so seq_len and score_len must be multiples of it.
    align: int = 1
    unit: str = "byte"

    def check_alignment(self) -> None:
        """One-line error unless seq_len and score_len are whole units (``align`` bytes) of the data."""
        check_alignment(self.align, self.unit, seq_len=self.seq_len, score_len=self.score_len)

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

    def corpus_parts(self, workers: Workers, scratch: Path, progress: Progress) -> list[Part]:
        """The corpus as parts, files holding its documents end to end, in order, what the build
        copies into the splits (see ``cache.write_splits``). Here the documents of
        ``document_chunks()``, written into one part file in ``scratch`` by this process; a
        modality that decodes many files has ``workers`` decode them (``decoded_parts``), and raw
        files can be parts themselves (``Part(source=True)``, see TextBytes)."""
        path = scratch / "corpus.bin"
        label = f"reading {type(self).__name__}"
        return [write_corpus(path, self.document_chunks(), progress, label, self.corpus_bytes())]

    def decoded_parts(
        self,
        reader: Reader,
        files: list[tuple[str, Path]],
        workers: Workers,
        scratch: Path,
        progress: Progress,
    ) -> list[Part]:
        """The parts of ``files`` (name, path; those of ``sources()``, in order) decoded by ``reader``
        in the workers, in order, each file or member they could not read passed to ``reject()`` in
        that order."""
        sizes = [stat.st_size for _, stat in self.source_stats()]
        if len(sizes) != len(files):
            raise ValueError(f"decoded_parts: {len(files)} files, but {len(sizes)} sources")
        task = progress.add_task(f"decoding {type(self).__name__}", total=sum(sizes))
        parts = []
        for part in workers.decode(reader, files, sizes, scratch):
            for rejected in part.rejected:
                self.reject(rejected.origin, rejected.reason)
            progress.update(task, advance=part.read)
            parts.append(part)
        return parts

    def split_transform(self) -> Callable[[str, np.ndarray], list[np.ndarray]] | None:
        """What one corpus document (or, for 1 or 2 documents, one contiguous piece of one) becomes in
        a split once the split is known, ``f(split, document) -> documents`` of the same bytes in
        all (a function the workers can be handed: module level or a ``functools.partial`` of one);
        None here, documents stay as they are."""
        return None

    def split_ranges(
        self, names: list[str], offsets: np.ndarray, keys: bytes | None = None
    ) -> dict[str, np.ndarray]:
        """The byte ranges of the corpus (int64 rows start, end) that become each split (see the
        class docstring; ``keys``: ``protocol.name_keys(names)`` if taken, as the build's workers
        do); a modality whose corpus has an official held-out split may use it instead."""
        return split_ranges(names, offsets, self.val_fraction, self.test_fraction, keys)

    def train_dataset(self) -> Dataset:
        """Training sample number i as a uint8 array of up to seq_len bytes, a function of (seed, i)
        only (``protocol.training_window``)."""
        return TrainWindows(self.splits["train"], self.seq_len, self.seed, self.align)

    def training_lengths(self) -> np.ndarray:
        """The lengths of the documents training windows are cut from (the training split's here)."""
        return self.splits["train"].lengths

    def training_coverage(self) -> dict[str, float]:
        """``protocol.training_coverage`` of the training documents, for the run manifest."""
        return training_coverage(self.training_lengths(), self.seq_len, self.align)

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

    def source_stats(self) -> list[tuple[str, os.stat_result]]:
        """(resolved path, stat) of every source file, taken once for a whole build (one system call
        a file: a corpus of many small files would otherwise spend more on them than on reading)."""
        return self._source_stats if self._source_stats is not None else resolved_stats(self.sources())

    @property
    def cache_path(self) -> Path:
        """The cache directory of the current sources and options."""
        key = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "format_version": FORMAT_VERSION,
            "options": self._options(),
            "sources": [[path, stat.st_size, stat.st_mtime_ns] for path, stat in self.source_stats()],
        }
        return self.cache_dir / f"{type(self).__name__.lower()}-{digest(key)}"

    @property
    def corpus_id(self) -> str:
        """What the cache holds, without the sources' sizes and times: caches of one corpus share it."""
        key = {
            "class": type(self).__qualname__,
            "options": self._options(),
            "sources": sorted(map(str, self.sources())),
        }
        return digest(key)

    def prepare_data(self) -> None:
        """Build the cache unless a complete, intact one exists.

        A cache whose files no longer match its manifest (truncated, edited, missing) is rebuilt, and
        a cache of the same corpus built from older versions of the sources is replaced, each with a
        one-line notice."""
        self._prepare()

    def _prepare(self) -> Path:
        # prepare_data, returning the cache directory; the sources are looked at once.
        with frozen_objects():
            self._source_stats = resolved_stats(self.sources())
            try:
                return self._build_unless_cached()
            finally:
                self._source_stats = None

    def _build_unless_cached(self) -> Path:
        final = self.cache_path
        problem = cache_problem(final)
        if problem is not None:
            if (final / "manifest.json").exists():
                log.warning("%s: %s; rebuilding it", final, problem)
            build(final, self.corpus_id, type(self).__name__, self.sources(), self._write_splits)
        return final

    def _progress(self) -> Progress:
        bar = progress_bar(sum(stat.st_size for _, stat in self.source_stats()))
        if self.progress is not None:
            bar.disable = not self.progress
        return bar

    def _write_splits(self, directory: Path) -> dict[str, Any]:
        """Write the split files into `directory` and return the manifest."""
        self.skipped = []
        scratch = directory / "parts"
        scratch.mkdir()
        with Workers(self.workers) as workers, self._progress() as progress:
            parts = self.corpus_parts(workers, scratch, progress)
            documents = [document for part in parts for document in part.documents]
            lengths = [length for _, length in documents if length]
            names = [name for name, length in documents if length]
            self.empty_documents = len(documents) - len(names)
            if self.empty_documents:
                log.warning("left out %d empty documents of %s", self.empty_documents, self._describe())
            if not names:
                note = self._skipped_note()
                raise ValueError(f"{self._describe()} holds no bytes: give it non-empty files{note}")
            if self.skipped:
                log.warning(
                    "skipped %d unreadable files of %s (on_error=skip); they are listed in %s",
                    len(self.skipped),
                    self._describe(),
                    self.cache_path / "manifest.json",
                )
            ranges = self.split_ranges(
                names, np.cumsum([0, *lengths], dtype=np.int64), corpus_keys(parts, names)
            )
            for split in SPLITS:
                if not len(ranges[split]):
                    raise ValueError(
                        f"split {split!r} of {self._describe()} would be empty ({len(names)} documents); "
                        "add documents or change val_fraction/test_fraction"
                    )
            counts, digests, files = write_splits(
                directory, parts, ranges, self.split_transform(), workers, progress
            )
            for part in parts:
                digests.update(part.digests)
            sources = source_records(self.source_stats(), self.sources(), digests, workers)
        scratch.rmdir()
        return {
            "format_version": FORMAT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "options": self._options(),
            "sources": sources,
            "splits": counts,
            "skipped": self.skipped,
            "empty_documents": self.empty_documents,
            "files": files,  # every split file's record, hashed by the workers, for build() to keep
        }

    def setup(self, stage: str | None = None) -> None:
        """Open the cached splits (building them first if needed, e.g. outside a Trainer)."""
        directory = self._prepare()
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.splits = {split: ByteSplit(directory, split) for split in SPLITS}
        if self.manifest.get("skipped"):
            log.warning(
                "%s was built without %d unreadable files (on_error=skip); see its manifest.json",
                directory,
                len(self.manifest["skipped"]),
            )

    def windows(self, split: str) -> np.ndarray:
        """Evaluation windows of a split: int64 rows (doc, start, end, num_scored), offsets in the doc."""
        lengths = truncated_lengths(self.splits[split].lengths, self.max_eval_bytes, self.align)
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
            length = train_samples_per_rank(self.train_samples_per_epoch, world_size, self.batch_size)
            return DataLoader(
                self.train_dataset(),
                batch_size=self.batch_size,
                sampler=TrainSampler(length, rank, world_size),
                collate_fn=functools.partial(collate_train, seq_len=self.seq_len),
                **common,
            )
        windows = self.windows(split)
        return DataLoader(
            EvaluationWindows(self.splits[split], windows),
            batch_sampler=rank_batches(evaluation_batches(windows, self.eval_batch_size), rank, world_size),
            collate_fn=collate_evaluation,
            **common,
        )

    def _samples_trained(self) -> int:
        # Samples this process has trained on: a checkpoint always follows a whole optimizer step, so
        # the batches done are global_step x accumulate_grad_batches.
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches * self.batch_size

    def state_dict(self) -> dict[str, int]:
        """The training stream's position, which Lightning keeps in every checkpoint: the samples each
        process has trained on."""
        return {} if self.trainer is None else {"train_samples_done": self._samples_trained()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores the state of a checkpoint it resumes: the next training dataloader goes
        on after the last sample trained on."""
        self._resume_samples = state_dict["train_samples_done"]

    def train_dataloader(self) -> DataLoader:
        """Random training windows: {"x": LongTensor[batch_size, L], "lengths": LongTensor[batch_size]},
        L <= seq_len, shorter windows padded on the right (``datasets.collate_train``).

        When Lightning resumes a run, the stream continues after the last sample trained on (see
        ``load_state_dict``), so no window is repeated or skipped."""
        loader = self.dataloader("train")
        samples_done = self._resume_samples
        if samples_done is None and self.trainer is not None:
            # A checkpoint written before the DataModule kept a state has none to load: the trainer's
            # restored global_step gives the same position (0 in a run that is not resumed).
            samples_done = self._samples_trained()
        loader.sampler.resume_at(samples_done or 0)
        self._resume_samples = 0  # a dataloader reloaded later starts at its epoch's beginning
        return loader

    def val_dataloader(self) -> DataLoader:
        """Validation windows: {"x": LongTensor[B, L], "num_scored": LongTensor[B]}, L <= seq_len."""
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Test windows: {"x": LongTensor[B, L], "num_scored": LongTensor[B]}, L <= seq_len."""
        return self.dataloader("test")
