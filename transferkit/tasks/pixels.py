"""Pixel helpers of the vision pretext tasks: normalised ``pixel_values`` ↔ 0–1 pixels, and the backbone's
feature sizes (the views of :mod:`transferkit.tasks.vision_views` work on 0–1 pixels)."""

from __future__ import annotations

import torch

from transferkit.errors import InputError
from transferkit.backbones.base import inference


class Pixels:
    """Move between a backbone's normalised ``pixel_values`` and 0–1 pixels (views work on the latter)."""

    def __init__(self, backbone):
        if getattr(backbone, "modality", None) != "image":
            raise InputError(f"vision pretext tasks need an image backbone; got modality "
                             f"{getattr(backbone, 'modality', None)!r} ({backbone!r}).")
        transform = backbone.preprocessor
        self.mean = torch.tensor(getattr(transform, "mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(transform, "std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, 3, 1, 1)

    def unit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return (pixel_values * self.std + self.mean).clamp(0, 1)

    def normalise(self, unit: torch.Tensor) -> torch.Tensor:
        return (unit - self.mean) / self.std


def probe(backbone) -> tuple[int, torch.Size | None]:
    """The backbone's pooled size and spatial map shape ``(C, H, W)`` (``None`` without one), from one dummy image."""
    size = tuple(getattr(backbone.preprocessor, "size", (32, 32)))
    with inference(backbone) as device:
        features = backbone(pixel_values=torch.zeros(1, 3, *size, device=device))
    spatial = None if features.spatial is None else features.spatial.shape[1:]
    return int(features.pooled.shape[-1]), spatial
