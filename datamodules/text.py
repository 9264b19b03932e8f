"""Text as bytes: every file is one document, read as raw bytes (no decoding, no normalisation)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .bytes import ByteDataModule
from .files import find_files, named_files, read_chunks, read_tar

SHAKESPEARE = Path(__file__).parent / "data" / "shakespeare.tar.xz"


class TextBytes(ByteDataModule):
    """Files as byte documents: each file's raw bytes are one document.

    A document is named by its path relative to the folder common to all files (a single file: its
    name), so moving the corpus keeps its split. Without paths the corpus is Shakespeare's complete
    works: 42 public-domain Project Gutenberg texts, 5.0 MB, shipped in datamodules/data/shakespeare.tar.xz
    (see DATA_LICENSES.md), each play or poem one document.
    """

    def __init__(self, paths: str | list[str] | None = None, **kwargs: Any) -> None:
        """
        Args:
            paths: files, folders (read recursively) or glob patterns (``**`` matches folders); None reads
                the embedded Shakespeare corpus.
            **kwargs: the options of ByteDataModule.
        """
        super().__init__(**kwargs)
        self.paths = paths
        self.files = None if paths is None else find_files(paths)

    def documents(self) -> Iterator[tuple[str, bytes]]:
        """Every file as (path relative to the common folder, bytes), or the embedded archive's members."""
        if self.files is None:
            yield from read_tar(SHAKESPEARE)
            return
        for name, file in named_files(self.files):
            yield name, file.read_bytes()

    def document_chunks(self) -> Iterator[tuple[str, Iterable[bytes]]]:
        """Like ``documents()``, each file read in pieces: a file larger than memory streams through."""
        if self.files is None:
            for name, data in read_tar(SHAKESPEARE):
                yield name, (data,)
            return
        for name, file in named_files(self.files):
            yield name, read_chunks(file)

    def corpus_bytes(self) -> int | None:
        """The files' total size (the documents are their raw bytes); None for the archive."""
        return None if self.files is None else sum(file.stat().st_size for file in self.files)

    def sources(self) -> list[Path]:
        """The files read, or the embedded archive."""
        return [SHAKESPEARE] if self.files is None else self.files
