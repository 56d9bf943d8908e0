"""Prediction batches texts of similar length together and gives the results back in input order."""

from __future__ import annotations

import torch

import transferkit as tk
from transferkit.backbones.base import length_order, restore_order

from conftest import SENTENCES, raw_batch

TEXTS = [" ".join(SENTENCES[i: i + 1 + (i * 7) % 9]) for i in range(23)]  # lengths from 1 to 9 sentences


def test_length_order_is_longest_first_and_restores():
    order = length_order(TEXTS)
    lengths = [len(TEXTS[i]) for i in order]
    assert lengths == sorted(lengths, reverse=True) and sorted(order) == list(range(len(TEXTS)))
    rows = torch.arange(len(TEXTS)).float()[order]
    assert torch.equal(restore_order(rows, order), torch.arange(len(TEXTS)).float())
    assert length_order(raw_batch("image", 3)) is None  # images are all one size after preprocessing
    assert length_order([("a b", "c"), ("a", "b")]) == [0, 1]  # pairs: both texts count


def test_bucketed_predictions_equal_input_order_predictions(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(num_classes=3))
    plain = model.predict_proba(TEXTS, batch_size=4, by_length=False)
    bucketed = model.predict_proba(TEXTS, batch_size=4)
    torch.testing.assert_close(bucketed, plain, atol=1e-5, rtol=1e-5)
    one_by_one = torch.stack([model.predict_proba(t) for t in TEXTS])
    torch.testing.assert_close(bucketed, one_by_one, atol=1e-5, rtol=1e-5)
    assert model.predict(TEXTS, batch_size=4) == model.predict(TEXTS, batch_size=4, by_length=False)
    assert model.training  # prediction gives back the mode it found


def test_encode_takes_a_batch_size_and_keeps_the_order(assets):
    backbone = tk.load_backbone(f"hf:{assets['bert']}")
    whole = backbone.encode(TEXTS)
    batched = backbone.encode(TEXTS, batch_size=5)
    torch.testing.assert_close(batched, whole, atol=1e-5, rtol=1e-5)
    assert not batched.is_inference()  # usable in autograd afterwards (e.g. as fixed targets)
    images = raw_batch("image", 5)
    vision = tk.load_backbone("timm:test_efficientnet", weights=None, image_size=32)
    torch.testing.assert_close(vision.encode(images, batch_size=2), vision.encode(images), atol=1e-5, rtol=1e-5)


def test_token_predictions_are_bucketed_and_in_input_order(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"),
                             tk.heads.TokenClassification(labels=["O", "B-X", "I-X"]))
    sentences = [t.split() for t in TEXTS]
    batched = model.predict(sentences, batch_size=4)
    assert batched == [model.predict([words])[0] for words in sentences]
    assert [len(tags) for tags in batched] == [len(words) for words in sentences]
