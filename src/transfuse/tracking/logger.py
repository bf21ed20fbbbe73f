"""The Lightning logger that sends metrics into a run that :mod:`transfuse.tracking.run` owns.

Lightning's ``MLFlowLogger`` is used only to send metrics: it would otherwise end the run after ``fit``
(before ``test``) and upload checkpoints with ``log_model``, which fails on SQLite stores (Lightning issue 19441).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric

if TYPE_CHECKING:
    from transfuse.tracking.sender import Sender


class RunLogger(MLFlowLogger):
    """Logs metrics into an existing run and leaves ending it to :func:`tracked_run`.

    Metrics are written in batches at most every ``flush_every_s`` seconds (and when Lightning finalises the
    logger after fit or test): one SQLite commit per logging call costs several milliseconds, more than a
    cached linear-probe training step.

    A resumed fit redoes the steps after its last checkpoint, which the killed process may have logged
    already: :meth:`skip_stored` makes the logger drop each point the run already holds (same key and step,
    as many times as it is there), so every history keeps the points of an uninterrupted run.
    """

    def __init__(self, *args: Any, flush_every_s: float = 2.0, sender: Sender | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flush_every_s, self.sender = flush_every_s, sender
        #: (key, step) -> points of it already in the run, dropped when logged again (see skip_stored)
        self._stored: Counter[tuple[str, int]] = Counter()
        self._pending: list[Metric] = []
        self._flushed_at = time.monotonic()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp_ms = int(time.time() * 1000)
        for key, value in metrics.items():
            name = re.sub(r"[^a-zA-Z0-9_/. -]+", "", key)  # the characters MLflow allows in metric names
            if self._stored[(name, step or 0)] > 0:
                self._stored[(name, step or 0)] -= 1
                continue
            self._pending.append(Metric(key=name, value=float(value), timestamp=timestamp_ms, step=step or 0))
        if time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write the pending points now (MLflow takes at most 1000 per batch)."""
        ready, self._pending = self._pending, []
        for start in range(0, len(ready), 1000):
            batch = ready[start : start + 1000]
            if self.sender is None:
                self.experiment.log_batch(self.run_id, metrics=batch, **self._log_batch_kwargs)
            else:  # sent from the background: an unreachable server does not stop training
                self.sender.submit(f"{len(batch)} metric points", partial(self._send, batch))
        self._flushed_at = time.monotonic()

    def skip_stored(self) -> int:
        """Drop, from now on, every point the run already holds (a resumed fit redoing logged steps); returns
        how many points the store holds."""
        run = self.experiment.get_run(self.run_id)
        self._stored = Counter(
            (point.key, point.step)
            for key in run.data.metrics
            for point in self.experiment.get_metric_history(self.run_id, key)
        )
        return sum(self._stored.values())

    def _send(self, batch: list[Metric]) -> None:
        self.experiment.log_batch(self.run_id, metrics=batch, **self._log_batch_kwargs)

    def finalize(self, status: str = "success") -> None:
        """Flush, but leave the run open: ``fit`` ends before ``test`` logs into the same run. A held logger
        of a fit that failed or was stopped still writes its points (a resumed fit skips them)."""
        self.flush()
        if self.sender is not None:
            self.sender.drain()
