"""Image preprocessing that travels with vision weights: resize, centre crop, normalise.

Accepts PIL images, image file paths, numpy arrays (``H×W`` greyscale, ``H×W×1`` or ``H×W×3``; uint8 in
0–255, uint16 in 0–65535 or float in 0–1) and tensors (``C×H×W`` with 1 or 3 channels, float in 0–1,
uint8 or uint16). Anything else gets an :class:`InputError` saying what shape or mode was found and
what is expected.

PIL images are converted to RGB as timm and torchvision do, with two differences:

- High-bit-depth images keep their range: 16-bit modes (``"I;16"``, ``"I;16B"``...) and ``"I"`` are scaled
  by 65535 (not clipped at 255), ``"F"`` must hold values in 0–1.
- Transparent images (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) are composited onto
  :data:`BACKGROUND` (white) instead of dropping the alpha channel, which would show the colours hidden
  under transparent pixels; ``ImageTransform(background=...)`` chooses another colour.

Files that cannot be decoded, are truncated, or are decompression bombs (more pixels than
``PIL.Image.MAX_IMAGE_PIXELS``) raise :class:`~transferkit.errors.ImageError` naming the file;
:func:`check_image_files` finds such files cheaply (headers only) before training starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import ImageError, InputError, TransferkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white (RGB, 0–255)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


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
        background: RGB colour (0–255) that transparent pixels are composited onto; configs saved
            before it existed load with the default, white.
    """

    def __init__(self, size: Sequence[int], resize: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear", min_size: int = 2,
                 background: Sequence[int] = BACKGROUND):
        self.size = (int(size[0]), int(size[1]))
        self.resize = int(resize)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.min_size = int(min_size)
        self.background = tuple(int(c) for c in background)
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise InputError(f"background must be an RGB colour of three values in 0–255, got {background}.")

    @classmethod
    def from_config(cls, config: dict) -> "ImageTransform":
        return cls(**{k: v for k, v in config.items() if k != "type"})

    def to_config(self) -> dict:
        return {"type": "image", "size": list(self.size), "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "min_size": self.min_size,
                "background": list(self.background)}

    def __call__(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            raise InputError("preprocess takes a list of images: wrap a single image as [image].")
        if len(images) == 0:
            raise InputError("preprocess got an empty batch: pass at least one image.")
        pixels = torch.stack([self.transform(to_tensor(img, i, self.background), i) for i, img in enumerate(images)])
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


def to_tensor(img: Any, index: int = 0, background: Sequence[int] = BACKGROUND) -> torch.Tensor:
    """Convert one raw image to a float ``3×H×W`` tensor in 0–1 (see the module docstring for the forms)."""
    if isinstance(img, (str, os.PathLike)):
        return pil_to_tensor(open_image(img), background, name=repr(os.fspath(img)))
    if type(img).__module__.startswith("PIL."):
        return pil_to_tensor(img, background, name=f"image #{index}")
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise InputError(f"image #{index} is an array of shape {arr.shape}; expected H×W (greyscale), "
                             "H×W×1 or H×W×3 (RGB). Drop an alpha channel with arr[..., :3].")
        if arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # copy: arrays may be read-only
    elif isinstance(img, torch.Tensor):
        x = img
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise InputError(f"image #{index} is a tensor of shape {tuple(img.shape)}; expected C×H×W with "
                             "1 or 3 channels (channels first), or H×W.")
        if x.dtype == getattr(torch, "uint16", None):
            x = x.to(torch.int32).float() / 65535.0
    else:
        raise InputError(f"image #{index} is a {type(img).__name__}; expected a PIL image, a file path, a numpy "
                         "array or a tensor.")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.dtype.is_floating_point:
        x = x.float()
        if not torch.isfinite(x).all():
            raise InputError(f"image #{index} is a float image with NaN or infinite values; replace them "
                             "(e.g. np.nan_to_num) and scale the pixels to 0–1.")
        if x.numel() and (x.max() > 1.0 + 1e-3 or x.min() < -1e-3):
            raise InputError(f"image #{index} is a float image with values in [{x.min():.3g}, {x.max():.3g}]; "
                             "float images must be scaled to 0–1 (divide uint8 data by 255, or pass uint8).")
    else:
        raise InputError(f"image #{index} has dtype {x.dtype}; pass uint8 (0–255), uint16 (0–65535) or float "
                         "(0–1) pixels.")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x


def pil_to_tensor(img: Any, background: Sequence[int] = BACKGROUND, name: str = "the image") -> torch.Tensor:
    """A PIL image of any mode as a float ``3×H×W`` tensor in 0–1, keeping high bit depths and
    compositing transparency onto ``background``."""
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float32)
        if mode != "F":
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ImageError(f"{name} is a 32-bit integer image with values in [{arr.min():.0f}, "
                                 f"{arr.max():.0f}], beyond 16 bits; convert it to 8 or 16 bits, or pass a float "
                                 "array scaled to 0–1.")
            arr /= 65535.0
        elif arr.size and (arr.min() < -1e-3 or arr.max() > 1 + 1e-3 or not np.isfinite(arr).all()):
            raise ImageError(f"{name} is a float image (mode 'F') with values in [{arr.min():.3g}, "
                             f"{arr.max():.3g}]; scale it to 0–1 first.")
        return torch.from_numpy(np.ascontiguousarray(arr))[None].clamp(0, 1).expand(3, -1, -1)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = torch.from_numpy(np.array(img.convert("RGBA"))).permute(2, 0, 1).float() / 255.0
        alpha = rgba[3:]
        colour = torch.tensor([float(c) for c in background]).view(3, 1, 1) / 255.0
        return rgba[:3] * alpha + colour * (1 - alpha)
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255.0


@contextlib.contextmanager
def _bombs_are_errors():
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _reason(error: Exception) -> str:
    from PIL import Image

    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (f"{error} It may be a decompression bomb; if you trust the file, raise "
                "PIL.Image.MAX_IMAGE_PIXELS")
    if type(error).__name__ == "UnidentifiedImageError":
        return "not an image file PIL can identify (junk, or an unsupported format)"
    return f"{type(error).__name__}: {error}"


def open_image(path: str | os.PathLike):
    """Open and decode an image file (any mode), with an :class:`ImageError` naming the file when it is
    missing, undecodable, truncated or a decompression bomb."""
    from PIL import Image

    try:
        with _bombs_are_errors(), Image.open(path) as im:
            im.load()
            return im
    except TransferkitError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad files
        raise ImageError(f"cannot read image {os.fspath(path)!r}: {_reason(e)}. Fix or remove the file.") from e


def check_image_files(paths: Sequence[str | os.PathLike], origins: Sequence[str] | None = None) -> None:
    """Check that every file opens as an image, reading headers only (no pixels are decoded).

    Finds missing files, junk, unknown formats and decompression bombs before training starts; a file
    whose pixel data is truncated is only found when it is decoded (:func:`open_image`).

    Raises:
        ImageError: naming every bad file (the first 10, and a count), with its ``origins`` when given.
    """
    from PIL import Image

    from transferkit.data import first

    bad = []
    for i, path in enumerate(paths):
        try:
            with _bombs_are_errors(), Image.open(path) as im:
                im.size  # noqa: B018 (the header is parsed by open)
        except Exception as e:
            where = f"{origins[i]}: " if origins is not None and origins[i] != os.fspath(path) else ""
            bad.append(f"{where}{os.fspath(path)!r} ({_reason(e)})")
    if bad:
        raise ImageError(f"{len(bad)} image file(s) cannot be read: {first(bad)}. Fix or remove them.")


def transform_for(input_size: Sequence[int], crop_pct: float, mean, std, interpolation: str,
                  image_size: int | None = None) -> ImageTransform:
    """Build the transform from timm-style settings, optionally at another ``image_size``."""
    size = (image_size, image_size) if image_size else (int(input_size[-2]), int(input_size[-1]))
    resize = int(math.floor(size[0] / crop_pct))
    return ImageTransform(size, resize, mean, std, interpolation)
