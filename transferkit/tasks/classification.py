"""Supervised classification: cross-entropy over a TransferModel's logits, accuracy and macro-F1."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data import infer_label_names, label_ids, load_labelled


class ClassificationTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a classification head.

    Args:
        model: the model; its head's ``labels`` (if any) map label names to class ids. A head without
            names takes them from the first training data whose labels are strings.
        label_smoothing: passed to the cross-entropy loss.
        class_weights: ``[num_classes]`` weights of the training loss (the ``weight=`` of the
            cross-entropy), e.g. class-balanced weights for imbalanced labels; ``None`` weighs all classes
            alike. Evaluation losses are never weighted, so they stay comparable across epochs. A
            fine-tuning strategy may set it per epoch (:mod:`transferkit.trainer.strategies`).
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights

    def examples(self, data: Any) -> list[tuple[Any, int]]:
        """(raw input, class id) pairs; raises :class:`~transferkit.errors.DataError` when labels don't fit."""
        data = load_labelled(data)
        head = self.model.head
        if head.labels is None:
            names = infer_label_names(data.labels)
            if names is not None and len(names) != head.num_classes:
                from transferkit.errors import DataError

                raise DataError(f"the data has {len(names)} distinct labels {names[:10]} but the head has "
                                f"num_classes={head.num_classes}.")
            head.labels = names
        return list(zip(data.inputs, label_ids(data.labels, head.labels, head.num_classes)))

    def collate(self, examples: Sequence[tuple[Any, int]]) -> dict[str, Any]:
        inputs = self.model.preprocess([x for x, _ in examples])
        return {"inputs": inputs, "labels": torch.tensor([y for _, y in examples], dtype=torch.long)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.model(**batch["inputs"])["logits"]
        weight = None
        if self.class_weights is not None and self.training:
            weight = torch.as_tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        loss = F.cross_entropy(logits.float(), batch["labels"], weight=weight, label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}

    def metrics(self) -> "ClassificationMetrics":
        return ClassificationMetrics(self.model.head.num_classes)


class ClassificationMetrics:
    """Streaming accuracy and macro-F1 from a confusion matrix: no list of predictions is kept."""

    def __init__(self, num_classes: int):
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.loss_sum = 0.0
        self.count = 0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        labels = batch["labels"].cpu()
        preds = outputs["logits"].argmax(-1).cpu()
        n = self.confusion.shape[0]
        self.confusion += torch.bincount(labels * n + preds, minlength=n * n).view(n, n)
        self.loss_sum += float(outputs["loss"]) * len(labels)
        self.count += len(labels)

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        tp = c.diag()
        precision = tp / c.sum(0).clamp(min=1)
        recall = tp / c.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        present = (c.sum(0) + c.sum(1)) > 0  # classes absent from both labels and predictions don't count
        return {"loss": self.loss_sum / max(1, self.count),
                "accuracy": float(tp.sum() / c.sum().clamp(min=1)),
                "macro_f1": float(f1[present].mean()) if present.any() else 0.0}
