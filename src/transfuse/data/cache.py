"""The decoded cache: a dataset decoded once at its load size into a uint8 ``.npy`` file that later jobs map.

An entry is keyed by the source's fingerprint (every file's path, size and modification time) and the load size,
so a dataset whose files changed gets a new key and is decoded again, never served stale; the outdated entry of
the same dataset is then removed. The first process that needs an entry builds it under a file lock, into a
temporary file renamed into place once complete; processes started meanwhile wait on the lock, then map the
finished file. Mapped pages live in the operating system's page cache, so the jobs of a sweep on one node share
one copy of the pixels instead of decoding and holding one each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from transfuse.data.sources import Source, decode_into, pixel_shape
from transfuse.errors import DataError

log = logging.getLogger(__name__)

#: bumped when the layout of an entry changes, so old entries are never read as new ones
VERSION = 1


@dataclass
class CacheEntry:
    """A finished entry: the ``.npy`` of every sample (unreadable ones left zero) and those unreadable samples."""

    path: Path
    unreadable: list[tuple[int, str]]
    built: bool  # whether this process decoded it (False: mapped what another process or job wrote)


def cache_key(source: Source, size: int) -> str:
    """The entry's name: the source's fingerprint and the load size."""
    return hashlib.sha256(f"v{VERSION}|{size}|{source.fingerprint()}".encode()).hexdigest()[:24]


def cached_pixels(source: Source, size: int, cache_dir: Path, label: str, workers: int = 4) -> CacheEntry:
    """The entry of ``source`` at ``size`` under ``cache_dir``, decoding it first if no process has yet.

    Args:
        source: the samples.
        size: load size (square side) of the stored images.
        cache_dir: where entries live (a node-local or shared folder every job of a sweep can reach).
        label: names the dataset in the entry (``image folder /data/x``); other entries of the same label and size
            are outdated once a new one is built, and removed.
        workers: decoding threads.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create data.cache_dir {cache_dir}: {err} (point it elsewhere or set it to null)"
        ) from None
    key = cache_key(source, size)
    path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    built = False
    if not meta_path.exists():
        with FileLock(str(cache_dir / f"{key}.lock")):
            if not meta_path.exists():  # no other process finished it while this one waited
                _build(source, size, path, meta_path, label, workers)
                built = True
                _remove_outdated(cache_dir, key, label, size)
    meta = json.loads(meta_path.read_text())
    if not built:
        log.info("%s: mapping the decoded cache %s (%d images at %d px)", label, path, meta["count"], size)
    return CacheEntry(path, [tuple(item) for item in meta["unreadable"]], built)


def _build(source: Source, size: int, path: Path, meta_path: Path, label: str, workers: int) -> None:
    shape = (len(source), *pixel_shape(source, size))
    gigabytes = np.prod(shape) / 1e9
    log.info("%s: decoding %d images at %d px into the cache %s (%.1f GB)", label, len(source), size, path, gigabytes)
    start = time.perf_counter()
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        unreadable = decode_into(out, source, range(len(source)), size, workers)
        out.flush()
        del out
        os.replace(tmp, path)  # readers only look for the .json, written after the pixels are in place
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"label": label, "size": size, "count": len(source), "shape": list(shape), "unreadable": unreadable}
    meta_tmp = meta_path.with_name(f"{meta_path.stem}.{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps(meta))
    os.replace(meta_tmp, meta_path)
    log.info("%s: cache written in %.0f s", label, time.perf_counter() - start)


def _remove_outdated(cache_dir: Path, key: str, label: str, size: int) -> None:
    """Remove entries of the same dataset and size under another key: their files have changed since.

    A job still mapping one keeps reading it (an unlinked file lives until its last mapping closes).
    """
    for meta_path in cache_dir.glob("*.json"):
        if meta_path.stem == key:
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("label") == label and meta.get("size") == size:
            log.info("%s: removing the outdated cache entry %s (its source files changed)", label, meta_path.stem)
            meta_path.unlink(missing_ok=True)
            (cache_dir / f"{meta_path.stem}.npy").unlink(missing_ok=True)
