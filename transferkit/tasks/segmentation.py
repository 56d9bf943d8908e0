"""Semantic segmentation: per-pixel cross-entropy and/or Dice; mIoU, per-class IoU and Dice, streamed.

Training batches are augmented (:mod:`transferkit.tasks.dense`: the mask moves with the image) and
letterboxed to the backbone's input size; padding and :data:`~transferkit.data.masks.IGNORE` pixels are left
out of the loss. Evaluation scores each image **at its original size**: the logits are mapped back
(padding cut, content resized) and compared with the mask as read, so the figures do not depend on the
network's input size.

The metrics come from one confusion matrix over all pixels seen (``confusion[i, j]``: pixels of class ``i``
predicted as ``j``), accumulated batch by batch: IoU of class ``c`` = TP / (TP + FP + FN), Dice = 2 TP / (2 TP +
FP + FN); ``miou`` and ``dice`` are their means over the classes that occur in the ground truth or the
predictions (a class absent from both has no IoU, as in torchmetrics' and mmseg's mean IoU);
``pixel_accuracy`` is the diagonal over the total.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.masks import (IGNORE, MaskedImage, check_mask_values, load_masked, mask_sizes_match,
                                    read_mask)
from transferkit.errors import LabelError

from .dense import SAMPLES, DenseInputs


class SegmentationTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.Segmentation` head.

    Args:
        model: the model; a head without labels takes them from the first training data.
        augment: training augmentation: ``"default"`` (random resized crop, flip, colour jitter), ``None``,
            or a ``torchvision.transforms.v2`` callable on ``(tv_tensors.Image, {"mask": tv_tensors.Mask})``.
    """

    default_metric = "miou"

    def __init__(self, model: nn.Module, augment: Any = "default"):
        super().__init__()
        self.model = model
        self.inputs = DenseInputs(model.backbone, augment, "segmentation")

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return SegmentationMetrics.directions(self.model.head.labels or [])

    def examples(self, data: Any) -> list[MaskedImage]:
        """The ``(image, mask)`` examples of ``data`` (:func:`~transferkit.data.masks.load_masked`), every mask
        read once and checked before training starts.

        Raises:
            MaskError: a mask that cannot be read, or whose size differs from its image's.
            LabelError: class indices beyond the head's classes.
            ImageError, DataError: unreadable images, missing files, an empty source.
        """
        from transferkit.backbones.images import check_image_files

        head = self.model.head
        examples, names = load_masked(data)
        files = [(e.image, e.origin) for e in examples if isinstance(e.image, (str, os.PathLike))]
        check_image_files([f for f, _ in files], [o for _, o in files])
        masks = [read_mask(e.mask, e.origin) for e in examples]
        for e, m in zip(examples, masks):
            mask_sizes_match(self.inputs.size_of(e.image, e.origin), m, e.origin)
        if head.labels is None:
            if names is None:
                top = max(int(m[m != IGNORE].max(initial=0)) for m in masks)
                names = [str(i) for i in range(max(2, top + 1))]
            head.set_labels(names)
        for e, m in zip(examples, masks):
            check_mask_values(m, head.num_classes, e.origin)
        if all(((m == 0) | (m == IGNORE)).all() for m in masks):
            raise LabelError(f"every one of the {len(masks)} masks is background (class 0) only: there is nothing "
                             "to segment or score; check that the masks hold class indices (1, 2...), not 0 only.")
        # Masks given as arrays stay decoded; files are read again per batch (memory does not grow with them).
        return [MaskedImage(e.image, m if not isinstance(e.mask, (str, os.PathLike)) else e.mask, e.origin)
                for e, m in zip(examples, masks)]

    def collate(self, examples: Sequence[MaskedImage]) -> dict[str, Any]:
        from torchvision import tv_tensors

        pixels, masks, originals, placements = [], [], [], []
        for e in examples:
            mask = torch.as_tensor(read_mask(e.mask, e.origin))
            x, moved, where = self.inputs(self.inputs.unit(e.image, e.origin), {"mask": tv_tensors.Mask(mask)},
                                          train=self.training)
            pixels.append(x)
            masks.append(moved["mask"].as_subclass(torch.Tensor).long())
            originals.append(mask)
            placements.append(where)
        batch = {"inputs": {"pixel_values": torch.stack(pixels)}, "masks": torch.stack(masks)}
        if not self.training:  # evaluation scores each image at its own size
            batch.update(originals=originals, placements=placements)
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        head = self.model.head
        logits = head.upsample(self.model(**batch["inputs"])["logits"], batch["masks"].shape[-2:]).float()
        masks = batch["masks"].to(logits.device)
        keep = masks != IGNORE
        count = keep.sum()
        if not bool(count):
            return {"loss": logits.sum() * 0.0, "logits": logits, "num_items": count}
        loss = logits.new_zeros(())
        if head.loss in ("ce", "ce+dice"):
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE)
        if head.loss in ("dice", "ce+dice"):
            loss = loss + dice_loss(logits, masks, keep)
        return {"loss": loss, "logits": logits, "num_items": count}

    def metrics(self) -> "SegmentationMetrics":
        return SegmentationMetrics(self.model.head.labels, self.inputs)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − the soft Dice coefficient, averaged over the classes (Milletari et al. 2016, V-Net,
    https://arxiv.org/abs/1606.04797), over the batch's labelled pixels; ``eps`` smooths empty classes.
    A batch-level loss: with accumulation the micro-batches' Dice terms are averaged, not pooled."""
    probs = logits.softmax(1) * keep[:, None]
    onehot = F.one_hot(masks.clamp(max=logits.shape[1] - 1) * keep, logits.shape[1]).permute(0, 3, 1, 2) * keep[:, None]
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


class SegmentationMetrics:
    """mIoU, Dice, pixel accuracy and per-class IoU from a streamed confusion matrix (module docstring)."""

    def __init__(self, labels: Sequence[str], inputs: DenseInputs | None = None):
        self.labels = list(labels)
        self.inputs = inputs  # to draw validation samples in the report
        self.samples: list = []
        self.higher_is_better = self.directions(self.labels)
        k = len(self.labels)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.loss_sum = 0.0
        self.items = 0

    @staticmethod
    def directions(labels: Sequence[str]) -> dict[str, bool]:
        return {"loss": False, "miou": True, "dice": True, "pixel_accuracy": True,
                **{f"iou_{name}": True for name in labels}}

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        logits = outputs["logits"].detach().float().cpu()
        items = int(outputs["num_items"])
        self.loss_sum += float(outputs["loss"]) * items
        self.items += items
        if "placements" in batch:
            pairs = [(where.to_original(row).argmax(0), truth)
                     for row, where, truth in zip(logits, batch["placements"], batch["originals"])]
            if self.inputs is not None and len(self.samples) < SAMPLES:
                from .dense import unit_image

                for pixels, where, row, mask in zip(batch["inputs"]["pixel_values"], batch["placements"], logits,
                                                    batch["masks"]):
                    if len(self.samples) < SAMPLES:
                        h, w = where.content
                        self.samples.append((unit_image(pixels, self.inputs, where), mask[:h, :w].numpy(),
                                             row[:, :h, :w].argmax(0).numpy()))
        else:
            pairs = list(zip(logits.argmax(1), batch["masks"].cpu()))
        self.add([p for p, _ in pairs], [t for _, t in pairs])

    def add(self, predictions: Sequence[Any], truths: Sequence[Any]) -> None:
        """Add predicted and true index masks (``IGNORE`` pixels of the truth are skipped)."""
        k = len(self.labels)
        for pred, truth in zip(predictions, truths):
            pred, truth = np.asarray(pred, dtype=np.int64).ravel(), np.asarray(truth, dtype=np.int64).ravel()
            valid = truth != IGNORE
            self.confusion += np.bincount(truth[valid] * k + pred[valid], minlength=k * k).reshape(k, k)

    def report(self, output_dir: str | os.PathLike) -> list:
        """``segmentation_samples.png``: a few validation images, true and predicted masks side by side (none
        after a resume: the samples are not part of the checkpoint)."""
        from pathlib import Path

        from .dense import save_samples

        if not self.samples:
            return []
        return [save_samples(self.samples, Path(output_dir) / "segmentation_samples.png", "segmentation", self.labels)]

    def compute(self) -> dict[str, float]:
        c = self.confusion.astype(np.float64)
        tp = np.diag(c)
        fp, fn = c.sum(0) - tp, c.sum(1) - tp
        union = tp + fp + fn
        present = union > 0
        iou = np.where(present, tp / np.where(present, union, 1), np.nan)
        dice = np.where(present, 2 * tp / np.where(present, 2 * tp + fp + fn, 1), np.nan)
        out = {"loss": self.loss_sum / max(self.items, 1),
               "miou": float(np.nanmean(iou)) if present.any() else 0.0,
               "dice": float(np.nanmean(dice)) if present.any() else 0.0,
               "pixel_accuracy": float(tp.sum() / c.sum()) if c.sum() else 0.0}
        out.update({f"iou_{name}": float(v) if present[i] else 0.0 for i, (name, v) in enumerate(zip(self.labels, iou))})
        return out


def write_mask_png(mask: np.ndarray, path: str | os.PathLike) -> os.PathLike:
    """Write a class-index mask as a palette PNG (pixel values are the class indices; the palette only colours
    them for viewing), atomically; returns the path."""
    from PIL import Image

    from transferkit.files import atomic_path

    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def palette() -> list[int]:
    """256 RGB colours: black background, then well-separated hues (the VOC colour map's bit pattern)."""
    colours = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    return colours
