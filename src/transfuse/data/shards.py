"""Sharded streaming for clusters: an image folder written once as litdata shards, then ``data=shards``.

Millions of small files are slow to list and open on a cluster's shared file system; a few hundred shards of
64 MB are not. ``transfuse-shards ROOT OUT`` writes every image of an image folder, its original encoded bytes
(no decoding, no quality lost), into litdata chunks, plus ``transfuse.json``: the class names, labels, given
splits and file names of every sample in the image folder's order. ``data=shards data.root=OUT`` then streams them
from a local copy or a shared path, with the same class list, splits and per-class subsets as ``data=image_folder``
on the original folder for the same seeds.

Why litdata rather than WebDataset: litdata's shards are read by sample index, so the split and subset indices of
the image folder apply unchanged and the same streaming Dataset reads them (WebDataset's tar shards are read in
order only: a validation split or a 10-per-class subset would mean reading every shard and filtering). litdata is
maintained with Lightning, which trains here, and its reader caches the chunks it reads from remote storage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transfuse.data.image_folder import folder_catalog
from transfuse.data.sources import ShardSource
from transfuse.data.streamable import Catalog, StreamableImageDataModule
from transfuse.errors import DataError, TransfuseError

log = logging.getLogger(__name__)

#: the file beside litdata's index.json that lists transfuse's view of the samples; written last
MANIFEST = "transfuse.json"


def write_shards(root: Path, out: Path, chunk_mb: int = 64, threads: int = 8) -> dict:
    """Write the image folder ``root`` as litdata shards into ``out`` (which must be new or empty); returns the
    manifest. Files are read by ``threads`` threads and written in order by this process."""
    from litdata.streaming import Cache

    root, out = Path(root).expanduser().resolve(), Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty; write the shards into a new folder")
    catalog = folder_catalog(root)
    files = [paths[0] for paths in catalog.source.files]
    log.info("writing %d images of %s as shards into %s", len(files), root, out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(input_dir=str(out), chunk_bytes=f"{chunk_mb}MB", max_cache_size="1GB")  # a writer caches nothing
    labels = catalog.labels.tolist()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i, data in enumerate(pool.map(lambda p: Path(p).read_bytes(), files)):
            cache[i] = {"index": i, "label": labels[i], "image": data}
            if i % 10000 == 9999:
                log.info("%d of %d images written", i + 1, len(files))
    cache.done()
    cache.merge()
    manifest = {
        "version": 1,
        "source": str(root),
        "class_names": catalog.class_names,
        "labels": labels,
        "splits": {
            split: [int(index[0]), int(index[0]) + len(index)] for split, index in catalog.given.items() if len(index)
        },
        "files": [str(Path(f).relative_to(root)) for f in files],
    }
    tmp = out / f"{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, out / MANIFEST)  # a folder without the manifest is an unfinished write
    return manifest


def read_manifest(root: Path) -> tuple[dict, str]:
    """The manifest of a shard folder and a digest of it and litdata's index (keys the decoded cache)."""
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{root} holds no finished shards (no {MANIFEST}); write them with: transfuse-shards <image folder> {root}"
        )
    text = path.read_bytes()
    index = root / "index.json"
    digest = hashlib.sha256(text + (index.read_bytes() if index.is_file() else b"")).hexdigest()
    return json.loads(text), digest


class ShardFolder(StreamableImageDataModule):
    """Shards written by ``transfuse-shards`` from an image folder, streamed (or read into memory when asked).

    Args:
        root: the shard folder: local, or on a shared file system every node mounts.
        mode: PIL mode to decode to (``RGB`` or ``L``).
        **kwargs: :class:`~transfuse.data.streamable.StreamableImageDataModule`'s arguments.
    """

    def __init__(self, root: str, mode: str = "RGB", **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.mode = Path(root).expanduser(), mode

    def describe(self) -> str:
        return f"shards {self.root}"

    def catalog(self) -> Catalog:
        import torch

        manifest, digest = read_manifest(self.root)
        source = ShardSource(str(self.root), manifest["files"], self.mode, fingerprint=f"shards|{self.mode}|{digest}")
        given = {split: torch.arange(start, stop) for split, (start, stop) in manifest["splits"].items()}
        return Catalog(source, given, torch.tensor(manifest["labels"]), list(manifest["class_names"]))


def main(argv: list[str] | None = None) -> None:
    """``transfuse-shards ROOT OUT``: write an image folder as litdata shards for ``data=shards``."""
    parser = argparse.ArgumentParser(
        prog="transfuse-shards",
        description="Write an image folder (<class>/<image>, optionally under train/val/test) as litdata shards, "
        "for data=shards data.root=OUT.",
    )
    parser.add_argument("root", type=Path, help="the image folder")
    parser.add_argument("out", type=Path, help="a new folder for the shards (local or on a shared file system)")
    parser.add_argument("--chunk-mb", type=int, default=64, help="shard size in MB (default 64)")
    parser.add_argument("--threads", type=int, default=8, help="threads reading the files (default 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = write_shards(args.root, args.out, args.chunk_mb, args.threads)
    except TransfuseError as err:
        sys.exit(f"transfuse-shards: error: {err}")
    print(f"wrote {len(manifest['labels'])} images of {len(manifest['class_names'])} classes into {args.out}")


if __name__ == "__main__":
    main()
