"""A killed or preempted fit resumes into its own MLflow run (finding that run is
:mod:`transfuse.tracking.liveness`'s job).

- :class:`ResumeCheckpoints`: a full checkpoint (weights, optimiser, schedulers, loop state and RNG states) at
  epoch ends, uploaded to the run as ``checkpoints/resume.ckpt``; the resumed fit redoes the steps after it and
  its logger skips the points the killed process had written already
  (:meth:`~transfuse.tracking.logger.RunLogger.skip_stored`);
- :class:`Preemption`: SIGTERM (Slurm's preemption), SIGUSR1 and SIGUSR2 (the time-limit warning that
  ``hydra/launcher=slurm`` asks for) stop the fit after the current
  batch; the flow then uploads the last full checkpoint, the run ends KILLED and tagged ``preempted``, and the
  command exits with 128 + the signal number (under Slurm after asking ``scontrol requeue``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from transfuse.errors import Preempted
from transfuse.tracking.logger import RunLogger

if TYPE_CHECKING:
    from transfuse.tracking.run import TrackedRun

log = logging.getLogger(__name__)

__all__ = ["RESUME_ARTIFACT", "Preempted", "Preemption", "ResumeCheckpoints", "restore_files"]

#: artifact path of the resumable checkpoint, and of the best one so far (uploaded beside it)
RESUME_ARTIFACT = "checkpoints/resume.ckpt"
BEST_ARTIFACT = "checkpoints/best.ckpt"


def rng_states() -> dict[str, Any]:
    """Every random state a fit draws from, so a resumed fit draws what the uninterrupted one would have.

    Only tensors, strings and numbers, so the checkpoint loads with ``torch.load(weights_only=True)``.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoints(Callback):
    """Saves a full checkpoint after every ``every_n_epochs``-th epoch (or after the first epoch that ends
    ``every_minutes`` after the last save) and uploads it to the run, after the metric points it covers.

    Args:
        path: the local file (in the run's own output folder).
        run: the tracked run the checkpoint is uploaded to.
        every_n_epochs: save every n epochs (None: only by time).
        every_minutes: also save at the first epoch end this long after the last save (None: only by epochs).
    """

    def __init__(
        self, path: Path, run: TrackedRun, every_n_epochs: int | None = 1, every_minutes: float | None = None
    ) -> None:
        self.path, self.run = Path(path), run
        self.every_n_epochs, self.every_minutes = every_n_epochs, every_minutes
        self._saved_at = time.monotonic()
        #: the best checkpoint so far (ModelCheckpoint's), uploaded with the full one
        self.best: str | None = None
        self._uploads = 0
        #: whether the file at ``path`` is newer than the uploaded one
        self.unsent = False
        #: full checkpoints saved by this launch (none: a requeue at the time limit would only repeat it)
        self.saves = 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # saved where Lightning's own last checkpoint is saved, which its loops resume from exactly
        epoch = trainer.current_epoch + 1
        by_epoch = self.every_n_epochs is not None and epoch % self.every_n_epochs == 0
        by_time = self.every_minutes is not None and time.monotonic() - self._saved_at >= 60 * self.every_minutes
        if not (by_epoch or by_time):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        trainer.save_checkpoint(staging, weights_only=False)  # the full state a resume needs (every rank calls it)
        if trainer.is_global_zero:  # the one process that wrote the file
            os.replace(staging, self.path)  # a kill while writing leaves the previous checkpoint whole
        self._saved_at = time.monotonic()
        self.saves += 1
        callback = trainer.checkpoint_callback
        self.best = callback.best_model_path if callback is not None and callback.best_model_path else None
        self.unsent = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Uploaded once the epoch it covers has logged everything (its epoch metrics come after
        # on_train_epoch_end), and after those points: the store never holds a checkpoint ahead of its points.
        if self.unsent and self.run.is_writer:
            if isinstance(trainer.logger, RunLogger):
                trainer.logger.flush()
            self.upload()

    def upload(self) -> None:
        """Queue the latest local checkpoint, and the best one so far, for the run (no-op when sent already).

        Copies are staged first, so the next save cannot change a file while the background upload reads it.
        """
        if not (self.unsent and self.path.is_file() and self.run.is_writer):
            return
        self._uploads += 1
        staging = self.path.parent / f"upload-{self._uploads}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copyfile(self.path, staging / Path(RESUME_ARTIFACT).name)
        if self.best is not None and Path(self.best).is_file():
            shutil.copyfile(self.best, staging / Path(BEST_ARTIFACT).name)

        def send() -> None:
            self.run.client.log_artifacts(self.run.run_id, str(staging), str(Path(RESUME_ARTIFACT).parent))
            shutil.rmtree(staging, ignore_errors=True)

        self.run.sender.submit("the resumable checkpoint", send)
        self.unsent = False

    def discard(self) -> None:
        """After a fit that ended well, remove the resumable checkpoint from the run (it would only take space;
        ``last_checkpoint=full`` keeps a full final state on purpose). Stores that cannot delete keep it."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if not self.run.is_writer:
            return
        self.run.sender.drain()
        try:
            uri = self.run.client.get_run(self.run.run_id).info.artifact_uri
            get_artifact_repository(uri).delete_artifacts(RESUME_ARTIFACT)
        except Exception as err:  # not every artifact store can delete
            log.debug("kept %s in run %s: %s", RESUME_ARTIFACT, self.run.run_id, err)
        self.path.unlink(missing_ok=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a resumed fit restores ModelCheckpoint's best path from the killed launch's folder: point it at the
        # copy downloaded from the run (or forget it, if that launch saved none)
        callback = trainer.checkpoint_callback
        if callback is None or not callback.best_model_path or Path(callback.best_model_path).is_file():
            return
        copy = self.path.parent / "resumed" / Path(BEST_ARTIFACT).name
        score = callback.best_model_score
        callback.best_k_models = {str(copy): score} if copy.is_file() and score is not None else {}
        callback.best_model_path = str(copy) if callback.best_k_models else ""
        callback.kth_best_model_path = callback.best_model_path

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["transfuse_rng"] = rng_states()

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if "transfuse_rng" in checkpoint:
            set_rng_states(checkpoint["transfuse_rng"])


def restore_files(run: TrackedRun, checkpoints: Path) -> str | None:
    """Download a resumed run's full checkpoint (and its best one so far) into this launch's ``checkpoints``
    folder; returns the full checkpoint's path, or None when the killed fit saved none (it starts over, in the
    same run)."""
    from mlflow.exceptions import MlflowException

    checkpoints.mkdir(parents=True, exist_ok=True)
    try:
        local = run.client.download_artifacts(run.run_id, RESUME_ARTIFACT, str(checkpoints / "resumed"))
    except (MlflowException, OSError):
        log.warning("run %s has no %s: its fit starts over, in the same run", run.run_id, RESUME_ARTIFACT)
        return None
    with contextlib.suppress(MlflowException, OSError):
        run.client.download_artifacts(run.run_id, BEST_ARTIFACT, str(checkpoints / "resumed"))
    return local


class Preemption(Callback):
    """Turns SIGTERM, SIGUSR1 and SIGUSR2 into :class:`Preempted` at the next batch boundary (calling any handler
    that was there for the first two, e.g. Lightning's own; submitit's SIGUSR2 handler is replaced)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        # submitit's SIGUSR2 handler requeues and exits at once, mid-batch: this callback takes its place
        if callable(previous) and signum != signal.SIGUSR2:
            previous(signum, frame)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _check(self) -> None:
        if self.received is not None:
            raise Preempted(self.received)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def restore(self) -> None:
        """Give the process back the handlers it had before the fit; call it once ``fit`` has returned or raised.

        Not a hook: Lightning's teardown, after every hook, puts back the handlers it found when the fit
        started, this callback's among them, and a SIGTERM in the test phase would then be recorded, not obeyed.
        """
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
