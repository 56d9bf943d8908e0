"""Supervised classification: cross-entropy over a TransferModel's logits, accuracy and macro-F1.

What only classification has lives here, not in the Trainer: class weights (the hooks of
:class:`~transferkit.tasks.protocol.ClassWeighted`), the streamed confusion matrix, custom metrics over
it and its ``confusion.png``.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.images import check_image_files
from transferkit.data import check_inputs, class_names, label_ids, load_labelled, preprocess_named
from transferkit.errors import ConfigError, DataError, LabelError
from transferkit.files import atomic_path


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
            ``num_classes`` and no names treats integer labels as class ids; a head with neither takes every
            class from the first training data); see :mod:`transferkit.data`.
        label_smoothing: passed to the cross-entropy loss.
        class_weights: ``[num_classes]`` weights of the training loss (the ``weight=`` of the
            cross-entropy), e.g. class-balanced weights for imbalanced labels; ``None`` weighs all classes
            alike. Evaluation losses are never weighted, so they stay comparable across epochs. A
            fine-tuning strategy sets it per epoch through :meth:`set_class_weights`
            (:mod:`transferkit.trainer.strategies`).
        input_column: column of the inputs (texts, image paths or images) when the data is a table (CSV,
            JSONL, DataFrame, dict of columns, datasets.Dataset).
        label_column: column of the labels in a table.
        augment: training augmentation: of an image model :class:`~transferkit.tasks.augment.ImageAugment` (a
            per-image policy, random erasing, mixup / cutmix with soft targets), of a text model
            :class:`~transferkit.tasks.augment.TextAugment` (EDA-style word swaps, deletions, replacements);
            ``None``: none. Evaluation batches are never augmented.

    Attributes:
        default_metric: ``"accuracy"``, what selects the best epoch unless ``Trainer(metric=...)`` says
            otherwise (``"macro_f1"``, ``"loss"`` or a custom metric).
    """

    default_metric = "accuracy"

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None,
                 input_column: str = "text", label_column: str = "label", augment: Any = None):
        super().__init__()
        from .augment import ImageAugment, TextAugment

        if augment is not None and not isinstance(augment, (ImageAugment, TextAugment)):
            raise ConfigError(f"augment takes an ImageAugment or a TextAugment (transferkit.tasks.augment), got "
                              f"{augment!r}.")
        self.augment = augment
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
        if self.augment is not None and modality != self.augment.modality:
            raise ConfigError(f"{type(self.augment).__name__} augments {self.augment.modality}s, and this model's backbone reads "
                              f"{modality or 'no'} inputs: drop augment=, or use the other one of ImageAugment and "
                              "TextAugment.")
        check_inputs(data.inputs, modality, data.origins)
        if modality == "image":
            files = [(x, o) for x, o in zip(data.inputs, data.origins) if isinstance(x, (str, os.PathLike))]
            check_image_files([x for x, _ in files], [o for _, o in files])
        head = self.model.head
        if head.labels is None:
            names, kind = class_names(data.labels)
            if head.num_classes is None:  # Classification(): its classes are the training data's
                if len(names) < 2:
                    raise LabelError(f"the training data has one class only ({names}): a classifier needs at "
                                     "least two; check the label column.")
                head.labels = names
            elif kind != "int":
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
        raw = [x for x, _ in examples]
        labels = torch.tensor([y for _, y in examples], dtype=torch.long)
        if self.augment is None or not self.training:
            return {"inputs": preprocess_named(self.model.preprocess, raw, origins), "labels": labels}
        if self.augment.modality == "text":  # TextAugment: new words, then the backbone's tokenizer
            batch = {"inputs": preprocess_named(self.model.preprocess, self.augment.texts(raw), origins),
                     "labels": labels}
            if self.augment.mixes:  # wordMixup: the embeddings are mixed in forward
                batch["mix"], batch["targets"] = self.augment.mix(batch["inputs"], labels, self.model.head.num_classes)
            return batch
        images = preprocess_named(self.augment.images, raw, origins)
        inputs = preprocess_named(self.model.preprocess, images, origins)
        inputs["pixel_values"] = self.augment.erase(inputs["pixel_values"])
        batch = {"inputs": inputs, "labels": labels}
        if self.augment.mixes:
            inputs["pixel_values"], batch["targets"] = self.augment.mix(inputs["pixel_values"], labels,
                                                                        self.model.head.num_classes)
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mixing = contextlib.nullcontext()
        if "mix" in batch:  # wordMixup (TextAugment(mixup=...)): each text's embeddings mixed with the one before
            from transferkit.backbones.base import input_hook

            from .augment import mix_rows

            mixing = input_hook(self.model.backbone, lambda e: mix_rows(e, batch["mix"]))
        with mixing:
            logits = self.model(**batch["inputs"])["logits"]
        weights = self.class_weights if self.training else None
        if "targets" in batch:  # mixup / cutmix: soft targets
            from .augment import soft_cross_entropy

            out = soft_cross_entropy(logits, batch["targets"], weights, self.label_smoothing)
        else:
            out = cross_entropy(logits, batch["labels"], weights, self.label_smoothing)
        layer = getattr(self.model.head, "prototype_layer", None)
        if layer is not None and self.training and self.model.head.diversity:
            out["loss"] = out["loss"] + self.model.head.diversity * layer.penalty()
        return {**out, "logits": logits}

    @torch.no_grad()
    def prepare(self, examples: Sequence[tuple[Any, int]], batch_size: int = 64) -> None:
        """Place a prototype head's prototypes on the training features (:mod:`transferkit.heads.prototypes`) unless
        they were placed before (a loaded or resumed model keeps its own); nothing for other heads. The Trainer calls
        it once before training; called alone on a frozen backbone it makes a nearest-centroid classifier. A
        :class:`~transferkit.tasks.augment.TextAugment` without a vocabulary takes its replacement words here."""
        if self.augment is not None and self.augment.modality == "text":  # replacement words from the training texts
            self.augment.fit([x for x, _ in examples])
        layer = getattr(self.model.head, "prototype_layer", None)
        if layer is None or bool(layer.initialised):
            return
        was_training = self.training
        self.eval()
        pooled = self.model.backbone.encode([x for x, _ in examples], batch_size)
        # The prototypes sit after the head's dropout and hidden layer: place them where they will be compared.
        layer.initialise(self.model.head.layers[:-1](pooled).float().cpu(), torch.tensor([y for _, y in examples]))
        self.train(was_training)

    def metrics(self) -> "ClassificationMetrics":
        head = self.model.head
        return ClassificationMetrics(head.num_classes, getattr(head, "labels", None))

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weight the training loss by ``weights`` (``[num_classes]``) from now on; ``None``: all alike."""
        self.class_weights = weights

    def class_counts(self, examples: Sequence[tuple[Any, int]]) -> list[int]:
        """Training examples per class id (for class-balanced weights), one count per class of the head.

        Raises:
            DataError: ``examples`` are not ``(input, class id)`` pairs, as :meth:`examples` makes.
        """
        return count_classes([e[-1] for e in examples], getattr(self.model.head, "num_classes", None),
                             type(self).__name__)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_weights: Any = None,
                  label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """The cross-entropy of class-id ``labels``, optionally class-weighted, with what accumulation needs.

    A weighted mean divides by the batch's sum of label weights (``torch.nn.functional.cross_entropy``), so that
    sum is returned as ``num_items``: the Trainer then weighs micro-batches (accumulation, DDP) so that they make
    the update of the large batch. Without weights the mean is over examples (``num_items`` = batch size).
    """
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    loss = F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)
    items = weight[labels].sum() if weight is not None else len(labels)
    return {"loss": loss, "num_items": items}


def count_classes(labels: Sequence[Any], num_classes: int | None, task: str) -> list[int]:
    """Examples per class id (for class-balanced weights), one count per class ``0..num_classes-1``.

    Raises:
        DataError: a label is not a class id (the examples were not made by the task's ``examples``).
    """
    try:
        ids = [operator.index(y) for y in labels]
    except (TypeError, ValueError) as e:
        raise DataError(f"class counts need examples whose last part is a class id, as {task}.examples makes; pass "
                        "the data through task.examples(data) first.") from e
    counts = Counter(ids)
    return [counts.get(c, 0) for c in range(num_classes or max(ids, default=-1) + 1)]


class ClassificationMetrics:
    """Streaming accuracy and macro-F1 from a confusion matrix: no list of predictions is kept.

    Args:
        num_classes: classes of the head.
        labels: their names (for ``confusion.png``); ``None`` names them ``0..C-1``.

    Attributes:
        confusion: ``[C, C]`` counts, ``confusion[i, j]`` examples of class ``i`` predicted as ``j``. A
            custom metric ``Trainer(metrics={"name": fn})`` receives it as a NumPy array
            (:meth:`custom_metric_input`), so any metric of the confusion matrix is exact.
        higher_is_better: the direction of each metric :meth:`compute` returns.
    """

    higher_is_better = {"loss": False, "accuracy": True, "macro_f1": True}

    def __init__(self, num_classes: int, labels: Sequence[str] | None = None):
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.labels = list(labels) if labels is not None else None
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

    def custom_metric_input(self) -> np.ndarray:
        """What a custom metric ``fn`` receives: the confusion matrix as a NumPy array."""
        return self.confusion.cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"confusion": self.confusion.tolist(), "loss_sum": self.loss_sum, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.confusion = torch.tensor(state["confusion"], dtype=torch.long)
        self.loss_sum, self.count = state.get("loss_sum", 0.0), state.get("count", 0)

    def report(self, output_dir: str | os.PathLike) -> list[Path]:
        """Write ``confusion.png`` (rows: true class, columns: predicted) to ``output_dir``."""
        return [save_confusion(self.confusion, Path(output_dir), self.labels)]


def save_confusion(confusion: Any, output_dir: Path, labels: Sequence[str] | None = None) -> Path:
    """Draw a ``[C, C]`` confusion matrix (tensor or array) as ``output_dir/confusion.png``, atomically.

    Raises:
        ValueError: the matrix is not square, or ``labels`` does not name each of its classes.
    """
    figure = confusion_figure(confusion, labels)
    path = Path(output_dir) / "confusion.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def confusion_figure(confusion: Any, labels: Sequence[str] | None = None):
    """A matplotlib figure of a confusion matrix, with counts in the cells up to 30 classes.

    Drawn by the Agg canvas: no display is needed and pyplot's global state is never touched.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("reports need matplotlib, a dependency of transferkit: pip install matplotlib") from e
    matrix = np.asarray(confusion.detach().cpu() if hasattr(confusion, "detach") else confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {matrix.shape}")
    n = matrix.shape[0]
    names = [str(i) for i in range(n)] if labels is None else [str(name) for name in labels]
    if len(names) != n:
        raise ValueError(f"{len(names)} labels for a {n}x{n} confusion matrix")
    side = min(20.0, 3.0 + 0.45 * n)
    figure = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(n), labels=names, rotation=45, ha="right")
    axes.set_yticks(range(n), labels=names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    total = matrix.sum()
    axes.set_title(f"confusion matrix (accuracy {np.trace(matrix) / total:.3f})" if total else "confusion matrix")
    if n <= 30:  # beyond that the counts are unreadable; the colours still show the pattern
        threshold = matrix.max() / 2
        for (i, j), count in np.ndenumerate(matrix):
            axes.text(j, i, f"{count:g}", ha="center", va="center",
                      color="white" if count > threshold else "black", fontsize=8 if n > 10 else 10)
    return figure
