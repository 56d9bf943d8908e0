"""Tiny, random-weight assets made once per test session: a BERT checkpoint and word-vector files.

Every backbone source gets one tiny spec (``TINY_SPECS``) that the conformance tests run over.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
torch.set_num_threads(2)

SENTENCES = [
    "the cat sat on the mat", "the dog sat on the log", "a cat and a dog played",
    "stocks fell as markets closed", "the market rallied and stocks rose", "investors sold stocks today",
    "the striker scored a late goal", "the team won the match", "a goal in the final minute",
] * 10

WORDS = sorted({w for s in SENTENCES for w in s.split()})

# SENTENCES come in runs of three per topic: the labelled pairs several test files train on.
TOPIC_PAIRS = [(s, (["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3)[i % 9]) for i, s in enumerate(SENTENCES)]


def write_labelled_csv(path, rows) -> None:
    """A ``text,label`` CSV of ``(text, label)`` rows, as a user hands finetune."""
    import csv

    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, str]:
    """Paths of tiny assets: word2vec (bin, txt), glove txt, fastText bin, and a tiny BERT directory."""
    from gensim.models import FastText, Word2Vec
    from gensim.models.fasttext import save_facebook_model

    root = tmp_path_factory.mktemp("assets")
    tokens = [s.split() for s in SENTENCES]
    w2v = Word2Vec(tokens, vector_size=16, min_count=1, epochs=5, seed=0, workers=1)
    w2v.wv.save_word2vec_format(str(root / "w2v.bin"), binary=True)
    w2v.wv.save_word2vec_format(str(root / "w2v.txt"), binary=False)
    with open(root / "glove.txt", "w", encoding="utf-8") as f:  # GloVe format: no header line
        for word in w2v.wv.index_to_key:
            f.write(word + " " + " ".join(f"{x:.6f}" for x in w2v.wv[word]) + "\n")
    ft = FastText(tokens, vector_size=16, min_count=1, epochs=5, seed=0, workers=1, bucket=500, min_n=3, max_n=5)
    save_facebook_model(ft, str(root / "ft.bin"))
    return {"word2vec_bin": str(root / "w2v.bin"), "word2vec_txt": str(root / "w2v.txt"),
            "glove": str(root / "glove.txt"), "fasttext": str(root / "ft.bin"), "bert": _tiny_bert(root / "bert"),
            "corpus": _corpus(root / "corpus.txt")}


def _corpus(path) -> str:
    """The test sentences, one per line: the corpus ``scratch:`` backbones train their tokenizer on."""
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return str(path)


def _tiny_bert(path) -> str:
    """A 2-layer BERT with hidden size 32 and a WordPiece vocabulary of the test sentences."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ed", "##ing"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file= here (every word would become [UNK]); vocab= reads the file.
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    assert tokenizer.unk_token_id not in tokenizer("the cats sat")["input_ids"]
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty TRANSFERKIT_HOME for zoo tests, online, with only the built-in catalogue."""
    from transferkit.zoo import catalogue

    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "home"))
    for var in ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFERKIT_ZOO_CATALOGUES"):
        monkeypatch.delenv(var, raising=False)
    catalogue.reset_catalogues()
    yield tmp_path / "home"
    catalogue.reset_catalogues()


@pytest.fixture(scope="session")
def tiny_specs(assets) -> dict[str, tuple[str, dict]]:
    """One tiny (spec, options) per backbone source."""
    return {
        "word2vec": (f"word2vec:{assets['word2vec_bin']}", {}),
        "word2vec-text": (f"word2vec:{assets['word2vec_txt']}", {}),
        "glove": (f"glove:{assets['glove']}", {"pooling": "mean+max"}),
        "fasttext": (f"fasttext:{assets['fasttext']}", {}),
        "hf": (f"hf:{assets['bert']}", {}),
        "timm": ("timm:test_efficientnet", {"weights": None, "image_size": 32}),
        "timm-vit": ("timm:test_vit", {"weights": None}),
        "timm-stage": ("timm:test_efficientnet", {"weights": None, "image_size": 32, "stage": 2}),
        "torchvision": ("torchvision:mobilenet_v3_small", {"weights": None, "image_size": 32}),
        "stack": ("stack:weighted", {"members": [f"glove:{assets['glove']}", f"hf:{assets['bert']}"]}),
        "scratch": ("scratch:bert", {"corpus": assets["corpus"], "vocab_size": 200, "hidden": 32, "layers": 1,
                                     "heads": 2, "max_length": 32}),
    }


def raw_batch(modality: str, n: int = 3) -> list:
    """A few raw inputs of the given modality."""
    if modality == "text":
        return SENTENCES[:n]
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, 40, 48, generator=gen) for _ in range(n)]
