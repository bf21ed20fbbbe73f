"""Where the configs live and the OmegaConf resolvers they use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

#: ``conf/`` at the repository root (the package is installed in editable mode, see README).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: ``experiments/`` at the repository root; ``conf/experiment`` links to it so studies are ``experiment=...``.
EXPERIMENTS_DIR = CONF_DIR.parent / "experiments"


def timm_default(name: str, field: str):
    """Read one field (``mean``, ``std``, ``image_size``...) of a timm model's default pretrained config.

    Lets a backbone preset follow ``backbone.name`` so that normalisation stays right for any model.
    Models without a pretrained config fall back to ImageNet statistics.
    """
    import timm

    if field == "image_size":
        return int(timm_default(name, "input_size")[-1])
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        fallback = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": [3, 224, 224]}
        if field not in fallback:
            raise KeyError(f"timm model {name!r} has no pretrained config to read {field!r} from")
        return fallback[field]
    value = getattr(cfg, field)
    return list(value) if isinstance(value, tuple) else value


def register_resolvers() -> None:
    """Register ``${timm:<model>,<field>}``; safe to call more than once."""
    if not OmegaConf.has_resolver("timm"):
        OmegaConf.register_new_resolver("timm", timm_default)
