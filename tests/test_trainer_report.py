"""Loggers write CSV rows equal to the history, TensorBoard scalars and valid PNG reports."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.trainer.report import CSVLogger, ReportWriter, TensorBoardLogger, loggers, write_report

from conftest import SENTENCES

TOPIC = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
PAIRS = [(s, TOPIC[i % 9]) for i, s in enumerate(SENTENCES)]
HISTORY = [{"epoch": 1, "train_loss": 1.1, "val_loss": 1.0, "val_accuracy": 0.5, "val_macro_f1": 0.4},
           {"epoch": 2, "train_loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.75, "val_macro_f1": 0.7}]
CONFUSION = torch.tensor([[5, 1, 0], [0, 4, 2], [1, 0, 6]])
LABELS = ["animals", "markets", "sport"]


def _emit(callbacks: dict, event: str, state: dict) -> None:
    for fn in callbacks.get(event, []):
        fn(None, state)


def _drive(logger, history=HISTORY, steps_per_epoch=3, first_step=1, **end) -> None:
    """Send the Trainer's events for a hand-made history (step ``s`` has loss 1/s and lr s/10)."""
    callbacks, step = logger.callbacks(), first_step - 1
    _emit(callbacks, "on_train_start", {"epochs": len(history), "steps_per_epoch": steps_per_epoch, "output_dir": None})
    for record in history:
        for _ in range(steps_per_epoch):
            step += 1
            _emit(callbacks, "on_step_end", {"epoch": record["epoch"], "step": step, "loss": 1 / step, "lr": step / 10})
        _emit(callbacks, "on_epoch_end", {"epoch": record["epoch"], "step": step, "metrics": record, "seconds": 0.5})
    _emit(callbacks, "on_train_end", {"history": history, "best": None, "output_dir": None, **end})


def _read(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _model(assets):
    torch.manual_seed(0)
    return tk.TransferModel(tk.load_backbone("word2vec:" + assets["word2vec_bin"]), tk.heads.Classification(3))


def test_csv_rows_equal_the_history(tmp_path):
    _drive(CSVLogger(tmp_path))
    rows = _read(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "seconds"]
    for row, record in zip(rows, HISTORY, strict=True):
        assert {k: float(row[k]) for k in record} == record
        assert int(row["step"]) == 3 * record["epoch"] and float(row["seconds"]) == 0.5
    steps = _read(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 7))
    assert [int(r["epoch"]) for r in steps] == [1, 1, 1, 2, 2, 2]
    assert all(float(r["loss"]) == 1 / int(r["step"]) and float(r["lr"]) == int(r["step"]) / 10 for r in steps)


def test_csv_buffers_steps_and_rewrites_the_header_for_a_late_column(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.on_train_start(None, {"epochs": 2})
    for step in (1, 2):
        logger.on_step_end(None, {"epoch": 1, "step": step, "loss": 0.5})  # no lr: an older trainer
    assert not (tmp_path / "steps.csv").exists()  # nothing written per step
    logger.on_epoch_end(None, {"epoch": 1, "step": 2, "metrics": {"epoch": 1, "train_loss": 0.5}})
    logger.on_epoch_end(None, {"epoch": 2, "step": 2, "metrics": {"epoch": 2, "train_loss": 0.4, "val_accuracy": 0.9}})
    rows = _read(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "step", "train_loss", "val_accuracy", "seconds"]
    assert [r["val_accuracy"] for r in rows] == ["", "0.9"]
    assert all(float(r["seconds"]) >= 0 for r in rows)  # measured when the trainer does not say
    assert [r["lr"] for r in _read(tmp_path / "steps.csv")] == ["", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "steps.csv"]  # no temporary files


def test_csv_resumed_run_keeps_earlier_rows_and_a_new_run_replaces_them(tmp_path):
    _drive(CSVLogger(tmp_path))
    third = {"epoch": 3, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 1.0, "val_macro_f1": 1.0}
    _drive(CSVLogger(tmp_path), history=[third], first_step=7)
    assert [int(r["epoch"]) for r in _read(tmp_path / "metrics.csv")] == [1, 2, 3]
    assert [int(r["step"]) for r in _read(tmp_path / "steps.csv")] == list(range(1, 10))
    _drive(CSVLogger(tmp_path))
    assert len(_read(tmp_path / "metrics.csv")) == 2 and len(_read(tmp_path / "steps.csv")) == 6


def test_csv_through_the_trainer(assets, tmp_path):
    logger = CSVLogger(tmp_path)
    trainer = tk.Trainer(epochs=2, lr=0.05, batch_size=15, progress=False, callbacks=logger.callbacks())
    history = trainer.fit(_model(assets), PAIRS[:45], PAIRS[45:63])
    rows = _read(tmp_path / "metrics.csv")
    assert len(rows) == len(history) == 2
    for row, record in zip(rows, history):
        assert {k: float(row[k]) for k in record} == record
    steps = _read(tmp_path / "steps.csv")
    assert len(steps) == int(rows[-1]["step"]) > 0


def test_report_images(tmp_path):
    paths = write_report(HISTORY, tmp_path, confusion=CONFUSION, labels=LABELS)
    assert [p.name for p in paths] == ["curves.png", "confusion.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curves.png"]  # no temporary files
    with pytest.raises(ValueError, match="2 labels"):
        write_report(HISTORY, tmp_path, confusion=CONFUSION, labels=LABELS[:2])


def test_report_writer_draws_a_confusion_matrix_only_when_given_one(tmp_path):
    writer = ReportWriter(tmp_path / "plain")
    _drive(writer, confusion=None)
    assert [p.name for p in writer.paths] == ["curves.png"]
    assert not (tmp_path / "plain" / "confusion.png").exists()
    writer = ReportWriter(tmp_path / "full")
    _drive(writer, confusion=CONFUSION, labels=LABELS)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["confusion.png", "curves.png"]


def test_report_writer_through_the_trainer(assets, tmp_path):
    writer, ends = ReportWriter(tmp_path), []
    callbacks = writer.callbacks()
    callbacks["on_train_end"].append(lambda trainer, state: ends.append(state))
    trainer = tk.Trainer(epochs=2, lr=0.05, batch_size=15, progress=False, callbacks=callbacks)
    trainer.fit(_model(assets), PAIRS[:45], PAIRS[45:63])
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # The confusion matrix is classification's: its metrics object (of the restored epoch) draws it.
    assert [p.name for p in writer.paths] == ["curves.png", "confusion.png"]
    best = ends[0]["best_metrics"]
    assert best.labels == LABELS and int(best.confusion.sum()) == 18 and "confusion" not in ends[0]


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _drive(TensorBoardLogger(tmp_path / "tb", flush_every=4))  # one flush mid-epoch, one at its end
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 7))
    assert [e.value for e in loss] == pytest.approx([1 / s for s in range(1, 7)])
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([s / 10 for s in range(1, 7)])
    accuracy = events.Scalars("val/accuracy")
    assert [(e.step, e.value) for e in accuracy] == [(1, 0.5), (2, 0.75)]
    assert [e.value for e in events.Scalars("epoch/train_loss")] == pytest.approx([1.1, 0.7])


def test_loggers_by_name(tmp_path):
    callbacks = loggers(["csv", "tensorboard", "report"], tmp_path)
    assert sorted(callbacks) == ["on_epoch_end", "on_step_end", "on_train_end", "on_train_start"]
    assert len(callbacks["on_train_start"]) == 3 and all(callable(fn) for fns in callbacks.values() for fn in fns)
    _drive(type("Loggers", (), {"callbacks": lambda self: callbacks})())
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"metrics.csv", "steps.csv", "curves.png", "tensorboard"}
    with pytest.raises(ValueError, match=r"unknown logger.*Known: csv, report, tensorboard"):
        loggers(["csv", "wandb"], tmp_path)
    with pytest.raises(ValueError, match="output_dir"):
        loggers(["csv"], None)


def test_missing_optional_dependencies_fail_at_train_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        ReportWriter(tmp_path).on_train_start(None, {})
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path).on_train_start(None, {})
