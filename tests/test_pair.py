"""The sentence-pair head: cross-encoded on a tiny BERT, bi-encoded on word vectors; a loss that falls,
save → load identical, metrics equal to scikit-learn's, bad rows named, pairs in the hf preprocessor."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import SENTENCES, WORDS

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.errors import ConfigError, DataError, InputError, LabelError
from transferkit.heads.pair import Pair

UNIQUE = list(dict.fromkeys(SENTENCES))  # 9 sentences, 3 topics of 3


def topic_pairs(score: bool = False) -> list[tuple[str, str, object]]:
    """Balanced pairs of test sentences: the 27 of the "same" topic (a sentence with itself included) and
    every other one of the 54 of "different" topics (or a 1/0 score)."""
    same, different = [], []
    for i, j in itertools.product(range(len(UNIQUE)), repeat=2):
        is_same = i // 3 == j // 3
        label = float(is_same) if score else ("same" if is_same else "different")
        (same if is_same else different).append((UNIQUE[i], UNIQUE[j], label))
    return same + different[::2]


def vectors_backbone(seed: int = 0):
    vectors = np.random.default_rng(seed).normal(size=(len(WORDS), 8)).astype(np.float32)
    return from_vectors(WORDS, vectors, source="glove", name="tiny")


def bert(assets):
    return tk.load_backbone(f"hf:{assets['bert']}", pooling="cls")


def trainer(epochs: int, lr: float = 0.01) -> tk.Trainer:
    return tk.Trainer(epochs=epochs, lr=lr, head_lr=lr, batch_size=16, progress=False, seed=0)


# --- the preprocessor ----------------------------------------------------------------------------------

def test_hf_tokenizer_encodes_pairs_and_keeps_single_texts(assets):
    backbone = bert(assets)
    tokenizer = backbone.preprocessor.tokenizer
    got = backbone.preprocess([("the cat sat", "the dog sat on the log"), ("a goal", "the team won")])
    want = tokenizer(["the cat sat", "a goal"], ["the dog sat on the log", "the team won"], padding=True,
                     truncation="longest_first", return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["token_type_ids"], want["token_type_ids"])
    assert got["token_type_ids"][0].tolist().count(1) == 7  # "the dog sat on the log [SEP]"
    ids = got["input_ids"][0].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2
    single = backbone.preprocess(["the cat sat", "a goal"])  # single texts: exactly as before
    plain = tokenizer(["the cat sat", "a goal"], padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert set(single) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(torch.equal(single[k], plain[k]) for k in single)
    assert not single["token_type_ids"].any()


def test_hf_pairs_are_cut_from_the_longer_text(assets):
    backbone = tk.load_backbone(f"hf:{assets['bert']}", max_length=12)
    long = " ".join(["the cat sat on the mat"] * 5)
    out = backbone.preprocess([("a goal", long)])
    assert out["input_ids"].shape[1] == 12
    assert out["token_type_ids"][0].tolist()[:5] == [0, 0, 0, 0, 1]  # [CLS] a goal [SEP] kept whole


@pytest.mark.parametrize("batch, fragment", [
    ([("the cat", "")], "empty text_b"),
    ([("the cat", 3)], "int as its text_b"),
])
def test_hf_bad_pairs_are_named(assets, batch, fragment):
    with pytest.raises(InputError, match=fragment):
        bert(assets).preprocess(batch)


# --- cross-encoder -------------------------------------------------------------------------------------

def test_cross_encoder_learns_topics_and_round_trips(assets, tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(bert(assets), Pair())
    task = model.task()
    assert model.head.mode == "cross" and task.default_metric == "accuracy"
    data = topic_pairs()
    history = trainer(20, lr=5e-3).fit(task, data, data)
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert model.head.labels == ["different", "same"]
    pairs = [(a, b) for a, b, _ in data]
    predictions = model.predict(pairs)
    truth = [y for _, _, y in data]
    assert np.mean([p == t for p, t in zip(predictions, truth)]) > 0.8
    assert model.predict(pairs[0]) == predictions[0]  # one pair, one prediction
    probs = model.head.scores_raw(model, pairs)
    assert probs.shape == (len(pairs), 2) and torch.allclose(probs.sum(-1), torch.ones(len(pairs)))
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.mode == "cross" and again.head.labels == ["different", "same"]
    assert again.predict(pairs) == predictions
    assert torch.equal(again.head.scores_raw(again, pairs), probs)


# --- bi-encoder ----------------------------------------------------------------------------------------

def test_bi_encoder_on_word_vectors_learns_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(vectors_backbone(), Pair(hidden=16))
    task = model.task()
    assert model.head.mode == "bi" and model.head.layers is None  # the classes come from the data
    data = topic_pairs()
    history = trainer(30, lr=0.02).fit(task, data, data)
    assert model.head.layers[1].in_features == 4 * 8  # [u, v, |u-v|, u*v]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    pairs = [(a, b) for a, b, _ in data]
    predictions = model.predict(pairs)
    assert np.mean([p == y for p, (_, _, y) in zip(predictions, data)]) > 0.85
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.mode == "bi" and again.predict(pairs) == predictions


def test_bi_encoder_on_a_transformer_and_its_symmetric_features(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(bert(assets), Pair(["different", "same"], mode="bi"))
    model.task()
    assert model.head.mode == "bi"
    out = model.predict([("the cat sat on the mat", "the dog sat on the log")] * 3)
    assert out == [out[0]] * 3 and out[0] in ("different", "same")
    # the pooled vectors of a batch of B pairs are 2B: every text_a, then every text_b
    inputs = model.preprocess(model.head.encode([("the cat", "a goal"), ("the dog", "the team")]))
    assert model(**inputs)["features"].shape[0] == 4 and model(**inputs)["logits"].shape == (2, 2)


# --- metrics, regression, tables -----------------------------------------------------------------------

def test_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    torch.manual_seed(0)
    model = tk.TransferModel(vectors_backbone(), Pair(["different", "same"]))
    data = topic_pairs()
    trainer(2, lr=0.02).fit(model.task(), data)
    got = trainer(1).evaluate(model, data)
    predictions = model.predict([(a, b) for a, b, _ in data])
    truth = [y for _, _, y in data]
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, predictions))
    assert got["macro_f1"] == pytest.approx(f1_score(truth, predictions, average="macro"))


def test_similarity_score_regression(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(vectors_backbone(), Pair(target="score", hidden=16))
    task = model.task()
    assert task.default_metric == "rmse"
    data = topic_pairs(score=True)
    history = trainer(30, lr=0.02).fit(task, data, data)
    assert history[-1]["val_rmse"] < 0.6 * history[0]["val_rmse"]
    assert model.head.mean == pytest.approx(np.mean([y for _, _, y in data]))
    scores = model.predict([(a, b) for a, b, _ in data])
    assert all(isinstance(s, float) for s in scores)
    assert np.mean([s for s, (_, _, y) in zip(scores, data) if y]) > np.mean([s for s, (_, _, y) in zip(scores, data) if not y]) + 0.3
    model.save_pretrained(tmp_path / "m")
    assert tk.TransferModel.from_pretrained(tmp_path / "m").predict([(a, b) for a, b, _ in data]) == scores


def test_tables_csv_and_named_columns(tmp_path):
    import csv

    pd = pytest.importorskip("pandas")
    rows = topic_pairs()
    frame = pd.DataFrame({"text_a": [a for a, _, _ in rows], "text_b": [b for _, b, _ in rows],
                          "label": [y for _, _, y in rows]})
    model = tk.TransferModel(vectors_backbone(), Pair())
    trainer(1).fit(model.task(), frame)
    assert len(model.predict(frame)) == len(rows)  # the table's text_a/text_b columns
    path = tmp_path / "quora.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("question1", "question2", "is_duplicate")]
                                + [(a, b, int(y == "same")) for a, b, y in rows])
    model = tk.TransferModel(vectors_backbone(), Pair())
    task = model.task(text_a_column="question1", text_b_column="question2", label_column="is_duplicate")
    examples = task.examples(str(path))
    assert examples[0].origin == f"{path} line 2" and model.head.labels == ["0", "1"]  # CSV cells are strings
    trainer(1).fit(task, str(path))
    assert model.head.text_a_column == "question1"
    assert model.predict({"question1": ["the cat sat"], "question2": ["a goal"]})[0] in ("0", "1")
    # three columns, and ((a, b), label) pairs
    columns = ([a for a, _, _ in rows], [b for _, b, _ in rows], [y for _, _, y in rows])
    assert len(tk.TransferModel(vectors_backbone(), Pair()).task().examples(columns)) == len(rows)
    nested = [((a, b), y) for a, b, y in rows]
    assert len(tk.TransferModel(vectors_backbone(), Pair()).task().examples(nested)) == len(rows)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, error, fragment", [
    ([("the cat", "the dog", "same"), ("the cat", " ", "same")], InputError, r"item 1 \(text_b\) \(empty\)"),
    ([("the cat", "the dog", "same"), (None, "the dog", "same")], InputError, r"item 1 \(text_a\) \(missing\)"),
    ([("the cat", "the dog", "same"), ("the cat", "a goal", None), ("a", "b", "")], LabelError,
     r"2 pair\(s\) have a missing or empty label: item 1, item 2"),
    ([("the cat", "the dog", "same"), ("the cat", "a goal", 0.5)], LabelError, r"item 1 \(0.5\)"),
    ([("the cat", "the dog", "same"), ("the cat", "a goal")], DataError, r"item 1 is a tuple"),
    ({"text_a": ["the cat"], "label": ["same"]}, DataError, r"no column 'text_b'"),
    ([], DataError, "empty"),
])
def test_bad_rows_are_named(data, error, fragment):
    model = tk.TransferModel(vectors_backbone(), Pair())
    with pytest.raises(error, match=fragment):
        model.task().examples(data)


def test_bad_scores_and_unknown_labels_are_named():
    model = tk.TransferModel(vectors_backbone(), Pair(target="score"))
    with pytest.raises(LabelError, match=r"item 1 \('high'\)"):
        model.task().examples([("the cat", "the dog", 1.0), ("the cat", "a goal", "high")])
    with pytest.raises(LabelError, match="same value in every training pair"):
        model.task().examples([("the cat", "the dog", 1.0), ("the cat", "a goal", 1.0)])
    model = tk.TransferModel(vectors_backbone(), Pair(["different", "same"]))
    with pytest.raises(LabelError, match=r"\['maybe'\].*item 1"):
        model.task().examples([("the cat", "the dog", "same"), ("the cat", "a goal", "maybe")])


def test_bad_configs_and_predict_inputs(assets):
    with pytest.raises(ConfigError, match="mode='bi'"):
        tk.TransferModel(vectors_backbone(), Pair(mode="cross")).task()
    with pytest.raises(ConfigError, match="mode must be one of"):
        Pair(mode="siamese")
    with pytest.raises(ConfigError, match="not both"):
        Pair(["a", "b"], target="score")
    cnn = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    with pytest.raises(ConfigError, match="compares two texts"):
        tk.TransferModel(cnn, Pair()).task()
    model = tk.TransferModel(vectors_backbone(), Pair(["different", "same"]))
    with pytest.raises(InputError, match="pass \\(text_a, text_b\\)"):
        model.predict("the cat sat")
    with pytest.raises(InputError, match=r"item 1 \(a str"):
        model.predict([("the cat", "the dog"), "the cat"])
    with pytest.raises(InputError, match=r"item 0 \(text_b\) \(empty\)"):
        model.predict([("the cat", "")])
    with pytest.raises(ConfigError, match="no classes yet"):
        tk.TransferModel(vectors_backbone(), Pair()).predict([("the cat", "a dog")])


def test_cli_finetune_predict_pairs(assets, tmp_path, capsys):
    import csv
    import json

    from transferkit.cli import main

    rows = [("the cat sat", "a dog ran", "same"), ("stocks fell", "markets rose", "same"),
            ("the cat sat", "stocks fell", "different"), ("a goal late", "markets rose", "different")] * 6
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text_a", "text_b", "label")] + rows)
    out = tmp_path / "m"
    assert main(["finetune", "--task", "pair", "--backbone", f"glove:{assets['glove']}", "--data",
                 str(tmp_path / "pairs.csv"), "--output", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "text pairs" in capsys.readouterr().out
    assert main(["predict", "--model", str(out), "--data", str(tmp_path / "pairs.csv")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 24 and {r["prediction"] for r in records} <= {"same", "different"}
