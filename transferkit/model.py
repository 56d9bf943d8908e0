"""``TransferModel``: a backbone and a head composed, with ``predict`` and safe saving/loading.

A saved directory holds::

    config.json         {"format": "transferkit", "backbone": {...}, "head": {...} | null, ...}
    model.safetensors   all weights ("backbone.*", "head.*"); no pickle
    README.md           a short model card
    backbone/           preprocessing files (tokenizer, vocabulary) where the source needs them

It is written to a temporary directory and renamed into place, so an interrupted save never destroys
the previous copy.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.backbones.registry import source
from transferkit.errors import CheckpointError
from transferkit.heads import head_from_config

FORMAT = "transferkit"
FORMAT_VERSION = 1


class TransferModel(nn.Module):
    """A backbone and a head; ``forward(**inputs)`` returns ``{"logits", "features"}``.

    Args:
        backbone: from :func:`transferkit.load_backbone`.
        head: e.g. ``transferkit.heads.Classification(num_classes=4)``; sized from ``backbone.feature_dim``.
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        head.build(backbone.feature_dim)
        self.backbone = backbone
        self.head = head

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(**inputs).pooled
        return {"logits": self.head(features), "features": features}

    def preprocess(self, raw_inputs: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.backbone.preprocess(raw_inputs)

    @torch.no_grad()
    def predict_proba(self, raw_inputs: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities ``[N, num_classes]`` for raw inputs (strings or images)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        try:
            for start in range(0, len(raw_inputs), batch_size):
                inputs = self.preprocess(raw_inputs[start: start + batch_size])
                logits = self(**{k: v.to(device) for k, v in inputs.items()})["logits"]
                out.append(logits.float().softmax(-1).cpu())
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, self.head.num_classes)
        return torch.cat(out)

    def predict(self, raw_inputs: Sequence[Any], batch_size: int = 32) -> list:
        """Predicted class for each raw input: its label name when the head has labels, else its index."""
        ids = self.predict_proba(raw_inputs, batch_size).argmax(-1).tolist()
        labels = getattr(self.head, "labels", None)
        return [labels[i] for i in ids] if labels else ids

    def save_pretrained(self, directory: str | os.PathLike, metrics: dict | None = None) -> Path:
        """Write weights (safetensors), config and model card to ``directory``; returns its path."""
        return save_pretrained(directory, self.backbone, self.head, metrics)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "TransferModel":
        """Load a directory written by :meth:`save_pretrained`; needs no network or original files."""
        directory = Path(directory)
        config = read_config(directory)
        if config.get("head") is None:
            raise CheckpointError(f"{directory} holds a backbone without a head: load it with "
                                  "transferkit.load_backbone(dir) and compose a TransferModel.")
        model = cls(_rebuild_backbone(config, directory), head_from_config(config["head"]))
        _load_weights(model, directory, allow_unexpected=())
        return model.to(device)


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a directory written by save_pretrained.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{directory} was not written by transferkit (config.json has no "
                              f"'format': 'transferkit'). For a transformers checkpoint use 'hf:{directory}'.")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} uses format version {config['format_version']}; upgrade transferkit.")
    return config


def _rebuild_backbone(config: dict, directory: Path) -> Backbone:
    backbone_config = config["backbone"]
    backbone = source(backbone_config["source"]).rebuild(backbone_config, directory)
    backbone.config = backbone_config
    return backbone


def _load_weights(model: nn.Module, directory: Path, allow_unexpected: tuple[str, ...]) -> None:
    from safetensors.torch import load_model

    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no model.safetensors.")
    try:
        missing, unexpected = load_model(model, path, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the architecture in config.json: {e}") from e
    unexpected = [k for k in unexpected if not k.startswith(allow_unexpected)]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the architecture in config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}.")


def load_saved_backbone(directory: str | os.PathLike, **options: Any) -> Backbone:
    """The backbone of a ``save_pretrained`` directory (what ``load_backbone(DIR)`` returns)."""
    if options:
        raise TypeError(f"a saved backbone is rebuilt exactly as saved; options {sorted(options)} are not accepted")
    directory = Path(directory)
    config = read_config(directory)
    holder = nn.Module()
    holder.backbone = _rebuild_backbone(config, directory)
    _load_weights(holder, directory, allow_unexpected=("head.",))
    return holder.backbone


def save_pretrained(directory: str | os.PathLike, backbone: Backbone, head: nn.Module | None = None,
                    metrics: dict | None = None) -> Path:
    """Save a backbone (and optionally its head) atomically; see the module docstring for the layout."""
    from safetensors.torch import save_model

    from transferkit import __version__

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        holder = nn.Module()
        holder.backbone = backbone
        if head is not None:
            holder.head = head
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "transferkit_version": __version__,
                  "backbone": backbone.config, "head": head.config if head is not None else None,
                  "metrics": metrics or {}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_model(holder, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_assets = source(backbone.config["source"]).save_assets
        if save_assets is not None:
            save_assets(backbone, tmp)
        (tmp / "README.md").write_text(model_card(config), encoding="utf-8")
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is kept until the new one is in place."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_card(config: dict) -> str:
    b, h = config["backbone"], config["head"]
    lines = [f"# transferkit model: {b['source']}:{b['name']}", "",
             f"- modality: {b['modality']}", f"- backbone: `{b['source']}:{b['name']}`, feature size {b['feature_dim']}"]
    if h is not None:
        lines.append(f"- head: {h['type']}, {h.get('num_classes')} classes" +
                     (f" ({', '.join(map(str, h['labels']))})" if h.get("labels") else ""))
    for k, v in config.get("metrics", {}).items():
        lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
    lines += ["", "Preprocessing is saved with the weights.", "", "```python",
              "from transferkit import TransferModel, load_backbone",
              "model = TransferModel.from_pretrained('THIS_DIR')" if h is not None else "backbone = load_backbone('THIS_DIR')",
              "```", ""]
    return "\n".join(lines)
