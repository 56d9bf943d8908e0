"""Pooling: one vector per input from a backbone's per-token features or spatial map.

Pooling is its own small part, as in sentence-transformers' ``models/Pooling.py`` (which reads
``features['token_embeddings']`` and writes ``features['sentence_embedding']``): encoders return tokens
+ mask (or spatial maps), and the :class:`~transferkit.backbones.Backbone` applies its pooling — chosen with
the source's ``pooling=`` option and recorded in its config — to fill ``Features.pooled``. A head or a
user can pool the same features another way without rebuilding the backbone::

    features = backbone(**backbone.preprocess(texts))
    cls = backbone.pool(features, "cls")          # or pooling_for("cls")(features)

Over tokens + mask (padding never counts):

* ``"mean"``: the average of real tokens (sentence-transformers' default; Arora et al. 2017 show it is a
  strong baseline for word vectors);
* ``"max"``: element-wise maximum (Shen et al. 2018, "Baseline Needs More Love", arXiv 1805.09843); an
  input without a real token gets a zero vector;
* ``"mean+max"``: both concatenated, ``2 * dim`` wide;
* ``"cls"``: the first token (BERT's [CLS]);
* ``"last"``: the last real token, whichever side the tokenizer pads (causal models such as GPT-2).

Over a spatial map ``[B, C, H, W]``: ``"avg"``, global average pooling (Lin et al. 2013, "Network In
Network", arXiv 1312.4400).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError

TOKEN_POOLINGS = ("mean", "max", "mean+max", "cls", "last")
SPATIAL_POOLINGS = ("avg",)
POOLINGS = TOKEN_POOLINGS + SPATIAL_POOLINGS


def check_pooling(pooling: str, valid: Sequence[str] = POOLINGS) -> None:
    """Raise :class:`ConfigError` listing the valid poolings unless ``pooling`` is one of them."""
    if pooling not in valid:
        raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(map(repr, valid))} "
                          "(option pooling=...).")


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens: ``[B, T, D]``, ``[B, T]`` → ``[B, D]``."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


def max_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of the real tokens; zeros for an input with none (rather than -inf)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    mx = tokens.masked_fill(weights == 0, float("-inf")).amax(1)
    return torch.where(weights.sum(1) > 0, mx, torch.zeros_like(mx))


def mean_max_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean`` and ``max`` concatenated: ``[B, 2 * D]``."""
    return torch.cat([mean_pool(tokens, mask), max_pool(tokens, mask)], dim=-1)


def cls_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token (BERT's [CLS])."""
    return tokens[:, 0]


def last_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token, whichever side the tokenizer pads."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    last = (mask * positions).argmax(1)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def avg_pool(spatial: torch.Tensor) -> torch.Tensor:
    """Global average of a ``[B, C, H, W]`` map: ``[B, C]``."""
    return spatial.mean((2, 3))


_TOKEN_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool, "max": max_pool, "mean+max": mean_max_pool, "cls": cls_pool, "last": last_pool}


class Pooling(nn.Module):
    """One pooling, by name: reads :class:`~transferkit.Features` and returns ``[B, out_features(dim)]``.

    It has no parameters, so adding it to a backbone changes neither its ``state_dict`` nor its outputs.

    Args:
        name: one of :data:`POOLINGS` (see the module docstring).

    Raises:
        ConfigError: an unknown name.
    """

    def __init__(self, name: str):
        super().__init__()
        check_pooling(name)
        self.name = name

    @property
    def reads(self) -> str:
        """The part of ``Features`` it reads: ``"tokens"`` (with ``mask``) or ``"spatial"``."""
        return "spatial" if self.name in SPATIAL_POOLINGS else "tokens"

    def out_features(self, dim: int) -> int:
        """Size of the pooled vector for ``dim``-wide tokens (or ``dim`` channels)."""
        return 2 * dim if self.name == "mean+max" else dim

    def forward(self, features: Any) -> torch.Tensor:
        """Pool a :class:`~transferkit.Features` (its ``tokens`` + ``mask``, or its ``spatial`` map)."""
        if self.reads == "spatial":
            if features.spatial is None:
                raise ConfigError(f"pooling {self.name!r} averages a spatial map, and these features have none; "
                                  f"pool tokens with one of {', '.join(map(repr, TOKEN_POOLINGS))}.")
            return avg_pool(features.spatial)
        if features.tokens is None:
            raise ConfigError(f"pooling {self.name!r} reads per-token features, and these have none (a "
                              "convolutional network gives a spatial map): use pooling 'avg'.")
        mask = features.mask
        if mask is None:
            mask = torch.ones(features.tokens.shape[:2], dtype=torch.long, device=features.tokens.device)
        return _TOKEN_FUNCTIONS[self.name](features.tokens, mask)

    def extra_repr(self) -> str:
        return repr(self.name)


def pooling_for(name: str | Pooling) -> Pooling:
    """The :class:`Pooling` called ``name`` (a :class:`Pooling` is returned as is).

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    return name if isinstance(name, Pooling) else Pooling(name)
