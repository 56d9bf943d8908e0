"""Errors raised by transferkit.

Every error a user can trigger with bad input is a subclass of :class:`TransferkitError`, names what was
wrong and says what to do. Each also subclasses the matching built-in (``ValueError``, ``KeyError``,
``FileNotFoundError``) so existing ``except`` clauses keep working.
"""


class TransferkitError(Exception):
    """Base class of every transferkit error."""


class UnknownBackboneError(TransferkitError, KeyError):
    """A backbone spec names a source or architecture that transferkit cannot build."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackboneFileNotFoundError(TransferkitError, FileNotFoundError):
    """A backbone spec points at a file or directory that does not exist."""


class WeightsError(TransferkitError, ValueError):
    """Weights cannot be obtained or do not fit the architecture."""


class InputError(TransferkitError, ValueError):
    """Raw inputs given to ``preprocess``/``predict`` are not usable (empty text, wrong image shape...)."""


class DataError(TransferkitError, ValueError):
    """A dataset is empty, unreadable or its labels do not fit the head."""


class CheckpointError(TransferkitError, ValueError):
    """A saved model directory is missing files or was written by something else."""
