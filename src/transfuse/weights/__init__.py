"""Initial weights, in two steps kept apart: where they come from, and how they go into a model.

- :mod:`~transfuse.weights.sources`: an ``init.weights`` value (none, timm, a file, ``runs:/...``, an MLflow
  filter) becomes a :class:`Checkpoint`, or None.
- :mod:`~transfuse.weights.loading`: what happens to the classifier is decided once (:func:`head_policy`),
  then the checkpoint is applied (:func:`apply`); :func:`load_into` does both.
- :mod:`~transfuse.weights.initialise`: the one entry used by ``transfuse-train``, ``transfuse-fuse`` and
  fusion members: every ``init.*`` option (class map, fresh head, copied blocks, multi-view branches).
"""

from transfuse.weights.initialise import Initialised, InitSpec, initialise
from transfuse.weights.loading import HeadPolicy, LoadReport, apply, head_policy, load_into, reset_above
from transfuse.weights.sources import Checkpoint, is_none, read_file, resolve

__all__ = [
    "Checkpoint",
    "HeadPolicy",
    "InitSpec",
    "Initialised",
    "LoadReport",
    "apply",
    "head_policy",
    "initialise",
    "is_none",
    "load_into",
    "read_file",
    "reset_above",
    "resolve",
]
