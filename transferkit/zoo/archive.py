"""Safe unpacking of zip and tar downloads (GloVe and fastText ship as zip archives).

Every member name is checked before anything is written: absolute paths, drive letters, ``..`` components,
symbolic and hard links, devices and FIFOs are refused with :class:`UnsafeArchiveError`, and the resolved
destination must stay inside the target directory. Members are streamed (never ``extractall``) and
hashed while they are written, so a member's sha256 can be checked against the catalogue.
"""

from __future__ import annotations

import hashlib
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from transferkit.zoo.errors import UnsafeArchiveError
from transferkit.zoo.schema import is_safe_relative


def _check_name(name: str, archive: Path) -> str:
    clean = name[:-1] if name.endswith("/") else name
    if not is_safe_relative(clean):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an absolute path or escapes its "
                                 "directory; refusing to unpack the archive")
    return clean


@contextmanager
def _members(archive: Path, kind: str) -> Iterator[list[tuple[str, bool, object]]]:
    """Yield (name, is_dir, handle) for every member, after checking that each one is safe."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            out = []
            for info in zf.infolist():
                name = _check_name(info.filename, archive)
                # Unix file type bits, when the zip was written on Unix (0: no type recorded).
                kind_bits = stat.S_IFMT(info.external_attr >> 16)
                if kind_bits not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a link or a "
                                             "special file; refusing to unpack the archive")
                out.append((name, info.is_dir(), (zf, info)))
            yield out
    elif kind == "tar":
        with tarfile.open(archive, "r:*") as tf:
            out = []
            for info in tf.getmembers():
                name = _check_name(info.name, archive)
                if not (info.isfile() or info.isdir()):
                    raise UnsafeArchiveError(f"{archive.name}: member {info.name!r} is a link or a special "
                                             "file; refusing to unpack the archive")
                out.append((name, info.isdir(), (tf, info)))
            yield out
    else:
        raise UnsafeArchiveError(f"unknown archive kind {kind!r} (zip or tar)")


def _open_member(handle: object) -> IO[bytes]:
    container, info = handle  # type: ignore[misc]
    if isinstance(container, zipfile.ZipFile):
        return container.open(info)
    f = container.extractfile(info)
    if f is None:  # pragma: no cover - regular files always have data
        raise UnsafeArchiveError(f"cannot read member {info.name!r}")
    return f


def _write(src: IO[bytes], dest: Path, chunk_size: int) -> str:
    hasher = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src, open(dest, "xb") as out:
        while block := src.read(chunk_size):
            out.write(block)
            hasher.update(block)
    return hasher.hexdigest()


def _inside(root: Path, relative: str) -> Path:
    dest = (root / relative).resolve()
    if dest != root.resolve() and root.resolve() not in dest.parents:
        raise UnsafeArchiveError(f"member {relative!r} would be written outside {root}")
    return dest


def extract(archive: Path, kind: str, dest_root: Path, *, member: str = "", target: str = "",
            chunk_size: int = 1 << 20) -> dict[str, str]:
    """Unpack one member (or every member) of a zip or tar archive into ``dest_root``.

    Args:
        archive: the downloaded archive.
        kind: ``"zip"`` or ``"tar"``.
        dest_root: directory that receives the files; nothing is ever written outside it.
        member: the member to extract; ``""`` extracts all of them.
        target: where the member lands, relative to ``dest_root`` (default: its own name); with
            ``member=""`` a sub-directory for the whole archive.
        chunk_size: bytes copied per step.

    Returns:
        sha256 of each written file, keyed by its path relative to ``dest_root``.

    Raises:
        UnsafeArchiveError: a member is unsafe (checked for every member before writing anything), or
            the requested member is missing.
    """
    written: dict[str, str] = {}
    with _members(archive, kind) as members:
        if member:
            matches = [m for m in members if m[0] == member and not m[1]]
            if not matches:
                names = [m[0] for m in members if not m[1]][:10]
                raise UnsafeArchiveError(f"{archive.name} has no member {member!r}; it holds {names}")
            relative = target or member
            written[relative] = _write(_open_member(matches[0][2]), _inside(dest_root, relative), chunk_size)
            return written
        for name, is_dir, handle in members:
            relative = f"{target}/{name}" if target else name
            path = _inside(dest_root, relative)
            if is_dir:
                path.mkdir(parents=True, exist_ok=True)
            else:
                written[relative] = _write(_open_member(handle), path, chunk_size)
    return written
