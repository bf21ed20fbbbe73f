"""Where a dataset's images come from, one sample at a time: image files, a uint8 array, or litdata shards.

A source maps a sample index to its PIL images (one per view) and names a sample in error messages. The
in-memory path decodes every sample once at ``load_size`` (:func:`decode_into`); the streaming path reads
samples in DataLoader workers. Sources are pickled into worker processes, so they hold paths and open files,
arrays or shard readers lazily in each process.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

#: what a damaged, truncated or vanished image file raises while it is opened and decoded
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def resize_crop(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop a square: one image as HWC uint8."""
    w, h = img.size
    ratio = size / min(w, h)
    img = img.resize((max(size, round(w * ratio)), max(size, round(h * ratio))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return array if array.ndim == 3 else array[:, :, None]


def channels_of(mode: str) -> int:
    """Channels of a PIL mode (``RGB`` 3, ``L`` 1)."""
    return len(Image.new(mode, (1, 1)).getbands())


class Source:
    """Samples by index: :meth:`read` gives the PIL images of one sample (one per view)."""

    #: views per sample; a source of one view gives ``[C, H, W]`` samples, of several ``[V, C, H, W]``
    views: int = 1
    #: PIL mode the images are decoded to
    mode: str = "RGB"

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> list[Image.Image]:
        """The decoded images of sample ``i``; raises one of :data:`UNREADABLE` for a bad file."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        """Sample ``i`` as a user finds it (a file path)."""
        return f"sample {i}"

    def fingerprint(self) -> str:
        """A digest that changes whenever the samples may have (keys the decoded cache)."""
        raise NotImplementedError


class FileSource(Source):
    """Image files, one tuple of paths per sample (several paths: the views of a paired folder)."""

    def __init__(self, files: Sequence[Sequence[Path]], mode: str = "RGB") -> None:
        self.files = [tuple(map(str, paths)) for paths in files]
        self.views, self.mode = (len(self.files[0]) if self.files else 1), mode

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> list[Image.Image]:
        out = []
        for path in self.files[i]:
            with Image.open(path) as img:
                out.append(img.convert(self.mode))  # convert() loads the pixels, so a truncated file fails here
        return out

    def name(self, i: int) -> str:
        return ", ".join(self.files[i])

    def fingerprint(self) -> str:
        """Every path with its size and modification time: an edited, replaced, added or removed file changes it
        (hashing the bytes of a whole dataset would cost as much as decoding it)."""
        digest = hashlib.sha256(f"files|{self.mode}".encode())
        for paths in self.files:
            for path in paths:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class ArraySource(Source):
    """uint8 images ``[N, C, H, W]`` or ``[N, V, C, H, W]``: a tensor in memory (torchvision's datasets) or a
    ``.npy`` file mapped lazily in each process (the decoded cache), so workers never copy it."""

    def __init__(self, images: Tensor | None = None, path: Path | None = None) -> None:
        if (images is None) == (path is None):
            raise ValueError("give images or a path")
        self._images, self.path = images, path
        shape = tuple(images.shape) if images is not None else np.load(path, mmap_mode="r").shape
        self.length, self.views = shape[0], (shape[1] if len(shape) == 5 else 1)
        self.mode = "L" if shape[-3] == 1 else "RGB"

    @property
    def images(self) -> Tensor:
        if self._images is None:  # copy-on-write: pages are shared between processes and never written
            self._images = torch.from_numpy(np.load(self.path, mmap_mode="c"))
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_images"] = None  # a worker maps the file itself instead of receiving a pickled copy
        return state

    def __len__(self) -> int:
        return self.length

    def read(self, i: int) -> list[Image.Image]:
        sample = self.images[i]
        views = sample if sample.ndim == 4 else sample[None]
        return [Image.fromarray(v.permute(1, 2, 0).squeeze(-1).numpy()) for v in views]

    def name(self, i: int) -> str:
        return f"image {i} of {self.path}" if self.path is not None else f"image {i}"

    def fingerprint(self) -> str:
        """The mapped file's path, size and time (the decoded cache names it after its source's fingerprint), or
        a hash of the pixels held in memory."""
        if self.path is not None:
            stat = os.stat(self.path)
            return hashlib.sha256(f"array|{self.path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
        pixels = np.ascontiguousarray(self.images.numpy())
        return hashlib.sha256(b"array|" + str(pixels.shape).encode() + pixels.tobytes()).hexdigest()


class ShardSource(Source):
    """Images stored as their original encoded bytes in litdata shards (:mod:`transfuse.data.shards`), read by
    index from a local folder, a shared path or an object store (``s3://...``, cached locally by litdata)."""

    def __init__(self, input_dir: str, names: Sequence[str], mode: str = "RGB", fingerprint: str = "") -> None:
        self.input_dir, self.names, self.mode, self._fingerprint = input_dir, list(names), mode, fingerprint
        self._dataset = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}  # each worker opens its own reader

    def __len__(self) -> int:
        return len(self.names)

    def read(self, i: int) -> list[Image.Image]:
        if self._dataset is None:
            from litdata import StreamingDataset

            self._dataset = StreamingDataset(self.input_dir)
        item = self._dataset[i]
        with Image.open(io.BytesIO(item["image"])) as img:
            return [img.convert(self.mode)]

    def name(self, i: int) -> str:
        return f"{self.names[i]} (shard item {i} of {self.input_dir})"

    def fingerprint(self) -> str:
        return self._fingerprint


def decode_into(
    out: np.ndarray,
    source: Source,
    indices: Sequence[int],
    size: int,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, str]]:
    """Decode ``source[indices]`` at ``size`` into ``out`` (uint8 ``[n, (V,) C, size, size]``) with threads.

    Returns ``(index, reason)`` of the samples that could not be read; their rows stay zero.
    """

    def one(row: int) -> tuple[int, str] | None:
        i = indices[row]
        try:
            views = [resize_crop(img, size).transpose(2, 0, 1) for img in source.read(i)]
        except UNREADABLE as err:
            return i, f"{type(err).__name__}: {err}"
        out[row] = views[0] if out.ndim == 4 else np.stack(views)
        return None

    failed = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for row, result in enumerate(pool.map(one, range(len(indices)), chunksize=64)):
            if result is not None:
                failed.append(result)
            if progress is not None and row % 1000 == 999:
                progress(row + 1)
    return failed


def pixel_shape(source: Source, size: int) -> tuple[int, ...]:
    """Shape of one decoded sample: ``(C, size, size)`` or ``(V, C, size, size)``."""
    one = (channels_of(source.mode), size, size)
    return one if source.views == 1 else (source.views, *one)
