"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the file or value and the fix."""


class DataError(UserError):
    """A dataset that cannot be read as asked."""


class CheckpointError(UserError):
    """A file that is not a usable skrd4ad checkpoint for the request."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
