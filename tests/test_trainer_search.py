"""Hyper-parameter search: grid and seeded random points, the best validation score wins, bad spaces are refused."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pytest
from torch import nn

import transferkit as tk
from transferkit.trainer.report import describe_best
from transferkit.trainer.search import SearchResult, best_epoch, search

from conftest import SENTENCES

TOPIC = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
PAIRS = [(s, TOPIC[i % 9]) for i, s in enumerate(SENTENCES)]


@dataclass
class FakeTrainer(tk.Trainer):
    """Returns a made-up history instead of training: accuracy peaks at lr=1e-2 and rises over epochs."""

    pretext: bool = False  # report loss only, like a pretext task
    calls: list = field(default_factory=list)  # shared by every dataclasses.replace copy

    def fit(self, model, train, val=None, **kwargs):
        self.calls.append({"lr": self.lr, "batch_size": self.batch_size, "output_dir": self.output_dir})
        accuracy = 1 - abs(math.log10(self.lr) + 2) / 10 - self.batch_size / 1000
        history = []
        for epoch in range(1, self.epochs + 1):
            record = {"epoch": epoch, "train_loss": 1.0, "val_loss": 2 - accuracy * epoch / self.epochs}
            if not self.pretext:
                record["val_accuracy"] = accuracy * epoch / self.epochs
            history.append(record)
        # Say which epoch is kept, as the real Trainer does (its task's default metric unless one is named).
        metric = self.metric or ("loss" if self.pretext else "accuracy")
        higher = metric != "loss"
        kept = (max if higher else min)(history, key=lambda r: r[f"val_{metric}"])  # the earliest on ties
        self.best = describe_best(history, kept["epoch"], metric, higher)
        return history


def _fake_search(space, **kwargs) -> SearchResult:
    trainer = kwargs.pop("trainer", FakeTrainer())
    return search(lambda: nn.Linear(1, 1), "train", "val", space, trainer=trainer, **kwargs)


def test_grid_runs_every_point_and_keeps_the_best():
    space = {"lr": [1e-3, 1e-2, 1e-1], "batch_size": [4, 8]}
    result = _fake_search(space)
    assert len(result.trials) == 6
    assert [tuple(t["params"].values()) for t in result.trials] == list(itertools.product(*space.values()))
    assert result.metric == "accuracy"
    assert result.best_score == max(t["score"] for t in result.trials)
    assert result.best_params == {"lr": 1e-2, "batch_size": 4}
    assert all(t["epoch"] == 3 and t["seconds"] >= 0 for t in result.trials)
    assert isinstance(result.best_model, nn.Linear)
    table = result.table().splitlines()
    assert len(table) == 8 and table[0] == "| rank | lr | batch_size | val_accuracy | epoch | seconds |"
    assert table[2].startswith("| 1 | 0.01 | 4 | ")


def test_random_trials_are_distinct_and_seeded():
    space = {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "batch_size": [2, 4, 8, 16, 32]}

    def points(seed, trials=5):
        return [tuple(t["params"].values()) for t in _fake_search(space, trials=trials, seed=seed).trials]

    first = points(0)
    assert len(first) == len(set(first)) == 5 and set(first) <= set(itertools.product(*space.values()))
    assert points(0) == first and points(1) != first
    assert sorted(points(0, trials=100)) == sorted(itertools.product(*space.values()))  # capped at the grid
    with pytest.raises(ValueError, match="at least 1"):
        _fake_search(space, trials=0)


def test_loss_is_minimised_and_tasks_without_the_metric_select_on_loss():
    space = {"lr": [1e-3, 1e-2, 1e-1]}
    result = _fake_search(space, trainer=FakeTrainer(metric="loss"))
    assert result.metric == "loss" and result.best_score == min(t["score"] for t in result.trials)
    assert result.best_params == {"lr": 1e-2}
    pretext = _fake_search(space, trainer=FakeTrainer(pretext=True))
    assert pretext.metric == "loss" and pretext.best_score == result.best_score
    assert best_epoch([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.5}], "accuracy") == \
        ("accuracy", 0.5, 1)  # ties keep the earlier epoch


def test_each_trial_writes_under_its_own_output_dir(tmp_path):
    trainer = FakeTrainer(output_dir=str(tmp_path))
    _fake_search({"lr": [1e-3, 1e-2]}, trainer=trainer)
    assert [c["output_dir"] for c in trainer.calls] == [str(tmp_path / "trial-000"), str(tmp_path / "trial-001")]


def test_bad_spaces_are_refused():
    with pytest.raises(ValueError, match=r"unknown Trainer fields \['learning_rate'\]; fields are .*'lr'"):
        _fake_search({"learning_rate": [1e-3]})
    with pytest.raises(ValueError, match="'metric' cannot be searched"):
        _fake_search({"metric": ["accuracy", "loss"]})
    with pytest.raises(ValueError, match="non-empty list"):
        _fake_search({"lr": []})
    with pytest.raises(ValueError, match="non-empty list"):
        _fake_search({"strategy": "full"})
    with pytest.raises(ValueError, match="validation data"):
        search(lambda: nn.Linear(1, 1), "train", None, {"lr": [1e-3]}, trainer=FakeTrainer())


def test_search_trains_real_models(assets):
    def build():
        return tk.TransferModel(tk.load_backbone("word2vec:" + assets["word2vec_bin"]), tk.heads.Classification(3))

    trainer = tk.Trainer(epochs=2, batch_size=15, metric="loss", progress=False)
    result = search(build, PAIRS[:45], PAIRS[45:63], {"lr": [0.05, 0.05, 0.5]}, trainer=trainer)
    scores = [t["score"] for t in result.trials]
    assert scores[0] == scores[1]  # every trial starts from the same seeded weights
    assert result.best_score == min(scores)
    # The trainer restored the best epoch's weights, so the kept model scores what the search reported.
    val_loss = trainer.evaluate(result.best_model, PAIRS[45:63])["loss"]
    assert val_loss == pytest.approx(result.best_score, rel=1e-5)
    assert isinstance(result.best_model, tk.TransferModel) and result.best_model.head.labels == TOPIC[::3]
