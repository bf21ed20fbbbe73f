"""MLflow tracking, split by role so that light readers stay light.

- :mod:`~transfuse.tracking.query`: tag names and run look-ups (no torch; ``transfuse-report`` uses it).
- :mod:`~transfuse.tracking.store`: opening a store, its lock, where artifacts go (no torch).
- :mod:`~transfuse.tracking.run`: the lifecycle of one run (FINISHED, or FAILED on error).
- :mod:`~transfuse.tracking.logger`: the Lightning logger that writes metrics into that run.
- :mod:`~transfuse.tracking.artifacts`: checkpoints, weights and figures uploaded to a run.

Nothing is imported here, so ``import transfuse.tracking.query`` does not pull in torch or Lightning.
"""
