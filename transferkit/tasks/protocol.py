"""The Task protocol: everything the :class:`~transferkit.Trainer` knows about what it trains.

The Trainer has no idea whether it trains a classifier, a regression, a tagger or a pretext task (as
minGPT's trainer says of GPT: "nothing in this file really has anything to do with GPT specifically").
It asks the task for examples, batches, a loss and streaming metrics; each metric says whether higher is
better, and the task names the metric that selects the best epoch when the user names none::

    class MyTask(nn.Module):
        default_metric = "mae"
        def examples(self, data): ...          # checked examples (list or IterableDataset)
        def collate(self, examples): ...       # a batch: dict of tensors
        def forward(self, batch): ...          # {"loss": ..., optional "num_items": ..., anything else}
        def metrics(self): return MyMetrics()  # update(batch, outputs), compute(), higher_is_better

Optional hooks, found by ``hasattr`` and documented below: class weights for the class-balanced
strategies (:class:`ClassWeighted`); the cost of each example for ``Trainer(group_by_length=True)``
(:class:`LengthAware`, else :func:`example_lengths` counts the tokens of its batch); on the metrics object, what a custom metric receives, a JSON state
that survives a resume and the task's own report files (:class:`ReportingMetrics`); and ``prepare(examples)``, which
the Trainer calls once with the training examples before the first step (classification places a prototype head's
prototypes on the training features there); and ``logits_kind``, what ``forward``'s ``"logits"`` are, for the
SMART regulariser of :mod:`transferkit.trainer.adversarial`: ``"categorical"`` (a softmax over the last dimension,
the default), ``"independent"`` (a sigmoid per output: multi-label) or ``"values"`` (regression).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from transferkit.errors import ConfigError


@runtime_checkable
class Metrics(Protocol):
    """Streaming validation metrics: nothing per example is kept, so any size of data fits.

    Attributes:
        higher_is_better: every name :meth:`compute` may return → ``True`` when a larger value is better
            (accuracy, F1, R²), ``False`` when smaller is (loss, perplexity, MAE). The Trainer selects
            only on metrics named here (and ``loss``, which is always minimised).
    """

    higher_is_better: Mapping[str, bool]

    def update(self, batch: Any, outputs: dict[str, torch.Tensor]) -> None:
        """Add one evaluation batch and the task's outputs on it (run under ``torch.no_grad``)."""

    def compute(self) -> dict[str, float]:
        """The metrics over every batch so far, always including ``"loss"``."""


@runtime_checkable
class ReportingMetrics(Metrics, Protocol):
    """Optional extras of a metrics object; the Trainer uses each one only where it is defined.

    * ``custom_metric_input()`` → what a custom metric ``fn`` of ``Trainer(metrics={name: fn})`` receives
      (classification: the confusion matrix as a NumPy array); without it ``fn`` receives the metrics
      object itself after :meth:`compute`, so it can read whatever the task accumulates.
    * ``state_dict()`` / ``load_state_dict(state)`` → a JSON-able state: the best epoch's metrics are
      kept in the checkpoint, so a resumed run still writes the report of the epoch it restores (a
      state JSON cannot hold, such as a torchmetrics module's tensors, stays in memory only).
    * ``report(output_dir)`` → task-specific report files written at the end of training by the
      ``"report"`` logger (classification: ``confusion.png``); returns their paths.
    """

    def custom_metric_input(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def report(self, output_dir: Path) -> list[Path]: ...


@runtime_checkable
class Task(Protocol):
    """A module the Trainer can train.

    Attributes:
        default_metric: the validation metric that selects the best epoch when ``Trainer(metric=None)``
            (classification: ``"accuracy"``; pretext tasks: ``"loss"``). A task without it selects on
            ``"loss"``.
    """

    default_metric: str

    def examples(self, data: Any) -> Sequence | torch.utils.data.IterableDataset:
        """The examples of ``data``, checked against the model before any training starts; a
        ``torch.utils.data.IterableDataset`` streams them from disk."""

    def collate(self, examples: Sequence[Any]) -> Any:
        """A batch (a dict of tensors, preprocessed by the backbone); runs in DataLoader workers."""

    def __call__(self, batch: Any) -> dict[str, torch.Tensor]:
        """``forward(batch)`` → ``{"loss": scalar, ...}``; ``"num_items"`` (optional) is what the loss
        averages over (tokens for language modelling), so accumulated and distributed steps weigh
        micro-batches alike; other entries are for :meth:`Metrics.update`."""

    def metrics(self) -> Metrics:
        """A fresh streaming :class:`Metrics` object."""


@runtime_checkable
class ClassWeighted(Protocol):
    """Optional hooks of a task whose loss takes per-class weights (the ``lp_ft_balanced`` strategy).

    Attributes:
        class_weights: the weights now in use, ``None`` for equal weights.
    """

    class_weights: torch.Tensor | None

    def class_counts(self, examples: Sequence[Any]) -> list[int]:
        """Examples per class id in ``examples`` (what :meth:`examples` returned), one count per class."""

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weight the training loss by ``weights`` (``[num_classes]``) from now on; ``None``: equal weights."""


@runtime_checkable
class LengthAware(Protocol):
    """Optional hook of a task that knows what each example costs (for ``Trainer(group_by_length=True)``)."""

    def lengths(self, examples: Sequence[Any]) -> Sequence[int]:
        """One length per example of ``examples`` (what :meth:`Task.examples` returned), e.g. its tokens."""


def example_lengths(task: Any, examples: Sequence[Any]) -> np.ndarray:
    """The length of each example: ``task.lengths(examples)`` where the task has it, else the tokens of the
    example's own batch (``collate([example])``): every ``attention_mask`` in it summed, so a sentence pair
    counts both texts, a long QA context all its windows and a seq2seq example its source and target.

    Raises:
        ConfigError: the task's batches hold no ``attention_mask`` (images, say): nothing to group by.
    """
    if isinstance(task, LengthAware):
        return np.asarray(task.lengths(examples), dtype=np.int64)

    def tokens(batch: Any) -> int | None:
        if isinstance(batch, dict):
            found = [tokens(v) if k != "attention_mask" else int(v.sum()) for k, v in batch.items()]
            found = [n for n in found if n is not None]
            return sum(found) if found else None
        return None

    lengths = []
    for example in examples:
        n = tokens(task.collate([example]))
        if n is None:
            raise ConfigError(f"group_by_length needs examples with a length, and the batches of "
                              f"{type(task).__name__} hold no attention_mask (it is for text tasks); "
                              "train without group_by_length.")
        lengths.append(n)
    return np.asarray(lengths, dtype=np.int64)


def metric_directions(metrics: Any) -> dict[str, bool]:
    """``metrics.higher_is_better`` with ``loss`` (always minimised); only ``loss`` when it declares none."""
    return {"loss": False, **dict(getattr(metrics, "higher_is_better", None) or {})}
