"""transfuse: image transfer learning and model fusion experiments.

Hydra composes the configs in ``conf/``, the pieces are instantiated into a Lightning module and datamodule,
and every run is tracked in MLflow.
"""

__version__ = "0.1.0"
