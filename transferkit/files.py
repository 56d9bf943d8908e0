"""Safe writes: atomic files, crash-safe directory replacement, output locks and umask-respecting modes.

Every file or directory transferkit writes goes through here, so that one set of rules holds everywhere:

* **Nothing the library did not write is removed.** :func:`check_output` refuses a path that holds a file,
  a link, or a directory that is not a transferkit model (unless ``overwrite=True``), and paths that can
  never be replaced (``.``, an ancestor of the working directory, ``/``, the home directory, a path
  inside a model directory).
* **A replace is crash-safe at every instant.** A new directory is written under ``.NAME.tmp-PID-HEX``
  beside ``NAME``, then swapped in. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``: ``NAME``
  always holds the complete old or the complete new directory. Where that call does not exist (other
  systems, some filesystems) ``NAME`` is first renamed to ``.NAME.old-PID-HEX`` and the new directory
  renamed to ``NAME``; a kill between the two leaves ``NAME`` missing and a complete old copy, which
  :func:`recover` (called by every load and save) renames back.
* **Leftovers are only ever the library's own names** (``.NAME.tmp-*``, ``.NAME.old-*``) and are removed
  by the next save (:func:`clean_stale`) once no live process owns them.
* **One writer at a time:** :func:`output_lock` holds a non-blocking ``flock`` on ``.NAME.lock`` beside
  ``NAME``; a second writer gets :class:`~transferkit.errors.OutputLockedError`.
* **Modes follow the umask:** files end up ``0o666 & ~umask`` and directories ``0o777 & ~umask`` (a
  temporary file from ``mkstemp`` would otherwise stay ``0600`` and break a shared team zoo).

This module imports no model code (the zoo uses it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transferkit.errors import OutputError, OutputExistsError, OutputLockedError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writes stay atomic but are not locked
    fcntl = None  # type: ignore[assignment]

MODEL_FORMAT = "transferkit"  # config.json's "format" in a directory written by save_pretrained
RUN_MARKER = ".transferkit-run"  # written into every run directory the Trainer claims

# Test hook, never set by the library: tests set it (in a child process) to a function of the step
# name ("staged", "exchanged", "moved-aside", "renamed") to SIGKILL the process at that instant.
_on_step: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _on_step is not None:
        _on_step(name)


# ----------------------------------------------------------------------------------------------- modes

_umask_guard = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``) where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_guard:  # elsewhere: the classic round trip, serialised within this process
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` would give a new file."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """``0o777 & ~umask``: the mode ``mkdir`` would give a new directory."""
    return 0o777 & ~current_umask()


# ---------------------------------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to (by any means); when the block succeeds, flush
    it to disk, give it ``0o666 & ~umask`` and rename it over ``path``. Readers see the old file or the
    new one, never a part; on failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """:func:`atomic_path` for bytes or text (UTF-8) already in memory; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """:func:`write_atomic` of ``data`` as indented, key-sorted JSON with a final newline."""
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a record the library wrote), or ``None`` when it is missing or unreadable."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------- what a path is

def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``save_pretrained`` (its config.json says so)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == MODEL_FORMAT


def is_complete_model(path: str | os.PathLike) -> bool:
    """A model directory with its weights (a whole model, or an adapter and head): what :func:`recover` may restore."""
    return is_model_dir(path) and any((Path(path) / name).is_file()
                                      for name in ("model.safetensors", "adapter.safetensors", "model.onnx",
                                                   "model.pt"))


def _listing(path: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _refuse_unusable(path: Path, what: str) -> Path:
    """Refuse targets no save may ever replace; returns the absolute path (links in parents resolved)."""
    shown = os.fspath(path)
    if shown in ("", "."):
        raise OutputError(f"cannot use {shown or '.'!r} as {what}: it is the current directory, and replacing "
                          "it would delete the directory you are working in. Choose a new sub-directory, "
                          "e.g. 'model'.")
    absolute = Path(os.path.abspath(path))
    real = Path(os.path.realpath(absolute.parent)) / absolute.name  # the target itself may be a link
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == Path(real.anchor):
        raise OutputError(f"cannot use {shown} as {what}: it is the filesystem root. Choose a new directory.")
    if real == cwd or real in cwd.parents:
        raise OutputError(f"cannot use {shown} as {what}: it is the current directory or contains it, and "
                          "replacing it would delete the directory you are working in. Choose a new "
                          "sub-directory.")
    with contextlib.suppress(RuntimeError, KeyError):
        home = Path(os.path.realpath(Path.home()))
        if real == home or real in home.parents:
            raise OutputError(f"cannot use {shown} as {what}: it is your home directory or contains it. "
                              "Choose a new sub-directory.")
    for ancestor in real.parents:
        if ancestor.exists() and not ancestor.is_dir():
            raise OutputError(f"cannot use {shown} as {what}: {ancestor} is a file, not a directory.")
        if is_model_dir(ancestor):
            raise OutputError(f"cannot use {shown} as {what}: it is inside the transferkit model directory "
                              f"{ancestor}, which the next save of that model would delete. Choose a path "
                              "outside it.")
    if os.path.islink(absolute):
        raise OutputExistsError(f"{shown} is a symbolic link; transferkit does not replace links, even with "
                                "overwrite=True. Choose another path, or give the directory the link points to.")
    if os.path.lexists(absolute) and not absolute.is_dir():
        raise OutputExistsError(f"{shown} is a file, not a directory; transferkit never replaces a file, even "
                                "with overwrite=True / --overwrite. Choose another path.")
    return absolute


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that ``path`` may receive a saved model, changing nothing there; returns it, absolute.

    Accepted: a path that does not exist, an empty directory, a transferkit model directory (replaced
    by the save), and with ``overwrite=True`` any other directory (the whole directory is replaced, its
    old content removed only once the new model is in place). A model left aside by a killed save
    (``.NAME.old-*`` while ``NAME`` is missing) is restored first.

    Raises:
        OutputError: ``path`` is ``.``, the working directory or an ancestor of it, ``/``, the home
            directory, inside a transferkit model directory, or below a file.
        OutputExistsError: ``path`` is a file or a link (even with ``overwrite``), or a directory holding
            something other than a transferkit model (without ``overwrite``).
    """
    target = _refuse_unusable(Path(path), "a model directory")
    recover(target)
    if target.is_dir() and not is_model_dir(target) and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{os.fspath(path)} already exists and is not a transferkit model (it holds {_listing(target)}); "
            "nothing was changed. Choose another path, or pass overwrite=True / --overwrite to replace "
            "the directory and everything in it.")
    return target


# ------------------------------------------------------------------------------------------ run dirs

# What a run directory written before RUN_MARKER existed may hold (Trainer and its loggers).
_RUN_FILES = {"checkpoint", "metrics.csv", "steps.csv", "curves.png", "confusion.png", "tensorboard", "settings.json",
              RUN_MARKER}


def _is_run_file(name: str) -> bool:
    return name in _RUN_FILES or any(name.startswith(f".{known}.") for known in _RUN_FILES)


def claim_run_dir(path: str | os.PathLike, *, resume: bool) -> Path:
    """Create (or accept) the Trainer's run directory and mark it as transferkit's; returns it, absolute.

    Accepted: a missing or empty directory, one marked by an earlier claim (``.transferkit-run``), and an
    unmarked one whose entries are all run files (``checkpoint/``, ``metrics.csv``, ``steps.csv``,
    ``curves.png``…: a run directory written before the marker existed). The Trainer only ever
    rewrites its own files there. Hold :func:`output_lock` on it for the whole run.

    Args:
        path: the run directory (``output_dir``).
        resume: the run continues from the checkpoint there; a checkpoint left aside by a killed save
            is then restored first.

    Raises:
        OutputError: an unusable path (see :func:`check_output`).
        OutputExistsError: a file, or a directory holding files transferkit did not write.
    """
    target = _refuse_unusable(Path(path), "a run directory")
    if target.is_dir() and not (target / RUN_MARKER).is_file():
        foreign = [p for p in target.iterdir() if not _is_run_file(p.name)]
        if foreign:
            raise OutputExistsError(
                f"{os.fspath(path)} already exists and is not a transferkit run directory (it holds "
                f"{_listing(target)}); nothing was changed. Choose another run directory (--run-dir / "
                "output_dir), or empty it.")
    target.mkdir(parents=True, exist_ok=True)
    if not (target / RUN_MARKER).is_file():
        write_atomic(target / RUN_MARKER, "This directory holds a transferkit training run.\n")
    if resume:
        recover(target / "checkpoint", complete=lambda p: (p / "state.json").is_file())
    return target


# --------------------------------------------------------------------------------------------- locks

_held: dict[str, list] = {}  # lock path -> [pid, thread id, depth, handle]: re-entrancy in one thread
_held_guard = threading.Lock()


def _lock_path(target: Path) -> Path:
    absolute = Path(os.path.abspath(target))
    return Path(os.path.realpath(absolute.parent)) / f".{absolute.name}.lock"


def holds_lock(path: str | os.PathLike) -> bool:
    """Whether this thread holds :func:`output_lock` on ``path``."""
    held = _held.get(str(_lock_path(Path(path))))
    return bool(held) and held[0] == os.getpid() and held[1] == threading.get_ident()


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive write lock of an output path (a ``flock`` on ``.NAME.lock`` beside it).

    Re-entrant within one thread: ``save_pretrained`` inside a CLI run that already holds the lock goes
    ahead. The lock file records the holder's pid and is removed on release.

    Raises:
        OutputLockedError: another process (or thread) holds the lock; the message names it.
    """
    target = Path(os.path.abspath(path))
    lock = _lock_path(target)
    key = str(lock)
    with _held_guard:
        held = _held.get(key)
        if held and held[0] == os.getpid():
            if held[1] != threading.get_ident():
                raise OutputLockedError(f"{target} is being written by another thread of this process; "
                                        "wait for it to finish or choose another output path.")
            held[2] += 1
    if held and held[0] == os.getpid():
        try:
            yield target
        finally:
            held[2] -= 1
        return
    handle = _acquire(lock, target) if fcntl is not None else None
    with _held_guard:
        _held[key] = [os.getpid(), threading.get_ident(), 1, handle]
    try:
        yield target
    finally:
        with _held_guard:
            _held.pop(key, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)  # while still locked: a waiter that opened it re-checks the inode
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


def _acquire(lock: Path, target: Path):
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a+", encoding="ascii")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise OutputLockedError(
                f"{target} is being written by another process" + (f" (pid {holder})" if holder else "")
                + f": it holds {lock}. Wait for it to finish, or choose another output path.") from None
        except BaseException:
            handle.close()
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()  # the holder released and removed it between our open and flock: take the new one


# ------------------------------------------------------------------------------ directory replacement

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}")


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _leftovers(target: Path) -> Iterator[tuple[Path, str, int | None]]:
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        m = _LEFTOVER.fullmatch(entry.name)
        if m and m["name"] == target.name:
            yield entry, m["kind"], int(m["pid"]) if m["pid"] else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(target: str | os.PathLike, complete: Callable[[Path], bool] = is_complete_model) -> bool:
    """Restore a directory left aside by a save killed between its two renames; True if it did.

    Acts only when ``target`` is missing and a complete ``.NAME.old-*`` copy exists beside it (the
    fallback replace's window). Never touches an existing ``target`` or a ``.NAME.tmp-*`` directory.
    """
    target = Path(os.path.abspath(target))
    if os.path.lexists(target):
        return False
    copies = [p for p, kind, _ in _leftovers(target) if kind == "old" and complete(p)]
    if not copies:
        return False
    try:
        with output_lock(target):  # a writer inside its window holds the lock and will finish itself
            if os.path.lexists(target):
                return False
            os.rename(max(copies, key=lambda p: p.stat().st_mtime), target)
            return True
    except (OutputLockedError, OSError):
        return False


def clean_stale(target: str | os.PathLike, *, locked: bool) -> None:
    """Remove ``.NAME.tmp-*`` and ``.NAME.old-*`` left beside ``target`` by killed saves.

    Only the library's own names are touched; an old copy is kept while ``target`` is missing (it is
    what :func:`recover` restores). ``locked``: the caller holds :func:`output_lock` on ``target``, so
    every leftover is stale; otherwise those named after a live process (other than a dead pid) stay.
    """
    target = Path(os.path.abspath(target))
    for entry, kind, pid in _leftovers(target):
        if kind == "old" and not target.is_dir():
            continue
        if not locked and pid is not None and (pid == os.getpid() or _alive(pid)):
            continue
        _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths with Linux's ``renameat2``; False where that is unavailable."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            _renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", False)
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # old kernel, or a filesystem without exchange: the recoverable fallback
    raise OSError(err, os.strerror(err), os.fspath(b))


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the directory ``new`` at ``target``; what was at ``target`` is removed once ``new`` is there.

    At every instant ``target`` holds the complete old or the complete new directory, or (fallback only,
    between two renames) is missing with the complete old one at ``.NAME.old-*``, which :func:`recover`
    restores.
    """
    new, target = Path(os.path.abspath(new)), Path(os.path.abspath(target))
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if _exchange(new, target):
        _step("exchanged")
        _remove(new)  # it now holds the previous content
        return
    old = _sibling(target, "old")
    os.rename(target, old)
    _step("moved-aside")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # put the previous content back at once
        raise
    _step("renamed")
    _remove(old)


def _settle(tree: Path) -> None:
    """Flush every file of ``tree`` to disk and give files and directories their umask modes."""
    fmode, dmode = file_mode(), dir_mode()
    for root, dirs, names in os.walk(tree):
        os.chmod(root, dmode)
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            if os.name != "nt":  # Windows cannot fsync a file opened for reading
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(path, fmode)


@contextlib.contextmanager
def replacing_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; when the block succeeds, swap it in.

    The temporary directory (``.NAME.tmp-PID-HEX``) is removed if the block or the swap fails. The
    caller checks and locks ``target`` first (:func:`check_output`, :func:`output_lock`).
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _settle(tmp)
        _step("staged")
        replace_dir(tmp, target)
    finally:
        _remove(tmp)  # nothing there after a clean swap; the old content after an exchange
