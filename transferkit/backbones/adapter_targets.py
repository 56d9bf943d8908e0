"""Which modules of a backbone a PEFT method adapts: the adaptable ones, the defaults per family, and the check of a
user's ``target_modules`` (see :mod:`transferkit.backbones.adapters`)."""

from __future__ import annotations

import re

from torch import nn

from transferkit.errors import AdapterError


def adaptable_modules(backbone, method: str) -> dict[str, nn.Module]:
    """Modules (full names in the encoder) that ``method`` can adapt."""
    from transformers.pytorch_utils import Conv1D

    kinds: tuple[type, ...] = {"lora": (nn.Linear, nn.Conv2d, nn.Embedding, Conv1D),
                               "ia3": (nn.Linear, nn.Conv2d, Conv1D),
                               "bottleneck": (nn.Linear, nn.Conv2d, nn.Embedding, Conv1D, nn.Module)}[method]
    inside_attention = {f"{n}.{c}" for n, m in backbone.encoder.named_modules()
                        if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
    out = {}
    for name, module in backbone.encoder.named_modules():
        # A module an adapter already wraps counts as the module it wraps (a second adapter goes on it too);
        # the adapters' own layers and the wrapped copy (``base_layer``) are not targets.
        if not name or name in inside_attention or re.search(r"(^|\.)(base_layer|lora_\w+|ia3_\w+|bottleneck)(\.|$)",
                                                              name):
            continue
        base = getattr(module, "base_layer", None)
        layer = base if isinstance(base, nn.Module) else module
        if method == "bottleneck" and type(layer) is nn.Module:
            continue
        if isinstance(layer, kinds) and (method != "bottleneck" or width(backbone, name, layer) is not None):
            out[name] = module
    return out


def resolve_targets(backbone, method: str, targets: list[str] | str | None) -> list[str]:
    """Full module names for ``targets`` (names or suffixes; ``None``: :func:`default_targets`).

    Raises:
        AdapterError: a target matches no module ``method`` can adapt; the message lists the valid names.
    """
    valid = adaptable_modules(backbone, method)
    if targets is None:
        targets = default_targets(backbone, method)
    elif isinstance(targets, str):
        targets = [targets]
    out: list[str] = []
    for target in targets:
        found = [n for n in valid if n == target or n.endswith("." + target)]
        if not found:
            short = sorted({n.rsplit(".", 1)[-1] for n in valid})
            raise AdapterError(f"target module {target!r} is not a module {method!r} can adapt in "
                               f"{backbone.config['source']}:{backbone.config['name']}. Valid names (or suffixes "
                               f"of the full names, e.g. {next(iter(valid), '?')!r}): {', '.join(short)}.")
        out += [n for n in found if n not in out]
    if not out:
        raise AdapterError(f"{method!r} found nothing to adapt in {backbone.config['source']}:"
                           f"{backbone.config['name']}: give target_modules (see adaptable_modules).")
    return out


# The residual output projections Houlsby adapters follow, per transformers model type (name suffixes).
BOTTLENECK_TARGETS = {"bert": ["output.dense"], "roberta": ["output.dense"], "xlm-roberta": ["output.dense"],
                      "electra": ["output.dense"], "deberta-v2": ["output.dense"], "distilbert": ["out_lin", "lin2"],
                      "gpt2": ["c_proj"], "llama": ["o_proj", "down_proj"], "mistral": ["o_proj", "down_proj"],
                      "qwen2": ["o_proj", "down_proj"], "t5": ["SelfAttention.o", "DenseReluDense.wo"],
                      "bart": ["out_proj", "fc2"]}
TEXT_ATTENTION = re.compile(r"(^|\.)(query|key|value|q_proj|k_proj|v_proj|q|k|v|c_attn|qkv|Wqkv)$")
RESIDUAL_OUT = re.compile(r"(^|\.)(output\.dense|o_proj|out_proj|c_proj|down_proj|fc2|wo|o)$")


def default_targets(backbone, method: str) -> list[str]:
    """The default target modules of ``method`` for ``backbone``'s family (:mod:`transferkit.backbones.adapters`
    lists them); full names."""
    valid = adaptable_modules(backbone, method)
    kind = family(backbone)
    if kind == "word_vectors":
        return [n for n in valid if n in ("embeddings", "ngrams")]
    if kind == "text":
        from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
                                          TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)

        model_type = getattr(getattr(backbone.encoder.model, "config", None), "model_type", None)
        table = {"lora": TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
                 "ia3": TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, "bottleneck": BOTTLENECK_TARGETS}[method]
        suffixes = table.get(model_type)
        if suffixes:
            found = [n for n in valid if any(n == s or n.endswith("." + s) for s in suffixes)]
            if found:
                return found
        wanted = RESIDUAL_OUT if method == "bottleneck" else TEXT_ATTENTION
        return [n for n in valid if wanted.search(n)] or [
            n for n, m in valid.items() if isinstance(getattr(m, "base_layer", m), nn.Linear)]
    # vision
    linear = {n: m for n, m in valid.items() if isinstance(getattr(m, "base_layer", m), nn.Linear)}
    if any(n.endswith(".qkv") for n in linear):  # timm ViT-like: the fused attention projection
        if method == "bottleneck":
            return [n for n in linear if n.endswith((".attn.proj", ".mlp.fc2"))]
        return [n for n in linear if n.endswith(".qkv")] + (
            [n for n in linear if n.endswith(".mlp.fc2")] if method == "ia3" else [])
    mlp = [n for n in linear if re.search(r"\.mlp\.\d+$", n)]
    if mlp:  # torchvision ViT: nn.MultiheadAttention does not call its out_proj module
        return [n for n in mlp if n.endswith(".3")] if method == "bottleneck" else mlp
    if method == "bottleneck":  # CNNs: after each stage
        stages = [f"model.{s.name}" for s in backbone.feature_info.stages]
        return [s for s in stages if s in valid]
    convs = {n: getattr(m, "base_layer", m) for n, m in valid.items()}
    return [n for n, m in convs.items() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 3]


def family(backbone) -> str:
    if backbone.modality == "image":
        return "vision"
    model = getattr(backbone.encoder, "model", None)
    return "text" if isinstance(model, nn.Module) and hasattr(model, "config") else "word_vectors"


def width(backbone, name: str, module: nn.Module) -> int | None:
    """The channels or features a module outputs (bottleneck adapters are sized by it), or None when unknown."""
    for attr in ("out_features", "out_channels", "embedding_dim", "nf"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    if backbone.modality == "image":
        for stage in backbone.feature_info.stages:
            if f"model.{stage.name}" == name:
                return stage.channels
    return None
