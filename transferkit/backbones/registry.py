"""Registries of plain builder functions, and the ``load_backbone`` / ``list_backbones`` entry points.

Two registries:

* **sources** (``word2vec``, ``glove``, ``fasttext``, ``hf``, ``timm``, ``torchvision``): a builder
  ``build(name, **options)`` for any ``source:name`` spec, a ``rebuild(config, directory)`` that recreates
  the architecture and preprocessing from a saved config (weights are loaded afterwards), and optionally
  ``list_names()`` for ``list_backbones``.
* **named backbones** (``glove:6B.50d``, ``timm:tf_efficientnet_lite0`` ...): a builder function for one
  exact spec, used before the source builder; this is how weights that ship inside installed packages
  are made reachable by name.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transferkit.errors import UnknownBackboneError

from .base import Backbone


@dataclass(frozen=True)
class Source:
    """How one source builds, lists and rebuilds its backbones."""

    build: Callable[..., Backbone]
    rebuild: Callable[[dict, Path], Backbone]
    # Lists the names this source can build, or None when names are file paths.
    list_names: Callable[[], list[str]] | None = None
    # Shown by `transferkit backbones` for sources whose names are not listable.
    usage: str = ""
    # Writes preprocessing files (vocabulary, tokenizer) beside the weights in save_pretrained.
    save_assets: Callable[[Backbone, Path], None] | None = None


_SOURCES: dict[str, Source] = {}
_NAMED: dict[str, Callable[..., Backbone]] = {}


def register_source(name: str, *, rebuild: Callable[[dict, Path], Backbone],
                    list_names: Callable[[], list[str]] | None = None, usage: str = "",
                    save_assets: Callable[[Backbone, Path], None] | None = None):
    """Decorator registering ``build(name, **options) -> Backbone`` for the ``name:`` prefix."""

    def decorator(build: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _SOURCES:
            raise ValueError(f"backbone source {name!r} is already registered")
        _SOURCES[name] = Source(build, rebuild, list_names, usage, save_assets)
        return build

    return decorator


def register_backbone(spec: str):
    """Decorator registering a builder ``fn(**options) -> Backbone`` under an exact ``source:name`` spec."""

    def decorator(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if spec in _NAMED:
            raise ValueError(f"backbone {spec!r} is already registered")
        if spec.partition(":")[0] not in _SOURCES:
            raise ValueError(f"backbone {spec!r}: register its source first")
        _NAMED[spec] = fn
        return fn

    return decorator


def source(name: str) -> Source:
    if name not in _SOURCES:
        close = difflib.get_close_matches(name, list(_SOURCES), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c + ':') for c in close)}?" if close else ""
        raise UnknownBackboneError(
            f"unknown backbone source {name!r}.{hint} Known sources: {', '.join(sorted(_SOURCES))}; "
            "a spec looks like 'timm:resnet18', 'hf:bert-base-uncased', 'glove:vectors.txt', or is a "
            "directory written by save_pretrained.")
    return _SOURCES[name]


def load_backbone(spec: str | os.PathLike, **options: Any) -> Backbone:
    """Build a backbone from a ``source:name`` spec or a ``save_pretrained`` directory.

    Args:
        spec: ``word2vec:PATH``, ``glove:PATH``, ``fasttext:PATH``, ``hf:NAME_OR_DIR``, ``timm:NAME[.tag]``,
            ``torchvision:NAME[.WEIGHTS]``, ``zoo:NAME``, a built-in name from :func:`list_backbones`, or a
            directory written by ``save_pretrained``.
        **options: passed to the source's builder, e.g. ``weights=None`` for random initialisation of
            a vision network, ``pooling="max"``, ``max_length=128``, ``image_size=96``.

    Returns:
        The backbone, in training mode, on the CPU.

    Raises:
        UnknownBackboneError: the source or name is unknown; the message lists close matches.
        BackboneFileNotFoundError: a path in the spec does not exist.
    """
    spec_str = os.fspath(spec)
    if spec_str in _NAMED:
        return _NAMED[spec_str](**options)
    if os.path.isdir(spec_str) and os.path.isfile(os.path.join(spec_str, "config.json")) and (
            ":" not in spec_str or os.path.isabs(spec_str)):
        from transferkit.model import load_saved_backbone

        return load_saved_backbone(spec_str, **options)
    prefix, sep, name = spec_str.partition(":")
    if not sep:
        raise UnknownBackboneError(
            f"{spec_str!r} is neither a 'source:name' spec nor a directory written by save_pretrained. "
            f"Known sources: {', '.join(sorted(_SOURCES))}.")
    if prefix == "zoo":
        from transferkit import zoo

        trust = options.pop("trust_unverified", False)
        zoo_spec, zoo_options = zoo.backbone_spec(name, trust_unverified=trust)
        return load_backbone(zoo_spec, **{**zoo_options, **options})
    return source(prefix).build(name, **options)


def list_backbones(pattern: str = "*") -> list[str]:
    """Names :func:`load_backbone` can build, filtered with an fnmatch ``pattern`` (e.g. ``"timm:*vit*"``).

    Sources whose names are file paths (``glove``, ``word2vec``, ``fasttext``, ``hf``) contribute their
    built-in names only; sources with a catalogue (``timm``, ``torchvision``) list every architecture,
    importing that library only when the pattern could match it.
    """
    names = {n for n in _NAMED if fnmatch.fnmatchcase(n, pattern)}
    for prefix, src in _SOURCES.items():
        if src.list_names is None or not _pattern_may_match_prefix(pattern, prefix):
            continue
        names.update(n for n in (f"{prefix}:{a}" for a in src.list_names()) if fnmatch.fnmatchcase(n, pattern))
    return sorted(names)


def close_matches(name: str, candidates: list[str], prefix: str) -> str:
    """A ' Did you mean ...?' sentence (or '') for error messages."""
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return f" Did you mean {', '.join(repr(f'{prefix}:{c}') for c in close)}?" if close else ""


def builtin_backbones() -> list[str]:
    """The names registered with :func:`register_backbone`."""
    return sorted(_NAMED)


def sources() -> dict[str, Source]:
    """The registered sources (read-only view for the CLI)."""
    return dict(_SOURCES)


def _pattern_may_match_prefix(pattern: str, prefix: str) -> bool:
    head = pattern.split(":", 1)[0] if ":" in pattern else pattern
    if ":" in pattern:
        return fnmatch.fnmatchcase(prefix, head)
    return any(ch in pattern for ch in "*?[")  # a bare '*' may match anything
