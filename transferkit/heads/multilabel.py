"""Multi-label classification: a set of classes per input, from the pooled features (contract: :mod:`.base`).

Binary relevance: one independent sigmoid output per class, trained with binary cross-entropy on the
logits (Tsoumakas & Katakis, "Multi-Label Classification: An Overview", 2007). ``predict`` returns the
classes whose score reaches the class's threshold; thresholds are 0.5 until they are chosen on validation
data by :func:`transferkit.tasks.multilabel.tune_thresholds` (per-class thresholds that maximise F1, the
"SCut" strategy of Yang, "A Study of Thresholding Strategies for Text Categorization", SIGIR 2001; see
Lipton et al., "Thresholding Classifiers to Maximize F1 Score", https://arxiv.org/abs/1402.1892). They are
saved in the head's config.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.heads import register_head
from transferkit.heads.base import LABEL_TYPES, class_list, features_part

DEFAULT_THRESHOLD = 0.5


@register_head("multilabel")
class MultiLabel(nn.Module):
    """Linear (or one-hidden-layer MLP) multi-label classifier over pooled features.

    Args:
        labels: class names (strings, integers or bools), output ``i`` scoring class ``i``; ``None``: the
            sorted classes of the first training data (:mod:`transferkit.data.multilabel`), the layers
            being created then.
        label_type: ``"str"``, ``"int"`` or ``"bool"``, the type ``predict`` returns names in; ``None``
            takes it from ``labels`` (as :class:`~transferkit.heads.Classification` does).
        hidden: width of an optional hidden layer (GELU); ``None`` for a linear head.
        dropout: dropout on the features before each linear layer.
        thresholds: a class is predicted when its sigmoid score is ``>=`` its threshold; one float for
            every class or one per class; ``None``: 0.5 for each. Normally chosen on validation data by
            ``tune_thresholds``.
        in_features: feature size; normally left out and taken from the backbone.
        input_column: the table column the head was trained on (recorded by training).
    """

    needs = frozenset({"pooled"})

    def __init__(self, labels: Sequence | None = None, *, label_type: str | None = None, hidden: int | None = None,
                 dropout: float = 0.0, thresholds: float | Sequence[float] | None = None,
                 in_features: int | None = None, input_column: str | None = None):
        super().__init__()
        if label_type is not None and label_type not in LABEL_TYPES:
            raise ConfigError(f"label_type must be one of {sorted(LABEL_TYPES)}, got {label_type!r}")
        self.label_type = label_type
        self.hidden = hidden
        self.dropout = dropout
        self.input_column = input_column
        self.in_features = in_features
        self.layers: nn.Module | None = None
        self._labels: list | None = None
        self._thresholds: list[float] | None = None
        self._pending = thresholds  # applied once the classes are known
        if labels is not None:
            self.set_labels(labels)
        if in_features is not None:
            self.build(in_features)

    # -- classes and thresholds ---------------------------------------------------------------------

    @property
    def labels(self) -> list | None:
        """Class names (output ``i`` scores class ``i``), ``None`` until set or taken from training data."""
        return self._labels

    @property
    def num_classes(self) -> int:
        return len(self._labels) if self._labels is not None else 0

    def set_labels(self, labels: Sequence) -> None:
        """Name the classes (once), and create the layers if the feature size is known.

        Raises:
            ConfigError: the names are not distinct class names, or the head already has other classes.
        """
        names, kind = class_list(labels, self.label_type)
        if not names:
            raise ConfigError("labels must name at least one class.")
        if self._labels is not None and names != self._labels:
            raise ConfigError(f"the head's classes are {self._labels}; it cannot take {names}: build a new head.")
        self.label_type, self._labels = kind, names
        if self._thresholds is None:
            self.thresholds = self._pending
        if self.in_features is not None and self.layers is None:
            self._make_layers()

    @property
    def thresholds(self) -> list[float] | None:
        """One threshold per class (``None`` until the classes are known)."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value: float | Sequence[float] | None) -> None:
        if self._labels is None:
            self._pending = value
            return
        if value is None:
            value = DEFAULT_THRESHOLD
        values = [value] * self.num_classes if isinstance(value, (int, float)) else list(value)
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"thresholds must be numbers, got {value!r}") from e
        if len(values) != self.num_classes or not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
            raise ConfigError(f"thresholds must be one number in [0, 1] or one per class ({self.num_classes}: "
                              f"{self._labels[:10]}); got {value!r}.")
        self._thresholds = values

    # -- the head contract --------------------------------------------------------------------------

    def build(self, in_features: int) -> None:
        """Record the feature size and create the layers once the classes are known (no-op if built)."""
        if self.in_features is not None and in_features != self.in_features:
            raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
        self.in_features = int(in_features)
        if self._labels is not None and self.layers is None:
            self._make_layers()

    def _make_layers(self) -> None:
        width, n = self.hidden or self.in_features, self.num_classes
        body = [nn.Dropout(self.dropout), nn.Linear(self.in_features, self.hidden), nn.GELU()] if self.hidden else []
        self.layers = nn.Sequential(*body, nn.Dropout(self.dropout), nn.Linear(width, n))

    def forward(self, features: Any) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from ``features.pooled`` (or a ``[B, in_features]`` tensor)."""
        if self.layers is None:
            raise ConfigError("the multi-label head has no classes yet: build it with MultiLabel(labels=[...]) "
                              "or train it (its classes come from the training data).")
        return self.layers(features_part(features, "pooled"))

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: BCE with logits; micro-/macro-F1 and mAP (:class:`MultiLabelTask`)."""
        from transferkit.tasks.multilabel import MultiLabelTask

        return MultiLabelTask(model, **options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities ``[N, num_classes]`` (the sigmoid of the logits; rows need not sum to 1)."""
        return outputs.float().sigmoid()

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` booleans: each class's score ``>=`` its threshold (compared in float64)."""
        thresholds = torch.tensor(self.thresholds or [DEFAULT_THRESHOLD] * scores.shape[-1], dtype=torch.float64,
                                  device=scores.device)
        return scores.double() >= thresholds

    def predict(self, outputs: torch.Tensor) -> list:
        """The predicted classes of each row, a list of names (in the labels' type) in class order; ``[]``
        when no class reaches its threshold."""
        chosen = self.decide(self.scores(outputs)).tolist()
        return [[name for name, on in zip(self.labels, row) if on] for row in chosen]

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "labels": self.labels, "label_type": self.label_type,
                "hidden": self.hidden, "dropout": self.dropout,
                "thresholds": self.thresholds if self.thresholds is not None else self._pending,
                "in_features": self.in_features, "input_column": self.input_column}
