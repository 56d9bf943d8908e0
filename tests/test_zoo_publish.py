"""Publishing save_pretrained directories into a team zoo, served from disk or over HTTP."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from zoo_server import ZooServer  # noqa: E402

from transferkit import zoo  # noqa: E402
from transferkit.zoo import catalogue as catalogue_mod  # noqa: E402
from transferkit.zoo.cli import main  # noqa: E402
from transferkit.zoo.schema import validate_entry  # noqa: E402




def saved_model(path: Path, weights: bytes = b"W" * 5000, readme: bool = True) -> Path:
    """A directory shaped like transferkit's save_pretrained output (treated as opaque files)."""
    (path / "tokenizer").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "format": "transferkit", "backbone": {"source": "hf", "name": "tiny", "modality": "text"},
        "head": None, "metrics": {"sst2.accuracy": 0.91}}))
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello world\n")
    (path / "tokenizer" / "tokenizer config.json").write_text("{}")  # a space: URLs must be quoted
    if readme:
        (path / "README.md").write_text("# tiny model\n")
    return path


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and p.name != "zoo-record.json"}


def test_publish_writes_entry_and_files_and_the_zoo_serves_them(home, tmp_path):
    model = saved_model(tmp_path / "model")
    root = tmp_path / "team-zoo"
    entry = zoo.publish(model, root, name="team/bert.sentiment-v1", licence="Apache-2.0", citation="Team 2025")
    data = json.loads((root / "catalogue.json").read_text())
    assert [e["name"] for e in data["model"]] == ["team/bert.sentiment-v1"]
    raw = data["model"][0]
    assert validate_entry(raw) == [] and raw["integrity"] == "sha256" and raw["metrics"] == {"sst2.accuracy": 0.91}
    assert raw["modality"] == "text" and raw["preprocessing"]["assets"] == ["tokenizer/tokenizer config.json",
                                                                            "tokenizer/vocab.txt"]
    assert all(not u.startswith(("/", "file:", "http")) for f in raw["files"] for u in f["urls"])  # relative
    assert files_of(root / "files" / "team" / "bert.sentiment-v1") == files_of(model)
    assert entry.verified and {f.path for f in entry.files} == set(files_of(model))

    assert zoo.add_catalogue(root) == ["team/bert.sentiment-v1"]
    path = zoo.download("team/bert.sentiment-v1", progress=False)
    assert path.is_dir() and files_of(path) == files_of(model)
    assert zoo.backbone_spec("team/bert.sentiment-v1") == (str(path), {})
    assert zoo.verify("team/bert.sentiment-v1")


def test_published_zoo_over_http_then_offline(home, tmp_path, monkeypatch):
    model = saved_model(tmp_path / "model", readme=False)
    root = tmp_path / "team-zoo"
    zoo.publish(model, root, name="team/vit.pets-v2", modality="vision")
    with ZooServer(root=root) as server:
        names = zoo.add_catalogue(server.url("/catalogue.json"))
        assert names == ["team/vit.pets-v2"]
        path = zoo.download("team/vit.pets-v2", progress=False)
        assert "README.md" in files_of(path)  # a model card is generated when the directory has none
        assert "team/vit.pets-v2" in (path / "README.md").read_text()
        assert {f for f in files_of(path)} - {"README.md"} == set(files_of(model))
        assert any("tokenizer%20config.json" in r[0] for r in server.log)
        assert len(server.requests("/catalogue.json")) == 1
    # Later, offline: the remote catalogue comes from the cache and the model too, without a socket.
    catalogue_mod.reset_catalogues()
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network used offline"))
    zoo.add_catalogue(server.url("/catalogue.json"))
    assert zoo.download("team/vit.pets-v2", progress=False) == path


def test_remote_catalogue_never_seen_fails_clearly_offline(home, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    with pytest.raises(zoo.OfflineError, match="is not cached"):
        zoo.add_catalogue("http://127.0.0.1:9/catalogue.json")


def test_publish_refuses_taken_names_unless_overwrite(home, tmp_path):
    root = tmp_path / "zoo"
    zoo.publish(saved_model(tmp_path / "m1"), root, name="team/bert.x")
    with pytest.raises(zoo.PublishError, match="already published"):
        zoo.publish(saved_model(tmp_path / "m2", weights=b"V" * 10), root, name="team/bert.x")
    zoo.publish(saved_model(tmp_path / "m3", weights=b"V" * 10), root, name="team/bert.x", overwrite=True)
    zoo.publish(saved_model(tmp_path / "m4"), root, name="team/bert.y")
    data = json.loads((root / "catalogue.json").read_text())
    assert sorted(e["name"] for e in data["model"]) == ["team/bert.x", "team/bert.y"]
    assert (root / "files" / "team" / "bert.x" / "model.safetensors").read_bytes() == b"V" * 10


@pytest.mark.parametrize("problem", ["no-config", "symlink", "bad-name", "no-modality"])
def test_publish_refuses_bad_input(home, tmp_path, problem):
    model = saved_model(tmp_path / "model")
    name = "team/bert.x"
    if problem == "no-config":
        (model / "config.json").unlink()
    elif problem == "symlink":
        os.symlink("/etc/passwd", model / "passwd")
    elif problem == "bad-name":
        name = "Team Model"
    else:
        (model / "config.json").write_text("{}")
    with pytest.raises(zoo.PublishError):
        zoo.publish(model, tmp_path / "zoo", name=name)
    assert not (tmp_path / "zoo" / "catalogue.json").exists()


def test_cli_publish_then_download(home, tmp_path, capsys):
    model = saved_model(tmp_path / "model")
    root = tmp_path / "zoo"
    assert main(["publish", str(model), "--root", str(root), "--name", "team/bert.cli",
                 "--licence", "MIT", "--metrics", '{"f1": 0.5}']) == 0
    assert "published team/bert.cli" in capsys.readouterr().out
    assert main(["--catalogue", str(root), "download", "team/bert.cli", "--no-progress"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert files_of(path) == files_of(model)
    assert main(["--catalogue", str(root), "verify", "team/bert.cli"]) == 0
    assert main(["--catalogue", str(root), "remove", "team/bert.cli"]) == 0 and not path.exists()


def test_load_backbone_zoo_spec_round_trip(home, tmp_path, assets):
    """A real transferkit backbone: save_pretrained -> publish -> load_backbone("zoo:NAME")."""
    import torch

    import transferkit

    backbone = transferkit.load_backbone(f"glove:{assets['glove']}")
    backbone.save_pretrained(tmp_path / "saved")
    zoo.publish(tmp_path / "saved", tmp_path / "zoo", name="team/glove.tiny")
    zoo.add_catalogue(tmp_path / "zoo")
    loaded = transferkit.load_backbone("zoo:team/glove.tiny")
    batch = ["the cat sat on the mat", "stocks fell"]
    with torch.no_grad():
        a = backbone(**backbone.preprocess(batch))
        b = loaded(**loaded.preprocess(batch))
    assert torch.allclose(a.pooled, b.pooled)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_published_files_follow_the_umask_and_a_republish_leaves_no_staging(home, tmp_path, mask):
    """A shared team root needs group-readable files: mkstemp alone would make catalogue.json 0600."""
    import stat

    root = tmp_path / "zoo"
    previous = os.umask(mask)
    try:
        zoo.publish(saved_model(tmp_path / "m1"), root, name="team/bert.x")
        zoo.publish(saved_model(tmp_path / "m2", weights=b"V" * 10), root, name="team/bert.x", overwrite=True)
    finally:
        os.umask(previous)
    for path in [root, *root.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == want, f"{path.relative_to(root)}: {oct(path.stat().st_mode)}"
    entry = root / "files" / "team" / "bert.x"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["bert.x"]  # no .tmp-/.old-/.staging- left
    assert (entry / "model.safetensors").read_bytes() == b"V" * 10
