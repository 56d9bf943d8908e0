"""Does self-supervised pretraining on unlabelled images help few-label fine-tuning? (scikit-learn digits)

    .venv/bin/python benchmarks/pretraining_gain_images.py           # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/pretraining_gain_images.py --quick   # about a minute
    .venv/bin/python benchmarks/pretraining_gain_images.py --backbone timm:test_resnet --stage 3 --tasks rotation

Data: the 1,797 8×8 greyscale digits of ``sklearn.datasets.load_digits`` (offline), scaled to 0–1 and
upscaled by the backbone's preprocessor. The first ``pool`` images are the unlabelled pool; the rest are
the held-out test set, never seen in pretraining (pretraining on test images would be transductive).

For each pretext task (rotation, masked-patch grey level, denoising autoencoder) the same random-init
architecture is pretrained on the pool's images without labels. Then, for each of 1, 5 and 10 labels per
class (drawn from the pool) and each seed, the pretrained backbone — and a random-init one ("scratch") —
is fine-tuned end to end with a linear classification head and scored on the test set.

The data split (:func:`transferkit.recipes.datasets.digits`), pretraining and fine-tuning live in
:mod:`transferkit.recipes.vision_gain`; its ``rotation_gain()`` (rotation vs scratch at one label count, about
a minute) is the row of ``transferkit demo``. Other scripts can reuse ``run(settings)``, ``table(rows, settings)`` and
``Settings.quick()`` from here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch

from transferkit.recipes.datasets import digits
from transferkit.recipes.fewshot import few_shot
from transferkit.recipes.vision_gain import BACKBONE, IMAGE_SIZE, at_stage, finetune, pretrain, random_backbone
from transferkit.tasks.vision import DenoisingAutoencoder, PatchColor, RotationPrediction

# name → builder; PatchColor uses the grey-level variant because digits are greyscale. RotationPrediction
# crops each rotated image at random (its default): without it the rotation is readable from the digits'
# bounding box and the features end up worse than random ones (docs/pretraining_vision.md).
PRETEXT = {
    "rotation": lambda bb: RotationPrediction(bb),
    "patch grey level": lambda bb: PatchColor(bb, mode="patch", channels="grey", bins=4, patch_fraction=0.375),
    "denoising AE": lambda bb: DenoisingAutoencoder(bb, noise="gaussian+mask", sigma=0.2, mask_ratio=0.25,
                                                    output_size=16),
}


@dataclass
class Settings:
    """What one benchmark run does; ``quick()`` shrinks it."""

    backbone: str = BACKBONE  # timm:test_efficientnet, 0.1M parameters: fast on a CPU, enough for 8×8 digits
    image_size: int = IMAGE_SIZE  # 8×8 digits upscaled to 32 px; the network downsamples 32×
    # Fine-tune the pooled output of this timm stage (layers after it dropped) instead of the final one.
    stage: int | None = None
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


def run(settings: Settings, log=print) -> list[dict]:
    """One row per (initialisation, shots): accuracies over seeds, pretraining and fine-tuning seconds."""
    pool_x, pool_y, test_x, test_y = digits(settings.pool)
    inits = {"scratch": (None, 0.0, None)}
    for name in settings.tasks:
        task = PRETEXT[name](random_backbone(settings.backbone, settings.image_size, 0))
        backbone, seconds, loss = pretrain(task, pool_x, settings.pretrain_epochs[name], settings.pretrain_lr)
        inits[name] = (at_stage(backbone, settings.stage, settings.backbone, settings.image_size), seconds, loss)
        log(f"pretrained {name}: {seconds:.0f} s, final pretext loss {loss:.3f}")
    rows = []
    for name, (backbone, pre_seconds, _) in inits.items():
        for shots in settings.shots:
            start, scores = time.perf_counter(), []
            for seed in range(settings.seeds):
                idx = few_shot(pool_y, shots, seed, sort=False)  # class after class: the documented figures
                if backbone is None:  # scratch: a fresh random network per seed
                    bb = at_stage(random_backbone(settings.backbone, settings.image_size, 1000 + seed), settings.stage,
                                  settings.backbone, settings.image_size)
                else:
                    bb = backbone
                train = ([pool_x[i] for i in idx], [pool_y[i] for i in idx])
                scores.append(finetune(bb, train, (test_x, test_y), seed=seed, steps=settings.finetune_steps,
                                       lr=settings.lr, head_lr=settings.head_lr, batch_size=settings.batch_size))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, shorter pretraining (about a minute)")
    parser.add_argument("--rotation-gain", action="store_true", help="only the demo's rotation-vs-scratch row")
    parser.add_argument("--backbone", default=BACKBONE, help=f"timm architecture, random init (default {BACKBONE})")
    parser.add_argument("--stage", type=int, help="fine-tune the output of this intermediate stage")
    parser.add_argument("--tasks", help="comma-separated subset of: " + ", ".join(PRETEXT))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy 2-core machine 2 threads were 10× slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.rotation_gain:
        from transferkit.recipes.vision_gain import rotation_gain

        result = rotation_gain(seeds=1 if args.quick else 3)
        print(f"{result['shots']} labels/class: scratch {fmt(result['scratch'])}, rotation {fmt(result['rotation'])} "
              f"(pretraining {result['pretrain_s']:.0f} s, fine-tuning {result['finetune_s']:.0f} s)")
        return
    settings = Settings.quick() if args.quick else Settings()
    settings.backbone, settings.stage = args.backbone, args.stage
    if args.tasks:
        settings.tasks = tuple(t.strip() for t in args.tasks.split(","))
    stage = "" if settings.stage is None else f", stage {settings.stage}"
    print(f"{settings.backbone} (random init, {settings.image_size} px{stage}), pool {settings.pool} unlabelled "
          f"digits, test {1797 - settings.pool}, {settings.seeds} seed(s); held-out accuracy %, mean ± std")
    rows = run(settings)
    print()
    print(table(rows, settings))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
