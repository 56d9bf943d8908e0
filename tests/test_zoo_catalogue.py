"""The built-in catalogue's schema, name lookup, the CLI, and that the zoo imports no model code."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from zoo_server import REPO_ROOT, ZOO_ONLY_PRELUDE  # noqa: E402

from transferkit import zoo  # noqa: E402
from transferkit.zoo import catalogue as catalogue_mod  # noqa: E402
from transferkit.zoo.cli import add_parser, main  # noqa: E402
from transferkit.zoo.schema import validate_entry  # noqa: E402

CATALOGUE_FILES = sorted((REPO_ROOT / "transferkit" / "zoo" / "catalogues").glob("*.toml"))
RAW_ENTRIES = [(path.name, raw) for path in CATALOGUE_FILES for raw in tomllib.loads(path.read_text())["model"]]
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "home"))
    for var in ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFERKIT_ZOO_CATALOGUES"):
        monkeypatch.delenv(var, raising=False)
    catalogue_mod.reset_catalogues()
    yield
    catalogue_mod.reset_catalogues()


@pytest.mark.parametrize("raw", [r for _, r in RAW_ENTRIES], ids=[r["name"] for _, r in RAW_ENTRIES])
def test_every_builtin_entry_follows_the_schema(raw):
    assert validate_entry(raw) == []
    # A checksum is either a full sha256 or the entry says explicitly that it relies on something else.
    for f in raw.get("files", []):
        assert SHA256.match(f["sha256"]) or SHA256.match(f.get("member_sha256", "")) \
            or raw["integrity"] == "unverified"
        assert all(u.startswith("https://") for u in f["urls"])
    if "hub" in raw:
        assert raw["integrity"] in ("hub-pinned", "unverified")
        assert re.match(r"^[0-9a-f]{40}$", raw["hub"]["revision"]) or raw["integrity"] == "unverified"
        assert raw["hub"].get("weights_sha256", "") == "" or SHA256.match(raw["hub"]["weights_sha256"])
    for key in ("licence", "citation", "description"):
        assert raw[key].strip()
    assert raw["recipe"] and raw["preprocessing"]


def test_builtin_catalogue_covers_the_promised_models():
    names = zoo.list_models()
    assert len(names) == len(RAW_ENTRIES) == len(set(names))
    for pattern, count in {"glove/*": 3, "word2vec/*": 1, "fasttext/*": 2, "bert/*": 3, "distilbert/*": 1,
                           "roberta/*": 1, "gpt2/*": 1, "biomedbert/*": 1, "finbert/*": 1, "legal-bert/*": 1,
                           "resnet/*": 3, "vit/*": 2, "efficientnet/*": 2}.items():
        assert len(zoo.list_models(pattern)) == count, pattern
    sources = {zoo.info(n).source for n in zoo.list_models("*/*") if zoo.info(n).modality == "vision"}
    assert sources == {"timm", "torchvision"}
    assert all(zoo.info(n).hub is None or not any(p.endswith((".bin", ".pth", ".pt")) for p in zoo.info(n).hub.files)
               for n in names)


@pytest.mark.parametrize("change, problem", [
    ({"name": "BERT base"}, "family/arch.tag"),
    ({"integrity": "sha256"}, "needs a full sha256"),
    ({"files": [{"path": "v.txt", "urls": ["https://x/v"], "sha256": "abc123"}]}, "64 hex"),
    ({"files": [{"path": "../v.txt", "urls": ["https://x/v"], "sha256": ""}]}, "relative path"),
    ({"files": [{"path": "v.txt", "urls": [], "sha256": ""}]}, "non-empty list of URLs"),
    ({"files": [{"path": "v", "urls": ["https://x/v.zip"], "sha256": "", "archive": "zip", "member": "/etc/x"}]},
     "relative path inside the archive"),
    ({"modality": "audio"}, "modality must be one of"),
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"hub": {"repo_id": "a/b", "revision": "main", "files": ["*.bin"]}}, "exactly one"),
])
def test_schema_rejects_bad_entries(change, problem):
    raw = {"name": "test/vec.x", "modality": "word_vectors", "source": "glove", "description": "d",
           "licence": "l", "citation": "c", "integrity": "unverified", "preprocessing": {}, "recipe": {},
           "metrics": {}, "files": [{"path": "v.txt", "urls": ["https://x/v"], "sha256": ""}]}
    raw.update(change)
    problems = validate_entry(raw)
    assert any(problem in p for p in problems), problems


def test_schema_rejects_unpinned_or_pickled_hub_entries_and_false_claims():
    base = {"name": "test/bert.x", "modality": "text", "source": "hf", "description": "d", "licence": "l",
            "citation": "c", "preprocessing": {}, "recipe": {}, "metrics": {}}
    hub = {"repo_id": "org/bert", "revision": "0" * 40, "files": ["config.json", "model.safetensors"]}
    assert validate_entry({**base, "integrity": "hub-pinned", "hub": hub}) == []
    assert any("says \"sha256\" or \"hub-pinned\"" in p or "\"hub-pinned\"" in p
               for p in validate_entry({**base, "integrity": "unverified", "hub": hub}))
    unpinned = {**hub, "revision": ""}
    assert any("40-hex" in p for p in validate_entry({**base, "integrity": "hub-pinned", "hub": unpinned}))
    assert validate_entry({**base, "integrity": "unverified", "hub": unpinned}) == []
    pickled = {**hub, "files": ["config.json", "pytorch_model.bin"]}
    assert any("pickled" in p for p in validate_entry({**base, "integrity": "hub-pinned", "hub": pickled}))


def test_invalid_catalogue_is_refused_with_every_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"schema": 1, "model": [{"name": "x"}, {"name": "test/a.b"}]}))
    with pytest.raises(zoo.CatalogueError) as err:
        zoo.add_catalogue(path)
    assert "'x'" in str(err.value) and "'test/a.b'" in str(err.value)
    assert zoo.list_models("test/*") == []
    path.write_text("{not json")
    with pytest.raises(zoo.CatalogueError, match="not valid JSON"):
        zoo.add_catalogue(path)


def test_duplicate_names_across_catalogues_are_refused(tmp_path):
    raw = tomllib.loads(CATALOGUE_FILES[0].read_text())["model"][0]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"schema": 1, "model": [raw]}))
    with pytest.raises(zoo.CatalogueError, match="defined twice"):
        zoo.add_catalogue(path)
    assert len(zoo.list_models()) == len(RAW_ENTRIES)  # the failed catalogue was not kept


def test_unknown_name_lists_close_matches_and_is_a_key_error():
    with pytest.raises(zoo.UnknownModelError) as err:
        zoo.info("bert/base-uncased")
    assert "bert/base-uncased.google" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, zoo.ZooError)


def test_info_and_list_patterns():
    entry = zoo.info("resnet/resnet50.tv-in1k-v2")
    assert entry.source == "torchvision" and entry.arch == "resnet50.IMAGENET1K_V2" and entry.verified
    assert entry.files[0].sha256.startswith("11ad3fa6") and entry.metrics["imagenet-1k.acc@1"] == 80.858
    assert zoo.list_models("*tv-in1k*") == ["efficientnet/efficientnet-b0.tv-in1k", "resnet/resnet50.tv-in1k-v1",
                                            "resnet/resnet50.tv-in1k-v2", "vit/vit-b-16.tv-in1k"]
    assert not zoo.info("glove/wiki-gigaword-6b.100d").verified


def test_cli_list_info_and_errors(capsys):
    assert main(["list", "glove/*"]) == 0
    out = capsys.readouterr().out
    assert "glove/wiki-gigaword-6b.300d" in out and "unverified" in out and "bert/" not in out
    assert main(["info", "gpt2/small.openai", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["hub"]["revision"] == "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    assert main(["info", "gpt2/nope"]) == 1
    assert "no zoo entry named 'gpt2/nope'" in capsys.readouterr().err
    assert main(["download", "glove/wiki-gigaword-6b.50d", "--no-progress"]) == 1  # unverified: refused
    assert "--trust-unverified" in capsys.readouterr().err


def test_cli_add_parser_plugs_into_a_main_parser(capsys):
    parser = argparse.ArgumentParser(prog="transferkit")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["zoo", "list", "vit/*"])
    assert args.func(args) == 0
    assert "vit/vit-b-16.tv-in1k" in capsys.readouterr().out


def test_cli_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "transferkit.zoo.cli", "list", "gpt2/*"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "gpt2/small.openai" in result.stdout


def test_zoo_imports_no_model_code():
    script = ZOO_ONLY_PRELUDE + (
        "import transferkit.zoo as zoo\n"
        "zoo.list_models(); zoo.info('bert/base-uncased.google')\n"
        "import transferkit.zoo.cli\n"
        "heavy = ['torch', 'transformers', 'timm', 'torchvision', 'gensim', 'huggingface_hub', 'numpy']\n"
        "print([m for m in heavy if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_vision_entries_agree_with_torchvision_and_timm_metadata():
    """Parity with the reference registries: URL, hash prefix, metrics and preprocessing."""
    import timm
    import torchvision.models as tvm

    checked = 0
    for name in zoo.list_models():
        entry = zoo.info(name)
        arch, _, tag = entry.arch.partition(".")
        if entry.source == "torchvision":
            weights = tvm.get_model_weights(arch)[tag]
            transform = weights.transforms()
            assert entry.files[0].urls == (weights.url,)
            prefix = weights.url.rsplit("-", 1)[1].split(".")[0]
            assert entry.files[0].sha256.startswith(prefix)
            metrics = weights.meta["_metrics"]["ImageNet-1K"]
            assert entry.metrics == {"imagenet-1k.acc@1": metrics["acc@1"], "imagenet-1k.acc@5": metrics["acc@5"]}
            assert [entry.preprocessing["resize"]] == transform.resize_size
            assert [entry.preprocessing["crop"]] == transform.crop_size
            assert entry.preprocessing["interpolation"] == transform.interpolation.value
            checked += 1
        elif entry.source == "timm":
            cfg = timm.models.get_pretrained_cfg(entry.arch).to_dict()
            assert entry.hub.repo_id == cfg["hf_hub_id"] and entry.licence.lower() == cfg["license"]
            assert entry.preprocessing["input_size"] == cfg["input_size"][-1]
            assert entry.preprocessing["crop_pct"] == cfg["crop_pct"]
            assert entry.preprocessing["interpolation"] == cfg["interpolation"]
            assert tuple(entry.preprocessing["mean"]) == tuple(cfg["mean"])
            checked += 1
    assert checked == 7


def test_env_catalogues_keep_urls_whole(monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_ZOO_CATALOGUES", "http://127.0.0.1:8765/catalogue.json; /srv/zoo  other.toml")
    assert catalogue_mod.env_catalogues() == ["http://127.0.0.1:8765/catalogue.json", "/srv/zoo", "other.toml"]
