"""Several pretrained backbones as one: their pooled features side by side.

``stack([load_backbone("glove:..."), load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")])`` (or
``load_backbone("stack:concat", members=["glove:...", "hf:..."])``) is one
:class:`Backbone` whose ``Features.pooled`` is the concatenation of its members' pooled features (``feature_dim`` their
sum), each member reading the raw inputs with its own preprocessing — Flair's ``StackedEmbeddings`` and the
multi-pretrained networks of Hu et al. 2016 ("Transfer learning with multiple pretrained networks", arXiv 1606.00540).
``weighted=True`` scales each member's features by a learned weight first (softmax-normalised, times the number of
members, so equal weights start at 1), which lets training lean on the member that helps. Every head that reads
``pooled`` works on it; heads that read tokens or feature maps are refused (members have different token sizes).

The stack saves and loads as one (``save_pretrained`` writes each member's files under ``members/<i>/``; the weights
are all in one ``model.safetensors``), and the fine-tuning strategies see one list of layer groups: the ``k``-th from
the top holds every member's ``k``-th group from the top, so ``linear_probe``, ``gradual_unfreeze`` and LLRD treat the
members alike. Members must share a modality; PEFT adapters on a stack are not supported yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError

from .base import Backbone, Features
from .layers import LayerGroup
from .registry import register_source, source

MEMBERS = "members"  # the members' files in a saved stack: members/0, members/1, ...


class StackPreprocessor:
    """Each member's preprocessing, its tensors named ``"<i>.<name>"``."""

    def __init__(self, members: Sequence[Backbone]):
        self.members = list(members)

    def __call__(self, raw: Sequence[Any]) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, m in enumerate(self.members) for k, v in m.preprocess(raw).items()}

    def to_config(self) -> dict:
        return {"members": [m.preprocessor.to_config() for m in self.members]}


class StackEncoder(nn.Module):
    """Runs every member on its own inputs and concatenates their pooled features (optionally weighted)."""

    def __init__(self, members: Sequence[Backbone], weighted: bool):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.logits = nn.Parameter(torch.zeros(len(members))) if weighted else None

    def forward(self, **inputs: torch.Tensor) -> Features:
        pooled = []
        for i, member in enumerate(self.members):
            own = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(f"{i}.")}
            pooled.append(member(**own).pooled)
        if self.logits is not None:
            weights = self.logits.softmax(0) * len(pooled)
            pooled = [w * p for w, p in zip(weights, pooled)]
        return Features(pooled=torch.cat(pooled, dim=-1))

    def feature_info(self) -> dict:
        return {}  # pooled only: the members' tokens and maps differ in size

    def layer_groups(self) -> list[LayerGroup]:
        """The members' groups aligned from the top; the learned weights join the top group."""
        stacks = [m.layer_groups() for m in self.members]
        depth = max(len(g) for g in stacks)
        groups = []
        for k in range(depth, 0, -1):  # k-th from the top, bottom first
            parts = [g[-k] for g in stacks if len(g) >= k]
            groups.append(LayerGroup(f"stack.{depth - k}", [m for p in parts for m in p.modules],
                                     [q for p in parts for q in p.params]))
        if self.logits is not None:
            groups[-1] = LayerGroup(groups[-1].name, groups[-1].modules, groups[-1].params + [self.logits])
        return groups


def stack(members: Sequence[Backbone], *, weighted: bool = False) -> Backbone:
    """One backbone from several (see the module docstring).

    Raises:
        ConfigError: fewer than two members, members of different modalities, or a member with a PEFT adapter.
    """
    members = list(members)
    if len(members) < 2:
        raise ConfigError(f"a stack needs two backbones or more, got {len(members)}.")
    modalities = {m.modality for m in members}
    if len(modalities) > 1:
        raise ConfigError(f"stacked backbones must read the same inputs, and these read {sorted(modalities)}: stack "
                          "text backbones with text backbones, image with image.")
    if any(m.config.get("adapters") for m in members):
        raise ConfigError("a stacked member has a PEFT adapter; stack the plain backbones (adapters on stacks are not "
                          "supported yet).")
    config = {"source": "stack", "name": "+".join(f"{m.config['source']}:{m.config['name']}" for m in members),
              "modality": members[0].modality, "feature_dim": sum(m.feature_dim for m in members),
              "arch": {"weighted": weighted}, "members": [dict(m.config) for m in members]}
    preprocessor = StackPreprocessor(members)
    config["preprocess"] = preprocessor.to_config()
    return Backbone(StackEncoder(members, weighted), preprocessor, config)


def _save_assets(backbone: Backbone, directory: Path) -> None:
    for i, member in enumerate(backbone.encoder.members):
        save = source(member.config["source"]).save_assets
        if save is not None:
            target = directory / MEMBERS / str(i)
            target.mkdir(parents=True, exist_ok=True)
            save(member, target)


def _rebuild(config: dict, directory: Path) -> Backbone:
    members = []
    for i, member_config in enumerate(config["members"]):
        member = source(member_config["source"]).rebuild(dict(member_config), Path(directory) / MEMBERS / str(i))
        member.config = dict(member_config)
        members.append(member)
    return stack(members, weighted=bool(config["arch"]["weighted"]))


@register_source("stack", rebuild=_rebuild, save_assets=_save_assets, list_names=lambda: ["concat", "weighted"],
                 usage="stack:concat|weighted with members=[spec or Backbone, ...] (or transferkit.backbones.stack)")
def _build(name: str, *, members: Sequence[Any] | None = None) -> Backbone:
    """``load_backbone("stack:concat", members=["glove:...", "hf:..."])``: the members by spec or as backbones."""
    from .registry import load_backbone

    if name not in ("concat", "weighted"):
        raise ConfigError(f"stack:{name}: a stack is stack:concat (features side by side) or stack:weighted (with a "
                          "learned weight per member).")
    if not members:
        raise ConfigError(f"stack:{name} needs members=[spec or Backbone, ...], two or more.")
    return stack([m if isinstance(m, Backbone) else load_backbone(m) for m in members], weighted=name == "weighted")
