"""Downloads against a real HTTP server on 127.0.0.1: resume, retries, checksums, locking, offline, archives."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from zoo_server import REPO_ROOT, ZOO_ONLY_PRELUDE, ZooServer  # noqa: E402

from transferkit import zoo  # noqa: E402
from transferkit.zoo.cache import entry_dir, incoming_dir, read_record  # noqa: E402

FAST = zoo.DownloadPolicy(retries=3, backoff=0.01, max_backoff=0.05, timeout=5, chunk_size=64 * 1024)
PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes, not a multiple of the chunk size


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




@pytest.fixture
def server():
    with ZooServer() as s:
        yield s


def raw_entry(name: str, urls: list[str], data: bytes | None, **overrides) -> dict:
    """A valid catalogue entry for one file; data=None leaves sha256 and size out (unverified)."""
    entry = {"name": name, "modality": "word_vectors", "source": "glove", "description": "test vectors",
             "licence": "CC0-1.0", "citation": "test", "integrity": "sha256" if data is not None else "unverified",
             "preprocessing": {}, "recipe": {"corpus": "test"}, "metrics": {},
             "files": [{"path": "vectors.txt", "urls": urls,
                        **({"sha256": sha(data), "size": len(data)} if data is not None else {"sha256": ""})}]}
    file_overrides = overrides.pop("file", {})
    entry["files"][0].update(file_overrides)
    entry.update(overrides)
    return entry


def add_catalogue(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / f"catalogue-{len(list(tmp_path.glob('catalogue-*')))}.json"
    path.write_text(json.dumps({"schema": 1, "model": list(entries)}))
    zoo.add_catalogue(path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the zoo opened a network connection in offline mode")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_download_verifies_caches_and_never_refetches(home, server, tmp_path):
    add_catalogue(tmp_path, raw_entry("test/vec.ok", [server.add("/v.txt", PAYLOAD)], PAYLOAD))
    path = zoo.download("test/vec.ok", progress=False, policy=FAST)
    assert path == entry_dir("test/vec.ok") / "vectors.txt" and path.read_bytes() == PAYLOAD
    assert read_record(path.parent)["files"]["vectors.txt"]["sha256"] == sha(PAYLOAD)
    assert not incoming_dir("test/vec.ok").exists()  # partial files cleaned up
    assert zoo.download("test/vec.ok", progress=False, policy=FAST) == path
    assert len(server.requests("/v.txt")) == 1
    report = zoo.verify("test/vec.ok")
    assert report and report.checks[0].basis == "catalogue"


def test_resume_after_connection_drops_mid_file(home, server, tmp_path):
    url = server.add("/drop.txt", PAYLOAD, "drop:300000")
    add_catalogue(tmp_path, raw_entry("test/vec.drop", [url], PAYLOAD))
    path = zoo.download("test/vec.drop", progress=False, policy=FAST)
    assert path.read_bytes() == PAYLOAD
    log = server.requests("/drop.txt")
    assert [r[1] for r in log] == ["", "bytes=300000-"] and log[1][3] == 206


def test_partial_file_is_kept_across_failed_calls_and_resumed(home, server, tmp_path):
    url = server.add("/keep.txt", PAYLOAD, "drop:500000")
    add_catalogue(tmp_path, raw_entry("test/vec.keep", [url], PAYLOAD))
    no_retry = zoo.DownloadPolicy(retries=0, timeout=5)
    with pytest.raises(zoo.DownloadError, match="500000 bytes are kept"):
        zoo.download("test/vec.keep", progress=False, policy=no_retry)
    assert (incoming_dir("test/vec.keep") / "vectors.txt.part").stat().st_size == 500000
    assert not entry_dir("test/vec.keep").exists()
    assert zoo.download("test/vec.keep", progress=False, policy=no_retry).read_bytes() == PAYLOAD
    assert server.requests("/keep.txt")[-1][1] == "bytes=500000-"


def test_server_errors_are_retried_with_backoff(home, server, tmp_path):
    url = server.add("/flaky.txt", PAYLOAD, "500", "503", "ok")
    add_catalogue(tmp_path, raw_entry("test/vec.flaky", [url], PAYLOAD))
    start = time.monotonic()
    assert zoo.download("test/vec.flaky", progress=False, policy=FAST).read_bytes() == PAYLOAD
    assert time.monotonic() - start >= 0.01 + 0.02  # two back-off sleeps, doubling
    assert [r[3] for r in server.requests("/flaky.txt")] == [500, 503, 200]


def test_mirrors_are_tried_in_order(home, server, tmp_path):
    good = server.add("/mirror2.txt", PAYLOAD)
    add_catalogue(tmp_path, raw_entry("test/vec.mirror", [server.url("/missing.txt"), good], PAYLOAD))
    assert zoo.download("test/vec.mirror", progress=False, policy=FAST).read_bytes() == PAYLOAD
    assert [r[0] for r in server.log] == ["/missing.txt", "/mirror2.txt"]  # a 404 is not retried


def test_wrong_checksum_is_refused_and_cache_left_untouched(home, server, tmp_path):
    tampered = PAYLOAD[:-4] + b"TAIL"
    url = server.add("/bad.txt", PAYLOAD)
    add_catalogue(tmp_path, raw_entry("test/vec.bad", [url], PAYLOAD))
    installed = zoo.download("test/vec.bad", progress=False, policy=FAST)
    server.add("/bad.txt", tampered)  # the publisher's file changes under us
    with pytest.raises(zoo.ChecksumError) as err:
        zoo.download("test/vec.bad", force=True, progress=False, policy=FAST)
    assert sha(tampered) in str(err.value) and sha(PAYLOAD) in str(err.value)
    assert installed.read_bytes() == PAYLOAD and zoo.verify("test/vec.bad")  # old copy intact
    assert not list(incoming_dir("test/vec.bad").glob("*.part"))  # bad bytes are not kept for resume
    assert not list(installed.parent.parent.glob(".*staging*"))


def test_wrong_checksum_on_first_download_installs_nothing(home, server, tmp_path):
    url = server.add("/bad1.txt", b"x" * len(PAYLOAD))
    add_catalogue(tmp_path, raw_entry("test/vec.bad1", [url], PAYLOAD))
    with pytest.raises(zoo.ChecksumError, match="cache left as it was"):
        zoo.download("test/vec.bad1", progress=False, policy=FAST)
    assert not entry_dir("test/vec.bad1").exists() and not zoo.is_installed("test/vec.bad1")


def test_truncated_file_on_server_is_refused(home, server, tmp_path):
    url = server.add("/short.txt", PAYLOAD[:-1000])
    add_catalogue(tmp_path, raw_entry("test/vec.short", [url], PAYLOAD))
    with pytest.raises(zoo.DownloadError, match="announces 1047580 bytes, the catalogue states 1048580"):
        zoo.download("test/vec.short", progress=False, policy=FAST)
    assert not entry_dir("test/vec.short").exists()
    # Without a size in the catalogue the truncation is caught by the sha256.
    add_catalogue(tmp_path, raw_entry("test/vec.short2", [url], PAYLOAD, file={"size": None}))
    with pytest.raises(zoo.ChecksumError):
        zoo.download("test/vec.short2", progress=False, policy=FAST)
    assert not entry_dir("test/vec.short2").exists()


def test_server_ignoring_range_restarts_from_zero(home, server, tmp_path):
    url = server.add("/norange.txt", PAYLOAD, "drop:100000", "norange")
    add_catalogue(tmp_path, raw_entry("test/vec.norange", [url], PAYLOAD))
    assert zoo.download("test/vec.norange", progress=False, policy=FAST).read_bytes() == PAYLOAD


def test_unverified_entry_needs_trust_and_records_first_use(home, server, tmp_path):
    url = server.add("/tofu.txt", PAYLOAD)
    add_catalogue(tmp_path, raw_entry("test/vec.tofu", [url], None))
    with pytest.raises(zoo.UnverifiedModelError, match="--trust-unverified"):
        zoo.download("test/vec.tofu", progress=False, policy=FAST)
    assert server.log == []  # refused before any byte was fetched
    path = zoo.download("test/vec.tofu", progress=False, policy=FAST, trust_unverified=True)
    meta = read_record(path.parent)["files"]["vectors.txt"]
    assert meta["sha256"] == sha(PAYLOAD) and meta["trusted_on_first_use"] is True
    report = zoo.verify("test/vec.tofu")
    assert report and report.checks[0].basis == "first use"
    path.write_bytes(PAYLOAD[:-1] + b"!")  # tampering after install is caught
    assert not zoo.verify("test/vec.tofu")


def test_verify_detects_tampering_and_remove_cleans_up(home, server, tmp_path):
    add_catalogue(tmp_path, raw_entry("test/vec.rm", [server.add("/rm.txt", PAYLOAD)], PAYLOAD))
    path = zoo.download("test/vec.rm", progress=False, policy=FAST)
    with open(path, "r+b") as f:
        f.write(b"X")
    report = zoo.verify("test/vec.rm")
    assert not report and "BAD vectors.txt" in str(report)
    assert zoo.remove("test/vec.rm") and not entry_dir("test/vec.rm").exists()
    assert not zoo.remove("test/vec.rm")
    assert not zoo.verify("test/vec.rm") and "not installed" in str(zoo.verify("test/vec.rm"))


def test_two_processes_download_the_same_entry_once(home, server, tmp_path):
    url = server.add("/shared.txt", PAYLOAD, "slow:2.0")
    catalogue = add_catalogue(tmp_path, raw_entry("test/vec.shared", [url], PAYLOAD))
    script = ZOO_ONLY_PRELUDE + (
        "import hashlib, time, transferkit.zoo as zoo\n"
        "start = time.monotonic()\n"
        "p = zoo.download('test/vec.shared', progress=False)\n"
        "print(p, hashlib.sha256(p.read_bytes()).hexdigest())\n"
        "print(time.monotonic() - start)\n")
    env = {**os.environ, "TRANSFERKIT_HOME": str(home), "TRANSFERKIT_ZOO_CATALOGUES": str(catalogue)}
    env.pop("HF_HUB_OFFLINE", None)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = {out.splitlines()[0] for out, _ in outputs}
    assert lines == {f"{entry_dir('test/vec.shared') / 'vectors.txt'} {sha(PAYLOAD)}"}
    assert len(server.requests("/shared.txt")) == 1  # one download for two processes
    # Both calls lasted most of the server's 2 s delay: they overlapped, and the second one waited on the
    # lock while the first downloaded, then found the verified file.
    assert all(float(out.splitlines()[1]) > 1.0 for out, _ in outputs), outputs


@pytest.mark.parametrize("switch", ["TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_without_cache_says_what_is_missing(home, server, tmp_path, monkeypatch, no_network, switch):
    url = server.url("/never.txt")
    add_catalogue(tmp_path, raw_entry("test/vec.off", [url], PAYLOAD))
    monkeypatch.setenv(switch, "1")
    with pytest.raises(zoo.OfflineError) as err:
        zoo.download("test/vec.off", progress=False, policy=FAST)
    message = str(err.value)
    assert f"{switch}=1" in message and url in message and "never.txt" in message
    assert str(incoming_dir("test/vec.off") / "vectors.txt") in message and sha(PAYLOAD) in message
    assert server.log == []


def test_offline_with_cache_returns_the_verified_file(home, server, tmp_path, monkeypatch):
    add_catalogue(tmp_path, raw_entry("test/vec.cached", [server.add("/c.txt", PAYLOAD)], PAYLOAD))
    path = zoo.download("test/vec.cached", progress=False, policy=FAST)
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network used offline"))
    assert zoo.download("test/vec.cached", progress=False) == path
    assert zoo.backbone_spec("test/vec.cached") == (f"glove:{path}", {})
    assert len(server.log) == 1


def test_offline_installs_a_file_dropped_in_incoming(home, tmp_path, monkeypatch, no_network):
    add_catalogue(tmp_path, raw_entry("test/vec.manual", ["https://example.invalid/m.txt"], PAYLOAD))
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    incoming_dir("test/vec.manual").mkdir(parents=True)
    (incoming_dir("test/vec.manual") / "vectors.txt").write_bytes(PAYLOAD[:-1] + b"?")
    with pytest.raises(zoo.ChecksumError):  # a wrong manual file is checked like a download
        zoo.download("test/vec.manual", progress=False)
    (incoming_dir("test/vec.manual") / "vectors.txt").write_bytes(PAYLOAD)
    assert zoo.download("test/vec.manual", progress=False).read_bytes() == PAYLOAD


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_member_is_extracted_and_checked(home, server, tmp_path):
    archive = _zip({"glove/a.txt": b"cat 0.1 0.2\n", "glove/b.txt": PAYLOAD})
    url = server.add("/vec.zip", archive)
    add_catalogue(tmp_path, raw_entry("test/vec.zip", [url], archive, file={
        "path": "b.txt", "archive": "zip", "member": "glove/b.txt", "member_sha256": sha(PAYLOAD)}))
    path = zoo.download("test/vec.zip", progress=False, policy=FAST)
    assert path.name == "b.txt" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.txt", "zoo-record.json"]  # archive not kept
    assert read_record(path.parent)["files"]["b.txt"]["archive_sha256"] == sha(archive)
    assert zoo.verify("test/vec.zip")


@pytest.mark.parametrize("kind", ["zip-dotdot", "zip-absolute", "zip-symlink", "tar-dotdot", "tar-symlink"])
def test_archive_member_escaping_its_directory_is_refused(home, server, tmp_path, kind):
    if kind == "zip-symlink":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("ok.txt", b"fine")
            link = zipfile.ZipInfo("link.txt")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, "/etc/passwd")
        archive, fmt = buf.getvalue(), "zip"
    elif kind.startswith("zip"):
        evil = "../../escaped.txt" if kind == "zip-dotdot" else "/tmp/escaped-zoo-test.txt"
        archive, fmt = _zip({"ok.txt": b"fine", evil: b"pwned"}), "zip"
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("ok.txt")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"fine"))
            evil = tarfile.TarInfo("../escaped.txt" if kind == "tar-dotdot" else "link.txt")
            if kind == "tar-symlink":
                evil.type, evil.linkname = tarfile.SYMTYPE, "/etc/passwd"
            else:
                evil.size = 5
            tf.addfile(evil, io.BytesIO(b"pwned"))
        archive, fmt = buf.getvalue(), "tar"
    url = server.add(f"/evil.{fmt}", archive)
    add_catalogue(tmp_path, raw_entry("test/vec.evil", [url], archive,
                                      file={"path": "", "archive": fmt}, layout="directory"))
    with pytest.raises(zoo.UnsafeArchiveError):
        zoo.download("test/vec.evil", progress=False, policy=FAST)
    zoo_root = home / "zoo"
    assert not entry_dir("test/vec.evil").exists()
    assert not any(p.name in ("escaped.txt", "ok.txt") for p in zoo_root.rglob("*"))
    assert not (home / "escaped.txt").exists() and not Path("/tmp/escaped-zoo-test.txt").exists()
    assert not list(incoming_dir("test/vec.evil").glob("*"))  # refused bytes are not kept


def test_whole_archive_unpacks_into_the_entry(home, server, tmp_path):
    archive = _zip({"model/config.json": b"{}", "model/model.safetensors": PAYLOAD})
    url = server.add("/whole.zip", archive)
    add_catalogue(tmp_path, raw_entry("test/vec.whole", [url], archive, file={"path": "", "archive": "zip"},
                                      layout="directory", source="transferkit"))
    path = zoo.download("test/vec.whole", progress=False, policy=FAST)
    assert (path / "model" / "model.safetensors").read_bytes() == PAYLOAD
    assert zoo.verify("test/vec.whole") and zoo.is_installed("test/vec.whole")
    assert zoo.backbone_spec("test/vec.whole") == (str(path), {})
