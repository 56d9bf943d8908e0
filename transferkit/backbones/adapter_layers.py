"""The adapters written here rather than taken from ``peft`` (see :mod:`transferkit.backbones.adapters` for why):
Houlsby bottleneck adapters, prompt tuning and prefix tuning. Each adds its per-name parameters to the backbone; the
registry, saving and switching live in ``adapters``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferkit.errors import AdapterError

from .adapter_targets import family, width


def add_bottleneck(backbone, name: str, size: int, targets: list[str]) -> None:
    """Houlsby adapters of width ``size`` after each of the ``targets`` modules (full names in the encoder)."""
    if size < 1:
        raise AdapterError(f"bottleneck size must be >= 1, got {size!r}.")
    for target in targets:
        module = backbone.encoder.get_submodule(target)
        if not isinstance(module, Bottlenecked):
            parent, _, child = target.rpartition(".")
            wrapped = Bottlenecked(module, width(backbone, target, module), spatial=_is_spatial(backbone, module))
            setattr(backbone.encoder.get_submodule(parent) if parent else backbone.encoder, child, wrapped)
            module = wrapped
        module.add(name, size)


def _is_spatial(backbone, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) or (backbone.modality == "image" and not isinstance(
        module, (nn.Linear, nn.Embedding)) and not hasattr(module, "nf"))


class Bottlenecked(nn.Module):
    """A module followed by Houlsby bottleneck adapters, one per name: ``y + up(gelu(down(y)))``, ``up`` zero at
    the start (so a fresh adapter changes nothing). On ``[B, C, H, W]`` maps ``down``/``up`` are 1×1 convolutions.

    Attributes:
        base_layer: the wrapped module (its parameters keep their names under ``base_layer``).
        bottleneck: the adapters by name; ``active`` runs (``None``: none).
    """

    def __init__(self, base_layer: nn.Module, width: int, spatial: bool):
        super().__init__()
        self.base_layer = base_layer
        self.width = width
        self.spatial = spatial
        self.bottleneck = nn.ModuleDict()
        self.active: str | None = None

    def add(self, name: str, size: int) -> None:
        layer = nn.Conv2d if self.spatial else nn.Linear
        down, up = (layer(self.width, size, 1), layer(size, self.width, 1)) if self.spatial else (
            layer(self.width, size), layer(size, self.width))
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bottleneck[name] = nn.Sequential(down, nn.GELU(), up)

    def __getattr__(self, name: str) -> Any:  # the wrapped module's attributes (an Embedding's embedding_dim...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_layer"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        if self.active is None:
            return out
        first = out[0] if isinstance(out, tuple) else out
        first = first + self.bottleneck[self.active](first)
        return (first, *out[1:]) if isinstance(out, tuple) else first


def add_prompt(backbone, name: str, num_virtual_tokens: int) -> None:
    """Prompt tuning: ``num_virtual_tokens`` learnt input embeddings (``encoder.prompts[name]``)."""
    if family(backbone) != "text":
        raise AdapterError(f"prompt tuning prepends learnt token embeddings to a transformer language model's input; "
                           f"{backbone.config['source']}:{backbone.config['name']} is not one: choose 'lora'.")
    if num_virtual_tokens < 1:
        raise AdapterError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens!r}.")
    encoder = backbone.encoder
    if getattr(encoder, "prompts", None) is None:
        encoder.prompts = nn.ParameterDict()
    table = encoder.model.get_input_embeddings().weight
    # Initialised from the embeddings of random vocabulary tokens (Lester et al. 2021: better than random values).
    rows = torch.randint(0, table.shape[0], (num_virtual_tokens,))
    encoder.prompts[name] = nn.Parameter(table.detach()[rows].clone())


def add_prefix(backbone, name: str, num_virtual_tokens: int) -> None:
    """Prefix tuning: learnt keys and values ``[layers, 2, kv heads, V, head_dim]`` (``encoder.prefixes[name]``)."""
    if family(backbone) != "text" or backbone.encoder.is_encoder_decoder:
        raise AdapterError(f"prefix tuning gives every attention layer of a transformer language model learnt keys "
                           f"and values through its cache; {backbone.config['source']}:{backbone.config['name']} "
                           "is not a decoder or encoder-only transformer (T5 and BART encoders keep no cache): "
                           "choose 'prompt_tuning' or 'lora'.")
    if num_virtual_tokens < 1:
        raise AdapterError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens!r}.")
    config = backbone.encoder.model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    heads = getattr(config, "num_key_value_heads", None) or heads  # grouped-query attention (Llama): fewer kv heads
    encoder = backbone.encoder
    if getattr(encoder, "prefixes", None) is None:
        encoder.prefixes = nn.ParameterDict()
    encoder.prefixes[name] = nn.Parameter(
        torch.randn(config.num_hidden_layers, 2, heads, num_virtual_tokens, head_dim) * 0.02)
