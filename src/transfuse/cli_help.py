"""``--help`` of the Hydra entry points: the config groups each one accepts, with their options, at once.

Hydra's own ``--help`` lists every group under ``conf/`` (those of the other entry point too) and walks each
with a fresh config repository, which takes seconds; this reads the file tree instead. ``--hydra-help`` still
shows Hydra's flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from transfuse.config import CONF_DIR

#: groups an entry point reaches through a choice rather than its defaults list (stage=adapt adds adapt=)
REACHED_THROUGH = {"train": ("adapt",)}


def accepted_groups(root: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The config groups that ``conf/<root>.yaml`` takes: its defaults list, plus those reached through choices."""
    defaults = yaml.safe_load((conf_dir / f"{root}.yaml").read_text()).get("defaults", [])
    groups = [
        next(iter(entry)).split("@")[0].removeprefix("override ") for entry in defaults if isinstance(entry, dict)
    ]
    return [g for g in dict.fromkeys([*groups, *REACHED_THROUGH.get(root, ())]) if (conf_dir / g).is_dir()]


def group_options(group: str, root: str = "train", conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a group, leaving out shared bases such as ``data/_base``; for ``experiment``, the
    ``study/file`` names that belong to ``root`` (a fuse experiment sets ``pool:``, a train experiment not)."""
    folder = conf_dir / group
    if group != "experiment":
        return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
    return sorted(
        str(p.relative_to(folder).with_suffix(""))
        for p in folder.rglob("*.yaml")
        if ("\npool:" in p.read_text()) == (root == "fuse")
    )


def help_text(prog: str, root: str, summary: str, conf_dir: Path = CONF_DIR) -> str:
    lines = [
        f"usage: {prog} [group=option ...] [key=value ...] [+new.key=value] [-m for a sweep]",
        "",
        summary,
        "",
        "config groups (group=option):",
    ]
    for group in accepted_groups(root, conf_dir):
        for sub in [group, *sorted(f"{group}/{d.name}" for d in (conf_dir / group).iterdir() if d.is_dir())]:
            if group == "experiment" and sub != group:
                continue
            options = group_options(sub, root, conf_dir)
            if options:
                lines.append(f"  {sub}: {', '.join(options)}")
    lines += [
        "",
        f"  {prog} --cfg job [--resolve] [overrides]   print the composed config",
        f"  {prog} --hydra-help                        Hydra's own flags (multirun, launchers, sweepers)",
    ]
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    return "--help" in argv or "-h" in argv


def print_help_if_asked(prog: str, root: str, summary: str) -> bool:
    """Print the entry point's help and return True when ``--help`` or ``-h`` is on the command line."""
    if not wants_help(sys.argv[1:]):
        return False
    print(help_text(prog, root, summary))
    return True
