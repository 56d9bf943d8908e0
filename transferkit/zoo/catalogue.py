"""Catalogue records and where they come from: the built-in catalogue plus any extra catalogues.

The built-in catalogue is the ``*.toml`` files in ``transferkit/zoo/catalogues/``, shipped inside the
package (package data) and read with :mod:`importlib.resources`, so an editable checkout and an installed
wheel see the same entries. A missing or empty built-in catalogue is an error, never a silently empty zoo.

An extra catalogue is a TOML or JSON file, a directory holding ``catalogue.json``/``catalogue.toml`` (what
``publish`` writes), or an ``http(s)://`` URL of such a file. Relative file URLs inside a catalogue are
resolved against the catalogue's own location, so a published zoo can be moved or served as it is.
Catalogues are data only: they are parsed with ``tomllib``/``json`` and nothing in them is executed.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib.resources
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlparse

from transferkit.zoo.errors import CatalogueError, OfflineError, UnknownModelError
from transferkit.zoo.schema import SCHEMA_VERSION, entry_label, validate_entry
from transferkit.zoo.settings import is_offline, offline_reason, zoo_home

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

CATALOGUE_NAMES = ("catalogue.json", "catalogue.toml")
# The folder of transferkit.zoo that holds the built-in TOML catalogues (declared as package data).
BUILTIN_CATALOGUES = "catalogues"


@dataclass(frozen=True)
class ZooFile:
    """One downloadable file of an entry."""

    # Where the file (or the archive member) lands inside the entry's cache directory.
    path: str
    # Mirrors, tried in order; relative URLs are already resolved against the catalogue's location.
    urls: tuple[str, ...]
    # Full sha256 of the downloaded bytes; "" when the publisher states none (then trust on first use).
    sha256: str = ""
    # Size in bytes, when known: lets a truncated or oversized download be refused before hashing.
    size: int | None = None
    # "zip" or "tar" when the download is an archive that is unpacked (safely) into the entry.
    archive: str = ""
    # The one archive member the backbone reads; "" unpacks every member.
    member: str = ""
    # Full sha256 of that member once unpacked; enough to trust the entry when the archive has none.
    member_sha256: str = ""

    @property
    def verifiable(self) -> bool:
        """True when the catalogue states a full sha256 for what ends up in the cache."""
        return bool(self.sha256 or self.member_sha256)


@dataclass(frozen=True)
class HubRepo:
    """A Hugging Face Hub repository pinned to a commit; ``huggingface_hub`` fetches and checks it."""

    repo_id: str
    # Full commit hash; "" means unpinned (the entry is then "unverified").
    revision: str
    # File names or glob patterns fetched (allow_patterns): safetensors and text assets, never pickles.
    files: tuple[str, ...]
    # The safetensors weights inside the snapshot.
    weights: str = "model.safetensors"
    # Its sha256 when public material states it; checked after the download on top of the Hub's checks.
    weights_sha256: str = ""
    weights_size: int | None = None


@dataclass(frozen=True)
class ZooEntry:
    """A catalogue entry: what a model is, where its files are and how to turn them into a backbone."""

    name: str
    modality: str
    source: str
    description: str
    licence: str
    citation: str
    # "sha256" (every file checksummed), "hub-pinned" (Hub commit) or "unverified" (trust on first use).
    integrity: str
    files: tuple[ZooFile, ...] = ()
    hub: HubRepo | None = None
    # Architecture (with tag) for timm/torchvision specs, e.g. "resnet50.a1_in1k".
    arch: str = ""
    homepage: str = ""
    integrity_note: str = ""
    # "file": download() returns the single file; "directory": it returns the entry directory.
    layout: str = "file"
    # Extra keyword arguments for load_backbone (e.g. {"binary": True} for word2vec).
    backbone_options: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_source: str = ""
    card: str = ""
    # The catalogue this entry was read from (a path or a URL).
    origin: str = ""

    @property
    def family(self) -> str:
        """The part of the name before the slash (``bert`` in ``bert/base-uncased.google``)."""
        return self.name.split("/", 1)[0]

    @property
    def verified(self) -> bool:
        """False when some file has no published checksum (installing it needs ``trust_unverified``)."""
        return self.integrity != "unverified"

    @property
    def size(self) -> int | None:
        """Total download size in bytes when every size is known, else None."""
        sizes = [self.hub.weights_size] if self.hub else [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view of the entry (for ``zoo info --json``)."""
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k not in ("files", "hub")}
        out["files"] = [dict(f.__dict__, urls=list(f.urls)) for f in self.files]
        out["hub"] = dict(self.hub.__dict__, files=list(self.hub.files)) if self.hub else None
        return out


def _resolve_url(url: str, base: str) -> str:
    return url if urlparse(url).scheme in ("http", "https", "file") else urljoin(base, url)


def entry_from_raw(raw: dict[str, Any], *, base: str, origin: str) -> ZooEntry:
    """Build a :class:`ZooEntry` from a validated raw entry; ``base`` resolves relative URLs."""
    files = tuple(ZooFile(path=f["path"], urls=tuple(_resolve_url(u, base) for u in f["urls"]),
                          sha256=f.get("sha256", ""), size=f.get("size"), archive=f.get("archive", ""),
                          member=f.get("member", ""), member_sha256=f.get("member_sha256", ""))
                  for f in raw.get("files", ()))
    hub = None
    if "hub" in raw:
        h = raw["hub"]
        hub = HubRepo(repo_id=h["repo_id"], revision=h.get("revision", ""), files=tuple(h["files"]),
                      weights=h.get("weights", "model.safetensors"),
                      weights_sha256=h.get("weights_sha256", ""), weights_size=h.get("weights_size"))
    layout = raw.get("layout") or ("file" if len(files) == 1 and not (files[0].archive and not files[0].member)
                                   else "directory")
    return ZooEntry(name=raw["name"], modality=raw["modality"], source=raw["source"],
                    description=raw["description"], licence=raw["licence"], citation=raw["citation"],
                    integrity=raw["integrity"], files=files, hub=hub, arch=raw.get("arch", ""),
                    homepage=raw.get("homepage", ""), integrity_note=raw.get("integrity_note", ""),
                    layout=layout, backbone_options=dict(raw.get("backbone_options", {})),
                    preprocessing=dict(raw["preprocessing"]), recipe=dict(raw["recipe"]),
                    metrics=dict(raw["metrics"]), metrics_source=raw.get("metrics_source", ""),
                    card=raw.get("card", ""), origin=origin)


def parse_catalogue(data: Any, *, base: str, origin: str) -> list[ZooEntry]:
    """Validate a parsed catalogue and build its entries.

    Raises:
        CatalogueError: with every problem of every invalid entry.
    """
    if not isinstance(data, dict) or not isinstance(data.get("model", []), list):
        raise CatalogueError(f"{origin}: a catalogue is a table with a list 'model' of entries")
    if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise CatalogueError(f"{origin}: schema {data.get('schema')!r} is not supported (this transferkit "
                             f"reads schema {SCHEMA_VERSION})")
    problems = []
    for i, raw in enumerate(data.get("model", [])):
        problems += [f"{entry_label(raw, i)}: {p}" for p in validate_entry(raw)]
    if problems:
        raise CatalogueError(f"{origin}: invalid catalogue:\n  " + "\n  ".join(problems))
    return [entry_from_raw(raw, base=base, origin=origin) for raw in data.get("model", [])]


def parse_bytes(content: bytes, *, kind: str, base: str, origin: str) -> list[ZooEntry]:
    """Parse catalogue bytes; ``kind`` is ``"toml"`` or ``"json"``."""
    try:
        data = tomllib.loads(content.decode("utf-8")) if kind == "toml" else json.loads(content)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise CatalogueError(f"{origin}: not valid {kind.upper()}: {e}") from e
    return parse_catalogue(data, base=base, origin=origin)


def read_catalogue(path: str | os.PathLike) -> list[ZooEntry]:
    """Read a local catalogue file, or the ``catalogue.json``/``catalogue.toml`` in a directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / n for n in CATALOGUE_NAMES if (path / n).is_file()]
        if not found:
            raise CatalogueError(f"{path}: no {' or '.join(CATALOGUE_NAMES)} in this directory")
        path = found[0]
    if not path.is_file():
        raise CatalogueError(f"catalogue {str(path)!r} does not exist")
    kind = "json" if path.suffix == ".json" else "toml"
    return parse_bytes(path.read_bytes(), kind=kind, base=path.resolve().as_uri(), origin=str(path))


def _read_remote(url: str) -> list[ZooEntry]:
    from transferkit.zoo.errors import DownloadError
    from transferkit.zoo.fetch import fetch  # deferred: only remote catalogues need the downloader
    from transferkit.zoo.settings import DownloadPolicy

    kind = "json" if urlparse(url).path.endswith(".json") else "toml"
    cached = zoo_home() / "catalogues" / (hashlib.sha256(url.encode()).hexdigest()[:16] + "." + kind)
    if not is_offline():
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_name(f"{cached.name}.{os.getpid()}.part")
        part.unlink(missing_ok=True)
        try:
            fetch((url,), part, progress=False, label="catalogue", policy=DownloadPolicy(retries=1, timeout=15))
            os.replace(part, cached)
        except DownloadError as e:
            part.unlink(missing_ok=True)
            if not cached.is_file():
                raise
            print(f"transferkit zoo: using the cached copy of {url}: {e}", file=sys.stderr)
    elif not cached.is_file():
        raise OfflineError(f"catalogue {url} is not cached and the zoo is offline ({offline_reason()}). "
                           "Add it once while online, or download it and add the local file.")
    return parse_bytes(cached.read_bytes(), kind=kind, base=url, origin=url)


def builtin_catalogue_dir() -> Traversable:
    """The package-data folder ``transferkit/zoo/catalogues/`` holding the built-in TOML catalogues."""
    return importlib.resources.files("transferkit.zoo") / BUILTIN_CATALOGUES


def read_builtin_catalogue() -> list[ZooEntry]:
    """Read every ``*.toml`` of the built-in catalogue, in name order.

    Raises:
        CatalogueError: the built-in catalogue is missing or holds no entry (a broken install, e.g. a
            wheel built without its package data), or one of its files is invalid.
    """
    root = builtin_catalogue_dir()
    files = sorted((f for f in root.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name) \
        if root.is_dir() else []
    found: list[ZooEntry] = []
    for f in files:
        origin = str(f)
        base = f.resolve().as_uri() if isinstance(f, Path) else origin
        found += parse_bytes(f.read_bytes(), kind="toml", base=base, origin=origin)
    if not found:
        raise CatalogueError(f"the built-in zoo catalogue is missing or empty: no entry in {root}/*.toml. "
                             "This transferkit installation is incomplete (its wheel was built without the "
                             "package data transferkit/zoo/catalogues/*.toml); reinstall transferkit.")
    return found


def _read_source(source: str) -> list[ZooEntry]:
    if urlparse(source).scheme in ("http", "https"):
        return _read_remote(source)
    return read_catalogue(source)


@dataclass
class _Registry:
    # Catalogues added with add_catalogue(), in order, with the entries read from each (read once, so a
    # remote catalogue is fetched once per add_catalogue call).
    extra: dict[str, list[ZooEntry]] = field(default_factory=dict)
    # Entries by name, built on first use and rebuilt when a source is added.
    entries: dict[str, ZooEntry] | None = None


_REGISTRY = _Registry()


def _load_all() -> dict[str, ZooEntry]:
    if _REGISTRY.entries is not None:
        return _REGISTRY.entries
    found = read_builtin_catalogue()
    for source in [s for s in env_catalogues() if s not in _REGISTRY.extra]:
        found += _read_source(source)
    for added in _REGISTRY.extra.values():
        found += added
    entries: dict[str, ZooEntry] = {}
    for entry in found:
        if entry.name in entries:
            raise CatalogueError(f"{entry.name!r} is defined twice: in {entries[entry.name].origin} and in "
                                 f"{entry.origin}. Give the second a different name.")
        entries[entry.name] = entry
    _REGISTRY.entries = entries
    return entries


def env_catalogues() -> list[str]:
    """``TRANSFERKIT_ZOO_CATALOGUES`` split on spaces and ``;`` (not ``:``, which URLs contain)."""
    return [s for s in re.split(r"[;\s]+", os.environ.get("TRANSFERKIT_ZOO_CATALOGUES", "")) if s]


def add_catalogue(path_or_url: str | os.PathLike) -> list[str]:
    """Add a catalogue beside the built-in one, for this process.

    Args:
        path_or_url: a TOML/JSON catalogue file, a directory written by :func:`~transferkit.zoo.publish`,
            or an ``http(s)://`` URL of a catalogue file (cached, so it still works offline later).
            ``TRANSFERKIT_ZOO_CATALOGUES`` (paths/URLs separated by spaces or ``;``) adds catalogues
            without code.

    Returns:
        The names of the entries the catalogue brings.

    Raises:
        CatalogueError: the catalogue is invalid or defines a name that already exists.
    """
    source = os.fspath(path_or_url)
    previous = _REGISTRY.extra.get(source)
    added = _read_source(source)
    _REGISTRY.extra[source] = added
    _REGISTRY.entries = None
    try:
        _load_all()
    except Exception:
        if previous is None:
            del _REGISTRY.extra[source]
        else:
            _REGISTRY.extra[source] = previous
        _REGISTRY.entries = None
        raise
    return [e.name for e in added]


def reset_catalogues() -> None:
    """Forget catalogues added with :func:`add_catalogue` (the built-in one stays)."""
    _REGISTRY.extra.clear()
    _REGISTRY.entries = None


def list_models(pattern: str = "*") -> list[str]:
    """Names of the catalogue entries matching an ``fnmatch`` pattern, sorted.

    Args:
        pattern: e.g. ``"bert/*"``, ``"*imagenet*"``, ``"glove/*.100d"``.
    """
    return sorted(n for n in _load_all() if fnmatch.fnmatchcase(n, pattern))


def info(name: str) -> ZooEntry:
    """The catalogue entry called ``name`` (exact match).

    Raises:
        UnknownModelError: no such entry; the message lists close matches.
    """
    entries = _load_all()
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=5, cutoff=0.5)
    family = [n for n in entries if n.split("/")[0] == name.split("/")[0]]
    hint = f" Did you mean: {', '.join(close or family[:5])}?" if (close or family) else ""
    raise UnknownModelError(f"no zoo entry named {name!r}.{hint} See transferkit.zoo.list_models().")
