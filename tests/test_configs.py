"""Every config in conf/ and experiments/ composes and instantiates, so none of them rots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from transfuse.config import CONF_DIR, EXPERIMENTS_DIR
from transfuse.models.build import build_model

GROUPS = [
    "data",
    "backbone",
    "head",
    "stage",
    "finetune",
    "compress",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "debug",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml")) if not p.stem.startswith("_")]
#: experiments of transfuse-fuse (conf/fuse.yaml); every other one is a transfuse-train experiment
FUSE_EXPERIMENTS = ["digits_soups/fuse", "wortsman2022_soups/full_scale_fuse"]
EXPERIMENTS = sorted(
    name
    for name in (str(p.relative_to(EXPERIMENTS_DIR).with_suffix("")) for p in EXPERIMENTS_DIR.rglob("*.yaml"))
    if name not in FUSE_EXPERIMENTS
)
#: values an experiment leaves to the command line (``???``), as its run.sh gives them
REQUIRED = {
    "digits_adaptation/adabn": ["source_data=mnist5k"],
    "kumar2022_lpft/ood": ["target_method=full"],
    "kumar2022_lpft/full_scale_ood": ["target_method=full"],
    "noisy_mnist_fusion/base": ["tags.method=early", "multi_input=early"],
    **{f"source_ranking/{n}": ["candidate=mnist"] for n in ("source", "target", "score", "finetune")},
}
#: full-scale experiments read image folders that are not here (``root: ???``): the test points these keys at
#: a tiny stand-in folder, so the models they name (ResNet-50, CLIP ViT-B/32) are still built, without weights
STAND_IN_ROOTS = {
    "yosinski2014/full_scale": ["data.root"],
    "kumar2022_lpft/full_scale": ["data.root"],
    "kumar2022_lpft/full_scale_ood": ["data.root"],
    "ganin2016_dann/full_scale": ["data.root", "target_data.root"],
    "wortsman2022_soups/full_scale": ["data.root"],
}
METHODS = sorted(p.stem for p in (CONF_DIR / "fusion_method").glob("*.yaml"))


def _cpu_overrides(group: str, option: str) -> list[str]:
    if group == "trainer" and option != "cpu" and not torch.cuda.is_available():
        return ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true"]
    return []


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert ("data", "mnist5k") in OPTIONS and ("finetune", "linear_probe") in OPTIONS


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_instantiates(make_config, group, option):
    base = ["backbone=test_resnet"] if group != "backbone" else []
    cfg = make_config(*base, f"{group}={option}", *_cpu_overrides(group, option))
    datamodule = instantiate(cfg.data)
    assert datamodule.transform.image_size == cfg.backbone.image_size
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[instantiate(c) for c in cfg.callbacks.values()])
    assert trainer.max_epochs == cfg.trainer.max_epochs
    model = build_model(cfg, ["a", "b", "c"])
    optimizer = model.configure_optimizers()
    assert optimizer is not None
    logits = model(torch.zeros(2, cfg.backbone.in_chans, cfg.backbone.image_size, cfg.backbone.image_size))
    assert logits.shape == (2, 3)


def _stand_in_folder(root: Path) -> Path:
    """``root/<class>/*.png``: two classes of ten 8x8 images, enough for train, val and test splits."""
    from PIL import Image

    for label, grey in (("a", 0), ("b", 255)):
        (root / label).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (8, 8), grey).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(make_config, tmp_path, experiment):
    stand_in = []
    if experiment in STAND_IN_ROOTS:
        folder = _stand_in_folder(tmp_path / "stand_in")
        stand_in = [f"{key}={folder}" for key in STAND_IN_ROOTS[experiment]]
    cfg = make_config(f"experiment={experiment}", "backbone=test_resnet", *REQUIRED.get(experiment, []), *stand_in)
    assert cfg.logger.experiment_name != "transfuse", "a study logs into its own MLflow experiment"
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule.class_names)
    assert model.head.fc.out_features == datamodule.num_classes
    assert str(cfg.init.weights)  # interpolations (e.g. the source query) resolve


@pytest.mark.parametrize("method", METHODS)
def test_every_fusion_method_and_fuse_experiment_composes(tmp_path, method):
    from omegaconf import OmegaConf

    from transfuse.config import compose_config
    from transfuse.fuse import method_configs

    for experiment in [None, *FUSE_EXPERIMENTS]:
        overrides = [f"fusion_method={method}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
        cfg = compose_config("fuse", [*overrides, *([f"experiment={experiment}"] if experiment else [])], tmp_path)
        assert list(cfg.fusion_method) == [method]
        assert instantiate(cfg.fusion_method[method]) is not None
        one = method_configs(cfg)[method]
        OmegaConf.resolve(one)  # every interpolation (pool filter, tags) resolves
        assert one.tags.method == method and one.run_name.startswith(f"fuse-{method}-")


def test_typo_in_a_key_fails_with_hydra_error(make_config):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        make_config("trainer.max_epoch=3")


def test_backbone_name_follows_timm_normalisation(make_config):
    cfg = make_config("backbone.name=test_vit")
    assert list(cfg.backbone.mean) == [0.5, 0.5, 0.5]
    assert list(cfg.data.mean) == [0.5, 0.5, 0.5]
    cfg = make_config("backbone.name=resnet18")
    assert list(cfg.backbone.std) == pytest.approx([0.229, 0.224, 0.225])


SEARCHES = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))


def _with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("search", SEARCHES)
def test_hparams_search_tunes_keys_that_exist_with_optuna_tpe(search):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = _with_hydra([f"hparams_search={search}", "experiment=digits_transfer/finetune"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
    assert sweeper.direction == "maximize" and cfg.monitor_mode == "max"  # the returned metric is an accuracy
    parser = OverridesParser.create()
    for key, space in sweeper.params.items():
        if key in ("finetune",):  # a config group: every choice must be an option of it
            choices = parser.parse_override(f"{key}={space}").value().list
            assert {f"{c}.yaml" for c in choices} <= {p.name for p in (CONF_DIR / key).glob("*.yaml")}
        else:
            assert OmegaConf.select(cfg, key, default="missing") != "missing", key


def test_slurm_launcher_is_submitit_with_resources():
    cfg = _with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min > 0


def test_joblib_launcher_is_available():
    cfg = _with_hydra(["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3


def test_run_names_tell_the_runs_of_a_study_apart(tmp_path):
    from transfuse.config import compose_config

    def name(*overrides: str) -> str:
        return compose_config("train", list(overrides), tmp_path).run_name

    strategies = ["full", "linear_probe", "lp_ft", "gradual", "l2_sp", "partial"]
    names = [name("experiment=digits_transfer/finetune", f"finetune={s}") for s in strategies]
    assert names == [f"finetune-{s}-digits-resnet18-s0" for s in strategies]
    assert name("stage=finetune", "finetune=linear_probe", "init.weights=x", "seed=3").endswith("-s3")
    assert name("stage=pretrain", "backbone=test_resnet") == "pretrain-synthetic-test_resnet-s0"
    adapted = [name("stage=adapt", f"adapt={m}", "data=mnist5k", "data@target_data=digits") for m in ("dann", "coral")]
    assert adapted == [f"adapt-{m}-mnist5k-to-digits-resnet18-s0" for m in ("dann", "coral")]
