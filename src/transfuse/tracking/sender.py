"""Writes to the tracking store from a background thread, in order, retried until the store answers.

A fit hands its metric points and checkpoint uploads to a :class:`Sender` and goes on: when a tracking server
is down for a while, training is not blocked, one warning line says how many writes wait, and everything is
sent when the server is back. The run waits for the queue to empty only when it ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: seconds between two tries of a write that failed
RETRY_S = 2.0
#: a write still in progress after this many seconds is taken as a sign the store is unreachable (MLflow's
#: client retries a request for minutes before it fails)
SLOW_S = 10.0


class Sender:
    """A queue of writes (callables) run in order by one daemon thread; a failed write is retried, never lost.

    Args:
        where: the store's URI, for the warning line.
        retry_s: seconds between two tries of a failed write.
    """

    def __init__(self, where: str, retry_s: float = RETRY_S) -> None:
        self.where, self.retry_s = where, retry_s
        self._queue: queue.Queue[tuple[str, Callable[[], object]] | None] = queue.Queue()
        self._unsent = 0
        self._done = threading.Condition()
        self._failing_since: float | None = None
        self._writing_since: float | None = None
        self._warned = False
        self._thread = threading.Thread(target=self._work, name="transfuse-sender", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Writes not yet sent (the one being tried included)."""
        return self._unsent

    def submit(self, what: str, write: Callable[[], object]) -> None:
        """Queue ``write`` (``what`` names it in messages)."""
        with self._done:
            self._unsent += 1
        self._queue.put((what, write))
        started = self._writing_since
        if started is not None and time.monotonic() - started > SLOW_S:
            self._warn(f"no answer for {time.monotonic() - started:.0f} s")

    def _warn(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "tracking store %s unreachable (%s); %d writes wait and training goes on",
                self.where,
                reason,
                self.waiting,
            )

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, write = item
            self._writing_since = time.monotonic()
            while True:
                try:
                    write()
                    break
                except Exception as err:
                    self._failing_since = self._failing_since or self._writing_since
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    self._warn(f"{what}: {first[:200]}")
                    time.sleep(self.retry_s)
            if self._warned:
                log.warning(
                    "tracking store %s reachable again after %.0f s; %d waiting writes are being sent",
                    self.where,
                    time.monotonic() - (self._failing_since or self._writing_since),
                    self.waiting,
                )
                self._warned = False
            self._failing_since = self._writing_since = None
            with self._done:
                self._unsent -= 1
                self._done.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued write was sent; False if ``timeout`` seconds passed first."""
        with self._done:
            return self._done.wait_for(lambda: self._unsent == 0, timeout)

    def close(self) -> None:
        """Send what waits, then stop the thread."""
        self.drain()
        self._queue.put(None)
        self._thread.join(timeout=5)
