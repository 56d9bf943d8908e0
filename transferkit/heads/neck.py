"""A feature pyramid over a backbone's multi-scale stages, for any dense head.

Lin et al. 2017, "Feature Pyramid Networks for Object Detection" (https://arxiv.org/abs/1612.03144): a 1×1
lateral convolution per stage, a top-down path adding each deeper map (upsampled) to the one above, and a
3×3 convolution per level, so every level has ``channels`` channels and the semantics of the deepest. The
layers are torchvision's :class:`torchvision.ops.FeaturePyramidNetwork`; this module picks the stages from the
backbone's :class:`~transferkit.backbones.base.FeatureInfo` (no forward pass) and names them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError


def pick_levels(stages: Sequence[Any], levels: int, min_stride: int = 4) -> list[int]:
    """Indices of the deepest ``levels`` stages with a stride of at least ``min_stride`` (shallow to deep).

    The stride-2 stem of a CNN is left out: a full-resolution pyramid level costs the most and adds least.
    A ViT's stages all have one stride; the deepest ``levels`` blocks are taken.

    Raises:
        ConfigError: the backbone describes no stages (it cannot feed a dense head).
    """
    if not stages:
        raise ConfigError("dense heads read multi-scale stages, and this backbone describes none "
                          "(feature_info.stages is empty): use a timm: or torchvision: vision backbone.")
    usable = [i for i, s in enumerate(stages) if s.stride >= min_stride] or list(range(len(stages)))
    return usable[-levels:]


class FPN(nn.Module):
    """A feature pyramid over the chosen stages of a backbone.

    Args:
        stages: the backbone's ``feature_info.stages``.
        channels: channels of every pyramid level.
        levels: how many of the deepest stages (stride ≥ 4) to use.
        extra: ``"maxpool"`` adds a level at twice the deepest stride (Faster R-CNN's ``pool``), ``"p6p7"``
            two strided-convolution levels (RetinaNet, FCOS), ``None`` none.

    ``forward(maps)`` takes all the stage maps (``Features.stages``) and returns an ordered dict of levels,
    shallow to deep, named ``"0"``, ``"1"``...
    """

    def __init__(self, stages: Sequence[Any], channels: int = 64, levels: int = 4, extra: str | None = None):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        self.indices = pick_levels(stages, levels)
        self.strides = [int(stages[i].stride) for i in self.indices]
        in_channels = [int(stages[i].channels) for i in self.indices]
        blocks = {None: None, "maxpool": LastLevelMaxPool(), "p6p7": LastLevelP6P7(channels, channels)}
        if extra not in blocks:
            raise ConfigError(f"extra must be None, 'maxpool' or 'p6p7'; got {extra!r}.")
        self.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=blocks[extra])
        self.channels = channels

    def forward(self, maps: Sequence[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(k), maps[i]) for k, i in enumerate(self.indices)))
