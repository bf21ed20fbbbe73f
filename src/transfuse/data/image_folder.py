"""Any folder of class sub-folders (the layout of Office-31, Office-Home, PACS and DomainNet)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
ON_EMPTY_CLASS = ("error", "skip")


def _decode(path: Path, size: int, mode: str) -> np.ndarray:
    """Decode, resize the shorter side to ``size`` and centre-crop a square: one image as HWC uint8."""
    with Image.open(path) as img:
        img = img.convert(mode)
        w, h = img.size
        ratio = size / min(w, h)
        img = img.resize((max(size, round(w * ratio)), max(size, round(h * ratio))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return array if array.ndim == 3 else array[:, :, None]


def split_roots(root: Path) -> dict[str, Path]:
    """``{split: folder}``: the train/val/test sub-folders of ``root`` if it has them, else ``{"train": root}``."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    found = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    if found and "train" not in found:
        raise DataError(f"{root} has {sorted(found)} split folders but no 'train' folder")
    return found or {"train": root}


def scan_classes(root: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """The image files of each class folder of ``root`` (``{class: files}``) and the class folders holding none."""
    classes, empty = {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            classes[folder.name] = files
        else:
            empty.append(folder)
    return classes, empty


def check_on_empty_class(on_empty_class: str) -> None:
    """Refuse an ``on_empty_class`` setting other than ``error`` or ``skip``, when the datamodule is built."""
    if on_empty_class not in ON_EMPTY_CLASS:
        raise ConfigError(f"on_empty_class must be one of {ON_EMPTY_CLASS}, got {on_empty_class!r}")


def refuse_empty(empty: list[Path], on_empty_class: str, shown: int = 10) -> None:
    """Refuse class folders without images, since dropping one silently changes the classes a model learns;
    ``on_empty_class="skip"`` leaves them out with one warning line that lists them."""
    if not empty:
        return
    listing = ", ".join(map(str, empty[:shown])) + (f" and {len(empty) - shown} more" if len(empty) > shown else "")
    if on_empty_class == "error":
        raise DataError(
            f"{len(empty)} class folder(s) hold no images: {listing} "
            "(add images, remove the folders or set data.on_empty_class=skip)"
        )
    log.warning("skipped %d class folder(s) without images: %s", len(empty), listing)


class ImageFolder(InMemoryImageDataModule):
    """Reads ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>`` into memory once.

    Args:
        root: the dataset folder.
        load_size: images are stored at this square size (use the backbone's image size or a bit more).
        mode: PIL mode to decode to (``RGB`` or ``L``).
        on_corrupt: ``error`` refuses the dataset and lists unreadable files; ``skip`` leaves them out and
            logs every path and the count, so nothing disappears silently.
        on_empty_class: ``error`` refuses a class folder without images, naming it; ``skip`` leaves it out (the
            class does not exist) and logs the folders in one warning line.
        max_memory_gb: refuse to load more than this many GB of pixels (lower ``load_size`` instead).
        workers: threads used for decoding.
    """

    def __init__(
        self,
        root: str,
        load_size: int = 64,
        mode: str = "RGB",
        on_corrupt: str = "error",
        on_empty_class: str = "error",
        max_memory_gb: float = 8.0,
        workers: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if on_corrupt not in ("error", "skip"):
            raise ConfigError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        check_on_empty_class(on_empty_class)
        self.root, self.load_size, self.mode = Path(root).expanduser(), load_size, mode
        self.on_corrupt, self.on_empty_class = on_corrupt, on_empty_class
        self.max_memory_gb, self.workers = max_memory_gb, workers
        self.skipped: list[tuple[Path, str]] = []

    def _split_roots(self) -> dict[str, Path]:
        return split_roots(self.root)

    def describe(self) -> str:
        return f"image folder {self.root}"

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        found = {split: scan_classes(path) for split, path in self._split_roots().items()}
        refuse_empty([folder for _, empty in found.values() for folder in empty], self.on_empty_class)
        scanned = {split: classes for split, (classes, _) in found.items()}
        class_names = sorted(scanned["train"])
        if not class_names:
            raise DataError(f"no images found under {self._split_roots()['train']} (expected <class>/<image> folders)")
        for split, classes in scanned.items():
            if split != "train" and set(classes) - set(class_names):
                raise DataError(f"{split} has classes missing from train: {sorted(set(classes) - set(class_names))}")
        files = [
            (split, path, class_names.index(c)) for split, cs in scanned.items() for c, ps in cs.items() for path in ps
        ]
        channels = len(Image.new(self.mode, (1, 1)).getbands())
        gigabytes = len(files) * channels * self.load_size**2 / 1e9
        if gigabytes > self.max_memory_gb:
            raise DataError(
                f"{len(files)} images at {self.load_size}px need {gigabytes:.1f} GB, above "
                f"data.max_memory_gb={self.max_memory_gb}; lower data.load_size or raise the limit"
            )

        def decode(item: tuple[str, Path, int]) -> np.ndarray | str:
            try:
                return _decode(item[1], self.load_size, self.mode)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                return f"{type(err).__name__}: {err}"

        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            decoded = list(pool.map(decode, files))
        self.skipped = [(f[1], d) for f, d in zip(files, decoded, strict=True) if isinstance(d, str)]
        if self.skipped:
            listing = "; ".join(f"{p} ({why})" for p, why in self.skipped)
            if self.on_corrupt == "error":
                raise DataError(
                    f"{len(self.skipped)} unreadable image(s) under {self.root}: {listing} "
                    "(remove them or set data.on_corrupt=skip)"
                )
            log.warning("skipped %d of %d images that could not be read: %s", len(self.skipped), len(files), listing)
        splits = {}
        for split in scanned:
            keep = [(d, f[2]) for f, d in zip(files, decoded, strict=True) if f[0] == split and not isinstance(d, str)]
            if keep:
                images = torch.from_numpy(np.stack([d for d, _ in keep])).permute(0, 3, 1, 2).contiguous()
                splits[split] = ImageTensors(images, torch.tensor([label for _, label in keep]))
        return splits, class_names
