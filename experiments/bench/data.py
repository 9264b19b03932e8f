"""``bytelab bench --preset data``: how fast a cache is built, beside how fast the machine reads the files.

The corpora are generated deterministically into a temporary folder (lines of the embedded
Shakespeare drawn by a seeded generator; crops of the embedded photos saved as JPEG): 3000 raw text
files, the same documents as 8 ``.jsonl.zst`` shards and as 8 Parquet shards (about 24 MB of
documents each), and 4 WebDataset tar shards of 250 JPEGs. Each is built into a fresh cache with 1
and 2 workers; the machine's limit is the same files read by ``cat``, or decompressed by
``zstd -dc``, in the same rounds (``measure``), so both read from the page cache. For Parquet and JPEG,
whose tool decodes nothing, and JSON lines, whose tool decompresses but parses no JSON, the decoder
itself is timed too (pyarrow's read_table, Pillow's decode, zstandard's decompression with orjson's
parse of every line; one process): the limit no build can pass.

A build of 20 MB takes a second or less, of which a fixed part (starting the pool, the manifest)
would dominate, and says little about a corpus of gigabytes. So every corpus is also generated
SCALE times larger (SCALE times the documents, the same number of shards) and timed the same way;
the two sizes give each build, and the limit tool, a line: its intercept is the fixed seconds, its
slope the marginal rate, what a large corpus is built at.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import to_markdown
from datamodules import ByteDataModule, ImageBytes, TextBytes
from datamodules.files import read_tar
from datamodules.image import PHOTOS
from datamodules.native import require
from datamodules.text import SHAKESPEARE

DOCUMENTS, DOCUMENT_LINES, SHARDS = 3000, 200, 8
IMAGE_SHARDS, IMAGES_PER_SHARD, IMAGE_SIDE = 4, 250, 96
# The larger corpora hold this many times the documents (and images) of the first ones.
SCALE = 4


def text_documents(seed: int = 0, scale: int = 1) -> list[str]:
    """``scale`` x DOCUMENTS documents of DOCUMENT_LINES lines of Shakespeare each (about 8 KB),
    drawn at random; the first DOCUMENTS are the same at every scale."""
    text = b"".join(raw for _, raw in read_tar(SHAKESPEARE)).decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    picks = np.random.default_rng(seed).integers(0, len(lines), (scale * DOCUMENTS, DOCUMENT_LINES))
    return ["\n".join(lines[i] for i in row) + "\n" for row in picks]


def write_corpora(root: Path, scale: int = 1) -> dict[str, list[Path]]:
    """The benchmarked corpora under ``root``, ``scale`` times the documents: the files of each."""
    documents = text_documents(scale=scale)
    raw = root / "raw"
    raw.mkdir()
    for i, document in enumerate(documents):
        (raw / f"{i:05d}.txt").write_text(document)
    zstandard = require("zstandard", ".zst files")
    pa, pq = require("pyarrow", "Parquet"), require("pyarrow.parquet", "Parquet")
    for kind in ("jsonl.zst", "parquet"):
        (root / kind).mkdir()
    for shard, rows in enumerate(np.array_split(np.array(documents, dtype=object), SHARDS)):
        lines = "".join(json.dumps({"text": row}) + "\n" for row in rows).encode()
        compressed = zstandard.ZstdCompressor(level=3).compress(lines)
        (root / "jsonl.zst" / f"shard{shard}.jsonl.zst").write_bytes(compressed)
        pq.write_table(pa.table({"text": list(rows)}), root / "parquet" / f"shard{shard}.parquet")
    write_image_shards(root / "jpeg", scale * IMAGES_PER_SHARD)
    return {kind: sorted((root / kind).iterdir()) for kind in ("raw", "jsonl.zst", "parquet", "jpeg")}


def write_image_shards(folder: Path, per_shard: int, seed: int = 0) -> None:
    """IMAGE_SHARDS tar shards of ``per_shard`` JPEGs: random IMAGE_SIDE-pixel crops of the photos."""
    Image = require("PIL.Image", "images")
    photos = [np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")) for _, raw in read_tar(PHOTOS)]
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for shard in range(IMAGE_SHARDS):
        with tarfile.open(folder / f"shard{shard}.tar", "w") as tar:
            for i in range(per_shard):
                photo = photos[rng.integers(len(photos))]
                top, left = (rng.integers(0, n - IMAGE_SIDE) for n in photo.shape[:2])
                buffer = io.BytesIO()
                Image.fromarray(photo[top : top + IMAGE_SIDE, left : left + IMAGE_SIDE]).save(buffer, "JPEG")
                info = tarfile.TarInfo(f"{i:05d}.jpg")
                info.size = buffer.tell()
                tar.addfile(info, io.BytesIO(buffer.getvalue()))


def build_seconds(make: Callable[[str, int], ByteDataModule], workers: int) -> tuple[float, dict]:
    """The seconds of one cache build from scratch, and its split counts."""
    folder = tempfile.mkdtemp(prefix="bytelab-bench-cache.")
    try:
        dm = make(folder, workers)
        # Nothing left to write back (the corpus just written, the last build's cache) while timed.
        os.sync()
        start = time.perf_counter()
        dm.prepare_data()
        seconds = time.perf_counter() - start
        manifest = json.loads((dm.cache_path / "manifest.json").read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, manifest["splits"]


def run_tool(tool: list[str], files: list[Path]) -> None:
    """``tool`` reading ``files`` to /dev/null: the machine's limit."""
    subprocess.run([*tool, *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def read_parquet(files: list[Path]) -> None:
    """The text column of every Parquet file, read by pyarrow in one thread: the decoding a build
    of Parquet cannot do without (decompressing the pages), which ``cat`` does not."""
    pq = require("pyarrow.parquet", "Parquet")
    for path in files:
        pq.read_table(path, columns=["text"], use_threads=False)


def parse_json_lines(files: list[Path]) -> None:
    """Every line of the .jsonl.zst shards decompressed by zstandard and parsed by orjson, its text
    field encoded to UTF-8, in one process: the decoding a build of JSON lines cannot do without,
    of which ``zstd -dc`` does only the first half."""
    zstandard, orjson = require("zstandard", ".zst files"), require("orjson", "JSON lines")
    for path in files:
        text = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
        for line in text.splitlines():
            orjson.loads(line)["text"].encode()


def decode_jpegs(files: list[Path]) -> None:
    """Every image of the tar shards decoded to RGB pixels by Pillow, in one process (no resizing):
    the decoding a build of JPEGs cannot do without."""
    Image = require("PIL.Image", "images")
    for path in files:
        for _, raw in read_tar(path):
            with Image.open(io.BytesIO(raw)) as image:
                image.convert("RGB").load()


# A decoder's own rate, the limit of a build of a compressed format beside the tool's (which reads bytes).
DECODERS: dict[str, tuple[str, Callable[[list[Path]], None]]] = {
    "jsonl.zst": ("zstandard + orjson", parse_json_lines),
    "parquet": ("pyarrow read_table", read_parquet),
    "jpeg": ("Pillow decode", decode_jpegs),
}


def read_seconds(read: Callable[[list[Path]], None], files: list[Path]) -> float:
    """The seconds of one call of ``read(files)`` (the limit tool, or a decoder), nothing left to
    write back meanwhile."""
    os.sync()
    start = time.perf_counter()
    read(files)
    return time.perf_counter() - start


def fixed_and_rate(amounts: tuple[float, float], seconds: tuple[float, float]) -> tuple[float, float]:
    """The line through two (amount, seconds) measurements: its intercept, the fixed seconds, and the
    inverse of its slope, the marginal rate (amount per second); NaN when the larger amount was not
    slower (noise larger than the work)."""
    slope = (seconds[1] - seconds[0]) / (amounts[1] - amounts[0])
    if slope <= 0:
        return float("nan"), float("nan")
    return seconds[0] - slope * amounts[0], 1 / slope


def measure(root: Path, reps: int) -> dict[int, dict[str, dict]]:
    """The corpora written under ``root`` at both sizes (1 and SCALE), and for each size and corpus
    its amount and unit, its limit tool and the median seconds of the tool (None when missing), of
    the decoder and of builds at 1 and 2 workers.

    The two sizes, the tool, the decoder and the builds of a corpus are timed in rounds, one of each
    a round, ``reps`` rounds after one that warms up (the tool's binary, the page cache) and is
    dropped: the machine's speed drifts between minutes, so timing the small corpus, then minutes
    later the large one, would put the drift into the marginal rate."""
    sizes = (1, SCALE)
    corpora = {}
    for scale in sizes:
        (root / f"x{scale}").mkdir()
        corpora[scale] = write_corpora(root / f"x{scale}", scale)
    measured: dict[int, dict[str, dict]] = {scale: {} for scale in sizes}
    for kind in corpora[1]:
        tool = ["zstd", "-dc"] if kind == "jsonl.zst" else ["cat"]
        has_tool = shutil.which(tool[0]) is not None
        decoder = DECODERS.get(kind)

        def make(cache: str, workers: int, paths: str, kind: str = kind) -> ByteDataModule:
            if kind == "jpeg":
                return ImageBytes(paths, resolution=32, seq_len=768, cache_dir=cache, workers=workers)
            return TextBytes(paths, cache_dir=cache, workers=workers)

        timed: dict[tuple[int, str], list[float]] = {}
        counts: dict[int, dict] = {}
        for rep in range(reps + 1):
            for scale in sizes:
                files, paths = corpora[scale][kind], str(root / f"x{scale}" / kind)
                seconds = {"tool": read_seconds(functools.partial(run_tool, tool), files)} if has_tool else {}
                if decoder:
                    seconds["decoder"] = read_seconds(decoder[1], files)
                for workers in (1, 2):
                    seconds[f"build{workers}"], counts[scale] = build_seconds(
                        functools.partial(make, paths=paths), workers
                    )
                for what, value in seconds.items():
                    if rep:
                        timed.setdefault((scale, what), []).append(value)
        for scale in sizes:
            median = {what: statistics.median(values) for (at, what), values in timed.items() if at == scale}
            split_counts = counts[scale].values()
            unit, amount = (
                ("images/s", sum(c["documents"] for c in split_counts))
                if kind == "jpeg"
                else ("MB/s", sum(c["bytes"] for c in split_counts) / 1e6)
            )
            measured[scale][kind] = {
                "files": len(corpora[scale][kind]),
                "amount": amount,
                "unit": unit,
                "tool": tool,
                "limit": median.get("tool"),
                "decoder": decoder[0] if decoder else None,
                "decoded": median.get("decoder"),
                "builds": {workers: median[f"build{workers}"] for workers in (1, 2)},
            }
    return measured


def table_row(kind: str, small: dict, large: dict) -> dict:
    """The summary row of one corpus: its rates at the first size, and the fixed seconds and
    marginal rates of the line through both sizes."""
    amount, tool, limit = small["amount"], small["tool"], small["limit"]
    amounts = (amount, large["amount"])
    lines = {
        workers: fixed_and_rate(amounts, (small["builds"][workers], large["builds"][workers]))
        for workers in (1, 2)
    }
    nan = float("nan")
    limit_rate = fixed_and_rate(amounts, (limit, large["limit"]))[1] if limit and large["limit"] else nan
    decoded = small.get("decoded")
    decoder_rate = fixed_and_rate(amounts, (decoded, large["decoded"]))[1] if decoded else nan
    return {
        "corpus": kind,
        "files": small["files"],
        "amount": round(amount, 3),
        "unit": small["unit"],
        "limit_tool": " ".join(tool) if limit else f"{tool[0]} missing (apt-get install {tool[0]})",
        "limit": round(amount / limit, 3) if limit else nan,
        "workers_1": round(amount / small["builds"][1], 3),
        "workers_2": round(amount / small["builds"][2], 3),
        "limit_over_2_workers": round(small["builds"][2] / limit, 2) if limit else nan,
        "large_amount": round(large["amount"], 3),
        "fixed_s_1": round(lines[1][0], 3),
        "fixed_s_2": round(lines[2][0], 3),
        "marginal_limit": round(limit_rate, 3),
        "marginal_1": round(lines[1][1], 3),
        "marginal_2": round(lines[2][1], 3),
        "marginal_limit_over_2_workers": round(limit_rate / lines[2][1], 2),
        "decoder": small.get("decoder") or "",
        "decoder_limit": round(amount / decoded, 3) if decoded else nan,
        "decoder_over_2_workers": round(small["builds"][2] / decoded, 2) if decoded else nan,
        "marginal_decoder_over_2_workers": round(decoder_rate / lines[2][1], 2),
    }


def bench_data(folder: Path, reps: int = 3, note: str = "") -> int:
    """Measure cache building of each benchmarked corpus at 1 and 2 workers beside its read limit, at
    two sizes, write ``data.csv`` and ``summary.md`` into ``folder`` and print the table."""
    with tempfile.TemporaryDirectory(prefix="bytelab-bench-data.") as tmp:
        measured = measure(Path(tmp), reps)
    table = pd.DataFrame(
        [table_row(kind, small, measured[SCALE][kind]) for kind, small in measured[1].items()]
    )
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "data.csv", index=False)
    text = (
        "# Cache building against the machine's read limit\n\n"
        "Documents (MB of document bytes, or images) per second of a cache build from scratch, at 1 and 2\n"
        "workers, beside the same files read by the limit tool in the same run (page cache warm); the\n"
        f"median of {reps} rounds, each of which times a corpus's two sizes, its tool, its decoder and its\n"
        "builds one after the other (after a round dropped as warm-up), so that the machine's drift from\n"
        "minute to minute does not fall between the two sizes. `limit_over_2_workers`: how many times\n"
        "longer a 2-worker build takes than the tool (the goal: 2 or less).\n\n"
        "A build of this size takes a second or less, and a fixed part of it (starting the worker pool,\n"
        "writing the manifest) weighs more than it would in a large corpus. So every corpus is also\n"
        f"built at {SCALE}x the documents (`large_amount`: as many shards, {SCALE}x the raw files) and the\n"
        "line through the two sizes splits each time into `fixed_s_1` / `fixed_s_2` (its intercept,\n"
        "seconds a build takes whatever the corpus) and `marginal_1` / `marginal_2` (the inverse of its\n"
        "slope, the rate at which a large corpus is built); `marginal_limit` is the tool's slope the same\n"
        "way, and `marginal_limit_over_2_workers` the goal's ratio for a large corpus. A fixed part below\n"
        "zero, or NaN, means the noise of the machine was larger than the difference.\n\n"
        "For Parquet and JPEG the tool reads compressed bytes and decodes nothing, and for JSON lines it\n"
        "decompresses but parses no JSON, so the table also times the decoder itself, in one process, on\n"
        "the same files (`decoder`: pyarrow's read_table of the text column; Pillow's decode to RGB,\n"
        "without the build's resize; zstandard's decompression and orjson's parse of every line, its text\n"
        "encoded): `decoder_limit` its rate, `decoder_over_2_workers` and\n"
        "`marginal_decoder_over_2_workers` the goal's ratios against it.\n\n"
        f"{to_markdown(table).rstrip()}\n\n{note}".rstrip()
        + "\n"
    )
    (folder / "summary.md").write_text(text)
    print(text)
    return 0
