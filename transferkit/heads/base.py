"""The head contract: what every head is, whatever it predicts.

A head is a small ``nn.Module`` that turns a backbone's :class:`~transferkit.Features` into predictions.
It brings, in one place, everything that depends on *what* is predicted (sentence-transformers' modules
read the features dict they need; lightly keeps a head, its loss and its transform as three small parts):

* ``head_type``: its registry name (set by :func:`~transferkit.heads.register_head`), saved in its config;
* ``needs``: the parts of ``Features`` it reads — ``{"pooled"}`` (a vector per input: classification,
  regression), ``{"tokens", "mask"}`` (per-token features: NER, QA, generation), ``{"spatial"}`` or
  ``{"stages"}`` (feature maps: segmentation, detection); :func:`check_needs` refuses a backbone whose
  features lack them before any training;
* ``build(in_features)``: creates its layers from the backbone's description (sizes, never a dummy
  forward pass); composing it in ``TransferModel(backbone, head)`` calls it with the feature size (the token
  size for heads that need ``tokens``), or, for heads that need ``stages``, with the whole
  :class:`~transferkit.backbones.base.FeatureInfo` (channels and stride of every stage);
* ``forward(features) -> Tensor``: the raw outputs (logits, scores...);
* ``task(model, **options)``: the task that trains it — the module with ``examples`` (label reading),
  ``collate``, ``forward -> {"loss", ...}`` and streaming ``metrics()`` the Trainer knows;
* ``predict(outputs) -> list``: decodes a batch of raw outputs into what ``TransferModel.predict`` returns
  for each input (class names, numbers, spans...); ``scores(outputs)`` what ``predict_proba`` returns
  (probabilities), or raises when scores mean nothing for the head;
* ``config``: a JSON dict from which :func:`~transferkit.heads.head_from_config` rebuilds it
  (``save_pretrained``/``from_pretrained`` round-trip every head).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from transferkit.errors import ConfigError

FEATURE_PARTS = ("pooled", "tokens", "mask", "spatial", "stages")


@runtime_checkable
class Head(Protocol):
    """What :class:`~transferkit.TransferModel`, ``save_pretrained`` and the Trainer ask of a head."""

    head_type: str
    needs: frozenset[str]

    def build(self, in_features: int) -> None: ...

    def forward(self, features: Any) -> torch.Tensor: ...

    def task(self, model: torch.nn.Module, **options: Any) -> torch.nn.Module: ...

    def predict(self, outputs: torch.Tensor) -> list: ...

    def scores(self, outputs: torch.Tensor) -> torch.Tensor: ...

    @property
    def config(self) -> dict: ...


def check_needs(head: Any, backbone: Any) -> None:
    """Refuse a head whose needed feature parts the backbone does not give (before any training).

    Raises:
        ConfigError: e.g. a token head on a CNN backbone, which has no per-token features.
    """
    needs = set(getattr(head, "needs", {"pooled"}))
    unknown = needs - set(FEATURE_PARTS)
    if unknown:
        raise ConfigError(f"head {type(head).__name__} declares needs {sorted(unknown)}, which are not parts of "
                          f"Features {FEATURE_PARTS}.")
    info = getattr(backbone, "feature_info", None)
    if info is None or "pooled" in needs and len(needs) == 1:
        return  # every backbone gives a pooled vector
    has = {"pooled"}
    if getattr(info, "tokens", None) is not None:
        has |= {"tokens", "mask"}
    if getattr(info, "spatial", None) is not None:
        has.add("spatial")
    if getattr(info, "stages", None):
        has.add("stages")
    missing = needs - has
    if missing:
        raise ConfigError(f"head {type(head).__name__} needs {sorted(missing)} features, which the "
                          f"{backbone.config.get('source')}:{backbone.config.get('name')} backbone does not give "
                          f"(it gives {sorted(has)}); choose a backbone with them.")


def features_part(features: Any, part: str = "pooled") -> torch.Tensor:
    """``features.<part>`` of a :class:`~transferkit.Features`, or the tensor itself (heads used alone)."""
    if isinstance(features, torch.Tensor):
        return features
    value = getattr(features, part, None)
    if value is None:
        raise ConfigError(f"the backbone's features have no {part!r} part, which this head needs.")
    return value


def mlp(head: Any, in_features: int, out_features: int) -> nn.Module | None:
    """The layers of a pooled-vector head: dropout + linear, or with ``head.hidden`` a GELU hidden layer.

    Returns ``None`` when ``head`` is already built for ``in_features`` (building is idempotent); records
    ``head.in_features``.

    Raises:
        ConfigError: ``head`` was built for another feature size.
    """
    if getattr(head, "layers", None) is not None:
        if in_features != head.in_features:
            raise ConfigError(f"head was built for {head.in_features} features, backbone gives {in_features}")
        return None
    head.in_features = int(in_features)
    hidden, dropout = getattr(head, "hidden", None), getattr(head, "dropout", 0.0)
    if hidden:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.GELU(),
                             nn.Dropout(dropout), nn.Linear(hidden, out_features))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))


LABEL_TYPES = {"str": str, "int": int, "bool": bool}


def class_list(labels: Sequence, kind: str | None = None) -> tuple[list, str]:
    """Class names as Python values of one type (numpy scalars become ints/bools), and that type.

    Args:
        labels: the names, index ``i`` naming class ``i``.
        kind: ``"str"``, ``"int"`` or ``"bool"``; ``None`` takes it from the names (all ints give ints, all
            bools bools, anything else strings), as :func:`transferkit.data.label_type` does.

    Raises:
        ConfigError: an unknown ``kind``, names that are not class names of that type, or repeated names.
    """
    from transferkit.data import clean_label, label_type

    if kind is not None and kind not in LABEL_TYPES:
        raise ConfigError(f"label_type must be one of {sorted(LABEL_TYPES)}, got {kind!r}")
    try:
        names = [n if isinstance(n, str) else clean_label(n) for n in labels]
        kind = kind or label_type(names)
        names = [LABEL_TYPES[kind](n) for n in names]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"labels {list(labels)} are not all class names of type {kind or 'str, int or bool'}") from e
    if len(set(map(str, names))) != len(names):
        raise ConfigError(f"labels must be distinct, got {names}")
    return names, kind
