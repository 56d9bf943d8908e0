"""The zoo's cache layout, its per-entry file lock and the install record.

Layout under ``$TRANSFERKIT_HOME/zoo``::

    glove/wiki-gigaword-6b.100d/          the installed entry: its files and zoo-record.json
    glove/wiki-gigaword-6b.100d.incoming/ .part files being downloaded (kept for resume), and files a
                                          user put there by hand for offline installation
    glove/wiki-gigaword-6b.100d.lock      flock'ed while a process installs or removes the entry
    hub/                                  huggingface_hub's cache for Hub entries
    catalogues/                           cached copies of remote catalogues

An entry directory only appears, by an atomic rename, once every file in it is verified; its
``zoo-record.json`` lists the sha256 of each file so that ``verify`` can re-check it later.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferkit.files import read_json_record, write_json_atomic  # noqa: F401  (the library's JSON record helpers)
from transferkit.zoo.settings import zoo_home

RECORD = "zoo-record.json"


def _split(name: str) -> tuple[str, str]:
    family, _, rest = name.partition("/")
    return family, rest


def entry_dir(name: str) -> Path:
    """Where an installed entry lives: ``$TRANSFERKIT_HOME/zoo/FAMILY/ARCH.TAG``."""
    family, rest = _split(name)
    return zoo_home() / family / rest


def incoming_dir(name: str) -> Path:
    """Where partial downloads are kept, and where a file fetched by hand can be dropped for offline use."""
    family, rest = _split(name)
    return zoo_home() / family / f"{rest}.incoming"


def hub_cache_dir() -> Path:
    """The ``cache_dir`` handed to ``huggingface_hub`` for Hub entries (one cache for everything)."""
    return zoo_home() / "hub"


@contextlib.contextmanager
def entry_lock(name: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on the entry's lock file; a second process waits here.

    The lock file sits beside the entry directory and is never deleted, so that two processes always
    lock the same inode.
    """
    import fcntl  # POSIX only; the zoo's locking is documented as Linux/macOS

    family, rest = _split(name)
    path = zoo_home() / family / f"{rest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            hasher.update(block)
    return hasher.hexdigest()


def read_record(directory: Path) -> dict[str, Any] | None:
    """The install record of an entry directory, or None when it is missing or unreadable."""
    return read_json_record(directory / RECORD)
