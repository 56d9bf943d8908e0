"""The prototype head: Classification(prototypes=K), its placement on the training features, its loss and penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.heads.prototypes import PrototypeLayer
from transferkit.tasks import ClassificationTask

from conftest import TOPIC_PAIRS, write_labelled_csv

PAIRS = TOPIC_PAIRS


def test_logits_are_the_log_sum_exp_of_scaled_negative_distances_per_class():
    torch.manual_seed(0)
    layer = PrototypeLayer(5, 3, per_class=2)
    x = torch.randn(4, 5)
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(layer.prototypes, dim=-1).T
    expected = torch.logsumexp((10.0 * (cos - 1)).view(4, 3, 2), -1)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    euclid = PrototypeLayer(5, 3, per_class=1, distance="euclidean")
    d = ((x[:, None, :] - euclid.prototypes[None]) ** 2).sum(-1)
    assert torch.allclose(euclid(x), -d, atol=1e-4)
    assert not euclid.log_scale.requires_grad and layer.log_scale.requires_grad


def test_placement_puts_one_prototype_at_each_class_mean_and_k_at_kmeans_centres():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(10, 4) + 5, torch.randn(10, 4) - 5])
    y = torch.tensor([0] * 10 + [1] * 10)
    layer = PrototypeLayer(4, 2, distance="euclidean")
    layer.initialise(x, y)
    assert torch.allclose(layer.prototypes, torch.stack([x[:10].mean(0), x[10:].mean(0)]))
    assert bool(layer.initialised) and (layer(x).argmax(1) == y).all()  # already the nearest-centroid classifier
    two = PrototypeLayer(1, 1, per_class=2, distance="euclidean")
    two.initialise(torch.tensor([[0.0], [0.1], [10.0], [10.1]]), torch.zeros(4, dtype=torch.long))
    assert sorted(two.prototypes.view(-1).tolist()) == pytest.approx([0.05, 10.05])


def test_the_diversity_penalty_pushes_prototypes_of_different_classes_apart():
    layer = PrototypeLayer(2, 2, margin=0.5)
    with torch.no_grad():
        layer.prototypes.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.1]]))
    penalty = layer.penalty()
    assert penalty.item() == pytest.approx(0.5 - (1 - float(torch.nn.functional.cosine_similarity(
        torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.1]), dim=0))), abs=1e-6)
    penalty.backward()
    assert layer.prototypes.grad is not None and layer.prototypes.grad.abs().sum() > 0
    with torch.no_grad():
        layer.prototypes.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert float(layer.penalty()) == 0.0


def test_a_prototype_head_trains_saves_and_loads(assets, tmp_path):
    torch.manual_seed(0)
    backbone = tk.load_backbone(f"glove:{assets['glove']}")
    model = tk.TransferModel(backbone, tk.heads.Classification(prototypes=2, diversity=0.1))
    task = ClassificationTask(model)
    examples = task.examples(PAIRS[:45])
    task.prepare(examples)  # a nearest-centroid classifier on the untrained features
    layer = model.head.prototype_layer
    placed = layer.prototypes.detach().clone()
    assert bool(layer.initialised)
    history = tk.Trainer(epochs=3, lr=0.02, batch_size=8, progress=False, loggers=()).fit(model, PAIRS[:45], PAIRS[45:])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert not torch.equal(layer.prototypes, placed)  # learned, not placed again by fit
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.config == model.head.config and again.head.config["prototypes"] == 2
    assert bool(again.head.prototype_layer.initialised)
    assert again.predict(["stocks fell", "the cat sat"]) == model.predict(["stocks fell", "the cat sat"])


def test_fit_places_the_prototypes_before_the_first_step(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}").freeze(),
                             tk.heads.Classification(prototypes=1, distance="euclidean"))
    seen = []
    layer_of = lambda: model.head.prototype_layer  # noqa: E731
    tk.Trainer(epochs=1, lr=0.0, head_lr=0.0, batch_size=8, progress=False, loggers=(),
               callbacks={"on_train_start": [lambda t, s: seen.append(layer_of().prototypes.detach().clone())]}
               ).fit(model, PAIRS[:45])
    task = ClassificationTask(model)
    examples = task.examples(PAIRS[:45])
    feats = torch.stack([model(**model.preprocess([x]))["features"][0] for x, _ in examples]).detach()
    labels = np.array([y for _, y in examples])
    means = torch.stack([feats[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(seen[0], means, atol=1e-5)


def test_bad_prototype_settings_are_refused():
    with pytest.raises(ConfigError, match="distance must be one of"):
        PrototypeLayer(3, 2, distance="manhattan")
    with pytest.raises(ConfigError, match="prototypes per class must be 1 or more"):
        PrototypeLayer(3, 2, per_class=0)


def test_finetune_prototypes_saves_a_prototype_head(assets, tmp_path):
    import json

    from transferkit.cli import main

    write_labelled_csv(tmp_path / "train.csv", PAIRS[:54])
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "m"), "--epochs", "2", "--prototypes", "2", "--no-progress"]) == 0
    head = json.loads((tmp_path / "m" / "config.json").read_text())["head"]
    assert head["prototypes"] == 2 and head["distance"] == "cosine"
    assert tk.TransferModel.from_pretrained(tmp_path / "m").predict(["stocks fell"])
