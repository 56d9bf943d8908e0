"""Zoo download throughput over loopback HTTP (sha256 in the same pass) against plain copies of the bytes.

    .venv/bin/python benchmarks/zoo_download.py            # 200 MB, 3 alternating rounds
    .venv/bin/python benchmarks/zoo_download.py --mb 500 --rounds 5

A file of random bytes is made in a temporary directory and served by tests/zoo_server.py (sendfile) from
a separate process on 127.0.0.1. Each round runs, one after the other:

* ``zoo fetch``: transferkit.zoo.fetch.fetch - HTTP GET, write to a .part file, sha256 while streaming;
* ``plain copy``: read the source file and write the bytes, 1 MiB at a time (no HTTP, no hashing);
* ``plain HTTP``: urllib GET + shutil.copyfileobj (what a naive downloader does, no hashing);
* ``cp (kernel copy)``: shutil.copyfile, which copies inside the kernel (copy_file_range/sendfile);
* ``copy + sha256 (1 pass)``: the plain copy loop with sha256 of each block, no HTTP;
* ``sha256 only (no write)``: read and hash, the ceiling for anything that verifies while it downloads.

The file is in the page cache for every run, so the figures measure CPU and memory-copy overhead. The
target is zoo fetch >= 0.9x plain copy. On a CPU without SHA instructions sha256 itself runs at about
200 MB/s, far below a memory copy, and no single-digest downloader can reach that target; the ratios to
``copy + sha256`` and ``sha256 only`` show what the downloader itself costs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transferkit.zoo.fetch import fetch  # noqa: E402
from transferkit.zoo.settings import DownloadPolicy  # noqa: E402

SERVER = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from zoo_server import ZooServer
with ZooServer(root=Path({root!r}), sendfile=True, max_requests=10**6) as s:
    print(s.url('/'), flush=True)
    sys.stdin.read()
"""


def _make_file(path: Path, megabytes: int) -> str:
    hasher = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(megabytes):
            chunk = block[i % 7:] + block[:i % 7]  # different bytes per MiB, cheap to make
            f.write(chunk)
            hasher.update(chunk)
    return hasher.hexdigest()


def _zoo(url: str, dest: Path, size: int, digest: str) -> None:
    result = fetch((url,), dest, size=size, policy=DownloadPolicy(retries=0), progress=False)
    assert result.sha256 == digest and result.size == size


def _plain_copy(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)


def _copy_and_hash(src: Path, dest: Path, digest: str) -> None:
    hasher = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)
            hasher.update(block)
    assert hasher.hexdigest() == digest


def _hash_only(src: Path, digest: str) -> None:
    hasher = hashlib.sha256()
    with open(src, "rb") as fin:
        while block := fin.read(1 << 20):
            hasher.update(block)
    assert hasher.hexdigest() == digest


def _plain_http(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as fout:
        shutil.copyfileobj(response, fout, 1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MiB (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "srv").mkdir()
        src = tmp / "srv" / "blob.bin"
        digest = _make_file(src, args.mb)
        size = src.stat().st_size
        code = SERVER.format(tests=str(REPO / "tests"), root=str(tmp / "srv"))
        server = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            url = server.stdout.readline().strip() + "blob.bin"
            sides = {
                "zoo fetch (HTTP + sha256)": lambda d: _zoo(url, d, size, digest),
                "plain copy (read+write)": lambda d: _plain_copy(src, d),
                "plain HTTP (no hash)": lambda d: _plain_http(url, d),
                "cp (kernel copy)": lambda d: shutil.copyfile(src, d),
                "copy + sha256 (1 pass)": lambda d: _copy_and_hash(src, d, digest),
                "sha256 only (no write)": lambda d: (_hash_only(src, digest), d.touch()),
            }
            times: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(args.rounds):
                for label, run in sides.items():
                    dest = tmp / "out.bin"
                    dest.unlink(missing_ok=True)
                    start = time.perf_counter()
                    run(dest)
                    times[label].append(time.perf_counter() - start)
                    dest.unlink()
        finally:
            server.stdin.close()
            server.wait(timeout=10)
    mb = size / 1e6
    print(f"{args.mb} MiB file ({size} bytes), {args.rounds} rounds, loopback 127.0.0.1, "
          f"Python {sys.version.split()[0]}")
    print(f"{'':28}{'median MB/s':>12}{'best MB/s':>12}   runs (s)")
    for label, values in times.items():
        print(f"{label:28}{mb / statistics.median(values):12.0f}{mb / min(values):12.0f}   "
              + " ".join(f"{v:.3f}" for v in values))
    zoo_rate = mb / statistics.median(times["zoo fetch (HTTP + sha256)"])
    for label in ("plain copy (read+write)", "plain HTTP (no hash)", "cp (kernel copy)", "copy + sha256 (1 pass)",
                  "sha256 only (no write)"):
        print(f"ratio zoo / {label:24} {zoo_rate / (mb / statistics.median(times[label])):.2f}x")


if __name__ == "__main__":
    main()
