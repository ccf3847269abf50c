"""Data sets for calibration and validation: image folders or `.npz` files -> batches of NCHW float32.

A data set is re-iterable: `iter_batches()` can be called any number of times and streams from disk,
so memory stays bounded whatever the folder size. Files that cannot be decoded are skipped and
recorded in `skipped`; a data set with nothing usable is an error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import struct
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UserError
from .files import signals_deferred
from .options import parse_channel_values, parse_word

# Same list and order as torchvision.datasets.folder.IMG_EXTENSIONS (plus .jfif), matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Refuse images above this many pixels before decoding them (decompression bombs). PIL's own default.
# The same limit applies to the image after the preprocessing resize (a 1x80000 strip resized to a
# shorter side of 256 would be a bomb too).
MAX_IMAGE_PIXELS = 89_478_485

# The decoders an image file may be read with, whatever its extension says (a PNG named .jpg works).
# PIL knows many more (EPS runs Ghostscript, PSD, FITS, ...): they are never tried on user files.
IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")  # JPEG includes MPO (camera JPEGs)

# What PIL's decoders raise on broken or hostile files (they are not uniform); the fuzz tests hold it to this.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


class UnreadableImage(ValueError):
    """A file that cannot be turned into an RGB image; data sets skip it and record the reason."""


# What a model's preprocessing may be set to (--interpolation, --crop-mode, --mean, --std, --crop-pct and config.json).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # PIL's resampling filters
CROP_MODES = ("center", "squash", "border")  # timm's eval crop modes
MEAN_RANGE = (0.0, 1.0)  # on the 0..1 pixel scale of ToTensor
STD_RANGE = (1e-3, 10.0)
CROP_PCT_RANGE = (0.1, 1.0)
PREPROCESS_FIELDS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: the settings travel with the model (as in timm)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        low, high = CROP_PCT_RANGE
        if not low <= self.crop_pct <= high:
            raise UserError(f"crop_pct must be within {low}..{high}, got {self.crop_pct}")
        c, h, w = self.input_size
        if c != 3 or not (8 <= h <= 4096 and 8 <= w <= 4096):
            raise UserError(f"input size must be 3 channels and 8..4096 pixels per side, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(0 < s < 1e3 for s in self.std):
            raise UserError(f"mean and std must be 3 values each, std positive; got {self.mean}, {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation must be one of PIL's resampling filters, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise UserError(f"crop_mode must be center, squash or border, got {self.crop_mode!r}")

    def describe(self) -> str:
        """One line: '3x224x224, bicubic, crop_pct 0.95 (center), mean 0.485,0.456,0.406, std 0.229,0.224,0.225'."""
        return (
            f"{'x'.join(map(str, self.input_size))}, {self.interpolation}, crop_pct {self.crop_pct:g} ({self.crop_mode}), "
            f"mean {','.join(f'{v:g}' for v in self.mean)}, std {','.join(f'{v:g}' for v in self.std)}"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        return cls(
            input_size=tuple(int(v) for v in data["input_size"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            crop_pct=float(data["crop_pct"]),
            crop_mode=str(data.get("crop_mode", "center")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    def resized_pixels(self, width: int, height: int) -> int:
        """At most how many pixels `transform()` resizes a width x height image to, before cropping."""
        side = math.floor(max(self.input_size[1:]) / self.crop_pct)
        return math.ceil(side * side * max(width, height) / max(min(width, height), 1))

    def transform(self):
        """timm's eval transform for these settings: PIL RGB image -> normalized CHW tensor."""
        from timm.data import create_transform

        return create_transform(
            input_size=self.input_size,
            is_training=False,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
        )


@dataclass(frozen=True)
class PreprocessOverrides:
    """The preprocessing a model was trained with, where it differs from its architecture's default (--mean, --std,
    --crop-pct, --crop-mode, --interpolation): each value given replaces the default's. Checked by
    `preprocess_overrides`."""

    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None
    crop_mode: str | None = None

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def parse_mean(text: str, option: str = "--mean") -> tuple[float, float, float]:
    return parse_channel_values(text, option, *MEAN_RANGE)


def parse_std(text: str, option: str = "--std") -> tuple[float, float, float]:
    return parse_channel_values(text, option, *STD_RANGE)


def check_crop_pct(value: float, option: str = "--crop-pct") -> float:
    low, high = CROP_PCT_RANGE
    if isinstance(value, bool) or not (math.isfinite(value) and low <= value <= high):
        raise UserError(f"{option} must be between {low:g} and {high:g} (the crop's share of the resized image), got {value}")
    return float(value)


def parse_interpolation(text: str, option: str = "--interpolation") -> str:
    return parse_word(text, option, INTERPOLATIONS)


def parse_crop_mode(text: str, option: str = "--crop-mode") -> str:
    return parse_word(text, option, CROP_MODES)


def preprocess_overrides(
    mean: str | None = None,
    std: str | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
) -> PreprocessOverrides:
    """The preprocessing options (flags or config keys), each checked: None leaves the arch's default."""
    return PreprocessOverrides(
        interpolation=None if interpolation is None else parse_interpolation(interpolation),
        mean=None if mean is None else parse_mean(mean),
        std=None if std is None else parse_std(std),
        crop_pct=None if crop_pct is None else check_crop_pct(crop_pct),
        crop_mode=None if crop_mode is None else parse_crop_mode(crop_mode),
    )


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (N, C, H, W) float32, preprocessed
    labels: np.ndarray | None  # (N,) int64, or None when the data set has no labels
    ids: tuple[str, ...]  # file path (image folders) or index (npz) of each image


class Dataset(Protocol):
    """A re-iterable source of batches."""

    source: Path
    has_labels: bool
    classes: tuple[str, ...] | None

    def __len__(self) -> int: ...  # number of candidate samples (before skipping unreadable files)

    def iter_batches(self, batch_size: int) -> Iterator[Batch]: ...

    def select(self, indices: Sequence[int]) -> "Dataset": ...

    @property
    def skipped(self) -> dict[str, str]: ...  # id -> reason, for files found unreadable so far

    def sample_keys(self) -> list[tuple]: ...  # identity of each sample on disk (same file -> same key)

    def content_digest(self) -> str: ...  # sha256 of what the samples are (names and bytes)


def open_dataset(
    path: Path, preprocess: Preprocess, *, option: str = "--val-data", class_names: Sequence[str] | None = None
) -> Dataset:
    """An image folder (class subfolders or flat) or a `.npz` file with `images` and optional `labels`.

    With the model's `class_names`, class folders named after them are labelled by name (else in sorted order).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{option} {path} does not exist; give an image folder or a .npz file")
    if path.is_dir():
        return ImageFolderDataset.scan(path, preprocess, option=option, class_names=class_names)
    if path.suffix.lower() == ".npz":
        return NpzDataset.open(path, preprocess.input_size, option=option)
    raise UserError(f"{option} {path} is neither a folder of images nor a .npz file; give one of those")


# --------------------------------------------------------------------------------------------- images


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _dir_key(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _walk_images(root: Path, seen: set[tuple[int, int]]) -> list[Path]:
    """Image files below `root`, sorted. Symlinked folders are followed, but no folder is entered twice
    and none in `seen` (the data set's root and class folders): no loops, no class read into another."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            key = _dir_key(os.path.join(dirpath, name))
            if key is not None and key not in seen:
                seen.add(key)
                keep.append(name)
        dirnames[:] = keep
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return sorted(found)


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS):
    """Open an image file as an 8-bit RGB PIL image; raise UnreadableImage saying why it cannot be."""
    from PIL import Image

    try:
        return _load_image(Path(path), max_pixels)
    except UnreadableImage:
        raise
    except (*DECODE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # (-W error)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(reason[:200]) from exc


def _load_image(path: Path, max_pixels: int):
    from PIL import Image

    st = os.stat(path)  # follows symlinks: a dangling link or a loop raises OSError here
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block forever, a device never end
        raise UnreadableImage("not a regular file")
    if st.st_size == 0:
        raise UnreadableImage("empty file (0 bytes)")
    with Image.open(path, formats=IMAGE_FORMATS) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise UnreadableImage(f"{width}x{height} pixels is above the limit of {max_pixels} (decompression bomb?)")
        if width < 1 or height < 1:
            raise UnreadableImage("image has no pixels")
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # 16-bit (or 32-bit int) grayscale: scale to 8 bits instead of clipping at 255.
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
            arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return Image.fromarray(arr, mode="L").convert("RGB")
        if img.mode == "F":
            with np.errstate(invalid="ignore"):  # a signalling NaN raises the FP flag when widened
                arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
            arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            return Image.fromarray(arr, mode="L").convert("RGB")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite on white rather than on the undefined colour behind transparent pixels.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def _folder_labels(folders: tuple[str, ...], class_names: Sequence[str] | None, label: str) -> tuple[list[int], bool]:
    """The label of each class folder: its class index when every folder is named after a class of the model, else
    its sorted position (torchvision's ImageFolder). Some folders named after classes and others not is an error."""
    index = {name: i for i, name in enumerate(class_names or ())}
    named = [f for f in folders if f in index]
    if named and len(named) == len(folders):
        return [index[f] for f in folders], True
    if named:
        unknown = [f for f in folders if f not in index]
        raise UserError(
            f"{label}: class folders {', '.join(map(repr, unknown[:5]))} are not among the model's class names "
            f"(while {', '.join(map(repr, named[:3]))} are); name every folder after its class"
        )
    return list(range(len(folders))), False


class ImageFolderDataset:
    """An ImageFolder layout (class subfolders, sorted like torchvision) or a flat folder (no labels)."""

    def __init__(
        self,
        source: Path,
        preprocess: Preprocess,
        files: Sequence[Path],
        labels: Sequence[int] | None,
        classes: tuple[str, ...] | None,
        workers: int = 2,
        by_name: bool = False,
    ) -> None:
        self.source = Path(source)
        self.preprocess = preprocess
        self.files = tuple(files)
        self.labels = None if labels is None else tuple(labels)
        self.classes = classes  # the class folders' names, sorted
        self.has_labels = labels is not None
        self.workers = workers
        self.by_name = by_name  # labels are the model's class indices of the folder names (else the sorted order)
        self._skipped: dict[str, str] = {}

    @classmethod
    def scan(
        cls, root: Path, preprocess: Preprocess, *, option: str = "--val-data", class_names: Sequence[str] | None = None
    ) -> "ImageFolderDataset":
        root = Path(root)
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"{option} {root} cannot be read ({exc.strerror}); check its permissions") from None
        class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
        files: list[Path] = []
        labels: list[int] | None = None
        classes: tuple[str, ...] | None = None
        by_name = False
        if class_dirs:
            classes = tuple(e.name for e in class_dirs)
            indices, by_name = _folder_labels(classes, class_names, f"{option} {root}")
            labels = []
            seen = {key for key in map(_dir_key, [root, *(e.path for e in class_dirs)]) if key is not None}
            for index, entry in zip(indices, class_dirs):
                found = _walk_images(Path(entry.path), seen)
                files.extend(found)
                labels.extend([index] * len(found))
        else:
            # Not only regular files: a dangling link or a FIFO named like an image is skipped and counted.
            files = [Path(e.path) for e in entries if _is_image(e.name)]
        if not files:
            raise UserError(
                f"{option} {root} holds no images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...); "
                "give a folder of images or class subfolders of images"
            )
        return cls(root, preprocess, files, labels, classes, by_name=by_name)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def skipped(self) -> dict[str, str]:
        return dict(self._skipped)

    def sample_keys(self) -> list[tuple]:
        """(device, inode) of each file: a symlink or hard link to the same image has the same key."""
        keys = []
        for path in self.files:
            try:
                st = os.stat(path)
                keys.append((st.st_dev, st.st_ino))
            except OSError:
                keys.append((str(path),))
        return keys

    def content_digest(self) -> str:
        """sha256 over each file's path (relative to the folder) and the sha256 of its bytes, in order."""
        import hashlib

        from .files import sha256_file

        digest = hashlib.sha256()
        for path in self.files:
            try:
                relative = path.relative_to(self.source).as_posix()
            except ValueError:
                relative = str(path)
            try:
                content = sha256_file(path)
            except OSError as exc:
                content = f"unreadable ({exc.strerror})"
            digest.update(f"{relative}\0{content}\n".encode())
        return digest.hexdigest()

    def select(self, indices: Sequence[int]) -> "ImageFolderDataset":
        files = [self.files[i] for i in indices]
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return ImageFolderDataset(self.source, self.preprocess, files, labels, self.classes, self.workers, self.by_name)

    def _decode(self, index: int, transform) -> np.ndarray | None:
        path = self.files[index]
        try:
            image = load_image(path)
            resized = self.preprocess.resized_pixels(*image.size)
            if resized > MAX_IMAGE_PIXELS:
                raise UnreadableImage(f"{image.width}x{image.height} pixels would be resized to {resized} pixels")
            return transform(image).numpy()
        except UnreadableImage as exc:
            self._skipped[str(path)] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a decoder failing in an unforeseen way still only skips its file
            detail = str(exc).splitlines()[0] if str(exc) else ""
            self._skipped[str(path)] = f"{type(exc).__name__}: {detail}"[:200]
        return None

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        transform = self.preprocess.transform()
        usable = 0
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for start in range(0, len(self.files), batch_size):
                indices = range(start, min(start + batch_size, len(self.files)))
                # Ctrl-C/SIGTERM waits for the batch: raised inside the pool's locking (threading.Condition.__enter__
                # has taken its lock), it would leave that lock held, and the workers, then their join, wait forever.
                with signals_deferred():
                    decoded = list(pool.map(lambda i: self._decode(i, transform), indices))
                keep = [(i, arr) for i, arr in zip(indices, decoded) if arr is not None]
                if not keep:
                    continue
                usable += len(keep)
                images = np.stack([arr for _, arr in keep]).astype(np.float32, copy=False)
                labels = None
                if self.labels is not None:
                    labels = np.array([self.labels[i] for i, _ in keep], dtype=np.int64)
                yield Batch(images, labels, tuple(str(self.files[i]) for i, _ in keep))
        if usable == 0:
            raise UserError(
                f"no usable image in {self.source}: all {len(self.files)} files failed to decode "
                f"(first: {next(iter(self._skipped.items()), ('?', '?'))[1]}); give readable images"
            )


# ------------------------------------------------------------------------------------------------ npz


@dataclass(frozen=True)
class _NpyMember:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read the .npy magic and header from a stream, leaving it at the first data byte."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), bool(fortran), np.dtype(dtype)


def _read_npy_header(zf: zipfile.ZipFile, member: str) -> _NpyMember:
    with zf.open(member) as f:
        shape, fortran, dtype = _read_header(f)
    return _NpyMember(member, shape, dtype, fortran)


class NpzDataset:
    """`.npz` with `images` (N, C, H, W) float32, already preprocessed, and optional `labels` (N,).

    Rows are streamed from the zip member, so memory stays bounded; nothing is unpickled.
    """

    def __init__(self, source: Path, images: _NpyMember, labels: np.ndarray | None, rows: Sequence[int] | None) -> None:
        self.source = Path(source)
        self._images = images
        self._all_labels = labels
        self.rows = tuple(range(images.shape[0])) if rows is None else tuple(rows)
        self.has_labels = labels is not None
        self.classes = None
        self.preprocess = None

    @classmethod
    def open(cls, path: Path, input_size: Sequence[int], *, option: str = "--val-data") -> "NpzDataset":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{option} {path} is not a readable .npz file ({exc}); write it with numpy.savez") from None
        with zf:
            names = {n.removesuffix(".npy"): n for n in zf.namelist()}
            if "images" not in names:
                raise UserError(f"{option} {path} has no 'images' array (found: {sorted(names)}); save it as images=...")
            try:
                images = _read_npy_header(zf, names["images"])
            except (ValueError, OSError) as exc:
                raise UserError(f"{option} {path}: 'images' is not a valid array ({exc})") from None
            if images.dtype.hasobject:
                raise UserError(f"{option} {path}: 'images' holds Python objects; save float32 numbers")
            if len(images.shape) != 4 or tuple(images.shape[1:]) != tuple(input_size):
                raise UserError(
                    f"{option} {path}: 'images' has shape {images.shape}, expected (N, {', '.join(map(str, input_size))}); "
                    "preprocess the images to the model's input size or pass --input-size"
                )
            if images.dtype != np.float32 or images.fortran_order:
                raise UserError(f"{option} {path}: 'images' must be C-ordered float32, got {images.dtype}")
            if images.shape[0] == 0:
                raise UserError(f"{option} {path}: 'images' is empty; give at least one image")
            labels = None
            if "labels" in names:
                try:
                    with zf.open(names["labels"]) as f:
                        labels = np.lib.format.read_array(f, allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise UserError(f"{option} {path}: 'labels' is not a valid array ({exc})") from None
                if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
                    raise UserError(
                        f"{option} {path}: 'labels' must be N={images.shape[0]} integers, got {labels.dtype} {labels.shape}"
                    )
                labels = labels.astype(np.int64)
        return cls(path, images, labels, None)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def skipped(self) -> dict[str, str]:
        return {}

    def sample_keys(self) -> list[tuple]:
        """(device, inode, row) of each sample."""
        st = os.stat(self.source)
        return [(st.st_dev, st.st_ino, row) for row in self.rows]

    def content_digest(self) -> str:
        """sha256 over the .npz file's sha256 and the selected rows."""
        import hashlib

        from .files import sha256_file

        rows = ",".join(map(str, self.rows))
        return hashlib.sha256(f"{sha256_file(self.source)}\0{rows}".encode()).hexdigest()

    def row_labels(self) -> np.ndarray | None:
        """The labels of the selected rows."""
        return None if self._all_labels is None else self._all_labels[list(self.rows)]

    def select(self, indices: Sequence[int]) -> "NpzDataset":
        return NpzDataset(self.source, self._images, self._all_labels, [self.rows[i] for i in indices])

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        row_shape = self._images.shape[1:]
        row_bytes = int(np.prod(row_shape)) * self._images.dtype.itemsize
        wanted = self.rows
        with zipfile.ZipFile(self.source) as zf, zf.open(self._images.name) as f:
            _read_header(f)  # leaves the stream at the first row
            position = 0
            # Rows are read in file order; a selection is sorted for reading and yielded in that order.
            order = sorted(range(len(wanted)), key=lambda k: wanted[k])
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                out = np.empty((len(chunk), *row_shape), dtype=np.float32)
                for j, k in enumerate(chunk):
                    row = wanted[k]
                    if row > position:
                        _skip(f, (row - position) * row_bytes)
                        position = row
                    buf = f.read(row_bytes)
                    if len(buf) != row_bytes:
                        raise UserError(f"{self.source}: 'images' ends early (truncated file); write it again")
                    out[j] = np.frombuffer(buf, dtype=self._images.dtype).reshape(row_shape)
                    position += 1
                labels = None if self._all_labels is None else self._all_labels[[wanted[k] for k in chunk]]
                yield Batch(out, labels, tuple(str(wanted[k]) for k in chunk))


def _skip(f, nbytes: int) -> None:
    while nbytes > 0:
        data = f.read(min(nbytes, 1 << 22))
        if not data:
            return
        nbytes -= len(data)


def check_labels(dataset: Dataset, num_classes: int, option: str) -> None:
    """A labelled data set's labels are classifier outputs of the model (0..num_classes-1)."""
    if isinstance(dataset, ImageFolderDataset) and dataset.classes and not dataset.by_name:
        if len(dataset.classes) > num_classes:
            raise UserError(
                f"{option} {dataset.source} has {len(dataset.classes)} class folders but the model has {num_classes} "
                "classes; give data of this model's classes (or name the folders after its --labels)"
            )
    if isinstance(dataset, NpzDataset) and dataset.has_labels:
        labels = dataset.row_labels()
        if labels is not None and labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise UserError(
                f"{option} {dataset.source}: 'labels' range {int(labels.min())}..{int(labels.max())} is not within the "
                f"model's 0..{num_classes - 1}; give labels of this model's classes"
            )


def first_images(dataset: Dataset, count: int) -> np.ndarray:
    """Up to `count` preprocessed images from the start of a data set (for checks and benchmarks)."""
    parts: list[np.ndarray] = []
    have = 0
    for batch in dataset.iter_batches(min(count, 64)):
        parts.append(batch.images[: count - have])
        have += len(parts[-1])
        if have >= count:
            break
    return np.concatenate(parts)


@dataclass
class SkipSummary:
    """Files skipped while reading a data set, for the report."""

    count: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, dataset: Dataset, keep: int = 5) -> "SkipSummary":
        skipped = dataset.skipped
        return cls(len(skipped), dict(list(skipped.items())[:keep]))
