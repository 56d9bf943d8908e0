"""Heads: small modules mapping a backbone's pooled features to predictions.

A head is sized from the backbone when it is composed with it (``TransferModel(backbone, head)`` calls
``head.build(backbone.feature_dim)``), so users only say what they want to predict.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

_HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    """Decorator registering a head class under ``name`` (used to rebuild heads from saved configs)."""

    def decorator(cls):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        cls.head_type = name
        _HEADS[name] = cls
        return cls

    return decorator


def head_from_config(config: dict) -> nn.Module:
    """Rebuild a head from ``head.config``."""
    config = dict(config)
    kind = config.pop("type")
    if kind not in _HEADS:
        raise ValueError(f"unknown head type {kind!r}; known: {sorted(_HEADS)}")
    return _HEADS[kind](**config)


@register_head("classification")
class Classification(nn.Module):
    """Linear (or one-hidden-layer MLP) classifier over pooled features.

    Args:
        num_classes: number of classes; may be omitted when ``labels`` is given.
        labels: class names, index ``i`` naming class ``i``; ``predict`` returns these names.
        hidden: width of an optional hidden layer (GELU); ``None`` for a linear head.
        dropout: dropout on the features before each linear layer.
        in_features: feature size; normally left out and taken from the backbone.
    """

    def __init__(self, num_classes: int | None = None, *, labels: Sequence[str] | None = None,
                 hidden: int | None = None, dropout: float = 0.0, in_features: int | None = None):
        super().__init__()
        if num_classes is None and labels is None:
            raise ValueError("Classification needs num_classes or labels")
        if labels is not None:
            labels = [str(label) for label in labels]
            if num_classes is not None and num_classes != len(labels):
                raise ValueError(f"num_classes={num_classes} but {len(labels)} labels given")
            if len(set(labels)) != len(labels):
                raise ValueError(f"labels must be distinct, got {labels}")
        self.num_classes = int(num_classes if num_classes is not None else len(labels))
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        self.labels = labels
        self.hidden = hidden
        self.dropout = dropout
        self.in_features = in_features
        self.layers: nn.Module | None = None
        if in_features is not None:
            self.build(in_features)

    def build(self, in_features: int) -> None:
        """Create the layers for ``in_features``-sized features (no-op if already built for that size)."""
        if self.layers is not None:
            if in_features != self.in_features:
                raise ValueError(f"head was built for {self.in_features} features, backbone gives {in_features}")
            return
        self.in_features = int(in_features)
        if self.hidden:
            self.layers = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, self.hidden), nn.GELU(),
                                        nn.Dropout(self.dropout), nn.Linear(self.hidden, self.num_classes))
        else:
            self.layers = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, self.num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            raise RuntimeError("head is not built: compose it with a backbone in TransferModel first")
        return self.layers(features)

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "num_classes": self.num_classes, "labels": self.labels,
                "hidden": self.hidden, "dropout": self.dropout, "in_features": self.in_features}
