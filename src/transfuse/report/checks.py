"""Whether the runs a table puts side by side can be compared: the runs of one cell should differ in nothing
but the seed, and the rows of one column should be tested on the same data.

A cell's runs are grouped by their ``recipe_hash`` tag (the config hash without the seed, see
:func:`transfuse.sweeps.recipe_hash`). Runs logged before that tag existed are compared by their params instead,
leaving out the seed, what :data:`transfuse.sweeps.NOT_HASHED` leaves out, and the seed wherever a value
spells it (``tags.seed``, a ``source_query`` naming ``params.seed = '0'``). A table that mixes recipes or test
data still renders, flagged; ``transfuse-report --strict`` refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from transfuse.tracking.tags import RECIPE_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run

#: the mark after a cell whose runs differ in more than the seed
MIXED_MARK = "†"
#: params that differ between the seeds of one recipe without a value that spells the seed (the default run
#: name ends in ``-s<seed>``)
SEED_PARAMS = ("seed", "run_name")
#: metric prefixes that do not depend on the data a run was tested on
DATA_FREE = ("cost/",)
#: how many differing keys a note names before it only counts the rest
SHOWN_KEYS = 4


@cache  # asked for every param of every run of a mixed cell: 1.2 million calls in a report over 10,000 runs
def _not_hashed(key: str) -> bool:
    from transfuse.sweeps import NOT_HASHED  # Hydra: only when old runs are compared by their params

    return any(key == k or key.startswith(f"{k}.") for k in NOT_HASHED)


def recipe_params(run: Run) -> dict[str, str]:
    """The params of a run that make its recipe: without the seed, the keys :data:`SEED_PARAMS` and
    ``NOT_HASHED`` name, and with the run's seed replaced by ``<seed>`` where a value holds it as a number of its
    own (``'0'`` in a query, not the ``0`` of ``0.01``)."""
    params = run.data.params
    seed = params.get("seed")
    spelled = re.compile(rf"(?<![\w.]){re.escape(seed)}(?![\w.])") if seed else None
    return {
        key: spelled.sub("<seed>", value) if spelled else value
        for key, value in params.items()
        if key not in SEED_PARAMS and not _not_hashed(key)
    }


def recipes(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs grouped by recipe, the largest group first: by ``recipe_hash`` tag when every run has one, else
    by :func:`recipe_params` (older runs, or a mix of old and new)."""
    tagged = all(RECIPE_TAG in run.data.tags for run in runs)
    groups: dict[object, list[Run]] = {}
    for run in runs:
        key = run.data.tags[RECIPE_TAG] if tagged else tuple(sorted(recipe_params(run).items()))
        groups.setdefault(key, []).append(run)
    return sorted(groups.values(), key=len, reverse=True)


def _masked(run: Run, key: str, value: str) -> str:
    """``value`` with the run's seed replaced by ``<seed>`` where it stands as a number of its own."""
    seed = run.data.params.get("seed")
    return re.sub(rf"(?<![\w.]){re.escape(seed)}(?![\w.])", "<seed>", value) if seed else value


def differing_keys(groups: Sequence[Sequence[Run]]) -> dict[str, list[str]]:
    """``params.<key>`` -> its distinct values, largest group first, for the keys that are constant within each
    group but differ between groups (``unset`` where a run lacks the key): what sets the recipes apart.

    A value is compared as it is, unless it only follows the seed (``data.subset_seed``, a ``source_query`` naming
    ``params.seed = '1'``): such a key is left out when the seed explains all its differences, and compared with
    the seed masked when that makes it constant within each group. Masking every value would turn an unrelated
    ``1`` into ``<seed>`` in a run of seed 1.
    """
    keys = sorted({k for group in groups for run in group for k in run.data.params})
    keys = [k for k in keys if k not in SEED_PARAMS and not _not_hashed(k)]
    found = {}
    for key in keys:
        raw = [[run.data.params.get(key) for run in group] for group in groups]
        masked = [
            [None if v is None else _masked(run, key, v) for run, v in zip(group, values, strict=True)]
            for group, values in zip(groups, raw, strict=True)
        ]
        if len({v for values in masked for v in values}) == 1:  # equal up to the seed: not what differs
            continue
        for per_group in (raw, masked):
            if all(len(set(values)) == 1 for values in per_group):
                distinct = [values[0] for values in per_group]
                if len(set(distinct)) > 1:
                    found[f"params.{key}"] = list(dict.fromkeys("unset" if v is None else v for v in distinct))
                break
    return found


def tested_on(run: Run, metric: str) -> str | None:
    """The data ``metric`` was measured on: ``tags.target_data`` for an adaptation run's target splits (``test/``,
    ``val_target/``), else ``tags.data``; None for a metric of no data (:data:`DATA_FREE`) or a run without tags."""
    if metric.startswith(DATA_FREE):
        return None
    split = metric.partition("/")[0]
    target = run.data.tags.get("target_data")
    if target and ("target" in split or (split.startswith("test") and "source" not in split)):
        return target
    return run.data.tags.get("data")


@dataclass(frozen=True)
class MixedRecipes:
    """A cell whose runs come from several recipes; ``keys`` is :func:`differing_keys` of them."""

    cell: str
    recipes: int
    keys: dict[str, list[str]]

    def note(self) -> str:
        """``† full: 3 recipes; params.trainer.max_epochs differs (30, 6, 1)``."""
        shown = [f"{key} differs ({', '.join(values)})" for key, values in list(self.keys.items())[:SHOWN_KEYS]]
        if len(self.keys) > SHOWN_KEYS:
            shown.append(f"{len(self.keys) - SHOWN_KEYS} more keys differ")
        what = ", ".join(shown) or "no single key tells them apart (they also differ within)"
        return f"{MIXED_MARK} {self.cell}: {self.recipes} recipes averaged, not only seeds; {what}"

    def brief(self) -> str:
        return f"{self.cell} ({', '.join(self.keys) or f'{self.recipes} recipes'})"


@dataclass(frozen=True)
class MixedData:
    """A value column whose rows were tested on different data; ``rows`` maps each data to its row labels."""

    column: str
    rows: dict[str, list[str]]

    def note(self) -> str:
        """``test/acc: no best marked, its rows test on different data (digits: full, scratch; mnist5k: source)``."""
        where = "; ".join(f"{data}: {', '.join(rows)}" for data, rows in self.rows.items())
        return f"{self.column}: no best marked, its rows test on different data ({where})"

    def brief(self) -> str:
        return f"{self.column} ({', '.join(self.rows)})"


#: what the runs of one table should share besides their recipe, with the words a note uses for each
ENVIRONMENT_KEYS = {"env.hash": "environments (env.hash)", "git_commit": "code versions", "env.device": "devices"}


@dataclass(frozen=True)
class MixedEnvironment:
    """Runs of one table that ran on different installs, code or devices, or on code with uncommitted changes:
    ``values`` maps each tag of :data:`ENVIRONMENT_KEYS` that differs to its values and run counts."""

    values: dict[str, dict[str, int]]
    dirty: int

    def note(self) -> str:
        """``runs from 2 environments (env.hash): 1aee4c7a0949 (6 runs), 9f0e2b7c11d4 (3 runs)``, and dirty trees."""
        parts = []
        for key, counts in self.values.items():
            listed = ", ".join(f"{value} ({n} run{'s' * (n != 1)})" for value, n in counts.items())
            parts.append(f"runs from {len(counts)} {ENVIRONMENT_KEYS[key]}: {listed}")
        if self.dirty:
            parts.append(f"{self.dirty} run{'s' * (self.dirty != 1)} from code with uncommitted changes (+dirty)")
        return "; ".join(parts)

    def brief(self) -> str:
        return ", ".join([*(ENVIRONMENT_KEYS[k] for k in self.values), *(["a dirty tree"] if self.dirty else [])])


def mixed_environment(runs: Sequence[Run]) -> MixedEnvironment | None:
    """The environment problem of a table's runs, None when they share install, commit and device and come from
    committed code. Runs without a tag (older runs) are not counted for it."""
    values = {}
    for key in ENVIRONMENT_KEYS:
        counts: dict[str, int] = {}
        for run in runs:
            if key in run.data.tags:
                counts[run.data.tags[key]] = counts.get(run.data.tags[key], 0) + 1
        if len(counts) > 1:
            values[key] = dict(sorted(counts.items(), key=lambda item: -item[1]))
    dirty = sum(run.data.tags.get("git_commit", "").endswith("+dirty") for run in runs)
    return MixedEnvironment(values, dirty) if values or dirty else None


def strict_error(problems: Sequence[MixedRecipes | MixedData | MixedEnvironment]) -> str | None:
    """The one line ``--strict`` refuses a table with, None when every cell and column compares like with like."""
    cells = [p.brief() for p in problems if isinstance(p, MixedRecipes)]
    columns = [p.brief() for p in problems if isinstance(p, MixedData)]
    setups = [p.brief() for p in problems if isinstance(p, MixedEnvironment)]
    parts = [f"runs differ in more than the seed in {', '.join(cells)}"] if cells else []
    parts += [f"rows test on different data in {', '.join(columns)}"] if columns else []
    parts += [f"runs come from different {', '.join(setups)}"] if setups else []
    return f"--strict: {'; '.join(parts)}" if parts else None
