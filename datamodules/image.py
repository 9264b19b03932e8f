"""Images as bytes: every image is resolution x resolution x channels bytes, in raster or patch scan order."""

from __future__ import annotations

import functools
import io
import math
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import Dataset

from .bytes import ByteDataModule
from .datasets import ByteSplit
from .files import files_with_suffix, named_files, read_tar
from .native import require
from .pool import Part, Reader, Rejected, Unreadable, Workers, read_documents
from .protocol import official_split_ranges, training_crop

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

PHOTOS = Path(__file__).parent / "data" / "photos.tar"
# torchvision's CIFAR10 file list and IMG_EXTENSIONS, spelled out so that reading the constants does not
# load torchvision's native library (tests check they still agree).
CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Downsampled ImageNet's validation file (Imagenet64_val_npz/val_data.npz): the official held-out split.
NPZ_HELD_OUT = "val_data"


def pillow() -> ModuleType:
    """``PIL.Image`` (with ``PIL.ImageOps`` loaded), imported on first use."""
    require("PIL.ImageOps", "images")
    return require("PIL.Image", "images")


def transforms() -> ModuleType:
    """``torchvision.transforms.v2.functional``, imported on first use: text and audio never load
    torchvision's native library."""
    return require("torchvision.transforms.v2.functional", "images")


def decode_errors() -> tuple[type[BaseException], ...]:
    """What a corrupt image file raises while it is opened, decoded or converted."""
    return (OSError, SyntaxError, ValueError, pillow().DecompressionBombError)


def patch_scan(image: np.ndarray, side: int) -> np.ndarray:
    """The bytes of an [H, W, C] uint8 image in patch scan order: side x side-pixel patches in raster order,
    the pixels of each patch in raster order, each pixel's C channels together. side=1 is the raster scan."""
    height, width, channels = image.shape
    blocks = image.reshape(height // side, side, width // side, side, channels)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(-1)


def patch_unscan(data: np.ndarray, height: int, width: int, channels: int, side: int) -> np.ndarray:
    """The [H, W, C] image whose patch scan (see ``patch_scan``) is `data`: its exact inverse."""
    blocks = np.asarray(data).reshape(height // side, width // side, side, side, channels)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(height, width, channels)


def patch_side(patch_size: int, channels: int) -> int:
    """Pixels per side p of a patch of `patch_size` = p * p * channels bytes, or a ValueError."""
    side = math.isqrt(patch_size // channels)
    if patch_size < 1 or side * side * channels != patch_size:
        fits = ", ".join(str(channels * p * p) for p in range(1, 9))
        raise ValueError(
            f"scan='patch' needs patch_size = {channels} x a square number of pixels, which "
            f"patch_size={patch_size} is not (use one of {fits}, ...)"
        )
    return side


def square(image: PILImage | np.ndarray, size: int, channels: int) -> np.ndarray:
    """An image as [size, size, channels] uint8: converted to RGB or grayscale, its shorter side resized
    to `size` (antialiased bilinear), then centre-cropped."""
    Image, F = pillow(), transforms()
    if isinstance(image, np.ndarray):
        if image.shape == (size, size, channels):
            return image
        image = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    image = require("PIL.ImageOps", "images").exif_transpose(image).convert("RGB" if channels == 3 else "L")
    pixels = F.pil_to_tensor(image)
    if pixels.shape[1:] != (size, size):
        pixels = F.center_crop(F.resize(pixels, [size], antialias=True), [size, size])
    return pixels.permute(1, 2, 0).numpy()


def decoded_image(raw: bytes, size: int, channels: int) -> bytes | str:
    """The raster bytes of an encoded image made size x size (``square``), or why it cannot be read."""
    Image = pillow()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return square(image, size, channels).tobytes()
    except Image.UnidentifiedImageError:
        return "not an image file Pillow can decode"
    except decode_errors() as error:
        return f"{type(error).__name__}: {error}"


def image_files(
    name: str, path: Path, *, size: int, channels: int
) -> Iterator[tuple[str, Iterable[bytes]] | Rejected]:
    """The images of one file, decoded and made size x size (what a pool worker runs): an image file
    is one, a tar archive (a WebDataset shard) holds one per image member, named by the shard's path
    without .tar and the member's name (by the member's name alone for a shard named "")."""
    if path.suffix.lower() != ".tar":
        pixels = decoded_image(path.read_bytes(), size, channels)
        yield Rejected(str(path), pixels) if isinstance(pixels, str) else (name, (pixels,))
        return
    prefix = f"{name.removesuffix(path.suffix)}/" if name else ""
    try:
        for member, raw in read_tar(path):
            if not member.lower().endswith(IMG_EXTENSIONS):
                continue  # a WebDataset sample's label, caption or metadata
            pixels = decoded_image(raw, size, channels)
            origin = f"{path}:{member}"
            yield Rejected(origin, pixels) if isinstance(pixels, str) else (prefix + member, (pixels,))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise Unreadable(f"not a complete tar archive ({type(error).__name__}: {error})") from None


def held_out_tiles(
    split: str, document: np.ndarray, *, size: int, channels: int, resolution: int, side: int
) -> list[np.ndarray]:
    """What a size x size raster image becomes in its split: itself in training (cropped when drawn),
    else its non-overlapping resolution-square tiles, each in patch scan order (``patch_scan``)."""
    if split == "train":
        return [document]
    image = document.reshape(size, size, channels)
    n = size // resolution
    return [
        patch_scan(image[i * resolution : (i + 1) * resolution, j * resolution : (j + 1) * resolution], side)
        for i in range(n)
        for j in range(n)
    ]


def as_hwc(array: np.ndarray) -> np.ndarray:
    """A batch of images as [N, H, W, C] uint8: [N, C*S*S] planar rows (downsampled ImageNet), [N, H, W, C]
    or [N, C, H, W] with C in (1, 3); a ValueError for anything else."""
    if array.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, not {array.dtype}")
    if array.ndim == 2:
        for channels in (3, 1):
            side = math.isqrt(array.shape[1] // channels)
            if side * side * channels == array.shape[1]:
                return array.reshape(len(array), channels, side, side).transpose(0, 2, 3, 1)
    if array.ndim == 4 and array.shape[3] in (1, 3):
        return array
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return array.transpose(0, 2, 3, 1)
    raise ValueError(f"an array of shape {array.shape} is not a batch of images")


def held_out_file(path: Path) -> bool:
    """Whether an ``.npz`` batch is downsampled ImageNet's validation file (its official held-out split)."""
    return path.name.removesuffix(".npz") == NPZ_HELD_OUT


class TrainCrops(Dataset):
    """Training sample number i, a function of (seed, i) only: a random resolution-square crop of a random
    training image (stored as size x size raster pixels), scanned, and a window of up to seq_len bytes
    of the scan that starts and ends on a whole patch (a whole pixel in raster scan); see
    ``protocol.training_crop``."""

    def __init__(
        self, split: ByteSplit, size: int, resolution: int, channels: int, side: int, seq_len: int, seed: int
    ) -> None:
        self.split = split
        self.size = size
        self.resolution = resolution
        self.channels = channels
        self.side = side
        self.seq_len = seq_len
        self.seed = seed

    def __getitem__(self, i: int) -> np.ndarray:
        image, top, left, start, end = training_crop(
            self.seed, i, len(self.split), self.size, self.resolution, self.channels, self.side, self.seq_len
        )
        pixels = self.split.document(image).reshape(self.size, self.size, self.channels)
        crop = pixels[top : top + self.resolution, left : left + self.resolution]
        return patch_scan(crop, self.side)[start:end]


class ImageBytes(ByteDataModule):
    """Images as byte documents: every image is resolution x resolution x channels bytes, scanned in raster
    or patch order; one image is one document, so bits per byte are bits per dim.

    Sources (``format``): "files" reads image files (anything Pillow opens: .jpg, .png, .webp, ...) from
    files, folders such as an ImageFolder tree, or glob patterns; "npz" reads the downsampled-ImageNet
    ``.npz`` batches (their ``data`` array, [N, 3*S*S] planar rows, or any [N, H, W, C] / [N, C, H, W]
    uint8 array); "cifar10" reads CIFAR-10's python batches through torchvision (never downloading),
    train and test batches alike. With no paths the corpus is 9 public-domain / CC0 photos from
    scikit-image, shipped in datamodules/data/photos.tar (see DATA_LICENSES.md).

    Every image is converted to RGB (grayscale expanded; ``channels=3``) or to grayscale
    (``channels=1``), its shorter side resized to the image size and centre-cropped. The split is by
    image (see ByteDataModule). With ``crop_from=None`` the image size is ``resolution``. With
    ``crop_from=S`` every image is first made S x S; training then draws a fresh random
    resolution-square crop of a training image for every sample, and evaluation cuts each held-out
    image into (S // resolution)^2 non-overlapping tiles, each scored as one image.

    Scan orders: "raster" is pixels row by row, channels interleaved; "patch" is the MEGABYTE paper's
    patch scan, patches of p x p pixels (patch_size = p * p * channels bytes) in raster order, raster
    order inside each. ``to_image`` inverts either exactly.

    The cache holds evaluation images scanned, and training images as raster pixels that are cropped and
    scanned when drawn.
    """

    def __init__(
        self,
        paths: str | list[str] | None = None,
        format: Literal["files", "npz", "cifar10"] = "files",
        resolution: int = 32,
        channels: Literal[1, 3] = 3,
        scan: Literal["raster", "patch"] = "patch",
        patch_size: int = 12,
        crop_from: int | None = None,
        on_error: Literal["fail", "skip"] = "fail",
        split: Literal["hashed", "official"] = "hashed",
        seq_len: int = 768,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            paths: image files, folders (read recursively) or glob patterns for format="files" and "npz";
                the folder holding ``cifar-10-batches-py`` (or that folder) for "cifar10"; None reads the
                embedded photos (whatever the format).
            format: "files" (image files), "npz" (downsampled-ImageNet batches) or "cifar10" (python batches).
            resolution: pixels per side of every image scored (and of every training crop).
            channels: 3 converts every image to RGB (grayscale expanded), 1 to grayscale.
            scan: "raster" (row by row) or "patch" (the paper's patch scan, see patch_size).
            patch_size: bytes per patch of the patch scan, p * p * channels for p x p-pixel patches (12, 48
                and 192 are 2x2, 4x4 and 8x8 RGB); p must divide resolution. Match the model's patch_size.
            crop_from: None scores and trains on whole images resized to resolution; an int S resizes every
                image to S x S first, trains on random resolution-square crops and scores held-out images
                as non-overlapping resolution-square tiles.
            on_error: an image file that cannot be decoded stops the build ("fail") or is reported by path,
                skipped and counted ("skip").
            split: "hashed" assigns every image to train, val or test by the hash of its name (see
                ByteDataModule); "official" keeps the corpus's own held-out images as the test split
                (CIFAR-10's test batch; downsampled ImageNet's validation file, val_data.npz) and hashes
                the others into train and val (val_fraction); test_fraction is then unused.
            seq_len: bytes per window, at most resolution^2 * channels; it and score_len must be whole
                patches (whole pixels in raster scan), so that every window starts on one (768: 64 patches
                of 12 bytes, 16 of 48, 4 of 192).
            **kwargs: the other options of ByteDataModule.
        """
        pillow(), transforms()  # Stop here, in one line, when either cannot load
        super().__init__(seq_len=seq_len, **kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 (grayscale) or 3 (RGB)")
        if scan not in ("raster", "patch"):
            raise ValueError(f"scan={scan!r} must be 'raster' or 'patch'")
        if format not in ("files", "npz", "cifar10"):
            raise ValueError(f"format={format!r} must be 'files', 'npz' or 'cifar10'")
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error={on_error!r} must be 'fail' or 'skip'")
        if resolution < 1:
            raise ValueError(f"resolution={resolution} must be at least 1")
        if split not in ("hashed", "official"):
            raise ValueError(f"split={split!r} must be 'hashed' or 'official'")
        if split == "official" and (paths is None or format == "files"):
            raise ValueError(
                "split='official' needs a corpus with its own held-out split: format='cifar10' (its "
                "test batch) or format='npz' (downsampled ImageNet's val_data.npz) with paths"
            )
        side = patch_side(patch_size, channels) if scan == "patch" else 1
        if resolution % side:
            raise ValueError(
                f"scan='patch' with patch_size={patch_size} cuts {side}x{side}-pixel patches, which must "
                f"divide resolution={resolution}"
            )
        if crop_from is not None and crop_from < resolution:
            raise ValueError(f"crop_from={crop_from} must be at least resolution={resolution}")
        image_bytes = resolution * resolution * channels
        if self.seq_len > image_bytes:
            raise ValueError(
                f"seq_len={self.seq_len} is longer than one image ({resolution}x{resolution}x{channels} = "
                f"{image_bytes} bytes) and windows never cross images; lower seq_len"
            )
        self.align = side * side * channels
        self.unit = f"{side}x{side}-pixel patch" if side > 1 else "pixel"
        self.check_alignment()
        self.paths = paths
        self.format = format
        self.resolution = resolution
        self.channels = channels
        self.scan = scan
        self.patch_size = patch_size
        self.side = side
        self.crop_from = crop_from
        self.on_error = on_error
        self.split = split
        self.size = crop_from or resolution
        self.files = None if paths is None else self._find(paths)
        if split == "official" and format == "npz" and not any(held_out_file(f) for f in self.files):
            raise ValueError(
                f"split='official': {paths!r} holds no {NPZ_HELD_OUT}.npz (downsampled ImageNet's "
                "validation file, the held-out split); add it to paths or use split='hashed'"
            )

    def _find(self, paths: str | list[str]) -> list[Path]:
        if self.format == "cifar10":
            root = Path(paths if isinstance(paths, str) else paths[0])
            folder = root if root.name == "cifar-10-batches-py" else root / "cifar-10-batches-py"
            missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
            if isinstance(paths, list) and len(paths) != 1 or missing:
                raise ValueError(
                    f"paths: format='cifar10' needs one folder holding cifar-10-batches-py/ with "
                    f"{', '.join(CIFAR10_FILES)}; {folder} lacks {', '.join(missing) or 'nothing'} "
                    "(bytelab never downloads: unpack cifar-10-python.tar.gz there)"
                )
            return [folder / name for name in CIFAR10_FILES]
        suffixes = (".npz",) if self.format == "npz" else (*IMG_EXTENSIONS, ".tar")
        files = files_with_suffix(paths, suffixes)
        if not files:
            raise ValueError(
                f"paths: {paths!r} holds no {' or '.join(suffixes)} files (format={self.format!r})"
            )
        return files

    def cache_options(self) -> dict[str, Any]:
        """Every option that changes the cached bytes."""
        return {
            "format": self.format,
            "resolution": self.resolution,
            "channels": self.channels,
            "scan": self.scan,
            "patch_size": self.patch_size if self.scan == "patch" else None,
            "crop_from": self.crop_from,
            "on_error": self.on_error,
            "split": self.split,
        }

    def split_ranges(
        self, names: list[str], offsets: np.ndarray, keys: bytes | None = None
    ) -> dict[str, np.ndarray]:
        """With ``split="official"`` the corpus's own held-out images are the test split."""
        if self.split != "official":
            return super().split_ranges(names, offsets, keys)
        if self.format == "cifar10":
            held_out = [name.startswith("test/") for name in names]
        else:
            held_out = [held_out_file(Path(name.rsplit("/", 1)[0])) for name in names]
        return official_split_ranges(names, offsets, held_out, self.val_fraction, keys)

    def sources(self) -> list[Path]:
        """The files read, or the embedded archive."""
        return [PHOTOS] if self.files is None else self.files

    def documents(self) -> Iterator[tuple[str, bytes]]:
        """Every image as (name, size x size x channels raster bytes), read in this process."""
        if self.files is not None and self.format == "cifar10":
            yield from ((name, pixels.tobytes()) for name, pixels in self._cifar10())
        elif self.files is not None and self.format == "npz":
            yield from ((name, pixels.tobytes()) for name, pixels in self._npz())
        else:
            yield from read_documents(self._reader(), self._image_files(), self.reject)

    def _reader(self) -> Reader:
        return functools.partial(image_files, size=self.size, channels=self.channels)

    def _image_files(self) -> list[tuple[str, Path]]:
        # The embedded photos are one tar shard whose images keep their member names.
        return [("", PHOTOS)] if self.files is None else list(named_files(self.files))

    def corpus_parts(self, workers: Workers, scratch: Path, progress: Progress) -> list[Part]:
        """The images as parts: image files and tar shards decoded by the workers, .npz and CIFAR-10
        batches in this process; at least 3 readable images."""
        if self.files is None or self.format == "files":
            parts = self.decoded_parts(self._reader(), self._image_files(), workers, scratch, progress)
        else:
            parts = super().corpus_parts(workers, scratch, progress)
        count = sum(len(part.documents) for part in parts)
        if 0 < count < 3:
            raise ValueError(
                f"{self._describe()} has {count} readable images; train, val and test each need whole "
                f"images, so give it at least 3{self._skipped_note()}"
            )
        return parts

    def _npz(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, path in named_files(self.files):
            try:
                with np.load(path) as arrays:
                    images = as_hwc(arrays["data"] if "data" in arrays else arrays[arrays.files[0]])
            except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as error:
                self.reject(str(path), f"{type(error).__name__}: {error}")
                continue
            for i, image in enumerate(images):
                yield f"{name}/{i:07d}", square(image, self.size, self.channels)

    def _cifar10(self) -> Iterator[tuple[str, np.ndarray]]:
        root = self.files[0].parent.parent
        for train in (True, False):
            try:
                cifar10 = require("torchvision.datasets", "images").CIFAR10
                images = cifar10(str(root), train=train, download=False).data
            except (RuntimeError, OSError, ValueError, EOFError) as error:
                self.reject(str(root / "cifar-10-batches-py"), f"{type(error).__name__}: {error}")
                continue
            for i, image in enumerate(images):
                yield f"{'train' if train else 'test'}/{i:05d}", square(image, self.size, self.channels)

    def split_transform(self) -> Callable[[str, np.ndarray], list[np.ndarray]]:
        """Training images stay raster pixels; held-out ones become scanned resolution-square tiles
        (``held_out_tiles``)."""
        return functools.partial(
            held_out_tiles, size=self.size, channels=self.channels, resolution=self.resolution, side=self.side
        )

    def train_dataset(self) -> Dataset:
        """Random crops of the training images, scanned (see ``TrainCrops``)."""
        return TrainCrops(
            self.splits["train"],
            self.size,
            self.resolution,
            self.channels,
            self.side,
            self.seq_len,
            self.seed,
        )

    def training_lengths(self) -> np.ndarray:
        """Training windows are cut from resolution-square crops, one per training image."""
        return np.full(len(self.splits["train"]), self.resolution**2 * self.channels, dtype=np.int64)

    def to_image(self, data: bytes | np.ndarray | torch.Tensor) -> torch.Tensor:
        """The uint8 image [channels, resolution, resolution] whose scan is `data` (resolution^2 * channels
        bytes, e.g. one evaluation document or a generated sample); ``torchvision.io.write_png`` saves it."""
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        pixels = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data)
        expected = self.resolution * self.resolution * self.channels
        if pixels.size != expected:
            raise ValueError(
                f"to_image needs {expected} bytes ({self.resolution}x{self.resolution}x{self.channels}), "
                f"got {pixels.size}"
            )
        image = patch_unscan(
            pixels.astype(np.uint8), self.resolution, self.resolution, self.channels, self.side
        )
        return torch.from_numpy(image).permute(2, 0, 1).contiguous()
