"""Refuse a ``+key=value`` override that adds a top-level key no part of transfuse reads.

Hydra answers a typo such as ``optimzer.lr=0.1`` with "To append to your config use +optimzer.lr=0.1"; taken at
its word, that adds a new ``optimzer`` node which nothing reads, and the run trains with the default learning
rate. A ``+`` (or ``++``) may add keys under the root config's own top-level keys (``+tags.owner=me``,
``+callbacks.x._target_=...``, ``+trainer.limit_train_batches=...``), under a node that exists already (one an
experiment or ``stage=adapt`` adds), or choose an option of a config group (``+adapt=dann``); any other new
top-level key is refused, naming the nearest known one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig

from transfuse.cli_help import accepted_groups
from transfuse.config import CONF_DIR
from transfuse.errors import ConfigError


def root_keys(root: str, conf_dir: Path = CONF_DIR) -> set[str]:
    """The top-level keys of ``conf/<root>.yaml``: its own keys and the config groups it takes."""
    config = yaml.safe_load((conf_dir / f"{root}.yaml").read_text()) or {}
    return {key for key in config if key != "defaults"} | set(accepted_groups(root, conf_dir))


def check_added_keys(
    cfg: DictConfig, task_overrides: Sequence[str], known: Iterable[str], root: str = "train", conf_dir: Path = CONF_DIR
) -> None:
    """Refuse an added key (``+a.b=v``, ``++a.b=v``) whose top-level key ``a`` is neither in ``known`` nor a node of
    ``cfg`` that existed before the additions.

    Args:
        cfg: the composed config of the job (with the additions in it).
        task_overrides: the job's overrides as typed (``HydraConfig.get().overrides.task``).
        known: the root config's top-level keys (:func:`root_keys`).
        root: the root config's name, for the message.

    Raises:
        ConfigError: naming the override and, when one is close, the known key it was probably meant for.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    known = set(known)
    added = [
        o for o in OverridesParser.create().parse_overrides(list(task_overrides)) if o.is_add() or o.is_force_add()
    ]
    for override in added:
        key = override.key_or_group
        if (conf_dir / key).is_dir():  # a group option (+adapt=dann): Hydra refuses an option that does not exist
            continue
        top = key.split(".")[0]
        if top in known or _existed(cfg, top, added):
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1)
        typed = override.input_line or key
        hint = (
            f"did you mean {typed.lstrip('+').replace(top, close[0], 1)}?" if close else f"{root}.yaml has no {top!r}"
        )
        raise ConfigError(
            f"{typed} adds a top-level key {top!r} that nothing reads; {hint} (a + adds keys only under known ones, "
            "e.g. +tags.<name>=<value>)"
        )


def _existed(cfg: DictConfig, top: str, added: Sequence) -> bool:
    """Whether ``cfg.<top>`` holds keys that the additions did not put there (an experiment's own node)."""
    node = cfg.get(top)
    if not isinstance(node, DictConfig):
        return False  # a scalar: Hydra refuses to add a key that exists, so this one is new
    mine = {o.key_or_group.split(".")[1] for o in added if o.key_or_group.startswith(f"{top}.")}
    return bool(set(node.keys()) - mine)


def check_job_overrides(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> None:
    """:func:`check_added_keys` for the running Hydra job; nothing outside Hydra or for a root config not in
    ``conf/``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    root = hydra.job.config_name
    if not root or not (conf_dir / f"{root}.yaml").is_file():
        return
    check_added_keys(cfg, list(hydra.overrides.task), root_keys(root, conf_dir), root, conf_dir)
