"""Image preprocessing that travels with vision weights: resize, centre crop, normalise.

Accepts PIL images (any mode; converted to RGB as timm and torchvision do), image file paths, numpy
arrays (``H×W`` greyscale, ``H×W×1`` or ``H×W×3``; uint8 in 0–255 or float in 0–1) and tensors
(``C×H×W`` with 1 or 3 channels, float in 0–1 or uint8). Anything else gets an :class:`InputError`
saying what shape or mode was found and what is expected.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """Resize the shorter side to ``resize``, centre-crop ``size``, scale to 0–1 and normalise.

    Args:
        size: ``(height, width)`` given to the network.
        resize: shorter-side length before the crop (``size / crop_pct`` in timm's terms).
        mean: per-channel mean subtracted after scaling to 0–1.
        std: per-channel standard deviation divided by.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (antialiased when downscaling).
        min_size: smallest accepted input side, in pixels; smaller images are refused rather than
            silently blown up from almost nothing.
    """

    def __init__(self, size: Sequence[int], resize: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear", min_size: int = 2):
        self.size = (int(size[0]), int(size[1]))
        self.resize = int(resize)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.min_size = int(min_size)

    @classmethod
    def from_config(cls, config: dict) -> "ImageTransform":
        return cls(**{k: v for k, v in config.items() if k != "type"})

    def to_config(self) -> dict:
        return {"type": "image", "size": list(self.size), "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "min_size": self.min_size}

    def __call__(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            raise InputError("preprocess takes a list of images: wrap a single image as [image].")
        if len(images) == 0:
            raise InputError("preprocess got an empty batch: pass at least one image.")
        pixels = torch.stack([self.transform(to_tensor(img, i), i) for i, img in enumerate(images)])
        return {"pixel_values": pixels}

    def transform(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        """One ``3×H×W`` float image in 0–1 → normalised ``3×size`` tensor."""
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            raise InputError(f"image #{index} is {h}×{w} pixels; at least {self.min_size}×{self.min_size} is "
                             "needed. Check that it is not an empty or corrupt image.")
        scale = self.resize / min(h, w)
        new = (max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale)))
        if new != (h, w):
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
            x = F.interpolate(x[None], size=new, mode=mode, antialias=True, align_corners=False)[0]
        top, left = (new[0] - self.size[0]) // 2, (new[1] - self.size[1]) // 2
        x = x[:, top: top + self.size[0], left: left + self.size[1]].clamp(0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


def to_tensor(img: Any, index: int = 0) -> torch.Tensor:
    """Convert one raw image to a float ``3×H×W`` tensor in 0–1."""
    if isinstance(img, (str, os.PathLike)):
        img = open_image(img)
    if type(img).__module__.startswith("PIL."):
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise InputError(f"image #{index} is an array of shape {arr.shape}; expected H×W (greyscale), "
                             "H×W×1 or H×W×3 (RGB). Drop an alpha channel with arr[..., :3].")
        x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # copy: arrays may be read-only
    elif isinstance(img, torch.Tensor):
        x = img
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise InputError(f"image #{index} is a tensor of shape {tuple(img.shape)}; expected C×H×W with "
                             "1 or 3 channels (channels first), or H×W.")
    else:
        raise InputError(f"image #{index} is a {type(img).__name__}; expected a PIL image, a file path, a numpy "
                         "array or a tensor.")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.dtype.is_floating_point:
        x = x.float()
        if x.numel() and (x.max() > 1.0 + 1e-3 or x.min() < -1e-3):
            raise InputError(f"image #{index} is a float image with values in [{x.min():.3g}, {x.max():.3g}]; "
                             "float images must be scaled to 0–1 (divide uint8 data by 255, or pass uint8).")
    else:
        raise InputError(f"image #{index} has dtype {x.dtype}; pass uint8 (0–255) or float (0–1) pixels.")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x


def open_image(path: str | os.PathLike):
    """Open an image file as RGB, with an :class:`InputError` naming the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {os.fspath(path)!r}: {e}") from e


def transform_for(input_size: Sequence[int], crop_pct: float, mean, std, interpolation: str,
                  image_size: int | None = None) -> ImageTransform:
    """Build the transform from timm-style settings, optionally at another ``image_size``."""
    size = (image_size, image_size) if image_size else (int(input_size[-2]), int(input_size[-1]))
    resize = int(math.floor(size[0] / crop_pct))
    return ImageTransform(size, resize, mean, std, interpolation)
