"""Sentence pairs: one class (NLI, paraphrase, matching) or one score (similarity) per pair of texts.

Two encodings, as in the literature (the head contract: :mod:`.base`):

* **cross-encoder** (``mode="cross"``) — both texts in one input, ``[CLS] a [SEP] b [SEP]`` with segment
  ids 0/1, so every layer attends across the pair; the pooled vector feeds the classifier. This is BERT's
  recipe for MNLI, QQP, MRPC and STS-B (Devlin et al. 2019, arXiv:1810.04805, section 4.1). It needs a
  preprocessor that encodes pairs (``hf:`` and ``scratch:`` transformers).
* **bi-encoder** (``mode="bi"``) — each text encoded alone by the same backbone into ``u`` and ``v``; the
  classifier reads ``[u, v, |u - v|, u * v]``, the combination of Sentence-BERT (Reimers & Gurevych 2019,
  arXiv:1908.10084, section 3; InferSent, Conneau et al. 2017, arXiv:1705.02364) with ``u * v`` added as
  in InferSent. Any text backbone can do it, word vectors included; a batch of ``B`` pairs is one forward
  pass over ``2B`` texts (all ``a`` then all ``b``), which the head splits in two.

``mode="auto"`` (default) cross-encodes when the backbone's preprocessor can (``accepts_pairs``), else
bi-encodes; the resolved mode is saved. Classification reads labels by the class-label rule of
:mod:`transferkit.data` (``predict`` returns them in their type); regression (``target="score"``)
standardises the score as :class:`~transferkit.heads.Regression` does and restores it on ``predict``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.heads import register_head
from transferkit.backbones.base import inference
from transferkit.heads.base import class_list, features_part, mlp

MODES = ("auto", "cross", "bi")


@register_head("pair")
class Pair(nn.Module):
    """A classifier (or regressor) over pairs of texts, cross- or bi-encoded.

    Args:
        labels: class names (strings, integers or bools), index ``i`` naming class ``i``; ``None`` takes them
            from the first training data (sorted, by the label rule).
        target: the name of the score column for a regression head (one number per pair, e.g.
            ``"score"``); ``None`` for classification.
        mode: ``"cross"``, ``"bi"`` or ``"auto"`` (cross when the backbone can, else bi).
        hidden: width of an optional hidden layer (GELU); ``None`` for a linear head.
        dropout: dropout on the features before each linear layer.
        num_classes: classes of a head that predicts class ids ``0..num_classes-1`` (no ``labels``).
        label_type: ``"str"``, ``"int"`` or ``"bool"``; ``None`` takes it from ``labels``.
        mean, std: the score's standardisation (regression), normally set from the training data.
        text_a_column, text_b_column: the table columns of the two texts (training and ``predict``).
        in_features: pooled feature size; normally left out and taken from the backbone.
    """

    needs = frozenset({"pooled"})

    def __init__(self, labels: Sequence | None = None, *, target: str | None = None, mode: str = "auto",
                 hidden: int | None = None, dropout: float = 0.0, num_classes: int | None = None,
                 label_type: str | None = None, mean: float | None = None, std: float | None = None,
                 text_a_column: str = "text_a", text_b_column: str = "text_b", in_features: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"Pair mode must be one of {MODES}, got {mode!r}.")
        if target is not None and (labels is not None or num_classes is not None):
            raise ConfigError("a Pair head predicts classes (labels=/num_classes=) or a score (target=), not both.")
        if target is not None and not (isinstance(target, str) and target.strip()):
            raise ConfigError(f"target must be the name of the score column, e.g. target='score'; got {target!r}.")
        self.mode, self.target, self.hidden, self.dropout = mode, target, hidden, float(dropout)
        self.text_a_column, self.text_b_column = text_a_column, text_b_column
        self.label_type = label_type
        self.num_classes: int | None = None if num_classes is None else int(num_classes)
        self._labels: list | None = None
        self.in_features: int | None = None
        self.layers: nn.Module | None = None
        if labels is not None:
            self.labels = labels
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"a pair classifier needs at least 2 classes, got {self.num_classes}.")
        self.mean: float | None = None
        self.std: float | None = None
        if mean is not None or std is not None:
            self.set_scale(mean, std)
        if in_features is not None:
            self.build(in_features)

    # --- what the head predicts ---------------------------------------------------------------------------

    @property
    def regression(self) -> bool:
        return self.target is not None

    @property
    def labels(self) -> list | None:
        """Class names (index ``i`` names class ``i``), or ``None`` (ids, regression, or not yet learnt)."""
        return self._labels

    @labels.setter
    def labels(self, labels: Sequence) -> None:
        names, kind = class_list(labels, self.label_type)
        if self.num_classes is not None and len(names) != self.num_classes:
            raise ConfigError(f"num_classes={self.num_classes} but {len(names)} labels given: {names[:10]}.")
        if len(names) < 2:
            raise ConfigError(f"a pair classifier needs at least 2 classes, got {names}.")
        self.label_type, self._labels, self.num_classes = kind, names, len(names)
        self._build_when_ready()

    def set_scale(self, mean: float | None, std: float | None) -> None:
        """The regression score's mean and (positive) standard deviation."""
        if mean is None or std is None or not float(std) > 0:
            raise ConfigError(f"a pair score needs a mean and a positive std; got {mean} and {std}.")
        self.mean, self.std = float(mean), float(std)

    @property
    def out_features(self) -> int | None:
        return 1 if self.regression else self.num_classes

    # --- building -----------------------------------------------------------------------------------------

    def attach(self, backbone: nn.Module) -> None:
        """Resolve ``mode="auto"`` for ``backbone`` and build the layers once their size is known.

        Raises:
            ConfigError: an image backbone, or ``mode="cross"`` with a backbone that cannot encode pairs.
        """
        if getattr(backbone, "modality", "text") != "text":
            raise ConfigError(f"a pair head compares two texts; the {backbone.config.get('source')}:"
                              f"{backbone.config.get('name')} backbone takes {backbone.modality}s. Use a text backbone.")
        can_cross = bool(getattr(getattr(backbone, "preprocessor", None), "accepts_pairs", False))
        if self.mode == "auto":
            self.mode = "cross" if can_cross else "bi"
        elif self.mode == "cross" and not can_cross:
            raise ConfigError(f"mode='cross' puts both texts in one input, which the {backbone.config.get('source')}"
                              f":{backbone.config.get('name')} backbone's preprocessor cannot encode (word "
                              "vectors have no separator token): use mode='bi' or 'auto', or a transformer backbone.")
        if self.in_features is None:
            self.in_features = int(backbone.feature_dim)
        built = self.layers is None
        self._build_when_ready()
        if built and self.layers is not None:
            self.layers.to(next(backbone.parameters()).device)

    def build(self, in_features: int) -> None:
        """Record the pooled size; the layers are created once the mode and the classes are known."""
        if self.in_features is not None and self.layers is not None and int(in_features) != self.in_features:
            raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
        self.in_features = int(in_features)
        self._build_when_ready()

    def _build_when_ready(self) -> None:
        if self.layers is not None or self.in_features is None or self.mode == "auto" or self.out_features is None:
            return
        pooled = self.in_features
        self.layers = mlp(self, pooled * (4 if self.mode == "bi" else 1), self.out_features)
        self.in_features = pooled  # mlp() recorded the classifier's width; the config keeps the pooled size

    # --- the contract ---------------------------------------------------------------------------------------

    def forward(self, features: Any) -> torch.Tensor:
        """Raw outputs ``[B, num_classes]`` (or ``[B, 1]`` standardised scores).

        Cross mode reads one pooled vector per pair ``[B, D]``; bi mode ``[2B, D]``, the ``a`` texts then
        the ``b`` texts, combined as ``[u, v, |u - v|, u * v]``.
        """
        if self.layers is None:
            raise RuntimeError("head is not built: compose it with a text backbone in TransferModel and call "
                               "model.task() (or give labels=/target= and predict), which resolves its mode")
        pooled = features_part(features, "pooled")
        if self.mode == "bi":
            if len(pooled) % 2:
                raise ConfigError(f"a bi-encoder pair head reads 2B vectors (all text_a, then all text_b); got {len(pooled)}.")
            u, v = pooled.chunk(2)
            pooled = torch.cat([u, v, (u - v).abs(), u * v], -1)
        return self.layers(pooled)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list:
        """What the backbone's preprocessor receives for ``pairs``: the pairs (cross), or all a's then all b's (bi)."""
        if self.mode == "cross":
            return [(a, b) for a, b in pairs]
        return [a for a, _ in pairs] + [b for _, b in pairs]

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: cross-entropy (accuracy, macro-F1) or MSE on the standardised score."""
        from transferkit.tasks.pair import PairTask

        self.attach(model.backbone)
        return PairTask(model, **options)

    def restore(self, outputs: torch.Tensor) -> torch.Tensor:
        """Standardised scores back in the score's units."""
        return outputs if self.mean is None else outputs * self.std + self.mean

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, C]`` (softmax), or the scores ``[N]`` in their units (regression)."""
        if self.regression:
            return self.restore(outputs.float())[:, 0]
        return outputs.float().softmax(-1)

    def predict(self, outputs: torch.Tensor) -> list:
        """The class of each pair (its name in the labels' type, else its id), or its score (a float)."""
        if self.regression:
            return self.restore(outputs.float())[:, 0].tolist()
        ids = outputs.argmax(-1).tolist()
        return [self.labels[i] for i in ids] if self.labels else ids

    @torch.no_grad()
    def predict_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 32) -> Any:
        """What ``TransferModel.predict`` returns for pairs: a class (or score) per pair.

        Args:
            model: the :class:`~transferkit.TransferModel` holding this head.
            raw_inputs: one pair ``(text_a, text_b)``; a list of pairs; or a table (DataFrame, dict of
                columns, datasets.Dataset) with the ``text_a_column`` and ``text_b_column`` columns.
            batch_size: pairs per forward pass.

        Returns:
            One prediction for one pair, else a list of the same length.

        Raises:
            InputError: an item is not a pair of two non-empty strings (naming it).
        """
        outputs, single = self._outputs(model, raw_inputs, batch_size)
        predictions = self.predict(outputs)
        return predictions[0] if single else predictions

    @torch.no_grad()
    def scores_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 32) -> torch.Tensor:
        """What ``TransferModel.predict_proba`` returns: probabilities ``[N, C]`` (``[C]`` for one pair)."""
        outputs, single = self._outputs(model, raw_inputs, batch_size)
        scores = self.scores(outputs)
        return scores[0] if single else scores

    def _outputs(self, model: nn.Module, raw_inputs: Any, batch_size: int) -> tuple[torch.Tensor, bool]:
        from transferkit.data import check_inputs, preprocess_named
        from transferkit.tasks.pair import prediction_pairs

        pairs, single = prediction_pairs(raw_inputs, self.text_a_column, self.text_b_column)
        origins = [f"item {i}" for i in range(len(pairs))]
        for side, column in enumerate(("text_a", "text_b")):
            check_inputs([p[side] for p in pairs], "text", [f"{o} ({column})" for o in origins])
        self.attach(model.backbone)
        if self.layers is None:
            raise ConfigError("the pair head has no classes yet: train it (they come from the data) or give "
                              "Pair(labels=[...]).")
        out = []
        with inference(model) as device:
            for at in range(0, len(pairs), batch_size):
                chunk, names = pairs[at: at + batch_size], origins[at: at + batch_size]
                inputs = preprocess_named(model.preprocess, self.encode(chunk),
                                          names if self.mode == "cross" else names + names)
                out.append(model(**{k: v.to(device) for k, v in inputs.items()})["logits"].float().cpu())
        return (torch.cat(out) if out else torch.empty(0, self.out_features)), single

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "labels": self.labels, "target": self.target, "mode": self.mode,
                "hidden": self.hidden, "dropout": self.dropout,
                "num_classes": None if self.labels else self.num_classes, "label_type": self.label_type,
                "mean": self.mean, "std": self.std, "text_a_column": self.text_a_column,
                "text_b_column": self.text_b_column, "in_features": self.in_features}

