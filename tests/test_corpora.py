"""Corpora as they ship: Parquet, JSON lines (.gz, .zst), saved datasets and image shards, decoded
in a process pool; the same rows in every format, the same bytes with any worker count, bounded
memory, and one line for every kind of bad input."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from rich.progress import Progress

from datamodules import ImageBytes, TextBytes, cache, records
from datamodules.cache import placed_pieces, write_corpus
from datamodules.files import named_files, read_chunks, resolved_stats
from datamodules.pool import decode_group
from datamodules.protocol import name_keys
from datamodules.records import line_batches, string_values, text_rows, without_suffix
from experiments import data as bytelab_data
from experiments.cli import main
from experiments.data import order0_bits

# Rows of varied lengths, one of them empty (left out and counted), non-ASCII text included.
ROWS = [f"row {i}: " + "é and bytes " * (i % 9) for i in range(40)] + [""]


def lines(rows: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({field: row, "id": i}) + "\n" for i, row in enumerate(rows)).encode()


def write_stream(path: Path, table: pa.Table) -> None:
    """A table as an Arrow IPC stream of 7-row batches, as datasets' save_to_disk writes its data."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=7)


def write_rows(folder: Path, kind: str, rows: list[str] = ROWS, stem: str = "data-00000-of-00001") -> Path:
    """``rows`` as one file of a format (a saved dataset: a save_to_disk folder) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        pq.write_table(
            pa.table({"text": rows, "id": range(len(rows))}), folder / f"{stem}.parquet", row_group_size=6
        )
    elif kind == "jsonl":
        (folder / f"{stem}.jsonl").write_bytes(lines(rows))
    elif kind == "jsonl.zst":
        (folder / f"{stem}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(rows)))
    elif kind == "json.gz":
        (folder / f"{stem}.json.gz").write_bytes(gzip.compress(lines(rows)))
    elif kind == "saved":  # what datasets' save_to_disk writes: an Arrow IPC stream and two JSON files
        write_stream(folder / f"{stem}.arrow", pa.table({"text": rows}))
        (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": f"{stem}.arrow"}]}))
        (folder / "dataset_info.json").write_text("{}")
    return folder


def splits(dm: TextBytes | ImageBytes) -> dict[str, tuple[bytes, list[int]]]:
    return {name: (bytes(split.data), split.offsets.tolist()) for name, split in dm.splits.items()}


def built(paths: str | list[str], cache: Path, **options: object) -> TextBytes:
    dm = TextBytes(paths, cache_dir=str(cache), seq_len=16, **options)
    dm.setup()
    return dm


def test_the_same_rows_build_the_same_splits_in_every_format(tmp_path: Path) -> None:
    results = {}
    for kind in ("parquet", "jsonl", "jsonl.zst", "json.gz", "saved"):
        dm = built(str(write_rows(tmp_path / kind, kind)), tmp_path / f"cache-{kind}")
        results[kind] = splits(dm)
        assert dm.manifest["empty_documents"] == 1
    assert all(result == results["parquet"] for result in results.values())
    documents = sorted(bytes(d) for s in dm.splits.values() for d in map(s.document, range(len(s))))
    assert documents == sorted(row.encode() for row in ROWS if row)


def test_rows_are_named_by_file_without_suffix_and_row() -> None:
    assert without_suffix("a/shard.jsonl.zst", "jsonl") == "a/shard"
    assert without_suffix("part-0.parquet", "parquet") == "part-0"
    assert without_suffix("notes.txt", "jsonl") == "notes.txt"
    assert without_suffix("x.json.gz", "jsonl") == "x"


def test_sources_resolve_as_pathlib_does_through_linked_folders_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache key's paths (each folder resolved once) are ``Path.resolve``'s, and its stats are
    ``os.stat``'s (taken with the lstat that tells a link), links included."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    for name in ("a.txt", "sub/b.txt"):
        (tmp_path / "real" / name).write_text(name)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "c.txt").symlink_to(tmp_path / "real" / "sub" / "b.txt")
    monkeypatch.chdir(tmp_path)
    paths = [
        tmp_path / "real" / "a.txt",
        tmp_path / "linked" / "sub" / "b.txt",
        tmp_path / "linked" / "c.txt",
        Path("linked/a.txt"),
        Path(f"{tmp_path}/real/sub/../a.txt"),
    ]
    paths += [Path("real/sub/.."), Path("real/a.txt"), Path(".")]
    stats = resolved_stats(paths)
    assert [name for name, _ in stats] == [str(path.resolve()) for path in paths]
    assert [(s.st_ino, s.st_size, s.st_mtime_ns) for _, s in stats] == [
        (s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, paths)
    ]  # a link's target's


@pytest.mark.parametrize(
    "paths",
    [["/c/a/x.txt", "/c/b/y/z.txt"], ["/x.txt", "/d/y.txt"], ["/c/a.txt"], ["c/a.txt", "c/b/y.txt"], ["a"]],
)
def test_files_are_named_by_their_path_below_the_folder_common_to_all(paths: list[str]) -> None:
    files = [Path(p) for p in paths]
    root = Path(os.path.commonpath([f.parent for f in files]))
    assert list(named_files(files)) == [(f.relative_to(root).as_posix(), f) for f in files]


def test_files_are_read_in_as_few_pieces_as_their_bytes_allow(tmp_path: Path) -> None:
    for size, pieces in ((10, [4, 4, 2]), (8, [4, 4]), (3, [3]), (0, [])):
        (tmp_path / "f").write_bytes(bytes(range(size)))
        assert [len(data) for data in read_chunks(tmp_path / "f", 4)] == pieces


def test_split_ranges_become_pieces_cut_to_their_part_and_merged_where_they_follow_each_other() -> None:
    """Two parts of 10 and 6 bytes (the corpus's bytes 0-9 and 10-15): a split's ranges that follow
    each other in one part are one piece, one piece a part otherwise; each lands after the split's
    earlier ranges; pieces come sorted by part and offset, as a task reads them."""
    parts = [10, 6]  # the bytes of each part
    ranges = {"train": [(0, 4), (10, 16)], "val": [(4, 7)], "test": [(7, 10)]}
    merged = placed_pieces(parts, ranges, merge=True).tolist()
    # part, offset in it, length, split, offset in the split, the range it starts at, hashed by the copy
    assert merged == [
        [0, 0, 4, 0, 0, 0, 0],
        [0, 4, 3, 1, 0, 2, 0],
        [0, 7, 3, 2, 0, 3, 0],
        [1, 0, 6, 0, 4, 1, 0],
    ]
    ranges = {"train": [(0, 4), (4, 10), (10, 13), (13, 16)], "val": [], "test": []}
    merged = placed_pieces(parts, ranges, merge=True).tolist()
    assert merged == [
        [0, 0, 10, 0, 0, 0, 0],
        [1, 0, 6, 0, 10, 2, 0],
    ]  # cut at the part's end, not merged across
    single = placed_pieces(parts, ranges, merge=False).tolist()  # a split transform sees each range alone
    assert [row[1:3] for row in single] == [[0, 4], [4, 6], [0, 3], [3, 3]]
    assert [row[5] for row in single] == [0, 1, 2, 3]
    # A range the copy hashes (not a whole document) is a piece of its own, never merged with another.
    hashed = placed_pieces(parts, ranges, merge=True, hashed=np.array([False, True, False, False])).tolist()
    assert [row[1:3] + row[5:] for row in hashed] == [[0, 4, 0, 0], [4, 6, 1, 1], [0, 6, 2, 0]]


def test_a_raw_file_larger_than_a_read_is_cut_into_its_splits_in_pieces_and_hashed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of 8 bytes (then of the whole file): each of two raw files (1 or 2 documents are cut
    90/5/5 each) is read in pieces, in order, into three splits; its SHA-256 is the whole file's, and
    each of its pieces, a document of its split, is hashed on its own for the split's record."""
    (tmp_path / "c").mkdir()
    files = {"a.bin": bytes(range(200)), "b.bin": bytes(range(100, 160))}
    for name, data in files.items():
        (tmp_path / "c" / name).write_bytes(data)
    a, b = files.values()
    expected = {"train": a[:180] + b[:54], "val": a[180:190] + b[54:57], "test": a[190:] + b[57:]}
    for chunk in (8, cache.CHUNK_BYTES):
        monkeypatch.setattr(cache, "CHUNK_BYTES", chunk)
        dm = built(str(tmp_path / "c"), tmp_path / f"cache{chunk}", workers=2)
        assert {split: bytes(dm.splits[split].data) for split in expected} == expected
        assert [s["sha256"] for s in dm.manifest["sources"]] == [
            hashlib.sha256(d).hexdigest() for d in files.values()
        ]
        assert recorded_files(dm) == real_files(dm)


def test_a_raw_file_that_changes_while_the_cache_is_built_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw file is read straight into its split at the place its size (taken as the build began)
    gives it: one whose size moved stops the build in one line naming it, and leaves no cache."""
    for i in range(4):
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / f"{i}.txt").write_text(f"document {i}\n" * 50)
    copy = cache.copy_parts

    def grown_first(split_paths, items, pieces, transform):
        with open(items[0][0], "a") as f:
            f.write("more")
        return copy(split_paths, items, pieces, transform)

    monkeypatch.setattr(cache, "copy_parts", grown_first)
    dm = TextBytes(str(tmp_path / "c"), cache_dir=str(tmp_path / "cache"), workers=1)
    with pytest.raises(OSError, match=r"0\.txt changed while the cache was built from it; build again"):
        dm.prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_build_collects_no_garbage_in_the_main_process_and_its_workers_collect_as_usual() -> None:
    """``frozen_objects`` freezes what is alive and turns collection off for the build, then back on;
    the workers forked meanwhile collect (a worker decoding a large corpus must not grow)."""
    import gc

    from datamodules.pool import Workers

    assert gc.isenabled()
    with cache.frozen_objects(), Workers(2) as workers:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        assert list(workers.map(gc.isenabled, [(), (), ()])) == [True, True, True]
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_worker_keys_the_split_by_each_name_it_reads_and_drops_an_unreadable_file_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split keys the workers take are ``protocol.name_keys`` of the documents' names, one a
    document; the rows a file gave before it turned out unreadable leave no key behind."""
    (tmp_path / "a.jsonl").write_bytes(lines(ROWS))
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(lines(ROWS) + b"[1]\n")  # rows, then a line that is not an object
    (tmp_path / "c.txt").write_bytes(b"raw")
    monkeypatch.setattr(records, "CHUNK_BYTES", 100)  # b's rows come in many batches before its error
    files = [(name, tmp_path / name) for name in ("a.jsonl", "b.jsonl.gz", "c.txt")]
    reader = functools.partial(text_rows, format="auto", column="text")
    part = decode_group(reader, files, tmp_path / "part.bin")
    names = [name for name, _ in part.documents]
    assert names == [f"a/{i}" for i in range(len(ROWS))] + ["c.txt"]
    assert [rejected.origin for rejected in part.rejected] == [str(tmp_path / "b.jsonl.gz")]
    assert bytes(part.name_keys) == name_keys(names) and len(part.document_digests) == len(names)


def test_a_manifest_is_its_json_one_line_an_entry_whatever_its_strings_hold() -> None:
    """The manifest's lists are cut between their mappings: a path holding what the cut looks for,
    quotes, backslashes, newlines or non-ASCII text must not move a line or change a value."""
    tricky = ['a}, {"b', 'quote " and \\ back', "new\nline", "caf\u00e9 \u2603", '}, {"', "\\", ""]
    sources = [{"path": f"/c/{text}", "size": i, "sha256": "0" * 64} for i, text in enumerate(tricky)]
    manifest = {
        "format_version": 3,
        "sources": sources,
        "skipped": [],
        "nested": [{"a": [{"b": 1}, {"c": 2}]}, {"d": None}],
        "mixed": [1, "two", {"three": 3}, [4]],
        "files": {"train.bin": {"size": 1, "mtime_ns": 2}},
    }
    text = cache.manifest_text(manifest)
    assert json.loads(text) == manifest
    lines = text.splitlines()
    start = lines.index('  "sources": [') + 1
    assert [json.loads(line.strip().rstrip(",")) for line in lines[start : start + len(sources)]] == sources


def test_the_progress_bar_counts_every_byte_written(tmp_path: Path) -> None:
    """Updates come a BUFFER_BYTES at a time, and the last one brings the count to the corpus's bytes;
    every document is listed, the empty one too."""
    documents = [(f"d{i}", [b"x" * 1000]) for i in range(3000)] + [
        ("big", [b"y" * 3 * 2**20, b"z"]),
        ("e", []),
    ]
    progress = Progress(disable=True)
    part = write_corpus(tmp_path / "corpus.bin", documents, progress, "writing", None)
    assert [length for _, length in part.documents] == [1000] * 3000 + [3 * 2**20 + 1, 0]
    assert part.document_digests[-2:] == [
        hashlib.sha256(b"y" * 3 * 2**20 + b"z").digest(),
        hashlib.sha256(b"").digest(),
    ]
    size = (tmp_path / "corpus.bin").stat().st_size
    assert progress.tasks[0].completed == size == 3000 * 1000 + 3 * 2**20 + 1


@pytest.mark.parametrize("kind", ["raw", "parquet"])
def test_the_manifest_records_every_source_s_sha256_whether_hashed_as_read_or_after(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw files are hashed as they are copied into the splits, row files as they are decoded: the
    same record either way; a split file's record is the hash of its documents' hashes, which for
    raw files are the files' own."""
    for i in range(4):
        if kind == "raw":
            (tmp_path / "c").mkdir(exist_ok=True)
            (tmp_path / "c" / f"{i}.txt").write_text(f"document {i}\n" * (i + 1))
        else:
            write_rows(tmp_path / "c", kind, [f"{i}:{row}" for row in ROWS], f"s{i}")
    dm = built(str(tmp_path / "c"), tmp_path / "cache", workers=2)
    files = sorted((tmp_path / "c").iterdir())
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    expected = [
        {"path": str(f.resolve()), "size": f.stat().st_size, "sha256": digest}
        for f, digest in zip(files, digests, strict=True)
    ]
    assert dm.manifest["sources"] == expected
    assert recorded_files(dm) == real_files(dm)
    if kind == "raw":  # one file, one document: a split's hash is made of its files' SHA-256
        for split in ("train", "val", "test"):
            data = bytes(dm.splits[split].data)
            in_split = [d for f, d in zip(files, digests, strict=True) if f.read_bytes() in data]
            assert (
                dm.manifest["files"][f"{split}.bin"]["documents_sha256"]
                == hashlib.sha256(b"".join(bytes.fromhex(d) for d in in_split)).hexdigest()
            )


def recorded_files(dm: TextBytes | ImageBytes) -> dict[str, tuple[int, str]]:
    return {
        name: (r["size"], r.get("documents_sha256") or r["sha256"])
        for name, r in dm.manifest["files"].items()
    }


def real_files(dm: TextBytes | ImageBytes) -> dict[str, tuple[int, str]]:
    """Size and hash of every file of the cache, read now, as docs/DATA.md says to check them: a
    split file's SHA-256 of its documents' SHA-256 digests (its docs file cuts them), a docs file's
    SHA-256 (the manifest's are hashed by the build's workers as they write the documents)."""
    hashes = {}
    for f in sorted(f for f in dm.cache_path.iterdir() if f.name != "manifest.json"):
        data = f.read_bytes()
        if f.suffix == ".bin":
            offsets = np.load(f.with_suffix(".docs.npy")).tolist()
            documents = [data[lo:hi] for lo, hi in zip(offsets, offsets[1:], strict=False)]
            digest = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in documents)).hexdigest()
        else:
            digest = hashlib.sha256(data).hexdigest()
        hashes[f.name] = (len(data), digest)
    return hashes


def test_the_check_docs_data_md_gives_for_a_split_file_is_the_manifest_s(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "docs" / "DATA.md").read_text()
    (code,) = re.findall(r"```python\n(import hashlib, numpy as np\ndef documents_sha256.*?)```", text, re.S)
    namespace: dict = {}
    exec(code, namespace)
    dm = built(str(write_rows(tmp_path / "c", "jsonl")), tmp_path / "cache")
    for split in ("train", "val", "test"):
        check = namespace["documents_sha256"](
            dm.cache_path / f"{split}.bin", dm.cache_path / f"{split}.docs.npy"
        )
        assert check == dm.manifest["files"][f"{split}.bin"]["documents_sha256"]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.string_view()])
def test_a_batch_of_rows_is_its_values_end_to_end_with_their_lengths(kind: pa.DataType) -> None:
    values = ["", "é and bytes", "x", "", "row four"]
    for array in (pa.array(values, kind), pa.array(["skipped", *values], kind).slice(1)):
        data, lengths = string_values(array, 0)
        assert bytes(data) == "".join(values).encode() and lengths == [len(v.encode()) for v in values]


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 64])
def test_lines_are_the_stream_s_lines_however_its_pieces_fall(cut: int) -> None:
    # Newlines at a piece's first and last byte, pieces without one, a long line over many pieces,
    # blank lines and a last line without its newline.
    rng = np.random.default_rng(cut)
    text = b"\n\nab\n" + b"x" * 300 + b"\nc\n\n" + bytes(rng.integers(0, 3, 500).astype(np.uint8)) + b"\nend"
    text = text.replace(b"\x01", b"\n")
    bounds = sorted({0, len(text), *rng.integers(0, len(text), len(text) // cut).tolist()})
    pieces = [text[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    lines = [bytes(line) for batch in line_batches(pieces) for line in batch]
    assert lines == text.split(b"\n")
    assert [bytes(line) for batch in line_batches([b"a\nb\n"]) for line in batch] == [b"a", b"b"]


def test_json_lines_orjson_refuses_are_read_as_json_reads_them(tmp_path: Path) -> None:
    # orjson parses the lines; NaN, a byte order mark, a huge integer or a duplicate key are what
    # json reads and orjson refuses or reads otherwise: the values must be json's all the same.
    edge = [
        b'{"text": "nan", "score": NaN}',
        b'\xef\xbb\xbf{"text": "bom"}',
        b'{"text": "big", "id": 123456789012345678901234567890}',
        b'{"text": "first", "text": "last"}',
        b'  {"text": "spaces"}  \r',
        b"",
        b" \t\r",
        b'{"text": "caf\\u00e9 \\ud83d\\ude00"}',
    ]
    data = lines(ROWS[:3]) + b"\n".join(edge) + b"\n"
    (tmp_path / "edge.jsonl").write_bytes(data)
    expected = [json.loads(line)["text"].encode() for line in data.split(b"\n") if line.strip()]
    dm = TextBytes(str(tmp_path / "edge.jsonl"))
    assert [value for _, value in dm.documents()] == [
        *expected[:3],
        b"nan",
        b"bom",
        b"big",
        b"last",
        b"spaces",
        "café 😀".encode(),
    ]


def test_column_option_and_explicit_format(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "rows.txt").write_bytes(lines(ROWS, field="content"))
    dm = built(str(tmp_path / "c"), tmp_path / "cache", format="jsonl", column="content")
    assert sum(len(s) for s in dm.splits.values()) == len(ROWS) - 1
    raw = built(str(tmp_path / "c"), tmp_path / "cache-raw")  # auto: a .txt file is one raw document
    assert sum(int(s.offsets[-1]) for s in raw.splits.values()) == len(lines(ROWS, field="content"))


@pytest.mark.parametrize("kind", ["raw", "parquet", "jsonl.zst", "saved"])
def test_worker_count_does_not_change_a_byte(tmp_path: Path, kind: str) -> None:
    for i in range(5):  # several files (five saved datasets: folders), so the pool has groups to share
        rows = [f"{i}:{row}" for row in ROWS]
        if kind == "raw":  # a raw file a row, and one empty file (left out)
            (tmp_path / "corpus").mkdir(exist_ok=True)
            for j, row in enumerate(rows + [""] * (i == 0)):
                (tmp_path / "corpus" / f"{i}-{j:02d}.txt").write_text(row)
            continue
        write_rows(
            tmp_path / "corpus" / f"d{i}" if kind == "saved" else tmp_path / "corpus", kind, rows, f"s{i}"
        )
    one = built(str(tmp_path / "corpus"), tmp_path / "cache1", workers=1)
    two = built(str(tmp_path / "corpus"), tmp_path / "cache2", workers=2)
    assert one.cache_path.name == two.cache_path.name  # workers do not key the cache
    files = sorted(f.name for f in one.cache_path.iterdir() if f.name != "manifest.json")
    assert files == ["test.bin", "test.docs.npy", "train.bin", "train.docs.npy", "val.bin", "val.docs.npy"]
    assert all((one.cache_path / f).read_bytes() == (two.cache_path / f).read_bytes() for f in files)
    assert sum(len(s) for s in one.splits.values()) == 5 * len(ROWS)  # no row is empty
    assert recorded_files(one) == recorded_files(two) == real_files(two)


def test_image_shards_and_files_decode_the_same_with_any_worker_count(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for shard in range(3):
        with tarfile.open(folder / f"shard{shard}.tar", "w") as tar:
            for i in range(4):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buffer, "JPEG")
                for name, data in ((f"{i:04d}.jpg", buffer.getvalue()), (f"{i:04d}.cls", b"3")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "loose.png")
    results = []
    for workers in (1, 2):
        dm = ImageBytes(
            str(folder), resolution=8, seq_len=48, cache_dir=str(tmp_path / f"c{workers}"), workers=workers
        )
        dm.setup()
        results.append(splits(dm))
        assert sum(len(s) for s in dm.splits.values()) == 13  # 12 shard members and the loose file
        assert recorded_files(dm) == real_files(dm) and len(real_files(dm)) == 6  # held-out tiles too
    assert results[0] == results[1]


def test_a_corpus_larger_than_the_memory_limit_streams_through(tmp_path: Path) -> None:
    """40 MB of rows in Parquet row groups and in one .jsonl.zst file build with a few MB of memory."""
    limit = 16 * 2**20  # 40 MB of documents, row groups of 2 MB
    letters = np.random.default_rng(0).integers(97, 123, (10_000, 4000), dtype=np.uint8)
    rows = [f"{i:06d} " + bytes(row).decode() for i, row in enumerate(letters)]  # 40 MB of documents
    pq.write_table(pa.table({"text": rows}), tmp_path / "big.parquet", row_group_size=500)
    with (
        open(tmp_path / "big.jsonl.zst", "wb") as f,
        zstandard.ZstdCompressor(level=1).stream_writer(f) as compressor,
    ):
        for i in range(0, len(rows), 1000):
            compressor.write(lines(rows[i : i + 1000]))
    for name in ("big.parquet", "big.jsonl.zst"):
        pool = pa.proxy_memory_pool(pa.default_memory_pool())
        previous = pa.default_memory_pool()
        pa.set_memory_pool(pool)
        tracemalloc.start()
        try:
            dm = built(str(tmp_path / name), tmp_path / f"cache-{name}", workers=1)
            _, python_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            pa.set_memory_pool(previous)
        assert sum(int(s.offsets[-1]) for s in dm.splits.values()) == sum(map(len, rows))
        assert python_peak < limit and pool.max_memory() < limit, (name, python_peak, pool.max_memory())


def truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """A good shard beside one bad one of each kind: (the bad file, what the error must say)."""
    cases = {}
    for kind, suffix in (("parquet", "parquet"), ("jsonl.zst", "jsonl.zst"), ("json.gz", "json.gz")):
        folder = write_rows(tmp_path / f"trunc-{kind}", kind, stem="bad")
        write_rows(folder, "jsonl", stem="good")
        cases[f"truncated {kind}"] = (truncated(folder / f"bad.{suffix}"), "")
    folder = tmp_path / "nocolumn"
    folder.mkdir()
    pq.write_table(pa.table({"content": ["a", "b"], "id": [1, 2]}), folder / "bad.parquet")
    write_rows(folder, "jsonl", stem="good")
    cases["no column"] = (folder / "bad.parquet", "has no column 'text' (its columns: 'content', 'id'")
    saved = write_rows(tmp_path / "savednocol", "saved", ["a"])
    write_stream(saved / "data-00000-of-00001.arrow", pa.table({"body": ["a"]}))
    write_rows(saved / "more", "jsonl", stem="good")
    cases["arrow no column"] = (
        saved / "data-00000-of-00001.arrow",
        "has no column 'text' (its columns: 'body'",
    )
    for name, line, message in (
        ("array", b"[1, 2]\n", "line 3 is an array, not a JSON object"),
        ("field", b'{"body": "x"}\n', "line 3 has no field 'text' (its fields: 'body'"),
        ("number", b'{"text": 5}\n', "line 3: 'text' is a number, not a string"),
        ("notjson", b"{oops\n", "line 3 is not JSON"),
    ):
        folder = tmp_path / f"json-{name}"
        folder.mkdir()
        (folder / "bad.jsonl").write_bytes(lines(ROWS[:2]) + line + lines(ROWS[:2]))
        write_rows(folder, "jsonl", stem="good")
        cases[f"json {name}"] = (folder / "bad.jsonl", message)
    folder = tmp_path / "null"
    pq.write_table(
        pa.table({"text": ["a", None, "c"]}), write_rows(folder, "jsonl", stem="good") / "bad.parquet"
    )
    cases["null value"] = (folder / "bad.parquet", "row 1 is null, not a string")
    folder = tmp_path / "ints"
    pq.write_table(pa.table({"text": [1, 2]}), write_rows(folder, "jsonl", stem="good") / "bad.parquet")
    cases["int column"] = (folder / "bad.parquet", "column 'text' holds int64, not strings")
    return cases


def test_bad_input_fails_in_one_line_leaving_no_cache_or_is_skipped_and_counted(tmp_path: Path) -> None:
    for case, (bad, message) in bad_inputs(tmp_path).items():
        cache = tmp_path / f"cache-{bad.parent.name}"
        with pytest.raises(ValueError) as error:
            built(str(bad.parent), cache)
        text = str(error.value)
        assert f"cannot read {bad}: " in text and message in text and "\n" not in text, case
        assert not cache.exists() or list(cache.iterdir()) == [], case
        dm = built(str(bad.parent), cache, on_error="skip")
        assert [s["path"] for s in dm.manifest["skipped"]] == [str(bad)], case
        assert sum(len(s) for s in dm.splits.values()) == len(ROWS) - 1, case  # the good file's rows


@pytest.mark.cli
def test_data_commands_print_one_line_for_bad_input_and_inspect_a_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_rows(tmp_path / "corpus", "parquet")
    bad = truncated(write_rows(tmp_path / "bad", "jsonl.zst") / "data-00000-of-00001.jsonl.zst")
    write_rows(tmp_path / "bad", "jsonl", stem="good")
    data = [
        "--data=TextBytes",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.seq_len=16",
    ]
    assert main(["data", "prepare", *data, f"--data.init_args.paths={bad.parent}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bytelab: error: cannot read {bad}: truncated") and "\n" not in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert main(["data", "prepare", *data, f"--data.init_args.paths={folder}"]) == 0
    assert "MB), built in" in capsys.readouterr().out
    assert main(["data", "inspect", *data, f"--data.init_args.paths={folder}", "--documents=2"]) == 0
    out = capsys.readouterr().out
    dm = built(str(folder), tmp_path / "cache")
    assert f"cache: {dm.cache_path}" in out and "1 empty documents" in out
    train = dm.splits["train"]
    counts = [f"{len(dm.splits[s]):,}" for s in ("train", "val", "test")]
    assert next(line for line in out.splitlines() if line.startswith("documents")).split()[1:] == counts
    assert f"{order0_bits(train.data):.3f}" in out
    assert repr(bytes(train.document(0)[:60])) in out


def reference_cells(out: str) -> dict[str, list[str]]:
    """The rows of inspect's reference table: label -> the train, val and test cells."""
    table = out.split("reference compressors")[1].splitlines()[2:9]
    return {label: cells for label, *cells in (re.split(r"\s{2,}", line) for line in table)}


@pytest.mark.cli
@pytest.mark.parametrize("bound", [None, 1000])
def test_inspect_prints_the_reference_compressors_on_the_scored_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, bound: int | None
) -> None:
    """zlib -9 as the test computes it, on the whole splits or on inspect's bound of their first bytes;
    repetitive documents cost less given the training split than alone."""
    if bound:
        monkeypatch.setattr(bytelab_data, "INSPECT_BYTES", bound)
    for i in range(40):
        (tmp_path / f"d{i}.txt").write_text(f"line {i} of a document, the same words again\n" * 50)
    options = {"paths": str(tmp_path / "d*.txt"), "cache_dir": str(tmp_path / "cache"), "seq_len": 16}
    args = ["data", "inspect", "--data=TextBytes", *(f"--data.init_args.{k}={v}" for k, v in options.items())]
    assert main(args) == 0
    out = capsys.readouterr().out
    cells = reference_cells(out)
    dm = built(options["paths"], tmp_path / "cache")
    scored = [bytes(dm.splits[s].data[:bound]) for s in ("train", "val", "test")]
    assert cells["zlib -9"] == [f"{len(zlib.compress(b, 9)) * 8 / len(b):.3f}" for b in scored]
    for name in ("zlib -9", "bz2 -9", "xz -9e"):
        assert cells[f"{name} | train"][0] == "-"
        alone, given = (np.array(cells[row][1:], dtype=float) for row in (name, f"{name} | train"))
        assert (given < alone).all(), name
    assert f"val {len(scored[1]):,} and test {len(scored[2]):,} bytes" in out
    assert ("inspect's bound" in out) == bool(bound)


def test_order0_entropy_of_known_data() -> None:
    assert order0_bits(np.arange(256, dtype=np.uint8).repeat(3)) == pytest.approx(8.0)
    assert order0_bits(np.array([7] * 10, dtype=np.uint8)) == 0.0
    assert order0_bits(np.array([0, 1] * 8 + [2, 3, 4, 5] * 4, dtype=np.uint8)) == pytest.approx(2.5)


def test_data_bench_measures_builds_beside_the_read_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.bench import data as bench

    for name, value in {"DOCUMENTS": 24, "DOCUMENT_LINES": 5, "SHARDS": 2, "IMAGES_PER_SHARD": 3}.items():
        monkeypatch.setattr(bench, name, value)
    documents = bench.text_documents()
    assert bench.text_documents() == documents and len(documents) == 24  # deterministic
    assert bench.bench_data(tmp_path / "out", reps=1) == 0
    table = pd.read_csv(tmp_path / "out" / "data.csv").set_index("corpus")
    megabytes = sum(len(d.encode()) for d in documents) / 1e6
    assert list(table.index) == ["raw", "jsonl.zst", "parquet", "jpeg"]
    assert table.loc[["raw", "jsonl.zst", "parquet"], "amount"].tolist() == [round(megabytes, 3)] * 3
    assert table.loc["jpeg", "amount"] == 12 and table.loc["jpeg", "unit"] == "images/s"
    assert (table[["workers_1", "workers_2"]] > 0).all().all()
    large = sum(len(d.encode()) for d in bench.text_documents(scale=bench.SCALE)) / 1e6
    assert bench.text_documents(scale=bench.SCALE)[:24] == documents
    assert table.loc[["raw", "jsonl.zst", "parquet"], "large_amount"].tolist() == [round(large, 3)] * 3
    assert table.loc["jpeg", "large_amount"] == 12 * bench.SCALE
    assert (table.loc[["jsonl.zst", "parquet", "jpeg"], "decoder_limit"] > 0).all()
    assert np.isnan(table.loc["raw", "decoder_limit"])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "limit_over_2_workers" in summary and "marginal_limit_over_2_workers" in summary
    assert all(name in summary for name in ("pyarrow read_table", "Pillow decode", "zstandard + orjson"))


def test_the_data_bench_splits_build_times_into_fixed_seconds_and_a_marginal_rate() -> None:
    from experiments.bench import data as bench

    # 0.5 s fixed, then 20 MB/s: 1.5 s for 20 MB, 4.5 s for 80 MB.
    fixed, rate = bench.fixed_and_rate((20.0, 80.0), (1.5, 4.5))
    assert fixed == pytest.approx(0.5) and rate == pytest.approx(20.0)
    assert all(np.isnan(bench.fixed_and_rate((20.0, 80.0), (1.5, 1.4))))  # noise beyond the work
    small = {"files": 3, "amount": 20.0, "unit": "MB/s", "tool": ["cat"], "limit": 0.25}
    small |= {"decoder": "pyarrow read_table", "decoded": 0.5}
    large = {"amount": 80.0, "limit": 0.55, "decoded": 1.1}
    row = bench.table_row("raw", {**small, "builds": {1: 1.5, 2: 1.0}}, {**large, "builds": {1: 4.5, 2: 2.5}})
    assert (row["workers_1"], row["workers_2"], row["limit"], row["limit_over_2_workers"]) == (
        pytest.approx(20 / 1.5, abs=1e-3),
        20.0,
        80.0,
        4.0,
    )
    assert (row["fixed_s_1"], row["fixed_s_2"], row["marginal_1"], row["marginal_2"]) == (
        0.5,
        0.5,
        20.0,
        40.0,
    )
    assert row["marginal_limit"] == 200.0 and row["marginal_limit_over_2_workers"] == 5.0
    # the decoder: 40 MB/s at 20 MB (2x the 2-worker build's 0.5 s), 100 MB/s at the margin (2.5x)
    assert (row["decoder_limit"], row["decoder_over_2_workers"], row["marginal_decoder_over_2_workers"]) == (
        40.0,
        2.0,
        2.5,
    )
