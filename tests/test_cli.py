"""The command line: finetune → predict on files a user would have, listing, help, lazy imports."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from transferkit.cli import main, parse_options
from transferkit.errors import OptionError

from conftest import SENTENCES


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label")] + rows)


def test_finetune_then_predict(assets, tmp_path, capsys):
    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    _write_csv(tmp_path / "train.csv", [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)])
    out = tmp_path / "model"
    code = main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(out), "--epochs", "6", "--lr", "0.05", "--head-lr", "0.05", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "best validation: loss=" in printed and f"saved to {out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["head"]["labels"] == ["animals", "markets", "sport"]
    assert config["metrics"]["val_accuracy"] == 1.0
    assert main(["predict", "--model", str(out), "--proba", "stocks fell sharply", "the goal"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in lines] == ["markets", "sport"]
    assert sum(lines[0]["proba"].values()) == pytest.approx(1.0, abs=1e-4)


def test_finetune_strategy_schedule_run_state_and_resume(assets, tmp_path, capsys):
    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    _write_csv(tmp_path / "train.csv", [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)])
    args = ["finetune", "--backbone", f"hf:{assets['bert']}", "--data", str(tmp_path / "train.csv"),
            "--output", str(tmp_path / "model"), "--epochs", "2", "--lr", "1e-3", "--head-lr", "1e-2",
            "--strategy", "lp-ft", "--lr-decay", "0.8", "--accumulate", "2", "--schedule", "cosine",
            "--warmup", "0.1", "--no-progress"]
    assert main(args) == 0
    run = tmp_path / "model.run"
    assert {"metrics.csv", "steps.csv", "curves.png", "confusion.png", "checkpoint"} <= {p.name for p in run.iterdir()}
    rows = list(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_accuracy" in rows[0]
    capsys.readouterr()
    assert main(args + ["--epochs", "3", "--resume"]) == 0  # one more epoch from the checkpoint
    rows = list(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert "epoch=3" in capsys.readouterr().out


def test_finetune_search_saves_the_best_trial(assets, tmp_path, capsys):
    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    _write_csv(tmp_path / "train.csv", [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)])
    out = tmp_path / "model"
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(out), "--epochs", "3", "--head-lr", "1e-3", "--search", "lr=0.0001,0.05", "--search",
                 "strategy=full,linear_probe", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| rank | lr | strategy | val_accuracy |" in printed
    assert [line.split(" | ")[0] for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()] == \
        ["| 1", "| 2", "| 3", "| 4"]  # the 2 × 2 grid
    assert "best: {'lr': 0.05" in printed  # a 1e-4 learning rate cannot fit in 3 epochs
    assert json.loads((out / "config.json").read_text())["metrics"]["val_accuracy"] == 1.0


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["finetune", "--backbone", "nosuch:thing", "--data", str(tmp_path / "missing.csv"),
                 "--output", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    _write_csv(tmp_path / "d.csv", [("a", "x"), ("b", "y")])
    assert main(["finetune", "--backbone", "nosuch:thing", "--data", str(tmp_path / "d.csv"),
                 "--output", str(tmp_path / "o"), "--val-fraction", "0"]) == 1
    assert "unknown backbone source 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_backbones_listing(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "glove:6B.50d" in out and "timm:NAME" in out and "fasttext:PATH" in out
    assert main(["backbones", "timm:*efficientnet_lite0*"]) == 0
    assert "timm:tf_efficientnet_lite0" in capsys.readouterr().out.split()


def test_parse_options():
    assert parse_options(["weights=none", "image_size=64", "pooling=max", "x=1.5"]) == {
        "weights": None, "image_size": 64, "pooling": "max", "x": 1.5}
    with pytest.raises(OptionError, match="KEY=VALUE"):
        parse_options(["oops"])


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "transferkit")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "finetune", "predict", "backbones"):
        assert command in out


def test_import_is_light():
    code = ("import sys, transferkit; heavy = [m for m in ('transformers', 'timm', 'torchvision', 'gensim') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_classification(assets, tmp_path, capsys):
    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    _write_csv(tmp_path / "train.csv", [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)])
    out = tmp_path / "model"
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(out), "--epochs", "6", "--lr", "0.05", "--head-lr", "0.05", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(tmp_path / "train.csv")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("loss=") and "accuracy=1.0000" in line and "macro_f1=" in line
