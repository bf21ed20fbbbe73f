"""Streaming image datasets, the decoded cache and litdata shards: the same images as in memory, timm's
transforms, unreadable files mid-stream, and every full-scale experiment taking a real step while streaming."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import compose_config
from transfuse.config import EXPERIMENTS_DIR
from transfuse.config import compose_config as compose_named
from transfuse.data import ImageFolder, TorchvisionDataset, UnreadableImages
from transfuse.data.cache import cached_pixels
from transfuse.data.image_folder import folder_catalog
from transfuse.data.multiview import PairedFolder
from transfuse.data.shards import ShardFolder
from transfuse.data.shards import main as shards_main
from transfuse.data.streaming import timm_transforms
from transfuse.data.transforms import RandomAffine
from transfuse.errors import DataError

KW = {"image_size": 16, "channels": 3, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
SPLITS = ("train", "val", "test")


def _jpegs(root: Path, classes: int = 3, per_class: int = 12, seed: int = 0, low: int = 12, high: int = 40) -> Path:
    """``root/<class>/<i>.jpg``: random-noise JPEGs of mixed sizes (and a PNG now and then)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            w, h = rng.integers(low, high, 2)
            suffix = "png" if i % 5 == 4 else "jpg"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.{suffix}")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _jpegs(tmp_path / "images")


def _same_splits(a, b) -> None:
    assert a.class_names == b.class_names
    for split in SPLITS:
        assert torch.equal(a.splits[split].labels, b.splits[split].labels), split
        assert torch.equal(a.splits[split].images[:], b.splits[split].images[:]), split


# --- the same images either way ------------------------------------------------------------------------------


@pytest.mark.parametrize("per_class", [None, 3])
def test_streaming_and_in_memory_give_the_same_classes_splits_and_subsets(folder, per_class):
    common = {**KW, "load_size": 16, "train_per_class": per_class, "subset_seed": 7, "split_seed": 3}
    memory = ImageFolder(root=str(folder), in_memory=True, **common)
    streamed = ImageFolder(root=str(folder), in_memory=False, workers=0, **common)
    assert not memory.streams and streamed.streams
    _same_splits(memory, streamed)  # a streamed split's images decode, when sliced, to the in-memory pixels
    if per_class is not None:
        assert torch.bincount(streamed.splits["train"].labels).tolist() == [3, 3, 3]
    other = ImageFolder(root=str(folder), in_memory=False, **{**common, "split_seed": 4})
    assert not torch.equal(other.splits["test"].images[:], streamed.splits["test"].images[:])


def test_streamed_batches_arrive_normalised_and_pass_the_device_side_untouched(folder):
    dm = ImageFolder(root=str(folder), in_memory=False, workers=0, eval_batch_size=5, **KW)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert torch.equal(labels, dm.splits["test"].labels[:5])
    # evaluation: timm's resize to image_size / crop_pct and centre crop of the full image, normalised
    _, evaluate = timm_transforms(16, 3, KW["mean"], KW["std"], dm.crop_pct, dm.interpolation)
    first = dm.splits["test"].source.read(int(dm.splits["test"].index[0]))[0]
    assert torch.equal(images[0], evaluate(first))
    prepared, same = dm.prepare((images, labels), train=True)
    assert prepared is images and same is labels  # already transformed: never normalised twice
    train_images, _ = next(iter(dm.train_dataloader()))
    assert train_images.shape == (len(dm.splits["train"]), 3, 16, 16) and train_images.dtype == torch.float32


def test_a_model_that_caches_features_gets_the_same_training_images_every_epoch(folder):
    dm = ImageFolder(root=str(folder), in_memory=False, workers=0, augment=RandomAffine(), **KW)
    dataset = dm.train_dataloader().dataset
    torch.manual_seed(0)
    augmented = [dataset[0][0] for _ in range(2)]
    assert not torch.equal(*augmented)  # random resized crops differ
    dataset.augment.fill_(False)  # what on_after_batch_transfer sets while the model does not want augmentation
    assert torch.equal(dataset[0][0], dataset[0][0])


def test_augment_none_streams_training_images_without_augmentation(folder):
    dm = ImageFolder(root=str(folder), in_memory=False, workers=0, augment=None, **KW)
    dataset = dm.train_dataloader().dataset
    assert torch.equal(dataset[0][0], dataset[0][0])


def test_auto_streams_above_the_memory_limit_and_says_so_in_one_line(folder, caplog):
    # 36 RGB images at 16 px are 27,648 bytes
    small = ImageFolder(root=str(folder), load_size=16, max_memory_gb=1e-3, **KW)
    assert not small.streams
    with caplog.at_level(logging.INFO, logger="transfuse.data.streamable"):
        big = ImageFolder(root=str(folder), load_size=16, max_memory_gb=1e-5, **KW)
        assert big.streams and big.class_names == small.class_names
    lines = [r.getMessage() for r in caplog.records if r.name == "transfuse.data.streamable"]
    assert len(lines) == 1 and "streaming" in lines[0] and "data.max_memory_gb=1e-05" in lines[0]
    with pytest.raises(DataError, match=r"data\.in_memory=auto or false"):
        ImageFolder(root=str(folder), load_size=16, max_memory_gb=1e-5, in_memory=True, **KW).setup()


def test_paired_folders_stream_their_views_side_by_side(tmp_path):
    roots = [_jpegs(tmp_path / f"view{v}", per_class=6, seed=0) for v in range(2)]  # same stems in both roots
    common = {**KW, "roots": [str(r) for r in roots], "load_size": 16}
    memory, streamed = PairedFolder(in_memory=True, **common), PairedFolder(in_memory=False, workers=0, **common)
    _same_splits(memory, streamed)
    images, _ = next(iter(streamed.train_dataloader()))
    assert images.shape[1:] == (2, 3, 16, 16)
    one = PairedFolder(in_memory=False, workers=0, keep_views=[1], **common)
    assert next(iter(one.val_dataloader()))[0].shape[1:] == (3, 16, 16)


def test_torchvision_sets_stream_through_timm_transforms(tmp_path):
    from tests.test_data import _write_idx

    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, per_class in (("train", 3), ("t10k", 1)):
        labels = np.tile(np.arange(10), per_class)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.arange(len(labels))[:, None, None] * np.ones((1, 6, 6)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    memory = TorchvisionDataset(name="MNIST", root=str(tmp_path / "tv"), **KW)
    streamed = TorchvisionDataset(name="MNIST", root=str(tmp_path / "tv"), in_memory=False, workers=0, **KW)
    assert not memory.streams  # "auto": the arrays are in memory anyway
    _same_splits(memory, streamed)
    images, _ = next(iter(streamed.test_dataloader()))
    assert images.shape == (10, 3, 16, 16)  # grey 6x6 digits, resized and repeated to the backbone's RGB


# --- unreadable files mid-stream --------------------------------------------------------------------------------


def _spoil(path: Path) -> None:
    path.write_bytes(b"not an image any more")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_spoiled_after_listing_stops_with_one_line_naming_it(folder, workers):
    dm = ImageFolder(root=str(folder), in_memory=False, workers=workers, eval_batch_size=64, **KW)
    victim = Path(dm.splits["test"].source.files[int(dm.splits["test"].index[0])][0])
    _spoil(victim)
    with pytest.raises(DataError) as info:
        for batch in dm.test_dataloader():  # the worker survives; the main process names the file
            dm.prepare(batch, train=False)
    message = str(info.value)
    assert "\n" not in message and str(victim) in message and "data.on_corrupt=skip" in message


def test_skip_counts_unreadable_files_per_epoch_as_a_metric(folder):
    import lightning as L

    from transfuse.models.build import build_model

    cfg = compose_config(["backbone=test_resnet", "backbone.image_size=16"], folder.parent)
    dm = ImageFolder(root=str(folder), in_memory=False, workers=1, on_corrupt="skip", batch_size=8, **KW)
    train = dm.splits["train"]
    victims = [Path(train.source.files[int(i)][0]) for i in train.index[:2]]
    for victim in victims:
        _spoil(victim)
    model = build_model(cfg, dm.class_names)
    seen = []

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(len(batch[1]))

    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0
    )
    trainer.callbacks += [UnreadableImages(), Count()]
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["data/unreadable"] == 2  # the last epoch's count
    assert sum(seen) == 2 * (len(train) - 2)


# --- the decoded cache ------------------------------------------------------------------------------------------

#: one job of a sweep, reduced to what touches the cache (importing Lightning would cost seconds per process)
CACHE_USER = """
import json, sys
from pathlib import Path
import numpy as np
from transfuse.data.cache import cached_pixels
from transfuse.data.sources import FileSource
files = sorted(Path(sys.argv[1]).rglob("*.*"))
entry = cached_pixels(FileSource([(f,) for f in files]), 16, Path(sys.argv[2]), "stand-in", workers=2)
print(json.dumps({"built": entry.built, "sum": int(np.load(entry.path, mmap_mode="r").sum())}))
"""


def test_two_threads_asking_at_once_decode_the_cache_once(folder, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    source = folder_catalog(folder).source
    with ThreadPoolExecutor(2) as pool:
        entries = list(pool.map(lambda _: cached_pixels(source, 16, tmp_path / "cache", "stand-in"), range(2)))
    assert sorted(e.built for e in entries) == [False, True] and entries[0].path == entries[1].path


@pytest.mark.slow
def test_two_processes_started_at_once_decode_the_cache_once_and_share_it(folder, tmp_path):
    script = tmp_path / "use_cache.py"
    script.write_text(CACHE_USER)
    args = [sys.executable, str(script), str(folder), str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    # one decoded it (the other waited on the lock, or found it finished), and both read the same pixels
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["sum"] == results[1]["sum"]
    entries = list((tmp_path / "cache").glob("*.npy"))
    assert len(entries) == 1 and not list((tmp_path / "cache").glob("*.tmp*"))
    memory = ImageFolder(root=str(folder), load_size=16, in_memory=True, **KW)  # the same pixels as decoding here
    assert sum(int(memory.splits[s].images.sum()) for s in SPLITS) == results[0]["sum"]


def test_a_cache_whose_source_changed_is_rebuilt_never_reused(folder, tmp_path):
    cache = tmp_path / "cache"
    dm = ImageFolder(root=str(folder), load_size=16, in_memory=False, workers=0, cache_dir=str(cache), **KW)
    first = cached_pixels(dm.listed.source, 16, cache, dm.describe())
    assert not cached_pixels(dm.listed.source, 16, cache, dm.describe()).built  # unchanged: mapped, not decoded
    streamed = dm.splits["val"]
    images, _ = next(iter(dm.val_dataloader()))  # streamed from the cache's squares
    assert images.shape[1:] == (3, 16, 16) and streamed.images[:].shape[1:] == (3, 16, 16)
    changed = folder / "class1" / "0.jpg"
    Image.new("RGB", (30, 20), (250, 0, 0)).save(changed)
    again = ImageFolder(root=str(folder), load_size=16, in_memory=True, cache_dir=str(cache), **KW)
    second = cached_pixels(again.listed.source, 16, cache, again.describe())
    assert second.built and second.path != first.path and not first.path.exists()  # the stale entry is gone
    row = [p[0] for p in again.listed.source.files].index(str(changed))
    pixels = np.load(second.path)[row]
    assert abs(int(pixels[0].mean()) - 250) <= 3 and int(pixels[1].mean()) <= 3


def test_the_cache_records_unreadable_files_and_skip_leaves_them_out(folder, tmp_path):
    victim = folder / "class2" / "3.jpg"
    _spoil(victim)
    common = {"root": str(folder), "load_size": 16, "cache_dir": str(tmp_path / "cache"), **KW}
    with pytest.raises(DataError, match=r"3\.jpg"):
        ImageFolder(in_memory=True, **common).setup()
    skipped = ImageFolder(in_memory=True, on_corrupt="skip", **common)
    streamed = ImageFolder(in_memory=False, workers=0, on_corrupt="skip", **common)
    _same_splits(skipped, streamed)
    assert [p for p, _ in skipped.skipped] == [victim]
    assert sum(len(streamed.splits[s]) for s in SPLITS) == 35


# --- litdata shards ---------------------------------------------------------------------------------------------


def test_shards_give_the_image_folders_classes_and_splits(folder, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards_main([str(folder), str(shards), "--chunk-mb", "1"])
    assert "wrote 36 images of 3 classes" in capsys.readouterr().out
    assert (shards / "index.json").is_file() and (shards / "transfuse.json").is_file()
    memory = ImageFolder(root=str(folder), load_size=16, in_memory=True, **KW)
    streamed = ShardFolder(root=str(shards), load_size=16, in_memory=False, workers=1, **KW)
    assert streamed.streams
    _same_splits(memory, streamed)
    loaded = [labels for _, labels in streamed.train_dataloader()]
    assert sorted(torch.cat(loaded).tolist()) == sorted(memory.splits["train"].labels.tolist())
    with pytest.raises(SystemExit, match="not empty"):
        shards_main([str(folder), str(shards)])


def test_a_shard_folder_without_its_manifest_names_the_command(tmp_path):
    with pytest.raises(DataError, match="transfuse-shards"):
        ShardFolder(root=str(tmp_path), **KW).setup()


def test_shards_keep_a_given_test_folder(tmp_path):
    root = tmp_path / "office"
    _jpegs(root / "train", classes=2, per_class=6)
    _jpegs(root / "test", classes=2, per_class=3, seed=1)
    shards = tmp_path / "shards"
    shards_main([str(root), str(shards)])
    catalog = folder_catalog(root)
    streamed = ShardFolder(root=str(shards), load_size=16, **KW)
    assert len(streamed.splits["test"]) == len(catalog.given["test"]) == 6


# --- every full-scale experiment, streaming -----------------------------------------------------------------------

FULL_SCALE = sorted(
    str(p.relative_to(EXPERIMENTS_DIR).with_suffix("")) for p in EXPERIMENTS_DIR.glob("*/full_scale*.yaml")
)
#: what each leaves to the command line besides data.root, and the tiny timm model standing in for its backbone
EXTRA = {
    "ganin2016_dann/full_scale": ["target_data.in_memory=false", "target_data.workers=1"],
    "kumar2022_lpft/full_scale_ood": ["target_method=full"],
}
VIT = ("wortsman2022_soups/full_scale", "wortsman2022_soups/full_scale_fuse")
ONE_STEP = [
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def stand_in(module_dir) -> Path:
    """A stand-in for ImageNet or DomainNet: 240 JPEGs of mixed sizes in 4 classes."""
    return _jpegs(module_dir / "stand_in", classes=4, per_class=60, low=24, high=96)


def _overrides(experiment: str, folder: Path, tmp_path: Path) -> list[str]:
    name = "test_vit" if experiment in VIT else "test_resnet"
    weights = tmp_path / f"{name}.pth"  # stands in for init.weights=timm (offline) and for the probe run
    model = timm.create_model(name, num_classes=0, **({"img_size": 32} if name == "test_vit" else {}))
    torch.save(model.state_dict(), weights)
    roots = [
        f"{key}={folder}" for key in ("data.root", "target_data.root") if key == "data.root" or "ganin" in experiment
    ]
    return [
        f"experiment={experiment}",
        f"backbone.name={name}",
        "backbone.image_size=32",
        *roots,
        "data.in_memory=false",  # forced: the stand-in would fit in memory
        "data.workers=1",
        f"init.weights={weights}",
        *EXTRA.get(experiment, []),
    ]


@pytest.mark.parametrize("experiment", [e for e in FULL_SCALE if e != "wortsman2022_soups/full_scale_fuse"])
def test_full_scale_experiment_takes_a_step_and_evaluates_while_streaming(stand_in, tmp_path, experiment):
    from transfuse.train import train

    cfg = compose_config([*_overrides(experiment, stand_in, tmp_path), *ONE_STEP], tmp_path)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])[0]
    assert run.info.status == "FINISHED"
    if cfg.stage.fit:  # logged only by a streaming datamodule
        assert run.data.metrics["data/unreadable"] == 0


def test_full_scale_soup_members_and_their_fusion_stream(stand_in, tmp_path):
    from transfuse.fuse import fuse
    from transfuse.train import train

    member = "wortsman2022_soups/full_scale"
    train(compose_config([*_overrides(member, stand_in, tmp_path), *ONE_STEP], tmp_path))
    overrides = [
        o for o in _overrides("wortsman2022_soups/full_scale_fuse", stand_in, tmp_path) if "init.weights" not in o
    ]
    uri = f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_named("fuse", [*overrides, uri, "trainer.accelerator=cpu"], tmp_path / "fuse")
    metrics = fuse(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0


# --- options ----------------------------------------------------------------------------------------------------


def test_randaugment_and_mixup_train_a_step_with_soft_targets(folder):
    import lightning as L

    from transfuse.models.build import build_model

    dm = ImageFolder(
        root=str(folder),
        in_memory=False,
        workers=0,
        batch_size=8,
        augment=RandomAffine(),
        auto_augment="rand-m9-mstd0.5-inc1",
        mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0},
        **KW,
    )
    assert "RandAugment" in repr(dm.transforms[0])
    images, labels = dm.prepare(next(iter(dm.train_dataloader())), train=True)
    assert labels.shape == (8, 3) and torch.allclose(labels.sum(1), torch.ones(8))
    assert dm.prepare((images, labels.argmax(1)), train=False)[1].ndim == 1  # evaluation batches keep hard labels
    cfg = compose_config(["backbone=test_resnet", "backbone.image_size=16"], folder.parent)
    model = build_model(cfg, dm.class_names)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
