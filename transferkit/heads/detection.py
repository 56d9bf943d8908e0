"""Object detection over any vision backbone, with torchvision's detection machinery.

torchvision builds FCOS, RetinaNet and Faster R-CNN over its own few backbones; this head puts them over any
backbone that describes its stages (timm, torchvision; ViTs too). It keeps torchvision's parts — anchor
generators, box coders and matchers, the losses (focal loss, GIoU, centre-ness, RPN and RoI losses), NMS and
post-processing — and replaces only the feature extractor: an :class:`~transferkit.heads.neck.FPN` over the
backbone's stages (with torchvision's extra levels: P6/P7 for FCOS and RetinaNet, a max-pooled level for
Faster R-CNN, as their builders add). What the papers say:

* FCOS (Tian et al. 2019, https://arxiv.org/abs/1904.01355): anchor-free, one point per location, the default;
* RetinaNet (Lin et al. 2017, https://arxiv.org/abs/1708.02002): dense anchors, focal loss;
* Faster R-CNN (Ren et al. 2015, https://arxiv.org/abs/1506.01497): region proposals + RoI heads.

Images reach the network letterboxed to the backbone's input size and normalised by the backbone's own
preprocessing (:mod:`transferkit.tasks.dense`), so torchvision's internal resize/normalise step is not used;
``predict`` maps the boxes back to each image's original pixels. Classes are ``labels[0]``.. (torchvision's
label ``i + 1``; its label 0 is the background).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError, InputError
from transferkit.heads import register_head
from transferkit.heads.neck import FPN

ARCHS = ("fcos", "retinanet", "faster_rcnn")


class _Pyramid(nn.Module):
    """The feature extractor torchvision's detectors are built around (``out_channels``, ``forward -> dict``): here
    the FPN over stage maps the backbone already computed."""

    def __init__(self, fpn: FPN):
        super().__init__()
        self.fpn = fpn
        self.out_channels = fpn.channels

    def forward(self, maps: Sequence[torch.Tensor]):
        return self.fpn(maps)


@register_head("detection")
class Detection(nn.Module):
    """Boxes, labels and scores per image.

    Args:
        labels: the object classes (no background entry); ``None`` takes them from the training data.
        arch: ``"fcos"`` (default), ``"retinanet"`` or ``"faster_rcnn"``.
        channels: channels of the pyramid and of the detector's heads (torchvision's builders use 256; FCOS
            needs a multiple of 32, at least 64, for its GroupNorm).
        levels: how many of the backbone's deepest stages (stride ≥ 4) the pyramid uses (Faster R-CNN with a
            ResNet: 4, torchvision's ``returned_layers=[1, 2, 3, 4]``; FCOS and RetinaNet: 3, ``[2, 3, 4]``).
        score_threshold, nms_threshold, detections_per_image: post-processing (torchvision's defaults per arch
            when ``None``: FCOS 0.2 / 0.6 / 100, RetinaNet 0.05 / 0.5 / 300, Faster R-CNN 0.05 / 0.5 / 100).
        stages: the backbone's stage description, set by ``build`` (saved).
    """

    needs = frozenset({"stages"})

    def __init__(self, labels: Sequence[str] | None = None, *, arch: str = "fcos", channels: int = 128,
                 levels: int | None = None, score_threshold: float | None = None, nms_threshold: float | None = None,
                 detections_per_image: int | None = None, stages: Sequence[Sequence] | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}; got {arch!r}.")
        if arch == "fcos" and (int(channels) % 32 or int(channels) < 64):
            raise ConfigError(f"FCOS's head normalises in 32 groups: channels must be a multiple of 32, at least 64; "
                              f"got {channels}.")
        self.arch, self.channels = arch, int(channels)
        self.levels = int(levels) if levels is not None else (4 if arch == "faster_rcnn" else 3)
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image
        self.stages = [list(s) for s in stages] if stages is not None else None
        self.detector: nn.Module | None = None
        self.labels: list[str] | None = None
        if labels is not None:
            self.set_labels(labels)

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else len(self.labels)

    def set_labels(self, labels: Sequence[str]) -> None:
        labels = [str(x) for x in labels]
        if not labels or len(set(labels)) != len(labels):
            raise ConfigError(f"detection needs at least one object class, each named once; got {labels}.")
        if self.detector is not None and len(labels) != self.num_classes:
            raise ConfigError(f"the head was built for {self.num_classes} classes, not {len(labels)}.")
        self.labels = labels
        if self.stages is not None and self.detector is None:
            self._make()

    def build(self, info: Any) -> None:
        """Record the backbone's stages (:class:`~transferkit.backbones.base.FeatureInfo`); the detector is made
        once the classes are known."""
        if self.stages is None:
            self.stages = [[s.name, s.channels, s.stride] for s in info.stages]
        if self.labels is not None and self.detector is None:
            self._make()

    def _make(self) -> None:
        from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.fcos import FCOSHead
        from torchvision.models.detection.retinanet import RetinaNetHead

        from transferkit.backbones.base import Stage

        stages = tuple(Stage(*s) for s in self.stages)
        fpn = FPN(stages, self.channels, self.levels, extra="maxpool" if self.arch == "faster_rcnn" else "p6p7")
        strides = fpn.strides + ([fpn.strides[-1] * 2] if self.arch == "faster_rcnn" else
                                 [fpn.strides[-1] * 2, fpn.strides[-1] * 4])
        k = self.num_classes + 1  # torchvision counts the background
        post = {k2: v for k2, v in (("score_thresh", self.score_threshold), ("nms_thresh", self.nms_threshold),
                                    ("detections_per_img", self.detections_per_image)) if v is not None}
        pyramid = _Pyramid(fpn)
        # The transform is never called (inputs arrive letterboxed and normalised): neutral settings.
        neutral = {"min_size": 32, "max_size": 32, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}
        if self.arch == "fcos":  # one point per location, of the level's stride (torchvision's FCOS builder)
            anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
            self.detector = FCOS(pyramid, k, anchor_generator=anchors,
                                 head=FCOSHead(self.channels, 1, k), **neutral, **post)
        elif self.arch == "retinanet":  # 3 scales x 3 ratios, 4 strides across (torchvision's default sizes)
            anchors = AnchorGenerator(tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides),
                                      ((0.5, 1.0, 2.0),) * len(strides))
            self.detector = RetinaNet(pyramid, k, anchor_generator=anchors,
                                      head=RetinaNetHead(self.channels, anchors.num_anchors_per_location()[0], k),
                                      **neutral, **post)
        else:  # sizes 8 strides across, 3 ratios (torchvision's Faster R-CNN: 32..512 on strides 4..64)
            anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
            post = {{"score_thresh": "box_score_thresh", "nms_thresh": "box_nms_thresh",
                     "detections_per_img": "box_detections_per_img"}[k2]: v for k2, v in post.items()}
            self.detector = FasterRCNN(pyramid, k, rpn_anchor_generator=anchors, **neutral, **post)

    # -- forward -------------------------------------------------------------------------------------------

    def forward(self, features: Any, pixel_values: torch.Tensor | None = None,
                targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """With ``targets`` in training mode: torchvision's loss dict. Otherwise: detections per image, a dict of
        ``boxes`` ``[N, 4]`` (x1, y1, x2, y2 in the network's input pixels), ``labels`` (class indices into
        :attr:`labels`) and ``scores``."""
        from torchvision.models.detection.image_list import ImageList

        if self.detector is None:
            raise RuntimeError("the head has no classes yet: give labels, or train it (the training data names them)")
        maps = features.stages
        if pixel_values is None:  # the input size, from the first stage's map and stride
            stride = int(self.stages[0][2])
            size = (maps[0].shape[-2] * stride, maps[0].shape[-1] * stride)
            pixel_values = maps[0].new_zeros((len(maps[0]), 3, *size))
        images = ImageList(pixel_values, [tuple(pixel_values.shape[-2:])] * len(pixel_values))
        pyramid = self.detector.backbone(maps)
        levels = list(pyramid.values())
        det = self.detector
        if self.training and targets is not None:
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
            if self.arch == "faster_rcnn":
                proposals, rpn_losses = det.rpn(images, pyramid, targets)
                _, roi_losses = det.roi_heads(pyramid, proposals, images.image_sizes, targets)
                return {**rpn_losses, **roi_losses}
            head_outputs = det.head(levels)
            anchors = det.anchor_generator(images, levels)
            if self.arch == "fcos":
                return det.compute_loss(targets, head_outputs, anchors, [x.size(2) * x.size(3) for x in levels])
            return det.compute_loss(targets, head_outputs, anchors)
        if self.arch == "faster_rcnn":
            was = det.rpn.training, det.roi_heads.training
            det.rpn.training = det.roi_heads.training = False  # inference branches, whatever the head's mode
            try:
                proposals, _ = det.rpn(images, pyramid)
                detections, _ = det.roi_heads(pyramid, proposals, images.image_sizes)
            finally:
                det.rpn.training, det.roi_heads.training = was
        else:
            head_outputs = det.head(levels)
            anchors = det.anchor_generator(images, levels)
            per_level = [x.size(2) * x.size(3) for x in levels]
            if self.arch == "retinanet":
                a = head_outputs["cls_logits"].size(1) // sum(per_level)
                per_level = [n * a for n in per_level]
            split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
            detections = det.postprocess_detections(split, [list(x.split(per_level)) for x in anchors],
                                                    images.image_sizes)
        return [{"boxes": d["boxes"], "labels": d["labels"] - 1, "scores": d["scores"]} for d in detections]

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: torchvision's losses; COCO mAP, mAP@0.5 and mAP@0.75 (pycocotools)."""
        from transferkit.tasks.detection import DetectionTask

        return DetectionTask(model, **options)

    def scores(self, outputs: Any) -> torch.Tensor:
        raise InputError("a detection head scores each box, not each image: use predict, whose boxes carry scores.")

    def predict(self, outputs: Any) -> list:
        return [_as_record(d, self.labels) for d in outputs]

    def predict_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 8) -> Any:
        """Per image: ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...], "scores": [...]}`` in the image's
        own pixels, best score first."""
        from transferkit.backbones.base import inference
        from transferkit.tasks.dense import DenseInputs

        batches, single = DenseInputs(model.backbone, augment=None, kind="detection").prediction_batches(
            raw_inputs, batch_size)
        out = []
        with inference(model) as device:
            for pixels, placements in batches:
                pixels = pixels.to(device)
                features = model.backbone(pixel_values=pixels, stages=True)
                out += [_as_record(where.detections_to_original(d), self.labels)
                        for d, where in zip(self(features, pixels), placements)]
        return out[0] if single else out

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "labels": self.labels, "arch": self.arch, "channels": self.channels,
                "levels": self.levels, "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
                "detections_per_image": self.detections_per_image, "stages": self.stages}


def _as_record(d: dict[str, torch.Tensor], labels: Sequence[str]) -> dict:
    order = torch.argsort(d["scores"], descending=True)
    return {"boxes": np.round(d["boxes"][order].detach().cpu().numpy().astype(np.float64), 2).tolist(),
            "labels": [labels[int(i)] for i in d["labels"][order]],
            "scores": [round(float(s), 5) for s in d["scores"][order]]}
