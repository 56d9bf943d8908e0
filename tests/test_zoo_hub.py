"""Hub entries: what the zoo asks huggingface_hub for, and what it checks in the snapshot.

``huggingface_hub.snapshot_download`` is replaced by a fake that lays files out as the real cache does
(snapshot files linked to blobs named by their sha256), so no test reaches the Hub. What is tested is the
zoo's side of the contract: the pinned revision and allow-list it passes, offline handling, the refusal
of pickles, the weights checksum, re-verification of the cache, and the backbone specs it returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from transferkit import zoo

WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x00" * 64  # stands in for a safetensors file




class FakeHub:
    """Records snapshot_download calls and writes a content-addressed snapshot like huggingface_hub."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.calls: list[dict] = []
        self.files = files or {"config.json": b'{"model_type": "bert"}', "model.safetensors": WEIGHTS}

    def __call__(self, repo_id, *, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False,
                 force_download=False, **kwargs):
        self.calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns,
                           "local_files_only": local_files_only})
        repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / (revision or "f" * 40)
        if local_files_only:
            if not snap.is_dir():
                raise LocalEntryNotFoundError("not in the local cache")
            return str(snap)
        snap.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for name, data in self.files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            if not (snap / name).exists():
                os.symlink(os.path.relpath(blob, snap), snap / name)
        return str(snap)


@pytest.fixture
def fake_hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def hub_catalogue(tmp_path, **hub) -> None:
    raw = {"name": "test/bert.tiny", "modality": "text", "source": "hf", "description": "d", "licence": "l",
           "citation": "c", "integrity": "hub-pinned" if hub.get("revision", "1" * 40) else "unverified",
           "preprocessing": {"tokenizer": "WordPiece"}, "recipe": {"corpus": "test"}, "metrics": {},
           "hub": {"repo_id": "org/tiny-bert", "revision": "1" * 40, "files": ["config.json", "model.safetensors"],
                   **hub}}
    if raw["hub"].pop("source_timm", False):
        raw.update(source="timm", modality="vision", arch="resnet18.a1_in1k")
    path = tmp_path / "hub.json"
    path.write_text(json.dumps({"schema": 1, "model": [raw]}))
    zoo.add_catalogue(path)


def test_hub_entry_is_fetched_at_the_pinned_revision_with_the_allow_list(home, fake_hub):
    snap = zoo.download("bert/large-uncased.google")
    call = fake_hub.calls[-1]
    assert call == {"repo_id": "google-bert/bert-large-uncased", "revision": "6da4b6a26a1877e173fca3225479512db81a5e5b",
                    "allow_patterns": ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                       "vocab.txt"], "local_files_only": False}
    assert snap.name == "6da4b6a26a1877e173fca3225479512db81a5e5b" and str(snap).startswith(str(home / "zoo" / "hub"))
    assert zoo.backbone_spec("bert/large-uncased.google") == (f"hf:{snap}", {})
    assert zoo.is_installed("bert/large-uncased.google")
    report = zoo.verify("bert/large-uncased.google")
    assert report and {c.path for c in report.checks} == {"config.json", "model.safetensors"}


def test_hub_cache_tampering_is_detected(home, fake_hub):
    snap = zoo.download("bert/large-uncased.google")
    blob = (snap / "model.safetensors").resolve()
    blob.write_bytes(WEIGHTS[:-1] + b"\x01")
    assert not zoo.verify("bert/large-uncased.google")


def test_hub_weights_checksum_from_the_catalogue_is_enforced(home, fake_hub):
    with pytest.raises(zoo.ChecksumError, match="68d45e234eb4a928"):  # bert-base's real digest, fake bytes
        zoo.download("bert/base-uncased.google")


def test_hub_snapshot_with_pickles_is_refused(home, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        FakeHub({"config.json": b"{}", "model.safetensors": WEIGHTS, "pytorch_model.bin": b"pickle"}))
    hub_catalogue(tmp_path)
    with pytest.raises(zoo.ChecksumError, match="pickled"):
        zoo.download("test/bert.tiny")
    assert not zoo.is_installed("test/bert.tiny")


def test_hub_snapshot_without_safetensors_is_refused(home, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub({"config.json": b"{}"}))
    hub_catalogue(tmp_path)
    with pytest.raises(zoo.DownloadError, match="only installs safetensors"):
        zoo.download("test/bert.tiny")


@pytest.mark.parametrize("switch", ["TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"])
def test_hub_offline_uses_only_the_local_cache(home, fake_hub, monkeypatch, switch):
    monkeypatch.setenv(switch, "1")
    with pytest.raises(zoo.OfflineError) as err:
        zoo.download("gpt2/small.openai")
    assert fake_hub.calls[-1]["local_files_only"] is True
    message = str(err.value)
    assert "openai-community/gpt2" in message and "607a30d783dfa663caf39e06633721c8d4cfcd7e" in message
    assert "hf download openai-community/gpt2" in message and "model.safetensors" in message
    monkeypatch.delenv(switch)
    snap = zoo.download("bert/large-uncased.google")
    monkeypatch.setenv(switch, "1")
    assert zoo.download("bert/large-uncased.google") == snap
    assert fake_hub.calls[-1]["local_files_only"] is True


def test_timm_entry_gives_a_timm_spec_with_the_safetensors_path(home, fake_hub, tmp_path):
    hub_catalogue(tmp_path, weights_sha256=hashlib.sha256(WEIGHTS).hexdigest(), source_timm=True)
    spec, options = zoo.backbone_spec("test/bert.tiny")
    assert spec == "timm:resnet18.a1_in1k"
    assert Path(options["weights"]).name == "model.safetensors" and Path(options["weights"]).read_bytes() == WEIGHTS


def test_unpinned_hub_entry_needs_trust_then_stays_on_the_first_revision(home, fake_hub, tmp_path):
    hub_catalogue(tmp_path, revision="")
    with pytest.raises(zoo.UnverifiedModelError):
        zoo.download("test/bert.tiny")
    assert fake_hub.calls == []
    snap = zoo.download("test/bert.tiny", trust_unverified=True)
    assert fake_hub.calls[-1]["revision"] is None and snap.name == "f" * 40
    zoo.download("test/bert.tiny")  # no trust needed any more: the recorded revision pins it
    assert fake_hub.calls[-1]["revision"] == "f" * 40


def test_remove_deletes_the_cached_revision(home, fake_hub):
    snap = zoo.download("bert/large-uncased.google")
    assert zoo.remove("bert/large-uncased.google")
    assert not snap.exists() and not zoo.is_installed("bert/large-uncased.google")
