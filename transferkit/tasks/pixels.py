"""Pixel helpers of the vision pretext tasks: normalised ``pixel_values`` ↔ 0–1 pixels, and the backbone's
feature sizes (the views of :mod:`transferkit.tasks.vision_views` work on 0–1 pixels)."""

from __future__ import annotations

import torch

from transferkit.errors import InputError


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


def probe(backbone) -> tuple[int, tuple[int, int, int] | None]:
    """The backbone's pooled size and nominal spatial map shape ``(C, H, W)`` (``None`` without one), from its
    :attr:`~transferkit.Backbone.feature_info` — no forward pass. ``H`` and ``W`` are the input size over the
    deepest stage's stride, rounded up (the map is what the pretext heads pool to their own grid, so the
    nominal size only chooses between the spatial and the pooled path); a map whose stride is not described
    gives ``(C, 0, 0)``, which sends the heads down the pooled path."""
    info = backbone.feature_info
    if info.spatial is None:
        return int(info.pooled), None
    height, width = (int(v) for v in tuple(getattr(backbone.preprocessor, "size", (0, 0)))[:2])
    stride = info.stages[-1].stride if info.stages else 0
    if not stride:
        return int(info.pooled), (int(info.spatial), 0, 0)
    return int(info.pooled), (int(info.spatial), -(-height // stride), -(-width // stride))
