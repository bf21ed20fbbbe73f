"""Callbacks that tests inject into a real ``transfuse-train`` subprocess (``+callbacks.x._target_=...``)."""

from __future__ import annotations

import os
import signal
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
