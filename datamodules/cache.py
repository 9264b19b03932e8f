"""Building and checking the cache of a corpus: uint8 split files, published whole or not at all.

A cache directory holds ``{split}.bin`` (the split's documents end to end, uint8), ``{split}.docs.npy``
(int64 document offsets) and ``manifest.json`` (what was built from what, and the size, modification
time and SHA-256 of every file). It is built in a temporary sibling directory that is renamed into
place once complete, so a cache either is complete or does not exist; a build killed part-way leaves
only its temporary directory, which the next build on the same host removes. The build streams: it
reads and copies in pieces, so its memory does not grow with the corpus.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .files import BUFFER_BYTES, CHUNK_BYTES, resolved

FORMAT_VERSION = 1
# Below this many source bytes a build takes about a second, so a progress bar would only flicker.
PROGRESS_MIN_BYTES = 64 * 2**20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


def digest(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable key: what names a cache and identifies a corpus."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def file_record(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """Size, modification time and SHA-256 of a cache file, as its manifest keeps them; the file is
    read for its SHA-256 unless given (taken as it was written)."""
    stat = path.stat()
    if sha256 is None:
        with open(path, "rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def source_records(sources: Sequence[Path], digests: Mapping[Path, str]) -> list[dict[str, Any]]:
    """Path, size and SHA-256 of every source file, as a manifest records what it was built from;
    ``digests`` holds the SHA-256 of the files the build hashed as it read them, the others are read
    here."""
    records = []
    for path, resolved_path in zip(sources, resolved(sources), strict=True):
        sha256 = digests.get(path)
        if sha256 is None:
            with open(path, "rb") as f:
                sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        records.append({"path": resolved_path, "size": path.stat().st_size, "sha256": sha256})
    return records


def stored_corpus_id(directory: Path) -> str | None:
    """The corpus id a cache directory's manifest records; None without a readable manifest."""
    try:
        return json.loads((directory / "manifest.json").read_text()).get("corpus_id")
    except (OSError, ValueError):
        return None


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


def build(
    final: Path, corpus_id: str, label: str, sources: Sequence[Path], write: Callable[[Path], dict[str, Any]]
) -> None:
    """Build the cache directory ``final`` (named ``KIND-DIGEST``) of the corpus ``corpus_id``.

    ``write(directory)`` writes the split files into a fresh temporary sibling and returns the
    manifest (its "files" may hold the SHA-256 of files it hashed as it wrote them, so they are not
    read again), which gets the corpus id and every file's record and is written last; the directory is
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
        manifest["files"] = {f.name: file_record(f, written.get(f.name)) for f in sorted(tmp.iterdir())}
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
            raise disk_full(final, error, label, sources) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in stale:
        shutil.rmtree(old, ignore_errors=True)


def disk_full(final: Path, error: OSError, label: str, sources: Sequence[Path]) -> OSError:
    """One line for a build that ran out of space: the cache, the space it needs (the corpus
    twice: its copy, then its splits, before the copy is deleted) and what is free."""
    needed = 2 * sum(path.stat().st_size for path in sources)
    free = shutil.disk_usage(final.parent).free
    message = (
        f"no space left on device building the {label} cache {final}: it needs about "
        f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free; any previous cache is kept, free some space "
        "(or set cache_dir / BYTELAB_CACHE to a larger disk) and run again"
    )
    return OSError(error.errno, message, str(final))


def progress_bar(total_bytes: int) -> Progress:
    """The progress bar of a build that reads ``total_bytes`` source bytes (hidden for small ones)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=total_bytes < PROGRESS_MIN_BYTES,
    )


def write_corpus(
    path: Path,
    documents: Iterable[tuple[str, Iterable[bytes]]],
    progress: Progress,
    description: str,
    total: int | None,
) -> tuple[list[str], np.ndarray]:
    """Write every non-empty document (name, its bytes in pieces) end to end into `path`, counting
    the bytes on a task of ``progress`` (``total`` of them, if known) a BUFFER_BYTES or more at a
    time (the bar redraws a few times a second, an update per small document would only cost);
    return their names and int64 offsets."""
    task = progress.add_task(description, total=total)
    names: list[str] = []
    ends = [0]
    unreported = 0
    with open(path, "wb", buffering=BUFFER_BYTES) as f:
        for name, chunks in documents:
            size = 0
            for data in chunks:
                f.write(data)
                size += len(data)
                unreported += len(data)
                if unreported >= BUFFER_BYTES:
                    progress.update(task, advance=unreported)
                    unreported = 0
            if size:
                names.append(name)
                ends.append(ends[-1] + size)
    progress.update(task, advance=unreported)
    return names, np.array(ends, dtype=np.int64)


def copy_range(source: Any, target: Any, start: int, end: int, sha256: Any, chunk: int = CHUNK_BYTES) -> None:
    """Copy bytes [start, end) of the open file ``source`` to the open file ``target``, in pieces,
    each also added to the hash ``sha256``."""
    source.seek(start)
    while start < end:
        data = source.read(min(chunk, end - start))
        if not data:
            raise OSError(f"{source.name} ended at byte {start}, before {end}")
        target.write(data)
        sha256.update(data)
        start += len(data)


def adjacent_merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte ranges with every run of adjacent ones merged: the documents of a split that follow each
    other in the corpus (most of the training split's) are copied at once, not one by one."""
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], int(hi))
        else:
            merged.append((int(lo), int(hi)))
    return merged


def write_splits(
    directory: Path,
    corpus_path: Path,
    ranges: dict[str, list[tuple[int, int]]],
    documents_in_split: Callable[[str, np.ndarray], list[np.ndarray]] | None,
    digests: dict[str, str],
) -> dict[str, dict[str, int]]:
    """Write ``{split}.bin`` and ``{split}.docs.npy`` of every split from the byte ranges of the corpus
    file, then delete it; return each split's bytes and documents. ``digests[f"{split}.bin"]`` gets
    the SHA-256 of each split file, hashed as it is written: the manifest's, without reading it again.

    With ``documents_in_split`` None a range is one document, copied in pieces with plain reads (a
    memory map would leave every page it touched resident, so the build's memory would grow with the
    corpus), adjacent ranges at once; otherwise ``documents_in_split(split, range's bytes)`` gives
    its documents.
    """
    corpus = np.memmap(corpus_path, dtype=np.uint8, mode="r")
    counts = {}
    with open(corpus_path, "rb") as source:
        for split, split_ranges in ranges.items():
            sha256 = hashlib.sha256()
            with open(directory / f"{split}.bin", "wb", buffering=BUFFER_BYTES) as f:
                if documents_in_split is None:
                    for lo, hi in adjacent_merged(split_ranges):
                        copy_range(source, f, lo, hi, sha256)
                    lengths = [int(hi - lo) for lo, hi in split_ranges]
                else:
                    lengths = []
                    for lo, hi in split_ranges:
                        for document in documents_in_split(split, corpus[lo:hi]):
                            f.write(document)
                            sha256.update(document)
                            lengths.append(len(document))
            digests[f"{split}.bin"] = sha256.hexdigest()
            doc_offsets = np.cumsum([0, *lengths], dtype=np.int64)
            np.save(directory / f"{split}.docs.npy", doc_offsets)
            counts[split] = {"bytes": int(doc_offsets[-1]), "documents": len(lengths)}
    del corpus
    corpus_path.unlink()
    return counts
