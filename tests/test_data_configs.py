"""The data presets share their common keys through conf/data/_base.yaml and keep their own values."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from transfuse.config import CONF_DIR

DATA_DIR = CONF_DIR / "data"
PRESETS = sorted(p.stem for p in DATA_DIR.glob("*.yaml") if not p.stem.startswith("_"))
#: keys every datamodule is built with; test_fraction comes separately (torchvision's datasets have a test split)
SHARED = [
    "image_size",
    "channels",
    "mean",
    "std",
    "batch_size",
    "eval_batch_size",
    "val_fraction",
    "train_per_class",
    "val_per_class",
    "split_seed",
    "subset_seed",
    "num_workers",
]
#: (batch_size, eval_batch_size, val_fraction, test_fraction) of each preset; None: no test_fraction key
SIZES = {
    "digits": (32, 256, 0.2, 0.25),
    "mnist5k": (64, 256, 0.1, 0.2),
    "synthetic": (32, 256, 0.15, 0.25),
    "synthetic_target": (32, 256, 0.15, 0.25),
    "image_folder": (32, 128, 0.1, 0.2),
    "torchvision": (128, 512, 0.1, None),
    "paired_folder": (32, 128, 0.1, 0.2),
    "shards": (32, 128, 0.1, 0.2),
    "noisy_mnist": (64, 256, 0.1, 0.2),
    "multiview": (64, 256, 0.1, 0.2),
    "syn_digits": (64, 256, 0.1, 0.2),
    "mnist_m": (64, 256, 0.1, 0.2),
    "mix": (64, 256, 0.1, None),
}


def test_every_preset_is_listed():
    assert set(PRESETS) == set(SIZES)


def test_base_is_not_a_dataset():
    base = OmegaConf.load(DATA_DIR / "_base.yaml")
    assert "_target_" not in base and "defaults" not in base
    assert list(base) == SHARED


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_pulls_in_the_base_before_self(preset):
    defaults = list(OmegaConf.load(DATA_DIR / f"{preset}.yaml").defaults)
    parent = "synthetic" if preset == "synthetic_target" else "_base"  # the target inherits the source preset
    assert defaults[0] == parent and defaults[-1] == "_self_"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_has_shared_keys_and_its_own_values(make_config, preset):
    cfg = make_config(f"data={preset}", "backbone=test_resnet", "seed=5")
    data = cfg.data
    assert str(data._target_).startswith("transfuse.data.")
    assert set(SHARED) <= set(data)
    raw = OmegaConf.to_container(data, resolve=False)
    assert raw["image_size"] == "${backbone.image_size}" and raw["channels"] == "${backbone.in_chans}"
    assert raw["mean"] == "${backbone.mean}" and raw["std"] == "${backbone.std}"
    assert data.image_size == cfg.backbone.image_size and data.channels == cfg.backbone.in_chans
    assert list(data.mean) == list(cfg.backbone.mean) and list(data.std) == list(cfg.backbone.std)
    assert data.train_per_class is None and data.val_per_class is None
    assert data.split_seed == 0 and data.subset_seed == 5 and data.num_workers == 0
    batch_size, eval_batch_size, val_fraction, test_fraction = SIZES[preset]
    assert (data.batch_size, data.eval_batch_size, data.val_fraction) == (batch_size, eval_batch_size, val_fraction)
    if test_fraction is None:
        assert "test_fraction" not in data
    else:
        assert data.test_fraction == test_fraction


def test_base_reaches_a_preset_in_another_package(make_config):
    cfg = make_config("stage=adapt", "data=digits", "data@target_data=mnist5k", "backbone=test_resnet")
    assert cfg.data.batch_size == 32 and cfg.target_data.batch_size == 64
    assert cfg.target_data.split_seed == 0 and cfg.target_data.image_size == cfg.backbone.image_size
    assert cfg.target_data._target_ == "transfuse.data.MNIST5k"


def test_command_line_overrides_a_base_key(make_config):
    cfg = make_config("data=mnist5k", "data.batch_size=7", "data.num_workers=2", "backbone=test_resnet")
    assert cfg.data.batch_size == 7 and cfg.data.num_workers == 2
