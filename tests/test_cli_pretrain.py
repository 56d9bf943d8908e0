"""`transferkit pretrain`: general → domain → task is one command after another."""

from __future__ import annotations

import csv
import json

from transferkit.cli import main

from conftest import SENTENCES

TINY = ["--option", "vocab_size=200", "--option", "hidden=32", "--option", "layers=1", "--option", "heads=2",
        "--option", "max_length=32"]


def test_pretrain_chain_then_finetune(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    general, domain = tmp_path / "general", tmp_path / "domain"
    assert main(["pretrain", "mlm", "--backbone", "scratch:bert", *TINY, "--data", str(corpus),
                 "--output", str(general), "--no-progress"]) == 0
    assert main(["pretrain", "mlm", "--backbone", str(general), "--data", str(corpus), "--output", str(domain),
                 "--task-option", "whole_word=true", "--no-progress"]) == 0
    config = json.loads((domain / "config.json").read_text())
    assert config["metrics"]["pretrain_task"] == "mlm" and config["head"] is None
    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)])
    assert main(["finetune", "--backbone", str(domain), "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "task"), "--epochs", "1", "--no-progress"]) == 0
    assert "saved to" in capsys.readouterr().out


def test_pretrain_causal_lm_from_scratch(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    assert main(["pretrain", "clm", "--backbone", "scratch:gpt2", *TINY, "--data", str(corpus),
                 "--output", str(tmp_path / "gpt"), "--no-progress"]) == 0
    assert (tmp_path / "gpt" / "model.safetensors").is_file()


def test_pretrain_bad_corpus_is_reported(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    code = main(["pretrain", "mlm", "--backbone", "scratch:bert", *TINY, "--data", str(tmp_path / "empty.txt"),
                 "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 1 and "empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pretrain_word_vectors_then_load(tmp_path, capsys):
    import transferkit as tk

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    for task in ("word2vec", "fasttext", "glove"):
        out = tmp_path / f"vectors.{task}"
        assert main(["pretrain", task, "--data", str(corpus), "--output", str(out), "--epochs", "2",
                     "--task-option", "min_count=1", "--task-option", "vector_size=8", "--no-progress"]) == 0
        backbone = tk.load_backbone(f"{task}:{out}")
        assert backbone.feature_dim == 8 and "market" in backbone.preprocessor.vocab


def test_pretrain_refuses_a_used_output_before_training(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code = main(["pretrain", "mlm", "--backbone", "scratch:bert", *TINY, "--data", str(corpus),
                 "--output", str(tmp_path / "notes"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "not a transferkit model" in err and "--overwrite" in err
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]
    (tmp_path / "vectors.bin").write_text("someone's file")
    assert main(["pretrain", "word2vec", "--data", str(corpus), "--output", str(tmp_path / "vectors.bin"),
                 "--no-progress"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "vectors.bin").read_text() == "someone's file"
    assert main(["pretrain", "word2vec", "--data", str(corpus), "--output", str(tmp_path / "vectors.bin"),
                 "--overwrite", "--task-option", "min_count=1", "--task-option", "vector_size=8",
                 "--no-progress"]) == 0
    assert (tmp_path / "vectors.bin").read_bytes() != b"someone's file"


def test_scratch_is_a_registered_backbone_source(tmp_path):
    import pytest
    import torch

    import transferkit as tk
    from transferkit.errors import ConfigError, OptionError, UnknownBackboneError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    sizes = dict(vocab_size=200, hidden=32, layers=1, heads=2, max_length=32)
    torch.manual_seed(0)
    bert = tk.load_backbone("scratch:bert", corpus=str(corpus), **sizes)
    tokenizer = bert.preprocessor.tokenizer
    assert bert.feature_dim == 32 and bert.config["arch"] == {"model_type": "bert", "pooling": "mean"}
    assert len(tokenizer) <= 200 and "market" in tokenizer.get_vocab() and bert.preprocessor.max_length == 32
    bert.eval()
    before = bert.encode(SENTENCES[:3])
    bert.save_pretrained(tmp_path / "bert")  # saved as an hf backbone: tokenizer and config beside the weights
    again = tk.load_backbone(str(tmp_path / "bert")).eval()
    torch.testing.assert_close(again.encode(SENTENCES[:3]), before)
    assert again.preprocessor.tokenizer.tokenize("the market rallied") == tokenizer.tokenize("the market rallied")

    gpt = tk.load_backbone("scratch:gpt2", corpus=corpus, **sizes)
    assert gpt.config["arch"] == {"model_type": "gpt2", "pooling": "last"} and gpt.feature_dim == 32
    assert tk.list_backbones("scratch:*") == ["scratch:bert", "scratch:gpt2"]

    with pytest.raises(OptionError, match="corpus=PATH"):
        tk.load_backbone("scratch:bert", **sizes)
    with pytest.raises(OptionError, match="'hiden'.*Did you mean 'hidden'"):
        tk.load_backbone("scratch:bert", corpus=corpus, hiden=32)
    with pytest.raises(UnknownBackboneError, match="scratch:bert"):
        tk.load_backbone("scratch:bart", corpus=corpus)
    with pytest.raises(ConfigError, match="divisible by heads"):
        tk.load_backbone("scratch:bert", corpus=corpus, hidden=30, heads=4)
    with pytest.raises(ConfigError, match="layers must be a positive whole number"):
        tk.load_backbone("scratch:bert", corpus=corpus, layers=0)


def test_pretrain_refuses_an_unknown_scratch_option_before_training(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    code = main(["pretrain", "mlm", "--backbone", "scratch:bert", "--option", "width=32", "--data", str(corpus),
                 "--output", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "'width'" in err and "hidden" in err and "vocab_size" in err
    assert not (tmp_path / "o").exists()
