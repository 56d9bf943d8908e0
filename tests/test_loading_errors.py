"""Loading a backbone with a bad file, option, tokenizer, pickle or offline: a named error that says what to do.

One table: each case builds its bad input in ``tmp_path`` and returns the call to make; the test checks the
error class and the key parts of its message (issue 9).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import pickle
import shutil
import zipfile

import pytest
import torch

import transferkit as tk
from transferkit.errors import (ConfigError, FileFormatError, OfflineError, OptionError, TokenizerError,
                                TransferkitError, UnknownBackboneError, UnsafeWeightsError, WeightsError)

# --- bad files, written in tmp_path -----------------------------------------------------------------


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _cut(path: str, tmp_path, name: str) -> str:
    data = open(path, "rb").read()
    return _write(tmp_path, name, data[: len(data) // 2])


JUNK = {
    "empty": lambda t, a: _write(t, "empty.txt", b""),
    "random-bytes": lambda t, a: _write(t, "junk.bin", bytes(range(256)) * 20),
    "latin1-text": lambda t, a: _write(t, "latin1.txt", "caf\xe9 0.1 0.2\nthe 0.3 0.4\n".encode("latin1")),
    "csv-text": lambda t, a: _write(t, "data.txt", b"text,label\na fine film,pos\n"),
}
JUNK_FRAGMENTS = {"empty": "it is empty", "random-bytes": "not UTF-8 text", "latin1-text": "re-encoded as UTF-8",
                  "csv-text": "text but not word vectors"}
VECTOR_FILES = {"word2vec": "word2vec_bin", "glove": "glove", "fasttext": "fasttext"}


def _pickle_file(tmp_path) -> str:
    return _write(tmp_path, "vectors.kv", pickle.dumps({"vectors": [1.0, 2.0]}, protocol=4))


def _zip_file(tmp_path, assets) -> str:
    with zipfile.ZipFile(tmp_path / "glove.zip", "w") as z:
        z.write(assets["glove"], "glove.txt")
    return str(tmp_path / "glove.zip")


def _wrong_format(source: str, asset: str):
    return lambda t, a: (lambda: tk.load_backbone(f"{source}:{a[asset]}"))


def _file(source: str, make, **options):
    return lambda t, a: (lambda: tk.load_backbone(f"{source}:{make(t, a)}", **options))


WORD_VECTOR_CASES = [
    ("word2vec-on-glove", _wrong_format("word2vec", "glove"), FileFormatError,
     ("this looks like a GloVe text file (no header)", "use glove:")),
    ("word2vec-on-fasttext-bin", _wrong_format("word2vec", "fasttext"), FileFormatError,
     ("fastText .bin model", "use fasttext:")),
    ("glove-on-word2vec-text", _wrong_format("glove", "word2vec_txt"), FileFormatError,
     ("word2vec text file", "use word2vec:")),
    ("glove-on-word2vec-binary", _wrong_format("glove", "word2vec_bin"), FileFormatError,
     ("word2vec binary file", "use word2vec:")),
    ("glove-on-fasttext-bin", _wrong_format("glove", "fasttext"), FileFormatError, ("use fasttext:",)),
    ("fasttext-on-word2vec-binary", _wrong_format("fasttext", "word2vec_bin"), FileFormatError,
     ("word2vec binary file", "use word2vec:")),
    ("fasttext-on-word2vec-text", _wrong_format("fasttext", "word2vec_txt"), FileFormatError,
     ("word2vec text file", "use word2vec:")),
    ("fasttext-on-glove", _wrong_format("fasttext", "glove"), FileFormatError, ("GloVe text file", "use glove:")),
    *[(f"{source}-on-{junk}", _file(source, make), FileFormatError, (JUNK_FRAGMENTS[junk],))
      for source in VECTOR_FILES for junk, make in JUNK.items()],
    ("word2vec-truncated-binary", _file("word2vec", lambda t, a: _cut(a["word2vec_bin"], t, "w.bin")),
     FileFormatError, ("cannot read it as a word2vec binary file", "truncated")),
    ("word2vec-truncated-text", _file("word2vec", lambda t, a: _cut(a["word2vec_txt"], t, "w.txt")),
     FileFormatError, ("cannot read it as a word2vec text file", "truncated")),
    ("glove-truncated", _file("glove", lambda t, a: _cut(a["glove"], t, "g.txt")),
     FileFormatError, ("cannot read it as a GloVe text file", "truncated")),
    ("fasttext-truncated", _file("fasttext", lambda t, a: _cut(a["fasttext"], t, "f.bin")),
     FileFormatError, ("cannot read it as a Facebook fastText .bin model", "truncated")),
    ("word2vec-header-only", _file("word2vec", lambda t, a: _write(t, "h.txt", b"10 16\n")),
     FileFormatError, ("word2vec header but no vectors",)),
    ("word2vec-binary-flag-on-text", _file("word2vec", lambda t, a: a["word2vec_txt"], binary=True),
     FileFormatError, ("binary=True was given", "word2vec text file")),
    ("glove-gzip-without-suffix",
     _file("glove", lambda t, a: _write(t, "g.txt", gzip.compress(open(a["glove"], "rb").read()))),
     FileFormatError, ("gzip-compressed", ".gz")),
    ("glove-zip-archive", _file("glove", lambda t, a: _zip_file(t, a)), FileFormatError, ("zip archive", "unzip")),
    ("word2vec-pickle", _file("word2vec", lambda t, a: _pickle_file(t)), FileFormatError,
     ("pickle", "never unpickles", "save_word2vec_format")),
]


# --- option names and values ------------------------------------------------------------------------

def _load(spec: str | None = None, asset: str | None = None, **options):
    return lambda t, a: (lambda: tk.load_backbone(spec or f"{asset.split('_')[0]}:{a[asset]}", **options))


def _hf(**options):
    return lambda t, a: (lambda: tk.load_backbone(f"hf:{a['bert']}", **options))


OPTION_CASES = [
    ("timm-option-typo", _load("timm:test_resnet", weights=None, imagesize=32), OptionError,
     ("'imagesize'", "Did you mean 'image_size'?", "weights, image_size, stage", "timm.create_model")),
    ("torchvision-option-typo", _load("torchvision:mobilenet_v3_small", weights=None, imagesize=32), OptionError,
     ("'imagesize'", "Did you mean 'image_size'?", "Valid options: weights, image_size")),
    ("hf-option-typo", _hf(pooler="cls"), OptionError, ("'pooler'", "Did you mean 'pooling'?", "max_length")),
    ("glove-option-typo", _load(asset="glove", polling="max"), OptionError,
     ("'polling'", "Did you mean 'pooling'?", "max_tokens")),
    ("word2vec-option-typo", _load(asset="word2vec_bin", binery=True), OptionError,
     ("'binery'", "Did you mean 'binary'?")),
    ("fasttext-option-typo", _load(asset="fasttext", max_token=5), OptionError,
     ("'max_token'", "Did you mean 'max_tokens'?")),
    ("named-backbone-option-typo", _load("glove:6B.50d", polling="max"), OptionError,
     ("glove:6B.50d", "Did you mean 'pooling'?")),
    ("glove-bad-pooling", _load(asset="glove", pooling="avg"), ConfigError, ("'avg'", "'mean', 'max', 'mean+max'")),
    ("glove-bad-max-tokens", _load(asset="glove", max_tokens=0), ConfigError, ("max_tokens", "got 0")),
    ("hf-bad-pooling", _hf(pooling="avg"), ConfigError, ("'avg'", "'mean', 'cls', 'last'")),
    ("hf-zero-max-length", _hf(max_length=0), ConfigError, ("max_length", "from 1 to 64", "got 0")),
    ("hf-too-long-max-length", _hf(max_length=65), ConfigError, ("from 1 to 64", "got 65")),
    ("timm-stage-out-of-range", _load("timm:test_resnet", weights=None, stage=9), ConfigError,
     ("stages 0..4", "stage=9")),
    ("timm-bad-image-size", _load("timm:test_resnet", weights=None, image_size=0), ConfigError,
     ("image_size must be a positive",)),
]


def _strategy(name, **options):
    from transferkit.trainer.strategies import get_strategy

    return lambda t, a: (lambda: get_strategy(name, **options))


STRATEGY_CASES = [
    ("strategy-typo", _strategy("lpft"), ConfigError, ("'lpft'", "Did you mean 'lp_ft'?", "linear_probe, llrd")),
    ("strategy-option-typo", _strategy("lp_ft", probe_epoch=2), OptionError, ("Did you mean 'probe_epochs'?",)),
    ("strategy-bad-value", _strategy("gradual_unfreeze", every=0), ConfigError, ("every", "got 0")),
]


# --- tokenizers, pickles, offline ---------------------------------------------------------------------

def _saved_without_tokenizer(tmp_path, assets, entry):
    saved = tmp_path / "saved"
    tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(2)).save_pretrained(saved)
    for path in glob.glob(str(saved / "backbone" / "tokenizer*")) + glob.glob(str(saved / "backbone" / "vocab*")):
        os.remove(path)
    return lambda: entry(saved)


def _saved_glove(tmp_path, assets, vocab: list | None):
    saved = tmp_path / "saved-glove"
    tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(2)).save_pretrained(saved)
    path = saved / "backbone" / "vocab.json"
    if vocab is None:
        path.unlink()
    else:
        path.write_text(json.dumps(vocab), encoding="utf-8")
    return lambda: tk.load_backbone(saved)


def _bert_copy(tmp_path, assets, drop=(), name="bert") -> str:
    out = tmp_path / name
    shutil.copytree(assets["bert"], out)
    for pattern in drop:
        for path in glob.glob(str(out / pattern)):
            os.remove(path)
    return str(out)


def _bert_bigger_vocabulary(tmp_path, assets) -> str:
    path = _bert_copy(tmp_path, assets, drop=["tokenizer.json"])
    with open(os.path.join(path, "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("".join(f"extra{i}\n" for i in range(50)))
    return path


def _bert_vocab_json_only(tmp_path, assets) -> str:
    path = _bert_copy(tmp_path, assets, drop=["tokenizer*", "vocab.txt"])
    open(os.path.join(path, "vocab.json"), "w").write('{"[UNK]": 0}')
    return path


def _bert_pickled_weights(tmp_path, assets) -> str:
    from safetensors.torch import load_file

    path = _bert_copy(tmp_path, assets, drop=["model.safetensors"])
    state = load_file(os.path.join(assets["bert"], "model.safetensors"))
    state["training_args"] = argparse.Namespace(lr=1e-3)  # not a tensor: weights_only refuses the file
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    return path


def _pickled_pth(tmp_path, assets) -> str:
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "args": argparse.Namespace(lr=1e-3)}, path)
    return str(path)


def _offline(monkeypatch, var="HF_HUB_OFFLINE"):
    for name in ("HF_HUB_OFFLINE", "TRANSFERKIT_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "1")


def _empty_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch.hub caches, so no weights are found whatever this machine has cached."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))


NOT_CACHED = "transferkit-tests/not-a-cached-model"

OTHER_CASES = [
    ("saved-dir-tokenizer-deleted-load-backbone",
     lambda t, a: _saved_without_tokenizer(t, a, tk.load_backbone), TokenizerError,
     ("saved", "backbone has no tokenizer files", "tokenizer.json", "vocab.txt")),
    ("saved-dir-tokenizer-deleted-from-pretrained",
     lambda t, a: _saved_without_tokenizer(t, a, tk.TransferModel.from_pretrained), TokenizerError,
     ("backbone has no tokenizer files",)),
    ("saved-word-vectors-vocabulary-deleted", lambda t, a: _saved_glove(t, a, None), TokenizerError,
     ("vocab.json is missing",)),
    ("saved-word-vectors-vocabulary-too-short", lambda t, a: _saved_glove(t, a, ["the", "cat"]), TokenizerError,
     ("holds 2 words but the embedding matrix has",)),
    ("hf-dir-without-tokenizer-files",
     lambda t, a: (lambda: tk.load_backbone(f"hf:{_bert_copy(t, a, drop=['tokenizer*', 'vocab.txt'])}")),
     TokenizerError, ("bert has no tokenizer files", "[UNK]")),
    ("hf-dir-vocab-json-without-merges",
     lambda t, a: (lambda: tk.load_backbone(f"hf:{_bert_vocab_json_only(t, a)}")), TokenizerError,
     ("merges.txt",)),
    ("hf-tokenizer-larger-than-embedding",
     lambda t, a: (lambda: tk.load_backbone(f"hf:{_bert_bigger_vocabulary(t, a)}")), TokenizerError,
     ("tokenizer has 89 tokens", "embedding matrix has only 39 rows")),
    ("hf-pickled-pytorch-model-bin",
     lambda t, a: (lambda: tk.load_backbone(f"hf:{_bert_pickled_weights(t, a)}")), UnsafeWeightsError,
     ("pytorch_model.bin", "never unpickles", "safetensors")),
    ("timm-pickled-weights-file",
     lambda t, a: (lambda: tk.load_backbone("timm:test_resnet", weights=_pickled_pth(t, a))), UnsafeWeightsError,
     ("weights.pth", "never unpickles", "safetensors")),
    ("timm-junk-safetensors",
     lambda t, a: (lambda: tk.load_backbone("timm:test_resnet", weights=_write(t, "w.safetensors", b"junk" * 9))),
     WeightsError, ("w.safetensors", "not a readable safetensors file")),
]

# Cases that need the environment: (id, env var, call, error, fragments).
OFFLINE_CASES = [
    ("hf-hub-id-offline", "HF_HUB_OFFLINE", lambda: tk.load_backbone(f"hf:{NOT_CACHED}"), OfflineError,
     ("not in the local Hugging Face cache and offline mode is on", "unset HF_HUB_OFFLINE", "zoo:")),
    ("hf-hub-id-transferkit-offline", "TRANSFERKIT_OFFLINE", lambda: tk.load_backbone(f"hf:{NOT_CACHED}"),
     OfflineError, ("unset TRANSFERKIT_OFFLINE",)),
    ("timm-pretrained-offline", "HF_HUB_OFFLINE", lambda: tk.load_backbone("timm:test_resnet"), OfflineError,
     ("timm:test_resnet", "offline mode is on", "weights=None")),
    ("torchvision-pretrained-offline", "HF_HUB_OFFLINE",
     lambda: tk.load_backbone("torchvision:mobilenet_v3_small"), OfflineError,
     ("torchvision:mobilenet_v3_small", "offline mode is on", "weights=None")),
]

CASES = WORD_VECTOR_CASES + OPTION_CASES + STRATEGY_CASES + OTHER_CASES


def _check(err: pytest.ExceptionInfo, fragments: tuple[str, ...]) -> None:
    message = str(err.value)
    assert isinstance(err.value, TransferkitError)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{missing} not in {message!r}"


@pytest.mark.parametrize("make, error, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_named_error(tmp_path, assets, make, error, fragments):
    call = make(tmp_path, assets)
    with pytest.raises(error) as err:
        call()
    _check(err, fragments)


@pytest.mark.parametrize("var, call, error, fragments", [c[1:] for c in OFFLINE_CASES],
                         ids=[c[0] for c in OFFLINE_CASES])
def test_offline_and_not_cached_is_an_offline_error(tmp_path, monkeypatch, var, call, error, fragments):
    _offline(monkeypatch, var)
    _empty_caches(tmp_path, monkeypatch)
    with pytest.raises(error) as err:
        call()
    _check(err, fragments)
    assert isinstance(err.value, FileNotFoundError) and not isinstance(err.value, UnknownBackboneError)


def test_an_unknown_hub_id_while_online_stays_an_unknown_backbone(monkeypatch):
    import transformers

    for name in ("HF_HUB_OFFLINE", "TRANSFERKIT_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    def not_on_the_hub(*args, **kwargs):
        raise OSError("transferkit-tests/nope is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", not_on_the_hub)
    with pytest.raises(UnknownBackboneError, match="could not load it from the Hugging Face Hub"):
        tk.load_backbone("hf:transferkit-tests/nope")


def test_new_errors_keep_the_builtin_bases():
    from transferkit.trainer.strategies import get_strategy
    from transferkit.zoo.errors import OfflineError as ZooOfflineError, ZooError

    with pytest.raises(ValueError, match="lp_ft"):
        get_strategy("lpft")
    with pytest.raises(TypeError, match="image_size"):
        tk.load_backbone("timm:test_resnet", weights=None, imagesize=32)
    assert issubclass(ZooOfflineError, OfflineError) and issubclass(ZooOfflineError, ZooError)
    assert issubclass(UnsafeWeightsError, WeightsError)


def test_valid_options_still_load(assets):
    assert tk.load_backbone(f"word2vec:{assets['word2vec_bin']}", binary=True, max_tokens=8).feature_dim == 16
    assert tk.load_backbone(f"word2vec:{assets['word2vec_txt']}", binary=False).feature_dim == 16
    timm_backbone = tk.load_backbone("timm:test_resnet", weights=None, image_size=32, drop_rate=0.1)
    assert timm_backbone.config["arch"]["kwargs"] == {"drop_rate": 0.1}


def test_gzipped_word2vec_is_sniffed_decompressed(tmp_path, assets):
    path = _write(tmp_path, "w2v.bin.gz", gzip.compress(open(assets["word2vec_bin"], "rb").read()))
    assert tk.load_backbone(f"word2vec:{path}").feature_dim == 16
    with pytest.raises(FileFormatError, match="use word2vec:"):
        tk.load_backbone(f"glove:{path}")


def test_listing_shows_the_zoo_source_and_every_offline_name(capsys):
    from transferkit.backbones.registry import builtin_backbones, sources
    from transferkit.cli import main

    assert "timm:tf_efficientnet_lite0" in builtin_backbones()
    assert {"glove:6B.50d", "hf:sentence-transformers/all-MiniLM-L6-v2",
            "hf:HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(builtin_backbones())
    assert "transferkit zoo list" in sources()["zoo"].usage
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "zoo:NAME — a model-zoo entry; see `transferkit zoo list`" in out
    assert "timm:tf_efficientnet_lite0" in out
