"""A cache build's processes: a pool over groups of files whose results come back in a fixed order.

A decoding task decodes one group of consecutive files (``sized_groups``) with a ``reader`` and writes
their documents end to end into a part file of the build's temporary folder; it returns the
documents' names, lengths and SHA-256, the SHA-256 of each file and the files or members it could
not read.
The main process takes the parts in the order of the groups, whatever order the workers finish in,
so the corpus is byte for byte the same with 1 worker (the same tasks, in this process) as with N.
The same pool then copies the parts (or raw source files) into the split files
(``cache.write_splits``).
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

from .files import BUFFER_BYTES
from .protocol import name_keys

# A group holds consecutive files up to this many, or up to this many source bytes: big enough that
# a task's start-up is noise beside its work, small enough that the cores share the corpus evenly.
GROUP_FILES = 64
GROUP_BYTES = 16 * 2**20


def default_workers() -> int:
    """Worker processes of a cache build by default: the cores this process may use, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


class Unreadable(Exception):
    """Raised by a reader for a file it cannot read; its message is the reason (the file is named by
    the pool). The documents the file gave before the error are dropped."""


@dataclass(frozen=True)
class Rejected:
    """What a reader yields for one member of a file that it cannot read (an image of a tar shard),
    before going on with the next: where it is and why."""

    origin: str
    reason: str


@dataclass(frozen=True)
class Rows:
    """What a reader may yield for many documents at once (a batch of a row file's rows): their
    names, their lengths and their bytes end to end, written in one call."""

    names: list[str]
    lengths: list[int]
    data: bytes | memoryview


# A reader turns one file (its name relative to the corpus root, its path) into documents, each
# (name, its bytes in pieces) or many as ``Rows``, or ``Rejected`` members; it raises
# ``Unreadable`` for a bad file.
Reader = Callable[[str, Path], Iterable[tuple[str, Iterable[bytes]] | Rows | Rejected]]


@dataclass
class Part:
    """A file holding documents end to end from its first byte: a part file a task wrote (deleted
    once copied into the splits), or, with ``source``, a raw source file that is one document whole
    (read straight into its split, hashed as it is read). ``documents``: every document's (name,
    length; empty ones too); ``digests``: the SHA-256 of the source files the task read;
    ``rejected``: the files or members it could not read; ``document_digests``: every document's
    SHA-256, from which the manifest's hash of a split file is made (``cache.documents_sha256``);
    ``name_keys``: what orders them for the split (``protocol.name_keys``), if taken."""

    path: Path
    documents: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    source: bool = False
    read: int = 0  # the bytes of the source files decoded into it
    # The SHA-256 (32 bytes) of every document, hashed as it was written (a raw source's is its
    # file's, known once the copy has read it).
    document_digests: list[bytes] = field(default_factory=list)
    # ``protocol.name_keys`` of every document's name, taken where the names were made (empty when
    # not taken: the build takes them then).
    name_keys: bytearray = field(default_factory=bytearray)

    @property
    def size(self) -> int:
        documents = self.documents
        # One document for a raw file: read without a sum over a generator, 12,000 times a build.
        return documents[0][1] if len(documents) == 1 else sum(length for _, length in documents)


def sized_groups(sizes: Sequence[int], workers: int = 1, most_files: int = GROUP_FILES) -> list[range]:
    """Consecutive indices in groups of at most ``most_files`` items or GROUP_BYTES bytes (a larger
    item is a group of its own), smaller for a small corpus so that every worker gets about 4 groups.
    The groups change no byte of the cache, only how the work is shared."""
    share = 4 * workers
    most_files = max(1, min(most_files, -(-len(sizes) // share)))
    most_bytes = max(1, min(GROUP_BYTES, sum(sizes) // share))
    starts: list[int] = []
    size = 0
    for i, item in enumerate(sizes):
        if not starts or i - starts[-1] >= most_files or size + item > most_bytes:
            starts.append(i)
            size = 0
        size += item
    return [range(lo, hi) for lo, hi in zip(starts, [*starts[1:], len(sizes)], strict=True)]


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file, read in pieces."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hashed_rows(rows: Rows) -> list[bytes]:
    """The SHA-256 of every row of a batch, each hashed where it lies in the batch's bytes."""
    data, start, digests = memoryview(rows.data), 0, []
    for length in rows.lengths:
        digests.append(hashlib.sha256(data[start : start + length]).digest())
        start += length
    return digests


def written_document(f: BinaryIO, chunks: Iterable[bytes]) -> tuple[int, bytes]:
    """Write a document's pieces to ``f``: its length and SHA-256."""
    sha256, length = hashlib.sha256(), 0
    for data in chunks:
        length += f.write(data)
        sha256.update(data)
    return length, sha256.digest()


def decode_group(reader: Reader, group: list[tuple[str, Path]], part_path: Path) -> Part:
    """Decode the files of one group into ``part_path``, hashing each document as it is written,
    each file, and each document's name for the split (what a worker runs)."""
    part = Part(part_path)
    with open(part_path, "wb", buffering=BUFFER_BYTES) as f:
        for name, path in group:
            start, documents, rejected = f.tell(), len(part.documents), len(part.rejected)
            try:
                for item in reader(name, path):
                    if isinstance(item, Rejected):
                        part.rejected.append(item)
                    elif isinstance(item, Rows):
                        f.write(item.data)
                        part.documents.extend(zip(item.names, item.lengths, strict=True))
                        part.document_digests.extend(hashed_rows(item))
                        part.name_keys += name_keys(item.names)
                    else:
                        document, chunks = item
                        length, digest = written_document(f, chunks)
                        part.documents.append((document, length))
                        part.document_digests.append(digest)
                        part.name_keys += name_keys([document])
            except Unreadable as error:
                f.seek(start)
                f.truncate()
                del part.documents[documents:], part.rejected[rejected:], part.document_digests[documents:]
                del part.name_keys[32 * documents :]
                part.rejected.append(Rejected(str(path), str(error)))
            # Hashed here, beside its decoding, so the main process never reads a source file.
            part.digests[str(path)] = file_sha256(path)
    return part


def read_documents(
    reader: Reader, files: Iterable[tuple[str, Path]], reject: Callable[[str, str], None]
) -> Iterator[tuple[str, bytes]]:
    """Every document of ``files`` (empty ones included) as (name, bytes), read in this process:
    what ``documents()`` gives without building a cache."""
    for name, path in files:
        try:
            items = list(reader(name, path))
        except Unreadable as error:
            reject(str(path), str(error))
            continue
        for item in items:
            if isinstance(item, Rejected):
                reject(item.origin, item.reason)
            elif isinstance(item, Rows):
                data, start = memoryview(item.data), 0
                for row, length in zip(item.names, item.lengths, strict=True):
                    yield row, bytes(data[start : start + length])
                    start += length
            else:
                yield item[0], b"".join(item[1])


def _start_worker() -> None:
    # N workers on N cores: torch's own threads (image resizing) would only oversubscribe them.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    # The build forks with collection off in the main process (cache.frozen_objects); a worker that
    # decodes a large corpus collects as any process does.
    gc.enable()


class Workers:
    """The processes of one cache build, started on the first ``map`` of two or more tasks and
    stopped on leaving the ``with`` block; with ``count`` 1 every task runs in this process."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self._pool is not None:
            # After a build every task is done: the workers exit meanwhile, without this process
            # waiting for them (about 15 ms). After an error the running tasks are waited for, so that
            # none still writes into the build's folder as it is removed.
            self._pool.shutdown(wait=kind is not None, cancel_futures=True)
            self._pool = None

    def map(self, function: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        """``function(*task)`` of every task, in the order of the tasks, at most 2 x count of them
        running or done ahead of the caller (a decoding task's part file waits on disk until taken)."""
        if self.count <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield function(*task)
            return
        if self._pool is None:
            # fork on Linux, as torch's DataLoader does: the children start at once with the
            # libraries the parent loaded; spawn elsewhere (fork is unsafe on macOS).
            context = get_context("fork" if sys.platform == "linux" else "spawn")
            self._pool = ProcessPoolExecutor(self.count, mp_context=context, initializer=_start_worker)
        pending: deque[Future[Any]] = deque()
        for task in tasks:
            pending.append(self._pool.submit(function, *task))
            if len(pending) >= 2 * self.count:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def decode(
        self, reader: Reader, files: Sequence[tuple[str, Path]], sizes: Sequence[int], scratch: Path
    ) -> Iterator[Part]:
        """The parts of every group of ``files`` (of ``sizes`` bytes: the build's stats, not taken
        again), in order, their part files in ``scratch``; each part's ``read`` is its files' bytes."""
        groups = sized_groups(sizes, self.count)
        tasks = [
            (reader, [files[i] for i in group], scratch / f"part{n:06d}.bin")
            for n, group in enumerate(groups)
        ]
        for group, part in zip(groups, self.map(decode_group, tasks), strict=True):
            part.read = sum(sizes[i] for i in group)
            yield part
