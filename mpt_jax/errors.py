"""Exceptions for user errors: bad configs, bad data, unusable workdirs.

``main`` prints ``error: <message>`` (one line, no traceback) and exits with the error's
``exit_code``: 2 for bad input (config, data, workdir), 3 when training stopped on a
non-finite loss or gradient, 4 when a checkpoint (or the logs) could not be written during
training, 143 / 130 when SIGTERM / Ctrl-C stopped the run after saving a checkpoint (printed
without ``error:``: the user asked for it). Library code raises the
most specific subclass; ``ConfigError`` and ``DataError`` are also ``ValueError``s so callers
that only know the "bad input is a ValueError" rule still work. This is the package's only
error module: ``mpt_jax.data.DataError`` is the ``DataError`` defined here.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (input, config, workdir); message = one line with the fix."""

    exit_code = 2

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError, ValueError):
    """An invalid config value or combination of values."""


class DataError(UserError, ValueError):
    """Missing, empty, corrupt or wrongly laid-out data; the message names the file and the fix."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The configured archive, directory or file does not exist."""


class CheckpointError(UserError):
    """A workdir whose checkpoint cannot be used with this config, or that cannot be written."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint save failed during training (disk full, I/O error); the previous one is kept."""

    exit_code = 4


class WorkdirWriteError(UserError):
    """The logs or result of a run could not be written (disk full); its checkpoints are kept."""

    exit_code = 4


class TrainingError(UserError):
    """Training cannot continue (e.g. non-finite loss); the message names the last good checkpoint."""

    exit_code = 3


class Interrupted(TrainingError):
    """SIGTERM / SIGINT stopped the run after a checkpoint was written (exit 143 / 130).

    Not a failure: the message says where the run stopped and ends with how to resume it;
    ``resume_with(command)`` names the exact command instead (``main`` prints that).
    """

    exit_code = 130
    RERUN = "run the same command again to resume"

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(f"{message}; {self.RERUN}", exit_code)
        self.where = message

    def resume_with(self, command: str) -> str:
        return f"{self.where}; resume with: {command}"


def one_line(message: object) -> str:
    """Collapses a (possibly multi-line) message into one line."""
    return " ".join(str(message).split())
