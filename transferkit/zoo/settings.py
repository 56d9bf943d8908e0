"""Where the zoo keeps its files, whether it may use the network, and how hard it retries.

Everything is read from the environment at call time (never at import), so a test or a user can change
``TRANSFERKIT_HOME`` or ``TRANSFERKIT_OFFLINE`` between two calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def transferkit_home() -> Path:
    """The root of transferkit's cache: ``$TRANSFERKIT_HOME``, by default ``~/.cache/transferkit``."""
    value = os.environ.get("TRANSFERKIT_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "transferkit"


def zoo_home() -> Path:
    """The zoo's part of the cache, ``$TRANSFERKIT_HOME/zoo``."""
    return transferkit_home() / "zoo"


def offline_reason() -> str:
    """The environment variable that switched offline mode on, or ``""`` when the zoo may go online.

    ``TRANSFERKIT_OFFLINE`` is the zoo's own switch; ``HF_HUB_OFFLINE`` is honoured too, so one variable
    keeps every download in a process off the network.
    """
    for var in ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return ""


def is_offline() -> bool:
    """True when ``TRANSFERKIT_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return bool(offline_reason())


@dataclass(frozen=True)
class DownloadPolicy:
    """How a download retries and paces itself.

    The defaults suit real servers; tests pass a policy with millisecond back-off so that a server error
    followed by success runs in well under a second.
    """

    # Attempts per mirror after the first one; a flaky connection usually recovers within a few tries.
    retries: int = 4
    # Seconds before the first retry; doubled after each failure (exponential back-off) so that an
    # overloaded server is not hammered.
    backoff: float = 1.0
    # Upper bound of one back-off sleep, so a long outage does not leave the user waiting for minutes.
    max_backoff: float = 30.0
    # Socket timeout in seconds for connecting and for each read; a stalled connection counts as a
    # failure and is resumed with a Range request.
    timeout: float = 30.0
    # Bytes read, hashed and written per step; 1 MiB keeps Python overhead small against disk and socket.
    chunk_size: int = 1 << 20

    def sleep_before(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        return min(self.max_backoff, self.backoff * (2 ** attempt))
