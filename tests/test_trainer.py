"""The trainer learns, evaluates with streaming metrics, stops early with the best weights, and repeats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.tasks import ClassificationMetrics

from conftest import SENTENCES

TOPIC = {0: "animals", 1: "animals", 2: "animals", 3: "markets", 4: "markets", 5: "markets",
         6: "sport", 7: "sport", 8: "sport"}
PAIRS = [(s, TOPIC[i % 9]) for i, s in enumerate(SENTENCES)]


def _model(assets, seed=0, **head):
    torch.manual_seed(seed)
    return tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3, **head))


def test_fit_learns_and_names_labels(assets):
    model = _model(assets)
    history = tk.Trainer(epochs=8, lr=0.05, batch_size=8, progress=False).fit(model, PAIRS[:45], PAIRS[45:])
    assert history[-1]["val_accuracy"] == 1.0 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert model.head.labels == ["animals", "markets", "sport"]
    assert model.predict(["stocks fell", "a late goal"]) == ["markets", "sport"]


def test_seed_makes_cpu_runs_repeatable(assets):
    weights = []
    for _ in range(2):
        model = _model(assets, hidden=8, dropout=0.2)
        tk.Trainer(epochs=2, lr=0.01, batch_size=4, seed=7, progress=False).fit(model, PAIRS[:40])
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    other = _model(assets, hidden=8, dropout=0.2)
    tk.Trainer(epochs=2, lr=0.01, batch_size=4, seed=8, progress=False).fit(other, PAIRS[:40])
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in other.parameters()]))


def test_early_stopping_restores_best_weights(assets):
    model = _model(assets)
    seen, states = [], []

    def record(trainer, state):
        seen.append(state["metrics"]["val_loss"])
        states.append({k: v.clone() for k, v in model.state_dict().items()})

    # A huge learning rate makes validation loss bounce, so the best epoch is not the last.
    trainer = tk.Trainer(epochs=6, lr=5.0, batch_size=4, metric="loss", patience=1, progress=False,
                         callbacks={"on_epoch_end": [record]})
    history = trainer.fit(model, PAIRS[:30], PAIRS[30:45])
    best = int(np.argmin(seen))
    assert len(history) == len(seen) <= 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[best][k])
    assert trainer.evaluate(model, PAIRS[30:45])["loss"] == pytest.approx(seen[best], rel=1e-5)


def test_frozen_backbone_is_not_updated(assets):
    model = _model(assets)
    model.backbone.freeze()
    before = model.backbone.encoder.embeddings.weight.clone()
    tk.Trainer(epochs=1, lr=0.1, progress=False).fit(model, PAIRS[:20])
    assert torch.equal(before, model.backbone.encoder.embeddings.weight)


def test_callbacks_fire_in_order(assets):
    events = []
    callbacks = {e: [lambda t, s, e=e: events.append(e)] for e in
                 ("on_train_start", "on_step_end", "on_epoch_end", "on_train_end")}
    tk.Trainer(epochs=2, batch_size=10, progress=False, callbacks=callbacks).fit(_model(assets), PAIRS[:20])
    assert events == ["on_train_start"] + (["on_step_end"] * 2 + ["on_epoch_end"]) * 2 + ["on_train_end"]
    with pytest.raises(ValueError, match="unknown callback events"):
        tk.Trainer(callbacks={"on_batch": []})


def test_streaming_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y, logits = rng.integers(0, 4, 200), rng.normal(size=(200, 4))
    logits[:, 3] -= 5  # class 3 is never predicted
    metrics = ClassificationMetrics(5)  # class 4 never occurs at all
    for i in range(0, 200, 64):
        metrics.update({"labels": torch.tensor(y[i:i + 64])},
                       {"logits": torch.tensor(logits[i:i + 64]), "loss": torch.tensor(0.0)})
    got = metrics.compute()
    pred = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_data_from_csv_jsonl_and_image_folder(assets, tmp_path):
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + PAIRS[:20])
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps({"sentence": s, "topic": y}) + "\n" for s, y in PAIRS[:20])
    a = tk.load_labelled(str(tmp_path / "d.csv"))
    b = tk.load_labelled(str(tmp_path / "d.jsonl"), text_column="sentence", label_column="topic")
    assert a.inputs == b.inputs == [s for s, _ in PAIRS[:20]] and a.labels == b.labels
    for label, value in (("dark", 20), ("light", 230)):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((12, 12, 3), value + i, np.uint8)).save(tmp_path / "img" / label / f"{i}.png")
    images = tk.load_labelled(str(tmp_path / "img"))
    assert len(images) == 8 and sorted(set(images.labels)) == ["dark", "light"]
    torch.manual_seed(0)
    backbone = tk.load_backbone("timm:test_resnet", weights=None, image_size=32).freeze()
    model = tk.TransferModel(backbone, tk.heads.Classification(2))
    history = tk.Trainer(epochs=10, lr=0.05, batch_size=4, progress=False).fit(model, images, images)
    assert history[-1]["val_accuracy"] == 1.0
    assert model.predict([str(tmp_path / "img" / "light" / "0.png")]) == ["light"]


def test_checkpoint_every_writes_every_nth_epoch_and_the_last(assets, tmp_path, monkeypatch):
    from transferkit.trainer import checkpoint

    written = []
    real = checkpoint.save

    def spy(directory, task, optimizer, best_state, state, extra=None):
        written.append(state["epoch"] - 1)  # a checkpoint at an epoch's end names the next epoch
        return real(directory, task, optimizer, best_state, state, extra)

    monkeypatch.setattr(checkpoint, "save", spy)
    tk.Trainer(epochs=7, lr=0.05, batch_size=16, checkpoint_every=3, output_dir=str(tmp_path / "run"),
               loggers=(), progress=False).fit(_model(assets), PAIRS[:20])
    assert written == [3, 6, 7]
    resumed = tk.Trainer(epochs=8, lr=0.05, batch_size=16, output_dir=str(tmp_path / "run"), loggers=(),
                         progress=False).fit(_model(assets), PAIRS[:20], resume=True)
    assert [r["epoch"] for r in resumed] == list(range(1, 9)) and written[-1] == 8
    with pytest.raises(tk.errors.ConfigError, match="checkpoint_every"):
        tk.Trainer(epochs=1, checkpoint_every=0, progress=False).fit(_model(assets), PAIRS[:20])
