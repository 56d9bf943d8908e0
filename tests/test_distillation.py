"""Knowledge distillation across families: a word-vector student learns from a transformer teacher."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.tasks.distillation import DistillationTask, teacher_labels

from conftest import SENTENCES

TOPIC = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
DATA = [(s, TOPIC[i % 9]) for i, s in enumerate(SENTENCES)]


@pytest.fixture(scope="module")
def teacher(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(
        labels=["sport", "animals", "markets"]))  # another class order than the student's
    tk.Trainer(epochs=4, lr=1e-3, head_lr=1e-2, batch_size=8, progress=False, loggers=()).fit(model, DATA)
    return model


def student(assets, head=None):
    torch.manual_seed(0)
    return tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"),
                            head or tk.heads.Classification(labels=["animals", "markets", "sport"]))


def test_the_loss_is_hintons_mix_of_task_loss_and_softened_kl(teacher, assets):
    task = DistillationTask(student(assets), teacher, temperature=3.0, alpha=0.25)
    examples = task.examples(DATA[:6])
    batch = task.collate(examples)
    # The teacher's columns follow the student's class order.
    with torch.no_grad():
        want = teacher.predict_proba([x for x, _ in DATA[:6]])[:, [1, 2, 0]]
    torch.testing.assert_close(batch["teacher_logits"].softmax(-1), want, atol=1e-5, rtol=1e-4)
    out = task(batch)
    s, t = out["logits"], batch["teacher_logits"]
    kl = (F.softmax(t / 3, -1) * (F.log_softmax(t / 3, -1) - F.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    hard = F.cross_entropy(s, batch["labels"])
    torch.testing.assert_close(out["loss"], 0.25 * hard + 0.75 * kl)
    torch.testing.assert_close(out["distill_loss"], kl)


def test_a_glove_student_learns_from_a_bert_teacher(teacher, assets):
    model = student(assets)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = DistillationTask(model, teacher, alpha=0.0)  # the teacher's outputs alone
    assert not any(k.startswith("teacher") for k in task.state_dict())  # the teacher is neither trained nor saved
    history = tk.Trainer(epochs=8, lr=0.05, head_lr=0.05, batch_size=8, progress=False, loggers=()).fit(
        task, DATA, DATA[:18])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "val_accuracy" in history[-1]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    agree = sum(a == b for a, b in zip(model.predict(SENTENCES[:27]), teacher.predict(SENTENCES[:27])))
    assert agree >= 24  # the student follows its teacher


def test_feature_matching_adds_a_learnt_projection(teacher, assets):
    model = student(assets)
    task = DistillationTask(model, teacher, features=1.0)
    assert task.project.in_features == model.backbone.feature_dim
    assert task.project.out_features == teacher.backbone.feature_dim
    out = task(task.collate(task.examples(DATA[:4])))
    assert out["feature_loss"] > 0
    history = tk.Trainer(epochs=3, lr=0.05, head_lr=0.05, batch_size=8, progress=False, loggers=()).fit(task, DATA)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert not model.backbone._forward_hooks  # no hook is left on the student


def test_teacher_labels_an_unlabelled_transfer_set(teacher):
    labels = teacher_labels(teacher, SENTENCES[:9])
    assert labels == teacher.predict(SENTENCES[:9]) and set(labels) <= set(TOPIC)


def test_regression_students_match_the_teachers_outputs(assets):
    rows = [{"text": s, "score": float(i % 5)} for i, s in enumerate(SENTENCES[:20])]
    torch.manual_seed(0)
    teacher = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Regression("score"))
    task = DistillationTask(student(assets, tk.heads.Regression("score")), teacher, alpha=0.5)
    batch = task.collate(task.examples(rows[:5]))
    out = task(batch)
    torch.testing.assert_close(out["distill_loss"], F.mse_loss(out["logits"], batch["teacher_logits"]))


def test_mismatched_teachers_are_refused(teacher, assets):
    with pytest.raises(ConfigError, match="teacher has a classification head and the student a regression"):
        DistillationTask(student(assets, tk.heads.Regression("score")), teacher)
    other = student(assets, tk.heads.Classification(labels=["a", "b", "c"]))
    task = DistillationTask(other, teacher)
    with pytest.raises(ConfigError, match="teacher's classes"):
        task.examples([(s, "a") for s in SENTENCES[:3]])
    with pytest.raises(ConfigError, match="alpha"):
        DistillationTask(student(assets), teacher, alpha=1.5)


def test_cli_finetune_with_a_teacher(teacher, assets, tmp_path, capsys):
    import csv

    from transferkit.cli import main

    saved = teacher.save_pretrained(tmp_path / "teacher")
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label")] + DATA)
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "student"), "--teacher", str(saved), "--temperature", "3",
                 "--epochs", "4", "--lr", "0.05", "--head-lr", "0.05", "--no-progress"]) == 0
    assert f"distilling {saved} (T=3.0, alpha=0.5)" in capsys.readouterr().out
    student = tk.TransferModel.from_pretrained(tmp_path / "student")
    assert student.backbone.config["source"] == "glove" and len(student.predict(SENTENCES[:3])) == 3
