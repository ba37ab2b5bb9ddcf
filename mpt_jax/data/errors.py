"""Exceptions for bad data input (issue 4, "Bad input: Data")."""


class DataError(ValueError):
  """A dataset path, archive or image file is missing, malformed or corrupt.

  The message is one line that names the offending file and says how to fix it.
  """


class DataNotFoundError(DataError, FileNotFoundError):
  """The configured archive, directory or file does not exist."""
