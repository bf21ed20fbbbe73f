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


class ImageFolder(InMemoryImageDataModule):
    """Reads ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>`` into memory once.

    Args:
        root: the dataset folder.
        load_size: images are stored at this square size (use the backbone's image size or a bit more).
        mode: PIL mode to decode to (``RGB`` or ``L``).
        on_corrupt: ``error`` refuses the dataset and lists unreadable files; ``skip`` leaves them out and
            logs every path and the count, so nothing disappears silently.
        max_memory_gb: refuse to load more than this many GB of pixels (lower ``load_size`` instead).
        workers: threads used for decoding.
    """

    def __init__(
        self,
        root: str,
        load_size: int = 64,
        mode: str = "RGB",
        on_corrupt: str = "error",
        max_memory_gb: float = 8.0,
        workers: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if on_corrupt not in ("error", "skip"):
            raise ConfigError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        self.root, self.load_size, self.mode = Path(root).expanduser(), load_size, mode
        self.on_corrupt, self.max_memory_gb, self.workers = on_corrupt, max_memory_gb, workers
        self.skipped: list[tuple[Path, str]] = []

    def _split_roots(self) -> dict[str, Path]:
        return split_roots(self.root)

    @staticmethod
    def _scan(root: Path) -> dict[str, list[Path]]:
        classes = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if files:
                classes[folder.name] = files
        return classes

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        scanned = {split: self._scan(path) for split, path in self._split_roots().items()}
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
