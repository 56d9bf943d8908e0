"""The multi-label head: label sets read from every container, metrics equal to scikit-learn's, thresholds
chosen on validation, a loss that falls, save → load identical, bad rows named."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.data.multilabel import load_label_sets
from transferkit.errors import ConfigError, LabelError
from transferkit.heads import head_from_config
from transferkit.heads.multilabel import MultiLabel
from transferkit.tasks.multilabel import (
    MultiLabelMetrics,
    average_precision,
    best_thresholds,
    tune_thresholds,
)

WORDS = ["the", "a", "cat", "stock", "sat", "rose", "dog", "fell", "today", "big"]
FILLER = ["the", "a", "sat", "rose", "dog", "fell", "today", "big"]


def backbone(seed: int = 0):
    vectors = np.random.default_rng(seed).normal(size=(len(WORDS), 16)).astype(np.float32)
    return from_vectors(WORDS, vectors, source="glove", name="tiny")


def tagged(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """4-word texts: "cat" makes {animal}, "stock" {finance}, both both, neither none (the empty set)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cat, stock = i % 4 in (1, 3), i % 4 in (2, 3)
        words = list(rng.choice(FILLER, 4 - cat - stock)) + ["cat"] * cat + ["stock"] * stock
        rng.shuffle(words)
        rows.append((" ".join(words), ["animal"] * cat + ["finance"] * stock))
    return rows


def truth(rows) -> list[list[str]]:
    return [sorted(labels) for _, labels in rows]


def trained(epochs: int = 25):
    torch.manual_seed(0)
    model = tk.TransferModel(backbone(), MultiLabel())
    history = tk.Trainer(epochs=epochs, lr=0.05, head_lr=0.05, batch_size=16, progress=False).fit(
        model, tagged(96), tagged(32, seed=1))
    return model, history


# -- metrics ----------------------------------------------------------------------------------------

def test_metrics_equal_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(3)
    y = (rng.random((70, 5)) < [0.5, 0.2, 0.05, 0.7, 0.0]).astype(np.float32)  # the last class never occurs
    s = np.clip(0.5 * y + rng.random(y.shape) * 0.6, 0, 1).round(1).astype(np.float32)  # ties in the scores
    thresholds = [0.5, 0.3, 0.6, 0.55, 0.9]  # the last class: no positive, none predicted
    metrics = MultiLabelMetrics(5, thresholds)
    for lo in range(0, 70, 16):  # streamed in uneven batches
        metrics.update({"targets": torch.tensor(y[lo:lo + 16])},
                       {"scores": torch.tensor(s[lo:lo + 16]), "loss": torch.tensor(0.0)})
    got = metrics.compute()
    p = (s.astype(np.float64) >= thresholds).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns of the class without positives
        assert got["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
        assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
        assert got["map"] == pytest.approx(average_precision_score(y, s, average="macro"))
        for c in range(5):
            assert average_precision(y[:, c], s[:, c]) == pytest.approx(average_precision_score(y[:, c], s[:, c]))
    assert got["map"] != pytest.approx(got["macro_f1"])  # the fixture tells them apart
    given = metrics.custom_metric_input()
    assert given[0].shape == given[1].shape == (70, 5)


def test_best_thresholds_maximise_each_class_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(5)
    y = (rng.random((60, 3)) < [0.3, 0.6, 0.0]).astype(np.uint8)
    s = np.clip(0.3 * y + rng.random(y.shape) * 0.5, 0, 1).round(2)
    chosen = best_thresholds(y, s, [0.5, 0.5, 0.42])
    assert chosen[2] == 0.42  # no positives: kept
    for c in range(2):
        best = max(f1_score(y[:, c], s[:, c] >= t) for t in np.unique(s[:, c]))  # every possible cut
        assert f1_score(y[:, c], s[:, c] >= chosen[c]) == pytest.approx(best)
        assert chosen[c] not in set(s[:, c])  # a midpoint between scores, never a score itself


# -- training -----------------------------------------------------------------------------------------

def test_fit_predict_save_load(tmp_path):
    model, history = trained()
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    assert {"val_micro_f1", "val_macro_f1", "val_map"} <= set(history[-1])
    assert model.head.labels == ["animal", "finance"]  # inferred from the training data, sorted
    val = tagged(32, seed=1)
    texts = [t for t, _ in val]
    predictions = model.predict(texts)
    assert predictions == truth(val)
    assert [] in predictions and ["animal", "finance"] in predictions
    assert model.predict("the cat sat today") == ["animal"]  # one input, one set
    proba = model.predict_proba(texts)
    assert proba.shape == (32, 2) and not torch.allclose(proba.sum(1), torch.ones(32))  # sigmoids, not a softmax
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())["head"]
    assert config["type"] == "multilabel" and config["thresholds"] == [0.5, 0.5]
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.predict(texts) == predictions
    assert torch.equal(again.predict_proba(texts), proba)


def test_tuned_thresholds_change_predictions(tmp_path):
    model, _ = trained()
    val = tagged(32, seed=1)
    texts = [t for t, _ in val]
    with torch.no_grad():  # every "animal" score below 0.5, the ranking unchanged
        layer = model.head.layers[-1]
        logits = model.outputs(texts)[0][:, 0]
        layer.bias[0] -= float(logits.max()) + 1.0
    assert all("animal" not in p for p in model.predict(texts))
    before = tk.Trainer(progress=False).evaluate(model, val)
    thresholds = tune_thresholds(model, val)
    assert thresholds[0] < 0.5 and model.head.thresholds == thresholds
    assert model.predict(texts) == truth(val)
    after = tk.Trainer(progress=False).evaluate(model, val)
    assert after["micro_f1"] > before["micro_f1"] and after["map"] == pytest.approx(before["map"])
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.thresholds == thresholds and again.predict(texts) == truth(val)


def test_integer_labels_keep_their_type_and_select_on_map():
    rows = [(t, [{"animal": 3, "finance": 10}[y] for y in ys]) for t, ys in tagged(32)]
    model = tk.TransferModel(backbone(), MultiLabel(hidden=8))
    trainer = tk.Trainer(epochs=1, lr=0.01, progress=False, metric="map")
    trainer.fit(model, rows, rows)
    assert model.head.labels == [3, 10] and model.head.label_type == "int"
    assert trainer.best["metric"] == "map"
    assert all(isinstance(y, int) for p in model.predict([t for t, _ in rows]) for y in p)


def test_tiny_bert_shapes(assets):
    bert = tk.load_backbone(f"hf:{assets['bert']}")
    model = tk.TransferModel(bert, MultiLabel(labels=["animal", "finance", "sport"]))
    rows = [("the cat sat on the mat", ["animal"]), ("stocks fell as markets closed", ["finance"]),
            ("the team won the match", ["sport"]), ("a cat and a dog played", [])] * 4
    history = tk.Trainer(epochs=2, lr=1e-3, batch_size=8, progress=False).fit(model, rows, rows)
    assert len(history) == 2
    assert model.predict_proba([t for t, _ in rows]).shape == (16, 3)
    assert all(set(p) <= {"animal", "finance", "sport"} for p in model.predict([t for t, _ in rows]))


# -- the data format ----------------------------------------------------------------------------------

def test_label_set_formats(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\nthe cat,"[""animal""]"\nthe cat stock,animal|finance\n'
                                    "the dog,[]\n", encoding="utf-8")
    (tmp_path / "b.tsv").write_text("text\tlabel\nthe cat\tanimal ; finance\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "the cat", "label": ["animal", "animal"]}\n'
                                      '{"text": "a stock", "label": "[\\"finance\\"]"}\n'
                                      '{"text": "the dog", "label": 7}\n', encoding="utf-8")
    assert load_label_sets(tmp_path / "a.csv").labels == [["animal"], ["animal", "finance"], []]
    assert load_label_sets(tmp_path / "b.tsv", separator=";").labels == [["animal", "finance"]]
    assert load_label_sets(tmp_path / "b.tsv", separator=None).labels == [["animal ; finance"]]
    assert load_label_sets(tmp_path / "c.jsonl").labels == [["animal"], ["finance"], [7]]
    pairs = load_label_sets([("x", ("a", "b")), ("y", {"c"}), ("z", np.array(["a"])), ("w", [])])
    assert pairs.labels == [["a", "b"], ["c"], ["a"], []]
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"review": ["x", "y"], "tags": [["a"], ["a", "b"]]})
    assert load_label_sets(frame, input_column="review", label_column="tags").labels == [["a"], ["a", "b"]]
    model = tk.TransferModel(backbone(), MultiLabel())
    examples = model.task(separator="|").examples(tmp_path / "a.csv")
    assert model.head.labels == ["animal", "finance"] and [y for _, y in examples] == [(1, 0), (1, 1), (0, 0)]


@pytest.mark.parametrize("content, fragment", [
    ("text,label\nthe cat,animal\nthe dog,\nthe stock,\n", r"2 example\(s\) .*missing.*line 3, .*line 4.*\[\]"),
    ("text,label\nthe cat,animal||finance\n", r"line 2 .*empty name between '\|'"),
    ('text,label\nthe cat,"[""animal"""\n', r"line 2 .*not a JSON list"),
    ('text,label\nthe cat,"[""animal"", 0.5]"\n', r"line 2 .*0\.5.* is not a class name"),
    ("text,label\nthe cat,[]\nthe dog,[]\n", "every label set is empty"),
])
def test_bad_label_sets_are_named(tmp_path, content, fragment):
    (tmp_path / "d.csv").write_text(content, encoding="utf-8")
    model = tk.TransferModel(backbone(), MultiLabel())
    with pytest.raises(LabelError, match=fragment):
        tk.Trainer(epochs=1, progress=False).fit(model, tmp_path / "d.csv")


def test_unknown_labels_in_a_row_are_named():
    model = tk.TransferModel(backbone(), MultiLabel(labels=["animal", "finance"]))
    rows = [("the cat", ["animal"]), ("the dog", ["animal", "pet"]), ("a stock", ["finance", "bond", "pet"])]
    with pytest.raises(LabelError, match=r"\['pet', 'bond'\].*2 example\(s\).*item 1 \(pet\), item 2 \(bond, pet\)"):
        tk.Trainer(epochs=1, progress=False).fit(model, rows[:1], rows)
    with pytest.raises(LabelError, match=r"missing.*: item 0\."):
        load_label_sets([("the cat", None)])


def test_head_config_and_refusals():
    head = head_from_config({"type": "multilabel", "labels": ["b", "a"], "thresholds": 0.3, "in_features": 16})
    assert isinstance(head, MultiLabel) and head.thresholds == [0.3, 0.3] and head.labels == ["b", "a"]
    assert head(torch.zeros(2, 16)).shape == (2, 2)
    assert head.predict(torch.tensor([[0.0, -5.0]])) == [["b"]]
    with pytest.raises(ConfigError, match="one per class"):
        MultiLabel(labels=["a", "b"], thresholds=[0.5])
    with pytest.raises(ConfigError, match="distinct"):
        MultiLabel(labels=["a", "a"])
    with pytest.raises(ConfigError, match="no classes yet"):
        tk.TransferModel(backbone(), MultiLabel()).predict("the cat")


def test_cli_finetune_predict_multilabel(assets, tmp_path, capsys):
    import csv
    import json

    from transferkit.cli import main

    rows = [("the cat sat", "animal"), ("stocks fell", "finance"), ("the cat and stocks", "animal|finance"),
            ("a dog ran", "animal"), ("markets rose", "finance"), ("the dog and the market", "animal|finance")] * 6
    with open(tmp_path / "tags.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + rows)
    out = tmp_path / "m"
    assert main(["finetune", "--task", "multilabel", "--backbone", f"glove:{assets['glove']}", "--data",
                 str(tmp_path / "tags.csv"), "--output", str(out), "--epochs", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 classes, multi-label" in printed and "thresholds tuned" in printed and "val_micro_f1=" in printed
    assert json.loads((out / "config.json").read_text())["head"]["type"] == "multilabel"
    assert main(["predict", "--model", str(out), "--proba", "the cat sat"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert isinstance(record["prediction"], list) and set(record["proba"]) == {"animal", "finance"}
