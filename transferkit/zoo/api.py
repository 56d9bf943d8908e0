"""Download, verify, remove and resolve zoo entries into backbone specs.

The install protocol for direct-URL entries, under the entry's file lock:

1. If the entry directory exists and its record matches the catalogue, return it (no network).
2. Offline: only files already in the cache, or dropped by hand into the ``.incoming`` directory, are
   used; anything else raises :class:`OfflineError` naming the file, its URL and where to put it.
3. An entry whose files have no published sha256 is refused unless ``trust_unverified=True``.
4. Each file streams into ``.incoming/NAME.part`` (resumable) while its sha256 is computed; a wrong size
   or digest deletes the part and raises, leaving the cache as it was.
5. Archives are unpacked safely into a staging directory; the staging directory, with its record, is
   renamed over the entry directory only when everything is verified.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from transferkit.files import replace_dir
from transferkit.zoo import hub as hub_mod
from transferkit.zoo.archive import extract
from transferkit.zoo.cache import (RECORD, entry_dir, entry_lock, incoming_dir, read_record, sha256_file,
                                   write_json_atomic)
from transferkit.zoo.catalogue import ZooEntry, ZooFile, info
from transferkit.zoo.errors import (ChecksumError, OfflineError, UnsafeArchiveError, UnverifiedModelError,
                                    ZooError)
from transferkit.zoo.fetch import Fetched, fetch
from transferkit.zoo.settings import DownloadPolicy, is_offline, offline_reason


def _download_name(f: ZooFile) -> str:
    """Where a download is kept inside ``.incoming``: the file's own path, or the archive's file name."""
    if not f.archive:
        return f.path
    return unquote(Path(urlparse(f.urls[0]).path).name) or "archive"


def human_size(size: int | None, compact: bool = False) -> str:
    """``440449768`` → ``"440.4 MB"`` (``"440.4M"`` when ``compact``)."""
    if size is None:
        return "?" if compact else "size unknown"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1000 or unit == "G":
            text = f"{value:.0f}" if unit == "B" else f"{value:.1f}"
            return f"{text}{unit}" if compact else f"{text} {unit if unit == 'B' else unit + 'B'}"
        value /= 1000
    raise AssertionError("unreachable")


def _result_path(entry: ZooEntry, target: Path) -> Path:
    return target / entry.files[0].path if entry.layout == "file" else target


def _expected_sha(f: ZooFile, relative: str) -> str:
    """The catalogue's digest for an installed file ("" when the catalogue has none)."""
    if f.archive:
        return f.member_sha256 if f.member and relative == f.path else ""
    return f.sha256


def _owner(entry: ZooEntry, relative: str) -> ZooFile | None:
    for f in entry.files:
        if relative == f.path or (f.archive and not f.member and (not f.path or relative.startswith(f.path + "/"))):
            return f
    return None


def _record_matches(entry: ZooEntry, target: Path, record: dict[str, Any] | None) -> bool:
    if not record or record.get("name") != entry.name or not isinstance(record.get("files"), dict):
        return False
    files: dict[str, dict] = record["files"]
    for f in entry.files:
        if not f.archive or f.member:
            if f.path not in files:
                return False
        if f.archive and f.sha256 and any(v.get("archive_sha256") != f.sha256 for k, v in files.items()
                                          if _owner(entry, k) is f):
            return False
    for relative, meta in files.items():
        f = _owner(entry, relative)
        expected = _expected_sha(f, relative) if f else ""
        path = target / relative
        if f is None or not path.is_file() or path.stat().st_size != meta.get("size"):
            return False
        if expected and meta.get("sha256") != expected:
            return False
    return True


def _offline_error(entry: ZooEntry, missing: list[ZooFile], target: Path) -> OfflineError:
    lines = []
    for f in missing:
        where = incoming_dir(entry.name) / _download_name(f)
        digest = f"sha256 {f.sha256}" if f.sha256 else "no published sha256"
        lines.append(f"  - {_download_name(f)} ({human_size(f.size)}, {digest}) from {' or '.join(f.urls)}\n"
                     f"    put it at {where}")
    state = "is damaged in" if target.exists() else "is not in"
    return OfflineError(
        f"{entry.name!r} {state} the cache ({target}) and the zoo is offline ({offline_reason()}); nothing "
        "was downloaded. Missing:\n" + "\n".join(lines) +
        f"\nA file put there is checked before use on the next call. Or unset the offline switch and run "
        f"`transferkit zoo download {entry.name}" + ("" if entry.verified else " --trust-unverified") + "`.")


def _check_trust(entry: ZooEntry, trust_unverified: bool) -> None:
    if entry.verified or trust_unverified:
        return
    unknown = [_download_name(f) for f in entry.files if not f.verifiable]
    what = f"files {unknown}" if unknown else f"Hub revision of {entry.hub.repo_id if entry.hub else ''}"
    raise UnverifiedModelError(
        f"{entry.name!r}: the catalogue has no published sha256 for {what}, so the zoo cannot check what it "
        "would install. " + (entry.integrity_note + " " if entry.integrity_note else "") +
        "To install it anyway and record the digest it has now (trust on first use; later `verify` calls "
        f"check against it), pass trust_unverified=True or `transferkit zoo download {entry.name} "
        "--trust-unverified`.")


def _obtain(entry: ZooEntry, f: ZooFile, offline: bool, policy: DownloadPolicy,
            progress: bool) -> tuple[Path, Fetched]:
    incoming = incoming_dir(entry.name)
    manual = incoming / _download_name(f)
    if manual.is_file():  # fetched by hand (offline installation): checked like a download
        return manual, Fetched(sha256_file(manual, policy.chunk_size), manual.stat().st_size, manual.as_uri())
    assert not offline
    part = incoming / (_download_name(f) + ".part")
    return part, fetch(f.urls, part, size=f.size, policy=policy, progress=progress,
                       label=f"{entry.name} {_download_name(f)}")


def _install_file(entry: ZooEntry, f: ZooFile, got: Path, fetched: Fetched, staging: Path) -> dict[str, dict]:
    if (f.size is not None and fetched.size != f.size) or (f.sha256 and fetched.sha256 != f.sha256):
        got.unlink()
        raise ChecksumError(
            f"{entry.name}: {_download_name(f)} from {fetched.url} has {fetched.size} bytes and sha256 "
            f"{fetched.sha256}; the catalogue states {f.size if f.size is not None else '?'} bytes and sha256 "
            f"{f.sha256 or '(none)'}. The file was deleted and the cache left as it was; if the publisher "
            "replaced it, the catalogue entry must be updated.")
    trusted = not f.verifiable
    if not f.archive:
        (staging / f.path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, staging / f.path)
        return {f.path: {"sha256": fetched.sha256, "size": fetched.size, "url": fetched.url,
                         "trusted_on_first_use": trusted}}
    try:
        hashes = extract(got, f.archive, staging, member=f.member, target=f.path)
    except UnsafeArchiveError:
        got.unlink()  # never resumed or retried: the same bytes would be refused again
        raise
    if f.member and f.member_sha256 and hashes[f.path] != f.member_sha256:
        got.unlink()
        raise ChecksumError(f"{entry.name}: {f.member} inside {_download_name(f)} has sha256 {hashes[f.path]}; "
                            f"the catalogue states {f.member_sha256}. Nothing was installed.")
    got.unlink()  # the archive is not kept: the unpacked, verified files are what the backbone reads
    return {rel: {"sha256": digest, "size": (staging / rel).stat().st_size, "url": fetched.url,
                  "archive_sha256": fetched.sha256, "trusted_on_first_use": trusted}
            for rel, digest in hashes.items()}


def _prune_empty(directory: Path) -> None:
    """Remove ``directory`` and its sub-directories when they hold no file any more."""
    if not directory.is_dir():
        return
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        directory.rmdir()


def _swap_in(staging: Path, target: Path) -> None:
    """Put the verified files in place; a kill never leaves the entry without its previous copy."""
    replace_dir(staging, target)


def _download_files(entry: ZooEntry, *, force: bool, progress: bool, trust_unverified: bool,
                    policy: DownloadPolicy) -> Path:
    target = entry_dir(entry.name)
    with entry_lock(entry.name):
        if not force and _record_matches(entry, target, read_record(target)):
            return _result_path(entry, target)
        offline = is_offline()
        if offline:
            missing = [f for f in entry.files if not (incoming_dir(entry.name) / _download_name(f)).is_file()]
            if missing:
                raise _offline_error(entry, missing, target)
        _check_trust(entry, trust_unverified)
        staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            files: dict[str, dict] = {}
            for f in entry.files:
                got, fetched = _obtain(entry, f, offline, policy, progress)
                if not f.verifiable:
                    print(f"transferkit zoo: {entry.name}: {_download_name(f)} has no published sha256; "
                          f"trusting it on first use with sha256 {fetched.sha256}", file=sys.stderr)
                files.update(_install_file(entry, f, got, fetched, staging))
            write_json_atomic(staging / RECORD, {
                "name": entry.name, "integrity": entry.integrity, "origin": entry.origin,
                "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files})
            _swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _prune_empty(incoming_dir(entry.name))
    return _result_path(entry, target)


def _download_hub(entry: ZooEntry, *, force: bool, trust_unverified: bool) -> Path:
    assert entry.hub is not None
    record_dir = entry_dir(entry.name)
    with entry_lock(entry.name):
        record = read_record(record_dir) or {}
        pinned = entry.hub.revision or (record.get("hub") or {}).get("revision", "")
        if not pinned:
            _check_trust(entry, trust_unverified)
        path = hub_mod.snapshot(replace(entry, hub=replace(entry.hub, revision=pinned)), offline=is_offline(),
                                force=force)
        revision = hub_mod.resolved_revision(path)
        if (record.get("hub") or {}).get("path") != str(path):
            write_json_atomic(record_dir / RECORD, {
                "name": entry.name, "integrity": entry.integrity, "origin": entry.origin,
                "hub": {"repo_id": entry.hub.repo_id, "revision": revision, "path": str(path),
                        "trusted_on_first_use": not entry.hub.revision}})
    return path


def download(name: str, *, force: bool = False, progress: bool = True, trust_unverified: bool = False,
             policy: DownloadPolicy | None = None) -> Path:
    """Make an entry's files available locally and return where they are.

    Args:
        name: a catalogue name, e.g. ``"glove/wiki-gigaword-6b.100d"``.
        force: download again even when a verified copy is cached.
        progress: draw progress bars on stderr.
        trust_unverified: install files whose sha256 the catalogue does not state, recording the digest
            they have now (trust on first use).
        policy: retries, back-off, timeout and chunk size (defaults suit real servers).

    Returns:
        The file (entries with ``layout = "file"``) or the directory (Hub snapshots, published models).

    Raises:
        UnknownModelError, OfflineError, UnverifiedModelError, ChecksumError, DownloadError,
        UnsafeArchiveError.
    """
    entry = info(name)
    if entry.hub is not None:
        return _download_hub(entry, force=force, trust_unverified=trust_unverified)
    return _download_files(entry, force=force, progress=progress, trust_unverified=trust_unverified,
                           policy=policy or DownloadPolicy())


@dataclass
class FileCheck:
    """The result of re-hashing one cached file."""

    path: str
    expected: str
    actual: str
    # Where the expected digest comes from: "catalogue", "first use" (recorded at install) or "hub".
    basis: str

    @property
    def ok(self) -> bool:
        return bool(self.actual) and self.actual == self.expected


@dataclass
class VerifyReport:
    """What :func:`verify` found; true in a boolean context when everything is intact."""

    name: str
    checks: list[FileCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"{self.name}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  {'ok ' if c.ok else 'BAD'} {c.path} sha256 {c.actual or '(missing)'}"
                  + ("" if c.ok else f" expected {c.expected} ({c.basis})") for c in self.checks]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def verify(name: str) -> VerifyReport:
    """Re-hash the cached files of an entry against the catalogue (or the digests recorded on first use).

    Never touches the network. A missing entry is reported, not raised.
    """
    entry = info(name)
    report = VerifyReport(name)
    target = entry_dir(name)
    record = read_record(target)
    if entry.hub is not None:
        path = Path((record or {}).get("hub", {}).get("path", "")) if record else None
        if not path or not path.is_dir():
            report.problems.append(f"not installed; run `transferkit zoo download {name}`")
            return report
        report.checks += [FileCheck(rel, exp, act, "hub") for rel, exp, act in hub_mod.verify_snapshot(path)]
        try:
            hub_mod.check_snapshot(entry, path)
        except ZooError as e:
            report.problems.append(str(e))
        return report
    if not record or not isinstance(record.get("files"), dict):
        report.problems.append(f"not installed; run `transferkit zoo download {name}`")
        return report
    for relative, meta in sorted(record["files"].items()):
        f = _owner(entry, relative)
        expected = (_expected_sha(f, relative) if f else "") or meta.get("sha256", "")
        basis = "catalogue" if f and _expected_sha(f, relative) else "first use"
        path = target / relative
        actual = sha256_file(path) if path.is_file() else ""
        report.checks.append(FileCheck(relative, expected, actual, basis))
    if not _record_matches(entry, target, record):
        report.problems.append("the cached files do not match the catalogue entry (it changed, or files are "
                               f"missing); run `transferkit zoo download {name} --force`")
    return report


def remove(name: str) -> bool:
    """Delete an entry's cached files (and partial downloads); True if anything was deleted."""
    entry = info(name)
    removed = False
    with entry_lock(name):
        record = read_record(entry_dir(name))
        if entry.hub is not None:
            revision = ((record or {}).get("hub") or {}).get("revision", "") or entry.hub.revision
            removed = hub_mod.remove_snapshot(entry, revision)
        for path in (entry_dir(name), incoming_dir(name)):
            if path.exists():
                shutil.rmtree(path)
                removed = True
    return removed


def is_installed(name: str) -> bool:
    """True when the entry is in the cache and its record matches the catalogue (no hashing, no network)."""
    entry = info(name)
    record = read_record(entry_dir(name))
    if entry.hub is not None:
        return bool(record and Path(record.get("hub", {}).get("path", "/nonexistent")).is_dir())
    return _record_matches(entry, entry_dir(name), record)


def backbone_spec(name: str, *, trust_unverified: bool = False, progress: bool = True) -> tuple[str, dict]:
    """Download (or find cached) an entry and return ``(spec, options)`` for ``load_backbone``.

    Examples: ``("glove:/.../glove.6B.100d.txt", {})``, ``("word2vec:/.../GoogleNews...bin.gz",
    {"binary": True})``, ``("hf:/.../snapshots/<commit>", {})``, ``("timm:resnet50.a1_in1k",
    {"weights": "/.../model.safetensors"})``, or a published ``save_pretrained`` directory.
    """
    entry = info(name)
    path = download(name, trust_unverified=trust_unverified, progress=progress)
    options = dict(entry.backbone_options)
    if entry.source in ("word2vec", "glove", "fasttext", "hf"):
        return f"{entry.source}:{path}", options
    if entry.source in ("timm", "torchvision"):
        weights = path / entry.hub.weights if entry.hub else (path if entry.layout == "file"
                                                               else path / entry.files[0].path)
        return f"{entry.source}:{entry.arch}", {**options, "weights": str(weights)}
    return str(path), options
