"""Names of the MLflow tags that several parts read and write; a module with no imports, so that entry points
can name them without loading MLflow."""

#: tag holding the config hash of a run (see :func:`transfuse.sweeps.config_hash`)
HASH_TAG = "config_hash"
#: tag holding a run's config hash computed without its seed (see :func:`transfuse.sweeps.recipe_hash`)
RECIPE_TAG = "recipe_hash"
#: tag listing (space-separated) every Hydra sweep that ran or reused a run
SWEEPS_TAG = "sweeps"
#: tag naming the run whose checkpoint a run started from
SOURCE_RUN_TAG = "source_run_id"
#: tag holding the ``init.weights`` source a run started from (a path, ``runs:/...`` or ``timm``)
SOURCE_TAG = "init.source"
#: host name and process id of the process that runs (or last ran) a run
HOST_TAG, PID_TAG = "host", "pid"
#: unix time of the run's last sign of life, refreshed while it runs
HEARTBEAT_TAG = "heartbeat"
#: "true" on a run stopped by SIGTERM, SIGUSR1 or SIGUSR2 (preemption, time limit): a relaunch resumes it
PREEMPTED_TAG = "preempted"
#: how many times a run was resumed after its process was killed or preempted
RESUMED_TAG = "resumed"
