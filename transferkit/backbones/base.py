"""The one backbone contract shared by word-vector, language-model and vision networks.

A :class:`Backbone` is two parts composed (no subclass per source):

* an ``encoder`` — an ``nn.Module`` whose ``forward(**inputs)`` returns :class:`Features`;
* a ``preprocessor`` — a callable turning raw inputs (strings, images) into the encoder's tensors,
  built from the tokenizer, vocabulary or image transform that belongs to these weights;
* optionally a ``pooling`` (:mod:`transferkit.backbones.pooling`) that fills ``Features.pooled`` from the
  encoder's tokens + mask or spatial map (text encoders return no pooled vector of their own; vision
  networks pool the way their architecture does, e.g. timm's ``forward_head``).

Before any forward pass, :attr:`Backbone.feature_info` describes the features from the architecture
alone (like timm's ``feature_info``): the pooled and per-token sizes and, for vision networks, the channels
and stride of each multi-scale stage, which ``backbone(**inputs, stages=True)`` returns as
``Features.stages`` so a dense head can be built from the description.

Its ``config`` is a JSON-serialisable dict recording the source, architecture and preprocessing, so that
``save_pretrained`` / ``from_pretrained`` can rebuild it offline.

Its :meth:`~Backbone.layer_groups` split it into ordered parts (embeddings or stem first, the last block
last); :meth:`~Backbone.set_trainable` freezes all but the top ones, which is what linear probing,
gradual unfreezing and LP-FT are made of (see :mod:`transferkit.trainer.strategies`).
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from transferkit.registry import Registry

from .layers import LayerGroup, split_blocks
from .pooling import Pooling, pooling_for


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
        pooled: ``[B, feature_dim]`` one vector per input (``None`` only between a text encoder and the
            backbone's pooling, which fills it).
        tokens: ``[B, T, D]`` per-token features (text networks, vision transformers), else ``None``.
        mask: ``[B, T]`` 1 where ``tokens`` holds a real token, 0 for padding; ``None`` without tokens.
        spatial: ``[B, C, H, W]`` feature map of convolutional networks, else ``None``.
        stages: ``[B, C_i, H_i, W_i]`` maps, one per ``feature_info.stages`` entry in the same order, when
            the backbone is called with ``stages=True`` (an empty list for text); else ``None``.
    """

    pooled: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    spatial: torch.Tensor | None = None
    stages: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class Stage:
    """One multi-scale stage of a vision network (timm ``feature_info``: ``module``, ``num_chs``, ``reduction``).

    Attributes:
        name: the module whose output it is, e.g. ``"layer2"`` or ``"blocks.3"``.
        channels: channels of its ``[B, C, H, W]`` map.
        stride: input pixels per map pixel (the nominal reduction: ``H ≈ image height / stride``).
    """

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class FeatureInfo:
    """What a backbone's features look like, known from its architecture before any forward pass.

    Attributes:
        modality: ``"text"`` or ``"image"``.
        pooled: size of ``Features.pooled`` (``feature_dim``).
        tokens: size of each of ``Features.tokens`` (hidden size of transformers and ViT-like networks,
            the vector size of word vectors); ``None`` when the backbone gives no tokens (CNNs).
        spatial: channels of ``Features.spatial``; ``None`` without a spatial map.
        stages: the multi-scale stages, shallow to deep, that ``stages=True`` returns maps for; empty for
            text and for networks without a known stage structure.
        pooling: name of the backbone's :class:`~transferkit.backbones.pooling.Pooling`, or ``None`` when
            the network pools the way its architecture does (vision).
    """

    modality: str
    pooled: int
    tokens: int | None = None
    spatial: int | None = None
    stages: tuple[Stage, ...] = ()
    pooling: str | None = None


@contextlib.contextmanager
def inference(module: nn.Module) -> Iterator[torch.device]:
    """Eval mode and ``torch.inference_mode`` inside the block (prediction: no autograd bookkeeping at all); yields
    the module's device and gives the module back the training mode it had, whatever happens in the block."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield next(module.parameters()).device
    finally:
        module.train(was_training)


def length_order(inputs: Sequence[Any]) -> list[int] | None:
    """Indices of ``inputs`` longest first, for batches of similar length (less padding), or ``None`` when the
    inputs are not texts (images are resized to one size anyway). Texts are ordered by characters, text pairs by
    both texts' characters: a proxy for tokens that costs no tokenizing (sentence-transformers' ``encode`` does
    the same)."""
    def size(item: Any) -> int | None:
        if isinstance(item, str):
            return len(item)
        if isinstance(item, tuple) and all(isinstance(t, str) for t in item):
            return sum(map(len, item))
        if isinstance(item, (list, tuple)) and all(isinstance(t, str) for t in item):  # pre-split words
            return sum(map(len, item)) + len(item)
        return None

    sizes = [size(item) for item in inputs]
    if len(inputs) < 2 or any(s is None for s in sizes):
        return None
    return sorted(range(len(inputs)), key=lambda i: -sizes[i])


def length_batches(items: Sequence[Any], batch_size: int, by_length: bool = True) -> list[list[int]]:
    """The indices of ``items`` in batches of ``batch_size``: texts of similar length together, longest first
    (:func:`length_order`), when ``by_length`` and there is more than one batch; else in input order. Put the
    results back in input order with :func:`restore_order` over the concatenated batches."""
    order = length_order(items) if by_length and batch_size < len(items) else None
    order = list(range(len(items))) if order is None else order
    return [order[start: start + batch_size] for start in range(0, len(order), batch_size)]


def restore_order(rows: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Rows computed in ``order`` (``rows[j]`` is input ``order[j]``) back in input order."""
    if order == list(range(len(order))):
        return rows
    out = torch.empty_like(rows)
    out[torch.as_tensor(order, device=rows.device)] = rows
    return out


@contextlib.contextmanager
def input_hook(backbone: "Backbone", change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While inside, ``change`` rewrites what the backbone reads first: a text backbone's input embeddings (the output
    of a transformer's embedding table; a word-vector backbone's token vectors), an image backbone's normalised
    ``pixel_values``. Adversarial training and embedding mixup act there, on any backbone."""
    encoder = backbone.encoder
    members = getattr(encoder, "members", None)
    if members is not None:  # a stack (transferkit.backbones.stack): each member's inputs, in their order
        with contextlib.ExitStack() as hooks:
            for member in members:
                hooks.enter_context(input_hook(member, change))
            yield
        return
    if backbone.modality == "image":
        def before(module, args, kwargs):
            return args, {**kwargs, "pixel_values": change(kwargs["pixel_values"])}
        handle = encoder.register_forward_pre_hook(before, with_kwargs=True)
    else:
        table = getattr(getattr(encoder, "model", None), "get_input_embeddings", None)
        if callable(table):  # a transformer: the output of its embedding table
            handle = table().register_forward_hook(lambda module, args, out: change(out))
        else:  # word vectors: the encoder's token vectors are the embeddings
            def after(module, args, features):
                features.tokens = change(features.tokens)
                return features
            handle = encoder.register_forward_hook(after)
    try:
        yield
    finally:
        handle.remove()


class Backbone(nn.Module):
    """A pretrained (or random) network plus the preprocessing that belongs to its weights.

    Build one with :func:`transferkit.load_backbone`; users rarely call this constructor.

    Args:
        encoder: module mapping preprocessed inputs to :class:`Features`.
        preprocessor: callable mapping a list of raw inputs to a dict of tensors; it must have a
            ``to_config()`` method returning JSON-serialisable settings.
        config: JSON-serialisable description with at least ``source``, ``name``, ``modality``
            (``"text"`` or ``"image"``) and ``feature_dim``.
        pooling: fills ``Features.pooled`` from the encoder's features; ``None`` when the encoder pools
            itself. It has no parameters, so it is rebuilt from the config (``arch.pooling``), not saved.
    """

    def __init__(self, encoder: nn.Module, preprocessor: Callable[[Sequence[Any]], dict], config: dict,
                 pooling: Pooling | None = None):
        super().__init__()
        self.encoder = encoder
        self.preprocessor = preprocessor
        self.config = config
        self.pooling = pooling
        # How many of the top layer groups learn: None = all, 0 = none (frozen).
        self.trainable_top: int | None = None
        # PEFT adapters (transferkit.backbones.adapters.Adapters) once add_adapter() is called; their settings
        # are in config["adapters"].
        self.adapters = None
        # load_backbone's spec and options, which a saved adapter records to find its base again.
        self.origin: dict | None = None

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

    @property
    def feature_info(self) -> FeatureInfo:
        """What the features look like, from the architecture alone (no forward pass).

        The encoder's ``feature_info()`` gives the token size, spatial channels and stages; the
        conformance test (``tests/test_backbones.py``) checks every source's description against a real
        forward pass.
        """
        own = getattr(self.encoder, "feature_info", None)
        parts = dict(own()) if callable(own) else {}
        return FeatureInfo(modality=self.modality, pooled=self.feature_dim,
                           pooling=None if self.pooling is None else self.pooling.name, **parts)

    def forward(self, *, stages: bool = False, **inputs: torch.Tensor) -> Features:
        """Features of preprocessed inputs.

        Args:
            stages: also return ``Features.stages``, the map of each ``feature_info.stages`` entry (timm:
                ``forward_intermediates``; torchvision: forward hooks on the stage modules). ``pooled``
                and the other parts are the same as without it.
            **inputs: the tensors :meth:`preprocess` returns.
        """
        # Encoders that can return stage maps say so with ``gives_stages = True`` (the vision encoders).
        staged = stages and getattr(self.encoder, "gives_stages", False)
        features = self.encoder(**inputs, stages=True) if staged else self.encoder(**inputs)
        if stages and features.stages is None:
            features.stages = []
        if self.pooling is not None:
            features.pooled = self.pooling(features)
        return features

    def pool(self, features: Features, pooling: str | Pooling | None = None) -> torch.Tensor:
        """Pool ``features`` another way than the backbone's own, without rebuilding it.

        Args:
            features: what ``backbone(**inputs)`` returned.
            pooling: a name from :data:`transferkit.backbones.pooling.POOLINGS` (``"mean"``, ``"cls"``,
                ``"avg"``...) or a :class:`Pooling`; ``None`` gives the backbone's own ``Features.pooled``.
                The size is ``pooling_for(name).out_features(dim)``.

        Raises:
            ConfigError: an unknown pooling, or one that reads a part these features lack (tokens of a CNN).
        """
        if pooling is None:
            return features.pooled
        return pooling_for(pooling)(features)

    def encode(self, raw_batch: Sequence[Any], batch_size: int | None = None, *, by_length: bool = True
               ) -> torch.Tensor:
        """Pooled features for raw inputs, without gradients: ``[B, feature_dim]``.

        Args:
            batch_size: inputs per forward pass; ``None``: all at once.
            by_length: batch texts of similar length together (longest first; the order of the result is the
                input's), which pads far less than batching in input order.
        """
        raw_batch = list(raw_batch)
        batches = length_batches(raw_batch, batch_size or max(len(raw_batch), 1), by_length)
        out = []
        with inference(self) as device:
            for indices in batches:
                batch = self.preprocess([raw_batch[i] for i in indices])
                out.append(self(**{k: v.to(device) for k, v in batch.items()}).pooled)
        if not out:
            return torch.empty(0, self.feature_dim)
        return restore_order(torch.cat(out), [i for indices in batches for i in indices])


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
        if self.config.get("adapters") is not None:  # with an adapter on, only its parameters learn
            from .adapters import trainable_names

            learning = trainable_names(self)
            trainable &= {id(p) for n, p in self.named_parameters() if n in learning}
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
        if mode and self.config.get("adapters") is not None:
            from .adapters import train_mode

            train_mode(self)  # the base's BatchNorm statistics stay as the base had them
        return self

    def add_adapter(self, method: str = "lora", name: str = "default", **options: Any) -> "Backbone":
        """Freeze the backbone's own weights and add a PEFT adapter that learns instead (LoRA, DoRA, IA³, prompt
        tuning, bottleneck adapters, BitFit, norm-tuning); see :mod:`transferkit.backbones.adapters`.

        Example: ``backbone.add_adapter("lora", r=8, target_modules=["query", "value"])``.
        """
        from .adapters import add_adapter

        add_adapter(self, method, name, **options)
        return self

    def set_adapter(self, name: str) -> "Backbone":
        """Run (and train) the adapter named ``name``."""
        from .adapters import set_adapter

        set_adapter(self, name)
        return self

    def merge_adapter(self) -> "Backbone":
        """Fold the active adapter into the weights and drop the adapters (LoRA, DoRA, IA³, BitFit, norm-tuning)."""
        from .adapters import merge

        merge(self)
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
