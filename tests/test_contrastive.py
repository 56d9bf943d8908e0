"""Contrastive few-shot (SetFit's recipe): bounded pairs, the cosine-similarity loss, the scikit-learn head."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError, DataError
from transferkit.tasks.contrastive import ContrastiveTask, Pairs, fit_head

from conftest import TOPIC_PAIRS

PAIRS = TOPIC_PAIRS


def test_pairs_are_half_positive_half_negative_repeatable_and_new_each_epoch():
    examples = [(f"x{i}", i % 3) for i in range(30)]
    pairs = Pairs(examples, pairs_per_example=4, seed=1)
    assert len(pairs) == 120
    for i in range(len(pairs)):
        a, b, target = pairs[i]
        ya, yb = int(a[1:]) % 3, int(b[1:]) % 3
        assert a == f"x{i // 4}" and target == (1.0 if i % 2 == 0 else 0.0)
        assert (ya == yb) == (target == 1.0) and (a != b or target == 0.0)
    first = [pairs[i] for i in range(len(pairs))]
    assert first == [Pairs(examples, 4, seed=1)[i] for i in range(len(pairs))]
    pairs.set_epoch(1)
    assert [pairs[i] for i in range(len(pairs))] != first


def test_pair_memory_is_linear_on_100k_examples():
    labels = np.random.default_rng(0).integers(0, 10, 100_000)
    examples = [(i, int(y)) for i, y in enumerate(labels)]
    tracemalloc.start()
    pairs = Pairs(examples, pairs_per_example=20)
    for i in range(0, len(pairs), 997):  # 2,006 pairs drawn from all over the 2 million
        pairs[i]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(pairs) == 2_000_000
    # The labels and the per-class index lists: 8 bytes an example, each kept twice (about 1.6 MB); all pairs
    # materialised would take 2 million tuples (over 100 MB), all n² pairs 10 billion.
    assert peak < 8 * 1024 * 1024, peak


def test_the_loss_is_the_squared_error_of_the_cosine_similarity(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification())
    task = ContrastiveTask(model, pairs_per_example=2)
    pairs = task.examples(PAIRS[:18])
    batch = task.collate([pairs[i] for i in range(6)])
    out = task(batch)
    a, b = model.backbone(**batch["a"]).pooled, model.backbone(**batch["b"]).pooled
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert torch.allclose(out["loss"], ((cos - batch["targets"]) ** 2).mean(), atol=1e-6)
    assert model.head.labels == ["animals", "markets", "sport"]


def test_contrastive_tuning_then_the_sklearn_head(assets, tmp_path):
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification())
    task = ContrastiveTask(model, pairs_per_example=4)
    history = tk.Trainer(epochs=3, lr=0.02, batch_size=8, progress=False, loggers=()).fit(task, PAIRS[:45],
                                                                                          PAIRS[45:])
    assert history[-1]["train_loss"] < history[0]["train_loss"] and "val_pair_accuracy" in history[-1]
    estimator = fit_head(model, PAIRS[:45], LogisticRegression(max_iter=1000, C=5.0))
    inputs = [x for x, _ in PAIRS[45:]]
    features = model.backbone.encode(inputs, 64).numpy()
    ids = estimator.predict(features)
    assert model.predict(inputs) == [model.head.labels[i] for i in ids]
    assert np.allclose(model.predict_proba(inputs), estimator.predict_proba(features), atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    assert tk.TransferModel.from_pretrained(tmp_path / "m").predict(inputs) == model.predict(inputs)


def test_a_binary_head_gets_the_same_probabilities(assets):
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    two = [(s, "animals" if y == "animals" else "other") for s, y in PAIRS[:45]]
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification())
    ContrastiveTask(model).examples(two)  # reads the labels
    estimator = fit_head(model, two, LogisticRegression())
    inputs = [x for x, _ in two]
    assert np.allclose(model.predict_proba(inputs), estimator.predict_proba(model.backbone.encode(inputs, 64).numpy()), atol=1e-5)


def test_bad_pairs_and_heads_are_refused(assets):
    from sklearn.neighbors import KNeighborsClassifier

    with pytest.raises(ConfigError, match="even number"):
        Pairs([("a", 0), ("b", 1)], pairs_per_example=3)
    with pytest.raises(DataError, match="at least two classes"):
        Pairs([("a", 0), ("b", 0)])
    with pytest.raises(DataError, match="one example each"):
        Pairs([("a", 0), ("b", 0), ("c", 1)])
    backbone = tk.load_backbone(f"glove:{assets['glove']}")
    with pytest.raises(ConfigError, match="linear Classification head"):
        fit_head(tk.TransferModel(backbone, tk.heads.Classification(hidden=4)), PAIRS[:18])
    with pytest.raises(ConfigError, match="has no coef_"):
        fit_head(tk.TransferModel(backbone, tk.heads.Classification()), PAIRS[:18], KNeighborsClassifier(3))
