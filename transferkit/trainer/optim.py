"""Optimisers and learning-rate schedules: small builders the Trainer calls.

Schedules multiply each parameter group's base learning rate by a factor of the optimiser step:
linear warm-up from 0 over ``warmup`` steps, then ``constant`` (1), ``linear`` decay to 0 or ``cosine``
decay to 0 (Loshchilov & Hutter 2017, without restarts) at the last step — the shapes of transformers'
``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``.
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


def build_optimizer(name: str, groups: list[dict], lr: float, device: torch.device,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW (fused kernel on CPU/CUDA) or SGD with Nesterov momentum over ``groups``.

    Both create their state (AdamW's moments, SGD's momentum) lazily, for a parameter the first time it
    has a gradient: frozen parameters in ``groups`` (listed so a strategy can unfreeze them later) cost
    no memory and are not in a checkpoint's ``optimizer.safetensors``.
    """
    groups = [{k: v for k, v in g.items()} for g in groups]
    if name == "adamw":
        # The fused kernel updates all parameters in one pass: several times faster for large embedding
        # matrices (MiniLM's 11.7M-parameter vocabulary) and numerically the same update.
        return torch.optim.AdamW(groups, lr=lr, fused=device.type in ("cpu", "cuda"))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def warmup_steps(warmup: float, total: int) -> int:
    """``warmup`` as steps: an int is a step count, a float below 1 a fraction of ``total``."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    return int(round(warmup * total)) if isinstance(warmup, float) and warmup < 1 else int(warmup)


def schedule_factor(name: str, step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier before optimiser step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        return 1.0 - progress
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup: float,
                    total: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR for ``name``; ``total`` optimiser steps (``None`` for streamed data: constant only)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    if total is None and name != "constant":
        raise ValueError(f"schedule={name!r} needs the number of steps, which a streamed corpus does not "
                         "have; use schedule='constant' or give Trainer(max_steps=...).")
    total = total or 0
    steps = warmup_steps(warmup, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(name, s, steps, total))
