"""Layer groups: a network split into ordered parts, input to output, for layer-wise fine-tuning.

Gradual unfreezing, discriminative learning rates and linear probing all need to know the "layers" of a
backbone (Howard & Ruder 2018, arXiv 1801.06146). :func:`split_blocks` finds them in almost any network
from its structure alone:

1. the *blocks* are the children of the dominant ``nn.ModuleList`` / ``nn.Sequential`` — the one whose
   parameterised children hold the most parameters, preferring the usual names (transformers
   ``encoder.layer`` and GPT-2 ``h``, timm ``blocks``/``stages``/``layers``, torchvision ``features``) —
   or sibling stages named ``layer1``, ``layer2``... (ResNets); an unnamed container must hold at least
   half of the parameters;
2. everything registered before the blocks (token/patch embeddings, a ViT's ``cls_token`` and
   ``pos_embed``, a convolutional stem) is the first group;
3. each parameterised block is one group; modules without parameters (activations, pooling, dropout)
   join the block before them;
4. everything after the blocks (a final norm, GPT-2's ``ln_f``, BERT's pooler, EfficientNet's
   ``conv_head``) joins the last group.

A network without such blocks (GoogLeNet, Inception) is split into its own parameterised children, and a
network without children is one group. An encoder can define ``layer_groups()`` to override all this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

# Attribute names of block containers in transformers, timm and torchvision networks.
KNOWN_CONTAINERS = frozenset({"layer", "layers", "h", "block", "blocks", "stages", "features"})
# Sibling stages that are children of the network itself (ResNets: layer1..layer4; timm RegNets: s1..s4).
STAGE_NAME = re.compile(r"(layer|stage|s)\d+")


@dataclass
class LayerGroup:
    """One part of a backbone that is frozen, unfrozen or given a learning rate as a whole.

    Attributes:
        name: e.g. ``"embeddings"``, ``"stem"``, ``"encoder.layer.3"``, ``"blocks.11"``, ``"layer4"``.
        modules: modules wholly inside the group; put in eval mode while the group is frozen.
        params: the group's parameters, including ones owned directly by a parent module (a ViT's
            ``cls_token``), which is why they are listed separately from ``modules``.
    """

    name: str
    modules: list[nn.Module] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)


def split_blocks(root: nn.Module, first: str = "stem") -> list[LayerGroup]:
    """Groups of ``root``'s parameters, ordered input → output; every parameter is in exactly one.

    Args:
        root: the network (a backbone's encoder).
        first: name of the group before the blocks (``"embeddings"`` for text, ``"stem"`` for images).
    """
    found = _find_blocks(root)
    if found is None:
        return [LayerGroup("all", [root], list(root.parameters()))]
    parent_name, block_names = found
    stem, blocks = LayerGroup(first), []
    after: list[nn.Module] = []  # modules after the blocks, at every level above them
    # Walk down from the root to the blocks' parent: what comes before the path is stem, after it is tail.
    module, prefix = root, ""
    for part in (parent_name.split(".") if parent_name else []):
        stem.params += list(module.parameters(recurse=False))
        names = [n for n, _ in module.named_children()]
        before, rest = names[: names.index(part)], names[names.index(part) + 1:]
        stem.modules += [module.get_submodule(n) for n in before]
        after[:0] = [module.get_submodule(n) for n in rest]  # outer levels come after inner ones
        module, prefix = module.get_submodule(part), prefix + part + "."
    stem.params += list(module.parameters(recurse=False))
    for child_name, child in module.named_children():
        if child_name in block_names:
            blocks.append(LayerGroup(_pretty(prefix + child_name), [child]))
        elif blocks:
            blocks[-1].modules.append(child)
        else:
            stem.modules.append(child)
    blocks[-1].modules += after
    groups = [stem] + blocks
    seen: set[int] = set()  # a tied parameter belongs to the first group that holds it
    for group in groups:
        params = group.params + [p for m in group.modules for p in m.parameters()]
        group.params = [p for p in params if id(p) not in seen and not seen.add(id(p))]
    if not stem.params:  # nothing before the blocks: its parameterless modules join the first block
        blocks[0].modules[:0] = stem.modules
        groups = blocks
    return groups


def _find_blocks(root: nn.Module) -> tuple[str, set[str]] | None:
    """(qualified name of the blocks' parent, names of the block children), or None."""
    total = _size(root)
    best, best_key = None, None
    for name, module in root.named_modules():
        children = [(n, c) for n, c in module.named_children() if _size(c)]
        options = [(True, [(n, c) for n, c in children if STAGE_NAME.fullmatch(n)])]
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            options.append((name.rpartition(".")[2] in KNOWN_CONTAINERS, children))
        for known, blocks in options:
            size = sum(_size(c) for _, c in blocks)
            # A small unnamed Sequential (a branch of an Inception block) is not the network's block list.
            if len(blocks) < 2 or (not known and 2 * size < total):
                continue
            key = (known, size, -name.count(".") - bool(name))  # named, then largest, then outermost
            if best_key is None or key > best_key:
                best, best_key = (name, {n for n, _ in blocks}), key
    if best is None:  # no block list: the network's own parameterised children are its blocks
        name, module = "", root
        while True:
            children = [(n, c) for n, c in module.named_children() if _size(c)]
            if len(children) != 1 or next(module.parameters(recurse=False), None) is not None:
                break
            name, module = f"{name}.{children[0][0]}".lstrip("."), children[0][1]
        if len(children) >= 2:
            best = (name, {n for n, _ in children})
    return best


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _pretty(name: str) -> str:
    # Encoders keep the library's network as ``.model``; group names read better without it.
    return name.removeprefix("model.")
