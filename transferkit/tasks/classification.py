"""Supervised classification: cross-entropy over a TransferModel's logits, accuracy and macro-F1."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.images import check_image_files
from transferkit.data import check_inputs, class_names, label_ids, load_labelled, preprocess_named
from transferkit.errors import LabelError


class Example(tuple):
    """One ``(raw input, class id)`` pair that also knows its ``origin`` in the user's data
    (``"train.csv line 7"``), so an error in a shuffled batch can name it."""

    origin: str

    def __new__(cls, x: Any, y: int, origin: str) -> "Example":
        example = super().__new__(cls, (x, y))
        example.origin = origin
        return example

    def __reduce__(self):  # DataLoader workers receive examples pickled
        return (Example, (self[0], self[1], self.origin))


class ClassificationTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a classification head.

    Args:
        model: the model; its head's ``labels`` (if any) map label names to class ids. A head without
            names takes them from the first training data whose labels are not all integers (a head with
            ``num_classes`` and no names treats integer labels as class ids); see :mod:`transferkit.data`.
        label_smoothing: passed to the cross-entropy loss.
        class_weights: ``[num_classes]`` weights of the training loss (the ``weight=`` of the
            cross-entropy), e.g. class-balanced weights for imbalanced labels; ``None`` weighs all classes
            alike. Evaluation losses are never weighted, so they stay comparable across epochs. A
            fine-tuning strategy may set it per epoch (:mod:`transferkit.trainer.strategies`).
        input_column: column of the inputs (texts, image paths or images) when the data is a table (CSV,
            JSONL, DataFrame, dict of columns, datasets.Dataset).
        label_column: column of the labels in a table.
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None,
                 input_column: str = "text", label_column: str = "label"):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.input_column = input_column
        self.label_column = label_column

    def examples(self, data: Any) -> list[Example]:
        """``(raw input, class id)`` examples, checked before any training starts.

        Raises:
            DataError: the data cannot be read or its labels do not fit the head (:class:`LabelError`
                names the rows).
            ModalityError: texts for an image backbone, images or image paths for a text backbone.
            InputError: a text is empty; :class:`ImageError`: an image file cannot be opened.
        """
        data = load_labelled(data, input_column=self.input_column, label_column=self.label_column)
        modality = getattr(getattr(self.model, "backbone", None), "modality", None)
        check_inputs(data.inputs, modality, data.origins)
        if modality == "image":
            files = [(x, o) for x, o in zip(data.inputs, data.origins) if isinstance(x, (str, os.PathLike))]
            check_image_files([x for x, _ in files], [o for _, o in files])
        head = self.model.head
        if head.labels is None:
            names, kind = class_names(data.labels)
            if kind != "int":
                if len(names) != head.num_classes:
                    raise LabelError(f"the data has {len(names)} distinct labels {names[:10]} but the head has "
                                     f"num_classes={head.num_classes}: build the head with "
                                     "Classification(labels=...) from transferkit.data.class_names(labels).")
                head.labels = names
        if getattr(head, "input_column", "") is None and data.input_column is not None:
            head.input_column = data.input_column
        ids = label_ids(data.labels, head.labels, head.num_classes, data.origins)
        return [Example(x, y, o) for x, y, o in zip(data.inputs, ids, data.origins)]

    def collate(self, examples: Sequence[tuple[Any, int]]) -> dict[str, Any]:
        origins = [getattr(e, "origin", f"example {i}") for i, e in enumerate(examples)]
        inputs = preprocess_named(self.model.preprocess, [x for x, _ in examples], origins)
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
