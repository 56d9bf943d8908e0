"""Sentence-pair tasks: cross-entropy over pair classes (accuracy, macro-F1) or MSE on a standardised score.

Data (:func:`load_pairs`) is ``(text_a, text_b, label)`` triples, ``((text_a, text_b), label)`` pairs, three
columns ``(texts_a, texts_b, labels)``, or any table :func:`transferkit.data.load_raw` reads (CSV/TSV/JSONL,
DataFrame, dict of columns, datasets.Dataset, a list of dicts) with two text columns (``text_a_column``,
``text_b_column``) and a label (or score) column. Labels follow the class-label rule of
:mod:`transferkit.data`; scores the number rule of :mod:`transferkit.data.targets`. An empty text or a
missing label is an error naming the rows. Metrics reuse classification's
:class:`~transferkit.tasks.classification.ClassificationMetrics` and regression's
:class:`~transferkit.tasks.regression.RegressionMetrics`.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data import (
    as_table,
    check_inputs,
    class_names,
    find_column,
    load_raw,
    preprocess_named,
)
from transferkit.data.common import first, short
from transferkit.data.labels import clean_labels
from transferkit.data.targets import number
from transferkit.errors import ConfigError, DataError, InputError, LabelError

from .classification import ClassificationMetrics, count_classes, cross_entropy
from .regression import RegressionMetrics


class PairExample(tuple):
    """One ``(text_a, text_b, target)`` example that knows its ``origin`` (``"train.csv line 7"``)."""

    origin: str

    def __new__(cls, a: str, b: str, y: Any, origin: str) -> "PairExample":
        example = super().__new__(cls, (a, b, y))
        example.origin = origin
        return example

    def __reduce__(self):  # DataLoader workers receive examples pickled
        return (PairExample, (self[0], self[1], self[2], self.origin))


def load_pairs(source: Any, *, text_a_column: str = "text_a", text_b_column: str = "text_b",
               label_column: str = "label") -> tuple[list[tuple[Any, Any]], list, list[str]]:
    """The ``(text_a, text_b)`` pairs of ``source``, their raw labels and their origins.

    Raises:
        DataError: the source is empty, unreadable, or lacks a named column; an item is not a triple.
    """
    if isinstance(source, tuple) and len(source) == 3 and all(_is_column(c) for c in source):
        a, b, y = (list(c) for c in source)
        if not len(a) == len(b) == len(y):
            raise DataError(f"columns (texts_a, texts_b, labels) must have one value per example; got lengths "
                            f"{len(a)}, {len(b)} and {len(y)}.")
        return list(zip(a, b)), y, [f"item {i}" for i in range(len(a))]
    if _is_items(source):
        items = list(source)
        if items and not all(isinstance(item, dict) for item in items):
            if not items:
                raise DataError("the dataset is empty: give at least one labelled pair.")
            pairs, labels, origins = [], [], []
            for i, item in enumerate(items):
                if isinstance(item, (tuple, list)) and len(item) == 3:
                    a, b, y = item
                elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list)) \
                        and len(item[0]) == 2:
                    (a, b), y = item
                else:
                    raise DataError(f"item {i} is {short(item)}, not a (text_a, text_b, label) triple or a "
                                    "((text_a, text_b), label) pair.")
                pairs.append((a, b)), labels.append(y), origins.append(f"item {i}")
            return pairs, labels, origins
        source = items
    texts = load_raw(source, input_column=text_a_column, label_column=text_b_column)
    labelled = load_raw(source, input_column=text_a_column, label_column=label_column)
    origins = list(texts.origins or [f"item {i}" for i in range(len(texts.inputs))])
    return list(zip(texts.inputs, texts.labels)), list(labelled.labels), origins


def prediction_pairs(raw: Any, text_a_column: str = "text_a", text_b_column: str = "text_b") -> tuple[list, bool]:
    """The pairs of a ``predict`` call and whether ``raw`` was one single pair.

    Raises:
        InputError: an item is not a ``(text_a, text_b)`` pair (naming it).
    """
    if isinstance(raw, tuple) and len(raw) == 2 and all(isinstance(t, str) for t in raw):
        return [raw], True
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise InputError(f"a pair model predicts on pairs of texts: pass (text_a, text_b) or a list of them; got "
                         f"{short(raw)}.")
    table = as_table(raw)
    if table is not None:
        what, columns, get, _ = table
        a = get(find_column(columns, text_a_column, what))
        return list(zip(a, get(find_column(columns, text_b_column, what)))), False
    pairs, bad = [], []
    for i, item in enumerate(raw):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.append((item[0], item[1]))
        else:
            bad.append(f"item {i} ({short(item)})")
    if bad:
        raise InputError(f"{len(bad)} item(s) are not (text_a, text_b) pairs: {first(bad)}.")
    return pairs, False


class PairTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.pair.Pair` head.

    Args:
        model: the model; a head without classes takes them from the first training data (sorted, by
            the label rule), a regression head its score's mean and standard deviation.
        text_a_column, text_b_column: the columns of the two texts in a table (default: the head's).
        label_column: the column of the labels in a table (default ``"label"``; a regression head's
            ``target``).
        label_smoothing: passed to the cross-entropy loss (classification).
    """

    def __init__(self, model: nn.Module, text_a_column: str | None = None, text_b_column: str | None = None,
                 label_column: str | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        head = model.head
        self.text_a_column = text_a_column or head.text_a_column
        self.text_b_column = text_b_column or head.text_b_column
        self.label_column = label_column or (head.target if head.regression else "label")
        self.label_smoothing = label_smoothing
        self.class_weights = None  # set per epoch by the class-balanced strategies (classification only)
        self.default_metric = "rmse" if head.regression else "accuracy"
        self.logits_kind = "values" if head.regression else "categorical"  # for SMART (trainer.adversarial)

    def examples(self, data: Any) -> list[PairExample]:
        """``(text_a, text_b, class id or score)`` examples, checked before any training starts.

        Raises:
            DataError: the data cannot be read or lacks a column.
            InputError: a text is missing or empty (naming the rows and which text).
            LabelError: a label is missing or not a class of the head; a score is missing or not a finite
                number, or the same in every example (naming the rows).
        """
        head = self.model.head
        pairs, raw, origins = load_pairs(data, text_a_column=self.text_a_column, text_b_column=self.text_b_column,
                                         label_column=self.label_column)
        if not pairs:
            raise DataError("the pair dataset is empty: give at least one labelled pair.")
        for side, column in enumerate((self.text_a_column, self.text_b_column)):
            check_inputs([p[side] for p in pairs], "text", [f"{o} ({column})" for o in origins])
        if not isinstance(data, (list, tuple)) and getattr(head, "text_a_column", None) != self.text_a_column:
            head.text_a_column, head.text_b_column = self.text_a_column, self.text_b_column
        targets = self._scores(raw, origins) if head.regression else self._class_ids(raw, origins)
        return [PairExample(a, b, y, o) for (a, b), y, o in zip(pairs, targets, origins)]

    def _class_ids(self, raw: list, origins: list[str]) -> list[int]:
        from transferkit.data import label_ids

        head = self.model.head
        labels = clean_labels(raw, origins, "pair", "for a similarity score, use Pair(target='score')")
        if head.labels is None and head.num_classes is None:
            head.labels, _ = class_names(labels)
        return label_ids(labels, head.labels, head.num_classes, origins)

    def _scores(self, raw: list, origins: list[str]) -> list[float]:
        head = self.model.head
        values = [number(y) for y in raw]
        bad = [f"{o} ({y!r})" for y, v, o in zip(raw, values, origins) if v is None]
        if bad:
            raise LabelError(f"{len(bad)} score(s) are missing or not finite numbers: {first(bad)}. Every pair needs "
                             f"a number in {self.label_column!r}: fill them in or remove those rows.")
        if head.mean is None:
            array = np.asarray(values, dtype=np.float64)
            if not array.std() > 0:
                raise LabelError(f"the score {self.label_column!r} has the same value in every training pair, so "
                                 "there is nothing to learn: check the column.")
            head.set_scale(float(array.mean()), float(array.std()))
        return values

    def collate(self, examples: Sequence[PairExample]) -> dict[str, Any]:
        head = self.model.head
        origins = [getattr(e, "origin", f"example {i}") for i, e in enumerate(examples)]
        encoded = head.encode([(a, b) for a, b, _ in examples])
        inputs = preprocess_named(self.model.preprocess, encoded, origins if head.mode == "cross" else origins * 2)
        dtype = torch.float32 if head.regression else torch.long
        return {"inputs": inputs, "labels": torch.tensor([y for _, _, y in examples], dtype=dtype)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.model(**batch["inputs"])["logits"].float()
        head = self.model.head
        if not head.regression:
            weights = self.class_weights if self.training else None
            return {**cross_entropy(logits, batch["labels"], weights, self.label_smoothing), "logits": logits}
        loss = F.mse_loss(logits[:, 0], (batch["labels"] - head.mean) / head.std)
        return {"loss": loss, "logits": logits, "predictions": logits * head.std + head.mean}

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weight the training loss of a pair classifier by ``weights`` (``[num_classes]``); ``None``: all alike."""
        self.class_weights = weights

    def class_counts(self, examples: Sequence[PairExample]) -> list[int]:
        """Training pairs per class id (the class-balanced strategies' hook).

        Raises:
            ConfigError: a score (regression) pair head, which has no classes to balance.
        """
        head = self.model.head
        if head.regression:
            raise ConfigError(f"a Pair head that predicts a score ({head.target!r}) has no classes to balance: choose "
                              "strategy 'lp_ft' rather than 'lp_ft_balanced'.")
        return count_classes([e[2] for e in examples], head.num_classes, type(self).__name__)

    def metrics(self) -> "ClassificationMetrics | _ScoreMetrics":
        head = self.model.head
        if head.regression:
            return _ScoreMetrics()
        return ClassificationMetrics(head.num_classes, head.labels)


class _ScoreMetrics(RegressionMetrics):
    """:class:`RegressionMetrics` of one score, read from the pair batch's ``labels``."""

    def __init__(self):
        super().__init__(1)

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        super().update({"targets": batch["labels"][:, None]}, outputs)


def _is_column(x: Any) -> bool:
    return (not isinstance(x, (str, bytes, tuple, dict)) and hasattr(x, "__len__") and hasattr(x, "__iter__")
            and as_table(x) is None)


def _is_items(source: Any) -> bool:
    """A list, tuple or generator of examples (not a path, table, torch dataset or LabelledData)."""
    if isinstance(source, (str, bytes, os.PathLike, dict)) or not isinstance(source, Iterable):
        return False
    if as_table(source) is not None or type(source).__module__.startswith(("torch", "transferkit", "datasets")):
        return False
    return isinstance(source, (list, tuple)) or iter(source) is source
