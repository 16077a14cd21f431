"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations

import zipfile
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: the message names the file or value and the fix."""


class DataError(UserError):
    """A dataset that cannot be read as asked."""


class CheckpointError(UserError):
    """A file that is not a usable skrd4ad checkpoint for the request."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ConfigError(UserError):
    """A setting with a wrong type or value. ``field`` names it (``section.field`` for a
    :class:`skrd4ad.config.Config` setting); ``problem`` says what is wrong and how to fix
    it. Each front end names the setting its own way (a flag, a ``--config`` key, a
    ``params.yaml`` key): the plain message uses the flag."""

    def __init__(self, field: str, problem: str, flag: str | None = None) -> None:
        self.field, self.problem = field, problem
        flag = flag or "--" + field.rsplit(".", 1)[-1].replace("_", "-")
        super().__init__(f"{flag} {problem}")

    def named(self, where: str) -> UserError:
        """The same error naming the setting as ``where`` (e.g. ``params.yaml: train.epochs``)."""
        return UserError(f"{where} {self.problem}")


def load_problem(path: Path, exc: BaseException) -> str:
    """What torch.load's failure on ``path`` means, in this project's words (torch's own
    message is long, cut off, and names internals such as ``weights_only``)."""
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        return "it is not a file written by torch.save"
    if "weights_only" in str(exc) or "Weights only" in str(exc):
        return (
            "it holds pickled Python objects besides tensors, and skrd4ad only loads "
            "tensors (torch.load with weights_only)"
        )
    return "it is damaged or truncated (torch.load cannot read it)"
