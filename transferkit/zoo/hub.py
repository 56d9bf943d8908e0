"""Hugging Face Hub entries: fetched by ``huggingface_hub`` at a pinned commit, into the zoo's cache.

``huggingface_hub`` verifies what it downloads (LFS files are addressed by their sha256) and handles its
own locking and resume. The zoo adds three things: the revision is pinned in the catalogue, only the
listed safetensors and text files are fetched (never pickled weights), and :func:`verify_snapshot`
re-hashes the cached files against their content addresses on demand. ``huggingface_hub`` is imported
inside these functions only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transferkit.zoo.cache import hub_cache_dir, sha256_file
from transferkit.zoo.catalogue import ZooEntry
from transferkit.zoo.errors import ChecksumError, DownloadError, OfflineError
from transferkit.zoo.schema import PICKLE_SUFFIXES, REVISION_RE, SHA256_RE
from transferkit.zoo.settings import offline_reason


def _offline_message(entry: ZooEntry, reason: str) -> str:
    hub = entry.hub
    assert hub is not None
    rev = hub.revision or "main"
    files = " ".join(hub.files)
    return (f"{entry.name!r} ({hub.repo_id} at {rev}) is not in the cache and the zoo is offline ({reason}). "
            f"Missing: {files}. Get it on a machine with network access with\n"
            f"  hf download {hub.repo_id} {files} --revision {rev} --cache-dir {hub_cache_dir()}\n"
            f"(huggingface-cli download with older huggingface_hub) "
            f"and copy {hub_cache_dir()} here, or unset the offline switch and run "
            f"`transferkit zoo download {entry.name}`.")


def snapshot(entry: ZooEntry, *, offline: bool, force: bool = False) -> Path:
    """Download (or find cached) the entry's Hub snapshot and return its directory.

    Raises:
        OfflineError: offline and not cached.
        DownloadError: the Hub could not be reached or the revision/files do not exist.
        ChecksumError: the weights file's sha256 differs from the catalogue's.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    hub = entry.hub
    assert hub is not None
    try:
        path = Path(snapshot_download(hub.repo_id, revision=hub.revision or None, cache_dir=hub_cache_dir(),
                                      allow_patterns=list(hub.files), local_files_only=offline,
                                      force_download=force and not offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if offline or offline_reason():
            raise OfflineError(_offline_message(entry, offline_reason() or "offline")) from e
        raise DownloadError(f"{entry.name}: could not fetch {hub.repo_id}: {e}") from e
    except Exception as e:  # network, missing repo/revision: huggingface_hub raises many types
        raise DownloadError(f"{entry.name}: could not fetch {hub.repo_id} at {hub.revision or 'main'}: "
                            f"{type(e).__name__}: {e}") from e
    check_snapshot(entry, path)
    return path


def check_snapshot(entry: ZooEntry, path: Path) -> None:
    """Refuse a snapshot that lacks the weights or holds pickled weights, and check the weights' sha256."""
    hub = entry.hub
    assert hub is not None
    pickles = [p.name for p in path.rglob("*") if p.name.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ChecksumError(f"{entry.name}: the snapshot holds pickled files {pickles}; the zoo never "
                            "installs them. Remove them from the catalogue's hub.files.")
    weights = path / hub.weights
    if not weights.is_file():
        raise DownloadError(f"{entry.name}: {hub.repo_id} at {hub.revision or 'main'} has no {hub.weights}; "
                            "the zoo only installs safetensors weights.")
    if hub.weights_sha256:
        blob = weights.resolve().name
        actual = blob if SHA256_RE.match(blob) else sha256_file(weights)
        if actual != hub.weights_sha256:
            raise ChecksumError(f"{entry.name}: {hub.weights} has sha256 {actual}, the catalogue states "
                                f"{hub.weights_sha256}.")


def resolved_revision(path: Path) -> str:
    """The commit hash of a snapshot directory (its name in the huggingface_hub cache)."""
    return path.name if REVISION_RE.match(path.name) else ""


def _git_blob_sha1(path: Path) -> str:
    hasher = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def verify_snapshot(path: Path) -> list[tuple[str, str, str]]:
    """Re-hash every file of a cached snapshot against its content address.

    In the huggingface_hub cache each file is a link to a blob named by its sha256 (LFS files) or its
    git blob sha1 (small text files), so the expected digest needs no network.

    Returns:
        (file, expected, actual) for each file; equal digests mean intact.
    """
    results = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        blob = file.resolve().name
        if SHA256_RE.match(blob):
            actual = sha256_file(file)
        elif len(blob) == 40:
            actual = _git_blob_sha1(file)
        else:
            actual = blob = sha256_file(file)  # not a content-addressed cache: nothing to compare
        results.append((str(file.relative_to(path)), blob, actual))
    return results


def remove_snapshot(entry: ZooEntry, revision: str) -> bool:
    """Delete one cached revision of the entry's repository; True if something was deleted."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return False
    assert entry.hub is not None
    revisions = [r.commit_hash for repo in cache.repos if repo.repo_id == entry.hub.repo_id
                 for r in repo.revisions if not revision or r.commit_hash == revision]
    if not revisions:
        return False
    cache.delete_revisions(*revisions).execute()
    return True
