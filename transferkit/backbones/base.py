"""The one backbone contract shared by word-vector, language-model and vision networks.

A :class:`Backbone` is two parts composed (no subclass per source):

* an ``encoder`` — an ``nn.Module`` whose ``forward(**inputs)`` returns :class:`Features`;
* a ``preprocessor`` — a callable turning raw inputs (strings, images) into the encoder's tensors,
  built from the tokenizer, vocabulary or image transform that belongs to these weights.

Its ``config`` is a JSON-serialisable dict recording the source, architecture and preprocessing, so that
``save_pretrained`` / ``from_pretrained`` can rebuild it offline.

Its :meth:`~Backbone.layer_groups` split it into ordered parts (embeddings or stem first, the last block
last); :meth:`~Backbone.set_trainable` freezes all but the top ones, which is what linear probing,
gradual unfreezing and LP-FT are made of (see :mod:`transferkit.trainer.strategies`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from transferkit.registry import Registry

from .layers import LayerGroup, split_blocks


@dataclass(frozen=True)
class SavedFormat:
    """How backbones (and models) are written to and read from a directory.

    :mod:`transferkit.saving`, which sits above the backbones, registers the ``"transferkit"`` format in
    :data:`SAVED_FORMATS`; ``Backbone.save_pretrained`` and ``load_backbone(DIR)`` look it up there, so the
    backbones never import the module that saves them (imports point down).
    """

    save: Callable[..., Any]  # save(directory, backbone, head, metrics, *, overwrite) -> Path
    load: Callable[..., "Backbone"]  # load(directory, **options) -> Backbone


SAVED_FORMATS: Registry[SavedFormat] = Registry("saved-model format")


@dataclass
class Features:
    """What a backbone's forward pass returns.

    Attributes:
        pooled: ``[B, feature_dim]`` one vector per input; what heads consume.
        tokens: ``[B, T, D]`` per-token features (text networks, vision transformers), else ``None``.
        mask: ``[B, T]`` 1 where ``tokens`` holds a real token, 0 for padding; ``None`` without tokens.
        spatial: ``[B, C, H, W]`` feature map of convolutional networks, else ``None``.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    spatial: torch.Tensor | None = None


class Backbone(nn.Module):
    """A pretrained (or random) network plus the preprocessing that belongs to its weights.

    Build one with :func:`transferkit.load_backbone`; users rarely call this constructor.

    Args:
        encoder: module mapping preprocessed inputs to :class:`Features`.
        preprocessor: callable mapping a list of raw inputs to a dict of tensors; it must have a
            ``to_config()`` method returning JSON-serialisable settings.
        config: JSON-serialisable description with at least ``source``, ``name``, ``modality``
            (``"text"`` or ``"image"``) and ``feature_dim``.
    """

    def __init__(self, encoder: nn.Module, preprocessor: Callable[[Sequence[Any]], dict], config: dict):
        super().__init__()
        self.encoder = encoder
        self.preprocessor = preprocessor
        self.config = config
        # How many of the top layer groups learn: None = all, 0 = none (frozen).
        self.trainable_top: int | None = None

    @property
    def modality(self) -> str:
        """``"text"`` or ``"image"``."""
        return self.config["modality"]

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature vector."""
        return int(self.config["feature_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, raw_batch: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Turn a list of raw inputs (strings, or PIL images / arrays / tensors / image paths) into tensors."""
        return self.preprocessor(raw_batch)

    def forward(self, **inputs: torch.Tensor) -> Features:
        return self.encoder(**inputs)

    def encode(self, raw_batch: Sequence[Any]) -> torch.Tensor:
        """Pooled features for raw inputs, without gradients: ``[B, feature_dim]``."""
        inputs = {k: v.to(self.device) for k, v in self.preprocess(raw_batch).items()}
        was_training = self.training
        self.eval()
        with torch.no_grad():
            pooled = self(**inputs).pooled
        self.train(was_training)
        return pooled

    @property
    def frozen(self) -> bool:
        """True when no parameter of the backbone learns (``freeze()`` or ``set_trainable(0)``)."""
        return self.trainable_top == 0

    def layer_groups(self) -> list[LayerGroup]:
        """The backbone's parts, ordered input → output: embeddings or stem first, the last block last.

        Every parameter is in exactly one group. The encoder's own ``layer_groups()`` is used when it
        has one (word vectors: a single group); otherwise the blocks are found from the network's
        structure (:func:`transferkit.backbones.layers.split_blocks`).
        """
        own = getattr(self.encoder, "layer_groups", None)
        if callable(own):
            return own()
        return split_blocks(self.encoder, first="embeddings" if self.modality == "text" else "stem")

    def set_trainable(self, top: int | None) -> "Backbone":
        """Train only the top ``top`` layer groups; ``None`` trains everything, ``0`` nothing.

        Frozen groups get ``requires_grad=False`` and stay in eval mode even inside ``train()``: their
        BatchNorm statistics do not move and their dropout is off, so they are a fixed function.
        """
        if top is not None and operator.index(top) < 0:
            raise ValueError(f"top must be None or an int >= 0, got {top!r}")
        groups = self.layer_groups()
        self.trainable_top = None if top is None or top >= len(groups) else top
        trainable = {id(p) for g in self._trainable_groups(groups)[1] for p in g.params}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        return self.train(self.training)

    def freeze(self) -> "Backbone":
        """Stop all learning: no gradients, and BatchNorm statistics / dropout stay in eval mode."""
        return self.set_trainable(0)

    def unfreeze(self) -> "Backbone":
        """Make every parameter trainable again."""
        return self.set_trainable(None)

    def train(self, mode: bool = True) -> "Backbone":
        # A frozen part is a fixed function: BatchNorm must not update running statistics
        # (the transformers #24479 complaint) and dropout must not perturb features.
        super().train(mode)
        if mode and self.trainable_top == 0:
            self.encoder.eval()
        elif mode and self.trainable_top is not None:
            for group in self._trainable_groups(self.layer_groups())[0]:
                for module in group.modules:
                    module.eval()
        return self

    def _trainable_groups(self, groups: list[LayerGroup]) -> tuple[list[LayerGroup], list[LayerGroup]]:
        """(frozen groups, trainable groups) under ``trainable_top``."""
        cut = 0 if self.trainable_top is None else len(groups) - self.trainable_top
        return groups[:cut], groups[cut:]

    def save_pretrained(self, directory, metrics: dict | None = None, *, overwrite: bool = False):
        """Save weights, config and preprocessing files; ``load_backbone(directory)`` reads them back.

        The same rules as :meth:`transferkit.TransferModel.save_pretrained` protect what is at ``directory``.
        """
        return SAVED_FORMATS.get("transferkit").save(directory, self, None, metrics, overwrite=overwrite)

    def extra_repr(self) -> str:
        return f"source={self.config['source']!r}, name={self.config['name']!r}, feature_dim={self.feature_dim}"
