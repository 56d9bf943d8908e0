"""Stacked backbones (transferkit.backbones.stack): GloVe beside a tiny BERT as one backbone, trained, saved, loaded."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.backbones import stack
from transferkit.errors import ConfigError

from conftest import SENTENCES, TOPIC_PAIRS


def _members(assets):
    return [tk.load_backbone(f"glove:{assets['glove']}"), tk.load_backbone(f"hf:{assets['bert']}")]


@pytest.mark.parametrize("weighted", [False, True])
def test_a_stack_concatenates_its_members_features_and_saves_as_one(assets, tmp_path, weighted):
    glove, bert = _members(assets)
    both = stack([glove, bert], weighted=weighted)
    assert both.feature_dim == glove.feature_dim + bert.feature_dim and both.modality == "text"
    expected = torch.cat([glove.encode(SENTENCES[:3]), bert.encode(SENTENCES[:3])], dim=-1)
    assert torch.allclose(both.encode(SENTENCES[:3]), expected, atol=1e-6)  # equal weights start at 1
    torch.manual_seed(0)
    model = tk.TransferModel(both, tk.heads.Classification(hidden=8))
    tk.Trainer(epochs=2, lr=0.02, batch_size=8, progress=False, loggers=(), adversarial="fgm").fit(
        model, TOPIC_PAIRS[:24])
    if weighted:
        assert not torch.equal(both.encoder.logits.detach(), torch.zeros(2))  # the members' weights learned
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "members" / "1" / "backbone" / "tokenizer.json").is_file()
    loaded = tk.TransferModel.from_pretrained(tmp_path / "m")
    texts = [t for t, _ in TOPIC_PAIRS[45:50]]
    assert torch.allclose(loaded.predict_proba(texts), model.predict_proba(texts), atol=1e-6)
    groups = both.layer_groups()
    names = {id(p) for g in groups for p in g.params}
    assert names == {id(p) for p in both.parameters()}  # every parameter in exactly one group
    assert len(groups) == max(len(glove.layer_groups()), len(bert.layer_groups()))
    assert set(map(id, glove.layer_groups()[-1].params)) <= set(map(id, groups[-1].params))  # aligned at the top


def test_a_stack_refuses_what_it_cannot_hold(assets):
    glove, bert = _members(assets)
    with pytest.raises(ConfigError, match="two backbones or more"):
        stack([glove])
    image = tk.load_backbone("timm:test_efficientnet", weights=None, image_size=32)
    with pytest.raises(ConfigError, match="must read the same inputs"):
        stack([glove, image])
    with pytest.raises(ConfigError):  # tokens of different sizes: a token head has nothing to read
        tk.TransferModel(stack([glove, bert]), tk.heads.TokenClassification(labels=["O", "B-X", "I-X"]))
    with pytest.raises(ConfigError, match="stack:concat .* or stack:weighted"):
        tk.load_backbone("stack:anything", members=[glove, bert])
    with pytest.raises(ConfigError, match="needs members"):
        tk.load_backbone("stack:concat")
