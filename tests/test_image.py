"""ImageBytes: scan orders and their inverses, image sources, crops and tiles, the evaluation protocol,
bad input, the embedded photos and a few steps of every model through the bytelab entry point."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image

from datamodules import ImageBytes
from datamodules.image import PHOTOS, as_hwc, patch_scan, patch_unscan, square
from experiments.cli import main

from .test_cli import fit_modality_default

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """Random PNGs of the given (width, height), every third one grayscale."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (width, height) in enumerate(sizes):
        shape = (height, width) if i % 3 == 2 else (height, width, 3)
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        image.save(folder / f"img{i}.png")
        images.append(image)
    return images


def make(tmp_path: Path, sizes: list[tuple[int, int]], **options: object) -> ImageBytes:
    write_images(tmp_path / "images", sizes)
    options = {"resolution": 8, "seq_len": 48, "val_fraction": 0.2, "test_fraction": 0.2, **options}
    dm = ImageBytes(str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"), **options)
    dm.setup()
    return dm


def test_patch_scan_of_a_4x4_image_by_hand() -> None:
    # Pixel k of the raster order (row k // 4, column k % 4) holds bytes 3k, 3k + 1, 3k + 2.
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    pixels = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]  # 2x2 patches, raster inside
    expected = [3 * k + c for k in pixels for c in range(3)]
    assert patch_scan(image, 2).tolist() == expected
    assert patch_scan(image, 1).tolist() == list(range(48))  # p = 1 is the raster scan
    assert patch_scan(image, 4).tolist() == list(range(48))  # one patch: raster inside it


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    ("resolution", "side"), [(r, p) for r in (4, 12, 24) for p in (1, 2, 3, 4) if r % p == 0]
)
def test_scans_invert_exactly(resolution: int, side: int, channels: int) -> None:
    image = np.random.default_rng(side).integers(0, 256, (resolution, resolution, channels), dtype=np.uint8)
    data = patch_scan(image, side)
    assert sorted(data.tolist()) == sorted(image.reshape(-1).tolist())
    assert np.array_equal(patch_unscan(data, resolution, resolution, channels, side), image)
    scan, size = ("raster", 1) if side == 1 else ("patch", side * side * channels)
    unit = side * side * channels
    dm = ImageBytes(resolution=resolution, channels=channels, scan=scan, patch_size=size, seq_len=unit)
    assert torch.equal(dm.to_image(data), torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(dm.to_image(torch.from_numpy(data).long()), dm.to_image(data.tobytes()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch_size": 10}, "patch_size = 3 x a square number of pixels, which patch_size=10 is not"),
        ({"patch_size": 27, "resolution": 32}, "3x3-pixel patches, which must divide resolution=32"),
        ({"patch_size": 12, "channels": 1}, "patch_size = 1 x a square number"),
        ({"seq_len": 3073, "resolution": 32}, "seq_len=3073 is longer than one image"),
        ({"crop_from": 16, "resolution": 32}, "crop_from=16 must be at least resolution=32"),
        ({"scan": "zigzag"}, "scan='zigzag' must be 'raster' or 'patch'"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageBytes(**{"seq_len": 64, **options})


def test_to_image_needs_one_whole_image() -> None:
    with pytest.raises(ValueError, match="to_image needs 192 bytes \\(8x8x3\\), got 100"):
        ImageBytes(resolution=8, seq_len=12).to_image(bytes(100))


@pytest.mark.parametrize("score_len", [48, 24, 12])
def test_every_evaluation_byte_is_scored_once(tmp_path: Path, score_len: int) -> None:
    sizes = [(8, 8), (12, 9), (9, 20), (30, 10), (8, 8), (16, 16), (10, 11), (8, 40), (13, 13), (9, 9)]
    dm = make(tmp_path, sizes, score_len=score_len, eval_batch_size=3)
    assert dm.manifest["splits"]["val"]["documents"] == dm.manifest["splits"]["test"]["documents"] == 2
    for split in ("val", "test"):
        data = dm.splits[split]
        assert (data.lengths == 8 * 8 * 3).all()  # one document per image, every one whole
        scored = [np.zeros(n, dtype=int) for n in data.lengths]
        for (x, num_scored), (doc, start, end, _) in zip(
            (
                (x, int(n))
                for b in dm.dataloader(split, 0, 1)
                for x, n in zip(b["x"], b["num_scored"], strict=True)
            ),
            dm.windows(split),
            strict=True,
        ):
            assert x.tolist() == data.document(doc)[start:end].tolist()
            scored[doc][end - num_scored : end] += 1
        assert all((counts == 1).all() for counts in scored)


def test_cached_images_decode_back_to_the_resized_originals(tmp_path: Path) -> None:
    originals = write_images(tmp_path / "images", [(8, 8), (20, 10), (9, 30), (16, 16), (11, 12)])
    dm = ImageBytes(str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"), resolution=8, seq_len=12)
    dm.setup()
    expected = {square(image, 8, 3).tobytes() for image in originals}
    assert len(expected) == 5
    decoded = {
        dm.to_image(dm.splits[s].document(i)).permute(1, 2, 0).numpy().tobytes()
        for s in ("val", "test")
        for i in range(len(dm.splits[s]))
    }
    train = dm.splits["train"]  # training images stay raster pixels
    decoded |= {train.document(i).tobytes() for i in range(len(train))}
    assert decoded == expected
    assert square(originals[0], 8, 3).tolist() == np.asarray(originals[0]).tolist()  # no resampling
    assert square(originals[2], 8, 1).shape == (8, 8, 1)


def test_crops_for_training_and_tiles_for_evaluation(tmp_path: Path) -> None:
    options = {
        "resolution": 4,
        "crop_from": 12,
        "seq_len": 48,
        "batch_size": 5,
        "train_samples_per_epoch": 200,
    }
    dm = make(tmp_path, [(12, 12)] * 6, val_fraction=0.1, test_fraction=0.1, **options)
    assert dm.manifest["splits"]["val"]["documents"] == 9  # one held-out image, 3 x 3 tiles
    train = dm.splits["train"]
    crops = {
        patch_scan(train.document(d).reshape(12, 12, 3)[y : y + 4, x : x + 4], 2).tobytes(): (d, y, x)
        for d in range(len(train))
        for y in range(9)
        for x in range(9)
    }
    batches = list(dm.dataloader("train", 0, 1))
    rows = [row[:n] for batch in batches for row, n in zip(batch["x"], batch["lengths"], strict=True)]
    # seq_len is a whole 4x4 crop: every window is a crop's scan up to a uniform patch end (12 bytes).
    drawn = [crops[max(c for c in crops if c.startswith(bytes(row.tolist())))] for row in rows]
    assert {len(row) for row in rows} == {12, 24, 36, 48}
    assert len(drawn) == 200 and len(set(drawn)) > 120 and {d for d, _, _ in drawn} == set(range(len(train)))
    again = make(tmp_path / "again", [(12, 12)] * 6, val_fraction=0.1, test_fraction=0.1, **options)
    assert torch.equal(next(iter(again.train_dataloader()))["x"], batches[0]["x"])


def test_training_windows_start_and_end_on_whole_patches(tmp_path: Path) -> None:
    dm = make(tmp_path, [(8, 8)] * 6, seq_len=36, batch_size=4, train_samples_per_epoch=100)
    docs = [dm.splits["train"].document(i).reshape(8, 8, 3) for i in range(len(dm.splits["train"]))]
    scans = [patch_scan(image, 2).tobytes() for image in docs]
    lengths = set()
    for batch in dm.dataloader("train", 0, 1):
        for row, n in zip(batch["x"].tolist(), batch["lengths"].tolist(), strict=True):
            starts = [s.find(bytes(row[:n])) for s in scans if bytes(row[:n]) in s]
            assert starts and starts[0] % 12 == 0 and n % 12 == 0
            lengths.add(n)
    assert lengths == {12, 24, 36}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"score_len": 20}, "score_len=20 is not a multiple of 12 bytes, one 2x2-pixel patch"),
        ({"seq_len": 40}, "seq_len=40 is not a multiple of 12 bytes"),
        ({"scan": "raster", "seq_len": 47}, "seq_len=47 is not a multiple of 3 bytes, one pixel"),
    ],
)
def test_windows_must_be_whole_patches(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageBytes(resolution=8, **{"seq_len": 48, **options})


@pytest.mark.parametrize("scan", ["raster", "patch"])
def test_every_evaluation_window_starts_on_a_whole_patch(tmp_path: Path, scan: str) -> None:
    # max_eval_bytes cuts the split's last document mid-patch: the cut keeps whole patches only.
    dm = make(
        tmp_path, [(8, 8)] * 10, scan=scan, seq_len=72, score_len=24, max_eval_bytes=250, eval_batch_size=4
    )
    unit = 12 if scan == "patch" else 3
    windows = dm.windows("val")
    assert len(windows) and (windows[:, 1] % unit == 0).all() and (windows[:, 2] % unit == 0).all()
    assert windows[:, 3].sum() == 192 + (250 - 192) // unit * unit  # one whole image, then a cut one


def test_npz_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    planar = rng.integers(0, 256, (7, 3 * 8 * 8), dtype=np.uint8)  # downsampled-ImageNet rows
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "train_data_batch_1.npz", data=planar, labels=np.arange(7))
    hwc = as_hwc(planar)
    assert np.array_equal(hwc[3, 2, 5], planar[3, [2 * 8 + 5, 64 + 2 * 8 + 5, 128 + 2 * 8 + 5]])
    assert np.array_equal(as_hwc(hwc.transpose(0, 3, 1, 2)), hwc) and as_hwc(hwc) is hwc
    dm = ImageBytes(
        str(tmp_path / "npz"), format="npz", cache_dir=str(tmp_path / "c"), resolution=8, seq_len=12
    )
    dm.setup()
    stored = [dm.splits["train"].document(i).tobytes() for i in range(len(dm.splits["train"]))]
    stored += [
        dm.to_image(dm.splits[s].document(0)).permute(1, 2, 0).numpy().tobytes() for s in ("val", "test")
    ]
    assert sorted(stored) == sorted(image.tobytes() for image in hwc)


def test_cifar10_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    with pytest.raises(ValueError, match="bytelab never downloads"):
        ImageBytes(str(tmp_path / "elsewhere"), format="cifar10")
    dm = ImageBytes(
        str(tmp_path), format="cifar10", cache_dir=str(tmp_path / "c"), val_fraction=0.1, test_fraction=0.1
    )
    with pytest.raises(ValueError, match="cannot read .*cifar-10-batches-py: RuntimeError: .*corrupted"):
        dm.prepare_data()  # our batches fail torchvision's checksums, as a damaged download would
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    dm.setup()
    assert sum(s["documents"] for s in dm.manifest["splits"].values()) == 12
    assert dm.manifest["splits"]["val"]["documents"] == 2


def test_official_split_keeps_the_held_out_files_as_test(tmp_path: Path, monkeypatch) -> None:
    """split='official': CIFAR-10's test batch and downsampled ImageNet's val_data.npz are the test
    split, exactly, and the training files are hashed into train and val only."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": batches[name], "labels": [0, 1, 0, 1]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    options = {"cache_dir": str(tmp_path / "c"), "scan": "raster", "seq_len": 9, "val_fraction": 0.1}
    dm = ImageBytes(str(tmp_path), format="cifar10", split="official", **options)
    dm.setup()
    test = sorted(dm.splits["test"].document(i).tobytes() for i in range(len(dm.splits["test"])))
    expected = sorted(as_hwc(batches["test_batch"]).reshape(4, -1)[i].tobytes() for i in range(4))
    assert test == expected
    assert dm.manifest["splits"]["val"]["documents"] == 2  # ceil(0.1 x 20 training images)
    assert dm.manifest["splits"]["train"]["documents"] == 18
    hashed = ImageBytes(str(tmp_path), format="cifar10", **options)
    assert hashed.cache_path != dm.cache_path  # the split is part of the cache's key

    npz = tmp_path / "npz"
    npz.mkdir()
    train = rng.integers(0, 256, (9, 3 * 8 * 8), dtype=np.uint8)
    val = rng.integers(0, 256, (3, 3 * 8 * 8), dtype=np.uint8)
    np.savez(npz / "train_data_batch_1.npz", data=train, labels=np.arange(9))
    options = {"cache_dir": str(tmp_path / "c"), "resolution": 8, "seq_len": 9, "scan": "raster"}
    with pytest.raises(ValueError, match=r"split='official': .* holds no val_data.npz"):
        ImageBytes(str(npz), format="npz", split="official", **options)
    np.savez(npz / "val_data.npz", data=val, labels=np.arange(3))
    dm = ImageBytes(str(npz), format="npz", split="official", **options)
    dm.setup()
    test = sorted(dm.splits["test"].document(i).tobytes() for i in range(len(dm.splits["test"])))
    assert test == sorted(image.tobytes() for image in as_hwc(val))
    assert [dm.manifest["splits"][s]["documents"] for s in ("train", "val")] == [8, 1]
    with pytest.raises(ValueError, match="split='official' needs a corpus with its own held-out split"):
        ImageBytes(None, split="official")


@pytest.mark.faults
def test_corrupt_images_fail_or_are_skipped(tmp_path: Path) -> None:
    write_images(tmp_path / "images", [(8, 8)] * 4)
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "images" / "notes.txt").write_text("not an image, not read")
    options = {"resolution": 8, "seq_len": 12, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(
        ValueError,
        match=r"broken.png: not an image file Pillow can decode \(fix or remove it, or set on_error=skip\)$",
    ):
        ImageBytes(str(tmp_path / "images"), **options).prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written
    dm = ImageBytes(str(tmp_path / "images"), on_error="skip", **options)
    dm.setup()
    built = dm.cache_path.name
    assert [s["path"] for s in dm.manifest["skipped"]] == [str(tmp_path / "images" / "broken.png")]
    assert sum(s["documents"] for s in dm.manifest["splits"].values()) == 4
    for name in ("img1.png", "img2.png"):
        (tmp_path / "images" / name).write_bytes(b"garbage")
    with pytest.raises(
        ValueError, match="has 2 readable images.*at least 3; 3 unreadable files were skipped"
    ):
        ImageBytes(str(tmp_path / "images"), on_error="skip", **options).prepare_data()
    for name in ("img0.png", "img3.png"):
        (tmp_path / "images" / name).write_bytes(b"garbage")
    with pytest.raises(
        ValueError, match="holds no bytes.*5 unreadable files were skipped \\(on_error=skip\\)"
    ):
        ImageBytes(str(tmp_path / "images"), on_error="skip", **options).prepare_data()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [built]
    with pytest.raises(ValueError, match="holds no .jpg or .jpeg or .png"):
        ImageBytes(str(tmp_path / "images" / "notes.txt"))


def test_embedded_photos(tmp_path: Path) -> None:
    assert PHOTOS.stat().st_size < 1_000_000
    dm = ImageBytes(cache_dir=str(tmp_path), resolution=32, crop_from=128, seq_len=384)
    dm.setup()
    splits = dm.manifest["splits"]
    assert [splits[s]["documents"] for s in ("train", "val", "test")] == [7, 16, 16]
    assert splits["train"]["bytes"] == 7 * 128 * 128 * 3 and splits["val"]["bytes"] == 16 * 3072
    assert next(iter(dm.train_dataloader()))["x"].shape == (8, 384)


@pytest.mark.cli
@pytest.mark.parametrize(
    "model",
    [
        "megabyte_image_tiny",
        "decoder_tiny",
        "perceiver_ar_tiny",
        "hourglass_tiny",
        "hnet_tiny",
        "spacebyte_image_tiny",
    ],
)
def test_fit_each_model_on_the_image_default(model: str, tmp_path: Path) -> None:
    fit_modality_default("image_default", model, tmp_path)


@pytest.mark.cli
@pytest.mark.faults
def test_unsupported_patch_size_is_a_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "fit",
            f"--config={CONFIGS / 'data' / 'image_default.yaml'}",
            f"--config={CONFIGS / 'model' / 'megabyte_image_tiny.yaml'}",
            "--data.init_args.patch_size=8",
            f"--run_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "patch_size=8 is not" in err and "Traceback" not in err
