"""Prediction ensembles of fine-tuned classifiers (transferkit.model.Ensemble), across backbone kinds."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.model import Ensemble

from conftest import TOPIC_PAIRS


def _trained(spec: str, seed: int):
    torch.manual_seed(seed)
    model = tk.TransferModel(tk.load_backbone(spec), tk.heads.Classification(hidden=8))
    tk.Trainer(epochs=2, lr=0.02, batch_size=8, seed=seed, progress=False, loggers=()).fit(model, TOPIC_PAIRS[:30])
    return model


def test_an_ensemble_of_word_vectors_and_a_transformer_averages_their_probabilities(assets):
    glove, bert = _trained(f"glove:{assets['glove']}", 0), _trained(f"hf:{assets['bert']}", 1)
    texts = [t for t, _ in TOPIC_PAIRS[45:50]]
    ensemble = Ensemble([glove, bert], weights=[3, 1])
    expected = 0.75 * glove.predict_proba(texts) + 0.25 * bert.predict_proba(texts)
    assert torch.allclose(ensemble.predict_proba(texts), expected)
    assert ensemble.predict(texts) == [ensemble.labels[i] for i in expected.argmax(-1)]
    assert ensemble.predict(texts[0]) == ensemble.predict(texts)[0]  # one input, one prediction
    assert torch.allclose(Ensemble([glove, bert]).predict_proba(texts).sum(-1), torch.ones(5))


def test_an_ensemble_refuses_members_that_do_not_fit(assets):
    glove = _trained(f"glove:{assets['glove']}", 0)
    other = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(labels=["a", "b"]))
    with pytest.raises(ConfigError, match="same classes in the same order"):
        Ensemble([glove, other])
    with pytest.raises(ConfigError, match="at least one"):
        Ensemble([])
    with pytest.raises(ConfigError, match="one non-negative weight per model"):
        Ensemble([glove], weights=[1, 2])
    regression = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Regression())
    with pytest.raises(ConfigError, match="not a trained single-label classifier"):
        Ensemble([regression])
