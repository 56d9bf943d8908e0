"""Classification: one class per input, from the pooled features (the head contract: :mod:`.base`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.heads import register_head
from transferkit.heads.base import class_list, features_part, mlp

@register_head("classification")
class Classification(nn.Module):
    """Linear (or one-hidden-layer MLP) classifier over pooled features.

    Labels follow the rule in :mod:`transferkit.data`: ``predict`` returns class names in the type they
    were given in (``label_type``), and a head with ``num_classes`` but no ``labels`` treats integer labels
    as class ids ``0..num_classes-1`` (and predicts those ids). A head with neither takes its classes from the
    training data (the sorted distinct labels, as scikit-learn's ``classes_``); its layers are made then.

    Args:
        num_classes: number of classes; may be omitted when ``labels`` is given, or with both omitted.
        labels: class names (strings, integers or bools), index ``i`` naming class ``i``; ``predict``
            returns these names.
        label_type: ``"str"``, ``"int"`` or ``"bool"``, the type of the names; ``None`` takes it from
            ``labels`` (every label an int gives ints, and so on; anything mixed gives strings).
        hidden: width of an optional hidden layer (GELU); ``None`` for a linear head.
        dropout: dropout on the features before each linear layer.
        in_features: feature size; normally left out and taken from the backbone.
        input_column: the table column the head was trained on (recorded by training, so that
            ``predict(DataFrame)`` reads the same column).
        prototypes: classify by distance to this many learned prototypes per class instead of a linear layer
            (:mod:`.prototypes`: prototypical networks and prototypical fine-tuning); before training they are
            placed at the class means (k-means centres) of the training features, so the head starts as a
            nearest-centroid classifier. ``None``: a linear layer.
        distance: with ``prototypes``: ``"cosine"`` (default) or ``"euclidean"``.
        diversity: with ``prototypes``: the weight of the penalty that keeps prototypes of different classes apart.
    """

    def __init__(self, num_classes: int | None = None, *, labels: Sequence | None = None,
                 label_type: str | None = None, hidden: int | None = None, dropout: float = 0.0,
                 in_features: int | None = None, input_column: str | None = None, prototypes: int | None = None,
                 distance: str = "cosine", diversity: float = 0.0):
        super().__init__()
        self.prototypes, self.distance, self.diversity = prototypes, distance, float(diversity)
        if labels is not None and num_classes is not None and num_classes != len(labels):
            raise ConfigError(f"num_classes={num_classes} but {len(labels)} labels given")
        self.num_classes = None if num_classes is None and labels is None else int(
            num_classes if num_classes is not None else len(labels))
        self._check_count()
        self.label_type = label_type
        self.labels = labels
        self.input_column = input_column
        self.hidden = hidden
        self.dropout = dropout
        self.in_features = in_features
        self.layers: nn.Module | None = None
        if in_features is not None:
            self.build(in_features)

    def _check_count(self) -> None:
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {self.num_classes}: check the labels.")

    @property
    def labels(self) -> list | None:
        """Class names (index ``i`` names class ``i``), or ``None`` for a head that predicts class ids."""
        return self._labels

    @labels.setter
    def labels(self, labels: Sequence | None) -> None:
        if labels is None:
            self._labels = None
            return
        names, kind = class_list(labels, self.label_type)
        if self.num_classes is None:  # classes taken from the training data: the layers can be made now
            self.num_classes = len(names)
            self._check_count()
            if self.in_features is not None and getattr(self, "layers", None) is None:
                self.layers = self._layers(self.in_features)
        if len(names) != self.num_classes:
            raise ConfigError(f"num_classes={self.num_classes} but {len(names)} labels given")
        self.label_type, self._labels = kind, names

    def build(self, in_features: int) -> None:
        """Create the layers for ``in_features``-sized features (no-op if already built for that size); a head
        whose classes come from the training data records the size and makes them once it knows the classes."""
        if self.num_classes is None:
            if self.in_features is not None and in_features != self.in_features:
                raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
            self.in_features = int(in_features)
            return
        self.layers = self._layers(in_features) or self.layers

    def _layers(self, in_features: int) -> nn.Module | None:
        """Dropout (+ hidden layer) + a linear or prototype layer; ``None`` when already built (see ``mlp``)."""
        layers = mlp(self, in_features, self.num_classes)
        if layers is None or self.prototypes is None:
            return layers
        from transferkit.heads.prototypes import PrototypeLayer

        last = layers[-1]  # the linear layer gives way to the prototypes, over the same inputs
        layers[-1] = PrototypeLayer(last.in_features, self.num_classes, self.prototypes, self.distance)
        return layers

    @property
    def prototype_layer(self):
        """The :class:`~transferkit.heads.prototypes.PrototypeLayer` of a head with ``prototypes``, else ``None``."""
        return self.layers[-1] if self.prototypes is not None and self.layers is not None else None

    needs = frozenset({"pooled"})

    def forward(self, features: Any) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from ``features.pooled`` (or a ``[B, in_features]`` tensor)."""
        if self.layers is None:
            raise RuntimeError("head is not built: compose it with a backbone in TransferModel first"
                               + (", and train it (its classes come from the training data)"
                                  if self.num_classes is None else ""))
        return self.layers(features_part(features, "pooled"))

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: cross-entropy, accuracy and macro-F1 (:class:`ClassificationTask`)."""
        from transferkit.tasks.classification import ClassificationTask

        return ClassificationTask(model, **options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax of the logits)."""
        return outputs.float().softmax(-1)

    def predict(self, outputs: torch.Tensor) -> list:
        """The predicted class of each row: its name (in the labels' type) when the head has names, else its id."""
        ids = outputs.argmax(-1).tolist()
        return [self.labels[i] for i in ids] if self.labels else ids

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "num_classes": self.num_classes, "labels": self.labels,
                "label_type": self.label_type, "hidden": self.hidden, "dropout": self.dropout,
                "in_features": self.in_features, "input_column": self.input_column,
                **({"prototypes": self.prototypes, "distance": self.distance, "diversity": self.diversity}
                   if self.prototypes is not None else {})}
