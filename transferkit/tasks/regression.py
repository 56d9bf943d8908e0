"""Supervised regression: mean squared error on standardised targets; MAE, RMSE, R² and Spearman's rho.

Metrics are in the targets' own units and averaged over targets when there are several (each target's
MAE, RMSE and R² computed as scikit-learn's ``mean_absolute_error``, ``root_mean_squared_error`` and
``r2_score``; Spearman's rho as ``scipy.stats.spearmanr``, then averaged; ``tests/test_regression.py``
checks them against those functions).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data import load_targets, preprocess_named
from transferkit.errors import LabelError

from .supervised import check_examples


class RegressionTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.Regression` head.

    Args:
        model: the model; a head without a scale takes each target's mean and standard deviation from the
            first training data it sees.
        input_column: column of the inputs in a table.
    """

    default_metric = "rmse"
    logits_kind = "values"  # for SMART (transferkit.trainer.adversarial)
    higher_is_better = {"loss": False, "mae": False, "rmse": False, "r2": True, "spearman": True}

    def __init__(self, model: nn.Module, input_column: str = "text"):
        super().__init__()
        self.model = model
        self.input_column = input_column

    def examples(self, data: Any) -> list[tuple[Any, list[float]]]:
        """``(raw input, targets)`` pairs, checked before any training starts.

        Raises:
            LabelError: a target is missing or not a finite number (naming the rows), or a target has one
                value only, so it cannot be standardised.
            ModalityError, InputError, ImageError: as for classification.
        """
        head = self.model.head
        inputs, targets, origins = load_targets(data, input_column=self.input_column, target_columns=head.targets)
        check_examples(self.model, inputs, origins, self.input_column if _is_table(data) else None)
        if head.mean is None:
            values = np.asarray(targets, dtype=np.float64)
            std = values.std(0)
            flat = [c for c, s in zip(head.targets, std) if not s > 0]
            if flat:
                raise LabelError(f"target(s) {flat} have the same value in every training example, so there is "
                                 "nothing to learn: check the column, or drop it.")
            head.set_scale(values.mean(0).tolist(), std.tolist())
        return list(zip(inputs, targets))

    def collate(self, examples: Sequence[tuple[Any, list[float]]]) -> dict[str, Any]:
        origins = [f"example {i}" for i in range(len(examples))]
        inputs = preprocess_named(self.model.preprocess, [x for x, _ in examples], origins)
        return {"inputs": inputs, "targets": torch.tensor([y for _, y in examples], dtype=torch.float32)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        outputs = self.model(**batch["inputs"])["logits"].float()
        head = self.model.head
        mean = torch.tensor(head.mean, device=outputs.device)
        std = torch.tensor(head.std, device=outputs.device)
        loss = F.mse_loss(outputs, (batch["targets"] - mean) / std)
        return {"loss": loss, "logits": outputs, "predictions": outputs * std + mean}

    def metrics(self) -> "RegressionMetrics":
        return RegressionMetrics(self.model.head.num_targets)


class RegressionMetrics:
    """MAE, RMSE and R² stream from running sums; Spearman's rho keeps the predictions (one float per
    example and target), since ranks need them all."""

    higher_is_better = RegressionTask.higher_is_better

    def __init__(self, num_targets: int):
        self.n = 0
        self.loss_sum = 0.0
        self.abs_sum = np.zeros(num_targets)
        self.sq_sum = np.zeros(num_targets)
        self.y_sum = np.zeros(num_targets)
        self.y_sq_sum = np.zeros(num_targets)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        y = batch["targets"].detach().double().cpu().numpy()
        p = outputs["predictions"].detach().double().cpu().numpy()
        self.n += len(y)
        self.loss_sum += float(outputs["loss"]) * len(y)
        self.abs_sum += np.abs(p - y).sum(0)
        self.sq_sum += ((p - y) ** 2).sum(0)
        self.y_sum += y.sum(0)
        self.y_sq_sum += (y ** 2).sum(0)
        self.pairs.append((y, p))

    def compute(self) -> dict[str, float]:
        from scipy.stats import spearmanr

        n = max(self.n, 1)
        total = self.y_sq_sum - self.y_sum ** 2 / n  # sum of squares around the mean
        r2 = np.where(total > 0, 1 - self.sq_sum / np.where(total > 0, total, 1), 0.0)
        y = np.concatenate([a for a, _ in self.pairs]) if self.pairs else np.zeros((0, len(self.sq_sum)))
        p = np.concatenate([b for _, b in self.pairs]) if self.pairs else y
        rho = [spearmanr(y[:, j], p[:, j]).statistic if len(y) > 1 and np.ptp(y[:, j]) and np.ptp(p[:, j]) else 0.0
               for j in range(y.shape[1])]
        return {"loss": self.loss_sum / n, "mae": float((self.abs_sum / n).mean()),
                "rmse": float(np.sqrt(self.sq_sum / n).mean()), "r2": float(r2.mean()),
                "spearman": float(np.mean(rho))}


def _is_table(data: Any) -> bool:
    return not isinstance(data, (list, tuple))
