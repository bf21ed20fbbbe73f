"""Where the configs live and the OmegaConf resolvers they use."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

#: The packaged configs: in a checkout ``src/transfuse/conf`` links to ``conf/`` at the repository root (so this is
#: that folder), in an installed wheel it is the copy inside the package. Users add their own config folders through
#: Hydra's search path (``hydra.searchpath=[file:///abs/my_conf]``), see README.
CONF_DIR = (Path(__file__).parent / "conf").resolve()
#: The studies, ``experiments/`` at the repository root, which ``conf/experiment`` links to so they are
#: ``experiment=<study>/<file>``; a checkout only: a wheel leaves them out, so there this folder does not exist.
EXPERIMENTS_DIR = (CONF_DIR / "experiment").resolve()


#: the ways of saying "nothing" for a source in a config or on the command line (``init.weights=none``)
NONE_VALUES = ("none", "null", "")


def is_none(value: object) -> bool:
    """Whether a config value such as ``init.weights`` means "none" (fresh weights, no source)."""
    return value is None or str(value).strip().lower() in NONE_VALUES


def timm_default(name: str, field: str):
    """Read one field (``mean``, ``std``, ``image_size``, ``crop_pct``...) of a timm model's default pretrained config.

    Lets a backbone preset follow ``backbone.name`` so that normalisation stays right for any model.
    Models without a pretrained config fall back to ImageNet statistics.
    """
    import timm

    if field == "image_size":
        return int(timm_default(name, "input_size")[-1])
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        fallback = {
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "input_size": [3, 224, 224],
            "crop_pct": 0.875,
            "interpolation": "bicubic",
        }
        if field not in fallback:
            raise KeyError(f"timm model {name!r} has no pretrained config to read {field!r} from")
        return OmegaConf.create(fallback[field])
    value = getattr(cfg, field)
    return OmegaConf.create(list(value)) if isinstance(value, tuple) else value


#: this process's part of an output folder name: two runs started in the same second (on one host or on several
#: sharing a file system) never share a folder, and every path of one run names the same folder
PROCESS_ID = f"{os.getpid()}-{secrets.token_hex(2)}"


def process_id() -> str:
    """``${uid:}``: see :data:`PROCESS_ID`."""
    return PROCESS_ID


def selection_tag(monitor: str) -> str:
    """How a run selects its checkpoint: ``target_oracle`` when it peeks at target validation labels."""
    return "target_oracle" if monitor.startswith("val_target/") else "source_val"


def same_study(study_run: str | None) -> str:
    """``${same_study:${study_run}}``: the filter clause that keeps a source query inside one study run.

    Studies tag every run of one invocation with ``study_run`` so each stage finds the sources of its own run.
    Unset (a command typed by hand after the demo), the clause is empty and the query takes the newest match.

    >>> same_study("20261204-0930"), same_study(None)
    (" and tags.study_run = '20261204-0930'", '')
    """
    if is_none(study_run):
        return ""
    if "'" in str(study_run):
        raise ValueError(f"study_run={study_run!r} must not contain a quote")
    return f" and tags.study_run = '{study_run}'"


def output_dir() -> str:
    """``${output_dir:}``: the job's output folder, also where ``--cfg job --resolve`` shows a config.

    Hydra sets ``runtime.output_dir`` only when the job runs, so a printed config would say ``null``; before that,
    the folder Hydra is about to create (``hydra.run.dir``, or the sweep's job folder) is named instead.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    known = OmegaConf.select(hc, "runtime.output_dir", default=None)
    if known:
        return str(known)
    if hc.mode == RunMode.MULTIRUN:
        return f"{hc.sweep.dir}/{hc.sweep.subdir}"
    return str(hc.run.dir)


def run_label(tags: Mapping[str, Any], backbone: str, seed: object) -> str:
    """``${run_label:${tags},${backbone.name},${seed}}``: a run name that tells the runs of a study apart.

    Stage, then how the run differs within it (``tags.method`` when an experiment sets one, else the stage's own
    choice: the fine-tuning strategy, the adaptation method), data (``source-to-target`` for adaptation), backbone
    and seed. A linear probe and a full fine-tune of one sweep are ``finetune-linear_probe-digits-resnet18-s0``
    and ``finetune-full-digits-resnet18-s0``.
    """
    stage = tags.get("stage")
    how = tags.get("method") or (tags.get(stage) if isinstance(stage, str) else None)
    data = tags.get("data")
    if tags.get("target_data"):
        data = f"{data}-to-{tags.get('target_data')}"
    return "-".join(str(part) for part in (stage, how, data, backbone, f"s{seed}") if part not in (None, ""))


def data_tag(data: str, tasks: Sequence[Any] | None) -> str:
    """``${data_tag:${hydra:runtime.choices.data},${tasks}}``: what a fusion ran on, its ``data`` choice or, for
    a multi-task merge, its tasks' names joined by ``+`` (``digits+mnist_m+syn_digits``).

    >>> data_tag("digits", []), data_tag("digits", ["digits", {"name": "few", "preset": "digits"}])
    ('digits', 'digits+few')
    """
    if not tasks:
        return data
    return "+".join(str(t["name"]) if isinstance(t, Mapping) and "name" in t else str(t) for t in tasks)


def if_cuda(on_gpu: object, on_cpu: object) -> object:
    """``${if_cuda:<value on GPUs>,<value on CPUs>}``: ``trainer=ddp`` runs as it is on a GPU node and on a laptop
    (SyncBatchNorm and mixed precision need GPUs; on CPUs two gloo processes stand in for the devices)."""
    import torch

    return on_gpu if torch.cuda.is_available() else on_cpu


def register_resolvers() -> None:
    """Register ``${timm:<model>,<field>}``, ``${selection_tag:<monitor>}``, ``${len:<list>}``, ``${uid:}``,
    ``${same_study:<study_run>}``, ``${output_dir:}``, ``${if_cuda:<a>,<b>}``, ``${run_label:...}`` and
    ``${data_tag:...}``; safe to call more than once."""
    if not OmegaConf.has_resolver("timm"):
        OmegaConf.register_new_resolver("timm", timm_default)
    if not OmegaConf.has_resolver("selection_tag"):
        OmegaConf.register_new_resolver("selection_tag", selection_tag)
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", len)
    if not OmegaConf.has_resolver("uid"):
        # cached: a launcher that runs jobs in other processes (joblib, submitit) hands its value to every job,
        # so all jobs of a sweep share the sweep's folder, as ${now:} does
        OmegaConf.register_new_resolver("uid", process_id, use_cache=True)
    if not OmegaConf.has_resolver("output_dir"):
        OmegaConf.register_new_resolver("output_dir", output_dir)
    if not OmegaConf.has_resolver("if_cuda"):
        OmegaConf.register_new_resolver("if_cuda", if_cuda)
    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", run_label)
    if not OmegaConf.has_resolver("same_study"):
        OmegaConf.register_new_resolver("same_study", same_study)
    if not OmegaConf.has_resolver("data_tag"):
        OmegaConf.register_new_resolver("data_tag", data_tag)


def compose_train_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` outside the CLI (tests, benchmarks, notebooks) as ``transfuse-train`` would."""
    return compose_config("train", overrides, output_dir)


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` outside the CLI as its entry point would.

    Hydra's runtime values that the configs interpolate (``output_dir``, ``cwd``, the group choices used as
    tags) are filled in, then the ``hydra`` node is dropped as it is for a real job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir.parent)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
