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

The same reading of the structure gives the multi-scale stages of torchvision networks (channels and stride
of each, for dense heads), which torchvision does not describe itself: :func:`torchvision_info`.
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


# --- multi-scale stages of torchvision networks ------------------------------------------------------
# torchvision has no static description like timm's ``feature_info``, so it is read from the module
# structure (no forward pass): the trunk is the network's children in order (its ``features`` /
# ``layers`` / ``trunk_output`` / ``blocks`` container opened), up to the pooling and classifier; a stage
# ends wherever the next trunk module downsamples, and at the end of the trunk.

TRUNK_CONTAINERS = frozenset({"features", "layers", "trunk_output", "blocks"})
AFTER_TRUNK = frozenset({"avgpool", "classifier", "fc", "head", "heads", "norm", "permute", "flatten", "dropout"})
AUXILIARY = frozenset({"aux1", "aux2", "AuxLogits"})  # GoogLeNet / Inception side classifiers


def torchvision_info(model: nn.Module, feature_dim: int) -> dict:
    """``{"spatial": C | None, "stages": ((name, channels, stride), ...)}`` of a torchvision classifier.

    Read from the module structure (no forward pass).

    A module's stride is its convolution or pooling stride; a ``Sequential`` multiplies its children's,
    any other block takes the largest of its parts (its branches downsample together); Swin's
    ``PatchMerging`` halves. A stage's channels are the input channels of the next module with parameters
    (right even where branches are concatenated: Inception, DenseNet), else those of what follows the
    trunk, else ``feature_dim`` when the removed classifier read the trunk directly, else the last
    layer's output channels. The vision transformer's stages are its encoder blocks, each of the hidden size at the
    patch size's stride (their tokens are reshaped to maps, as timm's ``forward_intermediates`` does). Strides are
    nominal, like timm's ``reduction``: a convolution without padding makes maps a little smaller than
    ``size / stride``.
    """
    if type(model).__name__ == "VisionTransformer":
        return {"stages": tuple((f"encoder.layers.{name}", int(model.hidden_dim), int(model.patch_size))
                                for name, _ in model.encoder.layers.named_children())}
    trunk, after = _trunk(model)
    strides, total = [], 1
    for _, module in trunk:
        total *= _stride(module)
        strides.append(total)
    stages = []
    for i, (name, module) in enumerate(trunk):
        if i + 1 < len(trunk) and strides[i + 1] == strides[i]:
            continue
        later = [m for _, m in trunk[i + 1:] if _size(m)]
        channels = _in_channels(later[0]) if later else _after_channels(after, feature_dim)
        if channels is None:
            channels = next((c for _, m in reversed(trunk[: i + 1]) if (c := _out_channels(m))), 0)
        stages.append((name, int(channels), int(strides[i])))
    # The encoder's spatial map is the output of ``features`` or ``layer4``: the last stage.
    body = hasattr(model, "features") or hasattr(model, "layer4")
    return {"spatial": stages[-1][1] if body and stages else None, "stages": tuple(stages)}


def _trunk(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[nn.Module]]:
    trunk: list[tuple[str, nn.Module]] = []
    children = [(n, c) for n, c in model.named_children() if n not in AUXILIARY]
    for k, (name, child) in enumerate(children):
        if name in AFTER_TRUNK:
            return trunk, [c for _, c in children[k:]]
        if name in TRUNK_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            trunk += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            trunk.append((name, child))
    return trunk, []


def _stride(module: nn.Module) -> int:
    if type(module).__name__.startswith("PatchMerging"):
        return 2
    if isinstance(module, nn.Conv2d):
        return int(module.stride[0])
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = module.stride or module.kernel_size
        return int(stride if isinstance(stride, int) else stride[0])
    parts = [_stride(c) for c in module.children()]
    if isinstance(module, nn.Sequential):
        product = 1
        for part in parts:
            product *= part
        return product
    return max(parts, default=1)


def _channels(layer: nn.Module, side: str) -> int | None:
    if type(layer).__name__.startswith("PatchMerging"):
        return layer.dim if side == "in" else 2 * layer.dim
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels if side == "in" else layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features if side == "in" else layer.out_features
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return layer.num_features
    if isinstance(layer, nn.LayerNorm):
        return layer.normalized_shape[-1]
    return None


def _in_channels(module: nn.Module) -> int | None:
    """Input channels: those of the first layer (in registration order) that has them."""
    return next((c for m in module.modules() if (c := _channels(m, "in"))), None)


def _out_channels(module: nn.Module) -> int | None:
    """Output channels: those of the last layer (in registration order) that has them."""
    if type(module).__name__.startswith("PatchMerging"):
        return _channels(module, "out")
    return next((c for m in reversed(list(module.modules())) if (c := _channels(m, "out"))), None)


def _after_channels(after: list[nn.Module], feature_dim: int) -> int | None:
    for module in after:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                return None  # a layer of the classifier (MobileNetV3, VGG): it need not read raw channels
            if (c := _channels(layer, "in")) is not None:
                return c  # the norm after the trunk (Swin, ConvNeXt, MaxViT)
    return feature_dim  # the removed classifier read the globally pooled trunk (ResNet, EfficientNet...)
