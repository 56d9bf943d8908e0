"""Semantic segmentation: a class per pixel, from a feature pyramid over the backbone's stages.

The decoder is the semantic branch of Panoptic FPN (Kirillov et al. 2019, "Panoptic Feature Pyramid
Networks", https://arxiv.org/abs/1901.02446), in its light form: an :class:`~transferkit.heads.neck.FPN` over
the backbone's deepest stages, a 3×3 convolution + GroupNorm + ReLU per level, every level upsampled to the
finest one and summed, then a 1×1 convolution to the classes. The logits come out at the finest level's
stride; the task and ``predict`` upsample them to the input and then to each image's original size.

Works on any backbone that describes its stages (timm, torchvision; ViTs, whose blocks all have stride 16,
give a one-stride pyramid). ``predict`` returns one ``H×W`` array of class indices per image, at the image's
own size (:meth:`Segmentation.predict_raw`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError
from transferkit.heads import register_head
from transferkit.heads.neck import FPN

LOSSES = ("ce", "dice", "ce+dice")


@register_head("segmentation")
class Segmentation(nn.Module):
    """Per-pixel classification over a feature pyramid.

    Args:
        labels: class names, index ``i`` for mask value ``i`` (class 0 is usually the background); ``None``
            takes them from the training data (COCO categories, or ``"0"``..``"K-1"`` for index masks).
        num_classes: the number of classes when ``labels`` is not given (else ``len(labels)``).
        channels: channels of the pyramid and of the decoder.
        levels: how many of the backbone's deepest stages (stride ≥ 4) the pyramid uses.
        loss: ``"ce"`` (per-pixel cross-entropy), ``"dice"`` (soft Dice over the classes) or ``"ce+dice"``.
        dropout: dropout before the classifier.
        stages: the backbone's stage description, set by ``build`` (saved, so a loaded head is rebuilt alike).
    """

    needs = frozenset({"stages"})

    def __init__(self, labels: Sequence[str] | None = None, *, num_classes: int | None = None, channels: int = 64,
                 levels: int = 4, loss: str = "ce", dropout: float = 0.1, stages: Sequence[Sequence] | None = None):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}; got {loss!r}.")
        self.channels, self.levels, self.loss, self.dropout = int(channels), int(levels), loss, float(dropout)
        self.stages = [list(s) for s in stages] if stages is not None else None
        self.neck: FPN | None = None
        self.decoder: nn.ModuleList | None = None
        self.classifier: nn.Module | None = None
        self.labels: list[str] | None = None
        self.num_classes: int | None = None
        if labels is not None or num_classes is not None:
            self.set_labels(labels if labels is not None else [str(i) for i in range(int(num_classes))])

    def set_labels(self, labels: Sequence[str]) -> None:
        labels = [str(x) for x in labels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"segmentation needs at least 2 distinct classes (background included); got {labels}.")
        if len(labels) > 255:
            raise ConfigError(f"{len(labels)} classes: masks hold at most 255 (255 marks ignored pixels).")
        if self.classifier is not None and len(labels) != self.num_classes:
            raise ConfigError(f"the head was built for {self.num_classes} classes, not {len(labels)}.")
        self.labels, self.num_classes = labels, len(labels)
        if self.neck is not None and self.classifier is None:  # built before the data named the classes
            self._make()

    def build(self, info: Any) -> None:
        """Create the layers from the backbone's :class:`~transferkit.backbones.base.FeatureInfo` (its stages)."""
        from transferkit.backbones.base import Stage

        stages = tuple(Stage(*s) for s in self.stages) if self.stages is not None else tuple(info.stages)
        if self.neck is not None:
            return
        self.neck = FPN(stages, self.channels, self.levels)
        self.stages = [[s.name, s.channels, s.stride] for s in stages]
        self.decoder = nn.ModuleList(nn.Sequential(nn.Conv2d(self.channels, self.channels, 3, padding=1, bias=False),
                                                   nn.GroupNorm(min(32, self.channels // 4) or 1, self.channels),
                                                   nn.ReLU(inplace=True)) for _ in self.neck.indices)
        if self.num_classes is not None:
            self._make()

    def _make(self) -> None:
        self.classifier = nn.Sequential(nn.Dropout2d(self.dropout), nn.Conv2d(self.channels, self.num_classes, 1))

    @property
    def stride(self) -> int:
        """Input pixels per output pixel (the finest pyramid level's stride)."""
        return self.neck.strides[0]

    def forward(self, features: Any) -> torch.Tensor:
        """Logits ``[B, num_classes, H / stride, W / stride]``."""
        if self.classifier is None:
            raise RuntimeError("the head has no classes yet: give labels or num_classes, or train it (the "
                               "training data names them)")
        maps = features.stages if hasattr(features, "stages") else features
        levels = list(self.neck(maps).values())
        size = levels[0].shape[-2:]
        out = 0
        for level, block in zip(levels, self.decoder):
            y = block(level)
            out = out + (y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear",
                                                                       align_corners=False))
        return self.classifier(out)

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: cross-entropy and/or Dice per pixel; mIoU, per-class IoU, Dice."""
        from transferkit.tasks.segmentation import SegmentationTask

        return SegmentationTask(model, **options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        from transferkit.errors import InputError

        raise InputError("a segmentation head has a score per pixel, not per image: use predict (masks), or "
                         "model.head.probabilities(model, images).")

    def predict(self, outputs: torch.Tensor) -> list:
        return [np.asarray(o.argmax(0), dtype=np.uint8) for o in outputs]

    def predict_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 8) -> Any:
        """One ``H×W`` ``uint8`` array of class indices per image, at the image's own size."""
        probabilities, single = self._probabilities(model, raw_inputs, batch_size)
        masks = [np.asarray(p.argmax(0), dtype=np.uint8) for p in probabilities]
        return masks[0] if single else masks

    def probabilities(self, model: nn.Module, raw_inputs: Any, batch_size: int = 8) -> Any:
        """``[num_classes, H, W]`` class probabilities per image, at the image's own size."""
        probabilities, single = self._probabilities(model, raw_inputs, batch_size)
        return probabilities[0] if single else probabilities

    def _probabilities(self, model: nn.Module, raw_inputs: Any, batch_size: int) -> tuple[list, bool]:
        from transferkit.backbones.base import inference
        from transferkit.tasks.dense import DenseInputs

        batches, single = DenseInputs(model.backbone, augment=None).prediction_batches(raw_inputs, batch_size)
        out = []
        with inference(model) as device:
            for pixels, placements in batches:
                pixels = pixels.to(device)
                logits = self.upsample(model(pixel_values=pixels)["logits"], pixels.shape[-2:]).float()
                out += [where.to_original(row.softmax(0).cpu()) for row, where in zip(logits, placements)]
        return out, single

    @staticmethod
    def upsample(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Logits at the network's input size (bilinear, as the decoder's levels are)."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "labels": self.labels, "channels": self.channels, "levels": self.levels,
                "loss": self.loss, "dropout": self.dropout, "stages": self.stages}
