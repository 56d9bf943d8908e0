"""Regression: one or several numbers per input, from the pooled features (the head contract: :mod:`.base`).

Targets are standardised for training (each target minus its training mean, divided by its training
standard deviation, so that a price in thousands and a rating in 1–5 weigh alike in the loss and the
head's initial outputs are on the right scale) and restored on ``predict``. The mean and standard deviation
are taken from the first training data and saved in the head's config.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.heads import register_head
from transferkit.heads.base import features_part, mlp


@register_head("regression")
class Regression(nn.Module):
    """Linear (or one-hidden-layer MLP) regression over pooled features.

    Args:
        targets: the target column names (``["price"]``, ``["retweets", "favourites"]``); one name per
            output. A single target's column defaults to ``"label"``.
        hidden: width of an optional hidden layer (GELU); ``None`` for a linear head.
        dropout: dropout on the features before each linear layer.
        mean, std: per-target standardisation, normally left out and set from the training data.
        in_features: feature size; normally left out and taken from the backbone.
        input_column: the table column the head was trained on (recorded by training).
    """

    needs = frozenset({"pooled"})

    def __init__(self, targets: Sequence[str] | str = ("label",), *, hidden: int | None = None, dropout: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 in_features: int | None = None, input_column: str | None = None):
        super().__init__()
        self.targets = [targets] if isinstance(targets, str) else [str(t) for t in targets]
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"targets must be distinct column names, at least one; got {self.targets}.")
        self.hidden = hidden
        self.dropout = dropout
        self.input_column = input_column
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        if mean is not None or std is not None:
            self.set_scale(mean, std)
        self.in_features = in_features
        self.layers: nn.Module | None = None
        if in_features is not None:
            self.build(in_features)

    @property
    def num_targets(self) -> int:
        return len(self.targets)

    def set_scale(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Set the standardisation (one mean and one positive standard deviation per target)."""
        if mean is None or std is None or len(mean) != self.num_targets or len(std) != self.num_targets:
            raise ConfigError(f"mean and std need one value per target {self.targets}; got {mean} and {std}.")
        if any(not s > 0 for s in std):
            raise ConfigError(f"std must be positive, got {list(std)}.")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def build(self, in_features: int) -> None:
        """Create the layers for ``in_features``-sized features (no-op if already built for that size)."""
        self.layers = mlp(self, in_features, self.num_targets) or self.layers

    def forward(self, features: Any) -> torch.Tensor:
        """Standardised predictions ``[B, num_targets]``."""
        if self.layers is None:
            raise RuntimeError("head is not built: compose it with a backbone in TransferModel first")
        return self.layers(features_part(features, "pooled"))

    def restore(self, outputs: torch.Tensor) -> torch.Tensor:
        """Standardised outputs back in the targets' units."""
        if self.mean is None:
            return outputs
        mean = torch.tensor(self.mean, dtype=outputs.dtype, device=outputs.device)
        std = torch.tensor(self.std, dtype=outputs.dtype, device=outputs.device)
        return outputs * std + mean

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: MSE on standardised targets; MAE, RMSE, R², Spearman."""
        from transferkit.tasks.regression import RegressionTask

        return RegressionTask(model, **options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """The predictions as a tensor ``[N, num_targets]``, in the targets' units."""
        return self.restore(outputs.float())

    def predict(self, outputs: torch.Tensor) -> list:
        """One float per input (one target), or a dict ``{target: value}`` per input (several)."""
        values = self.restore(outputs.float()).tolist()
        if self.num_targets == 1:
            return [row[0] for row in values]
        return [dict(zip(self.targets, row)) for row in values]

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "targets": self.targets, "hidden": self.hidden, "dropout": self.dropout,
                "mean": self.mean, "std": self.std, "in_features": self.in_features,
                "input_column": self.input_column}
