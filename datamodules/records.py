"""Text corpora of one document per row: Parquet shards, JSON lines (plain, .gz, .zst) and the Arrow
files of saved Hugging Face datasets, read as a stream of rows with the libraries made for them.

pyarrow reads Parquet (a row group at a time, only the text column) and Arrow IPC files (a record
batch at a time); zstandard decompresses .zst and the standard library .gz, a piece at a time; orjson
parses each line (json what orjson refuses). The native libraries are imported through
``native.require`` where a format needs them, so raw text never loads them. A row's document is its
UTF-8 string's bytes, named by its file's name without the format's suffix and its row number
(``shard/17``), so the same rows give the same names, and the same split, in every format.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .files import CHUNK_BYTES, read_chunks
from .native import require
from .pool import Rows, Unreadable

FORMATS = ("auto", "raw", "parquet", "jsonl", "arrow")
COMPRESSIONS = (".gz", ".zst")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
# What save_to_disk writes beside the Arrow files of a dataset (state.json lists them).
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
ARROW_FILE_MAGIC = b"ARROW1"  # the IPC file format; save_to_disk writes the IPC stream format
ROWS_PER_BATCH = 1024
# Compressed bytes handed to zstd at a time: what one step decompresses is this times the data's
# compression ratio (text: 3-10x), so memory stays bounded without zstandard's stream reader, which
# ends quietly on a truncated frame.
ZSTD_INPUT_BYTES = 64 * 2**10
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def file_format(path: Path, format: str) -> str:
    """The format a file is read in: ``format``, or with "auto" the one its name says (.parquet,
    .arrow, .jsonl / .ndjson, each JSON one also .gz or .zst, and .json.gz / .json.zst); "raw"
    (the file's bytes are one document) for any other name."""
    if format != "auto":
        return format
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes[-1:] == [".parquet"]:
        return "parquet"
    if suffixes[-1:] == [".arrow"]:
        return "arrow"
    if suffixes[-1:] in ([".jsonl"], [".ndjson"]):
        return "jsonl"
    if len(suffixes) == 2 and suffixes[0] in JSON_SUFFIXES and suffixes[1] in COMPRESSIONS:
        return "jsonl"
    return "raw"


def without_suffix(name: str, format: str) -> str:
    """A file's name without its format's suffix (and compression): ``a/shard.jsonl.zst`` -> ``a/shard``."""
    path = Path(name)
    if path.suffix.lower() in COMPRESSIONS:
        path = path.with_suffix("")
    known = {"parquet": (".parquet",), "arrow": (".arrow",), "jsonl": JSON_SUFFIXES}.get(format, ())
    if path.suffix.lower() in known:
        path = path.with_suffix("")
    return path.as_posix()


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a ``save_to_disk`` folder, in the order its state.json lists them; None
    when the folder is not one."""
    state = folder / "state.json"
    if not (state.is_file() and (folder / "dataset_info.json").is_file()):
        return None
    try:
        return [folder / entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise ValueError(f"{state} is not a saved dataset's state.json ({reason})") from None


def with_saved_datasets(files: list[Path]) -> list[Path]:
    """``files`` with every saved dataset's metadata files replaced by the Arrow files its state.json
    lists (a DatasetDict's dataset_dict.json dropped too)."""
    kept: list[Path] = []
    data: dict[Path, list[Path] | None] = {}
    for file in files:
        folder = file.parent
        if folder not in data:
            data[folder] = saved_dataset_files(folder)
            kept.extend(data[folder] or [])
        saved = data[folder] is not None and (file.name in SAVED_DATASET_FILES or file.suffix == ".arrow")
        if not saved and file.name != "dataset_dict.json":
            kept.append(file)
    return sorted(set(kept))


def text_rows(
    name: str, path: Path, *, format: str, column: str
) -> Iterator[tuple[str, Iterable[bytes]] | Rows]:
    """The documents of one file (name: its path relative to the corpus root): a raw file whole,
    or every row of a Parquet, JSON lines or Arrow file as ``name-without-suffix/row``, a batch of
    rows as one ``Rows`` (written in one call). Raises ``Unreadable`` for a file that is truncated,
    corrupt or lacks the column."""
    kind = file_format(path, format)
    if kind == "raw":
        yield name, read_chunks(path)
        return
    stem = without_suffix(name, kind)
    batches = {"parquet": parquet_batches, "arrow": arrow_batches, "jsonl": json_batches}[kind]
    row = 0
    for data, lengths in batches(path, column):
        yield Rows([f"{stem}/{i}" for i in range(row, row + len(lengths))], lengths, data)
        row += len(lengths)


def decompressed(path: Path) -> Iterator[bytes]:
    """A file's bytes, a piece at a time, decompressed when its name ends in .gz or .zst."""
    suffix = path.suffix.lower()
    if suffix == ".zst":
        yield from zstd_chunks(path)
        return
    if suffix != ".gz":
        yield from read_chunks(path)
        return
    try:
        with gzip.open(path, "rb") as f:
            while data := f.read(CHUNK_BYTES):
                yield data
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise Unreadable(f"not a complete gzip file ({error})") from None


def zstd_chunks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a .zst file (one or more frames), a piece at a time. A frame cut
    short raises ``Unreadable``: zstandard's stream reader would end quietly instead."""
    zstandard = require("zstandard", ".zst files")
    decompressor = zstandard.ZstdDecompressor(max_window_size=2**31)
    frame, in_frame = decompressor.decompressobj(), False
    try:
        for data in read_chunks(path, ZSTD_INPUT_BYTES):
            while data:
                if out := frame.decompress(data):
                    yield out
                in_frame, data = not frame.eof, b""
                if frame.eof:
                    data, frame = frame.unused_data, decompressor.decompressobj()
    except zstandard.ZstdError as error:
        raise Unreadable(f"not valid zstd data ({error})") from None
    if in_frame:
        raise Unreadable("truncated: its last zstd frame ends early")


def line_batches(chunks: Iterable[bytes]) -> Iterator[list[bytes | memoryview]]:
    """The lines of a stream of pieces (without their newlines), as the list of lines each piece
    completes: views of the piece, not copies, but for a line begun in an earlier piece (its
    pieces joined once, however many there are)."""
    rest: list[bytes] = []
    for data in chunks:
        end = data.rfind(b"\n")
        if end < 0:
            rest.append(data)
            continue
        first = data.find(b"\n")
        lines: list[bytes | memoryview] = [b"".join([*rest, data[:first]])]
        view, start = memoryview(data), first + 1
        while start <= end:
            stop = data.find(b"\n", start)
            lines.append(view[start:stop])
            start = stop + 1
        rest = [data[end + 1 :]]
        yield lines
    if tail := b"".join(rest):
        yield [tail]


def json_batches(path: Path, field: str) -> Iterator[tuple[bytes, list[int]]]:
    """The UTF-8 bytes of ``field`` of every JSON object line of a file (blank lines skipped), end to
    end with their lengths, one batch per piece of the decompressed file.

    orjson parses each line (twice the standard library's rate on text); a line it refuses, or whose
    field is missing or not a string, is parsed again by ``json_value``, which reads what json reads
    (NaN, a byte order mark, a lone surrogate: orjson refuses them) and words the error. The two
    agree on every line orjson reads, so the bytes are json's whichever parsed them. A blank line is
    one that orjson refuses (no JSON at all) and that holds only whitespace."""
    orjson = require("orjson", "JSON lines")
    loads, refused = orjson.loads, (orjson.JSONDecodeError, KeyError, TypeError)
    first = 1  # the number of the batch's first line
    for lines in line_batches(decompressed(path)):
        values = []
        for number, line in enumerate(lines, first):
            try:
                value = loads(line)[field]
            except refused:
                value = None
            if type(value) is str:
                values.append(value.encode())
            elif (text := bytes(line)).strip():
                values.append(json_value(text, number, field))
        first += len(lines)
        yield b"".join(values), [len(value) for value in values]


def json_value(line: bytes, number: int, field: str) -> bytes:
    """The UTF-8 bytes of ``field`` of the JSON object on line ``number``, or ``Unreadable`` saying
    what the line holds instead."""
    try:
        record = json.loads(line)
    except ValueError as error:
        raise Unreadable(f"line {number} is not JSON ({error})") from None
    if not isinstance(record, dict):
        raise Unreadable(f"line {number} is {json_type(record)}, not a JSON object")
    if field not in record:
        fields = ", ".join(map(repr, list(record)[:10])) or "none"
        raise Unreadable(f"line {number} has no field {field!r} (its fields: {fields}; set column=...)")
    value = record[field]
    if not isinstance(value, str):
        raise Unreadable(f"line {number}: {field!r} is {json_type(value)}, not a string")
    try:
        return value.encode()
    except UnicodeEncodeError as error:
        raise Unreadable(f"line {number}: {field!r} is not valid Unicode ({error.reason})") from None


def json_type(value: Any) -> str:
    """What JSON calls the type of a parsed value ("an object", "a number", ...)."""
    return JSON_TYPES.get(type(value), "a number")


def string_column(schema: Any, column: str) -> int:
    """The index of ``column`` in an Arrow schema, or ``Unreadable`` naming the columns there are."""
    if column not in schema.names:
        columns = ", ".join(map(repr, schema.names)) or "none"
        raise Unreadable(f"has no column {column!r} (its columns: {columns}; set column=...)")
    pa = require("pyarrow", "Parquet and Arrow files")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise Unreadable(f"column {column!r} holds {kind}, not strings")
    return schema.get_field_index(column)


def string_values(array: Any, first_row: int) -> tuple[memoryview, list[int]]:
    """The UTF-8 bytes of the values of an Arrow string array end to end, sliced from its buffer (no
    copy), and each value's length."""
    pa = require("pyarrow", "Parquet and Arrow files")
    if array.null_count:
        row = first_row + array.is_null().index(True).as_py()
        raise Unreadable(f"row {row} is null, not a string")
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string()) if pa.types.is_string_view(array.type) else array
    wide = pa.types.is_large_string(array.type)
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)
    bounds = offsets[array.offset : array.offset + len(array) + 1]
    view = memoryview(data if data is not None else b"")
    return view[int(bounds[0]) : int(bounds[-1])], np.diff(bounds).tolist()


def parquet_batches(path: Path, column: str) -> Iterator[tuple[memoryview, list[int]]]:
    """The values of a Parquet file's string column (``string_values``), ROWS_PER_BATCH rows of a
    row group at a time."""
    pa = require("pyarrow", "Parquet files")
    pq = require("pyarrow.parquet", "Parquet files")
    try:
        with pq.ParquetFile(path) as parquet:
            string_column(parquet.schema_arrow, column)
            row = 0
            for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=[column], use_threads=False):
                yield string_values(batch.column(0), row)
                row += batch.num_rows
    except (pa.ArrowException, OSError) as error:
        raise Unreadable(f"not a complete Parquet file ({type(error).__name__}: {error})") from None


def arrow_batches(path: Path, column: str) -> Iterator[tuple[memoryview, list[int]]]:
    """The values of an Arrow IPC file's string column (a saved dataset's data file;
    ``string_values``), a record batch at a time."""
    pa = require("pyarrow", "Arrow files")
    try:
        with pa.OSFile(str(path)) as source:
            is_file = source.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
            source.seek(0)
            if is_file:
                reader = pa.ipc.open_file(source)
                batches: Iterable[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                reader = pa.ipc.open_stream(source)
                batches = reader
            index = string_column(reader.schema, column)
            row = 0
            for batch in batches:
                yield string_values(batch.column(index), row)
                row += batch.num_rows
    except (pa.ArrowException, OSError) as error:
        raise Unreadable(f"not a complete Arrow file ({type(error).__name__}: {error})") from None
