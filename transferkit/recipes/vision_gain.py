"""Does self-supervised pretraining on unlabelled images help few-label fine-tuning? Measured on digits.

The scikit-learn digits (1,797 8×8 greyscale images, offline) are split once: the first ``pool`` images are
the unlabelled pool (pretraining, and the few labelled examples drawn from it), the rest is the held-out
test set, never seen in pretraining (:func:`transferkit.recipes.datasets.digits`). :func:`rotation_gain` runs
rotation pretraining (Gidaris et al. 2018, https://arxiv.org/abs/1803.07728) against random initialisation;
``transferkit demo`` shows it and ``benchmarks/pretraining_gain_images.py`` adds the other pretext tasks and
label counts::

    from transferkit.recipes.vision_gain import rotation_gain
    rotation_gain(shots=10, seeds=3)   # {"scratch": [...], "rotation": [...], ...}; about a minute on a CPU
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

import torch

from transferkit.errors import ConfigError
from transferkit.recipes.datasets import digits
from transferkit.recipes.fewshot import few_shot

BACKBONE = "timm:test_efficientnet"  # the benchmark's shared architecture: 0.1M parameters, fast on a CPU
IMAGE_SIZE = 32  # 8×8 digits upscaled; the networks downsample 32×
# The rotation recipe chosen on a validation split of the pool (docs/pretraining_vision.md): timm's 0.4M-
# parameter test ResNet, fine-tuned on the pooled output of stage 3 (192 channels at stride 16).
ROTATION_BACKBONE, ROTATION_STAGE = "timm:test_resnet", 3


def random_backbone(spec: str = BACKBONE, image_size: int = IMAGE_SIZE, seed: int = 0):
    """A randomly initialised image backbone (``weights=None``), seeded."""
    import transferkit as tk

    torch.manual_seed(seed)
    return tk.load_backbone(spec, weights=None, image_size=image_size)


def at_stage(backbone, stage: int | None, spec: str = BACKBONE, image_size: int = IMAGE_SIZE):
    """``backbone`` (built from ``spec``) cut after timm stage ``stage``, keeping its weights; ``None``: as is.

    Rotation features are best at intermediate layers (Gidaris et al. 2018, section 3.2).
    """
    import transferkit as tk

    if stage is None:
        return backbone
    cut = tk.load_backbone(spec, weights=None, image_size=image_size, stage=stage)
    missing, _ = cut.encoder.load_state_dict(backbone.encoder.state_dict(), strict=False)
    if missing:
        raise ConfigError(f"{spec} cut at stage {stage} does not take the backbone's weights (missing {missing[:5]}); "
                          "give the spec the backbone was built from.")
    return cut


def pretrain(task: torch.nn.Module, images: list, epochs: int, lr: float = 3e-3, seed: int = 0):
    """Train a pretext ``task`` on unlabelled ``images``; returns (its backbone, seconds, final train loss)."""
    import transferkit as tk

    start = time.perf_counter()
    trainer = tk.Trainer(epochs=epochs, lr=lr, batch_size=64, progress=False, seed=seed, metric="loss")
    history = trainer.fit(task, images)
    return task.backbone, time.perf_counter() - start, history[-1]["train_loss"]


def finetune(backbone, train: tuple[list, list[int]], test: tuple[list, list[int]], *, seed: int, steps: int = 80,
             lr: float = 1e-3, head_lr: float = 1e-2, batch_size: int = 16) -> float:
    """Fine-tune a copy of ``backbone`` end to end with a linear head for about ``steps`` optimiser steps
    (whatever the number of labels); held-out accuracy on ``test``."""
    import transferkit as tk

    torch.manual_seed(seed)
    model = tk.TransferModel(copy.deepcopy(backbone), tk.heads.Classification(10))
    epochs = max(1, round(steps * batch_size / len(train[0])))
    trainer = tk.Trainer(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size, progress=False, seed=seed,
                         eval_batch_size=256)
    trainer.fit(model, (list(train[0]), list(train[1])))
    return trainer.evaluate(model, (list(test[0]), list(test[1])))["accuracy"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None``: unchanged), restoring the setting afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rotation_gain(shots: int = 10, seeds: int = 3, epochs: int = 6, pool: int = 1300, steps: int = 80,
                  backbone: str = ROTATION_BACKBONE, stage: int | None = ROTATION_STAGE, image_size: int = IMAGE_SIZE,
                  threads: int | None = 1) -> dict[str, Any]:
    """Rotation pretraining on the pool's unlabelled digits vs random init, fine-tuned on ``shots`` labels per class.

    One rotation pretraining of the whole network (seed 0, all four turns of each image with a random
    resized crop, 6 epochs, AdamW lr 3e-3, batch 64 images); then for each seed the same
    ``shots``-per-class examples fine-tune, end to end, the pretrained network and a fresh random one, both
    cut after ``stage`` (:func:`at_stage`, :func:`finetune` with ``steps`` optimiser steps). With the
    defaults this reproduces the 10-labels cells of
    ``benchmarks/pretraining_gain_images.py --backbone timm:test_resnet --stage 3 --tasks rotation``.
    It runs with ``threads`` torch threads (restored afterwards): the operations of these small networks on
    32 px images are too small to share, and 2 threads on a busy 2-core machine ran 20× slower.

    Returns:
        ``{"scratch": [accuracy per seed], "rotation": [...], "pretrain_s", "finetune_s", "pretext_loss",
        "shots"}``.
    """
    from transferkit.tasks.vision import RotationPrediction

    pool_x, pool_y, test_x, test_y = digits(pool)
    result: dict[str, Any] = {"scratch": [], "rotation": []}
    with torch_threads(threads):
        rotated, pretrain_s, loss = pretrain(RotationPrediction(random_backbone(backbone, image_size, 0)), pool_x,
                                             epochs)
        rotated = at_stage(rotated, stage, backbone, image_size)
        start = time.perf_counter()
        for seed in range(seeds):
            idx = few_shot(pool_y, shots, seed, sort=False)  # class after class, as the documented figures
            train = ([pool_x[i] for i in idx], [pool_y[i] for i in idx])
            scratch = at_stage(random_backbone(backbone, image_size, 1000 + seed), stage, backbone, image_size)
            for name, bb in (("scratch", scratch), ("rotation", rotated)):
                result[name].append(finetune(bb, train, (test_x, test_y), seed=seed, steps=steps))
    return {**result, "pretrain_s": pretrain_s, "finetune_s": time.perf_counter() - start, "pretext_loss": loss,
            "shots": shots}
