"""Exceptions for user errors: bad configs, bad data, unusable workdirs.

``main`` prints ``error: <message>`` (one line, no traceback) and exits with status 2 for
any ``UserError``. Library code raises the most specific subclass; ``ConfigError`` is also a
``ValueError`` so callers that only know the "bad input is a ValueError" rule still work.
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
    """Missing, empty, corrupt or wrongly laid-out data."""


class CheckpointError(UserError):
    """A workdir whose checkpoint cannot be used with this config, or that cannot be written."""


class TrainingError(UserError):
    """Training cannot continue (e.g. non-finite loss); the message names the last good checkpoint."""

    exit_code = 3


def one_line(message: object) -> str:
    """Collapses a (possibly multi-line) message into one line."""
    return " ".join(str(message).split())
