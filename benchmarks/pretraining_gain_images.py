"""Does self-supervised pretraining on unlabelled images help few-label fine-tuning? (scikit-learn digits)

    .venv/bin/python benchmarks/pretraining_gain_images.py           # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/pretraining_gain_images.py --quick   # about a minute

Data: the 1,797 8×8 greyscale digits of ``sklearn.datasets.load_digits`` (offline), scaled to 0–1 and
upscaled by the backbone's preprocessor. The first ``pool`` images are the unlabelled pool; the rest are
the held-out test set, never seen in pretraining (pretraining on test images would be transductive).

For each pretext task (rotation, masked-patch grey level, denoising autoencoder) the same random-init
architecture is pretrained on the pool's images without labels. Then, for each of 1, 5 and 10 labels per
class (drawn from the pool) and each seed, the pretrained backbone — and a random-init one ("scratch") —
is fine-tuned end to end with a linear classification head and scored on the test set.

``rotation_gain()`` is the small version (rotation vs scratch, ≤ ~60 s) for ``transferkit demo``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

import transferkit as tk
from transferkit.tasks.vision import DenoisingAutoencoder, PatchColor, RotationPrediction

# name → builder; PatchColor uses the grey-level variant because digits are greyscale.
PRETEXT = {
    "rotation": lambda bb: RotationPrediction(bb),
    "patch grey level": lambda bb: PatchColor(bb, mode="patch", channels="grey", bins=4, patch_fraction=0.375),
    "denoising AE": lambda bb: DenoisingAutoencoder(bb, noise="gaussian+mask", sigma=0.2, mask_ratio=0.25,
                                                    output_size=16),
}


@dataclass
class Settings:
    """What one benchmark run does; ``quick()`` shrinks it."""

    backbone: str = "timm:test_efficientnet"  # 0.1M parameters: fast on a CPU, enough for 8×8 digits
    image_size: int = 32  # 8×8 digits upscaled; the network downsamples 32×
    pool: int = 1300  # unlabelled pool (first images); the remaining 497 are the test set
    shots: tuple[int, ...] = (1, 5, 10)  # labels per class for fine-tuning
    seeds: int = 3
    # Pretraining epochs per task. Rotation sees 4 views per image, so it gets fewer epochs for
    # about the same number of examples.
    pretrain_epochs: dict[str, int] = field(default_factory=lambda: {"rotation": 6, "patch grey level": 20,
                                                                       "denoising AE": 20})
    pretrain_lr: float = 3e-3
    finetune_steps: int = 80  # optimiser steps whatever the number of labels
    lr: float = 1e-3
    head_lr: float = 1e-2
    batch_size: int = 16
    tasks: tuple[str, ...] = tuple(PRETEXT)

    @classmethod
    def quick(cls) -> "Settings":
        return cls(seeds=1, pretrain_epochs={"rotation": 3, "patch grey level": 8, "denoising AE": 8})


def digits(pool: int):
    """(pool images, pool labels, test images, test labels); images are 8×8 float arrays in 0–1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [img / 16.0 for img in data.images]
    labels = [int(y) for y in data.target]
    return images[:pool], labels[:pool], images[pool:], labels[pool:]


def few_shot(labels: list[int], shots: int, seed: int) -> list[int]:
    """``shots`` random indices per class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        picked += rng.choice(idx, size=shots, replace=False).tolist()
    return picked


def new_backbone(settings: Settings, seed: int):
    torch.manual_seed(seed)
    return tk.load_backbone(settings.backbone, weights=None, image_size=settings.image_size)


def pretrain(name: str, images: list, settings: Settings, seed: int = 0):
    """A backbone pretrained with pretext task ``name`` on ``images``; returns (backbone, seconds, final metrics)."""
    start = time.perf_counter()
    task = PRETEXT[name](new_backbone(settings, seed))
    trainer = tk.Trainer(epochs=settings.pretrain_epochs[name], lr=settings.pretrain_lr, batch_size=64,
                         progress=False, seed=seed, metric="loss")
    history = trainer.fit(task, images)
    return task.backbone, time.perf_counter() - start, history[-1]["train_loss"]


def finetune(backbone, images: list, labels: list[int], test: tuple[list, list], settings: Settings,
             seed: int) -> float:
    """Fine-tune ``backbone`` (a copy) + linear head on the labelled images; held-out accuracy."""
    torch.manual_seed(seed)
    model = tk.TransferModel(copy.deepcopy(backbone), tk.heads.Classification(10))
    epochs = max(1, round(settings.finetune_steps * settings.batch_size / len(images)))
    trainer = tk.Trainer(epochs=epochs, lr=settings.lr, head_lr=settings.head_lr, batch_size=settings.batch_size,
                         progress=False, seed=seed, eval_batch_size=256)
    trainer.fit(model, (list(images), list(labels)))
    return trainer.evaluate(model, (list(test[0]), list(test[1])))["accuracy"]


def run(settings: Settings, log=print) -> list[dict]:
    """One row per (initialisation, shots): accuracies over seeds, pretraining and fine-tuning seconds."""
    pool_x, pool_y, test_x, test_y = digits(settings.pool)
    inits = {"scratch": (None, 0.0, None)}
    for name in settings.tasks:
        backbone, seconds, loss = pretrain(name, pool_x, settings)
        inits[name] = (backbone, seconds, loss)
        log(f"pretrained {name}: {seconds:.0f} s, final pretext loss {loss:.3f}")
    rows = []
    for name, (backbone, pre_seconds, _) in inits.items():
        for shots in settings.shots:
            start, scores = time.perf_counter(), []
            for seed in range(settings.seeds):
                idx = few_shot(pool_y, shots, seed)
                bb = backbone if backbone is not None else new_backbone(settings, 1000 + seed)
                scores.append(finetune(bb, [pool_x[i] for i in idx], [pool_y[i] for i in idx], (test_x, test_y),
                                       settings, seed))
            rows.append({"init": name, "shots": shots, "scores": scores, "pretrain_s": pre_seconds,
                         "finetune_s": time.perf_counter() - start})
            log(f"  {name:>16} {shots:>2}/class: {fmt(scores)}")
    return rows


def fmt(scores: list[float]) -> str:
    mean = statistics.mean(scores)
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def table(rows: list[dict], settings: Settings) -> str:
    shots = settings.shots
    lines = ["| initialisation | " + " | ".join(f"{s} label{'s' if s > 1 else ''}/class" for s in shots)
             + " | pretrain s | fine-tune s |",
             "|---" * (len(shots) + 3) + "|"]
    for init in dict.fromkeys(r["init"] for r in rows):
        mine = [r for r in rows if r["init"] == init]
        cells = [fmt(next(r["scores"] for r in mine if r["shots"] == s)) for s in shots]
        lines.append(f"| {init} | " + " | ".join(cells) + f" | {mine[0]['pretrain_s']:.0f} | "
                     f"{sum(r['finetune_s'] for r in mine):.0f} |")
    return "\n".join(lines)


def rotation_gain(shots: int = 10, seeds: int = 1, pretrain_epochs: int = 3, pool: int = 1300) -> dict:
    """Rotation pretraining vs scratch on digits, for ``transferkit demo`` (about 30–60 s on 2 CPU cores).

    Returns:
        ``{"scratch": [accuracies], "rotation": [accuracies], "seconds": float, "shots": shots}``.
    """
    start = time.perf_counter()
    settings = replace(Settings(), shots=(shots,), seeds=seeds, tasks=("rotation",),
                       pretrain_epochs={"rotation": pretrain_epochs}, pool=pool)
    rows = run(settings, log=lambda *_: None)
    result = {r["init"]: r["scores"] for r in rows}
    return {**result, "seconds": time.perf_counter() - start, "shots": shots}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, shorter pretraining (about a minute)")
    parser.add_argument("--rotation-gain", action="store_true", help="only the demo's rotation-vs-scratch row")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy 2-core machine 2 threads were 10× slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.rotation_gain:
        result = rotation_gain()
        print(f"10 labels/class: scratch {fmt(result['scratch'])}, rotation {fmt(result['rotation'])} "
              f"({result['seconds']:.0f} s)")
        return
    settings = Settings.quick() if args.quick else Settings()
    print(f"{settings.backbone} (random init, {settings.image_size} px), pool {settings.pool} unlabelled digits, "
          f"test {1797 - settings.pool}, {settings.seeds} seed(s); held-out accuracy %, mean ± std")
    rows = run(settings)
    print()
    print(table(rows, settings))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
