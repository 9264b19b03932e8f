"""Reference rows: compressors and the order-0 entropy on exactly the scored bytes, recorded by runs,
required by every bits-per-byte table."""

from __future__ import annotations

import bz2
import json
import lzma
import math
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest

from analysis.tables import with_reference, write_table
from datamodules import TextBytes, cache
from datamodules import reference as ref
from experiments.manifest import RunManifest, read_manifest
from modules import ByteLM, Decoder

pytestmark = pytest.mark.usefixtures("one_thread")
DIRECT = {
    "zlib -9": lambda d: zlib.compress(d, 9),
    "bz2 -9": lambda d: bz2.compress(d, 9),
    "xz -9e": lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME),
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Twelve documents of different, partly random text: 2 go to val, 2 to test, 8 to train."""
    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    words = [b"to", b"be", b"or", b"not", b"that", b"is", b"the", b"question", b"whether", b"nobler"]
    for i in range(12):
        text = b" ".join(words[j] for j in rng.integers(len(words), size=300 + 40 * i))
        (root / f"doc{i}.txt").write_bytes(text)
    return root


def datamodule(corpus: Path, cache: Path, **options: object) -> TextBytes:
    data = TextBytes(
        str(corpus), cache_dir=str(cache), val_fraction=0.15, test_fraction=0.15, **{"seq_len": 64, **options}
    )
    data.setup()
    return data


def bits(name: str, data: bytes) -> int:
    return 8 * len(DIRECT[name](data))


def test_compressor_rows_equal_a_direct_computation_on_the_scored_bytes(tmp_path, corpus, monkeypatch):
    """The scored bytes are the split's first max_eval_bytes bytes (documents end to end, the last
    one cut); each row is zlib/bz2/lzma of them, alone and after the tail of the training split,
    the tail as long as each compressor's prior (shortened here so that it cuts the split)."""
    monkeypatch.setattr(ref, "PRIOR_BYTES", {"zlib": 1500, "bz2": 900, "xz": 2500})
    data = datamodule(corpus, tmp_path / "cache", max_eval_bytes=3000)
    numbers = ref.reference(data)
    train = bytes(data.splits["train"].data)
    assert len(train) > 2500 and data.splits["val"].lengths[0] < 3000 < data.splits["val"].lengths.sum()
    for split in ("val", "test"):
        scored = bytes(data.splits[split].data[:3000])  # two documents, the second cut short
        row = numbers["splits"][split]
        assert row["bytes"] == 3000 and list(row["bpb"]) == ref.ROWS
        for name, size in (("zlib -9", 1500), ("bz2 -9", 900), ("xz -9e", 2500)):
            prior = train[-size:]
            assert row["bpb"][name] == bits(name, scored) / 3000
            given = bits(name, prior + scored) - bits(name, prior)
            assert row["bpb"][name + " | train"] == given / 3000
        counts = np.bincount(np.frombuffer(train, np.uint8), minlength=256) + 1
        expected = -sum(math.log2(counts[b] / counts.sum()) for b in scored) / 3000
        assert row["bpb"]["order-0 entropy"] == pytest.approx(expected, rel=1e-12)
    assert numbers["splits"]["val"]["bpb"]["xz -9e | train"] < numbers["splits"]["val"]["bpb"]["xz -9e"]
    # Other windows over the same bytes (seq_len, score_len) score the same bytes: the same numbers.
    other = datamodule(corpus, tmp_path / "other", max_eval_bytes=3000, seq_len=256, score_len=32)
    assert ref.compute_reference(other)["splits"] == numbers["splits"]


def test_order0_entropy_of_data_with_known_entropy():
    """Bytes 0, 1, 2 with probabilities 1/2, 1/4, 1/4 have 1.5 bits of entropy; add-one smoothing over
    256 values gives (count + 1) / (N + 256), slightly more; a byte never seen in training costs
    log2(N + 256) bits."""
    n = 2**15
    train = np.array([0] * (2 * n) + [1] * n + [2] * n, dtype=np.uint8)
    scored = np.array([0, 0, 1, 2] * 1000, dtype=np.uint8)
    total = 4 * n + 256
    exact = -(2 * math.log2((2 * n + 1) / total) + 2 * math.log2((n + 1) / total)) / 4
    assert ref.order0_bits(train, scored) / len(scored) == pytest.approx(exact, rel=1e-12)
    assert ref.order0_bits(train, scored) / len(scored) == pytest.approx(1.5, abs=0.02)
    assert ref.order0_bits(train, np.array([7], np.uint8)) == pytest.approx(math.log2(total), rel=1e-12)


def test_reference_numbers_are_cached_once_per_scored_bytes(tmp_path, corpus, monkeypatch):
    data = datamodule(corpus, tmp_path / "cache", max_eval_bytes=1000)
    first = ref.reference(data)
    files = sorted(data.cache_path.glob("reference-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == first
    assert not list(data.cache_path.glob(".*"))  # written atomically: no temporary file left

    def fail(_):
        raise AssertionError("recomputed")

    monkeypatch.setattr(ref, "compute_reference", fail)
    assert ref.reference(datamodule(corpus, tmp_path / "cache", max_eval_bytes=1000, score_len=16)) == first
    with pytest.raises(AssertionError, match="recomputed"):  # another prefix: other scored bytes
        ref.reference(datamodule(corpus, tmp_path / "cache", max_eval_bytes=2000))


def reference_frame(dataset: str = "corpus", value: float = 3.0) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"dataset": dataset, "split": s, "reference": r, "bpb": value + i, "bytes": 10, "rule": ref.RULE}
            for s in ("val", "test")
            for i, r in enumerate(ref.ROWS)
        ]
    )


def test_the_table_writer_cannot_write_a_bits_per_byte_table_without_reference_rows(tmp_path):
    table = pd.DataFrame({"architecture": ["Megabyte"], "dataset": ["corpus"], "val bpb": [2.5]})
    with pytest.raises(
        ValueError, match="table ranking: no reference numbers for val bits per byte of dataset corpus"
    ):
        write_table(table, tmp_path, "ranking")
    with pytest.raises(ValueError, match="no reference numbers"):  # numbers of another dataset only
        write_table(table, tmp_path, "ranking", reference_frame("other"))
    assert not list(tmp_path.iterdir())
    write_table(table, tmp_path, "ranking", reference_frame())
    written = pd.read_csv(tmp_path / "ranking.csv")
    assert written["architecture"].tolist() == ["Megabyte", *ref.ROWS]
    assert written["val bpb"].tolist() == [2.5, *(3.0 + i for i in range(len(ref.ROWS)))]
    assert ref.RULE in (tmp_path / "ranking.md").read_text()
    # The paper table's layout: one column per dataset and split, no dataset column.
    paper = pd.DataFrame({"architecture": ["Decoder"], "corpus val bpb": [2.0], "corpus test bpb": [2.1]})
    rows = with_reference(paper, reference_frame()).set_index("architecture")
    assert rows.loc["bz2 -9 | train", ["corpus val bpb", "corpus test bpb"]].tolist() == [6.0, 6.0]
    # A table without a split's bits per byte needs none.
    write_table(pd.DataFrame({"architecture": ["Decoder"], "alpha": [0.1]}), tmp_path, "fits")
    assert ref.RULE not in (tmp_path / "fits.md").read_text()


def test_a_run_directory_from_a_tiny_fit_records_the_reference_rows(tmp_path, corpus):
    data = TextBytes(
        str(corpus),
        seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.15,
        test_fraction=0.15,
        max_eval_bytes=512,
    )
    lm = ByteLM(Decoder(d_model=16, n_layers=1, n_heads=2, max_seq_len=32), warmup_steps=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[RunManifest(tmp_path / "run")],
    )
    trainer.fit(lm, datamodule=data)
    recorded = read_manifest(tmp_path / "run")["reference"]
    scored = bytes(data.splits["val"].data[:512])
    assert recorded["rule"] == ref.RULE and recorded["splits"]["val"]["bytes"] == 512
    assert recorded["splits"]["val"]["bpb"]["zlib -9"] == bits("zlib -9", scored) / 512
    assert recorded == ref.reference(data)


def test_the_compressors_progress_bar_counts_every_byte_they_compress(tmp_path, corpus, monkeypatch):
    """Each compressor compresses its prior once and each split alone and after the prior: the bar's
    total is those bytes, and it ends complete, whatever the numbers."""
    monkeypatch.setattr(ref, "PRIOR_BYTES", {"zlib": 1500, "bz2": 900, "xz": 2500})
    finished = []

    class Recording(cache.Progress):
        def __exit__(self, *exc: object) -> None:
            finished.extend((task.completed, task.total) for task in self.tasks)
            super().__exit__(*exc)

    data = datamodule(corpus, tmp_path / "cache", max_eval_bytes=3000)
    monkeypatch.setattr(cache, "Progress", Recording)  # after the build, whose own bar is not counted
    ref.compute_reference(data)
    priors = 1500 + 900 + 2500
    assert finished == [(priors * 3 + 3 * 2 * 2 * 3000,) * 2]
