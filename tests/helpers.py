"""Callbacks that tests inject into a real ``transfuse-train`` subprocess (``+callbacks.x._target_=...``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch import Callback


class SignalOnce(Callback):
    """Sends ``signal`` to this process at ``batch`` of ``epoch`` (counted from 0), once: ``marker`` records it,
    so relaunching the same command runs through."""

    def __init__(self, marker: str, epoch: int, batch: int = 1, signal: str = "SIGKILL") -> None:
        self.marker, self.epoch, self.batch, self.signal = Path(marker), epoch, batch, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), getattr(signal, self.signal))


class SlowSteps(Callback):
    """Sleeps ``seconds`` after every training step and writes ``marker`` when ``epoch`` starts: a fit long
    enough for a test to stop and restart the tracking server while it runs."""

    def __init__(self, marker: str, epoch: int, seconds: float = 0.2) -> None:
        self.marker, self.epoch, self.seconds = Path(marker), epoch, seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            self.marker.write_text(str(time.time()))

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
