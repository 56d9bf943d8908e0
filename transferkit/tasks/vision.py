"""Self-supervised pretraining of vision backbones on unlabelled images.

Each task is three small parts composed: a *view* that makes pretext labels from unlabelled images
(:mod:`transferkit.tasks.vision_views`), a small *head* on the backbone's features, and a *loss*. Each
follows the task contract of :mod:`transferkit.tasks`, so :class:`~transferkit.Trainer` trains it, and
each exposes ``.backbone`` to save and fine-tune afterwards::

    import transferkit as tk
    from transferkit.tasks.vision import RotationPrediction
    backbone = tk.load_backbone("timm:resnet18", weights=None, image_size=32)
    task = RotationPrediction(backbone)
    tk.Trainer(epochs=2, lr=1e-3).fit(task, "unlabelled_images/")   # a folder, or a list of images
    task.backbone.save_pretrained("runs/rot")

Views run in ``collate`` on the backbone's preprocessed images (so labels refer to exactly what the
network sees) and draw randomness from torch's global generator, which the Trainer seeds.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.images import to_tensor
from transferkit.data.images import ImageFolderCorpus, unlabelled_images

from .pixels import Pixels, probe
from .vision_views import (ColorizationView, CorruptionView, MaskedPatchView, RandomResizedCrop, RotationView,
                           num_colour_classes)

__all__ = ["RotationPrediction", "PatchColor", "DenoisingAutoencoder", "ImageFolderCorpus", "PretextMetrics",
           "unlabelled_images"]


class PretextMetrics:
    """Streaming mean loss, and accuracy of ``logits.argmax(1)`` against ``labels`` when the task has labels.

    Args:
        accuracy: the task classifies (has ``labels``), so ``accuracy`` is one of its metrics.
    """

    def __init__(self, accuracy: bool = True):
        self.loss_sum, self.count, self.correct, self.total = 0.0, 0, 0, 0
        self.higher_is_better = {"loss": False, **({"accuracy": True} if accuracy else {})}

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        n = int(batch["inputs"]["pixel_values"].shape[0])
        self.loss_sum += float(outputs["loss"]) * n
        self.count += n
        if "labels" in batch and "logits" in outputs:
            labels = batch["labels"]
            self.correct += int((outputs["logits"].argmax(1) == labels).sum())
            self.total += labels.numel()

    def compute(self) -> dict[str, float]:
        result = {"loss": self.loss_sum / max(1, self.count)}
        if self.total:
            result["accuracy"] = self.correct / self.total
        return result


def _preprocessed(backbone, pixels: Pixels, images: Sequence[Any]) -> torch.Tensor:
    """Raw images → 0–1 pixels at the backbone's input size ``[B, 3, H, W]``."""
    return pixels.unit(backbone.preprocess(list(images))["pixel_values"])


class RotationPrediction(nn.Module):
    """Predict which of 0°, 90°, 180°, 270° an image was rotated by.

    Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by Predicting Image
    Rotations", https://arxiv.org/abs/1803.07728. View: :class:`~transferkit.tasks.vision_views.RotationView`
    (all four rotations of each image by default, as in the paper), then a random resized crop of each
    rotated image (:class:`~transferkit.tasks.vision_views.RandomResizedCrop`; the paper trains with data
    augmentation too); head: linear on pooled features; loss: 4-way cross-entropy. Metrics: ``loss`` and
    rotation ``accuracy``.

    Without the crop, on small centred images such as digits the network can tell the rotation from the
    bounding box alone (digits are taller than wide) and its features end up worse than random ones for
    telling digits apart; see docs/pretraining_vision.md.

    Args:
        backbone: an image backbone.
        all_rotations: all four rotations of every image per batch (paper), or one random rotation each.
        crop_scale: area fraction range of the random crop; ``None`` turns the crop off.
    """

    default_metric = "loss"  # selects the best epoch unless Trainer(metric=...) names another

    def __init__(self, backbone: nn.Module, all_rotations: bool = True,
                 crop_scale: tuple[float, float] | None = (0.5, 1.0)):
        super().__init__()
        self.backbone = backbone
        self.pixels = Pixels(backbone)
        self.view = RotationView(all_rotations)
        self.crop = RandomResizedCrop(crop_scale) if crop_scale is not None else None
        self.head = nn.Linear(backbone.feature_dim, 4)

    def examples(self, data: Any):
        """A folder (streamed), or a list/array of images; see :func:`unlabelled_images`."""
        return unlabelled_images(data)

    def collate(self, images: Sequence[Any]) -> dict[str, Any]:
        # Rotate the raw images, then resize/crop each the same way: rotating after preprocessing lets the
        # network read the rotation off the interpolation grid and crop edge instead of the content.
        rotated, labels = self.view([to_tensor(img, i) for i, img in enumerate(images)])
        pixels = _preprocessed(self.backbone, self.pixels, rotated)
        if self.crop is not None:
            pixels = self.crop(pixels)
        return {"inputs": {"pixel_values": self.pixels.normalise(pixels)}, "labels": labels}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.head(self.backbone(**batch["inputs"]).pooled)
        return {"loss": F.cross_entropy(logits.float(), batch["labels"]), "logits": logits}

    def metrics(self) -> PretextMetrics:
        return PretextMetrics()


class PatchColor(nn.Module):
    """Predict quantised colour: of a masked patch (``mode="patch"``) or of every region (``"colorize"``).

    * ``mode="patch"`` (default; colour *or* greyscale data): one random square patch per image is
      masked and a linear head on pooled features classifies its mean colour, quantised into ``bins``
      equal-width bins per channel (``bins³`` classes) — or, with ``channels="grey"``, the patch's mean
      grey level into ``bins`` classes (use this for greyscale data such as digits). Context prediction
      (Pathak et al. 2016, https://arxiv.org/abs/1604.07379) with a classification target.
    * ``mode="colorize"`` (colour data only): the network sees the greyscale image and classifies the
      quantised RGB colour of each cell of a ``grid×grid`` layout — Zhang, Isola & Efros 2016, "Colorful
      Image Colorization", https://arxiv.org/abs/1603.08511, simplified to RGB bins without class
      rebalancing. On greyscale images every target is grey, so there is nothing to learn; use ``"patch"``.
      The head is a 1×1 convolution on the spatial feature map pooled to ``grid×grid`` when the map is at
      least that large, else a linear layer from pooled features to ``grid²`` cells.

    Loss: cross-entropy. Metrics: ``loss`` and ``accuracy`` (per patch, or per cell).

    Args:
        backbone: an image backbone.
        mode: ``"patch"`` or ``"colorize"``.
        bins: quantisation levels per channel.
        channels: ``"rgb"`` or ``"grey"`` (patch mode only).
        patch_fraction: patch side as a fraction of the image side (patch mode).
        grid: cells per side (colorize mode).
    """

    default_metric = "loss"  # selects the best epoch unless Trainer(metric=...) names another

    def __init__(self, backbone: nn.Module, mode: str = "patch", bins: int = 4, channels: str = "rgb",
                 patch_fraction: float = 0.25, grid: int = 4):
        super().__init__()
        if mode not in ("patch", "colorize"):
            raise ValueError(f"mode must be 'patch' or 'colorize', got {mode!r}")
        if mode == "colorize" and channels == "grey":
            raise ValueError("colorize predicts colour from grey: it needs colour images and channels='rgb'. "
                             "For greyscale data use mode='patch', channels='grey'.")
        self.backbone = backbone
        self.pixels = Pixels(backbone)
        self.mode = mode
        self.grid = grid
        self.num_classes = num_colour_classes(bins, channels)
        self._warned_grey = False
        if mode == "patch":
            fill = tuple(float(m) for m in self.pixels.mean.flatten())
            self.view = MaskedPatchView(patch_fraction, bins, channels, fill)
            self.head = nn.Linear(backbone.feature_dim, self.num_classes)
        else:
            self.view = ColorizationView(bins, grid)
            dim, spatial = probe(backbone)
            self.use_spatial = spatial is not None and min(spatial[1:]) >= grid
            self.head = (nn.Conv2d(spatial[0], self.num_classes, 1) if self.use_spatial
                         else nn.Linear(dim, self.num_classes * grid * grid))

    def examples(self, data: Any):
        """A folder (streamed), or a list/array of images; see :func:`unlabelled_images`."""
        return unlabelled_images(data)

    def collate(self, images: Sequence[Any]) -> dict[str, Any]:
        x = _preprocessed(self.backbone, self.pixels, images)
        if self.mode == "colorize" and not self._warned_grey and float((x.amax(1) - x.amin(1)).max()) < 1e-3:
            self._warned_grey = True
            warnings.warn("PatchColor(mode='colorize') got greyscale images: every colour target is grey. Use "
                          "mode='patch', channels='grey' for greyscale data.", stacklevel=2)
        view, labels = self.view(x)[:2]
        return {"inputs": {"pixel_values": self.pixels.normalise(view)}, "labels": labels}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        features = self.backbone(**batch["inputs"])
        if self.mode == "patch":
            logits = self.head(features.pooled)
        elif self.use_spatial:
            logits = self.head(F.adaptive_avg_pool2d(features.spatial, self.grid))
        else:
            logits = self.head(features.pooled).view(-1, self.num_classes, self.grid, self.grid)
        return {"loss": F.cross_entropy(logits.float(), batch["labels"]), "logits": logits}

    def metrics(self) -> PretextMetrics:
        return PretextMetrics()


class ImageDecoder(nn.Module):
    """Small decoder from backbone features to a low-resolution image ``[B, 3, size, size]``.

    From the spatial map when it is at least 4×4 (1×1 convolution), else from pooled features (linear to
    a 4×4 map); then bilinear upsampling and two 3×3 convolutions.
    """

    def __init__(self, feature_dim: int, spatial: torch.Size | None, size: int, hidden: int = 64):
        super().__init__()
        self.use_spatial = spatial is not None and min(spatial[1:]) >= 4
        self.size, self.hidden = size, hidden
        self.project = nn.Conv2d(spatial[0], hidden, 1) if self.use_spatial else nn.Linear(feature_dim, hidden * 16)
        self.refine = nn.Sequential(nn.GELU(), nn.Upsample(size=(size, size), mode="bilinear", align_corners=False),
                                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(hidden, 3, 3, padding=1))

    def forward(self, features) -> torch.Tensor:
        if self.use_spatial:
            grid = self.project(features.spatial)
        else:
            grid = self.project(features.pooled).view(-1, self.hidden, 4, 4)
        return self.refine(grid)


class DenoisingAutoencoder(nn.Module):
    """Reconstruct the clean image from a corrupted one.

    Vincent, Larochelle, Bengio & Manzagol 2008, "Extracting and Composing Robust Features with Denoising
    Autoencoders", https://doi.org/10.1145/1390156.1390294. View:
    :class:`~transferkit.tasks.vision_views.CorruptionView` (Gaussian noise and/or masking noise on 0–1
    pixels); head: :class:`ImageDecoder`; loss: mean squared error against the clean *preprocessed*
    (normalised) image, average-pooled to ``output_size``. Metrics: ``loss``.

    Args:
        backbone: an image backbone.
        noise: ``"gaussian"``, ``"mask"`` or ``"gaussian+mask"``.
        sigma: standard deviation of the Gaussian noise, in 0–1 pixel units.
        mask_ratio: fraction of pixel positions set to 0 by masking noise.
        output_size: side of the reconstructed image (at most the input side).
        hidden: decoder width.
    """

    default_metric = "loss"  # selects the best epoch unless Trainer(metric=...) names another

    def __init__(self, backbone: nn.Module, noise: str = "gaussian+mask", sigma: float = 0.2,
                 mask_ratio: float = 0.25, output_size: int = 16, hidden: int = 64):
        super().__init__()
        self.backbone = backbone
        self.pixels = Pixels(backbone)
        self.view = CorruptionView(noise, sigma, mask_ratio)
        side = min(getattr(backbone.preprocessor, "size", (output_size, output_size)))
        self.output_size = min(int(output_size), int(side))
        dim, spatial = probe(backbone)
        self.head = ImageDecoder(dim, spatial, self.output_size, hidden)

    def examples(self, data: Any):
        """A folder (streamed), or a list/array of images; see :func:`unlabelled_images`."""
        return unlabelled_images(data)

    def collate(self, images: Sequence[Any]) -> dict[str, Any]:
        clean = _preprocessed(self.backbone, self.pixels, images)
        corrupted, _ = self.view(clean)
        target = F.adaptive_avg_pool2d(self.pixels.normalise(clean), self.output_size)
        return {"inputs": {"pixel_values": self.pixels.normalise(corrupted)}, "target": target}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        reconstruction = self.head(self.backbone(**batch["inputs"]))
        return {"loss": F.mse_loss(reconstruction.float(), batch["target"]), "reconstruction": reconstruction}

    def metrics(self) -> PretextMetrics:
        return PretextMetrics(accuracy=False)
