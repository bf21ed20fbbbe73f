"""Any folder of class sub-folders (the layout of Office-31, Office-Home, PACS and DomainNet)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transfuse.data.sources import FileSource
from transfuse.data.streamable import Catalog, StreamableImageDataModule
from transfuse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
ON_EMPTY_CLASS = ("error", "skip")


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


class ImageFolder(StreamableImageDataModule):
    """Reads ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>``, into memory or streamed.

    Args:
        root: the dataset folder.
        mode: PIL mode to decode to (``RGB`` or ``L``).
        on_empty_class: ``error`` refuses a class folder without images, naming it; ``skip`` leaves it out (the
            class does not exist) and logs the folders in one warning line.
        **kwargs: :class:`~transfuse.data.streamable.StreamableImageDataModule`'s arguments (``in_memory``,
            ``load_size``, ``cache_dir``, ``on_corrupt``...).
    """

    def __init__(self, root: str, mode: str = "RGB", on_empty_class: str = "error", **kwargs) -> None:
        super().__init__(**kwargs)
        check_on_empty_class(on_empty_class)
        self.root, self.mode, self.on_empty_class = Path(root).expanduser(), mode, on_empty_class

    def describe(self) -> str:
        return f"image folder {self.root}"

    def catalog(self) -> Catalog:
        return folder_catalog(self.root, self.mode, self.on_empty_class)


def folder_catalog(root: Path, mode: str = "RGB", on_empty_class: str = "error") -> Catalog:
    """Every image of an image folder in a fixed order (split, class, path), without decoding any."""
    roots = split_roots(root)
    found = {split: scan_classes(path) for split, path in roots.items()}
    refuse_empty([folder for _, empty in found.values() for folder in empty], on_empty_class)
    scanned = {split: classes for split, (classes, _) in found.items()}
    class_names = sorted(scanned["train"])
    if not class_names:
        raise DataError(f"no images found under {roots['train']} (expected <class>/<image> folders)")
    for split, classes in scanned.items():
        if split != "train" and set(classes) - set(class_names):
            raise DataError(f"{split} has classes missing from train: {sorted(set(classes) - set(class_names))}")
    files, labels, given = [], [], {}
    for split, classes in scanned.items():
        start = len(files)
        for name, paths in classes.items():
            files += [(path,) for path in paths]
            labels += [class_names.index(name)] * len(paths)
        given[split] = torch.arange(start, len(files))
    return Catalog(FileSource(files, mode), given, torch.tensor(labels), class_names)
