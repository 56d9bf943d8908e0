"""What the loop and its helpers share: a model as a task, batches on a device, batch sizes, seeding."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn


def as_task(model: nn.Module) -> nn.Module:
    """A task as is; a model wrapped in the task its head names (``model.head.task(model)``), or in a
    :class:`~transferkit.tasks.ClassificationTask` when its head names none."""
    if hasattr(model, "examples") and hasattr(model, "collate"):
        return model
    make = getattr(getattr(model, "head", None), "task", None)
    if callable(make):
        return make(model)
    from transferkit.tasks import ClassificationTask

    return ClassificationTask(model)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def batch_len(batch: Any) -> int:
    """Examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        for value in batch.values():
            n = batch_len(value)
            if n:
                return n
    return 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
