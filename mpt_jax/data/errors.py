"""Exceptions for bad data input (issue 4, "Bad input: Data").

``DataError`` is ``mpt_jax.errors.DataError`` specialised for the data package, so ``main``
reports it like every other user error (one line on stderr, exit status 2, no traceback); it
is still a ``ValueError``. A missing path is also a ``FileNotFoundError``.
"""
from mpt_jax import errors as _errors


class DataError(_errors.DataError):
    """A dataset path, archive or image file is missing, malformed or corrupt.

    The message is one line that names the offending file and says how to fix it.
    """


class DataNotFoundError(DataError, FileNotFoundError):
    """The configured archive, directory or file does not exist."""
