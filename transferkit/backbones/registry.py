"""Registries of plain builder functions, and the ``load_backbone`` / ``list_backbones`` entry points.

Two registries:

* **sources** (``word2vec``, ``glove``, ``fasttext``, ``hf``, ``timm``, ``torchvision``, ``zoo``): a builder
  ``build(name, **options)`` for any ``source:name`` spec, a ``rebuild(config, directory)`` that recreates
  the architecture and preprocessing from a saved config (weights are loaded afterwards), and optionally
  ``list_names()`` for ``list_backbones``.
* **named backbones** (``glove:6B.50d``, ``hf:sentence-transformers/all-MiniLM-L6-v2`` ...): a builder
  function for one exact spec, used before the source builder; this is how weights that ship inside
  installed packages are made reachable by name. A source may also serve such names itself
  (``timm:tf_efficientnet_lite0``) and report them with ``builtin_names`` for the listing.

Options are checked before a builder runs: an option the builder's signature does not take is an
:class:`~transferkit.errors.OptionError` naming the closest valid option and listing them all.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transferkit.errors import CheckpointError, ConfigError, OptionError, UnknownBackboneError
from transferkit.registry import Registry

from .base import SAVED_FORMATS, Backbone


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
    # Names this source serves offline without a registered builder (weights inside installed packages).
    builtin_names: Callable[[], list[str]] | None = None


_SOURCES: Registry[Source] = Registry("backbone source", error=UnknownBackboneError)
_NAMED: Registry[Callable[..., Backbone]] = Registry("backbone", error=UnknownBackboneError)


def register_source(name: str, *, rebuild: Callable[[dict, Path], Backbone],
                    list_names: Callable[[], list[str]] | None = None, usage: str = "",
                    save_assets: Callable[[Backbone, Path], None] | None = None,
                    builtin_names: Callable[[], list[str]] | None = None):
    """Decorator registering ``build(name, **options) -> Backbone`` for the ``name:`` prefix."""

    def decorator(build: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _SOURCES.register(name, Source(build, rebuild, list_names, usage, save_assets, builtin_names))
        return build

    return decorator


def register_backbone(spec: str):
    """Decorator registering a builder ``fn(**options) -> Backbone`` under an exact ``source:name`` spec."""

    def decorator(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if spec.partition(":")[0] not in _SOURCES:
            raise ConfigError(f"backbone {spec!r}: register its source first.")
        return _NAMED.register(spec, fn)

    return decorator


def source(name: str) -> Source:
    if name not in _SOURCES:
        close = difflib.get_close_matches(name, _SOURCES.names(), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c + ':') for c in close)}?" if close else ""
        raise UnknownBackboneError(
            f"unknown backbone source {name!r}.{hint} Known sources: {', '.join(_SOURCES)}; "
            "a spec looks like 'timm:resnet18', 'hf:bert-base-uncased', 'glove:vectors.txt', or is a "
            "directory written by save_pretrained.")
    return _SOURCES.get(name)


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
        OptionError: an option the source does not take; the message lists the valid ones.
        ConfigError: an option value the source does not know (``pooling="avg"``).
        FileFormatError: a file is not in the source's format; the message says which source fits.
        OfflineError: offline mode is on and the weights are not cached.
    """
    spec_str = os.fspath(spec)
    backbone, spec_str = _load(spec_str, options)
    # What a saved adapter refers to, to find its base again (a directory by its absolute path).
    backbone.origin = {"spec": spec_str, "options": dict(options)}
    return backbone


def _load(spec_str: str, options: dict) -> tuple[Backbone, str]:
    if spec_str in _NAMED:
        builder = _NAMED.get(spec_str)
        fallback = _SOURCES.get(spec_str.partition(":")[0]).build
        return _call(builder, spec_str, (), options, valid_options(builder, fallback=fallback)), spec_str
    if os.path.isdir(spec_str) and os.path.isfile(os.path.join(spec_str, "config.json")) and (
            ":" not in spec_str or os.path.isabs(spec_str)):
        return SAVED_FORMATS.get("transferkit").load(spec_str, **options), os.path.abspath(spec_str)
    prefix, sep, name = spec_str.partition(":")
    if not sep:
        raise UnknownBackboneError(
            f"{spec_str!r} is neither a 'source:name' spec nor a directory written by save_pretrained. "
            f"Known sources: {', '.join(_SOURCES)}.")
    build = source(prefix).build
    backbone = _call(build, spec_str, (name,), options, valid_options(build, skip=1))
    if prefix in ("word2vec", "glove", "fasttext", "hf") and os.path.exists(name):
        spec_str = f"{prefix}:{os.path.abspath(name)}"  # a local file or directory, wherever the next run starts
    return backbone, spec_str


def valid_options(builder: Callable[..., Any], *, skip: int = 0,
                  fallback: Callable[..., Any] | None = None) -> list[str] | None:
    """The keyword options ``builder`` accepts, or ``None`` when it passes any keyword on (``**kwargs``).

    Args:
        builder: a source or named-backbone builder.
        skip: leading positional parameters that are not options (the name of a source builder).
        fallback: where a ``**options`` builder forwards its options (a named backbone's source builder).
    """
    names = _keyword_names(builder, skip)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
        if fallback is None:
            return None
        rest = valid_options(fallback, skip=1)
        return None if rest is None else sorted(set(names) | set(rest))
    return names


def _keyword_names(fn: Callable[..., Any], skip: int) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def option_error(what: str, unknown: str, valid: list[str], note: str = "") -> OptionError:
    """An :class:`OptionError` for ``unknown``, with the close match and the valid options."""
    close = difflib.get_close_matches(unknown, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return OptionError(f"{what} does not take the option {unknown!r}.{hint} Valid options: "
                       f"{', '.join(valid) or '(none)'}{note}. Fix the option name (CLI: --option KEY=VALUE).")


def _call(build: Callable[..., Backbone], spec: str, args: tuple, options: dict,
          valid: list[str] | None) -> Backbone:
    """Call a builder, refusing options it does not take as :class:`OptionError` (before it runs)."""
    if valid is not None:
        for key in options:
            if key not in valid:
                raise option_error(spec, key, valid)
    try:
        backbone = build(*args, **options)
    except TypeError as e:
        # A builder that forwards **options further may still meet a keyword it cannot place.
        found = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        key = found.group(1) if found else None
        if isinstance(e, OptionError) or key not in options or (valid is not None and key in valid):
            raise
        raise option_error(spec, key, _keyword_names(build, len(args))) from e
    # Where the weights come from, which the small-data defaults choose learning rates by (trainer.auto). Only
    # builders are called here: a saved directory keeps the record it was saved with.
    random = options.get("weights", "default") in (None, "random", "none") or spec.startswith("scratch:")
    backbone.config.setdefault("init", "random" if random else "pretrained")
    return backbone


def list_backbones(pattern: str = "*") -> list[str]:
    """Names :func:`load_backbone` can build, filtered with an fnmatch ``pattern`` (e.g. ``"timm:*vit*"``).

    Sources whose names are file paths (``glove``, ``word2vec``, ``fasttext``, ``hf``) contribute their
    built-in names only; sources with a catalogue (``timm``, ``torchvision``) list every architecture,
    importing that library only when the pattern could match it.
    """
    names = set(_NAMED.names(pattern))
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
    """The names registered with :func:`register_backbone`, and the names sources serve from installed
    packages (``timm:tf_efficientnet_lite0``)."""
    names = set(_NAMED)
    for prefix, src in _SOURCES.items():
        if src.builtin_names is not None:
            names.update(f"{prefix}:{n}" for n in src.builtin_names())
    return sorted(names)


def sources() -> dict[str, Source]:
    """The registered sources (read-only view for the CLI)."""
    return dict(_SOURCES.items())


def _pattern_may_match_prefix(pattern: str, prefix: str) -> bool:
    head = pattern.split(":", 1)[0] if ":" in pattern else pattern
    if ":" in pattern:
        return fnmatch.fnmatchcase(prefix, head)
    return any(ch in pattern for ch in "*?[")  # a bare '*' may match anything


def _zoo_rebuild(config: dict, directory: Path) -> Backbone:
    raise CheckpointError(f"{directory}: config.json names the source 'zoo', which only resolves names to "
                          "other specs; the directory was not written by save_pretrained. Save it again.")


@register_source("zoo", rebuild=_zoo_rebuild,
                 usage="zoo:NAME — a model-zoo entry; see `transferkit zoo list`; options: "
                       "trust_unverified=False, plus those of the entry's source")
def zoo_backbone(name: str, *, trust_unverified: bool = False, **options: Any) -> Backbone:
    """A model-zoo entry: downloaded (or found in the cache), verified, then loaded by its own source."""
    from transferkit import zoo

    zoo_spec, zoo_options = zoo.backbone_spec(name, trust_unverified=trust_unverified)
    return load_backbone(zoo_spec, **{**zoo_options, **options})
