"""Streaming downloader: mirrors in order, retries with back-off, Range resume, sha256 in the same pass.

:func:`fetch` writes into a ``.part`` file that survives failures: the next attempt (or the next process)
asks the server for the remaining bytes only. It never renames the ``.part`` file and never decides
whether the bytes are right; the caller compares the returned digest with the catalogue and installs.
Only ``urllib`` from the standard library is used; ``file://`` URLs and plain paths are copied the same
way, which is how a zoo published to a local or mounted directory is served.
"""

from __future__ import annotations

import hashlib
import http.client
import queue
import re
import threading
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from transferkit.zoo.errors import DownloadError
from transferkit.zoo.settings import DownloadPolicy

# Statuses worth retrying: the server (or a proxy) is busy or failing, not refusing the request.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "transferkit-zoo/1 (+urllib)"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Retry(Exception):
    """A transient failure: try the same mirror again after a back-off."""


class _NextMirror(Exception):
    """This mirror cannot serve the file (404, wrong size...): go to the next one."""


@dataclass(frozen=True)
class Fetched:
    """What a finished download produced."""

    sha256: str
    size: int
    url: str


def _hash_existing(path: Path, hasher: "hashlib._Hash", chunk: int) -> int:
    done = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            hasher.update(block)
            done += len(block)
    return done


def _progress(total: int | None, initial: int, label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # deferred: only an interactive download draws a bar

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                file=sys.stderr, leave=False, mininterval=0.5)


class _HashWorker:
    """Hash chunks on a second thread while the caller reads and writes the next ones.

    ``hashlib`` releases the GIL while hashing large buffers, as sockets and files do while waiting, so
    hashing overlaps with I/O: on a CPU without SHA instructions sha256 (~200 MB/s) would otherwise add
    its whole cost to the download. Buffers cycle through a small pool, so memory stays bounded.
    """

    def __init__(self, hasher: "hashlib._Hash", chunk_size: int, depth: int = 4):
        self.hasher = hasher
        self.todo: queue.Queue = queue.Queue()
        self.free: queue.Queue = queue.Queue()
        for _ in range(depth):
            self.free.put(bytearray(chunk_size))
        self.thread = threading.Thread(target=self._run, name="zoo-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            buf, n = item
            self.hasher.update(memoryview(buf)[:n])
            self.free.put(buf)

    def finish(self) -> str:
        self.todo.put(None)
        self.thread.join()
        return self.hasher.hexdigest()


def _stream(src: BinaryIO, part: Path, offset: int, expected: int | None, policy: DownloadPolicy,
            bar) -> tuple[str, int]:
    """Append ``src`` to ``part`` from ``offset``, hashing the whole file; returns (sha256, size)."""
    hasher = hashlib.sha256()
    if offset:
        _hash_existing(part, hasher, policy.chunk_size)
    done = offset
    worker = _HashWorker(hasher, policy.chunk_size)
    try:
        with open(part, "ab" if offset else "wb") as out:
            while True:
                buf = worker.free.get()
                try:
                    n = src.readinto(buf)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    raise _Retry(f"connection lost after {done} bytes ({type(e).__name__}: {e})") from e
                if not n:
                    break
                out.write(memoryview(buf)[:n])
                worker.todo.put((buf, n))
                done += n
                if expected is not None and done > expected:  # e.g. chunked reply larger than stated
                    raise _NextMirror(f"the server sent more than the {expected} bytes expected")
                if bar is not None:
                    bar.update(n)
    finally:
        digest = worker.finish()
    if expected is not None and done < expected:
        raise _Retry(f"connection closed after {done} of {expected} bytes")
    return digest, done


def _complete(part: Path, policy: DownloadPolicy, url: str) -> Fetched:
    hasher = hashlib.sha256()
    size = _hash_existing(part, hasher, policy.chunk_size)
    return Fetched(hasher.hexdigest(), size, url)


def _fetch_local(url: str, part: Path, size: int | None, policy: DownloadPolicy, bar_label: str,
                 progress: bool) -> Fetched:
    parsed = urlparse(url)
    source = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url)
    if not source.is_file():
        raise _NextMirror(f"{source} does not exist")
    total = source.stat().st_size
    if size is not None and total != size:
        raise _NextMirror(f"{source} has {total} bytes, the catalogue says {size}")
    offset = part.stat().st_size if part.exists() else 0
    offset = offset if offset <= total else 0
    bar = _progress(total, offset, bar_label, progress)
    try:
        with open(source, "rb") as src:
            src.seek(offset)
            digest, done = _stream(src, part, offset, total, policy, bar)
    finally:
        if bar is not None:
            bar.close()
    return Fetched(digest, done, url)


def _open(url: str, offset: int, policy: DownloadPolicy) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=policy.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416:
            raise
        if e.code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {e.code} {e.reason}") from e
        raise _NextMirror(f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Retry(f"{type(e).__name__}: {reason}") from e


def _fetch_http(url: str, part: Path, size: int | None, policy: DownloadPolicy, label: str,
                progress: bool) -> Fetched:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return _complete(part, policy, url)
    try:
        response = _open(url, offset, policy)
    except urllib.error.HTTPError as e:  # 416: nothing after offset on the server
        if size is None:
            return _complete(part, policy, url)
        part.unlink(missing_ok=True)
        raise _NextMirror(f"the server has fewer than the {size} bytes the catalogue states "
                          f"(Range from {offset} refused)") from e
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 200:  # the server ignored Range: start over
            offset = 0
        elif offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"bad Content-Range {response.headers.get('Content-Range')!r} for offset {offset}")
        total = offset + int(length) if length is not None and length.isdigit() else size
        if size is not None and total is not None and total != size:
            raise _NextMirror(f"the server announces {total} bytes, the catalogue states {size}: the file "
                              "there is truncated or different")
        bar = _progress(total, offset, label, progress)
        try:
            digest, done = _stream(response, part, offset, total, policy, bar)
        finally:
            if bar is not None:
                bar.close()
    return Fetched(digest, done, url)


def fetch(urls: tuple[str, ...] | list[str], part: Path, *, size: int | None = None,
          policy: DownloadPolicy | None = None, progress: bool = True, label: str = "") -> Fetched:
    """Download the first mirror that works into ``part``, resuming what is already there.

    Args:
        urls: mirrors, tried in order; ``http(s)://``, ``file://`` or a local path.
        part: the partial file; kept on failure so that the next call resumes with a Range request.
        size: expected size in bytes when the catalogue states it; a server announcing another size is
            skipped (truncated or replaced file) without downloading it.
        policy: retries, back-off, timeout and chunk size.
        progress: draw a tqdm progress bar on stderr.
        label: text in front of the progress bar.

    Returns:
        The sha256 and size of the complete ``part`` file, computed while streaming.

    Raises:
        DownloadError: every mirror failed; the message lists each attempt.
    """
    policy = policy or DownloadPolicy()
    part.parent.mkdir(parents=True, exist_ok=True)
    attempts: list[str] = []
    for url in urls:
        local = urlparse(url).scheme in ("", "file")
        for attempt in range(policy.retries + 1):
            try:
                if local:
                    return _fetch_local(url, part, size, policy, label, progress)
                return _fetch_http(url, part, size, policy, label, progress)
            except _NextMirror as e:
                attempts.append(f"{url}: {e}")
                break
            except _Retry as e:
                attempts.append(f"{url} (attempt {attempt + 1}): {e}")
                if attempt < policy.retries:
                    time.sleep(policy.sleep_before(attempt))
    kept = f" {part.stat().st_size} bytes are kept in {part} and will be resumed." if part.exists() else ""
    raise DownloadError("download failed from every mirror:\n  " + "\n  ".join(attempts) + kept)
