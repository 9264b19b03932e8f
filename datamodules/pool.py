"""Decoding a corpus's files on every core: a process pool over groups of files, in a fixed order.

A task decodes one group of consecutive files (``file_groups``) with a ``reader`` and writes their
documents end to end into a part file of the build's temporary folder; it returns the documents'
names and lengths, the files or members it could not read. The
main process reads the parts back in the order of the groups, whatever order the workers finish in,
so the corpus is byte for byte the same with 1 worker (the same tasks, in this process) as with N.
At most ``2 * workers`` parts are ahead of the main process, so the build's memory and scratch space
stay bounded by a few groups whatever the size of the corpus.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

from .files import BUFFER_BYTES, CHUNK_BYTES

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
    """What one task wrote: its part file, every document's (name, length; empty ones too) and the
    files or members it could not read."""

    path: Path
    documents: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def file_groups(files: Sequence[tuple[str, Path]], workers: int = 1) -> list[list[tuple[str, Path]]]:
    """Consecutive (name, path) files in groups of at most GROUP_FILES files or GROUP_BYTES bytes (a
    larger file is a group of its own), smaller for a small corpus so that every worker gets about
    4 groups. The groups change no byte of the corpus, only how the work is shared."""
    sizes = [path.stat().st_size for _, path in files]
    share = 4 * workers
    most_files = max(1, min(GROUP_FILES, -(-len(files) // share)))
    most_bytes = max(1, min(GROUP_BYTES, sum(sizes) // share))
    groups: list[list[tuple[str, Path]]] = []
    size = 0
    for (name, path), file_size in zip(files, sizes, strict=True):
        if not groups or len(groups[-1]) >= most_files or size + file_size > most_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, path))
        size += file_size
    return groups


def decode_group(reader: Reader, group: list[tuple[str, Path]], part_path: Path) -> Part:
    """Decode the files of one group into ``part_path`` (what a worker runs)."""
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
                    else:
                        document, chunks = item
                        part.documents.append((document, sum(f.write(data) for data in chunks)))
            except Unreadable as error:
                f.seek(start)
                f.truncate()
                del part.documents[documents:], part.rejected[rejected:]
                part.rejected.append(Rejected(str(path), str(error)))
    return part


def _one_thread() -> None:
    # N workers on N cores: torch's own threads (image resizing) would only oversubscribe them.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def decoded_parts(
    reader: Reader, files: Sequence[tuple[str, Path]], workers: int, scratch: Path
) -> Iterator[Part]:
    """The parts of every group of ``files``, in order, decoded by ``workers`` processes (1: in this
    process); the caller reads each part, then deletes it."""
    groups = file_groups(files, workers)
    paths = [scratch / f"part{i:06d}.bin" for i in range(len(groups))]
    if workers <= 1 or len(groups) <= 1:
        for group, path in zip(groups, paths, strict=True):
            yield decode_group(reader, group, path)
        return
    # fork on Linux, as torch's DataLoader does: the children start at once with the libraries the
    # parent loaded; spawn elsewhere (fork is unsafe on macOS).
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        pending: deque[Future[Part]] = deque()
        try:
            for i, (group, path) in enumerate(zip(groups, paths, strict=True)):
                pending.append(pool.submit(decode_group, reader, group, path))
                if i + 1 >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def part_documents(part: Part) -> Iterator[tuple[str, Iterable[bytes]]]:
    """The documents of a part file as (name, its bytes in pieces); the file is deleted once read.
    Consecutive documents are read together, up to CHUNK_BYTES in one read, each a slice of it (most
    are far smaller than a read); a larger document is read in pieces of its own."""
    with open(part.path, "rb", buffering=BUFFER_BYTES) as f:
        batch: list[tuple[str, int]] = []
        batch_bytes = 0
        for name, size in part.documents:
            if batch and batch_bytes + size > CHUNK_BYTES:
                yield from _sliced(f, batch, batch_bytes)
                batch, batch_bytes = [], 0
            if size > CHUNK_BYTES:
                yield name, _pieces(f, size)
            else:
                batch.append((name, size))
                batch_bytes += size
        yield from _sliced(f, batch, batch_bytes)
    part.path.unlink()


def _sliced(
    f: BinaryIO, documents: list[tuple[str, int]], size: int
) -> Iterator[tuple[str, Iterable[bytes]]]:
    # One read of the next ``size`` bytes, which hold these documents end to end.
    data = memoryview(f.read(size))
    if len(data) < size:
        raise OSError(f"{f.name} ended {size - len(data)} bytes early")
    start = 0
    for name, length in documents:
        yield name, (data[start : start + length],)
        start += length


def _pieces(f: BinaryIO, size: int) -> Iterator[bytes]:
    while size > 0:
        data = f.read(min(size, CHUNK_BYTES))
        if not data:
            raise OSError(f"{f.name} ended {size} bytes early")
        size -= len(data)
        yield data


def pooled_documents(
    reader: Reader,
    files: Sequence[tuple[str, Path]],
    workers: int,
    scratch: Path | None,
    reject: Callable[[str, str], None],
) -> Iterator[tuple[str, Iterable[bytes]]]:
    """Every document of ``files`` (empty ones included) decoded in the pool, in order, as (name, its
    bytes in pieces); ``reject(origin, reason)`` hears of every file or member that could not be
    read. Part files live in a folder inside ``scratch`` (the build's temporary folder)."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix="parts.") as folder:
        for part in decoded_parts(reader, files, workers, Path(folder)):
            for rejected in part.rejected:
                reject(rejected.origin, rejected.reason)
            yield from part_documents(part)
