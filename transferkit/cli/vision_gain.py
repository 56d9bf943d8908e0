"""Moved to :mod:`transferkit.recipes.vision_gain`; this old import path re-exports its names for one release."""

from transferkit.recipes import fewshot
from transferkit.recipes.datasets import digits
from transferkit.recipes.vision_gain import (BACKBONE, IMAGE_SIZE, ROTATION_BACKBONE, ROTATION_STAGE, at_stage,
                                             finetune, pretrain, random_backbone, rotation_gain, torch_threads)

__all__ = ["BACKBONE", "IMAGE_SIZE", "ROTATION_BACKBONE", "ROTATION_STAGE", "at_stage", "digits", "few_shot",
           "finetune", "pretrain", "random_backbone", "rotation_gain", "torch_threads"]


def few_shot(labels: list[int], shots: int, seed: int) -> list[int]:
    """The old order (class after class): :func:`transferkit.recipes.fewshot.few_shot` with ``sort=False``."""
    return fewshot.few_shot(labels, shots, seed, sort=False)
