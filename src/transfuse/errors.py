"""Errors a user can fix from the command line.

The CLI prints these as one line (no traceback): the message must say what was wrong and what to do.
Anything else that escapes is a bug and keeps its traceback.
"""


class TransfuseError(Exception):
    """Base class for errors caused by input (config, data, weights, run ids) rather than by a bug."""


class ConfigError(TransfuseError, ValueError):
    """A config value, or a combination of them, that cannot work (also a ``ValueError``: a bad argument)."""


class DataError(TransfuseError):
    """A dataset is missing, unreadable or inconsistent."""


class WeightsError(TransfuseError):
    """Initial weights cannot be found or do not fit the model."""


class FusionError(TransfuseError):
    """Fusion members cannot be found, loaded or combined (e.g. a soup of different architectures)."""


class ReportError(TransfuseError):
    """A report cannot be made from the selection (no such experiment, key or run); ``transfuse-report`` prints it."""


class Preempted(BaseException):
    """The job received SIGTERM, SIGUSR1 or SIGUSR2 (a scheduler preempting it or warning of its time limit);
    raised at the next batch boundary.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        #: whether this launch saved a resumable checkpoint before the signal (None: not known, e.g. no fit)
        self.progressed: bool | None = None


class StoreError(TransfuseError):
    """The tracking store cannot be reached or opened."""
