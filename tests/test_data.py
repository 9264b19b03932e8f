"""Datamodules: the evaluation protocol, training windows, splits, the cache and input errors."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import ByteDataModule, TextBytes
from datamodules.datasets import TrainSampler, TrainWindows
from datamodules.protocol import (
    assign_splits,
    evaluation_windows,
    name_keys,
    training_coverage,
    training_ends,
    training_window,
)

# Awkward on purpose: shorter than a window, one byte, not multiples of 6 or 16, exactly 16 or 32.
LENGTHS = [1, 5, 15, 16, 17, 31, 32, 33, 47, 100, 3, 64]


def write_corpus(folder: Path, lengths: list[int], seed: int = 0) -> list[bytes]:
    """Random documents (distinct with overwhelming probability), one file each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    for i, doc in enumerate(docs):
        (folder / f"doc{i:02d}.bin").write_bytes(doc)
    return docs


def make(tmp_path: Path, lengths: list[int] = LENGTHS, **options: object) -> tuple[TextBytes, list[bytes]]:
    docs = write_corpus(tmp_path / "corpus", lengths)
    options = {"seq_len": 16, "val_fraction": 0.3, "test_fraction": 0.3, **options}
    dm = TextBytes(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), **options)
    dm.setup()
    return dm, docs


def split_documents(dm: ByteDataModule, split: str) -> list[bytes]:
    data = dm.splits[split]
    return [data.document(i).tobytes() for i in range(len(data))]


@pytest.mark.parametrize("score_len", [16, 6, 1])
def test_windows_score_every_byte_once(score_len: int) -> None:
    seq_len = 16
    windows = evaluation_windows(np.array(LENGTHS), seq_len, score_len)
    scored = [np.zeros(n, dtype=int) for n in LENGTHS]
    for doc, start, end, num_scored in windows:
        assert 0 <= start < end <= LENGTHS[doc]
        assert end - start <= seq_len and 1 <= num_scored <= min(score_len, end - start)
        assert start == 0 or end - start == seq_len  # only a document's first windows are short
        scored[doc][end - num_scored : end] += 1
    assert all((counts == 1).all() for counts in scored)


def test_windows_values() -> None:
    # A 40-byte document, seq_len 16, score_len 6: chunks [0,6) [6,12) ... [36,40).
    windows = evaluation_windows(np.array([40]), 16, 6).tolist()
    assert windows[:4] == [[0, 0, 6, 6], [0, 0, 12, 6], [0, 2, 18, 6], [0, 8, 24, 6]]
    assert windows[-1] == [0, 24, 40, 4]


@pytest.mark.parametrize("score_len", [16, 6])
def test_evaluation_batches_follow_the_protocol(tmp_path: Path, score_len: int) -> None:
    dm, _ = make(tmp_path, score_len=score_len, eval_batch_size=3)
    for split in ("val", "test"):
        docs = split_documents(dm, split)
        windows = dm.windows(split).tolist()
        batches = list(dm.dataloader(split, rank=0, world_size=1))
        rows = [
            (x, int(n)) for batch in batches for x, n in zip(batch["x"], batch["num_scored"], strict=True)
        ]
        assert len(rows) == len(windows)
        scored = [np.zeros(len(doc), dtype=int) for doc in docs]
        for (x, num_scored), (doc, start, end, expected_scored) in zip(rows, windows, strict=True):
            assert x.dtype == torch.long and len(x) <= 16
            assert bytes(x.tolist()) == docs[doc][start:end]
            assert num_scored == expected_scored <= score_len
            scored[doc][end - num_scored : end] += 1
        assert all((counts == 1).all() for counts in scored)
        assert sum(int(b["num_scored"].sum()) for b in batches) == sum(map(len, docs))
        assert all(len(b["x"]) <= 3 for b in batches)
        # Batches are maximal runs of equal length: a batch closes early only when the length changes.
        for b, following in zip(batches, batches[1:], strict=False):
            assert len(b["x"]) == 3 or b["x"].shape[1] != following["x"].shape[1]


def test_evaluation_ranks_split_batches_without_duplicates(tmp_path: Path) -> None:
    dm, _ = make(tmp_path, score_len=6, eval_batch_size=2)
    single = [b["x"] for b in dm.dataloader("val", rank=0, world_size=1)]
    ranks = [list(dm.dataloader("val", rank=r, world_size=3)) for r in range(3)]
    assert len(single) % 3 == 2  # uneven on purpose: rank 2 gets one padding batch
    assert [len(batches) for batches in ranks] == [len(single) // 3 + 1] * 3
    padding = ranks[2].pop()
    assert padding["x"].shape[0] == 1 and padding["num_scored"].tolist() == [0]
    for r, batches in enumerate(ranks):
        assert all(torch.equal(a["x"], b) for a, b in zip(batches, single[r::3], strict=True))


def test_training_windows_lie_inside_one_document(tmp_path: Path) -> None:
    dm, _ = make(tmp_path, batch_size=4, train_samples_per_epoch=200)
    train = split_documents(dm, "train")
    loader = dm.dataloader("train", rank=0, world_size=1)
    batches = list(loader)
    rows = torch.cat([b["x"] for b in batches])
    lengths = torch.cat([b["lengths"] for b in batches])
    assert len(loader) == 50 and rows.shape == (200, 16) and rows.dtype == torch.long
    assert 0 < (lengths < 16).sum() < 200  # short windows (at document starts) and full ones
    for row, n in zip(rows.tolist(), lengths.tolist(), strict=True):
        window = bytes(row[:n])
        assert not any(row[n:])  # zero padding after the window
        # A full window lies anywhere in one document; a short one is a document's first bytes.
        assert any(window in doc if n == 16 else doc.startswith(window) for doc in train)


def test_training_windows_end_on_uniform_bytes(tmp_path: Path) -> None:
    # The rule that makes the training bytes independent of seq_len: a window ends on a uniform byte
    # of the training split (documents drawn in proportion to their length), whatever seq_len is.
    dm, _ = make(tmp_path, lengths=[20, 40, 30, 10, 36, 5], val_fraction=0.1, test_fraction=0.1)
    train = dm.splits["train"]
    base = train.data.__array_interface__["data"][0]
    ends = {}
    for seq_len in (4, 16, 64):
        windows = TrainWindows(train, seq_len=seq_len, seed=0)
        last = [windows[i].__array_interface__["data"][0] - base + len(windows[i]) - 1 for i in range(4000)]
        ends[seq_len] = np.bincount(last, minlength=len(train.data))
    assert len(train) == 4 and np.array_equal(ends[4], ends[16]) and np.array_equal(ends[4], ends[64])
    expected = 4000 / len(train.data)
    assert ends[16].min() > 0.5 * expected and ends[16].max() < 1.5 * expected


def test_two_context_lengths_train_on_the_same_documents(tmp_path: Path) -> None:
    # Under the rule before this one (whole windows only), a 64-byte model never trained on documents
    # shorter than 64 bytes and drew the rest in proportion to len - 63: a different mix from a
    # 16-byte model's. Now sample i is the same document, ending on the same byte, at every seq_len.
    dm, _ = make(tmp_path, lengths=[20, 40, 30, 10, 36, 5, 100, 7], val_fraction=0.1, test_fraction=0.1)
    lengths = dm.splits["train"].lengths
    ends = training_ends(lengths)
    for i in range(300):
        short, long = (training_window(ends, 3, i, seq_len) for seq_len in (16, 64))
        assert short[0] == long[0] and short[2] == long[2]
        assert short[1] == max(0, short[2] - 16) and long[1] == max(0, long[2] - 64)
    assert training_coverage(lengths, 64)["reachable_fraction"] == 1.0
    coverage = training_coverage(lengths, 16)
    assert coverage["short_window_fraction"] == sum(min(n, 15) for n in lengths) / lengths.sum()


def train_rows(dm: ByteDataModule, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    return torch.cat([b["x"] for b in dm.dataloader("train", rank=rank, world_size=world_size)])


def test_training_stream_is_a_function_of_seed_and_sample_number(tmp_path: Path) -> None:
    dm, _ = make(tmp_path / "a", batch_size=4, train_samples_per_epoch=40, seed=1)
    again, _ = make(tmp_path / "b", batch_size=4, train_samples_per_epoch=40, seed=1)
    other, _ = make(tmp_path / "c", batch_size=4, train_samples_per_epoch=40, seed=2)
    rows = train_rows(dm)
    assert torch.equal(rows, train_rows(again))
    assert (rows != train_rows(other)).any(dim=1).float().mean() > 0.5
    assert len(set(map(tuple, rows.tolist()))) > 30  # the windows vary within a stream
    # Two ranks share the single-process stream: rank r takes samples r, r + 2, ...
    rank0, rank1 = train_rows(dm, 0, 2), train_rows(dm, 1, 2)
    assert len(rank0) == len(rank1) == 20
    assert torch.equal(rank0, rows[0::2]) and torch.equal(rank1, rows[1::2])


def test_training_epochs_continue_the_stream() -> None:
    sampler = TrainSampler(4, rank=1, world_size=2)
    assert list(sampler) == [1, 3, 5, 7]
    sampler.set_epoch(1)
    assert list(sampler) == [9, 11, 13, 15]


def test_document_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    dm, docs = make(tmp_path / "a", lengths=[20 + i for i in range(20)], val_fraction=0.1, test_fraction=0.15)
    again, _ = make(tmp_path / "b", lengths=[20 + i for i in range(20)], val_fraction=0.1, test_fraction=0.15)
    found = {split: split_documents(dm, split) for split in ("train", "val", "test")}
    assert {s: len(d) for s, d in found.items()} == {"train": 15, "val": 2, "test": 3}
    assert sorted(sum(found.values(), [])) == sorted(docs)  # each document in exactly one split
    assert all(found[s] == split_documents(again, s) for s in found)
    names = [f"doc{i:02d}.bin" for i in range(20)]
    assert all(found[s] == [docs[i] for i in assign_splits(names, 0.1, 0.15)[s]] for s in found)


def test_split_follows_name_hashes() -> None:
    names = [f"file{i}" for i in range(10)]
    assign = assign_splits(names, 0.1, 0.2)
    order = sorted(range(10), key=lambda i: hashlib.sha256(names[i].encode()).hexdigest())
    assert assign == {"train": sorted(order[3:]), "val": [order[0]], "test": sorted(order[1:3])}


def test_split_orders_the_keys_as_bytes_compare_and_keeps_equal_ones_in_order() -> None:
    """The keys are sorted as numpy strings: zero bytes inside or at the end of a key, and equal
    keys, must sort as Python sorts the bytes (stably), with or without keys given."""
    rng = np.random.default_rng(0)
    chunks = rng.integers(0, 3, (400, 32), dtype=np.uint8)  # zeros everywhere, many shared prefixes
    chunks[::7, -5:] = 0  # keys that end in zero bytes
    chunks[1::50] = chunks[0]  # equal keys
    keys = chunks.tobytes()
    order = sorted(range(400), key=lambda i: keys[32 * i : 32 * i + 32])
    got = assign_splits([""] * 400, 0.1, 0.2, keys)
    assert got == {"train": sorted(order[120:]), "val": sorted(order[:40]), "test": sorted(order[40:120])}
    names = [f"shard/{i}" for i in range(50)] + ["caf\u00e9", "lone \udc80"]
    assert assign_splits(names, 0.1, 0.1, name_keys(names)) == assign_splits(names, 0.1, 0.1)
    with pytest.raises(ValueError, match="32 a name"):
        assign_splits(names, 0.1, 0.1, keys[:64])


def test_single_file_is_split_contiguously(tmp_path: Path) -> None:
    (doc,) = write_corpus(tmp_path / "corpus", [1000])
    dm = TextBytes(str(tmp_path / "corpus" / "doc00.bin"), cache_dir=str(tmp_path / "cache"), seq_len=16)
    dm.setup()
    assert [split_documents(dm, s) for s in ("train", "val", "test")] == [
        [doc[:900]],
        [doc[900:950]],
        [doc[950:]],
    ]


def test_embedded_shakespeare(tmp_path: Path) -> None:
    dm = TextBytes(cache_dir=str(tmp_path), seq_len=256)
    dm.setup()
    splits = dm.manifest["splits"]
    assert sum(s["bytes"] for s in splits.values()) == 5_057_198
    assert [splits[s]["documents"] for s in ("train", "val", "test")] == [36, 3, 3]
    assert b"Romeo" in dm.splits["train"].data.tobytes() + dm.splits["val"].data.tobytes()
    assert next(iter(dm.train_dataloader()))["x"].shape == (8, 256)


def test_cache_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_corpus(tmp_path / "corpus", LENGTHS)
    reads = []
    parts = TextBytes.corpus_parts
    monkeypatch.setattr(TextBytes, "corpus_parts", lambda self, *args: reads.append(1) or parts(self, *args))
    dm = TextBytes(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), seq_len=16)
    dm.prepare_data()
    manifest = dm.cache_path / "manifest.json"
    built = manifest.stat().st_mtime_ns
    dm.prepare_data()
    TextBytes(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), seq_len=32, score_len=4).setup()
    assert len(reads) == 1 and manifest.stat().st_mtime_ns == built
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [dm.cache_path.name]
    manifest.unlink()  # a cache without its manifest is incomplete: rebuilt
    dm.prepare_data()
    assert len(reads) == 2 and manifest.exists()


def test_cache_is_rebuilt_when_a_source_changes(tmp_path: Path) -> None:
    docs = write_corpus(tmp_path / "corpus", [40, 50, 60, 70])
    dm = TextBytes(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), seq_len=16)
    dm.setup()
    first = dm.cache_path
    before = sorted(sum((split_documents(dm, s) for s in ("train", "val", "test")), []))
    assert before == sorted(docs)
    source = tmp_path / "corpus" / "doc00.bin"
    source.write_bytes(b"x" * 45)  # new content and size
    dm.setup()
    assert dm.cache_path != first
    after = sorted(sum((split_documents(dm, s) for s in ("train", "val", "test")), []))
    assert after == sorted([b"x" * 45, *docs[1:]])
    second = dm.cache_path
    source.write_bytes(b"y" * 45)  # same size, new content: only the mtime tells
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert dm.cache_path not in (first, second)
    assert TextBytes(
        str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), val_fraction=0.1
    ).cache_path not in (
        first,
        second,
    )


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_corpus(tmp_path / "corpus", LENGTHS)

    def failing(self: TextBytes, workers, scratch, progress):
        (scratch / "part000000.bin").write_bytes(b"some bytes")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(TextBytes, "corpus_parts", failing)
    dm = TextBytes(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        dm.prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []


def test_empty_corpus(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", [0, 0, 0])
    dm = TextBytes(str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="holds no bytes"):
        dm.prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder .*empty.* holds no files"):
        TextBytes(str(tmp_path / "empty"))


def test_empty_split(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", [10, 10, 10])
    dm = TextBytes(
        str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), val_fraction=0.4, test_fraction=0.4
    )
    with pytest.raises(ValueError, match="split 'train' .* would be empty"):
        dm.prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere.txt' does not exist"):
        TextBytes(str(tmp_path / "nowhere.txt"))
    with pytest.raises(ValueError, match=r"\*.txt' matches no files"):
        TextBytes([str(tmp_path / "*.txt")])


def test_corpus_shorter_than_a_window(tmp_path: Path) -> None:
    # Every document is shorter than seq_len: training still reaches every byte, in short windows.
    dm, _ = make(tmp_path, lengths=[5, 6, 7, 8, 9], val_fraction=0.2, test_fraction=0.2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[1] == 16 and (batch["lengths"] <= 9).all()
    assert dm.training_coverage() == {"reachable_fraction": 1.0, "short_window_fraction": 1.0}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"score_len": 2048}, "score_len=2048 must be between 1 and seq_len=1024"),
        ({"seq_len": 0}, "seq_len=0 must be at least 1"),
        ({"eval_batch_size": 0}, "eval_batch_size=0 must be at least 1"),
        ({"val_fraction": 0.0}, "val_fraction=0.0 must be between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction = 1.0 must be below 1"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextBytes(**options)
