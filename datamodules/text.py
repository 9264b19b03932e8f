"""Text as bytes: a raw file is one document, a row of a Parquet, JSON lines or Arrow file is one
(``records``), read as raw bytes (no decoding beyond the format's own, no normalisation)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from rich.progress import Progress

from .bytes import ByteDataModule
from .files import find_files, named_files, read_tar
from .pool import Part, Reader, Workers, read_documents
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
        """Every document as (name, bytes), read in this process: see the class docstring."""
        if self.files is None:
            yield from read_tar(SHAKESPEARE)
        else:
            yield from read_documents(self._reader(), named_files(self.files), self.reject)

    def _reader(self) -> Reader:
        return functools.partial(text_rows, format=self.format, column=self.column)

    def corpus_parts(self, workers: Workers, scratch: Path, progress: Progress) -> list[Part]:
        """The corpus's parts, what the build copies into the splits: raw files are parts
        themselves, one document each, read and hashed by the workers as they copy them into the
        splits (never copied twice); row files are decoded by the workers into part files, raw files
        among them too; the embedded corpus is read here."""
        if self.files is None:
            return super().corpus_parts(workers, scratch, progress)
        if self.raw:
            sizes = [stat.st_size for _, stat in self.source_stats()]
            named = named_files(self.files)
            return [
                Part(path, [(name, size)], source=True)
                for (name, path), size in zip(named, sizes, strict=True)
            ]
        return self.decoded_parts(self._reader(), list(named_files(self.files)), workers, scratch, progress)

    def sources(self) -> list[Path]:
        """The files read, or the embedded archive."""
        return [SHAKESPEARE] if self.files is None else self.files
