"""Text as bytes: a raw file is one document, a row of a Parquet, JSON lines or Arrow file is one
(``records``), read as raw bytes (no decoding beyond the format's own, no normalisation)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from .bytes import ByteDataModule
from .files import find_files, hashed, named_files, read_chunks, read_tar
from .pool import pooled_documents
from .records import FORMATS, file_format, text_rows, with_saved_datasets

SHAKESPEARE = Path(__file__).parent / "data" / "shakespeare.tar.xz"


class TextBytes(ByteDataModule):
    """Text files and row files as byte documents.

    A raw file's bytes are one document, named by its path relative to the folder common to all files
    (a single file: its name), so moving the corpus keeps its split. A row file holds one document a
    row, the UTF-8 bytes of its ``column``: Parquet (.parquet), JSON lines (.jsonl, .ndjson, also
    compressed as .gz or .zst, and .json.gz / .json.zst) and the Arrow files of a Hugging Face
    ``save_to_disk`` folder (its state.json lists them; .arrow files alone work too). A row is named
    by its file's relative path without the format's suffix and its row number (``shards/part-0/17``),
    so the same rows split the same in every format. Row files stream (a Parquet row group, a piece of
    a compressed file at a time) and are decoded by ``workers`` processes (docs/DATA.md).

    Without paths the corpus is Shakespeare's complete works: 42 public-domain Project Gutenberg texts,
    5.0 MB, shipped in datamodules/data/shakespeare.tar.xz (see DATA_LICENSES.md), each play or poem
    one document.
    """

    def __init__(
        self,
        paths: str | list[str] | None = None,
        format: Literal["auto", "raw", "parquet", "jsonl", "arrow"] = "auto",
        column: str = "text",
        on_error: Literal["fail", "skip"] = "fail",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            paths: files, folders (read recursively) or glob patterns (``**`` matches folders); None reads
                the embedded Shakespeare corpus.
            format: how every file is read: "auto" by its name (.parquet, .arrow, .jsonl[.gz|.zst],
                .json.gz, .json.zst are row files, anything else raw), or one format for all: "raw" (a
                file is one document), "parquet", "jsonl" (.gz / .zst still decompressed) or "arrow".
            column: the Parquet or Arrow column, or the JSON field, that holds each row's text.
            on_error: a row file that is truncated, corrupt, lacks the column or holds a value that is
                not a string stops the build ("fail", one line naming it) or is reported, skipped and
                counted ("skip").
            **kwargs: the options of ByteDataModule.
        """
        super().__init__(**kwargs)
        if format not in FORMATS:
            raise ValueError(f"format={format!r} must be one of {', '.join(map(repr, FORMATS))}")
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error={on_error!r} must be 'fail' or 'skip'")
        self.paths = paths
        self.format = format
        self.column = column
        self.on_error = on_error
        self.files = None if paths is None else with_saved_datasets(find_files(paths))
        # Whether every file is read raw (one file, one document); the files are fixed, and a build
        # asks several times.
        self.raw = self.files is None or all(file_format(f, format) == "raw" for f in self.files)

    def cache_options(self) -> dict[str, Any]:
        """The options that change the bytes of row files (none for raw files alone)."""
        return {} if self.raw else {"format": self.format, "column": self.column, "on_error": self.on_error}

    def documents(self) -> Iterator[tuple[str, bytes]]:
        """Every document as (name, bytes): see the class docstring."""
        for name, chunks in self.document_chunks():
            yield name, b"".join(chunks)

    def document_chunks(self) -> Iterator[tuple[str, Iterable[bytes]]]:
        """Every document as (name, its bytes in pieces): a file larger than memory streams through.
        Raw files are copied here (hashed for the manifest as they are read); a corpus with row files
        is decoded in the pool, raw files too."""
        if self.files is None:
            for name, data in read_tar(SHAKESPEARE):
                yield name, (data,)
        elif self.raw:
            for name, file in named_files(self.files):
                yield name, hashed(read_chunks(file), file, self.read_digests)
        else:
            reader = functools.partial(text_rows, format=self.format, column=self.column)
            files = list(named_files(self.files))
            yield from pooled_documents(reader, files, self.workers, self.scratch, self.reject)

    def corpus_bytes(self) -> int | None:
        """The files' total size when they are raw (the documents are their bytes); else None."""
        return sum(file.stat().st_size for file in self.files) if self.files and self.raw else None

    def sources(self) -> list[Path]:
        """The files read, or the embedded archive."""
        return [SHAKESPEARE] if self.files is None else self.files
