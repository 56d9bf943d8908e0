"""Errors raised by the model zoo.

Each names what is wrong and what to do about it, and also subclasses the matching built-in exception
(``KeyError``, ``ValueError``, ``FileNotFoundError``, ``ConnectionError``) so that existing ``except``
clauses keep working.
"""

from __future__ import annotations

from transferkit import errors as _errors
from transferkit.errors import TransferkitError


class ZooError(TransferkitError):
    """Base class of every error the model zoo raises."""


class CatalogueError(ZooError, ValueError):
    """A catalogue file cannot be read, or one of its entries breaks the schema."""


class UnknownModelError(ZooError, KeyError):
    """No catalogue entry has this name; the message lists the close matches (never guessed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OfflineError(ZooError, _errors.OfflineError):
    """Offline mode is on and a file the entry needs is not in the cache; the message says how to get it.

    Also a :class:`transferkit.errors.OfflineError` (and so a ``FileNotFoundError``), so one ``except``
    catches offline failures of the zoo and of the backbone sources alike.
    """


class UnverifiedModelError(ZooError, PermissionError):
    """The catalogue has no full sha256 for a file, so it is not installed without ``trust_unverified``."""


class ChecksumError(ZooError, ValueError):
    """Downloaded or cached bytes do not match the catalogue's size or sha256; nothing was installed."""


class DownloadError(ZooError, ConnectionError):
    """Every mirror and retry failed; the message lists each attempt."""


class UnsafeArchiveError(ZooError, ValueError):
    """An archive member escapes its directory, is a link or a device, or has an absolute path."""


class PublishError(ZooError, ValueError):
    """A directory cannot be published (missing ``config.json``, name taken, bad name...)."""
