"""Building and checking the cache of a corpus: uint8 split files, published whole or not at all.

A cache directory holds ``{split}.bin`` (the split's documents end to end, uint8), ``{split}.docs.npy``
(int64 document offsets) and ``manifest.json`` (what was built from what, and the size, modification
time and hash of every file: a split file's ``documents_sha256``, the SHA-256 of its documents'
SHA-256 digests, hashed as the documents were written; a docs file's ``sha256``). It is built in a
temporary sibling directory that is renamed into place once complete, so a cache either is complete
or does not exist; a build killed part-way leaves only its temporary directory, which the next build
on the same host removes. The corpus comes as parts (files holding documents end to end: decoded
part files, or raw source files); once every document's split is known, the workers copy the parts
straight into split files of known size with positional writes (``write_splits``), in pieces, so the
build's memory does not grow with the corpus and no byte passes through the main process.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .files import BUFFER_BYTES, CHUNK_BYTES
from .pool import Part, Workers, file_sha256, sized_groups, written_document

# 2: the split files were hashed in 16 MiB blocks, the manifest lists one entry a line; 3: a split
# file's hash is its documents' (``documents_sha256``), each hashed as it is written.
FORMAT_VERSION = 3
# A task of the copy into the splits holds up to this many parts (raw files).
COPY_GROUP_FILES = 4096
# Below this many source bytes a build takes about a second, so a progress bar would only flicker.
PROGRESS_MIN_BYTES = 64 * 2**20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


def digest(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable key: what names a cache and identifies a corpus."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def documents_sha256(digests: Iterable[bytes]) -> str:
    """A split file's hash in the manifest: the SHA-256 of the 32-byte SHA-256 digests of its
    documents, in order. The workers hash each document as they write it (a raw file's digest is the
    file's own), so the build never reads a split file back to hash it."""
    return hashlib.sha256(b"".join(digests)).hexdigest()


def split_documents_sha256(split_path: Path, docs_path: Path) -> str:
    """``documents_sha256`` of a split file as it is now, its documents cut by its docs file."""
    offsets = np.load(docs_path).tolist()
    if offsets[-1] == 0:
        return documents_sha256([])
    data = np.memmap(split_path, dtype=np.uint8, mode="r")
    return documents_sha256(
        hashlib.sha256(data[lo:hi]).digest() for lo, hi in zip(offsets, offsets[1:], strict=False)
    )


def file_record(path: Path, **hashes: str) -> dict[str, Any]:
    """Size, modification time and hash of a cache file, as the manifest keeps it: ``hashes`` if
    given (a split file's ``documents_sha256``), else the file's SHA-256."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **(hashes or {"sha256": file_sha256(path)})}


def current_hash(directory: Path, name: str, expected: Mapping[str, Any]) -> bool:
    """Whether a cache file's hash now is the one its manifest records."""
    if "documents_sha256" in expected:
        docs = directory / f"{name.removesuffix('.bin')}.docs.npy"
        return split_documents_sha256(directory / name, docs) == expected["documents_sha256"]
    return "sha256" in expected and file_sha256(directory / name) == expected["sha256"]


def source_records(
    sources: Sequence[tuple[str, os.stat_result]],
    paths: Sequence[Path],
    digests: Mapping[str, str],
    workers: Workers,
) -> list[dict[str, Any]]:
    """Path (resolved), size and SHA-256 of every source file, as a manifest records what it was
    built from; ``digests`` holds the SHA-256 of the files the workers hashed as they read them (by
    path), the others are read here, by the workers too."""
    texts = list(map(str, paths))
    missing = [text for text in texts if text not in digests]
    read = dict(zip(missing, workers.map(file_sha256, [(text,) for text in missing]), strict=True))
    return [
        {"path": resolved_path, "size": stat.st_size, "sha256": digests.get(text) or read[text]}
        for (resolved_path, stat), text in zip(sources, texts, strict=True)
    ]


def entries_text(entries: list[Any]) -> str:
    """The entries of a list as JSON, one a line, indented 4: json's C encoder writes the whole list
    in one call (a call an entry, each building its encoder, cost more than the rest of a build of
    many small files), then the list is cut between its mappings. A quote inside a JSON string is
    always escaped, so ``}, {"`` is found only where one mapping ends and the next begins (or
    between the mappings of a list inside an entry, which then spans lines: still the same JSON)."""
    if not all(type(entry) is dict and entry for entry in entries):
        return ",\n".join(f"    {json.dumps(entry)}" for entry in entries)
    return "    " + json.dumps(entries)[1:-1].replace('}, {"', '},\n    {"')


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """A manifest as JSON, one line a key and, for a list or a mapping, one line an entry (a source,
    a cache file): readable, and written by json's C encoder (indent= would use the pure-Python one,
    which for a corpus of many files costs more than reading them)."""

    def value(item: Any) -> str:
        if isinstance(item, list) and item:
            return "[\n" + entries_text(item) + "\n  ]"
        if isinstance(item, dict) and item:
            entries = (f"    {json.dumps(str(k))}: {json.dumps(v)}" for k, v in item.items())
            return "{\n" + ",\n".join(entries) + "\n  }"
        return json.dumps(item)

    return (
        "{\n" + ",\n".join(f"  {json.dumps(key)}: {value(item)}" for key, item in manifest.items()) + "\n}\n"
    )


def stored_corpus_id(directory: Path) -> str | None:
    """The corpus id a cache directory's manifest records; None without a readable manifest."""
    try:
        return json.loads((directory / "manifest.json").read_text()).get("corpus_id")
    except (OSError, ValueError):
        return None


def cache_problem(directory: Path) -> str | None:
    """Why a cache directory cannot be used as it is, or None when it is complete and intact.

    Sizes are checked every time; a file whose size or modification time moved is hashed and compared
    with the manifest's hash (the docs files first, since a split file's hash is taken by its
    documents), so a truncated or edited cache is caught without rehashing every run."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        return "no complete cache"
    except ValueError:
        return "its manifest.json is unreadable"
    files = manifest.get("files", {})
    for name in sorted(files, key=lambda name: name.endswith(".bin")):
        path, expected = directory / name, files[name]
        if not path.exists():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != expected["size"]:
            return f"{name} has {stat.st_size} bytes, its manifest says {expected['size']}"
        if stat.st_mtime_ns != expected["mtime_ns"] and not current_hash(directory, name, expected):
            return f"{name} was modified after the cache was built"
    return None


def build_host() -> str:
    """This host's name with its dots replaced, so it is one field of a temporary build's name."""
    return socket.gethostname().replace(".", "_")


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this id runs (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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


@contextlib.contextmanager
def frozen_objects() -> Iterator[None]:
    """The objects alive now (torch's and Lightning's, millions of them) left out of garbage
    collection until the block ends, and no collection in this process meanwhile: a build allocates
    an object or more a source file and a document, which sets off full collections that would each
    walk them all (0.2 s apiece, a third of a build of 12,000 files), and then its own, none of them
    in a cycle (another 8% of the main process's work for 12,000 files). The workers it forks share
    the frozen pages without touching them (``gc.freeze``) and collect as usual (``pool``)."""
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


def build(
    final: Path, corpus_id: str, label: str, sources: Sequence[Path], write: Callable[[Path], dict[str, Any]]
) -> None:
    """Build the cache directory ``final`` (named ``KIND-DIGEST``) of the corpus ``corpus_id``.

    ``write(directory)`` writes the split files into a fresh temporary sibling and returns the
    manifest (its "files" may hold the records of files it hashed as it wrote them, which are then
    not read again), which gets the corpus id and every file's record and is written last; the directory is
    then renamed into place. On any failure the temporary directory is removed and the previous cache
    kept; a full disk raises one line naming the space needed. Caches of the same corpus built from
    older versions of its sources are replaced, each with a one-line notice.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    kind = final.name.rsplit("-", 1)[0]
    siblings = final.parent.glob(f"{kind}-*")
    stale = [d for d in siblings if d != final and stored_corpus_id(d) == corpus_id]
    for old in stale:
        log.warning("the sources of %s changed since it was built; building %s instead", old, final.name)
    log.info("building the %s cache in %s", label, final)
    remove_abandoned_builds(final)
    prefix = f".{final.name}.{build_host()}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    try:
        manifest = write(tmp)
        written = manifest.pop("files", {})
        manifest["corpus_id"] = corpus_id
        files = sorted(tmp.iterdir())
        manifest["files"] = {f.name: written.get(f.name) or file_record(f) for f in files}
        (tmp / "manifest.json").write_text(manifest_text(manifest))
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
            raise disk_full(final, error, label, sources) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in stale:
        shutil.rmtree(old, ignore_errors=True)


def disk_full(final: Path, error: OSError, label: str, sources: Sequence[Path]) -> OSError:
    """One line for a build that ran out of space: the cache, the space it needs (at most the corpus
    twice: its decoded parts, then its splits, before the parts are deleted) and what is free."""
    needed = 2 * sum(path.stat().st_size for path in sources)
    free = shutil.disk_usage(final.parent).free
    message = (
        f"no space left on device building the {label} cache {final}: it needs about "
        f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free; any previous cache is kept, free some space "
        "(or set cache_dir / BYTELAB_CACHE to a larger disk) and run again"
    )
    return OSError(error.errno, message, str(final))


def progress_bar(total_bytes: int, min_bytes: int = PROGRESS_MIN_BYTES) -> Progress:
    """The progress bar of work on ``total_bytes`` bytes (a build's source bytes), hidden below
    ``min_bytes``, work too short for a bar."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=total_bytes < min_bytes,
    )


def write_corpus(
    path: Path,
    documents: Iterable[tuple[str, Iterable[bytes]]],
    progress: Progress,
    description: str,
    total: int | None,
) -> Part:
    """Write every document (name, its bytes in pieces) end to end into `path`, hashing each, counting
    the bytes on a task of ``progress`` (``total`` of them, if known) a BUFFER_BYTES or more at a
    time (the bar redraws a few times a second, an update per small document would only cost); the
    part it is, every document listed (name, length), empty ones included."""
    task = progress.add_task(description, total=total)
    part = Part(path)
    unreported = 0

    def reported(chunks: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal unreported
        for data in chunks:
            yield data
            unreported += len(data)
            if unreported >= BUFFER_BYTES:
                progress.update(task, advance=unreported)
                unreported = 0

    with open(path, "wb", buffering=BUFFER_BYTES) as f:
        for name, chunks in documents:
            length, digest = written_document(f, reported(chunks))
            part.documents.append((name, length))
            part.document_digests.append(digest)
    progress.update(task, advance=unreported)
    return part


# What a task copies, one row a piece: where its bytes are in their part (file offset, length), and
# where they go (split number, offset in the split file), the number of the range it comes from, and
# whether the copy hashes it (a range that is not a whole document, whose digest no one has yet).
OFFSET, LENGTH, SPLIT, DEST, RANGE, HASHED = range(6)


def placed_pieces(
    sizes: Sequence[int],
    ranges: Mapping[str, Sequence[tuple[int, int]]],
    merge: bool,
    hashed: np.ndarray | None = None,
) -> np.ndarray:
    """Every piece of every split, int64 rows (part, OFFSET, LENGTH, SPLIT, DEST, RANGE, HASHED)
    sorted by part and offset: the split's byte ranges of the corpus (its parts, of ``sizes`` bytes
    each, end to end) laid end to end in the split file, each in the part holding it. ``hashed``
    (one bool a range, the splits' ranges in order) marks the ranges the copy hashes. With ``merge``
    the ranges of a split that follow each other in one part (most of the training split's
    documents) are one piece, a hashed range always one of its own."""
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    columns = []
    for number, split in enumerate(ranges):
        bounds = np.asarray(ranges[split], dtype=np.int64).reshape(-1, 2)
        lengths = bounds[:, 1] - bounds[:, 0]
        dest = np.cumsum(lengths) - lengths
        columns.append(np.column_stack([bounds, np.full(len(bounds), number), dest]))
    table = np.concatenate(columns) if columns else np.zeros((0, 4), dtype=np.int64)
    lo, hi, split, dest = table.T
    index = np.arange(len(table))
    hashed = np.zeros(len(table), dtype=bool) if hashed is None else np.asarray(hashed, dtype=bool)
    part = np.searchsorted(starts, lo, side="right") - 1
    if merge and len(table):
        first = np.ones(len(table), dtype=bool)
        first[1:] = (lo[1:] != hi[:-1]) | (part[1:] != part[:-1]) | (split[1:] != split[:-1])
        first[1:] |= hashed[1:] | hashed[:-1]
        heads = np.flatnonzero(first)
        tails = np.append(heads[1:] - 1, len(table) - 1)
        lo, hi, split, dest, part, index = lo[heads], hi[tails], split[heads], dest[heads], part[heads], heads
        hashed = hashed[heads]
    pieces = np.column_stack([part, lo - starts[part], hi - lo, split, dest, index, hashed]).astype(np.int64)
    return pieces[np.lexsort((pieces[:, 1], pieces[:, 0]))]


class SplitWriter:
    """Positional writes into the split files, so that many processes write them at once, each
    piece at its place; writes that follow each other in one file are gathered up to BUFFER_BYTES
    (a small document is then a copy, not a system call)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.targets = [os.open(path, os.O_WRONLY) for path in paths]
        self.buffer = bytearray()
        self.split, self.dest = -1, -1  # where the buffer goes

    def write(self, data: bytes | memoryview, split: int, dest: int) -> None:
        if split != self.split or dest != self.dest + len(self.buffer):
            self.flush()
            self.split, self.dest = split, dest
        if not self.buffer and len(data) >= BUFFER_BYTES:
            self._pwrite(data, dest)
            self.dest = dest + len(data)
            return
        self.buffer += data
        if len(self.buffer) >= BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self._pwrite(self.buffer, self.dest)
            self.dest += len(self.buffer)
            self.buffer.clear()

    def _pwrite(self, data: bytes | bytearray | memoryview, dest: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.targets[self.split], view, dest)
            view, dest = view[written:], dest + written

    def close(self) -> None:
        for target in self.targets:
            os.close(target)


def copy_parts(
    split_paths: list[str],
    items: list[tuple[str, int, bool, int]],
    pieces: np.ndarray,
    transform: Callable[[str, np.ndarray], list[np.ndarray]] | None,
) -> tuple[dict[str, str], dict[int, list[int]], dict[int, list[bytes]], int]:
    """Copy the pieces of some parts into the split files (what a worker runs). Each item is a
    part's path, size, whether it is a raw source file, and how many of the ``pieces`` (rows
    OFFSET..HASHED, each part's by offset, one part after the other) are its. A source file is read
    whole, in order, and hashed as it is read; one whose size moved since the build began stops it.
    With ``transform`` each piece (one document) becomes ``transform(split, its bytes)``, written end
    to end. A part file (not a source) is deleted once copied. Returns the sources' SHA-256 (by
    path), each transformed range's document lengths and the SHA-256 of the documents of every
    transformed or HASHED range (by range number), and the bytes copied."""
    names = [Path(path).name.removesuffix(".bin") for path in split_paths]
    writer = SplitWriter(split_paths)
    digests: dict[str, str] = {}
    lengths: dict[int, list[int]] = {}
    range_digests: dict[int, list[bytes]] = {}
    copied = 0
    rows_of_task = iter(pieces.tolist())
    try:
        for path, size, source, count in items:
            rows = [next(rows_of_task) for _ in range(count)]
            with open(path, "rb", buffering=0) as f:
                if source and size <= CHUNK_BYTES:
                    # A small file in one read (one byte more: a file that grew is caught here).
                    data = memoryview(f.read(size + 1))
                    if len(data) != size:
                        raise OSError(f"{path} changed while the cache was built from it; build again")
                    digests[path] = hashlib.sha256(data).hexdigest()
                    for offset, length, split, dest, number, hashed in rows:
                        writer.write(data[offset : offset + length], split, dest)
                        if hashed:
                            range_digests[number] = [hashlib.sha256(data[offset : offset + length]).digest()]
                elif transform is not None:
                    for offset, length, split, dest, number, _ in rows:
                        f.seek(offset)
                        produced = transform(
                            names[split], np.frombuffer(read_exactly(f, length), dtype=np.uint8)
                        )
                        lengths[number] = [len(piece) for piece in produced]
                        if sum(lengths[number]) != length:
                            raise ValueError(
                                f"the split transform changed a document's length ({length} bytes)"
                            )
                        range_digests[number] = [hashlib.sha256(piece).digest() for piece in produced]
                        for piece in produced:
                            writer.write(piece.tobytes(), split, dest)
                            dest += len(piece)
                else:
                    sha256 = hashlib.sha256() if source else None
                    for offset, length, split, dest, number, hashed in rows:
                        f.seek(offset)
                        piece_sha256 = hashlib.sha256() if hashed else None
                        for data in read_pieces(f, length):
                            if sha256 is not None:
                                sha256.update(data)
                            if piece_sha256 is not None:
                                piece_sha256.update(data)
                            writer.write(data, split, dest)
                            dest += len(data)
                        if piece_sha256 is not None:
                            range_digests[number] = [piece_sha256.digest()]
                    if sha256 is not None:
                        if sum(row[1] for row in rows) != size or f.read(1):
                            raise OSError(f"{path} changed while the cache was built from it; build again")
                        digests[path] = sha256.hexdigest()
            if not source:
                # Here rather than in the main process, which would free the pages alone.
                os.unlink(path)
            copied += size
        writer.flush()
    finally:
        writer.close()
    return digests, lengths, range_digests, copied


def read_pieces(f: BinaryIO, length: int) -> Iterator[bytes]:
    """The next ``length`` bytes of a file in pieces of up to CHUNK_BYTES, or an OSError naming it if
    it ends first."""
    while length:
        data = f.read(min(length, CHUNK_BYTES))
        if not data:
            raise OSError(f"{f.name} ended {length} bytes early")
        length -= len(data)
        yield data


def read_exactly(f: BinaryIO, length: int) -> bytes:
    """The next ``length`` bytes of a file, or an OSError naming it if it ends first."""
    data = f.read(length)
    if len(data) < length:
        raise OSError(f"{f.name} ended {length - len(data)} bytes early")
    return data


def whole_documents(parts: Sequence[Part], ranges: Mapping[str, Sequence[tuple[int, int]]]) -> np.ndarray:
    """For every range of every split (in order), the number of the non-empty document of ``parts``
    it is, or -1 for a range that is not a whole document (a piece of one of 1 or 2 documents)."""
    lengths = [length for part in parts for _, length in part.documents if length]
    starts = np.cumsum([0, *lengths], dtype=np.int64)
    bounds = np.concatenate(
        [np.asarray(ranges[split], dtype=np.int64).reshape(-1, 2) for split in ranges] or [np.zeros((0, 2))]
    ).astype(np.int64)
    document = np.searchsorted(starts, bounds[:, 0], side="right") - 1
    whole = (starts[document] == bounds[:, 0]) & (
        starts[np.minimum(document + 1, len(lengths))] == bounds[:, 1]
    )
    return np.where(whole, document, -1)


def non_empty_digests(
    parts: Sequence[Part], paths: Sequence[str], sizes: Sequence[int], source_digests: Mapping[str, str]
) -> bytes:
    """The SHA-256 of every non-empty document of ``parts`` (at ``paths``, of ``sizes`` bytes), in
    order, end to end: a part's own digests, or a raw source file's (the document it is whole),
    hashed as the copy read it (hexadecimal, turned to bytes a run of sources at a time)."""
    digests: list[bytes] = []
    sources: list[str] = []
    for part, path, size in zip(parts, paths, sizes, strict=True):
        if part.source:
            if size:
                sources.append(source_digests[path])
            continue
        digests.append(bytes.fromhex("".join(sources)))
        sources = []
        digests.extend(
            digest
            for (_, length), digest in zip(part.documents, part.document_digests, strict=True)
            if length
        )
    digests.append(bytes.fromhex("".join(sources)))
    return b"".join(digests)


def write_splits(
    directory: Path,
    parts: Sequence[Part],
    ranges: Mapping[str, Sequence[tuple[int, int]]],
    transform: Callable[[str, np.ndarray], list[np.ndarray]] | None,
    workers: Workers,
    progress: Progress,
) -> tuple[dict[str, dict[str, int]], dict[str, str], dict[str, dict[str, Any]]]:
    """Write ``{split}.bin`` and ``{split}.docs.npy`` of every split from the byte ranges of the corpus
    held by ``parts`` (``placed_pieces``), by the workers, the parts in groups, which delete the part
    files once copied. With ``transform`` None a range is one document; otherwise ``transform(split,
    range's bytes)`` gives its documents (their lengths adding up to the range's). Returns each
    split's bytes and documents, the SHA-256 of the raw source files read, and the cache files'
    records: a split file's ``documents_sha256`` from its documents' digests, those of the parts
    (a raw file's its own) or, for a range that is not a whole document or is transformed, the
    copy's."""
    if transform is not None and any(part.source for part in parts):
        raise ValueError("a split transform needs decoded parts: raw source files are copied as they are")
    sizes = [part.size for part in parts]
    paths = [str(part.path) for part in parts]
    ranges = {split: np.asarray(ranges[split], dtype=np.int64).reshape(-1, 2) for split in ranges}
    document = whole_documents(parts, ranges)
    hashed = (document < 0) if transform is None else np.ones(len(document), dtype=bool)
    pieces = placed_pieces(sizes, ranges, merge=transform is None, hashed=hashed)
    split_paths = [directory / f"{split}.bin" for split in ranges]
    for path, split in zip(split_paths, ranges, strict=True):
        with open(path, "wb") as f:
            f.truncate(int((ranges[split][:, 1] - ranges[split][:, 0]).sum()))
    bounds = np.searchsorted(pieces[:, 0], np.arange(len(parts) + 1)).tolist()
    targets = list(map(str, split_paths))
    tasks = [
        (
            targets,
            [(paths[i], sizes[i], parts[i].source, bounds[i + 1] - bounds[i]) for i in group],
            pieces[bounds[group.start] : bounds[group.stop], 1:],
            transform,
        )
        # A task copies many small files (each a millisecond's work), as many as GROUP_BYTES hold.
        for group in sized_groups(sizes, workers.count, most_files=COPY_GROUP_FILES)
    ]
    task = progress.add_task("writing the splits", total=sum(sizes))
    digests: dict[str, str] = {}
    lengths: dict[int, list[int]] = {}
    range_digests: dict[int, list[bytes]] = {}
    for copied_digests, copied_lengths, copied_range_digests, copied in workers.map(copy_parts, tasks):
        digests.update(copied_digests)
        lengths.update(copied_lengths)
        range_digests.update(copied_range_digests)
        progress.update(task, advance=copied)
    if transform is None:
        whole = np.frombuffer(non_empty_digests(parts, paths, sizes, digests), dtype="S32")
    counts, records = {}, {}
    first = 0
    for split in ranges:
        numbers = range(first, first + len(ranges[split]))
        first += len(ranges[split])
        if transform is None:
            split_lengths = (ranges[split][:, 1] - ranges[split][:, 0]).tolist()
            # A whole document's digest is its part's; a piece of one is the copy's.
            chosen = whole[np.maximum(document[numbers.start : numbers.stop], 0)]
            for n in np.flatnonzero(document[numbers.start : numbers.stop] < 0).tolist():
                chosen[n] = range_digests[numbers.start + n][0]
            split_digests = [chosen.tobytes()]
        else:
            split_lengths = [length for n in numbers for length in lengths[n]]
            split_digests = [digest for n in numbers for digest in range_digests[n]]
        doc_offsets = np.cumsum([0, *split_lengths], dtype=np.int64)
        np.save(directory / f"{split}.docs.npy", doc_offsets)
        counts[split] = {"bytes": int(doc_offsets[-1]), "documents": len(split_lengths)}
        records[f"{split}.bin"] = file_record(
            directory / f"{split}.bin", documents_sha256=documents_sha256(split_digests)
        )
        records[f"{split}.docs.npy"] = file_record(directory / f"{split}.docs.npy")
    return counts, digests, dict(sorted(records.items()))
