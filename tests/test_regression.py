"""The regression head: targets standardised and restored, metrics equal to scikit-learn's and SciPy's,
a loss that falls, save → load identical, bad targets named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.errors import LabelError
from transferkit.tasks.regression import RegressionMetrics

WORDS = ["cheap", "pricey", "good", "bad", "the", "car", "house", "very"]


def backbone(seed: int = 0):
    vectors = np.random.default_rng(seed).normal(size=(len(WORDS), 8)).astype(np.float32)
    return from_vectors(WORDS, vectors, source="glove", name="tiny")


def priced(n: int, seed: int = 0) -> list[tuple[str, float]]:
    """Texts whose price is 100 per 'pricey' minus 50 per 'cheap', around 1000: learnable from mean pooling."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        k_pricey, k_cheap = rng.integers(0, 4, 2)
        text = " ".join(["the", "car"] + ["pricey"] * int(k_pricey) + ["cheap"] * int(k_cheap)) or "the car"
        rows.append((text, 1000.0 + 100 * k_pricey - 50 * k_cheap))
    return rows


def test_metrics_equal_scikit_learn_and_scipy():
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 2)) * [3.0, 100.0] + [1.0, 500.0]
    p = y + rng.normal(size=y.shape) * [1.0, 40.0]
    metrics = RegressionMetrics(2)
    for lo in range(0, 50, 16):  # streamed in uneven batches
        metrics.update({"targets": torch.tensor(y[lo:lo + 16])},
                       {"predictions": torch.tensor(p[lo:lo + 16]), "loss": torch.tensor(0.0)})
    got = metrics.compute()
    assert got["mae"] == pytest.approx(np.mean([mean_absolute_error(y[:, j], p[:, j]) for j in range(2)]))
    assert got["rmse"] == pytest.approx(np.mean([root_mean_squared_error(y[:, j], p[:, j]) for j in range(2)]))
    assert got["r2"] == pytest.approx(np.mean([r2_score(y[:, j], p[:, j]) for j in range(2)]))
    assert got["spearman"] == pytest.approx(np.mean([spearmanr(y[:, j], p[:, j]).statistic for j in range(2)]))


def test_fit_predict_save_load(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(backbone(), tk.heads.Regression())
    train, val = priced(160), priced(40, seed=1)
    history = tk.Trainer(epochs=15, lr=0.05, head_lr=0.05, batch_size=16, progress=False).fit(
        model.task(), train, val)
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    assert model.head.mean[0] == pytest.approx(np.mean([y for _, y in train]))  # scale from the training data
    texts = [t for t, _ in val]
    predictions = model.predict(texts)
    assert all(isinstance(v, float) for v in predictions)
    truth = np.array([y for _, y in val])
    assert np.mean(np.abs(np.array(predictions) - truth)) < 0.5 * np.mean(np.abs(truth - truth.mean()))
    assert isinstance(model.predict("the car pricey"), float)  # one input, one number
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.mean == model.head.mean and again.head.std == model.head.std
    assert again.predict(texts) == predictions


def test_several_targets_from_a_dataframe():
    pd = pytest.importorskip("pandas")
    rows = priced(64)
    frame = pd.DataFrame({"text": [t for t, _ in rows], "price": [y for _, y in rows],
                          "tax": [y * 0.2 + 3 for _, y in rows]})
    model = tk.TransferModel(backbone(), tk.heads.Regression(["price", "tax"]))
    tk.Trainer(epochs=1, lr=0.01, progress=False).fit(model.task(), frame)
    out = model.predict(frame)
    assert len(out) == 64 and set(out[0]) == {"price", "tax"}
    assert model.head.mean[1] == pytest.approx(frame["tax"].mean())


@pytest.mark.parametrize("data, fragment", [
    ([("the car", 1.0), ("the house", float("nan")), ("very good", "")], r"2 target\(s\).*item 1.*item 2"),
    ([("the car", 1.0), ("the house", "expensive")], r"item 1 \('expensive'\)"),
    ([("the car", 3.0), ("the house", 3.0)], "same value in every training example"),
])
def test_bad_targets_are_named(data, fragment):
    model = tk.TransferModel(backbone(), tk.heads.Regression())
    with pytest.raises(LabelError, match=fragment):
        tk.Trainer(epochs=1, progress=False).fit(model.task(), data)


def test_token_head_on_a_cnn_is_refused_before_training():
    from transferkit.errors import ConfigError

    class Tagger(tk.heads.Regression):
        needs = frozenset({"tokens", "mask"})

    cnn = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    if getattr(cnn, "feature_info", None) is None:
        pytest.fail("backbones describe their features (feature_info) before any forward pass")
    with pytest.raises(ConfigError, match="needs \\['mask', 'tokens'\\]"):
        tk.TransferModel(cnn, Tagger())


def test_cli_finetune_and_predict_numbers(assets, tmp_path, capsys):
    import csv
    import json

    from transferkit.cli import main

    with open(tmp_path / "prices.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "price")] + priced(60))
    out = tmp_path / "m"
    assert main(["finetune", "--task", "regression", "--target-column", "price", "--backbone",
                 f"glove:{assets['glove']}", "--data", str(tmp_path / "prices.csv"), "--output", str(out),
                 "--epochs", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "1 target: price" in printed and "val_rmse=" in printed
    assert json.loads((out / "config.json").read_text())["head"]["type"] == "regression"
    assert main(["predict", "--model", str(out), "the car pricey"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert isinstance(record["prediction"], float) and 500 < record["prediction"] < 1500


def test_cli_evaluate_prints_the_tasks_metrics(assets, tmp_path, capsys):
    import csv
    import json

    from transferkit.cli import main

    with open(tmp_path / "prices.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + priced(40))
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Regression())
    tk.Trainer(epochs=1, progress=False).fit(model, tmp_path / "prices.csv")
    model.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "prices.csv"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"loss", "mae", "rmse", "r2", "spearman"}
    expected = tk.Trainer(progress=False).evaluate(model, tmp_path / "prices.csv")
    assert metrics == pytest.approx(expected)
