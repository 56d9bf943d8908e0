"""Views that make pretext labels from unlabelled images: rotations, masked patches, greyscale, noise.

Each view is a callable on a batch of 0–1 pixels ``[B, 3, H, W]`` (the backbone's preprocessed images,
un-normalised) returning the transformed images and the labels of the transformation actually applied.
:class:`RandomResizedCrop` is the one label-free augmentation, used before the rotation label is read.
They draw randomness from torch's global generator (seeded by the Trainer) unless given a ``generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as in PIL's "L" conversion.
LUMA = (0.299, 0.587, 0.114)


def quantise(values: torch.Tensor, bins: int) -> torch.Tensor:
    """0–1 values → bin ids ``0..bins-1`` (equal-width bins; 1.0 falls in the last bin)."""
    return (values.clamp(0, 1) * bins).long().clamp(max=bins - 1)


def colour_class(colour: torch.Tensor, bins: int, channels: str) -> torch.Tensor:
    """Mean colours ``[..., 3]`` in 0–1 → class ids: ``r·bins² + g·bins + b`` (rgb) or the grey level's bin."""
    if channels == "grey":
        return quantise(colour.mean(-1), bins)
    q = quantise(colour, bins)
    return q[..., 0] * bins * bins + q[..., 1] * bins + q[..., 2]


def num_colour_classes(bins: int, channels: str) -> int:
    return bins if channels == "grey" else bins ** 3


class RotationView:
    """Rotate images by 0°, 90°, 180° or 270°; the label is the number of quarter turns (counter-clockwise).

    Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by Predicting Image
    Rotations", https://arxiv.org/abs/1803.07728. As in the paper, ``all_rotations=True`` puts all four
    rotations of every image in the batch (so a batch of B images becomes 4B examples); ``False`` gives
    each image one uniformly random rotation (4× cheaper per image).
    """

    def __init__(self, all_rotations: bool = True):
        self.all_rotations = all_rotations

    def __call__(self, x, generator: torch.Generator | None = None):
        """Turn each ``C×H×W`` image of ``x`` (a sequence; sizes may differ); returns (images, labels)."""
        if self.all_rotations:
            labels = torch.arange(4).repeat_interleave(len(x))
        else:
            labels = torch.randint(0, 4, (len(x),), generator=generator)
        images = [torch.rot90(x[i % len(x)], int(k), dims=(-2, -1)) for i, k in enumerate(labels)]
        return images, labels


class RandomResizedCrop:
    """Crop a random box of each image and resize it back to the full size (an augmentation; no labels).

    The box covers a uniform fraction ``scale`` of the image area with a log-uniform aspect ratio in
    ``ratio`` (torchvision's ``RandomResizedCrop`` distribution), placed uniformly; bilinear resampling.
    Each image draws its own box, independently of any pretext label, so resampling leaves no trace that
    correlates with the label. :class:`~transferkit.tasks.vision.RotationPrediction` uses it to stop the
    network reading the rotation off where the content sits and how its bounding box is shaped (on
    scikit-learn digits every digit is taller than wide and touches the top and bottom rows) rather than
    off its shape.
    """

    def __init__(self, scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        self.scale = scale
        self.ratio = ratio

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, C, H, W]`` → the same shape, each image cropped and resized."""
        b = x.shape[0]
        uniform = torch.rand(4, b, generator=generator)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * uniform[0]
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * uniform[1])
        w = (area * aspect).sqrt().clamp(max=1.0)  # box sides as fractions of the image sides
        h = (area / aspect).sqrt().clamp(max=1.0)
        theta = torch.zeros(b, 2, 3, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 1, 1] = w, h
        theta[:, 0, 2] = (2 * uniform[2] - 1) * (1 - w)  # box centre in [-1, 1] grid units
        theta[:, 1, 2] = (2 * uniform[3] - 1) * (1 - h)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MaskedPatchView:
    """Mask one random square patch per image; the label is the patch's quantised mean colour.

    The patch (side ``patch_fraction`` of the image side) is filled with ``fill`` (the normalisation
    mean, so it reads as 0 to the network). Colours are quantised with ``bins`` equal-width bins per
    channel (``bins³`` classes, ``channels="rgb"``) or the patch's mean grey level into ``bins`` classes
    (``channels="grey"``, for greyscale data such as digits). The context-prediction idea of Pathak et
    al. 2016 (https://arxiv.org/abs/1604.07379), with a classification target as in Zhang et al. 2016.
    """

    def __init__(self, patch_fraction: float = 0.25, bins: int = 4, channels: str = "rgb",
                 fill: tuple[float, float, float] = (0.5, 0.5, 0.5)):
        if channels not in ("rgb", "grey"):
            raise ValueError(f"channels must be 'rgb' or 'grey', got {channels!r}")
        if not 0 < patch_fraction < 1:
            raise ValueError(f"patch_fraction must be in (0, 1), got {patch_fraction}")
        self.patch_fraction = patch_fraction
        self.bins = bins
        self.channels = channels
        self.fill = torch.tensor(fill, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns masked images, labels ``[B]`` and boxes ``[B, 4]`` (top, left, height, width)."""
        b, _, h, w = x.shape
        ph, pw = max(1, round(h * self.patch_fraction)), max(1, round(w * self.patch_fraction))
        tops = torch.randint(0, h - ph + 1, (b,), generator=generator)
        lefts = torch.randint(0, w - pw + 1, (b,), generator=generator)
        masked, colours = x.clone(), []
        for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist())):
            colours.append(x[i, :, t: t + ph, l: l + pw].mean((1, 2)))
            masked[i, :, t: t + ph, l: l + pw] = self.fill
        labels = colour_class(torch.stack(colours), self.bins, self.channels)
        boxes = torch.stack([tops, lefts, torch.full_like(tops, ph), torch.full_like(tops, pw)], 1)
        return masked, labels, boxes


class ColorizationView:
    """Greyscale input; the labels are each grid cell's quantised colour.

    Zhang, Isola & Efros 2016, "Colorful Image Colorization", https://arxiv.org/abs/1603.08511: predict
    colour as classification over quantised colours from the lightness channel. Simplified here: colours
    are quantised RGB (``bins`` per channel, ``bins³`` classes) of each cell of a ``grid×grid`` average-pooled
    image rather than the paper's 313 Lab ``ab`` bins with class rebalancing.
    """

    def __init__(self, bins: int = 4, grid: int = 4):
        self.bins = bins
        self.grid = grid

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns greyscale images (3 equal channels) and labels ``[B, grid, grid]``."""
        luma = (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        cells = F.adaptive_avg_pool2d(x, self.grid).permute(0, 2, 3, 1)  # [B, g, g, 3]
        return luma.expand_as(x).contiguous(), colour_class(cells, self.bins, "rgb")


class CorruptionView:
    """Corrupt images for denoising (Vincent et al. 2008, "Extracting and Composing Robust Features with
    Denoising Autoencoders", https://doi.org/10.1145/1390156.1390294).

    ``noise`` is ``"gaussian"`` (add N(0, ``sigma``²) to the 0–1 pixels, then clip), ``"mask"`` (Vincent's
    masking noise: set a random ``mask_ratio`` of pixel positions to 0) or ``"gaussian+mask"`` (both).
    """

    KINDS = ("gaussian", "mask", "gaussian+mask")

    def __init__(self, noise: str = "gaussian+mask", sigma: float = 0.2, mask_ratio: float = 0.25):
        if noise not in self.KINDS:
            raise ValueError(f"noise must be one of {self.KINDS}, got {noise!r}")
        self.noise = noise
        self.sigma = sigma
        self.mask_ratio = mask_ratio

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns corrupted images and the mask of dropped positions ``[B, 1, H, W]`` (all False without masking)."""
        out = x
        if "gaussian" in self.noise:
            out = (out + self.sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        dropped = torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=torch.bool)
        if "mask" in self.noise:
            dropped = torch.rand(dropped.shape, generator=generator) < self.mask_ratio
            out = out.masked_fill(dropped, 0.0)
        return out, dropped
