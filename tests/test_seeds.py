"""The multi-seed protocol: Trainer(seeds=[...]) trains once per seed and reports mean, std and a 95% interval;
compare() runs methods over the same seeds and reports paired differences."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.trainer import Spread, compare
from transferkit.trainer.seeds import _fresh_copy

from conftest import TOPIC_PAIRS, write_labelled_csv

PAIRS = TOPIC_PAIRS
TRAIN, VAL = PAIRS[:45], PAIRS[45:63]


def _model(assets):
    torch.manual_seed(0)
    return tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3, hidden=8))


def _trainer(**kw):
    return tk.Trainer(**{"epochs": 3, "lr": 0.02, "batch_size": 8, "progress": False, **kw})


def test_spread_is_mean_sample_std_and_the_t_interval():
    from scipy import stats

    values = [0.81, 0.86, 0.84, 0.9, 0.79]
    s = Spread.of(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert s.mean == pytest.approx(np.mean(values)) and s.std == pytest.approx(np.std(values, ddof=1))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high)) and s.values == tuple(values)
    one = Spread.of([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and str(one) == "0.5000"


def test_each_seed_is_the_single_run_of_that_seed_and_the_best_is_kept(assets):
    model = _model(assets)
    trainer = _trainer(seeds=[0, 1, 2])
    history = trainer.fit(model, TRAIN, VAL)
    result = trainer.seeds_result
    assert result.seeds == [0, 1, 2] and len(result.runs) == 3
    for run in result.runs:  # the same as one Trainer(seed=s) run of a copy with a head initialised from s
        fresh = _model(assets)
        tk.seed_everything(run["seed"])
        alone = _fresh_copy(fresh, run["seed"])
        single = _trainer(seed=run["seed"]).fit(alone, TRAIN, VAL)
        assert [r["val_loss"] for r in single] == [r["val_loss"] for r in run["history"]]
    losses = [[r["val_loss"] for r in run["history"]] for run in result.runs]
    assert losses[0] != losses[1]  # the seeds differ
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(r["seeds"] == 3 for r in history)
    assert history[0]["val_loss"] == pytest.approx(np.mean([x[0] for x in losses]))
    assert history[0]["val_loss_std"] == pytest.approx(np.std([x[0] for x in losses], ddof=1))
    assert history[0]["val_loss_low"] < history[0]["val_loss"] < history[0]["val_loss_high"]
    summary = result.summary["val_accuracy"]
    assert summary.values == tuple(run["metrics"]["val_accuracy"] for run in result.runs)
    assert "| val_accuracy |" in result.table() and "seed 2" in result.table()
    best = result.best_seed
    assert trainer.best["seed"] == best and list(result.models) == [best] and result.best_model is model
    assert tk.Trainer(progress=False).evaluate(model, VAL)["loss"] == pytest.approx(
        next(r for r in result.runs if r["seed"] == best)["metrics"]["val_loss"], rel=1e-5)


def test_keep_all_and_a_builder_that_varies_the_backbone(assets):
    built = []

    def build():
        model = tk.TransferModel(tk.load_backbone("timm:test_resnet", weights=None, image_size=32),
                                 tk.heads.Classification(2))
        built.append(next(model.backbone.parameters()).detach().clone())
        return model

    gen = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, 32, 32, generator=gen), i % 2) for i in range(8)]
    trainer = tk.Trainer(epochs=1, lr=1e-3, batch_size=4, progress=False, seeds=[3, 4], keep="all")
    trainer.fit(build, images)
    result = trainer.seeds_result
    assert sorted(result.models) == [3, 4] and len(built) == 2 and not torch.equal(built[0], built[1])
    assert result.metric == "train_loss"  # no validation data: seeds ranked by training loss


def test_run_directory_curves_and_resume_skip_the_seeds_done(assets, tmp_path):
    out = tmp_path / "run"
    _trainer(seeds=[0, 1], output_dir=str(out), loggers=("csv", "report")).fit(_model(assets), TRAIN, VAL)
    assert (out / "curves.png").is_file() and (out / "seed-0" / "curves.png").is_file()
    assert (out / "seed-0" / "metrics.csv").is_file() and (out / "seed-1" / "kept.safetensors").is_file()
    rows = list(csv.DictReader(open(out / "seeds.csv")))
    assert len(rows) == 3 and {"val_accuracy", "val_accuracy_std", "val_accuracy_low", "seeds"} <= set(rows[0])
    assert [r["seed"] for r in json.loads((out / "seeds.json").read_text())["runs"]] == [0, 1]
    started = []
    again = _trainer(seeds=[0, 1, 2], output_dir=str(out), loggers=("csv",),
                     callbacks={"on_train_start": [lambda t, s: started.append(t.seed)]})
    history = again.fit(_model(assets), TRAIN, VAL, resume=True)
    assert started == [2] and len(again.seeds_result.runs) == 3 and history[0]["seeds"] == 3


def test_compare_is_paired_over_the_same_seeds(assets):
    def build():  # called after each seed is set: the heads differ by seed
        return tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3, hidden=8))

    methods = {"slow": (build, _trainer(lr=1e-4)), "fast": (build, _trainer())}
    result = compare(methods, TRAIN, VAL, test=PAIRS[63:], seeds=[0, 1, 2], metric="loss")
    assert result.metric == "loss" and not result.higher_is_better and result.seeds == [0, 1, 2]
    assert len(result.scores["slow"]) == len(result.scores["fast"]) == 3
    paired = result.paired("slow", "fast")
    diffs = np.subtract(result.scores["fast"], result.scores["slow"])
    assert paired["difference"].mean == pytest.approx(diffs.mean())
    from scipy import stats

    assert paired["p_value"] == pytest.approx(stats.ttest_rel(result.scores["fast"], result.scores["slow"]).pvalue)
    assert paired["wins"] == int((diffs < 0).sum())  # lower loss wins
    table = result.table()
    assert "| fast |" in table and "wins/ties/losses" in table and "difference vs slow" in table
    on_val = compare(methods, TRAIN, VAL, seeds=[0, 1])
    assert on_val.metric == "accuracy" and on_val.higher_is_better


@pytest.mark.parametrize("seeds", [[], [0, 0], ["a"], [True]])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(ConfigError, match="seeds"):
        tk.Trainer(seeds=seeds)
    with pytest.raises(ConfigError, match="keep"):
        tk.Trainer(seeds=[0], keep="worst")


def test_finetune_seeds_prints_and_saves_the_spread(assets, tmp_path, capsys):
    from transferkit.cli import main

    write_labelled_csv(tmp_path / "train.csv", PAIRS[:54])
    out = tmp_path / "m"
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(out), "--epochs", "2", "--seeds", "3", "--seed", "5", "--keep-all",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 seeds (5, 6, 7)" in printed and "| val_accuracy |" in printed and "kept seed" in printed
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["seeds"] == 3 and metrics["kept_seed"] in (5, 6, 7)
    assert metrics["val_accuracy_low"] <= metrics["val_accuracy_mean"] <= metrics["val_accuracy_high"]
    run = tmp_path / "m.run"
    assert (run / "seeds.csv").is_file() and all((run / f"seed-{s}" / "model" / "config.json").is_file()
                                                  for s in (5, 6, 7))
    kept = tk.TransferModel.from_pretrained(out)
    again = tk.TransferModel.from_pretrained(run / f"seed-{metrics['kept_seed']}" / "model")
    assert kept.predict(["stocks fell"]) == again.predict(["stocks fell"])
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "x"), "--seeds", "2", "--search", "lr=0.1,0.01", "--no-progress"]) == 1
    assert "--seeds" in capsys.readouterr().err and not (tmp_path / "x").exists()
