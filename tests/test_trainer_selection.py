"""Best-epoch selection (ties broken by validation loss, the choice explained, kept across a resume) and a run
directory that holds no optimiser state or best-weight copy of frozen parameters."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.trainer.run import Run, better
from transferkit.trainer.report import describe_best
from transferkit.trainer.strategies import Strategy


class ToyMetrics:
    """Accuracy stuck at 0.5 (a small validation set) while the loss moves."""

    higher_is_better = {"accuracy": True, "loss": False}

    def __init__(self):
        self.sum, self.n = 0.0, 0

    def update(self, batch, out):
        self.sum, self.n = self.sum + float(out["loss"]) * len(batch["x"]), self.n + len(batch["x"])

    def compute(self):
        return {"accuracy": 0.5, "loss": self.sum / self.n}


class Toy(nn.Module):
    """``w + u`` learns the training targets; validation scores it against the validation targets."""

    default_metric = "accuracy"

    def __init__(self, frozen_rows: int = 0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.u = nn.Parameter(torch.zeros(1))
        self.table = nn.Parameter(torch.ones(frozen_rows, 4), requires_grad=False) if frozen_rows else None

    def examples(self, data):
        return data

    def collate(self, xs):
        return {"x": torch.tensor(xs, dtype=torch.float32)}

    def forward(self, batch):
        return {"loss": ((self.w + self.u - batch["x"]) ** 2).mean()}

    def metrics(self):
        return ToyMetrics()


@dataclass
class FreeU(Strategy):
    """``u`` is frozen in epoch 1 and learns from epoch 2 (as gradual unfreezing frees a lower layer)."""

    def apply(self, task, epoch):
        task.u.requires_grad_(epoch >= 2)


def _trainer(**options):
    settings = {"batch_size": 4, "optimizer": "sgd", "max_grad_norm": None, "progress": False, **options}
    return tk.Trainer(**settings)


def _judged(scores, losses, metric="accuracy"):
    run, task = Run(), Toy()
    for epoch, (score, loss) in enumerate(zip(scores, losses), 1):
        run.start_epoch(epoch)
        run.judge({metric: score, "loss": loss}, metric, metric != "loss", task)
    return run


def test_a_tie_on_the_metric_goes_to_the_lower_validation_loss_and_resets_patience():
    run = _judged([0.5, 0.5, 0.5, 0.5], [0.76, 0.70, 0.72, 0.70])
    assert (run.best_epoch, run.best, run.best_loss) == (2, 0.5, 0.70)  # the old rule kept epoch 1
    assert run.stale == 2  # epoch 4 ties on both: not an improvement, the earlier epoch stays
    assert _judged([0.5, 0.5], [0.76, 0.70]).stale == 0  # a tie-break win resets patience
    assert _judged([0.4, 0.5, 0.5], [0.5, 0.9, 0.8]).best_epoch == 3  # the metric first, loss only on ties
    assert _judged([0.30, 0.30, 0.20], [0.30, 0.30, 0.20], metric="loss").best_epoch == 3


def test_nan_never_wins_and_any_number_beats_it():
    assert better(0.1, 1.0, math.nan, 1.0, minimise=False)
    assert not better(math.nan, 0.1, 0.5, 1.0, minimise=False)
    assert not better(math.nan, 0.1, 0.5, 1.0, minimise=True)
    assert not better(0.5, None, 0.5, 0.7, minimise=False)  # no loss to break the tie: keep the earlier
    assert _judged([math.nan, 0.2], [1.0, 1.0]).best_epoch == 2


def test_the_reason_names_the_ties_and_the_loss_that_broke_them():
    history = [{"epoch": e, "val_accuracy": 0.5, "val_loss": loss}
               for e, loss in enumerate([0.764, 0.70, 0.675, 0.69, 0.675], 1)]
    best = describe_best(history, 3, "accuracy")
    assert best == {"epoch": 3, "metric": "accuracy", "value": 0.5, "val_loss": 0.675, "higher_is_better": True,
                    "reason": "highest val_accuracy (0.5000), tied with epochs 1-2, 4-5; lowest val_loss "
                              "among them (0.6750); epoch 5 ties on val_loss too: the earliest kept"}
    history[1]["val_accuracy"] = 0.9
    assert describe_best(history, 2, "accuracy")["reason"] == "highest val_accuracy (0.9000)"
    assert describe_best(history, 3, "loss")["reason"] == "lowest val_loss (0.6750), tied with epoch 5: " \
                                                          "the earliest kept"
    # A task that does not report the metric is selected on loss, and said so.
    assert describe_best([{"epoch": 1, "val_loss": 0.3}], 1, "accuracy")["metric"] == "loss"


def test_fit_restores_the_lowest_loss_epoch_among_ties_and_records_it(tmp_path):
    weights = []
    trainer = _trainer(epochs=5, lr=0.005, output_dir=str(tmp_path), loggers=("csv",),
                       callbacks={"on_epoch_end": [lambda t, s: weights.append(float(task.w.detach()))]})
    task = Toy()
    history = trainer.fit(task, [1.0] * 8, [1.0])
    losses = [r["val_loss"] for r in history]
    assert all(r["val_accuracy"] == 0.5 for r in history) and losses == sorted(losses, reverse=True)
    assert float(task.w.detach()) == weights[-1] != weights[0]  # the old rule restored epoch 1
    assert [r.get("restored", False) for r in history] == [False] * 4 + [True]
    assert trainer.best["epoch"] == 5 and trainer.best["val_loss"] == losses[-1]
    assert trainer.best["reason"].startswith("highest val_accuracy (0.5000), tied with epochs 1-4; lowest val_loss")
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == ["restored", "seconds"]
    assert [row.split(",")[-2] for row in rows[1:]] == ["", "", "", "", "1"]
    assert tk.Trainer(epochs=1, progress=False).best is None  # before fit
    trainer.fit(Toy(), [1.0] * 8)  # again, without validation data: no epoch is restored
    assert trainer.best is None


class Stop(Exception):
    pass


def _run(out, resume=False, step=None, epoch=None):
    """lr 0.2 on these targets: validation loss is lowest at epoch 2 of 5; two steps an epoch.

    ``step``: stop after that step, checkpointing every step; ``epoch``: stop at the end of that epoch,
    before its checkpoint (so the last one is the previous epoch's).
    """

    def at_step(trainer, state):
        if state["step"] == step:
            raise Stop

    def at_epoch(trainer, state):
        if state["epoch"] == epoch:
            raise Stop

    task = Toy(frozen_rows=3)
    trainer = _trainer(epochs=5, lr=0.2, output_dir=str(out), save_every=1 if step else None, loggers=(),
                       callbacks={"on_step_end": [at_step], "on_epoch_end": [at_epoch]})
    history = trainer.fit(task, [1.0] * 8, [0.5], resume=resume)
    return trainer, task, [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize("stop", [{"step": 5}, {"epoch": 3}], ids=["mid-epoch-3", "end-of-best-epoch"])
def test_the_choice_survives_a_resume(tmp_path, stop):
    full_trainer, full_task, full_history = _run(tmp_path / "full")
    assert full_trainer.best["epoch"] == 2
    with pytest.raises(Stop):
        _run(tmp_path / "cut", **stop)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["best_epoch"] == 2 and state["step"] == stop.get("step", 4)
    # At the end of the best epoch the model is the best: the checkpoint names its tensors, no second copy.
    has_copy = (tmp_path / "cut" / "checkpoint" / "best.safetensors").exists()
    assert has_copy == ("step" in stop) and (state["best_keys"] is None) == has_copy
    if has_copy:
        assert _keys(tmp_path / "cut" / "checkpoint" / "best.safetensors") == {"w", "u"}  # not the frozen table
    else:
        assert state["best_keys"] == ["u", "w"]
    trainer, task, history = _run(tmp_path / "cut", resume=True)
    assert trainer.best == full_trainer.best and history == full_history
    assert all(torch.equal(a, b) for a, b in zip(task.state_dict().values(), full_task.state_dict().values()))


def test_a_parameter_that_learns_after_the_best_epoch_is_restored_to_its_value_then():
    task, seen = Toy(), []
    task.u.requires_grad_(False)
    trainer = _trainer(epochs=4, lr=0.02, strategy=FreeU("free_u", lambda epoch: None),
                       callbacks={"on_epoch_end": [lambda t, s: seen.append(float(task.u.detach()))]})
    trainer.fit(task, [1.0] * 8, [0.2])
    assert trainer.best["epoch"] == 1 and seen[0] == 0.0 and seen[-1] != 0.0  # u moved after epoch 1
    assert float(task.u.detach()) == 0.0 and float(task.w.detach()) != 0.0


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_a_frozen_embedding_is_in_neither_the_best_copy_nor_the_optimiser_state(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(2000)]
    backbone = from_vectors(words, rng.normal(size=(2000, 16)).astype(np.float32), source="glove", name="random")
    torch.manual_seed(0)
    model = tk.TransferModel(backbone.freeze(), tk.heads.Classification(labels=["a", "b"]))
    embedding = model.backbone.encoder.embeddings.weight
    before = embedding.detach().clone()
    embedding.grad = torch.ones_like(embedding)  # a gradient left over from before fit must not step it
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 2000, 6)) for _ in range(20)]
    pairs = [(t, "ab"[i % 2]) for i, t in enumerate(texts)]
    copied = {}

    def keep(trainer, state):  # the mid-epoch-2 checkpoint holds epoch 1's best weights as a file
        if state["step"] == 5:
            checkpoint = tmp_path / "run" / "checkpoint"
            copied.update(best=_keys(checkpoint / "best.safetensors"), opt=_keys(checkpoint / "optimizer.safetensors"))

    trainer = tk.Trainer(epochs=2, batch_size=4, lr=1e-2, output_dir=str(tmp_path / "run"), save_every=1,
                         loggers=(), progress=False, callbacks={"on_step_end": [keep]})
    trainer.fit(model, pairs[:16], pairs[16:])
    name = "model.backbone.encoder.embeddings.weight"
    assert copied["best"] == {"model.head.layers.1.weight", "model.head.layers.1.bias"}
    assert name not in copied["best"]
    # Optimiser state is kept per parameter index: the embedding is parameter 0 of the first group.
    groups = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["optimizer_groups"]
    index = next(g["params"][0] for g in groups if g["name"] == "backbone.embeddings")
    assert not any(k.startswith(f"state.{index}.") for k in copied["opt"]) and copied["opt"]
    assert torch.equal(embedding, before)
    # The checkpoint's model file keeps every weight, so a resume is exact.
    assert name in _keys(tmp_path / "run" / "checkpoint" / "model.safetensors")
