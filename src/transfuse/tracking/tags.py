"""Names of the MLflow tags that several parts read and write; a module with no imports, so that entry points
can name them without loading MLflow."""

#: tag holding the config hash of a run (see :func:`transfuse.sweeps.config_hash`)
HASH_TAG = "config_hash"
#: tag listing (space-separated) every Hydra sweep that ran or reused a run
SWEEPS_TAG = "sweeps"
#: tag naming the run whose checkpoint a run started from
SOURCE_RUN_TAG = "source_run_id"
#: tag holding the ``init.weights`` source a run started from (a path, ``runs:/...`` or ``timm``)
SOURCE_TAG = "init.source"
