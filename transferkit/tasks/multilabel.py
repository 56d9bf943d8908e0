"""Multi-label classification: BCE with logits; micro-F1, macro-F1 and mAP; thresholds chosen on validation.

Metrics are scikit-learn's on the indicator matrices (``tests/test_multilabel.py`` checks them):
``micro_f1`` = ``f1_score(average="micro")`` and ``macro_f1`` = ``f1_score(average="macro")`` of the
head's current decisions (score ``>=`` its class's threshold), and ``map`` =
``average_precision_score(average="macro")`` of the scores. As there, a class with no positive example in
the evaluated data counts 0 in ``macro_f1`` and ``map``. The F1 counts stream; mAP needs every score, so
the metrics object keeps them (one float32 per example and class, as regression keeps its predictions for
Spearman's rho): 100,000 examples of 1,000 classes hold 400 MB.

Thresholds are chosen *after* training, by :func:`tune_thresholds` on validation data, rather than inside
the Trainer. The Trainer knows only the Task protocol, and a metrics object that set thresholds as a side
effect would also retune them on test data in ``Trainer.evaluate``; one explicit call on the restored best
weights is the simplest design that is honest about which data chose them. During training every
threshold is the head's (0.5 for a new head), so the default selection metric, ``micro_f1``, is measured at
those; ``Trainer(metric="map")`` selects without any threshold.

The rule (per class, the "SCut" strategy of Yang, SIGIR 2001; Lipton et al., https://arxiv.org/abs/1402.1892):
sort the class's validation scores; for each cut between two distinct scores (and below the lowest),
predicting the scores above it gives an F1; the best cut wins (ties: the higher threshold) and the
threshold is the midpoint between the two scores around it (half the lowest score for "every example").
A class without positive validation examples keeps its threshold.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data import preprocess_named
from transferkit.data.multilabel import (
    SEPARATOR,
    label_matrix,
    label_set_classes,
    load_label_sets,
)

from .classification import Example
from .supervised import check_examples


class MultiLabelTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.multilabel.MultiLabel` head.

    Args:
        model: the model; a head without labels takes the sorted classes of the first training data.
        input_column: column of the inputs in a table.
        label_column: column of the label sets in a table (:mod:`transferkit.data.multilabel`).
        separator: what joins names in a string cell (``"|"``); ``None``: a string is one name.
    """

    default_metric = "micro_f1"
    logits_kind = "independent"  # a sigmoid per label, for SMART (transferkit.trainer.adversarial)
    higher_is_better = {"loss": False, "micro_f1": True, "macro_f1": True, "map": True}

    def __init__(self, model: nn.Module, input_column: str = "text", label_column: str = "label",
                 separator: str | None = SEPARATOR):
        super().__init__()
        self.model = model
        self.input_column = input_column
        self.label_column = label_column
        self.separator = separator

    def examples(self, data: Any) -> list[Example]:
        """``(raw input, 0/1 row over the head's classes)`` examples, checked before any training starts.

        Raises:
            LabelError: a label set is missing or unreadable, or holds names not among the head's classes
                (the message names the rows and the names).
            ModalityError, InputError, ImageError: as for classification.
        """
        data = load_label_sets(data, input_column=self.input_column, label_column=self.label_column,
                               separator=self.separator)
        check_examples(self.model, data.inputs, data.origins, data.input_column)
        head = self.model.head
        if head.labels is None:
            head.set_labels(label_set_classes(data.labels)[0])
        rows = label_matrix(data.labels, head.labels, data.origins)
        return [Example(x, y, o) for x, y, o in zip(data.inputs, rows, data.origins)]

    def collate(self, examples: Sequence[tuple[Any, Sequence[int]]]) -> dict[str, Any]:
        origins = [getattr(e, "origin", f"example {i}") for i, e in enumerate(examples)]
        inputs = preprocess_named(self.model.preprocess, [x for x, _ in examples], origins)
        return {"inputs": inputs, "targets": torch.tensor([list(y) for _, y in examples], dtype=torch.float32)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.model(**batch["inputs"])["logits"].float()
        loss = F.binary_cross_entropy_with_logits(logits, batch["targets"])
        return {"loss": loss, "logits": logits, "scores": logits.sigmoid()}

    def metrics(self) -> "MultiLabelMetrics":
        head = self.model.head
        return MultiLabelMetrics(head.num_classes, head.thresholds)


class MultiLabelMetrics:
    """Streaming micro-/macro-F1 at fixed thresholds (per-class counts) and mAP (over the kept scores).

    Args:
        num_classes: classes of the head.
        thresholds: one per class (``None``: 0.5 each); a class is predicted when its score is ``>=`` it.
    """

    higher_is_better = MultiLabelTask.higher_is_better

    def __init__(self, num_classes: int, thresholds: Sequence[float] | None = None):
        self.thresholds = np.asarray(thresholds if thresholds is not None else [0.5] * num_classes, np.float64)
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)
        self.loss_sum = 0.0
        self.count = 0
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # (targets as uint8, scores as float32)

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        y = batch["targets"].detach().cpu().numpy() > 0.5
        s = outputs["scores"].detach().float().cpu().numpy()
        p = s.astype(np.float64) >= self.thresholds
        self.tp += (p & y).sum(0)
        self.fp += (p & ~y).sum(0)
        self.fn += (~p & y).sum(0)
        self.loss_sum += float(outputs["loss"]) * len(y)
        self.count += len(y)
        self.parts.append((y.astype(np.uint8), s))

    def compute(self) -> dict[str, float]:
        tp, fp, fn = self.tp.sum(), self.fp.sum(), self.fn.sum()
        micro = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
        denominators = 2 * self.tp + self.fp + self.fn
        per_class = np.where(denominators > 0, 2 * self.tp / np.maximum(denominators, 1), 0.0)
        y, s = self.arrays()
        ap = [average_precision(y[:, c], s[:, c]) for c in range(y.shape[1])]
        return {"loss": self.loss_sum / max(1, self.count), "micro_f1": float(micro),
                "macro_f1": float(per_class.mean()) if len(per_class) else 0.0,
                "map": float(np.mean(ap)) if ap else 0.0}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluated targets ``[N, C]`` (0/1) and scores ``[N, C]``, in evaluation order."""
        if not self.parts:
            n = len(self.thresholds)
            return np.zeros((0, n), np.uint8), np.zeros((0, n), np.float32)
        return np.concatenate([y for y, _ in self.parts]), np.concatenate([s for _, s in self.parts])

    def custom_metric_input(self) -> tuple[np.ndarray, np.ndarray]:
        """What a custom metric ``fn`` of ``Trainer(metrics=...)`` receives: ``(y_true, y_score)`` NumPy
        arrays ``[N, C]``, as scikit-learn's multi-label metrics take them (``fn(*given)``)."""
        return self.arrays()

    def best_thresholds(self) -> list[float]:
        """The per-class thresholds that maximise F1 on the evaluated data (the rule in the module docstring)."""
        y, s = self.arrays()
        return best_thresholds(y, s, self.thresholds)


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision of one class, as scikit-learn's ``average_precision_score``: the sum over distinct
    score thresholds (high to low) of ``(R_k - R_{k-1}) * P_k``; 0 when the class has no positive."""
    positives = int(y.sum())
    if positives == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    y, s = y[order].astype(np.float64), s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_thresholds(targets: np.ndarray, scores: np.ndarray, current: Sequence[float]) -> list[float]:
    """Per-class thresholds maximising each class's F1 on ``(targets, scores)`` ``[N, C]`` (module docstring).

    Args:
        targets: 0/1 indicators.
        scores: sigmoid scores.
        current: the thresholds kept by classes without a positive example.
    """
    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    chosen = [float(t) for t in current]
    for c in range(targets.shape[1]):
        positives = int(targets[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c], targets[order, c].astype(np.float64)
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # cut after each run of equal scores
        f1 = 2 * np.cumsum(y)[last] / (last + 1 + positives)
        k = int(np.argmax(f1))  # the first best: the highest threshold among ties
        below = s[last[k] + 1] if last[k] + 1 < len(s) else 0.0
        chosen[c] = float((s[last[k]] + below) / 2)
    return chosen


def tune_thresholds(model: nn.Module, data: Any, *, batch_size: int = 32, **options: Any) -> list[float]:
    """Choose each class's threshold on validation ``data`` and set them on ``model.head``; returns them.

    Call it after ``Trainer.fit`` (the best epoch's weights restored), on the validation data, never on the
    test data; then ``save_pretrained`` keeps the thresholds in the head's config::

        tk.Trainer(epochs=5).fit(model, train, val)
        tune_thresholds(model, val)
        tk.Trainer().evaluate(model, test)      # micro_f1 / macro_f1 at the tuned thresholds

    Args:
        model: a TransferModel with a multi-label head.
        data: labelled data as :meth:`MultiLabelTask.examples` reads it.
        batch_size: inputs per forward pass.
        **options: ``input_column``, ``label_column``, ``separator`` of :class:`MultiLabelTask`.
    """
    task = model.head.task(model, **options)
    examples = task.examples(data)
    outputs, _ = model.outputs([x for x, _ in examples], batch_size=batch_size)
    scores = model.head.scores(outputs).numpy()
    targets = np.array([list(y) for _, y in examples], dtype=np.uint8)
    model.head.thresholds = best_thresholds(targets, scores, model.head.thresholds)
    return list(model.head.thresholds)
