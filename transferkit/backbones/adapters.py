"""Parameter-efficient fine-tuning (PEFT): small trainable adapters on a frozen backbone of any family.

``backbone.add_adapter("lora", r=8)`` freezes the backbone's own weights and adds what learns instead; every
strategy (:mod:`transferkit.trainer.strategies`) and every head then works as before, with only the adapter (and
the head, which always learns) trained. The methods:

* ``"lora"`` — low-rank updates ``W + (alpha / r) B A`` of linear, convolutional and embedding layers (Hu et al.
  2021, "LoRA", arXiv 2106.09685), through the ``peft`` library's layers, which wrap any ``nn.Module``'s
  ``Linear``/``Conv2d``/``Embedding``/GPT-2 ``Conv1D`` — so timm and torchvision networks (a ViT's fused ``qkv``
  included) and word vectors get it, not only transformers. ``dora=True``: weight-decomposed LoRA (Liu et al.
  2024, "DoRA", arXiv 2402.09353); ``rslora=True``: the rank-stabilised scale ``alpha / sqrt(r)``
  (Kalajdzievski 2023, arXiv 2312.03732). ``"dora"`` is ``"lora"`` with ``dora=True``.
* ``"ia3"`` — learnt rescaling of activations (Liu et al. 2022, "(IA)^3", arXiv 2205.05638), ``peft``'s layers.
* ``"prompt_tuning"`` — ``num_virtual_tokens`` learnt input embeddings before every text (Lester et al. 2021,
  arXiv 2104.08691), for transformer language models. Written here rather than taken from ``peft``, whose prompt
  tuning lives in the forward pass of its transformers task models and returns the virtual tokens among the
  outputs: here their outputs are dropped, so token heads (NER, QA) still see one output per real token.
* ``"prefix_tuning"`` — ``num_virtual_tokens`` learnt keys and values before every attention layer's own (Li &
  Liang 2021, "Prefix-Tuning", arXiv 2101.00190; trained directly, as P-tuning v2 does, Liu et al. 2022, arXiv
  2110.07602), passed to the model as an already-filled cache; for encoder-only and decoder transformers.
* ``"bottleneck"`` — Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP",
  arXiv 1902.00751): ``y + up(gelu(down(y)))`` after the attention and feed-forward output projections (text,
  ViT), after each stage (CNNs: 1×1 convolutions), after the vectors (word vectors); ``up`` starts at zero.
  Written here: ``peft`` has none, and the ``adapters`` library works on transformers models only.
* ``"bitfit"`` — the biases alone learn (Ben Zaken et al. 2022, "BitFit", arXiv 2106.10199).
* ``"norm_tuning"`` — the normalisation layers alone learn (LayerNorm tuning, Zhao et al. 2023, arXiv
  2312.11420; BatchNorm: Frankle et al. 2021, "Training BatchNorm and Only BatchNorm", arXiv 2003.00152).
  BitFit and norm-tuning add no module, so they need no library: they choose which parameters learn.

Default target modules per family (:func:`default_targets`), all overridable with ``target_modules=`` (module
names or name suffixes, checked: an unknown one lists the valid ones): transformers — ``peft``'s table per model
type (BERT ``query``/``value``, GPT-2 ``c_attn``, Llama ``q_proj``/``v_proj``...), else the attention projections;
ViT-like vision networks — the fused ``qkv`` (timm) or the MLP (torchvision, whose attention does not call its
``out_proj`` module); CNNs — every ungrouped convolution after the stem; word vectors — the vector table.

While an adapter is on, the backbone's own weights are a fixed function: they get no gradient, and normalisation
layers that do not learn keep their running statistics (eval mode), so an adapter saved alone fits its base
exactly. Several adapters of one method can be added under names and switched (:func:`set_adapter`);
:func:`merge` folds the active one into the weights (LoRA, DoRA, IA³; BitFit and norm-tuning are already in the
weights) and removes the adapter machinery, for export.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from transferkit.errors import AdapterError
from transferkit.registry import Registry

from .adapter_layers import Bottlenecked, add_bottleneck, add_prefix, add_prompt
from .adapter_targets import RESIDUAL_OUT, adaptable_modules, default_targets, resolve_targets

__all__ = ["METHODS", "adapter_names", "adapter_state", "adaptable_modules", "add_adapter", "default_targets",
           "fingerprint", "merge", "resolve_targets", "restore", "set_adapter", "trainable_names"]

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Method:
    """One PEFT method: how it adds an adapter, whether it can be merged into the weights."""

    add: Callable[..., None]  # add(backbone, name, options) with options resolved (target modules full names)
    options: dict  # the method's options and their defaults
    mergeable: bool
    in_place: bool = False  # trains some of the backbone's own parameters (bitfit, norm_tuning)
    uses_peft: bool = False


METHODS: Registry[Method] = Registry("PEFT method", hint="(CLI: --strategy lora|dora|ia3|prompt_tuning|prefix_tuning|"
                                                         "bottleneck|bitfit|norm_tuning)",
                                     normalise=lambda s: str(s).strip().lower().replace("-", "_"))


@dataclass
class Adapters:
    """The adapters on one backbone (``backbone.adapters``); their settings live in ``backbone.config["adapters"]``.

    Attributes:
        tuner: ``peft``'s tuner for ``peft`` methods (kept outside the module tree: its layers are the backbone's).
        stash: in-place methods: each inactive adapter's tensors, and the base's (``"__base__"``).
    """

    tuner: Any = None
    stash: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


# --- the public functions (Backbone and TransferModel methods call them) ---------------------------------------

def add_adapter(backbone, method: str = "lora", name: str = "default", **options: Any) -> None:
    """Add an adapter named ``name`` to ``backbone`` and make it the active one; see the module docstring.

    Args:
        method: ``"lora"``, ``"dora"``, ``"ia3"``, ``"prompt_tuning"``, ``"bottleneck"``, ``"bitfit"``,
            ``"norm_tuning"``.
        name: the adapter's name, for :func:`set_adapter` and saving.
        **options: the method's options (``r``, ``alpha``, ``dropout``, ``dora``, ``rslora``,
            ``target_modules``, ``num_virtual_tokens``, ``size``...); unknown ones are refused with the list.

    Raises:
        AdapterError: an unknown method or option, a bad name, a name in use, another method than the adapters
            already on the backbone, target modules the backbone does not have (the message lists the valid ones),
            or a method the backbone's family cannot take (prompt tuning of a vision network).
    """
    if METHODS.normalise(method) == "dora":
        options = {**options, "dora": True}
    method = canonical(method)
    if method not in METHODS:
        raise AdapterError(f"unknown PEFT method {method!r}: choose one of {', '.join(METHODS)}.")
    spec = METHODS.get(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise AdapterError(f"PEFT method {method!r} does not take the option(s) {unknown}; its options: "
                           f"{', '.join(f'{k}={v!r}' for k, v in spec.options.items()) or '(none)'}.")
    if not isinstance(name, str) or not NAME.match(name) or name == "__base__":
        raise AdapterError(f"adapter name {name!r} is not usable: use letters, digits, '_' or '-' (e.g. 'sentiment').")
    record = backbone.config.get("adapters")
    _check_joins(record, method, [name])
    resolved = {**spec.options, **options}
    if "target_modules" in spec.options:
        resolved["target_modules"] = resolve_targets(backbone, method, options.get("target_modules"))
    if record is None:
        record = {"method": method, "active": name, "specs": {}, "base": base_reference(backbone)}
        backbone.adapters = Adapters()
    _install(backbone, record, name, resolved)
    backbone.config["adapters"] = record  # only once the adapter is in: a refused one leaves no record
    _activate(backbone, name)


def canonical(method: str) -> str:
    """The registered method a name stands for: ``"dora"`` is ``"lora"`` with ``dora=True``; ``"LoRA"``, ``"lora"``."""
    method = METHODS.normalise(method)
    return "lora" if method == "dora" else method


def _check_joins(record: dict | None, method: str, names: list[str]) -> None:
    """Refuse adapters that cannot join the backbone's: another method, or a name in use."""
    if record is None:
        return
    for name in names:
        if name in record["specs"]:
            raise AdapterError(f"the backbone already has an adapter named {name!r} (it has: "
                               f"{', '.join(record['specs'])}): choose another name.")
    if record["method"] != method:
        raise AdapterError(f"the backbone's adapters are {record['method']!r}; one backbone holds adapters of one "
                           f"method, so a {method!r} adapter cannot join them: load the base again for it.")


def _install(backbone, record: dict, name: str, options: dict) -> None:
    """Add adapter ``name`` with resolved ``options`` and enter it in ``record`` as the active one. In-place methods
    keep the base's tensors once, and start each new adapter from them."""
    method = METHODS.get(record["method"])
    if method.in_place:
        if not backbone.adapters.stash:
            backbone.adapters.stash["__base__"] = _tensors(backbone, _in_place_names(backbone, record["method"],
                                                                                     options))
        else:  # the new adapter starts from the base, like any fresh adapter
            _stash_active(backbone, record)
            _put(backbone, backbone.adapters.stash["__base__"])
    method.add(backbone, name, options)
    record["specs"][name] = options
    record["active"] = name
    if method.in_place:
        backbone.adapters.stash[name] = _tensors(backbone, _in_place_names(backbone, record["method"], options))


def set_adapter(backbone, name: str) -> None:
    """Make adapter ``name`` the one that runs (and trains).

    Raises:
        AdapterError: the backbone has no adapter of that name (the message lists those it has).
    """
    record = _record(backbone)
    if name not in record["specs"]:
        raise AdapterError(f"the backbone has no adapter named {name!r}; it has: {', '.join(record['specs'])}.")
    if METHODS.get(record["method"]).in_place and name != record["active"]:
        _stash_active(backbone, record)
        _put(backbone, backbone.adapters.stash[name])
    record["active"] = name
    _activate(backbone, name)


def adapter_names(backbone) -> list[str]:
    """The names of the backbone's adapters (empty without any)."""
    record = backbone.config.get("adapters")
    return [] if record is None else list(record["specs"])


def trainable_names(backbone, name: str | None = None) -> set[str]:
    """Names (in ``backbone.named_parameters()``) of the parameters adapter ``name`` (default: the active one) trains."""
    record = _record(backbone)
    name = record["active"] if name is None else name
    spec = record["specs"][name]
    if METHODS.get(record["method"]).in_place:
        return set(_in_place_names(backbone, record["method"], spec))
    pattern = re.compile(rf"\.({'|'.join(map(re.escape, _adapter_attrs(backbone)))})\.{re.escape(name)}(\.|$)")
    return {n for n, _ in backbone.named_parameters() if pattern.search(n)}


def adapter_state(backbone, name: str | None = None) -> dict[str, torch.Tensor]:
    """What adapter ``name`` (default: the active one) adds to its base: its parameters, and the running statistics of
    normalisation layers it trains (norm-tuning of BatchNorm); keys as in ``backbone.state_dict()``."""
    return {k: v.detach() for k, v in _with_buffers(backbone, trainable_names(backbone, name)).items()}


def load_adapter_state(backbone, state: dict[str, torch.Tensor], name: str) -> None:
    """Copy ``state`` (from :func:`adapter_state`, keys as in ``backbone.state_dict()``) into adapter ``name``."""
    own = dict(backbone.named_parameters()) | dict(backbone.named_buffers())
    missing = sorted(set(adapter_state(backbone, name)) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise AdapterError(f"the adapter's weights do not fit its settings: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}. The adapter file is damaged or was written for other target modules.")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    record = _record(backbone)
    if METHODS.get(record["method"]).in_place:
        backbone.adapters.stash[name] = {k: v.detach().clone() for k, v in state.items() if k in own}


def restore(backbone, record: dict) -> None:
    """Add the adapters of a saved ``record`` (settings resolved when they were first added) to a fresh base, and
    record them; their weights are loaded afterwards. The base fingerprint is the record's."""
    existing = backbone.config.get("adapters")
    _check_joins(existing, record["method"], list(record["specs"]))
    if existing is None:
        backbone.adapters = Adapters()
        backbone.config["adapters"] = existing = {"method": record["method"], "active": record["active"],
                                                  "specs": {}, "base": record["base"]}
    for name, spec in record["specs"].items():
        _install(backbone, existing, name, dict(spec))
    _activate(backbone, record["active"])


def rename(backbone, key: str, old: str, new: str) -> str:
    """A parameter name of adapter ``old`` as it is for adapter ``new`` (``...lora_A.old.weight``)."""
    if old == new:
        return key
    attrs = "|".join(map(re.escape, _adapter_attrs(backbone)))
    return re.sub(rf"\.({attrs})\.{re.escape(old)}(\.|$)", lambda m: f".{m.group(1)}.{new}{m.group(2)}", key)


def merge(backbone) -> None:
    """Fold the active adapter into the backbone's weights and remove every adapter (the backbone is a plain one).

    Raises:
        AdapterError: the method cannot be merged (bottleneck adapters and prompt tuning add computation, not a
            change of weights): save the model with ``include_base=True`` instead.
    """
    record = _record(backbone)
    spec = METHODS.get(record["method"])
    if not spec.mergeable:
        raise AdapterError(f"{record['method']!r} adapters cannot be merged into the weights: they add layers or "
                           "inputs, not a change of weights. Save the whole model instead "
                           "(save_pretrained(..., include_base=True)), which export also takes.")
    if spec.uses_peft:
        with torch.no_grad():
            backbone.adapters.tuner.merge_and_unload(adapter_names=[record["active"]])
        for p in backbone.parameters():
            p.requires_grad_(True)
    del backbone.config["adapters"]
    backbone.adapters = None
    backbone.set_trainable(backbone.trainable_top)


def train_mode(backbone) -> None:
    """Inside ``backbone.train()``: normalisation layers that do not learn keep their statistics (eval mode)."""
    learning = trainable_names(backbone)
    for name, module in backbone.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                f"{name}.{p}" in learning for p, _ in module.named_parameters(recurse=False)):
            module.eval()


# --- the base a saved adapter refers to -------------------------------------------------------------------------

def base_reference(backbone) -> dict:
    """Where the base comes from (``load_backbone``'s spec and options) and a fingerprint of its weights."""
    origin = getattr(backbone, "origin", None)
    return {"name": f"{backbone.config['source']}:{backbone.config['name']}",
            "spec": None if origin is None else origin["spec"],
            "options": None if origin is None else origin["options"],
            "fingerprint": fingerprint(backbone)}


def fingerprint(backbone) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the backbone's own tensors (adapters excluded)."""
    digest = hashlib.sha256()
    adapters = backbone.config.get("adapters")
    skip: set[str] = set()
    if adapters is not None and not METHODS.get(adapters["method"]).in_place:
        for name in adapters["specs"]:
            skip |= set(adapter_state(backbone, name))
    for key, tensor in sorted(backbone.state_dict().items()):
        if key in skip:
            continue
        digest.update(f"{key.replace('.base_layer', '')}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


# --- the methods ------------------------------------------------------------------------------------------------

def _register(name: str, options: dict, *, mergeable: bool, in_place: bool = False, uses_peft: bool = False):
    def decorator(fn):
        METHODS.register(name, Method(fn, options, mergeable, in_place, uses_peft))
        return fn
    return decorator


@_register("lora", {"r": 8, "alpha": 16, "dropout": 0.0, "dora": False, "rslora": False, "target_modules": None},
           mergeable=True, uses_peft=True)
def _lora(backbone, name: str, o: dict) -> None:
    LoraConfig = _peft_module().LoraConfig

    if o["r"] < 1:
        raise AdapterError(f"LoRA rank r must be >= 1, got {o['r']!r}.")
    _peft(backbone, name, LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"], use_dora=o["dora"],
                                     use_rslora=o["rslora"], target_modules=list(o["target_modules"]), bias="none"))


@_register("ia3", {"target_modules": None, "feedforward_modules": None}, mergeable=True, uses_peft=True)
def _ia3(backbone, name: str, o: dict) -> None:
    IA3Config = _peft_module().IA3Config

    targets = o["target_modules"]
    feedforward = o["feedforward_modules"]
    if feedforward is None:  # peft's per-model-type table, else the output projections among the targets
        feedforward = [t for t in targets if RESIDUAL_OUT.search(t) or t.endswith((".fc2", "mlp.3"))]
    else:
        feedforward = [t for t in targets if any(t == f or t.endswith("." + f) for f in feedforward)]
    o["feedforward_modules"] = feedforward
    _peft(backbone, name, IA3Config(target_modules=list(targets), feedforward_modules=list(feedforward)))


def _peft_module():
    try:
        import peft
    except ImportError as e:
        raise AdapterError("LoRA, DoRA and IA³ adapters use the peft library, which is not installed: "
                           "pip install 'transferkit[peft]' (or pip install peft).") from e
    return peft


def _peft(backbone, name: str, config) -> None:
    import warnings

    encoder = backbone.encoder
    adapters = backbone.adapters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no model.config" and similar notes about non-transformers modules
        if adapters.tuner is None:
            from peft.tuners import IA3Model, LoraModel

            tuner_cls = LoraModel if type(config).__name__ == "LoraConfig" else IA3Model
            adapters.tuner = tuner_cls(encoder, config, name)
        else:
            adapters.tuner.peft_config[name] = config
            adapters.tuner.inject_adapter(encoder, name)


@_register("bitfit", {}, mergeable=True, in_place=True)
def _bitfit(backbone, name: str, o: dict) -> None:
    if not _in_place_names(backbone, "bitfit", o):
        raise AdapterError(f"{backbone.config['source']}:{backbone.config['name']} has no biases, so BitFit would "
                           "train nothing: choose 'lora' or 'bottleneck'.")


@_register("norm_tuning", {}, mergeable=True, in_place=True)
def _norm_tuning(backbone, name: str, o: dict) -> None:
    if not _in_place_names(backbone, "norm_tuning", o):
        raise AdapterError(f"{backbone.config['source']}:{backbone.config['name']} has no normalisation layers, so "
                           "norm-tuning would train nothing: choose 'lora' or 'bottleneck'.")


def _in_place_names(backbone, method: str, options: dict) -> list[str]:
    """The backbone's own parameters BitFit (biases) or norm-tuning (normalisation layers) trains; a transformers
    model's ``pooler`` is left out: transferkit's heads pool the tokens themselves and never call it."""
    if method == "bitfit":
        out = [n for n, _ in backbone.named_parameters() if n.rpartition(".")[2] == "bias"]
    else:
        out = [f"{module_name}.{p}" for module_name, module in backbone.named_modules()
               if "norm" in type(module).__name__.lower() for p, _ in module.named_parameters(recurse=False)]
    return [n for n in out if ".pooler." not in n and ".bottleneck." not in n]


@_register("bottleneck", {"size": 64, "target_modules": None}, mergeable=False)
def _bottleneck(backbone, name: str, o: dict) -> None:
    add_bottleneck(backbone, name, o["size"], o["target_modules"])


@_register("prompt_tuning", {"num_virtual_tokens": 20}, mergeable=False)
def _prompt_tuning(backbone, name: str, o: dict) -> None:
    add_prompt(backbone, name, o["num_virtual_tokens"])


@_register("prefix_tuning", {"num_virtual_tokens": 20}, mergeable=False)
def _prefix_tuning(backbone, name: str, o: dict) -> None:
    add_prefix(backbone, name, o["num_virtual_tokens"])


def _adapter_attrs(backbone) -> set[str]:
    """The attribute names under which adapters keep their per-name parameters (peft's layers, ours)."""
    attrs = {"bottleneck", "prompts", "prefixes"}
    record = backbone.config.get("adapters")
    if record is not None and METHODS.get(record["method"]).uses_peft:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in backbone.modules():
            if isinstance(module, BaseTunerLayer):
                attrs.update(module.adapter_layer_names)
    return attrs


def _activate(backbone, name: str) -> None:
    """Run adapter ``name``, and let only it (and the head) learn among the backbone's parameters."""
    record = _record(backbone)
    if METHODS.get(record["method"]).uses_peft:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in backbone.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter(name)
    for module in backbone.modules():
        if isinstance(module, Bottlenecked):
            module.active = name if name in module.bottleneck else None
    if getattr(backbone.encoder, "prompts", None) is not None:
        backbone.encoder.active_prompt = name
    if getattr(backbone.encoder, "prefixes", None) is not None:
        backbone.encoder.active_prefix = name
    backbone.set_trainable(backbone.trainable_top)


def _record(backbone) -> dict:
    record = backbone.config.get("adapters")
    if record is None:
        raise AdapterError("the backbone has no adapter: add one with add_adapter('lora') (or Trainer(strategy='lora')).")
    return record


def _with_buffers(backbone, names) -> dict[str, torch.Tensor]:
    """The named parameters and their modules' buffers (a BatchNorm's running statistics)."""
    names = set(names)
    owners = {n.rpartition(".")[0] for n in names}
    tensors = {n: p for n, p in backbone.named_parameters() if n in names}
    tensors.update({n: b for n, b in backbone.named_buffers() if n.rpartition(".")[0] in owners})
    return tensors


def _tensors(backbone, names: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters and of their modules' buffers."""
    return {n: t.detach().clone() for n, t in _with_buffers(backbone, names).items()}


def _put(backbone, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(backbone.named_parameters()) | dict(backbone.named_buffers())
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def _stash_active(backbone, record: dict) -> None:
    names = _in_place_names(backbone, record["method"], record["specs"][record["active"]])
    backbone.adapters.stash[record["active"]] = _tensors(backbone, names)
