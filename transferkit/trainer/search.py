"""Hyper-parameter selection on the validation set: a grid or seeded random search over Trainer fields.

::

    result = search(lambda: tk.TransferModel(tk.load_backbone("glove:..."), tk.heads.Classification(3)),
                    train, val, {"lr": [1e-3, 1e-2], "epochs": [2, 4]})
    print(result.table())
    result.best_params, result.best_model

Each trial trains a fresh model with ``dataclasses.replace(trainer, **params)`` and is scored by the
validation value of the Trainer's selection metric at the epoch whose weights it keeps (``trainer.metric``,
or the task's default; its direction comes from the task). Only
validation data is used: measure the chosen configuration on test data once, afterwards (random search:
Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from transferkit.trainer.loop import Trainer, seed_everything


@dataclass
class SearchResult:
    """The outcome of :func:`search`.

    Attributes:
        best_params: the Trainer fields of the best trial.
        best_score: its best validation score.
        metric: the validation metric compared (history key ``val_<metric>``).
        trials: one dict per trial, in run order: ``params``, ``score``, ``epoch`` (where the score was
            reached) and ``seconds`` (building and training).
        best_model: the best trial's trained model with its best epoch's weights (only that model is kept).
        higher_is_better: the metric's direction, as the task declares it.
    """

    best_params: dict[str, Any]
    best_score: float
    metric: str
    trials: list[dict] = field(default_factory=list)
    best_model: nn.Module | None = field(default=None, repr=False, compare=False)
    higher_is_better: bool = True

    def table(self) -> str:
        """The trials as a markdown table, best first."""
        keys = list(dict.fromkeys(k for trial in self.trials for k in trial["params"]))
        ranked = sorted(self.trials, key=lambda t: t["score"], reverse=self.higher_is_better)
        lines = ["| " + " | ".join(["rank", *keys, f"val_{self.metric}", "epoch", "seconds"]) + " |",
                 "|" + "---|" * (len(keys) + 4)]
        for rank, trial in enumerate(ranked, 1):
            cells = [str(rank), *(_cell(trial["params"].get(k, "")) for k in keys),
                     f"{trial['score']:.4f}", str(trial["epoch"]), f"{trial['seconds']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def search(build_model: Callable[[], nn.Module], train: Any, val: Any, space: dict[str, Sequence],
           trials: int | None = None, trainer: Trainer | None = None, seed: int = 0) -> SearchResult:
    """Train one model per point of ``space`` and keep the one with the best validation score.

    Args:
        build_model: returns a fresh model (a TransferModel or a task) for each trial. The global RNGs are
            seeded with the trial's ``trainer.seed`` first, so every trial starts from the same weights.
        train: training data, as for :meth:`Trainer.fit`.
        val: validation data that scores the trials (required).
        space: Trainer field name → list of candidate values, e.g. ``{"lr": [1e-4, 1e-3], "epochs": [2, 4]}``.
        trials: ``None`` runs the full grid; an integer runs that many distinct grid points drawn at
            random (all of them when the grid is smaller).
        trainer: the base configuration every trial changes; default ``Trainer(progress=False)``. When it
            has an ``output_dir``, each trial writes under ``output_dir/trial-NNN``.
        seed: seeds the random choice of points (not the training: that is ``trainer.seed``).

    Returns:
        A :class:`SearchResult`; ties keep the earlier trial.

    Raises:
        ValueError: an unknown Trainer field, ``metric`` in ``space``, an empty candidate list, a ``trials``
            below 1, or no validation data.
    """
    base = trainer if trainer is not None else Trainer(progress=False)
    names, values = _check_space(space, base)
    if val is None:
        raise ValueError("search selects on validation data: give val (never the test set).")
    records: list[dict] = []
    best: tuple[float, dict, nn.Module] | None = None
    metric, higher = base.metric, True
    for index, point in enumerate(_points(values, trials, seed)):
        params = dict(zip(names, point))
        record, metric, higher, model = _run_trial(build_model, train, val, _configure(base, params, index))
        records.append({"params": params, **record})
        if best is None or (record["score"] > best[0] if higher else record["score"] < best[0]):
            best = (record["score"], params, model)
        del model  # only the best model stays in memory
    return SearchResult(best_params=best[1], best_score=best[0], metric=metric, trials=records,
                        best_model=best[2], higher_is_better=higher)


def _check_space(space: dict[str, Sequence], base: Trainer) -> tuple[list[str], list[list]]:
    fields = [f.name for f in dataclasses.fields(base)]  # read now: the Trainer gains fields over time
    unknown = [name for name in space if name not in fields]
    if unknown:
        raise ValueError(f"unknown Trainer fields {unknown}; fields are {fields}")
    if "metric" in space:
        raise ValueError("'metric' cannot be searched: scores on different metrics do not compare. "
                         "Set it on the trainer.")
    values = []
    for name, candidates in space.items():
        listed = [] if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__iter__") else list(candidates)
        if not listed:
            raise ValueError(f"space[{name!r}] must be a non-empty list of candidate values, got {candidates!r}")
        values.append(listed)
    return list(space), values


def _points(values: list[list], trials: int | None, seed: int) -> list[tuple]:
    """Every grid point in order, or ``trials`` distinct ones drawn without listing the grid."""
    if trials is None:
        return list(itertools.product(*values))
    if trials < 1:
        raise ValueError(f"trials must be at least 1 (or None for the full grid), got {trials}")
    total = math.prod(len(v) for v in values)
    return [_grid_point(values, i) for i in random.Random(seed).sample(range(total), min(trials, total))]


def _grid_point(values: list[list], index: int) -> tuple:
    """The ``index``-th point of ``itertools.product(*values)``."""
    point = []
    for candidates in reversed(values):
        index, digit = divmod(index, len(candidates))
        point.append(candidates[digit])
    return tuple(reversed(point))


def _configure(base: Trainer, params: dict, index: int) -> Trainer:
    overrides = dict(params)
    output_dir = getattr(base, "output_dir", None)
    if output_dir is not None and "output_dir" not in params:  # trials must not overwrite each other's logs
        overrides["output_dir"] = type(output_dir)(Path(output_dir) / f"trial-{index:03d}")
    return dataclasses.replace(base, **overrides)


def _run_trial(build_model: Callable[[], nn.Module], train: Any, val: Any,
               trainer: Trainer) -> tuple[dict, str, bool, nn.Module]:
    start = time.perf_counter()
    seed_everything(trainer.seed)
    model = build_model()
    history = trainer.fit(model, train, val)
    chosen = getattr(trainer, "best", None)  # the epoch the Trainer restored (ties: lower val_loss)
    if chosen is not None:
        metric, higher, score, epoch = chosen["metric"], chosen["higher_is_better"], chosen["value"], chosen["epoch"]
    else:  # a Trainer that does not say (a subclass): the best value in its history
        higher = trainer.metric not in (None, "loss")
        metric, score, epoch = best_epoch(history, trainer.metric or "loss", higher)
    return {"score": score, "epoch": epoch, "seconds": time.perf_counter() - start}, metric, higher, model


def best_epoch(history: Sequence[dict], metric: str, higher_is_better: bool | None = None) -> tuple[str, float, int]:
    """The best validation value of ``metric`` in a ``Trainer.fit`` history.

    Args:
        history: one dict per epoch with ``val_*`` keys.
        metric: ``"accuracy"``, ``"macro_f1"``, ``"loss"``...; falls back to ``"loss"`` when the history has
            no ``val_<metric>``.
        higher_is_better: the metric's direction, as the task declares it; ``None``: ``loss`` is
            minimised, any other metric maximised.

    Returns:
        ``(metric used, best value, its epoch)``; the earliest epoch on ties (the Trainer itself breaks
        ties by validation loss, and a search reports the epoch the Trainer restored).
    """
    if not any(f"val_{metric}" in row for row in history):
        metric, higher_is_better = "loss", False
    key = f"val_{metric}"
    scored = [(row[key], row.get("epoch", i + 1)) for i, row in enumerate(history)
              if isinstance(row.get(key), (int, float)) and not math.isnan(row[key])]
    if not scored:
        raise ValueError(f"the training history has no {key!r}: was validation data evaluated?")
    higher = metric != "loss" if higher_is_better is None else higher_is_better
    score, epoch = (max if higher else min)(scored, key=lambda s: s[0])
    return metric, score, epoch


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
