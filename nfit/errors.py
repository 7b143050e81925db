"""The exceptions nfit raises for bad input and bad output paths.

Every error a user can cause is an :class:`NfitError` that names the file (or
option) at fault and the reason, so the CLI can print it as one line.
"""

from __future__ import annotations

from pathlib import Path


class NfitError(Exception):
    """Base class: ``str(err)`` is ``"<where>: <reason>"``."""

    def __init__(self, where: str | Path | None, reason: str):
        self.where = None if where is None else str(where)
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.reason if self.where is None else f"{self.where}: {self.reason}"


class InputError(NfitError):
    """A media file that cannot be read as a signal."""


class FieldFileError(NfitError):
    """A .nf or initialisation file that is missing, corrupt or inconsistent."""


class OutputError(NfitError):
    """An output path that cannot be written."""


class ConfigError(NfitError):
    """Options that contradict each other or are out of range."""


class TrainingError(NfitError):
    """A run that cannot go on, such as a non-finite loss; its last checkpoint is kept."""


class NfitWarning(UserWarning):
    """Something the user should know, that does not stop the job: a file upscaled to a
    larger grid, an initialisation used at a size far from the one it was trained at."""
