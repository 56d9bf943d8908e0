"""Where a training run is: position, history and the best epoch so far (what a checkpoint records
besides weights and optimiser), and the rule that picks the best epoch.

Which metric picks it, and in which direction, the task says (:mod:`.selection`); nothing here knows
what the task predicts."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from transferkit.errors import ConfigError


@dataclass
class Run:
    """Where training is: what a checkpoint records besides weights and optimiser."""

    epoch: int = 1
    epoch_step: int = 0  # optimiser steps done in the current epoch
    step: int = 0
    loss_sum: float = 0.0
    items: float = 0.0
    elapsed: float = 0.0  # seconds of the current epoch before a resume
    history: list = field(default_factory=list)
    best: float | None = None  # the best epoch's value of the selection metric
    best_loss: float | None = None  # ... its validation loss (breaks ties)
    best_epoch: int | None = None
    stale: int = 0
    # The best epoch's weights, without the parameters that had not learned yet (they have not moved).
    best_state: dict | None = None
    # The best epoch's metrics object (for the task's report files, e.g. classification's confusion.png),
    # and its JSON state when it has one (what a checkpoint keeps of it).
    best_metrics: Any = None
    best_metrics_state: dict | None = None
    started: float = 0.0

    def start_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.epoch_step, self.loss_sum, self.items, self.elapsed = epoch, 0, 0.0, 0.0, 0.0
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def judge(self, values: dict, metric: str, higher_is_better: bool, task: nn.Module,
              metrics: Any = None) -> None:
        """Keep the weights of the best epoch so far; a tie on ``metric`` goes to the lower loss.

        Args:
            values: the epoch's validation metrics (``metrics.compute()`` and the custom ones).
            metric: the selection metric, one of ``values``.
            higher_is_better: its direction, as the task (or the custom metric) declares it.
            task: whose weights are kept.
            metrics: the epoch's metrics object, kept with the best epoch for the task's report.
        """
        if metric not in values:
            raise ConfigError(f"{type(task).__name__}'s metrics declare {metric!r} but did not report it (they "
                              f"reported {sorted(values)}): select on another metric with Trainer(metric=...).")
        score, loss = values[metric], values.get("loss")
        if better(score, loss, self.best, self.best_loss, not higher_is_better):
            self.best, self.best_loss, self.best_epoch, self.stale = score, loss, self.epoch, 0
            kept = set(self.best_state or ())
            self.best_state = {k: v.detach().clone() for k, v in task.state_dict(keep_vars=True).items()
                               if k in kept or not _frozen(v)}
            self.best_metrics = metrics
            self.best_metrics_state = _json_state(metrics)
        else:
            self.stale += 1

    def cover(self, task: nn.Module) -> None:
        """Add to the best weights the parameters that learn from now on, before they move."""
        if self.best_state is None:
            return
        for k, v in task.state_dict(keep_vars=True).items():
            if k not in self.best_state and not _frozen(v):
                self.best_state[k] = v.detach().clone()

    def state(self, next_epoch: bool) -> dict:
        if next_epoch:
            position = {"epoch": self.epoch + 1, "epoch_step": 0, "loss_sum": 0.0, "items": 0.0, "elapsed": 0.0}
        else:
            position = {"epoch": self.epoch, "epoch_step": self.epoch_step, "loss_sum": self.loss_sum,
                        "items": self.items, "elapsed": self.seconds()}
        return {**position, "step": self.step, "history": self.history, "best": self.best, "stale": self.stale,
                "best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics_state}

    def load(self, state: dict) -> None:
        for name in ("epoch", "epoch_step", "step", "loss_sum", "items", "elapsed", "history", "best", "stale"):
            setattr(self, name, state[name])
        # Checkpoints written before ties were broken by loss have neither.
        self.best_loss, self.best_epoch = state.get("best_loss"), state.get("best_epoch")
        self.best_metrics_state = state.get("best_metrics")
        if self.best_metrics_state is None and state.get("confusion") is not None:  # written before the protocol
            self.best_metrics_state = {"confusion": state["confusion"]}

    def restore_metrics(self, task: nn.Module) -> None:
        """Rebuild the best epoch's metrics object from the state a checkpoint kept of it."""
        if self.best_metrics is None and self.best_metrics_state is not None:
            metrics = task.metrics()
            if hasattr(metrics, "load_state_dict"):
                metrics.load_state_dict(self.best_metrics_state)
                self.best_metrics = metrics


def better(score: float, loss: float | None, best: float | None, best_loss: float | None,
           minimise: bool) -> bool:
    """Whether an epoch scoring ``score`` (validation ``loss``) beats the best so far.

    A tie on the score is won by a lower loss; NaN never wins and loses to any number.
    """
    if best is None or (math.isnan(best) and not math.isnan(score)):
        return True
    if score != best:
        return score < best if minimise else score > best
    return loss is not None and best_loss is not None and loss < best_loss


def _json_state(metrics: Any) -> dict | None:
    """The metrics object's ``state_dict()`` when it has one that JSON can hold (a torchmetrics module's
    tensors cannot: such a state stays in memory only, and a resumed run reports without it)."""
    state = metrics.state_dict() if hasattr(metrics, "state_dict") else None
    try:
        json.dumps(state)
    except (TypeError, ValueError):
        return None
    return state


def _frozen(value: Any) -> bool:
    """A parameter that does not learn now (buffers such as BatchNorm statistics are never "frozen")."""
    return isinstance(value, nn.Parameter) and not value.requires_grad
