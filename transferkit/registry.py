"""The one registry helper behind every kind of named thing: backbone sources and named backbones, heads,
fine-tuning strategies and loggers.

A :class:`Registry` maps names to plain objects (builder functions or classes), as timm's
``@register_model`` and torchvision's ``register_model`` do, and behaves the same for every kind:

* ``@registry.register("name")`` registers; a second registration of a name is refused;
* ``registry.get("nme")`` of an unknown name raises the kind's error with the close matches and every
  known name: a name is never guessed;
* ``registry.names("timm*")`` lists the names matching an fnmatch pattern.

Imports nothing but :mod:`transferkit.errors`, so any layer may use it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from transferkit.errors import ConfigError, TransferkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects, for one kind of named thing.

    Args:
        kind: what the names name, for messages (``"head type"``, ``"fine-tuning strategy"``).
        error: raised by :meth:`get` for an unknown name (a :class:`TransferkitError` subclass; its
            built-in base, e.g. ``KeyError`` or ``ValueError``, is what old ``except`` clauses catch).
        hint: appended to the unknown-name message, e.g. ``"(CLI: --strategy NAME)"``.
        normalise: maps a user's spelling to the registered one before lookup (e.g. ``lp-ft`` → ``lp_ft``).
    """

    def __init__(self, kind: str, *, error: type[TransferkitError] = ConfigError, hint: str = "",
                 normalise: Callable[[str], str] | None = None):
        self.kind = kind
        self.error = error
        self.hint = hint
        self.normalise = normalise or (lambda name: name)
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers what it decorates.

        Raises:
            ConfigError: ``name`` is already registered (names are never silently replaced).
        """
        def add(item: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered; choose another name.")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name raises ``error`` with the close matches."""
        key = self.normalise(name)
        if key in self._items:
            return self._items[key]
        raise self.error(self.unknown(name))

    def unknown(self, name: str, n: int = 3, cutoff: float = 0.5) -> str:
        """The message for an unknown ``name``: close matches, then every known name."""
        close = difflib.get_close_matches(self.normalise(name), list(self._items), n=n, cutoff=cutoff)
        did = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        hint = f" {self.hint}" if self.hint else ""
        return f"unknown {self.kind} {name!r}.{did} Known: {', '.join(sorted(self._items)) or '(none)'}.{hint}"

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch ``pattern``, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.normalise(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
