"""Object detection: torchvision's losses in training; COCO mAP from pycocotools, streamed batch by batch.

Training batches are augmented with the boxes moved alike (:mod:`transferkit.tasks.dense`: a flip, a random
zoom-out, colour jitter by default; boxes a crop leaves degenerate are dropped by ``v2.SanitizeBoundingBoxes``)
and letterboxed to the backbone's input size. The loss is the sum of torchvision's terms (classification,
box regression and, for FCOS, centre-ness; for Faster R-CNN the RPN's and the RoI heads'); torchvision
normalises them per batch (by the matched boxes), so with accumulation each micro-batch is normalised alone.

Evaluation maps each image's detections back to its original pixels and scores them with pycocotools'
``COCOeval`` (the standard implementation): per batch, ``evaluate()`` matches that batch's detections to its
ground truth, and only the per-image match records are kept (scores, matches, ignore flags — no boxes, no
images); ``compute()`` runs ``accumulate()`` and ``summarize()`` over all of them, which is what one COCOeval
over the whole set computes (``tests/test_detection.py`` checks the equality). Reported: ``map`` (AP at IoU
0.50:0.95), ``map_50``, ``map_75``, ``map_small`` / ``map_medium`` / ``map_large`` and ``mar_100``; a figure
COCO leaves undefined (no ground truth of that size) is reported as 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.data.boxes import BoxedImage, check_inside, load_boxes
from transferkit.errors import DataError, LabelError

from .dense import SAMPLES, DenseInputs


class DetectionTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.Detection` head.

    Args:
        model: the model; a head without labels takes them from the first training data (COCO categories, or
            the sorted class names of VOC/CSV/list data).
        augment: training augmentation: ``"default"``, ``None``, or a ``torchvision.transforms.v2`` callable on
            ``(tv_tensors.Image, {"boxes": tv_tensors.BoundingBoxes, "labels": tensor})``.
    """

    default_metric = "map"
    higher_is_better = {"loss": False, "map": True, "map_50": True, "map_75": True, "map_small": True,
                        "map_medium": True, "map_large": True, "mar_100": True}

    def __init__(self, model: nn.Module, augment: Any = "default"):
        super().__init__()
        self.model = model
        self.inputs = DenseInputs(model.backbone, augment, "detection")

    def examples(self, data: Any) -> list[BoxedImage]:
        """The examples of ``data`` (:func:`~transferkit.data.boxes.load_boxes`), checked before training starts.

        Raises:
            BoxError: a box with x2 <= x1 or y2 <= y1, or leaving its image.
            LabelError: a class the head does not know.
            DataError, ImageError: unreadable annotation files or images; no image at all.
        """
        from transferkit.backbones.images import check_image_files

        head = self.model.head
        examples, names = load_boxes(data)
        files = [(e.image, e.origin) for e in examples if isinstance(e.image, (str, os.PathLike))]
        check_image_files([f for f, _ in files], [o for _, o in files])
        for e in examples:
            check_inside(e, *self.inputs.size_of(e.image, e.origin))
        seen = sorted({str(c) for e in examples for c in e.labels})
        if head.labels is None:
            if not (names or seen):
                raise LabelError("the training data has no box at all: the head cannot learn its classes; give "
                                 "Detection(labels=[...]) or data with boxes.")
            head.set_labels(names or seen)
        known = set(head.labels)
        unknown = [e for e in examples if {str(c) for c in e.labels} - known]
        if unknown:
            shown = ", ".join(f"{e.origin} ({sorted({str(c) for c in e.labels} - known)})" for e in unknown[:5])
            raise LabelError(f"{len(unknown)} image(s) have classes the head does not know {head.labels}: {shown}. "
                             "Build the head with those classes too, or fix the labels.")
        return examples

    def collate(self, examples: Sequence[BoxedImage]) -> dict[str, Any]:
        from torchvision import tv_tensors

        index = {name: i for i, name in enumerate(self.model.head.labels)}
        pixels, targets, originals, placements = [], [], [], []
        for e in examples:
            image = self.inputs.unit(e.image, e.origin)
            labels = torch.tensor([index[str(c)] for c in e.labels], dtype=torch.long)
            boxes = tv_tensors.BoundingBoxes(torch.as_tensor(e.boxes, dtype=torch.float32).reshape(-1, 4),
                                             format="XYXY", canvas_size=tuple(image.shape[-2:]))
            x, moved, where = self.inputs(image, {"boxes": boxes, "labels": labels}, train=self.training)
            pixels.append(x)
            targets.append({"boxes": moved["boxes"].as_subclass(torch.Tensor).float(), "labels": moved["labels"]})
            originals.append({"boxes": torch.as_tensor(e.boxes).reshape(-1, 4), "labels": labels})
            placements.append(where)
        batch = {"inputs": {"pixel_values": torch.stack(pixels)}, "targets": targets}
        if not self.training:
            batch.update(originals=originals, placements=placements)
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        pixels = batch["inputs"]["pixel_values"]
        features = self.model.backbone(pixel_values=pixels, stages=True)
        head = self.model.head
        if self.training:
            targets = [{k: v.to(pixels.device) for k, v in t.items()} for t in batch["targets"]]
            losses = head(features, pixels, targets)
            return {"loss": sum(losses.values()), "num_items": torch.tensor(len(pixels)),
                    **{f"loss_{k}": v.detach() for k, v in losses.items()}}
        return {"detections": head(features, pixels)}

    def metrics(self) -> "DetectionMetrics":
        return DetectionMetrics(self.model.head.labels, self.inputs)


STATS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", None, None, "mar_100"]


class DetectionMetrics:
    """COCO box mAP, streamed: pycocotools' per-image evaluation per batch, accumulated at the end."""

    higher_is_better = {k: v for k, v in DetectionTask.higher_is_better.items() if k != "loss"}

    def __init__(self, labels: Sequence[str], inputs: DenseInputs | None = None):
        self.labels = list(labels)
        self.inputs = inputs  # to draw validation samples in the report
        self.samples: list = []
        self.records: dict[tuple[int, int, int], Any] = {}  # (category, area range, image) → evalImg
        self.image_ids: list[int] = []
        self.params = None

    def update(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        predictions = [where.detections_to_original(d) for d, where in zip(outputs["detections"], batch["placements"])]
        sizes = [(w.height, w.width) for w in batch["placements"]]
        self.add(predictions, batch["originals"], sizes)
        if self.inputs is not None and len(self.samples) < SAMPLES:
            from .dense import unit_image

            for pixels, where, truth, found in zip(batch["inputs"]["pixel_values"], batch["placements"],
                                                   batch["targets"], outputs["detections"]):
                if len(self.samples) < SAMPLES:
                    self.samples.append((unit_image(pixels, self.inputs, where), truth,
                                         {k: v.detach().cpu() for k, v in found.items()}))

    def report(self, output_dir: str | os.PathLike) -> list:
        """``detection_samples.png``: a few validation images, true and predicted boxes (score ≥ 0.3) side by side
        (none after a resume: the samples are not part of the checkpoint)."""
        from pathlib import Path

        from .dense import save_samples

        if not self.samples:
            return []
        return [save_samples(self.samples, Path(output_dir) / "detection_samples.png", "detection", self.labels)]

    def add(self, predictions: Sequence[dict], truths: Sequence[dict], sizes: Sequence[tuple[int, int]]) -> None:
        """Add images: predicted ``boxes``/``labels``/``scores`` and true ``boxes``/``labels`` (class indices, boxes
        x1, y1, x2, y2 in original pixels), and each image's ``(height, width)``."""
        from pycocotools.cocoeval import COCOeval

        first = len(self.image_ids) + 1
        ids = list(range(first, first + len(truths)))
        gt, dt = coco_pair(ids, predictions, truths, sizes, len(self.labels))
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
        p = evaluator.params
        n_area, n_img = len(p.areaRng), len(ids)
        for k in range(len(p.catIds)):
            for a in range(n_area):
                for i, image_id in enumerate(ids):
                    record = evaluator.evalImgs[k * n_area * n_img + a * n_img + i]
                    if record is not None:
                        self.records[(k, a, image_id)] = record
        self.image_ids += ids
        self.params = p

    def compute(self) -> dict[str, float]:
        from pycocotools.cocoeval import COCOeval

        if self.params is None:
            raise DataError("no image was evaluated.")
        evaluator = COCOeval(iouType="bbox")
        p = copy.deepcopy(self.params)
        p.imgIds = list(self.image_ids)
        evaluator.params, evaluator._paramsEval = p, copy.deepcopy(p)
        evaluator.evalImgs = [self.records.get((k, a, i)) for k in range(len(p.catIds))
                              for a in range(len(p.areaRng)) for i in p.imgIds]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate()
            evaluator.summarize()
        return {name: max(0.0, float(v)) for name, v in zip(STATS, evaluator.stats) if name}


def coco_pair(ids: Sequence[int], predictions: Sequence[dict], truths: Sequence[dict],
              sizes: Sequence[tuple[int, int]], num_classes: int):
    """In-memory pycocotools ``COCO`` objects of ground truth and detections (category ``c + 1`` for class ``c``)."""
    from pycocotools.coco import COCO

    def xywh(box) -> list[float]:
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    images = [{"id": i, "height": int(h), "width": int(w)} for i, (h, w) in zip(ids, sizes)]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    annotations, results = [], []
    for image_id, truth, pred in zip(ids, truths, predictions):
        for box, label in zip(np.asarray(truth["boxes"]).reshape(-1, 4), np.asarray(truth["labels"]).ravel()):
            b = xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": b, "area": b[2] * b[3], "iscrowd": 0})
        for box, label, score in zip(np.asarray(pred["boxes"]).reshape(-1, 4), np.asarray(pred["labels"]).ravel(),
                                     np.asarray(pred["scores"]).ravel()):
            b = xywh(box)
            results.append({"id": len(results) + 1, "image_id": image_id, "category_id": int(label) + 1, "bbox": b,
                            "area": b[2] * b[3], "score": float(score), "iscrowd": 0})
    gt, dt = COCO(), COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    dt.dataset = {"images": images, "annotations": results, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt.createIndex()
    return gt, dt
