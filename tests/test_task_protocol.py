"""The Trainer knows only the Task protocol: a regression toy trains, selects on its own metrics in their own
directions, takes custom metrics and resumes exactly; language models select on perplexity; classification's
class weights stay with classification."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.tasks import ClassificationTask, Metrics, Task
from transferkit.tasks.text import MaskedLM
from transferkit.trainer import as_task

from conftest import SENTENCES

X = np.linspace(-1, 1, 16)
TRAIN = [(x, 2 * x + 1) for x in X]
VAL = [(x, 1 - 2 * x) for x in X + 0.05]  # the opposite slope: validation gets worse once the slope is learnt


class RegressionMetrics:
    """Streaming MSE (the loss), MAE and R² from sums: nothing per example is kept."""

    higher_is_better = {"loss": False, "mae": False, "r2": True}

    def __init__(self):
        self.n, self.abs_err, self.sq_err, self.y_sum, self.y_sq = 0, 0.0, 0.0, 0.0, 0.0

    def update(self, batch, outputs):
        y, error = batch["y"], outputs["pred"] - batch["y"]
        self.n += len(y)
        self.abs_err += float(error.abs().sum())
        self.sq_err += float((error ** 2).sum())
        self.y_sum, self.y_sq = self.y_sum + float(y.sum()), self.y_sq + float((y ** 2).sum())

    def compute(self):
        total = self.y_sq - self.y_sum ** 2 / self.n
        return {"loss": self.sq_err / self.n, "mae": self.abs_err / self.n, "r2": 1 - self.sq_err / total}

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)

    def report(self, output_dir):
        path = output_dir / "residuals.json"
        path.write_text(json.dumps(self.compute()), encoding="utf-8")
        return [path]


class Regression(nn.Module):
    """A one-feature linear regression: not a classification in any way the Trainer could lean on."""

    default_metric = "mae"

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def examples(self, data):
        return [(float(x), float(y)) for x, y in data]

    def collate(self, examples):
        return {"x": torch.tensor([[x] for x, _ in examples]), "y": torch.tensor([y for _, y in examples])}

    def forward(self, batch):
        pred = self.linear(batch["x"]).squeeze(-1)
        return {"loss": nn.functional.mse_loss(pred, batch["y"]), "pred": pred}

    def metrics(self):
        return RegressionMetrics()


def _trainer(**options):
    settings = {"epochs": 6, "batch_size": 4, "lr": 0.1, "optimizer": "sgd", "max_grad_norm": None,
                "weight_decay": 0.0, "progress": False, **options}
    return tk.Trainer(**settings)


def _column(history, key):
    return [row[key] for row in history]


def test_the_shipped_tasks_and_the_toy_follow_the_protocol(assets):
    assert isinstance(Regression(), Task) and isinstance(RegressionMetrics(), Metrics)
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    assert isinstance(as_task(model), Task) and as_task(model).default_metric == "accuracy"
    assert MaskedLM(tk.load_backbone(f"hf:{assets['bert']}")).default_metric == "loss"


def test_a_regression_trains_and_selects_on_its_own_minimised_metric():
    task = Regression()
    trainer = _trainer()
    history = trainer.fit(task, TRAIN, VAL)
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
    mae = _column(history, "val_mae")
    assert trainer.best["metric"] == "mae" and trainer.best["higher_is_better"] is False
    assert trainer.best["epoch"] == 1 + int(np.argmin(mae)) != 1 + int(np.argmax(mae))  # maximising would differ
    assert trainer.best["reason"].startswith("lowest val_mae")
    assert trainer.evaluate(task, VAL)["mae"] == pytest.approx(min(mae))  # the best epoch's weights are back


def test_a_chosen_metric_is_selected_in_its_declared_direction():
    trainer = _trainer(metric="r2")
    history = trainer.fit(Regression(), TRAIN, VAL)
    r2 = _column(history, "val_r2")
    assert trainer.best["metric"] == "r2" and trainer.best["higher_is_better"] is True
    assert trainer.best["epoch"] == 1 + int(np.argmax(r2)) != 1 + int(np.argmin(r2))
    # A metric that prefers another epoch than the default's is the one that selects.
    task = Regression()
    slope = _trainer(metrics={"slope": lambda metrics: float(task.linear.weight.detach())}, metric="slope")
    history = slope.fit(task, TRAIN, VAL)
    assert slope.best["epoch"] == 1 + int(np.argmax(_column(history, "val_slope")))
    assert slope.best["epoch"] != 1 + int(np.argmin(_column(history, "val_mae")))


def test_custom_metrics_for_any_task_receive_its_metrics_object():
    seen = []

    def mse(metrics):
        seen.append(type(metrics))
        return metrics.sq_err / metrics.n

    def worst_half(metrics):  # higher is better by default
        return -metrics.abs_err / metrics.n

    trainer = _trainer(metrics={"mse": (mse, "min"), "neg_mae": worst_half}, metric="mse")
    task = Regression()
    history = trainer.fit(task, TRAIN, VAL)
    assert set(seen) == {RegressionMetrics}
    assert _column(history, "val_mse") == pytest.approx(_column(history, "val_loss"))
    assert _column(history, "val_neg_mae") == pytest.approx([-m for m in _column(history, "val_mae")])
    assert trainer.best["metric"] == "mse" and trainer.best["higher_is_better"] is False
    assert trainer.best["epoch"] == 1 + int(np.argmin(_column(history, "val_mse")))
    assert trainer.evaluate(task, VAL)["mse"] == pytest.approx(min(_column(history, "val_mse")))
    maximised = _trainer(metrics={"neg_mae": worst_half}, metric="neg_mae")
    maximised.fit(Regression(), TRAIN, VAL)
    assert maximised.best["higher_is_better"] is True and maximised.best["epoch"] == trainer.best["epoch"]
    with pytest.raises(ConfigError, match="have the names of metrics Regression reports"):
        _trainer(metrics={"mae": mse}).fit(Regression(), TRAIN, VAL)


def test_a_typo_in_the_metric_lists_the_task_metrics():
    with pytest.raises(ConfigError, match=r"'mea' is not one Regression reports: choose one of "
                                          r"\['loss', 'mae', 'r2'\].*Did you mean 'mae'"):
        _trainer(metric="mea").fit(Regression(), TRAIN, VAL)
    with pytest.raises(ConfigError, match="'accuracy' is not one Regression reports"):
        _trainer(metric="accuracy").fit(Regression(), TRAIN)  # a named metric is checked even without val


class Stop(Exception):
    pass


def _run(out, resume=False, stop_at=None):
    def stop(trainer, state):
        if state["step"] == stop_at:
            raise Stop

    task = Regression()
    trainer = _trainer(output_dir=str(out), save_every=1, loggers=("report",), callbacks={"on_step_end": [stop]})
    history = trainer.fit(task, TRAIN, VAL, resume=resume)
    return trainer, task, [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_a_regression_resumes_exactly_and_reports_its_best_epoch(tmp_path):
    full_trainer, full_task, full_history = _run(tmp_path / "full")
    assert full_trainer.best["epoch"] < 4  # the cut below comes after the best epoch
    with pytest.raises(Stop):
        _run(tmp_path / "cut", stop_at=18)  # in epoch 5 (4 steps an epoch)
    trainer, task, history = _run(tmp_path / "cut", resume=True)
    assert history == full_history and trainer.best == full_trainer.best
    assert all(torch.equal(a, b) for a, b in zip(task.state_dict().values(), full_task.state_dict().values()))
    # The best epoch's metrics object came back from the checkpoint and wrote the task's own report.
    report = json.loads((tmp_path / "cut" / "residuals.json").read_text())
    assert report == json.loads((tmp_path / "full" / "residuals.json").read_text())
    best = next(row for row in full_history if row["epoch"] == full_trainer.best["epoch"])
    assert report["mae"] == pytest.approx(best["val_mae"])
    assert (tmp_path / "cut" / "curves.png").exists() and not (tmp_path / "cut" / "confusion.png").exists()


def test_a_language_model_selects_on_perplexity_minimised(assets):
    backbone = tk.load_backbone(f"hf:{assets['bert']}")
    torch.manual_seed(0)
    task = MaskedLM(backbone)
    trainer = tk.Trainer(epochs=3, lr=3e-3, batch_size=8, metric="perplexity", progress=False)
    history = trainer.fit(task, SENTENCES[:40], SENTENCES[40:56])
    perplexity = _column(history, "val_perplexity")
    assert trainer.best["metric"] == "perplexity" and trainer.best["higher_is_better"] is False
    assert trainer.best["epoch"] == 1 + int(np.argmin(perplexity)) != 1 + int(np.argmax(perplexity))
    default = tk.Trainer(epochs=1, lr=3e-3, batch_size=8, progress=False)
    default.fit(task, SENTENCES[:16], SENTENCES[40:48])
    assert default.best["metric"] == "loss"  # a pretext task's default, though it reports accuracy too


def test_class_balanced_lp_ft_needs_a_classification_task():
    with pytest.raises(ConfigError, match="strategy 'lp_ft_balanced' needs a classification task.*Regression"):
        _trainer(strategy="lp_ft_balanced").fit(Regression(), TRAIN)


class _Head(nn.Module):
    def __init__(self, task=None):
        super().__init__()
        self.num_classes, self.labels = 2, None
        if task is not None:
            self.task = lambda model: task


def test_as_task_wraps_a_model_in_the_task_its_head_names():
    task = Regression()
    assert as_task(task) is task
    named = nn.Module()
    named.head = _Head(task)
    assert as_task(named) is task
    plain = nn.Module()
    plain.head = _Head()
    assert isinstance(as_task(plain), ClassificationTask)  # a head that names no task: classification
