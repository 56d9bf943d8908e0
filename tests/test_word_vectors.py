"""Word-vector backbones read each file format exactly and pool as documented."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors


def _gensim(path, **kw):
    from gensim.models import KeyedVectors

    return KeyedVectors.load_word2vec_format(path, **kw)


@pytest.mark.parametrize("kind", ["word2vec_bin", "word2vec_txt", "glove"])
def test_vectors_match_gensim(assets, kind):
    reference = _gensim(assets["word2vec_bin"], binary=True)
    spec = {"word2vec_bin": "word2vec:", "word2vec_txt": "word2vec:", "glove": "glove:"}[kind] + assets[kind]
    backbone = tk.load_backbone(spec)
    vec = backbone.encode(["market"])[0].numpy()
    np.testing.assert_allclose(vec, reference["market"], atol=1e-5)
    assert backbone.feature_dim == 16 and backbone.modality == "text"


def test_mean_pooling_skips_unknown_words(assets):
    reference = _gensim(assets["word2vec_bin"], binary=True)
    backbone = tk.load_backbone(f"word2vec:{assets['word2vec_bin']}")
    got = backbone.encode(["The cat zzqx sat"])[0].numpy()  # lower-cased; zzqx is unknown
    np.testing.assert_allclose(got, np.mean([reference[w] for w in ("the", "cat", "sat")], 0), atol=1e-5)
    assert backbone.config["preprocess"]["lowercase"] is True


def test_max_and_concatenated_pooling():
    vocab = ["a", "b"]
    vectors = np.array([[1.0, -2.0], [3.0, 0.0]], np.float32)
    mx = from_vectors(vocab, vectors, source="glove", name="t", pooling="max")
    both = from_vectors(vocab, vectors, source="glove", name="t", pooling="mean+max")
    assert mx.encode(["a b"]).tolist() == [[3.0, 0.0]]
    assert both.feature_dim == 4 and both.encode(["a b"]).tolist() == [[2.0, -1.0, 3.0, 0.0]]
    assert both.encode(["only unknown words"]).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_fasttext_out_of_vocabulary_words_use_subwords(assets):
    from gensim.models.fasttext import load_facebook_vectors

    reference = load_facebook_vectors(assets["fasttext"])
    backbone = tk.load_backbone(f"fasttext:{assets['fasttext']}")
    assert "stocks" in reference.key_to_index
    assert "marketing" not in reference.key_to_index and "catnip" not in reference.key_to_index
    for word in ("marketing", "catnip", "stocks"):  # unseen words are built from n-grams
        np.testing.assert_allclose(backbone.encode([word])[0].numpy(), reference[word], atol=1e-5)


def test_loading_needs_no_original_file_after_save(assets, tmp_path):
    copy = tmp_path / "vectors.txt"
    shutil.copy(assets["glove"], copy)
    model = tk.TransferModel(tk.load_backbone(f"glove:{copy}"), tk.heads.Classification(2))
    expected = model.predict_proba(["the cat", "stocks rose"])
    model.save_pretrained(tmp_path / "saved")
    copy.unlink()
    loaded = tk.TransferModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.predict_proba(["the cat", "stocks rose"]), expected)


def test_trainable_false_freezes(assets):
    backbone = tk.load_backbone(f"glove:{assets['glove']}", trainable=False)
    assert backbone.frozen and not any(p.requires_grad for p in backbone.parameters())


def test_binary_format_is_detected(assets):
    from transferkit.backbones.word_vectors import _is_binary_word2vec

    assert _is_binary_word2vec(assets["word2vec_bin"]) and not _is_binary_word2vec(assets["word2vec_txt"])
