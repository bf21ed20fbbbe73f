"""Loader throughput at 224 px: which way of reading an image folder keeps up with training.

On a generated folder of JPEGs (``--images``, 20,000; ``--quick``: 2,000) of mixed sizes, 256 to 512 px a side with
smooth content so that they compress like photographs, the script times the training loader of:

* in memory (the baseline): the folder decoded once at 224 px into uint8 tensors, batches augmented and normalised on
  the device (``data.in_memory=true``);
* streaming from the files with 0, 1 and 2 DataLoader workers (and every core, where there are more): decoding and
  timm's random resized crop and flip per image in the workers (``data.in_memory=false data.workers=N``);
* the decoded cache: the folder decoded once at 256 px into a memory-mapped file (``data.cache_dir``), then streamed
  from it with 2 workers and every core (random resized crops of the stored squares);
* litdata shards: written once by ``transfuse-shards``, streamed with 2 workers and every core (``data=shards``);

and beside them the training images/s of resnet18 at 224 px (forward, backward and optimiser step on random
batches; bf16 autocast on a GPU), so a loader whose ratio to it is at least 1 keeps the model fed. Every loader is
timed over ``--batches`` batches of ``--batch-size`` after one warm-up batch (so worker start-up is left out), each
batch moved to the device; decoding a folder into memory, building the cache and writing the shards are one-time
costs, printed in their own column. Ratios are against the in-memory baseline measured in the same run.

Usage::

    .venv/bin/python scripts/bench_data.py --quick    # a smoke test: 2,000 images, about 3 minutes on 2 cores
    .venv/bin/python scripts/bench_data.py            # 20,000 images: generating them alone takes minutes

The generated folder is kept under ``--root`` (a temporary folder by default) and reused when it is complete.
Run it on an otherwise idle machine: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transfuse.data import ImageFolder
from transfuse.data.cache import cached_pixels
from transfuse.data.shards import ShardFolder, write_shards
from transfuse.data.transforms import RandomAffine

SIZE = 224
CLASSES = 100
#: resnet18's ImageNet normalisation
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _one_image(args: tuple[Path, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(256, 513, 2))
    low = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 13, (h, w, 3))
    pixels = np.clip(np.asarray(low, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def make_folder(root: Path, images: int) -> Path:
    """``root/<class>/<i>.jpg``: ``images`` JPEGs over 100 classes, generated once (a marker file says it is done)."""
    folder = root / f"jpegs{images}"
    if (folder / "complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for i in range(images):
        cls = folder / f"c{i % CLASSES:03d}"
        cls.mkdir(parents=True, exist_ok=True)
        jobs.append((cls / f"{i:06d}.jpg", i))
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_one_image, jobs, chunksize=64))
    (folder / "complete").write_text("")
    size = sum(p.stat().st_size for p, _ in jobs) / 1e9
    print(f"generated {images} JPEGs ({size:.2f} GB) in {time.perf_counter() - start:.0f} s under {folder}")
    return folder


@dataclass
class Row:
    name: str
    images_per_s: float
    one_time: str = ""


def time_loader(dm, device: torch.device, batches: int, prepare: bool) -> float:
    """Training images per second over ``batches`` batches after the first, each moved to ``device`` (and
    transformed there with ``prepare``: the in-memory path's device-side work)."""
    seen, start = 0, 0.0
    for i, batch in enumerate(dm.train_dataloader()):
        images, labels = (part.to(device, non_blocking=True) for part in batch)
        if prepare:
            images, labels = dm.prepare((images, labels), train=True)
        if i == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            continue
        seen += len(images)
        if i == batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def train_rate(device: torch.device, batch_size: int, steps: int) -> float:
    """resnet18 training images/s at 224 px on random batches (bf16 autocast and channels_last on a GPU)."""
    import timm

    model = timm.create_model("resnet18", num_classes=CLASSES).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 3, SIZE, SIZE, device=device)
    labels = torch.randint(0, CLASSES, (batch_size,), device=device)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3 if cuda else 1):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images and fewer batches: a smoke test")
    parser.add_argument("--images", type=int, default=None, help="JPEGs to generate (20,000; --quick 2,000)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per loader (30; --quick 8)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "transfuse-bench-data")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    images = args.images or (2000 if args.quick else 20000)
    batches = args.batches or (8 if args.quick else 30)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cores = os.cpu_count() or 1
    print(f"load average {os.getloadavg()[0]:.1f} on {cores} cores; device {device}; {images} images at {SIZE} px")

    folder = make_folder(args.root, images)
    work = Path(tempfile.mkdtemp(prefix="transfuse-bench-", dir=args.root))
    common = {
        "root": str(folder),
        "image_size": SIZE,
        "channels": 3,
        "mean": MEAN,
        "std": STD,
        "batch_size": args.batch_size,
        "max_memory_gb": 1000.0,
        "augment": RandomAffine(translate=0.1, scale=(1.0, 1.25), hflip=0.5, padding="reflection"),
    }
    rows = []
    try:
        memory = ImageFolder(in_memory=True, load_size=SIZE, workers=cores, **common)
        decode = timed(memory.setup)
        rows.append(
            Row(
                "in memory (device-side augmentation)",
                time_loader(memory, device, batches, True),
                f"decode into memory {decode:.0f} s",
            )
        )
        del memory
        worker_counts = [0, 1, 2] + ([cores] if cores > 2 else [])
        for workers in worker_counts:
            streamed = ImageFolder(in_memory=False, load_size=SIZE, workers=workers, **common)
            rows.append(Row(f"streaming from files, {workers} workers", time_loader(streamed, device, batches, False)))
        many = [2] + ([cores] if cores > 2 else [])
        cache_dir = work / "cache"
        probe = ImageFolder(in_memory=False, load_size=256, cache_dir=str(cache_dir), **common)
        build = timed(lambda: cached_pixels(probe.listed.source, 256, cache_dir, probe.describe(), workers=cores))
        for workers in many:
            cached = ImageFolder(in_memory=False, load_size=256, workers=workers, cache_dir=str(cache_dir), **common)
            mapping = timed(cached.setup)
            cost = f"build {build:.0f} s once; a later job maps it in {mapping:.1f} s" if workers == 2 else ""
            rows.append(
                Row(
                    f"decoded cache (256 px, mmap), {workers} workers",
                    time_loader(cached, device, batches, False),
                    cost,
                )
            )
        shards = work / "shards"
        write = timed(lambda: write_shards(folder, shards, threads=cores))
        for workers in many:
            sharded = ShardFolder(
                root=str(shards),
                in_memory=False,
                load_size=SIZE,
                workers=workers,
                **{k: v for k, v in common.items() if k != "root"},
            )
            cost = f"write {write:.0f} s once" if workers == 2 else ""
            rows.append(Row(f"litdata shards, {workers} workers", time_loader(sharded, device, batches, False), cost))
        train_batch = args.batch_size if device.type == "cuda" else 16
        training = train_rate(device, train_batch, (30 if not args.quick else 10) if device.type == "cuda" else 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = rows[0].images_per_s
    print(f"\nresnet18 training at {SIZE} px on {device}: {training:,.0f} images/s\n")
    header = f"| {'loader':<42} | {'images/s':>9} | {'x in memory':>11} | {'/ training':>10} | one-time cost"
    print(header)
    print("|" + "-" * 44 + "|" + "-" * 11 + "|" + "-" * 13 + "|" + "-" * 12 + "|" + "-" * 40)
    for row in rows:
        ratio, fed = row.images_per_s / baseline, row.images_per_s / training
        print(f"| {row.name:<42} | {row.images_per_s:>9,.0f} | {ratio:>11.2f} | {fed:>10.2f} | {row.one_time}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json is not None:
        table = [{"loader": r.name, "images_per_s": r.images_per_s, "one_time": r.one_time} for r in rows]
        summary = {"device": str(device), "cores": cores, "images": images, "training_images_per_s": training}
        args.json.write_text(json.dumps({**summary, "loaders": table}, indent=1))


if __name__ == "__main__":
    main()
