"""Finding and reading the source files of a corpus, shared by every modality."""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from stat import S_ISLNK

# Files are read in pieces of this size: a cache build's memory stays bounded by a few of them
# whatever the size of the corpus (a corpus may be larger than the machine's memory).
CHUNK_BYTES = 4 * 2**20
# Files written or read a document at a time are buffered this much, so that a small document is a
# copy into the buffer rather than a system call of its own.
BUFFER_BYTES = 2**20


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def find_files(patterns: str | Sequence[str]) -> list[Path]:
    """The files named by paths, folders (read recursively) or glob patterns, absolute, sorted, unique."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError(
            "paths=[] names no files; give files, folders or glob patterns, or None for Shakespeare"
        )
    files: set[Path] = set()
    for pattern in patterns:
        is_glob = any(c in pattern for c in "*?[")
        matches = (
            [Path(p) for p in sorted(glob.glob(pattern, recursive=True))] if is_glob else [Path(pattern)]
        )
        found = [f for match in matches for f in _files_under(match)]
        if not found:
            if is_glob:
                raise ValueError(f"paths: the pattern {pattern!r} matches no files")
            if Path(pattern).is_dir():
                raise ValueError(f"paths: the folder {pattern!r} holds no files")
            raise ValueError(
                f"paths={pattern!r} does not exist: give a file, a folder, a glob pattern, or None for "
                "Shakespeare"
            )
        files.update(Path(os.path.abspath(f)) for f in found)
    return sorted(files)


def files_with_suffix(patterns: str | Sequence[str], suffixes: Sequence[str]) -> list[Path]:
    """The files of ``find_files(patterns)`` whose extension, in any case, is one of `suffixes`."""
    return [f for f in find_files(patterns) if f.suffix.lower() in suffixes]


def named_files(files: Sequence[Path]) -> Iterator[tuple[str, Path]]:
    """(name, path) of every file, named by its path relative to the folder common to all (one file: its
    name), so that moving a corpus keeps its split."""
    texts = [str(file) for file in files]
    if not all(map(os.path.isabs, texts)):
        root = Path(os.path.commonpath([f.parent for f in files]))
        yield from ((file.relative_to(root).as_posix(), file) for file in files)
        return
    # An absolute path's text begins with its folders' common path: slicing it off is relative_to
    # without a Path made and parsed per file.
    # rpartition is dirname for an absolute, normalised path ("" for a file in the root), at a third
    # of its cost; the common path of the distinct folders is the common path of all.
    folders = {text.rpartition(os.sep)[0] or os.sep for text in texts}
    start = len(os.path.commonpath(list(folders)).rstrip(os.sep)) + 1
    for file, text in zip(files, texts, strict=True):
        yield text[start:].replace(os.sep, "/"), file


def resolved_stats(paths: Sequence[Path]) -> list[tuple[str, os.stat_result]]:
    """(``str(path.resolve())``, ``os.stat(path)``) of every path, in one system call a file: its
    lstat is its stat unless it is a link, and each folder is resolved once (``resolve`` lstats every
    component of every path, which for a corpus of many small files costs more than reading them).
    A file that is itself a link, or a relative path or one ending in ``..``, is resolved alone."""
    folders: dict[str, str] = {}
    stats = []
    for path in paths:
        text = str(path)
        folder, _, name = text.rpartition(os.sep)
        stat = os.lstat(text)
        if not folder or name in ("", ".", "..") or S_ISLNK(stat.st_mode):
            stats.append((str(path.resolve()), os.stat(text)))
            continue
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = os.path.realpath(folder)
        stats.append((f"{real.rstrip(os.sep)}{os.sep}{name}", stat))
    return stats


def read_chunks(path: Path, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of a file, ``chunk`` bytes at a time."""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data
            if len(data) < chunk:  # a short read of a file is its end: no read to learn it
                return


def read_tar(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every file in a tar archive, in archive order, without extracting to disk."""
    # Iterating members in order streams the archive once; random access would decompress it again.
    with tarfile.open(archive) as tar:
        for member in tar:
            file = tar.extractfile(member) if member.isfile() else None
            if file is not None:
                yield member.name, file.read()


def encoded_files(files: list[Path] | None, archive: Path) -> Iterator[tuple[str, str, bytes]]:
    """(name, where it is, bytes) of every file, or of every member of `archive` when files is None."""
    if files is None:
        return ((name, f"{archive}:{name}", raw) for name, raw in read_tar(archive))
    return ((name, str(path), path.read_bytes()) for name, path in named_files(files))
