"""What the dense vision tasks share: images of any size to the network's input and back, and training
augmentations that move the targets with the image.

The network sees the backbone's own input size, mean and std (the preprocessing that belongs to the weights),
but without the centre crop of classification, which would cut off part of what must be segmented or found:
the image is **letterboxed** — scaled so its longer side fits, keeping its aspect ratio, and padded at the
bottom and right (with the mean colour, 0 once normalised). A :class:`Placement` records where it went, so
predictions are mapped back to the original pixels (:meth:`Placement.to_original`).

Augmentations are ``torchvision.transforms.v2`` transforms: they take the image as a ``tv_tensors.Image``
and the targets in a dict of ``tv_tensors.Mask`` / ``tv_tensors.BoundingBoxes``, and crop, flip and scale
them together (https://pytorch.org/vision/stable/transforms.html). They run on the original image, before
the letterbox; they are applied in training only (the task's ``training`` flag), never in evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.data.masks import IGNORE
from transferkit.errors import ConfigError, InputError


@dataclass(frozen=True)
class Placement:
    """Where an ``height × width`` original went in the network's input: scaled by ``scale`` to
    ``content`` pixels (top-left), the rest padding."""

    height: int
    width: int
    scale: float
    content: tuple[int, int]

    def to_original(self, maps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """``[C, H_net, W_net]`` maps at the network's input size → ``[C, height, width]``: the padding cut
        off, the content resized back."""
        h, w = self.content
        cut = maps[None, :, :h, :w]
        if (h, w) == (self.height, self.width):
            return cut[0]
        if mode == "nearest":
            return F.interpolate(cut.float(), size=(self.height, self.width), mode="nearest")[0].to(maps.dtype)
        return F.interpolate(cut, size=(self.height, self.width), mode=mode, align_corners=False)[0]

    def detections_to_original(self, detections: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detections with boxes in the network's input pixels → the original image's (the letterbox scale
        undone, clipped to the image); on the CPU."""
        boxes = detections["boxes"].detach().float().cpu() / self.scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, self.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, self.height)
        return {"boxes": boxes, "labels": detections["labels"].detach().cpu(),
                "scores": detections["scores"].detach().cpu()}


def default_augment(size: tuple[int, int], kind: str) -> Callable:
    """The default training augmentation of a dense task (``kind``: ``"segmentation"`` or ``"detection"``):
    a random resized crop (segmentation: 35–100 % of the image, then the network size) or a random zoom out
    and crop (detection: scale jitter that keeps whole objects), a horizontal flip and mild colour jitter."""
    from torchvision.transforms import v2

    colour = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)
    if kind == "segmentation":
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), colour])
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomApply([v2.RandomZoomOut(fill=0.5, side_range=(1.0, 1.5))],
                                                                 p=0.3), colour])


class DenseInputs:
    """A backbone's transform for dense tasks: (augment →) letterbox → normalise, targets moved alike.

    Args:
        backbone: a vision backbone; its preprocessor gives the input size, mean, std and interpolation.
        augment: ``"default"`` (:func:`default_augment`), ``None`` (none), or a callable taking
            ``(tv_tensors.Image, targets dict)`` and returning both, as a ``transforms.v2`` pipeline does.
        kind: ``"segmentation"`` or ``"detection"`` (which default augmentation).
    """

    def __init__(self, backbone: Any, augment: Any = "default", kind: str = "segmentation"):
        transform = getattr(backbone, "preprocessor", None)
        if getattr(backbone, "modality", None) != "image" or not hasattr(transform, "size"):
            raise ConfigError(f"{kind} needs an image backbone (timm:, torchvision:); got modality "
                              f"{getattr(backbone, 'modality', None)!r}.")
        self.size = tuple(int(s) for s in transform.size)
        self.mean = torch.tensor(transform.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(transform.std, dtype=torch.float32).view(3, 1, 1)
        self.min_size = int(getattr(transform, "min_size", 2))
        self.background = getattr(transform, "background", (255, 255, 255))
        if augment == "default":
            augment = default_augment(self.size, kind)
        if augment is not None and not callable(augment):
            raise ConfigError(f"augment must be 'default', None or a transforms.v2 callable; got {augment!r}.")
        self.augment = augment

    def unit(self, image: Any, origin: str) -> torch.Tensor:
        """One raw image as a ``3×H×W`` float tensor in 0–1 (the forms of :mod:`transferkit.backbones.images`)."""
        from transferkit.backbones.images import to_tensor

        try:
            x = to_tensor(image, 0, self.background)
        except InputError as e:
            raise type(e)(f"{origin}: {e}") from e
        if min(x.shape[-2:]) < self.min_size:
            raise InputError(f"{origin}: the image is {x.shape[-2]}×{x.shape[-1]} pixels; at least "
                             f"{self.min_size}×{self.min_size} is needed.")
        return x

    def size_of(self, image: Any, origin: str) -> tuple[int, int]:
        """``(height, width)`` of a raw image: from the file header for paths, else from the pixels."""
        if isinstance(image, (str, os.PathLike)):
            from PIL import Image

            with Image.open(image) as im:
                return im.size[1], im.size[0]
        if type(image).__module__.startswith("PIL."):
            return image.size[1], image.size[0]
        return tuple(self.unit(image, origin).shape[-2:])

    def prediction_batches(self, raw_inputs: Any, batch_size: int) -> tuple[Iterator[tuple], bool]:
        """``(pixel_values [B, 3, H, W], placements)`` per batch of raw inputs (one image or a collection, as
        ``TransferModel.predict`` takes them), and whether the input was a single image."""
        from transferkit.data import check_inputs, prediction_inputs

        inputs, single = prediction_inputs(raw_inputs, None)
        origins = [f"item {i}" for i in range(len(inputs))]
        check_inputs(inputs, "image", origins)

        def batches():
            for start in range(0, len(inputs), batch_size):
                placed = [self(self.unit(x, o), {}, train=False) for x, o in
                          zip(inputs[start:start + batch_size], origins[start:start + batch_size])]
                yield torch.stack([p for p, _, _ in placed]), [where for _, _, where in placed]
        return batches(), single

    def __call__(self, image: torch.Tensor, targets: dict[str, Any], train: bool) -> tuple[torch.Tensor, dict, Placement]:
        """A ``3×H×W`` 0–1 image and its targets (``tv_tensors``) → normalised network input, the targets at
        the input's geometry, and the :class:`Placement` of the (augmented) image."""
        from torchvision import tv_tensors
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as TF

        image = tv_tensors.Image(image)
        if train and self.augment is not None:
            image, targets = self.augment(image, targets)
            if any(isinstance(v, tv_tensors.BoundingBoxes) for v in targets.values()):
                # boxes a crop left degenerate or outside go, with their "labels" entries
                sanitize = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=lambda sample: sample[1].get("labels"))
                image, targets = sanitize(image, targets)
        height, width = image.shape[-2:]
        scale = min(self.size[0] / height, self.size[1] / width)
        content = (min(self.size[0], max(1, round(height * scale))), min(self.size[1], max(1, round(width * scale))))
        if content != (height, width):
            image = TF.resize(image, list(content), antialias=True)
            targets = {k: TF.resize(v, list(content)) if isinstance(v, tv_tensors.TVTensor) else v
                       for k, v in targets.items()}
        pad = [0, 0, self.size[1] - content[1], self.size[0] - content[0]]  # left, top, right, bottom
        pixels = TF.pad(((image.as_subclass(torch.Tensor).clamp(0, 1) - self.mean) / self.std), pad, fill=0.0)
        moved = {}
        for k, v in targets.items():
            if isinstance(v, tv_tensors.Mask):
                v = TF.pad(v, pad, fill=IGNORE)
            elif isinstance(v, tv_tensors.BoundingBoxes):
                v = TF.pad(v, pad)
            moved[k] = v
        return pixels, moved, Placement(int(height), int(width), float(scale), content)


SAMPLES = 4  # validation images the report draws


def unit_image(pixels: torch.Tensor, inputs: "DenseInputs", where: Placement) -> np.ndarray:
    """A normalised, letterboxed network input back as an ``H×W×3`` 0–1 array of its content (padding cut)."""
    h, w = where.content
    x = (pixels.detach().float().cpu()[:, :h, :w] * inputs.std + inputs.mean).clamp(0, 1)
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def save_samples(samples: list, path: Any, kind: str, labels: list[str]) -> Any:
    """Draw validation samples — ground truth left, prediction right — as a PNG, atomically; returns the path.

    ``samples``: ``(image H×W×3, truth, prediction)``; segmentation: index masks (255 = ignored); detection: dicts of
    ``boxes`` (x1, y1, x2, y2) and ``labels`` (and ``scores``; predictions under 0.3 are not drawn). Drawn by the Agg
    canvas: no display is needed and pyplot's global state is never touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from transferkit.files import atomic_path

    figure = Figure(figsize=(6, 3 * len(samples)))
    FigureCanvasAgg(figure)
    for row, (image, truth, prediction) in enumerate(samples):
        for col, (what, target) in enumerate((("ground truth", truth), ("prediction", prediction))):
            ax = figure.add_subplot(len(samples), 2, 2 * row + col + 1)
            ax.imshow(image)
            ax.set_axis_off()
            ax.set_title(what, fontsize=8)
            if kind == "segmentation":
                mask = np.asarray(target, dtype=np.float64)
                shown = np.ma.masked_where((mask == 0) | (mask == IGNORE), mask)
                ax.imshow(shown, alpha=0.5, cmap="tab20", vmin=0, vmax=max(1, len(labels) - 1), interpolation="nearest")
                continue
            scores = target.get("scores")
            for k, (box, label) in enumerate(zip(np.asarray(target["boxes"]).reshape(-1, 4), target["labels"])):
                if scores is not None and float(scores[k]) < 0.3:
                    continue
                x1, y1, x2, y2 = (float(v) for v in box)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1,
                                       edgecolor="lime" if col == 0 else "red"))
                if len(labels) > 1:
                    ax.text(x1, y1, labels[int(label)], fontsize=5, color="white")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path
